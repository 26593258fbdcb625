//! Stage `bundle`: the tree of the read-only `bundle` partition.
//!
//! - `registry/docker/registry/v2/…`: the offline registry's store, in Docker
//!   Distribution's layout, served on the box by `docker-registry`;
//! - every artifact at its `dest`;
//! - `guest-images/<name>.<format>`: the disk images first boot registers in
//!   Glance: made by the builder (`guests::tiny`, from the rootfs's kernel
//!   and busybox; `guests::debian`, a Debian cloud image) or
//!   downloaded like artifacts (upstream cloud images);
//! - `bundle.json`: the index (image reference → digest, artifact → sha256).
//!
//! The stage key holds only pinned identities (digests, sha256s), so a
//! rebuild with unchanged pins takes the cached tree and touches no network;
//! a changed pin fetches only blobs the blob cache lacks.

use super::{Context, STAGE_FORMAT};
use crate::cache::KeyBuilder;
use crate::fetch::Fetcher;
use crate::guests::{debian, tiny};
use crate::oci::distribution;
use crate::progress::Outcome;
use crate::writers::qcow2;
use anyhow::{bail, Context as _, Result};
use crate::spec::{GuestBuild, GuestImageSpec};
use crate::stages::rootfs::Rootfs;
use ciab_core::contract::{BundleArtifact, BundleGuestImage, BundleImage, BundleIndex, BUNDLE_INDEX_FILE};
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
            .add("guest_layout", tiny::LAYOUT)
            .add("rootfs", &rootfs.key)
            .add("grub-mkimage", ctx.tool("grub-mkimage"))
            .add("mkfs.vfat", ctx.tool("mkfs.vfat"));
        for g in ctx.spec.guest_images.iter().filter(|g| g.build == Some(GuestBuild::Debian)) {
            k.add(&format!("guest:{}", g.name), debian::key(ctx, &g.name));
        }
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
        let file = format!("{GUEST_IMAGES_DIR}/{}", g.file_name());
        let out = tree.join(&file);
        let (disk_format, disk_bytes, made) = match (g.build, g.download_artifact()) {
            (Some(GuestBuild::Tiny), _) => {
                let stem = g.name.replace(' ', "-");
                tiny::build(&tiny::GuestInput {
                    tree: &rootfs.tree,
                    kernel: &rootfs.kernel,
                    name: &stem,
                    epoch: ctx.epoch(),
                    work: &work.join(&stem),
                    out: &out,
                })
                .with_context(|| format!("building guest image {}", g.name))?;
                ("raw".to_owned(), std::fs::metadata(&out)?.len(), Made::Tiny { kernel: &rootfs.kernel })
            }
            (Some(GuestBuild::Debian), _) => {
                let guest = debian::build(ctx, &g.name).with_context(|| format!("building guest image {}", g.name))?;
                if std::fs::hard_link(&guest.disk, &out).is_err() {
                    std::fs::copy(&guest.disk, &out).with_context(|| format!("copying guest image {:?} into the bundle", g.name))?;
                }
                ("raw".to_owned(), std::fs::metadata(&out)?.len(), Made::Debian(guest))
            }
            (None, Some(artifact)) => {
                let download = g.download.as_ref().context("a download")?;
                fetch_guest_image(ctx, g, &artifact, &out)?;
                let bytes = if download.disk_format == "qcow2" { qcow2::virtual_size(&out).with_context(|| format!("guest image {:?} ({})", g.name, download.url))? } else { std::fs::metadata(&out)?.len() };
                (download.disk_format.clone(), bytes, Made::Downloaded)
            }
            _ => bail!("guest image {:?} is neither built nor downloaded", g.name),
        };
        let size = std::fs::metadata(&out)?.len();
        index.guest_images.push(BundleGuestImage {
            name: g.name.clone(),
            file,
            sha256: crate::fsutil::sha256_file(&out)?,
            size,
            disk_format,
            // The disk the image needs: its virtual size, whole GiB.
            min_disk_gib: disk_bytes.div_ceil(1 << 30),
            min_ram_mib: g.min_ram_mib.unwrap_or(if g.build == Some(GuestBuild::Tiny) { 128 } else { 512 }),
            properties: guest_properties(ctx, g, &made)?,
            packages: match &made {
                Made::Debian(guest) => guest.packages.clone(),
                Made::Tiny { .. } | Made::Downloaded => vec![],
            },
        });
    }
    // Only built images use the scratch space.
    if work.exists() {
        std::fs::remove_dir_all(work).with_context(|| format!("removing {}", work.display()))?;
    }
    std::fs::write(&index_path, serde_json::to_vec_pretty(&index)?)?;
    crate::tree::clamp_mtimes(tree, ctx.epoch())
}

