//! Stage `installer` (when the spec asks for `iso`): a hybrid ISO that boots
//! from a USB stick or virtual media, UEFI or BIOS, into `ciab-installer`,
//! which writes the signed image onto the box's internal disk.
//!
//! The ISO holds `payload/` (the signed manifest, its signature, and the
//! image's mapped ranges back to back) and the installer's kernel and
//! initramfs. The initramfs is the image's own kernel modules for storage,
//! the installer binary as `/init`, the C libraries it links, and the public
//! key it trusts: it installs nothing that key did not sign.
//!
//! The ISO embeds the signed manifest, so the manifest cannot name the ISO;
//! `installer.json` (signed with the same key) does, with the ISO's block map.
//!
//! The initramfs, the UKI and the ISO are written by [`crate::writers::cpio`],
//! [`crate::writers::uki`] and [`crate::writers::iso`].

use super::{Context, STAGE_FORMAT};
use crate::cache::KeyBuilder;
use crate::kmod;
use crate::writers::{cpio, iso, uki};
use ciab_core::exec::Cmd;
use crate::progress::Outcome;
use crate::stages::{disk::Disk, manifest::Signed, rootfs::Rootfs};
use anyhow::{bail, Context as _, Result};
use ciab_core::contract::{
    InstallerInfo, Manifest, OutputFile, INSTALLER_DATA_FILE, INSTALLER_FILE, INSTALLER_MODULE_LIST, INSTALLER_PAYLOAD_DIR,
    INSTALLER_SIG_FILE, INSTALLER_TRUSTED_KEY, MANIFEST_FILE, MANIFEST_SCHEMA, MANIFEST_SIG_FILE,
};
use cpio::Entry;
use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Storage, bus and filesystem drivers the installer needs to find its
/// medium and the target disk on real hardware and in QEMU (i440fx IDE,
/// q35 AHCI, virtio, NVMe, USB sticks, SD cards), plus USB keyboards for
/// confirming on the console. Dependencies are added from `modules.dep`.
pub const MODULES: &[&str] = &[
    "virtio_blk", "virtio_scsi", "nvme", "ahci", "ata_piix", "ata_generic", "sd_mod", "sr_mod", "usb_storage", "uas",
    "xhci_pci", "ehci_pci", "ohci_pci", "uhci_hcd", "mmc_block", "sdhci_pci", "isofs", "usbhid", "hid_generic",
];

/// The installer's kernel command line: both consoles (the installer writes
/// to each itself) and quiet kernel logging so its lines stay readable.
pub const CMDLINE: &str = "console=tty0 console=ttyS0,115200n8 loglevel=4";

/// Bumped when the ISO's or the initramfs's layout changes.
const LAYOUT: &str = "2";

/// Output of the stage.
#[derive(Debug, Clone)]
pub struct Installer {
    pub key: String,
    pub iso: PathBuf,
    pub info: PathBuf,
    pub sig: PathBuf,
}

/// `<name>.iso`.
pub fn iso_name(ctx: &Context) -> String {
    format!("{}.iso", ctx.spec.name)
}

/// ISO 9660 volume id: `CIAB-<NAME>`, upper case, at most 32 characters.
fn volume_id(ctx: &Context) -> String {
    let name: String = ctx.spec.name.to_uppercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    format!("CIAB-{name}").chars().take(32).collect()
}

pub struct InstallerInput<'a> {
    pub rootfs: &'a Rootfs,
    pub disk: &'a Disk,
    pub signed: &'a Signed,
    pub installer_bin: &'a Path,
    pub secret_key: &'a minisign::SecretKey,
}

pub fn run(ctx: &Context, input: &InstallerInput) -> Result<(Installer, Outcome, Option<u64>)> {
    let key = KeyBuilder::new("installer")
        .add("format", STAGE_FORMAT)
        .add("manifest", &input.signed.key)
        .add("installer", crate::fsutil::sha256_file(input.installer_bin)?)
        .add("layout", LAYOUT)
        .add("modules", MODULES.join(","))
        .add("cmdline", CMDLINE)
        .add("xorriso", ctx.tool("xorriso"))
        .add("grub", ctx.tool("grub-mkimage"))
        .add("mtools", ctx.tool("mcopy"))
        .add("objcopy", ctx.tool("objcopy"))
        .finish();
    let (dir, cached) = ctx.cache.get_or_build("installer", &key, |tmp| build(ctx, input, tmp))?;
    let out = Installer { key, iso: dir.join(iso_name(ctx)), info: dir.join(INSTALLER_FILE), sig: dir.join(INSTALLER_SIG_FILE) };
    let size = std::fs::metadata(&out.iso).ok().map(|m| m.len());
    Ok((out, if cached { Outcome::Cached } else { Outcome::Ran }, size))
}

