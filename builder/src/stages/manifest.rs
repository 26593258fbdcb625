//! Stage `manifest`: `manifest.json` (every output, partition and digest, the
//! block map, packages, tools, stage keys), `sbom.spdx.json` (SPDX 2.3), and
//! the minisign signature over the manifest. The SBOM is covered by the
//! signature through its digest in the manifest's outputs. The SBOM and the
//! `.bmap` are written by [`crate::writers::spdx`] and [`crate::writers::bmap`].

use super::{Context, STAGE_FORMAT};
use crate::cache::KeyBuilder;
use crate::progress::Outcome;
use crate::spec::OutputFormat;
use crate::stages::{bundle::Bundle, disk::Disk, formats::Formats, rootfs::Rootfs};
use crate::writers::spdx;
use anyhow::{Context as _, Result};
use ciab_core::contract::{
    DiskInfo, ImageInfo, Manifest, MappedRange, OutputFile, PartitionInfo, PartitionRole, StageKey, MANIFEST_FILE, MANIFEST_SCHEMA, MANIFEST_SIG_FILE,
    SBOM_FILE,
};
use std::path::{Path, PathBuf};

/// Output of the manifest stage: a directory holding the three files.
#[derive(Debug, Clone)]
pub struct Signed {
    pub key: String,
    pub dir: PathBuf,
}

pub struct ManifestInput<'a> {
    pub rootfs: &'a Rootfs,
    pub bundle: &'a Bundle,
    pub disk: &'a Disk,
    pub formats: &'a Formats,
    pub stages: Vec<StageKey>,
    pub secret_key: &'a minisign::SecretKey,
}

pub fn run(ctx: &Context, input: &ManifestInput) -> Result<(Signed, Outcome, Option<u64>)> {
    let pubkey = crate::sign::public_key_text(input.secret_key)?;
    let key = KeyBuilder::new("manifest")
        .add("format", STAGE_FORMAT)
        .add("manifest_schema", MANIFEST_SCHEMA.to_string())
        .add("disk", &input.disk.key)
        .add("formats", &input.formats.key)
        .add("stages", serde_json::to_string(&input.stages)?)
        .add("tools", serde_json::to_string(&ctx.tools)?)
        .add("pubkey", &pubkey)
        .finish();
    let (dir, cached) = ctx.cache.get_or_build("manifest", &key, |tmp| {
        let spec = ctx.spec;
        let image = spdx::Image { name: &spec.name, version: &spec.version, suite: &spec.debian.suite, spec_sha256: &ctx.spec_sha256, source_date_epoch: spec.source_date_epoch };
        let sbom = spdx::sbom_json(&image, &input.rootfs.packages, &input.bundle.index)?;
        std::fs::write(tmp.join(SBOM_FILE), &sbom)?;
        let block_map = crate::blockmap::block_map(&input.disk.raw)?;
        let bmap = ctx.spec.formats.contains(&OutputFormat::Raw).then(|| tmp.join(bmap_name(ctx)));
        if let Some(bmap) = &bmap {
            std::fs::write(bmap, crate::writers::bmap::render(input.disk.layout.size, &block_map)?)?;
        }
        let manifest = build_manifest(ctx, input, &tmp.join(SBOM_FILE), bmap.as_deref(), block_map)?;
        let json = serde_json::to_vec_pretty(&manifest)?;
        std::fs::write(tmp.join(MANIFEST_FILE), &json)?;
        let sig = crate::sign::sign(input.secret_key, &json, MANIFEST_FILE)?;
        std::fs::write(tmp.join(MANIFEST_SIG_FILE), sig)?;
        std::fs::write(tmp.join(crate::sign::PUBLIC_KEY_FILE), &pubkey)?;
        Ok(())
    })?;
    Ok((Signed { key, dir }, if cached { Outcome::Cached } else { Outcome::Ran }, None))
}

fn output_file(path: &Path, kind: &str) -> Result<OutputFile> {
    Ok(OutputFile {
        path: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        kind: kind.to_owned(),
        size: std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.len(),
        sha256: crate::fsutil::sha256_file(path)?,
    })
}

/// `<name>.bmap`: the raw image's block map for `bmaptool copy`.
pub fn bmap_name(ctx: &Context) -> String {
    format!("{}.bmap", ctx.spec.name)
}

fn build_manifest(ctx: &Context, input: &ManifestInput, sbom: &Path, bmap: Option<&Path>, block_map: Vec<MappedRange>) -> Result<Manifest> {
    let spec = ctx.spec;
    let raw = &input.disk.raw;
    let ranges: Vec<(u64, u64)> = input.disk.layout.slots.iter().map(|s| (s.offset, s.size)).collect();
    let (raw_sha, part_shas) = crate::fsutil::sha256_file_and_ranges(raw, &ranges)?;
    let mut outputs = Vec::new();
    if spec.formats.contains(&OutputFormat::Raw) {
        outputs.push(OutputFile {
            path: raw.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            kind: "raw".into(),
            size: std::fs::metadata(raw)?.len(),
            sha256: raw_sha,
        });
    }
    for (fmt, path) in &input.formats.files {
        outputs.push(output_file(path, match fmt { OutputFormat::Qcow2 => "qcow2", OutputFormat::Raw => "raw", OutputFormat::Iso => "iso" })?);
    }
    if let Some(bmap) = bmap {
        outputs.push(output_file(bmap, "bmap")?);
    }
    outputs.push(output_file(sbom, "sbom")?);
    let mut partitions = Vec::new();
    for (slot, digest) in input.disk.layout.slots.iter().zip(part_shas) {
        partitions.push(PartitionInfo {
            number: slot.role.number(),
            role: slot.role,
            label: slot.role.label().to_owned(),
            type_guid: slot.role.type_guid().to_owned(),
            part_uuid: slot.part_uuid.to_string(),
            fs_uuid: match slot.role {
                PartitionRole::Esp => Some(ctx.ids.esp_fs_uuid()),
                PartitionRole::RootA => Some(ctx.ids.root_fs_uuid.to_string()),
                _ => None,
            },
            offset: slot.offset,
            size: slot.size,
            sha256: digest,
        });
    }
    Ok(Manifest {
        schema: MANIFEST_SCHEMA,
        image: ImageInfo {
            name: spec.name.clone(),
            version: spec.version.clone(),
            spec_sha256: ctx.spec_sha256.clone(),
            source_date_epoch: spec.source_date_epoch,
            debian_suite: spec.debian.suite.clone(),
            kernel: input.rootfs.kernel.clone(),
        },
        outputs,
        disk: DiskInfo {
            size: input.disk.layout.size,
            sector_size: crate::writers::gpt::SECTOR,
            disk_guid: ctx.ids.disk_guid.to_string(),
            block_map,
        },
        partitions,
        packages: input.rootfs.packages.clone(),
        tools: ctx.tools.clone(),
        bundle: input.bundle.index.clone(),
        stages: input.stages.clone(),
    })
}
