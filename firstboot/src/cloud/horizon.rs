//! Horizon, the dashboard: Django under ciab's uwsgi on loopback (its static
//! files, compressed at build time by the package, served by uwsgi too),
//! reached through the TLS front end at `/horizon`. Debian's Apache site is
//! not used: one more server on the box would cost RAM and a second TLS
//! configuration.

use super::catalog::{Endpoints, endpoints};
use super::messaging::MEMCACHED;
use super::service;
use super::uwsgi::Uwsgi;
use crate::ctx::Ctx;
use crate::engine::{About, Step};
use crate::host::network::management_addresses;
use anyhow::Result;
use std::net::IpAddr;

/// Where Horizon answers on the box; the front end routes `/horizon` here.
pub const BIND: &str = "127.0.0.1:8090";

/// Horizon's `WEBROOT` (Debian's `_0005_debian_webroot.py`): the path it
/// serves under, unchanged by the front end.
pub const WEBROOT: &str = "/horizon";

/// The systemd unit ciab writes (Debian ships Horizon only as an Apache site).
pub const UNIT: &str = "ciab-horizon";

/// Read after Debian's `local_settings.d/_000N_debian_*.py`, so it wins.
pub const SETTINGS: &str = "etc/openstack-dashboard/local_settings.d/_9000_ciab.py";

/// Django's `SECRET_KEY`, which signs sessions and CSRF tokens: Debian's
/// local_settings.py reads it from here (and would make one if missing).
/// First boot writes the box's own, mode 0600.
pub const SECRET_KEY_FILE: &str = "var/lib/openstack-dashboard/secret-key/.secret_key_store";

/// The static files `manage.py collectstatic` and `compress` put there.
pub const STATIC_ROOT: &str = "/var/lib/openstack-dashboard/static";

/// The page the `apis` step and the tests wait for.
pub const LOGIN_PATH: &str = "/horizon/auth/login/";

/// What the settings are rendered from.
pub struct HorizonConf<'a> {
    pub endpoints: &'a Endpoints,
    /// The box's management addresses, which users may also type.
    pub addresses: &'a [IpAddr],
}

