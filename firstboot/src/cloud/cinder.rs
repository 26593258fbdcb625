//! Cinder, the block storage service: volumes are thin LVs in a thin pool
//! that takes the VG's free space (the plan leaves `cinder_gib` of it),
//! exported over iSCSI by tgt on the box and attached by nova-compute's
//! initiator on the same box. The API runs under uwsgi; the scheduler, the
//! volume service and the backup service are Debian's units. Backups go to
//! object storage (Swift on the box's `swift` volume, a store apart from the
//! thin pool, as scs-0117 recommends), into the user's own account with the
//! user's own token: a project's backups are its `volumebackups` container.

use super::catalog::{BLOCK_STORAGE, Endpoints, GLANCE, OBJECT_STORE, endpoints};
use super::database::{db_url, pool};
use super::ini::Ini;
use super::rest::{expect, request};
use super::service::write_dropin;
use super::uwsgi::{Uwsgi, api_started, install_api, launch_api};
use super::{keystone, messaging, service};
use crate::ctx::Ctx;
use crate::engine::{About, Step};
use crate::host::network::management_addresses;
use ciab_core::exec::Cmd;
use anyhow::{Context, Result};

pub const CONF: &str = "etc/cinder/cinder.conf";

/// The one backend's name, also its volume type's `volume_backend_name`.
pub const BACKEND: &str = "lvm";

/// The thin pool in the box's VG; the LVM driver looks for `<vg>-pool`.
pub fn thin_pool(vg: &str) -> String {
    format!("{vg}-pool")
}

/// Where the LVM driver writes tgt's target files (tgt includes them).
pub const VOLUMES_DIR: &str = "/var/lib/cinder/volumes";

/// How often the volume and backup services ask their backends for free
/// space (Cinder's default: 60 s).
pub const STATS_POLLING_SECS: u32 = 300;

/// What cinder.conf is rendered from.
#[derive(Debug, Clone)]
pub struct CinderConf<'a> {
    pub db_url: String,
    pub rabbit_password: &'a str,
    pub endpoints: &'a Endpoints,
    pub my_ip: &'a str,
    pub host: &'a str,
    pub service_password: &'a str,
    pub volume_group: &'a str,
    pub pool: (u32, u32),
}

/// cinder-backup's drop-in: its Swift driver checks the proxy once at
/// start-up and, finding nothing, stays "down" for good (seen under TCG,
/// where Cinder starts minutes before Swift answers; after a power cut
/// systemd starts both at once). So it starts only once the proxy answers.
pub fn backup_dropin() -> String {
    format!(
        "[Unit]\nWants=swift-proxy.service\nAfter=swift-proxy.service\n\n[Service]\nExecStartPre=/bin/sh -c 'until curl -sf -o /dev/null {}/healthcheck; do sleep 2; done'\nTimeoutStartSec=30min\n",
        OBJECT_STORE.internal_url()
    )
}

