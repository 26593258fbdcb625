//! Stage `disk`: the sparse raw GPT disk image.
//!
//! The GPT is written by the builder (gptman), partitions are placed at 1 MiB
//! boundaries in the order of DESIGN.md §3, each filesystem image is copied
//! in without its holes or zero blocks, and GRUB's boot code goes into the
//! protective MBR and the `bios` partition. The `data` partition is not in the
//! image: first boot creates it from the rest of the target disk.

use super::{Context, STAGE_FORMAT};
use crate::cache::KeyBuilder;
use crate::progress::Outcome;
use crate::stages::boot::{grub_bios, Boot};
use crate::stages::filesystems::Filesystems;
use anyhow::{bail, Context as _, Result};
use ciab_core::contract::PartitionRole;
use gptman::{GPTPartitionEntry, GPT};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use uuid::Uuid;

pub const SECTOR: u64 = 512;
const MIB: u64 = 1 << 20;
/// GPT attribute: read-only (Discoverable Partitions Specification).
const ATTR_READ_ONLY: u64 = 1 << 60;
/// GPT attribute: do not auto-mount.
const ATTR_NO_AUTO: u64 = 1 << 63;

/// One partition of the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub role: PartitionRole,
    pub offset: u64,
    pub size: u64,
    pub part_uuid: Uuid,
    pub attributes: u64,
}

/// The planned disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub size: u64,
    pub slots: Vec<Slot>,
}

impl Layout {
    pub fn slot(&self, role: PartitionRole) -> &Slot {
        // Every layout has every role: `plan` pushes them all.
        &self.slots[role.number() as usize - 1]
    }
}

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

/// Writes the GPT (primary, backup and protective MBR) for `layout` into `file`.
pub fn write_gpt(file: &mut File, layout: &Layout, disk_guid: Uuid) -> Result<()> {
    let mut gpt = GPT::new_from(file, SECTOR, disk_guid.to_bytes_le()).context("creating the GPT header")?;
    for (i, slot) in layout.slots.iter().enumerate() {
        let type_guid: Uuid = slot.role.type_guid().parse().context("partition type GUID")?;
        gpt[i as u32 + 1] = GPTPartitionEntry {
            partition_type_guid: type_guid.to_bytes_le(),
            unique_partition_guid: slot.part_uuid.to_bytes_le(),
            starting_lba: slot.offset / SECTOR,
            ending_lba: (slot.offset + slot.size) / SECTOR - 1,
            attribute_bits: slot.attributes,
            partition_name: slot.role.label().into(),
        };
    }
    gpt.write_into(file).context("writing the GPT")?;
    GPT::write_protective_mbr_into(file, SECTOR).context("writing the protective MBR")?;
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use ciab_core::exec::Cmd;

    fn layout() -> Layout {
        let ids = crate::stages::DiskIds::derive("test");
        let sizes = [MIB, 64 * MIB, 32 * MIB, 32 * MIB, 3 * MIB];
        let mut offset = MIB;
        let mut slots = Vec::new();
        for (role, size) in PartitionRole::ALL.iter().zip(sizes) {
            slots.push(Slot { role: *role, offset, size, part_uuid: ids.part_uuid(*role), attributes: if *role == PartitionRole::Bundle { ATTR_READ_ONLY } else { 0 } });
            offset += size;
        }
        Layout { size: offset + MIB, slots }
    }

    #[test]
    fn gpt_reads_back_with_sfdisk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.raw");
        let mut f = OpenOptions::new().read(true).write(true).create_new(true).open(&path).unwrap();
        let l = layout();
        f.set_len(l.size).unwrap();
        let guid = Uuid::parse_str("11111111-2222-4333-8444-555555555555").unwrap();
        write_gpt(&mut f, &l, guid).unwrap();
        drop(f);
        let json: serde_json::Value = Cmd::new("sfdisk").package("fdisk").arg("--json").arg(&path).run_json().unwrap();
        let pt = &json["partitiontable"];
        assert_eq!(pt["label"], "gpt");
        assert_eq!(pt["id"], "11111111-2222-4333-8444-555555555555");
        let parts = pt["partitions"].as_array().unwrap();
        assert_eq!(parts.len(), 5);
        for (p, slot) in parts.iter().zip(&l.slots) {
            assert_eq!(p["start"].as_u64().unwrap(), slot.offset / SECTOR);
            assert_eq!(p["size"].as_u64().unwrap(), slot.size / SECTOR);
            assert_eq!(p["name"], slot.role.label());
            assert_eq!(p["type"], slot.role.type_guid());
            assert_eq!(p["uuid"].as_str().unwrap(), slot.part_uuid.to_string().to_uppercase());
        }
        assert_eq!(parts[4]["attrs"], "GUID:60");
        // The image stays sparse: only the GPT areas hold data.
        assert!(crate::blockmap::allocated_bytes(&path).unwrap() < 2 * MIB);
        // Both headers verify (sfdisk would warn on a bad backup).
        let out = Cmd::new("sfdisk").arg("--verify").arg(&path).run().unwrap();
        assert!(!out.contains("corrupt"), "{out}");
    }
}
