//! End-to-end test harness: boot a [`Machine`] under QEMU, capture its serial
//! console, talk QMP, and make sure QEMU never outlives the test.
//!
//! ## Serial capture without losing output
//! The harness creates a unix socket *listener* before spawning QEMU and
//! starts QEMU with `-chardev socket,id=ser0,path=…` in client mode
//! ([`Serial::Connect`]). QEMU connects while it parses its command line —
//! long before the guest runs — and the kernel completes the connection
//! against our listen backlog even before we call `accept`. Everything the
//! guest writes from then on is queued in the socket (QEMU's serial device
//! retries on a full buffer rather than dropping bytes), so nothing is lost,
//! there is no polling for the socket file, and no `wait=on` / `-S` dance.
//! If nobody listened QEMU would refuse to start, so a broken setup fails
//! loudly instead of silently dropping output.
//!
//! QMP uses a QEMU-side listener (`server=on,wait=off`): QMP sends its
//! greeting per connection, so connecting a little later loses nothing.
//!
//! Files in the VM's temp dir: `serial.log` (raw serial bytes), `qemu.stderr`,
//! `qemu.stdout`, `cmdline`, `OVMF_VARS.fd`. The dir is deleted on drop
//! unless `CIAB_KEEP_VM_DIR=1`.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, ErrorKind, Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, TcpListener};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use tracing::{debug, info, warn};

use ciab_builder::qemu::{display_command, Machine, Serial};

/// Lines of serial output included in failure messages.
pub const TAIL_LINES: usize = 40;
/// How long [`Vm::start`] waits for QEMU to connect the serial socket and
/// open QMP.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Default QMP reply timeout.
pub const QMP_TIMEOUT: Duration = Duration::from_secs(30);

/// The guest kernel's last words.
pub const KERNEL_PANIC: &str = "Kernel panic - not syncing";

/// vCPUs for the tests' small guests (tiny images, installers). QEMU 7.2's
/// multi-threaded TCG (bookworm's) now and then leaves a vCPU running
/// code another vCPU has just patched: the guest kernel, flipping a static
/// key, dies with "Fatal exception in interrupt" (seen at 2.9 s of an
/// installer boot in CI, at 952 s of an IaaS boot). One vCPU cannot race
/// itself, and these guests gain nothing from a second one: the tests run
/// two at a time on two host cores.
pub const SMALL_GUEST_CPUS: u32 = 1;

/// Longest unix socket path we accept (sun_path is 108 bytes incl. NUL).
const MAX_SOCKET_PATH: usize = 100;
/// A line longer than this without a newline is split.
const MAX_LINE_BYTES: usize = 64 * 1024;

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

/// A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read
/// the port, close). Another process can grab it before QEMU binds it; QEMU
/// then fails to start with "Could not set up host forwarding rule", which
/// shows up in the start error.
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind(("127.0.0.1", 0)).context("binding 127.0.0.1:0")?;
    Ok(l.local_addr().context("local_addr of 127.0.0.1:0")?.port())
}

