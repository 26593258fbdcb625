//! The SCS standards' checks the IaaS end-to-end test applies to a box,
//! written from the standards' text (not from firstboot's code, so a
//! mistake there is not repeated here):
//!
//! - scs-0103-v1 (standard flavors): the 15 mandatory flavors and their
//!   `scs:` extra specs;
//! - scs-0102-v1 (image metadata): the properties every public image must
//!   carry and the values they may take;
//! - scs-0104-v1 (standard images): the reserved names, and where an image
//!   under such a name must come from.

use serde_json::Value;

/// One row of scs-0103-v1's table of mandatory flavors: name, vCPUs, RAM
/// GiB, root disk GB (0: none), `scs:cpu-type`, `scs:disk0-type`.
pub type FlavorRow = (&'static str, u64, u64, u64, &'static str, Option<&'static str>);

pub const MANDATORY_FLAVORS: &[FlavorRow] = &[
    ("SCS-1V-4", 1, 4, 0, "shared-core", None),
    ("SCS-2V-8", 2, 8, 0, "shared-core", None),
    ("SCS-4V-16", 4, 16, 0, "shared-core", None),
    ("SCS-4V-16-100s", 4, 16, 100, "shared-core", Some("ssd")),
    ("SCS-8V-32", 8, 32, 0, "shared-core", None),
    ("SCS-1V-2", 1, 2, 0, "shared-core", None),
    ("SCS-2V-4", 2, 4, 0, "shared-core", None),
    ("SCS-2V-4-20s", 2, 4, 20, "shared-core", Some("ssd")),
    ("SCS-4V-8", 4, 8, 0, "shared-core", None),
    ("SCS-8V-16", 8, 16, 0, "shared-core", None),
    ("SCS-16V-32", 16, 32, 0, "shared-core", None),
    ("SCS-1V-8", 1, 8, 0, "shared-core", None),
    ("SCS-2V-16", 2, 16, 0, "shared-core", None),
    ("SCS-4V-32", 4, 32, 0, "shared-core", None),
    ("SCS-1L-1", 1, 1, 0, "crowded-core", None),
];

/// What is wrong with `flavor` (Nova's flavor with its `extra_specs`)
/// against `row`: vCPUs, RAM (GiB × 1024 MiB) and disk exactly, and the
/// extra specs `scs:name-v1` (dashes after the first become colons),
/// `scs:name-v2`, `scs:cpu-type`, `scs:disk0-type`.
pub fn flavor_errors(flavor: &Value, specs: &Value, row: &FlavorRow) -> Vec<String> {
    let (name, vcpus, ram_gib, disk, cpu_type, disk0) = *row;
    let mut errors = Vec::new();
    let mut want = |what: &str, got: &Value, want: Value| {
        if *got != want {
            errors.push(format!("{name}: {what} is {got}, scs-0103 says {want}"));
        }
    };
    want("vcpus", &flavor["vcpus"], vcpus.into());
    want("ram", &flavor["ram"], (ram_gib * 1024).into());
    want("disk", &flavor["disk"], disk.into());
    let (head, tail) = name.split_once('-').unwrap_or((name, ""));
    want("scs:name-v1", &specs["scs:name-v1"], format!("{head}-{}", tail.replace('-', ":")).into());
    want("scs:name-v2", &specs["scs:name-v2"], name.into());
    want("scs:cpu-type", &specs["scs:cpu-type"], cpu_type.into());
    want("scs:disk0-type", &specs["scs:disk0-type"], disk0.map_or(Value::Null, Value::from));
    errors
}

/// scs-0102's allowed values of `replace_frequency`.
const REPLACE_FREQUENCIES: &[&str] = &["yearly", "quarterly", "monthly", "weekly", "daily", "critical_bug", "never"];

/// scs-0104-v1's reserved image names and the `image_source` prefixes an
/// image under each name must have.
pub const RESERVED_NAMES: &[(&str, &[&str])] = &[
    ("Ubuntu 24.04", &["https://cloud-images.ubuntu.com/releases/noble/", "https://cloud-images.ubuntu.com/noble/"]),
    ("Ubuntu 22.04", &["https://cloud-images.ubuntu.com/releases/jammy/", "https://cloud-images.ubuntu.com/jammy/"]),
    ("Ubuntu 20.04", &["https://cloud-images.ubuntu.com/releases/focal/", "https://cloud-images.ubuntu.com/focal/"]),
    ("Debian 13", &["https://cloud.debian.org/images/cloud/trixie/", "https://cdimage.debian.org/cdimage/cloud/trixie/"]),
    ("Debian 12", &["https://cloud.debian.org/images/cloud/bookworm/", "https://cdimage.debian.org/cdimage/cloud/bookworm/"]),
    ("Debian 11", &["https://cloud.debian.org/images/cloud/bullseye/", "https://cdimage.debian.org/cdimage/cloud/bullseye/"]),
    ("Debian 10", &["https://cloud.debian.org/images/cloud/buster/", "https://cdimage.debian.org/cdimage/cloud/buster/"]),
];

/// `YYYY-MM-DD` or `YYYY-MM-DD hh:mm[:ss]` (also with `T` and `Z`).
fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b.get(r.clone()).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let date = b.len() >= 10 && digits(0..4) && b[4] == b'-' && digits(5..7) && b[7] == b'-' && digits(8..10);
    let rest = s.get(10..).unwrap_or("").trim_end_matches('Z');
    let time = rest.is_empty()
        || ((rest.starts_with(' ') || rest.starts_with('T')) && {
            let t = &rest[1..];
            let tb = t.as_bytes();
            (t.len() == 5 || t.len() == 8) && tb.iter().enumerate().all(|(i, c)| if i % 3 == 2 { *c == b':' } else { c.is_ascii_digit() })
        });
    date && time
}

