//! The management network: systemd-networkd configuration for the NIC the
//! site config names (or the first with carrier), the host name and
//! /etc/hosts.

use crate::ctx::Ctx;
use crate::engine::{About, Step};
use crate::model::site::{NetworkMode, SiteConfig};
use ciab_core::wait::{wait_until, Poll};
use anyhow::bail;
use anyhow::{Context, Result};
use std::path::Path;

/// The networkd file first boot owns.
pub const NETWORK_FILE: &str = "etc/systemd/network/10-ciab-mgmt.network";

/// The `.network` file for `nic`.
pub fn networkd_unit(site: &SiteConfig, nic: &str) -> String {
    let n = &site.network;
    let mut s = format!("# Written by ciab-firstboot from the site configuration.\n[Match]\nName={nic}\n\n[Network]\n");
    match n.mode {
        NetworkMode::Dhcp => s.push_str("DHCP=yes\n"),
        NetworkMode::Static => {
            if let Some(a) = &n.address {
                s.push_str(&format!("Address={a}\n"));
            }
            if let Some(g) = &n.gateway {
                s.push_str(&format!("Gateway={g}\n"));
            }
        }
    }
    for d in &n.dns {
        s.push_str(&format!("DNS={d}\n"));
    }
    if let Some(domain) = &site.domain {
        s.push_str(&format!("Domains={domain}\n"));
    }
    s
}

/// `/etc/hosts` naming the box.
pub fn hosts_file(site: &SiteConfig) -> String {
    let names = match &site.domain {
        Some(d) => format!("{}.{d} {}", site.hostname, site.hostname),
        None => site.hostname.clone(),
    };
    format!("127.0.0.1 localhost\n127.0.1.1 {names}\n::1 localhost ip6-localhost ip6-loopback\n")
}

/// Writes the files under `root` (`/` on the box); returns whether anything changed.
pub fn write_files(root: &Path, site: &SiteConfig, nic: Option<&str>) -> Result<bool> {
    let mut files = vec![
        ("etc/hostname".to_owned(), format!("{}\n", site.hostname)),
        ("etc/hosts".to_owned(), hosts_file(site)),
    ];
    if let Some(nic) = nic {
        files.push((NETWORK_FILE.to_owned(), networkd_unit(site, nic)));
    }
    let mut changed = false;
    for (rel, content) in files {
        let path = root.join(&rel);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(content.as_str()) {
            ciab_core::atomic::write_atomic(&path, content.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
            changed = true;
        }
    }
    Ok(changed)
}

/// The IPv4/IPv6 addresses `nic` has, from `ip -j addr`.
pub fn addresses(nic: &str) -> Result<Vec<String>> {
    let v: serde_json::Value = ciab_core::exec::Cmd::new("ip").package("iproute2").args(["-j", "addr", "show", "dev", nic]).run_json()?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .flat_map(|i| i["addr_info"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["scope"] == "global")
        .filter_map(|a| Some(format!("{}/{}", a["local"].as_str()?, a["prefixlen"].as_u64()?)))
        .collect())
}

/// The `network` step: the host name and the management network.
pub struct NetworkStep;

/// The management interface, or `None` on a box without one (air-gapped).
pub fn nic(ctx: &Ctx) -> Result<Option<String>> {
        match ctx.site()?.resolve_nic(ctx.hw()?) {
            Ok(nic) => Ok(Some(nic)),
            Err(crate::model::site::SiteError::NoNetworkInterface) => Ok(None),
            Err(e) => Err(e.into()),
        }
}

/// The management addresses (without prefix length).
pub fn management_addresses(ctx: &Ctx) -> Result<Vec<std::net::IpAddr>> {
    let Some(nic) = nic(ctx)? else { return Ok(Vec::new()) };
    Ok(addresses(&nic)?.iter().filter_map(|a| a.split('/').next()?.parse().ok()).collect())
}

impl Step<Ctx> for NetworkStep {
    fn about(&self) -> About {
        About { name: "network", title: "configure the management network", after: &["site-config"] }
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        let nic = nic(ctx)?;
        let site = ctx.site()?;
        let hostname_ok = std::fs::read_to_string(ctx.root.join("etc/hostname")).ok().as_deref() == Some(&format!("{}\n", site.hostname));
        let unit_ok = match &nic {
            Some(nic) => {
                std::fs::read_to_string(ctx.root.join(NETWORK_FILE)).ok().as_deref()
                    == Some(networkd_unit(site, nic).as_str())
                    && !addresses(nic).unwrap_or_default().is_empty()
            }
            None => true,
        };
        Ok(hostname_ok && unit_ok)
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let nic = nic(ctx)?;
        let site = ctx.site()?;
        write_files(&ctx.root, site, nic.as_deref())?;
        std::fs::write("/proc/sys/kernel/hostname", &site.hostname).context("setting the host name")?;
        let Some(nic) = nic else {
            tracing::info!("network: no network interface: air-gapped, nothing to configure");
            return Ok(());
        };
        // networkctl needs D-Bus, which a minimal image lacks; a restart
        // through PID 1 makes networkd read the new file just as well.
        ciab_core::exec::Cmd::new("systemctl").package("systemd").args(["enable", "systemd-networkd"]).run()?;
        ciab_core::exec::Cmd::new("systemctl").package("systemd").args(["restart", "systemd-networkd"]).run()?;
        let waited = wait_until(std::time::Duration::from_secs(90), std::time::Duration::from_secs(1), || {
            let addrs = addresses(&nic)?;
            Ok(if addrs.is_empty() { Poll::Pending(()) } else { Poll::Ready(addrs) })
        })?;
        let Ok(addrs) = waited else {
            bail!("{nic} has no address after 90 s ({:?} configuration)", site.network.mode);
        };
        tracing::info!("network: {nic} {}", addrs.join(" "));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_and_dhcp_units() {
        let site = SiteConfig::parse(
            "site.toml",
            "hostname = \"box1\"\ndomain = \"example.internal\"\n[network]\nmode = \"static\"\naddress = \"192.0.2.10/24\"\ngateway = \"192.0.2.1\"\ndns = [\"192.0.2.53\"]\n",
        )
        .unwrap();
        assert_eq!(
            networkd_unit(&site, "enp1s0"),
            "# Written by ciab-firstboot from the site configuration.\n[Match]\nName=enp1s0\n\n[Network]\nAddress=192.0.2.10/24\nGateway=192.0.2.1\nDNS=192.0.2.53\nDomains=example.internal\n"
        );
        assert!(hosts_file(&site).contains("127.0.1.1 box1.example.internal box1\n"));
        let dhcp = SiteConfig::default();
        assert!(networkd_unit(&dhcp, "eth0").contains("DHCP=yes\n"));
    }

    #[test]
    fn files_are_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let site = SiteConfig::default();
        assert!(write_files(dir.path(), &site, Some("eth0")).unwrap());
        assert!(!write_files(dir.path(), &site, Some("eth0")).unwrap(), "second run changes nothing");
        assert_eq!(std::fs::read_to_string(dir.path().join("etc/hostname")).unwrap(), "ciab\n");
        assert!(dir.path().join(NETWORK_FILE).exists());
    }
}
