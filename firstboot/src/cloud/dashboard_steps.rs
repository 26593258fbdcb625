//! The `horizon` step: the dashboard's settings, the box's own Django
//! secret key and the uwsgi unit, started in the background; the `apis`
//! step waits for its login page, directly and through the front end.

use super::horizon::{self, HorizonConf};
use super::service;
use super::steps::{addresses, endpoints, has_cloud, secret, set_stamp, stamp};
use super::uwsgi::Uwsgi;
use crate::engine::Step;
use crate::steps::Ctx;
use anyhow::{Context, Result};

pub struct HorizonStep;

impl Step<Ctx> for HorizonStep {
    fn name(&self) -> &'static str {
        "horizon"
    }
    fn title(&self) -> &'static str {
        "configure Horizon, the dashboard"
    }
    fn depends_on(&self) -> &'static [&'static str] {
        &["keystone", "messaging"]
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        Ok(!has_cloud(ctx)? || (stamp(ctx, "horizon").exists() && service::is_up_or_starting(horizon::UNIT)))
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let root = ctx.root.clone();
        let cp = ctx.plan()?.control_plane.context("a cloud profile's plan has a control plane")?;
        let (uid, gid) = super::keys::system_user(&root, "horizon")?;
        let settings = horizon::settings(&HorizonConf { endpoints: &endpoints(ctx)?, addresses: &addresses(ctx)? });
        ciab_core::atomic::write_atomic(&root.join(horizon::SETTINGS), settings.as_bytes())?;
        // Signs sessions and CSRF tokens: per box, readable by Horizon only.
        let key_file = root.join(horizon::SECRET_KEY_FILE);
        ciab_core::atomic::write_atomic_mode(&key_file, secret(ctx, "horizon-secret-key")?.as_bytes(), 0o600)?;
        super::keys::chown(&key_file, (uid, gid))?;
        let logs = root.join("var/log/horizon");
        std::fs::create_dir_all(&logs)?;
        super::keys::chown(&logs, (uid, gid))?;
        let static_dir = horizon::STATIC_ROOT;
        let static_url = format!("{}/static", horizon::WEBROOT);
        let ini = Uwsgi {
            static_map: Some((&static_url, static_dir)),
            script_name: Some(horizon::WEBROOT),
            ..Uwsgi::api("horizon", horizon::BIND, "/usr/share/openstack-dashboard/wsgi.py", "horizon", cp.workers.horizon)
        };
        let ini_path = Uwsgi::ini_path(ini.name);
        ciab_core::atomic::write_atomic(&root.join(&ini_path), ini.ini().as_bytes())?;
        ciab_core::atomic::write_atomic(&root.join(format!("etc/systemd/system/{}.service", horizon::UNIT)), horizon::unit(&format!("/{ini_path}")).as_bytes())?;
        service::start_in_background(&[horizon::UNIT])?;
        println!("ciab-firstboot: horizon: starting on {}, served at {} through the front end", horizon::BIND, horizon::WEBROOT);
        set_stamp(ctx, "horizon")
    }
}
