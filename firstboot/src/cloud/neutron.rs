//! Neutron, the network service, with ML2/OVN: geneve tenant networks, a flat
//! provider network for floating IPs, routers in OVN, DHCP served by OVN
//! itself (no DHCP or L3 agent). The API runs under uwsgi with one app per
//! worker (its OVN database connections live in threads, which a fork would
//! lose). No RPC server: with OVN no agent talks to Neutron over the queue.
//! The OVN metadata agent proxies guests' metadata requests to Nova.

use super::catalog::{Endpoints, NETWORK, endpoints};
use super::database::{db_url, pool};
use super::identity::admin;
use super::ini::Ini;
use super::rest::{expect, request};
use super::service::{write_dropin, write_private_conf};
use super::uwsgi::{Uwsgi, api_started, install_api, launch_api};
use super::{keystone, messaging, ovn, service};
use crate::ctx::Ctx;
use crate::engine::{About, Step};
use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::time::Duration;

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
        .set("DEFAULT", "state_path", "/var/lib/neutron");
    super::oslo::transport(&mut ini, c.rabbit_password);
    ini.set("DEFAULT", "notify_nova_on_port_status_changes", true)
        .set("DEFAULT", "notify_nova_on_port_data_changes", true);
    super::oslo::db(&mut ini, "database", &c.db_url, c.pool);
    keystone::authtoken(&mut ini, c.endpoints, NETWORK.name, c.service_password);
    // Neutron tells Nova when a port is plugged; Nova waits for that before
    // it starts a server.
    keystone::service_auth(&mut ini, "nova", NETWORK.name, c.service_password);
    ini.set("nova", "endpoint_type", "internal");
    super::oslo::lock_path(&mut ini, "/var/lib/neutron/lock");
    super::oslo::proxy_headers(&mut ini);
    super::oslo::notifications_off(&mut ini);
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
        .set("ovn", "ovn_sb_connection", ovn::SB);
    super::oslo::lock_path(&mut ini, "/var/lib/neutron/lock");
    ini
}

/// The agent's unit runs it with its own file only, logging to the journal.
pub fn metadata_agent_dropin() -> String {
    format!("[Service]\nExecStart=\nExecStart=/usr/bin/neutron-ovn-metadata-agent --config-file=/{METADATA_AGENT_CONF}\n")
}

/// The units that must be running for the chassis to work.
const CHASSIS_UNITS: &[&str] = &["ovsdb-server", "ovs-vswitchd", "ovn-ovsdb-server-nb", "ovn-ovsdb-server-sb", "ovn-northd", "ovn-controller"];

const METADATA_AGENT: &str = "neutron-ovn-metadata-agent";

pub struct NeutronStep;

impl NeutronStep {
    /// This host an OVN gateway chassis with the provider bridge, which
    /// networkd then addresses and masquerades.
    fn chassis(ctx: &Ctx) -> Result<()> {
        service::wait_active(CHASSIS_UNITS, Duration::from_secs(300))?;
        let site = ctx.site()?;
        ciab_core::exec::Cmd::new("ovs-vsctl").package("openvswitch-switch").args(ovn::chassis_args(&site.hostname)).run().context("making this host an OVN gateway chassis")?;
        ciab_core::exec::Cmd::new("networkctl").package("systemd").arg("reload").run()?;
        Ok(())
    }
}

impl Step<Ctx> for NeutronStep {
    fn about(&self) -> About {
        About { name: "neutron", title: "configure Neutron with OVN, the network service", after: &["identity", "messaging", "ovn"] }
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        Ok(api_started(ctx, &NETWORK)?
            && CHASSIS_UNITS.iter().all(|u| service::is_active(u)) && service::is_up_or_starting(METADATA_AGENT))
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let cp = ctx.control_plane()?;
        Self::chassis(ctx)?;
        let site = ctx.site()?;
        let endpoints = endpoints(ctx)?;
        let rabbit = ctx.secret(messaging::RABBIT_SECRET)?;
        let conf = conf(&NeutronConf {
            db_url: db_url(ctx, "neutron", "neutron")?,
            rabbit_password: &rabbit,
            endpoints: &endpoints,
            host: &site.hostname,
            service_password: &ctx.secret("neutron-service")?,
            pool: pool(ctx)?,
        });
        write_private_conf(&ctx.root, ML2_CONF, &ml2_conf().render(), "neutron")?;
        write_private_conf(&ctx.root, METADATA_AGENT_CONF, &metadata_agent_conf(&site.hostname, &ctx.secret("neutron-metadata")?).render(), "neutron")?;
        write_dropin(&ctx.root, &format!("{METADATA_AGENT}.service"), &metadata_agent_dropin())?;
        let ini = Uwsgi { app_per_worker: true, ..Uwsgi::api("neutron-api", NETWORK.bind, "/usr/bin/neutron-api", "neutron", cp.workers.neutron_server) };
        install_api(ctx, &NETWORK, &ini, (CONF, conf.render()), &[])?;
        tracing::info!("neutron: OVN chassis up (gateway, {} on {}); metadata agent starting", ovn::PHYSNET, ovn::PROVIDER_BRIDGE);
        launch_api(ctx, &NETWORK, &ini, &[METADATA_AGENT])
    }
}

