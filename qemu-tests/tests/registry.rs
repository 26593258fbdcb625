//! The offline registry end to end: images the test builds itself are pushed
//! to a real local `docker-registry`, fetched through the builder by digest
//! (and from OCI layouts and docker archives), written as Docker
//! Distribution's storage layout, and served by a second, read-only
//! `docker-registry` configured like the box's; every manifest and blob must
//! come back byte-identical. Faults come from a stand-in registry. The QEMU
//! test boots an image carrying the bundle with no network at all and pulls
//! through containerd and through the registry API on the box.

use ciab_builder::fetch::{FetchOptions, Fetcher};
use ciab_builder::oci::digest::Digest;
use ciab_builder::oci::distribution::{self, RepoContent};
use ciab_builder::spec::{ArtifactSpec, ImageSource, ImageSpec, Origin};
use ciab_qemu_tests::oci_fixtures::{self as fx, Fault, Layout, LocalRegistry, StandIn};
use std::path::Path;

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
                      application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

fn image(reference: &str, digest: Option<&str>, platforms: &[&str], source: ImageSource) -> ImageSpec {
    ImageSpec {
        reference: reference.into(),
        digest: digest.map(str::to_owned),
        platforms: platforms.iter().map(|p| p.to_string()).collect(),
        source,
        origin: Origin::default(),
    }
}

fn from_registry(host: &str, repo_tag: &str) -> ImageSource {
    ImageSource::Registry { reference: format!("{host}/{repo_tag}") }
}

fn fetcher(cache: &Path, insecure: &[String]) -> Fetcher {
    Fetcher::new(cache, &FetchOptions { insecure_registries: insecure.to_vec(), jobs: 4 }).expect("fetcher")
}

/// Writes the fetched images as a Distribution tree under `root` and serves it read-only.
fn serve(root: &Path, f: &Fetcher, contents: &[RepoContent]) -> LocalRegistry {
    distribution::write(root, contents, |d| f.store().path(d)).expect("writing the storage layout");
    LocalRegistry::start_readonly(root).expect("read-only registry")
}

fn get_ok(reg: &LocalRegistry, path: &str) -> Vec<u8> {
    let (status, body) = reg.get(path, ACCEPT).unwrap_or_else(|e| panic!("GET {path}: {e:#}"));
    assert_eq!(status, 200, "GET {path} on {}: {}", reg.host(), String::from_utf8_lossy(&body));
    body
}

