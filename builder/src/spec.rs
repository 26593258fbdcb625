//! The image spec: `images/<name>.toml`, its includes, and the resolved form
//! every build stage works from.
//!
//! A spec file is parsed strictly (unknown keys are errors) into [`SpecFile`];
//! `include`d files are parsed first and merged under it (lists append, scalars
//! override); the result is validated and resolved into [`Spec`] with all
//! defaults filled in. Errors name the file, line, column and key.

use anyhow::{bail, Context, Result};
use ciab_core::toml_position::{line_col, TomlPositions};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// The spec used when `ciab build` is given none.
pub const DEFAULT_SPEC: &str = "images/eval.toml";

/// A problem in a spec file, located as precisely as the parser allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecError {
    pub file: PathBuf,
    /// 1-based line and column, when known.
    pub position: Option<(usize, usize)>,
    /// Dotted key path, e.g. `packages.install[2]`, when known.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, col)) = self.position {
            write!(f, ":{line}:{col}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// One spec file as written; every field optional so includes can layer.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecFile {
    /// Other spec files (relative to this one) merged underneath this one.
    #[serde(default)]
    pub include: Vec<toml::Spanned<String>>,
    pub image: Option<ImageSection>,
    pub debian: Option<DebianSection>,
    pub packages: Option<PackagesSection>,
    pub overlays: Option<OverlaysSection>,
    pub boot: Option<BootSection>,
    pub disk: Option<DiskSection>,
    pub outputs: Option<OutputsSection>,
    pub signing: Option<SigningSection>,
    pub registry: Option<RegistrySection>,
    /// Files carried in the bundle partition.
    #[serde(default)]
    pub artifacts: Vec<ArtifactEntry>,
    /// Disk images the box registers in Glance, made by the builder.
    #[serde(default)]
    pub guest_images: Vec<GuestImageEntry>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSection {
    pub name: Option<toml::Spanned<String>>,
    pub version: Option<toml::Spanned<String>>,
    pub description: Option<String>,
    /// Timestamp every file in the image is clamped to (seconds since 1970).
    pub source_date_epoch: Option<toml::Spanned<i64>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebianSection {
    pub suite: Option<toml::Spanned<String>>,
    pub mirror: Option<toml::Spanned<String>>,
    pub security_mirror: Option<toml::Spanned<String>>,
    pub components: Option<Vec<String>>,
    pub variant: Option<toml::Spanned<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackagesSection {
    #[serde(default)]
    pub install: Vec<toml::Spanned<String>>,
    /// Shell scripts run inside the root after the packages are installed
    /// (mkosi's postinst scripts), paths relative to the spec file.
    #[serde(default)]
    pub post_install: Vec<toml::Spanned<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverlaysSection {
    #[serde(default)]
    pub layers: Vec<toml::Spanned<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSection {
    pub cmdline: Option<Vec<String>>,
    pub initrd_modules: Option<Vec<String>>,
    pub timeout_seconds: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSection {
    pub esp_mib: Option<toml::Spanned<u64>>,
    pub root_mib: Option<toml::Spanned<u64>>,
    pub bundle_mib: Option<toml::Spanned<u64>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputsSection {
    pub formats: Option<Vec<toml::Spanned<String>>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningSection {
    /// minisign secret key file; `~` expands to $HOME.
    pub key: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySection {
    /// Container images served by the box's offline registry.
    #[serde(default)]
    pub images: Vec<ImageEntry>,
}

/// `[[registry.images]]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageEntry {
    /// The name clients ask for, e.g. `registry.k8s.io/pause:3.10`.
    #[serde(rename = "ref")]
    pub reference: toml::Spanned<String>,
    /// `sha256:<hex>` of the manifest or index; `ciab lock` fills it in.
    pub digest: Option<toml::Spanned<String>>,
    /// Which entries of a multi-platform index to carry (`os/arch[/variant]`).
    pub platforms: Option<Vec<toml::Spanned<String>>>,
    /// Where to fetch from when not the ref's own registry: another registry
    /// reference, `oci:<dir>[:<tag>]` or `docker-archive:<file.tar>`.
    pub source: Option<toml::Spanned<String>>,
}

/// `[[artifacts]]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactEntry {
    /// `https://…`, `http://…`, `file:///…` or a path relative to the spec file.
    pub url: toml::Spanned<String>,
    /// Lowercase hex sha256 of the file; `ciab lock` fills it in.
    pub sha256: Option<toml::Spanned<String>>,
    /// Path inside the bundle partition.
    pub dest: toml::Spanned<String>,
}

/// `[[guest_images]]` as written: made by the builder (`build`) or
/// downloaded (`url`, pinned by `sha256`, like an artifact).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestImageEntry {
    /// The image's name in Glance.
    pub name: toml::Spanned<String>,
    /// What the builder makes: `tiny` (the image's kernel and busybox, a
    /// DHCP client and a console marker; for checking a cloud end to end)
    /// or `debian` (a generic cloud image of the spec's Debian suite with
    /// cloud-init, for users' servers).
    pub build: Option<toml::Spanned<String>>,
    /// Where an upstream image comes from: `https://…`, `http://…`,
    /// `file:///…` or a path relative to the spec file.
    pub url: Option<toml::Spanned<String>>,
    pub sha256: Option<toml::Spanned<String>>,
    /// Glance's `disk_format` of a downloaded image: `qcow2` or `raw`.
    pub disk_format: Option<toml::Spanned<String>>,
    pub min_ram_mib: Option<u64>,
    /// Glance properties (scs-0102's) over the builder's defaults.
    pub properties: Option<toml::Spanned<BTreeMap<String, String>>>,
    /// Marks a test's stand-in for an image that cannot be downloaded
    /// where the test runs: the reason, shown in the image's description
    /// and its `ciab_stand_in` property.
    pub stand_in: Option<toml::Spanned<String>>,
}

/// The resolved spec: what a build runs from. Serialized as JSON it is the
/// root of every cache key and is what `ciab validate --json` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    pub name: String,
    pub version: String,
    pub description: String,
    pub source_date_epoch: i64,
    pub debian: Debian,
    /// Packages beyond the variant's, sorted and unique.
    pub packages: Vec<String>,
    /// Overlay folders, in application order, as absolute paths.
    pub overlays: Vec<PathBuf>,
    /// Scripts run in the root (chrooted, with /proc, /sys and /dev) after
    /// the packages are installed, in order, as absolute paths.
    pub post_install: Vec<PathBuf>,
    pub boot: Boot,
    pub disk: Disk,
    pub formats: Vec<OutputFormat>,
    /// Container images of the offline registry, in spec order.
    pub images: Vec<ImageSpec>,
    /// Files of the bundle, in spec order.
    pub artifacts: Vec<ArtifactSpec>,
    /// Guest disk images of the bundle, in spec order. Left out of the JSON
    /// when empty, so specs without them keep their identity (and caches).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guest_images: Vec<GuestImageSpec>,
    /// Signing key path (not part of the image's identity, see [`Spec::identity_json`]).
    pub signing_key: PathBuf,
    /// Spec files read, top file first.
    pub files: Vec<PathBuf>,
}

/// Where packages come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Debian {
    pub suite: String,
    /// `None`: taken from the host's apt sources at build time.
    pub mirror: Option<String>,
    pub security_mirror: Option<String>,
    pub components: Vec<String>,
    pub variant: String,
}

/// Boot configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Boot {
    pub cmdline: Vec<String>,
    /// Kernel modules the initrd carries (initramfs-tools `MODULES=list`).
    pub initrd_modules: Vec<String>,
    pub timeout_seconds: u32,
}

/// Partition sizes in MiB.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    pub esp_mib: u64,
    pub root_mib: u64,
    /// `None`: sized to fit the bundle.
    pub bundle_mib: Option<u64>,
}

/// Where a spec entry was written: `ciab lock` edits it there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    /// Index in the file's array (`registry.images` or `artifacts`).
    pub index: usize,
}

/// A container image of the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSpec {
    /// Normalized reference clients ask for: `registry/repository[:tag]`.
    pub reference: String,
    /// The pinned manifest (or index) digest; `None` until `ciab lock`.
    pub digest: Option<String>,
    /// `os/arch[/variant]`, sorted and unique.
    pub platforms: Vec<String>,
    /// Where the bytes come from. Not part of the image's identity: the digest pins them.
    pub source: ImageSource,
    #[serde(skip)]
    pub origin: Origin,
}

