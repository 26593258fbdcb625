//! Stage `filesystems`: one image file per partition, built from directory
//! trees with userspace tools. Nothing is mounted and no loop device is used.
//!
//! - `root.img`: ext4 from the overlays tree (`mkfs.ext4 -d`), fixed UUID and
//!   hash seed, fake time, then every inode's times normalized (mke2fs copies
//!   ctimes from the host, which no build can control).
//! - `esp.img`: FAT32 with a fixed volume id (`mkfs.vfat --invariant` + `mcopy -m`).
//! - `bundle.img`: squashfs, read-only by construction, reproducible.

use super::{Context, STAGE_FORMAT};
use crate::cache::KeyBuilder;
use ciab_core::exec::Cmd;
use crate::progress::Outcome;
use crate::stages::{boot::Boot, bundle::Bundle, overlays::Tree};
use crate::writers::ext4::{ext4_from_tree, Ext4};
use anyhow::{bail, Context as _, Result};
use std::fs;
use std::path::{Path, PathBuf};

const MIB: u64 = 1 << 20;

/// Output of the filesystems stage.
#[derive(Debug, Clone)]
pub struct Filesystems {
    pub key: String,
    pub root: PathBuf,
    pub esp: PathBuf,
    pub bundle: PathBuf,
}

pub fn key(ctx: &Context, tree: &Tree, boot: &Boot, bundle: &Bundle) -> String {
    let d = &ctx.spec.disk;
    KeyBuilder::new("filesystems")
        .add("format", STAGE_FORMAT)
        .add("tree", &tree.key)
        .add("boot", &boot.key)
        .add("bundle", &bundle.key)
        .add("sizes", format!("{} {} {:?}", d.esp_mib, d.root_mib, d.bundle_mib))
        .add("root_uuid", ctx.ids.root_fs_uuid.to_string())
        .add("hash_seed", ctx.ids.root_hash_seed.to_string())
        .add("esp_id", ctx.ids.esp_volume_id.to_string())
        .add("mkfs.ext4", ctx.tool("mkfs.ext4"))
        .add("mkfs.vfat", ctx.tool("mkfs.vfat"))
        .add("mcopy", ctx.tool("mcopy"))
        .add("mksquashfs", ctx.tool("mksquashfs"))
        .add("epoch", ctx.epoch().to_string())
        .finish()
}

pub fn run(ctx: &Context, tree: &Tree, boot: &Boot, bundle: &Bundle) -> Result<(Filesystems, Outcome, Option<u64>)> {
    let key = key(ctx, tree, boot, bundle);
    let (dir, cached) = ctx.cache.get_or_build("filesystems", &key, |tmp| {
        make_ext4(ctx, &tree.tree, &tmp.join("root.img"))?;
        make_esp(ctx, &boot.esp_tree, &tmp.join("esp.img"))?;
        make_squashfs(ctx, &bundle.tree, &tmp.join("bundle.img"))?;
        Ok(())
    })?;
    let fs = Filesystems { key, root: dir.join("root.img"), esp: dir.join("esp.img"), bundle: dir.join("bundle.img") };
    let size = crate::blockmap::allocated_bytes(&fs.root).ok();
    Ok((fs, if cached { Outcome::Cached } else { Outcome::Ran }, size))
}

fn make_ext4(ctx: &Context, tree: &Path, out: &Path) -> Result<()> {
    let size_mib = ctx.spec.disk.root_mib;
    let used = crate::tree::disk_usage(tree)?;
    // ext4 metadata, journal and block rounding need headroom beyond the bytes.
    if used + used / 5 + 64 * MIB > size_mib * MIB {
        bail!(
            "the root tree needs about {} MiB but disk.root_mib is {size_mib}: raise disk.root_mib in the spec",
            (used + used / 5 + 64 * MIB) / MIB
        );
    }
    let fs = Ext4 { label: "root-a", uuid: ctx.ids.root_fs_uuid, hash_seed: ctx.ids.root_hash_seed, epoch: ctx.epoch() };
    ext4_from_tree(&fs, tree, out, size_mib).context("building the root filesystem")
}

fn make_esp(ctx: &Context, tree: &Path, out: &Path) -> Result<()> {
    let size_kib = ctx.spec.disk.esp_mib * 1024;
    let used = crate::tree::disk_usage(tree)?;
    if used + 8 * MIB > ctx.spec.disk.esp_mib * MIB {
        bail!("the ESP content needs {} MiB but disk.esp_mib is {}: raise disk.esp_mib", used / MIB + 8, ctx.spec.disk.esp_mib);
    }
    let epoch = ctx.epoch().to_string();
    Cmd::new("mkfs.vfat")
        .package("dosfstools")
        .env("SOURCE_DATE_EPOCH", &epoch)
        .args(["-F", "32", "-n", "ESP", "--invariant", "-i"])
        .arg(format!("{:08X}", ctx.ids.esp_volume_id))
        .arg("-C")
        .arg(out)
        .arg(size_kib.to_string())
        .run()
        .context("formatting the ESP")?;
    let mut entries: Vec<PathBuf> = fs::read_dir(tree)?.flatten().map(|e| e.path()).collect();
    entries.sort();
    if entries.is_empty() {
        return Ok(());
    }
    Cmd::new("mcopy")
        .package("mtools")
        .env("SOURCE_DATE_EPOCH", &epoch)
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-s", "-m", "-p", "-Q", "-i"])
        .arg(out)
        .args(&entries)
        .arg("::/")
        .run()
        .context("copying files into the ESP")?;
    Ok(())
}

fn make_squashfs(ctx: &Context, tree: &Path, out: &Path) -> Result<()> {
    let epoch = ctx.epoch().to_string();
    Cmd::new("mksquashfs")
        .package("squashfs-tools")
        .arg(tree)
        .arg(out)
        .args(["-noappend", "-quiet", "-no-progress", "-all-root", "-comp", "zstd", "-reproducible", "-mkfs-time"])
        .arg(&epoch)
        .arg("-all-time")
        .arg(&epoch)
        .run()
        .context("building the bundle filesystem")?;
    Ok(())
}
