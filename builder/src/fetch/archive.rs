//! `docker save` tarballs (`docker-archive:<file.tar>`), imported into the
//! blob cache.
//!
//! Newer Docker writes an OCI layout inside the tar: its manifests keep
//! their digests. The legacy format (`manifest.json` with `Config`,
//! `RepoTags`, `Layers`; what skopeo writes) has no manifest, so one is made:
//! an OCI image manifest with the config and the layers as they are in the
//! tar, serialized deterministically so the same archive always yields the
//! same digest (which `ciab lock` records).

use super::blobstore::BlobStore;
use crate::oci::digest::Digest;
use crate::oci::media::{OCI_CONFIG, OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_MANIFEST};
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct LegacyEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Imports every file of the archive into `store` and returns the digest of
/// the manifest for `reference` (or of the only image).
pub fn import(path: &Path, store: &BlobStore, reference: &str) -> Result<Digest> {
    let label = format!("docker archive {}", path.display());
    let file = std::fs::File::open(path).with_context(|| format!("opening {label}"))?;
    let mut tar = tar::Archive::new(std::io::BufReader::new(file));
    let mut files: BTreeMap<String, (Digest, u64)> = BTreeMap::new();
    let mut manifest_json = None;
    let mut index_json = None;
    for entry in tar.entries().with_context(|| format!("reading {label}"))? {
        let mut entry = entry.with_context(|| format!("reading {label}: the tar is damaged or truncated"))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path()?.to_string_lossy().trim_start_matches("./").to_owned();
        match name.as_str() {
            "manifest.json" => manifest_json = Some(read_small(&mut entry, &label, &name)?),
            "index.json" => index_json = Some(read_small(&mut entry, &label, &name)?),
            _ => {
                let blob = store.ingest(&mut entry).with_context(|| format!("{label}: importing {name}"))?;
                if let Some(hex) = name.strip_prefix("blobs/sha256/") {
                    if hex != blob.0.hex() {
                        bail!("{label}: {name} does not match its digest: its bytes hash to {}", blob.0);
                    }
                }
                files.insert(name, blob);
            }
        }
    }
    if let Some(index) = index_json {
        return super::layout::select(&label, &index, None, Some(reference));
    }
    let Some(manifest_json) = manifest_json else { bail!("{label}: neither index.json nor manifest.json: not a docker-archive") };
    let entries: Vec<LegacyEntry> = serde_json::from_slice(&manifest_json).with_context(|| format!("{label}: manifest.json"))?;
    let entry = match entries.as_slice() {
        [one] => one,
        many => many
            .iter()
            .find(|e| e.repo_tags.iter().flatten().any(|t| t == reference || reference.ends_with(&format!("/{t}"))))
            .with_context(|| format!("{label} holds {} images and none is tagged {reference}", many.len()))?,
    };
    let blob = |name: &str| files.get(name).cloned().with_context(|| format!("{label}: manifest.json names {name}, which is not in the archive"));
    let (config, config_size) = blob(&entry.config)?;
    let mut layers = Vec::new();
    for name in &entry.layers {
        let (d, size) = blob(name)?;
        let mut magic = [0u8; 2];
        let gzip = std::fs::File::open(store.path(&d)).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && magic == [0x1f, 0x8b];
        layers.push(serde_json::json!({"mediaType": if gzip { OCI_LAYER_GZIP } else { OCI_LAYER_TAR }, "digest": d.to_string(), "size": size}));
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config.to_string(), "size": config_size},
        "layers": layers,
    });
    let bytes = serde_json::to_vec(&manifest)?;
    let d = Digest::of(&bytes);
    store.put(&d, &bytes)?;
    Ok(d)
}

fn read_small(entry: &mut impl Read, label: &str, name: &str) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    entry.take(64 << 20).read_to_end(&mut buf).with_context(|| format!("{label}: reading {name}"))?;
    Ok(buf)
}
