//! The tiny guest image: a raw disk a box registers in Glance so a server can
//! be booted on a fresh box with nothing downloaded. Made from the image's own
//! packages (its Debian kernel and `busybox-static`), so the manifest pins it
//! like everything else:
//!
//! - GPT with a BIOS boot partition holding GRUB's core image, and a FAT
//!   partition with `vmlinuz`, `initrd.img` and `grub/grub.cfg` (legacy BIOS
//!   boot, what Nova's libvirt guests use by default);
//! - the initramfs is busybox as `/init`'s shell, virtio_net and its
//!   dependencies (decompressed: busybox's insmod reads plain modules), a
//!   DHCP client script, and nothing else. It takes an address by DHCP on the
//!   first NIC, serves a page on port 80 and prints [`MARKER`] lines on its
//!   console (the serial port, which is Nova's console log).
//!
//! Nothing is mounted: the disk is written by [`crate::writers::bios_disk`]
//! (FAT made with dosfstools and mtools, GRUB installed by
//! [`crate::writers::grub_bios`]). Same inputs, same bytes (fixed ids from
//! the name, times pinned to the build's epoch).

use crate::kmod;
use crate::stages::DiskIds;
use crate::writers::bios_disk::{write_bios_disk, BiosDisk};
use crate::writers::cpio;
use ciab_core::exec::Cmd;
use anyhow::{bail, Context as _, Result};
use cpio::Entry;
use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};

/// What the guest prints on its console: `ciab-guest: up …` once it has an
/// address.
pub const MARKER: &str = "ciab-guest:";
/// Modules the guest loads (their dependencies are added).
const MODULES: &[&str] = &["virtio_net"];
/// Room for the kernel (~10 MiB) and the initramfs (~3 MiB).
const FAT_MIB: u64 = 40;
const CMDLINE: &str = "console=tty0 console=ttyS0,115200n8 panic=10 loglevel=4";
/// Bumped when what `build` makes changes, to invalidate cached bundles.
pub const LAYOUT: &str = "3";

/// What the guest is made from and where it goes.
pub struct GuestInput<'a> {
    /// The image's root tree (kernel, modules and busybox come from it).
    pub tree: &'a Path,
    /// Kernel release in the tree.
    pub kernel: &'a str,
    /// The image's name in Glance; also seeds the disk's ids.
    pub name: &'a str,
    pub epoch: i64,
    /// Scratch space.
    pub work: &'a Path,
    /// The raw disk to write (must not exist).
    pub out: &'a Path,
}

/// `/init`: busybox's shell as PID 1. It never exits (the kernel would panic).
pub fn init_script() -> String {
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec >/dev/console 2>&1
for m in $(cat /etc/modules); do insmod "/lib/modules/$m"; done
ip link set lo up
echo "{MARKER} booted, kernel $(uname -r)"
iface=$(ls /sys/class/net | grep -v '^lo$' | head -n 1)
if [ -n "$iface" ] && udhcpc -i "$iface" -s /etc/udhcpc.script -t 20 -T 3 -n -q; then
    echo "{MARKER} up, $iface $(cat /run/address)"
else
    echo "{MARKER} no DHCP lease on ${{iface:-any NIC}}"
fi
mkdir -p /www
echo "{MARKER} $(hostname)" > /www/index.html
httpd -p 80 -h /www
while :; do sleep 3600; done
"#
    )
}

/// udhcpc's hook: applies the lease (address, prefix, router, MTU).
pub fn udhcpc_script() -> &'static str {
    r#"#!/bin/sh
case "$1" in
deconfig)
    ip addr flush dev "$interface"
    ip link set "$interface" up
    ;;
bound|renew)
    [ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
    [ -n "$hostname" ] && hostname "$hostname"
    echo "$ip/${mask:-24}" > /run/address
    ;;
esac
"#
}

