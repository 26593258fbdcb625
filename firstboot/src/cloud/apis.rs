//! The `apis` step: waits until every API answers, directly on loopback
//! and then through the TLS front end, Horizon's login page renders, Nova's
//! services are up with the hypervisor mapped, the network agents and
//! Cinder's services are alive, and RabbitMQ takes the services' login and
//! refuses `guest`. The services were started side by side by their own
//! steps without waiting (under emulation each Python API takes a minute or
//! more); this is where first boot waits for all of them at once.

use super::frontend::{answers, local_url};
use super::identity::{admin, admin_token};
use super::messaging::check_broker;
use super::nova::{NOVA_METADATA_UNIT, compute_ready, metadata_url};
use super::service::API_TIMEOUT;
use super::{catalog, horizon, messaging, service};
use crate::ctx::Ctx;
use crate::engine::{About, Step};
use ciab_core::wait::{wait_until, Poll, Timeout};
use anyhow::{bail, Result};
use std::time::{Duration, Instant};

/// Horizon's login page, directly and through the front end.
fn horizon_answers() -> bool {
    let direct = format!("http://{}{}", horizon::BIND, horizon::LOGIN_PATH);
    let public = format!("https://127.0.0.1:{}{}", catalog::LISTEN_PORT, horizon::LOGIN_PATH);
    [direct, public].iter().all(|url| service::http_status(url, None) == Some(200))
}

/// Polls `ready` until it says yes; after `API_TIMEOUT` fails with `what`
/// and `unit`'s last journal lines (or the last error, if it kept failing).
fn await_ready(what: &str, unit: &str, mut ready: impl FnMut() -> Result<bool>) -> Result<()> {
    let waited = wait_until(API_TIMEOUT, Duration::from_secs(3), || {
        Ok(match ready() {
            Ok(true) => Poll::Ready(()),
            Ok(false) => Poll::Pending(None),
            Err(e) => Poll::Pending(Some(e)),
        })
    })?;
    match waited {
        Ok(()) => Ok(()),
        Err(Timeout { last: None, .. }) => bail!("{what} after {} s\n{}", API_TIMEOUT.as_secs(), service::journal_tail(unit)),
        Err(Timeout { last: Some(e), .. }) => Err(e.context(format!("{what} after {} s", API_TIMEOUT.as_secs()))),
    }
}

pub struct ApisStep;

impl Step<Ctx> for ApisStep {
    fn about(&self) -> About {
        About { name: "apis", title: "wait for every API and the message queue", after: &["frontend", "messaging", "glance", "placement", "nova", "neutron", "cinder", "horizon", "swift", "octavia", "barbican"] }
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        // The stamp makes the first pass go through apply(), which says on
        // the console what answered and when.
        Ok(ctx.stamp("apis").exists()
            && catalog::APIS.iter().all(answers)
            && service::is_active(super::octavia::DRIVER_AGENT)
            && check_broker(&ctx.secret(messaging::RABBIT_SECRET)?).is_ok()
            && compute_ready(ctx).unwrap_or(false)
            && service::http_status(&metadata_url(), None).is_some_and(|c| c < 500)
            && horizon_answers()
            && admin_token(ctx).and_then(|t| super::neutron::network_ready(&t)).unwrap_or(false)
            && admin(ctx).and_then(|k| super::cinder::volume_ready(k.token(), k.project_id())).unwrap_or(false))
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let started = Instant::now();
        for api in catalog::APIS {
            // Each is awaited directly and then through the front end, so a
            // failure says which side is broken.
            service::wait_http(&format!("{}{}", api.internal_url(), api.probe), None, api.unit, API_TIMEOUT)?;
            service::wait_http(&local_url(api), None, "haproxy", Duration::from_secs(60))?;
            tracing::info!("apis: {} answers through the front end ({:.0} s)", api.kind, started.elapsed().as_secs_f64());
        }
        // Horizon's login page must render (200), not merely answer: a
        // settings mistake shows as Django's 400 or 500.
        await_ready("Horizon's login page does not answer 200 through the front end (its log: /var/log/horizon/horizon.log)", horizon::UNIT, || Ok(horizon_answers()))?;
        tracing::info!("apis: Horizon's login page answers through the front end ({:.0} s)", started.elapsed().as_secs_f64());
        // Load balancers stay PENDING without the provider's agent.
        await_ready("octavia-driver-agent is not running", super::octavia::DRIVER_AGENT, || Ok(service::is_active(super::octavia::DRIVER_AGENT)))?;
        tracing::info!("apis: octavia-driver-agent running (OVN provider) ({:.0} s)", started.elapsed().as_secs_f64());
        await_ready("Nova's services are not all up", "nova-compute", || compute_ready(ctx))?;
        tracing::info!("apis: nova-conductor, nova-scheduler and nova-compute up, the hypervisor mapped ({:.0} s)", started.elapsed().as_secs_f64());
        service::wait_http(&metadata_url(), None, NOVA_METADATA_UNIT, API_TIMEOUT)?;
        tracing::info!("apis: Nova's metadata API answers on {} for the OVN metadata agent ({:.0} s)", metadata_url(), started.elapsed().as_secs_f64());
        await_ready("the network agents are not all alive", "ovn-controller", || admin_token(ctx).and_then(|t| super::neutron::network_ready(&t)))?;
        tracing::info!("apis: network agents alive: {} ({:.0} s)", super::neutron::REQUIRED_AGENTS.join(", "), started.elapsed().as_secs_f64());
        await_ready("Cinder's services are not all up", "cinder-volume", || admin(ctx).and_then(|k| super::cinder::volume_ready(k.token(), k.project_id())))?;
        tracing::info!("apis: {} up ({:.0} s)", super::cinder::CINDER_DAEMONS.join(", "), started.elapsed().as_secs_f64());
        let password = ctx.secret(messaging::RABBIT_SECRET)?;
        // A failed broker is not waited out.
        let waited = wait_until(API_TIMEOUT, Duration::from_secs(1), || match check_broker(&password) {
            Ok(()) => Ok(Poll::Ready(())),
            Err(e) if service::state("rabbitmq-server") == "failed" => Err(e.context(service::journal_tail("rabbitmq-server"))),
            Err(e) => Ok(Poll::Pending(e)),
        })?;
        if let Err(timeout) = waited {
            return Err(timeout.last.context(service::journal_tail("rabbitmq-server")));
        }
        tracing::info!("apis: RabbitMQ takes the services' login and refuses guest ({:.0} s)", started.elapsed().as_secs_f64());
        ctx.set_stamp("apis")
    }
}
