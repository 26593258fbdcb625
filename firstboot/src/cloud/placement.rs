//! Placement, the inventory of what Nova can schedule onto.

use super::catalog::{Endpoints, PLACEMENT, endpoints};
use super::database::{db_url, pool};
use super::ini::Ini;
use super::keystone;
use super::uwsgi::{Uwsgi, api_started, start_api};
use crate::ctx::Ctx;
use crate::engine::{About, Step};
use anyhow::Result;

pub const CONF: &str = "etc/placement/placement.conf";

pub fn conf(db_url: &str, endpoints: &Endpoints, service_password: &str, pool: (u32, u32)) -> Ini {
    let mut ini = Ini::new("Written by ciab-firstboot; rewritten on every run of the placement step.");
    ini.set("api", "auth_strategy", "keystone");
    super::oslo::db(&mut ini, "placement_database", db_url, pool);
    keystone::authtoken(&mut ini, endpoints, PLACEMENT.name, service_password);
    super::oslo::proxy_headers(&mut ini);
    ini
}

pub struct PlacementStep;

impl Step<Ctx> for PlacementStep {
    fn about(&self) -> About {
        About { name: "placement", title: "configure Placement, the resource inventory", after: &["identity"] }
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        api_started(ctx, &PLACEMENT)
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let cp = ctx.control_plane()?;
        let conf = conf(&db_url(ctx, "placement", "placement")?, &endpoints(ctx)?, &ctx.secret("placement-service")?, pool(ctx)?);
        let ini = Uwsgi::api("placement-api", PLACEMENT.bind, "/usr/bin/placement-api", "placement", cp.workers.placement);
        start_api(ctx, &PLACEMENT, &ini, (CONF, conf.render()), &[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_uses_its_database_and_service_user() {
        let e = Endpoints { host: "10.0.0.5".into(), port: 443 };
        let ini = conf("mysql+pymysql://placement:pw@localhost/placement", &e, "svc-pw", (5, 10));
        assert_eq!(ini.get("placement_database", "connection"), Some("mysql+pymysql://placement:pw@localhost/placement"));
        assert_eq!(ini.get("api", "auth_strategy"), Some("keystone"));
        assert_eq!(ini.get("keystone_authtoken", "username"), Some("placement"));
        assert_eq!(ini.get("keystone_authtoken", "www_authenticate_uri"), Some("https://10.0.0.5/identity"));
        assert!(ini.render().starts_with("# Written by ciab-firstboot"));
    }
}
