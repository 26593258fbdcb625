//! The network fabric under Neutron: Open vSwitch, the OVN databases and
//! ovn-northd, and ovn-controller on the one chassis, which is also the
//! gateway for routers. A flat provider network on the bridge `br-ex` gives
//! floating IPs; the box routes it to its management network with NAT.
//!
//! The OVN databases and the OVS database listen on loopback TCP: Neutron and
//! nova-compute do not run as root and cannot open the root-owned unix
//! sockets. Anything running on the box could write them; on an appliance
//! that runs only its own services that is the same trust as the unix
//! sockets give root.

use super::service;
use crate::ctx::Ctx;
use crate::engine::{About, Step};
use anyhow::{Context, Result, bail};
use std::net::Ipv4Addr;

/// The OVN Northbound and Southbound databases, for Neutron and the agents.
pub const NB: &str = "tcp:127.0.0.1:6641";

pub const SB: &str = "tcp:127.0.0.1:6642";

/// The OVS database, for os-vif in nova-compute and the metadata agent.
pub const OVSDB: &str = "tcp:127.0.0.1:6640";

/// The same as ovsdb-server's passive remote (`set-manager`).
const OVSDB_LISTEN: &str = "ptcp:6640:127.0.0.1";

/// Options of ovn-ctl for the central databases (`/etc/default/ovn-central`).
pub const CENTRAL_DEFAULTS: &str = "etc/default/ovn-central";

/// OVS's chassis id, kept across restarts by ovs-ctl (`--system-id=random`
/// reads it; the image has none, so each box gets its own).
pub const SYSTEM_ID: &str = "etc/openvswitch/system-id.conf";

/// The provider network's name in Neutron's ML2 config and OVN's bridge mappings.
pub const PHYSNET: &str = "physnet1";

/// The OVS bridge carrying it, with the box's own address on it.
pub const PROVIDER_BRIDGE: &str = "br-ex";

/// The provider network when the site sets no `network.floating_range`:
/// the range devstack uses for the same job.
pub const DEFAULT_PROVIDER: (Ipv4Addr, u8) = (Ipv4Addr::new(172, 24, 4, 0), 24);

/// networkd's file for the bridge.
pub const PROVIDER_NETWORK_FILE: &str = "etc/systemd/network/20-ciab-provider.network";

pub const FORWARDING_SYSCTL: &str = "etc/sysctl.d/60-ciab-forwarding.conf";

/// The units, unmasked and started together: the databases and daemons of
/// OVS and OVN (a masked service cannot be pulled in by the wrapper units).
pub const UNITS: &[&str] = &[
    "ovsdb-server.service",
    "ovs-vswitchd.service",
    "openvswitch-switch.service",
    "ovn-ovsdb-server-nb.service",
    "ovn-ovsdb-server-sb.service",
    "ovn-northd.service",
    "ovn-central.service",
    "ovn-controller.service",
    "ovn-host.service",
];

/// `/etc/default/ovn-central`: both databases on loopback TCP.
pub fn central_defaults() -> String {
    "# Written by ciab-firstboot: the OVN databases listen on loopback only.\n\
OVN_CTL_OPTS=\"--db-nb-addr=127.0.0.1 --db-nb-create-insecure-remote=yes --db-sb-addr=127.0.0.1 --db-sb-create-insecure-remote=yes\"\n"
        .to_owned()
}

/// `ovs-vsctl` arguments that make this host an OVN chassis and gateway:
/// Southbound database, geneve encapsulation (on loopback: with one chassis
/// no tunnel is ever built), the provider bridge mapping, and the gateway
/// option Neutron schedules router gateway ports by.
pub fn chassis_args(hostname: &str) -> Vec<String> {
    let mut args = vec![
        "--timeout=120".to_owned(),
        "--".to_owned(),
        "--may-exist".to_owned(),
        "add-br".to_owned(),
        PROVIDER_BRIDGE.to_owned(),
        "--".to_owned(),
        "set-manager".to_owned(),
        OVSDB_LISTEN.to_owned(),
        "--".to_owned(),
        "set".to_owned(),
        "Open_vSwitch".to_owned(),
        ".".to_owned(),
    ];
    for (k, v) in [
        ("hostname", hostname.to_owned()),
        ("ovn-remote", SB.to_owned()),
        ("ovn-encap-type", "geneve".to_owned()),
        ("ovn-encap-ip", "127.0.0.1".to_owned()),
        ("ovn-bridge-mappings", format!("{PHYSNET}:{PROVIDER_BRIDGE}")),
        ("ovn-cms-options", "enable-chassis-as-gw".to_owned()),
    ] {
        args.push(format!("external_ids:{k}=\"{v}\""));
    }
    args
}

/// Forwarding on every interface: replies to masqueraded traffic come in on
/// the management interface and are forwarded to the bridge.
pub fn forwarding_sysctl() -> &'static str {
    "# Written by ciab-firstboot: the box routes its provider network.\nnet.ipv4.ip_forward = 1\n"
}

/// The provider network floating IPs and router gateways come from. The box
/// is its gateway (first address) and masquerades what leaves it; the rest
/// is Neutron's pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Provider {
    network: Ipv4Addr,
    prefix: u8,
}

impl Provider {
    /// The site's `network.floating_range` (validated as IPv4, /29 or
    /// shorter), else `DEFAULT_PROVIDER`.
    pub fn from_site(range: Option<crate::model::site::Cidr>) -> Result<Provider> {
        let Some(range) = range else {
            return Ok(Provider { network: DEFAULT_PROVIDER.0, prefix: DEFAULT_PROVIDER.1 });
        };
        match range.network() {
            std::net::IpAddr::V4(network) if range.prefix() <= 29 => Ok(Provider { network, prefix: range.prefix() }),
            _ => bail!("network.floating_range {range}: floating IPs need an IPv4 range of 8 addresses or more"),
        }
    }

