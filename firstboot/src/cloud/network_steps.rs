//! The network steps: `ovn` (Open vSwitch and OVN started early, without
//! waiting), `neutron` (the chassis and its provider bridge, Neutron's API
//! and the OVN metadata agent, started without waiting) and, once every API
//! answers, `external-network`: the flat provider network floating IPs come
//! from, created through Neutron's API.

use super::catalog::NETWORK;
use super::rest::{expect, request};
use super::service_steps::{api_started, install_api, launch_api, pool, write_private_conf};
use super::steps::{admin, db_url, endpoints, has_cloud, secret, set_stamp, stamp, write_dropin};
use super::uwsgi::Uwsgi;
use super::{messaging, neutron, ovn, service};
use crate::engine::Step;
use crate::steps::Ctx;
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::time::Duration;

/// The units that must be running for the chassis to work.
const CHASSIS_UNITS: &[&str] = &["ovsdb-server", "ovs-vswitchd", "ovn-ovsdb-server-nb", "ovn-ovsdb-server-sb", "ovn-northd", "ovn-controller"];
const METADATA_AGENT: &str = "neutron-ovn-metadata-agent";

/// Open vSwitch and OVN, started early and without waiting: C daemons that
/// come up while Keystone's slow start runs. `neutron` configures the
/// chassis once they are up.
pub struct OvnStep;

impl Step<Ctx> for OvnStep {
    fn name(&self) -> &'static str {
        "ovn"
    }
    fn title(&self) -> &'static str {
        "start Open vSwitch and OVN"
    }
    fn depends_on(&self) -> &'static [&'static str] {
        &["site-config", "network"]
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        Ok(!has_cloud(ctx)? || (stamp(ctx, "ovn").exists() && ovn::UNITS.iter().all(|u| service::is_up_or_starting(u))))
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let root = &ctx.root;
        let id = root.join(ovn::SYSTEM_ID);
        if !id.exists() {
            std::fs::create_dir_all(id.parent().context("parent")?)?;
            ciab_core::atomic::write_atomic(&id, format!("{}\n", crate::secrets::uuid4()?).as_bytes())?;
        }
        ciab_core::atomic::write_atomic(&root.join(ovn::CENTRAL_DEFAULTS), ovn::central_defaults().as_bytes())?;
        let provider = ovn::Provider::from_site(ctx.site()?.network.floating_range)?;
        ciab_core::atomic::write_atomic(&root.join(ovn::PROVIDER_NETWORK_FILE), provider.networkd_unit().as_bytes())?;
        ciab_core::atomic::write_atomic(&root.join(ovn::FORWARDING_SYSCTL), ovn::forwarding_sysctl().as_bytes())?;
        std::fs::write(root.join("proc/sys/net/ipv4/ip_forward"), "1\n").context("enabling IPv4 forwarding")?;
        service::start_in_background(ovn::UNITS)?;
        println!("ciab-firstboot: ovn: Open vSwitch, the OVN databases, ovn-northd and ovn-controller starting");
        set_stamp(ctx, "ovn")
    }
}

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
    fn name(&self) -> &'static str {
        "neutron"
    }
    fn title(&self) -> &'static str {
        "configure Neutron with OVN, the network service"
    }
    fn depends_on(&self) -> &'static [&'static str] {
        &["identity", "messaging", "ovn"]
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        Ok(api_started(ctx, &NETWORK)?
            && (!has_cloud(ctx)? || (CHASSIS_UNITS.iter().all(|u| service::is_active(u)) && service::is_up_or_starting(METADATA_AGENT))))
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let cp = ctx.plan()?.control_plane.context("a cloud profile's plan has a control plane")?;
        Self::chassis(ctx)?;
        let site = ctx.site()?;
        let endpoints = endpoints(ctx)?;
        let rabbit = secret(ctx, messaging::RABBIT_SECRET)?;
        let conf = neutron::conf(&neutron::NeutronConf {
            db_url: db_url(ctx, "neutron", "neutron")?,
            rabbit_password: &rabbit,
            endpoints: &endpoints,
            host: &site.hostname,
            service_password: &secret(ctx, "neutron-service")?,
            pool: pool(ctx)?,
        });
        write_private_conf(&ctx.root, neutron::ML2_CONF, &neutron::ml2_conf().render(), "neutron")?;
        write_private_conf(&ctx.root, neutron::METADATA_AGENT_CONF, &neutron::metadata_agent_conf(&site.hostname, &secret(ctx, "neutron-metadata")?).render(), "neutron")?;
        write_dropin(&ctx.root, &format!("{METADATA_AGENT}.service"), &neutron::metadata_agent_dropin())?;
        let ini = Uwsgi { app_per_worker: true, ..Uwsgi::api("neutron-api", NETWORK.bind, "/usr/bin/neutron-api", "neutron", cp.workers.neutron_server) };
        install_api(ctx, &NETWORK, &ini, (neutron::CONF, conf.render()), &[])?;
        println!("ciab-firstboot: neutron: OVN chassis up (gateway, {} on {}); metadata agent starting", ovn::PHYSNET, ovn::PROVIDER_BRIDGE);
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
    fn name(&self) -> &'static str {
        "external-network"
    }
    fn title(&self) -> &'static str {
        "create the external network for floating IPs"
    }
    fn depends_on(&self) -> &'static [&'static str] {
        &["apis"]
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        Ok(!has_cloud(ctx)? || stamp(ctx, "external-network").exists())
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
        println!("ciab-firstboot: external-network: {EXTERNAL_NETWORK} ({cidr}, flat on {}) for routers and floating IPs", ovn::PHYSNET);
        set_stamp(ctx, "external-network")
    }
}
