//! Stage `manifest`: `manifest.json` (every output, partition and digest, the
//! block map, packages, tools, stage keys), `sbom.spdx.json` (SPDX 2.3), and
//! the minisign signature over the manifest. The SBOM is covered by the
//! signature through its digest in the manifest's outputs.

use super::{Context, STAGE_FORMAT};
use crate::cache::KeyBuilder;
use crate::progress::Outcome;
use crate::spec::OutputFormat;
use crate::stages::{bundle::Bundle, disk::Disk, formats::Formats, rootfs::Rootfs};
use anyhow::{Context as _, Result};
use ciab_core::contract::{
    BundleIndex, DiskInfo, ImageInfo, Manifest, MappedRange, OutputFile, PackageInfo, PartitionInfo, PartitionRole, StageKey, MANIFEST_FILE, MANIFEST_SCHEMA,
    MANIFEST_SIG_FILE, SBOM_FILE,
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
        let sbom = sbom_json(ctx, &input.rootfs.packages, &input.bundle.index)?;
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

fn spdx_id(prefix: &str, name: &str, i: usize) -> String {
    let clean: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '-' }).collect();
    format!("SPDXRef-{prefix}-{i}-{clean}")
}

/// The SPDX 2.3 document: the image, every Debian package it contains, and
/// every container image, artifact and guest image of its bundle (with a
/// guest's own Debian packages, when the builder made it).
pub fn sbom_json(ctx: &Context, packages: &[PackageInfo], bundle: &BundleIndex) -> Result<Vec<u8>> {
    let spec = ctx.spec;
    let (spdx_packages, relationships) = sbom_packages(&format!("ciab-{}", spec.name), &spec.version, &format!("debian-{}", spec.debian.suite), packages, bundle);
    let doc = serde_json::json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("ciab-{}-{}", spec.name, spec.version),
        "documentNamespace": format!("urn:ciab:spdx:{}:{}:{}", spec.name, spec.version, ctx.spec_sha256),
        "creationInfo": {
            "created": crate::dates::iso8601(spec.source_date_epoch)?,
            "creators": [format!("Tool: ciab-{}", env!("CARGO_PKG_VERSION"))],
        },
        "packages": spdx_packages,
        "relationships": relationships,
    });
    Ok(serde_json::to_vec_pretty(&doc)?)
}

