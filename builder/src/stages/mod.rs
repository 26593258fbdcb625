//! The build stages, in the order of the README's *Layout* section, each in
//! its own module, each a function from the build context and upstream
//! outputs to a cached output directory. A stage computes its cache key,
//! calls the writers ([`crate::writers`]) and records its output.
//!
//! rootfs → overlays → bundle (with guest images) → boot → filesystems → disk → formats → manifest
//! (→ installer, when the spec asks for `iso`)

pub mod boot;
pub mod bundle;
pub mod disk;
pub mod filesystems;
pub mod formats;
pub mod installer;
pub mod manifest;
pub mod overlays;
pub mod rootfs;

use crate::cache::Cache;
use crate::mirror::Sources;
use crate::spec::Spec;
use std::collections::BTreeMap;
use uuid::Uuid;

/// Bumped when a stage's output format changes, to invalidate old cache entries.
pub const STAGE_FORMAT: &str = "3";

/// Everything a stage may read.
pub struct Context<'a> {
    pub spec: &'a Spec,
    /// sha256 of the spec's identity JSON: the root of every cache key.
    pub spec_sha256: String,
    pub sources: Sources,
    pub cache: &'a Cache,
    /// Versions of the host tools that shape the bytes.
    pub tools: BTreeMap<String, String>,
    pub ids: DiskIds,
    /// How the bundle stage reaches registries and artifact servers.
    pub fetch: crate::fetch::FetchOptions,
}

impl Context<'_> {
    pub fn epoch(&self) -> i64 {
        self.spec.source_date_epoch
    }

    /// Version of a host tool, for cache keys.
    pub fn tool(&self, name: &str) -> &str {
        self.tools.get(name).map(String::as_str).unwrap_or("unknown")
    }
}

/// Identifiers of the disk, partitions and filesystems. Derived from the spec
/// hash, so the same spec always yields the same bytes and a changed spec
/// never reuses another image's identifiers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskIds {
    pub disk_guid: Uuid,
    pub part_uuids: [Uuid; 5],
    pub root_fs_uuid: Uuid,
    pub root_hash_seed: Uuid,
    /// FAT volume id of the ESP.
    pub esp_volume_id: u32,
}

impl DiskIds {
    pub fn derive(spec_sha256: &str) -> DiskIds {
        let id = |purpose: &str| -> Uuid {
            let digest = crate::fsutil::sha256_bytes(format!("ciab:{spec_sha256}:{purpose}").as_bytes());
            let mut bytes = [0u8; 16];
            for (i, b) in bytes.iter_mut().enumerate() {
                *b = u8::from_str_radix(&digest[2 * i..2 * i + 2], 16).unwrap_or(0);
            }
            uuid::Builder::from_random_bytes(bytes).into_uuid()
        };
        let vol = id("esp-volume-id");
        DiskIds {
            disk_guid: id("disk"),
            part_uuids: [id("part-bios"), id("part-esp"), id("part-root-a"), id("part-root-b"), id("part-bundle")],
            root_fs_uuid: id("fs-root"),
            root_hash_seed: id("fs-root-hash-seed"),
            esp_volume_id: u32::from_be_bytes([vol.as_bytes()[0], vol.as_bytes()[1], vol.as_bytes()[2], vol.as_bytes()[3]]),
        }
    }

    /// Partition UUID for a role.
    pub fn part_uuid(&self, role: ciab_core::contract::PartitionRole) -> Uuid {
        self.part_uuids[role.number() as usize - 1]
    }

    /// The ESP's volume id as Linux and GRUB print it: `C1AB-0001`.
    pub fn esp_fs_uuid(&self) -> String {
        format!("{:04X}-{:04X}", self.esp_volume_id >> 16, self.esp_volume_id & 0xffff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = DiskIds::derive("abc");
        assert_eq!(a, DiskIds::derive("abc"));
        assert_ne!(a.disk_guid, DiskIds::derive("abd").disk_guid);
        let mut all: Vec<Uuid> = a.part_uuids.to_vec();
        all.push(a.disk_guid);
        all.push(a.root_fs_uuid);
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 7);
        assert_eq!(a.esp_fs_uuid().len(), 9);
    }
}
