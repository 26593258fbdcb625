//! `ciab flash` on the real tiny image: to a file, to a loop device, with
//! `bmaptool copy` as the peer, and each refusal rule. Loop devices need root
//! (the test command runs as root).

use ciab_qemu_tests::images;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ciab(args: &[&str]) -> Output {
    Command::new(images::ciab_bin().unwrap()).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn dir(name: &str) -> PathBuf {
    let d = images::work_dir().join("flash").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A loop device over a new sparse file of `size` bytes; detached on drop.
struct Loop {
    dev: PathBuf,
}

impl Loop {
    fn new(backing: &Path, size: u64) -> Loop {
        let f = std::fs::File::create(backing).unwrap();
        f.set_len(size).unwrap();
        // Old data everywhere, as on a used disk: the flash must zero the gaps.
        for at in (0..size).step_by(7 << 20).chain([size - 4096]) {
            f.write_all_at(&[0xDB; 4096], at).unwrap();
        }
        let out = Command::new("losetup").args(["--find", "--show"]).arg(backing).output().unwrap();
        assert!(out.status.success(), "losetup: {}", text(&out));
        Loop { dev: PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()) }
    }
    fn path(&self) -> &str {
        self.dev.to_str().unwrap()
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dev).output();
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).output();
    }
}

fn raw(tiny: &Path) -> PathBuf {
    tiny.join("tiny.raw")
}

#[test]
fn flash_to_a_file_equals_the_image_and_bmaptool_agrees() {
    let tiny = images::tiny().unwrap();
    let d = dir("file");
    let target = d.join("disk.img");
    let o = ciab(&["flash", tiny.to_str().unwrap(), target.to_str().unwrap(), "--to-file"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("verified"), "{}", text(&o));
    assert_eq!(std::fs::read(&target).unwrap(), std::fs::read(raw(&tiny)).unwrap());
    // No temporary file is left beside the target.
    let names: Vec<_> = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 1, "{names:?}");

    // The .bmap written by the build drives stock bmaptool to the same bytes.
    if Path::new("/usr/bin/bmaptool").exists() {
        let peer = d.join("bmaptool.img");
        let o = Command::new("bmaptool")
            .args(["copy", "--bmap"])
            .arg(tiny.join("tiny.bmap"))
            .arg(raw(&tiny))
            .arg(&peer)
            .output()
            .unwrap();
        assert!(o.status.success(), "bmaptool: {}", text(&o));
        assert_eq!(std::fs::read(&peer).unwrap(), std::fs::read(raw(&tiny)).unwrap());
    } else {
        eprintln!("bmaptool is not installed: the bmaptool comparison is skipped (apt install bmap-tools)");
    }
}

#[test]
fn flash_to_a_loop_device_zeroes_old_data_and_verifies() {
    let tiny = images::tiny().unwrap();
    let d = dir("loop");
    let size = std::fs::metadata(raw(&tiny)).unwrap().len();
    let lo = Loop::new(&d.join("backing"), size + (64 << 20));
    let o = ciab(&["flash", tiny.to_str().unwrap(), lo.path(), "--yes"]);
    assert!(o.status.success(), "{}", text(&o));
    // The device's first `size` bytes are the image, old data included.
    let mut got = vec![0u8; size as usize];
    std::fs::File::open(&lo.dev).unwrap().read_exact_at(&mut got, 0).unwrap();
    assert!(got == std::fs::read(raw(&tiny)).unwrap(), "the loop device does not hold the image");
    // The device's last MiB, where an old backup GPT would sit, is cleared.
    let mut tail = vec![1u8; 1 << 20];
    std::fs::File::open(&lo.dev).unwrap().read_exact_at(&mut tail, size + (63 << 20)).unwrap();
    assert!(tail.iter().all(|&b| b == 0), "the old data at the end of the device is still there");

    // A byte changed on the medium afterwards is caught by a read-back.
    let manifest: ciab_core::contract::Manifest =
        serde_json::from_slice(&std::fs::read(tiny.join("manifest.json")).unwrap()).unwrap();
    let victim = &manifest.disk.block_map[manifest.disk.block_map.len() / 2];
    let dev = std::fs::OpenOptions::new().read(true).write(true).open(&lo.dev).unwrap();
    let mut b = [0u8; 1];
    dev.read_exact_at(&mut b, victim.offset + 100).unwrap();
    dev.write_all_at(&[!b[0]], victim.offset + 100).unwrap();
    dev.sync_all().unwrap();
    let image = ciab_core::flash::Image { size: manifest.disk.size, map: &manifest.disk.block_map };
    let target = ciab_core::flash::Target::block_device(&lo.dev).unwrap();
    let err = ciab_core::flash::verify_only(&image, &target).unwrap_err().to_string();
    assert!(err.contains("verify failed") && err.contains(&format!("bytes {}..", victim.offset)), "{err}");
}

