//! The TLS front end: HAProxy on port 443 with the box's server certificate,
//! routing by path prefix to the APIs on loopback (`/identity` → Keystone),
//! so one port — and one port forward for a box behind NAT — serves the whole
//! catalog, and Horizon at `/horizon` (its own path, unchanged). What no
//! prefix claims goes to the API at the root, object storage: Swift under
//! `/v1`, S3's path-style buckets at `/<bucket>` (so a bucket named like a
//! prefix — `identity`, `image`, … — is not reachable through S3). A bare
//! `/` without credentials sends a browser to Horizon; with them it is S3's
//! bucket list.

use super::catalog::LISTEN_PORT;
use super::catalog::{Api, endpoints};
use super::pki::pki_of;
use super::service::API_TIMEOUT;
use super::{catalog, horizon, service};
use crate::ctx::Ctx;
use crate::engine::{About, Step};
use anyhow::Result;
use std::time::Duration;

/// HAProxy's configuration file.
pub const CONF: &str = "etc/haproxy/haproxy.cfg";


/// haproxy.cfg for `routes`, with the certificate chain and key in `pem`.
pub fn haproxy_cfg(pem: &str, routes: &[Api]) -> String {
    let mut cfg = format!(
        "# Written by ciab-firstboot: the TLS front end of the cloud's APIs.\n\
global\n    log /dev/log local0 warning\n    maxconn 4096\n    ssl-default-bind-options ssl-min-ver TLSv1.2\n\n\
defaults\n    mode http\n    log global\n    option httplog\n    option forwardfor\n    timeout connect 5s\n    timeout client 300s\n    timeout server 300s\n\n\
frontend public\n    bind :::{LISTEN_PORT} v4v6 ssl crt {pem}\n    http-request set-header X-Forwarded-Proto https\n    \
http-request redirect location {webroot}/ code 302 if {{ path / }} !{{ req.hdr(authorization) -m found }} !{{ query -m found }}\n    \
use_backend dashboard if {{ path {webroot} }} || {{ path_beg {webroot}/ }}\n",
        webroot = horizon::WEBROOT
    );
    for r in routes.iter().filter(|r| !r.prefix.is_empty()) {
        cfg.push_str(&format!("    use_backend {p} if {{ path /{p} }} || {{ path_beg /{p}/ }}\n", p = r.prefix));
    }
    if let Some(root) = routes.iter().find(|r| r.prefix.is_empty()) {
        cfg.push_str(&format!("    default_backend {}\n", root.name));
    }
    for r in routes {
        if r.prefix.is_empty() {
            cfg.push_str(&format!("\nbackend {n}\n    server {n} {b} check inter 10s\n", n = r.name, b = r.bind));
        } else {
            cfg.push_str(&format!(
                "\nbackend {p}\n    http-request replace-path /{p}/?(.*) /\\1\n    server {p} {b} check inter 10s\n",
                p = r.prefix,
                b = r.bind
            ));
        }
    }
    cfg.push_str(&format!("\nbackend dashboard\n    server dashboard {} check inter 10s\n", horizon::BIND));
    cfg
}

/// `api` through the front end, from the box itself, trusting what the box
/// trusts (the pki step put the CA into the system bundle curl reads).
pub fn local_url(api: &Api) -> String {
    format!("https://127.0.0.1:{}{}", LISTEN_PORT, api.front_path(api.probe))
}

pub fn answers(api: &Api) -> bool {
    service::http_status(&local_url(api), None).is_some_and(|c| c < 500)
}

pub struct FrontendStep;

impl Step<Ctx> for FrontendStep {
    fn about(&self) -> About {
        About { name: "frontend", title: "serve the APIs over TLS", after: &["pki", "keystone"] }
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        let pem = pki_of(ctx).server_pem().display().to_string();
        let configured = std::fs::read_to_string(ctx.root.join(CONF)).is_ok_and(|c| c == haproxy_cfg(&pem, catalog::APIS));
        Ok(configured && service::is_active("haproxy") && answers(&catalog::KEYSTONE))
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let pem = pki_of(ctx).server_pem().display().to_string();
        ciab_core::atomic::write_atomic(&ctx.root.join(CONF), haproxy_cfg(&pem, catalog::APIS).as_bytes())?;
        service::start(&["haproxy"], true)?;
        // Keystone first, on loopback, with an API's patience: resumed after
        // a crash, every configured service restarts at once, and under TCG
        // Keystone then took over 60 s to answer behind a front end that
        // was up (two attempts in a row failed so in the e2e, 2026-12-02).
        service::wait_http(&format!("{}{}", catalog::KEYSTONE.internal_url(), catalog::KEYSTONE.probe), None, catalog::KEYSTONE.unit, API_TIMEOUT)?;
        service::wait_http(&local_url(&catalog::KEYSTONE), None, "haproxy", Duration::from_secs(60))?;
        let e = endpoints(ctx)?;
        tracing::info!("frontend: identity API on {}", catalog::KEYSTONE.public_url(&e));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_strip_their_prefix() {
        let cfg = haproxy_cfg("/var/lib/ciab/pki/server.pem", super::super::catalog::APIS);
        assert!(cfg.contains("    bind :::443 v4v6 ssl crt /var/lib/ciab/pki/server.pem\n"), "{cfg}");
        assert!(cfg.contains("    use_backend identity if { path /identity } || { path_beg /identity/ }\n"), "{cfg}");
        assert!(cfg.contains("    use_backend image if { path /image } || { path_beg /image/ }\n"), "{cfg}");
        assert!(cfg.contains("\nbackend image\n    http-request replace-path /image/?(.*) /\\1\n    server image 127.0.0.1:9292 check inter 10s\n"), "{cfg}");
        assert!(cfg.contains("    use_backend dashboard if { path /horizon } || { path_beg /horizon/ }\n"), "{cfg}");
        assert!(cfg.contains("\nbackend dashboard\n    server dashboard 127.0.0.1:8090 check inter 10s\n"), "Horizon keeps its path: {cfg}");
        assert!(cfg.contains("    default_backend swift\n"), "object storage takes the rest: {cfg}");
        assert!(cfg.contains("\nbackend swift\n    server swift 127.0.0.1:8888 check inter 10s\n"), "and keeps its path: {cfg}");
        assert!(cfg.contains("redirect location /horizon/ code 302 if { path / } !{ req.hdr(authorization) -m found }"), "{cfg}");
        assert!(!cfg.contains("path_beg //"), "{cfg}");
        assert!(cfg.contains("\nbackend identity\n    http-request replace-path /identity/?(.*) /\\1\n    server identity 127.0.0.1:5000 check inter 10s\n"), "{cfg}");
    }

    /// HAProxy itself accepts the file (`haproxy -c`), when the host has it.
    #[test]
    fn haproxy_accepts_the_config() {
        let Ok(probe) = std::process::Command::new("haproxy").arg("-v").output() else {
            panic!("haproxy is not installed: test.sh installs it");
        };
        assert!(probe.status.success());
        let dir = tempfile::tempdir().unwrap();
        let pki = super::super::pki::Pki::new(dir.path());
        pki.ensure("box", &super::super::pki::ServerNames::new(&["box"], &[])).unwrap();
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg, haproxy_cfg(&pki.server_pem().display().to_string(), super::super::catalog::APIS)).unwrap();
        let out = std::process::Command::new("haproxy").arg("-c").arg("-f").arg(&cfg).output().unwrap();
        assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
}
