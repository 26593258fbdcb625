//! Swift, the object storage, with S3 through its s3api middleware: one
//! proxy on loopback behind the TLS front end and one account, container and
//! object server on the box's `swift` volume (device `d1`, one replica).
//! The rings ship in the image (images/scripts/openstack.sh builds them: one
//! device on 127.0.0.1, the same on every box); the hash path prefix and
//! suffix, which decide where every object lands, are the box's own secrets.
//!
//! S3 requests carry an EC2-style signature; `s3token` hands it to Keystone
//! (`/v3/s3tokens`, which since OSSA-2025-002 wants a service's token, hence
//! its credentials here), and the request goes on as the key's user and
//! project: a bucket is a container of the project's account, as scs-0123's
//! check compares.

use super::catalog::{Endpoints, KEYSTONE, OBJECT_STORE, endpoints};
use super::ini::Ini;
use super::service::{write_dropin, write_private_conf};
use super::uwsgi::api_started;
use super::{keys, keystone, messaging, service};
use crate::ctx::Ctx;
use crate::engine::{About, Step};
use anyhow::{Result, bail};

pub const SWIFT_CONF: &str = "etc/swift/swift.conf";

pub const PROXY_CONF: &str = "etc/swift/proxy-server.conf";

/// Where the storage servers find their devices; the box's one device is
/// the `swift` volume, mounted at `DEVICES/DEVICE`.
pub const DEVICES: &str = "/srv/node";

pub const DEVICE: &str = "d1";

/// The mount point of the `swift` volume.
pub const DEVICE_PATH: &str = "/srv/node/d1";

/// The rings the image ships, which the units assert before starting.
pub const RINGS: &[&str] = &["etc/swift/account.ring.gz", "etc/swift/container.ring.gz", "etc/swift/object.ring.gz"];

/// The storage servers: (unit, config file, app, port). The ports are the
/// rings'.
pub const SERVERS: &[(&str, &str, &str, u16)] = &[
    ("swift-account", "etc/swift/account-server.conf", "account", 6202),
    ("swift-container", "etc/swift/container-server.conf", "container", 6201),
    ("swift-object", "etc/swift/object-server.conf", "object", 6200),
];

/// Swift's worker count for `processes` of the plan: a single process does
/// not fork (`workers = 0`), so one process is one process, not a parent
/// and its one child.
fn workers(processes: u32) -> u32 {
    if processes <= 1 {
        0
    } else {
        processes
    }
}

/// swift.conf: the box's hash path prefix and suffix, and one policy.
pub fn swift_conf(hash_prefix: &str, hash_suffix: &str) -> Ini {
    let mut ini = Ini::new("Written by ciab-firstboot: this box's hash path prefix and suffix. Never change them: objects would be lost.");
    ini.set("swift-hash", "swift_hash_path_prefix", hash_prefix)
        .set("swift-hash", "swift_hash_path_suffix", hash_suffix)
        .set("storage-policy:0", "name", "Policy-0")
        .set("storage-policy:0", "default", "yes")
        .set("swift-constraints", "max_file_size", 5_368_709_122u64);
    ini
}

/// An account, container or object server's file.
pub fn server_conf(app: &str, port: u16, processes: u32) -> Ini {
    let mut ini = Ini::new("Written by ciab-firstboot; rewritten on every run of the swift step.");
    ini.set("DEFAULT", "bind_ip", "127.0.0.1")
        .set("DEFAULT", "bind_port", port)
        .set("DEFAULT", "workers", workers(processes))
        .set("DEFAULT", "user", "swift")
        .set("DEFAULT", "devices", DEVICES)
        // The device must be the mounted volume: never fill the root instead.
        .set("DEFAULT", "mount_check", true)
        .set("DEFAULT", "log_name", format!("{app}-server"))
        .set("pipeline:main", "pipeline", format!("healthcheck {app}-server"))
        .set(&format!("app:{app}-server"), "use", format!("egg:swift#{app}"))
        .set("filter:healthcheck", "use", "egg:swift#healthcheck");
    ini
}

