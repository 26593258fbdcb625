//! Filesystem primitives the stages share: atomic writes, hashing, sparse copies.

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Read;
use std::path::Path;

pub use ciab_core::atomic::write_atomic;

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    sha256_reader(&mut f).with_context(|| format!("reading {}", path.display()))
}

/// sha256 of everything `r` yields, hex.
pub fn sha256_reader(r: &mut impl Read) -> std::io::Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// sha256 of bytes, hex.
pub fn sha256_bytes(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// sha256 of the whole file and of each `(offset, length)` range, in one
/// sequential read (the raw image is GiBs; reading it once halves the time).
pub fn sha256_file_and_ranges(path: &Path, ranges: &[(u64, u64)]) -> Result<(String, Vec<String>)> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut whole = Sha256::new();
    let mut parts: Vec<Sha256> = ranges.iter().map(|_| Sha256::new()).collect();
    let mut buf = vec![0u8; 4 << 20];
    let mut pos = 0u64;
    loop {
        let n = file.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        whole.update(chunk);
        let end = pos + n as u64;
        for ((off, len), h) in ranges.iter().zip(parts.iter_mut()) {
            let (a, b) = ((*off).max(pos), (off + len).min(end));
            if a < b {
                h.update(&chunk[(a - pos) as usize..(b - pos) as usize]);
            }
        }
        pos = end;
    }
    Ok((hex::encode(whole.finalize()), parts.into_iter().map(|h| hex::encode(h.finalize())).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pass_hashes_match_separate_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..(9u32 << 20)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        // Ranges crossing the 4 MiB read size, one at the very end.
        let ranges = [(0u64, 100u64), (4 << 20, 3 << 20), ((4 << 20) - 10, 20), ((9 << 20) - 5, 5)];
        let (whole, parts) = sha256_file_and_ranges(&path, &ranges).unwrap();
        assert_eq!(whole, sha256_bytes(&data));
        for ((off, len), got) in ranges.iter().zip(parts) {
            assert_eq!(got, sha256_bytes(&data[*off as usize..(off + len) as usize]));
        }
    }
}
