//! Keystone's REST API from Rust: one token, one listing of what exists,
//! then find-or-create calls, each idempotent so a step cut by a power loss
//! can simply run again.

use super::catalog::{KEYSTONE, endpoints};
use super::pki::{fingerprint, pki_of};
use super::rest::{expect, request};
use super::{catalog, keystone};
use crate::ctx::Ctx;
use crate::engine::{About, Step};
use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::collections::HashMap;

/// An admin session against Keystone on loopback.
pub struct Identity {
    addr: String,
    token: String,
    project_id: String,
}

impl Identity {
    /// Logs in as `user` (domain Default) scoped to `project`.
    pub fn login(addr: &str, user: &str, password: &str, project: &str) -> Result<Identity> {
        let body = json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {"name": user, "domain": {"id": "default"}, "password": password}}},
            "scope": {"project": {"name": project, "domain": {"id": "default"}}}
        }});
        let r = expect(request(addr, "POST", "/v3/auth/tokens", None, Some(&body))?, &format!("logging in to Keystone as {user}"), &[201])?;
        let token = r.header("x-subject-token").context("Keystone issued no X-Subject-Token")?.to_owned();
        let project_id = r.body["token"]["project"]["id"].as_str().context("Keystone's token names no project")?.to_owned();
        Ok(Identity { addr: addr.to_owned(), token, project_id })
    }

    /// The session's token, for calls to the other APIs.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The project the token is scoped to (in Cinder's URLs).
    pub fn project_id(&self) -> &str {
        &self.project_id
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>, what: &str, ok: &[u16]) -> Result<Value> {
        Ok(expect(request(&self.addr, method, path, Some(&self.token), body)?, what, ok)?.body)
    }

    /// What Keystone holds now, listed once: the identity step then looks
    /// up every name locally instead of one GET per entity (under TCG each
    /// request costs a Keystone process a second or two).
    pub fn directory(&self) -> Result<Directory<'_>> {
        let list = |path: &str, key: &str| -> Result<Vec<Value>> {
            let v = self.call("GET", path, None, &format!("listing {key}"), &[200])?;
            Ok(v[key].as_array().cloned().unwrap_or_default())
        };
        Ok(Directory {
            identity: self,
            projects: by(&list("/v3/projects?domain_id=default", "projects")?, "name"),
            users: by(&list("/v3/users?domain_id=default", "users")?, "name"),
            roles: by(&list("/v3/roles", "roles")?, "name"),
            services: by(&list("/v3/services", "services")?, "type"),
            endpoints: list("/v3/endpoints", "endpoints")?,
        })
    }
}

/// `field` → id of each entity in `list` (the first one of a name wins, as
/// a filtered GET's first entry did).
fn by(list: &[Value], field: &str) -> HashMap<String, String> {
    let mut map = HashMap::new();
    for e in list {
        if let (Some(k), Some(id)) = (e[field].as_str(), e["id"].as_str()) {
            map.entry(k.to_owned()).or_insert_with(|| id.to_owned());
        }
    }
    map
}

/// Keystone's projects, users, roles, services and endpoints as listed by
/// [`Identity::directory`], kept current as entities are created: find or
/// create, each idempotent so a step cut by a power loss can run again.
/// Clones may work side by side on disjoint entities (one service's
/// entry each).
#[derive(Clone)]
pub struct Directory<'a> {
    identity: &'a Identity,
    projects: HashMap<String, String>,
    users: HashMap<String, String>,
    roles: HashMap<String, String>,
    services: HashMap<String, String>,
    endpoints: Vec<Value>,
}

/// The id under `key` in `known`, or the id of the `kind` Keystone creates
/// at `path` from `body`, then known too.
fn find_or_create(identity: &Identity, known: &mut HashMap<String, String>, key: &str, path: &str, kind: &str, body: Value, what: &str) -> Result<String> {
    if let Some(id) = known.get(key) {
        return Ok(id.clone());
    }
    let v = identity.call("POST", path, Some(&body), what, &[201])?;
    let id = v[kind]["id"].as_str().map(str::to_owned).with_context(|| format!("Keystone returned no {kind} id ({what})"))?;
    known.insert(key.to_owned(), id.clone());
    Ok(id)
}

