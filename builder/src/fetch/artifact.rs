//! Artifacts: single files fetched over HTTP(S) or copied from a local path
//! into the blob cache, checked against their sha256.

use super::blobstore::BlobStore;
use crate::oci::digest::Digest;
use crate::spec::ArtifactSpec;
use anyhow::{anyhow, bail, Context, Result};
use futures_util::StreamExt;
use std::io::Write;

/// Makes sure the artifact is in the store; returns its digest and size.
/// Without a pinned sha256 (only `ciab lock` does that) the file is stored
/// under whatever it hashes to.
pub async fn fetch(http: &reqwest::Client, store: &BlobStore, a: &ArtifactSpec, on_bytes: &(dyn Fn(u64) + Sync)) -> Result<(Digest, u64)> {
    let pinned = a.sha256.as_deref().map(Digest::from_hex).map(|d| d.ok_or_else(|| anyhow!("artifact {}: bad sha256", a.dest))).transpose()?;
    if let Some(d) = &pinned {
        if store.contains(d) {
            let size = std::fs::metadata(store.path(d))?.len();
            return Ok((d.clone(), size));
        }
    }
    let what = format!("artifact {} ({})", a.dest, a.url);
    if !(a.url.starts_with("http://") || a.url.starts_with("https://")) {
        let mut f = std::fs::File::open(&a.url).with_context(|| format!("{what}: cannot open the file"))?;
        return match &pinned {
            Some(d) => {
                let size = f.metadata()?.len();
                let mut w = store.writer(d, None, false)?;
                std::io::copy(&mut f, &mut w).with_context(|| format!("{what}: copying"))?;
                on_bytes(size);
                w.commit().map_err(|e| mismatch(&what, e))?;
                Ok((d.clone(), size))
            }
            None => store.ingest(&mut f).with_context(|| format!("{what}: copying")),
        };
    }
    let Some(d) = pinned else {
        let response = get(http, &a.url, 0, &what).await?;
        let bytes = collect(response, &what, on_bytes).await?;
        return store.ingest(&mut bytes.as_slice());
    };
    let mut w = store.writer(&d, None, true)?;
    let response = get(http, &a.url, w.offset(), &what).await?;
    if response.status() != reqwest::StatusCode::PARTIAL_CONTENT && w.offset() > 0 {
        w.restart()?;
    }
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| anyhow!("{what}: download interrupted: {e}"))?;
        w.write_all(&chunk)?;
        on_bytes(chunk.len() as u64);
    }
    w.commit().map_err(|e| mismatch(&what, e))?;
    let size = std::fs::metadata(store.path(&d))?.len();
    Ok((d, size))
}

fn mismatch(what: &str, e: anyhow::Error) -> anyhow::Error {
    anyhow!("{what}: {e}; if the file changed on purpose, run `ciab lock --update` to pin the new sha256")
}

async fn get(http: &reqwest::Client, url: &str, offset: u64, what: &str) -> Result<reqwest::Response> {
    let mut req = http.get(url);
    if offset > 0 {
        req = req.header(reqwest::header::RANGE, format!("bytes={offset}-"));
    }
    let response = req.send().await.with_context(|| what.to_owned())?;
    let status = response.status();
    if !status.is_success() {
        bail!("{what}: the server answered HTTP {status}");
    }
    Ok(response)
}

async fn collect(response: reqwest::Response, what: &str, on_bytes: &(dyn Fn(u64) + Sync)) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| anyhow!("{what}: download interrupted: {e}"))?;
        on_bytes(chunk.len() as u64);
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}
