//! Stage `overlays`: the rootfs plus the overlay layers, the first-boot binary
//! and the files that depend on this image's identifiers (fstab, os-release).
//!
//! The tree is a hard-link copy of the cached rootfs (fast, no extra space);
//! every file written here is unlinked first, so the rootfs entry is never
//! modified through a shared inode.

use super::{Context, STAGE_FORMAT};
use crate::cache::KeyBuilder;
use ciab_core::exec::Cmd;
use crate::progress::Outcome;
use crate::stages::rootfs::Rootfs;
use anyhow::{Context as _, Result};
use ciab_core::contract::{PartitionRole, BUNDLE_MOUNTPOINT};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Where the first-boot binary is installed in the image.
pub const FIRSTBOOT_PATH: &str = "usr/bin/ciab-firstboot";

/// Output of the overlays stage.
#[derive(Debug, Clone)]
pub struct Tree {
    pub key: String,
    pub tree: PathBuf,
}

/// Files generated from the spec and the disk identifiers: (path in image, content, mode).
fn generated_files(ctx: &Context) -> Vec<(&'static str, String, u32)> {
    let ids = &ctx.ids;
    let esp = ids.part_uuid(PartitionRole::Esp);
    let bundle = ids.part_uuid(PartitionRole::Bundle);
    let root = ids.part_uuid(PartitionRole::RootA);
    let fstab = format!(
        "# Written by ciab. Partitions by PARTUUID: never by device name.\n\
         PARTUUID={root} / ext4 defaults,errors=remount-ro 0 1\n\
         PARTUUID={esp} /boot/efi vfat umask=0077,nofail,x-systemd.device-timeout=90s 0 2\n\
         PARTUUID={bundle} {BUNDLE_MOUNTPOINT} squashfs ro,nofail,x-systemd.device-timeout=90s 0 0\n"
    );
    let spec = ctx.spec;
    let os_release_extra = format!("IMAGE_ID=ciab-{}\nIMAGE_VERSION={}\n", spec.name, spec.version);
    vec![
        ("etc/fstab", fstab, 0o644),
        // "uninitialized": systemd treats the boot as the first one and
        // generates a machine id per box.
        ("etc/machine-id", "uninitialized\n".to_owned(), 0o444),
        ("etc/hostname", "ciab\n".to_owned(), 0o644),
        ("usr/lib/os-release.ciab", os_release_extra, 0o644),
    ]
}

pub fn key(ctx: &Context, rootfs: &Rootfs, firstboot_bin: &Path) -> Result<String> {
    let mut k = KeyBuilder::new("overlays");
    k.add("format", STAGE_FORMAT).add("rootfs", &rootfs.key);
    for layer in &ctx.spec.overlays {
        let name = layer.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        k.add("layer", &name);
        k.add_tree(&name, layer)?;
    }
    k.add("firstboot", crate::fsutil::sha256_file(firstboot_bin).context("hashing the first-boot binary")?);
    for (path, content, mode) in generated_files(ctx) {
        k.add(path, content).add("mode", mode.to_le_bytes());
    }
    k.add("epoch", ctx.epoch().to_string());
    Ok(k.finish())
}

pub fn run(ctx: &Context, rootfs: &Rootfs, firstboot_bin: &Path) -> Result<(Tree, Outcome, Option<u64>)> {
    let key = key(ctx, rootfs, firstboot_bin)?;
    let (dir, cached) = ctx.cache.get_or_build("overlays", &key, |tmp| build(ctx, rootfs, firstboot_bin, tmp))?;
    Ok((Tree { key, tree: dir.join("tree") }, if cached { Outcome::Cached } else { Outcome::Ran }, None))
}

