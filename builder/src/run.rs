//! `ciab run` and `ciab up`: boot a built image in QEMU, interactively.
//!
//! The image is verified against its signed manifest before it is booted,
//! and always runs with `-snapshot`, so the built image stays pristine.

use crate::cli::{RunArgs, UpArgs};
use ciab_core::exec::Cmd;
use crate::qemu::{self, Accel, Firmware, Machine, Network, PortForward, Serial};
use anyhow::{bail, Context, Result};
use ciab_core::contract::MANIFEST_FILE;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the KVM probe may take before TCG is chosen.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// The disk image to boot in `path`: the file itself, or the raw (else qcow2)
/// image of an output directory, verified first unless `verify` is false.
pub fn resolve_image(path: &Path, verify: bool) -> Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_owned());
    }
    if !path.join(MANIFEST_FILE).is_file() {
        bail!("{} is neither an image file nor an output directory with {MANIFEST_FILE}", path.display());
    }
    let manifest = if verify {
        crate::verify::verify_dir(path, None).with_context(|| format!("refusing to boot {}", path.display()))?
    } else {
        serde_json::from_slice(&std::fs::read(path.join(MANIFEST_FILE))?)?
    };
    for kind in ["raw", "qcow2"] {
        if let Some(out) = manifest.outputs.iter().find(|o| o.kind == kind) {
            return Ok(path.join(&out.path));
        }
    }
    bail!("{} lists no raw or qcow2 image", path.join(MANIFEST_FILE).display())
}

/// Chooses the accelerator: `auto` probes KVM (cached per boot) and falls back to TCG.
pub fn choose_accel(setting: &str) -> Result<Accel> {
    match setting {
        "auto" => {
            let decision = qemu::decide_accel(PROBE_TIMEOUT, qemu::default_probe_cache_path().as_deref());
            tracing::info!("accelerator: {} ({:?}: {})", decision.accel, decision.source, decision.detail);
            Ok(decision.accel)
        }
        other => other.parse::<Accel>().map_err(|e| anyhow::anyhow!("--accel {other}: {e}; use auto, kvm or tcg")),
    }
}

/// A throw-away qcow2 overlay of `size` over `image` in `dir`.
pub fn overlay_disk(image: &Path, dir: &Path, size: &str) -> Result<PathBuf> {
    let format = match qemu::detect_image_format(image)? {
        qemu::ImageFormat::Qcow2 => "qcow2",
        qemu::ImageFormat::Raw => "raw",
    };
    let disk = dir.join("disk.qcow2");
    ciab_core::exec::Cmd::new("qemu-img")
        .package("qemu-utils")
        .args(["create", "-q", "-f", "qcow2", "-F", format, "-b"])
        .arg(image.canonicalize().with_context(|| format!("resolving {}", image.display()))?)
        .arg(&disk)
        .arg(size)
        .run()
        .with_context(|| format!("creating a {size} disk over {} (is --disk-size larger than the image?)", image.display()))?;
    Ok(disk)
}

/// The site configuration `ciab run` hands the box: everything default but
/// the public endpoint, which is the host's end of the port forward.
pub fn default_site_toml(https_port: u16) -> String {
    format!("# Written by `ciab run`: the box's APIs are reached through QEMU's port forward.\n[public_endpoint]\nhost = \"localhost\"\nport = {https_port}\n")
}

/// A small FAT image labelled CIAB-CONFIG holding `site.toml`, as an
/// operator's USB stick would (first boot reads it before anything else).
/// Built without mounting: mkfs.vfat, then mcopy.
pub fn site_config_disk(dir: &Path, site_toml: &str) -> Result<PathBuf> {
    let img = dir.join("ciab-config.img");
    let toml = dir.join("site.toml");
    let _ = std::fs::remove_file(&img);
    std::fs::write(&toml, site_toml).with_context(|| format!("writing {}", toml.display()))?;
    Cmd::new("mkfs.vfat").package("dosfstools").args(["-n", "CIAB-CONFIG", "-C"]).arg(&img).arg("8192").run()?;
    Cmd::new("mcopy").package("mtools").arg("-i").arg(&img).arg(&toml).arg("::/site.toml").run()?;
    Ok(img)
}

pub fn run(args: &RunArgs) -> Result<()> {
    let image = resolve_image(&args.image, !args.no_verify)?;
    let scratch = tempfile::Builder::new().prefix("ciab-run-").tempdir().context("creating a scratch directory")?;
    let disk = overlay_disk(&image, scratch.path(), &args.disk_size)?;
    let mut machine = Machine::new(&disk);
    machine.firmware = if args.bios { Firmware::Bios } else { Firmware::Uefi };
    machine.accel = choose_accel(&args.accel)?;
    machine.memory_mib = args.memory;
    machine.cpus = args.cpus;
    machine.snapshot = true;
    machine.serial = Serial::Stdio;
    let forwards = vec![
        PortForward { host: args.ssh_port, guest: 22, name: "ssh".into() },
        PortForward { host: args.status_port, guest: 8080, name: "status page".into() },
        PortForward { host: args.https_port, guest: 443, name: "cloud APIs".into() },
    ];
    let site = match &args.site {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading the site configuration {}", path.display()))?,
        None => default_site_toml(args.https_port),
    };
    machine.extra_disks.push(qemu::Disk { path: site_config_disk(scratch.path(), &site)?, format: None, read_only: true });
    machine.network = if args.no_network { Network::None } else { Network::User { forwards: forwards.clone() } };
    let prepared = machine.command()?;
    eprintln!(
        "ciab: booting {} on a {} disk ({}, {}, {} MiB, {} vCPUs; writes go to a throw-away overlay)",
        image.display(),
        args.disk_size,
        machine.firmware,
        machine.accel,
        args.memory,
        args.cpus
    );
    eprintln!("ciab: site configuration on a CIAB-CONFIG disk: {}", args.site.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| format!("public endpoint https://localhost:{}", args.https_port)));
    if args.no_network {
        eprintln!("ciab: no network device (air-gapped)");
    } else {
        for f in &forwards {
            eprintln!("ciab: {:<12} 127.0.0.1:{} -> guest port {}", f.name, f.host, f.guest);
        }
    }
    eprintln!("ciab: serial console below; Ctrl-A X quits QEMU\n");
    let mut command = prepared.command;
    let status = command.status().context("starting qemu-system-x86_64 (package qemu-system-x86)")?;
    if !status.success() {
        bail!("QEMU exited with {status}");
    }
    Ok(())
}

pub fn up(args: &UpArgs) -> Result<()> {
    let checks = crate::doctor::check_all();
    crate::doctor::install_missing(&checks)?;
    let opts = crate::build::BuildOptions {
        spec: args.spec.clone(),
        out: args.out.clone(),
        cache_root: crate::cache::default_root(),
        firstboot_bin: None,
        create_key: true,
        signing_key: None,
        fetch: Default::default(),
    };
    let result = crate::build::build(&opts)?;
    eprint!("{}", result.summary);
    eprintln!("ciab: image ready in {}", result.out_dir.display());
    if args.no_run {
        return Ok(());
    }
    run(&RunArgs {
        image: result.out_dir,
        bios: args.bios,
        memory: 12288,
        cpus: 4,
        disk_size: "64G".into(),
        no_network: false,
        ssh_port: 2222,
        status_port: 8080,
        https_port: 8443,
        site: None,
        accel: "auto".into(),
        no_verify: false,
    })
}
