//! The `ready` step: first boot's summary on the console (where the status
//! page and the cloud are, memory and CPU time by service) and the stamp
//! whose existence means first boot is over.

use crate::ctx::Ctx;
use crate::engine::{About, Step};
use anyhow::Result;

/// Completion stamp: its existence means first boot is over.
pub const DONE_STAMP: &str = "firstboot.done";

/// (MemTotal − MemAvailable, MemTotal) in MiB from /proc/meminfo: what the
/// system and the services hold, page cache they would give back excluded.
pub fn memory_in_use(meminfo: &str) -> Option<(u64, u64)> {
    let kib = |key: &str| -> Option<u64> { meminfo.lines().find_map(|l| l.strip_prefix(key))?.split_whitespace().next()?.parse().ok() };
    let (total, available) = (kib("MemTotal:")?, kib("MemAvailable:")?);
    Some((total.saturating_sub(available) / 1024, total / 1024))
}

/// The `ready` step: the summary on the console, and the stamp that ends first boot.
pub struct ReadyStep;

impl Step<Ctx> for ReadyStep {
    fn about(&self) -> About {
        About { name: "ready", title: "finish", after: &["secrets", "storage", "network", "system", "registry", "identity", "apis", "external-network", "flavors", "volume-types", "security-groups", "guest-images"] }
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        Ok(ctx.state_dir.join(DONE_STAMP).exists())
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let site = ctx.site()?;
        let nic = crate::host::network::nic(ctx)?;
        let addrs = nic.as_deref().map(crate::host::network::addresses).transpose()?.unwrap_or_default();
        tracing::info!("summary: host {} ({} profile)", site.hostname, ctx.plan()?.profile);
        for a in &addrs {
            let ip = a.split('/').next().unwrap_or(a);
            tracing::info!("summary: status page http://{ip}:8080/");
        }
        if ctx.has_cloud()? {
            let e = crate::cloud::catalog::endpoints(ctx)?;
            tracing::info!("summary: cloud {} (credentials in /root/.config/openstack/clouds.yaml)", e.public("identity"));
            for a in &addrs {
                let ip = a.split('/').next().unwrap_or(a);
                tracing::info!("summary: CA certificate http://{ip}:8080/ca.crt");
            }
        }
        if let Some((used, total)) = memory_in_use(&std::fs::read_to_string(ctx.root.join("proc/meminfo")).unwrap_or_default()) {
            tracing::info!("summary: memory in use {used} MiB of {total} MiB (MemTotal − MemAvailable)");
        }
        if ctx.plan()?.profile.has_cloud() {
            // Where the memory went, and where first boot's time went (under
            // TCG mostly Python starting up).
            let accounted = crate::cloud::service::accounting(&crate::cloud::cloud_units(), &[("MemoryCurrent", 1 << 20), ("CPUUsageNSec", 1_000_000_000)]);
            for (title, by_service) in ["memory by service (MiB", "CPU time by service (s since its start"].iter().zip(&accounted) {
                if !by_service.is_empty() {
                    let list: Vec<String> = by_service.iter().map(|(u, v)| format!("{u} {v}")).collect();
                    tracing::info!("summary: {title}, systemd's accounting): {}", list.join(", "));
                }
            }
        }
        tracing::info!("summary: per-box secrets in {} (root only)", ctx.state_dir.join("secrets").display());
        ciab_core::atomic::write_atomic(&ctx.state_dir.join(DONE_STAMP), b"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;


    #[test]
    fn memory_in_use_excludes_reclaimable_memory() {
        let m = "MemTotal:       12245676 kB\nMemFree:         8000000 kB\nMemAvailable:   10197676 kB\n";
        assert_eq!(memory_in_use(m), Some((2000, 11958)));
        assert_eq!(memory_in_use("MemTotal: 1 kB\n"), None);
    }
}