fn build(ctx: &Context, rootfs: &Rootfs, firstboot_bin: &Path, out: &Path) -> Result<()> {
    let tree = out.join("tree");
    Cmd::new("cp").package("coreutils").arg("-al").arg(&rootfs.tree).arg(&tree).run()?;
    for layer in &ctx.spec.overlays {
        apply_layer(layer, &tree).with_context(|| format!("applying overlay {}", layer.display()))?;
    }
    install_file(firstboot_bin, &tree.join(FIRSTBOOT_PATH), 0o755)?;
    for (path, content, mode) in generated_files(ctx) {
        let dest = tree.join(path);
        if path == "usr/lib/os-release.ciab" {
            // Append the image identity to the distribution's os-release.
            let base = fs::read_to_string(tree.join("usr/lib/os-release")).unwrap_or_default();
            write_file(&tree.join("usr/lib/os-release"), format!("{base}{content}").as_bytes(), mode)?;
            continue;
        }
        write_file(&dest, content.as_bytes(), mode)?;
    }
    crate::tree::clamp_mtimes(&tree, ctx.epoch())?;
    Ok(())
}

/// Copies one overlay folder over the tree: directories merged, files and
/// symlinks replaced (unlinked first, never written through a hard link).
pub fn apply_layer(layer: &Path, tree: &Path) -> Result<()> {
    for entry in walkdir::WalkDir::new(layer).sort_by_file_name().min_depth(1) {
        let entry = entry?;
        let rel = entry.path().strip_prefix(layer)?;
        let dest = tree.join(rel);
        let ft = entry.file_type();
        if ft.is_dir() {
            if !dest.is_dir() {
                fs::create_dir_all(&dest).with_context(|| format!("creating {}", dest.display()))?;
                let mode = entry.metadata()?.permissions().mode() & 0o7777;
                fs::set_permissions(&dest, fs::Permissions::from_mode(mode))?;
            }
        } else if ft.is_symlink() {
            let target = fs::read_link(entry.path())?;
            remove_if_exists(&dest)?;
            std::os::unix::fs::symlink(&target, &dest).with_context(|| format!("creating symlink {}", dest.display()))?;
        } else {
            let mode = entry.metadata()?.permissions().mode() & 0o7777;
            install_file(entry.path(), &dest, mode)?;
        }
    }
    Ok(())
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).with_context(|| format!("removing {}", path.display())),
        Ok(_) => fs::remove_file(path).with_context(|| format!("removing {}", path.display())),
        Err(_) => Ok(()),
    }
}

fn install_file(src: &Path, dest: &Path, mode: u32) -> Result<()> {
    let data = fs::read(src).with_context(|| format!("reading {}", src.display()))?;
    write_file(dest, &data, mode)
}

fn write_file(dest: &Path, data: &[u8], mode: u32) -> Result<()> {
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    remove_if_exists(dest)?;
    fs::write(dest, data).with_context(|| format!("writing {}", dest.display()))?;
    fs::set_permissions(dest, fs::Permissions::from_mode(mode)).with_context(|| format!("setting mode of {}", dest.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_replaces_without_touching_hard_links() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        fs::create_dir_all(base.join("etc")).unwrap();
        fs::write(base.join("etc/motd"), "old").unwrap();
        let tree = dir.path().join("tree");
        Cmd::new("cp").arg("-al").arg(&base).arg(&tree).run().unwrap();
        let layer = dir.path().join("layer");
        fs::create_dir_all(layer.join("etc/new.d")).unwrap();
        fs::write(layer.join("etc/motd"), "new").unwrap();
        fs::write(layer.join("etc/new.d/x"), "x").unwrap();
        fs::set_permissions(layer.join("etc/new.d/x"), fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink("/dev/null", layer.join("etc/masked")).unwrap();
        apply_layer(&layer, &tree).unwrap();
        assert_eq!(fs::read_to_string(tree.join("etc/motd")).unwrap(), "new");
        assert_eq!(fs::read_to_string(base.join("etc/motd")).unwrap(), "old", "the cached rootfs must not change");
        assert_eq!(fs::metadata(tree.join("etc/new.d/x")).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read_link(tree.join("etc/masked")).unwrap(), PathBuf::from("/dev/null"));
    }
}
