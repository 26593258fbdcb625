//! The step engine: runs idempotent first-boot steps in dependency order,
//! journals every transition, retries with back-off, and resumes after a power
//! cut or a failure.
//!
//! Per step that the journal does not already record as `done`:
//! 1. mark `running` (journal write), report start;
//! 2. `check()`: if it says "already done", the step is done without `apply()`;
//! 3. otherwise `apply()`, then `check()` again, which must now say done
//!    (else the attempt fails with "apply() did not achieve check()");
//! 4. a failed attempt (error or panic) is journaled and retried after the
//!    policy's delay; once attempts are exhausted the step is marked `failed`
//!    with the `{:#}` error chain, the overall state becomes `failed`, and the
//!    run stops. Later steps are not touched.
//!
//! A later [`Engine::run`] (the `retry` command, or the next boot) resets
//! failed steps to a fresh series of attempts and resumes there; steps
//! journaled `done` are skipped without even calling `check()`.

pub mod journal;
pub mod report;

pub use report::{format_duration, ConsoleReporter, MultiReporter, Reporter, RetryInfo, RunOutcome, StepInfo, StepOutcome};

use std::collections::{HashMap, HashSet};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};

use journal::{now_unix, round_ms, Journal, OverallState, StepRecord, StepState};

/// What a step is, as data: the engine orders, journals and reports by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct About {
    /// Short stable identifier, used as the journal key (e.g. `"storage"`).
    pub name: &'static str,
    /// Human description (e.g. `"claim the disk"`).
    pub title: &'static str,
    /// Names of steps that must be done before this one.
    pub after: &'static [&'static str],
}

/// One idempotent first-boot step, generic over the caller's context `C`.
pub trait Step<C> {
    /// Its name, title and the steps it comes after.
    fn about(&self) -> About;
    /// Is the step's effect already in place?
    fn check(&self, ctx: &mut C) -> anyhow::Result<bool>;
    /// Bring the effect about. Must be idempotent: it may be re-run after a
    /// power cut at any point inside it.
    fn apply(&self, ctx: &mut C) -> anyhow::Result<()>;
}

/// Retry policy: at most `max_attempts` attempts per step and run; after
/// failed attempt n (1-based) wait `delays[n-1]` (the last delay repeats;
/// no delays = retry at once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub delays: Vec<Duration>,
}

impl Default for RetryPolicy {
    /// 3 attempts, waiting 1 s then 2 s (a 4th attempt would wait 4 s).
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            delays: vec![
                Duration::from_secs(1),
                Duration::from_secs(2),
                Duration::from_secs(4),
            ],
        }
    }
}

impl RetryPolicy {
    /// `max_attempts` attempts, no waiting (tests).
    pub fn immediate(max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts,
            delays: Vec::new(),
        }
    }

    /// Delay after failed attempt `attempt` (1-based).
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let i = (attempt.max(1) - 1) as usize;
        self.delays
            .get(i)
            .or(self.delays.last())
            .copied()
            .unwrap_or(Duration::ZERO)
    }

    fn max(&self) -> u32 {
        self.max_attempts.max(1)
    }
}

/// Errors in the step set itself, detected by [`Engine::new`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("step \"{0}\" is registered twice")]
    DuplicateStep(String),
    #[error("step \"{step}\" depends on unknown step \"{dependency}\"")]
    UnknownDependency { step: String, dependency: String },
    /// Each step in the list depends on the next; the last equals the first.
    #[error("dependency cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
}

type Sleeper = Box<dyn FnMut(Duration)>;

/// Runs a set of steps against a caller-defined context `C`.
pub struct Engine<C> {
    /// In execution (topological) order.
    steps: Vec<Box<dyn Step<C>>>,
    journal_path: PathBuf,
    retry: RetryPolicy,
    sleep: Sleeper,
}

impl<C> Engine<C> {
    /// Validate and order the steps (stable topological order: among steps
    /// whose dependencies are met, registration order wins).
    pub fn new(
        journal_path: impl Into<PathBuf>,
        steps: Vec<Box<dyn Step<C>>>,
    ) -> Result<Self, EngineError> {
        let order = topo_order(&steps)?;
        let mut slots: Vec<Option<Box<dyn Step<C>>>> = steps.into_iter().map(Some).collect();
        let steps = order.into_iter().filter_map(|i| slots[i].take()).collect();
        Ok(Engine {
            steps,
            journal_path: journal_path.into(),
            retry: RetryPolicy::default(),
            sleep: Box::new(std::thread::sleep),
        })
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Replace the back-off sleep (tests record delays instead of waiting).
    pub fn with_sleep(mut self, sleep: impl FnMut(Duration) + 'static) -> Self {
        self.sleep = Box::new(sleep);
        self
    }

    pub fn journal_path(&self) -> &Path {
        &self.journal_path
    }

    /// Step names in execution order.
    pub fn order(&self) -> Vec<&'static str> {
        self.steps.iter().map(|s| s.about().name).collect()
    }

