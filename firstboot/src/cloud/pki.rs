//! The box's own certificate authority and the server certificate of its TLS
//! front end.
//!
//! Both are made on the box at first boot (never in the image): an ECDSA P-256
//! CA valid for 10 years, and a server certificate for every name and address
//! a client may use — the host name, its FQDN, the management addresses and
//! the public endpoint's host. The CA is issued once and never replaced (every
//! client that trusts it would break); the server certificate is re-issued by
//! the same CA only when the names it must cover change.

use super::catalog::endpoints;
use crate::ctx::Ctx;
use crate::engine::{About, Step};
use crate::host::network::management_addresses;
use anyhow::{Context, Result};
use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// Where the box keeps its CA and certificates, under the state directory
/// (`/var/lib/ciab/pki`).
pub const PKI_SUBDIR: &str = "pki";

/// The files of [`PKI_DIR`].
#[derive(Debug, Clone)]
pub struct Pki {
    dir: PathBuf,
}

/// The names a server certificate covers; kept beside it to tell whether it
/// must be re-issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerNames {
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
}

impl ServerNames {
    /// Names from the site and the box's addresses: sorted, without duplicates,
    /// hosts that parse as addresses counted as addresses.
    pub fn new(hosts: &[&str], ips: &[IpAddr]) -> ServerNames {
        let mut dns = Vec::new();
        let mut all_ips: Vec<IpAddr> = ips.to_vec();
        for h in hosts {
            match h.parse::<IpAddr>() {
                Ok(ip) => all_ips.push(ip),
                Err(_) => dns.push(h.to_ascii_lowercase()),
            }
        }
        dns.sort();
        dns.dedup();
        all_ips.sort();
        all_ips.dedup();
        ServerNames { dns, ips: all_ips }
    }
}

const CA_DAYS: i64 = 3650;

const SERVER_DAYS: i64 = 825;

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        Pki { dir: dir.to_owned() }
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.crt")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
    /// Certificate chain and key in one file, as HAProxy reads them.
    pub fn server_pem(&self) -> PathBuf {
        self.dir.join("server.pem")
    }
    fn names_file(&self) -> PathBuf {
        self.dir.join("server-names.json")
    }

    /// Is there a CA, and a server certificate for exactly `names`?
    pub fn is_complete(&self, names: &ServerNames) -> bool {
        let recorded: Option<ServerNames> = std::fs::read(self.names_file()).ok().and_then(|b| serde_json::from_slice(&b).ok());
        [self.ca_cert(), self.ca_key(), self.server_cert(), self.server_key(), self.server_pem()].iter().all(|p| p.exists())
            && recorded.as_ref() == Some(names)
    }

    /// Issues what is missing: the CA once, the server certificate when absent
    /// or made for other names. Returns whether the CA was created now.
    pub fn ensure(&self, hostname: &str, names: &ServerNames) -> Result<bool> {
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o755))?;
        let created = !(self.ca_cert().exists() && self.ca_key().exists());
        if created {
            let key = KeyPair::generate().context("generating the CA key")?;
            let cert = ca_params(hostname)?.self_signed(&key).context("signing the CA certificate")?;
            // Key first: a CA certificate without its key would be kept forever.
            ciab_core::atomic::write_atomic_mode(&self.ca_key(), key.serialize_pem().as_bytes(), 0o600)?;
            ciab_core::atomic::write_atomic_mode(&self.ca_cert(), cert.pem().as_bytes(), 0o644)?;
        }
        if !self.is_complete(names) {
            self.issue_server(names)?;
        }
        Ok(created)
    }

    fn issue_server(&self, names: &ServerNames) -> Result<()> {
        let ca_pem = std::fs::read_to_string(self.ca_cert()).with_context(|| format!("reading {}", self.ca_cert().display()))?;
        let ca_key_pem = std::fs::read_to_string(self.ca_key()).with_context(|| format!("reading {}", self.ca_key().display()))?;
        let ca_key = KeyPair::from_pem(&ca_key_pem).with_context(|| format!("parsing {}", self.ca_key().display()))?;
        // rcgen signs with an issuer Certificate: rebuilding it from the
        // stored PEM keeps the CA's name and key, which is all signing uses.
        let ca = CertificateParams::from_ca_cert_pem(&ca_pem)
            .with_context(|| format!("parsing {}", self.ca_cert().display()))?
            .self_signed(&ca_key)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, names.dns.first().cloned().unwrap_or_else(|| "ciab".into()));
        params.distinguished_name = dn;
        params.subject_alt_names = names
            .dns
            .iter()
            .map(|d| Ok(SanType::DnsName(d.clone().try_into().with_context(|| format!("{d:?} is not a DNS name"))?)))
            .chain(names.ips.iter().map(|ip| Ok(SanType::IpAddress(*ip))))
            .collect::<Result<_>>()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(SERVER_DAYS);
        let key = KeyPair::generate().context("generating the server key")?;
        let cert = params.signed_by(&key, &ca, &ca_key).context("signing the server certificate")?;
        let chain = format!("{}{}", cert.pem(), ca_pem);
        ciab_core::atomic::write_atomic_mode(&self.server_key(), key.serialize_pem().as_bytes(), 0o600)?;
        ciab_core::atomic::write_atomic_mode(&self.server_cert(), chain.as_bytes(), 0o644)?;
        ciab_core::atomic::write_atomic_mode(&self.server_pem(), format!("{chain}{}", key.serialize_pem()).as_bytes(), 0o600)?;
        ciab_core::atomic::write_atomic(&self.names_file(), &serde_json::to_vec_pretty(names)?)
    }
}

