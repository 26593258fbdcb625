//! The IaaS layer's first-boot steps that lay its foundation, after
//! `registry`: pki → database → (messaging) → keystone → identity; the
//! services on top are in `service_steps`. Each is a no-op on a profile
//! without a cloud or an image without OpenStack (no build-time schemas).
//!
//! Every `apply()` may be cut by a power loss at any point and re-run: the
//! CA and keys are never re-made, databases are loaded once (a stamp per
//! database, and the dumps drop and re-create their tables if a load was
//! cut), accounts are re-asserted with the same passwords, configuration is
//! rewritten whole.

use super::catalog::{self, KEYSTONE};
use super::uwsgi::Uwsgi;
use super::{database, frontend, keys, keystone, pki, service, Endpoints};
use crate::engine::Step;
use crate::steps::{Ctx, NetworkStep};
use anyhow::{Context, Result};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long an OpenStack API may take to answer after its start: Keystone
/// under TCG with one process answers in about two minutes.
pub(super) const API_TIMEOUT: Duration = Duration::from_secs(900);

/// Whether this box runs the cloud: a cloud profile on an image that carries it.
pub(super) fn has_cloud(ctx: &Ctx) -> Result<bool> {
    Ok(ctx.plan()?.profile.has_cloud() && ctx.root.join(database::SCHEMAS_DIR).is_dir())
}

pub(super) fn stamp(ctx: &Ctx, name: &str) -> PathBuf {
    ctx.state_dir.join("cloud").join(format!("{name}.done"))
}

pub(super) fn set_stamp(ctx: &Ctx, name: &str) -> Result<()> {
    let path = stamp(ctx, name);
    std::fs::create_dir_all(path.parent().context("stamp path")?)?;
    ciab_core::atomic::write_atomic(&path, b"")
}

pub(super) fn secret(ctx: &Ctx, name: &str) -> Result<String> {
    crate::secrets::read(&ctx.state_dir.join("secrets"), name)
}

/// A session as the cloud's `admin` in project `admin`, through Keystone on loopback.
pub(super) fn admin(ctx: &Ctx) -> Result<super::identity::Identity> {
    super::identity::Identity::login(KEYSTONE.bind, "admin", &secret(ctx, "keystone-admin")?, "admin")
}

/// oslo.db's URL for `user`'s account on `database`, with its password.
pub(super) fn db_url(ctx: &Ctx, user: &str, database: &str) -> Result<String> {
    let account = database::ACCOUNTS.iter().find(|a| a.user == user).with_context(|| format!("no database account {user}"))?;
    Ok(database::connection_url(account, &secret(ctx, account.secret)?, database))
}

pub(super) fn pki_of(ctx: &Ctx) -> pki::Pki {
    pki::Pki::new(&ctx.state_dir.join(pki::PKI_SUBDIR))
}

/// The management addresses (without prefix length).
pub(super) fn addresses(ctx: &Ctx) -> Result<Vec<IpAddr>> {
    let Some(nic) = NetworkStep::nic(ctx)? else { return Ok(Vec::new()) };
    Ok(crate::network::addresses(&nic)?.iter().filter_map(|a| a.split('/').next()?.parse().ok()).collect())
}

/// Where users reach the cloud.
pub fn endpoints(ctx: &Ctx) -> Result<Endpoints> {
    let site = ctx.site()?;
    if let Some(p) = &site.public_endpoint {
        return Ok(Endpoints { host: p.host.clone(), port: p.port });
    }
    let host = addresses(ctx)?.first().map(|a| a.to_string()).unwrap_or_else(|| site.hostname.clone());
    Ok(Endpoints { host, port: frontend::LISTEN_PORT })
}

fn server_names(ctx: &Ctx) -> Result<pki::ServerNames> {
    let site = ctx.site()?;
    let fqdn = site.domain.as_ref().map(|d| format!("{}.{d}", site.hostname));
    let public = endpoints(ctx)?.host;
    let mut hosts: Vec<&str> = vec![&site.hostname, "localhost", "127.0.0.1", "::1", &public];
    if let Some(f) = &fqdn {
        hosts.push(f);
    }
    Ok(pki::ServerNames::new(&hosts, &addresses(ctx)?))
}