fn build(ctx: &Context, input: &InstallerInput, out: &Path) -> Result<()> {
    let work = out.join("work");
    let manifest_path = input.signed.dir.join(MANIFEST_FILE);
    let manifest_bytes = std::fs::read(&manifest_path).with_context(|| format!("reading {}", manifest_path.display()))?;
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes)?;

    // The payload: the signed manifest and the image's data ranges.
    let payload = work.join("tree").join(INSTALLER_PAYLOAD_DIR);
    std::fs::create_dir_all(&payload)?;
    std::fs::write(payload.join(MANIFEST_FILE), &manifest_bytes)?;
    std::fs::copy(input.signed.dir.join(MANIFEST_SIG_FILE), payload.join(MANIFEST_SIG_FILE))?;
    pack_ranges(&input.disk.raw, &manifest, &payload.join(INSTALLER_DATA_FILE))?;

    // The initramfs.
    let pubkey = std::fs::read(input.signed.dir.join(crate::sign::PUBLIC_KEY_FILE))?;
    let initrd = work.join("installer.cpio");
    let entries = initramfs_entries(input.rootfs, input.installer_bin, &pubkey, ctx.epoch() as u32)?;
    let mut f = std::io::BufWriter::new(std::fs::File::create(&initrd)?);
    cpio::write_newc(&mut f, &entries)?;
    f.flush()?;
    drop(f);

    let kernel = input.rootfs.tree.join(format!("boot/vmlinuz-{}", input.rootfs.kernel));
    let uki = work.join("installer.efi");
    let os_release = format!("NAME=\"ciab installer\"\nID=ciab-installer\nPRETTY_NAME=\"ciab installer for {} {}\"\n", ctx.spec.name, ctx.spec.version);
    uki::build(&uki::UkiInput {
        stub: &input.rootfs.tree.join("usr/lib/systemd/boot/efi/linuxx64.efi.stub"),
        kernel: &kernel,
        initrd: &initrd,
        cmdline: CMDLINE,
        os_release: &os_release,
        uname: &input.rootfs.kernel,
        work_dir: &work,
        output: &uki,
        timestamp: ctx.epoch() as u32,
    })?;
    let iso_path = out.join(iso_name(ctx));
    iso::build_iso(&iso::IsoInput {
        volume_id: &volume_id(ctx),
        tree: &work.join("tree"),
        kernel: &kernel,
        initrd: &initrd,
        cmdline: CMDLINE,
        uki: &uki,
        source_date_epoch: ctx.epoch(),
        work_dir: &work,
        output: &iso_path,
    })?;
    std::fs::remove_dir_all(&work)?;

    let info = InstallerInfo {
        schema: MANIFEST_SCHEMA,
        image: manifest.image.name.clone(),
        manifest_sha256: crate::fsutil::sha256_bytes(&manifest_bytes),
        iso: OutputFile {
            path: iso_name(ctx),
            kind: "iso".into(),
            size: std::fs::metadata(&iso_path)?.len(),
            sha256: crate::fsutil::sha256_file(&iso_path)?,
        },
        block_map: crate::blockmap::block_map(&iso_path)?,
    };
    let json = serde_json::to_vec_pretty(&info)?;
    std::fs::write(out.join(INSTALLER_FILE), &json)?;
    std::fs::write(out.join(INSTALLER_SIG_FILE), crate::sign::sign(input.secret_key, &json, INSTALLER_FILE)?)?;
    Ok(())
}

