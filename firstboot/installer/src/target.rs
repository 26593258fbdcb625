//! Which disk the installer writes to: the one the site config names, else
//! the largest non-removable disk that is not the installer's own medium.
//! An ambiguous choice is an error, never a guess.

use ciab_core::blockdev::BlockDevice;
use anyhow::{bail, Result};
use std::os::unix::fs::FileExt;

/// Kernel names that are never an install target.
fn never_target(name: &str) -> bool {
    ["loop", "ram", "zram", "sr", "fd", "md", "dm-", "nbd"].iter().any(|p| name.starts_with(p))
}

/// The disk's `/dev/disk/by-path/` name as udev's path_id builds it, for
/// virtio-blk (`pci-0000:00:04.0`), NVMe (`pci-0000:01:00.0-nvme-1`) and
/// SATA (`pci-0000:00:1f.2-ata-1.0`) disks; `None` for other buses.
pub fn by_path(dev: &BlockDevice) -> Option<String> {
    let comps: Vec<String> = dev.sys_path.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    let is_pci = |s: &str| {
        let b = s.as_bytes();
        b.len() == 12 && b[4] == b':' && b[7] == b':' && b[10] == b'.' && s.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
    };
    let pci_at = comps.iter().rposition(|c| is_pci(c))?;
    let pci = &comps[pci_at];
    let rest = &comps[pci_at + 1..];
    if rest.iter().any(|c| c.starts_with("virtio")) {
        return Some(format!("pci-{pci}"));
    }
    if rest.iter().any(|c| c.starts_with("nvme")) {
        let nsid = std::fs::read_to_string(dev.sys_path.join("nsid")).ok().map(|s| s.trim().to_owned()).or_else(|| {
            // nvme0n1: the namespace is the number after the last 'n'.
            dev.name.rsplit_once('n').map(|(_, n)| n.to_owned())
        })?;
        return Some(format!("pci-{pci}-nvme-{nsid}"));
    }
    if let Some(ata) = rest.iter().find_map(|c| c.strip_prefix("ata").filter(|n| n.parse::<u32>().is_ok())) {
        return Some(format!("pci-{pci}-ata-{ata}.0"));
    }
    None
}

fn matches(dev: &BlockDevice, wanted: &str) -> bool {
    if let Some(serial) = wanted.strip_prefix("serial:") {
        return !dev.serial.is_empty() && dev.serial == serial;
    }
    if let Some(path) = wanted.strip_prefix("by-path:") {
        // `ata-1` (older udev) and `ata-1.0` name the same SATA disk.
        let ours = by_path(dev);
        return ours.as_deref() == Some(path) || ours.as_deref().and_then(|p| p.strip_suffix(".0")) == Some(path);
    }
    wanted.strip_prefix("/dev/") == Some(dev.name.as_str())
}

/// Picks the target among `disks`, never one named in `exclude` (the
/// installer's medium and the stick with the site config).
pub fn choose(disks: &[BlockDevice], exclude: &[String], wanted: Option<&str>) -> Result<BlockDevice> {
    let listing = || disks.iter().map(|d| format!("\n  {}{}", d.describe(), by_path(d).map(|p| format!(", by-path:{p}")).unwrap_or_default())).collect::<String>();
    if let Some(wanted) = wanted {
        let found: Vec<&BlockDevice> = disks.iter().filter(|d| matches(d, wanted)).collect();
        return match found.as_slice() {
            [one] if exclude.contains(&one.name) => bail!("install.disk = \"{wanted}\" is {}, the installer's own medium", one.path.display()),
            [one] => Ok((*one).clone()),
            [] => bail!("install.disk = \"{wanted}\" matches no disk; the disks are:{}", listing()),
            many => bail!("install.disk = \"{wanted}\" matches {} disks; name one by serial:", many.len()),
        };
    }
    let mut candidates: Vec<&BlockDevice> = disks
        .iter()
        .filter(|d| !never_target(&d.name) && !exclude.contains(&d.name) && !d.removable && !d.read_only && d.size > 0)
        .collect();
    candidates.sort_by_key(|d| std::cmp::Reverse(d.size));
    match candidates.as_slice() {
        [] => bail!("no disk to install to (removable disks and the installer's medium are never chosen by default; set install.disk in site.toml); the disks are:{}", listing()),
        [first, second, ..] if first.size == second.size => bail!(
            "{} and {} are both the largest disk ({} bytes): set install.disk in site.toml to serial:<serial> or by-path:<id>; the disks are:{}",
            first.path.display(),
            second.path.display(),
            first.size,
            listing()
        ),
        [first, ..] => Ok((*first).clone()),
    }
}

