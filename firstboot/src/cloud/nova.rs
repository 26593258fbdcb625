//! Nova, the compute service: the API under uwsgi, conductor and scheduler
//! with the plan's worker counts, nova-compute on libvirt with the plan's
//! reservations and allocation ratios, `virt_type=kvm` whenever /dev/kvm
//! works (also nested inside an emulated evaluation VM), `qemu` otherwise.
//! The cells are rows in the API database written by first boot, not
//! `nova-manage` runs (a Python start each, a minute under TCG).

use super::catalog::{BLOCK_STORAGE, COMPUTE, Endpoints, GLANCE, endpoints};
use super::database::{db_url, pool};
use super::identity::admin_token;
use super::ini::Ini;
use super::service::{write_dropin, write_private_conf};
use super::uwsgi::{Uwsgi, api_started, install_uwsgi};
use super::{database, keys, keystone, messaging, service};
use crate::ctx::Ctx;
use crate::engine::{About, Step};
use crate::host::network::management_addresses;
use crate::model::plan::Nova as NovaPlan;
use ciab_core::wait::{wait_until, Poll};
use anyhow::{Context, Result};
use std::path::Path;
use std::time::Duration;

pub const CONF: &str = "etc/nova/nova.conf";

/// Read by Debian's nova-compute after nova.conf: it must agree.
pub const COMPUTE_CONF: &str = "etc/nova/nova-compute.conf";

/// The `nova` volume's mount point (`host::storage::volumes`).
pub const INSTANCES: &str = "/var/lib/nova/instances";

/// Cell0 has this fixed id in every deployment.
pub const CELL0_UUID: &str = "00000000-0000-0000-0000-000000000000";

/// What nova.conf is rendered from.
#[derive(Debug, Clone)]
pub struct NovaConf<'a> {
    pub api_db_url: String,
    pub cell_db_url: String,
    pub rabbit_password: &'a str,
    pub endpoints: &'a Endpoints,
    pub my_ip: String,
    pub host: &'a str,
    pub service_password: &'a str,
    pub metadata_secret: &'a str,
    pub virt_type: &'a str,
    pub plan: &'a NovaPlan,
    pub workers: (u32, u32),
    pub pool: (u32, u32),
}

fn service_auth(ini: &mut Ini, section: &str, password: &str) {
    keystone::service_auth(ini, section, COMPUTE.name, password);
}

pub fn conf(c: &NovaConf) -> Ini {
    let mut ini = Ini::new("Written by ciab-firstboot; rewritten on every run of the nova step.");
    ini.set("DEFAULT", "host", c.host)
        .set("DEFAULT", "my_ip", &c.my_ip);
    super::oslo::transport(&mut ini, c.rabbit_password);
    ini.set("DEFAULT", "state_path", "/var/lib/nova")
        .set("DEFAULT", "instances_path", INSTANCES)
        .set("DEFAULT", "enabled_apis", "osapi_compute")
        .set("DEFAULT", "reserved_host_memory_mb", c.plan.reserved_host_memory_mb)
        .set("DEFAULT", "reserved_host_cpus", c.plan.reserved_host_cpus)
        .set("DEFAULT", "cpu_allocation_ratio", c.plan.cpu_allocation_ratio)
        .set("DEFAULT", "ram_allocation_ratio", c.plan.ram_allocation_ratio)
        .set("DEFAULT", "disk_allocation_ratio", c.plan.disk_allocation_ratio)
        .set("api", "auth_strategy", "keystone")
        .set("api", "compute_link_prefix", COMPUTE.public_url(c.endpoints))
        .set("api", "glance_link_prefix", GLANCE.public_url(c.endpoints));
    super::oslo::db(&mut ini, "api_database", &c.api_db_url, c.pool);
    super::oslo::db(&mut ini, "database", &c.cell_db_url, c.pool);
    ini.set("conductor", "workers", c.workers.0)
        .set("scheduler", "workers", c.workers.1)
        // nova-compute registers itself; the scheduler maps it into cell1.
        .set("scheduler", "discover_hosts_in_cells_interval", 30);
    keystone::authtoken(&mut ini, c.endpoints, COMPUTE.name, c.service_password);
    ini.set("service_user", "send_service_user_token", true);
    service_auth(&mut ini, "service_user", c.service_password);
    service_auth(&mut ini, "placement", c.service_password);
    ini.set("placement", "valid_interfaces", "internal");
    ini.set("glance", "valid_interfaces", "internal");
    service_auth(&mut ini, "neutron", c.service_password);
    ini.set("neutron", "valid_interfaces", "internal")
        .set("neutron", "service_type", "network")
        .set("neutron", "service_metadata_proxy", true)
        .set("neutron", "metadata_proxy_shared_secret", c.metadata_secret)
        .set("neutron", "ovs_bridge", "br-int")
        // os-vif plugs servers' ports into br-int as the nova user.
        .set("os_vif_ovs", "ovsdb_connection", super::ovn::OVSDB)
        .set("cinder", "catalog_info", format!("{}:{}:internalURL", BLOCK_STORAGE.kind, BLOCK_STORAGE.name))
        .set("cinder", "os_region_name", keystone::REGION)
        .set("libvirt", "virt_type", c.virt_type)
        .set("libvirt", "cpu_mode", if c.virt_type == "kvm" { "host-passthrough" } else { "none" })
        .set("vnc", "enabled", false);
    super::oslo::lock_path(&mut ini, "/var/lib/nova/tmp");
    super::oslo::proxy_headers(&mut ini);
    super::oslo::notifications_off(&mut ini);
    ini
}

