//! `ciab flash`: put a signed image (or its installer ISO) on a disk or USB
//! stick. The signature is checked before anything is opened for writing;
//! the write itself is `ciab_core::flash`, the same engine the USB
//! installer runs on the box.

use crate::cli::FlashArgs;
use anyhow::{bail, Context, Result};
use ciab_core::blockdev::BlockDevice;
use ciab_core::contract::{InstallerInfo, Manifest, MappedRange, INSTALLER_FILE, INSTALLER_SIG_FILE, MANIFEST_FILE, MANIFEST_SIG_FILE};
use ciab_core::flash::{self, Image, Phase, Source, Target};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

/// A signed image, resolved from what the user named.
#[derive(Debug)]
pub struct Signed {
    /// The file whose mapped ranges are written.
    pub file: PathBuf,
    pub size: u64,
    pub map: Vec<MappedRange>,
    /// `tiny 0.1.0` or `tiny 0.1.0 installer`.
    pub what: String,
}

/// Resolves `path` (an output directory, a `.raw` or a `.iso`) to a signed
/// image and checks the signature with `pubkey` (default: the key the
/// directory carries).
pub fn resolve(path: &Path, installer: bool, pubkey: Option<&Path>) -> Result<Signed> {
    if !path.exists() {
        bail!("{}: no such output directory or image file (build one with `ciab build`)", path.display());
    }
    let (dir, installer) = if path.is_dir() {
        (path.to_path_buf(), installer)
    } else {
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        (dir, installer || path.extension().is_some_and(|e| e == "iso"))
    };
    let key_path = pubkey.map(Path::to_path_buf).unwrap_or_else(|| dir.join(crate::sign::PUBLIC_KEY_FILE));
    let pk = crate::sign::load_public_key(&key_path)?;
    let (doc, sig) = if installer { (INSTALLER_FILE, INSTALLER_SIG_FILE) } else { (MANIFEST_FILE, MANIFEST_SIG_FILE) };
    let doc_path = dir.join(doc);
    if installer && !doc_path.exists() {
        bail!("{}: this output has no installer (build a spec with \"iso\" in outputs.formats)", doc_path.display());
    }
    let data = crate::sign::read_signed(&pk, &key_path, &doc_path, &dir.join(sig)).context("refusing to write")?;
    let signed = if installer {
        let info: InstallerInfo = serde_json::from_slice(&data).with_context(|| format!("parsing {}", doc_path.display()))?;
        Signed { file: dir.join(&info.iso.path), size: info.iso.size, map: info.block_map, what: format!("{} installer", info.image) }
    } else {
        let m: Manifest = serde_json::from_slice(&data).with_context(|| format!("parsing {}", doc_path.display()))?;
        let raw = m.outputs.iter().find(|o| o.kind == "raw").with_context(|| format!("{} lists no raw image", doc_path.display()))?;
        Signed { file: dir.join(&raw.path), size: m.disk.size, map: m.disk.block_map, what: format!("{} {}", m.image.name, m.image.version) }
    };
    let canonical = |p: &Path| std::fs::canonicalize(p).with_context(|| format!("{}: no such file", p.display()));
    if !path.is_dir() && canonical(path)? != canonical(&signed.file)? {
        bail!("{} is not the image its signed {} describes ({})", path.display(), doc, signed.file.display());
    }
    Ok(signed)
}

/// Checks that `dev` may be overwritten with an image of `size` bytes.
pub fn check_device(dev: &BlockDevice, size: u64) -> Result<()> {
    if let Some(parent) = &dev.parent {
        bail!("{} is a partition of /dev/{parent}; give the whole disk", dev.path.display());
    }
    if dev.read_only {
        bail!("{} is read-only (a write-protect switch?)", dev.path.display());
    }
    if dev.holds_root()? {
        bail!("{} holds the running system's root filesystem; refusing to overwrite it", dev.path.display());
    }
    let users = dev.users()?;
    if !users.is_empty() {
        bail!("{} is in use: {}; unmount it first", dev.path.display(), users.join(", "));
    }
    if dev.size < size {
        bail!(
            "{} is too small: {} for an image of {}",
            dev.path.display(),
            ciab_core::blockdev::human_size(dev.size),
            ciab_core::blockdev::human_size(size)
        );
    }
    Ok(())
}

