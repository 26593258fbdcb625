//! The `cinder` step: the thin pool in the box's VG, tgt and the iSCSI
//! initiator, and Cinder's API, scheduler, volume and backup services,
//! started without waiting (the `apis` step waits for them).

use super::catalog::BLOCK_STORAGE;
use super::rest::{expect, request};
use super::service_steps::{api_started, install_api, launch_api, pool};
use super::steps::{addresses, db_url, endpoints, has_cloud, secret};
use super::uwsgi::Uwsgi;
use super::{cinder, messaging, service};
use crate::engine::Step;
use ciab_core::exec::Cmd;
use crate::steps::Ctx;
use anyhow::{Context, Result};

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
        let pool = cinder::thin_pool(crate::storage::VG);
        let lv = format!("{}/{pool}", crate::storage::VG);
        if Cmd::new("lvs").package("lvm2").arg(&lv).run().is_err() {
            Cmd::new("lvcreate")
                .package("lvm2")
                .args(["--yes", "--type", "thin-pool", "--extents", "95%FREE", "--name", &pool, crate::storage::VG])
                .run()
                .with_context(|| format!("creating the thin pool {lv} for Cinder"))?;
        }
        Ok(lv)
    }
}

impl Step<Ctx> for CinderStep {
    fn name(&self) -> &'static str {
        "cinder"
    }
    fn title(&self) -> &'static str {
        "configure Cinder, the block storage service"
    }
    fn depends_on(&self) -> &'static [&'static str] {
        &["identity", "messaging", "storage"]
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        Ok(api_started(ctx, &BLOCK_STORAGE)? && (!has_cloud(ctx)? || CINDER_DAEMONS.iter().all(|u| service::is_up_or_starting(u))))
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let cp = ctx.plan()?.control_plane.context("a cloud profile's plan has a control plane")?;
        // The slowest of the service steps under TCG: say where its time goes.
        let mut laps = super::laps::Laps::start();
        let lv = Self::ensure_thin_pool()?;
        laps.mark("thin pool");
        let site = ctx.site()?;
        let my_ip = addresses(ctx)?.first().map(|a| a.to_string()).unwrap_or_else(|| "127.0.0.1".into());
        let endpoints = endpoints(ctx)?;
        let rabbit = secret(ctx, messaging::RABBIT_SECRET)?;
        let conf = cinder::conf(&cinder::CinderConf {
            db_url: db_url(ctx, "cinder", "cinder")?,
            rabbit_password: &rabbit,
            endpoints: &endpoints,
            my_ip: &my_ip,
            host: &site.hostname,
            service_password: &secret(ctx, "cinder-service")?,
            volume_group: crate::storage::VG,
            pool: pool(ctx)?,
        });
        let volumes_dir = ctx.root.join(cinder::VOLUMES_DIR.trim_start_matches('/'));
        std::fs::create_dir_all(&volumes_dir)?;
        super::keys::chown(&volumes_dir, super::keys::system_user(&ctx.root, "cinder")?)?;
        super::steps::write_dropin(&ctx.root, "cinder-backup.service", &cinder::backup_dropin())?;
        let ini = Uwsgi::api("cinder-api", BLOCK_STORAGE.bind, "/usr/bin/cinder-wsgi", "cinder", cp.workers.cinder_api);
        // The daemons read the API's file.
        install_api(ctx, &BLOCK_STORAGE, &ini, (cinder::CONF, conf.render()), &[])?;
        laps.mark("configuration");
        // One systemd reload for the iSCSI units, the API and the daemons;
        // tgt and iscsid are awaited (a failure names them), the rest not.
        service::enable(&[ISCSI_UNITS, &[BLOCK_STORAGE.unit], CINDER_DAEMONS].concat())?;
        laps.mark("systemd enable");
        service::start(ISCSI_UNITS, false)?;
        laps.mark("tgt and iscsid");
        launch_api(ctx, &BLOCK_STORAGE, &ini, CINDER_DAEMONS)?;
        laps.mark("starting the API and daemons");
        println!("ciab-firstboot: cinder: thin pool {lv}, tgt and iscsid up; {} starting", CINDER_DAEMONS.join(", "));
        println!("ciab-firstboot: cinder: took {}", laps.summary());
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