#[test]
// (A partition as target is refused too, but loop devices here get no
// partition scanning, so that rule has no test on this machine.)
fn refuses_a_mounted_device_a_small_one_and_a_file_without_to_file() {
    let tiny = images::tiny().unwrap();
    let d = dir("refuse");
    let size = std::fs::metadata(raw(&tiny)).unwrap().len();
    let t = tiny.to_str().unwrap();

    let small = Loop::new(&d.join("small"), 256 << 20);
    let o = ciab(&["flash", t, small.path(), "--yes"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("is too small"), "{}", text(&o));

    let mounted = Loop::new(&d.join("mounted"), size + (16 << 20));
    let mkfs = Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&mounted.dev).output().unwrap();
    assert!(mkfs.status.success(), "{}", text(&mkfs));
    let mnt = d.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let m = Command::new("mount").arg(&mounted.dev).arg(&mnt).output().unwrap();
    assert!(m.status.success(), "mount: {}", text(&m));
    let o = ciab(&["flash", t, mounted.path(), "--yes"]);
    let _ = Command::new("umount").arg(&mnt).output();
    assert!(!o.status.success());
    assert!(text(&o).contains("is in use") && text(&o).contains("mounted on"), "{}", text(&o));

    let file = d.join("plain.img");
    std::fs::write(&file, b"x").unwrap();
    let o = ciab(&["flash", t, file.to_str().unwrap(), "--yes"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("pass --to-file"), "{}", text(&o));
    assert_eq!(std::fs::read(&file).unwrap(), b"x", "a refused target is untouched");

    // Without --yes and without a terminal nothing is written.
    let blank = Loop::new(&d.join("blank"), size + (16 << 20));
    let o = Command::new(images::ciab_bin().unwrap()).args(["flash", t, blank.path()]).stdin(std::process::Stdio::null()).output().unwrap();
    assert!(!o.status.success());
    assert!(text(&o).contains("pass --yes"), "{}", text(&o));
}

#[test]
fn refuses_a_tampered_manifest_or_image_before_writing() {
    let tiny = images::tiny().unwrap();
    let d = dir("tampered");
    // A copy of the output directory with one byte of the manifest changed.
    let copy = d.join("tiny");
    std::fs::create_dir_all(&copy).unwrap();
    for f in ["manifest.json", "manifest.json.minisig", "signing.pub", "tiny.raw"] {
        let o = Command::new("cp").args(["--sparse=always", "--reflink=auto"]).arg(tiny.join(f)).arg(copy.join(f)).output().unwrap();
        assert!(o.status.success());
    }
    let mpath = copy.join("manifest.json");
    let mut m = std::fs::read(&mpath).unwrap();
    let at = m.iter().position(|&b| b == b'"').unwrap();
    m[at + 1] ^= 0x20;
    std::fs::set_permissions(&mpath, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::write(&mpath, &m).unwrap();
    let target = d.join("out.img");
    let o = ciab(&["flash", copy.to_str().unwrap(), target.to_str().unwrap(), "--to-file"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("signature does not verify"), "{}", text(&o));
    assert!(!target.exists());

    // The signed manifest restored, one byte of the image flipped.
    std::fs::copy(tiny.join("manifest.json"), &mpath).unwrap();
    let manifest: ciab_core::contract::Manifest = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    let r = &manifest.disk.block_map[3];
    let rawp = copy.join("tiny.raw");
    std::fs::set_permissions(&rawp, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&rawp).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, r.offset + 7).unwrap();
    f.write_all_at(&[!b[0]], r.offset + 7).unwrap();
    let o = ciab(&["flash", copy.to_str().unwrap(), target.to_str().unwrap(), "--to-file"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("range 3 ") && text(&o).contains("corrupt or was modified"), "{}", text(&o));
    assert!(!target.exists(), "no partial output");
}

#[test]
fn the_installer_iso_flashes_to_a_stick_from_its_signed_description() {
    let out = images::tiny_installer().unwrap();
    let o = ciab(&["verify", out.to_str().unwrap()]);
    assert!(o.status.success(), "ciab verify covers the ISO: {}", text(&o));
    let d = dir("iso");
    let iso = out.join("tinybox.iso");
    let size = std::fs::metadata(&iso).unwrap().len();
    let stick = Loop::new(&d.join("stick"), size + (32 << 20));
    let o = ciab(&["flash", out.to_str().unwrap(), stick.path(), "--installer", "--yes"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("tinybox installer"), "{}", text(&o));
    let mut got = vec![0u8; size as usize];
    std::fs::File::open(&stick.dev).unwrap().read_exact_at(&mut got, 0).unwrap();
    assert!(got == std::fs::read(&iso).unwrap(), "the stick does not hold the ISO");
    // The .iso path alone selects the installer, its signed description beside it.
    let file = d.join("stick.img");
    let o = ciab(&["flash", iso.to_str().unwrap(), file.to_str().unwrap(), "--to-file"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(&file).unwrap(), std::fs::read(&iso).unwrap());
    // An output without an installer says so.
    let tiny = images::tiny().unwrap();
    let o = ciab(&["flash", tiny.to_str().unwrap(), d.join("x.img").to_str().unwrap(), "--installer", "--to-file"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("has no installer"), "{}", text(&o));
}

#[test]
fn a_write_error_mid_flash_names_the_range_and_leaves_no_partial_file() {
    // A 64 MiB tmpfs fills up partway through the image's 300+ MiB of data:
    // the writes fail as they would on a stick pulled out mid-write.
    let tiny = images::tiny().unwrap();
    let d = dir("write-error");
    let mnt = d.join("small-fs");
    std::fs::create_dir_all(&mnt).unwrap();
    let m = Command::new("mount").args(["-t", "tmpfs", "-o", "size=64m", "ciab-test"]).arg(&mnt).output().unwrap();
    assert!(m.status.success(), "mount tmpfs: {}", text(&m));
    let target = mnt.join("disk.img");
    let o = ciab(&["flash", tiny.to_str().unwrap(), target.to_str().unwrap(), "--to-file"]);
    let left: Vec<_> = std::fs::read_dir(&mnt).unwrap().map(|e| e.unwrap().file_name()).collect();
    let _ = Command::new("umount").arg(&mnt).output();
    assert!(!o.status.success());
    assert!(text(&o).contains("writing range") && text(&o).contains("No space left on device"), "{}", text(&o));
    assert!(left.is_empty(), "no partial output: {left:?}");
}
