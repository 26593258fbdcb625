//! The one way first boot and the installer wait for something to come up:
//! probe, sleep, probe again, until the probe is ready, fails for good, or
//! the time is up. The caller words the timeout itself, from the last
//! probe's reason: operators and the end-to-end tests read those messages.

use anyhow::Result;
use std::time::{Duration, Instant};

/// What one probe found.
#[derive(Debug, PartialEq, Eq)]
pub enum Poll<T, P = ()> {
    /// The condition holds; the wait ends with this value.
    Ready(T),
    /// Not yet, and why; a timeout hands back the last reason.
    Pending(P),
}

/// The wait ran out while the probe still said `Pending(last)`.
#[derive(Debug)]
pub struct Timeout<P> {
    /// The reason of the last probe, taken after the deadline.
    pub last: P,
    /// How long the wait took, at least the timeout.
    pub elapsed: Duration,
}

/// Calls `probe` at once and then every `interval` until it is ready, and
/// gives its value. An error from the probe ends the wait at once and is
/// the outer error: a state that will not mend itself (a failed unit)
/// should not be waited out. Still pending once `timeout` has passed, it
/// gives `Ok(Err(Timeout))`; that last probe runs after the deadline, so a
/// condition that holds just then is not missed.
pub fn wait_until<T, P>(timeout: Duration, interval: Duration, mut probe: impl FnMut() -> Result<Poll<T, P>>) -> Result<Result<T, Timeout<P>>> {
    let start = Instant::now();
    loop {
        match probe()? {
            Poll::Ready(value) => return Ok(Ok(value)),
            Poll::Pending(last) => {
                let elapsed = start.elapsed();
                if elapsed > timeout {
                    return Ok(Err(Timeout { last, elapsed }));
                }
            }
        }
        std::thread::sleep(interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::bail;

    const TICK: Duration = Duration::from_millis(1);

    #[test]
    fn ready_at_once_probes_once() {
        let mut probes = 0;
        let got = wait_until(Duration::ZERO, Duration::from_secs(3600), || {
            probes += 1;
            Ok(Poll::<_, ()>::Ready("up"))
        });
        assert_eq!(got.unwrap().unwrap(), "up");
        assert_eq!(probes, 1);
    }

    #[test]
    fn ready_after_a_few_probes() {
        let mut probes = 0;
        let got = wait_until(Duration::from_secs(60), TICK, || {
            probes += 1;
            Ok(if probes < 4 { Poll::Pending(()) } else { Poll::Ready(probes) })
        });
        assert_eq!(got.unwrap().unwrap(), 4);
    }

    #[test]
    fn timeout_gives_the_last_reason_and_the_time_waited() {
        let timeout = Duration::from_millis(20);
        let mut probes = 0;
        let got = wait_until(timeout, TICK, || {
            probes += 1;
            Ok(Poll::<(), _>::Pending(format!("probe {probes}")))
        });
        let t = got.unwrap().unwrap_err();
        assert_eq!(t.last, format!("probe {probes}"));
        assert!(probes > 1, "{probes}");
        assert!(t.elapsed > timeout, "{:?}", t.elapsed);
    }

    #[test]
    fn a_failed_probe_ends_the_wait_at_once() {
        let mut probes = 0;
        let got = wait_until(Duration::from_secs(60), TICK, || {
            probes += 1;
            if probes == 3 {
                bail!("unit failed");
            }
            Ok(Poll::<(), ()>::Pending(()))
        });
        assert_eq!(format!("{:#}", got.unwrap_err()), "unit failed");
        assert_eq!(probes, 3);
    }
}
