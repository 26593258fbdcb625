//! OCI image layout directories (`oci:<dir>[:<tag>]`): `oci-layout`,
//! `index.json` and `blobs/sha256/<hex>`.

use crate::oci::digest::Digest;
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The annotation skopeo, buildah and `docker save` put the tag in.
const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's `ctr export` names the full reference here.
const CONTAINERD_NAME: &str = "io.containerd.image.name";

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    digest: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// Picks the manifest `index_json` names `tag` (or `reference`), or its only
/// manifest when no tag is asked for.
pub fn select(label: &str, index_json: &[u8], tag: Option<&str>, reference: Option<&str>) -> Result<Digest> {
    let index: Index = serde_json::from_slice(index_json).with_context(|| format!("{label}: index.json is not an OCI index"))?;
    let names = |e: &Entry| -> Vec<String> { [REF_NAME, CONTAINERD_NAME].iter().filter_map(|k| e.annotations.get(*k).cloned()).collect() };
    let chosen: Vec<&Entry> = match (tag, reference) {
        (Some(t), _) => index.manifests.iter().filter(|e| names(e).iter().any(|n| n == t)).collect(),
        (None, Some(r)) if index.manifests.len() > 1 => index.manifests.iter().filter(|e| names(e).iter().any(|n| n == r || r.ends_with(&format!(":{n}")))).collect(),
        _ => index.manifests.iter().collect(),
    };
    match chosen.as_slice() {
        [one] => Ok(Digest::parse(&one.digest).with_context(|| format!("{label}: index.json"))?),
        [] => {
            let all: Vec<String> = index.manifests.iter().flat_map(names).collect();
            bail!("{label}: no image tagged {:?} (tags present: {})", tag.or(reference).unwrap_or(""), if all.is_empty() { "none".into() } else { all.join(", ") })
        }
        _ => bail!("{label}: {} images match; name one with oci:<dir>:<tag>", chosen.len()),
    }
}

/// Opens the layout at `dir` and resolves `tag`.
pub fn open(dir: &Path, tag: Option<&str>) -> Result<Digest> {
    let label = format!("OCI layout {}", dir.display());
    if !dir.join("oci-layout").is_file() {
        bail!("{label}: not an OCI image layout (no oci-layout file); create one with `skopeo copy … oci:{}:<tag>`", dir.display());
    }
    let index = std::fs::read(dir.join("index.json")).with_context(|| format!("{label}: reading index.json"))?;
    select(&label, &index, tag, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selects_by_tag() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"digest":"{a}","size":1,"annotations":{{"{REF_NAME}":"1.0"}}}},{{"digest":"{b}","size":1,"annotations":{{"{REF_NAME}":"2.0"}}}}]}}"#
        );
        assert_eq!(select("x", index.as_bytes(), Some("2.0"), None).unwrap().to_string(), b);
        let err = select("x", index.as_bytes(), Some("3.0"), None).unwrap_err().to_string();
        assert!(err.contains("no image tagged \"3.0\" (tags present: 1.0, 2.0)"), "{err}");
        let err = select("x", index.as_bytes(), None, None).unwrap_err().to_string();
        assert!(err.contains("2 images match"), "{err}");
    }
}