/// Remove ANSI escape sequences (CSI, OSC, two-byte ESC sequences), `\r`
/// and other C0 control characters except TAB; decode as lossy UTF-8.
pub fn clean_line(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b == 0x1b {
            i += 1;
            match raw.get(i) {
                // CSI: ESC [ params/intermediates final(0x40..=0x7e)
                Some(b'[') => {
                    i += 1;
                    while i < raw.len() && !(0x40..=0x7e).contains(&raw[i]) {
                        i += 1;
                    }
                    i += 1;
                }
                // OSC / DCS / etc: up to BEL or ESC \
                Some(b']') | Some(b'P') | Some(b'X') | Some(b'^') | Some(b'_') => {
                    i += 1;
                    while i < raw.len() {
                        if raw[i] == 0x07 {
                            i += 1;
                            break;
                        }
                        if raw[i] == 0x1b && raw.get(i + 1) == Some(&b'\\') {
                            i += 2;
                            break;
                        }
                        i += 1;
                    }
                }
                // ESC ( B and friends: one intermediate + final
                Some(b'(') | Some(b')') | Some(b'*') | Some(b'+') | Some(b'#') => i += 2,
                // ESC c, ESC =, ESC > ...
                Some(_) => i += 1,
                None => {}
            }
            continue;
        }
        if b == b'\t' || b >= 0x20 && b != 0x7f {
            out.push(b);
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A 512-byte boot sector that prints `msg` on COM1 (polling LSR bit 5
/// before each byte) and then halts for ever. `msg` must not contain NUL and
/// must fit (≤ 460 bytes).
pub fn serial_boot_sector(msg: &[u8]) -> Result<[u8; 512]> {
    if msg.contains(&0) {
        bail!("message must not contain NUL");
    }
    let mut c: Vec<u8> = Vec::new();
    c.extend([0xFA, 0x31, 0xC0, 0x8E, 0xD8]); // cli; xor ax,ax; mov ds,ax
    c.push(0xBE); // mov si, imm16 (patched below)
    let si_fix = c.len();
    c.extend([0, 0]);
    let next = c.len();
    c.extend([0xAC, 0x84, 0xC0, 0x74, 0x00]); // lodsb; test al,al; jz done
    let jz_done = c.len() - 1;
    c.extend([0x88, 0xC3]); // mov bl, al
    c.extend([0xBA, 0xFD, 0x03]); // mov dx, 0x3fd (LSR)
    let wait = c.len();
    c.extend([0xEC, 0xA8, 0x20, 0x74]); // in al,dx; test al,0x20; jz wait
    c.push(rel8(wait, c.len() + 1)?);
    c.extend([0xBA, 0xF8, 0x03]); // mov dx, 0x3f8 (THR)
    c.extend([0x88, 0xD8, 0xEE]); // mov al, bl; out dx, al
    c.push(0xEB); // jmp next
    c.push(rel8(next, c.len() + 1)?);
    let done = c.len();
    c[jz_done] = rel8(done, jz_done + 1)?;
    c.extend([0xF4, 0xEB, 0xFD]); // done: hlt; jmp done
    let msg_addr = 0x7c00 + c.len();
    c[si_fix..si_fix + 2].copy_from_slice(&(msg_addr as u16).to_le_bytes());
    c.extend_from_slice(msg);
    c.push(0);
    if c.len() > 510 {
        bail!(
            "message too long for a boot sector ({} bytes of code+data)",
            c.len()
        );
    }
    let mut s = [0u8; 512];
    s[..c.len()].copy_from_slice(&c);
    s[510] = 0x55;
    s[511] = 0xAA;
    Ok(s)
}

/// rel8 displacement from `from` (address after the jump) to `to`.
fn rel8(to: usize, from: usize) -> Result<u8> {
    let d = to as isize - from as isize;
    i8::try_from(d)
        .map(|d| d as u8)
        .map_err(|_| anyhow!("jump displacement {d} out of range"))
}

/// Write `sector` at offset 0 of a new raw image of `size` bytes.
pub fn write_boot_disk(path: &Path, sector: &[u8; 512], size: u64) -> Result<()> {
    let mut f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(sector)
        .with_context(|| format!("writing {}", path.display()))?;
    f.set_len(size.max(512))
        .with_context(|| format!("sizing {}", path.display()))?;
    Ok(())
}

// ---------------------------------------------------------------------------
// QMP
// ---------------------------------------------------------------------------

/// Minimal blocking QMP client.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
    /// Asynchronous events seen while waiting for replies.
    pub events: Vec<Value>,
    /// The greeting (`{"QMP": {...}}`).
    pub greeting: Value,
}

impl Qmp {
    /// Handshake on a connected stream: read the greeting, negotiate
    /// capabilities. `timeout` bounds every read.
    pub fn handshake(stream: UnixStream, timeout: Duration) -> Result<Self> {
        stream
            .set_read_timeout(Some(timeout))
            .context("setting QMP read timeout")?;
        stream
            .set_write_timeout(Some(timeout))
            .context("setting QMP write timeout")?;
        let writer = stream.try_clone().context("cloning QMP socket")?;
        let mut q = Qmp {
            reader: BufReader::new(stream),
            writer,
            next_id: 1,
            events: Vec::new(),
            greeting: Value::Null,
        };
        let greeting = q.read_message()?.context("QMP closed before greeting")?;
        if greeting.get("QMP").is_none() {
            bail!("unexpected QMP greeting: {greeting}");
        }
        q.greeting = greeting;
        q.execute("qmp_capabilities")
            .context("QMP capabilities negotiation")?;
        Ok(q)
    }

    /// Connect to a QMP unix socket and handshake.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self> {
        let s = UnixStream::connect(path)
            .with_context(|| format!("connecting to QMP socket {}", path.display()))?;
        Self::handshake(s, timeout)
    }

    fn read_message(&mut self) -> Result<Option<Value>> {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self
                .reader
                .read_line(&mut line)
                .context("reading from QMP")?;
            if n == 0 {
                return Ok(None);
            }
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(line.trim())
                .with_context(|| format!("bad QMP message: {}", line.trim()))?;
            return Ok(Some(v));
        }
    }

    /// Run a command without arguments; returns its `return` value.
    pub fn execute(&mut self, command: &str) -> Result<Value> {
        self.execute_with(command, None)
    }

    /// Run a command; returns its `return` value, or an error carrying QMP's
    /// error class and description.
    pub fn execute_with(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        match self.execute_raw(command, arguments)? {
            Some(resp) => response_value(command, resp),
            None => bail!("QMP connection closed while waiting for reply to {command}"),
        }
    }

    /// Send a command and return the full reply object (`None` if QEMU
    /// closed the connection first).
    pub fn execute_raw(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Option<Value>> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut text = msg.to_string();
        text.push('\n');
        debug!(%command, "qmp ->");
        self.writer
            .write_all(text.as_bytes())
            .with_context(|| format!("sending QMP command {command}"))?;
        loop {
            let Some(v) = self
                .read_message()
                .with_context(|| format!("waiting for reply to QMP {command}"))?
            else {
                return Ok(None);
            };
            if v.get("event").is_some() {
                debug!(event = %v["event"], "qmp event");
                self.events.push(v);
                continue;
            }
            if v.get("id") == Some(&json!(id)) {
                return Ok(Some(v));
            }
            debug!("ignoring unrelated QMP message {v}");
        }
    }
}

