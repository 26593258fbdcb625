//! The cloud's APIs: what each is called in Keystone's catalog, where it
//! listens on the box, and the path the TLS front end serves it under. The
//! front end's routes, the catalog's endpoints and the final checks all come
//! from this one table.

use crate::ctx::Ctx;
use crate::host::network::management_addresses;
use anyhow::Result;

/// One OpenStack API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Api {
    /// The service's name in the catalog (`glance`).
    pub name: &'static str,
    /// The catalog's service type (`image`).
    pub kind: &'static str,
    /// Path prefix on the front end, and in the public URL (`image`);
    /// empty for the one API at the root (object storage, whose S3 clients
    /// take the endpoint's `scheme://host:port` and nothing else).
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

    /// `path` (starting with `/`) of this API as the front end serves it.
    pub fn front_path(&self, path: &str) -> String {
        if self.prefix.is_empty() {
            path.to_owned()
        } else {
            format!("/{}{path}", self.prefix)
        }
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

/// Swift's proxy, at the root of the front end: Swift's API under `/v1`,
/// S3 (its s3api middleware) at `/`, as scs-0123's check expects of the
/// object-store endpoint's host and port.
pub const OBJECT_STORE: Api = Api {
    name: "swift",
    kind: "object-store",
    prefix: "",
    // Not Swift's usual 8080: the status page has it on every address.
    bind: "127.0.0.1:8888",
    unit: "swift-proxy",
    probe: "/healthcheck",
    description: "OpenStack Object Storage, with S3 at the root",
    service_secret: Some("swift-service"),
    catalog_suffix: "/v1/AUTH_%(project_id)s",
};

pub const LOAD_BALANCER: Api = Api {
    name: "octavia",
    kind: "load-balancer",
    prefix: "load-balancer",
    bind: "127.0.0.1:9876",
    unit: "octavia-api",
    probe: "/",
    description: "OpenStack Load Balancing (OVN provider)",
    service_secret: Some("octavia-service"),
    catalog_suffix: "",
};

pub const KEY_MANAGER: Api = Api {
    name: "barbican",
    kind: "key-manager",
    prefix: "key-manager",
    bind: "127.0.0.1:9311",
    unit: "barbican-api",
    probe: "/",
    description: "OpenStack Key Manager",
    service_secret: Some("barbican-service"),
    catalog_suffix: "",
};

/// The S3 API's own catalog entry: scs-0123 v2 names the type
/// `object-store-s3`; its URL is the proxy's root, the same host and port as
/// Swift's (`kind`, `name`, description).
pub const S3: (&str, &str, &str) = ("object-store-s3", "swift-s3", "S3 API of the object storage (Swift's s3api; EC2 credentials from Keystone)");

/// Every API the box serves, in the order they are brought up.
pub const APIS: &[Api] = &[KEYSTONE, GLANCE, PLACEMENT, COMPUTE, NETWORK, BLOCK_STORAGE, OBJECT_STORE, LOAD_BALANCER, KEY_MANAGER];

/// Where users reach the cloud: the site's public endpoint, or the box's own
/// address on the front end's port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub host: String,
    pub port: u16,
}

impl Endpoints {
    /// The public URL of the API behind `prefix` (`identity`, `compute`,
    /// …); an empty prefix gives the bare `https://host[:port]`.
    pub fn public(&self, prefix: &str) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        let root = if self.port == 443 { format!("https://{host}") } else { format!("https://{host}:{}", self.port) };
        if prefix.is_empty() {
            root
        } else {
            format!("{root}/{prefix}")
        }
    }
}

/// Where users reach the cloud.
pub fn endpoints(ctx: &Ctx) -> Result<Endpoints> {
    let site = ctx.site()?;
    if let Some(p) = &site.public_endpoint {
        return Ok(Endpoints { host: p.host.clone(), port: p.port });
    }
    let host = management_addresses(ctx)?.first().map(|a| a.to_string()).unwrap_or_else(|| site.hostname.clone());
    Ok(Endpoints { host, port: LISTEN_PORT })
}

/// The port HAProxy listens on, whatever the advertised port.
pub const LISTEN_PORT: u16 = 443;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_prefixes_and_ports_are_unique() {
        for (i, a) in APIS.iter().enumerate() {
            for b in &APIS[i + 1..] {
                assert_ne!(a.name, b.name);
                assert_ne!(a.prefix, b.prefix);
                assert_ne!(a.unit, b.unit);
                assert_ne!(a.bind, b.bind);
            }
            assert!(a.bind.starts_with("127.0.0.1:"), "{} listens on loopback only", a.name);
            assert!(a.probe.starts_with('/'));
        }
        assert_eq!(KEYSTONE.bind, super::super::keystone::BIND);
        // Nothing else on the box may hold an API's port: the status page
        // (every address) and the offline registry (loopback). A clash
        // makes the API fail to start while the other answers its probe.
        let taken = [crate::status::DEFAULT_PORT, ciab_core::contract::REGISTRY_ADDR.rsplit(':').next().unwrap().parse().unwrap(), super::super::horizon::BIND.rsplit(':').next().unwrap().parse().unwrap()];
        for a in APIS {
            let port: u16 = a.bind.rsplit(':').next().unwrap().parse().unwrap();
            assert!(!taken.contains(&port), "{} on {} clashes with another service of the box", a.name, a.bind);
        }
        let e = Endpoints { host: "box".into(), port: 443 };
        assert_eq!(GLANCE.public_url(&e), "https://box/image");
        assert_eq!(GLANCE.internal_url(), "http://127.0.0.1:9292");
        let [public, internal] = COMPUTE.catalog_urls(&e);
        assert_eq!(public, ("public", "https://box/compute/v2.1".to_owned()));
        assert_eq!(internal, ("internal", "http://127.0.0.1:8774/v2.1".to_owned()));
        // Object storage sits at the root: S3 clients get the bare host.
        assert_eq!(OBJECT_STORE.public_url(&e), "https://box");
        assert_eq!(OBJECT_STORE.catalog_urls(&e)[0].1, "https://box/v1/AUTH_%(project_id)s");
        assert_eq!((OBJECT_STORE.front_path("/healthcheck"), GLANCE.front_path("/versions")), ("/healthcheck".to_owned(), "/image/versions".to_owned()));
        assert_eq!(APIS.iter().filter(|a| a.prefix.is_empty()).count(), 1, "one API at the root");
    }

    #[test]
    fn public_urls_omit_the_default_port_and_bracket_ipv6() {
        assert_eq!(Endpoints { host: "10.0.2.15".into(), port: 443 }.public("identity"), "https://10.0.2.15/identity");
        assert_eq!(Endpoints { host: "localhost".into(), port: 15443 }.public("compute"), "https://localhost:15443/compute");
        assert_eq!(Endpoints { host: "fd00::1".into(), port: 443 }.public("identity"), "https://[fd00::1]/identity");
        assert_eq!(Endpoints { host: "localhost".into(), port: 15443 }.public(""), "https://localhost:15443");
    }
}
