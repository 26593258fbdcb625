//! The steps that configure one service each and start it without waiting
//! for it to answer — under emulation every Python API takes a minute or
//! more to come up, so they start side by side — then the front end, and
//! `apis`, which waits until every API answers through TLS and the message
//! queue takes the services' login.
//!
//! Order: messaging (after database, so RabbitMQ's minute-long start overlaps
//! Keystone's), then after identity: glance → placement → nova → (neutron,
//! in `network_steps`) → frontend → apis.

use super::amqp::{self, Login};
use super::catalog::{self, Api, COMPUTE, GLANCE, PLACEMENT};
use super::steps::{admin, db_url, endpoints, has_cloud, install_uwsgi, pki_of, secret, set_stamp, stamp, write_dropin, API_TIMEOUT};
use super::uwsgi::Uwsgi;
use super::{database, frontend, glance, horizon, keys, messaging, nova, placement, service};
use crate::engine::Step;
use crate::steps::Ctx;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::time::{Duration, Instant};

/// Writes a service's config file, readable by root and the service's group
/// only (it holds passwords).
pub(super) fn write_private_conf(root: &Path, rel: &str, text: &str, group_of: &str) -> Result<()> {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().context("parent")?)?;
    ciab_core::atomic::write_atomic_mode(&path, text.as_bytes(), 0o640)?;
    let (_, gid) = keys::system_user(root, group_of)?;
    keys::chown(&path, (0, gid))
}

pub(super) fn pool(ctx: &Ctx) -> Result<(u32, u32)> {
    let cp = ctx.plan()?.control_plane.context("a cloud profile's plan has a control plane")?;
    Ok((cp.db_max_pool_size, cp.db_max_overflow))
}

pub struct MessagingStep;

impl Step<Ctx> for MessagingStep {
    fn name(&self) -> &'static str {
        "messaging"
    }
    fn title(&self) -> &'static str {
        "start RabbitMQ and memcached"
    }
    fn depends_on(&self) -> &'static [&'static str] {
        &["secrets", "network"]
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        Ok(!has_cloud(ctx)?
            || (stamp(ctx, "messaging").exists() && service::is_up_or_starting("rabbitmq-server") && service::is_active("memcached")))
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let root = ctx.root.clone();
        let cp = ctx.plan()?.control_plane.context("a cloud profile's plan has a control plane")?;
        ciab_core::atomic::write_atomic(&root.join(messaging::MEMCACHED_CONF), messaging::memcached_conf(&cp.memcached).as_bytes())?;
        let rabbit = keys::system_user(&root, "rabbitmq")?;
        ciab_core::atomic::write_atomic(&root.join(messaging::RABBITMQ_CONF), messaging::rabbitmq_conf(&cp.rabbitmq).as_bytes())?;
        ciab_core::atomic::write_atomic(&root.join(messaging::RABBITMQ_ENV), messaging::rabbitmq_env().as_bytes())?;
        let definitions = messaging::definitions(&secret(ctx, messaging::RABBIT_SECRET)?, messaging::random_salt()?);
        write_private_conf(&root, messaging::DEFINITIONS, &definitions, "rabbitmq")?;
        let cookie = root.join(messaging::ERLANG_COOKIE);
        if !cookie.exists() {
            ciab_core::atomic::write_atomic_mode(&cookie, messaging::erlang_cookie()?.as_bytes(), 0o400)?;
            keys::chown(&cookie, rabbit)?;
        }
        write_dropin(&root, "epmd.socket", &messaging::epmd_socket_dropin())?;
        // All four enabled with one systemd reload, not one each (15–45 s
        // apiece under TCG). epmd.service is masked in the image like every
        // service; its socket starts it on RabbitMQ's first lookup.
        service::enable(&["memcached", "epmd.socket", "epmd.service", "rabbitmq-server"])?;
        service::start(&["memcached"], true)?;
        service::start(&["epmd.socket", "epmd.service"], false)?;
        service::start_in_background(&["rabbitmq-server"])?;
        println!("ciab-firstboot: messaging: memcached up on {}; RabbitMQ starting on {} (user {})", messaging::MEMCACHED, messaging::AMQP, messaging::RABBIT_USER);
        set_stamp(ctx, "messaging")
    }
}

