//! Zero-skipping copies between sparse files. Where a file holds data (and
//! the block map the manifest records) is `ciab_core::sparse`, shared
//! with the flash engine.

use anyhow::{Context, Result};
pub use ciab_core::sparse::{block_map, data_ranges, MAP_BLOCK};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Granularity of zero detection while copying.
const BLOCK: usize = 64 * 1024;

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
        let map: Vec<(u64, u64)> = block_map(&dst_path).unwrap().iter().map(|r| (r.offset, r.length)).collect();
        assert_eq!(map, vec![(2 << 20, MAP_BLOCK), ((9 << 20) - MAP_BLOCK, MAP_BLOCK)]);
    }
}
