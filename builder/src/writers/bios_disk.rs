//! A BIOS-bootable GPT disk image, the kind Nova's libvirt guests boot by
//! default; the disk of every guest image the builder makes. Nothing is
//! mounted: FAT is made with dosfstools and mtools, GRUB installed by
//! [`super::grub_bios`], the same inputs give the same bytes.

use super::gpt::{self, Layout, Slot};
use super::grub_bios;
use crate::stages::DiskIds;
use anyhow::{Context as _, Result};
use ciab_core::contract::PartitionRole;
use ciab_core::exec::Cmd;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

const MIB: u64 = 1 << 20;

/// A BIOS-bootable GPT disk, as Nova's libvirt guests boot by default:
/// GRUB's core image in a BIOS boot partition, then a FAT partition with
/// `grub/grub.cfg` (and the rest of `boot_files`), then, for a whole system,
/// an ext4 root partition last, where cloud-init's growpart can grow it.
pub struct BiosDisk<'a> {
    /// Seeds the GPT's and the FAT's ids.
    pub ids: &'a DiskIds,
    /// The FAT partition's files: `grub/grub.cfg` at least.
    pub boot_files: &'a Path,
    pub boot_mib: u64,
    /// A finished ext4 image for the root partition.
    pub root: Option<&'a Path>,
    /// GRUB modules linked into its core beyond the defaults (`ext2` to
    /// read the root partition).
    pub grub_modules: &'a [&'a str],
    pub epoch: i64,
    pub work: &'a Path,
    /// The raw disk to write (must not exist).
    pub out: &'a Path,
}

/// Writes the disk `d` describes to `d.out`.
pub fn write_bios_disk(d: &BiosDisk) -> Result<()> {
    let fat = d.work.join("fat.img");
    let _ = std::fs::remove_file(&fat);
    let epoch = d.epoch.to_string();
    Cmd::new("mkfs.vfat")
        .package("dosfstools")
        .env("SOURCE_DATE_EPOCH", &epoch)
        .args(["-F", "16", "-n", "CIABGUEST", "--invariant", "-i"])
        .arg(format!("{:08X}", d.ids.esp_volume_id))
        .arg("-C")
        .arg(&fat)
        .arg((d.boot_mib * 1024).to_string())
        .run()
        .context("formatting the guest's FAT partition")?;
    // mcopy -m keeps the files' mtimes, which are the build's clock.
    crate::tree::clamp_mtimes(d.boot_files, d.epoch)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(d.boot_files)?.map(|e| e.map(|e| e.path())).collect::<std::io::Result<_>>()?;
    files.sort();
    Cmd::new("mcopy")
        .package("mtools")
        .env("SOURCE_DATE_EPOCH", &epoch)
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-s", "-m", "-p", "-Q", "-i"])
        .arg(&fat)
        .args(&files)
        .arg("::/")
        .run()
        .context("copying the guest's boot files into its FAT partition")?;

    let modules: Vec<&str> = grub_bios::DEFAULT_MODULES.iter().chain(d.grub_modules).copied().collect();
    let core = grub_bios::make_core_img_with_modules(
        &grub_bios::BiosBootInput { grub_dir: Path::new(grub_bios::GRUB_I386_PC_DIR), esp_fs_uuid: &d.ids.esp_fs_uuid(), work_dir: &d.work.join("grub") },
        &modules,
    )?;
    let boot_img = grub_bios::read_boot_img(Path::new(grub_bios::GRUB_I386_PC_DIR))?;

    let bios = Slot { role: PartitionRole::Bios, offset: MIB, size: MIB, part_uuid: d.ids.part_uuid(PartitionRole::Bios), attributes: 0 };
    let boot = Slot { role: PartitionRole::Esp, offset: 2 * MIB, size: d.boot_mib * MIB, part_uuid: d.ids.part_uuid(PartitionRole::Esp), attributes: 0 };
    let mut slots = vec![bios.clone(), boot.clone()];
    let root = match d.root {
        Some(image) => {
            let size = std::fs::metadata(image).with_context(|| format!("reading {}", image.display()))?.len().div_ceil(MIB) * MIB;
            let slot = Slot { role: PartitionRole::RootA, offset: boot.offset + boot.size, size, part_uuid: d.ids.part_uuid(PartitionRole::RootA), attributes: 0 };
            slots.push(slot.clone());
            Some((image, slot))
        }
        None => None,
    };
    let end = slots.last().map_or(0, |s| s.offset + s.size);
    // Room for the backup GPT.
    let layout = Layout { size: end + MIB, slots };
    let mut file = OpenOptions::new().read(true).write(true).create_new(true).open(d.out).with_context(|| format!("creating {}", d.out.display()))?;
    file.set_len(layout.size)?;
    gpt::write_gpt(&mut file, &layout, d.ids.disk_guid)?;
    crate::blockmap::copy_sparse(&File::open(&fat)?, &file, boot.offset).context("copying the FAT partition into the guest disk")?;
    if let Some((image, slot)) = &root {
        crate::blockmap::copy_sparse(&File::open(image)?, &file, slot.offset).context("copying the root file system into the guest disk")?;
    }
    grub_bios::install(&file, &boot_img, &core, bios.offset / gpt::SECTOR, bios.size / gpt::SECTOR).context("installing GRUB into the guest disk")?;
    file.sync_all()?;
    Ok(())
}
