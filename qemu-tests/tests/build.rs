//! The build pipeline end to end: caching, incremental rebuilds,
//! reproducibility, verification of tampered outputs, and bad input.

use ciab_builder::progress::Outcome;
use ciab_qemu_tests::images;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn outcomes(r: &ciab_builder::build::BuildResult) -> BTreeMap<String, Outcome> {
    r.stages.iter().map(|(s, o, _)| (s.clone(), *o)).collect()
}

fn sha(p: &Path) -> String {
    ciab_builder::fsutil::sha256_file(p).unwrap()
}

/// A spec in a scratch checkout that includes the real tiny spec and adds one
/// overlay layer with one file, so the test can change that file.
fn scratch_spec(dir: &Path, motd: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("images")).unwrap();
    std::fs::create_dir_all(dir.join("overlays/extra/etc")).unwrap();
    std::fs::write(dir.join("overlays/extra/etc/motd"), motd).unwrap();
    let tiny = images::repo_root().join("images/tiny.toml");
    let spec = dir.join("images/tinymod.toml");
    std::fs::write(
        &spec,
        format!("include = [{:?}]\n[image]\nname = \"tinymod\"\n[overlays]\nlayers = [\"extra\"]\n", tiny.display().to_string()),
    )
    .unwrap();
    spec
}

#[test]
fn rebuilds_only_what_changed() {
    let dir = images::work_dir().join("incremental");
    let _ = std::fs::remove_dir_all(&dir);
    let spec = scratch_spec(&dir, "one\n");
    let out = dir.join("out");
    let opts = images::options(&spec, &out, &ciab_builder::cache::default_root()).unwrap();
    let first = images::build_with(&opts).unwrap();
    let raw1 = sha(&first.out_dir.join("tinymod.raw"));

    // No change: every stage comes from the cache and the bytes are the same.
    let again = images::build_with(&opts).unwrap();
    let o = outcomes(&again);
    for stage in ["rootfs", "overlays", "bundle", "boot", "filesystems", "disk", "formats", "manifest"] {
        assert_eq!(o[stage], Outcome::Cached, "{stage} should be cached: {o:?}");
    }
    assert_eq!(sha(&again.out_dir.join("tinymod.raw")), raw1);

    // One overlay file changed: mmdebstrap and the boot files are reused,
    // everything from the overlays on is rebuilt.
    // Content no earlier run can have cached.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    std::fs::write(dir.join("overlays/extra/etc/motd"), format!("changed at {nanos}\n")).unwrap();
    let changed = images::build_with(&opts).unwrap();
    let o = outcomes(&changed);
    for stage in ["rootfs", "bundle", "boot"] {
        assert_eq!(o[stage], Outcome::Cached, "{stage} should be cached: {o:?}");
    }
    for stage in ["overlays", "filesystems", "disk", "formats", "manifest"] {
        assert_eq!(o[stage], Outcome::Ran, "{stage} should rerun: {o:?}");
    }
    assert_ne!(sha(&changed.out_dir.join("tinymod.raw")), raw1);
    ciab_builder::verify::verify_dir(&changed.out_dir, None).unwrap();
}

#[test]
fn same_spec_and_debs_give_identical_bytes() {
    let shared = images::tiny().unwrap();
    // A second build with an empty stage cache: only the .deb downloads are reused.
    let cache = images::work_dir().join("repro-cache");
    let _ = std::fs::remove_dir_all(&cache);
    std::fs::create_dir_all(&cache).unwrap();
    let debs = ciab_builder::cache::default_root().join("debs");
    ciab_core::exec::Cmd::new("cp").arg("-al").arg(&debs).arg(cache.join("debs")).run().unwrap();
    let out = images::work_dir().join("repro-out");
    let opts = images::options(&images::repo_root().join("images/tiny.toml"), &out, &cache).unwrap();
    let second = images::build_with(&opts).unwrap();
    assert!(outcomes(&second).values().all(|o| *o == Outcome::Ran), "nothing may come from a cache: {:?}", second.stages);
    for file in ["tiny.raw", "tiny.qcow2", "manifest.json", "sbom.spdx.json"] {
        assert_eq!(sha(&shared.join(file)), sha(&second.out_dir.join(file)), "{file} differs between two builds");
    }
    let _ = std::fs::remove_dir_all(&cache);
}

