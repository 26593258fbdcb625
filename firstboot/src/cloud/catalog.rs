//! The cloud's APIs: what each is called in Keystone's catalog, where it
//! listens on the box, and the path the TLS front end serves it under. The
//! front end's routes, the catalog's endpoints and the final checks all come
//! from this one table.

use super::Endpoints;

/// One OpenStack API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Api {
    /// The service's name in the catalog (`glance`).
    pub name: &'static str,
    /// The catalog's service type (`image`).
    pub kind: &'static str,
    /// Path prefix on the front end, and in the public URL (`image`).
    pub prefix: &'static str,
    /// `host:port` on loopback, which is also the internal endpoint.
    pub bind: &'static str,
    /// The systemd unit serving it.
    pub unit: &'static str,
    /// A path that answers without a token once the API is up.
    pub probe: &'static str,
    pub description: &'static str,
    /// The secret holding its Keystone service user's password; the user is
    /// named like the service. `None` for Keystone itself.
    pub service_secret: Option<&'static str>,
    /// Appended to the root URL in the catalog (`/v2.1` for Nova, whose
    /// clients expect the versioned URL there).
    pub catalog_suffix: &'static str,
}

impl Api {
    /// What services on the box use: plain HTTP on loopback.
    pub fn internal_url(&self) -> String {
        format!("http://{}", self.bind)
    }

    /// The API's root through the front end.
    pub fn public_url(&self, endpoints: &Endpoints) -> String {
        endpoints.public(self.prefix)
    }

    /// The catalog's public and internal URLs.
    pub fn catalog_urls(&self, endpoints: &Endpoints) -> [(&'static str, String); 2] {
        [("public", format!("{}{}", self.public_url(endpoints), self.catalog_suffix)), ("internal", format!("{}{}", self.internal_url(), self.catalog_suffix))]
    }
}

pub const KEYSTONE: Api = Api {
    name: "keystone",
    kind: "identity",
    prefix: "identity",
    bind: "127.0.0.1:5000",
    unit: "keystone",
    probe: "/v3",
    description: "OpenStack Identity",
    service_secret: None,
    catalog_suffix: "",
};

pub const GLANCE: Api = Api {
    name: "glance",
    kind: "image",
    prefix: "image",
    bind: "127.0.0.1:9292",
    unit: "glance-api",
    probe: "/versions",
    description: "OpenStack Image",
    service_secret: Some("glance-service"),
    catalog_suffix: "",
};

pub const PLACEMENT: Api = Api {
    name: "placement",
    kind: "placement",
    prefix: "placement",
    bind: "127.0.0.1:8778",
    unit: "placement-api",
    probe: "/",
    description: "OpenStack Placement",
    service_secret: Some("placement-service"),
    catalog_suffix: "",
};

pub const COMPUTE: Api = Api {
    name: "nova",
    kind: "compute",
    prefix: "compute",
    bind: "127.0.0.1:8774",
    unit: "nova-api",
    probe: "/",
    description: "OpenStack Compute",
    service_secret: Some("nova-service"),
    catalog_suffix: "/v2.1",
};

pub const NETWORK: Api = Api {
    name: "neutron",
    kind: "network",
    prefix: "network",
    bind: "127.0.0.1:9696",
    unit: "neutron-api",
    probe: "/",
    description: "OpenStack Networking",
    service_secret: Some("neutron-service"),
    catalog_suffix: "",
};

pub const BLOCK_STORAGE: Api = Api {
    name: "cinder",
    kind: "block-storage",
    prefix: "volume",
    bind: "127.0.0.1:8776",
    unit: "cinder-api",
    probe: "/",
    description: "OpenStack Block Storage",
    service_secret: Some("cinder-service"),
    // Keystone fills in the project: clients of every age find the v3
    // API there.
    catalog_suffix: "/v3/%(project_id)s",
};

/// Every API the box serves, in the order they are brought up.
pub const APIS: &[Api] = &[KEYSTONE, GLANCE, PLACEMENT, COMPUTE, NETWORK, BLOCK_STORAGE];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_prefixes_and_ports_are_unique() {
        for (i, a) in APIS.iter().enumerate() {
            for b in &APIS[i + 1..] {
                assert_ne!(a.name, b.name);
                assert_ne!(a.prefix, b.prefix);
                assert_ne!(a.bind, b.bind);
            }
            assert!(a.bind.starts_with("127.0.0.1:"), "{} listens on loopback only", a.name);
            assert!(a.probe.starts_with('/'));
        }
        assert_eq!(KEYSTONE.bind, super::super::keystone::BIND);
        let e = Endpoints { host: "box".into(), port: 443 };
        assert_eq!(GLANCE.public_url(&e), "https://box/image");
        assert_eq!(GLANCE.internal_url(), "http://127.0.0.1:9292");
        let [public, internal] = COMPUTE.catalog_urls(&e);
        assert_eq!(public, ("public", "https://box/compute/v2.1".to_owned()));
        assert_eq!(internal, ("internal", "http://127.0.0.1:8774/v2.1".to_owned()));
    }
}