/// The network agents as Neutron lists them: (type, alive) each.
fn agents(token: &str) -> Result<Vec<(String, bool)>> {
    let r = expect(request(NETWORK.bind, "GET", "/v2.0/agents", Some(token), None)?, "listing network agents", &[200])?;
    Ok(r.body["agents"]
        .as_array()
        .map(|a| a.iter().map(|x| (x["agent_type"].as_str().unwrap_or("?").to_owned(), x["alive"] == true)).collect())
        .unwrap_or_default())
}

/// The agents every box has: the chassis (a gateway) and the metadata agent.
pub const REQUIRED_AGENTS: &[&str] = &["OVN Controller Gateway agent", "OVN Metadata agent"];

/// Every network agent alive and each of `REQUIRED_AGENTS` among them.
pub fn network_ready(token: &str) -> Result<bool> {
    let agents = agents(token)?;
    Ok(agents.iter().all(|(_, alive)| *alive) && REQUIRED_AGENTS.iter().all(|t| agents.iter().any(|(a, _)| a == t)))
}

/// The provider network's name in Neutron.
pub const EXTERNAL_NETWORK: &str = "public";

/// The external network routers attach to and floating IPs come from.
pub struct ExternalNetworkStep;

impl ExternalNetworkStep {
    fn find(token: &str, path: &str, key: &str, what: &str) -> Result<Option<String>> {
        let r = expect(request(NETWORK.bind, "GET", path, Some(token), None)?, what, &[200])?;
        Ok(r.body[key].as_array().and_then(|a| a.first()).and_then(|n| n["id"].as_str()).map(str::to_owned))
    }

    fn create(token: &str, path: &str, body: &Value, key: &str, what: &str) -> Result<String> {
        let r = expect(request(NETWORK.bind, "POST", path, Some(token), Some(body))?, what, &[201])?;
        r.body[key]["id"].as_str().map(str::to_owned).with_context(|| format!("{what}: Neutron returned no id"))
    }
}

impl Step<Ctx> for ExternalNetworkStep {
    fn about(&self) -> About {
        About { name: "external-network", title: "create the external network for floating IPs", after: &["apis"] }
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        Ok(ctx.stamp("external-network").exists())
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let keystone = admin(ctx)?;
        let token = keystone.token();
        let network = match Self::find(token, &format!("/v2.0/networks?name={EXTERNAL_NETWORK}"), "networks", "looking up the external network")? {
            Some(id) => id,
            None => Self::create(
                token,
                "/v2.0/networks",
                &json!({"network": {
                    "name": EXTERNAL_NETWORK,
                    "description": "The box's provider network: floating IPs and router gateways, routed by the box",
                    "router:external": true,
                    "provider:network_type": "flat",
                    "provider:physical_network": ovn::PHYSNET,
                }}),
                "network",
                "creating the external network",
            )?,
        };
        let provider = ovn::Provider::from_site(ctx.site()?.network.floating_range)?;
        let cidr = provider.cidr();
        if Self::find(token, &format!("/v2.0/subnets?network_id={network}"), "subnets", "looking up the external subnet")?.is_none() {
            let (start, end) = provider.pool();
            Self::create(
                token,
                "/v2.0/subnets",
                &json!({"subnet": {
                    "network_id": network,
                    "name": format!("{EXTERNAL_NETWORK}-subnet"),
                    "ip_version": 4,
                    "cidr": cidr,
                    "gateway_ip": provider.gateway().to_string(),
                    "enable_dhcp": false,
                    "allocation_pools": [{"start": start.to_string(), "end": end.to_string()}],
                }}),
                "subnet",
                "creating the external subnet",
            )?;
        }
        tracing::info!("external-network: {EXTERNAL_NETWORK} ({cidr}, flat on {}) for routers and floating IPs", ovn::PHYSNET);
        ctx.set_stamp("external-network")
    }
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
