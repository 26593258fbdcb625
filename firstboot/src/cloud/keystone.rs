//! Keystone: configuration rendered from the plan, Fernet and credential
//! keys made in Rust, the API under uwsgi with the plan's process count, and
//! `keystone-manage bootstrap` for the admin user, the region and the
//! identity endpoints.

use super::ini::Ini;
use super::Endpoints;

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
        .set("DEFAULT", "public_endpoint", endpoints.public("identity"))
        .set("database", "connection", db_url)
        .set("database", "max_pool_size", pool.0)
        .set("database", "max_overflow", pool.1)
        .set("token", "provider", "fernet")
        .set("fernet_tokens", "key_repository", format!("/{FERNET_KEYS}/"))
        .set("fernet_receipts", "key_repository", format!("/{FERNET_KEYS}/"))
        .set("credential", "key_repository", format!("/{CREDENTIAL_KEYS}/"))
        // The front end terminates TLS and says so in X-Forwarded-Proto.
        .set("oslo_middleware", "enable_proxy_headers_parsing", true);
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

/// The uwsgi settings of an OpenStack API, replacing Debian's defaults (8
/// processes × 32 threads with lazy-apps: ~12 minutes to answer under TCG).
pub fn uwsgi_ini(name: &str, bind: &str, wsgi_file: &str, user: &str, processes: u32) -> String {
    format!(
        "# Written by ciab-firstboot from the sizing plan.\n[uwsgi]\nhttp-socket = {bind}\nprocesses = {processes}\nthreads = 1\nmaster = true\nlazy-apps = false\nplugins = python3\nwsgi-file = {wsgi_file}\nname = {name}\nuid = {user}\ngid = {user}\nchdir = /var/lib/{user}\nbuffer-size = 65535\nrem-header = Content-Length\nthunder-lock = true\nno-orphans = true\ndie-on-term = true\nclose-on-exec = true\nclose-on-exec2 = true\nenable-threads = true\nlisten = 100\nlogto = /var/log/{user}/{name}.log\n"
    )
}

/// A drop-in that runs the API from [`uwsgi_ini`] instead of Debian's init
/// script wrapper.
pub fn uwsgi_dropin(ini_path: &str) -> String {
    format!("# Written by ciab-firstboot.\n[Service]\nExecStart=\nExecStart=/usr/bin/uwsgi_python3 --ini {ini_path}\nRestart=on-failure\n")
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
    fn uwsgi_runs_the_plans_process_count_on_loopback() {
        let ini = uwsgi_ini("keystone-api", BIND, "/usr/bin/keystone-wsgi-public", "keystone", 2);
        assert!(ini.contains("\nhttp-socket = 127.0.0.1:5000\nprocesses = 2\nthreads = 1\n"), "{ini}");
        assert!(ini.contains("\nlazy-apps = false\n"));
        assert!(uwsgi_dropin("/etc/ciab/uwsgi/keystone.ini").contains("\nExecStart=\nExecStart=/usr/bin/uwsgi_python3 --ini /etc/ciab/uwsgi/keystone.ini\n"));
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
