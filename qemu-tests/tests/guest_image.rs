//! The builder's tiny guest image on its own: built into the bundle of a
//! small spec (the tiny image plus busybox-static and one `[[guest_images]]`
//! entry), taken out of the built disk's bundle partition byte for byte as a
//! box would read it, and booted under QEMU with legacy BIOS firmware (what
//! Nova's libvirt guests get) and user-mode networking: GRUB loads the Debian
//! kernel and the busybox initramfs, which takes QEMU's DHCP lease and says
//! so on the serial console. Glance gets this same file on a box.

use ciab_builder::exec::Cmd;
use ciab_builder::qemu::{Firmware, Machine, Network};
use ciab_firstboot::contract::BundleIndex;
use ciab_qemu_tests::harness::Vm;
use ciab_qemu_tests::images;
use std::time::Duration;

#[test]
fn the_tiny_guest_boots_by_bios_takes_a_dhcp_lease_and_prints_its_marker() {
    let dir = images::work_dir().join("guest-image");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let spec = dir.join("guest.toml");
    let tiny = images::repo_root().join("images/tiny.toml");
    std::fs::write(
        &spec,
        format!(
            "include = [{:?}]\n[image]\nname = \"guest\"\n[packages]\ninstall = [\"busybox-static\"]\n[[guest_images]]\nname = \"ciab-tiny\"\nbuild = \"tiny\"\n",
            tiny.display().to_string()
        ),
    )
    .unwrap();
    let built = images::build_with(&images::options(&spec, &dir.join("out"), &ciab_builder::cache::default_root()).unwrap()).unwrap();
    let raw = ciab_builder::run::resolve_image(&built.out_dir, true).unwrap();

    // The bundle partition, read as the box reads it.
    let table: serde_json::Value = Cmd::new("sfdisk").package("fdisk").arg("--json").arg(&raw).run_json().unwrap();
    let bundle = table["partitiontable"]["partitions"].as_array().unwrap().iter().find(|p| p["name"] == "bundle").expect("a bundle partition").clone();
    let offset = bundle["start"].as_u64().unwrap() * 512;
    let extracted = dir.join("bundle");
    Cmd::new("unsquashfs")
        .package("squashfs-tools")
        .args(["-q", "-n", "-o", &offset.to_string(), "-d"])
        .arg(&extracted)
        .arg(&raw)
        .args(["bundle.json", "guest-images/ciab-tiny.raw"])
        .run()
        .unwrap();
    let index: BundleIndex = serde_json::from_slice(&std::fs::read(extracted.join("bundle.json")).unwrap()).unwrap();
    let [image] = index.guest_images.as_slice() else { panic!("one guest image in the index: {index:#?}") };
    assert_eq!((image.name.as_str(), image.file.as_str(), image.disk_format.as_str()), ("ciab-tiny", "guest-images/ciab-tiny.raw", "raw"));
    let file = extracted.join(&image.file);
    assert_eq!(std::fs::metadata(&file).unwrap().len(), image.size);
    let sha = Cmd::new("sha256sum").arg(&file).run().unwrap();
    assert_eq!(sha.split_whitespace().next(), Some(image.sha256.as_str()), "the index pins the file");
    assert_eq!(image.properties.get("image_source").map(String::as_str), Some("private"));
    assert_eq!(image.properties.get("hw_rng_model").map(String::as_str), Some("virtio"));

    let mut m = Machine::new(&file);
    m.firmware = Firmware::Bios;
    m.accel = ciab_builder::run::choose_accel("auto").unwrap();
    m.memory_mib = 256;
    m.cpus = 1;
    m.snapshot = true;
    m.network = Network::User { forwards: vec![] };
    let vm = Vm::start(&m).unwrap();
    vm.wait_for_line("ciab-guest: booted, kernel ", Duration::from_secs(300)).unwrap_or_else(|e| panic!("{e:#}"));
    let up = vm.wait_for_line("ciab-guest: up, ", Duration::from_secs(120)).unwrap_or_else(|e| panic!("{e:#}\n{}", vm.serial_lines().join("\n")));
    // QEMU's user-mode network leases the first address of 10.0.2.0/24.
    assert!(up.contains("ciab-guest: up, eth0 10.0.2.15/24"), "{up}\n{}", vm.serial_lines().join("\n"));
}