/// Configures an API under uwsgi and starts it; the `apis` step waits for it.
pub(super) fn start_api(ctx: &Ctx, api: &Api, ini: &Uwsgi, conf: (&str, String), data: &[&str]) -> Result<()> {
    install_api(ctx, api, ini, conf, data)?;
    launch_api(ctx, api, ini, &[])
}

/// Writes an API's configuration and uwsgi unit, not starting it yet.
pub(super) fn install_api(ctx: &Ctx, api: &Api, ini: &Uwsgi, conf: (&str, String), data: &[&str]) -> Result<()> {
    write_private_conf(&ctx.root, conf.0, &conf.1, ini.user)?;
    install_uwsgi(&ctx.root, api.unit, ini, data)
}

/// Starts an installed API and the units `with` it, without waiting.
pub(super) fn launch_api(ctx: &Ctx, api: &Api, ini: &Uwsgi, with: &[&str]) -> Result<()> {
    let mut units = vec![api.unit];
    units.extend_from_slice(with);
    service::start_in_background(&units)?;
    println!("ciab-firstboot: {}: {} starting on {} ({} process(es))", api.name, api.unit, api.bind, ini.processes);
    set_stamp(ctx, api.name)
}

pub(super) fn api_started(ctx: &Ctx, api: &Api) -> Result<bool> {
    Ok(!has_cloud(ctx)? || (stamp(ctx, api.name).exists() && service::is_up_or_starting(api.unit)))
}

pub struct GlanceStep;

impl Step<Ctx> for GlanceStep {
    fn name(&self) -> &'static str {
        "glance"
    }
    fn title(&self) -> &'static str {
        "configure Glance, the image service"
    }
    fn depends_on(&self) -> &'static [&'static str] {
        &["identity", "storage"]
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        api_started(ctx, &GLANCE)
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let cp = ctx.plan()?.control_plane.context("a cloud profile's plan has a control plane")?;
        let store = ctx.root.join(glance::STORE.trim_start_matches('/'));
        std::fs::create_dir_all(&store)?;
        keys::chown(&store, keys::system_user(&ctx.root, "glance")?)?;
        let conf = glance::conf(&db_url(ctx, "glance", "glance")?, &endpoints(ctx)?, &secret(ctx, "glance-service")?, pool(ctx)?);
        let ini = Uwsgi { streams_uploads: true, ..Uwsgi::api("glance-api", GLANCE.bind, "/usr/bin/glance-wsgi-api", "glance", cp.workers.glance) };
        start_api(ctx, &GLANCE, &ini, (glance::CONF, conf.render()), &[glance::STORE])
    }
}

pub struct PlacementStep;

impl Step<Ctx> for PlacementStep {
    fn name(&self) -> &'static str {
        "placement"
    }
    fn title(&self) -> &'static str {
        "configure Placement, the resource inventory"
    }
    fn depends_on(&self) -> &'static [&'static str] {
        &["identity"]
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        api_started(ctx, &PLACEMENT)
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let cp = ctx.plan()?.control_plane.context("a cloud profile's plan has a control plane")?;
        let conf = placement::conf(&db_url(ctx, "placement", "placement")?, &endpoints(ctx)?, &secret(ctx, "placement-service")?, pool(ctx)?);
        let ini = Uwsgi::api("placement-api", PLACEMENT.bind, "/usr/bin/placement-api", "placement", cp.workers.placement);
        start_api(ctx, &PLACEMENT, &ini, (placement::CONF, conf.render()), &[])
    }
}

