//! ext4 file systems made from a directory tree, with the build's clock in
//! every inode: [`ext4_from_tree`] runs `mkfs.ext4 -d` with fixed ids and fake
//! time, then [`normalize_inode_times`] rewrites what mke2fs took from the
//! host, without mounting the image.
//!
//! `mkfs.ext4 -d <tree>` copies atime/mtime/ctime (and stamps crtime) from the
//! build host, and ctime cannot be controlled from user space, so two builds of
//! the same tree never produce the same image. [`normalize_inode_times`]
//! rewrites the timestamp fields of every in-use inode directly in the image
//! file and re-seals the inode checksums, so `e2fsck -f` stays clean.
//!
//! Only inode tables are written. Superblock, group descriptors and bitmaps are
//! read but never modified, so their checksums stay valid untouched.
//!
//! On-disk layout follows the kernel's `struct ext4_super_block`,
//! `struct ext4_group_desc` and `struct ext4_inode` (fs/ext4/ext4.h); the
//! checksum algorithms follow `ext4_inode_csum()` (fs/ext4/inode.c),
//! `ext4_group_desc_csum()` and `ext4_superblock_csum()` (fs/ext4/super.c).

use anyhow::{Context, Result, bail, ensure};
use ciab_core::exec::Cmd;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The identity of an ext4 file system ciab makes.
pub struct Ext4<'a> {
    pub label: &'a str,
    pub uuid: uuid::Uuid,
    pub hash_seed: uuid::Uuid,
    /// Every inode's times.
    pub epoch: i64,
}

/// `out`: an ext4 file system of `size_mib` holding `tree`, the same bytes
/// from the same tree (mke2fs with fake time and fixed ids, then every
/// inode's times normalized: mke2fs copies ctimes from the host).
pub fn ext4_from_tree(fs: &Ext4, tree: &Path, out: &Path, size_mib: u64) -> Result<()> {
    let epoch = fs.epoch.to_string();
    Cmd::new("mkfs.ext4")
        .package("e2fsprogs")
        .env("E2FSPROGS_FAKE_TIME", &epoch)
        .env("SOURCE_DATE_EPOCH", &epoch)
        .args(["-q", "-F", "-t", "ext4", "-L", fs.label, "-m", "1"])
        .arg("-U")
        .arg(fs.uuid.to_string())
        .arg("-E")
        .arg(format!("hash_seed={},lazy_itable_init=1", fs.hash_seed))
        .arg("-d")
        .arg(tree)
        .arg(out)
        .arg(format!("{size_mib}M"))
        .run()?;
    normalize_inode_times(out, u32::try_from(fs.epoch).context("source_date_epoch out of range")?)
        .with_context(|| format!("normalizing inode times in {}", out.display()))?;
    Ok(())
}

// ---- superblock (offsets relative to the superblock, which lives at byte 1024)
const SB_OFFSET: u64 = 1024;
const SB_SIZE: usize = 1024;
const SB_BLOCKS_COUNT_LO: usize = 0x04;
const SB_FIRST_DATA_BLOCK: usize = 0x14;
const SB_LOG_BLOCK_SIZE: usize = 0x18;
const SB_LOG_CLUSTER_SIZE: usize = 0x1C;
const SB_BLOCKS_PER_GROUP: usize = 0x20;
const SB_INODES_PER_GROUP: usize = 0x28;
const SB_MAGIC: usize = 0x38;
const SB_REV_LEVEL: usize = 0x4C;
const SB_INODE_SIZE: usize = 0x58;
const SB_FEATURE_COMPAT: usize = 0x5C;
const SB_FEATURE_INCOMPAT: usize = 0x60;
const SB_FEATURE_RO_COMPAT: usize = 0x64;
const SB_UUID: usize = 0x68;
const SB_DESC_SIZE: usize = 0xFE;
const SB_FIRST_META_BG: usize = 0x104;
const SB_BLOCKS_COUNT_HI: usize = 0x150;
const SB_CHECKSUM_TYPE: usize = 0x175;
const SB_BACKUP_BGS: usize = 0x24C;
const SB_CHECKSUM_SEED: usize = 0x270;
const SB_CHECKSUM: usize = 0x3FC;

const EXT4_MAGIC: u16 = 0xEF53;

const COMPAT_SPARSE_SUPER2: u32 = 0x0200;
const INCOMPAT_META_BG: u32 = 0x0010;
const INCOMPAT_64BIT: u32 = 0x0080;
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x0001;
const RO_COMPAT_GDT_CSUM: u32 = 0x0010;
const RO_COMPAT_BIGALLOC: u32 = 0x0200;
const RO_COMPAT_METADATA_CSUM: u32 = 0x0400;

const CHECKSUM_TYPE_CRC32C: u8 = 1;

// ---- group descriptor
const BG_INODE_BITMAP_LO: usize = 0x04;
const BG_INODE_TABLE_LO: usize = 0x08;
const BG_FLAGS: usize = 0x12;
const BG_ITABLE_UNUSED_LO: usize = 0x1C;
const BG_CHECKSUM: usize = 0x1E;
const BG_INODE_BITMAP_HI: usize = 0x24;
const BG_INODE_TABLE_HI: usize = 0x28;
const BG_ITABLE_UNUSED_HI: usize = 0x32;
const BG_INODE_UNINIT: u16 = 0x0001;
const DESC_SIZE_32: usize = 32;
const DESC_SIZE_64: usize = 64;

// ---- inode
const GOOD_OLD_INODE_SIZE: usize = 128;
const I_ATIME: usize = 0x08;
const I_CTIME: usize = 0x0C;
const I_MTIME: usize = 0x10;
const I_FLAGS: usize = 0x20;
const I_GENERATION: usize = 0x64;
const I_CHECKSUM_LO: usize = 0x7C; // osd2.linux2.l_i_checksum_lo
const I_EXTRA_ISIZE: usize = 0x80;
const I_CHECKSUM_HI: usize = 0x82;
const I_CTIME_EXTRA: usize = 0x84;
const I_MTIME_EXTRA: usize = 0x88;
const I_ATIME_EXTRA: usize = 0x8C;
const I_CRTIME: usize = 0x90;
const I_CRTIME_EXTRA: usize = 0x94;

/// Inodes carrying this flag hold a large xattr value. The kernel and e2fsck
/// reuse their i_atime as the value hash and i_ctime as the high half of the
/// reference count (fs/ext4/xattr.c), so those two fields are data, not
/// timestamps; only mtime and crtime are real times there.
const EXT4_EA_INODE_FL: u32 = 0x0020_0000;

