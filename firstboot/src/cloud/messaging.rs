//! The message queue and the token cache: RabbitMQ with one `openstack`
//! user defined in a definitions file (its salted hash computed here, so no
//! `rabbitmqctl` call — a fresh Erlang VM, ~15 s each under TCG — and no
//! `guest` user: a node that imports definitions at boot does not create
//! it), and memcached. Both listen on loopback only.

use super::amqp::Login;
use super::service::{write_dropin, write_private_conf};
use super::{amqp, keys, service};
use crate::ctx::Ctx;
use crate::engine::{About, Step};
use crate::model::plan::{Memcached, Rabbitmq};
use anyhow::{Result, bail};
use serde_json::json;
use std::time::Duration;

pub const MEMCACHED: &str = "127.0.0.1:11211";

pub const MEMCACHED_CONF: &str = "etc/memcached.conf";

/// Where the services' AMQP connections go.
pub const AMQP: &str = "127.0.0.1:5672";

/// The one RabbitMQ user, shared by the OpenStack services as upstream's
/// guides do; its password is the secret [`RABBIT_SECRET`].
pub const RABBIT_USER: &str = "openstack";

pub const RABBIT_SECRET: &str = "rabbitmq-openstack";

pub const RABBITMQ_CONF: &str = "etc/rabbitmq/rabbitmq.conf";

pub const RABBITMQ_ENV: &str = "etc/rabbitmq/rabbitmq-env.conf";

pub const DEFINITIONS: &str = "etc/rabbitmq/definitions.json";

pub const ERLANG_COOKIE: &str = "var/lib/rabbitmq/.erlang.cookie";

/// oslo.messaging's `transport_url`.
pub fn transport_url(password: &str) -> String {
    format!("rabbit://{RABBIT_USER}:{password}@{AMQP}/")
}

/// rabbitmq.conf: loopback listener, the plan's memory watermark, users
/// from [`definitions`] at every boot.
pub fn rabbitmq_conf(r: &Rabbitmq) -> String {
    format!(
        "# Written by ciab-firstboot from the sizing plan.\n\
listeners.tcp.1 = {AMQP}\n\
vm_memory_high_watermark.absolute = {}\n\
definitions.import_backend = local_filesystem\n\
definitions.local.path = /{DEFINITIONS}\n\
log.file.level = warning\n",
        r.memory_high_watermark_mib << 20
    )
}

/// rabbitmq-env.conf: a node name that does not change with the host name
/// (the database directory is named after it), Erlang distribution on
/// loopback only, and schedulers that sleep when idle instead of spinning
/// (RabbitMQ's advice where CPUs are shared: here, the cloud's own
/// services starting beside it; under TCG a spin costs real host time).
pub fn rabbitmq_env() -> String {
    "# Written by ciab-firstboot.\nNODENAME=rabbit@localhost\nSERVER_ADDITIONAL_ERL_ARGS=\"-kernel inet_dist_use_interface {127,0,0,1} +sbwt none +sbwtdcpu none +sbwtdio none\"\n".to_owned()
}

/// epmd's socket on loopback only (Debian's listens on every address).
pub fn epmd_socket_dropin() -> String {
    "[Socket]\nListenStream=\nListenStream=127.0.0.1:4369\n".to_owned()
}

/// RabbitMQ's `rabbit_password_hashing_sha256`: base64(salt ‖ SHA-256(salt ‖ password)).
pub fn password_hash(salt: [u8; 4], password: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(salt);
    h.update(password.as_bytes());
    let mut out = salt.to_vec();
    out.extend_from_slice(&h.finalize());
    base64::engine::general_purpose::STANDARD.encode(out)
}