/// Where an image is fetched from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum ImageSource {
    /// A registry reference (the image's own ref by default).
    Registry { reference: String },
    /// An OCI image layout directory; `tag` selects the entry of its index.json.
    OciLayout { path: PathBuf, tag: Option<String> },
    /// A `docker save` tarball.
    DockerArchive { path: PathBuf },
}

/// A file of the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactSpec {
    /// `http(s)://…` or an absolute local path (`file://` and relative paths resolved).
    pub url: String,
    pub sha256: Option<String>,
    /// Normalized relative path inside the bundle.
    pub dest: String,
    #[serde(skip)]
    pub origin: Origin,
}

/// What the builder makes a guest image from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestBuild {
    /// `guests::tiny`: kernel + busybox initramfs on a BIOS-bootable disk.
    Tiny,
    /// `guests::debian`: the spec's suite with cloud-init, from the
    /// spec's mirror, on a BIOS-bootable disk.
    Debian,
}

/// A guest disk image of the bundle: built or downloaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestImageSpec {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<GuestBuild>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download: Option<GuestDownload>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_ram_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
    #[serde(skip)]
    pub origin: Origin,
}

/// An upstream guest image, fetched like an artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestDownload {
    /// `http(s)://…` or an absolute local path.
    pub url: String,
    pub sha256: Option<String>,
    pub disk_format: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stand_in: Option<String>,
}

impl GuestImageSpec {
    /// Its file in the bundle: the name with spaces as dashes, and the
    /// format's extension (`guest-images/Ubuntu-24.04.qcow2`).
    pub fn file_name(&self) -> String {
        let ext = self.download.as_ref().map_or("raw", |d| d.disk_format.as_str());
        format!("{}.{ext}", self.name.replace(' ', "-"))
    }

    /// The download as an artifact, for the fetcher and `ciab lock`.
    pub fn download_artifact(&self) -> Option<ArtifactSpec> {
        self.download.as_ref().map(|d| ArtifactSpec { url: d.url.clone(), sha256: d.sha256.clone(), dest: format!("guest-images/{}", self.file_name()), origin: self.origin.clone() })
    }
}

/// scs-0104-v1's reserved image names, and the prefixes `image_source` must
/// have for an image to take one: a cloud's "Ubuntu 24.04" is Canonical's.
pub const RESERVED_IMAGE_NAMES: &[(&str, &[&str])] = &[
    ("Ubuntu 24.04", &["https://cloud-images.ubuntu.com/releases/noble/", "https://cloud-images.ubuntu.com/noble/"]),
    ("Ubuntu 22.04", &["https://cloud-images.ubuntu.com/releases/jammy/", "https://cloud-images.ubuntu.com/jammy/"]),
    ("Ubuntu 20.04", &["https://cloud-images.ubuntu.com/releases/focal/", "https://cloud-images.ubuntu.com/focal/"]),
    ("Debian 13", &["https://cloud.debian.org/images/cloud/trixie/", "https://cdimage.debian.org/cdimage/cloud/trixie/"]),
    ("Debian 12", &["https://cloud.debian.org/images/cloud/bookworm/", "https://cdimage.debian.org/cdimage/cloud/bookworm/"]),
    ("Debian 11", &["https://cloud.debian.org/images/cloud/bullseye/", "https://cdimage.debian.org/cdimage/cloud/bullseye/"]),
    ("Debian 10", &["https://cloud.debian.org/images/cloud/buster/", "https://cdimage.debian.org/cdimage/cloud/buster/"]),
];

/// Properties of scs-0102 only the spec can know for a downloaded image.
pub const DOWNLOAD_REQUIRED_PROPERTIES: &[&str] = &["os_distro", "os_version", "image_original_user", "image_build_date", "replace_frequency"];

/// Registries whose names the box's containerd resolves through the offline
/// registry (`overlays/registry/etc/containerd/certs.d`).
pub const MIRRORED_REGISTRIES: &[&str] = &["docker.io", "quay.io", "registry.k8s.io", "ghcr.io", "registry.scs.community"];

/// Top-level names of the bundle that artifacts may not take.
pub const RESERVED_BUNDLE_NAMES: &[&str] = &["registry", "bundle.json", "guest-images"];

/// An output format derived from the raw disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    Raw,
    Qcow2,
    /// The USB/virtual-media installer: a hybrid ISO carrying the signed image.
    Iso,
}

impl OutputFormat {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "raw" => Some(OutputFormat::Raw),
            "qcow2" => Some(OutputFormat::Qcow2),
            "iso" => Some(OutputFormat::Iso),
            _ => None,
        }
    }
}

const DEFAULT_CMDLINE: &[&str] = &["console=tty0", "console=ttyS0,115200n8", "rw", "quiet"];
/// Enough to find the root on virtio, NVMe, SATA/SAS and USB disks.
const DEFAULT_INITRD_MODULES: &[&str] = &[
    "virtio_pci", "virtio_blk", "virtio_scsi", "nvme", "ahci", "sd_mod", "sr_mod", "usb_storage", "uas",
    "xhci_pci", "ehci_pci", "ext4", "crc32c_generic",
];
const MIN_ESP_MIB: u64 = 64;
const MIN_ROOT_MIB: u64 = 512;
const SUPPORTED_SUITES: &[&str] = &["trixie", "forky", "sid"];
const SUPPORTED_VARIANTS: &[&str] = &["essential", "required", "minbase", "apt", "important", "standard"];

impl Spec {
    /// Loads, merges, validates and resolves the spec at `path`.
    pub fn load(path: &Path) -> Result<Spec> {
        let mut files = Vec::new();
        let merged = load_merged(path, &mut Vec::new(), &mut files)?;
        resolve(path, merged, files)
    }

    /// The JSON that identifies the image: everything but local paths that do
    /// not change the bytes (the signing key, the spec file names).
    pub fn identity_json(&self) -> Result<String> {
        let mut v = serde_json::to_value(self)?;
        if let Some(obj) = v.as_object_mut() {
            obj.remove("signing_key");
            obj.remove("files");
            // The digest and sha256 pin the bytes; where they are fetched from is not identity.
            for (list, field) in [("images", "source"), ("artifacts", "url")] {
                if let Some(items) = obj.get_mut(list).and_then(|o| o.as_array_mut()) {
                    for item in items.iter_mut().filter_map(|i| i.as_object_mut()) {
                        item.remove(field);
                    }
                }
            }
            // Overlay and script contents are hashed by their stages; the checkout path is not identity.
            for key in ["overlays", "post_install"] {
                let Some(list) = obj.get_mut(key).and_then(|o| o.as_array_mut()) else { continue };
                for item in list.iter_mut() {
                    let name = item.as_str().and_then(|s| Path::new(s).file_name()).map(|n| n.to_string_lossy().into_owned());
                    *item = serde_json::Value::String(name.unwrap_or_default());
                }
            }
        }
        Ok(serde_json::to_string(&v)?)
    }
}

/// Parses one spec file strictly.
pub fn parse_file(path: &Path, text: &str) -> Result<SpecFile, SpecError> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|err| {
        // The path runs through the fields of `toml::Spanned` wherever a
        // value is spanned; only the steps that are keys of the text name it.
        let positions = TomlPositions::new(text);
        let mut key = String::new();
        for segment in err.path().iter() {
            let next = match segment {
                serde_path_to_error::Segment::Seq { index } => format!("{key}[{index}]"),
                other if key.is_empty() => other.to_string(),
                other => format!("{key}.{other}"),
            };
            if positions.contains(&next) {
                key = next;
            }
        }
        let inner = err.into_inner();
        SpecError {
            file: path.to_owned(),
            position: inner.span().map(|s| line_col(text, s.start)),
            key: (!key.is_empty()).then_some(key),
            message: inner.message().to_owned(),
        }
    })
}

