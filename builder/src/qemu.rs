//! QEMU machine description, command-line construction and accelerator probe.
//!
//! * [`Machine`] describes an x86_64 VM (q35, virtio-blk, optional UEFI) and
//!   turns it into a `qemu-system-x86_64` [`Command`] via [`Machine::command`]
//!   or [`Machine::command_in`].
//! * [`probe_accel`] decides between KVM and TCG by *actually booting* a tiny
//!   guest under KVM (an openable `/dev/kvm` is not proof that KVM works: on
//!   nested hosts KVM may emulate instructions it cannot handle and the guest
//!   hangs). The result is cached per (QEMU version, kernel release, boot id).
//!
//! Environment variables:
//! * `CIAB_QEMU` – QEMU binary (default `qemu-system-x86_64`).
//! * `CIAB_ACCEL=tcg|kvm` – skip the probe and force an accelerator.
//! * `CIAB_OVMF_CODE` / `CIAB_OVMF_VARS` – explicit OVMF firmware pair.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use tracing::{debug, info, warn};

/// Default QEMU binary; override with `CIAB_QEMU`.
pub const DEFAULT_QEMU: &str = "qemu-system-x86_64";

/// The QEMU binary to run (`$CIAB_QEMU` or [`DEFAULT_QEMU`]).
pub fn qemu_binary() -> OsString {
    std::env::var_os("CIAB_QEMU")
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| OsString::from(DEFAULT_QEMU))
}

// ---------------------------------------------------------------------------
// Firmware / Accel enums
// ---------------------------------------------------------------------------

/// Guest firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Firmware {
    /// OVMF (EDK II) from the `ovmf` package.
    Uefi,
    /// SeaBIOS (QEMU's default) from the `seabios` package.
    Bios,
}

impl fmt::Display for Firmware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Firmware::Uefi => "uefi",
            Firmware::Bios => "bios",
        })
    }
}

impl FromStr for Firmware {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "uefi" | "efi" | "ovmf" => Ok(Firmware::Uefi),
            "bios" | "seabios" | "legacy" => Ok(Firmware::Bios),
            other => bail!("unknown firmware {other:?} (expected `uefi` or `bios`)"),
        }
    }
}

/// QEMU accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// The `-cpu` model used with this accelerator.
    pub fn cpu_model(self) -> &'static str {
        match self {
            Accel::Kvm => "host",
            Accel::Tcg => "max",
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

impl FromStr for Accel {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            other => bail!("unknown accelerator {other:?} (expected `kvm` or `tcg`)"),
        }
    }
}

// ---------------------------------------------------------------------------
// Image format
// ---------------------------------------------------------------------------

/// Disk image format as passed to `-drive format=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    Raw,
    Qcow2,
}

impl ImageFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        }
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// qcow2 magic: "QFI\xfb".
pub const QCOW2_MAGIC: [u8; 4] = [b'Q', b'F', b'I', 0xfb];

/// Detect raw vs qcow2 by the qcow2 magic. Anything else (including files
/// shorter than 4 bytes) is raw.
pub fn detect_image_format(path: &Path) -> Result<ImageFormat> {
    let mut f =
        fs::File::open(path).with_context(|| format!("opening disk image {}", path.display()))?;
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        let n = f
            .read(&mut magic[got..])
            .with_context(|| format!("reading header of disk image {}", path.display()))?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(if got == 4 && magic == QCOW2_MAGIC {
        ImageFormat::Qcow2
    } else {
        ImageFormat::Raw
    })
}

// ---------------------------------------------------------------------------
// Firmware discovery
// ---------------------------------------------------------------------------

/// A matching OVMF code/vars pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvmfFiles {
    /// Read-only code image (`-drive if=pflash,readonly=on`).
    pub code: PathBuf,
    /// Pristine variable store template; never handed to QEMU directly, a
    /// per-run copy is.
    pub vars_template: PathBuf,
}

/// Known (code, vars) pairs, in order of preference. Pairs must match in
/// flash size (4M code needs 4M vars).
const OVMF_CANDIDATES: &[(&str, &str)] = &[
    // Debian / Ubuntu (package `ovmf`)
    (
        "/usr/share/OVMF/OVMF_CODE_4M.fd",
        "/usr/share/OVMF/OVMF_VARS_4M.fd",
    ),
    (
        "/usr/share/OVMF/OVMF_CODE.fd",
        "/usr/share/OVMF/OVMF_VARS.fd",
    ),
    // Fedora (edk2-ovmf)
    (
        "/usr/share/edk2/ovmf/OVMF_CODE.fd",
        "/usr/share/edk2/ovmf/OVMF_VARS.fd",
    ),
    // Arch (edk2-ovmf)
    (
        "/usr/share/edk2/x64/OVMF_CODE.4m.fd",
        "/usr/share/edk2/x64/OVMF_VARS.4m.fd",
    ),
    // openSUSE (qemu-ovmf-x86_64)
    (
        "/usr/share/qemu/ovmf-x86_64-code.bin",
        "/usr/share/qemu/ovmf-x86_64-vars.bin",
    ),
];

