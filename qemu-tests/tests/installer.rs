//! The USB installer end to end under TCG: boot the ISO (UEFI from a virtual
//! CD, BIOS from a USB stick) with a target disk that already holds a
//! partition table and a CIAB-CONFIG disk saying `wipe = true`; it installs
//! unattended and powers the VM off (`-no-reboot`); then the target disk
//! boots alone, reads the site config the installer copied to its ESP, and
//! first boot reaches ready.

use ciab_builder::qemu::{Disk, Firmware, Machine, Network};
use ciab_core::contract::{INSTALLED_LINE, READY_LINE};
use ciab_qemu_tests::harness::Vm;
use ciab_qemu_tests::images;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// How the installer medium is attached.
enum Medium {
    Cdrom,
    UsbStick,
}

fn medium_args(iso: &Path, medium: Medium) -> Vec<OsString> {
    let file = format!("file={},format=raw,readonly=on", iso.display());
    let args: Vec<String> = match medium {
        Medium::Cdrom => vec![
            "-drive".into(),
            format!("{file},media=cdrom,if=none,id=cd"),
            "-device".into(),
            "ide-cd,drive=cd,bootindex=0".into(),
        ],
        Medium::UsbStick => vec![
            "-device".into(),
            "qemu-xhci,id=xhci".into(),
            "-drive".into(),
            format!("{file},if=none,id=stick"),
            "-device".into(),
            "usb-storage,bus=xhci.0,drive=stick,removable=on,bootindex=0".into(),
        ],
    };
    args.into_iter().map(OsString::from).collect()
}

/// A FAT filesystem labelled CIAB-CONFIG holding `site.toml`, built with
/// mtools as an operator's stick would be.
fn config_disk(dir: &Path, site: &str) -> PathBuf {
    ciab_builder::run::site_config_disk(dir, site).unwrap()
}

