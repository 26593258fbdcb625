//! The first-boot steps of DESIGN.md §5, in order:
//! discover → site-config → plan → secrets → storage → network → system →
//! registry → (the cloud's, in `cloud::steps` and `cloud::*_steps`:
//! pki → database → messaging → ovn → keystone → identity → glance →
//! placement → nova → neutron → cinder → horizon → frontend → apis →
//! external-network → flavors → volume-types → security-groups →
//! guest-images) → ready.
//!
//! Each step keeps what it learned under the state directory (as JSON), so a
//! run resumed after a power cut picks it up in `check()` instead of redoing
//! it.

use crate::discover::{self, Hardware};
use crate::engine::Step;
use crate::plan::{self, Plan, Profile};
use crate::site::SiteConfig;
use crate::site_source::{self, Found};
use crate::storage::{self, Volume};
use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// Completion stamp: its existence means first boot is over.
pub const DONE_STAMP: &str = "firstboot.done";

/// What the steps share.
pub struct Ctx {
    /// `/` on the box; a scratch tree in tests.
    pub root: PathBuf,
    /// `/var/lib/ciab`.
    pub state_dir: PathBuf,
    pub hw: Option<Hardware>,
    pub site: Option<SiteConfig>,
    pub plan: Option<Plan>,
}

impl Ctx {
    pub fn new(root: &Path, state_dir: &Path) -> Ctx {
        Ctx { root: root.to_owned(), state_dir: state_dir.to_owned(), hw: None, site: None, plan: None }
    }

    /// Picks up what steps done in earlier runs learned: the engine skips
    /// those steps, so their `check()` does not run to load it.
    pub fn resume(&mut self) {
        self.hw = self.load("hardware.json");
        self.site = self.load::<Found>("site-source.json").and_then(|f| f.parse().ok());
        self.plan = self.load("plan.json");
    }

    pub(crate) fn hw(&self) -> Result<&Hardware> {
        self.hw.as_ref().context("hardware not discovered yet")
    }
    pub(crate) fn site(&self) -> Result<&SiteConfig> {
        self.site.as_ref().context("site configuration not read yet")
    }
    pub(crate) fn plan(&self) -> Result<&Plan> {
        self.plan.as_ref().context("no plan yet")
    }

    pub(crate) fn load<T: DeserializeOwned>(&self, name: &str) -> Option<T> {
        let text = std::fs::read(self.state_dir.join(name)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    pub(crate) fn save<T: serde::Serialize>(&self, name: &str, value: &T) -> Result<()> {
        ciab_core::atomic::write_atomic(&self.state_dir.join(name), &serde_json::to_vec_pretty(value)?)
    }
}

/// Every step, in registration order.
pub fn all() -> Vec<Box<dyn Step<Ctx>>> {
    vec![
        Box::new(DiscoverStep),
        Box::new(SiteConfigStep),
        Box::new(PlanStep),
        Box::new(SecretsStep),
        Box::new(StorageStep),
        Box::new(NetworkStep),
        Box::new(SystemStep),
        Box::new(RegistryStep),
        Box::new(crate::cloud::steps::PkiStep),
        Box::new(crate::cloud::steps::DatabaseStep),
        Box::new(crate::cloud::service_steps::MessagingStep),
        Box::new(crate::cloud::network_steps::OvnStep),
        Box::new(crate::cloud::steps::KeystoneStep),
        Box::new(crate::cloud::steps::IdentityStep),
        Box::new(crate::cloud::service_steps::GlanceStep),
        Box::new(crate::cloud::service_steps::PlacementStep),
        Box::new(crate::cloud::service_steps::NovaStep),
        Box::new(crate::cloud::network_steps::NeutronStep),
        Box::new(crate::cloud::volume_steps::CinderStep),
        Box::new(crate::cloud::dashboard_steps::HorizonStep),
        Box::new(crate::cloud::object_store_steps::SwiftStep),
        Box::new(crate::cloud::load_balancer_steps::OctaviaStep),
        Box::new(crate::cloud::key_manager_steps::BarbicanStep),
        Box::new(crate::cloud::service_steps::FrontendStep),
        Box::new(crate::cloud::service_steps::ApisStep),
        Box::new(crate::cloud::network_steps::ExternalNetworkStep),
        Box::new(crate::cloud::defaults_steps::FlavorsStep),
        Box::new(crate::cloud::defaults_steps::VolumeTypesStep),
        Box::new(crate::cloud::defaults_steps::SecurityGroupsStep),
        Box::new(crate::cloud::image_steps::GuestImagesStep),
        Box::new(ReadyStep),
    ]
}

struct DiscoverStep;

impl Step<Ctx> for DiscoverStep {
    fn name(&self) -> &'static str {
        "discover"
    }
    fn title(&self) -> &'static str {
        "discover the hardware"
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        ctx.hw = ctx.load("hardware.json");
        Ok(ctx.hw.is_some())
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let hw = discover::discover(&ctx.root)?;
        println!(
            "ciab-firstboot: discover: {} cpus, {} MiB RAM, firmware {:?}, kvm device {}",
            hw.cpus,
            hw.memory_bytes >> 20,
            hw.firmware,
            if hw.kvm_device { "present" } else { "absent" }
        );
        for d in &hw.disks {
            println!("ciab-firstboot: discover: disk {} {} MiB{}{}", d.name, d.size_bytes >> 20, if d.removable { " removable" } else { "" }, if d.holds_root { " (root)" } else { "" });
        }
        for n in &hw.nics {
            println!("ciab-firstboot: discover: nic {} {} carrier={}", n.name, n.mac, n.carrier);
        }
        ctx.save("hardware.json", &hw)
    }
}

