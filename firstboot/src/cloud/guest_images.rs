//! The `guest-images` step: the disk images the builder put in the bundle
//! (`guest-images/` and the index's `guest_images`) registered in Glance as
//! public images with their properties, uploaded straight from the bundle
//! partition. Each file is checked against the index's sha256 before it is
//! sent; an image an earlier run left half-uploaded is deleted and made
//! again.

use super::catalog::GLANCE;
use super::identity::admin;
use super::rest::{expect, request, upload};
use crate::ctx::Ctx;
use crate::engine::{About, Step};
use ciab_core::contract::{BUNDLE_MOUNTPOINT, BundleGuestImage};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::io::Read;
use std::path::Path;

/// Glance's create request for `image`: public, with its properties.
pub fn create_body(image: &BundleGuestImage) -> Value {
    let mut body = json!({
        "name": image.name,
        "disk_format": image.disk_format,
        "container_format": "bare",
        "visibility": "public",
        "min_disk": image.min_disk_gib,
        "min_ram": image.min_ram_mib,
    });
    for (k, v) in &image.properties {
        body[k] = json!(v);
    }
    body
}

/// `value` percent-encoded for a query string: image names have spaces
/// ("Ubuntu 24.04").
fn query_value(value: &str) -> String {
    value.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

fn sha256_of(path: &Path) -> Result<String> {
    use sha2::Digest;
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

pub struct GuestImagesStep;

impl GuestImagesStep {
    /// Registers one image; returns its id.
    fn register(token: &str, bundle: &Path, image: &BundleGuestImage) -> Result<String> {
        let listed = expect(request(GLANCE.bind, "GET", &format!("/v2/images?name={}", query_value(&image.name)), Some(token), None)?, "listing images", &[200])?;
        for existing in listed.body["images"].as_array().into_iter().flatten() {
            let id = existing["id"].as_str().context("an image without id")?;
            if existing["status"] == "active" && existing["size"].as_u64() == Some(image.size) {
                return Ok(id.to_owned());
            }
            // A power cut during an earlier upload.
            expect(request(GLANCE.bind, "DELETE", &format!("/v2/images/{id}"), Some(token), None)?, &format!("deleting the unfinished image {}", image.name), &[204])?;
        }
        let file = bundle.join(&image.file);
        let sha = sha256_of(&file)?;
        if sha != image.sha256 {
            bail!("{}: sha256 {sha}, the bundle's index says {}: the bundle partition is damaged; reflash the image", file.display(), image.sha256);
        }
        let created = expect(request(GLANCE.bind, "POST", "/v2/images", Some(token), Some(&create_body(image)))?, &format!("creating image {}", image.name), &[201])?;
        let id = created.body["id"].as_str().context("Glance returned no image id")?.to_owned();
        expect(upload(GLANCE.bind, &format!("/v2/images/{id}/file"), token, &file)?, &format!("uploading {}", file.display()), &[204])?;
        let got = expect(request(GLANCE.bind, "GET", &format!("/v2/images/{id}"), Some(token), None)?, &format!("reading image {}", image.name), &[200])?;
        if got.body["status"] != "active" || got.body["size"].as_u64() != Some(image.size) {
            bail!("image {} is {} with size {} after its upload, expected active with {} bytes", image.name, got.body["status"], got.body["size"], image.size);
        }
        Ok(id)
    }
}

impl Step<Ctx> for GuestImagesStep {
    fn about(&self) -> About {
        About { name: "guest-images", title: "register the bundle's guest images in Glance", after: &["apis"] }
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        Ok(ctx.stamp("guest-images").exists())
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let images = crate::host::registry::bundle_index(&ctx.root)?.map(|i| i.guest_images).unwrap_or_default();
        if !images.is_empty() {
            let keystone = admin(ctx)?;
            let bundle = ctx.root.join(BUNDLE_MOUNTPOINT.trim_start_matches('/'));
            for image in &images {
                let id = Self::register(keystone.token(), &bundle, image)?;
                tracing::info!("guest-images: {} ({} KiB, {}) active in Glance as {id}", image.name, image.size / 1024, image.disk_format);
            }
        }
        ctx.set_stamp("guest-images")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_spaces_are_encoded_in_the_query() {
        assert_eq!(query_value("Ubuntu 24.04"), "Ubuntu%2024.04");
        assert_eq!(query_value("ciab-tiny"), "ciab-tiny");
        assert_eq!(query_value("a&b=c"), "a%26b%3Dc");
    }

    #[test]
    fn images_are_public_with_their_properties() {
        let image = BundleGuestImage {
            name: "ciab-tiny".into(),
            file: "guest-images/ciab-tiny.raw".into(),
            sha256: "00".repeat(32),
            size: 45 << 20,
            disk_format: "raw".into(),
            min_disk_gib: 1,
            min_ram_mib: 128,
            properties: [("image_source".to_owned(), "private".to_owned()), ("hw_rng_model".to_owned(), "virtio".to_owned())].into_iter().collect(),
            packages: vec![],
        };
        let body = create_body(&image);
        assert_eq!(body["visibility"], "public");
        assert_eq!(body["container_format"], "bare");
        assert_eq!(body["min_ram"], 128);
        assert_eq!(body["image_source"], "private");
        assert_eq!(body["hw_rng_model"], "virtio");
    }

    #[test]
    fn sha256_matches_sha256sum() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x");
        std::fs::write(&f, b"abc").unwrap();
        assert_eq!(sha256_of(&f).unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
