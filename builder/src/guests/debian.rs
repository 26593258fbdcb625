//! A Debian generic cloud image the builder makes (`build = "debian"`): the
//! spec's suite from the spec's mirror, made by mmdebstrap like the image's
//! own tree, with Debian's cloud kernel, cloud-init, OpenSSH and netplan, on
//! a BIOS-bootable disk ([`crate::writers::bios_disk`]) whose ext4 root
//! partition is last, so cloud-init's growpart grows it to the server's disk.
//!
//! GRUB's menu sits on the small FAT partition and loads `/vmlinuz` and
//! `/initrd.img` from the root file system: Debian's kernel packages keep
//! those links current, so a kernel upgraded inside a server boots with no
//! GRUB tools in the guest.
//!
//! No password anywhere: cloud-init's default user (`debian`) is locked and
//! logs in with the key from the instance's metadata; the SSH host keys and
//! the machine id are made by each instance on its first boot.
//!
//! Cached by its own key (the suite, the mirror, the packages, the tools),
//! not the image's tree: a changed image package list does not rebuild it.

use crate::cache::KeyBuilder;
use crate::stages::rootfs::{self, Debootstrap};
use crate::stages::{Context, DiskIds, STAGE_FORMAT};
use crate::writers::bios_disk::{write_bios_disk, BiosDisk};
use crate::writers::ext4::{ext4_from_tree, Ext4};
use anyhow::{bail, Context as _, Result};
use ciab_core::contract::PackageInfo;
use std::fs;
use std::path::{Path, PathBuf};

/// What the guest is made of (Debian's own cloud images carry about the
/// same): a kernel for virtual machines, cloud-init and what it drives
/// (growpart, netplan for the network, OpenSSH), and the tools a user
/// expects on a server that may never reach a mirror.
pub const PACKAGES: &[&str] = &[
    "linux-image-cloud-amd64",
    "systemd-sysv",
    "udev",
    "initramfs-tools",
    "cloud-init",
    "cloud-guest-utils",
    "netplan.io",
    "systemd-resolved",
    "openssh-server",
    "sudo",
    "ca-certificates",
    "curl",
    "iproute2",
    "iputils-ping",
    "procps",
    "less",
    "vim-tiny",
    "e2fsprogs",
];

/// cloud-init's default user on Debian.
pub const DEFAULT_USER: &str = "debian";
/// Bumped when what [`build`] makes changes, to invalidate cached guests.
/// 3: `packages.json` beside the disk.
pub const LAYOUT: &str = "3";
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// The FAT partition holds GRUB's menu only.
const BOOT_MIB: u64 = 16;
/// The guest's packages (name, version, source), in its cache directory.
const PACKAGES_FILE: &str = "packages.json";
const CMDLINE: &str = "ro console=tty0 console=ttyS0,115200n8";

/// A built guest disk and what its Glance properties say of it.
#[derive(Debug, Clone)]
pub struct DebianGuest {
    /// The raw disk, in the cache.
    pub disk: PathBuf,
    /// Kernel release inside.
    pub kernel: String,
    /// Debian's major version, `13`.
    pub version: String,
    /// The suite's code name, `trixie`.
    pub suite: String,
    /// Every package installed in it, for the manifest and the SBOM.
    pub packages: Vec<PackageInfo>,
}

pub fn key(ctx: &Context, name: &str) -> String {
    let spec = ctx.spec;
    KeyBuilder::new("guest-debian")
        .add("format", STAGE_FORMAT)
        .add("layout", LAYOUT)
        .add("name", name)
        .add("suite", &spec.debian.suite)
        .add("sources", ctx.sources.lines(&spec.debian.suite, &spec.debian.components).join("\n"))
        .add("packages", PACKAGES.join(" "))
        .add("epoch", spec.source_date_epoch.to_string())
        .add("mmdebstrap", ctx.tool("mmdebstrap"))
        .add("mkfs.ext4", ctx.tool("mkfs.ext4"))
        .add("mkfs.vfat", ctx.tool("mkfs.vfat"))
        .add("grub-mkimage", ctx.tool("grub-mkimage"))
        .finish()
}

/// Builds (or takes from the cache) the guest called `name`.
pub fn build(ctx: &Context, name: &str) -> Result<DebianGuest> {
    let (dir, _) = ctx.cache.get_or_build("guest-debian", &key(ctx, name), |out| make(ctx, name, out))?;
    let read = |file: &str| fs::read_to_string(dir.join(file)).map(|s| s.trim().to_owned()).with_context(|| format!("reading {}", dir.join(file).display()));
    let packages = serde_json::from_str(&read(PACKAGES_FILE)?).with_context(|| format!("parsing {}", dir.join(PACKAGES_FILE).display()))?;
    Ok(DebianGuest { disk: dir.join("disk.raw"), kernel: read("kernel")?, version: read("version")?, suite: ctx.spec.debian.suite.clone(), packages })
}