struct SiteConfigStep;

impl Step<Ctx> for SiteConfigStep {
    fn name(&self) -> &'static str {
        "site-config"
    }
    fn title(&self) -> &'static str {
        "read the site configuration"
    }
    fn depends_on(&self) -> &'static [&'static str] {
        &["discover"]
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        let Some(found) = ctx.load::<Found>("site-source.json") else { return Ok(false) };
        ctx.site = Some(found.parse()?);
        Ok(true)
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let found = site_source::find(&ctx.state_dir.join("run"))?;
        let site = found.parse()?;
        site.validate_against(ctx.hw()?)?;
        println!("ciab-firstboot: site-config: from {}: hostname {}", found.source, site.hostname);
        ctx.save("site-source.json", &found)?;
        ctx.site = Some(site);
        Ok(())
    }
}

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
        .filter(|(_, p)| p.is_used() && p.partition_name.as_str() != storage::DATA_LABEL)
        .map(|(_, p)| p.ending_lba + 1)
        .max()
        .context("no partitions")?;
    Ok(last * gpt.sector_size)
}

struct PlanStep;

impl Step<Ctx> for PlanStep {
    fn name(&self) -> &'static str {
        "plan"
    }
    fn title(&self) -> &'static str {
        "size the cloud to the box"
    }
    fn depends_on(&self) -> &'static [&'static str] {
        &["discover", "site-config"]
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        ctx.plan = ctx.load("plan.json");
        Ok(ctx.plan.is_some())
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let hw = ctx.hw()?;
        let profile = ctx.site()?.profile.unwrap_or_else(|| image_profile(&ctx.root));
        let disk = hw.disks.iter().find(|d| d.holds_root).map(|d| d.name.clone()).unwrap_or(storage::root_disk()?);
        let plan = plan::plan(hw, profile, image_bytes(&disk)?)?;
        println!("ciab-firstboot: plan: {}", serde_json::to_string(&plan)?);
        ctx.save("plan.json", &plan)?;
        ctx.plan = Some(plan);
        Ok(())
    }
}

/// The secrets a profile's services need.
pub fn secret_names(profile: Profile) -> Vec<&'static str> {
    let mut names = vec!["machine-secret"];
    if profile.has_cloud() {
        names.extend([
            "mariadb-root", "rabbitmq-openstack", "keystone-admin", "keystone-db", "glance-db", "glance-service",
            "placement-db", "placement-service", "nova-db", "nova-service", "neutron-db", "neutron-service",
            "neutron-metadata", "cinder-db", "cinder-service", "horizon-secret-key", "demo-password",
            "octavia-db", "octavia-service", "barbican-db", "barbican-service", "barbican-kek",
            "swift-service", "swift-hash-prefix", "swift-hash-suffix",
        ]);
    }
    names
}

