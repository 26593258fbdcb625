//! Cinder, the block storage service: volumes are thin LVs in a thin pool
//! that takes the VG's free space (the plan leaves `cinder_gib` of it),
//! exported over iSCSI by tgt on the box and attached by nova-compute's
//! initiator on the same box. The API runs under uwsgi; the scheduler, the
//! volume service and the backup service are Debian's units. Backups go to
//! object storage (Swift on the box's `swift` volume, a store apart from the
//! thin pool, as scs-0117 recommends), into the user's own account with the
//! user's own token: a project's backups are its `volumebackups` container.

use super::catalog::{BLOCK_STORAGE, GLANCE, OBJECT_STORE};
use super::ini::Ini;
use super::{keystone, messaging, Endpoints};

pub const CONF: &str = "etc/cinder/cinder.conf";
/// The one backend's name, also its volume type's `volume_backend_name`.
pub const BACKEND: &str = "lvm";
/// The thin pool in the box's VG; the LVM driver looks for `<vg>-pool`.
pub fn thin_pool(vg: &str) -> String {
    format!("{vg}-pool")
}
/// Where the LVM driver writes tgt's target files (tgt includes them).
pub const VOLUMES_DIR: &str = "/var/lib/cinder/volumes";

/// How often the volume and backup services ask their backends for free
/// space (Cinder's default: 60 s).
pub const STATS_POLLING_SECS: u32 = 300;

/// What cinder.conf is rendered from.
#[derive(Debug, Clone)]
pub struct CinderConf<'a> {
    pub db_url: String,
    pub rabbit_password: &'a str,
    pub endpoints: &'a Endpoints,
    pub my_ip: &'a str,
    pub host: &'a str,
    pub service_password: &'a str,
    pub volume_group: &'a str,
    pub pool: (u32, u32),
}

/// cinder-backup's drop-in: its Swift driver checks the proxy once at
/// start-up and, finding nothing, stays "down" for good (seen under TCG,
/// where Cinder starts minutes before Swift answers; after a power cut
/// systemd starts both at once). So it starts only once the proxy answers.
pub fn backup_dropin() -> String {
    format!(
        "[Unit]\nWants=swift-proxy.service\nAfter=swift-proxy.service\n\n[Service]\nExecStartPre=/bin/sh -c 'until curl -sf -o /dev/null {}/healthcheck; do sleep 2; done'\nTimeoutStartSec=30min\n",
        OBJECT_STORE.internal_url()
    )
}

