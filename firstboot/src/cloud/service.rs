//! Starting the image's masked services once their configuration is written,
//! and waiting for them to answer — never on a fixed sleep.

use super::keys;
use ciab_core::wait::{wait_until, Poll};
use anyhow::{Context, Result, bail};
use std::path::Path;
use std::time::{Duration, Instant};

/// systemctl without its SysV hook: `enable` of a unit that also ships an
/// init.d script (most of Debian's OpenStack units do) runs update-rc.d,
/// which reloads systemd on its own. Under TCG boot 2 saw 51 reloads, 13–17 s
/// each while the cloud started, where ciab asks for about a dozen (Cinder's
/// six units: 13 reloads, 276 s). The rc.d links the hook keeps in step mean
/// nothing here: systemd ignores an init.d script whose unit is native.
fn systemctl(args: &[&str]) -> Result<String> {
    ciab_core::exec::Cmd::new("systemctl").package("systemd").env("SYSTEMCTL_SKIP_SYSV", "1").args(args).run()
}

/// Unmasks and enables `units` and reloads systemd once, which also picks
/// up drop-ins written since (each of unmask and enable would reload on its
/// own). Nothing is done when systemd already has every unit loaded,
/// unmasked, enabled (or static) and current: under TCG, with Python
/// services starting beside it, a reload took 15–45 s, so a step that
/// starts several groups of units enables them all up front, once.
pub fn enable(units: &[&str]) -> Result<()> {
    let mut args = vec!["show", "--property=LoadState,UnitFileState,NeedDaemonReload"];
    args.extend_from_slice(units);
    if systemctl(&args).is_ok_and(|out| all_current(&out, units.len())) {
        return Ok(());
    }
    let mut laps = super::laps::Laps::start();
    let mut args = vec!["unmask", "--quiet", "--no-reload"];
    args.extend_from_slice(units);
    systemctl(&args)?;
    laps.mark("unmask");
    let mut args = vec!["enable", "--quiet", "--no-reload"];
    args.extend_from_slice(units);
    systemctl(&args)?;
    laps.mark("enable");
    systemctl(&["daemon-reload"])?;
    laps.mark("daemon-reload");
    // Under TCG with the cloud starting beside it a reload alone takes
    // 13–17 s: a slow one is worth a line on the console.
    if laps.total() > SLOW_ENABLE {
        tracing::info!("systemd: enabling {} took {}", units.join(", "), laps.summary());
    }
    Ok(())
}

/// An [`enable`] slower than this says where its time went.
const SLOW_ENABLE: Duration = Duration::from_secs(10);

/// Whether `systemctl show`'s blocks (one per unit, blank-line separated)
/// say all `count` units need neither unmask, enable nor a reload.
fn all_current(show: &str, count: usize) -> bool {
    let blocks: Vec<&str> = show.split("\n\n").filter(|b| !b.trim().is_empty()).collect();
    blocks.len() == count
        && blocks.iter().all(|block| {
            let value = |key: &str| block.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('=')).unwrap_or("");
            value("LoadState") == "loaded"
                && value("NeedDaemonReload") == "no"
                && matches!(value("UnitFileState"), "enabled" | "static" | "indirect" | "alias" | "generated")
        })
}

/// Unmasks, enables and (re)starts `units`; a unit that fails to start is
/// reported with its last journal lines.
pub fn start(units: &[&str], restart: bool) -> Result<()> {
    enable(units)?;
    for unit in units {
        if let Err(e) = systemctl(&[if restart { "restart" } else { "start" }, unit]) {
            bail!("{unit} did not start: {e:#}\n{}", journal_tail(unit));
        }
    }
    Ok(())
}

/// Unmasks, enables and restarts `units` without waiting for them to be
/// up: slow starters (RabbitMQ, a minute under TCG) come up while later
/// steps run, and a later step waits for what it needs.
pub fn start_in_background(units: &[&str]) -> Result<()> {
    enable(units)?;
    let mut args = vec!["restart", "--no-block"];
    args.extend_from_slice(units);
    systemctl(&args).map(|_| ())
}