fn response_value(command: &str, resp: Value) -> Result<Value> {
    if let Some(r) = resp.get("return") {
        return Ok(r.clone());
    }
    if let Some(e) = resp.get("error") {
        bail!(
            "QMP {command} failed: {}: {}",
            e.get("class").and_then(Value::as_str).unwrap_or("?"),
            e.get("desc").and_then(Value::as_str).unwrap_or("?")
        );
    }
    bail!("unexpected QMP reply to {command}: {resp}")
}

// ---------------------------------------------------------------------------
// Serial capture
// ---------------------------------------------------------------------------

#[derive(Default)]
struct SerialState {
    /// Complete, cleaned lines.
    lines: Vec<String>,
    /// Raw bytes of the current unterminated line.
    partial: Vec<u8>,
    /// `wait_for_line` only looks at lines with index >= cursor.
    cursor: usize,
    /// Reader hit EOF or an error (QEMU closed the chardev / exited).
    eof: bool,
    bytes: u64,
}

impl SerialState {
    fn push_bytes(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        for &b in data {
            if b == b'\n' {
                let raw = std::mem::take(&mut self.partial);
                self.lines.push(clean_line(&raw));
            } else {
                self.partial.push(b);
                if self.partial.len() >= MAX_LINE_BYTES {
                    let raw = std::mem::take(&mut self.partial);
                    self.lines.push(clean_line(&raw));
                }
            }
        }
    }

    /// The first line at or after the cursor containing `needle`, moving
    /// the cursor past it; with `partial_matches` the unterminated last line
    /// counts too (prompts never get their newline).
    fn take_match(&mut self, needle: &str, partial_matches: bool) -> Option<String> {
        let from = self.cursor.min(self.lines.len());
        if let Some(i) = self.lines[from..].iter().position(|l| l.contains(needle)) {
            self.cursor = from + i + 1;
            return Some(self.lines[from + i].clone());
        }
        if partial_matches && self.cursor <= self.lines.len() && !self.partial.is_empty() {
            let p = clean_line(&self.partial);
            if p.contains(needle) {
                // Skip this line when it gets its newline.
                self.cursor = self.lines.len() + 1;
                return Some(p);
            }
        }
        None
    }

    fn tail(&self, n: usize) -> Vec<String> {
        let mut v: Vec<String> = self.lines[self.lines.len().saturating_sub(n)..].to_vec();
        if !self.partial.is_empty() {
            v.push(format!("{} [no newline yet]", clean_line(&self.partial)));
            if v.len() > n {
                v.remove(0);
            }
        }
        v
    }
}

struct SerialShared {
    state: Mutex<SerialState>,
    cond: Condvar,
}

impl SerialShared {
    fn lock(&self) -> MutexGuard<'_, SerialState> {
        // A panic in the reader can't leave the state inconsistent in a way
        // that matters for log matching; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn spawn_serial_reader(
    mut stream: UnixStream,
    log_path: PathBuf,
    shared: Arc<SerialShared>,
) -> Result<JoinHandle<()>> {
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening serial log {}", log_path.display()))?;
    thread::Builder::new()
        .name("ciab-serial".into())
        .spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if let Err(e) = log.write_all(&buf[..n]) {
                            warn!("writing serial log: {e}");
                        }
                        shared.lock().push_bytes(&buf[..n]);
                        shared.cond.notify_all();
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => {
                        debug!("serial read ended: {e}");
                        break;
                    }
                }
            }
            shared.lock().eof = true;
            shared.cond.notify_all();
        })
        .context("spawning serial reader thread")
}

// ---------------------------------------------------------------------------
// Vm
// ---------------------------------------------------------------------------

/// Kills and reaps a child unless disarmed (used during start-up).
struct ChildGuard(Option<Child>);