fn make(ctx: &Context, name: &str, out: &Path) -> Result<()> {
    let tree = out.join("tree");
    let packages: Vec<String> = PACKAGES.iter().map(|p| p.to_string()).collect();
    tracing::info!("mmdebstrap {} for guest image {name} ({} packages requested)", ctx.spec.debian.suite, packages.len());
    rootfs::mmdebstrap(ctx, &Debootstrap { variant: "apt", packages: &packages, essential_hooks: &[], customize_hooks: &[] }, &tree)
        .with_context(|| format!("making the tree of guest image {name}"))?;
    let ids = DiskIds::derive(&crate::fsutil::sha256_bytes(format!("guest:{name}").as_bytes()));
    let root_part = ids.part_uuid(ciab_core::contract::PartitionRole::RootA);
    prepare_tree(&tree, &ids.root_fs_uuid.to_string())?;
    crate::tree::clamp_mtimes(&tree, ctx.epoch())?;
    let kernel = rootfs::kernel_release(&tree)?;
    let packages = rootfs::installed_packages(&tree).with_context(|| format!("listing the packages of guest image {name}"))?;
    let version = major_version(&fs::read_to_string(tree.join("etc/debian_version")).context("reading the guest's /etc/debian_version")?);

    // The smallest whole-GiB disk that holds the tree with room for ext4's
    // metadata and a first boot; the server's disk is grown into later.
    let used = crate::tree::disk_usage(&tree)?;
    let fixed = (3 + BOOT_MIB) * MIB;
    let disk = (used + used / 4 + 256 * MIB + fixed).div_ceil(GIB) * GIB;
    let root_img = out.join("root.img");
    let fs = Ext4 { label: "root", uuid: ids.root_fs_uuid, hash_seed: ids.root_hash_seed, epoch: ctx.epoch() };
    ext4_from_tree(&fs, &tree, &root_img, (disk - fixed) / MIB).with_context(|| format!("building the root file system of guest image {name}"))?;
    fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))?;

    let boot = out.join("boot");
    fs::create_dir_all(boot.join("grub"))?;
    fs::write(boot.join("grub/grub.cfg"), grub_cfg(&ids.root_fs_uuid.to_string(), &root_part.to_string(), &version))?;
    write_bios_disk(&BiosDisk { ids: &ids, boot_files: &boot, boot_mib: BOOT_MIB, root: Some(&root_img), grub_modules: &["ext2"], epoch: ctx.epoch(), work: out, out: &out.join("disk.raw") })
        .with_context(|| format!("writing the disk of guest image {name}"))?;
    for scratch in ["root.img", "fat.img", "grub", "boot"] {
        let p = out.join(scratch);
        if p.is_dir() { fs::remove_dir_all(&p) } else { fs::remove_file(&p) }.with_context(|| format!("removing {}", p.display()))?;
    }
    fs::write(out.join("kernel"), &kernel)?;
    fs::write(out.join("version"), &version)?;
    fs::write(out.join(PACKAGES_FILE), serde_json::to_vec_pretty(&packages)?)?;
    Ok(())
}

/// Makes the tree an image for many servers: nothing one instance owns
/// (host keys, machine id, random seed), the root file system by its UUID,
/// and cloud-init looking where a cloud puts metadata.
fn prepare_tree(tree: &Path, root_fs_uuid: &str) -> Result<()> {
    let write = |rel: &str, text: &str| fs::write(tree.join(rel), text).with_context(|| format!("writing /{rel} in the guest tree"));
    write("etc/fstab", &format!("# Written by ciab: the root file system, grown by cloud-init at first boot.\nUUID={root_fs_uuid} / ext4 rw,discard,errors=remount-ro 0 1\n"))?;
    write("etc/hostname", "localhost\n")?;
    write("etc/hosts", "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n")?;
    // Empty, not absent: systemd makes one at first boot and runs its
    // first-boot units (ConditionFirstBoot).
    write("etc/machine-id", "")?;
    write("etc/cloud/cloud.cfg.d/90_ciab.cfg", CLOUD_CFG)?;
    for rel in ["var/lib/dbus/machine-id", "var/lib/systemd/random-seed"] {
        remove_if_exists(&tree.join(rel))?;
    }
    let ssh = tree.join("etc/ssh");
    for entry in fs::read_dir(&ssh).with_context(|| format!("reading {}", ssh.display()))? {
        let path = entry?.path();
        if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("ssh_host_")) {
            remove_if_exists(&path)?;
        }
    }
    // resolved's stub, whatever mmdebstrap left behind from the build host.
    let resolv = tree.join("etc/resolv.conf");
    remove_if_exists(&resolv)?;
    std::os::unix::fs::symlink("../run/systemd/resolve/stub-resolv.conf", &resolv).context("linking the guest's /etc/resolv.conf")?;
    for link in ["vmlinuz", "initrd.img"] {
        if fs::symlink_metadata(tree.join(link)).is_err() {
            bail!("the guest tree has no /{link}: Debian's kernel package keeps that link, GRUB boots through it (is linux-update-symlinks configured differently?)");
        }
    }
    Ok(())
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).with_context(|| format!("removing {}", path.display())),
        _ => Ok(()),
    }
}

