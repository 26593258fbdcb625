//! Docker Distribution's filesystem storage layout, written directly so the
//! box's `docker-registry` serves the bundle read-only with no import step.
//!
//! Under `<root>/docker/registry/v2/`:
//! - `blobs/sha256/<xx>/<hex>/data`: every blob and every manifest;
//! - `repositories/<repo>/_layers/sha256/<hex>/link`: each config and layer of the repo;
//! - `repositories/<repo>/_manifests/revisions/sha256/<hex>/link`: each manifest
//!   (index children included, or the registry answers 404 for them);
//! - `repositories/<repo>/_manifests/tags/<tag>/{current/link,index/sha256/<hex>/link}`.
//!
//! A link holds `sha256:<hex>` with no newline: with one, the registry fails
//! with HTTP 500.

use super::digest::Digest;
use anyhow::{Context, Result};
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// The directory under the storage root the registry reads.
pub const V2_DIR: &str = "docker/registry/v2";

/// One repository:tag of the offline registry and everything it references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoContent {
    /// `registry/repository`, e.g. `registry.k8s.io/pause`.
    pub repo: String,
    pub tag: Option<String>,
    /// The manifest or index clients resolve the tag to.
    pub top: Digest,
    /// Every manifest: the top one and the index entries carried.
    pub manifests: Vec<Digest>,
    /// Configs and layers of every manifest carried.
    pub blobs: Vec<Digest>,
}

/// Writes `images` under `root`, taking blob bytes from `blob_path(digest)`
/// (hard-linked when on the same filesystem, copied otherwise). Returns the
/// bytes of blob data written (each blob counted once).
pub fn write(root: &Path, images: &[RepoContent], blob_path: impl Fn(&Digest) -> PathBuf) -> Result<u64> {
    let v2 = root.join(V2_DIR);
    let mut placed = BTreeSet::new();
    let mut bytes = 0;
    for image in images {
        let repo = v2.join("repositories").join(&image.repo);
        for d in image.manifests.iter().chain(&image.blobs) {
            if placed.insert(d.clone()) {
                bytes += place_blob(root, d, &blob_path(d))?;
            }
        }
        for d in &image.manifests {
            write_link(&repo.join("_manifests/revisions/sha256").join(d.hex()), d)?;
        }
        for d in &image.blobs {
            write_link(&repo.join("_layers/sha256").join(d.hex()), d)?;
        }
        if let Some(tag) = &image.tag {
            let tag_dir = repo.join("_manifests/tags").join(tag);
            write_link(&tag_dir.join("current"), &image.top)?;
            write_link(&tag_dir.join("index/sha256").join(image.top.hex()), &image.top)?;
        }
    }
    Ok(bytes)
}

/// The path of a blob's data inside the storage root.
pub fn blob_data_path(root: &Path, d: &Digest) -> PathBuf {
    root.join(V2_DIR).join("blobs/sha256").join(&d.hex()[..2]).join(d.hex()).join("data")
}

fn place_blob(root: &Path, d: &Digest, from: &Path) -> Result<u64> {
    let to = blob_data_path(root, d);
    let dir = to.parent().context("blob path has no parent")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let size = fs::metadata(from).with_context(|| format!("blob {d} is missing from the cache ({})", from.display()))?.len();
    if fs::hard_link(from, &to).is_err() {
        fs::copy(from, &to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    Ok(size)
}

fn write_link(dir: &Path, d: &Digest) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let link = dir.join("link");
    fs::write(&link, d.to_string()).with_context(|| format!("writing {}", link.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_links_without_newlines_and_each_blob_once() {
        let src = tempfile::tempdir().unwrap();
        let mut digests = Vec::new();
        for body in [&b"index"[..], b"manifest", b"config", b"layer"] {
            let d = Digest::of(body);
            fs::write(src.path().join(d.hex()), body).unwrap();
            digests.push(d);
        }
        let [index, manifest, config, layer] = [0, 1, 2, 3].map(|i| digests[i].clone());
        let image = |tag: &str| RepoContent {
            repo: "registry.k8s.io/pause".into(),
            tag: Some(tag.into()),
            top: index.clone(),
            manifests: vec![index.clone(), manifest.clone()],
            blobs: vec![config.clone(), layer.clone()],
        };
        let out = tempfile::tempdir().unwrap();
        let bytes = write(out.path(), &[image("3.10"), image("latest")], |d| src.path().join(d.hex())).unwrap();
        assert_eq!(bytes, (5 + 8 + 6 + 5) as u64);
        let repo = out.path().join(V2_DIR).join("repositories/registry.k8s.io/pause");
        assert_eq!(fs::read_to_string(repo.join("_manifests/tags/3.10/current/link")).unwrap(), index.to_string());
        assert_eq!(
            fs::read_to_string(repo.join(format!("_manifests/tags/latest/index/sha256/{}/link", index.hex()))).unwrap(),
            index.to_string()
        );
        assert_eq!(fs::read_to_string(repo.join(format!("_manifests/revisions/sha256/{}/link", manifest.hex()))).unwrap(), manifest.to_string());
        assert_eq!(fs::read_to_string(repo.join(format!("_layers/sha256/{}/link", config.hex()))).unwrap(), config.to_string());
        assert_eq!(fs::read(blob_data_path(out.path(), &layer)).unwrap(), b"layer");
    }

    #[test]
    fn a_missing_blob_names_its_digest() {
        let out = tempfile::tempdir().unwrap();
        let d = Digest::of(b"x");
        let image = RepoContent { repo: "docker.io/library/x".into(), tag: None, top: d.clone(), manifests: vec![d.clone()], blobs: vec![] };
        let err = write(out.path(), &[image], |d| PathBuf::from("/nonexistent").join(d.hex())).unwrap_err().to_string();
        assert!(err.contains(&format!("blob {d} is missing from the cache")), "{err}");
    }
}
