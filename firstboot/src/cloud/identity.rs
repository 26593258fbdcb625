//! Keystone's REST API from Rust: one token, then find-or-create calls, each
//! idempotent so a step cut by a power loss can simply run again.

use super::rest::{expect, request};
use anyhow::{Context, Result};
use serde_json::{json, Value};

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

    /// The id of the one entity `list[key]` returned by `path`, if any.
    fn find(&self, path: &str, key: &str, what: &str) -> Result<Option<String>> {
        let v = self.call("GET", path, None, what, &[200])?;
        Ok(v[key].as_array().and_then(|a| a.first()).and_then(|e| e["id"].as_str()).map(str::to_owned))
    }

    /// The project `name` in the Default domain, created if missing.
    pub fn ensure_project(&self, name: &str, description: &str) -> Result<String> {
        if let Some(id) = self.find(&format!("/v3/projects?domain_id=default&name={name}"), "projects", &format!("looking up project {name}"))? {
            return Ok(id);
        }
        let v = self.call("POST", "/v3/projects", Some(&json!({"project": {"name": name, "domain_id": "default", "description": description, "enabled": true}})), &format!("creating project {name}"), &[201])?;
        v["project"]["id"].as_str().map(str::to_owned).context("Keystone returned no project id")
    }

    /// The user `name` in the Default domain with `password`: created if
    /// missing, its password set again if it exists (a rerun after a power
    /// cut must leave it matching the secret).
    pub fn ensure_user(&self, name: &str, password: &str, default_project: &str) -> Result<String> {
        if let Some(id) = self.find(&format!("/v3/users?domain_id=default&name={name}"), "users", &format!("looking up user {name}"))? {
            self.call("PATCH", &format!("/v3/users/{id}"), Some(&json!({"user": {"password": password, "default_project_id": default_project}})), &format!("updating user {name}"), &[200])?;
            return Ok(id);
        }
        let body = json!({"user": {"name": name, "domain_id": "default", "password": password, "default_project_id": default_project, "enabled": true}});
        let v = self.call("POST", "/v3/users", Some(&body), &format!("creating user {name}"), &[201])?;
        v["user"]["id"].as_str().map(str::to_owned).context("Keystone returned no user id")
    }

    /// The role `name`, created if missing (bootstrap makes admin, member and reader).
    pub fn ensure_role(&self, name: &str) -> Result<String> {
        if let Some(id) = self.find(&format!("/v3/roles?name={name}"), "roles", &format!("looking up role {name}"))? {
            return Ok(id);
        }
        let v = self.call("POST", "/v3/roles", Some(&json!({"role": {"name": name}})), &format!("creating role {name}"), &[201])?;
        v["role"]["id"].as_str().map(str::to_owned).context("Keystone returned no role id")
    }

    /// Grants `role` on `project` to `user` (a no-op when already granted).
    pub fn grant(&self, project: &str, user: &str, role: &str) -> Result<()> {
        self.call("PUT", &format!("/v3/projects/{project}/users/{user}/roles/{role}"), None, "granting a role", &[204]).map(|_| ())
    }

    /// The catalog's service of type `kind`, created if missing.
    pub fn ensure_service(&self, kind: &str, name: &str, description: &str) -> Result<String> {
        if let Some(id) = self.find(&format!("/v3/services?type={kind}"), "services", &format!("looking up the {kind} service"))? {
            return Ok(id);
        }
        let body = json!({"service": {"type": kind, "name": name, "description": description, "enabled": true}});
        let v = self.call("POST", "/v3/services", Some(&body), &format!("creating the {kind} service"), &[201])?;
        v["service"]["id"].as_str().map(str::to_owned).context("Keystone returned no service id")
    }

    /// The service's endpoint on `interface` in `region` at `url`: created
    /// if missing, its URL corrected if it changed (a new public endpoint in
    /// site.toml).
    pub fn ensure_endpoint(&self, service: &str, interface: &str, region: &str, url: &str) -> Result<()> {
        let what = format!("the {interface} endpoint {url}");
        let v = self.call("GET", &format!("/v3/endpoints?service_id={service}&interface={interface}&region_id={region}"), None, &format!("looking up {what}"), &[200])?;
        if let Some(e) = v["endpoints"].as_array().and_then(|a| a.first()) {
            if e["url"].as_str() != Some(url) {
                let id = e["id"].as_str().context("Keystone returned an endpoint without id")?;
                self.call("PATCH", &format!("/v3/endpoints/{id}"), Some(&json!({"endpoint": {"url": url}})), &format!("updating {what}"), &[200])?;
            }
            return Ok(());
        }
        let body = json!({"endpoint": {"service_id": service, "interface": interface, "region_id": region, "url": url, "enabled": true}});
        self.call("POST", "/v3/endpoints", Some(&body), &format!("creating {what}"), &[201]).map(|_| ())
    }
}