impl Directory<'_> {
    /// The project `name` in the Default domain, created if missing.
    pub fn ensure_project(&mut self, name: &str, description: &str) -> Result<String> {
        let body = json!({"project": {"name": name, "domain_id": "default", "description": description, "enabled": true}});
        find_or_create(self.identity, &mut self.projects, name, "/v3/projects", "project", body, &format!("creating project {name}"))
    }

    /// The user `name` in the Default domain with `password`: created if
    /// missing, its password set again if it exists (a rerun after a power
    /// cut must leave it matching the secret).
    pub fn ensure_user(&mut self, name: &str, password: &str, default_project: &str) -> Result<String> {
        if let Some(id) = self.users.get(name) {
            self.identity.call("PATCH", &format!("/v3/users/{id}"), Some(&json!({"user": {"password": password, "default_project_id": default_project}})), &format!("updating user {name}"), &[200])?;
            return Ok(id.clone());
        }
        let body = json!({"user": {"name": name, "domain_id": "default", "password": password, "default_project_id": default_project, "enabled": true}});
        find_or_create(self.identity, &mut self.users, name, "/v3/users", "user", body, &format!("creating user {name}"))
    }

    /// The role `name`, created if missing (bootstrap makes admin, member and reader).
    pub fn ensure_role(&mut self, name: &str) -> Result<String> {
        find_or_create(self.identity, &mut self.roles, name, "/v3/roles", "role", json!({"role": {"name": name}}), &format!("creating role {name}"))
    }

    /// Grants `role` on `project` to `user` (a no-op when already granted).
    pub fn grant(&self, project: &str, user: &str, role: &str) -> Result<()> {
        self.identity.call("PUT", &format!("/v3/projects/{project}/users/{user}/roles/{role}"), None, "granting a role", &[204]).map(|_| ())
    }

    /// The catalog's service of type `kind`, created if missing.
    pub fn ensure_service(&mut self, kind: &str, name: &str, description: &str) -> Result<String> {
        let body = json!({"service": {"type": kind, "name": name, "description": description, "enabled": true}});
        find_or_create(self.identity, &mut self.services, kind, "/v3/services", "service", body, &format!("creating the {kind} service"))
    }

    /// The service's endpoint on `interface` in `region` at `url`: created
    /// if missing, its URL corrected if it changed (a new public endpoint in
    /// site.toml).
    pub fn ensure_endpoint(&mut self, service: &str, interface: &str, region: &str, url: &str) -> Result<()> {
        let what = format!("the {interface} endpoint {url}");
        let existing = self.endpoints.iter_mut().find(|e| e["service_id"] == service && e["interface"] == interface && e["region_id"] == region);
        if let Some(e) = existing {
            if e["url"].as_str() != Some(url) {
                let id = e["id"].as_str().context("Keystone listed an endpoint without id")?.to_owned();
                self.identity.call("PATCH", &format!("/v3/endpoints/{id}"), Some(&json!({"endpoint": {"url": url}})), &format!("updating {what}"), &[200])?;
                e["url"] = json!(url);
            }
            return Ok(());
        }
        let body = json!({"endpoint": {"service_id": service, "interface": interface, "region_id": region, "url": url, "enabled": true}});
        let v = self.identity.call("POST", "/v3/endpoints", Some(&body), &format!("creating {what}"), &[201])?;
        self.endpoints.push(v["endpoint"].clone());
        Ok(())
    }
}

/// A session as the cloud's `admin` in project `admin`, through Keystone on loopback.
pub fn admin(ctx: &Ctx) -> Result<Identity> {
    Identity::login(KEYSTONE.bind, "admin", &ctx.secret("keystone-admin")?, "admin")
}

pub fn admin_token(ctx: &Ctx) -> Result<String> {
    Ok(admin(ctx)?.token().to_owned())
}

const CLOUDS_YAML: &str = "root/.config/openstack/clouds.yaml";

/// The non-admin project and its member user, for people using the cloud.
pub const MEMBER_PROJECT: &str = "demo";

pub const MEMBER_USER: &str = "demo";

/// Where the services' own users live.
pub const SERVICE_PROJECT: &str = "service";

/// What the status page shows about the cloud: names and places, no secret.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CloudSummary {
    pub identity_url: String,
    /// Horizon's login page; empty in a summary written before Horizon was added.
    #[serde(default)]
    pub dashboard_url: String,
    pub region: String,
    pub ca_fingerprint: String,
    pub users: Vec<(String, String)>,
    pub credentials: String,
}

