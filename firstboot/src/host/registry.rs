//! The offline registry on the box: is Debian's `docker-registry` serving
//! every image the bundle's index lists, by digest, on its loopback address?
//! (Configured by `overlays/registry`; the store is the read-only bundle.)

use crate::ctx::Ctx;
use crate::engine::{About, Step};
use crate::http::Client;
use ciab_core::contract::{BundleIndex, BUNDLE_INDEX_FILE, BUNDLE_MOUNTPOINT, REGISTRY_ADDR};
use ciab_core::wait::{wait_until, Poll};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::sync::LazyLock;
use std::time::Duration;

pub const UNIT: &str = "docker-registry.service";

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
                      application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// 2 s to connect, 10 s for each read: the registry is on loopback.
static CLIENT: LazyLock<Client> = LazyLock::new(|| Client::new(Duration::from_secs(2), Duration::from_secs(10)));

/// The bundle's index under `root`, or `None` for an image without a bundle.
pub fn bundle_index(root: &Path) -> Result<Option<BundleIndex>> {
    let path = root.join(BUNDLE_MOUNTPOINT.trim_start_matches('/')).join(BUNDLE_INDEX_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The registry path of a bundle reference: `registry/repository` without the tag.
pub fn repository(reference: &str) -> &str {
    match reference.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => name,
        _ => reference,
    }
}

/// Checks that the registry at `addr` answers and serves each image's
/// manifest under its pinned digest.
pub fn probe(addr: &str, index: &BundleIndex) -> Result<()> {
    let (status, _) = request(addr, "GET", "/v2/")?;
    if status != 200 {
        bail!("GET http://{addr}/v2/ answered HTTP {status}");
    }
    for image in &index.images {
        let path = format!("/v2/{}/manifests/{}", repository(&image.reference), image.digest);
        let (status, digest) = request(addr, "HEAD", &path)?;
        if status != 200 {
            bail!("{} is not served: HEAD {path} answered HTTP {status}", image.reference);
        }
        if digest.as_deref() != Some(image.digest.as_str()) {
            bail!("{} is served with digest {digest:?}, the bundle pins {}", image.reference, image.digest);
        }
    }
    Ok(())
}

/// One request; returns the status and the Docker-Content-Digest header.
fn request(addr: &str, method: &str, path: &str) -> Result<(u16, Option<String>)> {
    let a = CLIENT.send(method, addr, path, &[("Accept", ACCEPT)], &[])?;
    Ok((a.status, a.header("docker-content-digest").map(str::to_owned)))
}

/// The offline registry serves the bundle: started by its unit once the
/// bundle is mounted; this step waits for it and checks every image the
/// bundle lists, so `ready` means the images are pullable.
pub struct RegistryStep;

/// How long `docker-registry` may take to answer (a Go binary under TCG
/// starts in seconds; the bundle mount may wait for a slow udev).
const REGISTRY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(180);

impl Step<Ctx> for RegistryStep {
    fn about(&self) -> About {
        About { name: "registry", title: "serve the offline registry", after: &[] }
    }
    fn check(&self, ctx: &mut Ctx) -> Result<bool> {
        Ok(match bundle_index(&ctx.root)? {
            Some(index) if !index.images.is_empty() => probe(REGISTRY_ADDR, &index).is_ok(),
            _ => true,
        })
    }
    fn apply(&self, ctx: &mut Ctx) -> Result<()> {
        let index = bundle_index(&ctx.root)?.context("the bundle index disappeared")?;
        ciab_core::exec::Cmd::new("systemctl").package("systemd").args(["start", UNIT]).run()?;
        let waited = wait_until(REGISTRY_TIMEOUT, Duration::from_millis(250), || {
            Ok(match probe(REGISTRY_ADDR, &index) {
                Ok(()) => Poll::Ready(()),
                Err(e) => Poll::Pending(e),
            })
        })?;
        if let Err(timeout) = waited {
            let e = timeout.last;
            let log = ciab_core::exec::Cmd::new("journalctl").args(["-u", UNIT, "-n", "5", "--no-pager", "-o", "cat"]).run().unwrap_or_default();
            bail!("the offline registry does not serve the bundle after {} s: {e:#}\n{}", REGISTRY_TIMEOUT.as_secs(), log.trim_end());
        }
        tracing::info!("registry: {} image(s) served on http://{}", index.images.len(), REGISTRY_ADDR);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ciab_core::contract::BundleImage;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// Answers each connection with the next canned response head.
    fn serve(answers: Vec<&'static str>) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for a in answers {
                let (mut c, _) = l.accept().unwrap();
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.ends_with(b"\r\n\r\n") {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = c.write_all(a.as_bytes());
            }
        });
        addr
    }

    fn index(digest: &str) -> BundleIndex {
        BundleIndex { schema: 1, images: vec![BundleImage { reference: "registry.k8s.io/pause:3.10".into(), digest: digest.into() }], artifacts: vec![], guest_images: vec![] }
    }

    #[test]
    fn probe_checks_every_image_digest() {
        let d = format!("sha256:{}", "a".repeat(64));
        let ok: &'static str = Box::leak(format!("HTTP/1.1 200 OK\r\nDocker-Content-Digest: {d}\r\n\r\n").into_boxed_str());
        let addr = serve(vec!["HTTP/1.1 200 OK\r\n\r\n{}", ok]);
        probe(&addr, &index(&d)).unwrap();

        let other: &'static str = Box::leak(format!("HTTP/1.1 200 OK\r\ndocker-content-digest: sha256:{}\r\n\r\n", "b".repeat(64)).into_boxed_str());
        let addr = serve(vec!["HTTP/1.1 200 OK\r\n\r\n", other]);
        let err = probe(&addr, &index(&d)).unwrap_err().to_string();
        assert!(err.contains("registry.k8s.io/pause:3.10 is served with digest"), "{err}");

        let addr = serve(vec!["HTTP/1.1 200 OK\r\n\r\n", "HTTP/1.1 404 Not Found\r\n\r\n"]);
        let err = probe(&addr, &index(&d)).unwrap_err().to_string();
        assert!(err.contains(&format!("HEAD /v2/registry.k8s.io/pause/manifests/{d} answered HTTP 404")), "{err}");

        let addr = serve(vec!["HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\n\r\n{}"]);
        let err = probe(&addr, &index(&d)).unwrap_err().to_string();
        assert_eq!(err, format!("GET http://{addr}/v2/ answered HTTP 503"));
    }

    #[test]
    fn repositories_drop_the_tag_only() {
        assert_eq!(repository("registry.k8s.io/pause:3.10"), "registry.k8s.io/pause");
        assert_eq!(repository("127.0.0.1:5050/x/y"), "127.0.0.1:5050/x/y");
    }

    #[test]
    fn no_bundle_means_nothing_to_serve() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(bundle_index(dir.path()).unwrap(), None);
    }
}
