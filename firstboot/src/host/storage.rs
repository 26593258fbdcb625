//! Claiming the box's disk: the `data` partition from the free space after
//! the image, an LVM volume group on it, the planned logical volumes with
//! their filesystems, and their mounts, persisted in /etc/fstab.
//!
//! Every function here is idempotent (it looks before it changes anything),
//! so the storage step can be cut by a power loss at any instant and run
//! again. It only ever touches the disk that holds the running root.

use crate::ctx::Ctx;
use crate::engine::{About, Step};
use crate::model::plan::Plan;
use ciab_core::exec::Cmd;
use anyhow::{bail, Context, Result};
use gptman::{GPTPartitionEntry, GPT};
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

/// GPT name of the partition first boot creates.
pub const DATA_LABEL: &str = "data";
/// GPT type of the data partition: Linux LVM.
pub const LVM_TYPE_GUID: &str = "E6D6D379-F507-44C2-A23C-238F2A3DF928";
/// The volume group first boot creates on the data partition.
pub const VG: &str = "ciab";
const FSTAB_BEGIN: &str = "# ciab-firstboot: volumes (begin)";
const FSTAB_END: &str = "# ciab-firstboot: volumes (end)";

/// One logical volume the plan asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// LV name, e.g. `mariadb`.
    pub name: String,
    pub size_gib: u64,
    /// Where it is mounted; `None` leaves it raw (the VG's free space for Cinder).
    pub mountpoint: Option<String>,
}

/// The whole disk that holds the filesystem mounted at `/`, e.g. `vda` or `nvme0n1`.
pub fn root_disk() -> Result<String> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let majmin = mountinfo
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(4) == Some(&"/")).then(|| f.get(2).map(|s| s.to_string())).flatten()
        })
        .context("/ is not in /proc/self/mountinfo")?;
    let sys = fs::canonicalize(format!("/sys/dev/block/{majmin}")).with_context(|| format!("resolving /sys/dev/block/{majmin}"))?;
    let disk = if sys.join("partition").exists() { sys.parent().context("partition without a parent disk")? } else { &sys };
    Ok(disk.file_name().context("no disk name")?.to_string_lossy().into_owned())
}

/// The device node of partition `number` of `disk`, from sysfs (works for
/// `vda3`, `sda3` and `nvme0n1p3` alike).
pub fn partition_device(disk: &str, number: u32) -> Result<Option<PathBuf>> {
    let dir = Path::new("/sys/class/block").join(disk);
    for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?.flatten() {
        let part = entry.path().join("partition");
        if let Ok(n) = fs::read_to_string(&part) {
            if n.trim() == number.to_string() {
                return Ok(Some(Path::new("/dev").join(entry.file_name())));
            }
        }
    }
    Ok(None)
}

/// Grows the GPT to the end of `disk` and adds the `data` partition over the
/// largest free area, unless it exists. Returns its partition number.
pub fn ensure_data_partition(disk_dev: &Path) -> Result<u32> {
    let mut f = fs::OpenOptions::new().read(true).write(true).open(disk_dev).with_context(|| format!("opening {}", disk_dev.display()))?;
    let mut gpt = GPT::find_from(&mut f).with_context(|| format!("reading the GPT of {}", disk_dev.display()))?;
    if let Some((n, _)) = gpt.iter().find(|(_, p)| p.is_used() && p.partition_name.as_str() == DATA_LABEL) {
        return Ok(n);
    }
    // The image ended where the disk image ended; the real disk is larger.
    gpt.header.update_from(&mut f, gpt.sector_size).context("growing the GPT to the end of the disk")?;
    let (start, len) = gpt
        .find_free_sectors()
        .into_iter()
        .max_by_key(|(_, len)| *len)
        .context("no free space on the disk for the data partition")?;
    let align = (1 << 20) / gpt.sector_size;
    let first = start.div_ceil(align) * align;
    let last = start + len - 1;
    if last <= first + align {
        bail!("only {} MiB free after the image on {}: nothing to claim", (len * gpt.sector_size) >> 20, disk_dev.display());
    }
    let number = gpt.iter().find(|(_, p)| p.is_unused()).map(|(n, _)| n).context("the GPT has no free entry")?;
    let type_guid: uuid::Uuid = LVM_TYPE_GUID.parse()?;
    let mut unique = [0u8; 16];
    fs::File::open("/dev/urandom").and_then(|mut r| std::io::Read::read_exact(&mut r, &mut unique)).context("reading /dev/urandom")?;
    gpt[number] = GPTPartitionEntry {
        partition_type_guid: type_guid.to_bytes_le(),
        unique_partition_guid: uuid::Builder::from_random_bytes(unique).into_uuid().to_bytes_le(),
        starting_lba: first,
        ending_lba: last,
        attribute_bits: 0,
        partition_name: DATA_LABEL.into(),
    };
    gpt.write_into(&mut f).context("writing the GPT")?;
    GPT::write_protective_mbr_into(&mut f, gpt.sector_size).context("updating the protective MBR")?;
    f.sync_all().context("syncing the partition table")?;
    Ok(number)
}