/// What systemd accounts to each of `units`, from one `systemctl show`:
/// for each of `properties` (name, divisor, e.g. `("MemoryCurrent", 1 << 20)`
/// for MiB of its cgroup's charge, `("CPUUsageNSec", 1_000_000_000)` for
/// seconds of CPU since it started) the units' values, largest first; units
/// systemd does not account for a property are left out of its list.
pub fn accounting(units: &[&str], properties: &[(&str, u64)]) -> Vec<Vec<(String, u64)>> {
    let names: Vec<&str> = properties.iter().map(|(name, _)| *name).collect();
    let prop = format!("--property=Id,{}", names.join(","));
    let mut args = vec!["show", prop.as_str()];
    args.extend_from_slice(units);
    let out = systemctl(&args).unwrap_or_default();
    properties.iter().map(|(name, divisor)| parse_accounting(&out, name, *divisor)).collect()
}

fn parse_accounting(show: &str, property: &str, unit_size: u64) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = show
        .split("\n\n")
        .filter_map(|block| {
            let value = |key: &str| block.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('='));
            let raw: u64 = value(property)?.parse().ok()?;
            Some((value("Id")?.trim_end_matches(".service").to_owned(), raw / unit_size))
        })
        .collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

/// `active`, `activating`, `failed`, `inactive`, …
pub fn state(unit: &str) -> String {
    systemctl(&["show", "-p", "ActiveState", "--value", unit]).map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// Started, or on its way up: activating, or with a start job queued (a
/// unit ordered after another stays `inactive` until that one is up).
pub fn is_up_or_starting(unit: &str) -> bool {
    matches!(state(unit).as_str(), "active" | "activating" | "reloading")
        || systemctl(&["list-jobs", "--no-legend", "--plain", unit]).is_ok_and(|jobs| jobs.contains(unit))
}

pub fn is_active(unit: &str) -> bool {
    systemctl(&["is-active", "--quiet", unit]).is_ok()
}

/// Waits until every one of `units` is active; one that fails, or is not
/// up in time, is reported with its last journal lines.
pub fn wait_active(units: &[&str], timeout: Duration) -> Result<()> {
    let start = Instant::now();
    for unit in units {
        // One timeout for all of them, not one each.
        let waited = wait_until(timeout.saturating_sub(start.elapsed()), Duration::from_millis(300), || match state(unit).as_str() {
            "active" => Ok(Poll::Ready(())),
            "failed" => bail!("{unit} failed to start\n{}", journal_tail(unit)),
            s => Ok(Poll::Pending(s.to_owned())),
        })?;
        if let Err(stuck) = waited {
            bail!("{unit} is {} after {} s\n{}", stuck.last, timeout.as_secs(), journal_tail(unit));
        }
    }
    Ok(())
}

/// The unit's last journal lines, for an error on the status page.
pub fn journal_tail(unit: &str) -> String {
    let out = ciab_core::exec::Cmd::new("journalctl").args(["-u", unit, "-n", "12", "--no-pager", "-o", "cat"]).run().unwrap_or_default();
    format!("last lines of {unit}'s journal:\n{}", out.trim_end())
}

/// The last `n` lines of a log file, for errors of tools that log there.
pub fn file_tail(path: &std::path::Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            format!("last lines of {}:\n{}", path.display(), lines[lines.len().saturating_sub(n)..].join("\n"))
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}

/// For a `Type=notify` unit whose Python start-up can outlast systemd's
/// 90 s start limit: under TCG, with the rest of the cloud starting, Nova's
/// daemons did (each timeout killed and restarted one from scratch; 14
/// restarts in 20 minutes, never up). Natively they start in seconds; the
/// limit only ends a start that hangs.
pub fn slow_start_dropin() -> String {
    "[Service]\nTimeoutStartSec=20min\n".to_owned()
}

/// A drop-in ordering a service after the mounts of its data: the volumes
/// are `nofail` mounts boot does not wait for.
pub fn requires_mounts_dropin(paths: &[&str]) -> String {
    format!("[Unit]\nRequiresMountsFor={}\n", paths.join(" "))
}

/// The HTTP status `url` answers with (curl, trusting `ca` for https), or
/// `None` when nothing answers.
pub fn http_status(url: &str, ca: Option<&str>) -> Option<u16> {
    let mut cmd = ciab_core::exec::Cmd::new("curl").package("curl").args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "30"]);
    if let Some(ca) = ca {
        cmd = cmd.args(["--cacert", ca]);
    }
    let code: u16 = cmd.arg(url).run().ok()?.trim().parse().ok()?;
    (code != 0).then_some(code)
}