/// The definitions file: vhost `/` and the `openstack` user with full
/// rights on it.
pub fn definitions(password: &str, salt: [u8; 4]) -> String {
    let v = json!({
        "users": [{"name": RABBIT_USER, "password_hash": password_hash(salt, password), "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": []}],
        "vhosts": [{"name": "/"}],
        "permissions": [{"user": RABBIT_USER, "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}],
    });
    let mut text = serde_json::to_string_pretty(&v).expect("a JSON value serializes");
    text.push('\n');
    text
}

pub fn random_salt() -> Result<[u8; 4]> {
    crate::model::secrets::random_bytes()
}

/// A fresh Erlang cookie: 20 upper-case letters, as Erlang makes them, but
/// from the kernel's CSPRNG.
pub fn erlang_cookie() -> Result<String> {
    Ok(crate::model::secrets::random_bytes::<20>()?.iter().map(|b| char::from(b'A' + b % 26)).collect())
}

/// /etc/memcached.conf in Debian's format, sized by the plan.
pub fn memcached_conf(m: &Memcached) -> String {
    let (host, port) = MEMCACHED.split_once(':').expect("host:port");
    format!(
        "# Written by ciab-firstboot from the sizing plan.\n-d\nlogfile /var/log/memcached.log\n-m {}\n-p {port}\n-u memcache\n-l {host}\n-P /var/run/memcached/memcached.pid\n",
        m.memory_mib
    )
}

pub struct MessagingStep;

impl Step<Ctx> for MessagingStep {
    fn about(&self) -> About {
        About { name: "messaging", title: "start RabbitMQ and memcached", after: &["secrets", "network"] }
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        Ok(ctx.stamp("messaging").exists() && service::is_up_or_starting("rabbitmq-server") && service::is_active("memcached"))
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let root = ctx.root.clone();
        let cp = ctx.control_plane()?;
        ciab_core::atomic::write_atomic(&root.join(MEMCACHED_CONF), memcached_conf(&cp.memcached).as_bytes())?;
        let rabbit = keys::system_user(&root, "rabbitmq")?;
        ciab_core::atomic::write_atomic(&root.join(RABBITMQ_CONF), rabbitmq_conf(&cp.rabbitmq).as_bytes())?;
        ciab_core::atomic::write_atomic(&root.join(RABBITMQ_ENV), rabbitmq_env().as_bytes())?;
        let definitions = definitions(&ctx.secret(RABBIT_SECRET)?, random_salt()?);
        write_private_conf(&root, DEFINITIONS, &definitions, "rabbitmq")?;
        let cookie = root.join(ERLANG_COOKIE);
        if !cookie.exists() {
            ciab_core::atomic::write_atomic_mode(&cookie, erlang_cookie()?.as_bytes(), 0o400)?;
            keys::chown(&cookie, rabbit)?;
        }
        write_dropin(&root, "epmd.socket", &epmd_socket_dropin())?;
        // All four enabled with one systemd reload, not one each (15–45 s
        // apiece under TCG). epmd.service is masked in the image like every
        // service; its socket starts it on RabbitMQ's first lookup.
        service::enable(&["memcached", "epmd.socket", "epmd.service", "rabbitmq-server"])?;
        service::start(&["memcached"], true)?;
        service::start(&["epmd.socket", "epmd.service"], false)?;
        service::start_in_background(&["rabbitmq-server"])?;
        tracing::info!("messaging: memcached up on {}; RabbitMQ starting on {} (user {})", MEMCACHED, AMQP, RABBIT_USER);
        ctx.set_stamp("messaging")
    }
}

/// Logs in to RabbitMQ as the services do, and makes sure `guest` cannot.
pub fn check_broker(password: &str) -> Result<()> {
    let t = Duration::from_secs(10);
    match amqp::try_login(AMQP, RABBIT_USER, password, "/", t)? {
        Login::Accepted => {}
        Login::Refused(why) => bail!("RabbitMQ refuses user {}: {why}", RABBIT_USER),
    }
    if amqp::try_login(AMQP, "guest", "guest", "/", t)? == Login::Accepted {
        bail!("RabbitMQ accepts guest/guest: the default user must not exist");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of RabbitMQ's "Credentials and Passwords" guide.
    #[test]
    fn hash_matches_rabbitmqs_worked_example() {
        assert_eq!(password_hash([0x90, 0x8D, 0xC6, 0x0A], "test12"), "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR");
    }

    #[test]
    fn definitions_hold_one_user_and_no_plain_password() {
        let text = definitions("s3cret", [1, 2, 3, 4]);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["users"].as_array().unwrap().len(), 1);
        assert_eq!(v["users"][0]["name"], "openstack");
        assert_eq!(v["users"][0]["password_hash"], password_hash([1, 2, 3, 4], "s3cret"));
        assert_eq!(v["permissions"][0]["vhost"], "/");
        assert!(!text.contains("s3cret"));
        assert!(!text.contains("guest"));
    }

    #[test]
    fn configs_listen_on_loopback_with_the_plans_memory() {
        let plan = super::super::test_plan();
        let cp = plan.control_plane.unwrap();
        let conf = rabbitmq_conf(&cp.rabbitmq);
        assert!(conf.contains("\nlisteners.tcp.1 = 127.0.0.1:5672\n"), "{conf}");
        assert!(conf.contains(&format!("\nvm_memory_high_watermark.absolute = {}\n", cp.rabbitmq.memory_high_watermark_mib * 1024 * 1024)));
        assert!(conf.contains("\ndefinitions.local.path = /etc/rabbitmq/definitions.json\n"));
        let mc = memcached_conf(&cp.memcached);
        assert!(mc.contains(&format!("\n-m {}\n", cp.memcached.memory_mib)), "{mc}");
        assert!(mc.contains("\n-l 127.0.0.1\n") && !mc.contains("::"), "{mc}");
        assert!(rabbitmq_env().contains("\nNODENAME=rabbit@localhost\n"));
        assert_eq!(transport_url("pw"), "rabbit://openstack:pw@127.0.0.1:5672/");
    }

    #[test]
    fn cookies_are_random_capitals() {
        let (a, b) = (erlang_cookie().unwrap(), erlang_cookie().unwrap());
        assert_eq!(a.len(), 20);
        assert!(a.chars().all(|c| c.is_ascii_uppercase()));
        assert_ne!(a, b);
    }
}
