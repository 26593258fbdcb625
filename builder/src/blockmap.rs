//! Where a sparse file holds data: SEEK_DATA/SEEK_HOLE ranges, zero-skipping
//! copies, and the block map the manifest records for flashing.

use anyhow::{Context, Result};
use ciab_firstboot::contract::ByteRange;
use rustix::fs::SeekFrom;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Granularity of zero detection while copying.
const BLOCK: usize = 64 * 1024;

/// The data ranges of `file` as the filesystem reports them (holes excluded).
pub fn data_ranges(file: &File) -> Result<Vec<ByteRange>> {
    let len = file.metadata()?.len();
    let mut ranges = Vec::new();
    let mut pos = 0u64;
    while pos < len {
        let start = match rustix::fs::seek(file, SeekFrom::Data(pos as i64)) {
            Ok(p) => p,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e).context("SEEK_DATA"),
        };
        let end = rustix::fs::seek(file, SeekFrom::Hole(start as i64)).context("SEEK_HOLE")?.min(len);
        if end > start {
            ranges.push(ByteRange { offset: start, length: end - start });
        }
        pos = end;
    }
    Ok(ranges)
}

/// Bytes of `path` that are not holes.
pub fn allocated_bytes(path: &Path) -> Result<u64> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(data_ranges(&f)?.iter().map(|r| r.length).sum())
}

/// Copies the data of `src` into `dst` at `dst_offset`, leaving holes and
/// all-zero blocks unwritten (so they stay holes in a fresh sparse `dst`).
/// Returns the bytes written.
pub fn copy_sparse(src: &File, dst: &File, dst_offset: u64) -> Result<u64> {
    let mut buf = vec![0u8; 16 * BLOCK];
    let mut written = 0;
    for range in data_ranges(src)? {
        let mut pos = range.offset;
        let end = range.offset + range.length;
        while pos < end {
            let n = ((end - pos) as usize).min(buf.len());
            src.read_exact_at(&mut buf[..n], pos).context("reading source")?;
            for (i, chunk) in buf[..n].chunks(BLOCK).enumerate() {
                if chunk.iter().any(|&b| b != 0) {
                    dst.write_all_at(chunk, dst_offset + pos + (i * BLOCK) as u64).context("writing destination")?;
                    written += chunk.len() as u64;
                }
            }
            pos += n as u64;
        }
    }
    Ok(written)
}

/// Granularity of the block map: the page and filesystem block size.
pub const MAP_BLOCK: u64 = 4096;

/// The block map of a finished image: the 4 KiB blocks that hold non-zero
/// bytes, merged into ranges. Computed from content, so it does not depend on
/// how the filesystem under the file allocates.
pub fn block_map(path: &Path) -> Result<Vec<ByteRange>> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out: Vec<ByteRange> = Vec::new();
    let mut buf = vec![0u8; 16 * BLOCK];
    for range in data_ranges(&f)? {
        let mut pos = range.offset / MAP_BLOCK * MAP_BLOCK;
        let end = range.offset + range.length;
        while pos < end {
            let n = ((end - pos) as usize).min(buf.len());
            f.read_exact_at(&mut buf[..n], pos).with_context(|| format!("reading {}", path.display()))?;
            for (i, chunk) in buf[..n].chunks(MAP_BLOCK as usize).enumerate() {
                if chunk.iter().all(|&b| b == 0) {
                    continue;
                }
                let at = pos + i as u64 * MAP_BLOCK;
                match out.last_mut() {
                    Some(last) if last.offset + last.length >= at => last.length = at + chunk.len() as u64 - last.offset,
                    _ => out.push(ByteRange { offset: at, length: chunk.len() as u64 }),
                }
            }
            pos += n as u64;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_copy_keeps_holes_and_skips_zero_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let src_path = dir.path().join("src");
        let src = File::create(&src_path).unwrap();
        src.set_len(8 << 20).unwrap();
        src.write_all_at(&[1u8; 4096], 1 << 20).unwrap();
        // Explicit zeros: data to the filesystem, but nothing to copy.
        src.write_all_at(&vec![0u8; 1 << 20], 4 << 20).unwrap();
        src.write_all_at(&[2u8; 10], (8 << 20) - 10).unwrap();
        let src = File::open(&src_path).unwrap();
        let ranges = data_ranges(&src).unwrap();
        assert!(ranges.iter().any(|r| r.offset <= 1 << 20 && r.offset + r.length > 1 << 20));

        let dst_path = dir.path().join("dst");
        let dst = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&dst_path).unwrap();
        dst.set_len(16 << 20).unwrap();
        let written = copy_sparse(&src, &dst, 1 << 20).unwrap();
        // Only the two non-zero 4 KiB blocks carry data.
        assert_eq!(written, 2 * MAP_BLOCK);
        let mut b = [0u8; 1];
        dst.read_exact_at(&mut b, (2 << 20) + 5).unwrap();
        assert_eq!(b[0], 1);
        dst.read_exact_at(&mut b, (9 << 20) - 1).unwrap();
        assert_eq!(b[0], 2);
        assert!(allocated_bytes(&dst_path).unwrap() <= 2 * BLOCK as u64);
        let map = block_map(&dst_path).unwrap();
        assert_eq!(map, vec![ByteRange { offset: 2 << 20, length: MAP_BLOCK }, ByteRange { offset: (9 << 20) - MAP_BLOCK, length: MAP_BLOCK }]);
    }
}