/// Find OVMF. `CIAB_OVMF_CODE` + `CIAB_OVMF_VARS` override the search.
pub fn find_ovmf() -> Result<OvmfFiles> {
    if let (Some(code), Some(vars)) = (
        std::env::var_os("CIAB_OVMF_CODE"),
        std::env::var_os("CIAB_OVMF_VARS"),
    ) {
        let files = OvmfFiles {
            code: PathBuf::from(code),
            vars_template: PathBuf::from(vars),
        };
        for p in [&files.code, &files.vars_template] {
            if !p.is_file() {
                bail!(
                    "OVMF file {} (from CIAB_OVMF_CODE/CIAB_OVMF_VARS) does not exist",
                    p.display()
                );
            }
        }
        return Ok(files);
    }
    for (code, vars) in OVMF_CANDIDATES {
        let (code, vars) = (Path::new(code), Path::new(vars));
        if code.is_file() && vars.is_file() {
            debug!(code = %code.display(), vars = %vars.display(), "found OVMF");
            return Ok(OvmfFiles {
                code: code.to_path_buf(),
                vars_template: vars.to_path_buf(),
            });
        }
    }
    let looked: Vec<&str> = OVMF_CANDIDATES.iter().map(|(c, _)| *c).collect();
    bail!(
        "UEFI firmware (OVMF) not found; looked for {}. Install it with `apt-get install ovmf` \
         (or set CIAB_OVMF_CODE and CIAB_OVMF_VARS)",
        looked.join(", ")
    )
}

const SEABIOS_CANDIDATES: &[&str] = &[
    "/usr/share/seabios/bios-256k.bin",
    "/usr/share/qemu/bios-256k.bin",
    "/usr/share/seabios/bios.bin",
    "/usr/share/qemu/bios.bin",
];

/// Check that SeaBIOS (QEMU's default BIOS) is installed. QEMU finds it on
/// its own firmware path; we only check so the error names the package.
pub fn find_seabios() -> Result<PathBuf> {
    SEABIOS_CANDIDATES
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .map(Path::to_path_buf)
        .ok_or_else(|| {
            anyhow!(
                "BIOS firmware (SeaBIOS) not found; looked for {}. Install it with \
                 `apt-get install seabios`",
                SEABIOS_CANDIDATES.join(", ")
            )
        })
}

// ---------------------------------------------------------------------------
// Machine
// ---------------------------------------------------------------------------

/// One host→guest TCP forward. The host side is bound to 127.0.0.1 only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortForward {
    pub host: u16,
    pub guest: u16,
    /// Human label (e.g. "ssh"); QEMU has no use for it, it's for logs/UI.
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// No NIC at all (`-nic none`).
    None,
    /// Slirp user networking with a virtio-net NIC and localhost forwards.
    User { forwards: Vec<PortForward> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serial {
    /// Interactive: COM1 multiplexed with the HMP monitor on our terminal.
    /// Ctrl-C goes to the guest; `Ctrl-A X` quits QEMU, `Ctrl-A C` toggles
    /// the monitor.
    Stdio,
    /// QEMU listens on this unix socket (`server=on,wait=off`); connect with
    /// e.g. `socat - UNIX-CONNECT:path`. Output while nobody is connected is
    /// dropped.
    Socket(PathBuf),
    /// QEMU *connects* to a unix socket that the caller is already listening
    /// on. QEMU refuses to start if nobody listens. Nothing is ever lost: the
    /// kernel queues the connection and the bytes until the caller accepts.
    /// This is what the test harness uses.
    Connect(PathBuf),
    /// Append COM1 output to a file.
    File(PathBuf),
}

/// An additional virtio-blk disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub path: PathBuf,
    /// `None` = detect by magic.
    pub format: Option<ImageFormat>,
    pub read_only: bool,
}

impl Disk {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Disk {
            path: path.into(),
            format: None,
            read_only: false,
        }
    }
}

/// Description of an x86_64 q35 VM booting `image` from virtio-blk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// Boot disk: raw or qcow2 (detected by magic).
    pub image: PathBuf,
    pub firmware: Firmware,
    pub accel: Accel,
    pub memory_mib: u32,
    pub cpus: u32,
    /// `-snapshot`: all disk writes (and UEFI variable writes) are discarded.
    pub snapshot: bool,
    pub network: Network,
    pub serial: Serial,
    /// QMP socket, QEMU listening (`server=on,wait=off`).
    pub qmp_socket: Option<PathBuf>,
    pub extra_disks: Vec<Disk>,
    /// Add `-device virtio-rng-pci` (default true).
    pub rng: bool,
    /// Firmware boot priority of the boot disk (0 first); raise it when an
    /// installer medium in `extra_args` must boot first.
    pub disk_boot_index: u32,
    /// Appended verbatim at the end of the command line.
    pub extra_args: Vec<OsString>,
}

impl Machine {
    /// A machine with defaults: UEFI, TCG, 1024 MiB, 2 vCPUs, no snapshot,
    /// no network, serial on stdio, no QMP, RNG on.
    pub fn new(image: impl Into<PathBuf>) -> Self {
        Machine {
            image: image.into(),
            firmware: Firmware::Uefi,
            accel: Accel::Tcg,
            memory_mib: 1024,
            cpus: 2,
            snapshot: false,
            network: Network::None,
            serial: Serial::Stdio,
            qmp_socket: None,
            extra_disks: Vec::new(),
            rng: true,
            disk_boot_index: 0,
            extra_args: Vec::new(),
        }
    }