/// Where the box's CA goes so clients on the box trust it: the source
/// update-ca-certificates reads, and the bundle it writes.
const LOCAL_TRUST: &str = "usr/local/share/ca-certificates/ciab-box-ca.crt";
const TRUST_BUNDLE: &str = "etc/ssl/certs/ca-certificates.crt";

/// Is the CA in the box's trust store?
pub fn is_trusted(root: &Path, ca_pem: &str) -> bool {
    std::fs::read_to_string(root.join(LOCAL_TRUST)).ok().as_deref() == Some(ca_pem)
        && std::fs::read_to_string(root.join(TRUST_BUNDLE)).is_ok_and(|b| b.contains(ca_pem.trim()))
}

/// Adds the CA to the trust store as update-ca-certificates would, without
/// running it: it rehashes every certificate, ~25 s under TCG. The file
/// under /usr/local/share keeps the CA in the bundle when a package upgrade
/// rebuilds it.
pub fn trust(root: &Path, ca_pem: &str) -> Result<()> {
    let local = root.join(LOCAL_TRUST);
    std::fs::create_dir_all(local.parent().context("parent")?)?;
    ciab_core::atomic::write_atomic(&local, ca_pem.as_bytes())?;
    let bundle = root.join(TRUST_BUNDLE);
    let mut text = std::fs::read_to_string(&bundle).unwrap_or_default();
    if !text.contains(ca_pem.trim()) {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(ca_pem);
        std::fs::create_dir_all(bundle.parent().context("parent")?)?;
        ciab_core::atomic::write_atomic(&bundle, text.as_bytes())?;
    }
    Ok(())
}

/// `AA:BB:…`: SHA-256 of the certificate's DER, as browsers show it.
pub fn fingerprint(pem: &str) -> Result<String> {
    use base64::Engine as _;
    use sha2::Digest as _;
    let body: String = pem.lines().skip_while(|l| !l.starts_with("-----BEGIN")).skip(1).take_while(|l| !l.starts_with("-----END")).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(body).context("decoding the certificate")?;
    Ok(sha2::Sha256::digest(der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":"))
}

pub struct PkiStep;

impl Step<Ctx> for PkiStep {
    fn name(&self) -> &'static str {
        "pki"
    }
    fn title(&self) -> &'static str {
        "make the box's CA and TLS certificate"
    }
    fn depends_on(&self) -> &'static [&'static str] {
        &["network"]
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        if !has_cloud(ctx)? {
            return Ok(true);
        }
        let pki = pki_of(ctx);
        let trusted = std::fs::read_to_string(pki.ca_cert()).is_ok_and(|ca| is_trusted(&ctx.root, &ca));
        Ok(pki.is_complete(&server_names(ctx)?) && trusted)
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let pki = pki_of(ctx);
        let names = server_names(ctx)?;
        let created = pki.ensure(&ctx.site()?.hostname, &names)?;
        let ca = std::fs::read_to_string(pki.ca_cert())?;
        trust(&ctx.root, &ca)?;
        println!("ciab-firstboot: pki: CA {} (SHA-256 {})", if created { "created" } else { "kept" }, fingerprint(&ca)?);
        println!(
            "ciab-firstboot: pki: server certificate for {}",
            names.dns.iter().cloned().chain(names.ips.iter().map(|i| i.to_string())).collect::<Vec<_>>().join(", ")
        );
        Ok(())
    }
}

pub struct DatabaseStep;

