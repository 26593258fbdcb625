//! Stage `bundle`: the tree of the read-only `bundle` partition.
//!
//! It always carries `bundle.json`, the index of what the bundle holds. The
//! OCI registry store and artifacts (the offline registry) are added to this
//! tree by the registry work; until then the index is empty and says so.

use super::{Context, STAGE_FORMAT};
use crate::cache::KeyBuilder;
use crate::progress::Outcome;
use anyhow::Result;
use ciab_firstboot::contract::{BundleIndex, BUNDLE_INDEX_FILE};
use std::path::PathBuf;

/// Output of the bundle stage.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub key: String,
    pub tree: PathBuf,
    pub index: BundleIndex,
}

fn index() -> BundleIndex {
    BundleIndex { schema: 1, images: Vec::new(), artifacts: Vec::new() }
}

pub fn run(ctx: &Context) -> Result<(Bundle, Outcome, Option<u64>)> {
    let index = index();
    let index_json = serde_json::to_vec_pretty(&index)?;
    let key = KeyBuilder::new("bundle").add("format", STAGE_FORMAT).add("index", &index_json).add("epoch", ctx.epoch().to_string()).finish();
    let (dir, cached) = ctx.cache.get_or_build("bundle", &key, |tmp| {
        let tree = tmp.join("tree");
        std::fs::create_dir_all(&tree)?;
        std::fs::write(tree.join(BUNDLE_INDEX_FILE), &index_json)?;
        crate::tree::clamp_mtimes(&tree, ctx.epoch())
    })?;
    Ok((Bundle { key, tree: dir.join("tree"), index }, if cached { Outcome::Cached } else { Outcome::Ran }, None))
}
