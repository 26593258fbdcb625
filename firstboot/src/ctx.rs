//! What the first-boot steps share: where the box's root and state are,
//! and what earlier steps learned (the hardware, the site configuration,
//! the plan), with the few questions every step asks of them.

use crate::model::hardware::Hardware;
use crate::model::plan::{ControlPlane, Plan};
use crate::model::site::SiteConfig;
use crate::model::site_source::Found;
use ciab_core::contract::OPENSTACK_SCHEMAS_DIR;
use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

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

    pub fn hw(&self) -> Result<&Hardware> {
        self.hw.as_ref().context("hardware not discovered yet")
    }
    pub fn site(&self) -> Result<&SiteConfig> {
        self.site.as_ref().context("site configuration not read yet")
    }
    pub fn plan(&self) -> Result<&Plan> {
        self.plan.as_ref().context("no plan yet")
    }

    pub fn load<T: DeserializeOwned>(&self, name: &str) -> Option<T> {
        let text = std::fs::read(self.state_dir.join(name)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    pub fn save<T: serde::Serialize>(&self, name: &str, value: &T) -> Result<()> {
        ciab_core::atomic::write_atomic(&self.state_dir.join(name), &serde_json::to_vec_pretty(value)?)
    }

    /// The plan's control plane: every cloud profile's plan has one.
    pub fn control_plane(&self) -> Result<ControlPlane> {
        self.plan()?.control_plane.context("a cloud profile's plan has a control plane")
    }

    /// Whether this box runs the cloud: a cloud profile on an image that
    /// carries it (the builder leaves the OpenStack schemas in cloud images).
    pub fn has_cloud(&self) -> Result<bool> {
        Ok(self.plan()?.profile.has_cloud() && self.root.join(OPENSTACK_SCHEMAS_DIR).is_dir())
    }

    /// One of the box's secrets, made by the `secrets` step.
    pub fn secret(&self, name: &str) -> Result<String> {
        crate::model::secrets::read(&self.state_dir.join("secrets"), name)
    }

    /// The stamp a cloud step leaves when its work is complete.
    pub fn stamp(&self, name: &str) -> PathBuf {
        self.state_dir.join("cloud").join(format!("{name}.done"))
    }

    pub fn set_stamp(&self, name: &str) -> Result<()> {
        let path = self.stamp(name);
        std::fs::create_dir_all(path.parent().context("stamp path")?)?;
        ciab_core::atomic::write_atomic(&path, b"")
    }
}