/// Where a server finds its metadata: a config drive, OpenStack's metadata
/// service, a NoCloud seed (`cidata`); with none, cloud-init still makes the
/// locked default user and the host keys.
pub const CLOUD_CFG: &str = "# Written by ciab.\ndatasource_list: [ConfigDrive, OpenStack, NoCloud, None]\n";

/// GRUB's menu: the root file system's kernel links, on serial and screen.
pub fn grub_cfg(root_fs_uuid: &str, root_part_uuid: &str, version: &str) -> String {
    format!(
        "serial --unit=0 --speed=115200\nterminal_input serial console\nterminal_output serial console\nset timeout=1\nset default=0\n\
search --no-floppy --fs-uuid --set=root {root_fs_uuid}\n\
menuentry \"Debian GNU/Linux {version}\" {{\n    linux /vmlinuz root=PARTUUID={root_part_uuid} {CMDLINE}\n    initrd /initrd.img\n}}\n"
    )
}

/// `13` of `13.2`; a testing tree's `forky/sid` as it is.
fn major_version(debian_version: &str) -> String {
    let v = debian_version.trim();
    v.split('.').next().filter(|m| m.chars().all(|c| c.is_ascii_digit()) && !m.is_empty()).unwrap_or(v).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_menu_boots_the_root_file_systems_kernel_links() {
        let cfg = grub_cfg("0c1a0000-0000-4000-8000-000000000001", "0c1a0000-0000-4000-8000-000000000002", "13");
        assert!(cfg.contains("search --no-floppy --fs-uuid --set=root 0c1a0000-0000-4000-8000-000000000001\n"), "{cfg}");
        assert!(cfg.contains("linux /vmlinuz root=PARTUUID=0c1a0000-0000-4000-8000-000000000002 ro console=tty0 console=ttyS0,115200n8\n"), "{cfg}");
        assert!(cfg.contains("initrd /initrd.img\n") && cfg.contains("menuentry \"Debian GNU/Linux 13\""), "{cfg}");
    }

    #[test]
    fn versions_are_debians_major_number() {
        assert_eq!(major_version("13.2\n"), "13");
        assert_eq!(major_version("13"), "13");
        assert_eq!(major_version("forky/sid\n"), "forky/sid");
    }

    /// A tree as mmdebstrap leaves it: host keys, a machine id, the build
    /// host's resolv.conf and the kernel links.
    #[test]
    fn the_tree_keeps_nothing_an_instance_owns() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path();
        for d in ["etc/ssh", "etc/cloud/cloud.cfg.d", "var/lib/dbus", "var/lib/systemd"] {
            fs::create_dir_all(tree.join(d)).unwrap();
        }
        for f in ["etc/ssh/ssh_host_ed25519_key", "etc/ssh/ssh_host_ed25519_key.pub", "etc/ssh/sshd_config", "var/lib/dbus/machine-id", "var/lib/systemd/random-seed", "etc/resolv.conf"] {
            fs::write(tree.join(f), "x").unwrap();
        }
        fs::write(tree.join("etc/machine-id"), "0123456789abcdef0123456789abcdef\n").unwrap();
        std::os::unix::fs::symlink("boot/vmlinuz-6.12", tree.join("vmlinuz")).unwrap();
        let err = prepare_tree(tree, "u").unwrap_err().to_string();
        assert!(err.contains("no /initrd.img"), "{err}");
        std::os::unix::fs::symlink("boot/initrd.img-6.12", tree.join("initrd.img")).unwrap();
        prepare_tree(tree, "0c1a-uuid").unwrap();
        assert!(!tree.join("etc/ssh/ssh_host_ed25519_key").exists() && !tree.join("etc/ssh/ssh_host_ed25519_key.pub").exists());
        assert!(tree.join("etc/ssh/sshd_config").exists());
        assert_eq!(fs::read_to_string(tree.join("etc/machine-id")).unwrap(), "");
        assert!(!tree.join("var/lib/dbus/machine-id").exists() && !tree.join("var/lib/systemd/random-seed").exists());
        assert_eq!(fs::read_link(tree.join("etc/resolv.conf")).unwrap(), Path::new("../run/systemd/resolve/stub-resolv.conf"));
        assert!(fs::read_to_string(tree.join("etc/fstab")).unwrap().contains("\nUUID=0c1a-uuid / ext4 "));
        assert!(fs::read_to_string(tree.join("etc/cloud/cloud.cfg.d/90_ciab.cfg")).unwrap().contains("datasource_list: [ConfigDrive, OpenStack, NoCloud, None]"));
    }
}
