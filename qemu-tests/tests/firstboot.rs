//! First boot on real (virtual) hardware: claiming a blank 40 GB disk,
//! resuming after a power cut, and refusing a bad site configuration where
//! an operator sees it (serial, /status.json, the status page in a browser).

use ciab_core::exec::Cmd;
use ciab_builder::qemu::{Disk, Firmware, Machine, Network, PortForward};
use ciab_core::contract::READY_LINE;
use ciab_qemu_tests::harness::{free_port, Vm};
use ciab_qemu_tests::images;
use std::path::{Path, PathBuf};
use std::time::Duration;

const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// How the engine numbers step `n` on the console: `[5/9] storage`.
fn numbered(n: usize, name: &str) -> String {
    format!("[{n}/{}] {name}", ciab_firstboot::steps::all().len())
}

/// A 40 GB disk holding the tiny image: a qcow2 overlay over the built raw,
/// so the build output stays pristine while the guest writes for real.
fn disk_with_image(dir: &Path) -> PathBuf {
    let out = images::tiny().unwrap();
    let raw = ciab_builder::run::resolve_image(&out, true).unwrap();
    images::disk_with_image(&raw, &dir.join("disk"), "40G").unwrap()
}

fn machine(disk: &Path) -> Machine {
    let mut m = Machine::new(disk);
    m.firmware = Firmware::Uefi;
    m.accel = ciab_builder::run::choose_accel("auto").unwrap();
    m.memory_mib = 1536;
    m.cpus = ciab_qemu_tests::harness::SMALL_GUEST_CPUS;
    m.snapshot = false;
    m.network = Network::None;
    m
}

/// The guest's file at `path` inside root-a of `disk`, as it survived the power cut.
fn read_guest_file(disk: &Path, path: &str) -> String {
    ciab_qemu_tests::guest_disk::read_root_file(disk, path).unwrap()
}

fn partitions(disk: &Path) -> Vec<serde_json::Value> {
    let raw = disk.with_extension("parts.raw");
    Cmd::new("qemu-img").args(["convert", "-q", "-O", "raw"]).arg(disk).arg(&raw).run().unwrap();
    let json: serde_json::Value = Cmd::new("sfdisk").arg("--json").arg(&raw).run_json().unwrap();
    let _ = std::fs::remove_file(&raw);
    json["partitiontable"]["partitions"].as_array().unwrap().clone()
}