struct Located {
    path: PathBuf,
    text: String,
}

impl Located {
    fn err<T>(&self, spanned: &toml::Spanned<T>, key: &str, message: impl Into<String>) -> anyhow::Error {
        SpecError {
            file: self.path.clone(),
            position: Some(line_col(&self.text, spanned.span().start)),
            key: Some(key.to_owned()),
            message: message.into(),
        }
        .into()
    }
}

/// The merge of a file and its includes, with each value's origin kept for errors.
#[derive(Default)]
struct Merged {
    name: Option<String>,
    version: Option<String>,
    description: Option<String>,
    source_date_epoch: Option<i64>,
    suite: Option<String>,
    mirror: Option<String>,
    security_mirror: Option<String>,
    components: Option<Vec<String>>,
    variant: Option<String>,
    packages: Vec<String>,
    overlays: Vec<PathBuf>,
    post_install: Vec<PathBuf>,
    cmdline: Option<Vec<String>>,
    initrd_modules: Option<Vec<String>>,
    timeout_seconds: Option<u32>,
    esp_mib: Option<u64>,
    root_mib: Option<u64>,
    bundle_mib: Option<u64>,
    formats: Option<Vec<OutputFormat>>,
    signing_key: Option<String>,
    images: Vec<ImageSpec>,
    artifacts: Vec<ArtifactSpec>,
    guest_images: Vec<GuestImageSpec>,
}

fn load_merged(path: &Path, stack: &mut Vec<PathBuf>, files: &mut Vec<PathBuf>) -> Result<Merged> {
    let canonical = path
        .canonicalize()
        .with_context(|| format!("reading spec {}: file not found", path.display()))?;
    if stack.contains(&canonical) {
        bail!("{}: include cycle: {}", path.display(), stack.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" -> "));
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading spec {}", path.display()))?;
    let file = parse_file(path, &text)?;
    let loc = Located { path: path.to_owned(), text };
    files.push(path.to_owned());
    stack.push(canonical);

    let dir = path.parent().unwrap_or(Path::new("."));
    let mut merged = Merged::default();
    for inc in &file.include {
        let inc_path = dir.join(inc.get_ref());
        if !inc_path.is_file() {
            return Err(loc.err(inc, "include", format!("included file {} does not exist", inc_path.display())));
        }
        let sub = load_merged(&inc_path, stack, files)?;
        merge(&mut merged, sub);
    }
    let own = check_file(&loc, &file, dir)?;
    merge(&mut merged, own);
    stack.pop();
    Ok(merged)
}

/// Field-level checks, done per file so errors point at the right line.
fn check_file(loc: &Located, file: &SpecFile, dir: &Path) -> Result<Merged> {
    let mut m = Merged::default();
    if let Some(image) = &file.image {
        if let Some(name) = &image.name {
            if !is_image_name(name.get_ref()) {
                return Err(loc.err(name, "image.name", format!("{:?} is not a valid image name: use 1-32 lowercase letters, digits and '-', starting with a letter", name.get_ref())));
            }
            m.name = Some(name.get_ref().clone());
        }
        if let Some(version) = &image.version {
            let v = version.get_ref();
            if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || ".+-~".contains(c)) {
                return Err(loc.err(version, "image.version", format!("{v:?} is not a valid version: use letters, digits and . + - ~")));
            }
            m.version = Some(v.clone());
        }
        m.description = image.description.clone();
        if let Some(epoch) = &image.source_date_epoch {
            if *epoch.get_ref() <= 0 || *epoch.get_ref() > u32::MAX as i64 {
                return Err(loc.err(epoch, "image.source_date_epoch", "must be a positive Unix timestamp before 2106"));
            }
            m.source_date_epoch = Some(*epoch.get_ref());
        }
    }
    if let Some(debian) = &file.debian {
        if let Some(suite) = &debian.suite {
            if !SUPPORTED_SUITES.contains(&suite.get_ref().as_str()) {
                return Err(loc.err(suite, "debian.suite", format!("unsupported suite {:?}: ciab builds {}", suite.get_ref(), SUPPORTED_SUITES.join(", "))));
            }
            m.suite = Some(suite.get_ref().clone());
        }
        for (key, value, slot) in [
            ("debian.mirror", &debian.mirror, &mut m.mirror),
            ("debian.security_mirror", &debian.security_mirror, &mut m.security_mirror),
        ] {
            if let Some(url) = value {
                let u = url.get_ref();
                if !(u.starts_with("http://") || u.starts_with("https://") || u.starts_with("file:/")) || u.contains(char::is_whitespace) {
                    return Err(loc.err(url, key, format!("{u:?} is not a mirror URL (http://, https:// or file:/)")));
                }
                *slot = Some(u.trim_end_matches('/').to_owned());
            }
        }
        m.components = debian.components.clone();
        if let Some(variant) = &debian.variant {
            if !SUPPORTED_VARIANTS.contains(&variant.get_ref().as_str()) {
                return Err(loc.err(variant, "debian.variant", format!("unknown mmdebstrap variant {:?}: one of {}", variant.get_ref(), SUPPORTED_VARIANTS.join(", "))));
            }
            m.variant = Some(variant.get_ref().clone());
        }
    }
    if let Some(packages) = &file.packages {
        for (i, pkg) in packages.install.iter().enumerate() {
            if !is_package_name(pkg.get_ref()) {
                return Err(loc.err(pkg, &format!("packages.install[{i}]"), format!("{:?} is not a valid Debian package name (lowercase letters, digits, '+', '-', '.'; optionally =version)", pkg.get_ref())));
            }
            m.packages.push(pkg.get_ref().clone());
        }
        for (i, script) in packages.post_install.iter().enumerate() {
            let path = dir.join(script.get_ref());
            if !path.is_file() {
                return Err(loc.err(script, &format!("packages.post_install[{i}]"), format!("script {} does not exist (paths are relative to the spec file)", path.display())));
            }
            m.post_install.push(path.canonicalize().with_context(|| format!("resolving {}", path.display()))?);
        }
    }
    if let Some(overlays) = &file.overlays {
        let root = dir.join("..").join("overlays");
        for (i, layer) in overlays.layers.iter().enumerate() {
            let name = layer.get_ref();
            if name.is_empty() || name.contains('/') || name.starts_with('.') {
                return Err(loc.err(layer, &format!("overlays.layers[{i}]"), format!("{name:?} is not an overlay name: a folder name under overlays/")));
            }
            let path = root.join(name);
            if !path.is_dir() {
                return Err(loc.err(layer, &format!("overlays.layers[{i}]"), format!("overlay folder {} does not exist", path.display())));
            }
            m.overlays.push(path.canonicalize().with_context(|| format!("resolving {}", path.display()))?);
        }
    }
    if let Some(boot) = &file.boot {
        m.cmdline = boot.cmdline.clone();
        m.initrd_modules = boot.initrd_modules.clone();
        m.timeout_seconds = boot.timeout_seconds;
    }
    if let Some(disk) = &file.disk {
        for (key, value, min, slot) in [
            ("disk.esp_mib", &disk.esp_mib, MIN_ESP_MIB, &mut m.esp_mib),
            ("disk.root_mib", &disk.root_mib, MIN_ROOT_MIB, &mut m.root_mib),
            ("disk.bundle_mib", &disk.bundle_mib, 1, &mut m.bundle_mib),
        ] {
            if let Some(v) = value {
                if *v.get_ref() < min || *v.get_ref() > 1 << 20 {
                    return Err(loc.err(v, key, format!("{} MiB is out of range ({min} to {} MiB)", v.get_ref(), 1u64 << 20)));
                }
                *slot = Some(*v.get_ref());
            }
        }
    }
    if let Some(outputs) = &file.outputs {
        if let Some(formats) = &outputs.formats {
            let mut list = Vec::new();
            for (i, f) in formats.iter().enumerate() {
                match OutputFormat::parse(f.get_ref()) {
                    Some(fmt) => list.push(fmt),
                    None => return Err(loc.err(f, &format!("outputs.formats[{i}]"), format!("unknown output format {:?}: use \"raw\", \"qcow2\" or \"iso\"", f.get_ref()))),
                }
            }
            m.formats = Some(list);
        }
    }
    if let Some(signing) = &file.signing {
        m.signing_key = signing.key.clone();
    }
    if let Some(registry) = &file.registry {
        for (i, entry) in registry.images.iter().enumerate() {
            m.images.push(check_image(loc, dir, i, entry)?);
        }
    }
    for (i, entry) in file.artifacts.iter().enumerate() {
        m.artifacts.push(check_artifact(loc, dir, i, entry)?);
    }
    for (i, entry) in file.guest_images.iter().enumerate() {
        m.guest_images.push(check_guest_image(loc, dir, i, entry)?);
    }
    Ok(m)
}

