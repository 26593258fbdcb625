//! OCI test fixtures: image layouts built from scratch, their docker-archive
//! form, a real Distribution registry, and a fault-injecting stand-in
//! registry.
//!
//! Layouts are byte-for-byte reproducible (tar mtimes and owners 0, gzip
//! header mtime 0, fixed entry order, `created` pinned to the epoch), so
//! digests are stable across runs and machines with the same `/bin/busybox`,
//! and relationships between fixtures hold by construction: the linux/amd64
//! child of [`two_platform_layout`] *is* the manifest of [`busybox_layout`].
//!
//! Blobs are streamed to disk and hashed while being written; nothing holds a
//! whole layer in memory, so [`random_layout`] can build benchmark-sized
//! images and [`StandIn`] serves blobs straight from the files.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, Permissions};
use std::io::{self, BufWriter, ErrorKind, Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use flate2::write::GzEncoder;
use flate2::Compression;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tempfile::{NamedTempFile, TempDir};
use tracing::debug;

use crate::harness::free_port;

pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_TYPE_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Annotation in `index.json` that names the tag (`oci:<dir>:<tag>`).
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";
/// Docker's manifest list; only recognised when walking a layout, never
/// written.
const MEDIA_TYPE_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

const BUSYBOX: &str = "/bin/busybox";
const DOCKER_REGISTRY: &str = "/usr/bin/docker-registry";
const SKOPEO: &str = "skopeo";
const EPOCH: &str = "1970-01-01T00:00:00Z";
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Copy buffer for layer content: large enough that hashing, gzip and
/// `write(2)` each see few, big calls (the random layout must beat 300 MB/s).
const CHUNK: usize = 1 << 20;
const REGISTRY_READY_TIMEOUT: Duration = Duration::from_secs(20);
const REGISTRY_POLL: Duration = Duration::from_millis(50);
/// Attempts to start the registry when the port from [`free_port`] was taken
/// by someone else between probing and the registry binding it.
const REGISTRY_PORT_ATTEMPTS: usize = 3;
const LOG_TAIL_LINES: usize = 40;
const HTTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const HTTP_IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the stand-in waits for a client to close after the response
/// before closing itself (see [`StandIn`]).
const LINGER: Duration = Duration::from_secs(2);
const MAX_REQUEST_HEAD: usize = 64 * 1024;

// ---------------------------------------------------------------------------
// Layout
// ---------------------------------------------------------------------------

/// An OCI image layout directory built by the test.
#[derive(Clone, Debug)]
pub struct Layout {
    pub dir: PathBuf,
    pub tag: String,
    /// `sha256:<hex>` of the top manifest or index (the one `index.json`
    /// names with `tag`).
    pub digest: String,
    /// Media type of the top manifest or index.
    pub media_type: String,
}

impl Layout {
    /// Every blob digest in the layout's blobs dir, sorted.
    pub fn blobs(&self) -> Result<Vec<String>> {
        let dir = self.dir.join("blobs").join("sha256");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
            // Skips the temp files of a blob still being written.
            if let Some(hex) = entry.file_name().to_str().filter(|n| is_sha256_hex(n)) {
                out.push(format!("sha256:{hex}"));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Bytes of a blob.
    pub fn blob(&self, digest: &str) -> Result<Vec<u8>> {
        let path = self.blob_path(digest)?;
        fs::read(&path).with_context(|| format!("reading blob {}", path.display()))
    }

    /// Path of a blob in the layout (which need not exist).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self
            .dir
            .join("blobs")
            .join("sha256")
            .join(digest_hex(digest)?))
    }

    /// `oci:<dir>:<tag>`, the skopeo/containers-image name of this layout.
    pub fn skopeo_ref(&self) -> Result<String> {
        let dir = utf8(&self.dir)?;
        // containers/image splits `oci:` references at the first colon.
        ensure!(
            !dir.contains(':'),
            "layout path {dir} contains ':', which skopeo cannot address"
        );
        Ok(format!("oci:{dir}:{}", self.tag))
    }

    /// Every manifest and index reachable from the top one, top first, as
    /// `(digest, media type)`.
    pub fn manifests(&self) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        let mut queue = VecDeque::from([(self.digest.clone(), self.media_type.clone())]);
        while let Some((digest, media_type)) = queue.pop_front() {
            if media_type == MEDIA_TYPE_INDEX || media_type == MEDIA_TYPE_DOCKER_LIST {
                let index: Value = serde_json::from_slice(&self.blob(&digest)?)
                    .with_context(|| format!("parsing index {digest}"))?;
                for child in index["manifests"].as_array().into_iter().flatten() {
                    let (Some(d), Some(m)) =
                        (child["digest"].as_str(), child["mediaType"].as_str())
                    else {
                        bail!("index {digest} has a child without digest or mediaType: {child}");
                    };
                    queue.push_back((d.to_owned(), m.to_owned()));
                }
            }
            out.push((digest, media_type));
        }
        Ok(out)
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The hex part of a `sha256:` digest, validated so it is safe as a file name.
fn digest_hex(digest: &str) -> Result<&str> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| is_sha256_hex(h))
        .ok_or_else(|| anyhow!("not a sha256 digest: {digest:?}"))
}

fn utf8(path: &Path) -> Result<&str> {
    path.to_str()
        .ok_or_else(|| anyhow!("path is not UTF-8: {}", path.display()))
}

// ---------------------------------------------------------------------------
// Writing layouts
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Descriptor {
    media_type: String,
    digest: String,
    size: u64,
}

impl Descriptor {
    fn json(&self) -> Value {
        json!({ "mediaType": self.media_type, "digest": self.digest, "size": self.size })
    }
}

struct Layer {
    descriptor: Descriptor,
    /// Digest of the uncompressed tar (the config's `rootfs.diff_ids`).
    diff_id: String,
}

