//! Stage `boot`: the ESP's tree and GRUB's core.img.
//!
//! UEFI boots systemd-boot, which finds one Unified Kernel Image (kernel +
//! initrd + command line + os-release in one signed-able PE file). Legacy BIOS
//! boots GRUB from the `bios` partition, which reads `grub/grub.cfg`, the
//! kernel and the initrd from the same ESP. Both paths start the very same
//! kernel with the very same command line. The UKI and GRUB's images are
//! written by [`crate::writers::uki`] and [`crate::writers::grub_bios`].

use super::{Context, STAGE_FORMAT};
use crate::cache::KeyBuilder;
use crate::progress::Outcome;
use crate::stages::rootfs::Rootfs;
use crate::writers::{grub_bios, uki};
use anyhow::{bail, Context as _, Result};
use ciab_core::contract::PartitionRole;
use std::fs;
use std::path::{Path, PathBuf};

/// Output of the boot stage.
#[derive(Debug, Clone)]
pub struct Boot {
    pub key: String,
    /// Tree of the ESP.
    pub esp_tree: PathBuf,
    /// GRUB's core.img for the `bios` partition.
    pub core_img: PathBuf,
    /// GRUB's boot.img for the protective MBR.
    pub boot_img: PathBuf,
}

/// The kernel command line: root by PARTUUID, then the spec's arguments.
pub fn cmdline(ctx: &Context) -> String {
    let root = ctx.ids.part_uuid(PartitionRole::RootA);
    let mut args = vec![format!("root=PARTUUID={root}")];
    args.extend(ctx.spec.boot.cmdline.iter().cloned());
    args.join(" ")
}

pub fn key(ctx: &Context, rootfs: &Rootfs) -> String {
    KeyBuilder::new("boot")
        .add("format", STAGE_FORMAT)
        .add("rootfs", &rootfs.key)
        .add("cmdline", cmdline(ctx))
        .add("timeout", ctx.spec.boot.timeout_seconds.to_string())
        .add("esp_uuid", ctx.ids.esp_fs_uuid())
        .add("name", format!("{} {}", ctx.spec.name, ctx.spec.version))
        .add("grub", ctx.tool("grub-mkimage"))
        .add("objcopy", ctx.tool("objcopy"))
        .add("epoch", ctx.epoch().to_string())
        .finish()
}

pub fn run(ctx: &Context, rootfs: &Rootfs) -> Result<(Boot, Outcome, Option<u64>)> {
    let key = key(ctx, rootfs);
    let (dir, cached) = ctx.cache.get_or_build("boot", &key, |tmp| build(ctx, rootfs, tmp))?;
    let boot = Boot { key, esp_tree: dir.join("esp"), core_img: dir.join("core.img"), boot_img: dir.join("boot.img") };
    let size = crate::tree::disk_usage(&boot.esp_tree).ok();
    Ok((boot, if cached { Outcome::Cached } else { Outcome::Ran }, size))
}

fn build(ctx: &Context, rootfs: &Rootfs, out: &Path) -> Result<()> {
    let tree = &rootfs.tree;
    let kernel = tree.join(format!("boot/vmlinuz-{}", rootfs.kernel));
    let initrd = tree.join(format!("boot/initrd.img-{}", rootfs.kernel));
    let efi_dir = tree.join("usr/lib/systemd/boot/efi");
    let sd_boot = efi_dir.join("systemd-bootx64.efi");
    let stub = efi_dir.join("linuxx64.efi.stub");
    for (path, hint) in [
        (&kernel, "linux-image-amd64"),
        (&initrd, "initramfs-tools"),
        (&sd_boot, "systemd-boot-efi"),
        (&stub, "systemd-boot-efi"),
    ] {
        if !path.exists() {
            bail!("{} is missing from the rootfs: add {hint} to packages.install", path.strip_prefix(tree).unwrap_or(path).display());
        }
    }
    let esp = out.join("esp");
    let cmdline = cmdline(ctx);
    let spec = ctx.spec;

    // UEFI: systemd-boot as the removable-media default loader, one UKI.
    copy(&sd_boot, &esp.join("EFI/BOOT/BOOTX64.EFI"))?;
    copy(&sd_boot, &esp.join("EFI/systemd/systemd-bootx64.efi"))?;
    let os_release = fs::read_to_string(tree.join("usr/lib/os-release")).context("reading the rootfs os-release")?;
    let os_release = format!("{os_release}IMAGE_ID=ciab-{}\nIMAGE_VERSION={}\n", spec.name, spec.version);
    let uki_path = esp.join(format!("EFI/Linux/ciab-{}-{}.efi", spec.name, spec.version));
    uki::build(&uki::UkiInput {
        stub: &stub,
        kernel: &kernel,
        initrd: &initrd,
        cmdline: &cmdline,
        os_release: &os_release,
        uname: &rootfs.kernel,
        work_dir: out,
        output: &uki_path,
        timestamp: u32::try_from(ctx.epoch()).context("source_date_epoch out of range")?,
    })?;
    write(&esp.join("loader/loader.conf"), &format!("timeout {}\neditor no\nconsole-mode keep\n", spec.boot.timeout_seconds))?;

    // Legacy BIOS: GRUB reads the same kernel and initrd from the ESP.
    copy(&kernel, &esp.join("ciab/vmlinuz"))?;
    copy(&initrd, &esp.join("ciab/initrd.img"))?;
    write(&esp.join("grub/grub.cfg"), &grub_cfg(ctx, &cmdline))?;
    let grub = grub_bios::BiosBootInput { grub_dir: Path::new(grub_bios::GRUB_I386_PC_DIR), esp_fs_uuid: &ctx.ids.esp_fs_uuid(), work_dir: out };
    let core = grub_bios::make_core_img(&grub)?;
    fs::write(out.join("core.img"), core)?;
    let boot_img = grub_bios::read_boot_img(Path::new(grub_bios::GRUB_I386_PC_DIR))?;
    fs::write(out.join("boot.img"), boot_img)?;

    crate::tree::clamp_mtimes(&esp, ctx.epoch())?;
    Ok(())
}

fn grub_cfg(ctx: &Context, cmdline: &str) -> String {
    format!(
        "# Written by ciab: legacy BIOS boot of the same kernel the UKI carries.\n\
         serial --unit=0 --speed=115200\n\
         terminal_input console serial\n\
         terminal_output console serial\n\
         set timeout={timeout}\n\
         set default=0\n\
         menuentry \"ciab {name} {version}\" {{\n\
         \tsearch --no-floppy --fs-uuid --set=root {esp}\n\
         \tlinux /ciab/vmlinuz {cmdline}\n\
         \tinitrd /ciab/initrd.img\n\
         }}\n",
        timeout = ctx.spec.boot.timeout_seconds,
        name = ctx.spec.name,
        version = ctx.spec.version,
        esp = ctx.ids.esp_fs_uuid(),
    )
}

fn copy(src: &Path, dest: &Path) -> Result<()> {
    if let Some(p) = dest.parent() {
        fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
    }
    fs::copy(src, dest).with_context(|| format!("copying {} to {}", src.display(), dest.display()))?;
    Ok(())
}

fn write(dest: &Path, text: &str) -> Result<()> {
    if let Some(p) = dest.parent() {
        fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
    }
    fs::write(dest, text).with_context(|| format!("writing {}", dest.display()))
}
