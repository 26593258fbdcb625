//! Legacy-BIOS (i386-pc) GRUB installation into a raw GPT disk image file.
//!
//! This does, in plain Rust and without loop devices, mounts or `grub-install`,
//! what `grub-install --target=i386-pc --no-rs-codes` + `grub-bios-setup` do for
//! the "embed core.img into the GPT BIOS boot partition" path of GRUB 2.06
//! (`util/setup.c`, function `SETUP`, `GRUB_SETUP_BIOS`):
//!
//! 1. [`make_core_img`] runs the host's `grub-mkimage -O i386-pc` with a fixed
//!    module list and a small embedded early config that finds the ESP by its
//!    file-system UUID and sets `prefix=($root)/grub`. GRUB's kernel then loads
//!    the embedded `normal` module, which reads `$prefix/grub.cfg`.
//! 2. [`install`] writes `core.img` at the first sector of the BIOS boot
//!    partition with its diskboot blocklist patched (`save_blocklists`), and
//!    writes `boot.img` into sector 0 keeping the disk's BPB bytes
//!    `0x03..0x5A` and the disk signature + partition table `0x1B8..0x1FE`,
//!    with `kernel_sector` (0x5C), `boot_drive` (0x64) and the drive-check jump
//!    (0x66) patched (`write_rootdev` and the "buggy BIOS" workaround).
//!
//! Offsets were checked against Debian's grub2 2.06-13+deb12u2 source
//! (`include/grub/i386/pc/boot.h`, `include/grub/offsets.h`,
//! `grub-core/boot/i386/pc/boot.S`, `grub-core/boot/i386/pc/diskboot.S`,
//! `grub-core/partmap/gpt.c`, `util/setup.c`).
//!
//! Differences from `grub-bios-setup`: no Reed-Solomon parity is appended
//! (same as `grub-install --no-rs-codes`; the parity only repairs a core.img
//! that something else overwrote), and this module refuses to write unless
//! sector 0 is a protective MBR and the GPT really has a BIOS boot partition
//! starting at the given LBA. The rest of the BIOS boot partition is left as
//! it was (grub-bios-setup does not clear it either).
//!
//! # What the ESP must contain
//!
//! Only `/grub/grub.cfg` (on the FAT file system whose UUID was given to
//! [`make_core_img`]). Every module in [`DEFAULT_MODULES`] is linked into
//! core.img, so `/grub/i386-pc/*.mod` is **not** needed as long as grub.cfg only
//! uses commands from those modules (menuentry/set/if/... come with `normal`;
//! `linux`/`initrd` with `linux`; `serial`, `terminal_input`/`terminal_output`,
//! `echo`, `test`/`[`, `halt`, `reboot`, `sleep`, `ls`, `cat`, `search*`,
//! `configfile`/`source`, `insmod`/`lsmod`). If grub.cfg needs more, either add
//! the modules with [`make_core_img_with_modules`] or copy the `.mod` files
//! (and `*.lst`) from `/usr/lib/grub/i386-pc` to `/grub/i386-pc/` on the ESP so
//! `insmod` can load them from `$prefix/i386-pc`. Without those files `normal`
//! silently skips its `command.lst`/`fs.lst`/... lookups.

use anyhow::{Context, Result, bail, ensure};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
#[cfg(test)]
use std::process::Command;

/// Sector size this module works with (the image is addressed in 512-byte LBAs).
/// Where Debian installs GRUB's i386-pc files (package grub-pc-bin).
pub const GRUB_I386_PC_DIR: &str = "/usr/lib/grub/i386-pc";

pub const SECTOR_SIZE: usize = 512;

/// GPT partition type GUID of a "BIOS boot" partition.
pub const BIOS_BOOT_PARTITION_TYPE: &str = "21686148-6449-6E6F-744E-656564454649";
/// The same GUID as stored on disk (mixed endian): it spells "Hah!IdontNeedEFI".
const BIOS_BOOT_PARTITION_TYPE_ON_DISK: [u8; 16] = *b"Hah!IdontNeedEFI";