pub fn conf(c: &CinderConf) -> Ini {
    let mut ini = Ini::new("Written by ciab-firstboot; rewritten on every run of the cinder step.");
    ini.set("DEFAULT", "host", c.host)
        .set("DEFAULT", "my_ip", c.my_ip);
    super::oslo::transport(&mut ini, c.rabbit_password);
    ini.set("DEFAULT", "auth_strategy", "keystone")
        .set("DEFAULT", "state_path", "/var/lib/cinder")
        .set("DEFAULT", "enabled_backends", BACKEND)
        // Created by the volume-types step, described per scs-0114.
        .set("DEFAULT", "default_volume_type", super::scs::DEFAULT_VOLUME_TYPE)
        .set("DEFAULT", "glance_api_servers", GLANCE.internal_url())
        .set("DEFAULT", "public_endpoint", BLOCK_STORAGE.public_url(c.endpoints))
        .set("DEFAULT", "storage_availability_zone", "nova")
        .set("DEFAULT", "default_availability_zone", "nova")
        .set("DEFAULT", "backup_driver", "cinder.backup.drivers.swift.SwiftBackupDriver")
        .set("DEFAULT", "backup_swift_auth", "per_user")
        // The project id is appended: Swift's proxy on loopback.
        .set("DEFAULT", "backup_swift_url", format!("{}/v1/AUTH_", OBJECT_STORE.internal_url()))
        // Each poll runs LVM through `sudo cinder-rootwrap`, a Python process
        // per command, and cinder-volume was the box's busiest service at
        // ready under TCG (263 s of CPU, polling each minute, the default).
        // Between polls the scheduler counts what it places itself.
        .set("DEFAULT", "backend_stats_polling_interval", STATS_POLLING_SECS)
        .set("DEFAULT", "backup_driver_stats_polling_interval", STATS_POLLING_SECS);
    super::oslo::db(&mut ini, "database", &c.db_url, c.pool);
    keystone::authtoken(&mut ini, c.endpoints, BLOCK_STORAGE.name, c.service_password);
    keystone::service_auth(&mut ini, "nova", BLOCK_STORAGE.name, c.service_password);
    ini.set("nova", "interface", "internal")
        .set(BACKEND, "volume_driver", "cinder.volume.drivers.lvm.LVMVolumeDriver")
        .set(BACKEND, "volume_backend_name", BACKEND)
        .set(BACKEND, "volume_group", c.volume_group)
        .set(BACKEND, "lvm_type", "thin")
        // Thin LVs read back zeros: nothing to wipe on delete.
        .set(BACKEND, "volume_clear", "none")
        .set(BACKEND, "target_protocol", "iscsi")
        .set(BACKEND, "target_helper", "tgtadm")
        .set(BACKEND, "target_ip_address", c.my_ip)
        .set(BACKEND, "volumes_dir", VOLUMES_DIR);
    super::oslo::lock_path(&mut ini, "/var/lib/cinder/tmp");
    super::oslo::proxy_headers(&mut ini);
    super::oslo::notifications_off(&mut ini);
    ini
}

/// The daemons besides the API.
pub const CINDER_DAEMONS: &[&str] = &["cinder-scheduler", "cinder-volume", "cinder-backup"];

/// The iSCSI target, and the initiator nova-compute attaches volumes with
/// (masked in the image: socket and service are unmasked together). iscsid
/// names the initiator on its first start (the image ships no name).
const ISCSI_UNITS: &[&str] = &["tgt.service", "iscsid.socket", "iscsid.service"];

pub struct CinderStep;

impl CinderStep {
    /// The thin pool Cinder's LVM driver carves volumes from: what the VG
    /// has left after the plan's volumes, less room for the pool's metadata.
    fn ensure_thin_pool() -> Result<String> {
        let pool = thin_pool(crate::host::storage::VG);
        let lv = format!("{}/{pool}", crate::host::storage::VG);
        if Cmd::new("lvs").package("lvm2").arg(&lv).run().is_err() {
            Cmd::new("lvcreate")
                .package("lvm2")
                .args(["--yes", "--type", "thin-pool", "--extents", "95%FREE", "--name", &pool, crate::host::storage::VG])
                .run()
                .with_context(|| format!("creating the thin pool {lv} for Cinder"))?;
        }
        Ok(lv)
    }
}

impl Step<Ctx> for CinderStep {
    fn about(&self) -> About {
        About { name: "cinder", title: "configure Cinder, the block storage service", after: &["identity", "messaging", "storage"] }
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        Ok(api_started(ctx, &BLOCK_STORAGE)? && CINDER_DAEMONS.iter().all(|u| service::is_up_or_starting(u)))
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let cp = ctx.control_plane()?;
        // The slowest of the service steps under TCG: say where its time goes.
        let mut laps = super::laps::Laps::start();
        let lv = Self::ensure_thin_pool()?;
        laps.mark("thin pool");
        let site = ctx.site()?;
        let my_ip = management_addresses(ctx)?.first().map(|a| a.to_string()).unwrap_or_else(|| "127.0.0.1".into());
        let endpoints = endpoints(ctx)?;
        let rabbit = ctx.secret(messaging::RABBIT_SECRET)?;
        let conf = conf(&CinderConf {
            db_url: db_url(ctx, "cinder", "cinder")?,
            rabbit_password: &rabbit,
            endpoints: &endpoints,
            my_ip: &my_ip,
            host: &site.hostname,
            service_password: &ctx.secret("cinder-service")?,
            volume_group: crate::host::storage::VG,
            pool: pool(ctx)?,
        });
        let volumes_dir = ctx.root.join(VOLUMES_DIR.trim_start_matches('/'));
        std::fs::create_dir_all(&volumes_dir)?;
        super::keys::chown(&volumes_dir, super::keys::system_user(&ctx.root, "cinder")?)?;
        write_dropin(&ctx.root, "cinder-backup.service", &backup_dropin())?;
        let ini = Uwsgi::api("cinder-api", BLOCK_STORAGE.bind, "/usr/bin/cinder-wsgi", "cinder", cp.workers.cinder_api);
        // The daemons read the API's file.
        install_api(ctx, &BLOCK_STORAGE, &ini, (CONF, conf.render()), &[])?;
        laps.mark("configuration");
        // One systemd reload for the iSCSI units, the API and the daemons;
        // tgt and iscsid are awaited (a failure names them), the rest not.
        service::enable(&[ISCSI_UNITS, &[BLOCK_STORAGE.unit], CINDER_DAEMONS].concat())?;
        laps.mark("systemd enable");
        service::start(ISCSI_UNITS, false)?;
        laps.mark("tgt and iscsid");
        launch_api(ctx, &BLOCK_STORAGE, &ini, CINDER_DAEMONS)?;
        laps.mark("starting the API and daemons");
        tracing::info!("cinder: thin pool {lv}, tgt and iscsid up; {} starting", CINDER_DAEMONS.join(", "));
        tracing::info!("cinder: took {}", laps.summary());
        Ok(())
    }
}