/// Low two bits of a `*_extra` field extend the 32-bit seconds beyond 2038;
/// the remaining 30 bits are nanoseconds.
const EXTRA_EPOCH_MASK: u32 = 0x3;

/// Rewrites every in-use inode of the ext4 image at `path` so that atime,
/// ctime and crtime equal `epoch`, mtime becomes `min(mtime, epoch)`, and the
/// nanosecond parts of all four timestamps are zero. Inode checksums are
/// recomputed when the filesystem has `metadata_csum`.
///
/// Before an inode is modified its existing checksum is verified; a mismatch
/// aborts the run (for the very first in-use inode this happens before
/// anything was written), because either the image is already corrupt or this
/// parser disagrees with the on-disk format — in both cases writing would make
/// matters worse.
///
/// Exceptions, all deliberate:
/// - reserved inode slots that mke2fs left entirely zero stay untouched;
/// - large-xattr inodes (`EA_INODE_FL`) keep atime/ctime, which hold the value
///   hash and refcount there; only their mtime/crtime are normalized;
/// - inodes without extended timestamp fields (128-byte inodes, and the
///   bad-blocks inode #1, which mke2fs writes with `i_extra_isize = 0`) have
///   no crtime, and an `epoch` past 2038 is clamped to `i32::MAX` for them,
///   as the kernel would.
///
/// Returns the number of inodes whose on-disk bytes changed; running it a
/// second time with the same `epoch` therefore returns 0.
pub fn normalize_inode_times(path: &Path, epoch: u32) -> Result<u64> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening ext4 image {}", path.display()))?;
    let ctx = || format!("ext4 image {}", path.display());

    let sb = Superblock::read(&file).with_context(ctx)?;
    let groups = read_group_descriptors(&file, &sb).with_context(ctx)?;

    let mut changed = 0u64;
    let mut verified_any = false;
    for (g, desc) in groups.iter().enumerate() {
        changed += normalize_group(&file, &sb, g as u32, desc, epoch, &mut verified_any)
            .with_context(|| format!("block group {g}"))
            .with_context(ctx)?;
    }
    if changed > 0 {
        // A build pipeline will hash or copy the image next; make sure the
        // bytes it reads are the ones we meant.
        file.sync_all()
            .with_context(|| format!("syncing {}", path.display()))?;
    }
    Ok(changed)
}

struct Superblock {
    block_size: u64,
    /// Block number that holds the superblock (1 with 1 KiB blocks, else 0);
    /// the kernel locates the classic GDT relative to it, not to
    /// s_first_data_block, which differs on bigalloc with 1 KiB blocks.
    sb_block: u64,
    first_data_block: u64,
    blocks_per_group: u64,
    inodes_per_group: u32,
    inode_size: usize,
    group_count: u32,
    desc_size: usize,
    compat: u32,
    incompat: u32,
    ro_compat: u32,
    first_meta_bg: u32,
    backup_bgs: [u32; 2],
    /// `Some(seed)` when metadata_csum is on: the crc32c state after the
    /// filesystem UUID (or the stored seed with metadata_csum_seed).
    csum_seed: Option<u32>,
}

impl Superblock {
    fn read(file: &File) -> Result<Self> {
        let file_len = file.metadata().context("stat of image file")?.len();
        let mut sb = [0u8; SB_SIZE];
        file.read_exact_at(&mut sb, SB_OFFSET)
            .context("reading superblock at offset 1024 (file too small to be ext4?)")?;

        let magic = le16(&sb, SB_MAGIC);
        ensure!(
            magic == EXT4_MAGIC,
            "not an ext2/3/4 filesystem: superblock magic is {magic:#06x}, expected {EXT4_MAGIC:#06x}"
        );

        let compat = le32(&sb, SB_FEATURE_COMPAT);
        let incompat = le32(&sb, SB_FEATURE_INCOMPAT);
        let ro_compat = le32(&sb, SB_FEATURE_RO_COMPAT);

        let log_bs = le32(&sb, SB_LOG_BLOCK_SIZE);
        ensure!(log_bs <= 6, "implausible s_log_block_size {log_bs}");
        let block_size = 1024u64 << log_bs;

        // Revision 0 filesystems have no s_inode_size and fixed 128-byte inodes.
        let inode_size = if le32(&sb, SB_REV_LEVEL) == 0 {
            GOOD_OLD_INODE_SIZE
        } else {
            le16(&sb, SB_INODE_SIZE) as usize
        };
        ensure!(
            inode_size >= GOOD_OLD_INODE_SIZE
                && inode_size.is_power_of_two()
                && inode_size as u64 <= block_size,
            "implausible inode size {inode_size}"
        );

        let is_64bit = incompat & INCOMPAT_64BIT != 0;
        // Without 64bit the descriptor is always 32 bytes, whatever s_desc_size says.
        let desc_size = if is_64bit {
            le16(&sb, SB_DESC_SIZE) as usize
        } else {
            DESC_SIZE_32
        };
        ensure!(
            (DESC_SIZE_32..=block_size as usize).contains(&desc_size)
                && desc_size.is_power_of_two(),
            "implausible group descriptor size {desc_size}"
        );

        let blocks_count = u64::from(le32(&sb, SB_BLOCKS_COUNT_LO))
            | if is_64bit {
                u64::from(le32(&sb, SB_BLOCKS_COUNT_HI)) << 32
            } else {
                0
            };
        let first_data_block = u64::from(le32(&sb, SB_FIRST_DATA_BLOCK));
        let blocks_per_group = u64::from(le32(&sb, SB_BLOCKS_PER_GROUP));
        let inodes_per_group = le32(&sb, SB_INODES_PER_GROUP);
        // Each group's bitmaps are a single block, which bounds both counts;
        // checking this keeps a corrupt superblock from driving huge
        // allocations. With bigalloc the block bitmap counts clusters, so a
        // group may span that many more blocks.
        let cluster_ratio = if ro_compat & RO_COMPAT_BIGALLOC != 0 {
            let log_cs = le32(&sb, SB_LOG_CLUSTER_SIZE);
            ensure!(
                (log_bs..=log_bs + 16).contains(&log_cs),
                "implausible s_log_cluster_size {log_cs}"
            );
            1u64 << (log_cs - log_bs)
        } else {
            1
        };
        ensure!(
            (1..=8 * block_size * cluster_ratio).contains(&blocks_per_group),
            "implausible s_blocks_per_group {blocks_per_group}"
        );
        ensure!(
            (1..=8 * block_size).contains(&u64::from(inodes_per_group)),
            "implausible s_inodes_per_group {inodes_per_group}"
        );
        ensure!(
            blocks_count > first_data_block,
            "s_blocks_count {blocks_count} <= s_first_data_block {first_data_block}"
        );
        // mke2fs sizes an image file to the whole filesystem; a shorter file
        // was truncated in transit, and tables past its end would read as EOF.
        ensure!(
            blocks_count.saturating_mul(block_size) <= file_len,
            "filesystem claims {blocks_count} blocks of {block_size} bytes but the image file is \
             only {file_len} bytes (truncated?)"
        );
        let group_count = (blocks_count - first_data_block).div_ceil(blocks_per_group);
        let group_count =
            u32::try_from(group_count).context("block group count does not fit 32 bits")?;

        let csum_seed = if ro_compat & RO_COMPAT_METADATA_CSUM != 0 {
            let ty = sb[SB_CHECKSUM_TYPE];
            ensure!(
                ty == CHECKSUM_TYPE_CRC32C,
                "unknown metadata checksum type {ty} (only crc32c=1 exists)"
            );
            // The superblock checksum needs no parsing beyond its own offset,
            // so it is the cheapest proof that our crc32c chaining matches
            // the kernel's before we trust it for inodes.
            let stored = le32(&sb, SB_CHECKSUM);
            let computed = ext4_crc32c(!0, &sb[..SB_CHECKSUM]);
            ensure!(
                stored == computed,
                "superblock checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): \
                 image corrupt or crc32c chaining wrong"
            );
            Some(if incompat & INCOMPAT_CSUM_SEED != 0 {
                // Lets tune2fs change the UUID without rewriting every checksum.
                le32(&sb, SB_CHECKSUM_SEED)
            } else {
                ext4_crc32c(!0, &sb[SB_UUID..SB_UUID + 16])
            })
        } else {
            None
        };

        Ok(Self {
            block_size,
            sb_block: SB_OFFSET / block_size,
            first_data_block,
            blocks_per_group,
            inodes_per_group,
            inode_size,
            group_count,
            desc_size,
            compat,
            incompat,
            ro_compat,
            first_meta_bg: le32(&sb, SB_FIRST_META_BG),
            backup_bgs: [le32(&sb, SB_BACKUP_BGS), le32(&sb, SB_BACKUP_BGS + 4)],
            csum_seed,
        })
    }