// include/grub/i386/pc/boot.h (GRUB 2.06)
/// Start of the BIOS parameter block kept from the disk (`GRUB_BOOT_MACHINE_BPB_START`).
pub const BOOT_MACHINE_BPB_START: usize = 0x3;
/// End of the BIOS parameter block (`GRUB_BOOT_MACHINE_BPB_END`).
pub const BOOT_MACHINE_BPB_END: usize = 0x5a;
/// LE u64 LBA of core.img's first sector (`GRUB_BOOT_MACHINE_KERNEL_SECTOR`).
pub const BOOT_MACHINE_KERNEL_SECTOR: usize = 0x5c;
/// Boot drive byte, 0xff = "use %dl from the BIOS" (`GRUB_BOOT_MACHINE_BOOT_DRIVE`).
pub const BOOT_MACHINE_BOOT_DRIVE: usize = 0x64;
/// 2-byte `jmp` replaced by `nop nop` for hard disks (`GRUB_BOOT_MACHINE_DRIVE_CHECK`).
pub const BOOT_MACHINE_DRIVE_CHECK: usize = 0x66;
/// Disk signature + partition table start (`GRUB_BOOT_MACHINE_WINDOWS_NT_MAGIC`).
pub const BOOT_MACHINE_WINDOWS_NT_MAGIC: usize = 0x1b8;
/// End of the partition table (`GRUB_BOOT_MACHINE_PART_END`).
pub const BOOT_MACHINE_PART_END: usize = 0x1fe;
/// Size of one diskboot blocklist entry: u64 start, u16 len, u16 segment
/// (`GRUB_BOOT_MACHINE_LIST_SIZE`, `struct grub_pc_bios_boot_blocklist`).
const BOOT_MACHINE_LIST_SIZE: usize = 12;

// include/grub/offsets.h (GRUB 2.06)
/// `GRUB_BOOT_I386_PC_KERNEL_SEG`; the 2nd sector of core.img goes to segment 0x820.
const BOOT_I386_PC_KERNEL_SEG: u16 = 0x800;
/// `GRUB_KERNEL_I386_PC_LINK_ADDR`.
const KERNEL_I386_PC_LINK_ADDR: u64 = 0x9000;
/// `GRUB_KERNEL_I386_PC_NO_REED_SOLOMON_LENGTH` (offset in core.img's 2nd sector).
const KERNEL_I386_PC_NO_REED_SOLOMON_LENGTH: usize = 0x14;

/// Largest core.img (in sectors) the i386-pc loader can place below 0x78000:
/// `(0x78000 - GRUB_KERNEL_I386_PC_LINK_ADDR) >> 9` = 888 (setup.c caps `maxsec` so).
pub const MAX_CORE_SECTORS: u64 = (0x78000 - KERNEL_I386_PC_LINK_ADDR) / SECTOR_SIZE as u64;

/// Modules linked into core.img by [`make_core_img`]. ~153 KiB / 305 sectors
/// with GRUB 2.06 (limit: [`MAX_CORE_SECTORS`] and the BIOS boot partition).
pub const DEFAULT_MODULES: &[&str] = &[
    "biosdisk",
    "part_gpt",
    "part_msdos",
    "fat",
    "search",
    "search_fs_uuid",
    "search_fs_file",
    "search_label",
    "normal",
    "configfile",
    "linux",
    "echo",
    "serial",
    "terminal",
    "terminfo",
    "test",
    "halt",
    "reboot",
    "sleep",
    "ls",
    "cat",
    "minicmd",
];

/// Input of [`make_core_img`].
pub struct BiosBootInput<'a> {
    /// GRUB's i386-pc directory, normally `/usr/lib/grub/i386-pc` (Debian package grub-pc-bin).
    pub grub_dir: &'a Path,
    /// File-system UUID of the ESP as GRUB shows it, e.g. `C1AB-0001` for FAT volume id 0xC1AB0001.
    pub esp_fs_uuid: &'a str,
    /// Directory for `early.cfg` and `core.img` (created if missing).
    pub work_dir: &'a Path,
}

/// The config embedded into core.img. It runs with GRUB's rescue parser (one
/// command per line, no `if`), before `normal` is started; `normal` then
/// reads `$prefix/grub.cfg`, i.e. `/grub/grub.cfg` on the ESP.
pub fn early_config(esp_fs_uuid: &str) -> Result<String> {
    ensure!(
        !esp_fs_uuid.is_empty()
            && esp_fs_uuid
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == '-'),
        "invalid ESP file-system UUID {esp_fs_uuid:?}: expected hex digits and '-', e.g. C1AB-0001"
    );
    Ok(format!(
        "search --no-floppy --fs-uuid --set=root {esp_fs_uuid}\nset prefix=($root)/grub\n"
    ))
}

/// Reads and checks `boot.img` from GRUB's i386-pc directory.
pub fn read_boot_img(grub_dir: &Path) -> Result<Vec<u8>> {
    let path = grub_dir.join("boot.img");
    let img = std::fs::read(&path).with_context(|| {
        format!(
            "cannot read {} (install the Debian package grub-pc-bin)",
            path.display()
        )
    })?;
    check_boot_img(&img).with_context(|| format!("bad {}", path.display()))?;
    Ok(img)
}

/// Builds core.img with the host's `grub-mkimage` and [`DEFAULT_MODULES`].
pub fn make_core_img(input: &BiosBootInput) -> Result<Vec<u8>> {
    make_core_img_with_modules(input, DEFAULT_MODULES)
}

