//! `ciab build`: the stage pipeline, from a spec to a signed output directory.
//!
//! The stages run in order, each cached by the hash of its inputs; outputs
//! are assembled in a staging directory beside the destination and renamed
//! into place at the end, so a failed or interrupted build leaves the previous
//! output untouched and no partial one.

use crate::cache::Cache;
use crate::doctor;
use crate::progress::{Outcome, Progress};
use crate::spec::Spec;
use crate::stages::{self, Context, DiskIds};
use anyhow::{bail, Context as _, Result};
use ciab_core::contract::{StageKey, MANIFEST_FILE, MANIFEST_SIG_FILE, SBOM_FILE};
use std::fs;
use std::path::{Path, PathBuf};

/// How many entries per stage the cache keeps after a build.
const CACHE_KEEP: usize = 3;

/// Options of one build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub spec: PathBuf,
    /// The output parent: the image lands in `<out>/<name>/`.
    pub out: PathBuf,
    pub cache_root: PathBuf,
    /// The `ciab-firstboot` binary to install; found beside `ciab` when `None`.
    pub firstboot_bin: Option<PathBuf>,
    /// Generate the signing key when it does not exist yet.
    pub create_key: bool,
    /// Signing key overriding the spec's `signing.key`.
    pub signing_key: Option<PathBuf>,
    /// Registry access for the bundle's images.
    pub fetch: crate::fetch::FetchOptions,
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct BuildResult {
    pub out_dir: PathBuf,
    pub summary: String,
    pub stages: Vec<(String, Outcome, f64)>,
}

/// Locates the first-boot binary: explicit, beside this executable, or on PATH.
pub fn find_firstboot_bin(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_owned());
        }
        bail!("first-boot binary {} does not exist", p.display());
    }
    let sibling = std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.join("ciab-firstboot")));
    if let Some(p) = sibling.filter(|p| p.is_file()) {
        return Ok(p);
    }
    bail!("ciab-firstboot not found beside the ciab binary: build it with `cargo build --release -p ciab-firstboot` or pass --firstboot-bin")
}

pub fn build(opts: &BuildOptions) -> Result<BuildResult> {
    let spec = Spec::load(&opts.spec)?;
    crate::fetch::check_pinned(&spec).with_context(|| format!("{}", opts.spec.display()))?;
    let checks = doctor::check_all();
    doctor::require(&checks, doctor::Need::Build)?;
    if !rustix::process::geteuid().is_root() {
        bail!("ciab build runs mmdebstrap as root (chroot, device nodes, file ownership): run it as root");
    }
    let firstboot_bin = find_firstboot_bin(opts.firstboot_bin.as_deref())?;
    let key_path = opts.signing_key.clone().unwrap_or_else(|| spec.signing_key.clone());
    let secret_key = load_or_create_key(&key_path, opts.create_key)?;

    let identity = spec.identity_json()?;
    let spec_sha256 = crate::fsutil::sha256_bytes(identity.as_bytes());
    let sources = crate::mirror::resolve(spec.debian.mirror.as_deref(), spec.debian.security_mirror.as_deref(), Path::new("/etc/apt"))?;
    let cache = Cache::open(&opts.cache_root)?;
    let ctx = Context {
        spec: &spec,
        spec_sha256: spec_sha256.clone(),
        sources,
        cache: &cache,
        tools: doctor::build_tool_versions(&checks),
        ids: DiskIds::derive(&spec_sha256),
        fetch: opts.fetch.clone(),
    };
    tracing::info!("building {} {} from {} (spec {})", spec.name, spec.version, opts.spec.display(), &spec_sha256[..12]);

    let mut p = Progress::new();
    let rootfs = p.stage("rootfs", || stages::rootfs::run(&ctx))?;
    let tree = p.stage("overlays", || stages::overlays::run(&ctx, &rootfs, &firstboot_bin))?;
    let bundle = p.stage("bundle", || stages::bundle::run(&ctx, &rootfs))?;
    let boot = p.stage("boot", || stages::boot::run(&ctx, &rootfs))?;
    let fs = p.stage("filesystems", || stages::filesystems::run(&ctx, &tree, &boot, &bundle))?;
    let disk = p.stage("disk", || stages::disk::run(&ctx, &fs, &boot))?;
    let formats = p.stage("formats", || stages::formats::run(&ctx, &disk))?;
    let stage_keys: Vec<StageKey> = [
        ("rootfs", &rootfs.key),
        ("overlays", &tree.key),
        ("bundle", &bundle.key),
        ("boot", &boot.key),
        ("filesystems", &fs.key),
        ("disk", &disk.key),
        ("formats", &formats.key),
    ]
    .iter()
    .map(|(s, k)| StageKey { stage: s.to_string(), key: k.to_string() })
    .collect();
    let input = stages::manifest::ManifestInput { rootfs: &rootfs, bundle: &bundle, disk: &disk, formats: &formats, stages: stage_keys, secret_key: &secret_key };
    let signed = p.stage("manifest", || stages::manifest::run(&ctx, &input))?;
    let installer = if spec.formats.contains(&crate::spec::OutputFormat::Iso) {
        let installer_bin = firstboot_bin.with_file_name("ciab-installer");
        if !installer_bin.is_file() {
            bail!("{} not found beside ciab-firstboot: build it with `cargo build --release -p ciab-installer`", installer_bin.display());
        }
        let input = stages::installer::InstallerInput { rootfs: &rootfs, disk: &disk, signed: &signed, installer_bin: &installer_bin, secret_key: &secret_key };
        Some(p.stage("installer", || stages::installer::run(&ctx, &input))?)
    } else {
        None
    };

    let out_dir = opts.out.join(&spec.name);
    let mut files: Vec<PathBuf> = Vec::new();
    if spec.formats.contains(&crate::spec::OutputFormat::Raw) {
        files.push(disk.raw.clone());
        files.push(signed.dir.join(stages::manifest::bmap_name(&ctx)));
    }
    files.extend(formats.files.iter().map(|(_, p)| p.clone()));
    for f in [MANIFEST_FILE, MANIFEST_SIG_FILE, SBOM_FILE, crate::sign::PUBLIC_KEY_FILE] {
        files.push(signed.dir.join(f));
    }
    if let Some(i) = &installer {
        files.extend([i.iso.clone(), i.info.clone(), i.sig.clone()]);
    }
    p.stage("output", || {
        publish(&files, &out_dir)?;
        Ok(((), Outcome::Ran, None))
    })?;
    cache.prune(CACHE_KEEP)?;
    let stages = p.reports().iter().map(|r| (r.stage.to_owned(), r.outcome, r.elapsed.as_secs_f64())).collect();
    Ok(BuildResult { out_dir, summary: p.summary(), stages })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_replaces_atomically_and_sweeps_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("a.raw"), "new").unwrap();
        let out = dir.path().join("out/img");
        fs::create_dir_all(&out).unwrap();
        fs::write(out.join("stale"), "old").unwrap();
        let dead = dir.path().join("out/.img.tmp-999999999");
        fs::create_dir_all(&dead).unwrap();
        publish(&[src.join("a.raw")], &out).unwrap();
        assert_eq!(fs::read_to_string(out.join("a.raw")).unwrap(), "new");
        assert!(!out.join("stale").exists(), "the old output is replaced whole");
        assert!(!dead.exists(), "an interrupted build's staging directory is removed");
        assert_eq!(fs::read_dir(dir.path().join("out")).unwrap().count(), 1);
        // A missing input fails and leaves the previous output in place.
        assert!(publish(&[src.join("missing.raw")], &out).is_err());
        assert_eq!(fs::read_to_string(out.join("a.raw")).unwrap(), "new");
        assert_eq!(fs::read_dir(dir.path().join("out")).unwrap().count(), 1);
    }
}