    /// bg_flags and bg_itable_unused are only maintained (and only trusted by
    /// the kernel) when some form of group descriptor checksum exists.
    fn has_group_desc_csum(&self) -> bool {
        self.ro_compat & (RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM) != 0
    }

    /// Mirrors the kernel's ext4_bg_has_super(): needed to find meta_bg
    /// descriptor blocks, which sit right after a backup superblock if any.
    fn group_has_super(&self, group: u64) -> bool {
        if group == 0 {
            return true;
        }
        if self.compat & COMPAT_SPARSE_SUPER2 != 0 {
            return self.backup_bgs.iter().any(|&b| u64::from(b) == group);
        }
        if group <= 1 || self.ro_compat & RO_COMPAT_SPARSE_SUPER == 0 {
            return true;
        }
        if group & 1 == 0 {
            return false;
        }
        [3u64, 5, 7].iter().any(|&base| is_power_of(group, base))
    }

    /// Mirrors the kernel's descriptor_loc(): block number of the `nr`-th
    /// block of group descriptors.
    fn descriptor_block(&self, nr: u64) -> u64 {
        if self.incompat & INCOMPAT_META_BG == 0 || nr < u64::from(self.first_meta_bg) {
            return self.sb_block + nr + 1;
        }
        let descs_per_block = self.block_size / self.desc_size as u64;
        let bg = descs_per_block * nr;
        let mut has_super = u64::from(self.group_has_super(bg));
        // Group 0 of a 1 KiB-block fs with s_first_data_block == 0 (bigalloc)
        // still has the boot block and superblock in blocks 0 and 1.
        if self.block_size == 1024 && nr == 0 && self.first_data_block == 0 {
            has_super += 1;
        }
        self.first_data_block + bg * self.blocks_per_group + has_super
    }
}

fn is_power_of(mut n: u64, base: u64) -> bool {
    while n > 1 && n.is_multiple_of(base) {
        n /= base;
    }
    n == 1
}

struct GroupDesc {
    inode_bitmap: u64,
    inode_table: u64,
    flags: u16,
    itable_unused: u32,
}

fn read_group_descriptors(file: &File, sb: &Superblock) -> Result<Vec<GroupDesc>> {
    let descs_per_block = sb.block_size as usize / sb.desc_size;
    let desc_blocks = (sb.group_count as usize).div_ceil(descs_per_block);
    let wide = sb.desc_size >= DESC_SIZE_64;
    let mut out = Vec::with_capacity(sb.group_count as usize);
    let mut block = vec![0u8; sb.block_size as usize];

    for nr in 0..desc_blocks as u64 {
        let blk = sb.descriptor_block(nr);
        file.read_exact_at(&mut block, blk * sb.block_size)
            .with_context(|| format!("reading group descriptor block {nr} at block {blk}"))?;
        for raw in block.chunks_exact(sb.desc_size) {
            let g = out.len() as u32;
            if g == sb.group_count {
                break;
            }
            if let Some(seed) = sb.csum_seed {
                // A wrong descriptor location or size would otherwise send us
                // to write "inodes" into arbitrary blocks; the checksum makes
                // that impossible to miss.
                let stored = le16(raw, BG_CHECKSUM);
                let computed = group_desc_csum(seed, g, raw);
                ensure!(
                    stored == computed,
                    "group descriptor {g} checksum mismatch (stored {stored:#06x}, computed \
                     {computed:#06x}): image corrupt or descriptor layout misparsed"
                );
            }
            let hi = |off: usize| if wide { le32(raw, off) } else { 0 };
            let hi16 = |off: usize| if wide { le16(raw, off) } else { 0 };
            out.push(GroupDesc {
                inode_bitmap: u64::from(le32(raw, BG_INODE_BITMAP_LO))
                    | u64::from(hi(BG_INODE_BITMAP_HI)) << 32,
                inode_table: u64::from(le32(raw, BG_INODE_TABLE_LO))
                    | u64::from(hi(BG_INODE_TABLE_HI)) << 32,
                flags: le16(raw, BG_FLAGS),
                itable_unused: u32::from(le16(raw, BG_ITABLE_UNUSED_LO))
                    | u32::from(hi16(BG_ITABLE_UNUSED_HI)) << 16,
            });
        }
    }
    Ok(out)
}