/// Loads the KVM module for this CPU and waits briefly for udev to make
/// /dev/kvm: under an emulated evaluation VM it appears late in boot, and
/// nested KVM is ~10× faster than emulation inside emulation.
fn probe_kvm(root: &Path) -> bool {
    let dev = root.join("dev/kvm");
    if !dev.exists() {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        if let Some(module) = nova::kvm_module(&cpuinfo) {
            if let Err(e) = ciab_core::exec::Cmd::new("modprobe").package("kmod").arg(module).run() {
                println!("ciab-firstboot: nova: modprobe {module}: {e:#}");
            }
            let until = Instant::now() + Duration::from_secs(20);
            while !dev.exists() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    std::fs::OpenOptions::new().read(true).write(true).open(&dev).is_ok()
}

/// libvirt's sockets and daemons, masked in the image like every unit: the
/// sockets refuse to start while their services are masked, so all are
/// unmasked and started together, sockets first.
const LIBVIRT_UNITS: &[&str] = &[
    "virtlogd.socket",
    "virtlogd-admin.socket",
    "libvirtd.socket",
    "libvirtd-ro.socket",
    "libvirtd-admin.socket",
    "virtlogd.service",
    "libvirtd.service",
];
const NOVA_DAEMONS: &[&str] = &["nova-conductor", "nova-scheduler", "nova-compute"];
/// Debian's unit for Nova's metadata API, run under ciab's uwsgi.
const NOVA_METADATA_UNIT: &str = "nova-api-metadata";

/// The metadata API answers on loopback, where the OVN metadata agent
/// sends guests' requests.
fn metadata_url() -> String {
    let (host, port) = super::neutron::NOVA_METADATA;
    format!("http://{host}:{port}/")
}

pub struct NovaStep;

impl Step<Ctx> for NovaStep {
    fn name(&self) -> &'static str {
        "nova"
    }
    fn title(&self) -> &'static str {
        "configure Nova, the compute service"
    }
    fn depends_on(&self) -> &'static [&'static str] {
        &["placement", "messaging", "storage"]
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        Ok(api_started(ctx, &COMPUTE)? && (!has_cloud(ctx)? || NOVA_DAEMONS.iter().chain([&NOVA_METADATA_UNIT]).all(|u| service::is_up_or_starting(u))))
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let plan = ctx.plan()?;
        let cp = plan.control_plane.context("a cloud profile's plan has a control plane")?;
        let nova_plan = plan.nova.context("a cloud profile's plan sizes Nova")?;
        // Minutes under TCG: say where they go.
        let mut laps = super::laps::Laps::start();
        let virt_type = if probe_kvm(&ctx.root) { "kvm" } else { "qemu" };
        laps.mark("KVM probe");
        let rabbit = secret(ctx, messaging::RABBIT_SECRET)?;
        let cell0 = db_url(ctx, "nova", "nova_cell0")?;
        let cell1 = db_url(ctx, "nova", "nova")?;
        database::run_sql(&ctx.state_dir, None, &nova::cells_sql(&cell0, &cell1, &messaging::transport_url(&rabbit), &crate::secrets::uuid4()?))?;
        let my_ip = super::steps::addresses(ctx)?.first().map(|a| a.to_string()).unwrap_or_else(|| "127.0.0.1".into());
        let endpoints = endpoints(ctx)?;
        let site = ctx.site()?;
        let conf = nova::conf(&nova::NovaConf {
            api_db_url: db_url(ctx, "nova", "nova_api")?,
            cell_db_url: cell1,
            rabbit_password: &rabbit,
            endpoints: &endpoints,
            my_ip,
            host: &site.hostname,
            service_password: &secret(ctx, "nova-service")?,
            metadata_secret: &secret(ctx, "neutron-metadata")?,
            virt_type,
            plan: &nova_plan,
            workers: (cp.workers.nova_conductor, cp.workers.nova_scheduler),
            pool: pool(ctx)?,
        });
        // Debian's nova-compute also reads nova-compute.conf, after nova.conf.
        write_private_conf(&ctx.root, nova::COMPUTE_CONF, &nova::compute_conf(virt_type).render(), "nova")?;
        let instances = ctx.root.join(nova::INSTANCES.trim_start_matches('/'));
        std::fs::create_dir_all(&instances)?;
        keys::chown(&instances, keys::system_user(&ctx.root, "nova")?)?;
        for unit in NOVA_DAEMONS {
            let mut dropin = service::slow_start_dropin();
            if *unit == "nova-compute" {
                dropin.push_str(&service::requires_mounts_dropin(&[nova::INSTANCES]));
            }
            write_dropin(&ctx.root, &format!("{unit}.service"), &dropin)?;
        }
        let ini = Uwsgi::api("nova-api", COMPUTE.bind, "/usr/bin/nova-api-wsgi", "nova", cp.workers.nova_api);
        write_private_conf(&ctx.root, nova::CONF, &conf.render(), "nova")?;
        install_uwsgi(&ctx.root, COMPUTE.unit, &ini, &[])?;
        // The metadata API, for guests through the OVN metadata agent
        // (cloud-init's network configuration, keys and user data).
        let (host, port) = super::neutron::NOVA_METADATA;
        let bind = format!("{host}:{port}");
        let metadata = Uwsgi::api(NOVA_METADATA_UNIT, &bind, "/usr/bin/nova-metadata-wsgi", "nova", cp.workers.nova_metadata);
        install_uwsgi(&ctx.root, NOVA_METADATA_UNIT, &metadata, &[])?;
        let mut units = vec![COMPUTE.unit, NOVA_METADATA_UNIT];
        units.extend_from_slice(NOVA_DAEMONS);
        laps.mark("configuration");
        // One systemd reload for libvirt and Nova together.
        service::enable(&[LIBVIRT_UNITS, &units].concat())?;
        laps.mark("systemd enable");
        service::start(LIBVIRT_UNITS, false)?;
        laps.mark("libvirt");
        service::start_in_background(&units)?;
        laps.mark("starting Nova");
        println!("ciab-firstboot: nova: {} starting; libvirt virt_type={virt_type}", units.join(", "));
        println!("ciab-firstboot: nova: took {}", laps.summary());
        set_stamp(ctx, COMPUTE.name)
    }
}