struct SecretsStep;

impl Step<Ctx> for SecretsStep {
    fn name(&self) -> &'static str {
        "secrets"
    }
    fn title(&self) -> &'static str {
        "generate this box's secrets"
    }
    fn depends_on(&self) -> &'static [&'static str] {
        &["plan"]
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        Ok(crate::secrets::complete(&ctx.state_dir.join("secrets"), &secret_names(ctx.plan()?.profile)))
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let names = secret_names(ctx.plan()?.profile);
        let created = crate::secrets::ensure(&ctx.state_dir.join("secrets"), &names)?;
        println!("ciab-firstboot: secrets: {created} generated, {} in total, in {}", names.len(), ctx.state_dir.join("secrets").display());
        Ok(())
    }
}

/// The logical volumes a plan asks for, with their mount points.
pub fn volumes(plan: &Plan) -> Vec<Volume> {
    let v = |name: &str, size_gib: u64, mp: Option<&str>| Volume { name: name.into(), size_gib, mountpoint: mp.map(str::to_owned) };
    let mut out = Vec::new();
    if let Some(c) = &plan.storage.volumes {
        out.push(v("mariadb", c.mariadb_gib, Some("/var/lib/mysql")));
        out.push(v("glance", c.glance_gib, Some("/var/lib/glance/images")));
        out.push(v("nova", c.nova_instances_gib, Some("/var/lib/nova/instances")));
        out.push(v("kaas", c.kaas_gib, Some("/var/lib/ciab/kaas")));
        out.push(v("swift", c.swift_gib, Some(crate::cloud::swift::DEVICE_PATH)));
        // cinder_gib stays free in the VG: Cinder's LVM driver creates its
        // volumes there when the IaaS layer is configured.
    }
    if plan.storage.appliance_gib > 0 {
        out.push(v("appliance", plan.storage.appliance_gib, Some("/srv/ciab")));
    }
    out
}

struct StorageStep;

impl Step<Ctx> for StorageStep {
    fn name(&self) -> &'static str {
        "storage"
    }
    fn title(&self) -> &'static str {
        "claim the disk"
    }
    fn depends_on(&self) -> &'static [&'static str] {
        &["plan"]
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        let plan = ctx.plan()?;
        Ok(storage::is_complete(&plan.storage.disk, &volumes(plan)))
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let plan = ctx.plan()?;
        let disk = &plan.storage.disk;
        let root_disk = storage::root_disk()?;
        if disk != &root_disk {
            bail!("the plan targets {disk} but the running root is on {root_disk}: refusing to touch another disk");
        }
        let number = storage::ensure_data_partition(Path::new(&format!("/dev/{disk}")))?;
        let pv = storage::announce_partition(disk, number)?;
        let vols = volumes(plan);
        storage::ensure_volumes(&pv, &vols)?;
        storage::ensure_mounts(&vols)?;
        for (name, bytes) in storage::report()? {
            println!("ciab-firstboot: storage: lv {}/{name} {} MiB", storage::VG, bytes >> 20);
        }
        Ok(())
    }
}

pub(crate) struct NetworkStep;

