//! What a block device is and who uses it, read from sysfs and
//! `/proc/self/mountinfo`: enough to refuse writing over something in use and
//! to show an operator what they are about to erase. Works without udev (the
//! installer runs as PID 1 in an initramfs).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// A whole disk (or a partition) as the kernel describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDevice {
    /// Kernel name: `sda`, `nvme0n1`, `loop3`, `sr0`.
    pub name: String,
    /// `/dev/<name>`.
    pub path: PathBuf,
    /// `major:minor`.
    pub devnum: String,
    pub size: u64,
    /// Vendor and model as the device reports them (may be empty).
    pub model: String,
    pub serial: String,
    pub removable: bool,
    pub read_only: bool,
    /// Kernel names of its partitions.
    pub partitions: Vec<String>,
    /// The disk it belongs to, when this is a partition.
    pub parent: Option<String>,
    /// Devices stacked on it (device-mapper, md): it is in use.
    pub holders: Vec<String>,
    /// The `/sys/devices/...` path, for by-path names.
    pub sys_path: PathBuf,
    /// For a loop device, the file behind it.
    pub backing_file: Option<String>,
}

fn read_trim(path: &Path) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_owned()).unwrap_or_default()
}

fn dir_names(path: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(path)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

impl BlockDevice {
    /// Inspects the block device at `path` (`/dev/sdb`, a symlink in
    /// `/dev/disk/by-id`, …). Errors name the path when it is not a block device.
    pub fn open(path: &Path) -> Result<BlockDevice> {
        let meta = std::fs::metadata(path).with_context(|| format!("{}: no such device", path.display()))?;
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_block_device() {
            bail!("{} is not a block device", path.display());
        }
        use std::os::unix::fs::MetadataExt;
        let rdev = meta.rdev();
        let devnum = format!("{}:{}", rustix::fs::major(rdev), rustix::fs::minor(rdev));
        Self::from_devnum(&devnum)
    }

    /// Inspects the device `/sys/dev/block/<devnum>` describes.
    pub fn from_devnum(devnum: &str) -> Result<BlockDevice> {
        let link = Path::new("/sys/dev/block").join(devnum);
        let sys = std::fs::canonicalize(&link).with_context(|| format!("{}: not in sysfs", link.display()))?;
        Self::from_sys(&sys)
    }

    /// Inspects `/sys/class/block/<name>`.
    pub fn from_name(name: &str) -> Result<BlockDevice> {
        let link = Path::new("/sys/class/block").join(name);
        let sys = std::fs::canonicalize(&link).with_context(|| format!("no block device named {name}"))?;
        Self::from_sys(&sys)
    }

    fn from_sys(sys: &Path) -> Result<BlockDevice> {
        let name = sys.file_name().map(|n| n.to_string_lossy().into_owned()).context("sysfs path without a name")?;
        let is_partition = sys.join("partition").exists();
        let parent = if is_partition { sys.parent().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()) } else { None };
        let sectors: u64 = read_trim(&sys.join("size")).parse().unwrap_or(0);
        let device = sys.join("device");
        let model = [read_trim(&device.join("vendor")), read_trim(&device.join("model"))]
            .into_iter()
            // virtio reports a PCI vendor id (0x1af4) as vendor: not a name.
            .filter(|s| !s.is_empty() && !s.starts_with("0x"))
            .collect::<Vec<_>>()
            .join(" ");
        let serial = [device.join("serial"), sys.join("serial")].iter().map(|p| read_trim(p)).find(|s| !s.is_empty()).unwrap_or_default();
        let partitions = if is_partition { Vec::new() } else { dir_names(sys).into_iter().filter(|n| sys.join(n).join("partition").exists()).collect() };
        let backing = read_trim(&sys.join("loop/backing_file"));
        Ok(BlockDevice {
            path: PathBuf::from("/dev").join(&name),
            devnum: read_trim(&sys.join("dev")),
            size: sectors * 512,
            model,
            serial,
            removable: read_trim(&sys.join("removable")) == "1",
            read_only: read_trim(&sys.join("ro")) == "1",
            partitions,
            parent,
            holders: dir_names(&sys.join("holders")),
            sys_path: sys.to_path_buf(),
            backing_file: (!backing.is_empty()).then_some(backing),
            name,
        })
    }

    /// Every whole disk the kernel knows (no partitions), sorted by name.
    pub fn list_disks() -> Result<Vec<BlockDevice>> {
        let mut out = Vec::new();
        for name in dir_names(Path::new("/sys/class/block")) {
            let dev = BlockDevice::from_name(&name)?;
            if dev.parent.is_none() {
                out.push(dev);
            }
        }
        Ok(out)
    }

    /// This device's partitions, inspected.
    pub fn partition_devices(&self) -> Vec<BlockDevice> {
        self.partitions.iter().filter_map(|p| BlockDevice::from_sys(&self.sys_path.join(p)).ok()).collect()
    }

    /// A one-line description for an operator: `sdb 32.0 GB SanDisk Ultra (2 partitions)`.
    pub fn describe(&self) -> String {
        let mut s = format!("{} {}", self.path.display(), human_size(self.size));
        if !self.model.is_empty() {
            s += &format!(" {}", self.model);
        }
        if !self.serial.is_empty() {
            s += &format!(" serial {}", self.serial);
        }
        if let Some(b) = &self.backing_file {
            s += &format!(" (loop on {b})");
        }
        if self.removable {
            s += " removable";
        }
        match self.partitions.len() {
            0 => s += ", no partitions",
            n => s += &format!(", {n} partitions: {}", self.partitions.join(" ")),
        }
        s
    }

    /// Where this device or one of its partitions is mounted or used as swap,
    /// and what is stacked on it. Empty when nothing uses it.
    pub fn users(&self) -> Result<Vec<String>> {
        let mut devs = vec![(self.devnum.clone(), self.name.clone(), self.holders.clone())];
        for p in self.partition_devices() {
            devs.push((p.devnum, p.name, p.holders));
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
        let mut users = Vec::new();
        for (devnum, name, holders) in &devs {
            for line in mountinfo.lines() {
                let f: Vec<&str> = line.split(' ').collect();
                if f.get(2) == Some(&devnum.as_str()) {
                    users.push(format!("{name} is mounted on {}", f.get(4).unwrap_or(&"?")));
                }
            }
            for h in holders {
                users.push(format!("{name} is in use by {h}"));
            }
        }
        let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
        for line in swaps.lines().skip(1) {
            if let Some(dev) = line.split_whitespace().next() {
                if let Ok(d) = BlockDevice::open(Path::new(dev)) {
                    if devs.iter().any(|(n, _, _)| *n == d.devnum) {
                        users.push(format!("{} is used as swap", d.name));
                    }
                }
            }
        }
        Ok(users)
    }

    /// Whether the running system's root filesystem lives on this disk,
    /// directly or through device-mapper/md stacked on it.
    pub fn holds_root(&self) -> Result<bool> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
        let Some(root) = mountinfo.lines().map(|l| l.split(' ').collect::<Vec<_>>()).rfind(|f| f.get(4) == Some(&"/")).and_then(|f| f.get(2).map(|s| s.to_string())) else {
            return Ok(false);
        };
        let mut ours = vec![self.devnum.clone()];
        ours.extend(self.partition_devices().into_iter().map(|p| p.devnum));
        // Walk down from the root device through the devices it is built on.
        let mut todo = vec![root];
        let mut seen = Vec::new();
        while let Some(devnum) = todo.pop() {
            if ours.contains(&devnum) {
                return Ok(true);
            }
            if seen.contains(&devnum) {
                continue;
            }
            seen.push(devnum.clone());
            let Ok(dev) = BlockDevice::from_devnum(&devnum) else { continue };
            for slave in dir_names(&dev.sys_path.join("slaves")) {
                if let Ok(s) = BlockDevice::from_name(&slave) {
                    todo.push(s.devnum);
                }
            }
        }
        Ok(false)
    }
}