    /// Run (or resume, or retry) first boot. Returns `Ok(RunOutcome::Failed)`
    /// when a step fails; `Err` only for engine faults (journal I/O).
    pub fn run(&mut self, ctx: &mut C, reporter: &mut dyn Reporter) -> anyhow::Result<RunOutcome> {
        let path = self.journal_path.clone();
        let loaded = Journal::load(&path)?;
        for w in &loaded.warnings {
            reporter.on_warning(w);
        }
        let mut journal = loaded.journal;
        let now = now_unix();
        journal.boot_count += 1;
        journal.first_started_at.get_or_insert(now);
        journal.state = OverallState::Running;
        journal.finished_at = None;
        for msg in self.sync_records(&mut journal) {
            reporter.on_warning(&msg);
            journal.add_note(msg);
        }
        journal.save(&path)?;

        let total = self.steps.len();
        for i in 0..total {
            let index = i + 1;
            let info = StepInfo {
                name: self.steps[i].about().name,
                title: self.steps[i].about().title,
            };
            if journal.steps[i].state == StepState::Done {
                reporter.on_step_skipped(index, total, &info);
                continue;
            }
            if let Some(error) =
                self.run_step(i, index, total, &info, &mut journal, ctx, reporter)?
            {
                journal.state = OverallState::Failed;
                journal.finished_at = Some(now_unix());
                journal.save(&path)?;
                let outcome = RunOutcome::Failed {
                    step: info.name.to_string(),
                    error,
                };
                reporter.on_run_end(&outcome);
                return Ok(outcome);
            }
        }
        journal.state = OverallState::Done;
        journal.finished_at = Some(now_unix());
        journal.save(&path)?;
        reporter.on_run_end(&RunOutcome::Done);
        Ok(RunOutcome::Done)
    }

    /// Make `journal.steps` mirror `self.steps` (same order), keeping existing
    /// records, adding pending ones, dropping unknown ones, and resetting
    /// failed ones for a fresh series of attempts. Returns notes to surface.
    fn sync_records(&self, journal: &mut Journal) -> Vec<String> {
        let mut notes = Vec::new();
        let mut old: HashMap<String, StepRecord> = journal
            .steps
            .drain(..)
            .map(|r| (r.name.clone(), r))
            .collect();
        for step in &self.steps {
            let mut rec = old
                .remove(step.about().name)
                .unwrap_or_else(|| StepRecord::new(step.about().name, step.about().title));
            rec.title = step.about().title.to_string();
            match rec.state {
                StepState::Failed => {
                    notes.push(format!(
                        "retrying step {} (it failed after {} attempt(s): {})",
                        rec.name,
                        rec.attempts,
                        rec.last_error.as_deref().unwrap_or("no error recorded")
                    ));
                    rec.reset();
                }
                // `Journal::load` already turned `running` into `pending`;
                // this only guards against a journal handed over otherwise.
                StepState::Running => rec.reset(),
                StepState::Pending | StepState::Done => {}
            }
            journal.steps.push(rec);
        }
        let mut dropped: Vec<String> = old.into_keys().collect();
        dropped.sort();
        for name in dropped {
            notes.push(format!(
                "journal step {name} is not part of this first-boot program; dropped it"
            ));
        }
        notes
    }

