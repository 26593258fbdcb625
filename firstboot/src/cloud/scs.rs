//! What the Sovereign Cloud Stack standards ask of a fresh cloud that a box
//! can set up offline. Today: the mandatory flavors of scs-0103 (standard
//! flavors) with the extra specs it requires.

use std::collections::BTreeMap;

/// A flavor by its scs-0100 name: `SCS-<vCPUs><type>-<RAM GiB>[-<disk GB>[s]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flavor {
    pub name: &'static str,
    pub vcpus: u32,
    pub ram_gib: u32,
    /// Root disk in GB; 0 for flavors meant to boot from a volume.
    pub disk_gb: u32,
    /// `crowded-core` (the `L` flavors) or `shared-core` (`V`).
    pub cpu_type: &'static str,
    /// `ssd` for the two `…s` flavors.
    pub disk0_type: Option<&'static str>,
}

const fn v(name: &'static str, vcpus: u32, ram_gib: u32) -> Flavor {
    Flavor { name, vcpus, ram_gib, disk_gb: 0, cpu_type: "shared-core", disk0_type: None }
}

/// The 15 mandatory flavors of scs-0103-v1, in the standard's order.
pub const MANDATORY_FLAVORS: &[Flavor] = &[
    v("SCS-1V-4", 1, 4),
    v("SCS-2V-8", 2, 8),
    v("SCS-4V-16", 4, 16),
    v("SCS-8V-32", 8, 32),
    v("SCS-1V-2", 1, 2),
    v("SCS-2V-4", 2, 4),
    v("SCS-4V-8", 4, 8),
    v("SCS-8V-16", 8, 16),
    v("SCS-16V-32", 16, 32),
    v("SCS-1V-8", 1, 8),
    v("SCS-2V-16", 2, 16),
    v("SCS-4V-32", 4, 32),
    Flavor { name: "SCS-1L-1", vcpus: 1, ram_gib: 1, disk_gb: 0, cpu_type: "crowded-core", disk0_type: None },
    Flavor { name: "SCS-2V-4-20s", vcpus: 2, ram_gib: 4, disk_gb: 20, cpu_type: "shared-core", disk0_type: Some("ssd") },
    Flavor { name: "SCS-4V-16-100s", vcpus: 4, ram_gib: 16, disk_gb: 100, cpu_type: "shared-core", disk0_type: Some("ssd") },
];

impl Flavor {
    /// scs-0103's extra specs: `scs:name-v1` (the name with every dash
    /// after the first a colon), `scs:name-v2`, `scs:cpu-type`,
    /// `scs:disk0-type` when the flavor has a disk; and `hw_rng:allowed`, so
    /// images asking for a virtio RNG (scs-0102's `hw_rng_model`) get one.
    pub fn extra_specs(&self) -> BTreeMap<&'static str, String> {
        let (prefix, rest) = self.name.split_once('-').unwrap_or((self.name, ""));
        let mut specs = BTreeMap::from([
            ("scs:name-v1", format!("{prefix}-{}", rest.replace('-', ":"))),
            ("scs:name-v2", self.name.to_owned()),
            ("scs:cpu-type", self.cpu_type.to_owned()),
            ("hw_rng:allowed", "True".to_owned()),
        ]);
        if let Some(t) = self.disk0_type {
            specs.insert("scs:disk0-type", t.to_owned());
        }
        specs
    }

    /// Nova's create request; the id is the name, so a rerun finds it.
    pub fn create_body(&self) -> serde_json::Value {
        serde_json::json!({"flavor": {
            "name": self.name,
            "id": self.name,
            "vcpus": self.vcpus,
            "ram": self.ram_gib * 1024,
            "disk": self.disk_gb,
            "os-flavor-access:is_public": true,
        }})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The figures are the name's: vCPUs, type letter, RAM, disk.
    #[test]
    fn every_flavor_matches_its_name() {
        assert_eq!(MANDATORY_FLAVORS.len(), 15);
        for f in MANDATORY_FLAVORS {
            let parts: Vec<&str> = f.name.split('-').collect();
            assert_eq!(parts[0], "SCS");
            let (cpus, kind) = parts[1].split_at(parts[1].len() - 1);
            assert_eq!(cpus.parse::<u32>().unwrap(), f.vcpus, "{}", f.name);
            assert_eq!(f.cpu_type, if kind == "L" { "crowded-core" } else { "shared-core" }, "{}", f.name);
            assert_eq!(parts[2].parse::<u32>().unwrap(), f.ram_gib, "{}", f.name);
            match parts.get(3) {
                Some(d) => {
                    assert_eq!(d.trim_end_matches('s').parse::<u32>().unwrap(), f.disk_gb, "{}", f.name);
                    assert_eq!(f.disk0_type, d.ends_with('s').then_some("ssd"), "{}", f.name);
                }
                None => assert_eq!((f.disk_gb, f.disk0_type), (0, None), "{}", f.name),
            }
        }
    }

    #[test]
    fn extra_specs_follow_scs_0103() {
        let s = MANDATORY_FLAVORS.iter().find(|f| f.name == "SCS-2V-4-20s").unwrap().extra_specs();
        assert_eq!(s["scs:name-v1"], "SCS-2V:4:20s");
        assert_eq!(s["scs:name-v2"], "SCS-2V-4-20s");
        assert_eq!(s["scs:cpu-type"], "shared-core");
        assert_eq!(s["scs:disk0-type"], "ssd");
        assert_eq!(s["hw_rng:allowed"], "True");
        let l = MANDATORY_FLAVORS.iter().find(|f| f.name == "SCS-1L-1").unwrap().extra_specs();
        assert_eq!((l["scs:name-v1"].as_str(), l["scs:cpu-type"].as_str()), ("SCS-1L:1", "crowded-core"));
        assert!(!l.contains_key("scs:disk0-type"));
        let body = MANDATORY_FLAVORS[0].create_body();
        assert_eq!(body["flavor"]["ram"], 4096);
        assert_eq!(body["flavor"]["id"], "SCS-1V-4");
    }
}
