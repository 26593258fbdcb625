//! The settings the oslo libraries read the same way in every OpenStack
//! service's file: oslo.db's database, oslo.messaging's queue and
//! notifications, oslo.concurrency's lock directory, oslo.middleware's proxy
//! headers. A service's renderer calls each one with its own values at the
//! place the keys stand in its file ([`Ini`] keeps the order it is given).
//!
//! keystonemiddleware's `[keystone_authtoken]` and keystoneauth's service
//! user sections are not oslo's: they are `keystone::authtoken` and
//! `keystone::service_auth`, beside the Keystone they point at.

use super::ini::Ini;
use super::messaging;

/// oslo.db's settings in `section` (`database` for most services): the
/// account's URL and the plan's pool sizes.
pub fn db(ini: &mut Ini, section: &str, url: &str, (max_pool_size, max_overflow): (u32, u32)) {
    ini.set(section, "connection", url).set(section, "max_pool_size", max_pool_size).set(section, "max_overflow", max_overflow);
}

/// oslo.messaging's queue, `[DEFAULT] transport_url`: the box's RabbitMQ
/// as its one user.
pub fn transport(ini: &mut Ini, rabbit_password: &str) {
    ini.set("DEFAULT", "transport_url", messaging::transport_url(rabbit_password));
}

/// oslo.messaging's notifications, off and said so: nothing on the box (no
/// telemetry service) reads them.
pub fn notifications_off(ini: &mut Ini) {
    ini.set("oslo_messaging_notifications", "driver", "noop");
}

/// oslo.concurrency's directory for locks between a service's processes,
/// one the service's user can write.
pub fn lock_path(ini: &mut Ini, dir: &str) {
    ini.set("oslo_concurrency", "lock_path", dir);
}

/// oslo.middleware for an API behind the front end, which terminates TLS
/// and says so in X-Forwarded-Proto: the links the API returns are then
/// https ones.
pub fn proxy_headers(ini: &mut Ini) {
    ini.set("oslo_middleware", "enable_proxy_headers_parsing", true);
}

#[cfg(test)]
mod tests {
    use crate::cloud::catalog::Endpoints;
    use crate::cloud::{cinder, nova};

    /// The lines of `section` in `ini`'s text, from its header to the next.
    fn section(text: &str, name: &str) -> String {
        let start = text.find(&format!("[{name}]\n")).unwrap_or_else(|| panic!("no [{name}] in\n{text}"));
        let rest = &text[start..];
        rest[..rest.find("\n\n").map_or(rest.len(), |i| i + 1)].to_owned()
    }

    #[test]
    fn services_render_the_shared_sections_alike() {
        let e = Endpoints { host: "cloud.example.org".into(), port: 443 };
        let plan = crate::cloud::test_plan().nova.unwrap();
        let nova = nova::conf(&nova::NovaConf {
            api_db_url: "mysql+pymysql://nova:pw@localhost/nova_api".into(),
            cell_db_url: "mysql+pymysql://nova:pw@localhost/nova".into(),
            rabbit_password: "rpw",
            endpoints: &e,
            my_ip: "10.0.2.15".into(),
            host: "box",
            service_password: "spw",
            metadata_secret: "msec",
            virt_type: "qemu",
            plan: &plan,
            workers: (1, 1),
            pool: (5, 10),
        })
        .render();
        let cinder = cinder::conf(&cinder::CinderConf {
            db_url: "mysql+pymysql://cinder:pw@localhost/cinder".into(),
            rabbit_password: "rpw",
            endpoints: &e,
            my_ip: "10.0.2.15",
            host: "box",
            service_password: "svc",
            volume_group: "ciab",
            pool: (5, 10),
        })
        .render();
        for (text, db_name, locks) in [(&nova, "nova", "/var/lib/nova/tmp"), (&cinder, "cinder", "/var/lib/cinder/tmp")] {
            assert!(text.contains("\ntransport_url = rabbit://openstack:rpw@127.0.0.1:5672/\n"), "{text}");
            assert_eq!(
                section(text, "database"),
                format!("[database]\nconnection = mysql+pymysql://{db_name}:pw@localhost/{db_name}\nmax_pool_size = 5\nmax_overflow = 10\n")
            );
            assert_eq!(section(text, "oslo_concurrency"), format!("[oslo_concurrency]\nlock_path = {locks}\n"));
            assert_eq!(section(text, "oslo_middleware"), "[oslo_middleware]\nenable_proxy_headers_parsing = true\n");
            assert_eq!(section(text, "oslo_messaging_notifications"), "[oslo_messaging_notifications]\ndriver = noop\n");
        }
        assert_eq!(section(&nova, "api_database"), "[api_database]\nconnection = mysql+pymysql://nova:pw@localhost/nova_api\nmax_pool_size = 5\nmax_overflow = 10\n");
    }
}