pub fn conf(c: &CinderConf) -> Ini {
    let mut ini = Ini::new("Written by ciab-firstboot; rewritten on every run of the cinder step.");
    ini.set("DEFAULT", "host", c.host)
        .set("DEFAULT", "my_ip", c.my_ip)
        .set("DEFAULT", "transport_url", messaging::transport_url(c.rabbit_password))
        .set("DEFAULT", "auth_strategy", "keystone")
        .set("DEFAULT", "state_path", "/var/lib/cinder")
        .set("DEFAULT", "enabled_backends", BACKEND)
        // Created by the volume-types step, described per scs-0114.
        .set("DEFAULT", "default_volume_type", super::scs::DEFAULT_VOLUME_TYPE)
        .set("DEFAULT", "glance_api_servers", GLANCE.internal_url())
        .set("DEFAULT", "public_endpoint", BLOCK_STORAGE.public_url(c.endpoints))
        .set("DEFAULT", "storage_availability_zone", "nova")
        .set("DEFAULT", "default_availability_zone", "nova")
        .set("DEFAULT", "backup_driver", "cinder.backup.drivers.swift.SwiftBackupDriver")
        .set("DEFAULT", "backup_swift_auth", "per_user")
        // The project id is appended: Swift's proxy on loopback.
        .set("DEFAULT", "backup_swift_url", format!("{}/v1/AUTH_", OBJECT_STORE.internal_url()))
        // Each poll runs LVM through `sudo cinder-rootwrap`, a Python process
        // per command, and cinder-volume was the box's busiest service at
        // ready under TCG (263 s of CPU, polling each minute, the default).
        // Between polls the scheduler counts what it places itself.
        .set("DEFAULT", "backend_stats_polling_interval", STATS_POLLING_SECS)
        .set("DEFAULT", "backup_driver_stats_polling_interval", STATS_POLLING_SECS);
    super::database::oslo_db(&mut ini, "database", &c.db_url, c.pool);
    keystone::authtoken(&mut ini, c.endpoints, BLOCK_STORAGE.name, c.service_password);
    keystone::service_auth(&mut ini, "nova", BLOCK_STORAGE.name, c.service_password);
    ini.set("nova", "interface", "internal")
        .set(BACKEND, "volume_driver", "cinder.volume.drivers.lvm.LVMVolumeDriver")
        .set(BACKEND, "volume_backend_name", BACKEND)
        .set(BACKEND, "volume_group", c.volume_group)
        .set(BACKEND, "lvm_type", "thin")
        // Thin LVs read back zeros: nothing to wipe on delete.
        .set(BACKEND, "volume_clear", "none")
        .set(BACKEND, "target_protocol", "iscsi")
        .set(BACKEND, "target_helper", "tgtadm")
        .set(BACKEND, "target_ip_address", c.my_ip)
        .set(BACKEND, "volumes_dir", VOLUMES_DIR)
        .set("oslo_concurrency", "lock_path", "/var/lib/cinder/tmp")
        .set("oslo_middleware", "enable_proxy_headers_parsing", true)
        .set("oslo_messaging_notifications", "driver", "noop");
    ini
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_are_thin_lvs_exported_by_tgt() {
        let e = Endpoints { host: "cloud.example.org".into(), port: 443 };
        let ini = conf(&CinderConf {
            db_url: "mysql+pymysql://cinder:pw@localhost/cinder".into(),
            rabbit_password: "rpw",
            endpoints: &e,
            my_ip: "10.0.2.15",
            host: "box",
            service_password: "svc",
            volume_group: "ciab",
            pool: (5, 10),
        });
        assert_eq!(ini.get("DEFAULT", "enabled_backends"), Some("lvm"));
        assert_eq!(ini.get("DEFAULT", "default_volume_type"), Some("lvm-thin"));
        assert_eq!(ini.get("DEFAULT", "public_endpoint"), Some("https://cloud.example.org/volume"));
        assert_eq!(ini.get("DEFAULT", "glance_api_servers"), Some("http://127.0.0.1:9292"));
        assert_eq!(ini.get("lvm", "volume_group"), Some("ciab"));
        assert_eq!(ini.get("lvm", "lvm_type"), Some("thin"));
        assert_eq!(ini.get("lvm", "target_helper"), Some("tgtadm"));
        assert_eq!(ini.get("lvm", "target_ip_address"), Some("10.0.2.15"));
        assert_eq!(ini.get("keystone_authtoken", "username"), Some("cinder"));
        assert_eq!(ini.get("nova", "interface"), Some("internal"));
        assert_eq!(ini.get("DEFAULT", "backup_swift_url"), Some("http://127.0.0.1:8888/v1/AUTH_"));
        assert_eq!(ini.get("DEFAULT", "backup_swift_auth"), Some("per_user"));
        assert_eq!(ini.get("DEFAULT", "backend_stats_polling_interval"), Some("300"));
        assert_eq!(ini.get("DEFAULT", "backup_driver_stats_polling_interval"), Some("300"));
        assert_eq!(thin_pool("ciab"), "ciab-pool");
        let dropin = backup_dropin();
        assert!(dropin.contains("After=swift-proxy.service\n") && dropin.contains("curl -sf -o /dev/null http://127.0.0.1:8888/healthcheck"), "{dropin}");
    }
}
