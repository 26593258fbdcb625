//! The IaaS layer's first-boot work: one file per OpenStack service (or
//! piece of the cloud's plumbing), each holding that service's
//! configuration, rendered from the plan and the site, and its first-boot
//! step, which writes it and starts the service. The README's "Adding a
//! cloud service" walks through one.
//!
//! Shared by the services: `catalog` (every API's place and the public
//! endpoints), `ini` (the INI writer), `oslo` (the oslo libraries' settings
//! in every service's file), `uwsgi` (APIs under uwsgi), `service`
//! (systemd units and waiting for them), `rest` (the HTTP client), `keys`
//! (system users, key repositories), `pki` (the box's CA), `laps` (where a
//! step's time goes), `scs` (the SCS standards' defaults).
//!
//! In the order first boot configures them: pki → database → messaging →
//! ovn → keystone → identity → glance → placement → nova → neutron → cinder
//! → horizon → swift → octavia → barbican → frontend → apis, then the
//! cloud's defaults (`neutron`'s external network, `defaults`,
//! `guest_images`). Every cloud step is registered wrapped in [`CloudOnly`],
//! a no-op on a profile without a cloud or an image without OpenStack.

pub mod amqp;
pub mod apis;
pub mod barbican;
pub mod catalog;
pub mod cinder;
pub mod database;
pub mod defaults;
pub mod frontend;
pub mod glance;
pub mod guest_images;
pub mod horizon;
pub mod identity;
pub mod ini;
pub mod keys;
pub mod keystone;
pub mod laps;
pub mod messaging;
pub mod neutron;
pub mod nova;
pub mod octavia;
pub mod oslo;
pub mod ovn;
pub mod pki;
pub mod placement;
pub mod rest;
pub mod scs;
pub mod service;
pub mod swift;
pub mod uwsgi;

use crate::ctx::Ctx;
use crate::engine::{About, Step};
use anyhow::Result;

/// Makes a cloud service's step a no-op on a box without a cloud (a
/// profile without one, or an image without OpenStack): its check says
/// done, so it is never applied. The steps themselves assume a cloud.
pub struct CloudOnly<S>(pub S);

impl<S: Step<Ctx>> Step<Ctx> for CloudOnly<S> {
    fn about(&self) -> About {
        self.0.about()
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        Ok(!ctx.has_cloud()? || self.0.check(ctx)?)
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        self.0.apply(ctx)
    }
}

/// Every long-running unit of the cloud, for the memory summary at ready.
pub fn cloud_units() -> Vec<&'static str> {
    let mut units: Vec<&str> = catalog::APIS.iter().map(|a| a.unit).collect();
    units.extend(swift::SERVERS.iter().map(|s| s.0));
    units.extend(cinder::CINDER_DAEMONS);
    units.extend([
        octavia::DRIVER_AGENT, "nova-api-metadata", "nova-conductor", "nova-scheduler", "nova-compute", "nova-novncproxy", "libvirtd",
        "neutron-ovn-metadata-agent", "ovn-northd", "ovn-controller", "ovn-ovsdb-server-nb", "ovn-ovsdb-server-sb", "ovs-vswitchd", "ovsdb-server",
        horizon::UNIT, "mariadb", "rabbitmq-server", "memcached", "haproxy", "tgt", "iscsid",
    ]);
    units
}

#[cfg(test)]
pub(crate) fn test_plan() -> crate::model::plan::Plan {
    use crate::model::hardware::{Disk, Firmware, Hardware, Nic};
    let hw = Hardware {
        cpus: 4,
        memory_bytes: 12_245_676 * 1024,
        firmware: Firmware::Uefi,
        kvm_device: false,
        disks: vec![Disk { name: "vda".into(), size_bytes: 100 << 30, rotational: false, removable: false, holds_root: true }],
        nics: vec![Nic { name: "enp0s2".into(), mac: "52:54:00:12:34:56".into(), carrier: true }],
    };
    crate::model::plan::plan(&hw, crate::model::plan::Profile::Eval, 6 << 30).expect("the eval VM meets the eval minimum")
}
