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

use crate::cloud::{self, CloudOnly};
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
        Box::new(CloudOnly(cloud::pki::PkiStep)),
        Box::new(CloudOnly(cloud::database::DatabaseStep)),
        Box::new(CloudOnly(cloud::messaging::MessagingStep)),
        Box::new(CloudOnly(cloud::ovn::OvnStep)),
        Box::new(CloudOnly(cloud::keystone::KeystoneStep)),
        Box::new(CloudOnly(cloud::identity::IdentityStep)),
        Box::new(CloudOnly(cloud::glance::GlanceStep)),
        Box::new(CloudOnly(cloud::placement::PlacementStep)),
        Box::new(CloudOnly(cloud::nova::NovaStep)),
        Box::new(CloudOnly(cloud::neutron::NeutronStep)),
        Box::new(CloudOnly(cloud::cinder::CinderStep)),
        Box::new(CloudOnly(cloud::horizon::HorizonStep)),
        Box::new(CloudOnly(cloud::swift::SwiftStep)),
        Box::new(CloudOnly(cloud::octavia::OctaviaStep)),
        Box::new(CloudOnly(cloud::barbican::BarbicanStep)),
        Box::new(CloudOnly(cloud::frontend::FrontendStep)),
        Box::new(CloudOnly(cloud::apis::ApisStep)),
        Box::new(CloudOnly(cloud::neutron::ExternalNetworkStep)),
        Box::new(CloudOnly(cloud::defaults::FlavorsStep)),
        Box::new(CloudOnly(cloud::defaults::VolumeTypesStep)),
        Box::new(CloudOnly(cloud::defaults::SecurityGroupsStep)),
        Box::new(CloudOnly(cloud::guest_images::GuestImagesStep)),
        Box::new(ReadyStep),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;


    #[test]
    fn every_step_depends_only_on_earlier_steps() {
        let steps = all();
        let names: Vec<&str> = steps.iter().map(|s| s.about().name).collect();
        for (i, s) in steps.iter().enumerate() {
            for d in s.about().after {
                let at = names.iter().position(|n| n == d).unwrap_or(usize::MAX);
                assert!(at < i, "{} depends on {d}, which is not earlier", s.about().name);
            }
        }
        assert_eq!(names, ["discover", "site-config", "plan", "secrets", "storage", "network", "system", "registry", "pki", "database", "messaging", "ovn", "keystone", "identity", "glance", "placement", "nova", "neutron", "cinder", "horizon", "swift", "octavia", "barbican", "frontend", "apis", "external-network", "flavors", "volume-types", "security-groups", "guest-images", "ready"]);
    }
}