impl DatabaseStep {
    fn prepare_datadir(root: &Path) -> Result<()> {
        let datadir = root.join(database::DATADIR);
        // The volume's lost+found would show up as a database.
        let lost = datadir.join("lost+found");
        if lost.is_dir() && std::fs::read_dir(&lost)?.next().is_none() {
            std::fs::remove_dir(&lost).with_context(|| format!("removing {}", lost.display()))?;
        }
        let mysql = keys::system_user(root, "mysql")?;
        keys::chown(&datadir, mysql)?;
        if !datadir.join("mysql").is_dir() {
            ciab_core::exec::Cmd::new("mariadb-install-db")
                .package("mariadb-server")
                .args(["--user=mysql", "--datadir=/var/lib/mysql", "--auth-root-authentication-method=socket", "--skip-test-db"])
                .run()?;
        }
        Ok(())
    }
}

impl Step<Ctx> for DatabaseStep {
    fn name(&self) -> &'static str {
        "database"
    }
    fn title(&self) -> &'static str {
        "start MariaDB and load the schemas"
    }
    fn depends_on(&self) -> &'static [&'static str] {
        &["secrets", "storage"]
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        Ok(!has_cloud(ctx)? || (stamp(ctx, "database").exists() && service::is_active("mariadb")))
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let cp = ctx.plan()?.control_plane.context("a cloud profile's plan has a control plane")?;
        ciab_core::atomic::write_atomic(&ctx.root.join(database::SERVER_CNF), database::server_cnf(&cp).render().as_bytes())?;
        // The volume is a `nofail` mount that boot does not wait for: without
        // this a later boot starts MariaDB on the empty mount point.
        write_dropin(&ctx.root, "mariadb.service", &service::requires_mounts_dropin(&["/var/lib/mysql"]))?;
        Self::prepare_datadir(&ctx.root)?;
        service::start(&["mariadb"], false)?;
        database::wait_socket(Duration::from_secs(120))?;
        let pending: Vec<database::Load> = database::ACCOUNTS
            .iter()
            .flat_map(|a| a.databases.iter())
            .map(|&(db, schema)| database::Load {
                database: db,
                schema: ctx.root.join(database::SCHEMAS_DIR).join(format!("{schema}.sql")),
                stamp: stamp(ctx, &format!("schema-{db}")),
            })
            .filter(|load| !load.stamp.exists())
            .collect();
        let loaded = pending.len();
        if !pending.is_empty() {
            let create: String = pending.iter().map(|l| format!("CREATE DATABASE IF NOT EXISTS `{}` CHARACTER SET utf8mb4;\n", l.database)).collect();
            database::run_sql(&ctx.state_dir, None, &create)?;
            database::load_schemas(pending, SCHEMA_LOADS)?;
        }
        database::run_sql(&ctx.state_dir, None, &database::accounts_sql(|n| secret(ctx, n))?)?;
        set_stamp(ctx, "database")?;
        println!("ciab-firstboot: database: {loaded} database(s) loaded, {} service accounts", database::ACCOUNTS.len());
        Ok(())
    }
}

/// Schemas loaded at once, each by its own client and server thread: one
/// after another the ten took 80 s of boot 1 under TCG, one CPU's work on a
/// box that has at least four and nothing else to do yet.
const SCHEMA_LOADS: usize = 3;

pub struct KeystoneStep;

/// Writes ciab's drop-in for `unit` (`/etc/systemd/system/<unit>.d/ciab.conf`).
pub(super) fn write_dropin(root: &Path, unit: &str, sections: &str) -> Result<()> {
    write_named_dropin(root, unit, "ciab", sections)
}

/// Writes a second drop-in of ciab's for `unit`, beside the one
/// [`install_uwsgi`] or [`write_dropin`] writes (`<name>.conf`).
pub(super) fn write_named_dropin(root: &Path, unit: &str, name: &str, sections: &str) -> Result<()> {
    let path = root.join(format!("etc/systemd/system/{unit}.d/{name}.conf"));
    std::fs::create_dir_all(path.parent().context("parent")?)?;
    ciab_core::atomic::write_atomic(&path, format!("# Written by ciab-firstboot.\n{sections}").as_bytes())
}

