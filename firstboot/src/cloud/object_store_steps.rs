//! The `swift` step: the box's hash path secrets, the storage servers on
//! the `swift` volume and the proxy with S3, started without waiting (the
//! `apis` step waits for the proxy's health check through the front end).

use super::catalog::OBJECT_STORE;
use super::service_steps::{api_started, write_private_conf};
use super::steps::{endpoints, has_cloud, secret, set_stamp, write_dropin};
use super::{keys, service, swift};
use crate::engine::Step;
use crate::steps::Ctx;
use anyhow::{bail, Context, Result};

/// The storage servers' units, then the proxy's.
fn units() -> Vec<&'static str> {
    swift::SERVERS.iter().map(|s| s.0).chain([OBJECT_STORE.unit]).collect()
}

pub struct SwiftStep;

impl Step<Ctx> for SwiftStep {
    fn name(&self) -> &'static str {
        "swift"
    }
    fn title(&self) -> &'static str {
        "configure Swift, the object storage with S3"
    }
    fn depends_on(&self) -> &'static [&'static str] {
        &["identity", "messaging", "storage"]
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        Ok(api_started(ctx, &OBJECT_STORE)? && (!has_cloud(ctx)? || units().iter().all(|u| service::is_up_or_starting(u))))
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let root = ctx.root.clone();
        let cp = ctx.plan()?.control_plane.context("a cloud profile's plan has a control plane")?;
        if let Some(missing) = swift::RINGS.iter().find(|r| !root.join(r).is_file()) {
            bail!("/{missing} is missing: the image was built without Swift's rings (images/scripts/openstack.sh makes them)");
        }
        let owner = keys::system_user(&root, "swift")?;
        // The device is the mounted volume (the servers' mount_check refuses
        // anything else); Swift writes into it as its own user.
        let device = root.join(swift::DEVICE_PATH.trim_start_matches('/'));
        std::fs::create_dir_all(&device)?;
        keys::chown(&device, owner)?;
        let hash = swift::swift_conf(&secret(ctx, "swift-hash-prefix")?, &secret(ctx, "swift-hash-suffix")?);
        write_private_conf(&root, swift::SWIFT_CONF, &hash.render(), "swift")?;
        for (unit, conf, app, port) in swift::SERVERS {
            ciab_core::atomic::write_atomic(&root.join(conf), swift::server_conf(app, *port, cp.workers.swift_storage).render().as_bytes())?;
            write_dropin(&root, &format!("{unit}.service"), &service::requires_mounts_dropin(&[swift::DEVICE_PATH]))?;
        }
        let proxy = swift::proxy_conf(&swift::ProxyConf { endpoints: &endpoints(ctx)?, service_password: &secret(ctx, "swift-service")?, processes: cp.workers.swift_proxy });
        write_private_conf(&root, swift::PROXY_CONF, &proxy.render(), "swift")?;
        let units = units();
        service::start_in_background(&units)?;
        println!("ciab-firstboot: swift: {} starting; device {} (one replica), S3 at the front end's root", units.join(", "), swift::DEVICE_PATH);
        set_stamp(ctx, OBJECT_STORE.name)
    }
}
