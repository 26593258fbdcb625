//! The `secrets` step: every secret the profile's services need, made
//! once on this box and kept root-only.

use crate::ctx::Ctx;
use crate::engine::{About, Step};
use crate::model::plan::Profile;
use crate::model::secrets::{complete, ensure};
use anyhow::Result;

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

/// The `secrets` step: every secret the profile needs, made once on this box.
pub struct SecretsStep;

impl Step<Ctx> for SecretsStep {
    fn about(&self) -> About {
        About { name: "secrets", title: "generate this box's secrets", after: &["plan"] }
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        Ok(complete(&ctx.state_dir.join("secrets"), &secret_names(ctx.plan()?.profile)))
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let names = secret_names(ctx.plan()?.profile);
        let created = ensure(&ctx.state_dir.join("secrets"), &names)?;
        tracing::info!("secrets: {created} generated, {} in total, in {}", names.len(), ctx.state_dir.join("secrets").display());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;


    #[test]
    fn cloud_profiles_get_service_secrets_and_volumes() {
        assert_eq!(secret_names(Profile::Tiny), ["machine-secret"]);
        assert!(secret_names(Profile::Eval).contains(&"keystone-admin"));
    }
}