    /// Build the QEMU command. For UEFI a copy of the OVMF variable store is
    /// put in a fresh temp dir owned by the returned [`PreparedCommand`];
    /// keep it alive until QEMU has exited.
    pub fn command(&self) -> Result<PreparedCommand> {
        let scratch = tempfile::Builder::new()
            .prefix("ciab-qemu-")
            .tempdir()
            .context("creating temp dir for QEMU run state")?;
        let command = self.command_in(scratch.path())?;
        Ok(PreparedCommand { command, scratch })
    }

    /// Build the QEMU command, putting per-run state (the OVMF_VARS copy) in
    /// `run_dir`, which must exist and outlive the QEMU process.
    pub fn command_in(&self, run_dir: &Path) -> Result<Command> {
        let mut cmd = Command::new(qemu_binary());
        cmd.args(self.args_in(run_dir)?);
        Ok(cmd)
    }

    /// The argument vector (without the binary) — see [`Machine::command_in`].
    pub fn args_in(&self, run_dir: &Path) -> Result<Vec<OsString>> {
        if self.memory_mib == 0 {
            bail!("memory_mib must be > 0");
        }
        if self.cpus == 0 {
            bail!("cpus must be > 0");
        }
        let mut a = Args::default();
        a.push_all(["-name", "ciab"]);
        a.push_all(["-machine", "q35"]);
        a.push_all(["-accel", &self.accel.to_string()]);
        a.push_all(["-cpu", self.accel.cpu_model()]);
        a.push_all(["-m", &self.memory_mib.to_string()]);
        a.push_all(["-smp", &self.cpus.to_string()]);
        // No default devices (VGA, NIC, floppy, CD, serial, parallel, monitor),
        // no /etc/qemu config; we add exactly what we want.
        a.push_all(["-nodefaults", "-no-user-config", "-display", "none"]);

        match self.firmware {
            Firmware::Uefi => {
                let ovmf = find_ovmf()?;
                let vars = run_dir.join("OVMF_VARS.fd");
                fs::copy(&ovmf.vars_template, &vars).with_context(|| {
                    format!(
                        "copying OVMF variable store {} to {}",
                        ovmf.vars_template.display(),
                        vars.display()
                    )
                })?;
                // fs::copy keeps the 0644 mode of the system file; make sure
                // it's writable even if the template was read-only.
                let mut perm = fs::metadata(&vars)
                    .with_context(|| format!("stat {}", vars.display()))?
                    .permissions();
                #[allow(clippy::permissions_set_readonly_false)]
                perm.set_readonly(false);
                fs::set_permissions(&vars, perm)
                    .with_context(|| format!("chmod {}", vars.display()))?;
                a.push("-drive");
                a.push(opt_with_path(
                    "if=pflash,format=raw,unit=0,readonly=on,file=",
                    &ovmf.code,
                ));
                a.push("-drive");
                a.push(opt_with_path("if=pflash,format=raw,unit=1,file=", &vars));
            }
            Firmware::Bios => {
                // QEMU loads SeaBIOS by itself; only check it is installed.
                find_seabios()?;
            }
        }

        let boot = Disk {
            path: self.image.clone(),
            format: None,
            read_only: false,
        };
        for (i, disk) in std::iter::once(&boot)
            .chain(self.extra_disks.iter())
            .enumerate()
        {
            let format = match disk.format {
                Some(f) => f,
                None => detect_image_format(&disk.path)?,
            };
            let mut drive = opt_with_path("file=", &disk.path);
            drive.push(format!(",format={format},if=none,id=disk{i},discard=unmap"));
            if disk.read_only {
                drive.push(",readonly=on");
            }
            a.push("-drive");
            a.push(drive);
            a.push("-device");
            if i == 0 {
                a.push(format!("virtio-blk-pci,drive=disk{i},bootindex={}", self.disk_boot_index));
            } else {
                a.push(format!("virtio-blk-pci,drive=disk{i}"));
            }
        }
        if self.snapshot {
            a.push("-snapshot");
        }

        match &self.network {
            Network::None => a.push_all(["-nic", "none"]),
            Network::User { forwards } => {
                // restrict=on: the guest reaches nothing outside; only the
                // forwards reach in. The box must work air-gapped.
                let mut netdev = String::from("user,id=net0,restrict=on");
                for fw in forwards {
                    if fw.host == 0 || fw.guest == 0 {
                        bail!("port forward {:?}: ports must be non-zero", fw.name);
                    }
                    netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{}-:{}", fw.host, fw.guest));
                }
                a.push_all(["-netdev", &netdev]);
                // romfile= : no iPXE option ROM (not needed, avoids a dependency
                // on ipxe-qemu and keeps the firmware from trying PXE boot).
                a.push_all(["-device", "virtio-net-pci,netdev=net0,romfile="]);
            }
        }

        match &self.serial {
            Serial::Stdio => {
                a.push_all([
                    "-chardev",
                    "stdio,id=ser0,mux=on,signal=off",
                    "-serial",
                    "chardev:ser0",
                    "-mon",
                    "chardev=ser0,mode=readline",
                ]);
            }
            Serial::Socket(path) => {
                a.push("-chardev");
                let mut c = opt_with_path("socket,id=ser0,path=", path);
                c.push(",server=on,wait=off");
                a.push(c);
                a.push_all(["-serial", "chardev:ser0"]);
            }
            Serial::Connect(path) => {
                a.push("-chardev");
                a.push(opt_with_path("socket,id=ser0,path=", path));
                a.push_all(["-serial", "chardev:ser0"]);
            }
            Serial::File(path) => {
                a.push("-chardev");
                a.push(opt_with_path("file,id=ser0,append=on,path=", path));
                a.push_all(["-serial", "chardev:ser0"]);
            }
        }

        if let Some(qmp) = &self.qmp_socket {
            a.push("-chardev");
            let mut c = opt_with_path("socket,id=qmp0,path=", qmp);
            c.push(",server=on,wait=off");
            a.push(c);
            a.push_all(["-mon", "chardev=qmp0,mode=control"]);
        }

        if self.rng {
            a.push_all(["-device", "virtio-rng-pci"]);
        }
        a.0.extend(self.extra_args.iter().cloned());
        Ok(a.0)
    }
}