#[test]
fn images_fetched_by_digest_are_served_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let busybox = fx::busybox_layout(&tmp.path().join("busybox"), "1.0").unwrap();
    let multi = fx::two_platform_layout(&tmp.path().join("multi"), "2.0").unwrap();
    let origin = LocalRegistry::start_writable(&tmp.path().join("origin")).unwrap();
    origin.push(&busybox, "ciab-test/busybox", "1.0").unwrap();
    origin.push(&multi, "ciab-test/multi", "2.0").unwrap();
    let insecure = vec![origin.host()];
    let f = fetcher(&tmp.path().join("cache"), &insecure);

    // `ciab lock` resolves the tag at the source to the digest that was pushed.
    let unpinned = image("registry.k8s.io/ciab-test/busybox:1.0", None, &["linux/amd64"], from_registry(&origin.host(), "ciab-test/busybox:1.0"));
    assert_eq!(f.resolve_image(&unpinned).unwrap().to_string(), busybox.digest);

    let images = [
        ImageSpec { digest: Some(busybox.digest.clone()), ..unpinned },
        image("ghcr.io/ciab-test/multi:2.0", Some(&multi.digest), &["linux/amd64", "linux/arm64"], from_registry(&origin.host(), "ciab-test/multi:2.0")),
    ];
    let fetched = f.images(&images).expect("fetching from the local registry");
    assert_eq!(fetched[0].content.repo, "registry.k8s.io/ciab-test/busybox");
    assert_eq!(fetched[1].content.manifests.len(), 3, "the index and both platform manifests");
    let contents: Vec<RepoContent> = fetched.iter().map(|i| i.content.clone()).collect();
    let served = serve(&tmp.path().join("bundle"), &f, &contents);

    for (layout, upstream_repo, content) in [(&busybox, "ciab-test/busybox", &contents[0]), (&multi, "ciab-test/multi", &contents[1])] {
        for (digest, _) in layout.manifests().unwrap() {
            let want = get_ok(&origin, &format!("/v2/{upstream_repo}/manifests/{digest}"));
            let got = get_ok(&served, &format!("/v2/{}/manifests/{digest}", content.repo));
            assert!(want == got, "manifest {digest} of {} differs", content.repo);
        }
        let by_tag = get_ok(&served, &format!("/v2/{}/manifests/{}", content.repo, content.tag.as_deref().unwrap()));
        assert_eq!(fx::sha256_digest(&by_tag), layout.digest, "the tag resolves to the pinned digest");
        for blob in layout.blobs().unwrap() {
            let want = layout.blob(&blob).unwrap();
            let is_manifest = layout.manifests().unwrap().iter().any(|(d, _)| *d == blob);
            if is_manifest {
                continue;
            }
            let got = get_ok(&served, &format!("/v2/{}/blobs/{blob}", content.repo));
            assert!(want == got, "blob {blob} of {} differs", content.repo);
        }
    }
    // Repositories of different upstreams do not see each other's content.
    let (status, _) = served.get(&format!("/v2/registry.k8s.io/ciab-test/busybox/manifests/{}", multi.digest), ACCEPT).unwrap();
    assert_eq!(status, 404);
    // The read-only registry refuses uploads.
    let post = fx::http_request(&served.host(), "POST", "/v2/registry.k8s.io/ciab-test/busybox/blobs/uploads/", &[]).unwrap();
    assert!(post.status >= 400, "upload answered {}", post.status);
}

#[test]
fn only_the_platforms_asked_for_are_carried() {
    let tmp = tempfile::tempdir().unwrap();
    let multi = fx::two_platform_layout(&tmp.path().join("multi"), "2.0").unwrap();
    let origin = LocalRegistry::start_writable(&tmp.path().join("origin")).unwrap();
    origin.push(&multi, "ciab-test/multi", "2.0").unwrap();
    let f = fetcher(&tmp.path().join("cache"), &[origin.host()]);
    let amd64 = image("quay.io/ciab-test/multi:2.0", Some(&multi.digest), &["linux/amd64"], from_registry(&origin.host(), "ciab-test/multi:2.0"));
    let fetched = f.images(std::slice::from_ref(&amd64)).unwrap();
    assert_eq!(fetched[0].content.manifests.len(), 2, "the index keeps its digest; one platform manifest");
    // The two-platform image's linux/amd64 entry is this busybox image.
    let amd64_image = fx::busybox_layout(&tmp.path().join("bb"), "x").unwrap();
    let amd_blobs = amd64_image.blobs().unwrap();
    for blob in multi.blobs().unwrap() {
        let d = Digest::parse(&blob).unwrap();
        let wanted = amd_blobs.contains(&blob) || blob == multi.digest;
        assert_eq!(f.store().contains(&d), wanted, "blob {blob}: carried iff part of linux/amd64");
    }

    let s390 = ImageSpec { platforms: vec!["linux/s390x".into()], ..amd64 };
    let err = format!("{:#}", f.images(&[s390]).unwrap_err());
    assert!(err.contains("quay.io/ciab-test/multi:2.0") && err.contains("has no linux/s390x image (it has linux/amd64, linux/arm64)"), "{err}");
}