/// One service of the catalog as the identity step registers it.
struct CatalogEntry {
    kind: &'static str,
    name: &'static str,
    description: &'static str,
    /// (interface, URL) of each endpoint.
    urls: Vec<(&'static str, String)>,
    /// The service user's password, for a service that has one.
    password: Option<String>,
}

impl CatalogEntry {
    fn register(&self, directory: &mut Directory<'_>, service_project: &str, service_roles: &[String]) -> Result<()> {
        let id = directory.ensure_service(self.kind, self.name, self.description)?;
        for (interface, url) in &self.urls {
            directory.ensure_endpoint(&id, interface, keystone::REGION, url)?;
        }
        if let Some(password) = &self.password {
            let user = directory.ensure_user(self.name, password, service_project)?;
            for role in service_roles {
                directory.grant(service_project, &user, role)?;
            }
        }
        Ok(())
    }
}

/// Projects, users and roles through Keystone's API, and root's clouds.yaml.
pub struct IdentityStep;

impl Step<Ctx> for IdentityStep {
    fn about(&self) -> About {
        About { name: "identity", title: "create the projects and users", after: &["keystone"] }
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        Ok(ctx.stamp("identity").exists() && ctx.root.join(CLOUDS_YAML).exists())
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let admin_pw = ctx.secret("keystone-admin")?;
        let member_pw = ctx.secret("demo-password")?;
        let session = Identity::login(keystone::BIND, "admin", &admin_pw, "admin")?;
        let mut directory = session.directory()?;
        let service_project = directory.ensure_project(SERVICE_PROJECT, "The cloud's own services")?;
        let project = directory.ensure_project(MEMBER_PROJECT, "A project for trying the cloud out")?;
        let user = directory.ensure_user(MEMBER_USER, &member_pw, &project)?;
        let member = directory.ensure_role("member")?;
        directory.grant(&project, &user, &member)?;
        let endpoints = endpoints(ctx)?;
        // Token validation and Nova's calls to Placement need `service`;
        // `admin` lets services act across projects as upstream's guides set up.
        let service_roles = [directory.ensure_role("admin")?, directory.ensure_role("service")?];
        // Each API: its service, its endpoints and its service user. S3
        // sits at the root of object storage's host and port, under its own
        // type, without a user of its own.
        let mut entries: Vec<CatalogEntry> = Vec::new();
        for api in catalog::APIS {
            let password = api.service_secret.map(|name| ctx.secret(name)).transpose()?;
            entries.push(CatalogEntry { kind: api.kind, name: api.name, description: api.description, urls: api.catalog_urls(&endpoints).to_vec(), password });
        }
        let (kind, name, description) = catalog::S3;
        let urls = vec![("public", catalog::OBJECT_STORE.public_url(&endpoints)), ("internal", catalog::OBJECT_STORE.internal_url())];
        entries.push(CatalogEntry { kind, name, description, urls, password: None });
        // Two at a time, one per Keystone process: the calls are
        // independent (a service, its endpoints and its user each), and
        // under TCG one process answers one call in a second or two.
        let half = entries.len().div_ceil(2).max(1);
        std::thread::scope(|scope| -> Result<()> {
            let workers: Vec<_> = entries
                .chunks(half)
                .map(|chunk| {
                    let mut directory = directory.clone();
                    let (service_project, service_roles) = (&service_project, &service_roles);
                    scope.spawn(move || chunk.iter().try_for_each(|entry| entry.register(&mut directory, service_project, service_roles)))
                })
                .collect();
            for worker in workers {
                worker.join().map_err(|_| anyhow::anyhow!("a thread registering the catalog panicked"))??;
            }
            Ok(())
        })?;
        let registered: Vec<&str> = entries.iter().map(|e| e.kind).collect();
        let pki = pki_of(ctx);
        let clouds = [
            keystone::CloudEntry { name: "admin".into(), user: "admin".into(), password: admin_pw, project: "admin".into() },
            keystone::CloudEntry { name: MEMBER_PROJECT.into(), user: MEMBER_USER.into(), password: member_pw, project: MEMBER_PROJECT.into() },
        ];
        let path = ctx.root.join(CLOUDS_YAML);
        std::fs::create_dir_all(path.parent().context("parent")?)?;
        ciab_core::atomic::write_atomic_mode(&path, keystone::clouds_yaml(&endpoints, &clouds, &pki.ca_cert().display().to_string()).as_bytes(), 0o600)?;
        let summary = CloudSummary {
            identity_url: endpoints.public("identity"),
            dashboard_url: endpoints.public(&format!("{}/", super::horizon::WEBROOT.trim_start_matches('/'))),
            region: keystone::REGION.into(),
            ca_fingerprint: fingerprint(&std::fs::read_to_string(pki.ca_cert())?)?,
            users: vec![("admin".into(), "admin".into()), (MEMBER_USER.into(), format!("member of {MEMBER_PROJECT}"))],
            credentials: format!("/{CLOUDS_YAML} on the box (root only): clouds admin and {MEMBER_PROJECT}"),
        };
        ciab_core::atomic::write_atomic(&ctx.state_dir.join(CLOUD_SUMMARY), &serde_json::to_vec_pretty(&summary)?)?;
        tracing::info!("identity: projects {SERVICE_PROJECT} and {MEMBER_PROJECT}, user {MEMBER_USER} (member); credentials in /{CLOUDS_YAML}");
        tracing::info!("identity: catalog: {}", registered.join(", "));
        ctx.set_stamp("identity")
    }
}

/// The cloud's summary beside the journal, for the status page.
pub const CLOUD_SUMMARY: &str = "cloud.json";

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn a_listing_is_indexed_by_name_first_entry_winning() {
        let list = [json!({"id": "a1", "name": "demo"}), json!({"id": "a2", "name": "demo"}), json!({"id": "b", "name": "service"}), json!({"name": "no-id"})];
        let map = super::by(&list, "name");
        assert_eq!(map.get("demo").map(String::as_str), Some("a1"));
        assert_eq!(map.get("service").map(String::as_str), Some("b"));
        assert_eq!(map.len(), 2);
    }
}