/// A QEMU command plus the temp dir holding its per-run state. Dropping it
/// deletes the dir, so keep it until QEMU exits.
#[derive(Debug)]
pub struct PreparedCommand {
    pub command: Command,
    scratch: tempfile::TempDir,
}

impl PreparedCommand {
    /// Directory holding per-run state (OVMF_VARS copy).
    pub fn run_dir(&self) -> &Path {
        self.scratch.path()
    }
}

/// Render a command for logs / `--dry-run` (shell-ish quoting).
pub fn display_command(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| {
            let s = s.to_string_lossy();
            if !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_=,.:/+@%".contains(c))
            {
                s.into_owned()
            } else {
                format!("'{}'", s.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn push(&mut self, s: impl Into<OsString>) {
        self.0.push(s.into());
    }
    fn push_all<'a>(&mut self, items: impl IntoIterator<Item = &'a str>) {
        self.0.extend(items.into_iter().map(OsString::from));
    }
}

/// `prefix` + path with QEMU option escaping (`,` → `,,`), keeping non-UTF-8
/// bytes intact.
fn opt_with_path(prefix: &str, path: &Path) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out = prefix.as_bytes().to_vec();
    for &b in path.as_os_str().as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

// ---------------------------------------------------------------------------
// Running a child with a hard deadline
// ---------------------------------------------------------------------------

/// How a bounded child run ended.
#[derive(Debug)]
pub enum BoundedExit {
    Exited(ExitStatus),
    /// Killed by us: deadline passed.
    TimedOut,
    /// Killed by us: `abort_on` matched stderr early.
    Aborted(String),
}

#[derive(Debug)]
pub struct BoundedRun {
    pub exit: BoundedExit,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

fn drain<R: Read + Send + 'static>(
    mut r: R,
    buf: Arc<Mutex<Vec<u8>>>,
    abort_on: &'static [&'static str],
    abort: Arc<Mutex<Option<String>>>,
    flag: Arc<AtomicBool>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        loop {
            match r.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let Ok(mut b) = buf.lock() else { break };
                    b.extend_from_slice(&chunk[..n]);
                    if b.len() > 1 << 20 {
                        // Bound memory; keep the tail.
                        let cut = b.len() - (1 << 20);
                        b.drain(..cut);
                    }
                    if !abort_on.is_empty() {
                        let text = String::from_utf8_lossy(&b);
                        if let Some(m) = abort_on.iter().find(|m| text.contains(**m)) {
                            if let Ok(mut a) = abort.lock() {
                                a.get_or_insert_with(|| (*m).to_string());
                            }
                            flag.store(true, Ordering::SeqCst);
                        }
                    }
                }
            }
        }
    })
}

/// Spawn `cmd` (stdin null, stdout/stderr captured) and wait at most
/// `timeout`. On timeout, or as soon as stderr contains one of `abort_on`,
/// the child is killed and reaped. Never blocks longer than
/// `timeout` + a small constant.
pub fn run_bounded(
    cmd: &mut Command,
    timeout: Duration,
    abort_on: &'static [&'static str],
) -> Result<BoundedRun> {
    let start = Instant::now();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawning {}", cmd.get_program().to_string_lossy()))?;
    let out = Arc::new(Mutex::new(Vec::new()));
    let err = Arc::new(Mutex::new(Vec::new()));
    let abort = Arc::new(Mutex::new(None));
    let flag = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    if let Some(o) = child.stdout.take() {
        readers.push(drain(o, out.clone(), &[], abort.clone(), flag.clone()));
    }
    if let Some(e) = child.stderr.take() {
        readers.push(drain(e, err.clone(), abort_on, abort.clone(), flag.clone()));
    }
    let exit = loop {
        if let Some(st) = child.try_wait().context("waiting for child")? {
            break BoundedExit::Exited(st);
        }
        if flag.load(Ordering::SeqCst) {
            kill_and_reap(&mut child);
            let why = abort
                .lock()
                .ok()
                .and_then(|a| a.clone())
                .unwrap_or_default();
            break BoundedExit::Aborted(why);
        }
        if start.elapsed() >= timeout {
            kill_and_reap(&mut child);
            break BoundedExit::TimedOut;
        }
        thread::sleep(Duration::from_millis(10));
    };
    // The child is gone, so its pipe ends are closed and readers finish
    // (unless it leaked the pipes to a grandchild: don't wait for ever).
    let join_deadline = Instant::now() + Duration::from_secs(2);
    for r in readers {
        while !r.is_finished() && Instant::now() < join_deadline {
            thread::sleep(Duration::from_millis(5));
        }
        if r.is_finished() {
            let _ = r.join();
        }
    }
    let text = |b: &Arc<Mutex<Vec<u8>>>| {
        b.lock()
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default()
    };
    Ok(BoundedRun {
        exit,
        stdout: text(&out),
        stderr: text(&err),
        elapsed: start.elapsed(),
    })
}