    pub fn cidr(&self) -> String {
        format!("{}/{}", self.network, self.prefix)
    }

    /// The box's address on the bridge, the subnet's gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// Neutron's allocation pool: everything after the gateway but the
    /// broadcast address.
    pub fn pool(&self) -> (Ipv4Addr, Ipv4Addr) {
        let broadcast = u32::from(self.network) | (u32::MAX >> self.prefix);
        (Ipv4Addr::from(u32::from(self.network) + 2), Ipv4Addr::from(broadcast - 1))
    }

    /// networkd's file for the bridge: the gateway address, and NAT of the
    /// provider network out of the box (networkd adds the nftables rule).
    pub fn networkd_unit(&self) -> String {
        format!(
            "# Written by ciab-firstboot: the provider network of floating IPs, routed and masqueraded by the box.\n\
[Match]\nName={PROVIDER_BRIDGE}\n\n[Link]\nRequiredForOnline=no\n\n[Network]\nAddress={}/{}\nConfigureWithoutCarrier=yes\nIPMasquerade=ipv4\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n",
            self.gateway(),
            self.prefix
        )
    }
}

/// Open vSwitch and OVN, started early and without waiting: C daemons that
/// come up while Keystone's slow start runs. `neutron` configures the
/// chassis once they are up.
pub struct OvnStep;

impl Step<Ctx> for OvnStep {
    fn about(&self) -> About {
        About { name: "ovn", title: "start Open vSwitch and OVN", after: &["site-config", "network"] }
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        Ok(ctx.stamp("ovn").exists() && UNITS.iter().all(|u| service::is_up_or_starting(u)))
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let root = &ctx.root;
        let id = root.join(SYSTEM_ID);
        if !id.exists() {
            std::fs::create_dir_all(id.parent().context("parent")?)?;
            ciab_core::atomic::write_atomic(&id, format!("{}\n", crate::model::secrets::uuid4()?).as_bytes())?;
        }
        ciab_core::atomic::write_atomic(&root.join(CENTRAL_DEFAULTS), central_defaults().as_bytes())?;
        let provider = Provider::from_site(ctx.site()?.network.floating_range)?;
        ciab_core::atomic::write_atomic(&root.join(PROVIDER_NETWORK_FILE), provider.networkd_unit().as_bytes())?;
        ciab_core::atomic::write_atomic(&root.join(FORWARDING_SYSCTL), forwarding_sysctl().as_bytes())?;
        std::fs::write(root.join("proc/sys/net/ipv4/ip_forward"), "1\n").context("enabling IPv4 forwarding")?;
        service::start_in_background(UNITS)?;
        tracing::info!("ovn: Open vSwitch, the OVN databases, ovn-northd and ovn-controller starting");
        ctx.set_stamp("ovn")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chassis_is_a_gateway_on_loopback_with_the_provider_bridge() {
        let args = chassis_args("box1").join(" ");
        assert!(args.starts_with("--timeout=120 -- --may-exist add-br br-ex -- set-manager ptcp:6640:127.0.0.1 -- set Open_vSwitch . "), "{args}");
        for want in [
            "external_ids:hostname=\"box1\"",
            "external_ids:ovn-remote=\"tcp:127.0.0.1:6642\"",
            "external_ids:ovn-encap-type=\"geneve\"",
            "external_ids:ovn-bridge-mappings=\"physnet1:br-ex\"",
            "external_ids:ovn-cms-options=\"enable-chassis-as-gw\"",
        ] {
            assert!(args.contains(want), "{want} in {args}");
        }
        assert!(central_defaults().contains("--db-nb-addr=127.0.0.1 --db-nb-create-insecure-remote=yes --db-sb-addr=127.0.0.1 --db-sb-create-insecure-remote=yes\""));
    }

    #[test]
    fn the_provider_bridge_is_the_gateway_and_masquerades() {
        let p = Provider::from_site(None).unwrap();
        let unit = p.networkd_unit();
        assert!(unit.contains("[Match]\nName=br-ex\n"), "{unit}");
        assert!(unit.contains("\nAddress=172.24.4.1/24\n"), "{unit}");
        assert!(unit.contains("\nIPMasquerade=ipv4\n"));
        assert_eq!(p.cidr(), "172.24.4.0/24");
        assert_eq!(p.pool(), (Ipv4Addr::new(172, 24, 4, 2), Ipv4Addr::new(172, 24, 4, 254)));
        let site: crate::model::site::Cidr = "192.0.2.128/25".parse().unwrap();
        let p = Provider::from_site(Some(site)).unwrap();
        assert_eq!((p.cidr(), p.gateway()), ("192.0.2.128/25".to_owned(), Ipv4Addr::new(192, 0, 2, 129)));
        assert_eq!(p.pool(), (Ipv4Addr::new(192, 0, 2, 130), Ipv4Addr::new(192, 0, 2, 254)));
        let small: crate::model::site::Cidr = "192.0.2.0/29".parse().unwrap();
        assert_eq!(Provider::from_site(Some(small)).unwrap().pool(), (Ipv4Addr::new(192, 0, 2, 2), Ipv4Addr::new(192, 0, 2, 6)));
        let v6: crate::model::site::Cidr = "fd00::/64".parse().unwrap();
        assert!(Provider::from_site(Some(v6)).is_err());
    }
}
