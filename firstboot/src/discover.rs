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
            name,
        });
    }
    disks.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(disks)
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
        assert_eq!(hw.disks, vec![Disk { name: "vda".into(), size_bytes: 2 << 30, rotational: true, removable: false }]);
        assert_eq!(hw.nics, vec![Nic { name: "enp0s2".into(), mac: "52:54:00:12:34:56".into(), carrier: true }]);
    }

    #[test]
    fn missing_meminfo_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "proc/cpuinfo", "processor : 0\n");
        let err = format!("{:#}", discover(dir.path()).unwrap_err());
        assert!(err.contains("proc/meminfo"), "{err}");
    }
}