/// Processes one block group: one read of the inode bitmap, one read of the
/// used prefix of the inode table, at most one write back.
fn normalize_group(
    file: &File,
    sb: &Superblock,
    group: u32,
    desc: &GroupDesc,
    epoch: u32,
    verified_any: &mut bool,
) -> Result<u64> {
    let ipg = sb.inodes_per_group;
    let mut usable = ipg;
    if sb.has_group_desc_csum() {
        // With INODE_UNINIT the bitmap block was never written and may hold
        // garbage; the group has no in-use inodes by definition.
        if desc.flags & BG_INODE_UNINIT != 0 {
            return Ok(0);
        }
        ensure!(
            desc.itable_unused <= ipg,
            "bg_itable_unused {} exceeds inodes per group {ipg}",
            desc.itable_unused
        );
        // The tail counted by bg_itable_unused may never have been zeroed
        // (lazy_itable_init), so it must not be interpreted.
        usable = ipg - desc.itable_unused;
    }

    let mut bitmap = vec![0u8; ipg.div_ceil(8) as usize];
    file.read_exact_at(&mut bitmap, desc.inode_bitmap * sb.block_size)
        .with_context(|| format!("reading inode bitmap at block {}", desc.inode_bitmap))?;
    let in_use = |i: u32| bitmap[(i / 8) as usize] & (1 << (i % 8)) != 0;

    let Some(last) = (0..ipg).rev().find(|&i| in_use(i)) else {
        return Ok(0);
    };
    ensure!(
        last < usable,
        "inode {} is marked in use but lies in the uninitialised tail of the inode table \
         (bg_itable_unused={})",
        group as u64 * ipg as u64 + last as u64 + 1,
        desc.itable_unused
    );

    let isz = sb.inode_size;
    let table_off = desc.inode_table * sb.block_size;
    let mut table = vec![0u8; (last as usize + 1) * isz];
    file.read_exact_at(&mut table, table_off)
        .with_context(|| format!("reading inode table at block {}", desc.inode_table))?;

    let mut changed = 0u64;
    let mut dirty: Option<(usize, usize)> = None;
    for i in (0..=last).filter(|&i| in_use(i)) {
        let ino = group * ipg + i + 1;
        let raw = &mut table[i as usize * isz..(i as usize + 1) * isz];
        let did = normalize_inode(raw, ino, epoch, sb.csum_seed, verified_any)
            .with_context(|| format!("inode {ino}"))?;
        if did {
            changed += 1;
            let (lo, hi) = dirty.get_or_insert((i as usize, i as usize));
            *lo = (*lo).min(i as usize);
            *hi = (*hi).max(i as usize);
        }
    }

    if let Some((lo, hi)) = dirty {
        let bytes = &table[lo * isz..(hi + 1) * isz];
        file.write_all_at(bytes, table_off + (lo * isz) as u64)
            .with_context(|| format!("writing inode table at block {}", desc.inode_table))?;
    }
    Ok(changed)
}

/// Normalizes one raw inode in place. Returns whether any byte changed.
fn normalize_inode(
    raw: &mut [u8],
    ino: u32,
    epoch: u32,
    csum_seed: Option<u32>,
    verified_any: &mut bool,
) -> Result<bool> {
    // mke2fs writes the reserved inodes it does not use (e.g. 3..6, 9, 10) as
    // all zeroes. Giving them timestamps would be harmless but would make
    // them look initialised; leaving them alone keeps the image closer to
    // what mke2fs produced.
    if raw.iter().all(|&b| b == 0) {
        return Ok(false);
    }

    let isz = raw.len();
    let extra_isize = if isz > GOOD_OLD_INODE_SIZE {
        le16(raw, I_EXTRA_ISIZE) as usize
    } else {
        0
    };
    ensure!(
        GOOD_OLD_INODE_SIZE + extra_isize <= isz,
        "i_extra_isize {extra_isize} exceeds inode size {isz}"
    );
    // Same rule as the kernel's EXT4_FITS_IN_INODE(): a field past the
    // inode's own extra_isize is not part of the inode, even if the slot is
    // large enough to hold it.
    let fits = |off: usize, len: usize| off + len <= GOOD_OLD_INODE_SIZE + extra_isize;
    let has_csum_hi = fits(I_CHECKSUM_HI, 2);

    if let Some(seed) = csum_seed {
        let stored = stored_inode_csum(raw, has_csum_hi);
        let computed = inode_csum(seed, ino, raw, has_csum_hi);
        if stored != computed {
            if !*verified_any {
                bail!(
                    "checksum of the first in-use inode does not verify (stored {stored:#010x}, \
                     computed {computed:#010x}); the superblock/descriptor parsing or the checksum \
                     algorithm disagrees with this image, nothing was written"
                );
            }
            bail!(
                "existing inode checksum is wrong (stored {stored:#010x}, computed \
                 {computed:#010x}); image is corrupt, refusing to re-seal it"
            );
        }
        *verified_any = true;
    }

    let before = raw.to_vec();
    let epoch = i64::from(epoch);
    if le32(raw, I_FLAGS) & EXT4_EA_INODE_FL == 0 {
        set_time(raw, I_ATIME, I_ATIME_EXTRA, epoch, &fits);
        set_time(raw, I_CTIME, I_CTIME_EXTRA, epoch, &fits);
    }
    let mtime = get_time(raw, I_MTIME, I_MTIME_EXTRA, &fits);
    set_time(raw, I_MTIME, I_MTIME_EXTRA, mtime.min(epoch), &fits);
    if fits(I_CRTIME, 4) {
        set_time(raw, I_CRTIME, I_CRTIME_EXTRA, epoch, &fits);
    }

    if raw == before.as_slice() {
        return Ok(false);
    }
    if let Some(seed) = csum_seed {
        let c = inode_csum(seed, ino, raw, has_csum_hi);
        put16(raw, I_CHECKSUM_LO, c as u16);
        if has_csum_hi {
            put16(raw, I_CHECKSUM_HI, (c >> 16) as u16);
        }
    }
    Ok(true)
}

