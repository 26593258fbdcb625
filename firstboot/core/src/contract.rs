//! The on-disk contract between `ciab build` and the box.
//!
//! Everything here is written by the builder (manifest, bundle index, partition
//! labels) and read on the box or by `ciab verify`/`ciab flash`. Changing a
//! field is a format change: bump [`MANIFEST_SCHEMA`].

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Version of `manifest.json`'s layout. 4: a guest image the builder made
/// from Debian lists its packages.
pub const MANIFEST_SCHEMA: u32 = 4;
/// File name of the manifest in an output directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// File name of the manifest's detached minisign signature.
pub const MANIFEST_SIG_FILE: &str = "manifest.json.minisig";
/// File name of the SPDX software bill of materials.
pub const SBOM_FILE: &str = "sbom.spdx.json";
/// Index of the offline bundle, at the root of the `bundle` partition.
pub const BUNDLE_INDEX_FILE: &str = "bundle.json";
/// Optional site configuration on the ESP.
pub const ESP_SITE_CONFIG: &str = "ciab/site.toml";
/// Where the box mounts the bundle partition.
pub const BUNDLE_MOUNTPOINT: &str = "/var/lib/ciab/bundle";

/// Where a cloud image carries OpenStack's migrated schemas, one SQL dump per
/// database (made at build time by `images/scripts/openstack.sh`); first
/// boot loads them. An image without them has no cloud to configure.
pub const OPENSTACK_SCHEMAS_DIR: &str = "usr/share/ciab/schemas";

/// Where the box's offline registry listens (overlays/registry/etc/docker/registry/config.yml);
/// the builder points containerd's mirrors at it.
pub const REGISTRY_ADDR: &str = "127.0.0.1:5050";
/// Marker line the first-boot service prints when the box is ready.
pub const READY_LINE: &str = "ciab-firstboot: ready";

/// The partitions of a ciab disk (README: The builder↔box contract), in on-disk order.
/// GPT type GUIDs follow the Discoverable Partitions Specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartitionRole {
    /// Legacy BIOS boot partition holding GRUB's core.img.
    Bios,
    /// EFI System Partition (FAT32): systemd-boot, UKIs, GRUB config, site config.
    Esp,
    /// The active root filesystem (ext4).
    RootA,
    /// Reserved root slot for A/B updates; empty in a fresh image.
    RootB,
    /// Read-only offline bundle: OCI registry store and artifacts.
    Bundle,
}

impl PartitionRole {
    /// All roles in partition-number order (number = index + 1).
    pub const ALL: [PartitionRole; 5] = [
        PartitionRole::Bios,
        PartitionRole::Esp,
        PartitionRole::RootA,
        PartitionRole::RootB,
        PartitionRole::Bundle,
    ];

    /// GPT partition name (label); the box finds partitions by these.
    pub fn label(self) -> &'static str {
        match self {
            PartitionRole::Bios => "bios",
            PartitionRole::Esp => "ESP",
            PartitionRole::RootA => "root-a",
            PartitionRole::RootB => "root-b",
            PartitionRole::Bundle => "bundle",
        }
    }

    /// GPT partition type GUID.
    pub fn type_guid(self) -> &'static str {
        match self {
            PartitionRole::Bios => "21686148-6449-6E6F-744E-656564454649",
            PartitionRole::Esp => "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            // Root partition (x86-64).
            PartitionRole::RootA | PartitionRole::RootB => "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
            // Linux generic data.
            PartitionRole::Bundle => "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
        }
    }

    /// 1-based GPT partition number.
    pub fn number(self) -> u32 {
        Self::ALL.iter().position(|r| *r == self).map_or(0, |i| i as u32 + 1)
    }
}

/// `manifest.json`: what an image is, byte for byte. Signed with minisign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Layout version, [`MANIFEST_SCHEMA`].
    pub schema: u32,
    pub image: ImageInfo,
    /// Every file in the output directory except the manifest and its signature.
    pub outputs: Vec<OutputFile>,
    pub disk: DiskInfo,
    pub partitions: Vec<PartitionInfo>,
    /// Every Debian package in the root filesystem.
    pub packages: Vec<PackageInfo>,
    /// Host tools and their versions that produced the image.
    pub tools: BTreeMap<String, String>,
    /// Cache key of each build stage, in order: equal keys mean equal inputs.
    pub stages: Vec<StageKey>,
    /// What the bundle partition carries: the same index as its `bundle.json`.
    pub bundle: BundleIndex,
}

/// Identity of the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageInfo {
    pub name: String,
    pub version: String,
    /// sha256 of the resolved spec (JSON), the root of every cache key.
    pub spec_sha256: String,
    pub source_date_epoch: i64,
    pub debian_suite: String,
    /// Kernel release inside the image (`uname -r` on the box).
    pub kernel: String,
}

/// One output file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputFile {
    /// File name relative to the output directory.
    pub path: String,
    /// `raw`, `qcow2`, `sbom`, `bmap`, …
    pub kind: String,
    pub size: u64,
    pub sha256: String,
}

