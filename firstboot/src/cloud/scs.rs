//! What the Sovereign Cloud Stack standards ask of a fresh cloud that a box
//! can set up offline: the mandatory flavors of scs-0103 (standard flavors)
//! with the extra specs it requires, the volume type description of scs-0114
//! and the default security group rules of scs-0115.

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

/// The box's volume type, Cinder's `default_volume_type`: a thin LV of the
/// `ciab-pool` on the box's own disk, attached over iSCSI. (Cinder's own
/// `__default__` stays, undescribed: scs-0114 promises nothing about it.)
pub const DEFAULT_VOLUME_TYPE: &str = "lvm-thin";

/// What users read about [`DEFAULT_VOLUME_TYPE`]. scs-0114 lets a type
/// advertise `encrypted` and `replicated` in a leading `[scs:…]` list; this
/// one is neither (one disk, no key manager yet), so it has no list.
pub const DEFAULT_VOLUME_TYPE_DESCRIPTION: &str =
    "Thin-provisioned LVM volume on this box's own disk, attached over iSCSI. Not replicated (a single box) and not encrypted.";

/// The aspects scs-0114 defines for a volume type's description.
pub const VOLUME_TYPE_ASPECTS: &[&str] = &["encrypted", "replicated"];

/// The aspects a volume type description advertises by scs-0114: a
/// leading `[scs:a, b]` list, sorted, each aspect known and listed once.
/// A description without the list advertises none.
pub fn volume_type_aspects(description: &str) -> Result<Vec<&str>, String> {
    let Some(rest) = description.strip_prefix("[scs:") else { return Ok(Vec::new()) };
    let list = rest.split_once(']').map(|(l, _)| l).ok_or_else(|| format!("{description:?}: the [scs:…] list has no closing bracket"))?;
    let aspects: Vec<&str> = list.split(',').map(str::trim).collect();
    if let Some(unknown) = aspects.iter().find(|a| !VOLUME_TYPE_ASPECTS.contains(a)) {
        return Err(format!("{description:?}: {unknown:?} is not an aspect of scs-0114 ({})", VOLUME_TYPE_ASPECTS.join(", ")));
    }
    if aspects.windows(2).any(|w| w[0] >= w[1]) {
        return Err(format!("{description:?}: scs-0114 wants the aspects sorted, each once"));
    }
    Ok(aspects)
}

/// Why one of Neutron's default security group rules (the template every
/// new group starts from) breaks scs-0115, if it does: no ingress except
/// from the group itself (remote group `PARENT`), and that only in
/// projects' `default` groups.
pub fn sg_rule_violation(rule: &serde_json::Value) -> Option<String> {
    if rule["direction"] != "ingress" {
        return None;
    }
    let what = || format!("ingress rule {} ({} {})", rule["id"].as_str().unwrap_or("?"), rule["ethertype"].as_str().unwrap_or("?"), rule["protocol"].as_str().unwrap_or("any protocol"));
    if rule["remote_group_id"] != "PARENT" {
        return Some(format!("{} lets in traffic from outside the group", what()));
    }
    if rule["used_in_non_default_sg"] == true {
        return Some(format!("{} applies to custom groups", what()));
    }
    None
}

/// The rules scs-0115 asks for (egress anywhere in every group, ingress
/// from the group itself in `default` groups), for both ethertypes, as
/// Neutron's create bodies.
pub fn wanted_sg_rules() -> Vec<serde_json::Value> {
    let mut rules = Vec::new();
    for ethertype in ["IPv4", "IPv6"] {
        rules.push(serde_json::json!({"direction": "egress", "ethertype": ethertype, "used_in_default_sg": true, "used_in_non_default_sg": true}));
        rules.push(serde_json::json!({"direction": "ingress", "ethertype": ethertype, "remote_group_id": "PARENT", "used_in_default_sg": true, "used_in_non_default_sg": false}));
    }
    rules
}

