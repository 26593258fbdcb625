//! What the engine tells about a run, and who listens: the events
//! (a step started, ended, was skipped or retried, a warning, the run's end),
//! the [`Reporter`] that receives them, and the console's reporter. The
//! status page's and systemd's reporters live in `crate::status`.
//!
//! What a step has to say beyond those events (what it found, made or
//! waited for) it says with `tracing::info!`; [`console_notes`] prints that
//! on the console as `ciab-firstboot: <message>`, warnings and errors on
//! stderr. That is the one path: no step prints by itself.

use std::fmt;
use std::io::{self, Write};
use std::time::Duration;
use tracing::Subscriber;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

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

/// Formats a step's note as the console has always shown it:
/// `ciab-firstboot: <message>`, one line, no time or level (the journal and
/// the serial console add their own).
struct ConsoleLine;

impl<S, N> FormatEvent<S, N> for ConsoleLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &tracing::Event<'_>) -> fmt::Result {
        write!(writer, "ciab-firstboot: ")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// The subscriber that prints the steps' notes (`info` and above) on
/// `out`, and warnings and errors on `err`.
pub fn console_notes_to<O, E>(out: O, err: E) -> impl Subscriber + Send + Sync
where
    O: for<'w> MakeWriter<'w> + Send + Sync + 'static,
    E: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::fmt::writer::MakeWriterExt;
    tracing_subscriber::fmt()
        // Plain text: consoles and the journal show escape codes literally.
        .with_ansi(false)
        .event_format(ConsoleLine)
        .with_max_level(tracing::Level::INFO)
        .with_writer(err.with_max_level(tracing::Level::WARN).or_else(out))
        .finish()
}

/// Installs [`console_notes_to`] on stdout and stderr for the process.
pub fn console_notes() {
    // Only fails when a subscriber is already set, which then keeps printing.
    let _ = tracing::subscriber::set_global_default(console_notes_to(io::stdout, io::stderr));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl<'w> MakeWriter<'w> for Buf {
        type Writer = Buf;
        fn make_writer(&'w self) -> Buf {
            self.clone()
        }
    }
    impl Buf {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[test]
    fn notes_read_as_the_console_lines_they_replace() {
        let (out, err) = (Buf::default(), Buf::default());
        tracing::subscriber::with_default(console_notes_to(out.clone(), err.clone()), || {
            let took = "configuration 1.0s";
            tracing::info!("nova: took {took}");
            tracing::debug!("not shown");
            tracing::error!("error: the disk is gone");
        });
        assert_eq!(out.text(), "ciab-firstboot: nova: took configuration 1.0s\n");
        assert_eq!(err.text(), "ciab-firstboot: error: the disk is gone\n");
    }
}
