//! The `octavia` step: the load balancer API with OVN's provider and the
//! provider's agent, started without waiting (the `apis` step waits).

use super::catalog::LOAD_BALANCER;
use super::service_steps::{api_started, install_api, launch_api, pool};
use super::steps::{db_url, endpoints, has_cloud, secret, write_named_dropin};
use super::uwsgi::Uwsgi;
use super::{messaging, octavia, service};
use crate::engine::Step;
use crate::steps::Ctx;
use anyhow::{Context, Result};

/// Every Octavia unit declares `RuntimeDirectory=octavia`, and systemd
/// removes a runtime directory when any unit naming it stops: a restart of
/// the API would take the agent's status sockets with it, leaving load
/// balancers pending for ever.
const KEEP_RUNTIME_DIR: &str = "[Service]\nRuntimeDirectoryPreserve=yes\n";

pub struct OctaviaStep;

impl Step<Ctx> for OctaviaStep {
    fn name(&self) -> &'static str {
        "octavia"
    }
    fn title(&self) -> &'static str {
        "configure Octavia, the load balancer service"
    }
    fn depends_on(&self) -> &'static [&'static str] {
        // OVN's provider works in the northbound database Neutron fills.
        &["identity", "messaging", "neutron"]
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        Ok(api_started(ctx, &LOAD_BALANCER)? && (!has_cloud(ctx)? || service::is_up_or_starting(octavia::DRIVER_AGENT)))
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let cp = ctx.plan()?.control_plane.context("a cloud profile's plan has a control plane")?;
        let conf = octavia::conf(&octavia::OctaviaConf {
            db_url: db_url(ctx, "octavia", "octavia")?,
            rabbit_password: &secret(ctx, messaging::RABBIT_SECRET)?,
            endpoints: &endpoints(ctx)?,
            service_password: &secret(ctx, "octavia-service")?,
            pool: pool(ctx)?,
        });
        // The provider driver opens OVN connections when loaded: in each
        // worker, not in a master that forks.
        let ini = Uwsgi { app_per_worker: true, ..Uwsgi::api("octavia-api", LOAD_BALANCER.bind, "/usr/bin/octavia-wsgi", "octavia", cp.workers.octavia_api) };
        install_api(ctx, &LOAD_BALANCER, &ini, (octavia::CONF, conf.render()), &[])?;
        for unit in [LOAD_BALANCER.unit, octavia::DRIVER_AGENT] {
            write_named_dropin(&ctx.root, &format!("{unit}.service"), "ciab-runtime", KEEP_RUNTIME_DIR)?;
        }
        launch_api(ctx, &LOAD_BALANCER, &ini, &[octavia::DRIVER_AGENT])
    }
}