/// Copies an output directory (sparse) so the test can tamper with it.
fn copy_out(src: &Path, dst: &Path) {
    let _ = std::fs::remove_dir_all(dst);
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap().flatten() {
        let from = std::fs::File::open(e.path()).unwrap();
        let to = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(dst.join(e.file_name())).unwrap();
        to.set_len(from.metadata().unwrap().len()).unwrap();
        ciab_builder::blockmap::copy_sparse(&from, &to, 0).unwrap();
    }
}

fn flip_byte(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x01;
    f.write_all_at(&b, offset).unwrap();
}

#[test]
fn verify_catches_any_flipped_byte() {
    let out = images::tiny().unwrap();
    let manifest = ciab_builder::verify::verify_dir(&out, None).unwrap();
    let copy = images::work_dir().join("tamper");

    // A byte inside the root filesystem's data.
    copy_out(&out, &copy);
    let root = manifest.partitions.iter().find(|p| p.label == "root-a").unwrap();
    let in_root = manifest.disk.block_map.iter().find(|r| r.offset > root.offset && r.offset < root.offset + root.size).unwrap();
    flip_byte(&copy.join("tiny.raw"), in_root.offset + 100);
    let err = format!("{:#}", ciab_builder::verify::verify_dir(&copy, None).unwrap_err());
    assert!(err.contains("tiny.raw: expected sha256"), "{err}");
    assert!(err.contains("partition 3 (root-a)"), "{err}");
    assert!(!err.contains("tiny.qcow2"), "only the raw image was touched: {err}");

    // A byte of the qcow2.
    copy_out(&out, &copy);
    flip_byte(&copy.join("tiny.qcow2"), 4096);
    let err = format!("{:#}", ciab_builder::verify::verify_dir(&copy, None).unwrap_err());
    assert!(err.contains("tiny.qcow2: expected sha256"), "{err}");

    // A byte of the manifest itself: the signature fails first.
    copy_out(&out, &copy);
    flip_byte(&copy.join("manifest.json"), 40);
    let err = format!("{:#}", ciab_builder::verify::verify_dir(&copy, None).unwrap_err());
    assert!(err.contains("signature does not verify"), "{err}");

    // The SBOM is covered through its digest in the signed manifest.
    copy_out(&out, &copy);
    flip_byte(&copy.join("sbom.spdx.json"), 10);
    let err = format!("{:#}", ciab_builder::verify::verify_dir(&copy, None).unwrap_err());
    assert!(err.contains("sbom.spdx.json: expected sha256"), "{err}");

    // Another key than the one that signed.
    copy_out(&out, &copy);
    let other = images::work_dir().join("other.key");
    let _ = std::fs::remove_file(&other);
    let _ = std::fs::remove_file(ciab_builder::sign::public_key_path(&other));
    ciab_builder::sign::keygen(&other).unwrap();
    let err = format!("{:#}", ciab_builder::verify::verify_dir(&copy, Some(&ciab_builder::sign::public_key_path(&other))).unwrap_err());
    assert!(err.contains("signature does not verify"), "{err}");
    let _ = std::fs::remove_dir_all(&copy);
}

