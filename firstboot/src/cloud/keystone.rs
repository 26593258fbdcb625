//! Keystone: configuration rendered from the plan, Fernet and credential
//! keys made in Rust, the API under uwsgi with the plan's process count, and
//! `keystone-manage bootstrap` for the admin user, the region and the
//! identity endpoints.

use super::catalog::{Endpoints, KEYSTONE, endpoints};
use super::database::db_url;
use super::ini::Ini;
use super::service::API_TIMEOUT;
use super::uwsgi::{Uwsgi, install_uwsgi};
use super::{database, keys, service};
use crate::ctx::Ctx;
use crate::engine::{About, Step};
use anyhow::{Context, Result};
use std::time::Duration;

pub const CONF: &str = "etc/keystone/keystone.conf";

pub const FERNET_KEYS: &str = "etc/keystone/fernet-keys";

pub const CREDENTIAL_KEYS: &str = "etc/keystone/credential-keys";

/// Where the API listens; only the TLS front end and local services reach it.
pub const BIND: &str = "127.0.0.1:5000";

/// The region every endpoint is registered in.
pub const REGION: &str = "RegionOne";

/// keystone.conf: Fernet tokens, the database account, the pool sizes of the plan.
pub fn conf(db_url: &str, endpoints: &Endpoints, pool: (u32, u32)) -> Ini {
    let mut ini = Ini::new("Written by ciab-firstboot; rewritten on every run of the keystone step.");
    ini.set("DEFAULT", "log_dir", "/var/log/keystone")
        .set("DEFAULT", "public_endpoint", endpoints.public("identity"));
    super::oslo::db(&mut ini, "database", db_url, pool);
    ini.set("token", "provider", "fernet")
        .set("fernet_tokens", "key_repository", format!("/{FERNET_KEYS}/"))
        .set("fernet_receipts", "key_repository", format!("/{FERNET_KEYS}/"))
        .set("credential", "key_repository", format!("/{CREDENTIAL_KEYS}/"));
    super::oslo::proxy_headers(&mut ini);
    ini
}

/// The `keystone-manage bootstrap` arguments (the password goes in by
/// environment, `OS_BOOTSTRAP_PASSWORD`, never on the command line).
pub fn bootstrap_args(endpoints: &Endpoints) -> Vec<String> {
    vec![
        "bootstrap".into(),
        "--bootstrap-username".into(),
        "admin".into(),
        "--bootstrap-project-name".into(),
        "admin".into(),
        "--bootstrap-role-name".into(),
        "admin".into(),
        "--bootstrap-service-name".into(),
        "keystone".into(),
        "--bootstrap-region-id".into(),
        REGION.into(),
        "--bootstrap-admin-url".into(),
        endpoints.public("identity"),
        "--bootstrap-public-url".into(),
        endpoints.public("identity"),
        "--bootstrap-internal-url".into(),
        format!("http://{BIND}"),
    ]
}

/// The `[keystone_authtoken]` section every other API validates tokens
/// with: its service user in project `service`, Keystone on loopback, tokens
/// cached in memcached, and the public identity URL for clients it turns away.
pub fn authtoken(ini: &mut Ini, endpoints: &Endpoints, user: &str, password: &str) {
    const S: &str = "keystone_authtoken";
    ini.set(S, "www_authenticate_uri", endpoints.public("identity"))
        .set(S, "auth_url", format!("http://{BIND}"))
        .set(S, "memcached_servers", super::messaging::MEMCACHED)
        .set(S, "auth_type", "password")
        .set(S, "project_domain_name", "Default")
        .set(S, "user_domain_name", "Default")
        .set(S, "project_name", "service")
        .set(S, "username", user)
        .set(S, "password", password)
        .set(S, "region_name", REGION)
        .set(S, "service_token_roles_required", true);
}

/// A section with which a service authenticates to another as its own
/// service user in project `service` (Nova to Placement and Neutron,
/// Neutron and Cinder to Nova).
pub fn service_auth(ini: &mut Ini, section: &str, user: &str, password: &str) {
    ini.set(section, "auth_type", "password")
        .set(section, "auth_url", format!("http://{BIND}"))
        .set(section, "project_domain_name", "Default")
        .set(section, "user_domain_name", "Default")
        .set(section, "project_name", "service")
        .set(section, "username", user)
        .set(section, "password", password)
        .set(section, "region_name", REGION);
}

/// A cloud in root's clouds.yaml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEntry {
    pub name: String,
    pub user: String,
    pub password: String,
    pub project: String,
}

/// root's clouds.yaml: every cloud through the public endpoint of the front
/// end, trusting the box's CA.
pub fn clouds_yaml(endpoints: &Endpoints, clouds: &[CloudEntry], ca_cert: &str) -> String {
    let mut out = String::from("# Written by ciab-firstboot: this box's credentials. Keep it private (mode 0600).\nclouds:\n");
    for c in clouds {
        out.push_str(&format!(
            "  {}:\n    auth:\n      auth_url: {}\n      username: {}\n      password: {}\n      project_name: {}\n      user_domain_name: Default\n      project_domain_name: Default\n    region_name: {REGION}\n    interface: public\n    identity_api_version: 3\n    cacert: {ca_cert}\n",
            c.name,
            endpoints.public("identity"),
            c.user,
            c.password,
            c.project
        ));
    }
    out
}