/// Asks the operator to type `yes`. Refuses without a terminal.
fn confirm(question: &str) -> Result<()> {
    if !std::io::stdin().is_terminal() {
        bail!("{question}\nnot a terminal: pass --yes to confirm");
    }
    eprint!("{question}\nType yes to continue: ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if line.trim() != "yes" {
        bail!("not confirmed; nothing was written");
    }
    Ok(())
}

/// A progress bar that follows the engine's phases.
fn progress_bar() -> impl FnMut(flash::Progress) {
    let bar = ProgressBar::new(0);
    let style = ProgressStyle::with_template("{msg:22} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    let mut phase = None;
    move |p: flash::Progress| {
        if phase != Some(p.phase) {
            if phase.is_some() {
                bar.finish();
            }
            bar.reset();
            bar.set_length(p.total);
            bar.set_message(p.phase.label());
            phase = Some(p.phase);
        }
        bar.set_position(p.done);
        if p.phase == Phase::Verify && p.done == p.total {
            bar.finish();
        }
    }
}

/// `ciab flash`.
pub fn run(args: &FlashArgs) -> Result<()> {
    let signed = resolve(&args.image, args.installer, args.key.as_deref())?;
    let image = Image { size: signed.size, map: &signed.map };
    let source = Source::image_file(&signed.file)?;
    let mut progress = progress_bar();
    let report = if args.to_file {
        if std::fs::metadata(&args.target).is_ok_and(|m| !m.is_file()) {
            bail!("{} exists and is not a regular file; --to-file writes files only", args.target.display());
        }
        if args.target.exists() && !args.yes {
            confirm(&format!("{} exists and will be replaced with {}.", args.target.display(), signed.what))?;
        }
        let name = args.target.file_name().with_context(|| format!("{}: not a file name", args.target.display()))?;
        let tmp = args.target.with_file_name(format!(".{}.ciab-tmp-{}", name.to_string_lossy(), std::process::id()));
        let result = Target::new_file(&tmp, signed.size).and_then(|t| flash::flash(&image, &source, &t, &mut progress));
        match result {
            Ok(report) => {
                std::fs::rename(&tmp, &args.target).with_context(|| format!("renaming {} to {}", tmp.display(), args.target.display()))?;
                report
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        }
    } else {
        let dev = BlockDevice::open(&args.target).map_err(|e| {
            if args.target.is_file() {
                anyhow::anyhow!("{} is a regular file, not a block device; pass --to-file to write an image file", args.target.display())
            } else {
                e
            }
        })?;
        check_device(&dev, signed.size)?;
        if !args.yes {
            let parts = dev.partition_devices().iter().map(|p| format!("\n  {} {}", p.name, ciab_core::blockdev::human_size(p.size))).collect::<String>();
            confirm(&format!("Everything on {} will be overwritten with {}.{parts}", dev.describe(), signed.what))?;
        }
        let target = Target::block_device(&dev.path)?;
        let report = flash::flash(&image, &source, &target, &mut progress)?;
        // Let the kernel see the new partition table; harmless if it cannot.
        let _ = ciab_core::exec::Cmd::new("blockdev").package("util-linux").arg("--rereadpt").arg(&dev.path).run();
        report
    };
    let secs = report.write_time.as_secs_f64().max(1e-9);
    println!(
        "{}: wrote {} of {} ({} zeroed) in {:.1} s ({:.0} MiB/s), verified {} in {:.1} s",
        args.target.display(),
        crate::progress::human_size(report.written),
        signed.what,
        crate::progress::human_size(report.zeroed),
        secs,
        report.written as f64 / secs / (1u64 << 20) as f64,
        crate::progress::human_size(report.verified),
        report.verify_time.as_secs_f64()
    );
    Ok(())
}