/// Makes the kernel see partition `number` of `disk` (the disk is in use, so
/// a full re-read is refused; partx adds the one partition).
pub fn announce_partition(disk: &str, number: u32) -> Result<PathBuf> {
    if let Some(dev) = partition_device(disk, number)? {
        return Ok(dev);
    }
    Cmd::new("partx").package("util-linux").args(["--add", "--nr", &number.to_string()]).arg(format!("/dev/{disk}")).run()?;
    let _ = Cmd::new("udevadm").package("udev").args(["settle", "--timeout=30"]).run();
    partition_device(disk, number)?.with_context(|| format!("partition {number} of {disk} did not appear after partx"))
}

/// PV, VG and LVs with filesystems, idempotently.
pub fn ensure_volumes(pv: &Path, volumes: &[Volume]) -> Result<()> {
    if Cmd::new("pvs").package("lvm2").arg(pv).run().is_err() {
        Cmd::new("pvcreate").package("lvm2").args(["--yes", "--force"]).arg(pv).run()?;
    }
    if Cmd::new("vgs").package("lvm2").arg(VG).run().is_err() {
        Cmd::new("vgcreate").package("lvm2").arg(VG).arg(pv).run()?;
    }
    for v in volumes {
        let lv = format!("{VG}/{}", v.name);
        if Cmd::new("lvs").package("lvm2").arg(&lv).run().is_err() {
            Cmd::new("lvcreate")
                .package("lvm2")
                .args(["--yes", "--wipesignatures", "y", "--name", &v.name, "--size", &format!("{}g", v.size_gib), VG])
                .run()?;
        }
        if v.mountpoint.is_some() {
            let dev = format!("/dev/{VG}/{}", v.name);
            let fstype = Cmd::new("blkid").package("util-linux").args(["-o", "value", "-s", "TYPE", &dev]).run().unwrap_or_default();
            if fstype.trim().is_empty() {
                Cmd::new("mkfs.ext4").package("e2fsprogs").args(["-q", "-L", &v.name, &dev]).run()?;
            }
        }
    }
    Ok(())
}

/// The fstab block for `volumes`.
pub fn fstab_block(volumes: &[Volume]) -> String {
    let mut s = format!("{FSTAB_BEGIN}\n");
    for v in volumes {
        if let Some(mp) = &v.mountpoint {
            s.push_str(&format!("/dev/{VG}/{} {mp} ext4 defaults,nofail 0 2\n", v.name));
        }
    }
    s.push_str(FSTAB_END);
    s.push('\n');
    s
}

/// Replaces (or appends) ciab's block in an fstab text.
pub fn with_fstab_block(fstab: &str, block: &str) -> String {
    match (fstab.find(FSTAB_BEGIN), fstab.find(FSTAB_END)) {
        (Some(a), Some(b)) if b > a => {
            let end = b + FSTAB_END.len() + usize::from(fstab[b + FSTAB_END.len()..].starts_with('\n'));
            format!("{}{block}{}", &fstab[..a], &fstab[end..])
        }
        _ => format!("{fstab}{}{block}", if fstab.is_empty() || fstab.ends_with('\n') { "" } else { "\n" }),
    }
}

/// Persists and performs the mounts.
pub fn ensure_mounts(volumes: &[Volume]) -> Result<()> {
    let fstab = fs::read_to_string("/etc/fstab").unwrap_or_default();
    let new = with_fstab_block(&fstab, &fstab_block(volumes));
    if new != fstab {
        ciab_core::atomic::write_atomic(Path::new("/etc/fstab"), new.as_bytes())?;
    }
    for v in volumes {
        if let Some(mp) = &v.mountpoint {
            fs::create_dir_all(mp).with_context(|| format!("creating {mp}"))?;
            if Cmd::new("mountpoint").package("util-linux").args(["-q", mp]).run().is_err() {
                Cmd::new("mount").package("mount").arg(mp).run()?;
            }
        }
    }
    Ok(())
}

/// What the box's LVM reports: (LV name, size in bytes).
pub fn report() -> Result<Vec<(String, u64)>> {
    let out = Cmd::new("lvs")
        .package("lvm2")
        .args(["--noheadings", "--units", "b", "--nosuffix", "-o", "lv_name,lv_size", VG])
        .run()?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_owned(), w.next()?.parse().ok()?))
        })
        .collect())
}

/// Is everything in place already?
pub fn is_complete(disk: &str, volumes: &[Volume]) -> bool {
    let Ok(disk_dev) = fs::File::open(format!("/dev/{disk}")) else { return false };
    let mut r = disk_dev;
    let Ok(gpt) = GPT::find_from(&mut r) else { return false };
    if !gpt.iter().any(|(_, p)| p.is_used() && p.partition_name.as_str() == DATA_LABEL) {
        return false;
    }
    let fstab = fs::read_to_string("/etc/fstab").unwrap_or_default();
    if !fstab.contains(&fstab_block(volumes)) {
        return false;
    }
    volumes.iter().all(|v| {
        Cmd::new("lvs").arg(format!("{VG}/{}", v.name)).run().is_ok()
            && v.mountpoint.as_ref().is_none_or(|mp| Cmd::new("mountpoint").args(["-q", mp]).run().is_ok())
    })
}

