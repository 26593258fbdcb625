//! Hardware discovery from /proc and /sys.
//!
//! Reads only kernel interfaces (no external tools), so it works in the
//! minimal image and in tests against a captured tree: every function takes the
//! root to read from.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::Path;

/// What the box is made of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hardware {
    pub cpus: u32,
    pub memory_bytes: u64,
    pub firmware: Firmware,
    /// `/dev/kvm` exists (whether it works is a later check).
    pub kvm_device: bool,
    pub disks: Vec<Disk>,
    pub nics: Vec<Nic>,
}

/// How the box booted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    Uefi,
    Bios,
}

/// A whole block device (not a partition).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    pub name: String,
    pub size_bytes: u64,
    pub rotational: bool,
    pub removable: bool,
    /// The mounted root filesystem lives on this disk (directly, or through
    /// device-mapper/md layers). `false` when that cannot be told, e.g. a
    /// live system whose root is an overlay.
    #[serde(default)]
    pub holds_root: bool,
}

/// A network interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    pub name: String,
    pub mac: String,
    pub carrier: bool,
}

/// Discovers the hardware below `root` (`/` on the box).
pub fn discover(root: &Path) -> Result<Hardware> {
    Ok(Hardware {
        cpus: count_cpus(&read(root, "proc/cpuinfo")?),
        memory_bytes: mem_total(&read(root, "proc/meminfo")?)?,
        firmware: if root.join("sys/firmware/efi").exists() { Firmware::Uefi } else { Firmware::Bios },
        kvm_device: root.join("dev/kvm").exists(),
        disks: disks(root)?,
        nics: nics(root)?,
    })
}

fn read(root: &Path, rel: &str) -> Result<String> {
    let path = root.join(rel);
    fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

fn count_cpus(cpuinfo: &str) -> u32 {
    cpuinfo.lines().filter(|l| l.starts_with("processor")).count() as u32
}

fn mem_total(meminfo: &str) -> Result<u64> {
    let line = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .context("/proc/meminfo has no MemTotal line")?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("unreadable MemTotal line {line:?}"))?;
    Ok(kib * 1024)
}

fn sys_flag(dir: &Path, rel: &str) -> bool {
    fs::read_to_string(dir.join(rel)).map(|s| s.trim() == "1").unwrap_or(false)
}

fn disks(root: &Path) -> Result<Vec<Disk>> {
    let dir = root.join("sys/block");
    let mut disks = Vec::new();
    let Ok(entries) = fs::read_dir(&dir) else { return Ok(disks) };
    let root_disk = root_disk(root);
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // Virtual devices (loop, ram, zram, dm) are not disks the box can claim.
        if ["loop", "ram", "zram", "dm-", "sr"].iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let path = entry.path();
        let sectors: u64 = fs::read_to_string(path.join("size"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        disks.push(Disk {
            size_bytes: sectors * 512,
            rotational: sys_flag(&path, "queue/rotational"),
            removable: sys_flag(&path, "removable"),
            holds_root: root_disk.as_deref() == Some(name.as_str()),
            name,
        });
    }
    disks.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(disks)
}

/// The whole disk under the mounted root filesystem, found through
/// `/proc/self/mountinfo` (the root's `major:minor`) and the `dev` files in
/// `/sys/block` (no symlinks, so a captured tree works).
fn root_disk(root: &Path) -> Option<String> {
    let mountinfo = fs::read_to_string(root.join("proc/self/mountinfo")).ok()?;
    // Field 3 is major:minor, field 5 the mount point; the last mount on `/` is the visible one.
    let dev = mountinfo.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(4) == Some(&"/")).then(|| fields.get(2).map(|d| (*d).to_owned())).flatten()
    })?;
    let kname = kernel_name_of(root, &dev)?;
    disk_owning(root, &kname, 0)
}

/// The kernel name (`nvme0n1p2`, `dm-0`) of the block device `major:minor`.
fn kernel_name_of(root: &Path, dev: &str) -> Option<String> {
    let has_dev = |p: &Path| fs::read_to_string(p.join("dev")).map(|d| d.trim() == dev).unwrap_or(false);
    for entry in fs::read_dir(root.join("sys/block")).ok()?.flatten() {
        let path = entry.path();
        if has_dev(&path) {
            return Some(entry.file_name().to_string_lossy().into_owned());
        }
        for part in fs::read_dir(&path).into_iter().flatten().flatten() {
            if part.path().join("partition").exists() && has_dev(&part.path()) {
                return Some(part.file_name().to_string_lossy().into_owned());
            }
        }
    }
    None
}