/// A Python string literal (Horizon's settings file is Python).
fn py(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

pub fn settings(c: &HorizonConf) -> String {
    let mut hosts: Vec<String> = Vec::new();
    for h in [c.endpoints.host.clone(), "localhost".to_owned(), "127.0.0.1".to_owned()].into_iter().chain(c.addresses.iter().map(IpAddr::to_string)) {
        if !hosts.contains(&h) {
            hosts.push(h);
        }
    }
    let hosts: Vec<String> = hosts.iter().map(|h| py(h)).collect();
    let keystone = super::catalog::KEYSTONE.internal_url();
    format!(
        "# Written by ciab-firstboot; rewritten on every run of the horizon step.\n\
ALLOWED_HOSTS = [{hosts}]\n\
# Horizon talks to the services on loopback, past the front end.\n\
OPENSTACK_KEYSTONE_URL = {keystone}\n\
OPENSTACK_ENDPOINT_TYPE = \"internalURL\"\n\
OPENSTACK_KEYSTONE_DEFAULT_ROLE = \"member\"\n\
OPENSTACK_KEYSTONE_DEFAULT_DOMAIN = \"Default\"\n\
# Sessions in memcached, shared by every worker.\n\
CACHES = {{\"default\": {{\"BACKEND\": \"django.core.cache.backends.memcached.PyMemcacheCache\", \"LOCATION\": {memcached}}}}}\n\
SESSION_ENGINE = \"django.contrib.sessions.backends.cache\"\n\
# Behind the TLS front end: trust its X-Forwarded-Proto, send cookies over HTTPS only.\n\
SECURE_PROXY_SSL_HEADER = (\"HTTP_X_FORWARDED_PROTO\", \"https\")\n\
CSRF_COOKIE_SECURE = True\n\
SESSION_COOKIE_SECURE = True\n\
TIME_ZONE = \"UTC\"\n",
        hosts = hosts.join(", "),
        keystone = py(&format!("{keystone}/v3")),
        memcached = py(MEMCACHED),
    )
}

/// The unit running Horizon from ciab's uwsgi ini.
pub fn unit(ini_path: &str) -> String {
    format!(
        "# Written by ciab-firstboot.\n[Unit]\nDescription=Horizon, the OpenStack dashboard (uwsgi)\nAfter=network-online.target memcached.service\n\n\
[Service]\nExecStart=/usr/bin/uwsgi_python3 --ini {ini_path}\nRestart=on-failure\n\n[Install]\nWantedBy=multi-user.target\n"
    )
}

pub struct HorizonStep;

impl Step<Ctx> for HorizonStep {
    fn about(&self) -> About {
        About { name: "horizon", title: "configure Horizon, the dashboard", after: &["keystone", "messaging"] }
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        Ok(ctx.stamp("horizon").exists() && service::is_up_or_starting(UNIT))
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let root = ctx.root.clone();
        let cp = ctx.control_plane()?;
        let (uid, gid) = super::keys::system_user(&root, "horizon")?;
        let settings = settings(&HorizonConf { endpoints: &endpoints(ctx)?, addresses: &management_addresses(ctx)? });
        ciab_core::atomic::write_atomic(&root.join(SETTINGS), settings.as_bytes())?;
        // Signs sessions and CSRF tokens: per box, readable by Horizon only.
        let key_file = root.join(SECRET_KEY_FILE);
        ciab_core::atomic::write_atomic_mode(&key_file, ctx.secret("horizon-secret-key")?.as_bytes(), 0o600)?;
        super::keys::chown(&key_file, (uid, gid))?;
        let logs = root.join("var/log/horizon");
        std::fs::create_dir_all(&logs)?;
        super::keys::chown(&logs, (uid, gid))?;
        let static_dir = STATIC_ROOT;
        let static_url = format!("{}/static", WEBROOT);
        let ini = Uwsgi {
            static_map: Some((&static_url, static_dir)),
            script_name: Some(WEBROOT),
            ..Uwsgi::api("horizon", BIND, "/usr/share/openstack-dashboard/wsgi.py", "horizon", cp.workers.horizon)
        };
        let ini_path = Uwsgi::ini_path(ini.name);
        ciab_core::atomic::write_atomic(&root.join(&ini_path), ini.ini().as_bytes())?;
        ciab_core::atomic::write_atomic(&root.join(format!("etc/systemd/system/{}.service", UNIT)), unit(&format!("/{ini_path}")).as_bytes())?;
        service::start_in_background(&[UNIT])?;
        tracing::info!("horizon: starting on {}, served at {} through the front end", BIND, WEBROOT);
        ctx.set_stamp("horizon")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_name_the_box_and_keep_sessions_in_memcached() {
        let e = Endpoints { host: "cloud.example.org".into(), port: 8443 };
        let addresses = ["10.0.2.15".parse().unwrap()];
        let s = settings(&HorizonConf { endpoints: &e, addresses: &addresses });
        assert!(s.contains("\nALLOWED_HOSTS = [\"cloud.example.org\", \"localhost\", \"127.0.0.1\", \"10.0.2.15\"]\n"), "{s}");
        assert!(s.contains("\nOPENSTACK_KEYSTONE_URL = \"http://127.0.0.1:5000/v3\"\n"), "{s}");
        assert!(s.contains("\"LOCATION\": \"127.0.0.1:11211\""), "{s}");
        assert!(s.contains("\nSESSION_COOKIE_SECURE = True\n"), "{s}");
        assert!(!s.contains("SECRET_KEY"), "the key stays in its own 0600 file: {s}");
        assert_eq!(py("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert!(unit("/etc/ciab/uwsgi/horizon.ini").contains("\nExecStart=/usr/bin/uwsgi_python3 --ini /etc/ciab/uwsgi/horizon.ini\n"));
    }

    /// Python itself parses the file, when the host has python3.
    #[test]
    fn python_parses_the_settings() {
        let e = Endpoints { host: "box\"7".into(), port: 443 };
        let s = settings(&HorizonConf { endpoints: &e, addresses: &[] });
        let out = std::process::Command::new("python3").args(["-c", "import ast, sys; ast.parse(sys.stdin.read())"]).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn();
        let Ok(mut child) = out else { panic!("python3 is not installed") };
        use std::io::Write;
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}\n{s}", String::from_utf8_lossy(&out.stderr));
    }
}