    /// Runs step `i` to done or failed. Returns the final error if it failed.
    #[allow(clippy::too_many_arguments)]
    fn run_step(
        &mut self,
        i: usize,
        index: usize,
        total: usize,
        info: &StepInfo,
        journal: &mut Journal,
        ctx: &mut C,
        reporter: &mut dyn Reporter,
    ) -> anyhow::Result<Option<String>> {
        let path = self.journal_path.clone();
        let max = self.retry.max();
        let clock = Instant::now();
        {
            let rec = &mut journal.steps[i];
            rec.reset();
            rec.state = StepState::Running;
            rec.started_at = Some(now_unix());
        }
        let mut applied = false;
        let mut first = true;
        loop {
            // Journal first, then tell the reporters: the console never gets
            // ahead of what survives a power cut.
            journal.steps[i].attempts += 1;
            journal.save(&path)?;
            if first {
                reporter.on_step_start(index, total, info);
                first = false;
            }
            let attempt = journal.steps[i].attempts;
            let result = attempt_step(self.steps[i].as_ref(), ctx, &mut applied);
            let rec = &mut journal.steps[i];
            match result {
                Ok(()) => {
                    let elapsed = clock.elapsed();
                    rec.state = StepState::Done;
                    rec.finished_at = Some(now_unix());
                    rec.duration = Some(round_ms(elapsed.as_secs_f64()));
                    rec.last_error = None;
                    journal.save(&path)?;
                    let outcome = if applied {
                        StepOutcome::Applied { attempts: attempt }
                    } else {
                        StepOutcome::AlreadyDone
                    };
                    reporter.on_step_end(index, total, info, &outcome, elapsed);
                    return Ok(None);
                }
                Err(err) => {
                    let error = format!("{err:#}");
                    rec.last_error = Some(error.clone());
                    if attempt >= max {
                        let elapsed = clock.elapsed();
                        rec.state = StepState::Failed;
                        rec.finished_at = Some(now_unix());
                        rec.duration = Some(round_ms(elapsed.as_secs_f64()));
                        journal.save(&path)?;
                        let outcome = StepOutcome::Failed {
                            attempts: attempt,
                            error: error.clone(),
                        };
                        reporter.on_step_end(index, total, info, &outcome, elapsed);
                        return Ok(Some(error));
                    }
                    rec.duration = Some(round_ms(clock.elapsed().as_secs_f64()));
                    journal.save(&path)?;
                    let retry = RetryInfo {
                        attempt,
                        max_attempts: max,
                        error,
                        delay: self.retry.delay_after(attempt),
                    };
                    reporter.on_retry(index, total, info, &retry);
                    (self.sleep)(retry.delay);
                }
            }
        }
    }
}

/// One attempt: check, else apply + check. Panics become errors.
fn attempt_step<C>(step: &dyn Step<C>, ctx: &mut C, applied: &mut bool) -> anyhow::Result<()> {
    if guarded("check()", || step.check(ctx))? {
        return Ok(());
    }
    *applied = true;
    guarded("apply()", || step.apply(ctx))?;
    if guarded("check() after apply()", || step.check(ctx))? {
        Ok(())
    } else {
        Err(anyhow!("apply() did not achieve check()"))
    }
}

/// Run `f`, adding `what` as error context and converting a panic into an
/// error so one buggy step cannot take down the journal bookkeeping.
fn guarded<T>(what: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result.with_context(|| what.to_string()),
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_string());
            Err(anyhow!("{what} panicked: {msg}"))
        }
    }
}

/// Stable topological order (indices into `steps`).
fn topo_order<C>(steps: &[Box<dyn Step<C>>]) -> Result<Vec<usize>, EngineError> {
    let mut index: HashMap<&'static str, usize> = HashMap::new();
    for (i, s) in steps.iter().enumerate() {
        if index.insert(s.about().name, i).is_some() {
            return Err(EngineError::DuplicateStep(s.about().name.to_string()));
        }
    }
    // deps[i] = distinct indices step i depends on.
    let mut deps: Vec<Vec<usize>> = Vec::with_capacity(steps.len());
    for s in steps {
        let mut seen = HashSet::new();
        let mut d = Vec::new();
        for dep in s.about().after {
            let &j = index
                .get(dep)
                .ok_or_else(|| EngineError::UnknownDependency {
                    step: s.about().name.to_string(),
                    dependency: dep.to_string(),
                })?;
            if seen.insert(j) {
                d.push(j);
            }
        }
        deps.push(d);
    }
    let n = steps.len();
    let mut emitted = vec![false; n];
    let mut order = Vec::with_capacity(n);
    while order.len() < n {
        let next = (0..n).find(|&i| !emitted[i] && deps[i].iter().all(|&j| emitted[j]));
        match next {
            Some(i) => {
                emitted[i] = true;
                order.push(i);
            }
            None => return Err(EngineError::Cycle(find_cycle(steps, &deps, &emitted))),
        }
    }
    Ok(order)
}

