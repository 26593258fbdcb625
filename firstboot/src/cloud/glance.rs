//! Glance, the image service: images in a file store on the box's `glance`
//! volume, the API under uwsgi with the plan's process count.

use super::catalog::{Endpoints, GLANCE, endpoints};
use super::database::{db_url, pool};
use super::ini::Ini;
use super::uwsgi::{Uwsgi, api_started, start_api};
use super::{keys, keystone};
use crate::ctx::Ctx;
use crate::engine::{About, Step};
use anyhow::Result;

pub const CONF: &str = "etc/glance/glance-api.conf";

/// The `glance` volume's mount point (`host::storage::volumes`).
pub const STORE: &str = "/var/lib/glance/images";

/// glance-api.conf. Import staging and task scratch space sit on the image
/// volume too: an import holds a whole image there.
pub fn conf(db_url: &str, endpoints: &Endpoints, service_password: &str, pool: (u32, u32)) -> Ini {
    let mut ini = Ini::new("Written by ciab-firstboot; rewritten on every run of the glance step.");
    ini.set("DEFAULT", "public_endpoint", GLANCE.public_url(endpoints))
        .set("DEFAULT", "enabled_backends", "file:file")
        .set("DEFAULT", "show_image_direct_url", false);
    super::oslo::db(&mut ini, "database", db_url, pool);
    ini.set("glance_store", "default_backend", "file")
        .set("file", "filesystem_store_datadir", format!("{STORE}/"))
        .set("os_glance_staging_store", "filesystem_store_datadir", format!("{STORE}/os_glance_staging_store/"))
        .set("os_glance_tasks_store", "filesystem_store_datadir", format!("{STORE}/os_glance_tasks_store/"));
    keystone::authtoken(&mut ini, endpoints, GLANCE.name, service_password);
    ini.set("paste_deploy", "flavor", "keystone");
    super::oslo::lock_path(&mut ini, "/var/lock/glance");
    super::oslo::proxy_headers(&mut ini);
    ini
}

pub struct GlanceStep;

impl Step<Ctx> for GlanceStep {
    fn about(&self) -> About {
        About { name: "glance", title: "configure Glance, the image service", after: &["identity", "storage"] }
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        api_started(ctx, &GLANCE)
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let cp = ctx.control_plane()?;
        let store = ctx.root.join(STORE.trim_start_matches('/'));
        std::fs::create_dir_all(&store)?;
        keys::chown(&store, keys::system_user(&ctx.root, "glance")?)?;
        let conf = conf(&db_url(ctx, "glance", "glance")?, &endpoints(ctx)?, &ctx.secret("glance-service")?, pool(ctx)?);
        let ini = Uwsgi { streams_uploads: true, ..Uwsgi::api("glance-api", GLANCE.bind, "/usr/bin/glance-wsgi-api", "glance", cp.workers.glance) };
        start_api(ctx, &GLANCE, &ini, (CONF, conf.render()), &[STORE])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_stores_images_on_the_volume_and_validates_tokens() {
        let e = Endpoints { host: "cloud.example.org".into(), port: 8443 };
        let ini = conf("mysql+pymysql://glance:pw@localhost/glance", &e, "svc-pw", (5, 10));
        assert_eq!(ini.get("DEFAULT", "public_endpoint"), Some("https://cloud.example.org:8443/image"));
        assert_eq!(ini.get("DEFAULT", "enabled_backends"), Some("file:file"));
        assert_eq!(ini.get("glance_store", "default_backend"), Some("file"));
        assert_eq!(ini.get("file", "filesystem_store_datadir"), Some("/var/lib/glance/images/"));
        assert_eq!(ini.get("os_glance_staging_store", "filesystem_store_datadir"), Some("/var/lib/glance/images/os_glance_staging_store/"));
        assert_eq!(ini.get("database", "max_overflow"), Some("10"));
        assert_eq!(ini.get("keystone_authtoken", "username"), Some("glance"));
        assert_eq!(ini.get("keystone_authtoken", "password"), Some("svc-pw"));
        assert_eq!(ini.get("keystone_authtoken", "auth_url"), Some("http://127.0.0.1:5000"));
        assert_eq!(ini.get("keystone_authtoken", "www_authenticate_uri"), Some("https://cloud.example.org:8443/identity"));
        assert_eq!(ini.get("keystone_authtoken", "memcached_servers"), Some("127.0.0.1:11211"));
        assert_eq!(ini.get("paste_deploy", "flavor"), Some("keystone"));
    }
}