/// Writes `api`'s uwsgi ini and the drop-in that runs `unit` from it (and
/// orders it after the mounts of `data`); starting the unit reloads systemd.
pub(super) fn install_uwsgi(root: &Path, unit: &str, api: &Uwsgi, data: &[&str]) -> Result<()> {
    let ini = Uwsgi::ini_path(api.name);
    let path = root.join(&ini);
    std::fs::create_dir_all(path.parent().context("parent")?)?;
    ciab_core::atomic::write_atomic(&path, api.ini().as_bytes())?;
    let mut dropin = super::uwsgi::dropin(&format!("/{ini}"));
    if !data.is_empty() {
        dropin.push_str(&service::requires_mounts_dropin(data));
    }
    write_dropin(root, &format!("{unit}.service"), &dropin)
}

const CLOUDS_YAML: &str = "root/.config/openstack/clouds.yaml";

impl Step<Ctx> for KeystoneStep {
    fn name(&self) -> &'static str {
        "keystone"
    }
    fn title(&self) -> &'static str {
        "configure Keystone, the identity service"
    }
    fn depends_on(&self) -> &'static [&'static str] {
        &["pki", "database"]
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        Ok(!has_cloud(ctx)? || (stamp(ctx, "keystone").exists() && service::is_active("keystone")))
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let root = ctx.root.clone();
        let plan = ctx.plan()?;
        let cp = plan.control_plane.context("a cloud profile's plan has a control plane")?;
        let endpoints = endpoints(ctx)?;
        let user = keys::system_user(&root, "keystone")?;
        let url = db_url(ctx, "keystone", "keystone")?;
        let conf = root.join(keystone::CONF);
        ciab_core::atomic::write_atomic_mode(&conf, keystone::conf(&url, &endpoints, (cp.db_max_pool_size, cp.db_max_overflow)).render().as_bytes(), 0o640)?;
        keys::chown(&conf, (0, user.1))?;
        keys::ensure_repository(&root.join(keystone::FERNET_KEYS), user)?;
        keys::ensure_repository(&root.join(keystone::CREDENTIAL_KEYS), user)?;
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
        let password = secret(ctx, "keystone-admin")?;
        ciab_core::exec::Cmd::new("runuser")
            .package("util-linux")
            .args(["-u", "keystone", "--", "keystone-manage"])
            .args(keystone::bootstrap_args(&endpoints))
            .secret_env("OS_BOOTSTRAP_PASSWORD", &password)
            .run()
            // keystone-manage reports to its log file, not to stderr.
            .with_context(|| format!("keystone-manage bootstrap\n{}", service::file_tail(&root.join("var/log/keystone/keystone-manage.log"), 12)))?;
        println!("ciab-firstboot: keystone: bootstrap done in {:.0} s", t0.elapsed().as_secs_f64());
        service::wait_http(&format!("{}{}", KEYSTONE.internal_url(), KEYSTONE.probe), None, KEYSTONE.unit, API_TIMEOUT)?;
        println!("ciab-firstboot: keystone: API answers, {:.0} s after its start", started.elapsed().as_secs_f64());
        set_stamp(ctx, "keystone")
    }
}

/// The non-admin project and its member user, for people using the cloud.
pub const MEMBER_PROJECT: &str = "demo";
pub const MEMBER_USER: &str = "demo";
/// Where the services' own users live.
pub const SERVICE_PROJECT: &str = "service";

/// What the status page shows about the cloud: names and places, no secret.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CloudSummary {
    pub identity_url: String,
    /// Horizon's login page; empty in a summary written before Horizon was added.
    #[serde(default)]
    pub dashboard_url: String,
    pub region: String,
    pub ca_fingerprint: String,
    pub users: Vec<(String, String)>,
    pub credentials: String,
}