/// Among the not-emitted steps every one has a not-emitted dependency, so
/// following such edges must revisit a step: that loop is a cycle.
fn find_cycle<C>(steps: &[Box<dyn Step<C>>], deps: &[Vec<usize>], emitted: &[bool]) -> Vec<String> {
    let Some(start) = (0..steps.len()).find(|&i| !emitted[i]) else {
        return Vec::new();
    };
    let mut path = vec![start];
    let mut pos: HashMap<usize, usize> = HashMap::from([(start, 0)]);
    let mut cur = start;
    loop {
        let Some(&next) = deps[cur].iter().find(|&&j| !emitted[j]) else {
            return Vec::new(); // unreachable by construction
        };
        if let Some(&p) = pos.get(&next) {
            let mut cycle: Vec<usize> = path[p..].to_vec();
            // Start the message at the earliest-registered member.
            if let Some(min_pos) = (0..cycle.len()).min_by_key(|&k| cycle[k]) {
                cycle.rotate_left(min_pos);
            }
            let first = cycle[0];
            cycle.push(first);
            return cycle.iter().map(|&k| steps[k].about().name.to_string()).collect();
        }
        pos.insert(next, path.len());
        path.push(next);
        cur = next;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeSet;
    use std::rc::Rc;

    /// The test context: records calls and holds the "system state".
    #[derive(Default)]
    struct TestCtx {
        calls: Vec<String>,
        /// Steps whose effect is in place (what check() looks at).
        done: BTreeSet<&'static str>,
        /// Remaining apply() failures per step (u32::MAX = always).
        failures: HashMap<&'static str, u32>,
        /// Steps whose apply() does nothing (so check() never passes).
        noop_apply: BTreeSet<&'static str>,
        /// Steps whose apply() panics once.
        panic_once: BTreeSet<&'static str>,
    }

    struct TestStep {
        name: &'static str,
        deps: &'static [&'static str],
    }

    impl Step<TestCtx> for TestStep {
        fn about(&self) -> About {
            About { name: self.name, title: "a test step", after: self.deps }
        }
        fn check(&self, ctx: &mut TestCtx) -> anyhow::Result<bool> {
            ctx.calls.push(format!("check:{}", self.name));
            Ok(ctx.done.contains(self.name))
        }
        fn apply(&self, ctx: &mut TestCtx) -> anyhow::Result<()> {
            ctx.calls.push(format!("apply:{}", self.name));
            if ctx.panic_once.remove(self.name) {
                panic!("boom in {}", self.name);
            }
            if let Some(n) = ctx.failures.get_mut(self.name) {
                if *n > 0 {
                    *n = n.saturating_sub(1);
                    return Err(anyhow!("device /dev/vdb busy"))
                        .context(format!("{} could not write", self.name));
                }
            }
            if !ctx.noop_apply.contains(self.name) {
                ctx.done.insert(self.name);
            }
            Ok(())
        }
    }

    fn step(name: &'static str, deps: &'static [&'static str]) -> Box<dyn Step<TestCtx>> {
        Box::new(TestStep { name, deps })
    }

    /// a <- b <- c, registered out of order.
    fn abc() -> Vec<Box<dyn Step<TestCtx>>> {
        vec![step("c", &["b"]), step("a", &[]), step("b", &["a"])]
    }

    /// Records reporter events as strings.
    #[derive(Default, Clone)]
    struct Events(Rc<RefCell<Vec<String>>>);

    impl Events {
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.0.borrow_mut())
        }
    }

    impl Reporter for Events {
        fn on_step_start(&mut self, index: usize, total: usize, step: &StepInfo) {
            self.0
                .borrow_mut()
                .push(format!("start {index}/{total} {}", step.name));
        }
        fn on_step_end(
            &mut self,
            index: usize,
            total: usize,
            step: &StepInfo,
            outcome: &StepOutcome,
            _duration: Duration,
        ) {
            let o = match outcome {
                StepOutcome::AlreadyDone => "already".to_string(),
                StepOutcome::Applied { attempts } => format!("applied({attempts})"),
                StepOutcome::Failed { attempts, .. } => format!("failed({attempts})"),
            };
            self.0
                .borrow_mut()
                .push(format!("end {index}/{total} {} {o}", step.name));
        }
        fn on_step_skipped(&mut self, index: usize, total: usize, step: &StepInfo) {
            self.0
                .borrow_mut()
                .push(format!("skip {index}/{total} {}", step.name));
        }
        fn on_retry(&mut self, _i: usize, _t: usize, step: &StepInfo, retry: &RetryInfo) {
            self.0.borrow_mut().push(format!(
                "retry {} after {} in {:?}",
                step.name, retry.attempt, retry.delay
            ));
        }
        fn on_warning(&mut self, message: &str) {
            self.0.borrow_mut().push(format!("warn {message}"));
        }
        fn on_run_end(&mut self, outcome: &RunOutcome) {
            self.0.borrow_mut().push(format!("run {outcome:?}"));
        }
    }

    fn engine(path: &Path, steps: Vec<Box<dyn Step<TestCtx>>>) -> Engine<TestCtx> {
        Engine::new(path, steps)
            .unwrap()
            .with_retry(RetryPolicy::immediate(3))
    }

    fn journal(path: &Path) -> Journal {
        Journal::read(path).unwrap().unwrap()
    }

    fn states(j: &Journal) -> Vec<(String, StepState, u32)> {
        j.steps
            .iter()
            .map(|s| (s.name.clone(), s.state, s.attempts))
            .collect()
    }

    fn calls(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn runs_in_dependency_order_and_journals_done() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("firstboot.json");
        let mut e = engine(&path, abc());
        assert_eq!(e.order(), vec!["a", "b", "c"]);
        let mut ctx = TestCtx::default();
        let mut ev = Events::default();
        assert_eq!(e.run(&mut ctx, &mut ev).unwrap(), RunOutcome::Done);
        assert_eq!(
            ctx.calls,
            calls(&[
                "check:a", "apply:a", "check:a", "check:b", "apply:b", "check:b", "check:c",
                "apply:c", "check:c"
            ])
        );
        assert_eq!(
            ev.take(),
            calls(&[
                "start 1/3 a",
                "end 1/3 a applied(1)",
                "start 2/3 b",
                "end 2/3 b applied(1)",
                "start 3/3 c",
                "end 3/3 c applied(1)",
                "run Done"
            ])
        );
        let j = journal(&path);
        assert_eq!(j.state, OverallState::Done);
        assert_eq!(j.boot_count, 1);
        assert!(j.first_started_at.is_some() && j.finished_at.is_some());
        for s in &j.steps {
            assert_eq!(s.state, StepState::Done);
            assert_eq!(s.attempts, 1);
            assert!(s.duration.is_some() && s.started_at.is_some() && s.finished_at.is_some());
            assert_eq!(s.title, "a test step");
        }
        let names: Vec<_> = j.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["a", "b", "c"]);

        // A second run does nothing at all: not even check().
        let mut ctx2 = TestCtx::default();
        assert_eq!(e.run(&mut ctx2, &mut ev).unwrap(), RunOutcome::Done);
        assert!(ctx2.calls.is_empty());
        assert_eq!(
            ev.take(),
            calls(&["skip 1/3 a", "skip 2/3 b", "skip 3/3 c", "run Done"])
        );
        assert_eq!(journal(&path).boot_count, 2);
    }

    #[test]
    fn order_is_stable_for_independent_steps() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine(
            &dir.path().join("j.json"),
            vec![
                step("net", &["plan"]),
                step("plan", &[]),
                step("storage", &["plan"]),
                step("site", &[]),
                step("apps", &["storage", "net", "net"]),
            ],
        );
        assert_eq!(e.order(), vec!["plan", "net", "storage", "site", "apps"]);
    }

    #[test]
    fn check_true_skips_apply() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("firstboot.json");
        let mut ctx = TestCtx::default();
        ctx.done.insert("b");
        let mut ev = Events::default();
        let out = engine(&path, abc()).run(&mut ctx, &mut ev).unwrap();
        assert_eq!(out, RunOutcome::Done);
        assert_eq!(
            ctx.calls,
            calls(&["check:a", "apply:a", "check:a", "check:b", "check:c", "apply:c", "check:c"])
        );
        assert!(ev.take().contains(&"end 2/3 b already".to_string()));
        let j = journal(&path);
        assert_eq!(j.step("b").unwrap().state, StepState::Done);
        assert_eq!(j.step("b").unwrap().attempts, 1);
    }

    #[test]
    fn fails_twice_then_succeeds_with_backoff() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("firstboot.json");
        let slept = Rc::new(RefCell::new(Vec::new()));
        let s2 = slept.clone();
        let mut e = Engine::new(&path, abc())
            .unwrap()
            .with_retry(RetryPolicy {
                max_attempts: 3,
                delays: vec![Duration::from_millis(10), Duration::from_millis(20)],
            })
            .with_sleep(move |d| s2.borrow_mut().push(d));
        let mut ctx = TestCtx::default();
        ctx.failures.insert("b", 2);
        let mut ev = Events::default();
        assert_eq!(e.run(&mut ctx, &mut ev).unwrap(), RunOutcome::Done);
        assert_eq!(
            *slept.borrow(),
            vec![Duration::from_millis(10), Duration::from_millis(20)]
        );
        let b_calls: Vec<_> = ctx.calls.iter().filter(|c| c.ends_with(":b")).collect();
        assert_eq!(
            b_calls,
            vec!["check:b", "apply:b", "check:b", "apply:b", "check:b", "apply:b", "check:b"]
        );
        let events = ev.take();
        assert!(events.contains(&"retry b after 1 in 10ms".to_string()));
        assert!(events.contains(&"retry b after 2 in 20ms".to_string()));
        assert!(events.contains(&"end 2/3 b applied(3)".to_string()));
        let j = journal(&path);
        let b = j.step("b").unwrap();
        assert_eq!((b.state, b.attempts), (StepState::Done, 3));
        assert_eq!(b.last_error, None);
    }

    #[test]
    fn always_failing_step_fails_run_then_retry_resumes_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("firstboot.json");
        let mut ctx = TestCtx::default();
        ctx.failures.insert("b", u32::MAX);
        let mut ev = Events::default();
        let out = engine(&path, abc()).run(&mut ctx, &mut ev).unwrap();
        let expected_error = "apply(): b could not write: device /dev/vdb busy";
        assert_eq!(
            out,
            RunOutcome::Failed {
                step: "b".into(),
                error: expected_error.into()
            }
        );
        assert!(
            !ctx.calls.iter().any(|c| c.ends_with(":c")),
            "{:?}",
            ctx.calls
        );
        assert_eq!(ctx.calls.iter().filter(|c| *c == "apply:b").count(), 3);
        let j = journal(&path);
        assert_eq!(j.state, OverallState::Failed);
        assert!(j.finished_at.is_some());
        assert_eq!(
            states(&j),
            vec![
                ("a".into(), StepState::Done, 1),
                ("b".into(), StepState::Failed, 3),
                ("c".into(), StepState::Pending, 0),
            ]
        );
        assert_eq!(
            j.step("b").unwrap().last_error.as_deref(),
            Some(expected_error)
        );
        let events = ev.take();
        assert!(events.contains(&"end 2/3 b failed(3)".to_string()));
        assert!(!events.iter().any(|e| e.contains("3/3 c")), "{events:?}");

        // The operator fixes the cause and runs `retry`.
        ctx.failures.clear();
        ctx.calls.clear();
        let out = engine(&path, abc()).run(&mut ctx, &mut ev).unwrap();
        assert_eq!(out, RunOutcome::Done);
        assert_eq!(
            ctx.calls,
            calls(&["check:b", "apply:b", "check:b", "check:c", "apply:c", "check:c"])
        );
        let j = journal(&path);
        assert_eq!(j.state, OverallState::Done);
        assert_eq!(j.boot_count, 2);
        assert_eq!(
            states(&j),
            vec![
                ("a".into(), StepState::Done, 1),
                ("b".into(), StepState::Done, 1),
                ("c".into(), StepState::Done, 1),
            ]
        );
        assert_eq!(j.step("b").unwrap().last_error, None);
        let events = ev.take();
        assert_eq!(
            events[0],
            format!("warn retrying step b (it failed after 3 attempt(s): {expected_error})")
        );
        assert_eq!(events[1], "skip 1/3 a");
        assert!(j.notes.iter().any(|n| n.starts_with("retrying step b")));
    }

    #[test]
    fn apply_that_does_not_achieve_check_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("firstboot.json");
        let mut ctx = TestCtx::default();
        ctx.noop_apply.insert("a");
        let out = engine(&path, abc())
            .run(&mut ctx, &mut Events::default())
            .unwrap();
        assert_eq!(
            out,
            RunOutcome::Failed {
                step: "a".into(),
                error: "apply() did not achieve check()".into()
            }
        );
        assert_eq!(journal(&path).step("a").unwrap().attempts, 3);
    }

    #[test]
    fn panicking_apply_is_an_attempt_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("firstboot.json");
        let mut ctx = TestCtx::default();
        ctx.panic_once.insert("c");
        let mut ev = Events::default();
        let out = engine(&path, abc()).run(&mut ctx, &mut ev).unwrap();
        assert_eq!(out, RunOutcome::Done);
        assert!(ev.take().contains(&"end 3/3 c applied(2)".to_string()));
    }

    #[test]
    fn failing_check_is_an_attempt_error_with_context() {
        struct BadCheck;
        impl Step<TestCtx> for BadCheck {
            fn about(&self) -> About {
                About { name: "bad", title: "bad check", after: &[] }
            }
            fn check(&self, _: &mut TestCtx) -> anyhow::Result<bool> {
                Err(anyhow!("cannot stat /srv"))
            }
            fn apply(&self, _: &mut TestCtx) -> anyhow::Result<()> {
                Ok(())
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("firstboot.json");
        let out = engine(&path, vec![Box::new(BadCheck)])
            .with_retry(RetryPolicy::immediate(1))
            .run(&mut TestCtx::default(), &mut Events::default())
            .unwrap();
        assert_eq!(
            out,
            RunOutcome::Failed {
                step: "bad".into(),
                error: "check(): cannot stat /srv".into()
            }
        );
    }

    /// Write the journal exactly as the engine would have left it if the power
    /// had been cut during b's apply(): a done, b running (attempt 1), c pending.
    fn journal_cut_during_b(path: &Path) {
        let mut j = Journal::new();
        j.boot_count = 1;
        j.first_started_at = Some(now_unix());
        let mut a = StepRecord::new("a", "a test step");
        a.state = StepState::Done;
        a.attempts = 1;
        let mut b = StepRecord::new("b", "a test step");
        b.state = StepState::Running;
        b.attempts = 1;
        b.started_at = Some(now_unix());
        j.steps = vec![a, b, StepRecord::new("c", "a test step")];
        j.save(path).unwrap();
    }

    #[test]
    fn power_cut_after_apply_finished_resumes_with_check_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("firstboot.json");
        journal_cut_during_b(&path);
        let mut ctx = TestCtx::default();
        ctx.done.insert("a");
        ctx.done.insert("b"); // b's effect made it to disk before the cut
        let mut ev = Events::default();
        assert_eq!(
            engine(&path, abc()).run(&mut ctx, &mut ev).unwrap(),
            RunOutcome::Done
        );
        assert_eq!(
            ctx.calls,
            calls(&["check:b", "check:c", "apply:c", "check:c"])
        );
        let events = ev.take();
        assert!(
            events[0].starts_with("warn step b was interrupted"),
            "{events:?}"
        );
        let j = journal(&path);
        assert_eq!(j.boot_count, 2);
        assert_eq!(j.step("b").unwrap().interrupted, 1);
        assert_eq!(j.step("b").unwrap().attempts, 1);
    }

    #[test]
    fn power_cut_mid_apply_resumes_with_check_then_apply() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("firstboot.json");
        journal_cut_during_b(&path);
        let mut ctx = TestCtx::default();
        ctx.done.insert("a");
        assert_eq!(
            engine(&path, abc())
                .run(&mut ctx, &mut Events::default())
                .unwrap(),
            RunOutcome::Done
        );
        assert_eq!(
            ctx.calls,
            calls(&["check:b", "apply:b", "check:b", "check:c", "apply:c", "check:c"])
        );
    }

    const CHILD_ENV: &str = "CIAB_TEST_POWER_CUT_JOURNAL";

    /// A step that kills its own process in the middle of apply().
    struct DiesMidApply;
    impl Step<TestCtx> for DiesMidApply {
        fn about(&self) -> About {
            About { name: "b", title: "a test step", after: &["a"] }
        }
        fn check(&self, _: &mut TestCtx) -> anyhow::Result<bool> {
            Ok(false)
        }
        fn apply(&self, _: &mut TestCtx) -> anyhow::Result<()> {
            // No unwinding, no destructors: like pulling the plug.
            std::process::exit(86)
        }
    }

    /// Child half of `real_process_death_mid_apply_resumes`; a no-op unless
    /// the parent test sets the env var.
    #[test]
    fn power_cut_child() {
        let Some(path) = std::env::var_os(CHILD_ENV) else {
            return;
        };
        let steps = vec![step("a", &[]), Box::new(DiesMidApply), step("c", &["b"])];
        let _ =
            engine(Path::new(&path), steps).run(&mut TestCtx::default(), &mut Events::default());
        unreachable!("the step should have killed the process");
    }

    #[test]
    fn real_process_death_mid_apply_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("firstboot.json");
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "engine::tests::power_cut_child",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(86));
        let j = journal(&path);
        assert_eq!(
            states(&j),
            vec![
                ("a".into(), StepState::Done, 1),
                ("b".into(), StepState::Running, 1),
                ("c".into(), StepState::Pending, 0),
            ]
        );

        // Next boot: a (done, and its effect is in place) is not touched; b is
        // checked first, then applied.
        let mut ctx = TestCtx::default();
        ctx.done.insert("a");
        let out = engine(&path, abc())
            .run(&mut ctx, &mut Events::default())
            .unwrap();
        assert_eq!(out, RunOutcome::Done);
        assert_eq!(
            ctx.calls,
            calls(&["check:b", "apply:b", "check:b", "check:c", "apply:c", "check:c"])
        );
        let j = journal(&path);
        assert_eq!(j.step("b").unwrap().interrupted, 1);
        assert_eq!(j.boot_count, 2);
        assert!(j.notes.iter().any(|n| n.contains("step b was interrupted")));
    }

    #[test]
    fn unknown_dependency_cycle_and_duplicate_errors() {
        let p = Path::new("/nonexistent/j.json");
        let err = |steps| Engine::<TestCtx>::new(p, steps).err().unwrap().to_string();
        assert_eq!(
            err(vec![step("storage", &["disks"])]),
            "step \"storage\" depends on unknown step \"disks\""
        );
        assert_eq!(
            err(vec![
                step("plan", &[]),
                step("a", &["c"]),
                step("b", &["a", "plan"]),
                step("c", &["b"]),
                step("d", &["a"]),
            ]),
            "dependency cycle: a -> c -> b -> a"
        );
        assert_eq!(err(vec![step("x", &["x"])]), "dependency cycle: x -> x");
        assert_eq!(
            err(vec![step("x", &[]), step("x", &[])]),
            "step \"x\" is registered twice"
        );
    }

    #[test]
    fn journal_steps_follow_the_program() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("firstboot.json");
        let mut j = Journal::new();
        let mut old = StepRecord::new("legacy", "gone");
        old.state = StepState::Done;
        j.steps = vec![old];
        j.save(&path).unwrap();
        let mut ev = Events::default();
        engine(&path, abc())
            .run(&mut TestCtx::default(), &mut ev)
            .unwrap();
        assert!(ev.take().contains(
            &"warn journal step legacy is not part of this first-boot program; dropped it"
                .to_string()
        ));
        let names: Vec<_> = journal(&path).steps.into_iter().map(|s| s.name).collect();
        assert_eq!(names, vec!["a", "b", "c"]);
    }

    #[test]
    fn unwritable_journal_is_an_engine_error() {
        let dir = tempfile::tempdir().unwrap();
        // The journal's directory path is a regular file.
        let blocker = dir.path().join("blocker");
        std::fs::write(&blocker, b"").unwrap();
        let err = engine(&blocker.join("firstboot.json"), abc())
            .run(&mut TestCtx::default(), &mut Events::default())
            .unwrap_err();
        assert!(format!("{err:#}").contains("blocker"), "{err:#}");
    }

    #[test]
    fn retry_policy_delays() {
        let p = RetryPolicy::default();
        assert_eq!(p.max_attempts, 3);
        assert_eq!(p.delay_after(1), Duration::from_secs(1));
        assert_eq!(p.delay_after(2), Duration::from_secs(2));
        assert_eq!(p.delay_after(3), Duration::from_secs(4));
        assert_eq!(p.delay_after(9), Duration::from_secs(4));
        assert_eq!(RetryPolicy::immediate(5).delay_after(1), Duration::ZERO);
    }

    #[test]
    fn console_lines() {
        let mut c = ConsoleReporter::new(Vec::new());
        let plan = StepInfo {
            name: "plan",
            title: "compute the plan",
        };
        let storage = StepInfo {
            name: "storage",
            title: "claim the disk",
        };
        let site = StepInfo {
            name: "site-config",
            title: "apply site config",
        };
        c.on_step_start(3, 7, &plan);
        c.on_step_end(
            3,
            7,
            &plan,
            &StepOutcome::Applied { attempts: 1 },
            Duration::from_millis(200),
        );
        c.on_step_end(2, 7, &site, &StepOutcome::AlreadyDone, Duration::ZERO);
        c.on_retry(
            5,
            7,
            &storage,
            &RetryInfo {
                attempt: 1,
                max_attempts: 3,
                error: "apply(): mkfs failed".into(),
                delay: Duration::from_secs(1),
            },
        );
        c.on_step_end(
            5,
            7,
            &storage,
            &StepOutcome::Failed {
                attempts: 3,
                error: "apply(): mkfs failed:\nexit 1".into(),
            },
            Duration::from_secs(125),
        );
        c.on_step_skipped(1, 7, &plan);
        c.on_warning("journal was unreadable");
        c.on_run_end(&RunOutcome::Failed {
            step: "storage".into(),
            error: "x".into(),
        });
        let text = String::from_utf8(c.into_inner()).unwrap();
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            vec![
                "ciab: [3/7] plan … compute the plan",
                "ciab: [3/7] plan … ok 0.2s",
                "ciab: [2/7] site-config … already done",
                "ciab: [5/7] storage … attempt 1/3 failed: apply(): mkfs failed; retrying in 1.0s",
                "ciab: [5/7] storage … FAILED after 3 attempts: apply(): mkfs failed: / exit 1",
                "ciab: [1/7] plan … done (earlier run)",
                "ciab: WARNING: journal was unreadable",
                "ciab: first boot FAILED at step storage; fix the cause and run `ciab-firstboot retry`",
            ]
        );
        assert_eq!(format_duration(Duration::from_secs(125)), "2m05s");
        assert_eq!(format_duration(Duration::from_millis(59_940)), "59.9s");
    }
}
