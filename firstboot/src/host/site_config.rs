//! The `site-config` step: the site configuration found (a CIAB-CONFIG
//! partition, the ESP or the kernel command line), read and checked
//! against the hardware.

use crate::ctx::Ctx;
use crate::engine::{About, Step};
use crate::model::site_source::{find, Found};
use anyhow::Result;

/// The `site-config` step: the site configuration found, read and checked against the hardware.
pub struct SiteConfigStep;

impl Step<Ctx> for SiteConfigStep {
    fn about(&self) -> About {
        About { name: "site-config", title: "read the site configuration", after: &["discover"] }
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        let Some(found) = ctx.load::<Found>("site-source.json") else { return Ok(false) };
        ctx.site = Some(found.parse()?);
        Ok(true)
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let found = find(&ctx.state_dir.join("run"))?;
        let site = found.parse()?;
        site.validate_against(ctx.hw()?)?;
        tracing::info!("site-config: from {}: hostname {}", found.source, site.hostname);
        ctx.save("site-source.json", &found)?;
        ctx.site = Some(site);
        Ok(())
    }
}
