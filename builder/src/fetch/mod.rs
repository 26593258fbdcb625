//! The one online step: bringing every container image and artifact a spec
//! names into the content-addressed blob cache. Everything after it (the
//! bundle stage, the image, the box) works offline from that cache.
//!
//! Manifests are fetched by digest and checked; an index contributes only
//! the platforms the spec asks for (the index itself keeps its upstream
//! digest). Blobs are downloaded concurrently (bounded), verified while
//! streaming, and resumed after an interruption.

pub mod archive;
pub mod artifact;
pub mod blobstore;
pub mod layout;
pub mod source;

use crate::oci::digest::Digest;
use crate::oci::distribution::RepoContent;
use crate::oci::media::{Descriptor, Document};
use crate::oci::platform::Platform;
use crate::oci::reference::ImageRef;
use crate::spec::{ArtifactSpec, ImageSource, ImageSpec};
use anyhow::{anyhow, bail, Context, Result};
use blobstore::BlobStore;
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use source::{Registries, Source};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

/// How a fetch talks to the network.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// `host:port`s of registries spoken to over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Downloads in flight at once.
    pub jobs: usize,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions { insecure_registries: Vec::new(), jobs: 4 }
    }
}

/// Attempts per blob before a fetch gives up; each resumes where the last stopped.
const ATTEMPTS: u32 = 3;

/// An image whose manifests and blobs are all in the cache.
#[derive(Debug, Clone)]
pub struct FetchedImage {
    pub reference: String,
    pub content: RepoContent,
}

pub struct Fetcher {
    store: BlobStore,
    registries: Registries,
    http: reqwest::Client,
    runtime: tokio::runtime::Runtime,
    jobs: usize,
}