/// Nova's services as the compute API lists them: (binary, state) for each
/// enabled one, and whether a hypervisor is mapped to a cell yet.
fn compute_services(token: &str) -> Result<(Vec<(String, String)>, usize)> {
    let r = super::rest::expect(super::rest::request(COMPUTE.bind, "GET", "/v2.1/os-services", Some(token), None)?, "listing compute services", &[200])?;
    let services = r.body["services"]
        .as_array()
        .map(|a| a.iter().filter(|s| s["status"] == "enabled").map(|s| (s["binary"].as_str().unwrap_or("?").to_owned(), s["state"].as_str().unwrap_or("?").to_owned())).collect())
        .unwrap_or_default();
    let r = super::rest::expect(super::rest::request(COMPUTE.bind, "GET", "/v2.1/os-hypervisors", Some(token), None)?, "listing hypervisors", &[200])?;
    Ok((services, r.body["hypervisors"].as_array().map_or(0, Vec::len)))
}

fn admin_token(ctx: &Ctx) -> Result<String> {
    Ok(admin(ctx)?.token().to_owned())
}

/// Every Nova service up, the compute node registered and its host mapped
/// to cell1 (by the scheduler's periodic discovery), so servers can be
/// scheduled onto it.
fn compute_ready(ctx: &Ctx) -> Result<bool> {
    let (services, hypervisors) = compute_services(&admin_token(ctx)?)?;
    let up = |binary: &str| services.iter().any(|(b, s)| b == binary && s == "up");
    let mapped: u32 = database::query("SELECT COUNT(*) FROM nova_api.host_mappings")?.trim().parse().unwrap_or(0);
    Ok(NOVA_DAEMONS.iter().all(|d| up(d)) && hypervisors > 0 && mapped > 0)
}

/// `api` through the front end, from the box itself, trusting what the box
/// trusts (the pki step put the CA into the system bundle curl reads).
fn local_url(api: &Api) -> String {
    format!("https://127.0.0.1:{}{}", frontend::LISTEN_PORT, api.front_path(api.probe))
}