/// Whether an existing rule is `wanted` (a body of [`wanted_sg_rules`]):
/// the same direction, ethertype, remote group and use, for any protocol,
/// port and address.
pub fn sg_rule_matches(rule: &serde_json::Value, wanted: &serde_json::Value) -> bool {
    let any = |v: &serde_json::Value| v.is_null() || v == "0.0.0.0/0" || v == "::/0";
    ["direction", "ethertype", "used_in_default_sg", "used_in_non_default_sg"].iter().all(|k| rule[k] == wanted[k])
        && rule["remote_group_id"] == wanted["remote_group_id"]
        && rule["protocol"].is_null()
        && rule["port_range_min"].is_null()
        && any(&rule["remote_ip_prefix"])
        && rule["remote_address_group_id"].is_null()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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

    #[test]
    fn volume_type_descriptions_follow_scs_0114() {
        assert_eq!(volume_type_aspects(DEFAULT_VOLUME_TYPE_DESCRIPTION), Ok(vec![]));
        assert_eq!(volume_type_aspects("[scs:encrypted, replicated] LUKS on three replicas"), Ok(vec!["encrypted", "replicated"]));
        assert_eq!(volume_type_aspects("[scs:replicated]"), Ok(vec!["replicated"]));
        for bad in ["[scs:replicated, encrypted] unsorted", "[scs:encrypted, encrypted] twice", "[scs:fast] unknown", "[scs:encrypted no bracket"] {
            assert!(volume_type_aspects(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn neutrons_default_sg_rules_pass_scs_0115_and_open_ones_do_not() {
        // Neutron's own defaults, as its API lists them.
        let defaults = [
            json!({"id": "a", "direction": "egress", "ethertype": "IPv4", "protocol": null, "remote_ip_prefix": null, "remote_group_id": null, "remote_address_group_id": null, "port_range_min": null, "used_in_default_sg": true, "used_in_non_default_sg": true}),
            json!({"id": "b", "direction": "egress", "ethertype": "IPv6", "protocol": null, "remote_ip_prefix": null, "remote_group_id": null, "remote_address_group_id": null, "port_range_min": null, "used_in_default_sg": true, "used_in_non_default_sg": true}),
            json!({"id": "c", "direction": "ingress", "ethertype": "IPv4", "protocol": null, "remote_ip_prefix": null, "remote_group_id": "PARENT", "remote_address_group_id": null, "port_range_min": null, "used_in_default_sg": true, "used_in_non_default_sg": false}),
            json!({"id": "d", "direction": "ingress", "ethertype": "IPv6", "protocol": null, "remote_ip_prefix": null, "remote_group_id": "PARENT", "remote_address_group_id": null, "port_range_min": null, "used_in_default_sg": true, "used_in_non_default_sg": false}),
        ];
        assert!(defaults.iter().all(|r| sg_rule_violation(r).is_none()));
        for wanted in wanted_sg_rules() {
            assert_eq!(defaults.iter().filter(|r| sg_rule_matches(r, &wanted)).count(), 1, "{wanted}");
        }
        let ssh = json!({"id": "e", "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp", "port_range_min": 22, "remote_ip_prefix": "0.0.0.0/0", "remote_group_id": null, "used_in_default_sg": true, "used_in_non_default_sg": true});
        assert!(sg_rule_violation(&ssh).unwrap().contains("from outside the group"));
        let parent_everywhere = json!({"id": "f", "direction": "ingress", "ethertype": "IPv4", "remote_group_id": "PARENT", "used_in_default_sg": true, "used_in_non_default_sg": true});
        assert!(sg_rule_violation(&parent_everywhere).unwrap().contains("custom groups"));
        // An egress rule limited to one port is not the "egress anywhere" rule.
        let mut https_only = defaults[0].clone();
        https_only["protocol"] = json!("tcp");
        https_only["port_range_min"] = json!(443);
        assert!(!sg_rule_matches(&https_only, &wanted_sg_rules()[0]));
    }
}