/// One service of the catalog as the identity step registers it.
struct CatalogEntry {
    kind: &'static str,
    name: &'static str,
    description: &'static str,
    /// (interface, URL) of each endpoint.
    urls: Vec<(&'static str, String)>,
    /// The service user's password, for a service that has one.
    password: Option<String>,
}

impl CatalogEntry {
    fn register(&self, directory: &mut super::identity::Directory<'_>, service_project: &str, service_roles: &[String]) -> Result<()> {
        let id = directory.ensure_service(self.kind, self.name, self.description)?;
        for (interface, url) in &self.urls {
            directory.ensure_endpoint(&id, interface, keystone::REGION, url)?;
        }
        if let Some(password) = &self.password {
            let user = directory.ensure_user(self.name, password, service_project)?;
            for role in service_roles {
                directory.grant(service_project, &user, role)?;
            }
        }
        Ok(())
    }
}

/// Projects, users and roles through Keystone's API, and root's clouds.yaml.
pub struct IdentityStep;

impl Step<Ctx> for IdentityStep {
    fn name(&self) -> &'static str {
        "identity"
    }
    fn title(&self) -> &'static str {
        "create the projects and users"
    }
    fn depends_on(&self) -> &'static [&'static str] {
        &["keystone"]
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        Ok(!has_cloud(ctx)? || (stamp(ctx, "identity").exists() && ctx.root.join(CLOUDS_YAML).exists()))
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let admin_pw = secret(ctx, "keystone-admin")?;
        let member_pw = secret(ctx, "demo-password")?;
        let session = super::identity::Identity::login(keystone::BIND, "admin", &admin_pw, "admin")?;
        let mut directory = session.directory()?;
        let service_project = directory.ensure_project(SERVICE_PROJECT, "The cloud's own services")?;
        let project = directory.ensure_project(MEMBER_PROJECT, "A project for trying the cloud out")?;
        let user = directory.ensure_user(MEMBER_USER, &member_pw, &project)?;
        let member = directory.ensure_role("member")?;
        directory.grant(&project, &user, &member)?;
        let endpoints = endpoints(ctx)?;
        // Token validation and Nova's calls to Placement need `service`;
        // `admin` lets services act across projects as upstream's guides set up.
        let service_roles = [directory.ensure_role("admin")?, directory.ensure_role("service")?];
        // Each API: its service, its endpoints and its service user. S3
        // sits at the root of object storage's host and port, under its own
        // type, without a user of its own.
        let mut entries: Vec<CatalogEntry> = Vec::new();
        for api in catalog::APIS {
            let password = api.service_secret.map(|name| secret(ctx, name)).transpose()?;
            entries.push(CatalogEntry { kind: api.kind, name: api.name, description: api.description, urls: api.catalog_urls(&endpoints).to_vec(), password });
        }
        let (kind, name, description) = catalog::S3;
        let urls = vec![("public", catalog::OBJECT_STORE.public_url(&endpoints)), ("internal", catalog::OBJECT_STORE.internal_url())];
        entries.push(CatalogEntry { kind, name, description, urls, password: None });
        // Two at a time, one per Keystone process: the calls are
        // independent (a service, its endpoints and its user each), and
        // under TCG one process answers one call in a second or two.
        let half = entries.len().div_ceil(2).max(1);
        std::thread::scope(|scope| -> Result<()> {
            let workers: Vec<_> = entries
                .chunks(half)
                .map(|chunk| {
                    let mut directory = directory.clone();
                    let (service_project, service_roles) = (&service_project, &service_roles);
                    scope.spawn(move || chunk.iter().try_for_each(|entry| entry.register(&mut directory, service_project, service_roles)))
                })
                .collect();
            for worker in workers {
                worker.join().map_err(|_| anyhow::anyhow!("a thread registering the catalog panicked"))??;
            }
            Ok(())
        })?;
        let registered: Vec<&str> = entries.iter().map(|e| e.kind).collect();
        let pki = pki_of(ctx);
        let clouds = [
            keystone::CloudEntry { name: "admin".into(), user: "admin".into(), password: admin_pw, project: "admin".into() },
            keystone::CloudEntry { name: MEMBER_PROJECT.into(), user: MEMBER_USER.into(), password: member_pw, project: MEMBER_PROJECT.into() },
        ];
        let path = ctx.root.join(CLOUDS_YAML);
        std::fs::create_dir_all(path.parent().context("parent")?)?;
        ciab_core::atomic::write_atomic_mode(&path, keystone::clouds_yaml(&endpoints, &clouds, &pki.ca_cert().display().to_string()).as_bytes(), 0o600)?;
        let summary = CloudSummary {
            identity_url: endpoints.public("identity"),
            dashboard_url: endpoints.public(&format!("{}/", super::horizon::WEBROOT.trim_start_matches('/'))),
            region: keystone::REGION.into(),
            ca_fingerprint: fingerprint(&std::fs::read_to_string(pki.ca_cert())?)?,
            users: vec![("admin".into(), "admin".into()), (MEMBER_USER.into(), format!("member of {MEMBER_PROJECT}"))],
            credentials: format!("/{CLOUDS_YAML} on the box (root only): clouds admin and {MEMBER_PROJECT}"),
        };
        ciab_core::atomic::write_atomic(&ctx.state_dir.join(CLOUD_SUMMARY), &serde_json::to_vec_pretty(&summary)?)?;
        println!("ciab-firstboot: identity: projects {SERVICE_PROJECT} and {MEMBER_PROJECT}, user {MEMBER_USER} (member); credentials in /{CLOUDS_YAML}");
        println!("ciab-firstboot: identity: catalog: {}", registered.join(", "));
        set_stamp(ctx, "identity")
    }
}

