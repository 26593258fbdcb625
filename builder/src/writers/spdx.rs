//! SPDX 2.3 software bills of materials (`sbom.spdx.json`): the image, its
//! Debian packages and its bundle's container images, artifacts and guest
//! images, each guest with its own packages.

use anyhow::Result;
use ciab_core::contract::{BundleIndex, PackageInfo};

fn spdx_id(prefix: &str, name: &str, i: usize) -> String {
    let clean: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '-' }).collect();
    format!("SPDXRef-{prefix}-{i}-{clean}")
}

/// What the SBOM says of the image itself.
pub struct Image<'a> {
    pub name: &'a str,
    pub version: &'a str,
    /// The Debian suite its packages come from.
    pub suite: &'a str,
    /// sha256 of the spec's identity, in the document's namespace.
    pub spec_sha256: &'a str,
    /// The document's creation time.
    pub source_date_epoch: i64,
}

/// The SPDX 2.3 document: the image, every Debian package it contains, and
/// every container image, artifact and guest image of its bundle (with a
/// guest's own Debian packages, when the builder made it).
pub fn sbom_json(image: &Image, packages: &[PackageInfo], bundle: &BundleIndex) -> Result<Vec<u8>> {
    let (spdx_packages, relationships) = sbom_packages(&format!("ciab-{}", image.name), image.version, &format!("debian-{}", image.suite), packages, bundle);
    let doc = serde_json::json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("ciab-{}-{}", image.name, image.version),
        "documentNamespace": format!("urn:ciab:spdx:{}:{}:{}", image.name, image.version, image.spec_sha256),
        "creationInfo": {
            "created": crate::dates::iso8601(image.source_date_epoch)?,
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
    use ciab_core::contract::MANIFEST_SCHEMA;

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