fn kill_and_reap(child: &mut Child) {
    if let Err(e) = child.kill() {
        debug!("kill pid {}: {e}", child.id());
    }
    if let Err(e) = child.wait() {
        warn!("reaping pid {}: {e}", child.id());
    }
}

// ---------------------------------------------------------------------------
// Accelerator probe
// ---------------------------------------------------------------------------

/// Port of the `isa-debug-exit` device used by the probe guest.
pub const PROBE_EXIT_PORT: u16 = 0xf4;
/// Value the probe guest writes; QEMU then exits with `(v << 1) | 1` = 99.
pub const PROBE_EXIT_VALUE: u8 = 0x31;

/// 512-byte real-mode boot sector for the probe. It exercises what a real
/// OS needs early and what broken (nested) KVM setups fail on — x87, SSE
/// (after enabling it in CR0/CR4) and CPUID — then checks the FPU result:
/// fld1+fld1 → 2 is stored to 0x500, and `2 + 0x2f = 0x31` is written to the
/// isa-debug-exit port. A wrong FPU result gives a different exit code.
pub fn probe_boot_sector() -> [u8; 512] {
    #[rustfmt::skip]
    let code: &[u8] = &[
        0xFA,                   // cli
        0x31, 0xC0,             // xor ax, ax
        0x8E, 0xD8,             // mov ds, ax
        0xDB, 0xE3,             // fninit
        0xD9, 0xE8,             // fld1
        0xD9, 0xE8,             // fld1
        0xDE, 0xC1,             // faddp st1, st0
        0xDF, 0x1E, 0x00, 0x05, // fistp word [0x0500]
        0x9B,                   // fwait
        0x0F, 0x20, 0xC0,       // mov eax, cr0
        0x25, 0xFB, 0xFF,       // and ax, 0xfffb   ; EM off
        0x0D, 0x02, 0x00,       // or  ax, 0x0002   ; MP on
        0x0F, 0x22, 0xC0,       // mov cr0, eax
        0x0F, 0x20, 0xE0,       // mov eax, cr4
        0x0D, 0x00, 0x06,       // or  ax, 0x0600   ; OSFXSR|OSXMMEXCPT
        0x0F, 0x22, 0xE0,       // mov cr4, eax
        0x0F, 0x57, 0xC0,       // xorps xmm0, xmm0
        0x66, 0x31, 0xC0,       // xor eax, eax
        0x0F, 0xA2,             // cpuid
        0xA0, 0x00, 0x05,       // mov al, [0x0500] ; = 2
        0x04, 0x2F,             // add al, 0x2f     ; = 0x31
        0xE6, PROBE_EXIT_PORT as u8, // out 0xf4, al
        0xF4,                   // hlt
        0xEB, 0xFD,             // jmp hlt
    ];
    let mut s = [0u8; 512];
    s[..code.len()].copy_from_slice(code);
    s[510] = 0x55;
    s[511] = 0xAA;
    s
}

/// Result of booting the probe guest once.
#[derive(Debug, Clone)]
pub struct ProbeReport {
    pub accel: Accel,
    /// The guest reached the exit port with the right value.
    pub ok: bool,
    /// Human-readable outcome ("ran", "timed out after …", "exit status …").
    pub detail: String,
    pub elapsed: Duration,
}

/// Patterns on QEMU's stderr that mean the guest is wedged (QEMU pauses the
/// VM and would wait for ever): kill right away instead of waiting.
const KVM_FAILURE_PATTERNS: &[&str] = &["KVM internal error", "emulation failure"];

/// Boot [`probe_boot_sector`] under `accel` (with that accel's `-cpu`, the
/// same one [`Machine`] uses) and report whether it ran. Never takes longer
/// than `timeout` (+ process spawn/kill overhead).
pub fn probe_guest(accel: Accel, timeout: Duration) -> Result<ProbeReport> {
    probe_guest_with_cpu(accel, accel.cpu_model(), timeout)
}