/// nova-compute.conf: Debian's ships `virt_type=kvm` here, which would
/// override nova.conf on a box without /dev/kvm.
pub fn compute_conf(virt_type: &str) -> Ini {
    let mut ini = Ini::new("Written by ciab-firstboot; nova-compute reads it after nova.conf.");
    ini.set("DEFAULT", "compute_driver", "libvirt.LibvirtDriver").set("libvirt", "virt_type", virt_type);
    ini
}

/// SQL that maps cell0 and cell1 in the API database (what `nova-manage
/// cell_v2 map_cell0` and `create_cell` write), idempotently: URLs are set
/// again on a rerun, ids kept. `cell1_uuid` is used only when cell1 is new.
pub fn cells_sql(cell0_db_url: &str, cell1_db_url: &str, transport_url: &str, cell1_uuid: &str) -> String {
    let q = |s: &str| s.replace('\\', "\\\\").replace('\'', "\\'");
    format!(
        "USE nova_api;\n\
INSERT INTO cell_mappings (created_at, uuid, name, transport_url, database_connection, disabled)\n  \
SELECT NOW(), '{CELL0_UUID}', 'cell0', 'none:///', '{c0}', 0 FROM DUAL WHERE NOT EXISTS (SELECT 1 FROM cell_mappings WHERE uuid = '{CELL0_UUID}');\n\
UPDATE cell_mappings SET database_connection = '{c0}' WHERE uuid = '{CELL0_UUID}';\n\
INSERT INTO cell_mappings (created_at, uuid, name, transport_url, database_connection, disabled)\n  \
SELECT NOW(), '{u1}', 'cell1', '{t}', '{c1}', 0 FROM DUAL WHERE NOT EXISTS (SELECT 1 FROM cell_mappings WHERE name = 'cell1');\n\
UPDATE cell_mappings SET transport_url = '{t}', database_connection = '{c1}' WHERE name = 'cell1';\n",
        c0 = q(cell0_db_url),
        c1 = q(cell1_db_url),
        t = q(transport_url),
        u1 = q(cell1_uuid),
    )
}

/// The kernel module that gives /dev/kvm on this CPU, from /proc/cpuinfo's flags.
pub fn kvm_module(cpuinfo: &str) -> Option<&'static str> {
    let flags = cpuinfo.lines().find(|l| l.starts_with("flags"))?;
    let has = |f: &str| flags.split_whitespace().any(|w| w == f);
    if has("vmx") {
        Some("kvm_intel")
    } else if has("svm") {
        Some("kvm_amd")
    } else {
        None
    }
}

