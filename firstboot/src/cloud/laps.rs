//! Where a slow step's time goes: the parts of its work, each timed from
//! the end of the one before, for one console line.

use std::time::{Duration, Instant};

pub struct Laps {
    since: Instant,
    parts: Vec<(String, Duration)>,
}

impl Laps {
    pub fn start() -> Laps {
        Laps { since: Instant::now(), parts: Vec::new() }
    }

    /// Ends the part called `what` now; the next part starts now.
    pub fn mark(&mut self, what: &str) {
        let now = Instant::now();
        self.parts.push((what.to_owned(), now - self.since));
        self.since = now;
    }

    /// The time of all parts ended so far.
    pub fn total(&self) -> Duration {
        self.parts.iter().map(|(_, took)| *took).sum()
    }

    /// `thin pool 11 s, configuration 1 s, …`
    pub fn summary(&self) -> String {
        self.parts.iter().map(|(what, took)| format!("{what} {:.0} s", took.as_secs_f64())).collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_timed_one_after_another_in_order() {
        let mut laps = Laps::start();
        std::thread::sleep(Duration::from_millis(50));
        laps.mark("first");
        laps.mark("second");
        let names: Vec<&str> = laps.parts.iter().map(|(what, _)| what.as_str()).collect();
        assert_eq!(names, ["first", "second"]);
        assert!(laps.parts[0].1 >= Duration::from_millis(50), "{:?}", laps.parts);
        assert_eq!(laps.total(), laps.parts[0].1 + laps.parts[1].1);
    }

    #[test]
    fn the_summary_rounds_each_part_to_seconds() {
        let laps = Laps { since: Instant::now(), parts: vec![("thin pool".into(), Duration::from_millis(11_400)), ("configuration".into(), Duration::from_millis(600))] };
        assert_eq!(laps.summary(), "thin pool 11 s, configuration 1 s");
        assert_eq!(laps.total(), Duration::from_secs(12));
    }
}