#[test]
fn oci_layouts_and_docker_archives_are_sources_too() {
    let tmp = tempfile::tempdir().unwrap();
    let busybox = fx::busybox_layout(&tmp.path().join("busybox"), "1.0").unwrap();
    let archive = tmp.path().join("busybox.tar");
    fx::docker_archive(&busybox, &archive, "ciab-test/busybox:1.0").unwrap();
    let f = fetcher(&tmp.path().join("cache"), &[]);

    let from_layout = image(
        "docker.io/ciab-test/busybox:1.0",
        Some(&busybox.digest),
        &["linux/amd64"],
        ImageSource::OciLayout { path: busybox.dir.clone(), tag: Some("1.0".into()) },
    );
    assert_eq!(f.resolve_image(&from_layout).unwrap().to_string(), busybox.digest);
    let missing_tag = ImageSpec { source: ImageSource::OciLayout { path: busybox.dir.clone(), tag: Some("9.9".into()) }, ..from_layout.clone() };
    let err = format!("{:#}", f.resolve_image(&missing_tag).unwrap_err());
    assert!(err.contains("no image tagged \"9.9\" (tags present: 1.0)"), "{err}");

    // A docker archive has no manifest of its own: the lock pins the one
    // made from it, and making it again gives the same digest.
    let from_archive = image("docker.io/ciab-test/busybox-archive:1.0", None, &["linux/amd64"], ImageSource::DockerArchive { path: archive.clone() });
    let pinned = f.resolve_image(&from_archive).unwrap();
    assert_eq!(f.resolve_image(&from_archive).unwrap(), pinned);
    let from_archive = ImageSpec { digest: Some(pinned.to_string()), ..from_archive };

    let fetched = f.images(&[from_layout, from_archive]).unwrap();
    let contents: Vec<RepoContent> = fetched.iter().map(|i| i.content.clone()).collect();
    let served = serve(&tmp.path().join("bundle"), &f, &contents);
    let manifest: serde_json::Value = serde_json::from_slice(&get_ok(&served, &format!("/v2/docker.io/ciab-test/busybox-archive/manifests/{pinned}"))).unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&get_ok(&served, &format!("/v2/docker.io/ciab-test/busybox-archive/blobs/{}", manifest["config"]["digest"].as_str().unwrap()))).unwrap();
    // The archive's layers are uncompressed: their digests are the config's diff_ids.
    let layers: Vec<&str> = manifest["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap()).collect();
    let diff_ids: Vec<&str> = config["rootfs"]["diff_ids"].as_array().unwrap().iter().map(|d| d.as_str().unwrap()).collect();
    assert_eq!(layers, diff_ids);
    assert_eq!(manifest["layers"][0]["mediaType"], "application/vnd.oci.image.layer.v1.tar");
    get_ok(&served, &format!("/v2/docker.io/ciab-test/busybox/manifests/{}", busybox.digest));
}

/// The busybox image's layer (the largest blob) and config.
fn layer_and_config(layout: &Layout) -> (String, String) {
    let manifest: serde_json::Value = serde_json::from_slice(&layout.blob(&layout.digest).unwrap()).unwrap();
    (manifest["layers"][0]["digest"].as_str().unwrap().to_owned(), manifest["config"]["digest"].as_str().unwrap().to_owned())
}