impl NetworkStep {
    pub(crate) fn nic(ctx: &Ctx) -> Result<Option<String>> {
        match ctx.site()?.resolve_nic(ctx.hw()?) {
            Ok(nic) => Ok(Some(nic)),
            Err(crate::site::SiteError::NoNetworkInterface) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

impl Step<Ctx> for NetworkStep {
    fn name(&self) -> &'static str {
        "network"
    }
    fn title(&self) -> &'static str {
        "configure the management network"
    }
    fn depends_on(&self) -> &'static [&'static str] {
        &["site-config"]
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        let nic = Self::nic(ctx)?;
        let site = ctx.site()?;
        let hostname_ok = std::fs::read_to_string(ctx.root.join("etc/hostname")).ok().as_deref() == Some(&format!("{}\n", site.hostname));
        let unit_ok = match &nic {
            Some(nic) => {
                std::fs::read_to_string(ctx.root.join(crate::network::NETWORK_FILE)).ok().as_deref()
                    == Some(crate::network::networkd_unit(site, nic).as_str())
                    && !crate::network::addresses(nic).unwrap_or_default().is_empty()
            }
            None => true,
        };
        Ok(hostname_ok && unit_ok)
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let nic = Self::nic(ctx)?;
        let site = ctx.site()?;
        crate::network::write_files(&ctx.root, site, nic.as_deref())?;
        std::fs::write("/proc/sys/kernel/hostname", &site.hostname).context("setting the host name")?;
        let Some(nic) = nic else {
            println!("ciab-firstboot: network: no network interface: air-gapped, nothing to configure");
            return Ok(());
        };
        // networkctl needs D-Bus, which a minimal image lacks; a restart
        // through PID 1 makes networkd read the new file just as well.
        ciab_core::exec::Cmd::new("systemctl").package("systemd").args(["enable", "systemd-networkd"]).run()?;
        ciab_core::exec::Cmd::new("systemctl").package("systemd").args(["restart", "systemd-networkd"]).run()?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
        loop {
            let addrs = crate::network::addresses(&nic)?;
            if !addrs.is_empty() {
                println!("ciab-firstboot: network: {nic} {}", addrs.join(" "));
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!("{nic} has no address after 90 s ({:?} configuration)", site.network.mode);
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
}

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

struct SystemStep;

impl SystemStep {
    fn localtime_target(site: &SiteConfig) -> PathBuf {
        Path::new("/usr/share/zoneinfo").join(site.time_zone.as_deref().unwrap_or("Etc/UTC"))
    }
}

impl Step<Ctx> for SystemStep {
    fn name(&self) -> &'static str {
        "system"
    }
    fn title(&self) -> &'static str {
        "apply SSH keys and time zone"
    }
    fn depends_on(&self) -> &'static [&'static str] {
        &["site-config"]
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
        println!(
            "ciab-firstboot: system: {} SSH key(s) for root, time zone {}",
            site.ssh_authorized_keys.len(),
            site.time_zone.as_deref().unwrap_or("Etc/UTC")
        );
        Ok(())
    }
}

/// The offline registry serves the bundle: started by its unit once the
/// bundle is mounted; this step waits for it and checks every image the
/// bundle lists, so `ready` means the images are pullable.
struct RegistryStep;

/// How long `docker-registry` may take to answer (a Go binary under TCG
/// starts in seconds; the bundle mount may wait for a slow udev).
const REGISTRY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(180);

impl Step<Ctx> for RegistryStep {
    fn name(&self) -> &'static str {
        "registry"
    }
    fn title(&self) -> &'static str {
        "serve the offline registry"
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        Ok(match crate::registry::bundle_index(&ctx.root)? {
            Some(index) if !index.images.is_empty() => crate::registry::probe(crate::registry::ADDR, &index).is_ok(),
            _ => true,
        })
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let index = crate::registry::bundle_index(&ctx.root)?.context("the bundle index disappeared")?;
        ciab_core::exec::Cmd::new("systemctl").package("systemd").args(["start", crate::registry::UNIT]).run()?;
        let deadline = std::time::Instant::now() + REGISTRY_TIMEOUT;
        loop {
            match crate::registry::probe(crate::registry::ADDR, &index) {
                Ok(()) => break,
                Err(e) if std::time::Instant::now() > deadline => {
                    let log = ciab_core::exec::Cmd::new("journalctl").args(["-u", crate::registry::UNIT, "-n", "5", "--no-pager", "-o", "cat"]).run().unwrap_or_default();
                    bail!("the offline registry does not serve the bundle after {} s: {e:#}\n{}", REGISTRY_TIMEOUT.as_secs(), log.trim_end());
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(250)),
            }
        }
        println!("ciab-firstboot: registry: {} image(s) served on http://{}", index.images.len(), crate::registry::ADDR);
        Ok(())
    }
}

/// (MemTotal − MemAvailable, MemTotal) in MiB from /proc/meminfo: what the
/// system and the services hold, page cache they would give back excluded.
pub fn memory_in_use(meminfo: &str) -> Option<(u64, u64)> {
    let kib = |key: &str| -> Option<u64> { meminfo.lines().find_map(|l| l.strip_prefix(key))?.split_whitespace().next()?.parse().ok() };
    let (total, available) = (kib("MemTotal:")?, kib("MemAvailable:")?);
    Some((total.saturating_sub(available) / 1024, total / 1024))
}

