//! The OpenStack APIs under uwsgi with ciab's settings instead of Debian's
//! (8 processes × 32 threads with lazy-apps: Keystone took ~12 minutes to
//! answer under TCG): the plan's process count, one thread each, the app
//! loaded once in the master, bound to loopback behind the TLS front end.

use super::catalog::Api;
use super::service::{write_dropin, write_private_conf};
use super::service;
use crate::ctx::Ctx;
use anyhow::{Context, Result};
use std::path::Path;

/// One API's uwsgi instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uwsgi<'a> {
    /// The instance's name, also its log file's (`glance-api`).
    pub name: &'a str,
    /// `host:port` on loopback.
    pub bind: &'a str,
    pub wsgi_file: &'a str,
    /// The system user (and group) it runs as, whose home is its chdir.
    pub user: &'a str,
    pub processes: u32,
    /// Takes request bodies of any size (image uploads): chunked input
    /// passed through instead of buffered.
    pub streams_uploads: bool,
    /// Loads the app in each worker after the fork instead of once in the
    /// master: needed by an app that starts threads or opens connections at
    /// load time (Neutron's OVN database connections), which a fork loses.
    pub app_per_worker: bool,
    /// Serves the files under a directory at a URL prefix itself (Horizon's
    /// static files), without waking the app.
    pub static_map: Option<(&'a str, &'a str)>,
    /// Mounts the app under this path (WSGI `SCRIPT_NAME`), as Apache's
    /// `WSGIScriptAlias /horizon` does: Django resolves URLs below it and
    /// prefixes the links it makes.
    pub script_name: Option<&'a str>,
}

impl<'a> Uwsgi<'a> {
    /// An API with the common settings: the app loaded once in the master,
    /// buffered request bodies, at the root of its own port. The rare
    /// settings are set with struct update syntax.
    pub fn api(name: &'a str, bind: &'a str, wsgi_file: &'a str, user: &'a str, processes: u32) -> Self {
        Uwsgi { name, bind, wsgi_file, user, processes, streams_uploads: false, app_per_worker: false, static_map: None, script_name: None }
    }

    /// Where ciab writes the ini of `name`, relative to the root.
    pub fn ini_path(name: &str) -> String {
        format!("etc/ciab/uwsgi/{name}.ini")
    }

    pub fn ini(&self) -> String {
        let Uwsgi { name, bind, wsgi_file, user, processes, .. } = *self;
        let app = match self.script_name {
            Some(prefix) => format!("mount = {prefix}={wsgi_file}\nmanage-script-name = true"),
            None => format!("wsgi-file = {wsgi_file}"),
        };
        let lazy = self.app_per_worker;
        let mut ini = format!(
            "# Written by ciab-firstboot from the sizing plan.\n[uwsgi]\nhttp-socket = {bind}\nprocesses = {processes}\nthreads = 1\nmaster = true\nlazy-apps = {lazy}\nplugins = python3\n{app}\nname = {name}\nuid = {user}\ngid = {user}\nchdir = /var/lib/{user}\nbuffer-size = 65535\nrem-header = Content-Length\nthunder-lock = true\nno-orphans = true\ndie-on-term = true\nclose-on-exec = true\nclose-on-exec2 = true\nenable-threads = true\nlisten = 100\nlogto = /var/log/{user}/{name}.log\n"
        );
        if lazy {
            // The time Neutron's workers register in OVN's hash ring with.
            ini.push_str("start-time = %t\n");
        }
        if let Some((prefix, dir)) = self.static_map {
            ini.push_str(&format!("static-map = {prefix}={dir}\n"));
        }
        if self.streams_uploads {
            ini.push_str("http-auto-chunked = true\nhttp-chunked-input = true\nhttp-raw-body = true\nwsgi-manage-chunked-input = true\nsocket-timeout = 300\n");
        }
        ini
    }
}

/// A drop-in that runs the unit from ciab's ini instead of Debian's init
/// script wrapper.
pub fn dropin(ini_path: &str) -> String {
    format!("[Service]\nExecStart=\nExecStart=/usr/bin/uwsgi_python3 --ini {ini_path}\nRestart=on-failure\n")
}