/// A 16 GB target disk that is not blank: it holds a GPT with one partition,
/// so only `wipe = true` lets the installer erase it unattended.
fn used_target(dir: &Path) -> PathBuf {
    let disk = dir.join("target.raw");
    std::fs::File::create(&disk).unwrap().set_len(16 << 30).unwrap();
    let mut sfdisk = std::process::Command::new("sfdisk").arg("-q").arg(&disk).stdin(std::process::Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(sfdisk.stdin.as_mut().unwrap(), b"label: gpt\n,1G,L\n").unwrap();
    assert!(sfdisk.wait().unwrap().success());
    disk
}

fn machine(disk: &Path, firmware: Firmware) -> Machine {
    let mut m = Machine::new(disk);
    m.firmware = firmware;
    m.accel = ciab_builder::run::choose_accel("auto").unwrap();
    m.memory_mib = 1536;
    m.cpus = ciab_qemu_tests::harness::SMALL_GUEST_CPUS;
    m.network = Network::None;
    m
}

fn install_and_boot(name: &str, firmware: Firmware, medium: Medium) {
    let out = images::tiny_installer().unwrap();
    let iso = out.join("tinybox.iso");
    let dir = images::work_dir().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let target = used_target(&dir);
    let config = config_disk(&dir, "hostname = \"box7\"\nprofile = \"tiny\"\n\n[install]\nwipe = true\n");

    // Boot 1: the installer.
    let mut m = machine(&target, firmware);
    m.extra_disks.push(Disk { path: config, format: None, read_only: true });
    // The firmware boots the medium first, as an operator picks it in the
    // boot menu; SeaBIOS would not fall back from a blank disk to a stick.
    m.disk_boot_index = 1;
    m.extra_args = medium_args(&iso, medium);
    m.extra_args.push("-no-reboot".into());
    let started = Instant::now();
    let vm = Vm::start(&m).unwrap();
    let report = |what: &str, e: anyhow::Error| panic!("{e:#}\n{}", vm.failure_report(what));
    vm.wait_for_line("ciab-installer: erasing /dev/vda (1 partitions (vda1)): install.wipe = true", INSTALL_TIMEOUT)
        .unwrap_or_else(|e| report("the installer should erase the used disk because of wipe = true", e));
    vm.wait_for_line(INSTALLED_LINE, INSTALL_TIMEOUT).unwrap_or_else(|e| report("the installer did not finish", e));
    let installed = started.elapsed();
    let exit = vm.wait_exit(Duration::from_secs(120)).unwrap();
    assert!(exit.is_some(), "the installer should reboot (QEMU exits with -no-reboot)");
    let lines = vm.serial_lines();
    assert!(lines.iter().any(|l| l.contains("ciab-installer: medium /dev/") && l.contains("(signature ok)")), "{lines:#?}");
    assert!(lines.iter().any(|l| l.contains("ciab-installer: verifying 100%")), "{lines:#?}");
    drop(vm);

    // Boot 2: the installed disk alone.
    let started2 = Instant::now();
    let vm = Vm::start(&machine(&target, firmware)).unwrap();
    let report = |what: &str, e: anyhow::Error| panic!("{e:#}\n{}", vm.failure_report(what));
    vm.wait_for_line("ciab-firstboot: site-config: from ESP:/ciab/site.toml: hostname box7", BOOT_TIMEOUT)
        .unwrap_or_else(|e| report("first boot should read the site config the installer copied to the ESP", e));
    vm.wait_for_line(READY_LINE, BOOT_TIMEOUT).unwrap_or_else(|e| report("the installed system did not reach ready", e));
    eprintln!(
        "{name}: installer boot to installed {:.1} s, installed system power-on to ready {:.1} s",
        installed.as_secs_f64(),
        started2.elapsed().as_secs_f64()
    );
}

#[test]
fn uefi_installer_from_a_cd_installs_unattended_and_the_disk_boots_to_ready() {
    install_and_boot("installer-uefi", Firmware::Uefi, Medium::Cdrom);
}

#[test]
fn bios_installer_from_a_usb_stick_installs_unattended_and_the_disk_boots_to_ready() {
    install_and_boot("installer-bios", Firmware::Bios, Medium::UsbStick);
}

/// The installer's own check of its payload, run on the host against the
/// real tiny installer build: the signature with the key built into the
/// initramfs, a manifest changed by one byte, another key, a short data file.
#[test]
fn the_installer_refuses_a_payload_not_signed_by_its_key() {
    use ciab_installer::medium::verify_payload;
    let out = images::tiny_installer().unwrap();
    let dir = images::work_dir().join("installer-payload");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["manifest.json", "manifest.json.minisig"] {
        std::fs::copy(out.join(f), dir.join(f)).unwrap();
    }
    let manifest: ciab_core::contract::Manifest = serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let data: u64 = manifest.disk.block_map.iter().map(|r| r.length).sum();
    std::fs::File::create(dir.join("image.data")).unwrap().set_len(data).unwrap();
    let key = std::fs::read_to_string(out.join("signing.pub")).unwrap();
    verify_payload(&dir, &key).unwrap();

    ciab_builder::sign::keygen(&dir.join("other.key")).unwrap();
    let other = std::fs::read_to_string(dir.join("other.key.pub")).unwrap();
    let err = format!("{:#}", verify_payload(&dir, &other).unwrap_err());
    assert!(err.contains("not signed by the key this installer trusts"), "{err}");

    let mut m = std::fs::read(dir.join("manifest.json")).unwrap();
    let at = m.iter().position(|&b| b == b'{').unwrap() + 5;
    m[at] ^= 1;
    std::fs::write(dir.join("manifest.json"), &m).unwrap();
    let err = format!("{:#}", verify_payload(&dir, &key).unwrap_err());
    assert!(err.contains("not signed by the key this installer trusts"), "{err}");

    std::fs::copy(out.join("manifest.json"), dir.join("manifest.json")).unwrap();
    std::fs::File::create(dir.join("image.data")).unwrap().set_len(data - 4096).unwrap();
    let err = format!("{:#}", verify_payload(&dir, &key).unwrap_err());
    assert!(err.contains("the medium is damaged"), "{err}");
}

/// Without `wipe = true` and with nobody at the console, a disk that holds
/// partitions is left untouched: the installer waits the configured time,
/// then stops with the reason.
#[test]
fn the_installer_leaves_a_used_disk_alone_unless_confirmed() {
    let out = images::tiny_installer().unwrap();
    let dir = images::work_dir().join("installer-no-wipe");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let target = used_target(&dir);
    let first_mib = |p: &Path| {
        let mut b = vec![0u8; 1 << 20];
        std::os::unix::fs::FileExt::read_exact_at(&std::fs::File::open(p).unwrap(), &mut b, 0).unwrap();
        b
    };
    let before = first_mib(&target);
    let config = config_disk(&dir, "[install]\nconfirm_timeout_seconds = 5\n");
    let mut m = machine(&target, Firmware::Uefi);
    m.extra_disks.push(Disk { path: config, format: None, read_only: true });
    m.disk_boot_index = 1;
    m.extra_args = medium_args(&out.join("tinybox.iso"), Medium::Cdrom);
    let vm = Vm::start(&m).unwrap();
    let report = |what: &str, e: anyhow::Error| panic!("{e:#}\n{}", vm.failure_report(what));
    vm.wait_for_prompt("holds 1 partitions (vda1); type vda and Enter within 5 s to erase it", INSTALL_TIMEOUT)
        .unwrap_or_else(|e| report("the installer should ask before erasing", e));
    let failed = vm
        .wait_for_line("ciab-installer: FAILED: not confirmed: /dev/vda was left untouched", Duration::from_secs(120))
        .unwrap_or_else(|e| report("the installer should give up after the timeout", e));
    assert!(failed.contains("install.wipe = true"), "{failed}");
    drop(vm);
    assert!(before == first_mib(&target), "the disk's first MiB changed");
}