fn is_url(s: &str) -> bool {
    ["http://", "https://", "ftp://", "ftps://"].iter().any(|p| s.strip_prefix(p).is_some_and(|rest| !rest.is_empty()))
}

/// What is wrong with a public image (Glance's v2 representation, whose
/// properties are top-level keys) by scs-0102-v1 and scs-0104-v1.
/// `image_size` warnings (min_disk smaller than the image) count as errors
/// here: a box registers nothing it cannot boot.
pub fn image_errors(image: &Value) -> Vec<String> {
    let name = image["name"].as_str().unwrap_or("?");
    let mut errors = Vec::new();
    let s = |key: &str| image[key].as_str().filter(|v| !v.is_empty());
    let mut need = |key: &str, ok: &dyn Fn(&str) -> bool, rule: &str| match s(key) {
        None => errors.push(format!("{name}: {key} is missing ({rule})")),
        Some(v) if !ok(v) => errors.push(format!("{name}: {key}={v:?}: {rule}")),
        Some(_) => {}
    };
    need("architecture", &|v| ["x86_64", "aarch64", "risc-v"].contains(&v), "x86_64, aarch64 or risc-v");
    need("hw_disk_bus", &|v| ["virtio", "scsi"].contains(&v), "virtio or scsi");
    need("os_distro", &|v| v.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'), "a lower-case distribution name");
    need("os_version", &|_| true, "the distribution's version");
    need("replace_frequency", &|v| REPLACE_FREQUENCIES.contains(&v), "yearly, quarterly, monthly, weekly, daily, critical_bug or never");
    need("provided_until", &|v| v == "none" || v == "notice" || is_date(v), "a date, none or notice");
    need(
        "uuid_validity",
        &|v| ["none", "notice", "forever"].contains(&v) || v.strip_prefix("last-").is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit())) || is_date(v),
        "none, last-N, a date, notice or forever",
    );
    need("image_source", &|v| v == "private" || is_url(v), "a URL or \"private\"");
    need("image_description", &|_| true, "a URL or text");
    need("image_build_date", &is_date, "YYYY-MM-DD[ hh:mm[:ss]]");
    need("image_original_user", &|_| true, "the default login user, or none");
    if let (Some(built), Some(created)) = (s("image_build_date"), s("created_at")) {
        // Both start with YYYY-MM-DD: the date comparison is a string one.
        if built[..10] > created[..10] {
            errors.push(format!("{name}: image_build_date {built} is after its registration {created}"));
        }
    }
    if let Some(hv) = s("hypervisor_type") {
        if !["qemu", "kvm", "xen", "hyper-v", "esxi"].contains(&hv) {
            errors.push(format!("{name}: hypervisor_type={hv:?}: qemu, kvm, xen, hyper-v or esxi"));
        }
    }
    if let Some(hotfix) = s("hotfix_hours") {
        if !hotfix.chars().all(|c| c.is_ascii_digit()) {
            errors.push(format!("{name}: hotfix_hours={hotfix:?}: a whole number of hours"));
        }
    }
    match image["min_ram"].as_u64() {
        Some(ram) if ram >= 64 => {}
        other => errors.push(format!("{name}: min_ram is {other:?}: at least 64 MiB")),
    }
    match (image["min_disk"].as_u64(), image["size"].as_u64()) {
        (Some(disk), Some(size)) if disk > 0 && disk << 30 >= size => {}
        (disk, size) => errors.push(format!("{name}: min_disk {disk:?} GiB does not hold the image's {size:?} bytes")),
    }
    if let Some((reserved, prefixes)) = RESERVED_NAMES.iter().find(|(n, _)| *n == name) {
        let source = s("image_source").unwrap_or("");
        if !prefixes.iter().any(|p| source.starts_with(p)) {
            errors.push(format!("{name}: a name scs-0104 reserves for {reserved}, but image_source {source:?} is not under {}", prefixes.join(" or ")));
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn good_image() -> Value {
        json!({
            "name": "ciab-tiny", "visibility": "public", "size": 45_088_768u64, "min_disk": 1, "min_ram": 128,
            "created_at": "2026-12-02T11:00:00Z", "architecture": "x86_64", "hw_disk_bus": "virtio", "os_distro": "linux",
            "os_version": "6.12.57+deb13-amd64", "replace_frequency": "never", "provided_until": "none", "uuid_validity": "none",
            "image_source": "private", "image_description": "a test guest", "image_build_date": "2026-11-30", "image_original_user": "none",
        })
    }

    #[test]
    fn a_conforming_image_passes_and_each_rule_can_fail() {
        assert_eq!(image_errors(&good_image()), Vec::<String>::new());
        let broken = [
            ("architecture", json!("amd64")),
            ("hw_disk_bus", json!("ide")),
            ("replace_frequency", json!("sometimes")),
            ("provided_until", json!("2026-13")),
            ("uuid_validity", json!("last-")),
            ("image_source", json!("somewhere")),
            ("image_build_date", json!("2026-12-03")),
            ("image_original_user", Value::Null),
            ("os_version", json!("")),
            ("min_ram", json!(32)),
            ("min_disk", json!(0)),
            ("hypervisor_type", json!("vbox")),
        ];
        for (key, value) in broken {
            let mut image = good_image();
            image[key] = value.clone();
            let errors = image_errors(&image);
            assert_eq!(errors.len(), 1, "{key}={value}: {errors:?}");
        }
        for ok in [("uuid_validity", "last-3"), ("uuid_validity", "2027-01-01"), ("provided_until", "notice"), ("image_build_date", "2026-11-30 10:00"), ("image_source", "https://example.org/x.qcow2")] {
            let mut image = good_image();
            image[ok.0] = json!(ok.1);
            assert_eq!(image_errors(&image), Vec::<String>::new(), "{ok:?}");
        }
    }

    #[test]
    fn reserved_names_need_their_upstream_source() {
        let mut image = good_image();
        image["name"] = json!("Ubuntu 24.04");
        assert!(image_errors(&image)[0].contains("reserves"), "a private image may not take a reserved name");
        image["image_source"] = json!("https://cloud-images.ubuntu.com/releases/noble/release-20251113/ubuntu-24.04-server-cloudimg-amd64.img");
        assert_eq!(image_errors(&image), Vec::<String>::new());
    }

    #[test]
    fn flavors_are_checked_field_by_field() {
        let row = MANDATORY_FLAVORS.iter().find(|r| r.0 == "SCS-2V-4-20s").unwrap();
        let flavor = json!({"vcpus": 2, "ram": 4096, "disk": 20});
        let specs = json!({"scs:name-v1": "SCS-2V:4:20s", "scs:name-v2": "SCS-2V-4-20s", "scs:cpu-type": "shared-core", "scs:disk0-type": "ssd"});
        assert_eq!(flavor_errors(&flavor, &specs, row), Vec::<String>::new());
        let mut wrong = specs.clone();
        wrong["scs:disk0-type"] = json!("hdd");
        assert_eq!(flavor_errors(&json!({"vcpus": 2, "ram": 4000, "disk": 20}), &wrong, row).len(), 2);
        assert_eq!(MANDATORY_FLAVORS.len(), 15);
        let l = MANDATORY_FLAVORS.iter().find(|r| r.0 == "SCS-1L-1").unwrap();
        let l_specs = json!({"scs:name-v1": "SCS-1L:1", "scs:name-v2": "SCS-1L-1", "scs:cpu-type": "crowded-core"});
        assert_eq!(flavor_errors(&json!({"vcpus": 1, "ram": 1024, "disk": 0}), &l_specs, l), Vec::<String>::new());
    }
}