#[test]
fn manifest_and_sbom_describe_the_image() {
    let out = images::tiny().unwrap();
    let m = ciab_builder::verify::verify_dir(&out, None).unwrap();
    assert_eq!(m.image.name, "tiny");
    assert!(m.packages.iter().any(|p| p.name == "systemd"));
    let kernel_pkg = format!("linux-image-{}", m.image.kernel);
    assert!(m.packages.iter().any(|p| p.name == kernel_pkg), "{kernel_pkg} not among the packages");
    assert_eq!(m.partitions.iter().map(|p| p.label.as_str()).collect::<Vec<_>>(), ["bios", "ESP", "root-a", "root-b", "bundle"]);
    // The raw image is sparse: its block map covers far less than its size.
    let mapped: u64 = m.disk.block_map.iter().map(|r| r.length).sum();
    assert!(mapped < m.disk.size / 2, "block map {mapped} of {}", m.disk.size);
    let sbom: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("sbom.spdx.json")).unwrap()).unwrap();
    assert_eq!(sbom["spdxVersion"], "SPDX-2.3");
    let names: Vec<&str> = sbom["packages"].as_array().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
    for p in &m.packages {
        assert!(names.contains(&p.name.as_str()), "{} missing from the SBOM", p.name);
    }
    // No password anywhere in the image: every account in /etc/shadow is
    // locked, and root has no shadow entry at all ('*' in passwd).
    let root = m.partitions.iter().find(|p| p.label == "root-a").unwrap();
    let shadow = ciab_core::exec::Cmd::new("debugfs")
        .args(["-R", "cat /etc/shadow"])
        .arg(format!("{}?offset={}", out.join("tiny.raw").display(), root.offset))
        .run()
        .unwrap();
    assert!(!shadow.is_empty());
    for line in shadow.lines() {
        let hash = line.split(':').nth(1).unwrap_or("");
        assert!(hash.starts_with('!') || hash.starts_with('*'), "account with a password: {line}");
    }
}

#[test]
fn unknown_package_fails_with_apts_message_and_no_output() {
    let dir = images::work_dir().join("badpkg");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("images")).unwrap();
    let tiny = images::repo_root().join("images/tiny.toml");
    let spec = dir.join("images/badpkg.toml");
    std::fs::write(
        &spec,
        format!("include = [{:?}]\n[image]\nname = \"badpkg\"\n[packages]\ninstall = [\"ciab-no-such-package\"]\n", tiny.display().to_string()),
    )
    .unwrap();
    let out = dir.join("out");
    let opts = images::options(&spec, &out, &ciab_builder::cache::default_root()).unwrap();
    let err = format!("{:#}", images::build_with(&opts).unwrap_err());
    assert!(err.starts_with("mmdebstrap: Unable to locate package ciab-no-such-package: check `packages.install`"), "{err}");
    assert!(!out.join("badpkg").exists(), "no output may be left behind");
}