/// Like [`make_core_img`] with an explicit module list (dependencies are
/// resolved by grub-mkimage from `moddep.lst`).
pub fn make_core_img_with_modules(input: &BiosBootInput, modules: &[&str]) -> Result<Vec<u8>> {
    let early = early_config(input.esp_fs_uuid)?;
    for f in [
        "kernel.img",
        "moddep.lst",
        "diskboot.img",
        "lzma_decompress.img",
    ] {
        let p = input.grub_dir.join(f);
        ensure!(
            p.is_file(),
            "{} not found: GRUB i386-pc files are missing (install the Debian package grub-pc-bin)",
            p.display()
        );
    }
    for m in modules {
        ensure!(
            !m.is_empty() && m.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "invalid GRUB module name {m:?}"
        );
        let p = input.grub_dir.join(format!("{m}.mod"));
        ensure!(
            p.is_file(),
            "GRUB module {m} not found at {} (install the Debian package grub-pc-bin)",
            p.display()
        );
    }
    std::fs::create_dir_all(input.work_dir)
        .with_context(|| format!("cannot create {}", input.work_dir.display()))?;
    let cfg_path = input.work_dir.join("early.cfg");
    let core_path = input.work_dir.join("core.img");
    std::fs::write(&cfg_path, early)
        .with_context(|| format!("cannot write {}", cfg_path.display()))?;
    let _ = std::fs::remove_file(&core_path);

    ciab_core::exec::Cmd::new("grub-mkimage")
        .package("grub-pc-bin")
        .env("LC_ALL", "C")
        .arg("--format=i386-pc")
        .arg("--directory")
        .arg(input.grub_dir)
        .arg("--config")
        .arg(&cfg_path)
        .arg("--prefix=/grub")
        .arg("--output")
        .arg(&core_path)
        .args(modules)
        .run()
        .context("building GRUB's core.img (is grub-pc-bin installed?)")?;
    let img = std::fs::read(&core_path)
        .with_context(|| format!("grub-mkimage did not produce {}", core_path.display()))?;
    check_core_img(&img).context("grub-mkimage produced an unexpected core.img")?;
    Ok(img)
}

fn check_boot_img(boot_img: &[u8]) -> Result<()> {
    ensure!(
        boot_img.len() == SECTOR_SIZE,
        "boot.img must be exactly {SECTOR_SIZE} bytes, got {}",
        boot_img.len()
    );
    ensure!(
        boot_img[510..512] == [0x55, 0xaa],
        "boot.img has no 0x55AA boot signature"
    );
    Ok(())
}

fn le16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn le64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

fn check_core_img(core_img: &[u8]) -> Result<()> {
    ensure!(
        core_img.len() >= 2 * SECTOR_SIZE,
        "core.img is too small ({} bytes)",
        core_img.len()
    );
    // diskboot.S: the default first blocklist entry loads to segment 0x820.
    let seg = le16(core_img, SECTOR_SIZE - 2);
    ensure!(
        seg == BOOT_I386_PC_KERNEL_SEG + (SECTOR_SIZE as u16 >> 4),
        "core.img does not start with i386-pc diskboot.img (blocklist segment {seg:#x}, expected 0x820); \
         was it built with -O i386-pc?"
    );
    // setup.c: "core.img version mismatch"
    ensure!(
        le16(
            core_img,
            SECTOR_SIZE + KERNEL_I386_PC_NO_REED_SOLOMON_LENGTH
        ) != 0xffff,
        "core.img version mismatch (no_reed_solomon_length is 0xffff)"
    );
    Ok(())
}

/// Number of 512-byte sectors core.img occupies.
pub fn core_sectors(core_img: &[u8]) -> u64 {
    core_img.len().div_ceil(SECTOR_SIZE) as u64
}

/// Returns core.img padded to whole sectors with its diskboot blocklist set
/// for core.img stored contiguously from `first_lba` (setup.c: clean out the
/// blocklists, `save_blocklists` for every embedding sector, terminator).
pub fn patch_core_img(core_img: &[u8], first_lba: u64) -> Result<Vec<u8>> {
    check_core_img(core_img)?;
    let nsec = core_sectors(core_img);
    ensure!(
        nsec <= 0xffff,
        "core.img is too large ({} bytes)",
        core_img.len()
    );
    let mut img = core_img.to_vec();
    img.resize(nsec as usize * SECTOR_SIZE, 0);

    let first_block = (SECTOR_SIZE - BOOT_MACHINE_LIST_SIZE) as isize;
    let entry = |b: isize| b as usize..b as usize + BOOT_MACHINE_LIST_SIZE;

    // Clean out the blocklists.
    let mut b = first_block;
    while le16(&img, b as usize + 8) != 0 {
        img[entry(b)].fill(0);
        b -= BOOT_MACHINE_LIST_SIZE as isize;
        ensure!(b > 0, "no terminator in the core image");
    }

    // save_blocklists() for sectors first_lba .. first_lba + nsec; the first
    // one is core.img's own first sector (loaded by boot.img), not listed.
    let mut block = first_block;
    let mut segment = BOOT_I386_PC_KERNEL_SEG + (SECTOR_SIZE as u16 >> 4);
    for sector in first_lba + 1..first_lba + nsec {
        let prev = block + BOOT_MACHINE_LIST_SIZE as isize;
        if block != first_block
            && le64(&img, prev as usize) + u64::from(le16(&img, prev as usize + 8)) == sector
        {
            let len = le16(&img, prev as usize + 8) + 1;
            img[prev as usize + 8..prev as usize + 10].copy_from_slice(&len.to_le_bytes());
        } else {
            let r = entry(block);
            img[r.start..r.start + 8].copy_from_slice(&sector.to_le_bytes());
            img[r.start + 8..r.start + 10].copy_from_slice(&1u16.to_le_bytes());
            img[r.start + 10..r.end].copy_from_slice(&segment.to_le_bytes());
            block -= BOOT_MACHINE_LIST_SIZE as isize;
            ensure!(
                block > 0 && le16(&img, block as usize + 8) == 0,
                "the sectors of the core file are too fragmented"
            );
        }
        segment = segment.wrapping_add((SECTOR_SIZE >> 4) as u16);
    }
    // Make sure that the last blocklist is a terminator.
    if block == first_block {
        block -= BOOT_MACHINE_LIST_SIZE as isize;
    }
    img[entry(block)].fill(0);
    Ok(img)
}