/// The SPDX packages and their relationships: the document describes the
/// image, which contains its Debian packages and its bundle's entries; a
/// guest image contains its own Debian packages.
fn sbom_packages(name: &str, version: &str, distro: &str, packages: &[PackageInfo], bundle: &BundleIndex) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
    let image_id = "SPDXRef-Image".to_owned();
    let mut spdx_packages = vec![spdx_package(&image_id, name, serde_json::json!({"versionInfo": version, "primaryPackagePurpose": "OPERATING-SYSTEM"}))];
    let mut relationships = vec![serde_json::json!({
        "spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES", "relatedSpdxElement": image_id,
    })];
    let contains = |parent: &str, child: &serde_json::Value| serde_json::json!({"spdxElementId": parent, "relationshipType": "CONTAINS", "relatedSpdxElement": child["SPDXID"]});
    let purl = |locator: String| serde_json::json!([{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl", "referenceLocator": locator}]);
    let deb = |id: String, p: &PackageInfo| {
        spdx_package(
            &id,
            &p.name,
            serde_json::json!({
                "versionInfo": p.version,
                "supplier": "Organization: Debian",
                "sourceInfo": format!("built from Debian source package {} {}", p.source, p.source_version),
                "externalRefs": purl(format!("pkg:deb/debian/{}@{}?arch={}&distro={distro}", p.name, purl_escape(&p.version), p.architecture)),
            }),
        )
    };
    let mut add = |parent: &str, package: serde_json::Value| {
        relationships.push(contains(parent, &package));
        spdx_packages.push(package);
    };
    for (i, p) in packages.iter().enumerate() {
        add(&image_id, deb(spdx_id("deb", &p.name, i), p));
    }
    for (i, image) in bundle.images.iter().enumerate() {
        add(
            &image_id,
            spdx_package(
                &spdx_id("oci", &image.reference, i),
                &image.reference,
                serde_json::json!({
                    "versionInfo": image.digest,
                    "primaryPackagePurpose": "CONTAINER",
                    "checksums": [{"algorithm": "SHA256", "checksumValue": image.digest.trim_start_matches("sha256:")}],
                    "externalRefs": purl(oci_purl(&image.reference, &image.digest)),
                }),
            ),
        );
    }
    for (i, a) in bundle.artifacts.iter().enumerate() {
        add(&image_id, spdx_package(&spdx_id("file", &a.dest, i), &a.dest, serde_json::json!({"primaryPackagePurpose": "FILE", "checksums": [{"algorithm": "SHA256", "checksumValue": a.sha256}]})));
    }
    for (i, g) in bundle.guest_images.iter().enumerate() {
        let guest_id = spdx_id("guest", &g.name, i);
        add(&image_id, spdx_package(&guest_id, &g.name, serde_json::json!({"primaryPackagePurpose": "OPERATING-SYSTEM", "checksums": [{"algorithm": "SHA256", "checksumValue": g.sha256}]})));
        for (j, p) in g.packages.iter().enumerate() {
            add(&guest_id, deb(spdx_id(&format!("guest-{i}-deb"), &p.name, j), p));
        }
    }
    (spdx_packages, relationships)
}

/// An SPDX package with what ciab cannot assert (licenses, copyright,
/// download location) said so, plus `fields`.
fn spdx_package(id: &str, name: &str, fields: serde_json::Value) -> serde_json::Value {
    let mut p = serde_json::json!({
        "SPDXID": id,
        "name": name,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
    });
    if let (Some(obj), serde_json::Value::Object(extra)) = (p.as_object_mut(), fields) {
        obj.extend(extra);
    }
    p
}

/// `pkg:oci/<name>@<digest>?repository_url=<registry>/<path>` (purl spec, OCI type).
fn oci_purl(reference: &str, digest: &str) -> String {
    let name_and_repo = reference.rsplit_once(':').filter(|(_, tag)| !tag.contains('/')).map_or(reference, |(n, _)| n);
    let name = name_and_repo.rsplit('/').next().unwrap_or(name_and_repo);
    let mut purl = format!("pkg:oci/{name}@{}?repository_url={}", digest.replace(':', "%3A"), name_and_repo);
    if let Some((_, tag)) = reference.rsplit_once(':').filter(|(_, tag)| !tag.contains('/')) {
        purl.push_str(&format!("&tag={tag}"));
    }
    purl
}

fn purl_escape(v: &str) -> String {
    v.replace('%', "%25").replace(':', "%3A").replace('+', "%2B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_guest_images_packages_are_its_own_in_the_sbom() {
        let deb = |name: &str, version: &str| PackageInfo { name: name.into(), version: version.into(), architecture: "amd64".into(), source: name.into(), source_version: version.into() };
        let guest = |name: &str, packages: Vec<PackageInfo>| ciab_core::contract::BundleGuestImage {
            name: name.into(),
            file: format!("guest-images/{name}.raw"),
            sha256: "ab".repeat(32),
            size: 1 << 30,
            disk_format: "raw".into(),
            min_disk_gib: 1,
            min_ram_mib: 512,
            properties: Default::default(),
            packages,
        };
        let bundle = BundleIndex {
            schema: MANIFEST_SCHEMA,
            images: vec![],
            artifacts: vec![],
            guest_images: vec![guest("ciab Debian 13", vec![deb("cloud-init", "25.1.4-1"), deb("openssh-server", "1:10.0p1-7")]), guest("Ubuntu 24.04", vec![])],
        };
        let (packages, relationships) = sbom_packages("ciab-eval", "1", "debian-trixie", &[deb("systemd", "257.9-1")], &bundle);
        let id = |name: &str| packages.iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("{name} in {packages:#?}"))["SPDXID"].as_str().unwrap().to_owned();
        let contains: Vec<(String, String)> = relationships
            .iter()
            .filter(|r| r["relationshipType"] == "CONTAINS")
            .map(|r| (r["spdxElementId"].as_str().unwrap().to_owned(), r["relatedSpdxElement"].as_str().unwrap().to_owned()))
            .collect();
        let guest_id = id("ciab Debian 13");
        assert_eq!(guest_id, "SPDXRef-guest-0-ciab-Debian-13");
        for (parent, child) in [("SPDXRef-Image", id("systemd")), ("SPDXRef-Image", guest_id.clone()), ("SPDXRef-Image", id("Ubuntu 24.04")), (guest_id.as_str(), id("cloud-init")), (guest_id.as_str(), id("openssh-server"))] {
            assert!(contains.contains(&(parent.to_owned(), child.clone())), "{parent} CONTAINS {child}: {contains:#?}");
        }
        // Each package once, in one parent; every id unique.
        assert_eq!(contains.len(), packages.len() - 1, "{contains:#?}");
        let ids: std::collections::BTreeSet<&str> = packages.iter().map(|p| p["SPDXID"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), packages.len());
        let ssh = packages.iter().find(|p| p["name"] == "openssh-server").unwrap();
        assert_eq!(ssh["externalRefs"][0]["referenceLocator"], "pkg:deb/debian/openssh-server@1%3A10.0p1-7?arch=amd64&distro=debian-trixie");
        let guest = packages.iter().find(|p| p["SPDXID"] == guest_id.as_str()).unwrap();
        assert_eq!(guest["checksums"][0]["checksumValue"], "ab".repeat(32));
    }

    #[test]
    fn spdx_ids_are_valid() {
        assert_eq!(spdx_id("deb", "libstdc++6", 3), "SPDXRef-deb-3-libstdc--6");
        assert_eq!(purl_escape("1:2.3+dfsg"), "1%3A2.3%2Bdfsg");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            oci_purl("registry.k8s.io/pause:3.10", &d),
            format!("pkg:oci/pause@sha256%3A{}?repository_url=registry.k8s.io/pause&tag=3.10", "a".repeat(64))
        );
        assert_eq!(oci_purl("127.0.0.1:5000/x/y", &d), format!("pkg:oci/y@sha256%3A{}?repository_url=127.0.0.1:5000/x/y", "a".repeat(64)));
    }
}
