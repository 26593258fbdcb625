//! Boot the `tiny` image under QEMU (TCG unless KVM proves itself), with no
//! network at all, through both firmware paths, and wait for the first-boot
//! service's ready line on the serial console.

use ciab_builder::qemu::{Firmware, Machine, Network};
use ciab_core::contract::READY_LINE;
use ciab_qemu_tests::harness::Vm;
use ciab_qemu_tests::images;
use std::time::Duration;

/// TCG boots of a Debian kernel + systemd take 15–40 s here; leave room for a loaded CI host.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

fn boot(firmware: Firmware) -> Vec<String> {
    let out = images::tiny().expect("building tiny");
    let image = ciab_builder::run::resolve_image(&out, true).expect("verified image");
    // First boot claims the space after the image: give it a disk with some.
    let dir = images::work_dir().join(format!("boot-{firmware}"));
    let disk = images::disk_with_image(&image, &dir, "8G").expect("disk");
    let mut m = Machine::new(&disk);
    m.firmware = firmware;
    m.accel = ciab_builder::run::choose_accel("auto").expect("accel");
    m.memory_mib = 1024;
    m.cpus = ciab_qemu_tests::harness::SMALL_GUEST_CPUS;
    m.snapshot = true;
    m.network = Network::None;
    let vm = Vm::start(&m).expect("starting QEMU");
    let ready = vm.wait_for_line(READY_LINE, BOOT_TIMEOUT);
    if let Err(e) = ready {
        panic!("{firmware} boot did not reach the ready line:\n{e:#}");
    }
    vm.serial_lines()
}

#[test]
fn tiny_boots_with_uefi_and_no_network() {
    let lines = boot(Firmware::Uefi);
    assert!(lines.iter().any(|l| l.contains("ciab-firstboot: discover:") && l.contains("firmware Uefi")), "{lines:#?}");
    // No NIC was given to the guest: discovery must find none.
    assert!(!lines.iter().any(|l| l.contains("ciab-firstboot: discover: nic")), "{lines:#?}");
}

#[test]
fn tiny_boots_with_bios_and_no_network() {
    let lines = boot(Firmware::Bios);
    assert!(lines.iter().any(|l| l.contains("ciab-firstboot: discover:") && l.contains("firmware Bios")), "{lines:#?}");
    assert!(lines.iter().any(|l| l.contains("Booting `ciab tiny")), "GRUB's menu entry should show: {lines:#?}");
}