/// GRUB's menu: straight into the kernel, on the serial port and the screen.
pub fn grub_cfg() -> String {
    format!(
        "serial --unit=0 --speed=115200\nterminal_input serial console\nterminal_output serial console\nset timeout=0\nset default=0\n\
menuentry \"ciab tiny guest\" {{\n    linux /vmlinuz {CMDLINE}\n    initrd /initrd.img\n}}\n"
    )
}

/// busybox-static's binary in the tree (merged /usr or not).
fn busybox(tree: &Path) -> Result<PathBuf> {
    for rel in ["usr/bin/busybox", "bin/busybox"] {
        let p = tree.join(rel);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("the image has no busybox: add the package busybox-static to [packages] install (the guest image's /init runs on it)")
}

/// A module file's bytes, decompressed.
fn module_bytes(path: &Path) -> Result<Vec<u8>> {
    let name = path.display().to_string();
    match path.extension().and_then(|e| e.to_str()) {
        Some("ko") => std::fs::read(path).with_context(|| format!("reading {name}")),
        Some("xz") => Cmd::new("xz").package("xz-utils").args(["-dc"]).arg(path).output().map(|o| o.stdout),
        Some("zst") => Cmd::new("zstd").package("zstd").args(["-dc"]).arg(path).output().map(|o| o.stdout),
        _ => bail!("{name}: not a kernel module this builder can read"),
    }
    .with_context(|| format!("decompressing {name}"))
}

/// The initramfs's members, in a fixed order.
pub fn initramfs_entries(tree: &Path, kernel: &str, mtime: u32) -> Result<Vec<Entry>> {
    let modules_dir = tree.join("usr/lib/modules").join(kernel);
    let modules = kmod::closure(&modules_dir, MODULES)?;
    let mut files = vec![
        Entry::file_bytes("init", init_script().into_bytes(), 0o755, mtime),
        Entry::file_path("bin/busybox", busybox(tree)?, 0o755, mtime),
        Entry::file_bytes("etc/udhcpc.script", udhcpc_script().as_bytes().to_vec(), 0o755, mtime),
    ];
    let mut list = String::new();
    for m in &modules {
        let file = m.file_name().and_then(|n| n.to_str()).context("module file name")?;
        let plain = file.split(".ko").next().unwrap_or(file).to_owned() + ".ko";
        files.push(Entry::file_bytes(format!("lib/modules/{plain}"), module_bytes(&modules_dir.join(m))?, 0o644, mtime));
        list.push_str(&plain);
        list.push('\n');
    }
    files.push(Entry::file_bytes("etc/modules", list.into_bytes(), 0o644, mtime));
    let mut dirs: BTreeSet<PathBuf> = ["bin", "dev", "etc", "lib/modules", "proc", "run", "sys", "tmp"].iter().map(PathBuf::from).collect();
    // Every ancestor: the kernel's unpacker makes no missing parents.
    let named: Vec<PathBuf> = dirs.iter().cloned().chain(files.iter().map(|f| f.name.clone())).collect();
    for name in named {
        let mut p = name.parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.to_path_buf());
            p = d.parent();
        }
    }
    let mut entries: Vec<Entry> = dirs.into_iter().map(|d| Entry::dir(d, 0o755, mtime)).collect();
    entries.push(Entry::char_dev("dev/console", 5, 1, 0o600, mtime));
    entries.extend(files);
    Ok(entries)
}