/// Writes `api`'s uwsgi ini and the drop-in that runs `unit` from it (and
/// orders it after the mounts of `data`); starting the unit reloads systemd.
pub fn install_uwsgi(root: &Path, unit: &str, api: &Uwsgi, data: &[&str]) -> Result<()> {
    let ini = Uwsgi::ini_path(api.name);
    let path = root.join(&ini);
    std::fs::create_dir_all(path.parent().context("parent")?)?;
    ciab_core::atomic::write_atomic(&path, api.ini().as_bytes())?;
    let mut dropin = dropin(&format!("/{ini}"));
    if !data.is_empty() {
        dropin.push_str(&service::requires_mounts_dropin(data));
    }
    write_dropin(root, &format!("{unit}.service"), &dropin)
}

/// Configures an API under uwsgi and starts it; the `apis` step waits for it.
pub fn start_api(ctx: &Ctx, api: &Api, ini: &Uwsgi, conf: (&str, String), data: &[&str]) -> Result<()> {
    install_api(ctx, api, ini, conf, data)?;
    launch_api(ctx, api, ini, &[])
}

/// Writes an API's configuration and uwsgi unit, not starting it yet.
pub fn install_api(ctx: &Ctx, api: &Api, ini: &Uwsgi, conf: (&str, String), data: &[&str]) -> Result<()> {
    write_private_conf(&ctx.root, conf.0, &conf.1, ini.user)?;
    install_uwsgi(&ctx.root, api.unit, ini, data)
}

/// Starts an installed API and the units `with` it, without waiting.
pub fn launch_api(ctx: &Ctx, api: &Api, ini: &Uwsgi, with: &[&str]) -> Result<()> {
    let mut units = vec![api.unit];
    units.extend_from_slice(with);
    service::start_in_background(&units)?;
    tracing::info!("{}: {} starting on {} ({} process(es))", api.name, api.unit, api.bind, ini.processes);
    ctx.set_stamp(api.name)
}

pub fn api_started(ctx: &Ctx, api: &Api) -> Result<bool> {
    Ok(ctx.stamp(api.name).exists() && service::is_up_or_starting(api.unit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_the_plans_process_count_on_loopback() {
        let u = Uwsgi::api("keystone-api", "127.0.0.1:5000", "/usr/bin/keystone-wsgi-public", "keystone", 2);
        let ini = u.ini();
        assert!(ini.contains("\nhttp-socket = 127.0.0.1:5000\nprocesses = 2\nthreads = 1\n"), "{ini}");
        assert!(ini.contains("\nlazy-apps = false\n"));
        assert!(ini.contains("\nlogto = /var/log/keystone/keystone-api.log\n"));
        assert!(!ini.contains("chunked") && !ini.contains("start-time"));
        let neutron = Uwsgi { app_per_worker: true, ..u }.ini();
        assert!(neutron.contains("\nlazy-apps = true\n") && neutron.contains("\nstart-time = %t\n"), "{neutron}");
        let horizon = Uwsgi { static_map: Some(("/horizon/static", "/var/lib/openstack-dashboard/static")), script_name: Some("/horizon"), wsgi_file: "/usr/share/openstack-dashboard/wsgi.py", ..u }.ini();
        assert!(horizon.contains("\nstatic-map = /horizon/static=/var/lib/openstack-dashboard/static\n"), "{horizon}");
        assert!(horizon.contains("\nmount = /horizon=/usr/share/openstack-dashboard/wsgi.py\nmanage-script-name = true\n") && !horizon.contains("wsgi-file"), "{horizon}");
        assert!(ini.contains("\nwsgi-file = /usr/bin/keystone-wsgi-public\n"), "{ini}");
        assert!(!ini.contains("static-map"));
        let uploads = Uwsgi { streams_uploads: true, ..u }.ini();
        assert!(uploads.contains("\nhttp-chunked-input = true\n") && uploads.contains("\nwsgi-manage-chunked-input = true\n"), "{uploads}");
        assert_eq!(Uwsgi::ini_path("keystone"), "etc/ciab/uwsgi/keystone.ini");
        assert!(dropin("/etc/ciab/uwsgi/keystone.ini").contains("\nExecStart=\nExecStart=/usr/bin/uwsgi_python3 --ini /etc/ciab/uwsgi/keystone.ini\n"));
    }
}