/// Counts and hashes everything written through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// The inner writer, `sha256:<hex>` and length of what went through.
    fn finish(self) -> (W, String, u64) {
        let digest = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        (self.inner, digest, self.len)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A blob being written to a temp file in `blobs/sha256`; renamed to its
/// digest on commit, deleted if dropped.
struct BlobWriter {
    out: Hashing<BufWriter<NamedTempFile>>,
    blobs: PathBuf,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl BlobWriter {
    fn commit(self, media_type: &str) -> Result<Descriptor> {
        let (buf, digest, size) = self.out.finish();
        let tmp = buf
            .into_inner()
            .map_err(|e| e.into_error())
            .context("flushing blob")?;
        // NamedTempFile creates 0600; other users (a registry or containerd
        // running unprivileged) must be able to read the layout.
        tmp.as_file()
            .set_permissions(Permissions::from_mode(0o644))
            .context("chmod blob")?;
        let path = self.blobs.join(digest_hex(&digest)?);
        tmp.persist(&path)
            .map_err(|e| e.error)
            .with_context(|| format!("renaming blob to {}", path.display()))?;
        Ok(Descriptor {
            media_type: media_type.to_owned(),
            digest,
            size,
        })
    }
}

struct LayoutWriter {
    dir: PathBuf,
    blobs: PathBuf,
}

impl LayoutWriter {
    /// Starts a layout in `dir`, which must be missing or empty so that
    /// [`Layout::blobs`] lists exactly this image's blobs.
    fn create(dir: &Path) -> Result<Self> {
        if dir.exists() {
            let mut entries =
                fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
            ensure!(
                entries.next().is_none(),
                "layout directory {} is not empty",
                dir.display()
            );
        }
        let blobs = dir.join("blobs").join("sha256");
        fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
        let marker = dir.join("oci-layout");
        fs::write(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)
            .with_context(|| format!("writing {}", marker.display()))?;
        Ok(LayoutWriter {
            dir: dir.to_owned(),
            blobs,
        })
    }

    fn blob(&self) -> Result<BlobWriter> {
        let tmp = NamedTempFile::new_in(&self.blobs)
            .with_context(|| format!("creating a temp file in {}", self.blobs.display()))?;
        Ok(BlobWriter {
            out: Hashing::new(BufWriter::with_capacity(CHUNK, tmp)),
            blobs: self.blobs.clone(),
        })
    }

    fn json(&self, media_type: &str, value: &Value) -> Result<Descriptor> {
        let bytes = serde_json::to_vec(value).context("serialising JSON blob")?;
        let mut blob = self.blob()?;
        blob.write_all(&bytes).context("writing JSON blob")?;
        blob.commit(media_type)
    }

    /// A gzip layer whose tar `fill` writes; the tar is hashed before
    /// compression for the diff_id.
    fn gzip_layer(
        &self,
        fill: impl FnOnce(&mut TarWriter<Hashing<GzEncoder<BlobWriter>>>) -> Result<()>,
    ) -> Result<Layer> {
        // GzEncoder::new writes a header with mtime 0 and no file name, which
        // keeps the blob reproducible.
        let gz = GzEncoder::new(self.blob()?, Compression::default());
        let mut tar = TarWriter::new(Hashing::new(gz));
        fill(&mut tar)?;
        let (gz, diff_id, _) = tar.finish()?.finish();
        let blob = gz.finish().context("finishing gzip stream")?;
        Ok(Layer {
            descriptor: blob.commit(MEDIA_TYPE_LAYER_GZIP)?,
            diff_id,
        })
    }

    /// Config and manifest of a linux image; returns the manifest.
    fn image(&self, arch: &str, container_config: Value, layers: &[Layer]) -> Result<Descriptor> {
        let config = json!({
            "created": EPOCH,
            "architecture": arch,
            "os": "linux",
            "config": container_config,
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|l| l.diff_id.as_str()).collect::<Vec<_>>(),
            },
            // One entry per layer: docker-archive consumers pair history
            // with layers.
            "history": layers
                .iter()
                .map(|_| json!({ "created": EPOCH, "created_by": "ciab oci_fixtures" }))
                .collect::<Vec<_>>(),
        });
        let config = self.json(MEDIA_TYPE_CONFIG, &config)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_MANIFEST,
            "config": config.json(),
            "layers": layers.iter().map(|l| l.descriptor.json()).collect::<Vec<_>>(),
        });
        self.json(MEDIA_TYPE_MANIFEST, &manifest)
    }

    /// Writes `index.json` naming `top` as `tag`.
    fn finish(self, tag: &str, top: &Descriptor) -> Result<Layout> {
        ensure!(!tag.is_empty(), "empty tag");
        let mut entry = top.json();
        entry["annotations"] = json!({ REF_NAME_ANNOTATION: tag });
        let index = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_INDEX,
            "manifests": [entry],
        });
        let path = self.dir.join("index.json");
        let bytes = serde_json::to_vec(&index).context("serialising index.json")?;
        fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        Ok(Layout {
            dir: self.dir,
            tag: tag.to_owned(),
            digest: top.digest.clone(),
            media_type: top.media_type.clone(),
        })
    }
}

// ---------------------------------------------------------------------------
// Tar
// ---------------------------------------------------------------------------

/// Minimal ustar writer: owner 0:0, mtime 0, entries in the order written.
struct TarWriter<W: Write> {
    out: W,
}

const TAR_BLOCK: usize = 512;

impl<W: Write> TarWriter<W> {
    fn new(out: W) -> Self {
        TarWriter { out }
    }

    fn dir(&mut self, path: &str) -> Result<()> {
        self.header(path, 0o755, 0, b'5', "")
    }

    fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.header(path, 0o777, 0, b'2', target)
    }

    /// A regular file of exactly `size` bytes read from `content`.
    fn file(&mut self, path: &str, mode: u32, size: u64, content: &mut dyn Read) -> Result<()> {
        self.header(path, mode, size, b'0', "")?;
        let mut buf = vec![0u8; CHUNK];
        let mut left = size;
        while left > 0 {
            let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
            let n = match content.read(&mut buf[..want]) {
                Ok(0) => bail!("content of {path} ended {left} bytes short of {size}"),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).with_context(|| format!("reading content of {path}")),
            };
            self.out
                .write_all(&buf[..n])
                .with_context(|| format!("writing {path} to tar"))?;
            left -= n as u64;
        }
        self.pad(size)
    }

    fn finish(mut self) -> Result<W> {
        self.out
            .write_all(&[0u8; 2 * TAR_BLOCK])
            .context("writing tar trailer")?;
        Ok(self.out)
    }

    fn pad(&mut self, size: u64) -> Result<()> {
        let rem = (size % TAR_BLOCK as u64) as usize;
        if rem != 0 {
            self.out
                .write_all(&[0u8; TAR_BLOCK][rem..])
                .context("padding tar entry")?;
        }
        Ok(())
    }

    fn header(&mut self, name: &str, mode: u32, size: u64, kind: u8, link: &str) -> Result<()> {
        let h = ustar_header(name, mode, size, kind, link)?;
        self.out.write_all(&h).context("writing tar header")
    }
}

fn ustar_header(name: &str, mode: u32, size: u64, kind: u8, link: &str) -> Result<[u8; TAR_BLOCK]> {
    let mut h = [0u8; TAR_BLOCK];
    put_str(&mut h[0..100], name).with_context(|| format!("tar name {name}"))?;
    put_octal(&mut h[100..108], u64::from(mode))?;
    put_octal(&mut h[108..116], 0)?; // uid
    put_octal(&mut h[116..124], 0)?; // gid
    put_octal(&mut h[124..136], size).with_context(|| format!("size of {name}"))?;
    put_octal(&mut h[136..148], 0)?; // mtime
    h[156] = kind;
    put_str(&mut h[157..257], link).with_context(|| format!("link target of {name}"))?;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    // The checksum is computed with its own field as spaces.
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    let sum = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(sum.as_bytes());
    Ok(h)
}

fn put_str(field: &mut [u8], s: &str) -> Result<()> {
    ensure!(
        s.len() <= field.len(),
        "{s:?} is longer than the {}-byte ustar field",
        field.len()
    );
    field[..s.len()].copy_from_slice(s.as_bytes());
    Ok(())
}

/// Zero-padded octal followed by NUL, as ustar wants.
fn put_octal(field: &mut [u8], value: u64) -> Result<()> {
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    ensure!(
        s.len() <= digits,
        "{value} does not fit a {digits}-digit ustar field"
    );
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
    Ok(())
}

// ---------------------------------------------------------------------------
// Fixture images
// ---------------------------------------------------------------------------

