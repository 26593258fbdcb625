//! The SCS defaults a fresh cloud gets through the APIs: scs-0103's
//! mandatory flavors with their extra specs (`flavors`), the volume type
//! described per scs-0114 (`volume-types`) and the default security group
//! rules of scs-0115 (`security-groups`). Each finds what a previous run
//! made and only adds or fixes what is missing.

use super::catalog::{BLOCK_STORAGE, COMPUTE, NETWORK};
use super::cinder::BACKEND;
use super::identity::admin;
use super::rest::{expect, request};
use super::scs::MANDATORY_FLAVORS;
use super::scs;
use crate::ctx::Ctx;
use crate::engine::{About, Step};
use anyhow::{Context, Result};
use serde_json::json;

pub struct FlavorsStep;

impl Step<Ctx> for FlavorsStep {
    fn about(&self) -> About {
        About { name: "flavors", title: "create the SCS standard flavors", after: &["apis"] }
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        Ok(ctx.stamp("flavors").exists())
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let keystone = admin(ctx)?;
        let token = Some(keystone.token());
        let listed = expect(request(COMPUTE.bind, "GET", "/v2.1/flavors?is_public=None", token, None)?, "listing flavors", &[200])?;
        let existing: Vec<&str> = listed.body["flavors"].as_array().into_iter().flatten().filter_map(|f| f["id"].as_str()).collect();
        let mut created = 0;
        for f in MANDATORY_FLAVORS {
            if !existing.contains(&f.name) {
                expect(request(COMPUTE.bind, "POST", "/v2.1/flavors", token, Some(&f.create_body()))?, &format!("creating flavor {}", f.name), &[200])?;
                created += 1;
            }
            let specs = json!({"extra_specs": f.extra_specs()});
            expect(request(COMPUTE.bind, "POST", &format!("/v2.1/flavors/{}/os-extra_specs", f.name), token, Some(&specs))?, &format!("setting the extra specs of {}", f.name), &[200])?;
        }
        tracing::info!("flavors: the {} mandatory flavors of scs-0103 ({created} created), with their scs: extra specs", MANDATORY_FLAVORS.len());
        ctx.set_stamp("flavors")
    }
}

pub struct VolumeTypesStep;

impl Step<Ctx> for VolumeTypesStep {
    fn about(&self) -> About {
        About { name: "volume-types", title: "create the default volume type (scs-0114)", after: &["apis"] }
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        Ok(ctx.stamp("volume-types").exists())
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let keystone = admin(ctx)?;
        let token = Some(keystone.token());
        let types = format!("/v3/{}/types", keystone.project_id());
        let listed = expect(request(BLOCK_STORAGE.bind, "GET", &format!("{types}?is_public=None"), token, None)?, "listing volume types", &[200])?;
        let body = json!({"volume_type": {"name": scs::DEFAULT_VOLUME_TYPE, "description": scs::DEFAULT_VOLUME_TYPE_DESCRIPTION, "os-volume-type-access:is_public": true}});
        let existing = listed.body["volume_types"].as_array().into_iter().flatten().find(|t| t["name"] == scs::DEFAULT_VOLUME_TYPE).and_then(|t| t["id"].as_str()).map(str::to_owned);
        let id = match existing {
            Some(id) => {
                let update = json!({"volume_type": {"description": scs::DEFAULT_VOLUME_TYPE_DESCRIPTION}});
                expect(request(BLOCK_STORAGE.bind, "PUT", &format!("{types}/{id}"), token, Some(&update))?, "describing the volume type", &[200])?;
                id
            }
            None => {
                let created = expect(request(BLOCK_STORAGE.bind, "POST", &types, token, Some(&body))?, "creating the volume type", &[200])?;
                created.body["volume_type"]["id"].as_str().context("Cinder's answer has no volume type id")?.to_owned()
            }
        };
        // Pinned to the one backend, so the scheduler never looks elsewhere.
        let specs = json!({"extra_specs": {"volume_backend_name": BACKEND}});
        expect(request(BLOCK_STORAGE.bind, "POST", &format!("{types}/{id}/extra_specs"), token, Some(&specs))?, "setting the volume type's backend", &[200])?;
        tracing::info!("volume-types: {} (default; backend {BACKEND}): {:?}", scs::DEFAULT_VOLUME_TYPE, scs::DEFAULT_VOLUME_TYPE_DESCRIPTION);
        ctx.set_stamp("volume-types")
    }
}

pub struct SecurityGroupsStep;

const DEFAULT_SG_RULES: &str = "/v2.0/default-security-group-rules";

impl Step<Ctx> for SecurityGroupsStep {
    fn about(&self) -> About {
        About { name: "security-groups", title: "set the default security group rules (scs-0115)", after: &["apis"] }
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        Ok(ctx.stamp("security-groups").exists())
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let keystone = admin(ctx)?;
        let token = Some(keystone.token());
        let listed = expect(request(NETWORK.bind, "GET", DEFAULT_SG_RULES, token, None)?, "listing the default security group rules", &[200])?;
        let rules = listed.body["default_security_group_rules"].as_array().cloned().unwrap_or_default();
        let mut removed = 0;
        for rule in &rules {
            if let Some(why) = scs::sg_rule_violation(rule) {
                let id = rule["id"].as_str().context("a default security group rule without an id")?;
                expect(request(NETWORK.bind, "DELETE", &format!("{DEFAULT_SG_RULES}/{id}"), token, None)?, &format!("removing the default security group rule {id}"), &[204, 404])?;
                tracing::info!("security-groups: removed: {why}");
                removed += 1;
            }
        }
        let mut added = 0;
        for wanted in scs::wanted_sg_rules() {
            if !rules.iter().any(|r| scs::sg_rule_matches(r, &wanted)) {
                let body = json!({"default_security_group_rule": wanted});
                expect(request(NETWORK.bind, "POST", DEFAULT_SG_RULES, token, Some(&body))?, "adding a default security group rule", &[201])?;
                added += 1;
            }
        }
        tracing::info!("security-groups: new groups allow all egress (IPv4, IPv6) and ingress only from the group itself, in default groups only ({removed} removed, {added} added)");
        ctx.set_stamp("security-groups")
    }
}
