//! What the engine tells about a run, and who listens: the events
//! (a step started, ended, was skipped or retried, a warning, the run's end),
//! the [`Reporter`] that receives them, and the console's reporter. The
//! status page's and systemd's reporters live in `crate::status`.

use std::fmt;
use std::io::{self, Write};
use std::time::Duration;

/// What reporters are told about a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepInfo {
    pub name: &'static str,
    pub title: &'static str,
}

/// How a step ended in this run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    /// `check()` said done before any `apply()` in this run.
    AlreadyDone,
    /// `apply()` ran and `check()` then confirmed; `attempts` ≥ 1.
    Applied { attempts: u32 },
    /// Attempts exhausted; `error` is the last error chain (`{:#}`).
    Failed { attempts: u32, error: String },
}

/// A failed attempt that will be retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryInfo {
    /// The attempt that just failed (1-based).
    pub attempt: u32,
    pub max_attempts: u32,
    /// `{:#}` of the attempt's error.
    pub error: String,
    /// Delay before the next attempt.
    pub delay: Duration,
}

/// Result of a whole run (engine faults such as an unwritable journal are
/// returned as `Err` instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    Done,
    Failed { step: String, error: String },
}

/// Receives every transition, to drive the console, status and sd_notify.
/// `index` is 1-based position in execution order; `total` the step count.
pub trait Reporter {
    fn on_step_start(&mut self, index: usize, total: usize, step: &StepInfo);
    fn on_step_end(
        &mut self,
        index: usize,
        total: usize,
        step: &StepInfo,
        outcome: &StepOutcome,
        duration: Duration,
    );
    /// The journal records the step as done by an earlier run: not re-run.
    fn on_step_skipped(&mut self, _index: usize, _total: usize, _step: &StepInfo) {}
    /// An attempt failed and will be retried after `retry.delay`.
    fn on_retry(&mut self, _index: usize, _total: usize, _step: &StepInfo, _retry: &RetryInfo) {}
    /// Recovery warnings (corrupt journal moved aside, interrupted step, …).
    /// Must be surfaced loudly.
    fn on_warning(&mut self, _message: &str) {}
    fn on_run_end(&mut self, _outcome: &RunOutcome) {}
}

/// Fans every event out to several reporters.
#[derive(Default)]
pub struct MultiReporter(pub Vec<Box<dyn Reporter>>);

impl Reporter for MultiReporter {
    fn on_step_start(&mut self, index: usize, total: usize, step: &StepInfo) {
        for r in &mut self.0 {
            r.on_step_start(index, total, step);
        }
    }
    fn on_step_end(
        &mut self,
        index: usize,
        total: usize,
        step: &StepInfo,
        outcome: &StepOutcome,
        duration: Duration,
    ) {
        for r in &mut self.0 {
            r.on_step_end(index, total, step, outcome, duration);
        }
    }
    fn on_step_skipped(&mut self, index: usize, total: usize, step: &StepInfo) {
        for r in &mut self.0 {
            r.on_step_skipped(index, total, step);
        }
    }
    fn on_retry(&mut self, index: usize, total: usize, step: &StepInfo, retry: &RetryInfo) {
        for r in &mut self.0 {
            r.on_retry(index, total, step, retry);
        }
    }
    fn on_warning(&mut self, message: &str) {
        for r in &mut self.0 {
            r.on_warning(message);
        }
    }
    fn on_run_end(&mut self, outcome: &RunOutcome) {
        for r in &mut self.0 {
            r.on_run_end(outcome);
        }
    }
}

/// Formats a duration the way console lines show it: `0.2s`, `59.9s`, `2m05s`.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        let whole = d.as_secs();
        format!("{}m{:02}s", whole / 60, whole % 60)
    }
}

/// Collapse an error chain to one console line.
fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" / ")
}

/// Writes one line per event, e.g.
/// `ciab: [3/7] plan … ok 0.2s`,
/// `ciab: [5/7] storage … FAILED after 3 attempts: <error>`,
/// `ciab: [2/7] site-config … already done`.
/// Write errors are ignored: a broken console must not stop first boot.
pub struct ConsoleReporter<W: Write> {
    out: W,
}

impl ConsoleReporter<io::Stdout> {
    pub fn stdout() -> Self {
        ConsoleReporter { out: io::stdout() }
    }
}

impl<W: Write> ConsoleReporter<W> {
    pub fn new(out: W) -> Self {
        ConsoleReporter { out }
    }
    pub fn into_inner(self) -> W {
        self.out
    }
    fn line(&mut self, args: fmt::Arguments<'_>) {
        let _ = self.out.write_fmt(args);
        let _ = self.out.write_all(b"\n");
        let _ = self.out.flush();
    }
}

impl<W: Write> Reporter for ConsoleReporter<W> {
    fn on_step_start(&mut self, index: usize, total: usize, step: &StepInfo) {
        self.line(format_args!(
            "ciab: [{index}/{total}] {} … {}",
            step.name, step.title
        ));
    }
    fn on_step_end(
        &mut self,
        index: usize,
        total: usize,
        step: &StepInfo,
        outcome: &StepOutcome,
        duration: Duration,
    ) {
        let name = step.name;
        match outcome {
            StepOutcome::AlreadyDone => self.line(format_args!(
                "ciab: [{index}/{total}] {name} … already done"
            )),
            StepOutcome::Applied { .. } => self.line(format_args!(
                "ciab: [{index}/{total}] {name} … ok {}",
                format_duration(duration)
            )),
            StepOutcome::Failed { attempts, error } => self.line(format_args!(
                "ciab: [{index}/{total}] {name} … FAILED after {attempts} attempt{}: {}",
                if *attempts == 1 { "" } else { "s" },
                one_line(error)
            )),
        }
    }
    fn on_step_skipped(&mut self, index: usize, total: usize, step: &StepInfo) {
        self.line(format_args!(
            "ciab: [{index}/{total}] {} … done (earlier run)",
            step.name
        ));
    }
    fn on_retry(&mut self, index: usize, total: usize, step: &StepInfo, retry: &RetryInfo) {
        self.line(format_args!(
            "ciab: [{index}/{total}] {} … attempt {}/{} failed: {}; retrying in {}",
            step.name,
            retry.attempt,
            retry.max_attempts,
            one_line(&retry.error),
            format_duration(retry.delay)
        ));
    }
    fn on_warning(&mut self, message: &str) {
        self.line(format_args!("ciab: WARNING: {}", one_line(message)));
    }
    fn on_run_end(&mut self, outcome: &RunOutcome) {
        match outcome {
            RunOutcome::Done => self.line(format_args!("ciab: first boot complete")),
            RunOutcome::Failed { step, .. } => self.line(format_args!(
                "ciab: first boot FAILED at step {step}; fix the cause and run `ciab-firstboot retry`"
            )),
        }
    }
}