pub struct KeystoneStep;

impl Step<Ctx> for KeystoneStep {
    fn about(&self) -> About {
        About { name: "keystone", title: "configure Keystone, the identity service", after: &["pki", "database"] }
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        Ok(ctx.stamp("keystone").exists() && service::is_active("keystone"))
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let root = ctx.root.clone();
        let cp = ctx.control_plane()?;
        let endpoints = endpoints(ctx)?;
        let user = keys::system_user(&root, "keystone")?;
        let url = db_url(ctx, "keystone", "keystone")?;
        let conf_path = root.join(CONF);
        ciab_core::atomic::write_atomic_mode(&conf_path, conf(&url, &endpoints, (cp.db_max_pool_size, cp.db_max_overflow)).render().as_bytes(), 0o640)?;
        keys::chown(&conf_path, (0, user.1))?;
        keys::ensure_repository(&root.join(FERNET_KEYS), user)?;
        keys::ensure_repository(&root.join(CREDENTIAL_KEYS), user)?;
        let api = Uwsgi::api("keystone-api", KEYSTONE.bind, "/usr/bin/keystone-wsgi-public", "keystone", cp.workers.keystone);
        install_uwsgi(&root, KEYSTONE.unit, &api, &[])?;
        // After a power cut this step may run before boot has brought the
        // database back: wait for it rather than let oslo.db retry for minutes.
        service::start(&["mariadb"], false)?;
        database::wait_socket(Duration::from_secs(120))?;
        // The API starts (minutes of Python under emulation) while bootstrap
        // writes the admin user and catalog straight into the database.
        let started = std::time::Instant::now();
        service::start(&[KEYSTONE.unit], true)?;
        let t0 = std::time::Instant::now();
        let password = ctx.secret("keystone-admin")?;
        ciab_core::exec::Cmd::new("runuser")
            .package("util-linux")
            .args(["-u", "keystone", "--", "keystone-manage"])
            .args(bootstrap_args(&endpoints))
            .secret_env("OS_BOOTSTRAP_PASSWORD", &password)
            .run()
            // keystone-manage reports to its log file, not to stderr.
            .with_context(|| format!("keystone-manage bootstrap\n{}", service::file_tail(&root.join("var/log/keystone/keystone-manage.log"), 12)))?;
        tracing::info!("keystone: bootstrap done in {:.0} s", t0.elapsed().as_secs_f64());
        service::wait_http(&format!("{}{}", KEYSTONE.internal_url(), KEYSTONE.probe), None, KEYSTONE.unit, API_TIMEOUT)?;
        tracing::info!("keystone: API answers, {:.0} s after its start", started.elapsed().as_secs_f64());
        ctx.set_stamp("keystone")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints() -> Endpoints {
        Endpoints { host: "cloud.example.org".into(), port: 8443 }
    }

    #[test]
    fn conf_points_at_the_database_keys_and_public_endpoint() {
        let text = conf("mysql+pymysql://keystone:pw@localhost/keystone", &endpoints(), (5, 5)).render();
        let expected = "\
# Written by ciab-firstboot; rewritten on every run of the keystone step.

[DEFAULT]
log_dir = /var/log/keystone
public_endpoint = https://cloud.example.org:8443/identity

[database]
connection = mysql+pymysql://keystone:pw@localhost/keystone
max_pool_size = 5
max_overflow = 5

[token]
provider = fernet

[fernet_tokens]
key_repository = /etc/keystone/fernet-keys/

[fernet_receipts]
key_repository = /etc/keystone/fernet-keys/

[credential]
key_repository = /etc/keystone/credential-keys/

[oslo_middleware]
enable_proxy_headers_parsing = true
";
        assert_eq!(text, expected);
    }

    #[test]
    fn bootstrap_registers_public_and_internal_urls() {
        let args = bootstrap_args(&endpoints()).join(" ");
        assert!(args.contains("--bootstrap-public-url https://cloud.example.org:8443/identity"), "{args}");
        assert!(args.contains("--bootstrap-internal-url http://127.0.0.1:5000"), "{args}");
        assert!(args.contains("--bootstrap-region-id RegionOne"));
        assert!(!args.contains("password"), "the password never goes on the command line");
    }

    #[test]
    fn clouds_yaml_uses_the_public_endpoint_and_the_ca() {
        let entry = |name: &str| CloudEntry { name: name.into(), user: name.into(), password: format!("{name}-pw"), project: name.into() };
        let y = clouds_yaml(&endpoints(), &[entry("admin"), entry("demo")], "/var/lib/ciab/pki/ca.crt");
        assert_eq!(y.matches("auth_url: https://cloud.example.org:8443/identity\n").count(), 2, "{y}");
        assert!(y.contains("\n  admin:\n    auth:\n"), "{y}");
        assert!(y.contains("\n  demo:\n    auth:\n      auth_url: https://cloud.example.org:8443/identity\n      username: demo\n      password: demo-pw\n      project_name: demo\n"), "{y}");
        assert_eq!(y.matches("cacert: /var/lib/ciab/pki/ca.crt\n").count(), 2);
    }
}
