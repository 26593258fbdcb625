//! Stage `disk`: the sparse raw GPT disk image.
//!
//! The GPT is written by the builder ([`crate::writers::gpt`]), partitions are
//! placed at 1 MiB boundaries in the order of the README's *The builder↔box
//! contract* section, each filesystem image is copied in without its holes or
//! zero blocks, and GRUB's boot code goes into the protective MBR and the
//! `bios` partition. The `data` partition is not in the image: first boot
//! creates it from the rest of the target disk.

use super::{Context, STAGE_FORMAT};
use crate::cache::KeyBuilder;
use crate::progress::Outcome;
use crate::stages::boot::Boot;
use crate::stages::filesystems::Filesystems;
use crate::writers::gpt::{write_gpt, Layout, Slot, ATTR_NO_AUTO, ATTR_READ_ONLY, SECTOR};
use crate::writers::grub_bios;
use anyhow::{bail, Context as _, Result};
use ciab_core::contract::PartitionRole;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

const MIB: u64 = 1 << 20;

/// Output of the disk stage.
#[derive(Debug, Clone)]
pub struct Disk {
    pub key: String,
    pub raw: PathBuf,
    pub layout: Layout,
}

/// Plans the partitions: 1 MiB aligned, in role order, sized from the spec and
/// (for the bundle) from its filesystem image.
pub fn plan(ctx: &Context, bundle_bytes: u64) -> Layout {
    let d = &ctx.spec.disk;
    let bundle_mib = bundle_bytes.div_ceil(MIB).max(d.bundle_mib.unwrap_or(0)).max(1);
    let sizes = [MIB, d.esp_mib * MIB, d.root_mib * MIB, d.root_mib * MIB, bundle_mib * MIB];
    let mut offset = MIB;
    let mut slots = Vec::new();
    for (role, size) in PartitionRole::ALL.iter().zip(sizes) {
        let attributes = match role {
            PartitionRole::RootB => ATTR_NO_AUTO,
            PartitionRole::Bundle => ATTR_READ_ONLY,
            _ => 0,
        };
        slots.push(Slot { role: *role, offset, size, part_uuid: ctx.ids.part_uuid(*role), attributes });
        offset += size;
    }
    // Room for the backup GPT, kept 1 MiB aligned.
    Layout { size: offset + MIB, slots }
}

pub fn run(ctx: &Context, fs: &Filesystems, boot: &Boot) -> Result<(Disk, Outcome, Option<u64>)> {
    let bundle_bytes = std::fs::metadata(&fs.bundle).with_context(|| format!("reading {}", fs.bundle.display()))?.len();
    let layout = plan(ctx, bundle_bytes);
    let key = KeyBuilder::new("disk")
        .add("format", STAGE_FORMAT)
        .add("filesystems", &fs.key)
        .add("boot", &boot.key)
        .add("layout", format!("{layout:?}"))
        .add("disk_guid", ctx.ids.disk_guid.to_string())
        .finish();
    let file_name = format!("{}.raw", ctx.spec.name);
    let (dir, cached) = ctx.cache.get_or_build("disk", &key, |tmp| write_disk(ctx, &layout, fs, boot, &tmp.join(&file_name)))?;
    let raw = dir.join(&file_name);
    let size = crate::blockmap::allocated_bytes(&raw).ok();
    Ok((Disk { key, raw, layout }, if cached { Outcome::Cached } else { Outcome::Ran }, size))
}

fn write_disk(ctx: &Context, layout: &Layout, fs: &Filesystems, boot: &Boot, path: &Path) -> Result<()> {
    let mut file = OpenOptions::new().read(true).write(true).create_new(true).open(path).with_context(|| format!("creating {}", path.display()))?;
    file.set_len(layout.size).with_context(|| format!("sizing {}", path.display()))?;
    write_gpt(&mut file, layout, ctx.ids.disk_guid)?;
    for (role, image) in [(PartitionRole::Esp, &fs.esp), (PartitionRole::RootA, &fs.root), (PartitionRole::Bundle, &fs.bundle)] {
        let slot = layout.slot(role);
        let src = File::open(image).with_context(|| format!("opening {}", image.display()))?;
        let len = src.metadata()?.len();
        if len > slot.size {
            bail!("{} ({len} bytes) does not fit the {} partition ({} bytes)", image.display(), role.label(), slot.size);
        }
        crate::blockmap::copy_sparse(&src, &file, slot.offset).with_context(|| format!("copying {} into the disk", image.display()))?;
    }
    let core = std::fs::read(&boot.core_img).with_context(|| format!("reading {}", boot.core_img.display()))?;
    let boot_img = std::fs::read(&boot.boot_img).with_context(|| format!("reading {}", boot.boot_img.display()))?;
    let bios = layout.slot(PartitionRole::Bios);
    grub_bios::install(&file, &boot_img, &core, bios.offset / SECTOR, bios.size / SECTOR).context("installing GRUB for legacy BIOS boot")?;
    file.sync_all().with_context(|| format!("syncing {}", path.display()))?;
    Ok(())
}