fn load_or_create_key(path: &Path, create: bool) -> Result<minisign::SecretKey> {
    if !path.exists() && create {
        let pk = crate::sign::keygen(path)?;
        eprintln!("ciab: created signing key {} (public key {})", path.display(), crate::sign::public_key_path(path).display());
        tracing::info!("new public key: {}", pk.to_base64());
    }
    crate::sign::load_secret_key(path)
}

/// Removes staging directories of builds that were killed (Ctrl-C, power loss).
fn sweep_dead_staging(parent: &Path, name: &str) {
    let Ok(entries) = fs::read_dir(parent) else { return };
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = file.strip_prefix(&format!(".{name}.")) else { continue };
        let pid = rest.strip_prefix("tmp-").or_else(|| rest.strip_prefix("old-")).and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                tracing::debug!("removing {} left by an interrupted build", e.path().display());
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Puts `files` into `out_dir` atomically: a staging directory beside it is
/// filled (hard links from the cache where possible, sparse copies otherwise)
/// and renamed over the old output.
pub fn publish(files: &[PathBuf], out_dir: &Path) -> Result<()> {
    let parent = out_dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let name = out_dir.file_name().context("output directory has no name")?.to_string_lossy().into_owned();
    sweep_dead_staging(parent, &name);
    let staging = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    crate::cache::remove_dir_all_if_exists(&staging)?;
    fs::create_dir(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let result = (|| -> Result<()> {
        for f in files {
            let dest = staging.join(f.file_name().context("output file has no name")?);
            // Cached outputs are read-only so a hard link cannot be used to modify the cache.
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(f, fs::Permissions::from_mode(0o444)).with_context(|| format!("protecting {}", f.display()))?;
            if fs::hard_link(f, &dest).is_err() {
                let src = fs::File::open(f).with_context(|| format!("opening {}", f.display()))?;
                let dst = fs::File::create(&dest).with_context(|| format!("creating {}", dest.display()))?;
                dst.set_len(src.metadata()?.len())?;
                crate::blockmap::copy_sparse(&src, &dst, 0)?;
                dst.sync_all()?;
            }
        }
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        if out_dir.exists() {
            fs::rename(out_dir, &old).with_context(|| format!("moving the previous {} aside", out_dir.display()))?;
        }
        fs::rename(&staging, out_dir).with_context(|| format!("moving the new output into {}", out_dir.display()))?;
        crate::cache::remove_dir_all_if_exists(&old)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    result
}
