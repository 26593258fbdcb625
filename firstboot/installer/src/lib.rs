//! `ciab-installer`: PID 1 of the installer ISO's initramfs. It finds its
//! medium, verifies the signed image on it, picks the internal disk, writes
//! the image with the same engine as `ciab flash`, verifies by read-back,
//! copies the site configuration to the installed ESP and reboots into the
//! installed system's first boot. Progress goes to serial and screen.

pub mod console;
pub mod fat;
pub mod kmod;
pub mod medium;
pub mod target;

use ciab_core::blockdev::BlockDevice;
use ciab_core::contract::{PartitionRole, INSTALLED_LINE, INSTALLER_MODULE_LIST, INSTALLER_TRUSTED_KEY};
use ciab_core::flash::{self, Image, Phase, Source, Target};
use ciab_core::wait::{wait_until, Poll};
use anyhow::{bail, Context, Result};
use console::Console;
use std::path::Path;
use std::time::{Duration, Instant};

/// Where the medium is mounted.
const MEDIUM_MOUNT: &str = "/run/medium";
/// How long to wait for the medium's disk to appear (USB enumeration).
const MEDIUM_WAIT: Duration = Duration::from_secs(90);

/// Runs the installer; never returns. Success reboots, failure stops with
/// the reason on the console (a PID 1 that exits would panic the kernel).
pub fn main() -> ! {
    mount_api_filesystems();
    let con = Console::open();
    con.line("starting");
    let release = rustix::system::uname().release().to_string_lossy().into_owned();
    let list = std::fs::read_to_string(Path::new("/").join(INSTALLER_MODULE_LIST)).unwrap_or_default();
    for failure in kmod::load_list(&Path::new("/usr/lib/modules").join(&release), &list) {
        con.line(&format!("warning: {failure}"));
    }
    match install(&con) {
        Ok(Outcome::Installed) => {
            rustix::fs::sync();
            con.line("rebooting into the installed system");
            let _ = rustix::system::reboot(rustix::system::RebootCommand::Restart);
        }
        Ok(Outcome::AlreadyInstalled) => {
            rustix::fs::sync();
            con.line("remove the installer medium; powering off");
            let _ = rustix::system::reboot(rustix::system::RebootCommand::PowerOff);
        }
        Err(e) => {
            con.line(&format!("FAILED: {e:#}"));
            con.line("nothing more will happen; fix the problem and restart the installer");
        }
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn mount_api_filesystems() {
    use rustix::mount::{mount, MountFlags};
    for (src, dir, fs) in [("proc", "/proc", "proc"), ("sysfs", "/sys", "sysfs"), ("devtmpfs", "/dev", "devtmpfs"), ("tmpfs", "/run", "tmpfs")] {
        let _ = std::fs::create_dir_all(dir);
        let _ = mount(src, dir, fs, MountFlags::NOSUID, "");
    }
}

enum Outcome {
    Installed,
    AlreadyInstalled,
}

/// The disk GUID in a GPT header at LBA 1, as the manifest writes it.
fn gpt_disk_guid(dev: &Path) -> Option<String> {
    let mut f = std::fs::File::open(dev).ok()?;
    let gpt = gptman::GPT::find_from(&mut f).ok()?;
    Some(uuid::Uuid::from_bytes_le(gpt.header.disk_guid).to_string())
}

fn install(con: &Console) -> Result<Outcome> {
    let key = std::fs::read_to_string(Path::new("/").join(INSTALLER_TRUSTED_KEY)).context("the initramfs has no trusted key")?;
    con.line("looking for the installer medium");
    let waited = wait_until(MEDIUM_WAIT, Duration::from_millis(500), || {
        Ok(match medium::find(Path::new(MEDIUM_MOUNT), &key)? {
            Some(m) => Poll::Ready(m),
            None => Poll::Pending(()),
        })
    })?;
    let Ok(medium) = waited else {
        let disks = BlockDevice::list_disks()?.iter().map(|d| d.describe()).collect::<Vec<_>>().join("; ");
        bail!("no disk carries the installer's ISO with a payload after {} s (disks: {disks})", MEDIUM_WAIT.as_secs());
    };
    let m = &medium.manifest;
    con.line(&format!("medium /dev/{}: {} {} (signature ok)", medium.disk, m.image.name, m.image.version));

    let site = medium::find_site(&medium.disk)?;
    con.line(&format!("site config: {}", site.source));
    let install = &site.config.install;
    let mut exclude = vec![medium.disk.clone()];
    exclude.extend(site.disk.clone());
    let disks = BlockDevice::list_disks()?;
    let target = target::choose(&disks, &exclude, install.disk.as_deref())?;
    con.line(&format!("target: {}", target.describe()));
    if target.size < m.disk.size {
        bail!("{} is too small: {} bytes for an image of {}", target.path.display(), target.size, m.disk.size);
    }
    let timeout = Duration::from_secs(install.confirm_timeout_seconds.into());
    if gpt_disk_guid(&target.path).as_deref() == Some(m.disk.disk_guid.as_str()) {
        con.line(&format!("{} already holds this image ({} {}), perhaps installed and booted since", target.path.display(), m.image.name, m.image.version));
        con.line(&format!("type {} and Enter within {} s to install again over it", target.name, timeout.as_secs()));
        if con.read_line(timeout).as_deref() != Some(target.name.as_str()) {
            return Ok(Outcome::AlreadyInstalled);
        }
    } else if let Some(what) = target::holds_data(&target)? {
        if install.wipe {
            con.line(&format!("erasing {} ({what}): install.wipe = true", target.path.display()));
        } else {
            con.line(&format!("{} holds {what}; type {} and Enter within {} s to erase it", target.path.display(), target.name, timeout.as_secs()));
            if con.read_line(timeout).as_deref() != Some(target.name.as_str()) {
                bail!("not confirmed: {} was left untouched (set install.wipe = true in site.toml to erase without asking)", target.path.display());
            }
        }
    }

    let image = Image { size: m.disk.size, map: &m.disk.block_map };
    let data = std::fs::File::open(&medium.data).with_context(|| format!("opening {}", medium.data.display()))?;
    let source = Source::Packed { file: data, path: medium.data.clone(), base: 0 };
    let dest = Target::block_device(&target.path)?;
    let mut last = (Phase::Check, u64::MAX);
    let started = Instant::now();
    let report = flash::flash(&image, &source, &dest, &mut |p| {
        let tenth = (p.done * 10).checked_div(p.total).unwrap_or(10);
        if (p.phase, tenth) != last {
            last = (p.phase, tenth);
            con.line(&format!("{} {:>3}% ({} of {} MiB)", p.phase.label(), tenth * 10, p.done >> 20, p.total >> 20));
        }
    })?;
    con.line(&format!(
        "wrote {} MiB and verified {} MiB in {:.1} s",
        report.written >> 20,
        report.verified >> 20,
        started.elapsed().as_secs_f64()
    ));
    drop(dest);

    if let Some(text) = &site.text {
        let esp = m.partitions.iter().find(|p| p.role == PartitionRole::Esp).context("the manifest lists no ESP")?;
        fat::write_file(&target.path, esp.offset, esp.size, "ciab", "site.toml", text.as_bytes())
            .context("copying the site config to the installed ESP")?;
        con.line(&format!("copied {} to the installed ESP:/{}", site.source, ciab_core::contract::ESP_SITE_CONFIG));
    }
    // The console adds the `ciab-installer: ` prefix the marker begins with.
    let marker = INSTALLED_LINE.trim_start_matches("ciab-installer: ");
    con.line(&format!("{marker} {} {} on {}", m.image.name, m.image.version, target.path.display()));
    Ok(Outcome::Installed)
}