/// [`probe_guest`] with an explicit `-cpu` model (diagnostics: e.g. on
/// nested hosts `-cpu host` may abort while `qemu64` starts but then wedges
/// on the first x87 instruction).
pub fn probe_guest_with_cpu(accel: Accel, cpu: &str, timeout: Duration) -> Result<ProbeReport> {
    let dir = tempfile::Builder::new()
        .prefix("ciab-probe-")
        .tempdir()
        .context("creating temp dir for the accel probe")?;
    let img = dir.path().join("probe.img");
    {
        let mut f =
            fs::File::create(&img).with_context(|| format!("creating {}", img.display()))?;
        f.write_all(&probe_boot_sector())
            .with_context(|| format!("writing {}", img.display()))?;
        // 1.44 MB so QEMU picks a standard floppy geometry.
        f.set_len(1_474_560)
            .with_context(|| format!("sizing {}", img.display()))?;
    }
    let mut cmd = Command::new(qemu_binary());
    cmd.args(["-accel", &accel.to_string(), "-cpu", cpu])
        .args([
            "-machine",
            "pc",
            "-m",
            "16",
            "-nodefaults",
            "-no-user-config",
        ])
        .args(["-display", "none", "-monitor", "none", "-serial", "none"])
        .args(["-parallel", "none", "-nic", "none", "-no-reboot"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .arg("-drive")
        .arg(opt_with_path("format=raw,if=floppy,file=", &img));
    debug!(cmd = %display_command(&cmd), "accel probe");
    let abort_on = if accel == Accel::Kvm {
        KVM_FAILURE_PATTERNS
    } else {
        &[]
    };
    let run = run_bounded(&mut cmd, timeout, abort_on)?;
    let expected = (i32::from(PROBE_EXIT_VALUE) << 1) | 1;
    let stderr_tail = last_lines(&run.stderr, 3);
    let (ok, detail) = match &run.exit {
        BoundedExit::Exited(st) if st.code() == Some(expected) => (true, "guest ran".to_string()),
        BoundedExit::Exited(st) => (
            false,
            format!("qemu exited with {st} (expected code {expected}); stderr: {stderr_tail}"),
        ),
        BoundedExit::TimedOut => (
            false,
            format!("guest did not finish within {timeout:?}; stderr: {stderr_tail}"),
        ),
        BoundedExit::Aborted(why) => (false, format!("guest wedged ({why}); killed")),
    };
    Ok(ProbeReport {
        accel,
        ok,
        detail,
        elapsed: run.elapsed,
    })
}

fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(n);
    let t = lines[start..].join(" | ");
    if t.is_empty() {
        "(empty)".into()
    } else {
        t
    }
}

/// Where the probe result is cached:
/// `${XDG_CACHE_HOME:-~/.cache}/ciab/accel-probe.json`.
pub fn default_probe_cache_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })?;
    Some(base.join("ciab").join("accel-probe.json"))
}

/// Where an accel decision came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccelSource {
    /// `CIAB_ACCEL`.
    Env,
    /// `/dev/kvm` can't be opened read-write.
    NoKvmDevice(String),
    /// Read from the cache file.
    Cache,
    /// Probed now.
    Probe,
}

#[derive(Debug, Clone)]
pub struct AccelDecision {
    pub accel: Accel,
    pub source: AccelSource,
    pub detail: String,
}

/// Parse a `CIAB_ACCEL` value; `None` if unset/empty.
pub fn parse_accel_override(v: Option<&OsStr>) -> Result<Option<Accel>> {
    match v {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) => {
            let s = v
                .to_str()
                .ok_or_else(|| anyhow!("CIAB_ACCEL is not valid UTF-8"))?;
            s.parse().map(Some).context("parsing CIAB_ACCEL")
        }
    }
}

/// Pick the accelerator: `CIAB_ACCEL`, else TCG if `/dev/kvm` isn't
/// openable read-write, else a cached probe result, else a fresh probe (KVM
/// only if the probe guest really ran). Never fails and never blocks much
/// longer than `timeout`; any error is logged and means TCG.
pub fn probe_accel(timeout: Duration) -> Accel {
    decide_accel(timeout, default_probe_cache_path().as_deref()).accel
}

/// [`probe_accel`] with an explicit cache file (`None` = no caching) and the
/// reason for the decision.
pub fn decide_accel(timeout: Duration, cache: Option<&Path>) -> AccelDecision {
    match parse_accel_override(std::env::var_os("CIAB_ACCEL").as_deref()) {
        Ok(Some(accel)) => {
            info!(%accel, "accelerator forced by CIAB_ACCEL");
            return AccelDecision {
                accel,
                source: AccelSource::Env,
                detail: "CIAB_ACCEL".into(),
            };
        }
        Ok(None) => {}
        Err(e) => warn!("ignoring CIAB_ACCEL: {e:#}"),
    }
    if let Err(e) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        let why = format!("/dev/kvm not usable: {e}");
        info!("{why}; using tcg");
        return AccelDecision {
            accel: Accel::Tcg,
            source: AccelSource::NoKvmDevice(why.clone()),
            detail: why,
        };
    }
    let start = Instant::now();
    let key = match probe_cache_key(timeout) {
        Ok(k) => Some(k),
        Err(e) => {
            warn!("cannot compute accel probe cache key: {e:#}");
            None
        }
    };
    if let (Some(key), Some(path)) = (&key, cache) {
        match read_cache(path, key) {
            Ok(Some(d)) => return d,
            Ok(None) => {}
            Err(e) => debug!("accel probe cache {}: {e:#}", path.display()),
        }
    }
    let (accel, detail) = kvm_verdict(start + timeout);
    info!(%accel, "{detail}");
    if let (Some(key), Some(path)) = (&key, cache) {
        if let Err(e) = write_cache(path, key, accel, &detail) {
            warn!("cannot write accel probe cache {}: {e:#}", path.display());
        }
    }
    AccelDecision {
        accel,
        source: AccelSource::Probe,
        detail,
    }
}

/// How many consecutive KVM probe boots must succeed.
pub const KVM_PROBE_RUNS: usize = 3;