#[test]
fn first_boot_claims_the_disk_and_resumes_after_a_power_cut() {
    let dir = images::work_dir().join("firstboot-power-cut");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let disk = disk_with_image(&dir);

    // Boot 1: cut the power while the storage step is at work.
    {
        let vm = Vm::start(&machine(&disk)).unwrap();
        vm.wait_for_line(&numbered(5, "storage"), BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e:#}"));
        std::thread::sleep(Duration::from_millis(1500));
        vm.power_cut().unwrap();
        let lines = vm.serial_lines();
        assert!(!lines.iter().any(|l| l.contains(READY_LINE)), "the cut came too late: {lines:#?}");
    }

    // Boot 2, now with a NIC: storage resumes; cut the power again while the
    // network step restarts networkd and waits for its DHCP lease.
    let mut with_nic = machine(&disk);
    with_nic.network = Network::User { forwards: Vec::new() };
    let boot2 = {
        let vm = Vm::start(&with_nic).unwrap();
        vm.wait_for_line(&numbered(6, "network"), BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e:#}"));
        vm.power_cut().unwrap();
        let lines = vm.serial_lines();
        assert!(!lines.iter().any(|l| l.contains(&numbered(6, "network")) && (l.contains(" ok ") || l.contains("already done"))), "the cut came too late: {lines:#?}");
        assert!(lines.iter().any(|l| l.contains(&numbered(5, "storage")) && l.contains(" ok ")), "storage resumes in boot 2: {lines:#?}");
        lines
    };

    // Which step the second cut interrupted, as the journal on the disk says:
    // under load the guest may get past the network step between the serial
    // line and the cut, and the resume must be right either way.
    let after2: serde_json::Value = serde_json::from_str(&read_guest_file(&disk, "/var/lib/ciab/firstboot.json")).unwrap();
    let cut_in = after2["steps"].as_array().unwrap().iter().find(|s| s["state"] == "running").and_then(|s| s["name"].as_str()).map(str::to_owned);

    // Boot 3: first boot resumes at the interrupted step and completes.
    let vm = Vm::start(&with_nic).unwrap();
    vm.wait_for_line(READY_LINE, BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e:#}"));
    let lines = vm.serial_lines();
    // Pull the plug again: what is checked below is what survives it.
    vm.power_cut().unwrap();
    drop(vm);
    assert!(!lines.iter().any(|l| l.contains("ciab-firstboot: discover: disk")), "discover must not run again: {lines:#?}");
    assert!(lines.iter().any(|l| l.contains(&numbered(5, "storage")) && l.contains("done (earlier run)")), "{lines:#?}");
    match cut_in.as_deref() {
        Some("network") => {
            assert!(lines.iter().any(|l| l.contains(&numbered(6, "network")) && (l.contains(" ok ") || l.contains("already done"))), "{lines:#?}")
        }
        // Cut between two steps: nothing was running, every step ends done.
        None => assert!(lines.iter().any(|l| l.contains(&numbered(6, "network")) && (l.contains(" ok ") || l.contains("done"))), "{lines:#?}"),
        Some(step) => {
            eprintln!("the second cut landed in step {step}, after network");
            assert!(lines.iter().any(|l| l.contains(&format!("step {step} was interrupted"))), "{lines:#?}");
            assert!(lines.iter().any(|l| l.contains(&numbered(6, "network")) && l.contains("done (earlier run)")), "{lines:#?}");
        }
    }

    // The plan the box printed, and the volumes it reports, agree.
    let plan_line = lines.iter().rev().find_map(|l| l.split_once("ciab-firstboot: plan: ").map(|(_, j)| j.to_owned()));
    let journal: serde_json::Value = serde_json::from_str(&read_guest_file(&disk, "/var/lib/ciab/firstboot.json")).unwrap();
    assert_eq!(journal["state"], "done", "{journal:#}");
    let steps = journal["steps"].as_array().unwrap();
    assert!(steps.iter().all(|s| s["state"] == "done"), "{journal:#}");
    for (name, cuts) in [("storage", 1), ("network", 1), ("discover", 0)] {
        let step = steps.iter().find(|s| s["name"] == name).unwrap();
        assert_eq!(step["interrupted"], cuts, "power cuts on record for {name}: {step:#}");
    }
    let plan: serde_json::Value = match plan_line {
        Some(p) => serde_json::from_str(&p).unwrap(),
        None => serde_json::from_str(&read_guest_file(&disk, "/var/lib/ciab/plan.json")).unwrap(),
    };
    let appliance_gib = plan["storage"]["appliance_gib"].as_u64().unwrap();
    assert!(appliance_gib > 0);
    let lv_line = format!("ciab-firstboot: storage: lv ciab/appliance {} MiB", appliance_gib * 1024);
    assert!(boot2.iter().any(|l| l.contains(&lv_line)), "expected {lv_line:?}: {boot2:#?}");

    // Exactly one data partition, spanning the rest of the 40 GB disk.
    let parts = partitions(&disk);
    let names: Vec<&str> = parts.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(names, ["bios", "ESP", "root-a", "root-b", "bundle", "data"]);
    let data = &parts[5];
    let end = (data["start"].as_u64().unwrap() + data["size"].as_u64().unwrap()) * 512;
    assert!(end > (40u64 << 30) - (2 << 20), "data ends at {end}");
    let fstab = read_guest_file(&disk, "/etc/fstab");
    assert!(fstab.contains("/dev/ciab/appliance /srv/ciab ext4"), "{fstab}");
    assert_eq!(fstab.matches("ciab-firstboot: volumes (begin)").count(), 1, "{fstab}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A FAT image labelled CIAB-CONFIG holding `site.toml`.
fn config_disk(dir: &Path, site_toml: &str) -> PathBuf {
    ciab_builder::run::site_config_disk(dir, site_toml).unwrap()
}

fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: box\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[test]
fn bad_site_config_stops_first_boot_visibly() {
    let dir = images::work_dir().join("firstboot-bad-site");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let disk = disk_with_image(&dir);
    let cfg = config_disk(&dir, "hostname = \"edge1\"\n[network]\nmode = \"static\"\naddress = \"192.0.2.10/24\"\ngateway = \"198.51.100.1\"\n");
    let port = free_port().unwrap();
    let mut m = machine(&disk);
    m.extra_disks.push(Disk { path: cfg, format: None, read_only: true });
    m.network = Network::User { forwards: vec![PortForward { host: port, guest: 8080, name: "status".into() }] };
    let vm = Vm::start(&m).unwrap();
    let expected = "CIAB-CONFIG:/site.toml:5:11: key `network.gateway`: 198.51.100.1 is outside 192.0.2.10/24";
    vm.wait_for_line("ciab-firstboot: FAILED at step site-config", BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e:#}"));
    vm.wait_for_line("ciab-firstboot: fix the cause", Duration::from_secs(30)).unwrap();
    // The console may split a long line; the message is whole in the stream.
    let serial: String = vm.serial_lines().concat();
    assert!(serial.contains(expected), "{expected:?} not on serial:\n{serial}");
    assert!(!vm.serial_lines().iter().any(|l| l.contains(&numbered(3, "plan"))), "nothing after the failed step may run");

    // The status page answers through the port forward once its service is up.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let body = loop {
        match http_get(port, "/status.json") {
            Ok(r) if r.starts_with("HTTP/1.1 200") => break r,
            _ if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_secs(2)),
            other => panic!("status.json did not answer: {other:?}"),
        }
    };
    let json: serde_json::Value = serde_json::from_str(body.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(json["state"], "failed", "{json:#}");
    let step = json["steps"].as_array().unwrap().iter().find(|s| s["name"] == "site-config").unwrap().clone();
    assert_eq!(step["state"], "failed");
    assert!(step["last_error"].as_str().unwrap().contains(expected), "{step:#}");

    // As a person sees it: the page rendered by a real browser.
    let shot = images::work_dir().join("status-page.png");
    let url = format!("http://127.0.0.1:{port}/");
    let profile = dir.join("chromium-profile");
    let flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--window-size=1100,900",
    ];
    let dom = Cmd::new("chromium").package("chromium").args(flags).arg(format!("--user-data-dir={}", profile.display())).arg("--dump-dom").arg(&url).run().unwrap();
    for needle in ["discover", "site-config", "plan", "storage", "failed", "198.51.100.1 is outside 192.0.2.10/24"] {
        assert!(dom.contains(needle), "{needle:?} not on the page:\n{dom}");
    }
    Cmd::new("chromium").args(flags).arg(format!("--user-data-dir={}", profile.display())).arg(format!("--screenshot={}", shot.display())).arg(&url).run().unwrap();
    assert!(std::fs::metadata(&shot).unwrap().len() > 1000, "screenshot {}", shot.display());
    drop(vm);
    let _ = std::fs::remove_dir_all(&dir);
}