/// Decodes seconds the way the kernel's ext4_decode_extra_time() does:
/// signed 32-bit base plus the epoch bits of the extra field times 2^32.
fn get_time(raw: &[u8], off: usize, extra_off: usize, fits: &impl Fn(usize, usize) -> bool) -> i64 {
    let base = i64::from(le32(raw, off) as i32);
    if fits(extra_off, 4) {
        base + (i64::from(le32(raw, extra_off) & EXTRA_EPOCH_MASK) << 32)
    } else {
        base
    }
}

/// Encodes whole seconds (nanoseconds = 0) like ext4_encode_extra_time().
///
/// Without an extra field the on-disk value is a signed 32-bit second count;
/// a later time would wrap to 1901, so it is clamped to 2038-01-19 instead,
/// which is what the kernel does too (s_time_max for such inodes). That only
/// matters for epochs past 2038 and stays deterministic.
fn set_time(
    raw: &mut [u8],
    off: usize,
    extra_off: usize,
    secs: i64,
    fits: &impl Fn(usize, usize) -> bool,
) {
    if fits(extra_off, 4) {
        let lo = secs as u32;
        let epoch_bits = ((secs - i64::from(lo as i32)) >> 32) as u32 & EXTRA_EPOCH_MASK;
        put32(raw, off, lo);
        put32(raw, extra_off, epoch_bits);
    } else {
        put32(raw, off, secs.min(i64::from(i32::MAX)) as u32);
    }
}

fn stored_inode_csum(raw: &[u8], has_hi: bool) -> u32 {
    let lo = u32::from(le16(raw, I_CHECKSUM_LO));
    if has_hi {
        lo | u32::from(le16(raw, I_CHECKSUM_HI)) << 16
    } else {
        lo
    }
}

/// ext4_inode_csum(): crc32c over inode number, generation and the whole
/// on-disk inode slot with the checksum fields read as zero. When the
/// inode's extra_isize does not cover i_checksum_hi, those two bytes are
/// hashed as ordinary data and only the low 16 bits are stored/compared.
fn inode_csum(fs_seed: u32, ino: u32, raw: &[u8], has_hi: bool) -> u32 {
    let zero = [0u8; 2];
    let mut c = ext4_crc32c(fs_seed, &ino.to_le_bytes());
    c = ext4_crc32c(c, &raw[I_GENERATION..I_GENERATION + 4]);
    c = ext4_crc32c(c, &raw[..I_CHECKSUM_LO]);
    c = ext4_crc32c(c, &zero);
    c = ext4_crc32c(c, &raw[I_CHECKSUM_LO + 2..GOOD_OLD_INODE_SIZE]);
    if raw.len() > GOOD_OLD_INODE_SIZE {
        c = ext4_crc32c(c, &raw[GOOD_OLD_INODE_SIZE..I_CHECKSUM_HI]);
        if has_hi {
            c = ext4_crc32c(c, &zero);
            c = ext4_crc32c(c, &raw[I_CHECKSUM_HI + 2..]);
        } else {
            c = ext4_crc32c(c, &raw[I_CHECKSUM_HI..]);
        }
    }
    if has_hi { c } else { c & 0xFFFF }
}

/// ext4_group_desc_csum() for metadata_csum: low 16 bits of crc32c over the
/// group number and the descriptor with bg_checksum read as zero.
fn group_desc_csum(fs_seed: u32, group: u32, raw: &[u8]) -> u16 {
    let mut c = ext4_crc32c(fs_seed, &group.to_le_bytes());
    c = ext4_crc32c(c, &raw[..BG_CHECKSUM]);
    c = ext4_crc32c(c, &[0, 0]);
    c = ext4_crc32c(c, &raw[BG_CHECKSUM + 2..]);
    c as u16
}

/// The kernel's ext4_chksum()/crc32c_le(): raw CRC-32C register update with
/// no pre- or post-inversion, so results chain directly. The `crc32c` crate
/// instead inverts on entry and exit (standard CRC-32C), hence the wrapping
/// inversions here.
fn ext4_crc32c(seed: u32, data: &[u8]) -> u32 {
    !crc32c::crc32c_append(!seed, data)
}

