//! The `plan` step: the cloud sized to the box, for the image's profile
//! (or the one the site asks for) and the disk the image is on.

use crate::ctx::Ctx;
use crate::engine::{About, Step};
use crate::model::plan::{plan, Profile};
use anyhow::{Context, Result};
use std::path::Path;

/// The profile the image was built for, from `IMAGE_ID=ciab-<name>` in os-release.
pub fn image_profile(root: &Path) -> Profile {
    let text = std::fs::read_to_string(root.join("usr/lib/os-release")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("IMAGE_ID="))
        .and_then(|id| id.trim_matches('"').strip_prefix("ciab-").and_then(|n| n.parse().ok()))
        .unwrap_or(Profile::Eval)
}

/// Bytes the image occupies at the start of `disk`: up to the end of its last
/// partition (anything but `data`).
pub fn image_bytes(disk: &str) -> Result<u64> {
    let dev = format!("/dev/{disk}");
    let mut f = std::fs::File::open(&dev).with_context(|| format!("opening {dev}"))?;
    let gpt = gptman::GPT::find_from(&mut f).with_context(|| format!("reading the GPT of {dev}"))?;
    let last = gpt
        .iter()
        .filter(|(_, p)| p.is_used() && p.partition_name.as_str() != crate::host::storage::DATA_LABEL)
        .map(|(_, p)| p.ending_lba + 1)
        .max()
        .context("no partitions")?;
    Ok(last * gpt.sector_size)
}

/// The `plan` step: the cloud sized to the box.
pub struct PlanStep;

impl Step<Ctx> for PlanStep {
    fn about(&self) -> About {
        About { name: "plan", title: "size the cloud to the box", after: &["discover", "site-config"] }
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        ctx.plan = ctx.load("plan.json");
        Ok(ctx.plan.is_some())
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let hw = ctx.hw()?;
        let profile = ctx.site()?.profile.unwrap_or_else(|| image_profile(&ctx.root));
        let disk = hw.disks.iter().find(|d| d.holds_root).map(|d| d.name.clone()).unwrap_or(crate::host::storage::root_disk()?);
        let plan = plan(hw, profile, image_bytes(&disk)?)?;
        tracing::info!("plan: {}", serde_json::to_string(&plan)?);
        ctx.save("plan.json", &plan)?;
        ctx.plan = Some(plan);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;


    #[test]
    fn profile_comes_from_the_image_id() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("usr/lib")).unwrap();
        std::fs::write(dir.path().join("usr/lib/os-release"), "NAME=\"Debian\"\nIMAGE_ID=ciab-tiny\n").unwrap();
        assert_eq!(image_profile(dir.path()), Profile::Tiny);
        std::fs::write(dir.path().join("usr/lib/os-release"), "IMAGE_ID=\"ciab-box\"\n").unwrap();
        assert_eq!(image_profile(dir.path()), Profile::Box);
        std::fs::write(dir.path().join("usr/lib/os-release"), "IMAGE_ID=other\n").unwrap();
        assert_eq!(image_profile(dir.path()), Profile::Eval);
    }
}