#[test]
fn corrupt_or_missing_content_never_enters_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let busybox = fx::busybox_layout(&tmp.path().join("busybox"), "1.0").unwrap();
    let (layer, config) = layer_and_config(&busybox);
    let layer_size = busybox.blob(&layer).unwrap().len();
    let stand_in = StandIn::serve(&busybox, Fault::WrongBlob { digest: layer.clone(), bytes: vec![0; layer_size] }).unwrap();
    let insecure = vec![stand_in.host()];
    let f = fetcher(&tmp.path().join("cache"), &insecure);
    let spec = image("docker.io/ciab-test/busybox:1.0", Some(&busybox.digest), &["linux/amd64"], from_registry(&stand_in.host(), "ciab-test/busybox:1.0"));
    let layer_d = Digest::parse(&layer).unwrap();

    // A blob whose bytes do not hash to its digest.
    let err = format!("{:#}", f.images(std::slice::from_ref(&spec)).unwrap_err());
    assert!(err.contains("docker.io/ciab-test/busybox:1.0") && err.contains(&format!("blob {layer} does not match its digest")), "{err}");
    assert!(!f.store().contains(&layer_d));
    assert!(f.store().contains(&Digest::parse(&config).unwrap()), "the good config blob was kept");
    let config_requests = stand_in.blob_requests(&config);

    // Rerun after the fault is gone: what is complete is not fetched again.
    stand_in.set_fault(Fault::None);
    f.images(std::slice::from_ref(&spec)).expect("rerun");
    assert_eq!(stand_in.blob_requests(&config), config_requests, "the complete config blob was fetched again");
    assert_eq!(fx::sha256_digest(&std::fs::read(f.store().path(&layer_d)).unwrap()), layer);

    // A download cut short resumes where it stopped (Range) and ends verified.
    let f2 = fetcher(&tmp.path().join("cache2"), &insecure);
    stand_in.set_fault(Fault::TruncateBlob { digest: layer.clone(), after: layer_size / 3 });
    let before = stand_in.blob_requests(&layer);
    f2.images(std::slice::from_ref(&spec)).expect("resumed fetch");
    assert_eq!(stand_in.blob_requests(&layer) - before, 2, "one cut-short request and one resumed request");
    assert_eq!(fx::sha256_digest(&std::fs::read(f2.store().path(&layer_d)).unwrap()), layer);

    // A manifest that does not match the pinned digest.
    let f3 = fetcher(&tmp.path().join("cache3"), &insecure);
    stand_in.set_fault(Fault::WrongManifest { reference: busybox.digest.clone(), bytes: br#"{"schemaVersion":2}"#.to_vec() });
    let err = format!("{:#}", f3.images(std::slice::from_ref(&spec)).unwrap_err());
    assert!(err.contains("docker.io/ciab-test/busybox:1.0") && err.contains(&busybox.digest), "{err}");
    assert!(!f3.store().contains(&Digest::parse(&busybox.digest).unwrap()));

    // A digest the registry does not have (the tag moved, or a typo).
    stand_in.set_fault(Fault::None);
    let wrong = ImageSpec { digest: Some(Digest::of(b"something else").to_string()), ..spec.clone() };
    let err = format!("{:#}", f3.images(&[wrong]).unwrap_err());
    assert!(err.contains("docker.io/ciab-test/busybox:1.0") && err.contains(&Digest::of(b"something else").to_string()), "{err}");

    // A reference that does not exist.
    let nope = image("docker.io/ciab-test/nope:1", None, &["linux/amd64"], from_registry(&stand_in.host(), "ciab-test/nope:1"));
    let err = format!("{:#}", f3.resolve_image(&nope).unwrap_err());
    assert!(err.contains("ciab-test/nope:1"), "{err}");

    // An unreachable registry.
    let closed = ciab_qemu_tests::harness::free_port().unwrap();
    let host = format!("127.0.0.1:{closed}");
    let f4 = fetcher(&tmp.path().join("cache4"), std::slice::from_ref(&host));
    let gone = ImageSpec { source: from_registry(&host, "ciab-test/busybox:1.0"), ..spec };
    let err = format!("{:#}", f4.images(&[gone]).unwrap_err());
    assert!(err.contains("docker.io/ciab-test/busybox:1.0") && err.contains(&host), "{err}");
    assert!(err.contains("Connection refused"), "the cause is named: {err}");
}

#[test]
fn artifacts_are_checked_and_resumed() {
    let tmp = tempfile::tempdir().unwrap();
    let busybox = fx::busybox_layout(&tmp.path().join("busybox"), "1.0").unwrap();
    let (layer, _) = layer_and_config(&busybox);
    let stand_in = StandIn::serve(&busybox, Fault::None).unwrap();
    let f = fetcher(&tmp.path().join("cache"), &[]);
    let url = format!("http://{}/v2/any/blobs/{layer}", stand_in.host());
    let hex = layer.trim_start_matches("sha256:");
    let artifact = |url: &str, sha: Option<&str>| ArtifactSpec { url: url.into(), sha256: sha.map(str::to_owned), dest: "kaas/layer.tar.gz".into(), origin: Origin::default() };

    // Unpinned (what `ciab lock` does): the sha256 is learned.
    let (d, size) = f.artifacts(&[artifact(&url, None)]).unwrap().remove(0);
    assert_eq!((d.to_string(), size), (layer.clone(), busybox.blob(&layer).unwrap().len() as u64));

    // A pinned sha256 the file does not have.
    let f2 = fetcher(&tmp.path().join("cache2"), &[]);
    let wrong = "0".repeat(64);
    let err = format!("{:#}", f2.artifacts(&[artifact(&url, Some(&wrong))]).unwrap_err());
    assert!(err.contains("artifact kaas/layer.tar.gz") && err.contains("does not match its digest") && err.contains("ciab lock --update"), "{err}");
    assert!(!f2.store().contains(&Digest::from_hex(&wrong).unwrap()));

    // Cut short, then resumed by the next fetch.
    let third = busybox.blob(&layer).unwrap().len() / 3;
    stand_in.set_fault(Fault::TruncateBlob { digest: layer.clone(), after: third });
    assert!(f2.artifacts(&[artifact(&url, Some(hex))]).is_err(), "a cut-short download is an error");
    stand_in.set_fault(Fault::None);
    let (d, _) = f2.artifacts(&[artifact(&url, Some(hex))]).unwrap().remove(0);
    assert_eq!(d.to_string(), layer);

    // A local file that does not exist names the artifact.
    let err = format!("{:#}", f2.artifacts(&[artifact("/nonexistent/file", Some(&"1".repeat(64)))]).unwrap_err());
    assert!(err.contains("artifact kaas/layer.tar.gz (/nonexistent/file): cannot open the file"), "{err}");
}

#[test]
fn a_build_refuses_unpinned_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = tmp.path().join("unpinned.toml");
    let eval = ciab_qemu_tests::images::repo_root().join("images/eval.toml");
    std::fs::write(&spec, format!("include = [{:?}]\n[[registry.images]]\nref = \"registry.k8s.io/pause:3.10\"\n", eval.display().to_string())).unwrap();
    let opts = ciab_qemu_tests::images::options(&spec, &tmp.path().join("out"), &tmp.path().join("cache")).unwrap();
    let err = format!("{:#}", ciab_builder::build::build(&opts).unwrap_err());
    assert!(err.contains("image registry.k8s.io/pause:3.10") && err.contains("Run `ciab lock"), "{err}");
    assert!(!tmp.path().join("out").exists(), "nothing written");
}

