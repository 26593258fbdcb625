//! Neutron, the network service, with ML2/OVN: geneve tenant networks, a flat
//! provider network for floating IPs, routers in OVN, DHCP served by OVN
//! itself (no DHCP or L3 agent). The API runs under uwsgi with one app per
//! worker (its OVN database connections live in threads, which a fork would
//! lose). No RPC server: with OVN no agent talks to Neutron over the queue.
//! The OVN metadata agent proxies guests' metadata requests to Nova.

use super::catalog::NETWORK;
use super::ini::Ini;
use super::{keystone, messaging, ovn, Endpoints};

pub const CONF: &str = "etc/neutron/neutron.conf";
/// Read by the API after neutron.conf (Neutron's default config files).
pub const ML2_CONF: &str = "etc/neutron/plugins/ml2/ml2_conf.ini";
pub const METADATA_AGENT_CONF: &str = "etc/neutron/neutron_ovn_metadata_agent.ini";
/// Nova's metadata API, where the metadata agent sends guests' requests.
pub const NOVA_METADATA: (&str, u16) = ("127.0.0.1", 8775);

/// What neutron.conf is rendered from.
#[derive(Debug, Clone)]
pub struct NeutronConf<'a> {
    pub db_url: String,
    pub rabbit_password: &'a str,
    pub endpoints: &'a Endpoints,
    pub host: &'a str,
    pub service_password: &'a str,
    pub pool: (u32, u32),
}

pub fn conf(c: &NeutronConf) -> Ini {
    let mut ini = Ini::new("Written by ciab-firstboot; rewritten on every run of the neutron step.");
    ini.set("DEFAULT", "host", c.host)
        .set("DEFAULT", "core_plugin", "ml2")
        .set("DEFAULT", "service_plugins", "ovn-router")
        .set("DEFAULT", "allow_overlapping_ips", true)
        .set("DEFAULT", "auth_strategy", "keystone")
        .set("DEFAULT", "api_paste_config", "/etc/neutron/api-paste.ini")
        .set("DEFAULT", "state_path", "/var/lib/neutron")
        .set("DEFAULT", "transport_url", messaging::transport_url(c.rabbit_password))
        .set("DEFAULT", "notify_nova_on_port_status_changes", true)
        .set("DEFAULT", "notify_nova_on_port_data_changes", true);
    super::database::oslo_db(&mut ini, "database", &c.db_url, c.pool);
    keystone::authtoken(&mut ini, c.endpoints, NETWORK.name, c.service_password);
    // Neutron tells Nova when a port is plugged; Nova waits for that before
    // it starts a server.
    keystone::service_auth(&mut ini, "nova", NETWORK.name, c.service_password);
    ini.set("nova", "endpoint_type", "internal")
        .set("oslo_concurrency", "lock_path", "/var/lib/neutron/lock")
        .set("oslo_middleware", "enable_proxy_headers_parsing", true)
        .set("oslo_messaging_notifications", "driver", "noop");
    ini
}

/// The ML2 plugin and its OVN driver.
pub fn ml2_conf() -> Ini {
    let mut ini = Ini::new("Written by ciab-firstboot; rewritten on every run of the neutron step.");
    ini.set("ml2", "type_drivers", "flat,geneve")
        .set("ml2", "tenant_network_types", "geneve")
        .set("ml2", "mechanism_drivers", "ovn")
        .set("ml2", "extension_drivers", "port_security")
        .set("ml2", "overlay_ip_version", 4)
        .set("ml2_type_flat", "flat_networks", ovn::PHYSNET)
        .set("ml2_type_geneve", "vni_ranges", "1:65536")
        .set("ml2_type_geneve", "max_header_size", 38)
        .set("securitygroup", "enable_security_group", true)
        .set("ovn", "ovn_nb_connection", ovn::NB)
        .set("ovn", "ovn_sb_connection", ovn::SB)
        .set("ovn", "ovn_l3_scheduler", "leastloaded")
        .set("ovn", "ovn_metadata_enabled", true)
        .set("ovn", "enable_distributed_floating_ip", false);
    ini
}