struct ReadyStep;

impl Step<Ctx> for ReadyStep {
    fn name(&self) -> &'static str {
        "ready"
    }
    fn title(&self) -> &'static str {
        "finish"
    }
    fn depends_on(&self) -> &'static [&'static str] {
        &["secrets", "storage", "network", "system", "registry", "identity", "apis", "external-network", "flavors", "volume-types", "security-groups", "guest-images"]
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        Ok(ctx.state_dir.join(DONE_STAMP).exists())
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let site = ctx.site()?;
        let nic = NetworkStep::nic(ctx)?;
        let addrs = nic.as_deref().map(crate::network::addresses).transpose()?.unwrap_or_default();
        println!("ciab-firstboot: summary: host {} ({} profile)", site.hostname, ctx.plan()?.profile);
        for a in &addrs {
            let ip = a.split('/').next().unwrap_or(a);
            println!("ciab-firstboot: summary: status page http://{ip}:8080/");
        }
        if ctx.plan()?.profile.has_cloud() && ctx.root.join(crate::cloud::database::SCHEMAS_DIR).is_dir() {
            let e = crate::cloud::steps::endpoints(ctx)?;
            println!("ciab-firstboot: summary: cloud {} (credentials in /root/.config/openstack/clouds.yaml)", e.public("identity"));
            for a in &addrs {
                let ip = a.split('/').next().unwrap_or(a);
                println!("ciab-firstboot: summary: CA certificate http://{ip}:8080/ca.crt");
            }
        }
        if let Some((used, total)) = memory_in_use(&std::fs::read_to_string(ctx.root.join("proc/meminfo")).unwrap_or_default()) {
            println!("ciab-firstboot: summary: memory in use {used} MiB of {total} MiB (MemTotal − MemAvailable)");
        }
        if ctx.plan()?.profile.has_cloud() {
            // Where the memory went, and where first boot's time went (under
            // TCG mostly Python starting up).
            let accounted = crate::cloud::service::accounting(&crate::cloud::cloud_units(), &[("MemoryCurrent", 1 << 20), ("CPUUsageNSec", 1_000_000_000)]);
            for (title, by_service) in ["memory by service (MiB", "CPU time by service (s since its start"].iter().zip(&accounted) {
                if !by_service.is_empty() {
                    let list: Vec<String> = by_service.iter().map(|(u, v)| format!("{u} {v}")).collect();
                    println!("ciab-firstboot: summary: {title}, systemd's accounting): {}", list.join(", "));
                }
            }
        }
        println!("ciab-firstboot: summary: per-box secrets in {} (root only)", ctx.state_dir.join("secrets").display());
        ciab_core::atomic::write_atomic(&ctx.state_dir.join(DONE_STAMP), b"")
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

    #[test]
    fn every_step_depends_only_on_earlier_steps() {
        let steps = all();
        let names: Vec<&str> = steps.iter().map(|s| s.name()).collect();
        for (i, s) in steps.iter().enumerate() {
            for d in s.depends_on() {
                let at = names.iter().position(|n| n == d).unwrap_or(usize::MAX);
                assert!(at < i, "{} depends on {d}, which is not earlier", s.name());
            }
        }
        assert_eq!(names, ["discover", "site-config", "plan", "secrets", "storage", "network", "system", "registry", "pki", "database", "messaging", "ovn", "keystone", "identity", "glance", "placement", "nova", "neutron", "cinder", "horizon", "swift", "octavia", "barbican", "frontend", "apis", "external-network", "flavors", "volume-types", "security-groups", "guest-images", "ready"]);
    }

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

    #[test]
    fn memory_in_use_excludes_reclaimable_memory() {
        let m = "MemTotal:       12245676 kB\nMemFree:         8000000 kB\nMemAvailable:   10197676 kB\n";
        assert_eq!(memory_in_use(m), Some((2000, 11958)));
        assert_eq!(memory_in_use("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn cloud_profiles_get_service_secrets_and_volumes() {
        assert_eq!(secret_names(Profile::Tiny), ["machine-secret"]);
        assert!(secret_names(Profile::Eval).contains(&"keystone-admin"));
    }
}