/// Waits until `url` answers below 500, while `unit` stays alive.
pub fn wait_http(url: &str, ca: Option<&str>, unit: &str, timeout: Duration) -> Result<Duration> {
    let start = Instant::now();
    let waited = wait_until(timeout, Duration::from_millis(500), || match http_status(url, ca) {
        Some(code) if code < 500 => Ok(Poll::Ready(start.elapsed())),
        _ if systemctl(&["is-failed", "--quiet", unit]).is_ok() => bail!("{unit} failed while {url} was awaited\n{}", journal_tail(unit)),
        _ => Ok(Poll::Pending(())),
    })?;
    let Ok(took) = waited else {
        bail!("{url} does not answer after {} s\n{}", timeout.as_secs(), journal_tail(unit));
    };
    Ok(took)
}

/// How long an OpenStack API may take to answer after its start: Keystone
/// under TCG with one process answers in about two minutes.
pub const API_TIMEOUT: Duration = Duration::from_secs(900);

/// Writes ciab's drop-in for `unit` (`/etc/systemd/system/<unit>.d/ciab.conf`).
pub fn write_dropin(root: &Path, unit: &str, sections: &str) -> Result<()> {
    write_named_dropin(root, unit, "ciab", sections)
}

/// Writes a second drop-in of ciab's for `unit`, beside the one
/// [`install_uwsgi`] or [`write_dropin`] writes (`<name>.conf`).
pub fn write_named_dropin(root: &Path, unit: &str, name: &str, sections: &str) -> Result<()> {
    let path = root.join(format!("etc/systemd/system/{unit}.d/{name}.conf"));
    std::fs::create_dir_all(path.parent().context("parent")?)?;
    ciab_core::atomic::write_atomic(&path, format!("# Written by ciab-firstboot.\n{sections}").as_bytes())
}

/// Writes a service's config file, readable by root and the service's group
/// only (it holds passwords).
pub fn write_private_conf(root: &Path, rel: &str, text: &str, group_of: &str) -> Result<()> {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().context("parent")?)?;
    ciab_core::atomic::write_atomic_mode(&path, text.as_bytes(), 0o640)?;
    let (_, gid) = keys::system_user(root, group_of)?;
    keys::chown(&path, (0, gid))
}

#[cfg(test)]
mod tests {
    #[test]
    fn tails_and_dropins() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.log");
        std::fs::write(&log, "a\nb\nc\n").unwrap();
        assert!(super::file_tail(&log, 2).ends_with(":\nb\nc"));
        assert!(super::file_tail(&dir.path().join("none"), 2).starts_with("("));
        assert_eq!(super::requires_mounts_dropin(&["/var/lib/mysql"]), "[Unit]\nRequiresMountsFor=/var/lib/mysql\n");
    }

    #[test]
    fn memory_comes_from_systemds_accounting() {
        let show = "Id=swift-proxy.service\nMemoryCurrent=52428800\n\nMemoryCurrent=[not set]\nId=gone.service\n\nId=mariadb.service\nMemoryCurrent=209715200\n";
        assert_eq!(super::parse_accounting(show, "MemoryCurrent", 1 << 20), vec![("mariadb".to_owned(), 200), ("swift-proxy".to_owned(), 50)]);
        let show = "Id=keystone.service\nCPUUsageNSec=41900000000\n\nId=gone.service\nCPUUsageNSec=[not set]\n";
        assert_eq!(super::parse_accounting(show, "CPUUsageNSec", 1_000_000_000), vec![("keystone".to_owned(), 41)]);
    }

    #[test]
    fn enables_only_what_systemd_does_not_have_current() {
        let current = "LoadState=loaded\nUnitFileState=enabled\nNeedDaemonReload=no\n\nNeedDaemonReload=no\nLoadState=loaded\nUnitFileState=static\n";
        assert!(super::all_current(current, 2));
        // A unit more than systemd described (a name it did not know).
        assert!(!super::all_current(current, 3));
        for stale in [
            "LoadState=masked\nUnitFileState=masked\nNeedDaemonReload=no\n",
            "LoadState=loaded\nUnitFileState=disabled\nNeedDaemonReload=no\n",
            "LoadState=loaded\nUnitFileState=enabled\nNeedDaemonReload=yes\n",
            "LoadState=not-found\nUnitFileState=\nNeedDaemonReload=no\n",
        ] {
            assert!(!super::all_current(stale, 1), "{stale}");
        }
    }
}