/// Loads the KVM module for this CPU and waits briefly for udev to make
/// /dev/kvm: under an emulated evaluation VM it appears late in boot, and
/// nested KVM is ~10× faster than emulation inside emulation.
fn probe_kvm(root: &Path) -> bool {
    let dev = root.join("dev/kvm");
    if !dev.exists() {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        if let Some(module) = kvm_module(&cpuinfo) {
            if let Err(e) = ciab_core::exec::Cmd::new("modprobe").package("kmod").arg(module).run() {
                tracing::info!("nova: modprobe {module}: {e:#}");
            }
            // Timed out or not, opening it below is the verdict.
            let _ = wait_until(Duration::from_secs(20), Duration::from_millis(200), || Ok(if dev.exists() { Poll::Ready(()) } else { Poll::Pending(()) }));
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
pub const NOVA_METADATA_UNIT: &str = "nova-api-metadata";

/// The metadata API answers on loopback, where the OVN metadata agent
/// sends guests' requests.
pub fn metadata_url() -> String {
    let (host, port) = super::neutron::NOVA_METADATA;
    format!("http://{host}:{port}/")
}

pub struct NovaStep;

impl Step<Ctx> for NovaStep {
    fn about(&self) -> About {
        About { name: "nova", title: "configure Nova, the compute service", after: &["placement", "messaging", "storage"] }
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        Ok(api_started(ctx, &COMPUTE)? && NOVA_DAEMONS.iter().chain([&NOVA_METADATA_UNIT]).all(|u| service::is_up_or_starting(u)))
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let plan = ctx.plan()?;
        let cp = ctx.control_plane()?;
        let nova_plan = plan.nova.context("a cloud profile's plan sizes Nova")?;
        // Minutes under TCG: say where they go.
        let mut laps = super::laps::Laps::start();
        let virt_type = if probe_kvm(&ctx.root) { "kvm" } else { "qemu" };
        laps.mark("KVM probe");
        let rabbit = ctx.secret(messaging::RABBIT_SECRET)?;
        let cell0 = db_url(ctx, "nova", "nova_cell0")?;
        let cell1 = db_url(ctx, "nova", "nova")?;
        database::run_sql(&ctx.state_dir, None, &cells_sql(&cell0, &cell1, &messaging::transport_url(&rabbit), &crate::model::secrets::uuid4()?))?;
        let my_ip = management_addresses(ctx)?.first().map(|a| a.to_string()).unwrap_or_else(|| "127.0.0.1".into());
        let endpoints = endpoints(ctx)?;
        let site = ctx.site()?;
        let conf = conf(&NovaConf {
            api_db_url: db_url(ctx, "nova", "nova_api")?,
            cell_db_url: cell1,
            rabbit_password: &rabbit,
            endpoints: &endpoints,
            my_ip,
            host: &site.hostname,
            service_password: &ctx.secret("nova-service")?,
            metadata_secret: &ctx.secret("neutron-metadata")?,
            virt_type,
            plan: &nova_plan,
            workers: (cp.workers.nova_conductor, cp.workers.nova_scheduler),
            pool: pool(ctx)?,
        });
        // Debian's nova-compute also reads nova-compute.conf, after nova.conf.
        write_private_conf(&ctx.root, COMPUTE_CONF, &compute_conf(virt_type).render(), "nova")?;
        let instances = ctx.root.join(INSTANCES.trim_start_matches('/'));
        std::fs::create_dir_all(&instances)?;
        keys::chown(&instances, keys::system_user(&ctx.root, "nova")?)?;
        for unit in NOVA_DAEMONS {
            let mut dropin = service::slow_start_dropin();
            if *unit == "nova-compute" {
                dropin.push_str(&service::requires_mounts_dropin(&[INSTANCES]));
            }
            write_dropin(&ctx.root, &format!("{unit}.service"), &dropin)?;
        }
        let ini = Uwsgi::api("nova-api", COMPUTE.bind, "/usr/bin/nova-api-wsgi", "nova", cp.workers.nova_api);
        write_private_conf(&ctx.root, CONF, &conf.render(), "nova")?;
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
        tracing::info!("nova: {} starting; libvirt virt_type={virt_type}", units.join(", "));
        tracing::info!("nova: took {}", laps.summary());
        ctx.set_stamp(COMPUTE.name)
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

/// Every Nova service up, the compute node registered and its host mapped
/// to cell1 (by the scheduler's periodic discovery), so servers can be
/// scheduled onto it.
pub fn compute_ready(ctx: &Ctx) -> Result<bool> {
    let (services, hypervisors) = compute_services(&admin_token(ctx)?)?;
    let up = |binary: &str| services.iter().any(|(b, s)| b == binary && s == "up");
    let mapped: u32 = database::query("SELECT COUNT(*) FROM nova_api.host_mappings")?.trim().parse().unwrap_or(0);
    Ok(NOVA_DAEMONS.iter().all(|d| up(d)) && hypervisors > 0 && mapped > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Endpoints, NovaPlan) {
        let plan = super::super::test_plan().nova.unwrap();
        (Endpoints { host: "localhost".into(), port: 8443 }, plan)
    }

    #[test]
    fn conf_carries_the_plan_and_the_virt_type() {
        let (e, plan) = sample();
        let c = NovaConf {
            api_db_url: "mysql+pymysql://nova:pw@localhost/nova_api".into(),
            cell_db_url: "mysql+pymysql://nova:pw@localhost/nova".into(),
            rabbit_password: "rpw",
            endpoints: &e,
            my_ip: "10.0.2.15".into(),
            host: "box7",
            service_password: "spw",
            metadata_secret: "msec",
            virt_type: "kvm",
            plan: &plan,
            workers: (1, 1),
            pool: (5, 10),
        };
        let ini = conf(&c);
        assert_eq!(ini.get("DEFAULT", "transport_url"), Some("rabbit://openstack:rpw@127.0.0.1:5672/"));
        assert_eq!(ini.get("DEFAULT", "reserved_host_memory_mb"), Some(plan.reserved_host_memory_mb.to_string().as_str()));
        assert_eq!(ini.get("DEFAULT", "cpu_allocation_ratio"), Some(plan.cpu_allocation_ratio.to_string().as_str()));
        assert_eq!(ini.get("api", "compute_link_prefix"), Some("https://localhost:8443/compute"));
        assert_eq!(ini.get("libvirt", "virt_type"), Some("kvm"));
        assert_eq!(ini.get("libvirt", "cpu_mode"), Some("host-passthrough"));
        assert_eq!(ini.get("placement", "username"), Some("nova"));
        assert_eq!(ini.get("placement", "auth_url"), Some("http://127.0.0.1:5000"));
        assert_eq!(ini.get("neutron", "metadata_proxy_shared_secret"), Some("msec"));
        assert_eq!(ini.get("service_user", "send_service_user_token"), Some("true"));
        let qemu = conf(&NovaConf { virt_type: "qemu", ..c });
        assert_eq!(qemu.get("libvirt", "cpu_mode"), Some("none"));
    }

    #[test]
    fn cells_are_mapped_once_with_quoted_urls() {
        let sql = cells_sql("mysql+pymysql://nova:p@localhost/nova_cell0?x=1", "mysql+pymysql://nova:p@localhost/nova", "rabbit://openstack:r@127.0.0.1:5672/", "0f0e");
        assert!(sql.contains("'00000000-0000-0000-0000-000000000000', 'cell0', 'none:///', 'mysql+pymysql://nova:p@localhost/nova_cell0?x=1'"), "{sql}");
        assert!(sql.contains("WHERE NOT EXISTS (SELECT 1 FROM cell_mappings WHERE name = 'cell1')"), "{sql}");
        assert!(sql.contains("UPDATE cell_mappings SET transport_url = 'rabbit://openstack:r@127.0.0.1:5672/'"), "{sql}");
        assert!(cells_sql("it's", "b", "c", "d").contains("'it\\'s'"));
    }

    #[test]
    fn kvm_module_from_cpu_flags() {
        assert_eq!(kvm_module("processor : 0\nflags\t\t: fpu vme svm lm\n"), Some("kvm_amd"));
        assert_eq!(kvm_module("flags : fpu vmx\n"), Some("kvm_intel"));
        assert_eq!(kvm_module("flags : fpu\n"), None);
    }
}