/// A single-platform linux/amd64 image: one gzip layer holding `bin/busybox`
/// (a copy of `/bin/busybox`) and `bin/sh -> busybox`, config `Cmd
/// ["/bin/sh"]`. `index.json` names the manifest `tag`. `dir` must be missing
/// or empty. Same busybox binary and tag, same bytes.
pub fn busybox_layout(dir: &Path, tag: &str) -> Result<Layout> {
    let w = LayoutWriter::create(dir)?;
    let manifest = busybox_image(&w)?;
    w.finish(tag, &manifest)
}

/// A two-platform image index: linux/amd64 is exactly the
/// [`busybox_layout`] manifest; linux/arm64 is an image with one gzip layer
/// holding `etc/ciab-platform` containing `arm64` (no newline) and config
/// architecture `arm64`. `index.json` names the index `tag`. `dir` must be
/// missing or empty.
pub fn two_platform_layout(dir: &Path, tag: &str) -> Result<Layout> {
    let w = LayoutWriter::create(dir)?;
    let amd64 = busybox_image(&w)?;
    let arm64 = arm64_image(&w)?;
    let entry = |d: &Descriptor, arch: &str| {
        let mut e = d.json();
        e["platform"] = json!({ "architecture": arch, "os": "linux" });
        e
    };
    let index = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_INDEX,
        "manifests": [entry(&amd64, "amd64"), entry(&arm64, "arm64")],
    });
    let index = w.json(MEDIA_TYPE_INDEX, &index)?;
    w.finish(tag, &index)
}

fn busybox_image(w: &LayoutWriter) -> Result<Descriptor> {
    let mut busybox = File::open(BUSYBOX).with_context(|| format!("opening {BUSYBOX}"))?;
    let size = busybox
        .metadata()
        .with_context(|| format!("stat {BUSYBOX}"))?
        .len();
    let layer = w.gzip_layer(|tar| {
        tar.dir("bin/")?;
        tar.file("bin/busybox", 0o755, size, &mut busybox)?;
        tar.symlink("bin/sh", "busybox")
    })?;
    w.image(
        "amd64",
        json!({ "Env": [DEFAULT_PATH], "Cmd": ["/bin/sh"] }),
        &[layer],
    )
}

fn arm64_image(w: &LayoutWriter) -> Result<Descriptor> {
    let content = b"arm64";
    let layer = w.gzip_layer(|tar| {
        tar.dir("etc/")?;
        tar.file(
            "etc/ciab-platform",
            0o644,
            content.len() as u64,
            &mut &content[..],
        )
    })?;
    w.image("arm64", json!({ "Env": [DEFAULT_PATH] }), &[layer])
}

/// A linux/amd64 image with `layers` uncompressed layers, each a tar holding
/// one file `random-<i>.bin` of incompressible pseudo-random bytes; the files
/// total exactly `total_bytes` (tar headers and padding come on top). Same
/// arguments, same bytes. `dir` must be missing or empty.
pub fn random_layout(
    dir: &Path,
    tag: &str,
    total_bytes: u64,
    layers: usize,
    seed: u64,
) -> Result<Layout> {
    ensure!(layers > 0, "an image needs at least one layer");
    let w = LayoutWriter::create(dir)?;
    let mut rng = SplitMix64(seed);
    let n = layers as u64;
    let mut out = Vec::with_capacity(layers);
    for i in 0..layers {
        let size = total_bytes / n + u64::from((i as u64) < total_bytes % n);
        let mut tar = TarWriter::new(w.blob()?);
        tar.file(
            &format!("random-{i}.bin"),
            0o644,
            size,
            &mut RandomReader(&mut rng),
        )?;
        // Uncompressed: the blob digest is the diff_id.
        let descriptor = tar.finish()?.commit(MEDIA_TYPE_LAYER_TAR)?;
        out.push(Layer {
            diff_id: descriptor.digest.clone(),
            descriptor,
        });
    }
    let manifest = w.image("amd64", json!({ "Env": [DEFAULT_PATH] }), &out)?;
    w.finish(tag, &manifest)
}

/// SplitMix64: statistically sound for filler data and about a nanosecond
/// per 8 bytes, far faster than the SHA-256 that follows it.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// An endless stream of pseudo-random bytes.
struct RandomReader<'a>(&'a mut SplitMix64);

impl Read for RandomReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        for chunk in buf.chunks_mut(8) {
            let v = self.0.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        Ok(buf.len())
    }
}

// ---------------------------------------------------------------------------
// skopeo
// ---------------------------------------------------------------------------

/// Runs skopeo and returns its stdout. `--insecure-policy` keeps the result
/// independent of the host's /etc/containers/policy.json.
fn skopeo(args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new(SKOPEO)
        .arg("--insecure-policy")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {SKOPEO}"))?;
    ensure!(
        out.status.success(),
        "skopeo {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out.stdout)
}

/// Writes the docker-archive (`docker save` format: `manifest.json`, the
/// config, uncompressed layer tars) of `layout` to `out`, tagged `repo_tag`.
/// skopeo qualifies a short `repo_tag` (`ciab/busybox:v1` is recorded as
/// `docker.io/ciab/busybox:v1`), refuses to write into an existing non-empty
/// file, and for an index picks the host's platform.
pub fn docker_archive(layout: &Layout, out: &Path, repo_tag: &str) -> Result<()> {
    let dest = format!("docker-archive:{}:{repo_tag}", utf8(out)?);
    skopeo(&["copy", "--quiet", &layout.skopeo_ref()?, &dest])?;
    Ok(())
}

// ---------------------------------------------------------------------------
// HTTP client
// ---------------------------------------------------------------------------

/// A response as received, possibly cut short by the server.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The body as received (de-chunked; empty for HEAD).
    pub body: Vec<u8>,
    /// Whether the whole announced body arrived (`Content-Length` bytes, or
    /// the final chunk).
    pub complete: bool,
}

impl HttpResponse {
    /// First header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn content_length(&self) -> Option<u64> {
        self.header("content-length")?.parse().ok()
    }
}

/// One HTTP/1.1 request with `Connection: close` to `host` ("ip:port"),
/// through `ureq` like the box's own client, without following redirects;
/// every status is an answer. A body cut short (the server closes or resets
/// before `Content-Length` bytes or the last chunk) is returned with
/// `complete == false` rather than as an error, so tests can observe
/// truncation.
pub fn http_request(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<HttpResponse> {
    static AGENT: LazyLock<ureq::Agent> = LazyLock::new(|| {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            // The registries under test are on loopback; a proxy from the
            // environment must not stand in between.
            .proxy(None)
            .max_redirects(0)
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            .user_agent("ciab-qemu-tests")
            .timeout_connect(Some(HTTP_CONNECT_TIMEOUT))
            .timeout_per_read(Some(HTTP_IO_TIMEOUT))
            .timeout_per_write(Some(HTTP_IO_TIMEOUT))
            .build()
            .new_agent()
    });
    let path = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    let what = || format!("{method} http://{host}{path}");
    let mut req = ureq::http::Request::builder()
        .method(method)
        .uri(format!("http://{host}{path}"))
        // The stand-in serves one request per connection and waits for the
        // client to close first.
        .header("Connection", "close");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(()).with_context(what)?;
    let (head, mut body) = AGENT.run(req).with_context(what)?.into_parts();
    let mut resp = HttpResponse {
        status: head.status.as_u16(),
        headers: head
            .headers
            .iter()
            .map(|(k, v)| {
                let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                (k.as_str().to_owned(), v)
            })
            .collect(),
        body: Vec::new(),
        complete: true,
    };
    // `read_to_end` keeps what arrived before an error; a server aborting
    // mid-body closes (ureq: unexpected EOF) or resets, and what came before
    // is the (incomplete) answer.
    if let Err(e) = body.as_reader().read_to_end(&mut resp.body) {
        if !matches!(
            e.kind(),
            ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
        ) {
            return Err(e).with_context(|| format!("reading the answer to {}", what()));
        }
        resp.complete = false;
    }
    Ok(resp)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------
// LocalRegistry
// ---------------------------------------------------------------------------

/// A real Debian docker-registry on 127.0.0.1 at a free port, killed (and
/// reaped) on drop. Its config and log live in a private temp dir.
pub struct LocalRegistry {
    pub port: u16,
    child: Child,
    log: PathBuf,
    _dir: TempDir,
}

/// The registry exited because its port was taken after [`free_port`]
/// probed it.
#[derive(Debug)]
struct PortTaken(u16);

impl std::fmt::Display for PortTaken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "port {} was taken before the registry bound it", self.0)
    }
}