/// Returns the new sector 0: `boot.img` with the disk's BPB (0x03..0x5A) and
/// disk signature + partition table (0x1B8..0x1FE) kept from `old_mbr`, the
/// drive-check jump NOPed and `kernel_sector` = `core_first_lba`,
/// `boot_drive` = 0xff, as setup.c does for a hard disk with a partition map.
pub fn patch_boot_img(boot_img: &[u8], old_mbr: &[u8], core_first_lba: u64) -> Result<Vec<u8>> {
    check_boot_img(boot_img)?;
    ensure!(old_mbr.len() == SECTOR_SIZE, "old MBR must be 512 bytes");
    let mut mbr = boot_img.to_vec();
    // Copy the possible DOS BPB.
    mbr[BOOT_MACHINE_BPB_START..BOOT_MACHINE_BPB_END]
        .copy_from_slice(&old_mbr[BOOT_MACHINE_BPB_START..BOOT_MACHINE_BPB_END]);
    // Hard disk: replace the jmp (2 bytes) with double nops (buggy-BIOS %dl workaround).
    mbr[BOOT_MACHINE_DRIVE_CHECK] = 0x90;
    mbr[BOOT_MACHINE_DRIVE_CHECK + 1] = 0x90;
    // Copy the partition table (and the NT disk signature before it).
    mbr[BOOT_MACHINE_WINDOWS_NT_MAGIC..BOOT_MACHINE_PART_END]
        .copy_from_slice(&old_mbr[BOOT_MACHINE_WINDOWS_NT_MAGIC..BOOT_MACHINE_PART_END]);
    // write_rootdev()
    mbr[BOOT_MACHINE_BOOT_DRIVE] = 0xff;
    mbr[BOOT_MACHINE_KERNEL_SECTOR..BOOT_MACHINE_KERNEL_SECTOR + 8]
        .copy_from_slice(&core_first_lba.to_le_bytes());
    Ok(mbr)
}

/// Finds the first GPT partition of type BIOS boot in the primary GPT of
/// `disk`; returns `(first_lba, sectors)`.
pub fn find_bios_boot_partition(disk: &File) -> Result<(u64, u64)> {
    let mut hdr = [0u8; SECTOR_SIZE];
    disk.read_exact_at(&mut hdr, SECTOR_SIZE as u64)
        .context("cannot read the GPT header (LBA 1)")?;
    ensure!(&hdr[0..8] == b"EFI PART", "no GPT header at LBA 1");
    let entries_lba = le64(&hdr, 72);
    let count = le32(&hdr, 80) as usize;
    let size = le32(&hdr, 84) as usize;
    ensure!(
        (128..=4096).contains(&size) && count <= 65536,
        "implausible GPT partition array ({count} entries of {size} bytes)"
    );
    let mut entries = vec![0u8; count * size];
    disk.read_exact_at(&mut entries, entries_lba * SECTOR_SIZE as u64)
        .context("cannot read the GPT partition entries")?;
    for e in entries.chunks_exact(size) {
        if e[0..16] == BIOS_BOOT_PARTITION_TYPE_ON_DISK {
            let (first, last) = (le64(e, 32), le64(e, 40));
            ensure!(
                last >= first,
                "GPT BIOS boot partition has last LBA < first LBA"
            );
            return Ok((first, last - first + 1));
        }
    }
    bail!(
        "the GPT has no BIOS boot partition (type {BIOS_BOOT_PARTITION_TYPE}); embedding is not possible"
    )
}