/// The guest side of the QEMU test: waits for the registry, pulls by digest
/// through its API and by upstream name through containerd, runs the pulled
/// image, and reports boot-relative times on the console.
const GUEST_CHECK: &str = r#"#!/bin/sh
say() { echo "ciab-registry-check: $*"; }
ACCEPT="application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json"
n=0
until curl -fsS -o /dev/null http://127.0.0.1:5050/v2/; do
    n=$((n + 1))
    if [ "$n" -ge 1800 ]; then
        say "FAIL: the registry did not answer within 180 s: $(systemctl is-active docker-registry)"
        exit 1
    fi
    sleep 0.1
done
say "registry-ready uptime=$(cut -d' ' -f1 /proc/uptime)"
say "api-manifest sha256:$(curl -fsS -H "Accept: $ACCEPT" http://127.0.0.1:5050/v2/@MULTI_REPO@/manifests/@MULTI_DIGEST@ | sha256sum | cut -d' ' -f1)"
# Plain `ctr image pull`, as an operator types it: the registry overlay's
# ctr wrapper adds the mirrors' hosts dir.
for ref in @BUSYBOX_REF@ @MULTI_REPO@@@MULTI_DIGEST@; do
    if ctr --timeout 300s image pull "$ref" >/run/ctr-pull.log 2>&1; then
        say "ctr-pull ok $ref"
    else
        say "FAIL ctr-pull $ref: $(tail -n 3 /run/ctr-pull.log | tr '\n' ' ')"
    fi
