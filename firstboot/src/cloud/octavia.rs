//! Octavia, the load balancer service, with OVN's provider driver only: a
//! load balancer is an OVN load balancer on the box's own OVN, so no amphora
//! image and no service VMs (README: The cloud (IaaS)). The API runs under uwsgi; the
//! provider's agent (`octavia-driver-agent`) reports provisioning and
//! operating status back through sockets in /run/octavia. OVN's provider
//! speaks TCP, UDP and SCTP, with the SOURCE_IP_PORT algorithm.

use super::catalog::{Endpoints, LOAD_BALANCER, NETWORK, endpoints};
use super::database::{db_url, pool};
use super::ini::Ini;
use super::service::write_named_dropin;
use super::uwsgi::{Uwsgi, api_started, install_api, launch_api};
use super::{keystone, messaging, ovn, service};
use crate::ctx::Ctx;
use crate::engine::{About, Step};
use anyhow::Result;

pub const CONF: &str = "etc/octavia/octavia.conf";

/// The provider's agent, Debian's unit.
pub const DRIVER_AGENT: &str = "octavia-driver-agent";

/// The one provider.
pub const PROVIDER: &str = "ovn";

/// What octavia.conf is rendered from.
#[derive(Debug, Clone)]
pub struct OctaviaConf<'a> {
    pub db_url: String,
    pub rabbit_password: &'a str,
    pub endpoints: &'a Endpoints,
    pub service_password: &'a str,
    pub pool: (u32, u32),
}

pub fn conf(c: &OctaviaConf) -> Ini {
    let mut ini = Ini::new("Written by ciab-firstboot; rewritten on every run of the octavia step.");
    super::oslo::transport(&mut ini, c.rabbit_password);
    ini.set("api_settings", "api_base_uri", LOAD_BALANCER.public_url(c.endpoints))
        .set("api_settings", "enabled_provider_drivers", format!("{PROVIDER}:OVN provider (load balancers in the box's OVN; no amphorae)"))
        .set("api_settings", "default_provider_driver", PROVIDER)
        .set("driver_agent", "enabled_provider_agents", PROVIDER)
        .set("ovn", "ovn_nb_connection", ovn::NB)
        .set("ovn", "ovn_sb_connection", ovn::SB);
    super::oslo::db(&mut ini, "database", &c.db_url, c.pool);
    keystone::authtoken(&mut ini, c.endpoints, LOAD_BALANCER.name, c.service_password);
    // The provider creates the VIP's port and reads subnets through
    // Neutron's API as the service user, on loopback.
    keystone::service_auth(&mut ini, "service_auth", LOAD_BALANCER.name, c.service_password);
    ini.set("neutron", "valid_interfaces", "internal")
        // The provider's own Neutron client (openstacksdk on a keystone
        // session) ignores valid_interfaces and takes the catalog's public
        // endpoint: the site's public host and port, which the box itself
        // may not reach (behind NAT or a forwarded port, as in the IaaS
        // test, it refused every load balancer). Neutron on loopback.
        .set("neutron", "endpoint_override", NETWORK.internal_url())
        // Its Octavia client (the OVN database sync tool's) does read this.
        .set("service_auth", "valid_interfaces", "internal")
        .set("neutron", "region_name", keystone::REGION);
    super::oslo::proxy_headers(&mut ini);
    super::oslo::notifications_off(&mut ini);
    ini
}

/// Every Octavia unit declares `RuntimeDirectory=octavia`, and systemd
/// removes a runtime directory when any unit naming it stops: a restart of
/// the API would take the agent's status sockets with it, leaving load
/// balancers pending for ever.
const KEEP_RUNTIME_DIR: &str = "[Service]\nRuntimeDirectoryPreserve=yes\n";

pub struct OctaviaStep;

impl Step<Ctx> for OctaviaStep {
    fn about(&self) -> About {
        // After neutron: OVN's provider works in the northbound database Neutron fills.
        About { name: "octavia", title: "configure Octavia, the load balancer service", after: &["identity", "messaging", "neutron"] }
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        Ok(api_started(ctx, &LOAD_BALANCER)? && service::is_up_or_starting(DRIVER_AGENT))
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let cp = ctx.control_plane()?;
        let conf = conf(&OctaviaConf {
            db_url: db_url(ctx, "octavia", "octavia")?,
            rabbit_password: &ctx.secret(messaging::RABBIT_SECRET)?,
            endpoints: &endpoints(ctx)?,
            service_password: &ctx.secret("octavia-service")?,
            pool: pool(ctx)?,
        });
        // The provider driver opens OVN connections when loaded: in each
        // worker, not in a master that forks.
        let ini = Uwsgi { app_per_worker: true, ..Uwsgi::api("octavia-api", LOAD_BALANCER.bind, "/usr/bin/octavia-wsgi", "octavia", cp.workers.octavia_api) };
        install_api(ctx, &LOAD_BALANCER, &ini, (CONF, conf.render()), &[])?;
        for unit in [LOAD_BALANCER.unit, DRIVER_AGENT] {
            write_named_dropin(&ctx.root, &format!("{unit}.service"), "ciab-runtime", KEEP_RUNTIME_DIR)?;
        }
        launch_api(ctx, &LOAD_BALANCER, &ini, &[DRIVER_AGENT])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ovn_provider_is_the_only_one() {
        let e = Endpoints { host: "cloud.example.org".into(), port: 443 };
        let ini = conf(&OctaviaConf { db_url: "mysql+pymysql://octavia:pw@localhost/octavia".into(), rabbit_password: "r", endpoints: &e, service_password: "svc", pool: (5, 5) });
        assert!(ini.get("api_settings", "enabled_provider_drivers").unwrap().starts_with("ovn:"));
        let drivers = ini.get("api_settings", "enabled_provider_drivers").unwrap();
        assert!(!drivers.contains(',') && drivers.matches(':').count() == 1, "one name:description pair: {drivers}");
        assert_eq!(ini.get("api_settings", "default_provider_driver"), Some("ovn"));
        assert_eq!(ini.get("driver_agent", "enabled_provider_agents"), Some("ovn"));
        assert_eq!(ini.get("ovn", "ovn_nb_connection"), Some("tcp:127.0.0.1:6641"));
        assert_eq!(ini.get("api_settings", "api_base_uri"), Some("https://cloud.example.org/load-balancer"));
        assert_eq!(ini.get("service_auth", "username"), Some("octavia"));
        assert_eq!(ini.get("neutron", "valid_interfaces"), Some("internal"));
        assert_eq!(ini.get("neutron", "endpoint_override"), Some("http://127.0.0.1:9696"), "never the public endpoint");
        assert_eq!(ini.get("service_auth", "valid_interfaces"), Some("internal"));
    }
}