impl std::error::Error for PortTaken {}

impl LocalRegistry {
    /// Writable registry storing in `root` (created if missing; filesystem
    /// driver, no auth, delete disabled), for pushing test images.
    pub fn start_writable(root: &Path) -> Result<LocalRegistry> {
        fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        Self::start(root, false)
    }

    /// Read-only registry serving an existing Distribution storage tree at
    /// `root` (the directory that *contains* `docker/registry/v2`),
    /// configured as on the appliance: read-only maintenance mode, no upload
    /// purging, delete disabled, no auth. It needs only read access to
    /// `root`.
    pub fn start_readonly(root: &Path) -> Result<LocalRegistry> {
        let v2 = root.join("docker").join("registry").join("v2");
        ensure!(
            v2.is_dir(),
            "{} is not a Distribution storage root (no {})",
            root.display(),
            v2.display()
        );
        Self::start(root, true)
    }

    fn start(root: &Path, readonly: bool) -> Result<LocalRegistry> {
        let root = root
            .canonicalize()
            .with_context(|| format!("resolving {}", root.display()))?;
        let mut attempt = 1;
        loop {
            match Self::start_on(&root, readonly, free_port()?) {
                Err(e) if e.is::<PortTaken>() && attempt < REGISTRY_PORT_ATTEMPTS => {
                    debug!("retrying docker-registry start: {e:#}");
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    fn start_on(root: &Path, readonly: bool, port: u16) -> Result<LocalRegistry> {
        let dir = tempfile::Builder::new()
            .prefix("ciab-registry-")
            .tempdir()
            .context("creating registry temp dir")?;
        let config = dir.path().join("config.yml");
        fs::write(&config, registry_config(root, readonly, port)?)
            .with_context(|| format!("writing {}", config.display()))?;
        let log = dir.path().join("registry.log");
        let log_file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(DOCKER_REGISTRY);
        cmd.arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().context("dup registry log")?)
            .stderr(log_file);
        // REGISTRY_* variables override config.yml; the test owns the config.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("REGISTRY_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {DOCKER_REGISTRY}"))?;
        // From here on, Drop kills the child if start-up fails.
        let mut reg = LocalRegistry {
            port,
            child,
            log,
            _dir: dir,
        };
        reg.wait_ready()?;
        Ok(reg)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + REGISTRY_READY_TIMEOUT;
        let mut last;
        loop {
            if let Some(status) = self.child.try_wait().context("polling docker-registry")? {
                let tail = self.log_tail();
                let err =
                    anyhow!("docker-registry exited ({status}) before serving; log tail:\n{tail}");
                if tail.contains("address already in use") {
                    return Err(anyhow::Error::new(PortTaken(self.port)).context(err));
                }
                return Err(err);
            }
            match http_request(&self.host(), "GET", "/v2/", &[]) {
                Ok(r) if r.status == 200 => return Ok(()),
                Ok(r) => last = format!("HTTP {}", r.status),
                Err(e) => last = format!("{e:#}"),
            }
            if Instant::now() >= deadline {
                bail!(
                    "docker-registry on {} did not answer GET /v2/ with 200 within {:?} \
                     (last: {last}); log tail:\n{}",
                    self.host(),
                    REGISTRY_READY_TIMEOUT,
                    self.log_tail()
                );
            }
            thread::sleep(REGISTRY_POLL);
        }
    }

    /// "127.0.0.1:PORT"
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("<cannot read {}: {e}>", self.log.display()))
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    /// Pushes every manifest and blob of `layout` to `<repo>:<tag>` unchanged
    /// (`--preserve-digests`), then checks that the registry's manifest for
    /// the tag has the layout's digest.
    pub fn push(&self, layout: &Layout, repo: &str, tag: &str) -> Result<()> {
        let dest = format!("docker://{}/{repo}:{tag}", self.host());
        skopeo(&[
            "copy",
            "--quiet",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &layout.skopeo_ref()?,
            &dest,
        ])?;
        let raw = skopeo(&["inspect", "--raw", "--tls-verify=false", &dest])?;
        let pushed = sha256_digest(&raw);
        ensure!(
            pushed == layout.digest,
            "{dest} has manifest {pushed}, but the layout's is {}",
            layout.digest
        );
        Ok(())
    }

    /// GET `http://127.0.0.1:PORT/<path>` with `Accept: accept`; status and
    /// body. A body cut short is an error.
    pub fn get(&self, path: &str, accept: &str) -> Result<(u16, Vec<u8>)> {
        let r = http_request(&self.host(), "GET", path, &[("Accept", accept)])?;
        ensure!(
            r.complete,
            "GET {path} from {}: body ended after {} of {:?} bytes",
            self.host(),
            r.body.len(),
            r.content_length()
        );
        Ok((r.status, r.body))
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        if let Err(e) = self.child.kill() {
            debug!("killing docker-registry: {e}");
        }
        if let Err(e) = self.child.wait() {
            debug!("reaping docker-registry: {e}");
        }
    }
}

fn registry_config(root: &Path, readonly: bool, port: u16) -> Result<String> {
    // A JSON string is a valid YAML double-quoted scalar, whatever the path.
    let root = serde_json::to_string(utf8(root)?).context("quoting root directory")?;
    Ok(format!(
        "version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: false
  maintenance:
    uploadpurging:
      enabled: false
    readonly:
      enabled: {readonly}
http:
  addr: 127.0.0.1:{port}
"
    ))
}

// ---------------------------------------------------------------------------
// StandIn
// ---------------------------------------------------------------------------

/// A fault for [`StandIn`] to inject.
#[derive(Clone, Debug, Default)]
pub enum Fault {
    #[default]
    None,
    /// Serves these bytes instead of the real blob content (same length or
    /// not), for the given digest. The `Docker-Content-Digest` header still
    /// claims `digest`, as corrupted storage would.
    WrongBlob { digest: String, bytes: Vec<u8> },
    /// Announces the full `Content-Length` but closes the connection once
    /// `after` bytes (counted from the start of the blob) of the blob with
    /// this digest have been sent. A range request starting at or beyond
    /// `after` is served in full, so a client that resumes gets past it.
    TruncateBlob { digest: String, after: usize },
    /// Serves `bytes` for a manifest request whose reference (tag or digest,
    /// as in the request path) is `reference`, with the stored media type (or
    /// the OCI manifest type for an unknown reference) and the
    /// `Docker-Content-Digest` of the bytes actually served.
    WrongManifest { reference: String, bytes: Vec<u8> },
}

/// A stand-in registry serving one layout with a fault injected, counting
/// blob requests: std `TcpListener`, a thread per connection, HTTP/1.1, one
/// request per connection (`Connection: close`). Any repository name is
/// accepted and `Accept` is ignored. It speaks plain HTTP only and drops
/// connections that open with anything but a request line (a TLS probe).
/// Stops (accept thread joined) on drop.
pub struct StandIn {
    pub port: u16,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

struct Shared {
    /// By digest, plus the top one by tag: (media type, bytes).
    manifests: HashMap<String, (String, Vec<u8>)>,
    /// By digest.
    blobs: HashMap<String, PathBuf>,
    fault: Mutex<Arc<Fault>>,
    blob_gets: Mutex<HashMap<String, usize>>,
    stop: AtomicBool,
}

/// The protected data stays consistent even if a handler panicked, so a
/// poisoned lock is used as is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl StandIn {
    /// Serves every manifest and blob of `layout`: manifests by digest and
    /// the top one also by `layout.tag`; blobs (manifests included) by
    /// digest.
    pub fn serve(layout: &Layout, fault: Fault) -> Result<StandIn> {
        let mut manifests = HashMap::new();
        for (digest, media_type) in layout.manifests()? {
            let bytes = layout.blob(&digest)?;
            manifests.insert(digest, (media_type, bytes));
        }
        let top = manifests
            .get(&layout.digest)
            .cloned()
            .ok_or_else(|| anyhow!("layout has no top manifest {}", layout.digest))?;
        manifests.insert(layout.tag.clone(), top);
        let mut blobs = HashMap::new();
        for digest in layout.blobs()? {
            let path = layout.blob_path(&digest)?;
            blobs.insert(digest, path);
        }
        let shared = Arc::new(Shared {
            manifests,
            blobs,
            fault: Mutex::new(Arc::new(fault)),
            blob_gets: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
        });
        let listener = TcpListener::bind(("127.0.0.1", 0)).context("binding 127.0.0.1:0")?;
        let port = listener.local_addr().context("stand-in address")?.port();
        let accept = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("oci-stand-in".into())
                .spawn(move || accept_loop(&listener, &shared))
                .context("spawning stand-in accept thread")?
        };
        Ok(StandIn {
            port,
            shared,
            accept: Some(accept),
        })
    }

    /// "127.0.0.1:PORT"
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Number of GET requests received for `blobs/<digest>` (whatever the
    /// answer).
    pub fn blob_requests(&self, digest: &str) -> usize {
        lock(&self.shared.blob_gets)
            .get(digest)
            .copied()
            .unwrap_or(0)
    }

    /// Changes the fault for requests from now on.
    pub fn set_fault(&self, fault: Fault) {
        *lock(&self.shared.fault) = Arc::new(fault);
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        if let Err(e) = TcpStream::connect(("127.0.0.1", self.port)) {
            debug!("waking stand-in accept loop: {e}");
        }
        if let Some(t) = self.accept.take() {
            if t.join().is_err() {
                debug!("stand-in accept thread panicked");
            }
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        match conn {
            Ok(stream) => {
                let shared = Arc::clone(shared);
                let spawned = thread::Builder::new()
                    .name("oci-stand-in-conn".into())
                    .spawn(move || {
                        if let Err(e) = handle_connection(stream, &shared) {
                            debug!("stand-in connection: {e:#}");
                        }
                    });
                if let Err(e) = spawned {
                    debug!("spawning stand-in connection thread: {e}");
                }
            }
            Err(e) => {
                debug!("stand-in accept: {e}");
                // Avoids spinning on a persistent error such as EMFILE.
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

struct Request {
    method: String,
    path: String,
    range: Option<String>,
}

enum Body {
    Bytes(Vec<u8>),
    /// `len` bytes of the file from `offset`.
    File {
        path: PathBuf,
        offset: u64,
        len: u64,
    },
}

impl Body {
    fn len(&self) -> u64 {
        match self {
            Body::Bytes(b) => b.len() as u64,
            Body::File { len, .. } => *len,
        }
    }
}

struct Response {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Body,
    /// Close the connection after this many body bytes.
    cut_after: Option<u64>,
}

impl Response {
    fn new(status: u16, body: Body) -> Self {
        Response {
            status,
            headers: vec![("Docker-Distribution-API-Version", "registry/2.0".to_owned())],
            body,
            cut_after: None,
        }
    }

    fn json(status: u16, body: &Value) -> Self {
        let mut r = Response::new(status, Body::Bytes(body.to_string().into_bytes()));
        r.headers
            .push(("Content-Type", "application/json".to_owned()));
        r
    }

    fn error(status: u16, code: &str, message: &str, detail: &str) -> Self {
        Response::json(
            status,
            &json!({ "errors": [{ "code": code, "message": message, "detail": detail }] }),
        )
    }
}

fn handle_connection(mut stream: TcpStream, shared: &Shared) -> Result<()> {
    stream.set_read_timeout(Some(HTTP_IO_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_IO_TIMEOUT))?;
    let Some(req) = read_request(&mut stream)? else {
        return Ok(());
    };
    let resp = route(&req, shared);
    let written = write_response(&mut stream, &resp, req.method == "HEAD");
    // Half-close and wait for the client to close first: closing with
    // unread data would send a RST, and a RST can discard response bytes the
    // client has not read yet, which would blur what a fault delivered.
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(LINGER));
    let _ = io::copy(&mut stream, &mut io::sink());
    written
}

/// `None` for a connection that closes early or is not plain HTTP.
fn read_request(stream: &mut TcpStream) -> Result<Option<Request>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(end) = find(&head, b"\r\n\r\n") {
            break end;
        }
        ensure!(head.len() <= MAX_REQUEST_HEAD, "request head too long");
        let n = match stream.read(&mut buf) {
            Ok(0) => return Ok(None),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("reading request"),
        };
        head.extend_from_slice(&buf[..n]);
        // A TLS ClientHello (0x16) would otherwise wait for a blank line
        // that never comes; clients falling back to plain HTTP retry at once.
        if !head[0].is_ascii_uppercase() {
            return Ok(None);
        }
    };
    let head = String::from_utf8_lossy(&head[..end]);
    let mut lines = head.split("\r\n");
    let mut parts = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Ok(None);
    };
    let range = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("range"))
        .map(|(_, v)| v.trim().to_owned());
    Ok(Some(Request {
        method: method.to_owned(),
        path: target.split('?').next().unwrap_or_default().to_owned(),
        range,
    }))
}

fn route(req: &Request, shared: &Shared) -> Response {
    if req.method != "GET" && req.method != "HEAD" {
        return Response::error(405, "UNSUPPORTED", "the stand-in is read-only", &req.method);
    }
    if req.path == "/v2/" || req.path == "/v2" {
        return Response::json(200, &json!({}));
    }
    if let Some(rest) = req.path.strip_prefix("/v2/") {
        if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
            if !name.is_empty() {
                return serve_manifest(reference, shared);
            }
        }
        if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
            if !name.is_empty() {
                if req.method == "GET" {
                    *lock(&shared.blob_gets)
                        .entry(digest.to_owned())
                        .or_insert(0) += 1;
                }
                return serve_blob(digest, req.range.as_deref(), shared);
            }
        }
    }
    Response::error(404, "NOT_FOUND", "no such endpoint", &req.path)
}

