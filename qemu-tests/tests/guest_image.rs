//! The builder's tiny guest image on its own: built into the bundle of a
//! small spec (the tiny image plus busybox-static and one `[[guest_images]]`
//! entry), taken out of the built disk's bundle partition byte for byte as a
//! box would read it, and booted under QEMU with legacy BIOS firmware (what
//! Nova's libvirt guests get) and user-mode networking: GRUB loads the Debian
//! kernel and the busybox initramfs, which takes QEMU's DHCP lease and says
//! so on the serial console. Glance gets this same file on a box. And the
//! Debian cloud image the builder makes, booted with cloud-init's metadata.

use ciab_core::exec::Cmd;
use ciab_builder::qemu::{Disk, Firmware, Machine, Network, PortForward};
use ciab_core::contract::{BundleGuestImage, BundleIndex};
use ciab_qemu_tests::harness::Vm;
use ciab_qemu_tests::images;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Builds a spec of the tiny image plus `extra` into `dir`, and takes the
/// guest image `name` out of the built disk's bundle partition as a box
/// reads it, checking the index pins it. Returns its index entry and file.
fn built_guest(dir: &Path, extra: &str, name: &str) -> (BundleGuestImage, PathBuf) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let spec = dir.join("guest.toml");
    let tiny = images::repo_root().join("images/tiny.toml");
    std::fs::write(&spec, format!("include = [{:?}]\n[image]\nname = \"guest\"\n{extra}", tiny.display().to_string())).unwrap();
    let built = images::build_with(&images::options(&spec, &dir.join("out"), &ciab_builder::cache::default_root()).unwrap()).unwrap();
    let raw = ciab_builder::run::resolve_image(&built.out_dir, true).unwrap();

    // The bundle partition, read as the box reads it.
    let table: serde_json::Value = Cmd::new("sfdisk").package("fdisk").arg("--json").arg(&raw).run_json().unwrap();
    let bundle = table["partitiontable"]["partitions"].as_array().unwrap().iter().find(|p| p["name"] == "bundle").expect("a bundle partition").clone();
    let offset = bundle["start"].as_u64().unwrap() * 512;
    let extracted = dir.join("bundle");
    let file = format!("guest-images/{}.raw", name.replace(' ', "-"));
    Cmd::new("unsquashfs")
        .package("squashfs-tools")
        .args(["-q", "-n", "-o", &offset.to_string(), "-d"])
        .arg(&extracted)
        .arg(&raw)
        .args(["bundle.json", &file])
        .run()
        .unwrap();
    let index: BundleIndex = serde_json::from_slice(&std::fs::read(extracted.join("bundle.json")).unwrap()).unwrap();
    let [image] = index.guest_images.as_slice() else { panic!("one guest image in the index: {index:#?}") };
    assert_eq!((image.name.as_str(), image.file.as_str(), image.disk_format.as_str()), (name, file.as_str(), "raw"));
    let path = extracted.join(&image.file);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), image.size);
    let sha = Cmd::new("sha256sum").arg(&path).run().unwrap();
    assert_eq!(sha.split_whitespace().next(), Some(image.sha256.as_str()), "the index pins the file");
    assert_eq!(image.properties.get("image_source").map(String::as_str), Some("private"));
    assert_eq!(image.properties.get("hw_rng_model").map(String::as_str), Some("virtio"));
    (image.clone(), path)
}

