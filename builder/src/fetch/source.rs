//! Where an image's manifests and blobs come from: a registry (through
//! `oci-client`), or files on disk (an OCI image layout directory, or the
//! blob cache itself for an imported docker-archive).

use super::blobstore::BlobWriter;
use crate::oci::digest::Digest;
use crate::oci::media::{Descriptor, ACCEPTED_MANIFESTS};
use crate::oci::reference::ImageRef;
use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use std::io::{Read, Seek, Write};
use std::path::PathBuf;

/// A registry connection shared by every image of a fetch.
pub struct Registries {
    client: oci_client::Client,
}

impl Registries {
    /// `insecure`: `host:port`s spoken to over plain HTTP (a local test or
    /// mirror registry); every other registry is HTTPS with the system roots.
    pub fn new(insecure: &[String]) -> Registries {
        let config = ClientConfig { protocol: ClientProtocol::HttpsExcept(insecure.to_vec()), ..Default::default() };
        Registries { client: oci_client::Client::new(config) }
    }
}

pub enum Source<'a> {
    Registry { registries: &'a Registries, reference: ImageRef },
    /// Blobs as files named by their hex digest; `top` is what the tag named.
    Files { label: String, blobs_dir: PathBuf, top: Option<Digest> },
}

fn oci_ref(r: &ImageRef, digest: Option<&Digest>) -> oci_client::Reference {
    match (digest, &r.tag) {
        (Some(d), _) => oci_client::Reference::with_digest(r.registry.clone(), r.repository.clone(), d.to_string()),
        (None, Some(t)) => oci_client::Reference::with_tag(r.registry.clone(), r.repository.clone(), t.clone()),
        (None, None) => match &r.digest {
            Some(d) => oci_client::Reference::with_digest(r.registry.clone(), r.repository.clone(), d.clone()),
            None => oci_client::Reference::with_tag(r.registry.clone(), r.repository.clone(), "latest".into()),
        },
    }
}

impl Source<'_> {
    /// Names the source in messages.
    pub fn label(&self) -> String {
        match self {
            Source::Registry { reference, .. } => reference.to_string(),
            Source::Files { label, .. } => label.clone(),
        }
    }

    /// The digest the source's tag currently names (for `ciab lock`).
    pub async fn resolve(&self) -> Result<Digest> {
        match self {
            Source::Registry { registries, reference } => {
                let r = oci_ref(reference, None);
                let d = registries
                    .client
                    .fetch_manifest_digest(&r, &RegistryAuth::Anonymous)
                    .await
                    .with_context(|| format!("resolving {reference}"))?;
                Ok(Digest::parse(&d).with_context(|| format!("registry of {reference} answered digest {d:?}"))?)
            }
            Source::Files { label, top, .. } => top.clone().ok_or_else(|| anyhow!("{label}: no image found to resolve")),
        }
    }

    /// The manifest `d`, checked against its digest.
    pub async fn manifest(&self, d: &Digest) -> Result<Vec<u8>> {
        let bytes = match self {
            Source::Registry { registries, reference } => {
                let r = oci_ref(reference, Some(d));
                let (bytes, _) = registries
                    .client
                    .pull_manifest_raw(&r, &RegistryAuth::Anonymous, ACCEPTED_MANIFESTS)
                    .await
                    .with_context(|| format!("fetching manifest {d} of {reference}"))?;
                bytes.to_vec()
            }
            Source::Files { label, blobs_dir, .. } => {
                let path = blobs_dir.join(d.hex());
                std::fs::read(&path).with_context(|| format!("{label}: manifest {d} is missing ({})", path.display()))?
            }
        };
        let actual = Digest::of(&bytes);
        if &actual != d {
            bail!("{}: manifest {d} does not match its digest: the bytes served hash to {actual}", self.label());
        }
        Ok(bytes)
    }

    /// Streams blob `desc` into `w`, continuing at `w.offset()` when the
    /// source can (a registry answering the Range request with 206).
    /// `on_bytes` hears of every byte that ends up in `w`, kept ones included.
    pub async fn blob(&self, desc: &Descriptor, w: &mut BlobWriter, on_bytes: &(dyn Fn(u64) + Sync)) -> Result<()> {
        match self {
            Source::Registry { registries, reference } => {
                let r = oci_ref(reference, Some(&desc.digest));
                let layer = oci_client::manifest::OciDescriptor {
                    media_type: desc.media_type.clone(),
                    digest: desc.digest.to_string(),
                    size: desc.size as i64,
                    ..Default::default()
                };
                let response = registries
                    .client
                    .pull_blob_stream_partial(&r, &layer, w.offset(), None)
                    .await
                    .with_context(|| format!("fetching blob {} of {reference}", desc.digest))?;
                // Kept bytes count towards progress only once the source agreed to continue.
                let mut stream = match response {
                    BlobResponse::Partial(s) => {
                        on_bytes(w.offset());
                        s
                    }
                    BlobResponse::Full(s) => {
                        if w.offset() > 0 {
                            w.restart()?;
                        }
                        s
                    }
                };
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.with_context(|| format!("fetching blob {} of {reference}", desc.digest))?;
                    w.write_all(&chunk).with_context(|| format!("writing blob {}", desc.digest))?;
                    on_bytes(chunk.len() as u64);
                }
                Ok(())
            }
            Source::Files { label, blobs_dir, .. } => {
                let path = blobs_dir.join(desc.digest.hex());
                let mut f = std::fs::File::open(&path).with_context(|| format!("{label}: blob {} is missing ({})", desc.digest, path.display()))?;
                f.seek(std::io::SeekFrom::Start(w.offset()))?;
                on_bytes(w.offset());
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = f.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
                    if n == 0 {
                        return Ok(());
                    }
                    w.write_all(&buf[..n]).with_context(|| format!("writing blob {}", desc.digest))?;
                    on_bytes(n as u64);
                }
            }
        }
    }
}