fn serve_manifest(reference: &str, shared: &Shared) -> Response {
    let fault = Arc::clone(&lock(&shared.fault));
    let stored = shared.manifests.get(reference);
    let (media_type, bytes) = match (&*fault, stored) {
        (
            Fault::WrongManifest {
                reference: r,
                bytes,
            },
            _,
        ) if r == reference => {
            let media_type = stored.map_or(MEDIA_TYPE_MANIFEST, |(m, _)| m.as_str());
            (media_type, bytes.clone())
        }
        (_, Some((media_type, bytes))) => (media_type.as_str(), bytes.clone()),
        (_, None) => {
            return Response::error(404, "MANIFEST_UNKNOWN", "manifest unknown", reference)
        }
    };
    let digest = sha256_digest(&bytes);
    let mut r = Response::new(200, Body::Bytes(bytes));
    r.headers.push(("Content-Type", media_type.to_owned()));
    r.headers.push(("Docker-Content-Digest", digest));
    r
}

fn serve_blob(digest: &str, range: Option<&str>, shared: &Shared) -> Response {
    let fault = Arc::clone(&lock(&shared.fault));
    let content = match (&*fault, shared.blobs.get(digest)) {
        (Fault::WrongBlob { digest: d, bytes }, _) if d == digest => Body::Bytes(bytes.clone()),
        (_, Some(path)) => match fs::metadata(path) {
            Ok(m) => Body::File {
                path: path.clone(),
                offset: 0,
                len: m.len(),
            },
            Err(e) => return Response::error(500, "UNKNOWN", "cannot stat blob", &e.to_string()),
        },
        (_, None) => {
            return Response::error(404, "BLOB_UNKNOWN", "blob unknown to registry", digest)
        }
    };
    let total = content.len();
    let start = match range.map(parse_range) {
        None => 0,
        Some(Some(start)) if start < total => start,
        Some(_) => {
            let mut r = Response::error(416, "RANGE_INVALID", "range not satisfiable", digest);
            r.headers
                .push(("Content-Range", format!("bytes */{total}")));
            return r;
        }
    };
    let body = match content {
        Body::Bytes(b) => Body::Bytes(b[usize::try_from(start).unwrap_or(usize::MAX)..].to_vec()),
        Body::File { path, len, .. } => Body::File {
            path,
            offset: start,
            len: len - start,
        },
    };
    let mut r = Response::new(if range.is_some() { 206 } else { 200 }, body);
    r.headers
        .push(("Content-Type", "application/octet-stream".to_owned()));
    r.headers.push(("Docker-Content-Digest", digest.to_owned()));
    r.headers.push(("Accept-Ranges", "bytes".to_owned()));
    if range.is_some() {
        let last = total.saturating_sub(1);
        r.headers
            .push(("Content-Range", format!("bytes {start}-{last}/{total}")));
    }
    if let Fault::TruncateBlob { digest: d, after } = &*fault {
        let after = *after as u64;
        if d == digest && after > start {
            r.cut_after = Some(after - start);
        }
    }
    r
}