impl ChildGuard {
    fn child(&mut self) -> Result<&mut Child> {
        self.0
            .as_mut()
            .ok_or_else(|| anyhow!("child already taken"))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A running QEMU VM under test. Dropping it kills and reaps QEMU.
pub struct Vm {
    child: Mutex<Child>,
    pid: u32,
    dir_path: PathBuf,
    /// `None` once kept (CIAB_KEEP_VM_DIR).
    _dir: Option<tempfile::TempDir>,
    serial: Arc<SerialShared>,
    serial_stream: UnixStream,
    reader: Option<JoinHandle<()>>,
    qmp: Mutex<Option<Qmp>>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("pid", &self.pid)
            .field("dir", &self.dir_path)
            .finish_non_exhaustive()
    }
}

fn vm_base_dir() -> PathBuf {
    let t = std::env::temp_dir();
    // Leave room for "/ciab-vm-XXXXXX/serial.sock".
    if t.as_os_str().len() + 32 <= MAX_SOCKET_PATH {
        t
    } else {
        PathBuf::from("/tmp")
    }
}

fn read_tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len > max {
        let _ = f.seek(SeekFrom::Start(len - max));
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

impl Vm {
    /// Boot `machine`. Its `serial` and `qmp_socket` are replaced by the
    /// harness's own sockets in a fresh temp dir; everything else is used as
    /// is. Returns once QEMU is connected to our serial listener and QMP is
    /// negotiated.
    pub fn start(machine: &Machine) -> Result<Vm> {
        let dir = tempfile::Builder::new()
            .prefix("ciab-vm-")
            .tempdir_in(vm_base_dir())
            .context("creating VM temp dir")?;
        let dir_path = dir.path().to_path_buf();
        let serial_sock = dir_path.join("serial.sock");
        let qmp_sock = dir_path.join("qmp.sock");
        if qmp_sock.as_os_str().len() > MAX_SOCKET_PATH {
            bail!(
                "socket path {} is too long for a unix socket; set TMPDIR shorter",
                qmp_sock.display()
            );
        }
        let listener = UnixListener::bind(&serial_sock)
            .with_context(|| format!("listening on {}", serial_sock.display()))?;

        let mut m = machine.clone();
        m.serial = Serial::Connect(serial_sock.clone());
        m.qmp_socket = Some(qmp_sock.clone());
        let mut cmd = m.command_in(&dir_path)?;
        let cmdline = display_command(&cmd);
        fs::write(dir_path.join("cmdline"), format!("{cmdline}\n"))
            .context("writing cmdline file")?;
        let stderr_path = dir_path.join("qemu.stderr");
        let stdout_path = dir_path.join("qemu.stdout");
        cmd.stdin(Stdio::null())
            .stdout(File::create(&stdout_path).context("creating qemu.stdout")?)
            .stderr(File::create(&stderr_path).context("creating qemu.stderr")?);
        info!(dir = %dir_path.display(), "starting VM: {cmdline}");
        let child = cmd.spawn().with_context(|| format!("spawning {cmdline}"))?;
        let pid = child.id();
        let mut guard = ChildGuard(Some(child));
        let deadline = Instant::now() + STARTUP_TIMEOUT;

        let exited = |guard: &mut ChildGuard, what: &str| -> Result<()> {
            if let Some(st) = guard.child()?.try_wait().context("polling QEMU")? {
                bail!(
                    "QEMU exited ({st}) before {what}; stderr:\n{}\ncommand: {cmdline}",
                    read_tail(&stderr_path, 8192).trim_end()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "QEMU did not {what} within {STARTUP_TIMEOUT:?}; stderr:\n{}\ncommand: {cmdline}",
                    read_tail(&stderr_path, 8192).trim_end()
                );
            }
            Ok(())
        };

        // 1. Serial: QEMU connects to us.
        listener
            .set_nonblocking(true)
            .context("making serial listener non-blocking")?;
        let serial_stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    exited(&mut guard, "connecting the serial socket")?;
                    thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e).context("accepting serial connection"),
            }
        };
        drop(listener);
        serial_stream
            .set_nonblocking(false)
            .context("making serial socket blocking")?;
        let shared = Arc::new(SerialShared {
            state: Mutex::new(SerialState::default()),
            cond: Condvar::new(),
        });
        let reader = spawn_serial_reader(
            serial_stream.try_clone().context("cloning serial socket")?,
            dir_path.join("serial.log"),
            shared.clone(),
        )?;
        // From here on, if we fail: shut the stream so the reader ends, and
        // if QEMU is dying, say why (its stderr is the interesting part).
        let fail = |e: anyhow::Error, s: &UnixStream, guard: &mut ChildGuard| {
            let _ = s.shutdown(Shutdown::Both);
            let until = Instant::now() + Duration::from_secs(2);
            while let Ok(c) = guard.child() {
                match c.try_wait() {
                    Ok(Some(st)) => {
                        return e.context(format!(
                            "QEMU exited ({st}) during start-up; stderr:\n{}\ncommand: {cmdline}",
                            read_tail(&stderr_path, 8192).trim_end()
                        ));
                    }
                    Ok(None) if Instant::now() < until => thread::sleep(Duration::from_millis(20)),
                    _ => break,
                }
            }
            e
        };