/// The raw disk image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskInfo {
    /// Size of the raw image in bytes (apparent size).
    pub size: u64,
    pub sector_size: u64,
    pub disk_guid: String,
    /// Ranges of the raw image that hold data; every byte outside them is
    /// zero. Flashing writes only these and zeroes (or discards) the rest.
    pub block_map: Vec<MappedRange>,
}

/// A range of an image that holds data, with the sha256 of its bytes: what
/// `ciab flash` and the installer check before writing and after reading
/// back. Ranges are 4 KiB aligned and at most [`MAX_MAPPED_RANGE`] long, so
/// a mismatch names a small region and a range fits in memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappedRange {
    pub offset: u64,
    pub length: u64,
    pub sha256: String,
}

/// Longest [`MappedRange`]: 16 MiB.
pub const MAX_MAPPED_RANGE: u64 = 16 << 20;

/// File name of the installer ISO's signed description, beside the ISO.
pub const INSTALLER_FILE: &str = "installer.json";
/// File name of its detached minisign signature.
pub const INSTALLER_SIG_FILE: &str = "installer.json.minisig";

/// Directory of the installer ISO that carries the image: the signed
/// manifest, its signature and `image.data`.
pub const INSTALLER_PAYLOAD_DIR: &str = "payload";
/// The image's mapped ranges back to back, in block-map order.
pub const INSTALLER_DATA_FILE: &str = "image.data";
/// The public key the installer trusts, inside its initramfs.
pub const INSTALLER_TRUSTED_KEY: &str = "etc/ciab/signing.pub";
/// Kernel modules the installer loads, in order, one path per line relative
/// to `usr/lib/modules/<release>/`, inside its initramfs.
pub const INSTALLER_MODULE_LIST: &str = "etc/ciab/modules";
/// Label of the installer's FAT EFI partition (which may hold `ciab/site.toml`).
pub const INSTALLER_EFI_LABEL: &str = "CIAB-EFI";
/// Marker line the installer prints when the image is on the disk.
pub const INSTALLED_LINE: &str = "ciab-installer: installed";

/// `installer.json`: the installer ISO of an image, signed like the
/// manifest. The ISO embeds the signed manifest, so the manifest cannot name
/// the ISO's digest; this file does, and adds the ISO's block map so
/// `ciab flash` writes a USB stick the way it writes a disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallerInfo {
    /// Layout version, [`MANIFEST_SCHEMA`].
    pub schema: u32,
    /// The image the installer carries (its manifest's `image.name`).
    pub image: String,
    /// sha256 of the `manifest.json` embedded in the ISO.
    pub manifest_sha256: String,
    pub iso: OutputFile,
    pub block_map: Vec<MappedRange>,
}

/// One GPT partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionInfo {
    pub number: u32,
    pub role: PartitionRole,
    pub label: String,
    pub type_guid: String,
    pub part_uuid: String,
    /// Filesystem UUID or FAT volume id, when the partition holds a filesystem.
    pub fs_uuid: Option<String>,
    /// Byte offset in the raw image.
    pub offset: u64,
    pub size: u64,
    /// sha256 of the partition's bytes in the raw image.
    pub sha256: String,
}

/// A Debian package in the image.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageInfo {
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// Source package name.
    pub source: String,
    pub source_version: String,
}

/// A build stage and the hash of its inputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageKey {
    pub stage: String,
    pub key: String,
}

/// `bundle.json` at the root of the `bundle` partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleIndex {
    pub schema: u32,
    /// Container images in the registry store: upstream reference → manifest digest.
    pub images: Vec<BundleImage>,
    /// Files under `artifacts/`.
    pub artifacts: Vec<BundleArtifact>,
    /// Disk images for Glance, under `guest-images/`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guest_images: Vec<BundleGuestImage>,
}

/// A container image in the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleImage {
    pub reference: String,
    pub digest: String,
}

/// A disk image the box registers in Glance at first boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleGuestImage {
    /// Its name in Glance.
    pub name: String,
    /// Path inside the bundle.
    pub file: String,
    pub sha256: String,
    pub size: u64,
    /// Glance's `disk_format` (`raw`).
    pub disk_format: String,
    pub min_disk_gib: u64,
    pub min_ram_mib: u64,
    /// Image properties (SCS standard scs-0102's and Nova's hints).
    pub properties: std::collections::BTreeMap<String, String>,
    /// Every Debian package inside, when the builder made the image from
    /// Debian (`build = "debian"`); a downloaded image is pinned by its
    /// sha256 alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<PackageInfo>,
}

/// A file artifact in the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleArtifact {
    pub dest: String,
    pub sha256: String,
    pub size: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_numbers_follow_design_order() {
        let numbers: Vec<u32> = PartitionRole::ALL.iter().map(|r| r.number()).collect();
        assert_eq!(numbers, vec![1, 2, 3, 4, 5]);
        assert_eq!(PartitionRole::RootA.label(), "root-a");
    }

    #[test]
    fn manifest_rejects_unknown_fields() {
        let json = r#"{"schema":1,"bogus":true}"#;
        let err = serde_json::from_str::<Manifest>(json).unwrap_err().to_string();
        assert!(err.contains("unknown field `bogus`"), "{err}");
    }
}
