//! Reading what a guest left on its disk, without booting it and without
//! mounting (the host kernel here cannot be trusted to): the partition is
//! copied out, its ext4 journal replayed by e2fsck as the next boot would,
//! then files are read with debugfs.

use anyhow::{bail, Context, Result};
use ciab_core::exec::Cmd;
use std::path::Path;

/// The guest's file at `path` inside root-a of `disk` (raw or qcow2), as it
/// survived whatever ended the guest.
pub fn read_root_file(disk: &Path, path: &str) -> Result<String> {
    Ok(read_root_files(disk, &[path])?.remove(0))
}

/// The guest's files at `paths` inside root-a of `disk`, in that order, from
/// one copy of the partition (copying a 64 GiB disk's root and checking it
/// is the slow part, not the reads).
pub fn read_root_files(disk: &Path, paths: &[&str]) -> Result<Vec<String>> {
    let raw = disk.with_extension("raw");
    // -U: the guest may still be running (QEMU holds the image's write
    // lock); this reads a copy, as a power cut at this moment would leave it.
    Cmd::new("qemu-img").args(["convert", "-U", "-q", "-O", "raw"]).arg(disk).arg(&raw).run()?;
    let json: serde_json::Value = Cmd::new("sfdisk").arg("--json").arg(&raw).run_json()?;
    let parts = json["partitiontable"]["partitions"].as_array().context("sfdisk: no partitions")?.clone();
    let root = parts.iter().find(|p| p["name"] == "root-a").context("no root-a partition")?;
    let sectors = |k: &str| root[k].as_u64().map(|v| v * 512).with_context(|| format!("sfdisk: no {k}"));
    let (start, size) = (sectors("start")?, sectors("size")?);
    let part = disk.with_extension("root.img");
    Cmd::new("dd")
        .arg(format!("if={}", raw.display()))
        .arg(format!("of={}", part.display()))
        .args(["bs=1M", "conv=sparse", "iflag=skip_bytes,count_bytes", "status=none"])
        .arg(format!("skip={start}"))
        .arg(format!("count={size}"))
        .run()?;
    let _ = std::fs::remove_file(&raw);
    // 0: clean, 1: errors corrected (the journal replay counts as one).
    let fsck = std::process::Command::new("e2fsck").args(["-fy"]).arg(&part).output().context("running e2fsck")?;
    if !matches!(fsck.status.code(), Some(0 | 1)) {
        bail!("e2fsck of the guest's root: {fsck:?}");
    }
    let texts = paths.iter().map(|path| Cmd::new("debugfs").args(["-R", &format!("cat {path}")]).arg(&part).run()).collect();
    let _ = std::fs::remove_file(&part);
    texts
}
