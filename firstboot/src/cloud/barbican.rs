//! Barbican, the key manager, with its simple crypto backend: secrets are
//! encrypted in the database with per-project keys, themselves encrypted
//! with the box's master key (KEK), which first boot derives from a secret
//! of its own (Barbican's built-in default KEK is public). The API runs
//! under uwsgi; with the queue and Keystone notifications off (Barbican's
//! defaults) neither the worker nor the listener is needed.

use super::catalog::{Endpoints, KEY_MANAGER, endpoints};
use super::database::{db_url, pool};
use super::ini::Ini;
use super::keystone;
use super::uwsgi::{Uwsgi, api_started, start_api};
use crate::ctx::Ctx;
use crate::engine::{About, Step};
use anyhow::{Context, Result};
use base64::Engine as _;
use sha2::Digest as _;

pub const CONF: &str = "etc/barbican/barbican.conf";

/// The paste file barbican-wsgi-api loads; barbican-common's postinst
/// copies it here from its template.
pub const PASTE: &str = "etc/barbican/barbican-api-paste.ini";

pub const PASTE_TEMPLATE: &str = "usr/share/barbican-common/barbican-api-paste.ini";

/// The KEK: a Fernet key (base64 of 32 bytes), derived from the box's
/// `barbican-kek` secret by SHA-256, so it is as random as the secret and
/// made again the same after a power cut.
pub fn kek(secret: &str) -> String {
    base64::engine::general_purpose::URL_SAFE.encode(sha2::Sha256::digest(secret.as_bytes()))
}

pub fn conf(db_url: &str, endpoints: &Endpoints, service_password: &str, kek: &str, pool: (u32, u32)) -> Ini {
    let mut ini = Ini::new("Written by ciab-firstboot; rewritten on every run of the barbican step. Holds the box's master key: root and barbican only.");
    // Secrets' hrefs point through the front end.
    ini.set("DEFAULT", "host_href", KEY_MANAGER.public_url(endpoints));
    super::oslo::db(&mut ini, "database", db_url, pool);
    keystone::authtoken(&mut ini, endpoints, KEY_MANAGER.name, service_password);
    ini.set("secretstore", "enabled_secretstore_plugins", "store_crypto")
        .set("crypto", "enabled_crypto_plugins", "simple_crypto")
        .set("simple_crypto_plugin", "kek", kek)
        .set("queue", "enable", false)
        .set("keystone_notifications", "enable", false)
        // Barbican's secure-RBAC rules let a project's `member` create and
        // manage its secrets (scs-0116); its legacy rules, still the
        // default, want a `creator` role nobody has.
        .set("oslo_policy", "enforce_new_defaults", true)
        .set("oslo_policy", "enforce_scope", true);
    super::oslo::proxy_headers(&mut ini);
    super::oslo::notifications_off(&mut ini);
    ini
}

pub struct BarbicanStep;

impl Step<Ctx> for BarbicanStep {
    fn about(&self) -> About {
        About { name: "barbican", title: "configure Barbican, the key manager", after: &["identity"] }
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        api_started(ctx, &KEY_MANAGER)
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let cp = ctx.control_plane()?;
        let paste = ctx.root.join(PASTE);
        if !paste.exists() {
            // barbican-common's postinst makes it from the template; an
            // image without it would serve nothing.
            std::fs::copy(ctx.root.join(PASTE_TEMPLATE), &paste).with_context(|| format!("copying /{} to /{}", PASTE_TEMPLATE, PASTE))?;
        }
        let kek = kek(&ctx.secret("barbican-kek")?);
        let conf = conf(&db_url(ctx, "barbican", "barbican")?, &endpoints(ctx)?, &ctx.secret("barbican-service")?, &kek, pool(ctx)?);
        let ini = Uwsgi::api("barbican-api", KEY_MANAGER.bind, "/usr/bin/barbican-wsgi-api", "barbican", cp.workers.barbican_api);
        start_api(ctx, &KEY_MANAGER, &ini, (CONF, conf.render()), &[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kek_is_a_fernet_key_of_the_boxs_own() {
        let k = kek("a-secret");
        let raw = base64::engine::general_purpose::URL_SAFE.decode(&k).unwrap();
        assert_eq!(raw.len(), 32, "Fernet wants 32 bytes");
        assert_eq!(k, kek("a-secret"), "the same after a rerun");
        assert_ne!(k, kek("another"));
        // Barbican's public default (base64 of "thirty_two_byte_keyblahblahblahh").
        assert_ne!(k, "dGhpcnR5X3R3b19ieXRlX2tleWJsYWhibGFoYmxhaGg=");
        let e = Endpoints { host: "box".into(), port: 8443 };
        let ini = conf("mysql+pymysql://barbican:pw@localhost/barbican", &e, "svc", &k, (5, 5));
        assert_eq!(ini.get("simple_crypto_plugin", "kek"), Some(k.as_str()));
        assert_eq!(ini.get("DEFAULT", "host_href"), Some("https://box:8443/key-manager"));
        assert_eq!(ini.get("crypto", "enabled_crypto_plugins"), Some("simple_crypto"));
        assert_eq!(ini.get("oslo_policy", "enforce_new_defaults"), Some("true"));
        assert_eq!(ini.get("database", "connection"), Some("mysql+pymysql://barbican:pw@localhost/barbican"));
        assert_eq!(ini.get("keystone_authtoken", "username"), Some("barbican"));
    }
}