#[test]
fn the_tiny_guest_boots_by_bios_takes_a_dhcp_lease_and_prints_its_marker() {
    let dir = images::work_dir().join("guest-image");
    let (_, file) = built_guest(&dir, "[packages]\ninstall = [\"busybox-static\"]\n[[guest_images]]\nname = \"ciab-tiny\"\nbuild = \"tiny\"\n", "ciab-tiny");

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

/// The Debian cloud image the builder makes, booted as a cloud would boot
/// it: legacy BIOS, a disk larger than the image, and cloud-init's metadata
/// (here a NoCloud seed, a FAT file system labelled CIDATA, as a config
/// drive would be) with a key pair. cloud-init grows the root file system,
/// makes the locked default user with the key, and the key logs in over SSH
/// through QEMU's user-mode network.
#[test]
fn the_debian_cloud_image_boots_grows_its_root_and_takes_a_key_from_cloud_init() {
    let dir = images::work_dir().join("debian-guest");
    let name = "ciab Debian 13";
    let (image, file) = built_guest(&dir, &format!("[[guest_images]]\nname = \"{name}\"\nbuild = \"debian\"\n"), name);
    let p = |k: &str| image.properties.get(k).map(String::as_str).unwrap_or_default().to_owned();
    assert_eq!((p("os_distro"), p("os_version"), p("image_original_user"), p("os_purpose")), ("debian".into(), "13".into(), "debian".into(), "generic".into()), "{:#?}", image.properties);
    assert!(p("image_description").starts_with("Debian 13 (trixie) generic cloud image, built by ciab"), "{:#?}", image.properties);
    assert_eq!(image.min_ram_mib, 512);

    // The server's disk: 6 GiB over the image, as Nova's would be.
    let disk = images::disk_with_image(&file, &dir.join("server"), "6G").unwrap();
    let key = dir.join("id_ed25519");
    Cmd::new("ssh-keygen").package("openssh-client").args(["-q", "-t", "ed25519", "-N", "", "-C", "ciab-e2e", "-f"]).arg(&key).run().unwrap();
    let public = std::fs::read_to_string(dir.join("id_ed25519.pub")).unwrap();
    let seed = dir.join("seed");
    std::fs::create_dir_all(&seed).unwrap();
    std::fs::write(seed.join("meta-data"), "instance-id: ciab-e2e-1\nlocal-hostname: ciab-e2e\n").unwrap();
    // The marker goes straight to the serial port: cloud-init's own output
    // reaches the console too, but not line by line. The command is quoted
    // for YAML: its ": " would make it a mapping, which runcmd refuses.
    std::fs::write(
        seed.join("user-data"),
        format!(
            "#cloud-config\nssh_authorized_keys:\n  - {}\nruncmd:\n  - 'echo \"ciab-e2e: root $(findmnt -bno SIZE /) bytes, user $(passwd -S debian | cut -d\" \" -f2), keys $(ls /etc/ssh/ssh_host_*_key | wc -l)\" > /dev/ttyS0'\n",
            public.trim()
        ),
    )
    .unwrap();
    let seed_img = dir.join("seed.img");
    Cmd::new("mkfs.vfat").package("dosfstools").args(["-n", "CIDATA", "-C"]).arg(&seed_img).arg("2048").run().unwrap();
    Cmd::new("mcopy").package("mtools").env("MTOOLS_SKIP_CHECK", "1").arg("-i").arg(&seed_img).args([seed.join("meta-data"), seed.join("user-data")]).arg("::/").run().unwrap();

    let port = ciab_qemu_tests::harness::free_port().unwrap();
    let mut m = Machine::new(&disk);
    m.firmware = Firmware::Bios;
    m.accel = ciab_builder::run::choose_accel("auto").unwrap();
    m.memory_mib = 1024;
    // One vCPU: bookworm's QEMU races a second one through kernel text
    // patching under TCG (harness::SMALL_GUEST_CPUS).
    m.cpus = ciab_qemu_tests::harness::SMALL_GUEST_CPUS;
    m.network = Network::User { forwards: vec![PortForward { host: port, guest: 22, name: "ssh".into() }] };
    m.extra_disks.push(Disk { path: seed_img, format: None, read_only: true });
    let vm = Vm::start(&m).unwrap();
    let report = |e: anyhow::Error| panic!("{e:#}\n{}", vm.serial_lines().join("\n"));
    let marker = vm.wait_for_line("ciab-e2e: root ", Duration::from_secs(900)).unwrap_or_else(report);
    // "Cloud-init v. 25.1.4 finished at … Datasource DataSourceNoCloud [seed=/dev/vdb]."
    vm.wait_for_line("Datasource DataSourceNoCloud", Duration::from_secs(300)).unwrap_or_else(report);
    let failed: Vec<String> = vm.serial_lines().into_iter().filter(|l| l.contains("Failed to start") || l.contains("[WARNING]")).collect();
    assert!(failed.is_empty(), "cloud-init and every unit ran clean: {failed:#?}");
    // "root 6337593344 bytes, user L, keys 3": grown into the 6 GiB disk, the
    // default user locked (no password), host keys made on this instance.
    let fields: Vec<&str> = marker.split_whitespace().collect();
    let root: u64 = fields.get(2).and_then(|b| b.parse().ok()).unwrap_or_else(|| panic!("{marker}"));
    assert!(root > 5 << 30, "cloud-init grows the root file system into the server's disk: {marker}");
    assert!(marker.contains("user L,"), "the default user has no password: {marker}");
    assert!(!marker.contains("keys 0"), "host keys made at first boot: {marker}");

    // The key logs in; sudo needs no password.
    let ssh = |command: &str| {
        std::process::Command::new("ssh")
            .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "ConnectTimeout=30", "-i"])
            .arg(&key)
            .args(["-p", &port.to_string(), "debian@127.0.0.1", command])
            .output()
            .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    let login = loop {
        let out = ssh("id -un; sudo -n id -un; cat /etc/debian_version");
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(std::time::Instant::now() < deadline, "ssh with the key from cloud-init: {}\n{}", String::from_utf8_lossy(&out.stderr), vm.serial_lines().join("\n"));
        std::thread::sleep(Duration::from_secs(5));
    };
    let lines: Vec<&str> = login.lines().collect();
    assert!(lines.len() == 3 && lines[0] == "debian" && lines[1] == "root" && lines[2].starts_with("13."), "{login}");

    // The index (and so the manifest and the SBOM) lists what the guest has.
    let out = ssh("dpkg-query -W -f '${db:Status-Abbrev}${Package} ${Version}\\n'");
    assert!(out.status.success(), "dpkg-query in the guest: {}", String::from_utf8_lossy(&out.stderr));
    let installed: std::collections::BTreeSet<String> =
        String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.strip_prefix("ii ")).map(str::to_owned).collect();
    let listed: std::collections::BTreeSet<String> = image.packages.iter().map(|p| format!("{} {}", p.name, p.version)).collect();
    assert!(listed.iter().any(|p| p.starts_with("cloud-init ")) && listed.iter().any(|p| p.starts_with("linux-image-")), "{listed:#?}");
    assert_eq!(listed, installed, "the bundle index lists exactly the guest's installed packages");
}
