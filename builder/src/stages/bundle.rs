//! Stage `bundle`: the tree of the read-only `bundle` partition.
//!
//! - `registry/docker/registry/v2/…`: the offline registry's store, in Docker
//!   Distribution's layout, served on the box by `docker-registry`;
//! - every artifact at its `dest`;
//! - `bundle.json`: the index (image reference → digest, artifact → sha256).
//!
//! The stage key holds only pinned identities (digests, sha256s), so a
//! rebuild with unchanged pins takes the cached tree and touches no network;
//! a changed pin fetches only blobs the blob cache lacks.

use super::{Context, STAGE_FORMAT};
use crate::cache::KeyBuilder;
use crate::fetch::Fetcher;
use crate::oci::distribution;
use crate::progress::Outcome;
use anyhow::{Context as _, Result};
use ciab_firstboot::contract::{BundleArtifact, BundleImage, BundleIndex, BUNDLE_INDEX_FILE};
use std::path::{Path, PathBuf};

/// Where the registry store sits inside the bundle (the box's registry
/// `rootdirectory` is this under the bundle's mount point).
pub const REGISTRY_DIR: &str = "registry";

/// Output of the bundle stage.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub key: String,
    pub tree: PathBuf,
    pub index: BundleIndex,
}

pub fn key(ctx: &Context) -> Result<String> {
    let images: Vec<_> = ctx.spec.images.iter().map(|i| (&i.reference, &i.digest, &i.platforms)).collect();
    let artifacts: Vec<_> = ctx.spec.artifacts.iter().map(|a| (&a.dest, &a.sha256)).collect();
    Ok(KeyBuilder::new("bundle")
        .add("format", STAGE_FORMAT)
        .add("images", serde_json::to_string(&images)?)
        .add("artifacts", serde_json::to_string(&artifacts)?)
        .add("epoch", ctx.epoch().to_string())
        .finish())
}

pub fn run(ctx: &Context) -> Result<(Bundle, Outcome, Option<u64>)> {
    let key = key(ctx)?;
    let (dir, cached) = ctx.cache.get_or_build("bundle", &key, |tmp| build_tree(ctx, &tmp.join("tree")))?;
    let tree = dir.join("tree");
    let index_path = tree.join(BUNDLE_INDEX_FILE);
    let index: BundleIndex = serde_json::from_slice(&std::fs::read(&index_path).with_context(|| format!("reading {}", index_path.display()))?)
        .with_context(|| format!("parsing {}", index_path.display()))?;
    let size = crate::tree::disk_usage(&tree)?;
    Ok((Bundle { key, tree, index }, if cached { Outcome::Cached } else { Outcome::Ran }, Some(size)))
}

fn build_tree(ctx: &Context, tree: &Path) -> Result<()> {
    std::fs::create_dir_all(tree)?;
    let spec = ctx.spec;
    let mut index = BundleIndex { schema: 1, images: Vec::new(), artifacts: Vec::new() };
    if !spec.images.is_empty() || !spec.artifacts.is_empty() {
        let fetcher = Fetcher::new(ctx.cache.root(), &ctx.fetch)?;
        let images = fetcher.images(&spec.images)?;
        let contents: Vec<_> = images.iter().map(|i| i.content.clone()).collect();
        distribution::write(&tree.join(REGISTRY_DIR), &contents, |d| fetcher.store().path(d))?;
        for i in &images {
            index.images.push(BundleImage { reference: i.reference.clone(), digest: i.content.top.to_string() });
        }
        let fetched = fetcher.artifacts(&spec.artifacts)?;
        for (a, (digest, size)) in spec.artifacts.iter().zip(fetched) {
            let to = tree.join(&a.dest);
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            }
            let from = fetcher.store().path(&digest);
            if std::fs::hard_link(&from, &to).is_err() {
                std::fs::copy(&from, &to).with_context(|| format!("copying artifact {} into the bundle", a.dest))?;
            }
            index.artifacts.push(BundleArtifact { dest: a.dest.clone(), sha256: digest.hex().to_owned(), size });
        }
    }
    std::fs::write(tree.join(BUNDLE_INDEX_FILE), serde_json::to_vec_pretty(&index)?)?;
    crate::tree::clamp_mtimes(tree, ctx.epoch())
}