        // 2. QMP: QEMU listens; retry until the socket is there.
        let qmp_stream = loop {
            match UnixStream::connect(&qmp_sock) {
                Ok(s) => break s,
                Err(e)
                    if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) =>
                {
                    if let Err(e) = exited(&mut guard, "open the QMP socket") {
                        let _ = serial_stream.shutdown(Shutdown::Both);
                        return Err(e);
                    }
                    thread::sleep(Duration::from_millis(10));
                }
                Err(e) => {
                    return Err(fail(
                        anyhow::Error::new(e).context("connecting QMP socket"),
                        &serial_stream,
                        &mut guard,
                    ));
                }
            }
        };
        let qmp = Qmp::handshake(qmp_stream, QMP_TIMEOUT)
            .map_err(|e| fail(e, &serial_stream, &mut guard))?;
        debug!(greeting = %qmp.greeting, "QMP ready");

        let child = guard.0.take().ok_or_else(|| anyhow!("child vanished"))?;
        let keep = std::env::var_os("CIAB_KEEP_VM_DIR").is_some_and(|v| v == "1");
        let dir = if keep {
            info!("keeping VM dir {}", dir_path.display());
            let _ = dir.keep();
            None
        } else {
            Some(dir)
        };
        Ok(Vm {
            child: Mutex::new(child),
            pid,
            dir_path,
            _dir: dir,
            serial: shared,
            serial_stream,
            reader: Some(reader),
            qmp: Mutex::new(Some(qmp)),
        })
    }

    /// QEMU's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The VM's temp dir (logs, sockets, OVMF_VARS copy).
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    /// Raw serial log file.
    pub fn serial_log_path(&self) -> PathBuf {
        self.dir_path.join("serial.log")
    }

    /// QEMU's stderr so far.
    pub fn stderr(&self) -> String {
        read_tail(&self.dir_path.join("qemu.stderr"), 1 << 20)
    }

    fn child(&self) -> MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Some(status)` once QEMU has exited (it is reaped then).
    pub fn try_exit_status(&self) -> Result<Option<ExitStatus>> {
        self.child().try_wait().context("polling QEMU")
    }

    pub fn is_running(&self) -> bool {
        matches!(self.try_exit_status(), Ok(None))
    }

    /// Wait up to `timeout` for QEMU to exit.
    pub fn wait_exit(&self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_exit_status()? {
                return Ok(Some(st));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// All complete serial lines so far (cleaned).
    pub fn serial_lines(&self) -> Vec<String> {
        self.serial.lock().lines.clone()
    }

    /// The last `n` serial lines, including an unterminated last line.
    pub fn serial_tail(&self, n: usize) -> Vec<String> {
        self.serial.lock().tail(n)
    }

    /// Wait for a complete serial line (one that has its newline) containing
    /// `needle` that comes after the previous match, so waiting twice for the
    /// same text waits for a second occurrence. Only whole lines match: a
    /// caller inspecting the returned line must never get it cut mid-write
    /// (`"first boot "` matched `"first boot com"` once, and
    /// `"ciab-guest: up, "` matched before its address arrived). On failure
    /// the error has the last 40 lines and QEMU's state (exit status and
    /// stderr if it exited).
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> Result<String> {
        self.wait_for(needle, timeout, false)
    }

    /// Like [`Vm::wait_for_line`], but the unterminated last line matches
    /// too: for prompts (`login: `, `Shell> `, a question waiting for
    /// input) that never get a newline until someone answers.
    pub fn wait_for_prompt(&self, needle: &str, timeout: Duration) -> Result<String> {
        self.wait_for(needle, timeout, true)
    }

    /// Whether the guest kernel has panicked (it never recovers by itself).
    pub fn kernel_panicked(&self) -> bool {
        self.serial.lock().lines.iter().any(|l| l.contains(KERNEL_PANIC))
    }

    fn wait_for(&self, needle: &str, timeout: Duration, partial_matches: bool) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let mut exited_at: Option<Instant> = None;
        loop {
            {
                let mut st = self.serial.lock();
                let from = st.cursor.min(st.lines.len());
                if let Some(line) = st.take_match(needle, partial_matches) {
                    return Ok(line);
                }
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                // A guest kernel panic never recovers: report it now rather
                // than at the timeout.
                if st.lines[from..].iter().any(|l| l.contains(KERNEL_PANIC)) {
                    drop(st);
                    return Err(anyhow!("{}", self.failure_report(&format!("the guest kernel panicked while waiting for {needle:?}"))));
                }
                if st.eof {
                    break;
                }
                // After QEMU exits, give the reader a moment to drain.
                if exited_at.is_some_and(|t| now.duration_since(t) > Duration::from_secs(2)) {
                    break;
                }
                let wait = (deadline - now).min(Duration::from_millis(200));
                let _unused = self
                    .serial
                    .cond
                    .wait_timeout(st, wait)
                    .unwrap_or_else(|p| p.into_inner());
            }
            if exited_at.is_none() && matches!(self.try_exit_status(), Ok(Some(_))) {
                exited_at = Some(Instant::now());
            }
        }
        Err(anyhow!(
            "{}",
            self.failure_report(&format!(
                "no serial line containing {needle:?} within {timeout:?}"
            ))
        ))
    }

    /// A diagnostic block: `what`, QEMU state, stderr, last 40 serial lines.
    pub fn failure_report(&self, what: &str) -> String {
        let state = match self.try_exit_status() {
            Ok(Some(st)) => format!("QEMU has exited: {st}"),
            Ok(None) => format!("QEMU is still running (pid {})", self.pid),
            Err(e) => format!("QEMU state unknown: {e:#}"),
        };
        let serial_closed = self.serial.lock().eof;
        let stderr = self.stderr();
        let stderr = stderr.trim_end();
        let tail = self.serial_tail(TAIL_LINES);
        let mut s = format!("{what}\n{state}");
        if serial_closed {
            s.push_str("; serial connection closed");
        }
        s.push_str(&format!(
            "\nQEMU stderr: {}\nserial log: {}\nlast {} serial lines:\n",
            if stderr.is_empty() { "(empty)" } else { stderr },
            self.serial_log_path().display(),
            tail.len()
        ));
        for l in &tail {
            s.push_str("  | ");
            s.push_str(l);
            s.push('\n');
        }
        s
    }

    /// Run a QMP command; returns its `return` value.
    pub fn qmp(&self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let mut g = self.qmp.lock().unwrap_or_else(|p| p.into_inner());
        let q = g
            .as_mut()
            .ok_or_else(|| anyhow!("QMP connection is closed"))?;
        q.execute_with(command, arguments)
    }

    /// QMP `query-status` → e.g. "running", "paused", "shutdown".
    pub fn query_status(&self) -> Result<String> {
        let v = self.qmp("query-status", None)?;
        v.get("status")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| anyhow!("query-status reply has no status: {v}"))
    }

    /// QMP `system_reset` (hard reset, like the reset button).
    pub fn system_reset(&self) -> Result<()> {
        self.qmp("system_reset", None).map(|_| ())
    }

    /// Pull the plug: QMP `quit` (QEMU stops the guest immediately, no guest
    /// shutdown), then wait for the process. Falls back to SIGKILL if QEMU
    /// doesn't exit within 10 s.
    pub fn power_cut(&self) -> Result<ExitStatus> {
        if let Some(st) = self.try_exit_status()? {
            return Ok(st);
        }
        {
            let mut g = self.qmp.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(mut q) = g.take() {
                match q.execute_raw("quit", None) {
                    Ok(Some(r)) => {
                        response_value("quit", r)?;
                    }
                    Ok(None) => debug!("QMP closed during quit (fine)"),
                    Err(e) => warn!("QMP quit: {e:#}"),
                }
            }
        }
        match self.wait_exit(Duration::from_secs(10))? {
            Some(st) => Ok(st),
            None => {
                warn!("QEMU did not exit after QMP quit; killing");
                self.kill()
            }
        }
    }

    /// SIGKILL QEMU and reap it.
    pub fn kill(&self) -> Result<ExitStatus> {
        let mut c = self.child();
        if let Some(st) = c.try_wait().context("polling QEMU")? {
            return Ok(st);
        }
        c.kill().context("killing QEMU")?;
        c.wait().context("reaping QEMU")
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        match self.kill() {
            Ok(st) => debug!(pid = self.pid, "QEMU gone: {st}"),
            Err(e) => warn!(pid = self.pid, "could not kill QEMU: {e:#}"),
        }
        if let Ok(mut g) = self.qmp.lock() {
            g.take();
        }
        let _ = self.serial_stream.shutdown(Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

// ---------------------------------------------------------------------------
// Tests (real QEMU)
// ---------------------------------------------------------------------------

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ciab_builder::qemu::{find_ovmf, Accel, Firmware, Network, PortForward};
    use std::net::TcpStream;

    fn hello_disk(dir: &Path) -> PathBuf {
        let img = dir.join("hello.img");
        let sector = serial_boot_sector(b"HELLO-CIAB\r\n").unwrap();
        write_boot_disk(&img, &sector, 1 << 20).unwrap();
        img
    }

    fn machine(img: &Path, firmware: Firmware) -> Machine {
        let mut m = Machine::new(img);
        m.firmware = firmware;
        m.accel = Accel::Tcg;
        m.memory_mib = 128;
        m.cpus = 1;
        m.snapshot = true;
        m
    }

    fn proc_alive(pid: u32) -> bool {
        Path::new(&format!("/proc/{pid}")).exists()
    }

    #[test]
    fn clean_line_strips_escapes() {
        assert_eq!(clean_line(b"\x1b[=3h\x1b[0mBdsDxe: x\r"), "BdsDxe: x");
        assert_eq!(clean_line(b"a\x1b]0;title\x07b\x1b(Bc\x1bcd"), "abcd");
        assert_eq!(clean_line(b"tab\there\x08"), "tab\there");
        assert_eq!(clean_line("ünï".as_bytes()), "ünï");
    }

    #[test]
    fn serial_state_lines_and_partials() {
        let mut s = SerialState::default();
        s.push_bytes(b"one\r\ntw");
        s.push_bytes(b"o\r\nlogin: ");
        assert_eq!(s.lines, vec!["one", "two"]);
        assert_eq!(s.tail(2), vec!["two", "login:  [no newline yet]"]);
    }

    #[test]
    fn whole_line_matching_waits_for_the_newline() {
        let mut s = SerialState::default();
        s.push_bytes(b"boot\r\nciab: first boot com");
        assert_eq!(s.take_match("first boot ", false), None);
        s.push_bytes(b"plete\r\n");
        assert_eq!(s.take_match("first boot ", false).as_deref(), Some("ciab: first boot complete"));
        assert_eq!(s.take_match("first boot ", false), None, "the cursor moved past the match");

        s.push_bytes(b"box login: ");
        assert_eq!(s.take_match("login:", true).as_deref(), Some("box login: "));
        s.push_bytes(b"\r\nnext\r\n");
        assert_eq!(s.take_match("login:", true), None, "the prompt, once matched, is skipped when it ends");
        assert_eq!(s.take_match("next", false).as_deref(), Some("next"));
    }

    #[test]
    fn hello_bios_end_to_end() {
        let dir = tempfile::tempdir().unwrap();
        let img = hello_disk(dir.path());
        let vm = Vm::start(&machine(&img, Firmware::Bios)).unwrap();
        let pid = vm.pid();
        let t0 = Instant::now();
        let line = vm
            .wait_for_line("HELLO-CIAB", Duration::from_secs(60))
            .unwrap();
        println!("got {line:?} after {:?}", t0.elapsed());
        assert_eq!(line, "HELLO-CIAB");

        let t1 = Instant::now();
        let err = vm
            .wait_for_line("NEVER", Duration::from_secs(3))
            .unwrap_err()
            .to_string();
        let waited = t1.elapsed();
        println!("expected failure after {waited:?}:\n{err}");
        assert!(waited >= Duration::from_secs(3) && waited < Duration::from_secs(6));
        assert!(err.contains("| HELLO-CIAB"), "{err}");
        assert!(err.contains("still running"), "{err}");

        assert_eq!(vm.query_status().unwrap(), "running");
        let qerr = vm.qmp("no-such-command", None).unwrap_err().to_string();
        assert!(qerr.contains("CommandNotFound"), "{qerr}");

        // Reset: the guest prints again; the cursor makes us wait for the
        // second occurrence.
        vm.system_reset().unwrap();
        vm.wait_for_line("HELLO-CIAB", Duration::from_secs(60))
            .unwrap();
        // (The match may have been on the still unterminated line; give the
        // newline a moment to arrive before counting complete lines.)
        let count = || {
            vm.serial_lines()
                .iter()
                .filter(|l| *l == "HELLO-CIAB")
                .count()
        };
        let until = Instant::now() + Duration::from_secs(10);
        while count() < 2 && Instant::now() < until {
            thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(count(), 2, "{:?}", vm.serial_lines());

        let st = vm.power_cut().unwrap();
        println!("power_cut exit status: {st}");
        assert!(!vm.is_running());
        let err = vm
            .wait_for_line("NEVER", Duration::from_secs(30))
            .unwrap_err()
            .to_string();
        assert!(err.contains("QEMU has exited"), "{err}");
        let log = fs::read(vm.serial_log_path()).unwrap();
        assert!(String::from_utf8_lossy(&log).contains("HELLO-CIAB\r\n"));
        drop(vm);
        assert!(!proc_alive(pid), "qemu pid {pid} still exists");
    }

    #[test]
    fn drop_kills_running_qemu() {
        let dir = tempfile::tempdir().unwrap();
        let img = hello_disk(dir.path());
        let vm = Vm::start(&machine(&img, Firmware::Bios)).unwrap();
        let pid = vm.pid();
        let vm_dir = vm.dir().to_path_buf();
        vm.wait_for_line("HELLO-CIAB", Duration::from_secs(60))
            .unwrap();
        assert!(proc_alive(pid));
        let t = Instant::now();
        drop(vm);
        println!("drop took {:?}", t.elapsed());
        assert!(!proc_alive(pid), "qemu pid {pid} still exists after drop");
        assert!(!vm_dir.exists(), "temp dir not removed");
    }

    #[test]
    fn start_failure_reports_stderr_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let img = hello_disk(dir.path());
        let mut m = machine(&img, Firmware::Bios);
        m.extra_args.push("-device".into());
        m.extra_args.push("no-such-device".into());
        let err = format!("{:#}", Vm::start(&m).unwrap_err());
        println!("{err}");
        assert!(err.contains("QEMU exited"), "{err}");
        assert!(err.contains("no-such-device"), "{err}");
    }

    #[test]
    fn uefi_ovmf_starts() {
        let ovmf = find_ovmf().unwrap();
        let before = fs::read(&ovmf.vars_template).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let img = hello_disk(dir.path());
        let mut m = machine(&img, Firmware::Uefi);
        m.memory_mib = 256;
        m.network = Network::None;
        let vm = Vm::start(&m).unwrap();
        thread::sleep(Duration::from_secs(5));
        assert!(vm.is_running(), "{}", vm.failure_report("OVMF died"));
        assert_eq!(vm.query_status().unwrap(), "running");
        println!("serial after 5 s: {:?}", vm.serial_tail(10));
        // Debian's OVMF logs boot-manager activity on the serial console: it
        // can't boot an MBR sector (no CSM) and drops to the EFI shell.
        let t = Instant::now();
        let line = vm.wait_for_line("BdsDxe", Duration::from_secs(120));
        println!("BdsDxe after {:?}: {line:?}", t.elapsed());
        line.unwrap();
        let shell = vm.wait_for_prompt("Shell>", Duration::from_secs(60));
        println!("shell: {shell:?}");
        println!("serial: {:#?}", vm.serial_tail(20));
        vm.power_cut().unwrap();
        assert_eq!(before, fs::read(&ovmf.vars_template).unwrap());
    }

    #[test]
    fn user_network_forward_listens_on_localhost() {
        let dir = tempfile::tempdir().unwrap();
        let img = hello_disk(dir.path());
        let port = free_port().unwrap();
        let mut m = machine(&img, Firmware::Bios);
        m.network = Network::User {
            forwards: vec![PortForward {
                host: port,
                guest: 22,
                name: "ssh".into(),
            }],
        };
        let vm = Vm::start(&m).unwrap();
        vm.wait_for_line("HELLO-CIAB", Duration::from_secs(60))
            .unwrap();
        // slirp accepts on the host side regardless of the guest.
        TcpStream::connect(("127.0.0.1", port)).unwrap();
        let cmdline = fs::read_to_string(vm.dir().join("cmdline")).unwrap();
        assert!(cmdline.contains(&format!("hostfwd=tcp:127.0.0.1:{port}-:22")));
    }

    #[test]
    fn stdio_and_file_serial_modes_work() {
        use ciab_builder::qemu::{run_bounded, BoundedExit};
        let dir = tempfile::tempdir().unwrap();
        let img = hello_disk(dir.path());
        // stdio (mux with monitor): output shows on stdout.
        let m = machine(&img, Firmware::Bios);
        let mut p = m.command().unwrap();
        let r = run_bounded(&mut p.command, Duration::from_secs(4), &[]).unwrap();
        assert!(matches!(r.exit, BoundedExit::TimedOut), "{r:?}");
        assert!(r.stdout.contains("HELLO-CIAB"), "{r:?}");
        // file
        let log = dir.path().join("serial.txt");
        let mut m = machine(&img, Firmware::Bios);
        m.serial = Serial::File(log.clone());
        let mut p = m.command().unwrap();
        let r = run_bounded(&mut p.command, Duration::from_secs(4), &[]).unwrap();
        assert!(matches!(r.exit, BoundedExit::TimedOut), "{r:?}");
        assert!(fs::read_to_string(&log).unwrap().contains("HELLO-CIAB"));
    }

    /// qcow2 is detected by magic and boots (qemu-img is a build tool `ciab doctor` installs).
    #[test]
    fn boots_qcow2_image() {
        let dir = tempfile::tempdir().unwrap();
        let raw = hello_disk(dir.path());
        let qcow = dir.path().join("hello.qcow2");
        let out = std::process::Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(&qcow)
            .output()
            .expect("qemu-img (qemu-utils) must be installed: run `ciab doctor --install`");
        assert!(out.status.success(), "{out:?}");
        let vm = Vm::start(&machine(&qcow, Firmware::Bios)).unwrap();
        vm.wait_for_line("HELLO-CIAB", Duration::from_secs(60))
            .unwrap();
        let cmdline = fs::read_to_string(vm.dir().join("cmdline")).unwrap();
        assert!(cmdline.contains("format=qcow2"), "{cmdline}");
    }

    #[test]
    fn free_port_is_nonzero() {
        assert_ne!(free_port().unwrap(), 0);
    }
}