/// The cloud's summary beside the journal, for the status page.
pub const CLOUD_SUMMARY: &str = "cloud.json";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_joins_the_trust_bundle_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc/ssl/certs")).unwrap();
        let other = "-----BEGIN CERTIFICATE-----\nOTHER\n-----END CERTIFICATE-----";
        std::fs::write(root.join(TRUST_BUNDLE), other).unwrap();
        let ca = "-----BEGIN CERTIFICATE-----\nOURS\n-----END CERTIFICATE-----\n";
        assert!(!is_trusted(root, ca));
        trust(root, ca).unwrap();
        trust(root, ca).unwrap();
        assert!(is_trusted(root, ca));
        let bundle = std::fs::read_to_string(root.join(TRUST_BUNDLE)).unwrap();
        assert_eq!(bundle, format!("{other}\n{ca}"));
        assert_eq!(std::fs::read_to_string(root.join(LOCAL_TRUST)).unwrap(), ca);
    }

    /// What clients on the box use: openssl verifies our server certificate
    /// against the bundle `trust` wrote.
    #[test]
    fn openssl_trusts_the_server_through_the_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let p = pki::Pki::new(&dir.path().join("pki"));
        p.ensure("box", &pki::ServerNames::new(&["box"], &[])).unwrap();
        let ca = std::fs::read_to_string(p.ca_cert()).unwrap();
        trust(dir.path(), &ca).unwrap();
        let chain = std::fs::read_to_string(p.server_cert()).unwrap();
        let leaf = &chain[..chain.find("-----END CERTIFICATE-----").unwrap() + 26];
        std::fs::write(dir.path().join("leaf.crt"), leaf).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["verify", "-verify_hostname", "box", "-CAfile"])
            .arg(dir.path().join(TRUST_BUNDLE))
            .arg(dir.path().join("leaf.crt"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    #[test]
    fn fingerprint_is_sha256_of_der() {
        let dir = tempfile::tempdir().unwrap();
        let p = pki::Pki::new(dir.path());
        p.ensure("box", &pki::ServerNames::new(&["box"], &[])).unwrap();
        let pem = std::fs::read_to_string(p.ca_cert()).unwrap();
        let out = std::process::Command::new("openssl").args(["x509", "-noout", "-fingerprint", "-sha256", "-in"]).arg(p.ca_cert()).output().unwrap();
        let openssl = String::from_utf8_lossy(&out.stdout);
        assert_eq!(openssl.trim().split('=').nth(1).unwrap(), fingerprint(&pem).unwrap());
    }
}