fn check_image(loc: &Located, dir: &Path, i: usize, entry: &ImageEntry) -> Result<ImageSpec> {
    let key = |field: &str| format!("registry.images[{i}].{field}");
    let raw = entry.reference.get_ref();
    let parsed = crate::oci::reference::ImageRef::parse(raw).map_err(|e| loc.err(&entry.reference, &key("ref"), e.to_string()))?;
    if !MIRRORED_REGISTRIES.contains(&parsed.registry.as_str()) {
        return Err(loc.err(
            &entry.reference,
            &key("ref"),
            format!(
                "images of registry {:?} cannot be pulled by name on the box: the box mirrors {}. Name the image under one of them and fetch it from elsewhere with `source = \"{raw}\"`",
                parsed.registry,
                MIRRORED_REGISTRIES.join(", ")
            ),
        ));
    }
    let mut digest = parsed.digest.clone();
    if let Some(d) = &entry.digest {
        let value = d.get_ref();
        crate::oci::digest::Digest::parse(value).map_err(|e| loc.err(d, &key("digest"), e.to_string()))?;
        if digest.as_ref().is_some_and(|in_ref| in_ref != value) {
            return Err(loc.err(d, &key("digest"), format!("{value} differs from the digest in `ref` ({})", digest.unwrap_or_default())));
        }
        digest = Some(value.clone());
    }
    let mut platforms = Vec::new();
    for (j, p) in entry.platforms.iter().flatten().enumerate() {
        if crate::oci::platform::Platform::parse(p.get_ref()).is_none() {
            return Err(loc.err(p, &format!("registry.images[{i}].platforms[{j}]"), format!("{:?} is not a platform: write os/arch or os/arch/variant, e.g. \"linux/amd64\"", p.get_ref())));
        }
        platforms.push(p.get_ref().clone());
    }
    if entry.platforms.is_none() {
        platforms.push(crate::oci::platform::DEFAULT_PLATFORM.to_owned());
    } else if platforms.is_empty() {
        return Err(loc.err(&entry.reference, &key("platforms"), "is empty: list at least one platform, or leave it out for linux/amd64"));
    }
    platforms.sort();
    platforms.dedup();
    let source = match &entry.source {
        None => ImageSource::Registry { reference: parsed.to_string() },
        Some(s) => parse_source(dir, s.get_ref()).map_err(|e| loc.err(s, &key("source"), e))?,
    };
    Ok(ImageSpec {
        reference: parsed.name_and_tag(),
        digest,
        platforms,
        source,
        origin: Origin { file: loc.path.clone(), index: i },
    })
}

fn parse_source(dir: &Path, s: &str) -> Result<ImageSource, String> {
    let local = |p: &str| -> Result<PathBuf, String> {
        if p.is_empty() {
            return Err(format!("{s:?} names no path"));
        }
        Ok(dir.join(expand_home(p)))
    };
    if let Some(rest) = s.strip_prefix("oci:") {
        // `oci:<dir>:<tag>`; a tag has no '/', so a colon followed by one belongs to the path.
        let (path, tag) = match rest.rsplit_once(':') {
            Some((p, t)) if !t.is_empty() && !t.contains('/') => (p, Some(t.to_owned())),
            _ => (rest, None),
        };
        return Ok(ImageSource::OciLayout { path: local(path)?, tag });
    }
    if let Some(rest) = s.strip_prefix("docker-archive:") {
        return Ok(ImageSource::DockerArchive { path: local(rest)? });
    }
    let rest = s.strip_prefix("docker://").unwrap_or(s);
    let parsed = crate::oci::reference::ImageRef::parse(rest).map_err(|e| e.to_string())?;
    Ok(ImageSource::Registry { reference: parsed.to_string() })
}

/// An artifact's or downloaded guest image's `url`: http(s) as is, local
/// paths absolute.
fn check_url(loc: &Located, dir: &Path, spanned: &toml::Spanned<String>, key: &str) -> Result<String> {
    let url = spanned.get_ref();
    if url.starts_with("https://") || url.starts_with("http://") {
        Ok(url.clone())
    } else if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(loc.err(spanned, key, format!("{url:?}: a file:// URL needs an absolute path (file:///…)")));
        }
        Ok(path.to_owned())
    } else if url.contains("://") || url.is_empty() {
        Err(loc.err(spanned, key, format!("{url:?} is not supported: use https://, http://, file:// or a path")))
    } else {
        Ok(dir.join(expand_home(url)).to_string_lossy().into_owned())
    }
}

fn check_sha256(loc: &Located, spanned: Option<&toml::Spanned<String>>, key: &str) -> Result<Option<String>> {
    let Some(s) = spanned else { return Ok(None) };
    let v = s.get_ref();
    if v.len() != 64 || !v.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)) {
        return Err(loc.err(s, key, format!("{v:?} is not a sha256: 64 lowercase hex digits")));
    }
    Ok(Some(v.clone()))
}

fn check_artifact(loc: &Located, dir: &Path, i: usize, entry: &ArtifactEntry) -> Result<ArtifactSpec> {
    let key = |field: &str| format!("artifacts[{i}].{field}");
    let url = check_url(loc, dir, &entry.url, &key("url"))?;
    let sha256 = check_sha256(loc, entry.sha256.as_ref(), &key("sha256"))?;
    let dest = normalize_dest(entry.dest.get_ref()).map_err(|e| loc.err(&entry.dest, &key("dest"), e))?;
    Ok(ArtifactSpec { url, sha256, dest, origin: Origin { file: loc.path.clone(), index: i } })
}

