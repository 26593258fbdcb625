//! Building the images the end-to-end tests boot.
//!
//! Builds go through the same library call as `ciab build`, with the user's
//! stage cache (`${XDG_CACHE_HOME:-~/.cache}/ciab`, so CI and later runs reuse
//! it), a signing key private to the test run, and outputs under
//! `target/qemu-tests/`.

use anyhow::{bail, Context, Result};
use ciab_builder::build::{build, BuildOptions, BuildResult};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The repository root (the workspace).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Scratch space for test outputs.
pub fn work_dir() -> PathBuf {
    repo_root().join("target/qemu-tests")
}

/// Builds ciab's binaries (release) with the cargo running the tests and
/// returns the path of `bin`. The binaries' packages are always built
/// together, as `./ciab` builds them: cargo resolves the dependencies'
/// features per selection, so building one alone would compile a second
/// copy of the shared crates (and of the binary) beside `./ciab`'s.
fn cargo_build(bin: &str) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["build", "--release", "--locked", "-p", "ciab-builder", "-p", "ciab-firstboot", "-p", "ciab-installer"])
        .current_dir(repo_root())
        .status()
        .context("running cargo build -p ciab-builder -p ciab-firstboot -p ciab-installer")?;
    if !status.success() {
        bail!("cargo build -p ciab-builder -p ciab-firstboot -p ciab-installer failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target"));
    Ok(target.join("release").join(bin))
}

/// The first-boot binary (built once per test binary).
pub fn firstboot_bin() -> Result<PathBuf> {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    if let Some(p) = BIN.get() {
        return Ok(p.clone());
    }
    let bin = cargo_build("ciab-firstboot")?;
    let _ = BIN.set(bin.clone());
    Ok(bin)
}

/// The `ciab` binary.
pub fn ciab_bin() -> Result<PathBuf> {
    cargo_build("ciab")
}

/// The signing key of this test run (created once).
pub fn test_key() -> PathBuf {
    work_dir().join("test-signing.key")
}

/// Options for building `spec` into `out` with `cache_root`.
pub fn options(spec: &Path, out: &Path, cache_root: &Path) -> Result<BuildOptions> {
    Ok(BuildOptions {
        spec: spec.to_owned(),
        out: out.to_owned(),
        cache_root: cache_root.to_owned(),
        firstboot_bin: Some(firstboot_bin()?),
        create_key: true,
        signing_key: Some(test_key()),
        fetch: Default::default(),
    })
}

/// Builds with the given options; builds are serialized within a test binary
/// (the cache lock would serialize them anyway).
pub fn build_with(opts: &BuildOptions) -> Result<BuildResult> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    build(opts)
}

/// A disk of `size` (e.g. `"8G"`) holding `image`: the same throw-away
/// overlay `ciab run` boots on, so the guest can grow into the space after
/// the image without touching the build.
pub fn disk_with_image(image: &Path, dir: &Path, size: &str) -> Result<PathBuf> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    ciab_builder::run::overlay_disk(image, dir, size)
}

/// `images/<name>.toml` built once per test binary into `target/qemu-tests/out`.
fn built_once(cell: &'static OnceLock<PathBuf>, name: &str) -> Result<PathBuf> {
    if let Some(p) = cell.get() {
        return Ok(p.clone());
    }
    let opts = options(&repo_root().join(format!("images/{name}.toml")), &work_dir().join("out"), &ciab_builder::cache::default_root())?;
    let result = build_with(&opts)?;
    let _ = cell.set(result.out_dir.clone());
    Ok(result.out_dir)
}

/// `images/tiny.toml`: the fast test image.
pub fn tiny() -> Result<PathBuf> {
    static TINY: OnceLock<PathBuf> = OnceLock::new();
    built_once(&TINY, "tiny")
}

/// `images/eval.toml`: the default image, with the IaaS layer.
pub fn eval() -> Result<PathBuf> {
    static EVAL: OnceLock<PathBuf> = OnceLock::new();
    built_once(&EVAL, "eval")
}

/// The name scs-0104 reserves for the mandatory image, and where it must come from.
pub const UBUNTU: &str = "Ubuntu 24.04";
pub const UBUNTU_SOURCE: &str = "https://cloud-images.ubuntu.com/releases/noble/release-20240423/ubuntu-24.04-server-cloudimg-amd64.img";

/// `images/eval.toml` plus a stand-in for "Ubuntu 24.04" (an empty 1 GiB
/// qcow2 the spec marks as a stand-in: the real image cannot be downloaded
/// where the tests run), so first boot's registration of a downloaded,
/// reserved-name image is tested; built once per test binary.
pub fn eval_with_stand_in() -> Result<PathBuf> {
    static EVALSTANDIN: OnceLock<PathBuf> = OnceLock::new();
    if let Some(p) = EVALSTANDIN.get() {
        return Ok(p.clone());
    }
    let dir = work_dir().join("evalstandin");
    std::fs::create_dir_all(&dir)?;
    let stand_in = dir.join("noble-stand-in.qcow2");
    if !stand_in.exists() {
        ciab_core::exec::Cmd::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&stand_in).arg("1G").run()?;
    }
    let sha256 = ciab_builder::fsutil::sha256_file(&stand_in)?;
    let spec = dir.join("evalstandin.toml");
    std::fs::write(
        &spec,
        format!(
            "include = [{eval:?}]\n[image]\nname = \"evalstandin\"\n\n[[guest_images]]\nname = \"{UBUNTU}\"\nurl = \"noble-stand-in.qcow2\"\nsha256 = \"{sha256}\"\ndisk_format = \"qcow2\"\nstand_in = \"an empty disk: the tests run without the internet\"\n[guest_images.properties]\nimage_source = \"{UBUNTU_SOURCE}\"\nos_distro = \"ubuntu\"\nos_version = \"24.04\"\nimage_original_user = \"ubuntu\"\nimage_build_date = \"2024-04-23\"\nreplace_frequency = \"quarterly\"\n",
            eval = repo_root().join("images/eval.toml").display().to_string()
        ),
    )?;
    let result = build_with(&options(&spec, &work_dir().join("out"), &ciab_builder::cache::default_root())?)?;
    let _ = EVALSTANDIN.set(result.out_dir.clone());
    Ok(result.out_dir)
}

/// The tiny image with an installer ISO (`formats = ["raw", "iso"]`), the
/// `box` image's delivery on the tiny base, built once per test binary.
pub fn tiny_installer() -> Result<PathBuf> {
    static TINYBOX: OnceLock<PathBuf> = OnceLock::new();
    if let Some(p) = TINYBOX.get() {
        return Ok(p.clone());
    }
    let dir = work_dir().join("tinybox");
    std::fs::create_dir_all(&dir)?;
    let spec = dir.join("tinybox.toml");
    let tiny = repo_root().join("images/tiny.toml");
    std::fs::write(
        &spec,
        format!("include = [{:?}]\n[image]\nname = \"tinybox\"\n[outputs]\nformats = [\"raw\", \"iso\"]\n", tiny.display().to_string()),
    )?;
    let result = build_with(&options(&spec, &work_dir().join("out"), &ciab_builder::cache::default_root())?)?;
    let _ = TINYBOX.set(result.out_dir.clone());
    Ok(result.out_dir)
}