/// Start offset of `bytes=N-` or `bytes=N-M` (the end is ignored: the rest
/// of the blob is served, which is what registry clients ask for).
fn parse_range(range: &str) -> Option<u64> {
    let spec = range.strip_prefix("bytes=")?;
    let (start, _end) = spec.split_once('-')?;
    start.trim().parse().ok()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        404 => "Not Found",
        405 => "Method Not Allowed",
        416 => "Range Not Satisfiable",
        _ => "Internal Server Error",
    }
}

fn write_response(stream: &mut TcpStream, resp: &Response, head_only: bool) -> Result<()> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    for (k, v) in &resp.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        resp.body.len()
    ));
    stream
        .write_all(head.as_bytes())
        .context("writing response head")?;
    if head_only {
        return Ok(());
    }
    let send = resp
        .cut_after
        .map_or(resp.body.len(), |n| n.min(resp.body.len()));
    match &resp.body {
        Body::Bytes(b) => {
            let send = usize::try_from(send).unwrap_or(usize::MAX).min(b.len());
            stream.write_all(&b[..send]).context("writing body")?;
        }
        Body::File { path, offset, .. } => {
            let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
            f.seek(SeekFrom::Start(*offset)).context("seeking blob")?;
            let copied = io::copy(&mut f.take(send), stream).context("sending blob")?;
            ensure!(
                copied == send,
                "blob {} shrank while serving",
                path.display()
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;

    struct Entry {
        name: String,
        kind: u8,
        link: String,
        data: Vec<u8>,
    }

    fn field(h: &[u8]) -> String {
        let end = h.iter().position(|&b| b == 0).unwrap_or(h.len());
        String::from_utf8_lossy(&h[..end]).into_owned()
    }

    /// Reads a ustar archive (enough for what the fixtures and skopeo write).
    fn untar(tar: &[u8]) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos + TAR_BLOCK <= tar.len() {
            let h = &tar[pos..pos + TAR_BLOCK];
            if h.iter().all(|&b| b == 0) {
                break;
            }
            let stored = u64::from_str_radix(field(&h[148..156]).trim(), 8).unwrap();
            let sum: u64 = h
                .iter()
                .enumerate()
                .map(|(i, &b)| {
                    if (148..156).contains(&i) {
                        32
                    } else {
                        u64::from(b)
                    }
                })
                .sum();
            assert_eq!(stored, sum, "tar checksum at {pos}");
            let size = usize::from_str_radix(field(&h[124..136]).trim(), 8).unwrap();
            let mut name = field(&h[0..100]);
            let prefix = field(&h[345..500]);
            if !prefix.is_empty() {
                name = format!("{prefix}/{name}");
            }
            pos += TAR_BLOCK;
            out.push(Entry {
                name,
                kind: h[156],
                link: field(&h[157..257]),
                data: tar[pos..pos + size].to_vec(),
            });
            pos += size.div_ceil(TAR_BLOCK) * TAR_BLOCK;
        }
        out
    }

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        GzDecoder::new(data).read_to_end(&mut out).unwrap();
        out
    }

    fn json_blob(layout: &Layout, digest: &str) -> Value {
        serde_json::from_slice(&layout.blob(digest).unwrap()).unwrap()
    }

    /// Every blob is stored under its own digest.
    fn assert_consistent(layout: &Layout) {
        for d in layout.blobs().unwrap() {
            assert_eq!(sha256_digest(&layout.blob(&d).unwrap()), d);
        }
        let index: Value =
            serde_json::from_slice(&fs::read(layout.dir.join("index.json")).unwrap()).unwrap();
        let top = &index["manifests"][0];
        assert_eq!(top["digest"], layout.digest.as_str());
        assert_eq!(top["mediaType"], layout.media_type.as_str());
        assert_eq!(top["annotations"][REF_NAME_ANNOTATION], layout.tag.as_str());
    }

    #[test]
    fn busybox_layout_is_reproducible_with_correct_diff_id() {
        let tmp = TempDir::new().unwrap();
        let a = busybox_layout(&tmp.path().join("a"), "v1").unwrap();
        let b = busybox_layout(&tmp.path().join("b"), "v1").unwrap();
        assert_eq!(a.digest, b.digest);
        assert_eq!(a.blobs().unwrap(), b.blobs().unwrap());
        assert_eq!(a.media_type, MEDIA_TYPE_MANIFEST);
        assert_consistent(&a);

        let manifest = json_blob(&a, &a.digest);
        assert_eq!(manifest["mediaType"], MEDIA_TYPE_MANIFEST);
        assert_eq!(manifest["config"]["mediaType"], MEDIA_TYPE_CONFIG);
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1);
        assert_eq!(layers[0]["mediaType"], MEDIA_TYPE_LAYER_GZIP);

        let config = json_blob(&a, manifest["config"]["digest"].as_str().unwrap());
        assert_eq!(config["os"], "linux");
        assert_eq!(config["architecture"], "amd64");
        assert_eq!(config["config"]["Cmd"], json!(["/bin/sh"]));

        let gz = a.blob(layers[0]["digest"].as_str().unwrap()).unwrap();
        assert_eq!(gz.len() as u64, layers[0]["size"].as_u64().unwrap());
        assert_eq!(&gz[4..8], &[0, 0, 0, 0], "gzip header mtime");
        let tar = gunzip(&gz);
        assert_eq!(config["rootfs"]["diff_ids"], json!([sha256_digest(&tar)]));

        let entries = untar(&tar);
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["bin/", "bin/busybox", "bin/sh"]);
        assert_eq!(entries[0].kind, b'5');
        assert_eq!(entries[1].data, fs::read(BUSYBOX).unwrap());
        assert_eq!(
            (entries[2].kind, entries[2].link.as_str()),
            (b'2', "busybox")
        );
    }

    #[test]
    fn layout_dir_must_be_empty() {
        let tmp = TempDir::new().unwrap();
        fs::write(tmp.path().join("stray"), b"x").unwrap();
        assert!(busybox_layout(tmp.path(), "v1").is_err());
    }

    #[test]
    fn two_platform_layout_has_both_platforms() {
        let tmp = TempDir::new().unwrap();
        let single = busybox_layout(&tmp.path().join("single"), "v1").unwrap();
        let multi = two_platform_layout(&tmp.path().join("multi"), "v1").unwrap();
        assert_eq!(multi.media_type, MEDIA_TYPE_INDEX);
        assert_consistent(&multi);

        let index = json_blob(&multi, &multi.digest);
        assert_eq!(index["mediaType"], MEDIA_TYPE_INDEX);
        let children = index["manifests"].as_array().unwrap();
        let platforms: Vec<(&str, &str)> = children
            .iter()
            .map(|c| {
                let p = &c["platform"];
                (
                    p["os"].as_str().unwrap(),
                    p["architecture"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(platforms, [("linux", "amd64"), ("linux", "arm64")]);
        assert_eq!(children[0]["digest"], single.digest.as_str());

        let arm = json_blob(&multi, children[1]["digest"].as_str().unwrap());
        let config = json_blob(&multi, arm["config"]["digest"].as_str().unwrap());
        assert_eq!(config["architecture"], "arm64");
        let layer = multi
            .blob(arm["layers"][0]["digest"].as_str().unwrap())
            .unwrap();
        let entries = untar(&gunzip(&layer));
        let file = entries
            .iter()
            .find(|e| e.name == "etc/ciab-platform")
            .unwrap();
        assert_eq!(file.data, b"arm64");

        let all: Vec<String> = multi
            .manifests()
            .unwrap()
            .into_iter()
            .map(|m| m.0)
            .collect();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0], multi.digest);
    }

    #[test]
    fn random_layout_has_requested_size_and_is_seeded() {
        let tmp = TempDir::new().unwrap();
        let total = 8 * 1024 * 1024 + 5;
        let a = random_layout(&tmp.path().join("a"), "r", total, 3, 7).unwrap();
        let b = random_layout(&tmp.path().join("b"), "r", total, 3, 7).unwrap();
        let c = random_layout(&tmp.path().join("c"), "r", total, 3, 8).unwrap();
        assert_eq!(a.digest, b.digest);
        assert_ne!(a.digest, c.digest);
        assert_consistent(&a);

        let manifest = json_blob(&a, &a.digest);
        let config = json_blob(&a, manifest["config"]["digest"].as_str().unwrap());
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 3);
        let mut file_bytes = 0;
        for (i, l) in layers.iter().enumerate() {
            assert_eq!(l["mediaType"], MEDIA_TYPE_LAYER_TAR);
            let digest = l["digest"].as_str().unwrap();
            assert_eq!(config["rootfs"]["diff_ids"][i], digest);
            let tar = a.blob(digest).unwrap();
            assert_eq!(tar.len() as u64, l["size"].as_u64().unwrap());
            let entries = untar(&tar);
            assert_eq!(entries.len(), 1);
            assert_eq!(entries[0].name, format!("random-{i}.bin"));
            file_bytes += entries[0].data.len() as u64;
            if i == 0 {
                let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
                gz.write_all(&entries[0].data).unwrap();
                let packed = gz.finish().unwrap();
                assert!(
                    packed.len() >= entries[0].data.len(),
                    "data is compressible"
                );
            }
        }
        assert_eq!(file_bytes, total);
    }

    /// Writes 1 GiB; run by hand: `cargo test --release -p ciab-qemu-tests
    /// --lib random_layout_throughput -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn random_layout_throughput() {
        let tmp = TempDir::new().unwrap();
        let total = 1 << 30;
        let start = Instant::now();
        random_layout(&tmp.path().join("big"), "big", total, 4, 1).unwrap();
        let mb_s = total as f64 / 1e6 / start.elapsed().as_secs_f64();
        println!("random_layout: {mb_s:.0} MB/s");
        assert!(mb_s > 300.0, "{mb_s:.0} MB/s");
    }

    #[test]
    fn docker_archive_has_uncompressed_layers() {
        let tmp = TempDir::new().unwrap();
        let layout = busybox_layout(&tmp.path().join("oci"), "v1").unwrap();
        let out = tmp.path().join("busybox.tar");
        docker_archive(&layout, &out, "ciab/busybox:v1").unwrap();

        let entries = untar(&fs::read(&out).unwrap());
        let file = |name: &str| &entries.iter().find(|e| e.name == name).unwrap().data;
        let manifest: Value = serde_json::from_slice(file("manifest.json")).unwrap();
        let m = &manifest[0];
        assert_eq!(m["RepoTags"], json!(["docker.io/ciab/busybox:v1"]));
        let config: Value = serde_json::from_slice(file(m["Config"].as_str().unwrap())).unwrap();
        assert_eq!(config["architecture"], "amd64");
        let layer = file(m["Layers"][0].as_str().unwrap());
        assert_eq!(config["rootfs"]["diff_ids"], json!([sha256_digest(layer)]));
    }

    /// Paths and contents of every file under `root`.
    fn snapshot(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_owned()];
        while let Some(dir) = stack.pop() {
            for e in fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p.clone());
                    out.push((p, Vec::new()));
                } else {
                    let data = fs::read(&p).unwrap();
                    out.push((p, data));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn registry_push_then_readonly_serving() {
        let tmp = TempDir::new().unwrap();
        let single = busybox_layout(&tmp.path().join("single"), "v1").unwrap();
        let multi = two_platform_layout(&tmp.path().join("multi"), "v1").unwrap();
        let root = tmp.path().join("storage");
        let single_path = format!("/v2/ciab/busybox/manifests/{}", single.digest);
        let layer = json_blob(&single, &single.digest)["layers"][0]["digest"]
            .as_str()
            .unwrap()
            .to_owned();
        let layer_path = format!("v2/ciab/busybox/blobs/{layer}");

        let fetch = |reg: &LocalRegistry| {
            let (status, body) = reg.get(&single_path, MEDIA_TYPE_MANIFEST).unwrap();
            assert_eq!(status, 200);
            assert_eq!(body, single.blob(&single.digest).unwrap());
            let (status, body) = reg.get(&layer_path, "*/*").unwrap();
            assert_eq!(status, 200);
            assert_eq!(body, single.blob(&layer).unwrap());
            let (status, body) = reg
                .get("/v2/ciab/multi/manifests/v1", MEDIA_TYPE_INDEX)
                .unwrap();
            assert_eq!(status, 200);
            assert_eq!(body, multi.blob(&multi.digest).unwrap());
        };

        {
            let reg = LocalRegistry::start_writable(&root).unwrap();
            reg.push(&single, "ciab/busybox", "v1").unwrap();
            reg.push(&multi, "ciab/multi", "v1").unwrap();
            fetch(&reg);
            let (status, _) = reg.get("/v2/ciab/busybox/manifests/nope", "*/*").unwrap();
            assert_eq!(status, 404);
        }

        let before = snapshot(&root);
        let reg = LocalRegistry::start_readonly(&root).unwrap();
        fetch(&reg);
        let upload =
            http_request(&reg.host(), "POST", "/v2/ciab/busybox/blobs/uploads/", &[]).unwrap();
        assert_eq!(upload.status, 405, "read-only registry accepted an upload");
        drop(reg);
        assert!(
            before == snapshot(&root),
            "read-only registry changed its storage"
        );
    }

    #[test]
    fn readonly_registry_wants_a_storage_root() {
        let tmp = TempDir::new().unwrap();
        let err = LocalRegistry::start_readonly(tmp.path()).err().unwrap();
        assert!(format!("{err:#}").contains("docker/registry/v2"), "{err:#}");
    }

    #[test]
    fn stand_in_serves_and_injects_faults() {
        let tmp = TempDir::new().unwrap();
        let layout = busybox_layout(&tmp.path().join("oci"), "v1").unwrap();
        let manifest_bytes = layout.blob(&layout.digest).unwrap();
        let manifest: Value = serde_json::from_slice(&manifest_bytes).unwrap();
        let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
        let layer_bytes = layout.blob(&layer).unwrap();
        let stand_in = StandIn::serve(&layout, Fault::None).unwrap();
        let host = stand_in.host();
        let get = |path: &str, headers: &[(&str, &str)]| {
            http_request(&host, "GET", path, headers).unwrap()
        };
        let blob_path = format!("/v2/any/repo/blobs/{layer}");

        assert_eq!(get("/v2/", &[]).status, 200);
        for reference in ["v1", layout.digest.as_str()] {
            let r = get(&format!("/v2/x/manifests/{reference}"), &[]);
            assert_eq!(r.status, 200);
            assert_eq!(r.body, manifest_bytes);
            assert_eq!(r.header("content-type"), Some(MEDIA_TYPE_MANIFEST));
            assert_eq!(
                r.header("docker-content-digest"),
                Some(layout.digest.as_str())
            );
        }
        let head = http_request(&host, "HEAD", "/v2/x/manifests/v1", &[]).unwrap();
        assert_eq!(head.content_length(), Some(manifest_bytes.len() as u64));
        assert!(head.body.is_empty());

        let r = get(&blob_path, &[]);
        assert!(r.complete);
        assert_eq!(r.body, layer_bytes);
        let r = get(&blob_path, &[("Range", "bytes=1000-")]);
        assert_eq!(r.status, 206);
        assert_eq!(r.body, &layer_bytes[1000..]);
        let total = layer_bytes.len();
        let expected_range = format!("bytes 1000-{}/{total}", total - 1);
        assert_eq!(r.header("content-range"), Some(expected_range.as_str()));

        let r = get("/v2/x/manifests/nope", &[]);
        assert_eq!(r.status, 404);
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["errors"][0]["code"], "MANIFEST_UNKNOWN");
        let missing = format!("/v2/x/blobs/sha256:{}", "0".repeat(64));
        let body: Value = serde_json::from_slice(&get(&missing, &[]).body).unwrap();
        assert_eq!(body["errors"][0]["code"], "BLOB_UNKNOWN");

        stand_in.set_fault(Fault::TruncateBlob {
            digest: layer.clone(),
            after: 1000,
        });
        let r = get(&blob_path, &[]);
        assert!(!r.complete);
        assert_eq!(r.body, &layer_bytes[..1000]);
        assert_eq!(r.content_length(), Some(total as u64));
        let r = get(&blob_path, &[("Range", "bytes=1000-")]);
        assert!(r.complete, "a resume past the cut is served in full");
        assert_eq!(r.body, &layer_bytes[1000..]);

        stand_in.set_fault(Fault::WrongBlob {
            digest: layer.clone(),
            bytes: b"garbage".to_vec(),
        });
        let r = get(&blob_path, &[]);
        assert_eq!(r.body, b"garbage");
        assert_eq!(r.header("docker-content-digest"), Some(layer.as_str()));

        stand_in.set_fault(Fault::WrongManifest {
            reference: "v1".into(),
            bytes: b"{}".to_vec(),
        });
        let r = get("/v2/x/manifests/v1", &[]);
        assert_eq!(r.body, b"{}");
        let served = sha256_digest(b"{}");
        assert_eq!(r.header("docker-content-digest"), Some(served.as_str()));

        stand_in.set_fault(Fault::None);
        assert_eq!(get(&blob_path, &[]).body, layer_bytes);
        assert_eq!(stand_in.blob_requests(&layer), 6);
    }

    #[test]
    fn skopeo_pulls_from_stand_in_and_notices_a_wrong_blob() {
        let tmp = TempDir::new().unwrap();
        let layout = two_platform_layout(&tmp.path().join("oci"), "v1").unwrap();
        let stand_in = StandIn::serve(&layout, Fault::None).unwrap();
        let src = format!("docker://{}/ciab/multi:v1", stand_in.host());
        let pull = |dir: &str| {
            let dest = format!("oci:{}:v1", tmp.path().join(dir).display());
            let args = [
                "copy",
                "--quiet",
                "--all",
                "--preserve-digests",
                "--src-tls-verify=false",
                &src,
                &dest,
            ];
            skopeo(&args)
        };
        pull("copy").unwrap();
        let copied: Value =
            serde_json::from_slice(&fs::read(tmp.path().join("copy/index.json")).unwrap()).unwrap();
        assert_eq!(copied["manifests"][0]["digest"], layout.digest.as_str());

        let amd64 = json_blob(&layout, &layout.manifests().unwrap()[1].0);
        let config = amd64["config"]["digest"].as_str().unwrap().to_owned();
        stand_in.set_fault(Fault::WrongBlob {
            digest: config.clone(),
            bytes: b"{}".to_vec(),
        });
        let err = pull("bad").unwrap_err();
        assert!(format!("{err:#}").contains("digest"), "{err:#}");
        assert!(stand_in.blob_requests(&config) >= 2);
    }
}