/// The OVN metadata agent, self-contained: it needs neither the database
/// nor the queue.
pub fn metadata_agent_conf(host: &str, metadata_secret: &str) -> Ini {
    let mut ini = Ini::new("Written by ciab-firstboot; rewritten on every run of the neutron step.");
    ini.set("DEFAULT", "host", host)
        .set("DEFAULT", "state_path", "/var/lib/neutron")
        .set("DEFAULT", "nova_metadata_host", NOVA_METADATA.0)
        .set("DEFAULT", "nova_metadata_port", NOVA_METADATA.1)
        .set("DEFAULT", "metadata_proxy_shared_secret", metadata_secret)
        .set("DEFAULT", "metadata_workers", 1)
        .set("agent", "root_helper", "sudo neutron-rootwrap /etc/neutron/rootwrap.conf")
        .set("ovs", "ovsdb_connection", ovn::OVSDB)
        .set("ovn", "ovn_sb_connection", ovn::SB)
        .set("oslo_concurrency", "lock_path", "/var/lib/neutron/lock");
    ini
}

/// The agent's unit runs it with its own file only, logging to the journal.
pub fn metadata_agent_dropin() -> String {
    format!("[Service]\nExecStart=\nExecStart=/usr/bin/neutron-ovn-metadata-agent --config-file=/{METADATA_AGENT_CONF}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neutron_uses_ovn_on_loopback_and_tells_nova() {
        let e = Endpoints { host: "cloud.example.org".into(), port: 443 };
        let ini = conf(&NeutronConf { db_url: "mysql+pymysql://neutron:pw@localhost/neutron".into(), rabbit_password: "rpw", endpoints: &e, host: "box", service_password: "svc", pool: (5, 10) });
        assert_eq!(ini.get("DEFAULT", "core_plugin"), Some("ml2"));
        assert_eq!(ini.get("DEFAULT", "service_plugins"), Some("ovn-router"));
        assert_eq!(ini.get("DEFAULT", "transport_url"), Some("rabbit://openstack:rpw@127.0.0.1:5672/"));
        assert_eq!(ini.get("database", "connection"), Some("mysql+pymysql://neutron:pw@localhost/neutron"));
        assert_eq!(ini.get("keystone_authtoken", "username"), Some("neutron"));
        assert_eq!(ini.get("nova", "username"), Some("neutron"));
        assert_eq!(ini.get("nova", "password"), Some("svc"));
        assert_eq!(ini.get("nova", "endpoint_type"), Some("internal"));

        let ml2 = ml2_conf();
        assert_eq!(ml2.get("ml2", "mechanism_drivers"), Some("ovn"));
        assert_eq!(ml2.get("ml2", "tenant_network_types"), Some("geneve"));
        assert_eq!(ml2.get("ml2_type_flat", "flat_networks"), Some("physnet1"));
        assert_eq!(ml2.get("ovn", "ovn_nb_connection"), Some("tcp:127.0.0.1:6641"));
        assert_eq!(ml2.get("ovn", "ovn_sb_connection"), Some("tcp:127.0.0.1:6642"));

        let agent = metadata_agent_conf("box", "meta-secret");
        assert_eq!(agent.get("DEFAULT", "metadata_proxy_shared_secret"), Some("meta-secret"));
        assert_eq!(agent.get("DEFAULT", "nova_metadata_port"), Some("8775"));
        assert_eq!(agent.get("ovs", "ovsdb_connection"), Some("tcp:127.0.0.1:6640"));
        assert_eq!(agent.get("database", "connection"), None, "the agent gets no database password");
        assert!(metadata_agent_dropin().contains("\nExecStart=\nExecStart=/usr/bin/neutron-ovn-metadata-agent --config-file=/etc/neutron/neutron_ovn_metadata_agent.ini\n"));
    }
}
