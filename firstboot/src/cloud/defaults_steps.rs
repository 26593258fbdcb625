//! The `flavors` step: scs-0103's mandatory flavors with their extra specs,
//! created through Nova's API (a rerun finds them by id and sets the specs
//! again).

use super::catalog::COMPUTE;
use super::rest::{expect, request};
use super::scs::MANDATORY_FLAVORS;
use super::steps::{admin, has_cloud, set_stamp, stamp};
use crate::engine::Step;
use crate::steps::Ctx;
use anyhow::Result;
use serde_json::json;

pub struct FlavorsStep;

impl Step<Ctx> for FlavorsStep {
    fn name(&self) -> &'static str {
        "flavors"
    }
    fn title(&self) -> &'static str {
        "create the SCS standard flavors"
    }
    fn depends_on(&self) -> &'static [&'static str] {
        &["apis"]
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        Ok(!has_cloud(ctx)? || stamp(ctx, "flavors").exists())
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
        println!("ciab-firstboot: flavors: the {} mandatory flavors of scs-0103 ({created} created), with their scs: extra specs", MANDATORY_FLAVORS.len());
        set_stamp(ctx, "flavors")
    }
}