/// The paste pipeline of the proxy: Keystone tokens (`authtoken`) and S3
/// signatures (`s3api` → `s3token`) both end in `keystoneauth`; `slo` after
/// `s3api` gives S3 its multipart uploads. (s3api checks this order at
/// start-up.)
pub const PIPELINE: &str = "catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk authtoken s3api s3token keystoneauth copy slo dlo versioned_writes symlink proxy-logging proxy-server";

/// What proxy-server.conf is rendered from.
#[derive(Debug, Clone)]
pub struct ProxyConf<'a> {
    pub endpoints: &'a Endpoints,
    pub service_password: &'a str,
    pub processes: u32,
}

pub fn proxy_conf(c: &ProxyConf) -> Ini {
    let mut ini = Ini::new("Written by ciab-firstboot; rewritten on every run of the swift step.");
    let (host, port) = OBJECT_STORE.bind.split_once(':').unwrap_or((OBJECT_STORE.bind, "8888"));
    ini.set("DEFAULT", "bind_ip", host)
        .set("DEFAULT", "bind_port", port)
        .set("DEFAULT", "workers", workers(c.processes))
        .set("DEFAULT", "user", "swift")
        .set("DEFAULT", "log_name", "proxy-server")
        .set("pipeline:main", "pipeline", PIPELINE)
        .set("app:proxy-server", "use", "egg:swift#proxy")
        // A project's account is made on its first write.
        .set("app:proxy-server", "account_autocreate", true);
    for filter in ["catch_errors", "gatekeeper", "healthcheck", "proxy-logging", "listing_formats", "bulk", "copy", "slo", "dlo", "versioned_writes", "symlink"] {
        ini.set(&format!("filter:{filter}"), "use", format!("egg:swift#{}", filter.replace('-', "_")));
    }
    ini.set("filter:cache", "use", "egg:swift#memcache").set("filter:cache", "memcache_servers", messaging::MEMCACHED);
    let service_user = |ini: &mut Ini, section: &str| {
        ini.set(section, "auth_url", KEYSTONE.internal_url())
            .set(section, "auth_type", "password")
            .set(section, "project_domain_id", "default")
            .set(section, "user_domain_id", "default")
            .set(section, "project_name", "service")
            .set(section, "username", OBJECT_STORE.name)
            .set(section, "password", c.service_password);
    };
    const A: &str = "filter:authtoken";
    ini.set(A, "paste.filter_factory", "keystonemiddleware.auth_token:filter_factory")
        .set(A, "www_authenticate_uri", c.endpoints.public("identity"));
    service_user(&mut ini, A);
    ini.set(A, "region_name", keystone::REGION)
        // S3 requests carry no token: s3token authenticates them further on.
        .set(A, "delay_auth_decision", true)
        .set(A, "cache", "swift.cache")
        .set(A, "include_service_catalog", false);
    ini.set("filter:s3api", "use", "egg:swift#s3api");
    const S: &str = "filter:s3token";
    ini.set(S, "use", "egg:swift#s3token").set(S, "auth_uri", format!("{}/v3", KEYSTONE.internal_url())).set(S, "reseller_prefix", "AUTH_").set(S, "delay_auth_decision", false);
    service_user(&mut ini, S);
    // Members use object storage like any other service (Swift's default
    // wants a `swiftoperator` role nobody has).
    ini.set("filter:keystoneauth", "use", "egg:swift#keystoneauth").set("filter:keystoneauth", "operator_roles", "admin, member");
    ini
}

/// The storage servers' units, then the proxy's.
fn units() -> Vec<&'static str> {
    SERVERS.iter().map(|s| s.0).chain([OBJECT_STORE.unit]).collect()
}

pub struct SwiftStep;