/// The whole disk that `kname` is, or is a partition of, following
/// device-mapper and md devices down to their first member.
fn disk_owning(root: &Path, kname: &str, depth: u32) -> Option<String> {
    let block = root.join("sys/block");
    let whole = block.join(kname);
    if whole.is_dir() {
        if !(kname.starts_with("dm-") || kname.starts_with("md")) {
            return Some(kname.to_owned());
        }
        // LVM, LUKS or RAID: the root lives on the member devices. Depth is
        // bounded so a malformed tree cannot loop.
        if depth >= 8 {
            return None;
        }
        let mut slaves: Vec<String> = fs::read_dir(whole.join("slaves"))
            .ok()?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        slaves.sort();
        return slaves.iter().find_map(|s| disk_owning(root, s, depth + 1));
    }
    fs::read_dir(&block)
        .ok()?
        .flatten()
        .find(|e| e.path().join(kname).join("partition").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
}

fn nics(root: &Path) -> Result<Vec<Nic>> {
    let dir = root.join("sys/class/net");
    let mut nics = Vec::new();
    let Ok(entries) = fs::read_dir(&dir) else { return Ok(nics) };
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "lo" {
            continue;
        }
        let path = entry.path();
        nics.push(Nic {
            mac: fs::read_to_string(path.join("address")).map(|s| s.trim().to_owned()).unwrap_or_default(),
            carrier: sys_flag(&path, "carrier"),
            name,
        });
    }
    nics.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(nics)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, content: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    #[test]
    fn discovers_a_captured_vm() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "proc/cpuinfo", "processor\t: 0\nmodel name\t: QEMU\n\nprocessor\t: 1\nmodel name\t: QEMU\n");
        write(root, "proc/meminfo", "MemTotal:        2014832 kB\nMemFree:  1 kB\n");
        write(root, "sys/block/vda/size", "4194304\n");
        write(root, "sys/block/vda/queue/rotational", "1\n");
        write(root, "sys/block/vda/removable", "0\n");
        write(root, "sys/block/loop0/size", "100\n");
        write(root, "sys/class/net/lo/address", "00:00:00:00:00:00\n");
        write(root, "sys/class/net/enp0s2/address", "52:54:00:12:34:56\n");
        write(root, "sys/class/net/enp0s2/carrier", "1\n");
        let hw = discover(root).unwrap();
        assert_eq!(hw.cpus, 2);
        assert_eq!(hw.memory_bytes, 2014832 * 1024);
        assert_eq!(hw.firmware, Firmware::Bios);
        assert_eq!(hw.disks, vec![Disk { name: "vda".into(), size_bytes: 2 << 30, rotational: true, removable: false, holds_root: false }]);
        assert_eq!(hw.nics, vec![Nic { name: "enp0s2".into(), mac: "52:54:00:12:34:56".into(), carrier: true }]);
    }

    #[test]
    fn finds_the_disk_under_the_root_partition() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "proc/self/mountinfo", "22 1 0:21 / /proc rw - proc proc rw\n26 1 259:2 / / rw,relatime - ext4 /dev/nvme0n1p2 rw\n");
        for disk in ["nvme0n1", "nvme1n1"] {
            write(root, &format!("sys/block/{disk}/size"), "3750748848\n");
        }
        write(root, "sys/block/nvme0n1/dev", "259:0\n");
        write(root, "sys/block/nvme0n1/nvme0n1p1/partition", "1\n");
        write(root, "sys/block/nvme0n1/nvme0n1p1/dev", "259:1\n");
        write(root, "sys/block/nvme0n1/nvme0n1p2/partition", "2\n");
        write(root, "sys/block/nvme0n1/nvme0n1p2/dev", "259:2\n");
        write(root, "sys/block/nvme1n1/dev", "259:3\n");
        let names = |root: &Path| -> Vec<(String, bool)> {
            disks(root).unwrap().into_iter().map(|d| (d.name, d.holds_root)).collect()
        };
        assert_eq!(names(root), vec![("nvme0n1".into(), true), ("nvme1n1".into(), false)]);

        // Root on LVM on the second disk's partition.
        write(root, "proc/self/mountinfo", "26 1 254:0 / / rw - ext4 /dev/mapper/vg-root rw\n");
        write(root, "sys/block/dm-0/dev", "254:0\n");
        write(root, "sys/block/dm-0/slaves/nvme1n1p3/.keep", "");
        write(root, "sys/block/nvme1n1/nvme1n1p3/partition", "3\n");
        write(root, "sys/block/nvme1n1/nvme1n1p3/dev", "259:7\n");
        assert_eq!(names(root), vec![("nvme0n1".into(), false), ("nvme1n1".into(), true)]);

        // A live system's overlay root is on no disk.
        write(root, "proc/self/mountinfo", "26 1 0:30 / / rw - overlay overlay rw\n");
        assert_eq!(names(root), vec![("nvme0n1".into(), false), ("nvme1n1".into(), false)]);
    }

    #[test]
    fn missing_meminfo_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "proc/cpuinfo", "processor : 0\n");
        let err = format!("{:#}", discover(dir.path()).unwrap_err());
        assert!(err.contains("proc/meminfo"), "{err}");
    }
}