/// Writes the image's mapped ranges back to back: what the installer writes.
fn pack_ranges(raw: &Path, manifest: &Manifest, dest: &Path) -> Result<()> {
    let src = std::fs::File::open(raw).with_context(|| format!("opening {}", raw.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(dest)?);
    let mut buf = Vec::new();
    for r in &manifest.disk.block_map {
        buf.resize(r.length as usize, 0);
        src.read_exact_at(&mut buf, r.offset).with_context(|| format!("reading {}", raw.display()))?;
        if crate::fsutil::sha256_bytes(&buf) != r.sha256 {
            bail!("{} changed since its manifest was written (range at {}); rebuild", raw.display(), r.offset);
        }
        out.write_all(&buf)?;
    }
    out.flush()?;
    Ok(())
}

/// The shared libraries (and the dynamic loader) `bin` needs, found in the
/// image's root tree: `(path in the tree, relative)`. The binary is built on
/// the host; the image's glibc is as new or newer, which glibc supports.
fn needed_libraries(tree: &Path, bin: &Path) -> Result<Vec<String>> {
    let search = ["usr/lib/x86_64-linux-gnu", "usr/lib64", "usr/lib"];
    let mut todo = vec![bin.to_path_buf()];
    let mut found: BTreeSet<String> = BTreeSet::new();
    while let Some(file) = todo.pop() {
        let dynamic = Cmd::new("readelf").package("binutils").args(["-d", "-l", "-W"]).arg(&file).run()?;
        for line in dynamic.lines() {
            let candidates: Vec<String> = if let Some(rest) = line.split("Shared library: [").nth(1) {
                let name = rest.trim_end_matches(']');
                search.iter().map(|d| format!("{d}/{name}")).collect()
            } else if let Some(rest) = line.split("Requesting program interpreter: ").nth(1) {
                // The loader must be at the very path the binary names
                // (`/lib64/…`, under /usr in a merged-/usr tree).
                let path = rest.trim_end_matches(']').trim_start_matches('/');
                vec![format!("usr/{path}"), path.to_owned()]
            } else {
                continue;
            };
            let rel = candidates
                .iter()
                .find(|rel| tree.join(rel).exists())
                .cloned()
                .with_context(|| format!("{} needs {}, which the image does not have", file.display(), candidates[0]))?;
            if found.insert(rel.clone()) {
                todo.push(tree.join(&rel));
            }
        }
    }
    Ok(found.into_iter().collect())
}

fn initramfs_entries(rootfs: &Rootfs, installer_bin: &Path, pubkey: &[u8], mtime: u32) -> Result<Vec<Entry>> {
    let tree = &rootfs.tree;
    let modules_rel = format!("usr/lib/modules/{}", rootfs.kernel);
    let modules = kmod::closure(&tree.join(&modules_rel), MODULES)?;
    let libs = needed_libraries(tree, installer_bin)?;

    let mut files: Vec<Entry> = Vec::new();
    files.push(Entry::file_path("init", installer_bin, 0o755, mtime));
    for lib in &libs {
        // Copy what the name resolves to: the initramfs needs no symlink chains.
        let real = std::fs::canonicalize(tree.join(lib)).with_context(|| format!("resolving {lib} in the image"))?;
        files.push(Entry::file_path(lib.as_str(), real, 0o755, mtime));
    }
    let mut list = String::new();
    for m in &modules {
        files.push(Entry::file_path(Path::new(&modules_rel).join(m), tree.join(&modules_rel).join(m), 0o644, mtime));
        list.push_str(&format!("{}\n", m.display()));
    }
    files.push(Entry::file_bytes(INSTALLER_MODULE_LIST, list.into_bytes(), 0o644, mtime));
    files.push(Entry::file_bytes(INSTALLER_TRUSTED_KEY, pubkey.to_vec(), 0o644, mtime));

    let mut dirs: BTreeSet<PathBuf> = ["dev", "proc", "sys", "run", "tmp", "usr/lib64"].iter().map(PathBuf::from).collect();
    for f in &files {
        let mut p = f.name.parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.to_path_buf());
            p = d.parent();
        }
    }
    let mut entries: Vec<Entry> = dirs.into_iter().map(|d| Entry::dir(d, 0o755, mtime)).collect();
    entries.push(Entry::char_dev("dev/console", 5, 1, 0o600, mtime));
    // Merged /usr, as in the image: the loader's path is /lib64/ld-linux….
    entries.push(Entry::symlink("lib64", "usr/lib64", mtime));
    entries.push(Entry::symlink("lib", "usr/lib", mtime));
    entries.extend(files);
    Ok(entries)
}