/// Horizon's login page, directly and through the front end.
fn horizon_answers() -> bool {
    let direct = format!("http://{}{}", horizon::BIND, horizon::LOGIN_PATH);
    let public = format!("https://127.0.0.1:{}{}", frontend::LISTEN_PORT, horizon::LOGIN_PATH);
    [direct, public].iter().all(|url| service::http_status(url, None) == Some(200))
}

fn answers(api: &Api) -> bool {
    service::http_status(&local_url(api), None).is_some_and(|c| c < 500)
}

pub struct FrontendStep;

impl Step<Ctx> for FrontendStep {
    fn name(&self) -> &'static str {
        "frontend"
    }
    fn title(&self) -> &'static str {
        "serve the APIs over TLS"
    }
    fn depends_on(&self) -> &'static [&'static str] {
        &["pki", "keystone"]
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        let pem = pki_of(ctx).server_pem().display().to_string();
        let configured = std::fs::read_to_string(ctx.root.join(frontend::CONF)).is_ok_and(|c| c == frontend::haproxy_cfg(&pem, catalog::APIS));
        Ok(!has_cloud(ctx)? || (configured && service::is_active("haproxy") && answers(&catalog::KEYSTONE)))
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let pem = pki_of(ctx).server_pem().display().to_string();
        ciab_core::atomic::write_atomic(&ctx.root.join(frontend::CONF), frontend::haproxy_cfg(&pem, catalog::APIS).as_bytes())?;
        service::start(&["haproxy"], true)?;
        // Keystone first, on loopback, with an API's patience: resumed after
        // a crash, every configured service restarts at once, and under TCG
        // Keystone then took over 60 s to answer behind a front end that
        // was up (two attempts in a row failed so in the e2e, 2026-12-02).
        service::wait_http(&format!("{}{}", catalog::KEYSTONE.internal_url(), catalog::KEYSTONE.probe), None, catalog::KEYSTONE.unit, API_TIMEOUT)?;
        service::wait_http(&local_url(&catalog::KEYSTONE), None, "haproxy", Duration::from_secs(60))?;
        let e = endpoints(ctx)?;
        println!("ciab-firstboot: frontend: identity API on {}", catalog::KEYSTONE.public_url(&e));
        Ok(())
    }
}

/// Logs in to RabbitMQ as the services do, and makes sure `guest` cannot.
fn check_broker(password: &str) -> Result<()> {
    let t = Duration::from_secs(10);
    match amqp::try_login(messaging::AMQP, messaging::RABBIT_USER, password, "/", t)? {
        Login::Accepted => {}
        Login::Refused(why) => bail!("RabbitMQ refuses user {}: {why}", messaging::RABBIT_USER),
    }
    if amqp::try_login(messaging::AMQP, "guest", "guest", "/", t)? == Login::Accepted {
        bail!("RabbitMQ accepts guest/guest: the default user must not exist");
    }
    Ok(())
}

/// Polls `ready` until it says yes; after `API_TIMEOUT` fails with `what`
/// and `unit`'s last journal lines (or the last error, if it kept failing).
fn await_ready(what: &str, unit: &str, mut ready: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + API_TIMEOUT;
    loop {
        match ready() {
            Ok(true) => return Ok(()),
            Ok(false) | Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_secs(3)),
            Ok(false) => bail!("{what} after {} s\n{}", API_TIMEOUT.as_secs(), service::journal_tail(unit)),
            Err(e) => return Err(e.context(format!("{what} after {} s", API_TIMEOUT.as_secs()))),
        }
    }
}

pub struct ApisStep;