/// Boot the probe guest under TCG once (baseline; proves the probe works
/// with this QEMU) and then [`KVM_PROBE_RUNS`] times under KVM. KVM is only
/// accepted if every run succeeds and none is much slower than TCG: on
/// broken nested hosts the same tiny guest sometimes finishes in ~6 s (KVM
/// emulating every instruction) and sometimes never.
fn kvm_verdict(deadline: Instant) -> (Accel, String) {
    let left = || deadline.saturating_duration_since(Instant::now());
    let baseline = match probe_guest(Accel::Tcg, left()) {
        Ok(r) if r.ok => r,
        Ok(r) => {
            return (
                Accel::Tcg,
                format!("tcg baseline probe failed ({}); not trying kvm", r.detail),
            )
        }
        Err(e) => return (Accel::Tcg, format!("tcg baseline probe error: {e:#}")),
    };
    let slow_limit = baseline.elapsed * 3 + Duration::from_secs(2);
    let mut times = Vec::new();
    for i in 1..=KVM_PROBE_RUNS {
        match probe_guest(Accel::Kvm, left()) {
            Ok(r) if r.ok && r.elapsed <= slow_limit => times.push(r.elapsed),
            Ok(r) if r.ok => {
                return (
                    Accel::Tcg,
                    format!(
                        "kvm probe run {i} ran but took {:?} (tcg: {:?}, limit {slow_limit:?}); \
                         treating kvm as broken",
                        r.elapsed, baseline.elapsed
                    ),
                );
            }
            Ok(r) => {
                return (
                    Accel::Tcg,
                    format!(
                        "kvm probe run {i} failed after {:?}: {}",
                        r.elapsed, r.detail
                    ),
                );
            }
            Err(e) => return (Accel::Tcg, format!("kvm probe run {i} error: {e:#}")),
        }
    }
    (
        Accel::Kvm,
        format!(
            "kvm probe guest ran {KVM_PROBE_RUNS} times in {times:?} (tcg baseline {:?})",
            baseline.elapsed
        ),
    )
}

/// Cache key: QEMU version line, kernel release and boot id.
pub fn probe_cache_key(timeout: Duration) -> Result<Value> {
    let mut cmd = Command::new(qemu_binary());
    cmd.arg("--version");
    let run = run_bounded(&mut cmd, timeout.min(Duration::from_secs(10)), &[])?;
    let version = match run.exit {
        BoundedExit::Exited(st) if st.success() => run
            .stdout
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string(),
        other => bail!("`qemu --version` failed: {other:?}: {}", run.stderr.trim()),
    };
    let read = |p: &str| -> Result<String> {
        Ok(fs::read_to_string(p)
            .with_context(|| format!("reading {p}"))?
            .trim()
            .to_string())
    };
    Ok(json!({
        "qemu": version,
        "qemu_binary": qemu_binary().to_string_lossy(),
        "kernel": read("/proc/sys/kernel/osrelease")?,
        "boot_id": read("/proc/sys/kernel/random/boot_id")?,
    }))
}

fn read_cache(path: &Path, key: &Value) -> Result<Option<AccelDecision>> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let v: Value = serde_json::from_str(&text).context("parsing cache")?;
    if v.get("key") != Some(key) {
        debug!("accel probe cache is stale");
        return Ok(None);
    }
    let accel: Accel = v
        .get("accel")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("cache has no accel"))?
        .parse()?;
    let detail = v
        .get("detail")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    debug!(%accel, "accel from probe cache {}", path.display());
    Ok(Some(AccelDecision {
        accel,
        source: AccelSource::Cache,
        detail,
    }))
}

