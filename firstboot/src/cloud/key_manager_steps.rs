//! The `barbican` step: the key manager's API with the box's master key,
//! started without waiting (the `apis` step waits).

use super::catalog::KEY_MANAGER;
use super::service_steps::{api_started, start_api, pool};
use super::steps::{db_url, endpoints, secret};
use super::uwsgi::Uwsgi;
use super::barbican;
use crate::engine::Step;
use crate::steps::Ctx;
use anyhow::{Context, Result};

pub struct BarbicanStep;

impl Step<Ctx> for BarbicanStep {
    fn name(&self) -> &'static str {
        "barbican"
    }
    fn title(&self) -> &'static str {
        "configure Barbican, the key manager"
    }
    fn depends_on(&self) -> &'static [&'static str] {
        &["identity"]
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        api_started(ctx, &KEY_MANAGER)
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let cp = ctx.plan()?.control_plane.context("a cloud profile's plan has a control plane")?;
        let paste = ctx.root.join(barbican::PASTE);
        if !paste.exists() {
            // barbican-common's postinst makes it from the template; an
            // image without it would serve nothing.
            std::fs::copy(ctx.root.join(barbican::PASTE_TEMPLATE), &paste).with_context(|| format!("copying /{} to /{}", barbican::PASTE_TEMPLATE, barbican::PASTE))?;
        }
        let kek = barbican::kek(&secret(ctx, "barbican-kek")?);
        let conf = barbican::conf(&db_url(ctx, "barbican", "barbican")?, &endpoints(ctx)?, &secret(ctx, "barbican-service")?, &kek, pool(ctx)?);
        let ini = Uwsgi::api("barbican-api", KEY_MANAGER.bind, "/usr/bin/barbican-wsgi-api", "barbican", cp.workers.barbican_api);
        start_api(ctx, &KEY_MANAGER, &ini, (barbican::CONF, conf.render()), &[])
    }
}