fn check_guest_image(loc: &Located, dir: &Path, i: usize, entry: &GuestImageEntry) -> Result<GuestImageSpec> {
    let key = |field: &str| format!("guest_images[{i}].{field}");
    let name = entry.name.get_ref();
    if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "._- ".contains(c)) || name.starts_with(['.', ' ']) || name.ends_with(' ') {
        return Err(loc.err(&entry.name, &key("name"), format!("{name:?} is not a usable image name: 1 to 64 of A-Z a-z 0-9 . _ - and inner spaces (also its file name in the bundle, spaces as dashes)")));
    }
    let properties = entry.properties.as_ref().map(|p| p.get_ref().clone()).unwrap_or_default();
    if let (Some(p), Some(bad)) = (&entry.properties, properties.keys().find(|k| k.is_empty() || !k.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_:".contains(c)))) {
        return Err(loc.err(p, &key("properties"), format!("{bad:?} is not a Glance property name: a-z 0-9 _ :")));
    }
    let (build, download) = match (&entry.build, &entry.url) {
        (Some(b), None) => {
            if let Some(extra) = [("sha256", entry.sha256.is_some()), ("disk_format", entry.disk_format.is_some()), ("stand_in", entry.stand_in.is_some())].iter().find(|f| f.1) {
                return Err(loc.err(b, &key(extra.0), format!("{} is for downloaded images (url); a built image has none", extra.0)));
            }
            match b.get_ref().as_str() {
                "tiny" => (Some(GuestBuild::Tiny), None),
                "debian" => (Some(GuestBuild::Debian), None),
                other => return Err(loc.err(b, &key("build"), format!("unknown build {other:?}, expected \"tiny\" or \"debian\""))),
            }
        }
        (None, Some(u)) => {
            let url = check_url(loc, dir, u, &key("url"))?;
            let sha256 = check_sha256(loc, entry.sha256.as_ref(), &key("sha256"))?;
            let disk_format = match &entry.disk_format {
                Some(f) if ["qcow2", "raw"].contains(&f.get_ref().as_str()) => f.get_ref().clone(),
                Some(f) => return Err(loc.err(f, &key("disk_format"), format!("{:?}: expected \"qcow2\" or \"raw\"", f.get_ref()))),
                None => return Err(loc.err(u, &key("disk_format"), "a downloaded image needs its disk_format: \"qcow2\" or \"raw\"")),
            };
            if let Some(missing) = DOWNLOAD_REQUIRED_PROPERTIES.iter().find(|p| !properties.contains_key(**p)) {
                return Err(loc.err(u, &key(&format!("properties.{missing}")), format!("scs-0102 wants {missing} on every public image, and only the spec knows it for a downloaded one: set it in [guest_images.properties]")));
            }
            let stand_in = entry.stand_in.as_ref().map(|s| s.get_ref().clone());
            (None, Some(GuestDownload { url, sha256, disk_format, stand_in }))
        }
        _ => return Err(loc.err(&entry.name, &key("build"), "a guest image is either built (build = \"tiny\" or \"debian\") or downloaded (url = …): give exactly one")),
    };
    // scs-0104: a reserved name promises the upstream image.
    if let Some((_, prefixes)) = RESERVED_IMAGE_NAMES.iter().find(|(n, _)| n == name) {
        let source = properties.get("image_source").cloned().or_else(|| download.as_ref().map(|d| d.url.clone())).unwrap_or_default();
        if build.is_some() || !prefixes.iter().any(|p| source.starts_with(p)) {
            return Err(loc.err(
                &entry.name,
                &key("name"),
                format!("{name:?} is reserved by scs-0104 for the upstream image: its image_source must start with {} (a builder-made image needs another name)", prefixes.join(" or ")),
            ));
        }
    }
    Ok(GuestImageSpec { name: name.clone(), build, download, min_ram_mib: entry.min_ram_mib, properties, origin: Origin { file: loc.path.clone(), index: i } })
}

/// A relative path of plain components that stays inside the bundle and
/// clear of the names the builder writes.
fn normalize_dest(dest: &str) -> Result<String, String> {
    let parts: Vec<&str> = dest.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    if dest.starts_with('/') || parts.is_empty() || parts.iter().any(|p| *p == ".." || p.contains('\0')) {
        return Err(format!("{dest:?} is not a relative path inside the bundle (no leading '/', no '..')"));
    }
    if RESERVED_BUNDLE_NAMES.contains(&parts[0]) {
        return Err(format!("{dest:?} collides with the builder's own {:?} in the bundle: choose another folder", parts[0]));
    }
    Ok(parts.join("/"))
}

fn merge(base: &mut Merged, top: Merged) {
    macro_rules! over {
        ($($f:ident),*) => { $( if top.$f.is_some() { base.$f = top.$f; } )* };
    }
    over!(name, version, description, source_date_epoch, suite, mirror, security_mirror, components, variant,
        cmdline, initrd_modules, timeout_seconds, esp_mib, root_mib, bundle_mib, formats, signing_key);
    base.packages.extend(top.packages);
    base.images.extend(top.images);
    base.artifacts.extend(top.artifacts);
    base.guest_images.extend(top.guest_images);
    for o in top.overlays {
        if !base.overlays.contains(&o) {
            base.overlays.push(o);
        }
    }
    for p in top.post_install {
        if !base.post_install.contains(&p) {
            base.post_install.push(p);
        }
    }
}

fn resolve(path: &Path, m: Merged, files: Vec<PathBuf>) -> Result<Spec> {
    let missing = |key: &str| -> anyhow::Error {
        SpecError { file: path.to_owned(), position: None, key: Some(key.to_owned()), message: "is required (in this file or one it includes)".into() }.into()
    };
    let packages: BTreeSet<String> = m.packages.into_iter().collect();
    let mut formats = m.formats.unwrap_or_else(|| vec![OutputFormat::Raw, OutputFormat::Qcow2]);
    formats.sort();
    formats.dedup();
    check_unique(path, &m.images, &m.artifacts)?;
    let serves_registry = packages.contains("docker-registry") && m.overlays.iter().any(|o| o.ends_with("registry"));
    if !m.images.is_empty() && !serves_registry {
        return Err(SpecError {
            file: path.to_owned(),
            position: None,
            key: Some("registry.images".into()),
            message: "the box serves these images with Debian's docker-registry: add \"docker-registry\" and \"containerd\" to packages.install and \"registry\" to overlays.layers (as images/eval.toml does)".into(),
        }
        .into());
    }
    for (i, g) in m.guest_images.iter().enumerate() {
        if let Some(first) = m.guest_images[..i].iter().find(|h| h.name == g.name || h.file_name() == g.file_name()) {
            return Err(SpecError {
                file: path.to_owned(),
                position: None,
                key: Some("guest_images".into()),
                message: format!("guest image {} is listed twice ({} entry {} and {} entry {}): keep one", g.name, first.origin.file.display(), first.origin.index, g.origin.file.display(), g.origin.index),
            }
            .into());
        }
    }
    if m.guest_images.iter().any(|g| g.build == Some(GuestBuild::Tiny)) && !packages.contains("busybox-static") {
        return Err(SpecError {
            file: path.to_owned(),
            position: None,
            key: Some("guest_images".into()),
            message: "a \"tiny\" guest image runs the image's own busybox: add \"busybox-static\" to packages.install".into(),
        }
        .into());
    }
    Ok(Spec {
        name: m.name.ok_or_else(|| missing("image.name"))?,
        version: m.version.ok_or_else(|| missing("image.version"))?,
        description: m.description.unwrap_or_default(),
        source_date_epoch: m.source_date_epoch.ok_or_else(|| missing("image.source_date_epoch"))?,
        debian: Debian {
            suite: m.suite.unwrap_or_else(|| "trixie".into()),
            mirror: m.mirror,
            security_mirror: m.security_mirror,
            components: m.components.unwrap_or_else(|| vec!["main".into()]),
            variant: m.variant.unwrap_or_else(|| "apt".into()),
        },
        packages: packages.into_iter().collect(),
        overlays: m.overlays,
        post_install: m.post_install,
        boot: Boot {
            cmdline: m.cmdline.unwrap_or_else(|| DEFAULT_CMDLINE.iter().map(|s| s.to_string()).collect()),
            initrd_modules: m.initrd_modules.unwrap_or_else(|| DEFAULT_INITRD_MODULES.iter().map(|s| s.to_string()).collect()),
            timeout_seconds: m.timeout_seconds.unwrap_or(0),
        },
        disk: Disk { esp_mib: m.esp_mib.unwrap_or(512), root_mib: m.root_mib.unwrap_or(2048), bundle_mib: m.bundle_mib },
        formats,
        images: m.images,
        artifacts: m.artifacts,
        guest_images: m.guest_images,
        signing_key: expand_home(m.signing_key.as_deref().unwrap_or(crate::sign::DEFAULT_KEY_PATH)),
        files,
    })
}