/// What a disk holds that installing would destroy: its partitions, or any
/// non-zero byte in its first MiB (a filesystem or table without partitions
/// the kernel knows). `None` for a blank disk.
pub fn holds_data(dev: &BlockDevice) -> Result<Option<String>> {
    if !dev.partitions.is_empty() {
        return Ok(Some(format!("{} partitions ({})", dev.partitions.len(), dev.partitions.join(", "))));
    }
    let f = std::fs::File::open(&dev.path)?;
    let mut buf = vec![0u8; 1 << 20];
    let n = f.read_at(&mut buf, 0)?;
    Ok(buf[..n].iter().any(|&b| b != 0).then(|| "data in its first MiB".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn disk(name: &str, size: u64, removable: bool, sys: &str, serial: &str) -> BlockDevice {
        BlockDevice {
            name: name.into(),
            path: PathBuf::from("/dev").join(name),
            devnum: "0:0".into(),
            size,
            model: String::new(),
            serial: serial.into(),
            removable,
            read_only: false,
            partitions: vec![],
            parent: None,
            holders: vec![],
            sys_path: PathBuf::from(sys),
            backing_file: None,
        }
    }

    fn disks() -> Vec<BlockDevice> {
        vec![
            disk("sda", 32 << 30, true, "/sys/devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host0/target0:0:0/0:0:0:0/block/sda", "STICK"),
            disk("sr0", 1 << 30, true, "/sys/devices/pci0000:00/0000:00:1f.2/ata3/host2/target2:0:0/2:0:0:0/block/sr0", ""),
            disk("vda", 100 << 30, false, "/sys/devices/pci0000:00/0000:00:04.0/virtio1/block/vda", "A1"),
            disk("nvme0n1", 200 << 30, false, "/sys/devices/pci0000:00/0000:00:03.0/0000:01:00.0/nvme/nvme0/nvme0n1", "N1"),
            disk("sdb", 50 << 30, false, "/sys/devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sdb", "S1"),
            disk("loop0", 300 << 30, false, "/sys/devices/virtual/block/loop0", ""),
        ]
    }

    #[test]
    fn by_path_names_follow_udev() {
        let d = disks();
        assert_eq!(by_path(&d[2]).as_deref(), Some("pci-0000:00:04.0"));
        assert_eq!(by_path(&d[3]).as_deref(), Some("pci-0000:01:00.0-nvme-1"));
        assert_eq!(by_path(&d[4]).as_deref(), Some("pci-0000:00:1f.2-ata-1.0"));
        assert_eq!(by_path(&d[0]), None, "USB is not supported: use serial:");
        assert_eq!(by_path(&d[5]), None);
    }

    #[test]
    fn default_is_the_largest_fixed_disk_not_the_medium() {
        let d = disks();
        assert_eq!(choose(&d, &["sda".into()], None).unwrap().name, "nvme0n1");
        assert_eq!(choose(&d, &["nvme0n1".into()], None).unwrap().name, "vda");
    }

    #[test]
    fn named_disks_and_ambiguity() {
        let mut d = disks();
        assert_eq!(choose(&d, &[], Some("serial:S1")).unwrap().name, "sdb");
        assert_eq!(choose(&d, &[], Some("by-path:pci-0000:00:04.0")).unwrap().name, "vda");
        assert_eq!(choose(&d, &[], Some("by-path:pci-0000:00:1f.2-ata-1")).unwrap().name, "sdb");
        assert_eq!(choose(&d, &[], Some("/dev/vda")).unwrap().name, "vda");
        let err = choose(&d, &["sda".into()], Some("serial:STICK")).unwrap_err().to_string();
        assert!(err.contains("the installer's own medium"), "{err}");
        let err = choose(&d, &[], Some("serial:NOPE")).unwrap_err().to_string();
        assert!(err.contains("matches no disk") && err.contains("/dev/vda"), "{err}");
        // Two equal largest disks: no guess.
        d[2].size = 200 << 30;
        let err = choose(&d, &[], None).unwrap_err().to_string();
        assert!(err.contains("both the largest disk"), "{err}");
        assert_eq!(choose(&d, &[], Some("serial:A1")).unwrap().name, "vda");
        // Only removable disks: nothing by default.
        let only_stick = vec![d[0].clone()];
        assert!(choose(&only_stick, &[], None).unwrap_err().to_string().contains("no disk to install to"));
    }
}
