//! Stage `rootfs`: mmdebstrap of the Debian suite with the spec's packages.
//!
//! .deb files are kept in the cache's `debs/` across builds (synced in before
//! and out after mmdebstrap), so a cold rootfs downloads nothing it has seen.
//! The initrd is built here, by the kernel's own postinst, from a config
//! written before the kernel is installed: `MODULES=list` plus the spec's
//! module list, so it carries only what boot needs.

use super::{Context, STAGE_FORMAT};
use crate::cache::KeyBuilder;
use ciab_core::exec::Cmd;
use crate::progress::Outcome;
use anyhow::{bail, Context as _, Result};
use ciab_core::contract::PackageInfo;
use std::fs;
use std::path::{Path, PathBuf};

/// Output of the rootfs stage.
#[derive(Debug, Clone)]
pub struct Rootfs {
    pub key: String,
    /// The root tree.
    pub tree: PathBuf,
    pub packages: Vec<PackageInfo>,
    /// Kernel release, e.g. `6.12.57+deb13-amd64`.
    pub kernel: String,
}

/// Packages a bootable ciab image cannot do without.
pub const REQUIRED_PACKAGES: &[&str] = &["linux-image-amd64", "systemd", "systemd-sysv", "udev", "initramfs-tools", "systemd-boot-efi"];

pub fn key(ctx: &Context) -> String {
    let spec = ctx.spec;
    let mut k = KeyBuilder::new("rootfs");
    k.add("format", STAGE_FORMAT)
        .add("suite", &spec.debian.suite)
        .add("variant", &spec.debian.variant)
        .add("sources", ctx.sources.lines(&spec.debian.suite, &spec.debian.components).join("\n"))
        .add("packages", spec.packages.join(" "))
        .add("initrd_modules", spec.boot.initrd_modules.join(" "))
        .add("epoch", spec.source_date_epoch.to_string())
        .add("mmdebstrap", ctx.tool("mmdebstrap"))
        .add("hooks", initramfs_hook(&spec.boot.initrd_modules));
    for (i, script) in spec.post_install.iter().enumerate() {
        // Contents, not paths: the same script in another checkout is the same
        // input. The spec checked it exists; a script gone since keys as empty
        // and fails at its upload.
        k.add(&format!("post_install[{i}]"), fs::read(script).unwrap_or_default());
    }
    k.finish()
}

pub fn run(ctx: &Context) -> Result<(Rootfs, Outcome, Option<u64>)> {
    let missing: Vec<&str> = REQUIRED_PACKAGES.iter().copied().filter(|p| !ctx.spec.packages.iter().any(|q| q == p)).collect();
    if !missing.is_empty() {
        bail!("the spec's packages.install lacks {}: every ciab image needs them to boot", missing.join(", "));
    }
    let key = key(ctx);
    let (dir, cached) = ctx.cache.get_or_build("rootfs", &key, |tmp| build(ctx, tmp))?;
    let packages: Vec<PackageInfo> = serde_json::from_slice(&fs::read(dir.join("packages.json"))?)?;
    let kernel = fs::read_to_string(dir.join("kernel"))?.trim().to_owned();
    let tree = dir.join("tree");
    let size = fs::read_to_string(dir.join("size")).ok().and_then(|s| s.trim().parse().ok());
    Ok((Rootfs { key, tree, packages, kernel }, if cached { Outcome::Cached } else { Outcome::Ran }, size))
}

/// initramfs-tools hook adding the spec's modules to a `MODULES=list` initrd.
fn initramfs_hook(modules: &[String]) -> String {
    format!(
        "#!/bin/sh\n# Written by ciab: the modules boot needs, and no others.\nPREREQ=\"\"\nprereqs() {{ echo \"$PREREQ\"; }}\ncase \"$1\" in prereqs) prereqs; exit 0;; esac\n. /usr/share/initramfs-tools/hook-functions\nfor m in {}; do manual_add_modules \"$m\"; done\n",
        modules.join(" ")
    )
}