/// Builds the guest's raw disk at `input.out`.
pub fn build(input: &GuestInput) -> Result<()> {
    let mtime = u32::try_from(input.epoch).context("the build's epoch does not fit a cpio time")?;
    let ids = DiskIds::derive(&crate::fsutil::sha256_bytes(format!("guest:{}", input.name).as_bytes()));
    std::fs::create_dir_all(input.work)?;

    // The FAT partition's files.
    let esp = input.work.join("esp");
    std::fs::create_dir_all(esp.join("grub"))?;
    let vmlinuz = input.tree.join(format!("boot/vmlinuz-{}", input.kernel));
    std::fs::copy(&vmlinuz, esp.join("vmlinuz")).with_context(|| format!("copying {}", vmlinuz.display()))?;
    let initrd = File::create(esp.join("initrd.img"))?;
    cpio::write_newc(std::io::BufWriter::new(initrd), &initramfs_entries(input.tree, input.kernel, mtime)?)?;
    std::fs::write(esp.join("grub/grub.cfg"), grub_cfg())?;
    write_bios_disk(&BiosDisk { ids: &ids, boot_files: &esp, boot_mib: FAT_MIB, root: None, grub_modules: &[], epoch: input.epoch, work: input.work, out: input.out })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_takes_a_lease_and_prints_the_marker() {
        let init = init_script();
        assert!(init.starts_with("#!/bin/busybox sh\n"));
        assert!(init.contains("udhcpc -i \"$iface\" -s /etc/udhcpc.script"), "{init}");
        assert!(init.contains("echo \"ciab-guest: up, $iface $(cat /run/address)\""), "{init}");
        assert!(init.contains("${iface:-any NIC}"), "braces survive format!: {init}");
        assert!(init.trim_end().ends_with("while :; do sleep 3600; done"), "PID 1 never exits");
        assert!(udhcpc_script().contains("ip addr add \"$ip/${mask:-24}\" dev \"$interface\""));
        let cfg = grub_cfg();
        assert!(cfg.contains("linux /vmlinuz console=tty0 console=ttyS0,115200n8"), "{cfg}");
        assert!(cfg.contains("initrd /initrd.img"));
    }

    /// A tree with what the initramfs takes: busybox and a module with a
    /// dependency, compressed as Debian ships them.
    #[test]
    fn the_initramfs_has_every_parent_directory_and_plain_modules() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path();
        let kdir = tree.join("usr/lib/modules/6.1.0-test");
        std::fs::create_dir_all(kdir.join("kernel/drivers/net")).unwrap();
        std::fs::create_dir_all(tree.join("usr/bin")).unwrap();
        std::fs::write(tree.join("usr/bin/busybox"), b"busybox").unwrap();
        for m in ["failover", "net_failover", "virtio_net"] {
            let plain = kdir.join(format!("kernel/drivers/net/{m}.ko"));
            std::fs::write(&plain, format!("module {m}")).unwrap();
            Cmd::new("xz").arg(&plain).run().unwrap();
        }
        std::fs::write(
            kdir.join("modules.dep"),
            "kernel/drivers/net/failover.ko.xz:\nkernel/drivers/net/net_failover.ko.xz: kernel/drivers/net/failover.ko.xz\nkernel/drivers/net/virtio_net.ko.xz: kernel/drivers/net/net_failover.ko.xz kernel/drivers/net/failover.ko.xz\n",
        )
        .unwrap();
        let entries = initramfs_entries(tree, "6.1.0-test", 0).unwrap();
        let names: Vec<String> = entries.iter().map(|e| e.name.display().to_string()).collect();
        for (i, n) in names.iter().enumerate() {
            if let Some(parent) = Path::new(n).parent().filter(|p| !p.as_os_str().is_empty()) {
                let at = names.iter().position(|m| Path::new(m) == parent).unwrap_or_else(|| panic!("{parent:?} of {n} in {names:?}"));
                assert!(at < i, "{parent:?} comes before {n}");
            }
        }
        let module = entries.iter().find(|e| e.name == Path::new("lib/modules/virtio_net.ko")).expect("the module, decompressed");
        assert_eq!(module.kind, cpio::Kind::File(cpio::Content::Bytes(b"module virtio_net".to_vec())));
        let list = entries.iter().find(|e| e.name == Path::new("etc/modules")).unwrap();
        assert_eq!(list.kind, cpio::Kind::File(cpio::Content::Bytes(b"failover.ko\nnet_failover.ko\nvirtio_net.ko\n".to_vec())), "dependencies first");
    }

    #[test]
    fn a_tree_without_busybox_is_refused_with_the_package_to_add() {
        let dir = tempfile::tempdir().unwrap();
        let err = busybox(dir.path()).unwrap_err().to_string();
        assert!(err.contains("busybox-static"), "{err}");
    }
}