/// One entry per image reference and per artifact destination, across includes.
fn check_unique(path: &Path, images: &[ImageSpec], artifacts: &[ArtifactSpec]) -> Result<()> {
    let dup = |key: &str, what: &str, a: &Origin, b: &Origin| -> anyhow::Error {
        SpecError {
            file: path.to_owned(),
            position: None,
            key: Some(key.to_owned()),
            message: format!("{what} is listed twice ({} entry {} and {} entry {}): keep one", a.file.display(), a.index, b.file.display(), b.index),
        }
        .into()
    };
    for (i, a) in images.iter().enumerate() {
        if let Some(b) = images[..i].iter().find(|b| b.reference == a.reference) {
            return Err(dup("registry.images", &format!("image {}", a.reference), &b.origin, &a.origin));
        }
    }
    for (i, a) in artifacts.iter().enumerate() {
        let clash = artifacts[..i].iter().find(|b| b.dest == a.dest || a.dest.starts_with(&format!("{}/", b.dest)) || b.dest.starts_with(&format!("{}/", a.dest)));
        if let Some(b) = clash {
            return Err(dup("artifacts", &format!("bundle path {} (or a parent of it)", a.dest), &b.origin, &a.origin));
        }
    }
    Ok(())
}

/// Expands a leading `~/` to $HOME.
pub fn expand_home(p: &str) -> PathBuf {
    match (p.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(p),
    }
}

fn is_image_name(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn is_package_name(s: &str) -> bool {
    let name = s.split_once('=').map_or(s, |(n, _)| n);
    name.len() >= 2
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A checkout-like tree: images/ and overlays/base.
    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("images")).unwrap();
        fs::create_dir_all(dir.path().join("overlays/base")).unwrap();
        fs::create_dir_all(dir.path().join("overlays/extra")).unwrap();
        fs::create_dir_all(dir.path().join("overlays/registry")).unwrap();
        dir
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join("images").join(name);
        fs::write(&p, text).unwrap();
        p
    }

    const BASE: &str = r#"
[image]
name = "base"
version = "1.0"
source_date_epoch = 1735689600

[packages]
install = ["systemd", "linux-image-amd64"]