// Callers only pass offsets inside fixed-size buffers they allocated
// (superblock, descriptor, inode slot >= 128 bytes), so plain indexing
// cannot go out of bounds on untrusted data.
fn le16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    //! These drive the real e2fsprogs tools: the point is to prove the result
    //! is accepted by e2fsck and read back by debugfs exactly as intended.

    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;
    use std::process::{Command, Output};
    use tempfile::TempDir;

    const UUID: &str = "0b6c2b8e-6a1f-4d55-9a35-2f4b1c1d7e01";
    const HASH_SEED: &str = "6f1e5a0c-3b2d-4c7e-8f90-112233445566";
    /// What mke2fs uses as "now" for its own inodes and superblock stamps.
    const FAKE_TIME: &str = "1600000000";
    /// 2023-11-14T22:13:20Z: after the "old" test mtimes, before the "future" ones.
    const EPOCH: u32 = 1_700_000_000;
    const OLD_MTIME: u32 = 1_000_000_000; // 2001-09-09T01:46:40Z
    const FUTURE: &str = "2035-01-01 00:00:00 UTC";

    fn run(cmd: &mut Command) -> Output {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        assert!(
            out.status.success(),
            "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn touch(path: &Path, date: &str) {
        run(Command::new("touch").args(["-h", "-d", date]).arg(path));
    }

    /// A tree with every inode kind mke2fs -d copies: regular (small, multi-MB,
    /// hard-linked), directories, fast and slow symlinks, a fifo.
    fn make_tree(root: &Path) {
        fs::create_dir_all(root.join("etc/sub")).unwrap();
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::write(root.join("etc/hostname"), "ciab\n").unwrap();
        fs::write(root.join("etc/future"), "from the future\n").unwrap();
        fs::write(root.join("etc/sub/empty"), "").unwrap();
        // Several MB of non-repeating data, so it needs many extents' worth of blocks.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let big: Vec<u8> = (0..5 * 1024 * 1024)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        fs::write(root.join("usr/bin/big"), &big).unwrap();
        fs::hard_link(root.join("usr/bin/big"), root.join("usr/bin/big-link")).unwrap();
        symlink("hostname", root.join("etc/fast-link")).unwrap();
        let long_target = format!("/{}", "very-long-directory-name/".repeat(6));
        assert!(long_target.len() > 60, "must not fit in i_block");
        symlink(&long_target, root.join("etc/slow-link")).unwrap();
        run(Command::new("mkfifo").arg(root.join("etc/fifo")));

        for p in [
            "etc/hostname",
            "etc/sub/empty",
            "usr/bin/big",
            "etc/fast-link",
            "etc/slow-link",
            "etc/fifo",
            "etc/sub",
        ] {
            touch(&root.join(p), "@1000000000");
        }
        touch(&root.join("etc/future"), FUTURE);
        touch(&root.join("etc"), "2010-05-05 12:34:56.789 UTC");
        touch(&root.join("usr/bin"), FUTURE);
        touch(&root.join("usr"), "@1000000000");
        touch(root, "@1000000000");
    }

    /// mke2fs picks 1 KiB blocks for images under 512 MiB ("small" type);
    /// real root images are bigger, so 4 KiB is the default here and tests
    /// that want 1 KiB say so.
    fn mkfs(tree: &Path, img: &Path, extra: &[&str]) {
        let default_bs: &[&str] = if extra.contains(&"-b") {
            &[]
        } else {
            &["-b", "4096"]
        };
        run(Command::new("mkfs.ext4")
            .args(default_bs)
            .env("E2FSPROGS_FAKE_TIME", FAKE_TIME)
            .args(["-q", "-F", "-U", UUID, "-E"])
            .arg(format!("hash_seed={HASH_SEED}"))
            .args(extra)
            .arg("-d")
            .arg(tree)
            .arg(img)
            .arg("64M"));
    }

    fn fsck(img: &Path) {
        // -f: check even though the fs is marked clean; -n: never modify.
        run(Command::new("e2fsck").arg("-fn").arg(img));
    }

    fn debugfs_stat(img: &Path, path: &str) -> String {
        let out = run(Command::new("debugfs")
            .arg("-R")
            .arg(format!("stat {path}"))
            .arg(img));
        let s = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(s.contains("Inode:"), "debugfs stat {path} printed:\n{s}");
        s
    }

    /// Parses a debugfs line such as ` ctime: 0x6553f100:00000000 -- ...`
    /// into (seconds, extra); extra is None for 128-byte inodes.
    fn stat_time(stat: &str, field: &str) -> Option<(u32, Option<u32>)> {
        let key = format!("{field}: 0x");
        let line = stat.lines().find(|l| l.trim_start().starts_with(&key))?;
        let rest = &line.trim_start()[key.len()..];
        let hex: String = rest.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
        let secs = u32::from_str_radix(&hex, 16).unwrap();
        let extra = rest[hex.len()..].strip_prefix(':').map(|r| {
            let h: String = r.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
            u32::from_str_radix(&h, 16).unwrap()
        });
        Some((secs, extra))
    }

    /// Asserts the normalized times of `path`, expecting mtime `mtime` and
    /// crtime present iff the inode has extended fields.
    fn assert_times(img: &Path, path: &str, mtime: u32, large_inodes: bool) {
        let st = debugfs_stat(img, path);
        let want_extra = large_inodes.then_some(0);
        for f in ["ctime", "atime"] {
            assert_eq!(
                stat_time(&st, f),
                Some((EPOCH, want_extra)),
                "{f} of {path}:\n{st}"
            );
        }
        assert_eq!(
            stat_time(&st, "mtime"),
            Some((mtime, want_extra)),
            "mtime of {path}:\n{st}"
        );
        if large_inodes {
            assert_eq!(
                stat_time(&st, "crtime"),
                Some((EPOCH, Some(0))),
                "crtime of {path}:\n{st}"
            );
        } else {
            assert_eq!(stat_time(&st, "crtime"), None, "{path}:\n{st}");
        }
    }

    fn sha256(p: &Path) -> String {
        let out = run(Command::new("sha256sum").arg(p));
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    }

    /// Builds, normalizes and checks an image with the given mkfs options.
    fn build_and_check(extra: &[&str], large_inodes: bool) -> (TempDir, std::path::PathBuf) {
        let dir = TempDir::new().unwrap();
        let tree = dir.path().join("tree");
        let img = dir.path().join("root.ext4");
        make_tree(&tree);
        mkfs(&tree, &img, extra);
        fsck(&img);

        let n = normalize_inode_times(&img, EPOCH).unwrap();
        assert!(n >= 12, "only {n} inodes rewritten");
        fsck(&img);

        assert_times(&img, "/etc/hostname", OLD_MTIME, large_inodes);
        assert_times(&img, "/usr/bin/big", OLD_MTIME, large_inodes);
        assert_times(&img, "/etc/fast-link", OLD_MTIME, large_inodes);
        assert_times(&img, "/etc/slow-link", OLD_MTIME, large_inodes);
        assert_times(&img, "/etc/fifo", OLD_MTIME, large_inodes);
        assert_times(&img, "/etc/sub", OLD_MTIME, large_inodes);
        assert_times(&img, "/etc/future", EPOCH, large_inodes);
        assert_times(&img, "/usr/bin", EPOCH, large_inodes);
        assert_times(&img, "/etc", 1_273_062_896, large_inodes); // 2010-05-05, nanos dropped
        // Created by mke2fs itself with FAKE_TIME, which is before EPOCH.
        assert_times(
            &img,
            "/lost+found",
            FAKE_TIME.parse().unwrap(),
            large_inodes,
        );

        // Idempotent: a second pass finds nothing to change and writes nothing.
        let before = sha256(&img);
        assert_eq!(normalize_inode_times(&img, EPOCH).unwrap(), 0);
        assert_eq!(sha256(&img), before);
        (dir, img)
    }

    #[test]
    fn default_features_metadata_csum_64bit() {
        let (_d, img) = build_and_check(&[], true);
        let sb = Superblock::read(&File::open(&img).unwrap()).unwrap();
        assert!(sb.csum_seed.is_some() && sb.incompat & INCOMPAT_64BIT != 0);
        assert_eq!(
            (sb.block_size, sb.sb_block, sb.first_data_block),
            (4096, 0, 0)
        );
        assert_eq!(sb.desc_size, 64);
    }

    #[test]
    fn one_k_blocks() {
        let (_d, img) = build_and_check(&["-b", "1024"], true);
        let sb = Superblock::read(&File::open(&img).unwrap()).unwrap();
        assert_eq!(
            (sb.block_size, sb.sb_block, sb.first_data_block),
            (1024, 1, 1)
        );
    }

    #[test]
    fn without_metadata_csum() {
        let (_d, img) = build_and_check(&["-O", "^metadata_csum"], true);
        let sb = Superblock::read(&File::open(&img).unwrap()).unwrap();
        assert!(sb.csum_seed.is_none() && !sb.has_group_desc_csum());
    }

    #[test]
    fn uninit_bg_without_metadata_csum() {
        // gdt_csum: bg_flags / bg_itable_unused are meaningful but inodes carry no checksum.
        let (_d, img) = build_and_check(&["-O", "^metadata_csum,uninit_bg"], true);
        let sb = Superblock::read(&File::open(&img).unwrap()).unwrap();
        assert!(sb.csum_seed.is_none() && sb.has_group_desc_csum());
    }

    #[test]
    fn without_64bit() {
        let (_d, img) = build_and_check(&["-O", "^64bit"], true);
        let sb = Superblock::read(&File::open(&img).unwrap()).unwrap();
        assert_eq!(sb.desc_size, 32);
    }

    #[test]
    fn small_inodes_have_no_extra_fields() {
        // 128-byte inodes: no *_extra, no crtime, only the low 16 checksum bits.
        build_and_check(&["-I", "128"], false);
    }

    #[test]
    fn one_k_blocks_with_meta_bg() {
        // 1 KiB blocks put the superblock in block 1 and the GDT after it;
        // meta_bg scatters descriptor blocks to the start of each meta group.
        // Small groups (-g 1024) give 64 groups = 4 descriptor blocks, so the
        // scattered locations are really exercised (and checksum-verified).
        let opts = ["-b", "1024", "-g", "1024", "-O", "meta_bg,^resize_inode"];
        let (_d, img) = build_and_check(&opts, true);
        let sb = Superblock::read(&File::open(&img).unwrap()).unwrap();
        assert_eq!(
            (sb.block_size, sb.sb_block, sb.first_data_block),
            (1024, 1, 1)
        );
        assert!(sb.incompat & INCOMPAT_META_BG != 0);
        assert_eq!(sb.group_count, 64);
        assert_eq!(sb.descriptor_block(1), 1 + 16 * 1024);
    }

    #[test]
    fn meta_bg_with_sparse_super2() {
        // sparse_super2 moves the backup superblocks, which shifts meta_bg
        // descriptor blocks that follow one.
        let opts = [
            "-b",
            "1024",
            "-g",
            "1024",
            "-O",
            "meta_bg,^resize_inode,sparse_super2",
        ];
        let (_d, img) = build_and_check(&opts, true);
        let sb = Superblock::read(&File::open(&img).unwrap()).unwrap();
        assert!(sb.compat & COMPAT_SPARSE_SUPER2 != 0);
    }

    #[test]
    fn bigalloc_4k() {
        let (_d, img) = build_and_check(&["-O", "bigalloc", "-C", "65536"], true);
        let sb = Superblock::read(&File::open(&img).unwrap()).unwrap();
        assert_eq!((sb.sb_block, sb.first_data_block), (0, 0));
    }

    #[test]
    fn bigalloc_1k_blocks() {
        // The odd case where s_first_data_block is 0 although the superblock
        // occupies block 1: the GDT is found relative to the superblock.
        let (_d, img) = build_and_check(&["-b", "1024", "-O", "bigalloc", "-C", "16384"], true);
        let sb = Superblock::read(&File::open(&img).unwrap()).unwrap();
        assert_eq!(
            (sb.block_size, sb.sb_block, sb.first_data_block),
            (1024, 1, 0)
        );
    }

    #[test]
    fn metadata_csum_seed_after_uuid_change() {
        // With metadata_csum_seed, tune2fs -U changes s_uuid but not the seed:
        // a checksum derived from the UUID would now be wrong.
        let dir = TempDir::new().unwrap();
        let tree = dir.path().join("tree");
        let img = dir.path().join("root.ext4");
        make_tree(&tree);
        mkfs(&tree, &img, &["-O", "metadata_csum_seed"]);
        run(Command::new("tune2fs")
            .args(["-U", "11111111-2222-3333-4444-555555555555"])
            .arg(&img));
        fsck(&img);
        assert!(normalize_inode_times(&img, EPOCH).unwrap() >= 12);
        fsck(&img);
        assert_times(&img, "/etc/hostname", OLD_MTIME, true);
    }

    #[test]
    fn epoch_after_2038_uses_extra_epoch_bits() {
        let dir = TempDir::new().unwrap();
        let tree = dir.path().join("tree");
        let img = dir.path().join("root.ext4");
        make_tree(&tree);
        mkfs(&tree, &img, &[]);
        let late: u32 = 0x9000_0000; // 2046-07
        normalize_inode_times(&img, late).unwrap();
        fsck(&img);
        let st = debugfs_stat(&img, "/etc/future");
        // Low 32 bits plus epoch bit 1: seconds = 0x9000_0000 exactly.
        assert_eq!(stat_time(&st, "ctime"), Some((late, Some(1))), "{st}");
        assert_eq!(stat_time(&st, "crtime"), Some((late, Some(1))), "{st}");
        // 2035 < 2046, kept (whole seconds).
        assert_eq!(
            stat_time(&st, "mtime"),
            Some((2_051_222_400, Some(0))),
            "{st}"
        );

        // Inode 1 has i_extra_isize 0 even with 256-byte slots: clamped, not wrapped.
        let st = debugfs_stat(&img, "<1>");
        assert_eq!(
            stat_time(&st, "ctime"),
            Some((i32::MAX as u32, None)),
            "{st}"
        );

        // Same for a filesystem of 128-byte inodes.
        let img2 = dir.path().join("small.ext4");
        mkfs(&tree, &img2, &["-I", "128"]);
        normalize_inode_times(&img2, late).unwrap();
        fsck(&img2);
        let st = debugfs_stat(&img2, "/etc/future");
        assert_eq!(
            stat_time(&st, "ctime"),
            Some((i32::MAX as u32, None)),
            "{st}"
        );
        assert_eq!(stat_time(&st, "mtime"), Some((2_051_222_400, None)), "{st}");
    }

    /// The inode flags word as printed by debugfs ("Flags: 0x280000").
    fn stat_flags(stat: &str) -> u32 {
        let rest = &stat[stat.find("Flags: 0x").expect("Flags") + 9..];
        let hex: String = rest.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
        u32::from_str_radix(&hex, 16).unwrap()
    }

    #[test]
    fn ea_inode_hash_and_refcount_are_preserved() {
        // A large xattr value goes into its own inode whose atime/ctime hold
        // the value hash and refcount: e2fsck reports "Extended attribute in
        // inode N has a hash which is invalid" if atime is overwritten.
        let dir = TempDir::new().unwrap();
        let tree = dir.path().join("tree");
        let img = dir.path().join("root.ext4");
        make_tree(&tree);
        let value = "v".repeat(3000);
        run(Command::new("setfattr")
            .args(["-n", "user.big", "-v", &value])
            .arg(tree.join("etc/hostname")));
        mkfs(&tree, &img, &["-b", "1024", "-O", "ea_inode"]);
        // e2fsprogs 1.47.0 itself leaves the owner's i_blocks short when it
        // creates an EA inode; let e2fsck repair that first (exit 1 = fixed)
        // so the check after normalization is meaningful.
        let st = Command::new("e2fsck")
            .arg("-fy")
            .arg(&img)
            .output()
            .unwrap()
            .status;
        assert!(matches!(st.code(), Some(0 | 1)), "e2fsck -fy: {st}");
        fsck(&img);

        let ea_ino = (12..64)
            .find(|i| stat_flags(&debugfs_stat(&img, &format!("<{i}>"))) & EXT4_EA_INODE_FL != 0)
            .expect("mke2fs did not create an EA inode");
        let before = debugfs_stat(&img, &format!("<{ea_ino}>"));

        normalize_inode_times(&img, EPOCH).unwrap();
        fsck(&img);
        assert_times(&img, "/etc/hostname", OLD_MTIME, true);
        let after = debugfs_stat(&img, &format!("<{ea_ino}>"));
        for f in ["atime", "ctime"] {
            assert_eq!(stat_time(&after, f), stat_time(&before, f), "{f}:\n{after}");
        }
        assert_eq!(
            stat_time(&after, "crtime"),
            Some((EPOCH, Some(0))),
            "{after}"
        );
        let (m, _) = stat_time(&after, "mtime").unwrap();
        assert!(m <= EPOCH, "{after}");
    }

    #[test]
    fn corrupt_checksum_is_refused_and_nothing_written() {
        let dir = TempDir::new().unwrap();
        let tree = dir.path().join("tree");
        let img = dir.path().join("root.ext4");
        make_tree(&tree);
        mkfs(&tree, &img, &[]);
        // Flip one bit of the bad-blocks inode (#1, the first in-use inode)'s
        // i_generation: its checksum no longer verifies.
        let sb = Superblock::read(&File::open(&img).unwrap()).unwrap();
        let gd = read_group_descriptors(&File::open(&img).unwrap(), &sb).unwrap();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&img)
            .unwrap();
        let off = gd[0].inode_table * sb.block_size + I_GENERATION as u64;
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, off).unwrap();
        f.write_all_at(&[b[0] ^ 1], off).unwrap();
        drop(f);
        let before = sha256(&img);
        let err = format!("{:#}", normalize_inode_times(&img, EPOCH).unwrap_err());
        assert!(
            err.contains("first in-use inode") && err.contains("inode 1"),
            "{err}"
        );
        assert_eq!(
            sha256(&img),
            before,
            "must not write when verification fails"
        );
    }

    #[test]
    fn rejects_non_ext4() {
        let dir = TempDir::new().unwrap();
        let p = dir.path().join("not-ext4.img");
        fs::write(&p, vec![0u8; 4 * 1024 * 1024]).unwrap();
        let err = format!("{:#}", normalize_inode_times(&p, EPOCH).unwrap_err());
        assert!(
            err.contains("magic is 0x0000") && err.contains("not-ext4.img"),
            "{err}"
        );

        // A real image cut short.
        let tree = dir.path().join("tree");
        fs::create_dir(&tree).unwrap();
        mkfs(&tree, &p, &[]);
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(32 * 1024 * 1024).unwrap();
        drop(f);
        let err = format!("{:#}", normalize_inode_times(&p, EPOCH).unwrap_err());
        assert!(err.contains("truncated"), "{err}");

        fs::write(&p, b"tiny").unwrap();
        let err = format!("{:#}", normalize_inode_times(&p, EPOCH).unwrap_err());
        assert!(err.contains("reading superblock"), "{err}");

        let err = format!(
            "{:#}",
            normalize_inode_times(&dir.path().join("missing"), EPOCH).unwrap_err()
        );
        assert!(err.contains("opening ext4 image"), "{err}");
    }

    /// Lists differing byte ranges of two equal-length images, for diagnosis.
    fn diff_ranges(a: &Path, b: &Path) -> Vec<(u64, u64)> {
        let (a, b) = (fs::read(a).unwrap(), fs::read(b).unwrap());
        assert_eq!(a.len(), b.len());
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            if x != y {
                let i = i as u64;
                match ranges.last_mut() {
                    Some((_, end)) if *end + 16 >= i => *end = i,
                    _ => ranges.push((i, i)),
                }
            }
        }
        ranges
    }

    #[test]
    fn two_builds_are_byte_identical() {
        let a = TempDir::new().unwrap();
        make_tree(&a.path().join("tree"));
        // Different ctimes for every source file of the second tree.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let b = TempDir::new().unwrap();
        make_tree(&b.path().join("tree"));

        let (ia, ib) = (a.path().join("a.ext4"), b.path().join("b.ext4"));
        mkfs(&a.path().join("tree"), &ia, &[]);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        mkfs(&b.path().join("tree"), &ib, &[]);
        let raw_differ = diff_ranges(&ia, &ib);
        assert!(
            !raw_differ.is_empty(),
            "expected raw mkfs output to differ (ctimes)"
        );

        normalize_inode_times(&ia, EPOCH).unwrap();
        normalize_inode_times(&ib, EPOCH).unwrap();
        fsck(&ia);
        fsck(&ib);
        let ranges = diff_ranges(&ia, &ib);
        assert!(
            ranges.is_empty(),
            "images still differ after normalization at {} ranges: {:x?}",
            ranges.len(),
            &ranges[..ranges.len().min(20)]
        );
        assert_eq!(sha256(&ia), sha256(&ib));
    }
}