fn build(ctx: &Context, out: &Path) -> Result<()> {
    let spec = ctx.spec;
    let tree = out.join("tree");
    let hook_dir = out.join("hooks");
    fs::create_dir_all(&hook_dir)?;
    let hook = hook_dir.join("ciab-modules");
    fs::write(&hook, initramfs_hook(&spec.boot.initrd_modules))?;
    let q = |p: &Path| ciab_core::exec::shell_quote(&p.to_string_lossy());
    let essential = vec![
        "mkdir -p \"$1\"/etc/initramfs-tools/conf.d \"$1\"/etc/initramfs-tools/hooks".to_owned(),
        "printf 'MODULES=list\\nCOMPRESS=zstd\\n' > \"$1\"/etc/initramfs-tools/conf.d/ciab.conf".to_owned(),
        format!("install -m 0755 {} \"$1\"/etc/initramfs-tools/hooks/ciab-modules", q(&hook)),
    ];
    let mut customize = Vec::new();
    for (i, script) in spec.post_install.iter().enumerate() {
        let name = format!("/tmp/ciab-post-install-{i}");
        tracing::info!("post-install script {}", script.display());
        customize.push(format!("upload {} {name}", q(script)));
        customize.push(format!("chroot \"$1\" /bin/sh -eu {name} && rm -f \"$1\"{name}"));
    }
    tracing::info!("mmdebstrap {} ({} packages requested)", spec.debian.suite, spec.packages.len());
    mmdebstrap(ctx, &Debootstrap { variant: &spec.debian.variant, packages: &spec.packages, essential_hooks: &essential, customize_hooks: &customize }, &tree)?;

    let packages = installed_packages(&tree)?;
    fs::write(out.join("packages.json"), serde_json::to_vec_pretty(&packages)?)?;
    let kernel = kernel_release(&tree)?;
    fs::write(out.join("kernel"), &kernel)?;
    let size = crate::tree::disk_usage(&tree)?;
    fs::write(out.join("size"), size.to_string())?;
    Ok(())
}

/// What a tree of the spec's Debian suite is made of, beyond what every
/// tree shares.
pub struct Debootstrap<'a> {
    pub variant: &'a str,
    pub packages: &'a [String],
    /// mmdebstrap `--essential-hook`s: after the essential packages, before
    /// the rest (configuration the rest's postinsts read).
    pub essential_hooks: &'a [String],
    /// mmdebstrap `--customize-hook`s: on the finished tree.
    pub customize_hooks: &'a [String],
}