impl Step<Ctx> for ApisStep {
    fn name(&self) -> &'static str {
        "apis"
    }
    fn title(&self) -> &'static str {
        "wait for every API and the message queue"
    }
    fn depends_on(&self) -> &'static [&'static str] {
        &["frontend", "messaging", "glance", "placement", "nova", "neutron", "cinder", "horizon", "swift", "octavia", "barbican"]
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        if !has_cloud(ctx)? {
            return Ok(true);
        }
        // The stamp makes the first pass go through apply(), which says on
        // the console what answered and when.
        Ok(stamp(ctx, "apis").exists()
            && catalog::APIS.iter().all(answers)
            && service::is_active(super::octavia::DRIVER_AGENT)
            && check_broker(&secret(ctx, messaging::RABBIT_SECRET)?).is_ok()
            && compute_ready(ctx).unwrap_or(false)
            && service::http_status(&metadata_url(), None).is_some_and(|c| c < 500)
            && horizon_answers()
            && admin_token(ctx).and_then(|t| super::network_steps::network_ready(&t)).unwrap_or(false)
            && admin(ctx).and_then(|k| super::volume_steps::volume_ready(k.token(), k.project_id())).unwrap_or(false))
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let started = Instant::now();
        for api in catalog::APIS {
            // Each is awaited directly and then through the front end, so a
            // failure says which side is broken.
            service::wait_http(&format!("{}{}", api.internal_url(), api.probe), None, api.unit, API_TIMEOUT)?;
            service::wait_http(&local_url(api), None, "haproxy", Duration::from_secs(60))?;
            println!("ciab-firstboot: apis: {} answers through the front end ({:.0} s)", api.kind, started.elapsed().as_secs_f64());
        }
        // Horizon's login page must render (200), not merely answer: a
        // settings mistake shows as Django's 400 or 500.
        await_ready("Horizon's login page does not answer 200 through the front end (its log: /var/log/horizon/horizon.log)", horizon::UNIT, || Ok(horizon_answers()))?;
        println!("ciab-firstboot: apis: Horizon's login page answers through the front end ({:.0} s)", started.elapsed().as_secs_f64());
        // Load balancers stay PENDING without the provider's agent.
        await_ready("octavia-driver-agent is not running", super::octavia::DRIVER_AGENT, || Ok(service::is_active(super::octavia::DRIVER_AGENT)))?;
        println!("ciab-firstboot: apis: octavia-driver-agent running (OVN provider) ({:.0} s)", started.elapsed().as_secs_f64());
        await_ready("Nova's services are not all up", "nova-compute", || compute_ready(ctx))?;
        println!("ciab-firstboot: apis: nova-conductor, nova-scheduler and nova-compute up, the hypervisor mapped ({:.0} s)", started.elapsed().as_secs_f64());
        service::wait_http(&metadata_url(), None, NOVA_METADATA_UNIT, API_TIMEOUT)?;
        println!("ciab-firstboot: apis: Nova's metadata API answers on {} for the OVN metadata agent ({:.0} s)", metadata_url(), started.elapsed().as_secs_f64());
        await_ready("the network agents are not all alive", "ovn-controller", || admin_token(ctx).and_then(|t| super::network_steps::network_ready(&t)))?;
        println!("ciab-firstboot: apis: network agents alive: {} ({:.0} s)", super::network_steps::REQUIRED_AGENTS.join(", "), started.elapsed().as_secs_f64());
        await_ready("Cinder's services are not all up", "cinder-volume", || admin(ctx).and_then(|k| super::volume_steps::volume_ready(k.token(), k.project_id())))?;
        println!("ciab-firstboot: apis: {} up ({:.0} s)", super::volume_steps::CINDER_DAEMONS.join(", "), started.elapsed().as_secs_f64());
        let password = secret(ctx, messaging::RABBIT_SECRET)?;
        let deadline = Instant::now() + API_TIMEOUT;
        loop {
            match check_broker(&password) {
                Ok(()) => break,
                Err(e) if Instant::now() > deadline || service::state("rabbitmq-server") == "failed" => {
                    return Err(e.context(service::journal_tail("rabbitmq-server")));
                }
                Err(_) => std::thread::sleep(Duration::from_secs(1)),
            }
        }
        println!("ciab-firstboot: apis: RabbitMQ takes the services' login and refuses guest ({:.0} s)", started.elapsed().as_secs_f64());
        set_stamp(ctx, "apis")
    }
}