/// Ctrl-C in the middle of mmdebstrap: the build stops with a non-zero exit,
/// leaves no output, and the next build detaches and removes what it left.
#[test]
fn interrupted_build_leaves_nothing_behind() {
    use std::os::unix::process::CommandExt;
    let ciab = images::ciab_bin().unwrap();
    let dir = images::work_dir().join("interrupt");
    let _ = std::fs::remove_dir_all(&dir);
    let cache = dir.join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let out = dir.join("out");
    let mut child = std::process::Command::new(&ciab)
        .arg("build")
        .arg(images::repo_root().join("images/tiny.toml"))
        .arg("-o")
        .arg(&out)
        .arg("--cache-dir")
        .arg(&cache)
        .arg("--key")
        .arg(images::test_key())
        .arg("--firstboot-bin")
        .arg(images::firstboot_bin().unwrap())
        // Its own process group, like a job in a shell: Ctrl-C reaches the whole group.
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until mmdebstrap is at work inside the stage's temporary directory.
    let rootfs = cache.join("stages/rootfs");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let busy = std::fs::read_dir(&rootfs).map(|d| d.flatten().any(|e| e.path().join("tree/usr").exists())).unwrap_or(false);
        if busy {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "mmdebstrap never started");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let pgid = format!("-{}", child.id());
    ciab_core::exec::Cmd::new("kill").args(["-INT", "--", pgid.as_str()]).run().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "an interrupted build must not exit 0");
    assert!(!out.join("tiny").exists(), "no output after an interrupted build");
    // Give mmdebstrap's own cleanup a moment, then open the cache as the next build would.
    std::thread::sleep(std::time::Duration::from_secs(2));
    drop(ciab_builder::cache::Cache::open(&cache).unwrap());
    let left: Vec<_> = std::fs::read_dir(&rootfs).unwrap().flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "stage temporaries left behind: {left:?}");
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(&*dir.to_string_lossy()), "mounts left behind:\n{mounts}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// An upstream guest image the spec lists ("Ubuntu 24.04", scs-0104's
/// mandatory image) is fetched like an artifact: where it cannot be
/// fetched the build fails, naming the image, its entry and the URL, and
/// leaves no output. A stand-in file the spec marks goes into the bundle
/// under that name, with scs-0102's properties and the mark.
#[test]
fn upstream_guest_images_are_fetched_or_fail_the_build() {
    let dir = images::work_dir().join("upstream-guest");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("images")).unwrap();
    let stand_in = dir.join("images/noble-stand-in.qcow2");
    ciab_core::exec::Cmd::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&stand_in).arg("2G").run().unwrap();
    let pin = sha(&stand_in);
    let tiny = images::repo_root().join("images/tiny.toml");
    let spec = |name: &str, url: &str, pin: &str, mark: &str| {
        let path = dir.join(format!("images/{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "include = [{tiny:?}]\n[image]\nname = \"{name}\"\n\n[[guest_images]]\nname = \"Ubuntu 24.04\"\nurl = \"{url}\"\nsha256 = \"{pin}\"\ndisk_format = \"qcow2\"\n{mark}\n[guest_images.properties]\nimage_source = \"https://cloud-images.ubuntu.com/releases/noble/release-20240423/ubuntu-24.04-server-cloudimg-amd64.img\"\nos_distro = \"ubuntu\"\nos_version = \"24.04\"\nimage_original_user = \"ubuntu\"\nimage_build_date = \"2024-04-23\"\nreplace_frequency = \"quarterly\"\n",
                tiny = tiny.display().to_string()
            ),
        )
        .unwrap();
        path
    };
    let out = dir.join("out");

    // Nothing listens on the port and the blob cache lacks the pin (the
    // hash of bytes made up for this run; a cached pin needs no fetch): the
    // build fails, saying what is missing.
    let port = ciab_qemu_tests::harness::free_port().unwrap();
    let absent = ciab_builder::oci::digest::Digest::of(format!("never stored {:?}", std::time::SystemTime::now()).as_bytes()).hex().to_owned();
    let unreachable = spec("upstreamfail", &format!("http://127.0.0.1:{port}/noble.img"), &absent, "");
    let err = format!("{:#}", images::build_with(&images::options(&unreachable, &out, &ciab_builder::cache::default_root()).unwrap()).unwrap_err());
    assert!(err.contains("guest image \"Ubuntu 24.04\"") && err.contains("guest_images[0]") && err.contains(&format!("cannot fetch http://127.0.0.1:{port}/noble.img")), "{err}");
    assert!(!out.join("upstreamfail").exists(), "no output may be left behind");

    // The stand-in, marked as one.
    let marked = spec("upstreamstandin", "noble-stand-in.qcow2", &pin, "stand_in = \"the test machine has no internet\"");
    let result = images::build_with(&images::options(&marked, &out, &ciab_builder::cache::default_root()).unwrap()).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(result.out_dir.join("manifest.json")).unwrap()).unwrap();
    let guests = manifest["bundle"]["guest_images"].as_array().unwrap_or_else(|| panic!("{manifest:#}"));
    let [g] = guests.as_slice() else { panic!("{guests:#?}") };
    assert_eq!((g["name"].as_str(), g["file"].as_str(), g["disk_format"].as_str()), (Some("Ubuntu 24.04"), Some("guest-images/Ubuntu-24.04.qcow2"), Some("qcow2")), "{g:#}");
    assert_eq!((g["sha256"].as_str(), g["min_disk_gib"].as_u64()), (Some(pin.as_str()), Some(2)), "min_disk is the qcow2's virtual size: {g:#}");
    let p = &g["properties"];
    assert_eq!(p["ciab_stand_in"], "the test machine has no internet", "{g:#}");
    assert!(p["image_description"].as_str().unwrap().starts_with("STAND-IN"), "{g:#}");
    // As Glance will show it: scs-0102's rules hold.
    let mut glance = serde_json::json!({"name": g["name"], "size": g["size"], "min_disk": g["min_disk_gib"], "min_ram": g["min_ram_mib"], "created_at": "2026-12-02T00:00:00Z"});
    for (k, v) in p.as_object().unwrap() {
        glance[k] = v.clone();
    }
    assert_eq!(ciab_qemu_tests::scs::image_errors(&glance), Vec::<String>::new(), "{glance:#}");
}
