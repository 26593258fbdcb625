//! Stage `formats`: the disk formats derived from the raw disk (qcow2, by
//! [`crate::writers::qcow2`]).

use super::{Context, STAGE_FORMAT};
use crate::cache::KeyBuilder;
use crate::progress::Outcome;
use crate::spec::OutputFormat;
use crate::stages::disk::Disk;
use crate::writers::qcow2;
use anyhow::Result;
use std::path::PathBuf;

/// Output of the formats stage: the derived files (raw is the disk stage's).
#[derive(Debug, Clone)]
pub struct Formats {
    pub key: String,
    pub files: Vec<(OutputFormat, PathBuf)>,
}

pub fn run(ctx: &Context, disk: &Disk) -> Result<(Formats, Outcome, Option<u64>)> {
    let wanted: Vec<OutputFormat> = ctx.spec.formats.iter().copied().filter(|f| *f == OutputFormat::Qcow2).collect();
    let key = KeyBuilder::new("formats")
        .add("format", STAGE_FORMAT)
        .add("disk", &disk.key)
        .add("formats", format!("{wanted:?}"))
        .add("qemu-img", ctx.tool("qemu-img"))
        .finish();
    let name = &ctx.spec.name;
    let (dir, cached) = ctx.cache.get_or_build("formats", &key, |tmp| {
        for f in &wanted {
            if *f == OutputFormat::Qcow2 {
                qcow2::convert(&disk.raw, &tmp.join(format!("{name}.qcow2")))?;
            }
        }
        Ok(())
    })?;
    let files: Vec<(OutputFormat, PathBuf)> = wanted
        .iter()
        .map(|f| (*f, dir.join(format!("{name}.{}", match f { OutputFormat::Qcow2 => "qcow2", OutputFormat::Raw => "raw", OutputFormat::Iso => "iso" }))))
        .collect();
    let size = files.iter().filter_map(|(_, p)| std::fs::metadata(p).ok()).map(|m| m.len()).sum::<u64>();
    Ok((Formats { key, files }, if cached { Outcome::Cached } else { Outcome::Ran }, Some(size)))
}