/// Runs mmdebstrap of the spec's suite into the directory `tree`, the way
/// every tree ciab makes is made: .deb files synced in from and out to the
/// cache's `debs/` (a cold tree downloads nothing it has seen), no
/// documentation but the copyright files, nothing that records when it ran,
/// and every mtime clamped to the spec's epoch.
pub fn mmdebstrap(ctx: &Context, d: &Debootstrap, tree: &Path) -> Result<()> {
    let spec = ctx.spec;
    let debs = ctx.cache.debs_dir();
    fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
    let q = |p: &Path| ciab_core::exec::shell_quote(&p.to_string_lossy());
    let mut cmd = Cmd::new("mmdebstrap")
        .package("mmdebstrap")
        .env("SOURCE_DATE_EPOCH", spec.source_date_epoch.to_string())
        .arg("--mode=root")
        .arg(format!("--variant={}", d.variant))
        .arg("--format=directory")
        .arg(format!("--include={}", d.packages.join(",")))
        // Documentation and translations are dead weight on an appliance;
        // copyright files stay for license compliance.
        .arg("--dpkgopt=path-exclude=/usr/share/man/*")
        .arg("--dpkgopt=path-exclude=/usr/share/locale/*")
        .arg("--dpkgopt=path-exclude=/usr/share/doc/*")
        .arg("--dpkgopt=path-include=/usr/share/doc/*/copyright")
        .arg("--skip=download/empty")
        .arg("--skip=essential/unlink")
        .arg("--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/")
        .arg(format!("--setup-hook=sync-in {} /var/cache/apt/archives/", q(&debs)));
    for hook in d.essential_hooks {
        cmd = cmd.arg(format!("--essential-hook={hook}"));
    }
    cmd = cmd
        .arg(format!("--customize-hook=sync-out /var/cache/apt/archives {}", q(&debs)))
        .arg("--customize-hook=rm -rf \"$1\"/var/cache/apt/archives/*.deb \"$1\"/var/cache/apt/archives/partial");
    for hook in d.customize_hooks {
        cmd = cmd.arg(format!("--customize-hook={hook}"));
    }
    cmd = cmd
        // apt leaves its partial directories owned by root or by _apt depending
        // on whether it downloaded anything: normalize both to apt's own layout.
        .arg("--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/partial && install -d -m 0700 \"$1\"/var/cache/apt/archives/partial \"$1\"/var/lib/apt/lists/partial && chroot \"$1\" chown _apt:root /var/cache/apt/archives/partial /var/lib/apt/lists/partial")
        // Logs and caches that record when, not what.
        .arg("--customize-hook=rm -rf \"$1\"/var/log/dpkg.log \"$1\"/var/log/alternatives.log \"$1\"/var/log/apt \"$1\"/var/cache/ldconfig/aux-cache \"$1\"/var/lib/dpkg/*-old \"$1\"/etc/*- \"$1\"/var/lib/apt/lists/*_* \"$1\"/var/cache/debconf/*-old")
        .arg(&spec.debian.suite)
        .arg(tree);
    for line in ctx.sources.lines(&spec.debian.suite, &spec.debian.components) {
        cmd = cmd.arg(line);
    }
    cmd.run().map_err(explain_mmdebstrap_error)?;
    // The host cache keeps only .deb files.
    crate::cache::remove_dir_all_if_exists(&debs.join("partial"))?;
    crate::tree::clamp_mtimes(tree, spec.source_date_epoch)
}

/// mmdebstrap's output is long; the line that matters is apt's `E:` line.
fn explain_mmdebstrap_error(err: anyhow::Error) -> anyhow::Error {
    let text = format!("{err:#}");
    if let Some(line) = text.lines().find(|l| l.contains("Unable to locate package") || l.contains("has no installation candidate")) {
        let line = line.trim().trim_start_matches("E: ");
        return anyhow::anyhow!("mmdebstrap: {line}: check `packages.install` in the spec (is the name right for this suite?)\n\n{text}");
    }
    err
}

/// The installed packages, from the tree's dpkg database (read by the host's dpkg-query).
pub fn installed_packages(tree: &Path) -> Result<Vec<PackageInfo>> {
    let admin = tree.join("var/lib/dpkg");
    let out = Cmd::new("dpkg-query")
        .package("dpkg")
        .arg(format!("--admindir={}", admin.display()))
        .args(["-W", "-f", "${db:Status-Abbrev}\t${Package}\t${Version}\t${Architecture}\t${source:Package}\t${source:Version}\n"])
        .run()?;
    let mut packages: Vec<PackageInfo> = out
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() == 6 && f[0].starts_with("ii")).then(|| PackageInfo {
                name: f[1].to_owned(),
                version: f[2].to_owned(),
                architecture: f[3].to_owned(),
                source: f[4].to_owned(),
                source_version: f[5].to_owned(),
            })
        })
        .collect();
    packages.sort();
    if packages.is_empty() {
        bail!("no installed packages found in {}", admin.display());
    }
    Ok(packages)
}

/// The one kernel release under /usr/lib/modules.
pub fn kernel_release(tree: &Path) -> Result<String> {
    let dir = tree.join("usr/lib/modules");
    let mut releases: Vec<String> = fs::read_dir(&dir)
        .with_context(|| format!("listing {}: is linux-image-amd64 installed?", dir.display()))?
        .flatten()
        .filter(|e| e.path().join("modules.dep").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    releases.sort();
    match releases.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("no kernel in {}: add linux-image-amd64 to packages.install", dir.display()),
        many => bail!("several kernels in {}: {}; install exactly one", dir.display(), many.join(", ")),
    }
}