/// Brings a downloaded guest image into the bundle from the blob cache,
/// fetching it first if the cache lacks it. A failed fetch fails the build,
/// naming the image, its spec entry and what to do: a spec that lists an
/// image promises it on every box.
fn fetch_guest_image(ctx: &Context, g: &GuestImageSpec, artifact: &crate::spec::ArtifactSpec, out: &Path) -> Result<()> {
    let fetcher = Fetcher::new(ctx.cache.root(), &ctx.fetch)?;
    let fetched = fetcher.artifacts(std::slice::from_ref(artifact)).with_context(|| {
        format!(
            "guest image {:?} ({} guest_images[{}]): cannot fetch {}. The image needs it: build where that URL is reachable (the blob cache then keeps it for offline rebuilds), or remove the entry",
            g.name,
            g.origin.file.display(),
            g.origin.index,
            artifact.url
        )
    })?;
    let (digest, _) = fetched.into_iter().next().context("one fetched file")?;
    let from = fetcher.store().path(&digest);
    if std::fs::hard_link(&from, out).is_err() {
        std::fs::copy(&from, out).with_context(|| format!("copying guest image {:?} into the bundle", g.name))?;
    }
    Ok(())
}

/// How a guest image came to be, for its properties.
enum Made<'a> {
    /// From the image's own kernel (`kernel`) and busybox.
    Tiny { kernel: &'a str },
    Debian(debian::DebianGuest),
    Downloaded,
}

/// Glance properties of a guest image, in the vocabulary of SCS standard
/// scs-0102 (image metadata), under the spec's own. A builder-made image is
/// private (made here, not an upstream image), built from Debian packages
/// at the build's date; a downloaded one comes from its URL.
fn guest_properties(ctx: &Context, g: &GuestImageSpec, made: &Made) -> Result<BTreeMap<String, String>> {
    let mut p: BTreeMap<String, String> = [
        ("architecture", "x86_64"),
        ("hw_disk_bus", "virtio"),
        ("hw_rng_model", "virtio"),
        ("hw_vif_model", "virtio"),
        ("uuid_validity", "none"),
        ("provided_until", "none"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let mut set = |k: &str, v: String| {
        p.insert(k.to_owned(), v);
    };
    match (made, &g.download) {
        (Made::Tiny { kernel }, _) => {
            set("os_distro", "linux".into());
            set("os_version", (*kernel).into());
            set("os_purpose", "minimal".into());
            set("image_source", "private".into());
            set("image_description", format!("ciab's tiny test guest: Debian kernel {kernel} and busybox; takes an address by DHCP, serves a page on port 80, prints \"{}\" lines on its console", tiny::MARKER));
            set("image_build_date", crate::dates::build_date(ctx.epoch())?);
            set("image_original_user", "none".into());
            set("replace_frequency", "never".into());
        }
        (Made::Debian(guest), _) => {
            set("os_distro", "debian".into());
            set("os_version", guest.version.clone());
            set("os_purpose", "generic".into());
            set("image_source", "private".into());
            set(
                "image_description",
                format!(
                    "Debian {} ({}) generic cloud image, built by ciab from Debian packages: kernel {}, cloud-init (user {}, no password: log in with the key pair given at launch), OpenSSH, netplan",
                    guest.version,
                    guest.suite,
                    guest.kernel,
                    debian::DEFAULT_USER
                ),
            );
            set("image_build_date", crate::dates::build_date(ctx.epoch())?);
            set("image_original_user", debian::DEFAULT_USER.into());
            // Rebuilt with the box's image, not on a schedule of its own.
            set("replace_frequency", "never".into());
        }
        (_, Some(d)) => {
            let upstream = d.url.starts_with("https://") || d.url.starts_with("http://");
            set("os_purpose", "generic".into());
            set("image_source", if upstream { d.url.clone() } else { "private".into() });
            let mut description = format!("{}, as published at its image_source", g.name);
            if let Some(why) = &d.stand_in {
                description = format!("STAND-IN, not the real image ({why}): a test file registered in place of {}", g.name);
                set("ciab_stand_in", why.clone());
            }
            set("image_description", description);
        }
        _ => {}
    }
    for (k, v) in &g.properties {
        p.insert(k.clone(), v.clone());
    }
    Ok(p)
}
