//! Keystone's REST API from Rust: one token, one listing of what exists,
//! then find-or-create calls, each idempotent so a step cut by a power loss
//! can simply run again.

use super::rest::{expect, request};
use anyhow::{Context, Result};
use serde_json::{json, Value};
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