fn write_cache(path: &Path, key: &Value, accel: Accel, detail: &str) -> Result<()> {
    let probed_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let v =
        json!({ "key": key, "accel": accel.to_string(), "detail": detail, "probed_at": probed_at });
    let mut text = serde_json::to_vec_pretty(&v).context("serialising cache")?;
    text.push(b'\n');
    // Atomic, so concurrent runs never read a torn file.
    crate::fsutil::write_atomic(path, &text)
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn args_str(m: &Machine, dir: &Path) -> Vec<String> {
        m.args_in(dir)
            .unwrap()
            .into_iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect()
    }

    fn has_pair(args: &[String], flag: &str, val: &str) -> bool {
        args.windows(2).any(|w| w[0] == flag && w[1] == val)
    }

    #[test]
    fn enums_roundtrip() {
        for a in [Accel::Kvm, Accel::Tcg] {
            assert_eq!(a.to_string().parse::<Accel>().unwrap(), a);
        }
        for f in [Firmware::Uefi, Firmware::Bios] {
            assert_eq!(f.to_string().parse::<Firmware>().unwrap(), f);
        }
        assert_eq!("OVMF".parse::<Firmware>().unwrap(), Firmware::Uefi);
        assert!("xen".parse::<Accel>().is_err());
        assert_eq!(parse_accel_override(None).unwrap(), None);
        assert_eq!(
            parse_accel_override(Some(OsStr::new("KVM"))).unwrap(),
            Some(Accel::Kvm)
        );
        assert!(parse_accel_override(Some(OsStr::new("hvf"))).is_err());
    }

    #[test]
    fn detects_qcow2_magic() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("a.qcow2");
        fs::write(&q, b"QFI\xfb\0\0\0\x03rest").unwrap();
        let r = dir.path().join("a.raw");
        fs::write(&r, [0u8; 10]).unwrap();
        let tiny = dir.path().join("tiny");
        fs::write(&tiny, b"QF").unwrap();
        assert_eq!(detect_image_format(&q).unwrap(), ImageFormat::Qcow2);
        assert_eq!(detect_image_format(&r).unwrap(), ImageFormat::Raw);
        assert_eq!(detect_image_format(&tiny).unwrap(), ImageFormat::Raw);
        assert!(detect_image_format(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn bios_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk,1.img");
        fs::write(&img, [0u8; 512]).unwrap();
        let mut m = Machine::new(&img);
        m.firmware = Firmware::Bios;
        m.snapshot = true;
        m.memory_mib = 512;
        m.qmp_socket = Some(dir.path().join("qmp.sock"));
        m.network = Network::User {
            forwards: vec![PortForward {
                host: 2222,
                guest: 22,
                name: "ssh".into(),
            }],
        };
        m.serial = Serial::Socket(dir.path().join("ser.sock"));
        let a = args_str(&m, dir.path());
        assert!(has_pair(&a, "-accel", "tcg"));
        assert!(has_pair(&a, "-cpu", "max"));
        assert!(has_pair(&a, "-machine", "q35"));
        assert!(has_pair(&a, "-m", "512"));
        assert!(a.contains(&"-snapshot".to_string()));
        assert!(a.contains(&"-nodefaults".to_string()));
        assert!(!a.iter().any(|s| s.contains("pflash")));
        let drive = format!(
            "file={},format=raw,if=none,id=disk0,discard=unmap",
            img.display().to_string().replace(',', ",,")
        );
        assert!(has_pair(&a, "-drive", &drive), "{a:?}");
        assert!(has_pair(
            &a,
            "-device",
            "virtio-blk-pci,drive=disk0,bootindex=0"
        ));
        assert!(has_pair(
            &a,
            "-netdev",
            "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22"
        ));
        assert!(has_pair(&a, "-device", "virtio-rng-pci"));
        assert!(has_pair(&a, "-mon", "chardev=qmp0,mode=control"));
        assert!(a
            .iter()
            .any(|s| s.starts_with("socket,id=ser0,path=") && s.ends_with(",server=on,wait=off")));
    }

    #[test]
    fn uefi_command_uses_private_vars_copy() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.qcow2");
        fs::write(&img, b"QFI\xfb").unwrap();
        let mut m = Machine::new(&img);
        m.accel = Accel::Kvm;
        let prepared = m.command().unwrap();
        let a: Vec<String> = prepared
            .command
            .get_args()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        let ovmf = find_ovmf().unwrap();
        let vars = prepared.run_dir().join("OVMF_VARS.fd");
        assert!(vars.is_file());
        assert_eq!(
            fs::metadata(&vars).unwrap().len(),
            fs::metadata(&ovmf.vars_template).unwrap().len()
        );
        assert!(has_pair(&a, "-accel", "kvm"));
        assert!(has_pair(&a, "-cpu", "host"));
        assert!(has_pair(
            &a,
            "-drive",
            &format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                ovmf.code.display()
            )
        ));
        assert!(has_pair(
            &a,
            "-drive",
            &format!("if=pflash,format=raw,unit=1,file={}", vars.display())
        ));
        assert!(!a
            .iter()
            .any(|s| s.contains(&*ovmf.vars_template.to_string_lossy())));
        assert!(a.iter().any(|s| s.contains("format=qcow2")));
        assert!(has_pair(&a, "-nic", "none"));
        assert!(has_pair(&a, "-serial", "chardev:ser0"));
        println!("{}", display_command(&prepared.command));
    }

    #[test]
    fn probe_sector_shape() {
        let s = probe_boot_sector();
        assert_eq!(&s[510..], &[0x55, 0xAA]);
    }

    /// The probe logic itself is right: under TCG the guest runs and QEMU
    /// exits with (0x31<<1)|1 quickly.
    #[test]
    fn tcg_probe_guest_runs() {
        let r = probe_guest(Accel::Tcg, Duration::from_secs(30)).unwrap();
        println!("tcg probe: {r:?}");
        assert!(r.ok, "{r:?}");
        assert!(r.elapsed < Duration::from_secs(10), "{r:?}");
    }

    /// probe_accel never takes much longer than its timeout, and caches.
    #[test]
    fn probe_accel_is_bounded_and_cached() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("ciab").join("accel-probe.json");
        let timeout = Duration::from_secs(8);
        let t0 = Instant::now();
        let d = decide_accel(timeout, Some(&cache));
        let first = t0.elapsed();
        println!("first decision: {d:?} in {first:?}");
        assert!(first < timeout + Duration::from_secs(5), "{first:?}");
        if matches!(d.source, AccelSource::Probe) {
            let text = fs::read_to_string(&cache).unwrap();
            println!("cache file: {text}");
            let t1 = Instant::now();
            let d2 = decide_accel(timeout, Some(&cache));
            println!("second decision: {d2:?} in {:?}", t1.elapsed());
            assert_eq!(d2.accel, d.accel);
            assert_eq!(d2.source, AccelSource::Cache);
            assert!(t1.elapsed() < Duration::from_secs(2));
        }
    }

    /// Whatever KVM does on this host, the probe comes back in time. Prints
    /// what happened with `-cpu host` and with `-cpu qemu64`.
    #[test]
    fn kvm_probe_is_bounded() {
        if fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_err()
        {
            println!("no usable /dev/kvm; skipping");
            return;
        }
        let timeout = Duration::from_secs(10);
        for cpu in ["host", "qemu64"] {
            let r = probe_guest_with_cpu(Accel::Kvm, cpu, timeout).unwrap();
            println!("kvm -cpu {cpu}: {r:?}");
            assert!(r.elapsed < timeout + Duration::from_secs(5), "{r:?}");
        }
    }

    #[test]
    fn run_bounded_kills_on_timeout() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let r = run_bounded(&mut cmd, Duration::from_millis(300), &[]).unwrap();
        assert!(matches!(r.exit, BoundedExit::TimedOut), "{r:?}");
        assert!(r.elapsed < Duration::from_secs(3));
    }
}
