//! The installer's own medium (the ISO, on a USB stick or virtual CD) and
//! the site configuration an operator may have put beside it.

use ciab_core::blockdev::BlockDevice;
use ciab_core::contract::{Manifest, INSTALLER_DATA_FILE, INSTALLER_EFI_LABEL, INSTALLER_PAYLOAD_DIR, MANIFEST_FILE, MANIFEST_SIG_FILE};
use ciab_firstboot::model::site::SiteConfig;
use ciab_firstboot::model::site_source::CONFIG_LABEL;
use anyhow::{bail, Context, Result};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The medium, mounted, with its payload verified.
pub struct Medium {
    /// Kernel name of the disk holding the ISO (`sr0`, `sdb`).
    pub disk: String,
    pub manifest: Manifest,
    /// The image's mapped ranges back to back.
    pub data: PathBuf,
}

/// The ISO 9660 volume id of `dev`, when it holds one.
pub fn iso_volume(dev: &Path) -> Option<String> {
    let f = std::fs::File::open(dev).ok()?;
    let mut pvd = [0u8; 2048];
    f.read_exact_at(&mut pvd, 16 * 2048).ok()?;
    (pvd[0] == 1 && &pvd[1..6] == b"CD001").then(|| String::from_utf8_lossy(&pvd[40..72]).trim().to_owned())
}

/// Checks the payload in `dir` against `trusted_key` (a minisign public
/// key file's text): the signature first, then the data's size. Returns the
/// manifest. The data's bytes are checked range by range as they are written.
pub fn verify_payload(dir: &Path, trusted_key: &str) -> Result<Manifest> {
    let manifest_path = dir.join(MANIFEST_FILE);
    let data = std::fs::read(&manifest_path).with_context(|| format!("reading {}", manifest_path.display()))?;
    let sig_path = dir.join(MANIFEST_SIG_FILE);
    let sig_text = std::fs::read_to_string(&sig_path).with_context(|| format!("reading {}", sig_path.display()))?;
    let pk = minisign_verify::PublicKey::decode(trusted_key).context("the installer's trusted public key is unreadable")?;
    let sig = minisign_verify::Signature::decode(&sig_text).with_context(|| format!("{} is not a minisign signature", sig_path.display()))?;
    pk.verify(&data, &sig, false)
        .map_err(|e| anyhow::anyhow!("{}: {e}: the image on this medium is not signed by the key this installer trusts; refusing to install", manifest_path.display()))?;
    let manifest: Manifest = serde_json::from_slice(&data).with_context(|| format!("parsing {}", manifest_path.display()))?;
    let expected: u64 = manifest.disk.block_map.iter().map(|r| r.length).sum();
    let data_path = dir.join(INSTALLER_DATA_FILE);
    let size = std::fs::metadata(&data_path).with_context(|| format!("reading {}", data_path.display()))?.len();
    if size != expected {
        bail!("{} is {size} bytes; the signed block map needs {expected}: the medium is damaged", data_path.display());
    }
    Ok(manifest)
}

/// Finds the disk that holds an ISO with a payload, mounts it read-only at
/// `mountpoint` and verifies the payload. `Ok(None)` while no such disk has
/// appeared yet.
pub fn find(mountpoint: &Path, trusted_key: &str) -> Result<Option<Medium>> {
    for disk in BlockDevice::list_disks()? {
        if iso_volume(&disk.path).is_none() {
            continue;
        }
        std::fs::create_dir_all(mountpoint)?;
        let _ = rustix::mount::unmount(mountpoint, rustix::mount::UnmountFlags::DETACH);
        rustix::mount::mount(&disk.path, mountpoint, "iso9660", rustix::mount::MountFlags::RDONLY, "")
            .with_context(|| format!("mounting {} (iso9660) on {}", disk.path.display(), mountpoint.display()))?;
        let dir = mountpoint.join(INSTALLER_PAYLOAD_DIR);
        if !dir.is_dir() {
            let _ = rustix::mount::unmount(mountpoint, rustix::mount::UnmountFlags::DETACH);
            continue;
        }
        let manifest = verify_payload(&dir, trusted_key).with_context(|| format!("checking the payload on {}", disk.path.display()))?;
        return Ok(Some(Medium { disk: disk.name, manifest, data: dir.join(INSTALLER_DATA_FILE) }));
    }
    Ok(None)
}

/// A site configuration as the installer found it.
pub struct FoundSite {
    /// Where from, for the operator: `CIAB-CONFIG (sdc1):/site.toml`.
    pub source: String,
    pub config: SiteConfig,
    /// The TOML to copy to the installed system's ESP; `None` for defaults.
    pub text: Option<String>,
    /// The disk it lives on, never an install target.
    pub disk: Option<String>,
}

/// Looks for the site configuration: a FAT filesystem labelled CIAB-CONFIG
/// (`site.toml` at its root), then `ciab/site.toml` on the installer's own
/// EFI partition, then `ciab.*` kernel arguments, else defaults.
pub fn find_site(medium_disk: &str) -> Result<FoundSite> {
    let mut devices = Vec::new();
    for disk in BlockDevice::list_disks()? {
        devices.extend(disk.partition_devices());
        devices.push(disk);
    }
    let disk_of = |d: &BlockDevice| d.parent.clone().unwrap_or_else(|| d.name.clone());
    for d in &devices {
        if super::fat::label(&d.path).as_deref() == Some(CONFIG_LABEL) {
            let source = format!("{CONFIG_LABEL} ({}):/site.toml", d.name);
            let text = super::fat::read_file(&d.path, "site.toml")?.with_context(|| format!("{source} does not exist: put site.toml at the root of the {CONFIG_LABEL} filesystem"))?;
            let config = SiteConfig::parse(&source, &text)?;
            return Ok(FoundSite { source, config, text: Some(text), disk: Some(disk_of(d)) });
        }
    }
    for d in devices.iter().filter(|d| disk_of(d) == medium_disk) {
        if super::fat::label(&d.path).as_deref() == Some(INSTALLER_EFI_LABEL) {
            if let Some(text) = super::fat::read_file(&d.path, ciab_core::contract::ESP_SITE_CONFIG)? {
                let source = format!("{INSTALLER_EFI_LABEL} ({}):/{}", d.name, ciab_core::contract::ESP_SITE_CONFIG);
                let config = SiteConfig::parse(&source, &text)?;
                return Ok(FoundSite { source, config, text: Some(text), disk: None });
            }
        }
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if let Some(config) = SiteConfig::from_kernel_cmdline(&cmdline)? {
        let text = toml::to_string(&config).context("writing the kernel command line's site config as TOML")?;
        return Ok(FoundSite { source: ciab_firstboot::model::site::KERNEL_CMDLINE.into(), config, text: Some(text), disk: None });
    }
    Ok(FoundSite { source: "defaults".into(), config: SiteConfig::default(), text: None, disk: None })
}
