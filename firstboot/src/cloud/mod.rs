//! The IaaS layer's first-boot work: configuration rendered from the plan and
//! the site, keys and certificates made on the box, and the services started
//! in dependency order (DESIGN.md §6).

pub mod amqp;
pub mod barbican;
pub mod key_manager_steps;
pub mod load_balancer_steps;
pub mod object_store_steps;
pub mod octavia;
pub mod swift;
pub mod catalog;
pub mod cinder;
pub mod glance;
pub mod horizon;
pub mod dashboard_steps;
pub mod image_steps;
pub mod ini;
pub mod messaging;
pub mod neutron;
pub mod network_steps;
pub mod nova;
pub mod ovn;
pub mod placement;
pub mod service_steps;
pub mod uwsgi;
pub mod volume_steps;
pub mod keys;
pub mod laps;
pub mod pki;
pub mod rest;
pub mod scs;
pub mod identity;
pub mod service;
pub mod steps;
pub mod database;
pub mod defaults_steps;
pub mod frontend;
pub mod keystone;

/// Every long-running unit of the cloud, for the memory summary at ready.
pub fn cloud_units() -> Vec<&'static str> {
    let mut units: Vec<&str> = catalog::APIS.iter().map(|a| a.unit).collect();
    units.extend(swift::SERVERS.iter().map(|s| s.0));
    units.extend(volume_steps::CINDER_DAEMONS);
    units.extend([
        octavia::DRIVER_AGENT, "nova-api-metadata", "nova-conductor", "nova-scheduler", "nova-compute", "nova-novncproxy", "libvirtd",
        "neutron-ovn-metadata-agent", "ovn-northd", "ovn-controller", "ovn-ovsdb-server-nb", "ovn-ovsdb-server-sb", "ovs-vswitchd", "ovsdb-server",
        horizon::UNIT, "mariadb", "rabbitmq-server", "memcached", "haproxy", "tgt", "iscsid",
    ]);
    units
}

/// The plan of the evaluation VM the e2e test boots (`-m 12G -smp 4`, no KVM).
#[cfg(test)]
pub(crate) fn test_plan() -> crate::plan::Plan {
    use crate::discover::{Disk, Firmware, Hardware, Nic};
    let hw = Hardware {
        cpus: 4,
        memory_bytes: 12_245_676 * 1024,
        firmware: Firmware::Uefi,
        kvm_device: false,
        disks: vec![Disk { name: "vda".into(), size_bytes: 100 << 30, rotational: false, removable: false, holds_root: true }],
        nics: vec![Nic { name: "enp0s2".into(), mac: "52:54:00:12:34:56".into(), carrier: true }],
    };
    crate::plan::plan(&hw, crate::plan::Profile::Eval, 6 << 30).expect("the eval VM meets the eval minimum")
}

/// Where users reach the cloud: the site's public endpoint, or the box's own
/// address on the front end's port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub host: String,
    pub port: u16,
}

impl Endpoints {
    /// The public URL of the API behind `prefix` (`identity`, `compute`,
    /// …); an empty prefix gives the bare `https://host[:port]`.
    pub fn public(&self, prefix: &str) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        let root = if self.port == 443 { format!("https://{host}") } else { format!("https://{host}:{}", self.port) };
        if prefix.is_empty() {
            root
        } else {
            format!("{root}/{prefix}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_urls_omit_the_default_port_and_bracket_ipv6() {
        assert_eq!(Endpoints { host: "10.0.2.15".into(), port: 443 }.public("identity"), "https://10.0.2.15/identity");
        assert_eq!(Endpoints { host: "localhost".into(), port: 15443 }.public("compute"), "https://localhost:15443/compute");
        assert_eq!(Endpoints { host: "fd00::1".into(), port: 443 }.public("identity"), "https://[fd00::1]/identity");
        assert_eq!(Endpoints { host: "localhost".into(), port: 15443 }.public(""), "https://localhost:15443");
    }
}
