//! Where the site configuration comes from, in order: a partition labelled
//! `CIAB-CONFIG` (a USB stick or a second virtual disk), `ciab/site.toml` on
//! the ESP, `ciab.*` arguments on the kernel command line, else defaults.

use ciab_core::exec::Cmd;
use crate::model::site::SiteConfig;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The label of a partition carrying `site.toml`.
pub const CONFIG_LABEL: &str = "CIAB-CONFIG";
/// Where the ESP is mounted (see the image's fstab).
pub const ESP_MOUNT: &str = "/boot/efi";

/// A site configuration as found: where from and its text.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Found {
    /// Human name of the source, used in errors: `CIAB-CONFIG:/site.toml`.
    pub source: String,
    /// TOML text, or the kernel command line, or empty for defaults.
    pub text: String,
    pub kind: SourceKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    File,
    KernelCmdline,
    Defaults,
}

impl Found {
    /// Parses the text found.
    pub fn parse(&self) -> Result<SiteConfig> {
        Ok(match self.kind {
            SourceKind::File => SiteConfig::parse(&self.source, &self.text)?,
            SourceKind::KernelCmdline => SiteConfig::from_kernel_cmdline(&self.text)?.unwrap_or_default(),
            SourceKind::Defaults => SiteConfig::default(),
        })
    }
}

/// Reads `site.toml` from the CIAB-CONFIG partition, mounted read-only for
/// the moment of reading.
fn from_config_partition(dev: &Path, run_dir: &Path) -> Result<Found> {
    let mnt = run_dir.join("config-partition");
    std::fs::create_dir_all(&mnt).with_context(|| format!("creating {}", mnt.display()))?;
    Cmd::new("mount").package("mount").args(["-o", "ro"]).arg(dev).arg(&mnt).run().with_context(|| format!("mounting the {CONFIG_LABEL} partition"))?;
    let text = std::fs::read_to_string(mnt.join("site.toml"));
    let _ = Cmd::new("umount").package("mount").arg(&mnt).run();
    match text {
        Ok(text) => Ok(Found { source: format!("{CONFIG_LABEL}:/site.toml"), text, kind: SourceKind::File }),
        Err(_) => bail!("the {CONFIG_LABEL} partition ({}) has no site.toml at its root", dev.display()),
    }
}

/// Finds the site configuration on this box.
pub fn find(run_dir: &Path) -> Result<Found> {
    let label = PathBuf::from("/dev/disk/by-label").join(CONFIG_LABEL);
    if label.exists() {
        return from_config_partition(&label, run_dir);
    }
    let esp = Path::new(ESP_MOUNT).join(ciab_core::contract::ESP_SITE_CONFIG);
    if let Ok(text) = std::fs::read_to_string(&esp) {
        return Ok(Found { source: format!("ESP:/{}", ciab_core::contract::ESP_SITE_CONFIG), text, kind: SourceKind::File });
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if SiteConfig::from_kernel_cmdline(&cmdline)?.is_some() {
        return Ok(Found { source: crate::model::site::KERNEL_CMDLINE.to_owned(), text: cmdline, kind: SourceKind::KernelCmdline });
    }
    Ok(Found { source: "defaults".into(), text: String::new(), kind: SourceKind::Defaults })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn found_sources_parse_by_kind() {
        let f = Found { source: "CIAB-CONFIG:/site.toml".into(), text: "hostname = \"edge7\"\n".into(), kind: SourceKind::File };
        assert_eq!(f.parse().unwrap().hostname, "edge7");
        let c = Found { source: "kernel command line".into(), text: "quiet ciab.hostname=box2".into(), kind: SourceKind::KernelCmdline };
        assert_eq!(c.parse().unwrap().hostname, "box2");
        let d = Found { source: "defaults".into(), text: String::new(), kind: SourceKind::Defaults };
        assert_eq!(d.parse().unwrap(), SiteConfig::default());
        let bad = Found { source: "CIAB-CONFIG:/site.toml".into(), text: "[network]\nmode = \"static\"\n".into(), kind: SourceKind::File };
        let err = format!("{:#}", bad.parse().unwrap_err());
        assert!(err.starts_with("CIAB-CONFIG:/site.toml"), "{err}");
    }
}