/// The logical volumes a plan asks for, with their mount points.
pub fn volumes(plan: &Plan) -> Vec<Volume> {
    let v = |name: &str, size_gib: u64, mp: Option<&str>| Volume { name: name.into(), size_gib, mountpoint: mp.map(str::to_owned) };
    let mut out = Vec::new();
    if let Some(c) = &plan.storage.volumes {
        out.push(v("mariadb", c.mariadb_gib, Some("/var/lib/mysql")));
        out.push(v("glance", c.glance_gib, Some("/var/lib/glance/images")));
        out.push(v("nova", c.nova_instances_gib, Some("/var/lib/nova/instances")));
        out.push(v("kaas", c.kaas_gib, Some("/var/lib/ciab/kaas")));
        out.push(v("swift", c.swift_gib, Some(crate::cloud::swift::DEVICE_PATH)));
        // cinder_gib stays free in the VG: Cinder's LVM driver creates its
        // volumes there when the IaaS layer is configured.
    }
    if plan.storage.appliance_gib > 0 {
        out.push(v("appliance", plan.storage.appliance_gib, Some("/srv/ciab")));
    }
    out
}

/// The `storage` step: the data partition, the volume group and the plan's volumes, mounted.
pub struct StorageStep;

impl Step<Ctx> for StorageStep {
    fn about(&self) -> About {
        About { name: "storage", title: "claim the disk", after: &["plan"] }
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        let plan = ctx.plan()?;
        Ok(is_complete(&plan.storage.disk, &volumes(plan)))
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let plan = ctx.plan()?;
        let disk = &plan.storage.disk;
        let root_disk = root_disk()?;
        if disk != &root_disk {
            bail!("the plan targets {disk} but the running root is on {root_disk}: refusing to touch another disk");
        }
        let number = ensure_data_partition(Path::new(&format!("/dev/{disk}")))?;
        let pv = announce_partition(disk, number)?;
        let vols = volumes(plan);
        ensure_volumes(&pv, &vols)?;
        ensure_mounts(&vols)?;
        for (name, bytes) in report()? {
            tracing::info!("storage: lv {}/{name} {} MiB", VG, bytes >> 20);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vols() -> Vec<Volume> {
        vec![
            Volume { name: "mariadb".into(), size_gib: 4, mountpoint: Some("/var/lib/mysql".into()) },
            Volume { name: "cinder".into(), size_gib: 10, mountpoint: None },
        ]
    }

    #[test]
    fn fstab_block_is_replaced_not_duplicated() {
        let base = "PARTUUID=x / ext4 defaults 0 1\n";
        let once = with_fstab_block(base, &fstab_block(&vols()));
        assert!(once.starts_with(base));
        assert!(once.contains("/dev/ciab/mariadb /var/lib/mysql ext4 defaults,nofail 0 2\n"));
        assert!(!once.contains("cinder"), "raw volumes are not mounted");
        assert_eq!(with_fstab_block(&once, &fstab_block(&vols())), once);
        let mut changed = vols();
        changed[0].mountpoint = Some("/srv/db".into());
        let twice = with_fstab_block(&once, &fstab_block(&changed));
        assert_eq!(twice.matches(FSTAB_BEGIN).count(), 1);
        assert!(twice.contains("/srv/db") && !twice.contains("/var/lib/mysql"));
        assert_eq!(with_fstab_block("no newline", "B\n"), "no newline\nB\n");
    }

    /// The GPT work on a disk image file: grows the table, adds `data` once.
    #[test]
    fn data_partition_is_added_once_over_the_free_space() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        // A 64 MiB "image" with one partition, then the "disk" grown to 256 MiB.
        Cmd::new("truncate").args(["-s", "64M"]).arg(&img).run().unwrap();
        let script = "label: gpt\nstart=2048, size=20480, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root\n";
        let out = std::process::Command::new("sfdisk")
            .arg("--quiet")
            .arg(&img)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(script.as_bytes())?;
                c.wait()
            })
            .unwrap();
        assert!(out.success());
        Cmd::new("truncate").args(["-s", "256M"]).arg(&img).run().unwrap();
        let n = ensure_data_partition(&img).unwrap();
        assert_eq!(n, 2);
        assert_eq!(ensure_data_partition(&img).unwrap(), 2, "idempotent");
        let json: serde_json::Value = Cmd::new("sfdisk").arg("--json").arg(&img).run_json().unwrap();
        let parts = json["partitiontable"]["partitions"].as_array().unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1]["name"], "data");
        assert_eq!(parts[1]["type"], LVM_TYPE_GUID);
        let start = parts[1]["start"].as_u64().unwrap();
        let size = parts[1]["size"].as_u64().unwrap();
        assert_eq!(start % 2048, 0);
        // Up to the backup GPT at the end of the 256 MiB disk.
        assert!(start + size > (256 << 11) - 64, "data ends at {}", start + size);
        let verify = Cmd::new("sfdisk").arg("--verify").arg(&img).run().unwrap();
        assert!(!verify.to_lowercase().contains("corrupt"), "{verify}");
    }
}