fn ca_params(hostname: &str) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "ciab");
    dn.push(DnType::CommonName, format!("ciab box CA {hostname}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(CA_DAYS);
    Ok(params)
}

pub fn pki_of(ctx: &Ctx) -> Pki {
    Pki::new(&ctx.state_dir.join(PKI_SUBDIR))
}

fn server_names(ctx: &Ctx) -> Result<ServerNames> {
    let site = ctx.site()?;
    let fqdn = site.domain.as_ref().map(|d| format!("{}.{d}", site.hostname));
    let public = endpoints(ctx)?.host;
    let mut hosts: Vec<&str> = vec![&site.hostname, "localhost", "127.0.0.1", "::1", &public];
    if let Some(f) = &fqdn {
        hosts.push(f);
    }
    Ok(ServerNames::new(&hosts, &management_addresses(ctx)?))
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
    Ok(sha2::Sha256::digest(der).iter().map(|b| hex::encode_upper([*b])).collect::<Vec<_>>().join(":"))
}

pub struct PkiStep;

impl Step<Ctx> for PkiStep {
    fn about(&self) -> About {
        About { name: "pki", title: "make the box's CA and TLS certificate", after: &["network"] }
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
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
        tracing::info!("pki: CA {} (SHA-256 {})", if created { "created" } else { "kept" }, fingerprint(&ca)?);
        tracing::info!(
            "pki: server certificate for {}",
            names.dns.iter().cloned().chain(names.ips.iter().map(|i| i.to_string())).collect::<Vec<_>>().join(", ")
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn names() -> ServerNames {
        ServerNames::new(&["box7", "box7.example.org", "10.0.2.15", "Box7"], &["10.0.2.15".parse().unwrap()])
    }

    #[test]
    fn names_are_normalized() {
        let n = names();
        assert_eq!(n.dns, ["box7", "box7.example.org"]);
        assert_eq!(n.ips, ["10.0.2.15".parse::<IpAddr>().unwrap()]);
    }

    /// openssl, the client every service's Python stack links, verifies the
    /// chain and the names.
    #[test]
    fn issues_a_ca_once_and_a_server_certificate_openssl_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        let n = names();
        assert!(!pki.is_complete(&n));
        assert!(pki.ensure("box7", &n).unwrap(), "the CA is created on the first run");
        assert!(pki.is_complete(&n));
        for secret in [pki.ca_key(), pki.server_key(), pki.server_pem()] {
            assert_eq!(std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777, 0o600, "{}", secret.display());
        }
        let verify = |host_flag: &str, host: &str| {
            std::process::Command::new("openssl")
                .args(["verify", "-CAfile"])
                .arg(pki.ca_cert())
                .args([host_flag, host])
                .arg(dir.path().join("leaf.crt"))
                .output()
                .unwrap()
        };
        let chain = std::fs::read_to_string(pki.server_cert()).unwrap();
        let leaf_end = chain.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----\n".len();
        std::fs::write(dir.path().join("leaf.crt"), &chain[..leaf_end]).unwrap();
        for (flag, host) in [("-verify_hostname", "box7.example.org"), ("-verify_ip", "10.0.2.15")] {
            let out = verify(flag, host);
            assert!(out.status.success(), "{host}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let out = verify("-verify_hostname", "other.example.org");
        assert!(!out.status.success(), "a name the certificate does not carry is refused");

        // A rerun keeps everything; new names re-issue only the server certificate.
        let ca = std::fs::read(pki.ca_cert()).unwrap();
        let server = std::fs::read(pki.server_cert()).unwrap();
        assert!(!pki.ensure("box7", &n).unwrap());
        assert_eq!(std::fs::read(pki.server_cert()).unwrap(), server);
        let more = ServerNames::new(&["box7", "cloud.example.org"], &[]);
        assert!(!pki.is_complete(&more));
        assert!(!pki.ensure("box7", &more).unwrap());
        assert_eq!(std::fs::read(pki.ca_cert()).unwrap(), ca, "the CA is never re-issued");
        assert_ne!(std::fs::read(pki.server_cert()).unwrap(), server);
        assert!(pki.is_complete(&more));
    }

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
        let p = Pki::new(&dir.path().join("pki"));
        p.ensure("box", &ServerNames::new(&["box"], &[])).unwrap();
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
        let p = Pki::new(dir.path());
        p.ensure("box", &ServerNames::new(&["box"], &[])).unwrap();
        let pem = std::fs::read_to_string(p.ca_cert()).unwrap();
        let out = std::process::Command::new("openssl").args(["x509", "-noout", "-fingerprint", "-sha256", "-in"]).arg(p.ca_cert()).output().unwrap();
        let openssl = String::from_utf8_lossy(&out.stdout);
        assert_eq!(openssl.trim().split('=').nth(1).unwrap(), fingerprint(&pem).unwrap());
    }
}