impl Fetcher {
    pub fn new(cache_root: &Path, opts: &FetchOptions) -> Result<Fetcher> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")?;
        let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(30)).build().context("creating the HTTP client")?;
        Ok(Fetcher { store: BlobStore::open(cache_root)?, registries: Registries::new(&opts.insecure_registries), http, runtime, jobs: opts.jobs.max(1) })
    }

    pub fn store(&self) -> &BlobStore {
        &self.store
    }

    fn open_source(&self, image: &ImageSpec) -> Result<Source<'_>> {
        Ok(match &image.source {
            ImageSource::Registry { reference } => Source::Registry { registries: &self.registries, reference: ImageRef::parse(reference)? },
            ImageSource::OciLayout { path, tag } => Source::Files {
                label: format!("OCI layout {}", path.display()),
                blobs_dir: path.join("blobs/sha256"),
                top: Some(layout::open(path, tag.as_deref())?),
            },
            ImageSource::DockerArchive { path } => Source::Files {
                label: format!("docker archive {}", path.display()),
                blobs_dir: self.store.dir(),
                top: Some(archive::import(path, &self.store, &image.reference)?),
            },
        })
    }

    /// The digest the image's source names now (`ciab lock`).
    pub fn resolve_image(&self, image: &ImageSpec) -> Result<Digest> {
        let source = self.open_source(image).with_context(|| format!("resolving {}", image.reference))?;
        self.runtime.block_on(source.resolve())
    }

    /// Brings every image into the cache; fails naming the image and what
    /// was expected when anything is missing, unreachable or corrupt.
    pub fn images(&self, images: &[ImageSpec]) -> Result<Vec<FetchedImage>> {
        let mut sources: Vec<Option<Source>> = images.iter().map(|_| None).collect();
        let mut fetched = Vec::new();
        let mut missing: BTreeMap<Digest, (usize, Descriptor)> = BTreeMap::new();
        for (i, image) in images.iter().enumerate() {
            let (content, blobs) = self
                .walk(image, &mut sources[i])
                .with_context(|| format!("image {}@{}", image.reference, image.digest.as_deref().unwrap_or("?")))?;
            for b in &blobs {
                if !self.store.contains(&b.digest) {
                    missing.entry(b.digest.clone()).or_insert((i, b.clone()));
                }
            }
            fetched.push(FetchedImage { reference: image.reference.clone(), content });
        }
        for (i, _) in missing.values() {
            if sources[*i].is_none() {
                sources[*i] = Some(self.open_source(&images[*i]).with_context(|| format!("image {}", images[*i].reference))?);
            }
        }
        let jobs: Vec<(&Source, &Descriptor, &str)> = missing
            .values()
            .filter_map(|(i, d)| sources[*i].as_ref().map(|s| (s, d, images[*i].reference.as_str())))
            .collect();
        self.download(&jobs)?;
        Ok(fetched)
    }

    /// Reads (fetching what is missing) every manifest of `image`; returns
    /// the repository content and the blobs it needs.
    fn walk<'s>(&'s self, image: &ImageSpec, source: &mut Option<Source<'s>>) -> Result<(RepoContent, Vec<Descriptor>)> {
        let top = Digest::parse(image.digest.as_deref().ok_or_else(|| anyhow!("no digest: run `ciab lock` on the spec"))?)?;
        let name = ImageRef::parse(&image.reference)?;
        let platforms: Vec<Platform> = image.platforms.iter().filter_map(|p| Platform::parse(p)).collect();
        let mut manifests = Vec::new();
        let mut blobs: Vec<Descriptor> = Vec::new();
        let mut queue = vec![top.clone()];
        while let Some(d) = queue.pop() {
            let bytes = if self.store.contains(&d) {
                self.store.read(&d)?
            } else {
                if source.is_none() {
                    *source = Some(self.open_source(image)?);
                }
                let src = source.as_ref().context("source not open")?;
                let bytes = self.runtime.block_on(src.manifest(&d))?;
                self.store.put(&d, &bytes)?;
                bytes
            };
            manifests.push(d.clone());
            match Document::parse(&bytes).with_context(|| format!("manifest {d}"))? {
                Document::Index { children } => {
                    for want in &platforms {
                        let child = children
                            .iter()
                            .find(|c| c.platform.as_ref().is_some_and(|p| want.matches(p)))
                            .ok_or_else(|| {
                                let have: Vec<String> = children.iter().filter_map(|c| c.platform.as_ref().map(|p| p.to_string())).collect();
                                anyhow!("the index {d} has no {want} image (it has {}); fix `platforms`", have.join(", "))
                            })?;
                        queue.push(child.digest.clone());
                    }
                }
                Document::Image { config, layers } => {
                    for b in std::iter::once(config).chain(layers) {
                        if !blobs.iter().any(|x| x.digest == b.digest) {
                            blobs.push(b);
                        }
                    }
                }
            }
        }
        let content = RepoContent {
            repo: name.repo_path(),
            tag: name.tag.clone(),
            top,
            manifests,
            blobs: blobs.iter().map(|b| b.digest.clone()).collect(),
        };
        Ok((content, blobs))
    }

    /// Downloads blobs, `self.jobs` at a time, with one progress bar.
    fn download(&self, jobs: &[(&Source, &Descriptor, &str)]) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        let total: u64 = jobs.iter().map(|(_, d, _)| d.size).sum();
        let bar = progress_bar(total, &format!("fetching {} blobs", jobs.len()));
        let on_bytes = |n: u64| bar.inc(n);
        let start = Instant::now();
        let results: Vec<Result<()>> = self.runtime.block_on(
            futures_util::stream::iter(jobs.iter().map(|(src, desc, reference)| {
                let on_bytes = &on_bytes;
                async move { self.fetch_blob(src, desc, on_bytes).await.with_context(|| format!("image {reference}")) }
            }))
            .buffer_unordered(self.jobs)
            .collect(),
        );
        bar.finish_and_clear();
        let failures: Vec<anyhow::Error> = results.into_iter().filter_map(Result::err).collect();
        if let Some(first) = failures.into_iter().next() {
            return Err(first);
        }
        let secs = start.elapsed().as_secs_f64();
        tracing::info!("fetched {} blobs, {:.1} MiB in {secs:.1} s", jobs.len(), total as f64 / 1048576.0);
        Ok(())
    }

    async fn fetch_blob(&self, src: &Source<'_>, desc: &Descriptor, on_bytes: &(dyn Fn(u64) + Sync)) -> Result<()> {
        let mut last = None;
        let mut resume = true;
        for attempt in 1..=ATTEMPTS {
            if self.store.contains(&desc.digest) {
                return Ok(());
            }
            let mut w = self.store.writer(&desc.digest, Some(desc.size), resume)?;
            // A resumed attempt that fails again starts the next one afresh:
            // the kept bytes may be what the source cannot continue from.
            resume = w.offset() == 0;
            let result = match src.blob(desc, &mut w, on_bytes).await {
                Ok(()) => w.commit(),
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!("blob {} from {} (attempt {attempt} of {ATTEMPTS}): {e:#}", desc.digest.short(), src.label());
                    last = Some(e);
                    if attempt < ATTEMPTS {
                        tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                    }
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("no attempt made"))).with_context(|| format!("blob {} ({} bytes) from {}", desc.digest, desc.size, src.label()))
    }

    /// Brings every artifact into the cache; returns (sha256, size) per artifact.
    pub fn artifacts(&self, artifacts: &[ArtifactSpec]) -> Result<Vec<(Digest, u64)>> {
        if artifacts.is_empty() {
            return Ok(Vec::new());
        }
        let bar = progress_bar(0, &format!("fetching {} artifacts", artifacts.len()));
        let on_bytes = |n: u64| bar.inc(n);
        let results: Vec<Result<(Digest, u64)>> = self.runtime.block_on(
            futures_util::stream::iter(artifacts.iter().map(|a| {
                let on_bytes = &on_bytes;
                async move { artifact::fetch(&self.http, &self.store, a, on_bytes).await }
            }))
            .buffered(self.jobs)
            .collect(),
        );
        bar.finish_and_clear();
        results.into_iter().collect()
    }
}

fn progress_bar(total: u64, prefix: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        eprintln!("ciab: {prefix}, {:.1} MiB", total as f64 / 1048576.0);
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template("{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(prefix.to_owned());
    bar
}

/// Refuses a spec with unpinned entries (images, artifacts, downloaded
/// guest images) before any work starts.
pub fn check_pinned(spec: &crate::spec::Spec) -> Result<()> {
    let mut unpinned: Vec<String> = spec.images.iter().filter(|i| i.digest.is_none()).map(|i| format!("image {} ({})", i.reference, i.origin.file.display())).collect();
    let downloads: Vec<ArtifactSpec> = spec.guest_images.iter().filter_map(|g| g.download_artifact()).collect();
    unpinned.extend(spec.artifacts.iter().chain(&downloads).filter(|a| a.sha256.is_none()).map(|a| format!("artifact {} ({})", a.dest, a.origin.file.display())));
    if !unpinned.is_empty() {
        bail!("not pinned, so the build would not be reproducible: {}. Run `ciab lock <spec>` to record their digests", unpinned.join("; "));
    }
    Ok(())
}
