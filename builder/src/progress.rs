//! Build progress: a spinner per stage on a terminal, one plain line per event
//! otherwise (CI logs), and the summary table at the end.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// How a stage ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Cached,
    Ran,
}

/// One finished stage, for the summary.
#[derive(Debug, Clone)]
pub struct StageReport {
    pub stage: &'static str,
    pub outcome: Outcome,
    pub elapsed: Duration,
    /// Bytes of the stage's main output, when meaningful.
    pub size: Option<u64>,
}

/// Reports stages as they run.
pub struct Progress {
    tty: bool,
    reports: Vec<StageReport>,
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    pub fn new() -> Self {
        Progress { tty: std::io::stderr().is_terminal(), reports: Vec::new() }
    }

    /// Runs `f` as stage `stage`, showing a spinner (or a start line).
    /// `f` returns (value, outcome, output size).
    pub fn stage<T>(
        &mut self,
        stage: &'static str,
        f: impl FnOnce() -> anyhow::Result<(T, Outcome, Option<u64>)>,
    ) -> anyhow::Result<T> {
        let start = Instant::now();
        let bar = if self.tty {
            let bar = ProgressBar::new_spinner();
            bar.set_style(ProgressStyle::with_template("{spinner} {prefix:<12} {elapsed:>4} {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()));
            bar.set_prefix(stage);
            bar.enable_steady_tick(Duration::from_millis(120));
            Some(bar)
        } else {
            eprintln!("ciab: {stage}: started");
            None
        };
        let result = f();
        let elapsed = start.elapsed();
        match result {
            Ok((value, outcome, size)) => {
                let what = match outcome {
                    Outcome::Cached => "cached",
                    Outcome::Ran => "done",
                };
                let line = format!("{stage:<12} {what:<6} {:>7.1}s{}", elapsed.as_secs_f64(), size.map(|s| format!("  {}", human_size(s))).unwrap_or_default());
                match bar {
                    Some(bar) => bar.finish_with_message(format!("{what}{}", size.map(|s| format!(" {}", human_size(s))).unwrap_or_default())),
                    None => eprintln!("ciab: {line}"),
                }
                self.reports.push(StageReport { stage, outcome, elapsed, size });
                Ok(value)
            }
            Err(err) => {
                match bar {
                    Some(bar) => bar.abandon_with_message("failed"),
                    None => eprintln!("ciab: {stage}: failed after {:.1}s", elapsed.as_secs_f64()),
                }
                Err(err)
            }
        }
    }

    pub fn reports(&self) -> &[StageReport] {
        &self.reports
    }

    /// The summary table printed at the end of a build.
    pub fn summary(&self) -> String {
        let mut s = format!("{:<12} {:<7} {:>8} {:>10}\n", "stage", "result", "time", "size");
        let mut total = Duration::ZERO;
        for r in &self.reports {
            total += r.elapsed;
            s.push_str(&format!(
                "{:<12} {:<7} {:>7.1}s {:>10}\n",
                r.stage,
                match r.outcome {
                    Outcome::Cached => "cached",
                    Outcome::Ran => "ran",
                },
                r.elapsed.as_secs_f64(),
                r.size.map(human_size).unwrap_or_default()
            ));
        }
        s.push_str(&format!("{:<12} {:<7} {:>7.1}s\n", "total", "", total.as_secs_f64()));
        s
    }
}

/// `1.5 GiB`-style sizes.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
    }

    #[test]
    fn summary_lists_stages_in_order() {
        let mut p = Progress { tty: false, reports: Vec::new() };
        p.stage("rootfs", || Ok(((), Outcome::Cached, Some(2048)))).unwrap();
        assert!(p.stage::<()>("disk", || anyhow::bail!("disk full")).is_err());
        let s = p.summary();
        assert!(s.contains("rootfs       cached"), "{s}");
        assert!(!s.contains("disk "), "{s}");
    }
}
