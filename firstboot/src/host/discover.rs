//! The `discover` step: what the box is made of (CPUs, memory, firmware,
//! disks, network interfaces), kept for the later steps.

use crate::ctx::Ctx;
use crate::engine::{About, Step};
use crate::model::hardware::discover;
use anyhow::Result;

/// The `discover` step: what the box is made of, kept for the later steps.
pub struct DiscoverStep;

impl Step<Ctx> for DiscoverStep {
    fn about(&self) -> About {
        About { name: "discover", title: "discover the hardware", after: &[] }
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        ctx.hw = ctx.load("hardware.json");
        Ok(ctx.hw.is_some())
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let hw = discover(&ctx.root)?;
        tracing::info!(
            "discover: {} cpus, {} MiB RAM, firmware {:?}, kvm device {}",
            hw.cpus,
            hw.memory_bytes >> 20,
            hw.firmware,
            if hw.kvm_device { "present" } else { "absent" }
        );
        for d in &hw.disks {
            tracing::info!("discover: disk {} {} MiB{}{}", d.name, d.size_bytes >> 20, if d.removable { " removable" } else { "" }, if d.holds_root { " (root)" } else { "" });
        }
        for n in &hw.nics {
            tracing::info!("discover: nic {} {} carrier={}", n.name, n.mac, n.carrier);
        }
        ctx.save("hardware.json", &hw)
    }
}
