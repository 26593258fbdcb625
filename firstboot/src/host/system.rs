//! The `system` step: what the site configuration says about access and
//! locale, written into the box (root's `authorized_keys`, the time zone).

use crate::ctx::Ctx;
use crate::engine::{About, Step};
use crate::model::site::SiteConfig;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The files the site's access and locale settings produce: (path under
/// root, content, mode). Root logs in with keys only: the image has no
/// password for any account, and this is the only way in.
pub fn system_files(site: &SiteConfig) -> Vec<(String, String, u32)> {
    let mut files = Vec::new();
    if !site.ssh_authorized_keys.is_empty() {
        let mut keys = site.ssh_authorized_keys.join("\n");
        keys.push('\n');
        files.push(("root/.ssh/authorized_keys".to_owned(), keys, 0o600));
    }
    let tz = site.time_zone.clone().unwrap_or_else(|| "Etc/UTC".to_owned());
    files.push(("etc/timezone".to_owned(), format!("{tz}\n"), 0o644));
    files
}

/// The `system` step: root's SSH keys and the time zone.
pub struct SystemStep;

impl SystemStep {
    fn localtime_target(site: &SiteConfig) -> PathBuf {
        Path::new("/usr/share/zoneinfo").join(site.time_zone.as_deref().unwrap_or("Etc/UTC"))
    }
}

impl Step<Ctx> for SystemStep {
    fn about(&self) -> About {
        About { name: "system", title: "apply SSH keys and time zone", after: &["site-config"] }
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        let site = ctx.site()?;
        let files_ok = system_files(site).iter().all(|(rel, content, _)| std::fs::read_to_string(ctx.root.join(rel)).ok().as_deref() == Some(content.as_str()));
        let link_ok = std::fs::read_link(ctx.root.join("etc/localtime")).ok() == Some(Self::localtime_target(site));
        Ok(files_ok && link_ok)
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let site = ctx.site()?;
        let zone = Self::localtime_target(site);
        if !ctx.root.join(zone.strip_prefix("/").unwrap_or(&zone)).exists() {
            bail!("time zone {} is not installed on this image (no {})", site.time_zone.as_deref().unwrap_or("Etc/UTC"), zone.display());
        }
        for (rel, content, mode) in system_files(site) {
            let path = ctx.root.join(&rel);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
                if rel.starts_with("root/.ssh") {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
                }
            }
            ciab_core::atomic::write_atomic_mode(&path, content.as_bytes(), mode)?;
        }
        let link = ctx.root.join("etc/localtime");
        let tmp = ctx.root.join("etc/.localtime.ciab");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&zone, &tmp).with_context(|| format!("linking {}", tmp.display()))?;
        std::fs::rename(&tmp, &link).with_context(|| format!("replacing {}", link.display()))?;
        tracing::info!(
            "system: {} SSH key(s) for root, time zone {}",
            site.ssh_authorized_keys.len(),
            site.time_zone.as_deref().unwrap_or("Etc/UTC")
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;


    #[test]
    fn system_step_writes_keys_and_time_zone_idempotently() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("usr/share/zoneinfo/Europe")).unwrap();
        std::fs::write(root.join("usr/share/zoneinfo/Europe/Berlin"), "TZif").unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHd2ZmhQqmtZJRTmT1ZbnNa2C8dO3Bk1vDq2gbpWxI3g ops@example.org";
        let site = SiteConfig::parse("site.toml", &format!("time_zone = \"Europe/Berlin\"\nssh_authorized_keys = [\"{key}\"]\n")).unwrap();
        let mut ctx = Ctx::new(root, &root.join("var/lib/ciab"));
        ctx.site = Some(site);
        let step = SystemStep;
        assert!(!step.check(&mut ctx).unwrap());
        // The zone is looked up under the real /usr/share/zoneinfo path in the link,
        // but its existence under root.
        step.apply(&mut ctx).unwrap();
        assert!(step.check(&mut ctx).unwrap());
        use std::os::unix::fs::PermissionsExt;
        let keys = root.join("root/.ssh/authorized_keys");
        assert_eq!(std::fs::read_to_string(&keys).unwrap(), format!("{key}\n"));
        assert_eq!(std::fs::metadata(&keys).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(root.join("root/.ssh")).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(std::fs::read_link(root.join("etc/localtime")).unwrap(), Path::new("/usr/share/zoneinfo/Europe/Berlin"));
        step.apply(&mut ctx).unwrap();
        // A zone the image does not carry is refused.
        ctx.site = Some(SiteConfig::parse("site.toml", "time_zone = \"Mars/Olympus\"\n").unwrap());
        let err = format!("{:#}", step.apply(&mut ctx).unwrap_err());
        assert!(err.contains("time zone Mars/Olympus is not installed"), "{err}");
    }
}