/// Cinder's services as its API lists them: (binary, state) each enabled one.
fn volume_services(token: &str, project: &str) -> Result<Vec<(String, String)>> {
    let r = expect(request(BLOCK_STORAGE.bind, "GET", &format!("/v3/{project}/os-services"), Some(token), None)?, "listing volume services", &[200])?;
    Ok(r.body["services"]
        .as_array()
        .map(|a| a.iter().filter(|s| s["status"] == "enabled").map(|s| (s["binary"].as_str().unwrap_or("?").to_owned(), s["state"].as_str().unwrap_or("?").to_owned())).collect())
        .unwrap_or_default())
}

/// The scheduler, the volume and the backup service up.
pub fn volume_ready(token: &str, project: &str) -> Result<bool> {
    let services = volume_services(token, project)?;
    Ok(CINDER_DAEMONS.iter().all(|d| services.iter().any(|(b, s)| b == d && s == "up")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_are_thin_lvs_exported_by_tgt() {
        let e = Endpoints { host: "cloud.example.org".into(), port: 443 };
        let ini = conf(&CinderConf {
            db_url: "mysql+pymysql://cinder:pw@localhost/cinder".into(),
            rabbit_password: "rpw",
            endpoints: &e,
            my_ip: "10.0.2.15",
            host: "box",
            service_password: "svc",
            volume_group: "ciab",
            pool: (5, 10),
        });
        assert_eq!(ini.get("DEFAULT", "enabled_backends"), Some("lvm"));
        assert_eq!(ini.get("DEFAULT", "default_volume_type"), Some("lvm-thin"));
        assert_eq!(ini.get("DEFAULT", "public_endpoint"), Some("https://cloud.example.org/volume"));
        assert_eq!(ini.get("DEFAULT", "glance_api_servers"), Some("http://127.0.0.1:9292"));
        assert_eq!(ini.get("lvm", "volume_group"), Some("ciab"));
        assert_eq!(ini.get("lvm", "lvm_type"), Some("thin"));
        assert_eq!(ini.get("lvm", "target_helper"), Some("tgtadm"));
        assert_eq!(ini.get("lvm", "target_ip_address"), Some("10.0.2.15"));
        assert_eq!(ini.get("keystone_authtoken", "username"), Some("cinder"));
        assert_eq!(ini.get("nova", "interface"), Some("internal"));
        assert_eq!(ini.get("DEFAULT", "backup_swift_url"), Some("http://127.0.0.1:8888/v1/AUTH_"));
        assert_eq!(ini.get("DEFAULT", "backup_swift_auth"), Some("per_user"));
        assert_eq!(ini.get("DEFAULT", "backend_stats_polling_interval"), Some("300"));
        assert_eq!(ini.get("DEFAULT", "backup_driver_stats_polling_interval"), Some("300"));
        assert_eq!(thin_pool("ciab"), "ciab-pool");
        let dropin = backup_dropin();
        assert!(dropin.contains("After=swift-proxy.service\n") && dropin.contains("curl -sf -o /dev/null http://127.0.0.1:8888/healthcheck"), "{dropin}");
    }
}