/// Installs boot.img into sector 0 and core.img into the BIOS boot partition
/// (512-byte sectors `bios_part_first_lba .. + bios_part_sectors`, from the
/// GPT) of the raw disk image `disk` (opened read+write). Refuses, without
/// writing anything, if core.img does not fit, if sector 0 is not a
/// protective MBR, or if the GPT has no BIOS boot partition at that LBA.
pub fn install(
    disk: &File,
    boot_img: &[u8],
    core_img: &[u8],
    bios_part_first_lba: u64,
    bios_part_sectors: u64,
) -> Result<()> {
    check_boot_img(boot_img)?;
    check_core_img(core_img)?;
    let nsec = core_sectors(core_img);
    ensure!(
        nsec <= MAX_CORE_SECTORS,
        "core.img is too big: {nsec} sectors ({} bytes), but the i386-pc loader can load at most \
         {MAX_CORE_SECTORS} sectors (0x78000 - 0x9000 bytes); use fewer GRUB modules",
        core_img.len()
    );
    ensure!(
        nsec <= bios_part_sectors,
        "core.img does not fit into the BIOS boot partition: it needs {nsec} sectors ({} bytes), \
         the partition has {bios_part_sectors} sectors; make the BIOS boot partition bigger (1 MiB \
         is the usual size) or use fewer GRUB modules",
        core_img.len()
    );
    ensure!(
        bios_part_first_lba >= 1,
        "the BIOS boot partition cannot start at LBA 0"
    );

    let mut old_mbr = [0u8; SECTOR_SIZE];
    disk.read_exact_at(&mut old_mbr, 0)
        .context("cannot read sector 0 of the disk image")?;
    ensure!(
        old_mbr[510..512] == [0x55, 0xaa],
        "sector 0 of the disk image has no 0x55AA signature: write the GPT (protective MBR) first"
    );
    ensure!(
        (0..4).any(|i| old_mbr[0x1be + 16 * i + 4] == 0xee),
        "sector 0 of the disk image is not a GPT protective MBR (no partition of type 0xEE)"
    );
    let (gpt_first, gpt_sectors) = find_bios_boot_partition(disk)?;
    ensure!(
        gpt_first == bios_part_first_lba && bios_part_sectors <= gpt_sectors,
        "LBA {bios_part_first_lba} (+{bios_part_sectors} sectors) is not the GPT BIOS boot \
         partition, which is at LBA {gpt_first} (+{gpt_sectors} sectors)"
    );
    let disk_len = disk.metadata().context("cannot stat the disk image")?.len();
    let end = (bios_part_first_lba + nsec) * SECTOR_SIZE as u64;
    ensure!(
        end <= disk_len,
        "the disk image is too short ({disk_len} bytes) for core.img ending at byte {end}"
    );

    let core = patch_core_img(core_img, bios_part_first_lba)?;
    let mbr = patch_boot_img(boot_img, &old_mbr, bios_part_first_lba)?;
    // Same order as setup.c: core.img first, then the boot sector.
    disk.write_all_at(&core, bios_part_first_lba * SECTOR_SIZE as u64)
        .context("cannot write core.img into the BIOS boot partition")?;
    disk.write_all_at(&mbr, 0)
        .context("cannot write boot.img into sector 0")?;
    disk.sync_data().context("cannot sync the disk image")?;
    Ok(())
}