impl Step<Ctx> for SwiftStep {
    fn about(&self) -> About {
        About { name: "swift", title: "configure Swift, the object storage with S3", after: &["identity", "messaging", "storage"] }
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        Ok(api_started(ctx, &OBJECT_STORE)? && units().iter().all(|u| service::is_up_or_starting(u)))
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let root = ctx.root.clone();
        let cp = ctx.control_plane()?;
        if let Some(missing) = RINGS.iter().find(|r| !root.join(r).is_file()) {
            bail!("/{missing} is missing: the image was built without Swift's rings (images/scripts/openstack.sh makes them)");
        }
        let owner = keys::system_user(&root, "swift")?;
        // The device is the mounted volume (the servers' mount_check refuses
        // anything else); Swift writes into it as its own user.
        let device = root.join(DEVICE_PATH.trim_start_matches('/'));
        std::fs::create_dir_all(&device)?;
        keys::chown(&device, owner)?;
        let hash = swift_conf(&ctx.secret("swift-hash-prefix")?, &ctx.secret("swift-hash-suffix")?);
        write_private_conf(&root, SWIFT_CONF, &hash.render(), "swift")?;
        for (unit, conf, app, port) in SERVERS {
            ciab_core::atomic::write_atomic(&root.join(conf), server_conf(app, *port, cp.workers.swift_storage).render().as_bytes())?;
            write_dropin(&root, &format!("{unit}.service"), &service::requires_mounts_dropin(&[DEVICE_PATH]))?;
        }
        let proxy = proxy_conf(&ProxyConf { endpoints: &endpoints(ctx)?, service_password: &ctx.secret("swift-service")?, processes: cp.workers.swift_proxy });
        write_private_conf(&root, PROXY_CONF, &proxy.render(), "swift")?;
        let units = units();
        service::start_in_background(&units)?;
        tracing::info!("swift: {} starting; device {} (one replica), S3 at the front end's root", units.join(", "), DEVICE_PATH);
        ctx.set_stamp(OBJECT_STORE.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_takes_tokens_and_s3_signatures_through_keystone() {
        let e = Endpoints { host: "cloud.example.org".into(), port: 443 };
        let ini = proxy_conf(&ProxyConf { endpoints: &e, service_password: "svc", processes: 1 });
        assert_eq!(ini.get("DEFAULT", "bind_port"), Some("8888"));
        assert_eq!(ini.get("DEFAULT", "workers"), Some("0"), "one process, not a parent and a child");
        assert_eq!(ini.get("app:proxy-server", "account_autocreate"), Some("true"));
        assert_eq!(ini.get("filter:s3token", "auth_uri"), Some("http://127.0.0.1:5000/v3"));
        assert_eq!(ini.get("filter:s3token", "password"), Some("svc"), "Keystone's s3tokens wants a service token");
        assert_eq!(ini.get("filter:authtoken", "delay_auth_decision"), Some("true"));
        assert_eq!(ini.get("filter:authtoken", "www_authenticate_uri"), Some("https://cloud.example.org/identity"));
        assert_eq!(ini.get("filter:keystoneauth", "operator_roles"), Some("admin, member"));
        assert_eq!(ini.get("filter:proxy-logging", "use"), Some("egg:swift#proxy_logging"));
        // s3api's own start-up check: s3api, then s3token, then keystoneauth,
        // all before the app; slo after s3api for multipart uploads; every
        // filter in the pipeline defined.
        let p: Vec<&str> = PIPELINE.split(' ').collect();
        let at = |n: &str| p.iter().position(|x| *x == n).unwrap();
        assert!(at("authtoken") < at("s3api") && at("s3api") < at("s3token") && at("s3token") < at("keystoneauth") && at("s3api") < at("slo"));
        assert_eq!(p.last(), Some(&"proxy-server"));
        for f in &p[..p.len() - 1] {
            assert!(ini.get(&format!("filter:{f}"), "use").is_some() || ini.get(&format!("filter:{f}"), "paste.filter_factory").is_some(), "{f} is defined");
        }
    }

    #[test]
    fn storage_servers_serve_the_mounted_device_only() {
        let ini = server_conf("object", 6200, 3);
        assert_eq!(ini.get("DEFAULT", "bind_port"), Some("6200"));
        assert_eq!(ini.get("DEFAULT", "workers"), Some("3"));
        assert_eq!(ini.get("DEFAULT", "mount_check"), Some("true"));
        assert_eq!(ini.get("pipeline:main", "pipeline"), Some("healthcheck object-server"));
        assert_eq!(ini.get("app:object-server", "use"), Some("egg:swift#object"));
        assert_eq!(format!("{DEVICES}/{DEVICE}"), DEVICE_PATH);
        let conf = swift_conf("p", "s").render();
        assert!(conf.contains("swift_hash_path_suffix = s\n") && !conf.contains("changeme"), "{conf}");
    }
}
