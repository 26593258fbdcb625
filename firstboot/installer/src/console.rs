//! The installer's voice: every line goes to the serial port and the screen
//! at once (the kernel's `/dev/console` is only the last `console=`), and
//! questions are answered on either.

use rustix::event::{poll, PollFd, PollFlags};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

/// The terminals the installer talks to.
pub struct Console {
    ttys: Vec<File>,
}

impl Console {
    /// Opens the serial port and the first virtual terminal, whichever
    /// exist; falls back to `/dev/console`.
    pub fn open() -> Console {
        let open = |p: &str| OpenOptions::new().read(true).write(true).custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32).open(p).ok();
        let mut ttys: Vec<File> = ["/dev/ttyS0", "/dev/tty0"].iter().filter_map(|p| open(p)).collect();
        if ttys.is_empty() {
            ttys.extend(open("/dev/console"));
        }
        Console { ttys }
    }

    /// Prints one line, prefixed with `ciab-installer: `.
    pub fn line(&self, text: &str) {
        for mut t in &self.ttys {
            let _ = writeln!(t, "ciab-installer: {text}\r");
        }
    }

    /// Waits up to `timeout` for a line typed on any terminal; `None` on timeout.
    pub fn read_line(&self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut bufs: Vec<Vec<u8>> = vec![Vec::new(); self.ttys.len()];
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let mut fds: Vec<PollFd> = self.ttys.iter().map(|t| PollFd::new(t, PollFlags::IN)).collect();
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            if poll(&mut fds, ms).ok()? == 0 {
                return None;
            }
            let ready: Vec<bool> = fds.iter().map(|f| f.revents().contains(PollFlags::IN)).collect();
            for (i, is_ready) in ready.into_iter().enumerate() {
                if !is_ready {
                    continue;
                }
                let mut b = [0u8; 256];
                let n = (&self.ttys[i]).read(&mut b).unwrap_or(0);
                bufs[i].extend_from_slice(&b[..n]);
                if let Some(pos) = bufs[i].iter().position(|&c| c == b'\n' || c == b'\r') {
                    return Some(String::from_utf8_lossy(&bufs[i][..pos]).trim().to_owned());
                }
            }
        }
    }
}
