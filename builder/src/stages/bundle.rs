//! Stage `bundle`: the tree of the read-only `bundle` partition.
//!
//! - `registry/docker/registry/v2/…`: the offline registry's store, in Docker
//!   Distribution's layout, served on the box by `docker-registry`;
//! - every artifact at its `dest`;
//! - `guest-images/<name>.raw`: the disk images the builder makes for Glance
//!   (`stages::guest`), from the rootfs's kernel and busybox;
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
use crate::spec::{GuestBuild, GuestImageSpec};
use crate::stages::rootfs::Rootfs;
use ciab_firstboot::contract::{BundleArtifact, BundleGuestImage, BundleImage, BundleIndex, BUNDLE_INDEX_FILE};
use std::collections::BTreeMap;
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

/// Where guest images sit in the bundle.
pub const GUEST_IMAGES_DIR: &str = "guest-images";

pub fn key(ctx: &Context, rootfs: &Rootfs) -> Result<String> {
    let images: Vec<_> = ctx.spec.images.iter().map(|i| (&i.reference, &i.digest, &i.platforms)).collect();
    let artifacts: Vec<_> = ctx.spec.artifacts.iter().map(|a| (&a.dest, &a.sha256)).collect();
    let mut k = KeyBuilder::new("bundle");
    k.add("format", STAGE_FORMAT)
        .add("images", serde_json::to_string(&images)?)
        .add("artifacts", serde_json::to_string(&artifacts)?)
        .add("epoch", ctx.epoch().to_string());
    if !ctx.spec.guest_images.is_empty() {
        // Guest images are made from the rootfs; without them the bundle
        // does not depend on it and survives package changes.
        k.add("guest_images", serde_json::to_string(&ctx.spec.guest_images)?)
            .add("guest_layout", super::guest::LAYOUT)
            .add("rootfs", &rootfs.key)
            .add("grub-mkimage", ctx.tool("grub-mkimage"))
            .add("mkfs.vfat", ctx.tool("mkfs.vfat"));
    }
    Ok(k.finish())
}

pub fn run(ctx: &Context, rootfs: &Rootfs) -> Result<(Bundle, Outcome, Option<u64>)> {
    let key = key(ctx, rootfs)?;
    let (dir, cached) = ctx.cache.get_or_build("bundle", &key, |tmp| {
        let tree = tmp.join("tree");
        build_tree(ctx, &tree)?;
        add_guest_images(ctx, rootfs, &tree, &tmp.join("guest-work"))
    })?;
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
    let mut index = BundleIndex { schema: 1, images: Vec::new(), artifacts: Vec::new(), guest_images: Vec::new() };
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

/// Builds the spec's guest images into `tree` and lists them in its index.
fn add_guest_images(ctx: &Context, rootfs: &Rootfs, tree: &Path, work: &Path) -> Result<()> {
    if ctx.spec.guest_images.is_empty() {
        return Ok(());
    }
    let index_path = tree.join(BUNDLE_INDEX_FILE);
    let mut index: BundleIndex = serde_json::from_slice(&std::fs::read(&index_path)?)?;
    std::fs::create_dir_all(tree.join(GUEST_IMAGES_DIR))?;
    for g in &ctx.spec.guest_images {
        let file = format!("{GUEST_IMAGES_DIR}/{}.raw", g.name);
        let out = tree.join(&file);
        match g.build {
            GuestBuild::Tiny => super::guest::build(&super::guest::GuestInput {
                tree: &rootfs.tree,
                kernel: &rootfs.kernel,
                name: &g.name,
                epoch: ctx.epoch(),
                work: &work.join(&g.name),
                out: &out,
            })
            .with_context(|| format!("building guest image {}", g.name))?,
        }
        let size = std::fs::metadata(&out)?.len();
        index.guest_images.push(BundleGuestImage {
            name: g.name.clone(),
            file,
            sha256: crate::fsutil::sha256_file(&out)?,
            size,
            disk_format: "raw".into(),
            min_disk_gib: size.div_ceil(1 << 30),
            min_ram_mib: 128,
            properties: guest_properties(ctx, g, &rootfs.kernel),
        });
    }
    std::fs::remove_dir_all(work).with_context(|| format!("removing {}", work.display()))?;
    std::fs::write(&index_path, serde_json::to_vec_pretty(&index)?)?;
    crate::tree::clamp_mtimes(tree, ctx.epoch())
}

/// Glance properties of a builder-made image, in the vocabulary of SCS
/// standard scs-0102 (image metadata): it is private (made here, not an
/// upstream image), built from the image's own packages at the build's date.
fn guest_properties(ctx: &Context, g: &GuestImageSpec, kernel: &str) -> BTreeMap<String, String> {
    let date = build_date(ctx.epoch());
    let description = match g.build {
        GuestBuild::Tiny => format!("ciab's tiny test guest: Debian kernel {kernel} and busybox; takes an address by DHCP, serves a page on port 80, prints \"{}\" lines on its console", super::guest::MARKER),
    };
    [
        ("architecture", "x86_64".to_owned()),
        ("hw_disk_bus", "virtio".to_owned()),
        ("hw_rng_model", "virtio".to_owned()),
        ("hw_vif_model", "virtio".to_owned()),
        ("os_distro", "linux".to_owned()),
        ("os_version", kernel.to_owned()),
        ("os_purpose", "minimal".to_owned()),
        ("image_source", "private".to_owned()),
        ("image_description", description),
        ("image_build_date", date),
        ("image_original_user", "none".to_owned()),
        ("replace_frequency", "never".to_owned()),
        ("uuid_validity", "none".to_owned()),
        ("provided_until", "none".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// `YYYY-MM-DD` of a Unix time (UTC), for `image_build_date`.
fn build_date(epoch: i64) -> String {
    super::manifest::iso8601(epoch)[..10].to_owned()
}

#[cfg(test)]
mod guest_tests {
    #[test]
    fn build_dates_are_civil_dates() {
        assert_eq!(super::build_date(0), "1970-01-01");
        assert_eq!(super::build_date(951_782_400), "2000-02-29");
        assert_eq!(super::build_date(1_767_225_599), "2025-12-31");
    }
}