/// [`install`] into the BIOS boot partition found in the disk's GPT.
pub fn install_into_gpt(disk: &File, boot_img: &[u8], core_img: &[u8]) -> Result<()> {
    let (first, sectors) = find_bios_boot_partition(disk)?;
    install(disk, boot_img, core_img, first, sectors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::path::PathBuf;
    use std::process::Stdio;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    const GRUB_DIR: &str = "/usr/lib/grub/i386-pc";
    const ESP_UUID: &str = "C1AB-0001";
    const DISK_SIZE: u64 = 64 << 20;
    const BIOS_LBA: u64 = 2048;
    const ESP_LBA: u64 = 4096;
    const ESP_SECTORS: u64 = 81920; // 40 MiB
    const MARKER: &str = "CIAB-GRUB-OK";

    struct TestDir(PathBuf);
    impl TestDir {
        fn new(tag: &str) -> TestDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "ciab-grub-test-{}-{}-{tag}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TestDir(p)
        }
    }
    impl Drop for TestDir {
        fn drop(&mut self) {
            if std::env::var_os("CIAB_KEEP_TEST_DIRS").is_none() {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn run(cmd: &mut Command) {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (apt-get install -y grub-pc-bin qemu-system-x86 dosfstools mtools fdisk)"));
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn core_img(dir: &Path) -> Vec<u8> {
        make_core_img(&BiosBootInput {
            grub_dir: Path::new(GRUB_DIR),
            esp_fs_uuid: ESP_UUID,
            work_dir: &dir.join("grub-work"),
        })
        .unwrap()
    }

    /// 64 MiB disk: GPT, p1 BIOS boot at 1 MiB (`bios_sectors`), p2 ESP 40 MiB at 2 MiB.
    fn make_disk(dir: &Path, bios_sectors: u64) -> PathBuf {
        let disk = dir.join("disk.img");
        File::create(&disk).unwrap().set_len(DISK_SIZE).unwrap();
        let script = format!(
            "label: gpt\n\
             label-id: 0C1AB000-0000-4000-8000-000000000000\n\
             unit: sectors\n\
             start={BIOS_LBA}, size={bios_sectors}, type={BIOS_BOOT_PARTITION_TYPE}, \
             uuid=0C1AB000-0000-4000-8000-000000000001, name=\"BIOS boot\"\n\
             start={ESP_LBA}, size={ESP_SECTORS}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC3B8, \
             uuid=0C1AB000-0000-4000-8000-000000000002, name=\"ESP\"\n"
        );
        let mut child = Command::new("sfdisk")
            .args(["--quiet", "--no-reread", "--no-tell-kernel"])
            .arg(&disk)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sfdisk (package fdisk) is needed");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "sfdisk: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        disk
    }

    /// FAT32 ESP with volume id 0xC1AB0001 holding /grub/grub.cfg, copied into p2.
    fn put_esp(dir: &Path, disk: &Path, grub_cfg: &str, extra: &[(&str, &Path)]) {
        let esp = dir.join("esp.img");
        let _ = std::fs::remove_file(&esp);
        let kib = (ESP_SECTORS * 512 / 1024).to_string();
        run(Command::new("mkfs.vfat")
            .args(["-F", "32", "-i", "C1AB0001", "-C"])
            .arg(&esp)
            .arg(&kib));
        let tree = dir.join("esp-tree");
        let _ = std::fs::remove_dir_all(&tree);
        std::fs::create_dir_all(tree.join("grub")).unwrap();
        std::fs::write(tree.join("grub/grub.cfg"), grub_cfg).unwrap();
        for (name, src) in extra {
            std::fs::copy(src, tree.join(name)).unwrap();
        }
        for entry in std::fs::read_dir(&tree).unwrap() {
            run(Command::new("mcopy")
                .env("MTOOLS_SKIP_CHECK", "1")
                .arg("-s")
                .arg("-i")
                .arg(&esp)
                .arg(entry.unwrap().path())
                .arg("::/"));
        }
        let data = std::fs::read(&esp).unwrap();
        let f = File::options().write(true).open(disk).unwrap();
        f.write_all_at(&data, ESP_LBA * 512).unwrap();
    }

    fn serial_cfg(body: &str) -> String {
        format!(
            "serial --unit=0 --speed=115200\nterminal_input serial\nterminal_output serial\n{body}"
        )
    }

    fn install_disk(disk: &Path, core: &[u8]) {
        let f = File::options().read(true).write(true).open(disk).unwrap();
        let (first, sectors) = find_bios_boot_partition(&f).unwrap();
        assert_eq!((first, sectors), (BIOS_LBA, 2048));
        let boot = read_boot_img(Path::new(GRUB_DIR)).unwrap();
        install(&f, &boot, core, first, sectors).unwrap();
    }

    /// Boots the disk with SeaBIOS under TCG; returns (serial output, qemu exited by itself).
    fn boot(
        disk: &Path,
        machine: &[&str],
        drive_if: &str,
        until: &str,
        limit: Duration,
    ) -> (String, bool) {
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-accel", "tcg", "-m", "256", "-nographic", "-no-reboot"])
            .args(machine)
            .arg("-drive")
            .arg(format!("file={},format=raw,if={drive_if}", disk.display()))
            .args(["-serial", "stdio", "-monitor", "none", "-display", "none"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .expect("qemu-system-x86_64 (package qemu-system-x86) is needed");
        let buf = Arc::new(Mutex::new(Vec::new()));
        let mut stdout = child.stdout.take().unwrap();
        let b2 = buf.clone();
        let reader = std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                b2.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        let start = Instant::now();
        let mut seen_at: Option<Instant> = None;
        let exited = loop {
            if child.try_wait().unwrap().is_some() {
                break true;
            }
            if seen_at.is_none() && String::from_utf8_lossy(&buf.lock().unwrap()).contains(until) {
                seen_at = Some(Instant::now());
            }
            // Give `halt` a few seconds to power the VM off after the marker.
            if start.elapsed() > limit
                || seen_at.is_some_and(|t| t.elapsed() > Duration::from_secs(5))
            {
                let _ = child.kill();
                let _ = child.wait();
                break false;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        reader.join().unwrap();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let out = String::from_utf8_lossy(&buf.lock().unwrap()).into_owned();
        eprintln!(
            "qemu {machine:?} if={drive_if}: {:.1}s, exited by itself: {exited}\n--- serial ---\n{out}\n--- stderr ---\n{err}",
            start.elapsed().as_secs_f64()
        );
        (out, exited)
    }

    fn boot_test(machine: &[&str], drive_if: &str) {
        let dir = TestDir::new(drive_if);
        let disk = make_disk(&dir.0, 2048);
        put_esp(
            &dir.0,
            &disk,
            &serial_cfg(&format!("echo {MARKER}\nhalt\n")),
            &[],
        );
        install_disk(&disk, &core_img(&dir.0));
        let (out, exited) = boot(&disk, machine, drive_if, MARKER, Duration::from_secs(60));
        assert!(
            out.contains(MARKER),
            "GRUB did not print {MARKER}; serial:\n{out}"
        );
        assert!(exited, "`halt` did not power the VM off");
    }

    #[test]
    fn boots_from_virtio_blk() {
        boot_test(&[], "virtio");
    }

    #[test]
    fn boots_from_ide() {
        boot_test(&[], "ide");
    }

    #[test]
    fn boots_from_sata_ahci_q35() {
        boot_test(&["-M", "q35"], "ide");
    }

    /// Negative controls: the boot test is not vacuous. Each patch is needed:
    /// boot.img without kernel_sector, or core.img without its blocklist, do
    /// not reach grub.cfg.
    #[test]
    fn boot_fails_without_the_patches() {
        let dir = TestDir::new("negative");
        let disk = make_disk(&dir.0, 2048);
        put_esp(
            &dir.0,
            &disk,
            &serial_cfg(&format!("echo {MARKER}\nhalt\n")),
            &[],
        );
        let core = core_img(&dir.0);
        let boot_img = read_boot_img(Path::new(GRUB_DIR)).unwrap();
        let pristine = std::fs::read(&disk).unwrap();
        let mbr = patch_boot_img(&boot_img, &pristine[..512], BIOS_LBA).unwrap();
        let patched_core = patch_core_img(&core, BIOS_LBA).unwrap();
        let mut unpatched_mbr = boot_img.clone();
        unpatched_mbr[0x1b8..0x1fe].copy_from_slice(&pristine[0x1b8..0x1fe]);
        let variants: [(&str, &[u8], &[u8]); 2] = [
            ("mbr-unpatched", &unpatched_mbr, &patched_core),
            ("core-unpatched", &mbr, &core),
        ];
        let handles: Vec<_> = variants
            .iter()
            .map(|(name, mbr, core)| {
                let path = dir.0.join(format!("{name}.img"));
                let mut img = pristine.clone();
                img[..512].copy_from_slice(mbr);
                let off = BIOS_LBA as usize * 512;
                img[off..off + core.len()].copy_from_slice(core);
                std::fs::write(&path, img).unwrap();
                std::thread::spawn(move || {
                    let (out, _) = boot(&path, &[], "virtio", MARKER, Duration::from_secs(8));
                    (path, out)
                })
            })
            .collect();
        for h in handles {
            let (path, out) = h.join().unwrap();
            assert!(
                !out.contains(MARKER),
                "{} booted unexpectedly",
                path.display()
            );
        }
        // And the real thing, on the same pristine disk, does.
        install_disk(&disk, &core);
        let (out, _) = boot(&disk, &[], "virtio", MARKER, Duration::from_secs(60));
        assert!(out.contains(MARKER), "{out}");
    }

    #[test]
    fn core_img_is_deterministic() {
        let dir = TestDir::new("det-core");
        let a = core_img(&dir.0);
        let b = core_img(&dir.0);
        assert!(a == b, "two grub-mkimage runs differ");
        let n = core_sectors(&a);
        assert!(n <= MAX_CORE_SECTORS, "core.img is {n} sectors");
        // The embedded config is inside the LZMA-compressed part; another UUID
        // must give another core.img.
        let other = make_core_img(&BiosBootInput {
            grub_dir: Path::new(GRUB_DIR),
            esp_fs_uuid: "C1AB-0002",
            work_dir: &dir.0.join("other"),
        })
        .unwrap();
        assert_ne!(a, other);
    }

    #[test]
    fn install_is_deterministic_and_patches_what_setup_c_patches() {
        let dir = TestDir::new("det-install");
        let disk = make_disk(&dir.0, 2048);
        put_esp(&dir.0, &disk, &serial_cfg("echo x\n"), &[]);
        let before = std::fs::read(&disk).unwrap();
        let copy = dir.0.join("disk2.img");
        std::fs::copy(&disk, &copy).unwrap();
        let core = core_img(&dir.0);
        install_disk(&disk, &core);
        install_disk(&copy, &core);
        let a = std::fs::read(&disk).unwrap();
        assert!(a == std::fs::read(&copy).unwrap(), "two installs differ");
        // Installing again over an installed disk gives the same bytes.
        install_disk(&copy, &core);
        assert!(a == std::fs::read(&copy).unwrap(), "re-install differs");

        let boot = read_boot_img(Path::new(GRUB_DIR)).unwrap();
        // Sector 0.
        assert_eq!(a[0..3], boot[0..3]);
        assert_eq!(a[3..0x5a], before[3..0x5a], "BPB area kept from the disk");
        assert_eq!(le64(&a, 0x5c), BIOS_LBA, "kernel_sector");
        assert_eq!(a[0x64], 0xff, "boot_drive");
        assert_eq!(a[0x66..0x68], [0x90, 0x90], "drive check NOPed");
        assert_eq!(boot[0x66..0x68], [0xeb, 0x05], "boot.img has jmp there");
        assert_eq!(a[0x68..0x1b8], boot[0x68..0x1b8]);
        assert_eq!(
            a[0x1b8..0x200],
            before[0x1b8..0x200],
            "disk signature, partition table, 55AA kept"
        );
        // core.img.
        let nsec = core_sectors(&core) as usize;
        let off = BIOS_LBA as usize * 512;
        let c = &a[off..off + nsec * 512];
        assert_eq!(le64(c, 500), BIOS_LBA + 1, "blocklist start");
        assert_eq!(le16(c, 508) as usize, nsec - 1, "blocklist len");
        assert_eq!(le16(c, 510), 0x820, "blocklist segment");
        assert_eq!(c[488..500], [0u8; 12], "blocklist terminator");
        assert_eq!(c[..488], core[..488]);
        assert_eq!(c[512..core.len()], core[512..]);
        assert!(c[core.len()..].iter().all(|&x| x == 0));
        // Nothing else changed (LBA 1.. BIOS partition, and after core.img).
        assert_eq!(a[512..off], before[512..off]);
        assert_eq!(a[off + nsec * 512..], before[off + nsec * 512..]);
    }

    #[test]
    fn refuses_core_img_that_does_not_fit() {
        let dir = TestDir::new("too-big");
        // BIOS boot partition of 64 sectors (32 KiB): real core.img (~300 sectors) does not fit.
        let disk = make_disk(&dir.0, 64);
        let before = std::fs::read(&disk).unwrap();
        let f = File::options().read(true).write(true).open(&disk).unwrap();
        let boot = read_boot_img(Path::new(GRUB_DIR)).unwrap();
        let core = core_img(&dir.0);
        let err = install(&f, &boot, &core, BIOS_LBA, 64)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("does not fit into the BIOS boot partition"),
            "{err}"
        );
        let err = install_into_gpt(&f, &boot, &core).unwrap_err().to_string();
        assert!(err.contains("does not fit"), "{err}");
        // Larger than the loader limit, even though the partition would hold it.
        let mut huge = core.clone();
        huge.resize((MAX_CORE_SECTORS as usize + 1) * 512, 0);
        let err = install(&f, &boot, &huge, BIOS_LBA, 64)
            .unwrap_err()
            .to_string();
        assert!(err.contains("too big"), "{err}");
        // Wrong LBA (the ESP) is refused.
        let err = install(&f, &boot, &core, ESP_LBA, 2048)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not the GPT BIOS boot partition"), "{err}");
        assert!(before == std::fs::read(&disk).unwrap(), "disk was modified");
    }

    #[test]
    fn missing_grub_dir_names_the_package() {
        let dir = TestDir::new("missing");
        let err = make_core_img(&BiosBootInput {
            grub_dir: &dir.0.join("nope"),
            esp_fs_uuid: ESP_UUID,
            work_dir: &dir.0,
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("grub-pc-bin"), "{err}");
        assert!(early_config("C1AB-0001; reboot").is_err());
    }

    /// Investigation: GRUB reads files from the FAT ESP with `linux`/`initrd`.
    /// Without a kernel, `linux` on a non-kernel file must fail with "invalid
    /// magic number" (file found and read) rather than "file not found".
    #[test]
    fn linux_command_reads_files_from_fat() {
        let dir = TestDir::new("linux-probe");
        let disk = make_disk(&dir.0, 2048);
        let cfg = serial_cfg(
            "echo \"root=$root prefix=$prefix\"\n\
             ls ($root)/grub/\n\
             linux /notakernel.bin\n\
             linux /grub/does-not-exist\n\
             echo LINUX-PROBE-DONE\n\
             halt\n",
        );
        let junk = dir.0.join("notakernel.bin");
        std::fs::write(&junk, vec![0x5au8; 64 * 1024]).unwrap();
        put_esp(&dir.0, &disk, &cfg, &[("notakernel.bin", &junk)]);
        install_disk(&disk, &core_img(&dir.0));
        let (out, _) = boot(
            &disk,
            &[],
            "virtio",
            "LINUX-PROBE-DONE",
            Duration::from_secs(60),
        );
        assert!(out.contains("LINUX-PROBE-DONE"), "{out}");
        assert!(
            out.contains("root=hd0,gpt2 prefix=(hd0,gpt2)/grub"),
            "{out}"
        );
        assert!(out.contains("invalid magic number"), "{out}");
        assert!(
            out.contains("file `/grub/does-not-exist' not found"),
            "{out}"
        );
    }

}