/// `32.0 GB` (decimal, as disks are sold) and the exact GiB in a bracket.
pub fn human_size(bytes: u64) -> String {
    format!("{:.1} GB ({:.2} GiB)", bytes as f64 / 1e9, bytes as f64 / (1u64 << 30) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_file_is_not_a_block_device() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let err = BlockDevice::open(f.path()).unwrap_err().to_string();
        assert!(err.contains("is not a block device"), "{err}");
        assert!(BlockDevice::open(Path::new("/dev/does-not-exist")).unwrap_err().to_string().contains("no such device"));
    }

    #[test]
    fn the_disk_under_root_holds_root() {
        // The disk behind this machine's `/`, when `/` is on a block device.
        let Ok(meta) = std::fs::metadata("/") else { return };
        use std::os::unix::fs::MetadataExt;
        let devnum = format!("{}:{}", rustix::fs::major(meta.dev()), rustix::fs::minor(meta.dev()));
        let Ok(root) = BlockDevice::from_devnum(&devnum) else {
            eprintln!("/ is not on a block device here (overlay or tmpfs); nothing to check");
            return;
        };
        let disk = match &root.parent {
            Some(p) => BlockDevice::from_name(p).unwrap(),
            None => root.clone(),
        };
        assert!(disk.holds_root().unwrap(), "{} should hold /", disk.name);
        assert!(!disk.users().unwrap().is_empty(), "{} has / mounted", disk.name);
        assert!(disk.size > 0);
    }
}
