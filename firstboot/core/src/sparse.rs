//! Where a sparse image holds data: the filesystem's view (SEEK_DATA and
//! SEEK_HOLE) and the content's view (the block map: 4 KiB blocks that are
//! not all zero, with the sha256 of each range).

use crate::contract::{MappedRange, MAX_MAPPED_RANGE};
use anyhow::{bail, Context, Result};
use rustix::fs::SeekFrom;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Granularity of the block map: the page and filesystem block size.
pub const MAP_BLOCK: u64 = 4096;

/// A byte range `[offset, offset + length)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub offset: u64,
    pub length: u64,
}

impl ByteRange {
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }
}

/// The data ranges of `file` as the filesystem reports them (holes excluded).
/// A block device or a filesystem without SEEK_DATA reports one range.
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

/// The block map of an image file: the 4 KiB blocks that hold non-zero bytes,
/// merged into ranges of at most [`MAX_MAPPED_RANGE`], each with its sha256.
/// Computed from content, so it does not depend on how the filesystem under
/// the file allocates: the same image always has the same map.
pub fn block_map(path: &Path) -> Result<Vec<MappedRange>> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut spans: Vec<ByteRange> = Vec::new();
    let mut buf = vec![0u8; 4 << 20];
    for range in data_ranges(&f)? {
        let mut pos = range.offset / MAP_BLOCK * MAP_BLOCK;
        let end = range.end();
        while pos < end {
            let n = ((end - pos) as usize).min(buf.len());
            f.read_exact_at(&mut buf[..n], pos).with_context(|| format!("reading {}", path.display()))?;
            for (i, chunk) in buf[..n].chunks(MAP_BLOCK as usize).enumerate() {
                if chunk.iter().all(|&b| b == 0) {
                    continue;
                }
                let at = pos + i as u64 * MAP_BLOCK;
                match spans.last_mut() {
                    Some(last) if last.end() >= at && at + chunk.len() as u64 - last.offset <= MAX_MAPPED_RANGE => {
                        last.length = at + chunk.len() as u64 - last.offset
                    }
                    _ => spans.push(ByteRange { offset: at, length: chunk.len() as u64 }),
                }
            }
            pos += n as u64;
        }
    }
    spans
        .into_iter()
        .map(|r| {
            let mut data = vec![0u8; r.length as usize];
            f.read_exact_at(&mut data, r.offset).with_context(|| format!("reading {}", path.display()))?;
            Ok(MappedRange { offset: r.offset, length: r.length, sha256: hex::encode(Sha256::digest(&data)) })
        })
        .collect()
}

/// Checks that a block map is well formed for an image of `size` bytes:
/// sorted, disjoint, aligned, inside the image, each range small enough to
/// hold in memory. A signed manifest is trusted for content, not for shape.
pub fn check_map(map: &[MappedRange], size: u64) -> Result<()> {
    let mut prev_end = 0u64;
    for (i, r) in map.iter().enumerate() {
        let end = r.offset.saturating_add(r.length);
        if r.length == 0 || r.length > MAX_MAPPED_RANGE {
            bail!("block map range {i} has length {} (must be 1..={MAX_MAPPED_RANGE})", r.length);
        }
        if r.offset % MAP_BLOCK != 0 || r.offset < prev_end || end > size {
            bail!("block map range {i} ({}+{}) is unaligned, overlapping or outside the {size}-byte image", r.offset, r.length);
        }
        if r.sha256.len() != 64 || !r.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("block map range {i} has no valid sha256");
        }
        prev_end = end;
    }
    Ok(())
}

/// The ranges of `[0, size)` not covered by `map` (which [`check_map`] accepted).
pub fn gaps(map: &[MappedRange], size: u64) -> Vec<ByteRange> {
    let mut out = Vec::new();
    let mut pos = 0;
    for r in map {
        if r.offset > pos {
            out.push(ByteRange { offset: pos, length: r.offset - pos });
        }
        pos = r.offset + r.length;
    }
    if size > pos {
        out.push(ByteRange { offset: pos, length: size - pos });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sparse_file(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("img");
        let f = File::create(&path).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(&[1u8; 4096], 1 << 20).unwrap();
        // Explicit zeros: data to the filesystem, nothing to the map.
        f.write_all_at(&vec![0u8; 1 << 20], 4 << 20).unwrap();
        // 40 MiB of data: split into ranges of at most 16 MiB.
        f.write_all_at(&vec![7u8; 40 << 20], 8 << 20).unwrap();
        f.write_all_at(&[2u8; 10], (64 << 20) - 10).unwrap();
        path
    }

    #[test]
    fn map_holds_nonzero_blocks_split_and_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let path = sparse_file(dir.path());
        let map = block_map(&path).unwrap();
        let shape: Vec<(u64, u64)> = map.iter().map(|r| (r.offset, r.length)).collect();
        assert_eq!(
            shape,
            vec![(1 << 20, 4096), (8 << 20, 16 << 20), (24 << 20, 16 << 20), (40 << 20, 8 << 20), ((64 << 20) - 4096, 4096)]
        );
        assert_eq!(map[1].sha256, hex::encode(Sha256::digest(vec![7u8; 16 << 20])));
        check_map(&map, 64 << 20).unwrap();
        let holes = gaps(&map, 64 << 20);
        assert_eq!(holes[0], ByteRange { offset: 0, length: 1 << 20 });
        let covered: u64 = map.iter().map(|r| r.length).sum::<u64>() + holes.iter().map(|r| r.length).sum::<u64>();
        assert_eq!(covered, 64 << 20);
    }

    #[test]
    fn malformed_maps_are_refused() {
        let ok = MappedRange { offset: 0, length: 4096, sha256: "0".repeat(64) };
        let overlapping = vec![ok.clone(), ok.clone()];
        assert!(check_map(&overlapping, 1 << 20).unwrap_err().to_string().contains("overlapping"));
        let outside = vec![MappedRange { offset: 1 << 20, ..ok.clone() }];
        assert!(check_map(&outside, 1 << 20).is_err());
        let huge = vec![MappedRange { length: MAX_MAPPED_RANGE + 4096, ..ok.clone() }];
        assert!(check_map(&huge, 1 << 30).is_err());
        let bad_hash = vec![MappedRange { sha256: "xyz".into(), ..ok }];
        assert!(check_map(&bad_hash, 1 << 20).is_err());
    }
}