done
say "ctr-run $(ctr run --rm @BUSYBOX_REF@ check /bin/busybox echo hello-from-the-bundle 2>&1 | tr '\n' ' ')"
until systemctl is-active -q multi-user.target; do sleep 0.5; done
say "multi-user-us $(systemctl show -p ActiveEnterTimestampMonotonic --value multi-user.target) registry-active-us $(systemctl show -p ActiveEnterTimestampMonotonic --value docker-registry.service)"
say "done"
"#;

const GUEST_UNIT: &str = "[Unit]
Description=ciab test: the offline registry with no network
After=containerd.service docker-registry.service
Wants=containerd.service docker-registry.service

[Service]
Type=simple
ExecStart=/usr/local/sbin/ciab-registry-check
StandardOutput=journal+console
StandardError=journal+console
";

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().skip_while(|w| *w != key).nth(1).or_else(|| line.split_whitespace().find_map(|w| w.strip_prefix(&format!("{key}="))))
}

/// Builds `tiny` plus the registry layer with a bundle of test images pushed
/// to a local registry, boots it with no NIC, and pulls on the box.
#[test]
fn the_box_serves_its_bundle_with_no_network() {
    use ciab_builder::qemu::{Machine, Network};
    use ciab_qemu_tests::{harness::Vm, images};
    let work = images::work_dir().join("registry-box");
    let _ = std::fs::remove_dir_all(&work);
    for d in ["images", "overlays/registry-check/usr/local/sbin", "overlays/registry-check/etc/systemd/system/multi-user.target.wants"] {
        std::fs::create_dir_all(work.join(d)).unwrap();
    }
    let busybox = fx::busybox_layout(&work.join("layouts/busybox"), "1.0").unwrap();
    let multi = fx::two_platform_layout(&work.join("layouts/multi"), "2.0").unwrap();
    let origin = LocalRegistry::start_writable(&work.join("origin")).unwrap();
    origin.push(&busybox, "ciab-test/busybox", "1.0").unwrap();
    origin.push(&multi, "ciab-test/multi", "2.0").unwrap();

    let overlays = work.join("overlays");
    std::os::unix::fs::symlink(images::repo_root().join("overlays/registry"), overlays.join("registry")).unwrap();
    let script = GUEST_CHECK
        .replace("@MULTI_REPO@", "ghcr.io/ciab-test/multi")
        .replace("@MULTI_DIGEST@", &multi.digest)
        .replace("@BUSYBOX_REF@", "registry.k8s.io/ciab-test/busybox:1.0");
    let check = overlays.join("registry-check/usr/local/sbin/ciab-registry-check");
    std::fs::write(&check, script).unwrap();
    std::fs::set_permissions(&check, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(overlays.join("registry-check/etc/systemd/system/ciab-registry-check.service"), GUEST_UNIT).unwrap();
    std::os::unix::fs::symlink("../ciab-registry-check.service", overlays.join("registry-check/etc/systemd/system/multi-user.target.wants/ciab-registry-check.service")).unwrap();

    let tiny = images::repo_root().join("images/tiny.toml");
    let spec = work.join("images/registry-box.toml");
    std::fs::write(
        &spec,
        format!(
            r#"include = [{tiny:?}]
# Named `tiny`: first boot sizes the box by the image name, and this VM is tiny.
[image]
name = "tiny"
[packages]
install = ["docker-registry", "containerd", "curl"]
[overlays]
layers = ["registry", "registry-check"]
[outputs]
formats = ["raw"]

[[registry.images]]
ref = "registry.k8s.io/ciab-test/busybox:1.0"
digest = "{}"
source = "{}/ciab-test/busybox:1.0"

[[registry.images]]
ref = "ghcr.io/ciab-test/multi:2.0"
digest = "{}"
platforms = ["linux/amd64", "linux/arm64"]
source = "{}/ciab-test/multi:2.0"
"#,
            busybox.digest,
            origin.host(),
            multi.digest,
            origin.host(),
            tiny = tiny.display().to_string()
        ),
    )
    .unwrap();
    let mut opts = images::options(&spec, &work.join("out"), &ciab_builder::cache::default_root()).unwrap();
    opts.fetch.insecure_registries = vec![origin.host()];
    let out = images::build_with(&opts).expect("building the registry box");
    drop(origin);

    let manifest: ciab_core::contract::Manifest = serde_json::from_slice(&std::fs::read(out.out_dir.join("manifest.json")).unwrap()).unwrap();
    let bundle: Vec<(String, String)> = manifest.bundle.images.iter().map(|i| (i.reference.clone(), i.digest.clone())).collect();
    assert_eq!(
        bundle,
        vec![("registry.k8s.io/ciab-test/busybox:1.0".into(), busybox.digest.clone()), ("ghcr.io/ciab-test/multi:2.0".into(), multi.digest.clone())]
    );

    let sbom: serde_json::Value = serde_json::from_slice(&std::fs::read(out.out_dir.join("sbom.spdx.json")).unwrap()).unwrap();
    let pkg = sbom["packages"].as_array().unwrap().iter().find(|p| p["name"] == "registry.k8s.io/ciab-test/busybox:1.0").expect("the image in the SBOM");
    assert_eq!(pkg["primaryPackagePurpose"], "CONTAINER");
    assert_eq!(pkg["checksums"][0]["checksumValue"].as_str(), Some(busybox.digest.trim_start_matches("sha256:")));

    let image = ciab_builder::run::resolve_image(&out.out_dir, true).expect("verified image");
    let disk = images::disk_with_image(&image, &work.join("vm"), "8G").unwrap();
    let mut m = Machine::new(&disk);
    m.accel = ciab_builder::run::choose_accel("auto").unwrap();
    m.memory_mib = 1536;
    m.cpus = ciab_qemu_tests::harness::SMALL_GUEST_CPUS;
    m.snapshot = true;
    m.network = Network::None;
    let vm = Vm::start(&m).expect("starting QEMU");
    let done = vm.wait_for_line("ciab-registry-check: done", std::time::Duration::from_secs(900));
    let lines: Vec<String> = vm.serial_lines().into_iter().filter(|l| l.contains("ciab-registry-check:")).collect();
    if let Err(e) = done {
        panic!("the registry check did not finish:\n{}\n{e:#}", lines.join("\n"));
    }
    let find = |what: &str| lines.iter().find(|l| l.contains(what)).cloned().unwrap_or_else(|| panic!("no {what} line in:\n{}", lines.join("\n")));
    assert!(!lines.iter().any(|l| l.contains("FAIL")), "{}", lines.join("\n"));
    assert!(find("api-manifest").contains(&multi.digest), "{}", lines.join("\n"));
    assert!(find("ctr-pull ok registry.k8s.io/ciab-test/busybox:1.0").contains("ok"));
    assert!(find(&format!("ctr-pull ok ghcr.io/ciab-test/multi@{}", multi.digest)).contains("ok"));
    assert!(find("ctr-run").contains("hello-from-the-bundle"), "{}", lines.join("\n"));
    // First boot's `registry` step checks every image of bundle.json before `ready`.
    // (It may have come before the check's last line, which the wait passed.)
    let ready_line = match vm.serial_lines().into_iter().find(|l| l.contains(ciab_core::contract::READY_LINE)) {
        Some(line) => Ok(line),
        None => vm.wait_for_line(ciab_core::contract::READY_LINE, std::time::Duration::from_secs(600)),
    };
    let fb: Vec<String> = vm.serial_lines().into_iter().filter(|l| l.contains("] registry") || l.contains("ciab-firstboot: registry")).collect();
    assert!(ready_line.is_ok(), "first boot did not finish: {fb:?}\n{:#}", ready_line.unwrap_err());
    // Either the step found both images served (`already done`) or it waited for them.
    assert!(
        fb.iter().any(|l| l.contains("] registry") && l.contains("done")) || fb.iter().any(|l| l.contains("2 image(s) served on http://127.0.0.1:5050")),
        "{fb:?}"
    );
    let ready: f64 = field(&find("registry-ready"), "uptime").and_then(|v| v.parse().ok()).expect("uptime");
    let times = find("multi-user-us");
    let us = |k: &str| field(&times, k).and_then(|v| v.parse::<f64>().ok()).map(|v| v / 1e6).expect("timestamp");
    eprintln!(
        "registry box: registry answering {ready:.1} s after boot; docker-registry active at {:.1} s; multi-user.target at {:.1} s (registry answered {:+.1} s relative to multi-user)",
        us("registry-active-us"),
        us("multi-user-us"),
        ready - us("multi-user-us")
    );
}

#[test]
fn ciab_lock_pins_images_and_artifacts_in_the_spec_file() {
    let tmp = tempfile::tempdir().unwrap();
    let busybox = fx::busybox_layout(&tmp.path().join("busybox"), "1.0").unwrap();
    let origin = LocalRegistry::start_writable(&tmp.path().join("origin")).unwrap();
    origin.push(&busybox, "ciab-test/busybox", "1.0").unwrap();
    std::fs::write(tmp.path().join("k3s"), b"not really k3s\n").unwrap();
    let eval = ciab_qemu_tests::images::repo_root().join("images/eval.toml");
    let spec = tmp.path().join("locked.toml");
    let text = format!(
        "include = [{:?}]\n\n# the test image\n[[registry.images]]\nref = \"registry.k8s.io/ciab-test/busybox:1.0\"  # keep me\nsource = \"{}/ciab-test/busybox:1.0\"\n\n[[artifacts]]\nurl = \"k3s\"\ndest = \"kaas/k3s\"\n",
        eval.display().to_string(),
        origin.host()
    );
    std::fs::write(&spec, &text).unwrap();
    let ciab = ciab_qemu_tests::images::ciab_bin().unwrap();
    let lock = || {
        ciab_core::exec::Cmd::new(&ciab)
            .arg("lock")
            .arg(&spec)
            .args(["--insecure-registry", &origin.host(), "--cache-dir"])
            .arg(tmp.path().join("cache"))
            .run()
            .expect("ciab lock")
    };
    let out = lock();
    assert!(out.contains(&format!("registry.k8s.io/ciab-test/busybox:1.0 digest = {}", busybox.digest)), "{out}");
    let locked = std::fs::read_to_string(&spec).unwrap();
    assert!(locked.contains("# the test image") && locked.contains("# keep me"), "{locked}");
    let resolved = ciab_builder::spec::Spec::load(&spec).unwrap();
    assert_eq!(resolved.images[0].digest.as_deref(), Some(busybox.digest.as_str()));
    assert_eq!(resolved.artifacts[0].sha256.as_deref(), Some(Digest::of(b"not really k3s\n").hex()));
    ciab_builder::fetch::check_pinned(&resolved).expect("pinned");
    // Nothing left to pin: the file is not rewritten.
    assert!(lock().contains("already pinned"));
    assert_eq!(std::fs::read_to_string(&spec).unwrap(), locked);

    // A ref that does not exist at its source fails and leaves the file alone.
    std::fs::write(&spec, text.replace("ciab-test/busybox:1.0\"\n\n", "ciab-test/nope:1.0\"\n\n")).unwrap();
    let before = std::fs::read_to_string(&spec).unwrap();
    let err = ciab_core::exec::Cmd::new(&ciab)
        .arg("lock")
        .arg(&spec)
        .args(["--insecure-registry", &origin.host(), "--cache-dir"])
        .arg(tmp.path().join("cache"))
        .run()
        .unwrap_err();
    assert!(format!("{err:#}").contains("ciab-test/nope:1.0"), "{err:#}");
    assert_eq!(std::fs::read_to_string(&spec).unwrap(), before);
}