[overlays]
layers = ["base"]
"#;

    fn err_of(path: &Path) -> String {
        format!("{:#}", Spec::load(path).unwrap_err())
    }

    #[test]
    fn resolves_defaults() {
        let t = tree();
        let p = write(t.path(), "base.toml", BASE);
        let spec = Spec::load(&p).unwrap();
        assert_eq!(spec.name, "base");
        assert_eq!(spec.debian.suite, "trixie");
        assert_eq!(spec.debian.variant, "apt");
        assert_eq!(spec.debian.mirror, None);
        assert_eq!(spec.packages, vec!["linux-image-amd64", "systemd"]);
        assert_eq!(spec.formats, vec![OutputFormat::Raw, OutputFormat::Qcow2]);
        assert_eq!(spec.disk, Disk { esp_mib: 512, root_mib: 2048, bundle_mib: None });
        assert!(spec.boot.cmdline.iter().any(|c| c.starts_with("console=ttyS0")));
    }

    #[test]
    fn include_appends_lists_and_overrides_scalars() {
        let t = tree();
        write(t.path(), "base.toml", BASE);
        let p = write(t.path(), "top.toml", r#"
include = ["base.toml"]
[image]
name = "top"
[packages]
install = ["curl", "systemd"]
[overlays]
layers = ["extra", "base"]
[disk]
root_mib = 4096
"#);
        let spec = Spec::load(&p).unwrap();
        assert_eq!(spec.name, "top");
        assert_eq!(spec.version, "1.0");
        assert_eq!(spec.packages, vec!["curl", "linux-image-amd64", "systemd"]);
        let names: Vec<String> = spec.overlays.iter().map(|o| o.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, vec!["base", "extra"]);
        assert_eq!(spec.disk.root_mib, 4096);
        assert_eq!(spec.files.len(), 2);
    }

    #[test]
    fn unknown_key_names_file_line_column_and_key() {
        let t = tree();
        let p = write(t.path(), "bad.toml", "[image]\nname = \"x\"\nflavour = 3\n");
        let err = err_of(&p);
        assert!(err.ends_with("bad.toml:3:1: key `image.flavour`: unknown field `flavour`, expected one of `name`, `version`, `description`, `source_date_epoch`"), "{err}");
    }

    #[test]
    fn unknown_top_level_table() {
        let t = tree();
        let p = write(t.path(), "bad.toml", "[imagee]\nname = \"x\"\n");
        let err = err_of(&p);
        assert!(err.contains("bad.toml:1:2: key `imagee`: unknown field `imagee`, expected one of `include`, `image`"), "{err}");
    }

    #[test]
    fn post_install_scripts_resolve_relative_to_their_spec_and_are_not_identity() {
        let t = tree();
        std::fs::create_dir_all(t.path().join("images/scripts")).unwrap();
        std::fs::write(t.path().join("images/scripts/a.sh"), "true\n").unwrap();
        let with = BASE.replace("install = [\"systemd\", \"linux-image-amd64\"]", "install = [\"systemd\", \"linux-image-amd64\"]\npost_install = [\"scripts/a.sh\"]");
        let p = write(t.path(), "base.toml", &with);
        let spec = Spec::load(&p).unwrap();
        assert_eq!(spec.post_install, [t.path().join("images/scripts/a.sh").canonicalize().unwrap()]);
        assert!(spec.identity_json().unwrap().contains("\"post_install\":[\"a.sh\"]"), "{}", spec.identity_json().unwrap());
        let p = write(t.path(), "bad.toml", &with.replace("scripts/a.sh", "scripts/nope.sh"));
        let err = err_of(&p);
        assert!(err.contains("bad.toml:9:17: key `packages.post_install[0]`: script ") && err.contains("nope.sh does not exist"), "{err}");
    }

    #[test]
    fn wrong_type_is_located() {
        let t = tree();
        let p = write(t.path(), "bad.toml", "[disk]\nroot_mib = \"big\"\n");
        let err = err_of(&p);
        assert!(err.ends_with("bad.toml:2:12: key `disk.root_mib`: invalid type: string \"big\", expected u64"), "{err}");
    }

    #[test]
    fn malformed_toml_is_located() {
        let t = tree();
        let p = write(t.path(), "bad.toml", "[image]\nname = \n");
        let err = err_of(&p);
        assert!(err.contains("bad.toml:2:8"), "{err}");
    }

    #[test]
    fn bad_package_name() {
        let t = tree();
        let p = write(t.path(), "bad.toml", &BASE.replace("\"systemd\"", "\"Systemd\""));
        let err = err_of(&p);
        assert!(err.ends_with("bad.toml:8:12: key `packages.install[0]`: \"Systemd\" is not a valid Debian package name (lowercase letters, digits, '+', '-', '.'; optionally =version)"), "{err}");
    }

    #[test]
    fn missing_overlay_folder() {
        let t = tree();
        let p = write(t.path(), "bad.toml", &BASE.replace("layers = [\"base\"]", "layers = [\"nope\"]"));
        let err = err_of(&p);
        assert!(err.contains("bad.toml:11:11: key `overlays.layers[0]`: overlay folder "), "{err}");
        assert!(err.ends_with("overlays/nope does not exist"), "{err}");
    }

    #[test]
    fn bad_values() {
        let t = tree();
        for (needle, replacement, expected) in [
            ("name = \"base\"", "name = \"Base_1\"", "key `image.name`: \"Base_1\" is not a valid image name"),
            ("version = \"1.0\"", "version = \"1 0\"", "key `image.version`: \"1 0\" is not a valid version"),
            ("source_date_epoch = 1735689600", "source_date_epoch = -5", "key `image.source_date_epoch`: must be a positive Unix timestamp"),
            ("[packages]", "[debian]\nsuite = \"bookworm\"\n[packages]", "key `debian.suite`: unsupported suite \"bookworm\""),
            ("[packages]", "[debian]\nmirror = \"ftp://x\"\n[packages]", "key `debian.mirror`: \"ftp://x\" is not a mirror URL"),
            ("[packages]", "[disk]\nesp_mib = 1\n[packages]", "key `disk.esp_mib`: 1 MiB is out of range"),
            ("[packages]", "[outputs]\nformats = [\"vmdk\"]\n[packages]", "key `outputs.formats[0]`: unknown output format \"vmdk\""),
        ] {
            let p = write(t.path(), "bad.toml", &BASE.replace(needle, replacement));
            let err = err_of(&p);
            assert!(err.contains(expected), "{err}\n  expected: {expected}");
        }
    }

    #[test]
    fn missing_name_and_include_problems() {
        let t = tree();
        let p = write(t.path(), "noname.toml", "[image]\nversion = \"1\"\nsource_date_epoch = 1\n");
        assert!(err_of(&p).ends_with("noname.toml: key `image.name`: is required (in this file or one it includes)"));
        let p = write(t.path(), "inc.toml", "include = [\"gone.toml\"]\n");
        assert!(err_of(&p).contains("inc.toml:1:12: key `include`: included file"));
        let p = write(t.path(), "loop.toml", "include = [\"loop.toml\"]\n");
        assert!(err_of(&p).contains("include cycle"));
    }

    /// The shipped specs resolve, and eval carries everything tiny has.
    #[test]
    fn shipped_specs_resolve() {
        let images = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images");
        let tiny = Spec::load(&images.join("tiny.toml")).unwrap();
        let eval = Spec::load(&images.join(DEFAULT_SPEC.trim_start_matches("images/"))).unwrap();
        assert_eq!((tiny.name.as_str(), eval.name.as_str()), ("tiny", "eval"));
        for p in &tiny.packages {
            assert!(eval.packages.contains(p), "eval lacks tiny's {p}");
        }
        assert_eq!(eval.overlays[..tiny.overlays.len()], tiny.overlays[..]);
        assert!(eval.overlays.iter().any(|o| o.ends_with("overlays/registry")), "eval serves the offline registry");
        assert!(eval.packages.iter().any(|p| p == "docker-registry") && eval.packages.iter().any(|p| p == "containerd"));
        assert_eq!(tiny.source_date_epoch, eval.source_date_epoch);
        for p in crate::stages::rootfs::REQUIRED_PACKAGES {
            assert!(tiny.packages.iter().any(|q| q == p), "tiny lacks {p}");
        }
        assert_eq!(tiny.debian.suite, "trixie");
        assert!(tiny.debian.mirror.is_none(), "the shipped specs must not name a mirror host");
    }

    #[test]
    fn identity_ignores_local_paths() {
        let a = tree();
        let b = tree();
        let sa = Spec::load(&write(a.path(), "base.toml", BASE)).unwrap();
        let mut sb = Spec::load(&write(b.path(), "base.toml", BASE)).unwrap();
        sb.signing_key = PathBuf::from("/elsewhere.key");
        assert_eq!(sa.identity_json().unwrap(), sb.identity_json().unwrap());
    }

    #[test]
    fn guest_images_resolve_and_bad_ones_are_named() {
        let dir = tree();
        write(&dir.path(), "base.toml", BASE);
        let guest = |extra: &str, packages: &str| format!("include = [\"base.toml\"]\n[packages]\ninstall = [{packages}]\n{extra}");
        let ok = write(&dir.path(), "ok.toml", &guest("[[guest_images]]\nname = \"ciab-tiny\"\nbuild = \"tiny\"\n", "\"busybox-static\""));
        let spec = Spec::load(&ok).unwrap();
        assert_eq!(spec.guest_images.len(), 1);
        assert_eq!((spec.guest_images[0].name.as_str(), spec.guest_images[0].build), ("ciab-tiny", Some(GuestBuild::Tiny)));
        assert_eq!(spec.guest_images[0].file_name(), "ciab-tiny.raw");
        assert!(spec.identity_json().unwrap().contains(r#"{"build":"tiny","name":"ciab-tiny"}"#), "a built image's identity is as before: {}", spec.identity_json().unwrap());
        assert!(spec.identity_json().unwrap().contains("guest_images"), "part of the image's identity");
        // A Debian cloud image needs nothing from the image's own packages.
        let debian = write(&dir.path(), "debian.toml", &guest("[[guest_images]]\nname = \"ciab Debian 13\"\nbuild = \"debian\"\n", ""));
        let g = &Spec::load(&debian).unwrap().guest_images[0];
        assert_eq!((g.build, g.file_name().as_str()), (Some(GuestBuild::Debian), "ciab-Debian-13.raw"));
        let none = write(&dir.path(), "none.toml", &guest("", "\"busybox-static\""));
        assert!(!Spec::load(&none).unwrap().identity_json().unwrap().contains("guest_images"), "absent when empty, so old specs keep their identity");

        let cases = [
            ("[[guest_images]]\nname = \"tiny\"\nbuild = \"huge\"\n", "\"busybox-static\"", "guest_images[0].build", "unknown build \"huge\", expected \"tiny\""),
            ("[[guest_images]]\nname = \"../x\"\nbuild = \"tiny\"\n", "\"busybox-static\"", "guest_images[0].name", "is not a usable image name"),
            ("[[guest_images]]\nname = \"Debian 13\"\nbuild = \"tiny\"\n", "\"busybox-static\"", "guest_images[0].name", "is reserved by scs-0104"),
            ("[[guest_images]]\nname = \"Debian 13\"\nbuild = \"debian\"\n", "", "guest_images[0].name", "a builder-made image needs another name"),
            ("[[guest_images]]\nname = \"t\"\n", "\"busybox-static\"", "guest_images[0].build", "give exactly one"),
            ("[[guest_images]]\nname = \"t\"\nbuild = \"tiny\"\nsha256 = \"00\"\n", "\"busybox-static\"", "guest_images[0].sha256", "for downloaded images"),
            ("[[guest_images]]\nname = \"u\"\nurl = \"https://example.org/u.img\"\n", "", "guest_images[0].disk_format", "needs its disk_format"),
            ("[[guest_images]]\nname = \"u\"\nurl = \"https://example.org/u.img\"\ndisk_format = \"vmdk\"\n", "", "guest_images[0].disk_format", "expected \"qcow2\" or \"raw\""),
            ("[[guest_images]]\nname = \"u\"\nurl = \"https://example.org/u.img\"\ndisk_format = \"qcow2\"\n[guest_images.properties]\nos_distro = \"ubuntu\"\n", "", "guest_images[0].properties.os_version", "scs-0102 wants os_version"),
            ("[[guest_images]]\nname = \"Ubuntu 24.04\"\nurl = \"https://mirror.example/noble.img\"\ndisk_format = \"qcow2\"\n[guest_images.properties]\nos_distro = \"ubuntu\"\nos_version = \"24.04\"\nimage_original_user = \"ubuntu\"\nimage_build_date = \"2024-04-23\"\nreplace_frequency = \"never\"\n", "", "guest_images[0].name", "must start with https://cloud-images.ubuntu.com/releases/noble/"),
            ("[[guest_images]]\nname = \"u\"\nurl = \"https://example.org/u.img\"\ndisk_format = \"qcow2\"\n[guest_images.properties]\n\"OS Distro\" = \"x\"\n", "", "guest_images[0].properties", "is not a Glance property name"),
            ("[[guest_images]]\nname = \"a b\"\nbuild = \"tiny\"\n[[guest_images]]\nname = \"a-b\"\nbuild = \"tiny\"\n", "\"busybox-static\"", "guest_images", "guest image a-b is listed twice"),
            ("[[guest_images]]\nname = \"t\"\nbuild = \"tiny\"\n", "\"vim\"", "guest_images", "add \"busybox-static\" to packages.install"),
            ("[[guest_images]]\nname = \"t\"\nbuild = \"tiny\"\n[[guest_images]]\nname = \"t\"\nbuild = \"tiny\"\n", "\"busybox-static\"", "guest_images", "guest image t is listed twice"),
        ];
        // An upstream image, here a stand-in file beside the spec: its
        // reserved name is allowed by the upstream image_source it declares.
        let up = write(
            &dir.path(),
            "up.toml",
            &guest(
                "[[guest_images]]\nname = \"Ubuntu 24.04\"\nurl = \"stand-ins/noble.img\"\ndisk_format = \"qcow2\"\nmin_ram_mib = 512\nstand_in = \"no internet where the tests run\"\n[guest_images.properties]\nimage_source = \"https://cloud-images.ubuntu.com/releases/noble/release-20240423/ubuntu-24.04-server-cloudimg-amd64.img\"\nos_distro = \"ubuntu\"\nos_version = \"24.04\"\nimage_original_user = \"ubuntu\"\nimage_build_date = \"2024-04-23\"\nreplace_frequency = \"quarterly\"\n",
                "",
            ),
        );
        let spec = Spec::load(&up).unwrap();
        let g = &spec.guest_images[0];
        assert_eq!((g.file_name().as_str(), g.build, g.min_ram_mib), ("Ubuntu-24.04.qcow2", None, Some(512)));
        let d = g.download.as_ref().unwrap();
        assert_eq!(d.url, up.parent().unwrap().join("stand-ins/noble.img").to_string_lossy(), "relative to the spec file");
        assert_eq!(d.stand_in.as_deref(), Some("no internet where the tests run"));
        assert_eq!(g.properties["os_distro"], "ubuntu");
        assert_eq!(g.download_artifact().unwrap().dest, "guest-images/Ubuntu-24.04.qcow2");
        let unpinned = crate::fetch::check_pinned(&spec).unwrap_err().to_string();
        assert!(unpinned.contains("guest-images/Ubuntu-24.04.qcow2"), "a download is pinned like an artifact: {unpinned}");

        for (i, (extra, packages, key, message)) in cases.iter().enumerate() {
            let p = write(&dir.path(), &format!("bad{i}.toml"), &guest(extra, packages));
            let err = err_of(&p);
            assert!(err.contains(&format!("key `{key}`")) && err.contains(message), "{i}: {err}");
        }
    }

    #[test]
    fn registry_images_and_artifacts_resolve() {
        let dir = tree();
        let d = format!("sha256:{}", "a".repeat(64));
        write(&dir.path(), "base.toml", BASE);
        let top = write(
            &dir.path(),
            "top.toml",
            &format!(
                r#"include = ["base.toml"]
[packages]
install = ["docker-registry"]
[overlays]
layers = ["registry"]

[[registry.images]]
ref = "registry.k8s.io/pause:3.10"
digest = "{d}"

[[registry.images]]
ref = "busybox:1.37"
platforms = ["linux/arm64", "linux/amd64", "linux/amd64"]
source = "oci:../layouts/busybox:1.37"

[[registry.images]]
ref = "ghcr.io/x/y:2"
source = "127.0.0.1:5000/y:2"

[[artifacts]]
url = "files/k3s"
sha256 = "{}"
dest = "./kaas//k3s"
"#,
                "b".repeat(64)
            ),
        );
        let spec = Spec::load(&top).unwrap();
        assert_eq!(spec.images.len(), 3);
        let pause = &spec.images[0];
        assert_eq!((pause.reference.as_str(), pause.digest.as_deref()), ("registry.k8s.io/pause:3.10", Some(d.as_str())));
        assert_eq!(pause.platforms, vec!["linux/amd64"]);
        assert_eq!(pause.source, ImageSource::Registry { reference: "registry.k8s.io/pause:3.10".into() });
        assert_eq!(pause.origin, Origin { file: top.clone(), index: 0 });
        let bb = &spec.images[1];
        assert_eq!(bb.reference, "docker.io/library/busybox:1.37");
        assert_eq!(bb.platforms, vec!["linux/amd64", "linux/arm64"]);
        assert_eq!(bb.source, ImageSource::OciLayout { path: dir.path().join("images/../layouts/busybox"), tag: Some("1.37".into()) });
        assert_eq!(spec.images[2].source, ImageSource::Registry { reference: "127.0.0.1:5000/y:2".into() });
        assert_eq!(spec.artifacts[0].dest, "kaas/k3s");
        assert_eq!(spec.artifacts[0].url, dir.path().join("images/files/k3s").to_string_lossy());
        // Where bytes come from is not the image's identity; what they are is.
        let identity = spec.identity_json().unwrap();
        assert!(!identity.contains("layouts") && !identity.contains("files/k3s"), "{identity}");
        assert!(identity.contains(&d));
        assert!(crate::fetch::check_pinned(&spec).unwrap_err().to_string().contains("Run `ciab lock"));
    }

    #[test]
    fn registry_entry_errors_name_the_key() {
        let dir = tree();
        let case = |entry: &str| -> String {
            let p = write(&dir.path(), "bad.toml", &format!("{BASE}\n{entry}\n"));
            err_of(&p)
        };
        let e = case("[[registry.images]]\nref = \"example.com/a/b:1\"");
        assert!(e.contains("key `registry.images[0].ref`") && e.contains("the box mirrors docker.io"), "{e}");
        let e = case("[[registry.images]]\nref = \"quay.io/a/b:1\"\ndigest = \"md5:x\"");
        assert!(e.contains("key `registry.images[0].digest`") && e.contains("is not a digest"), "{e}");
        let e = case("[[registry.images]]\nref = \"quay.io/a/b:1\"\nplatforms = [\"amd64\"]");
        assert!(e.contains("key `registry.images[0].platforms[0]`"), "{e}");
        let e = case("[[registry.images]]\nref = \"quay.io/a/b:1\"\nplatforms = []");
        assert!(e.contains("is empty"), "{e}");
        let e = case("[[registry.images]]\nref = \"quay.io/a/b:1\"\ntag = \"x\"");
        assert!(e.contains("unknown field `tag`"), "{e}");
        let e = case("[[artifacts]]\nurl = \"ftp://x/y\"\ndest = \"a\"");
        assert!(e.contains("key `artifacts[0].url`"), "{e}");
        let e = case("[[artifacts]]\nurl = \"https://x/y\"\ndest = \"../etc/passwd\"");
        assert!(e.contains("key `artifacts[0].dest`") && e.contains("no '..'"), "{e}");
        let e = case("[[artifacts]]\nurl = \"https://x/y\"\ndest = \"registry/x\"");
        assert!(e.contains("collides with the builder's own \"registry\""), "{e}");
        let e = case("[[artifacts]]\nurl = \"https://x/y\"\nsha256 = \"ABC\"\ndest = \"a\"");
        assert!(e.contains("key `artifacts[0].sha256`"), "{e}");
        let e = case("[[artifacts]]\nurl = \"https://x/y\"\ndest = \"a\"\n[[artifacts]]\nurl = \"https://x/z\"\ndest = \"a/b\"");
        assert!(e.contains("bundle path a/b (or a parent of it) is listed twice"), "{e}");
        let e = case("[[registry.images]]\nref = \"busybox\"\n[[registry.images]]\nref = \"docker.io/library/busybox:latest\"");
        assert!(e.contains("image docker.io/library/busybox:latest is listed twice"), "{e}");
        let e = case("[[registry.images]]\nref = \"busybox\"");
        assert!(e.contains("key `registry.images`") && e.contains("add \"docker-registry\""), "{e}");
    }

    #[test]
    fn every_mirrored_registry_has_a_containerd_mirror() {
        let certs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../overlays/registry/etc/containerd/certs.d");
        for r in MIRRORED_REGISTRIES {
            let hosts = fs::read_to_string(certs.join(r).join("hosts.toml")).unwrap_or_else(|e| panic!("{r}: {e}"));
            let doc: toml::Value = toml::from_str(&hosts).unwrap();
            let host = &doc["host"][&format!("http://{}/v2/{r}", ciab_core::contract::REGISTRY_ADDR)];
            assert_eq!(host["override_path"].as_bool(), Some(true), "{r}");
            assert_eq!(host["capabilities"].as_array().map(Vec::len), Some(2), "{r}");
        }
        let listed: Vec<String> = fs::read_dir(&certs).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(listed.len(), MIRRORED_REGISTRIES.len(), "{listed:?}");
    }
}
