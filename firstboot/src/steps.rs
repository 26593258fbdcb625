//! Every first-boot step, in the order they run (each also names the steps
//! it depends on; the engine checks the order against them). The README's
//! "Adding a first-boot step" says where a new one goes.
//!
//! discover → site-config → plan → secrets → storage → network → system →
//! registry → (the cloud's, one file per service in `cloud`: pki → database
//! → messaging → ovn → keystone → identity → glance → placement → nova →
//! neutron → cinder → horizon → swift → octavia → barbican → frontend → apis
//! → external-network → flavors → volume-types → security-groups →
//! guest-images) → ready.
//!
//! Each step keeps what it learned under the state directory (as JSON), so a
//! run resumed after a power cut picks it up in `check()` instead of redoing
//! it.

use crate::ctx::Ctx;
use crate::engine::Step;
use crate::host::{discover::DiscoverStep, network::NetworkStep, plan::PlanStep, ready::ReadyStep, registry::RegistryStep, secrets::SecretsStep, site_config::SiteConfigStep, storage::StorageStep, system::SystemStep};

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
        Box::new(crate::cloud::pki::PkiStep),
        Box::new(crate::cloud::database::DatabaseStep),
        Box::new(crate::cloud::messaging::MessagingStep),
        Box::new(crate::cloud::ovn::OvnStep),
        Box::new(crate::cloud::keystone::KeystoneStep),
        Box::new(crate::cloud::identity::IdentityStep),
        Box::new(crate::cloud::glance::GlanceStep),
        Box::new(crate::cloud::placement::PlacementStep),
        Box::new(crate::cloud::nova::NovaStep),
        Box::new(crate::cloud::neutron::NeutronStep),
        Box::new(crate::cloud::cinder::CinderStep),
        Box::new(crate::cloud::horizon::HorizonStep),
        Box::new(crate::cloud::swift::SwiftStep),
        Box::new(crate::cloud::octavia::OctaviaStep),
        Box::new(crate::cloud::barbican::BarbicanStep),
        Box::new(crate::cloud::frontend::FrontendStep),
        Box::new(crate::cloud::apis::ApisStep),
        Box::new(crate::cloud::neutron::ExternalNetworkStep),
        Box::new(crate::cloud::defaults::FlavorsStep),
        Box::new(crate::cloud::defaults::VolumeTypesStep),
        Box::new(crate::cloud::defaults::SecurityGroupsStep),
        Box::new(crate::cloud::guest_images::GuestImagesStep),
        Box::new(ReadyStep),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;


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
}
