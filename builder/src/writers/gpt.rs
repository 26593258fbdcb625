//! GUID partition tables: the partition layout of a disk image and the GPT
//! (primary, backup and protective MBR) that describes it, written with
//! gptman into an image file. Used for the appliance's disk (the `disk`
//! stage) and for the guest images' disks.

use anyhow::{Context as _, Result};
use ciab_core::contract::PartitionRole;
use gptman::{GPTPartitionEntry, GPT};
use std::fs::File;
use uuid::Uuid;

/// Bytes per sector of every disk image ciab writes.
pub const SECTOR: u64 = 512;
/// GPT attribute: read-only (Discoverable Partitions Specification).
pub const ATTR_READ_ONLY: u64 = 1 << 60;
/// GPT attribute: do not auto-mount.
pub const ATTR_NO_AUTO: u64 = 1 << 63;

/// One partition of the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub role: PartitionRole,
    pub offset: u64,
    pub size: u64,
    pub part_uuid: Uuid,
    pub attributes: u64,
}

/// The planned disk: its size and its partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub size: u64,
    pub slots: Vec<Slot>,
}

impl Layout {
    /// The slot of `role`.
    pub fn slot(&self, role: PartitionRole) -> &Slot {
        // Slots are in role order from `bios` on (the disk stage's `plan`
        // pushes every role, a guest disk the first ones), so a role's number
        // is its place.
        &self.slots[role.number() as usize - 1]
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use ciab_core::exec::Cmd;
    use std::fs::OpenOptions;

    const MIB: u64 = 1 << 20;

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
