//! The content-addressed blob cache: `<cache>/blobs/sha256/<hex>`.
//!
//! A blob enters only through [`BlobWriter::commit`], which checks its size
//! and sha256 and renames it into place, so nothing corrupt is ever found
//! under its digest. Bytes of an interrupted download stay in
//! `blobs/partial/<hex>` and a later fetch resumes from them.

use crate::oci::digest::Digest;
use anyhow::{bail, Context, Result};
use sha2::{Digest as _, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    /// The store under `cache_root`, created if missing.
    pub fn open(cache_root: &Path) -> Result<BlobStore> {
        let root = cache_root.join("blobs");
        for sub in ["sha256", "partial"] {
            fs::create_dir_all(root.join(sub)).with_context(|| format!("creating {}", root.join(sub).display()))?;
        }
        Ok(BlobStore { root })
    }

    /// The directory of complete blobs, named by hex digest.
    pub fn dir(&self) -> PathBuf {
        self.root.join("sha256")
    }

    /// Where the complete blob lives (whether or not it is there yet).
    pub fn path(&self, d: &Digest) -> PathBuf {
        self.root.join("sha256").join(d.hex())
    }

    pub fn contains(&self, d: &Digest) -> bool {
        self.path(d).is_file()
    }

    pub fn read(&self, d: &Digest) -> Result<Vec<u8>> {
        fs::read(self.path(d)).with_context(|| format!("reading {d} from the blob cache {}", self.root.display()))
    }

    /// Stores `bytes` as `d` after checking them.
    pub fn put(&self, d: &Digest, bytes: &[u8]) -> Result<()> {
        if self.contains(d) {
            return Ok(());
        }
        let mut w = self.writer(d, Some(bytes.len() as u64), false)?;
        w.write_all(bytes)?;
        w.commit()
    }

    /// Stores whatever `r` yields under the digest it hashes to.
    pub fn ingest(&self, r: &mut impl Read) -> Result<(Digest, u64)> {
        let tmp = tempfile::NamedTempFile::new_in(self.root.join("partial")).context("creating a temporary blob")?;
        let mut hasher = Sha256::new();
        let mut out = std::io::BufWriter::new(tmp.as_file());
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = r.read(&mut buf).context("reading blob content")?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])?;
            size += n as u64;
        }
        out.flush()?;
        drop(out);
        let d = Digest::from_hasher(hasher);
        if !self.contains(&d) {
            tmp.as_file().sync_all()?;
            tmp.persist(self.path(&d)).with_context(|| format!("moving {d} into the blob cache"))?;
        }
        Ok((d, size))
    }

    /// A writer for blob `d`. With `resume`, bytes left by an interrupted
    /// download are kept (and re-hashed) and [`BlobWriter::offset`] says
    /// where to continue; otherwise they are discarded.
    pub fn writer(&self, d: &Digest, size: Option<u64>, resume: bool) -> Result<BlobWriter> {
        let partial = self.root.join("partial").join(d.hex());
        let mut hasher = Sha256::new();
        let mut offset = 0;
        if resume && partial.is_file() {
            let mut f = File::open(&partial).with_context(|| format!("opening {}", partial.display()))?;
            offset = std::io::copy(&mut Read::by_ref(&mut f).take(size.unwrap_or(u64::MAX)), &mut HashSink(&mut hasher))
                .with_context(|| format!("re-reading {}", partial.display()))?;
        }
        let file = OpenOptions::new().create(true).write(true).truncate(false).open(&partial).with_context(|| format!("creating {}", partial.display()))?;
        file.set_len(offset)?;
        let mut file = file;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(offset))?;
        Ok(BlobWriter { digest: d.clone(), expected_size: size, file, hasher, written: offset, partial, dest: self.path(d) })
    }
}

struct HashSink<'a>(&'a mut Sha256);

impl Write for HashSink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Bytes of one blob on their way into the store.
pub struct BlobWriter {
    digest: Digest,
    expected_size: Option<u64>,
    file: File,
    hasher: Sha256,
    written: u64,
    partial: PathBuf,
    dest: PathBuf,
}

impl BlobWriter {
    /// Bytes already present (from an earlier, interrupted download).
    pub fn offset(&self) -> u64 {
        self.written
    }

    /// Drops any resumed bytes: the source sent the whole blob again.
    pub fn restart(&mut self) -> Result<()> {
        self.file.set_len(0)?;
        std::io::Seek::seek(&mut self.file, std::io::SeekFrom::Start(0))?;
        self.hasher = Sha256::new();
        self.written = 0;
        Ok(())
    }

    /// Checks size and digest, then moves the blob into place. A blob that
    /// does not hash to its digest is deleted, never kept for resuming.
    pub fn commit(mut self) -> Result<()> {
        self.file.flush()?;
        let actual = Digest::from_hasher(self.hasher.clone());
        if let Some(size) = self.expected_size.filter(|s| *s != self.written) {
            // Short: the bytes so far stay in `partial/` for the next fetch to resume.
            bail!("blob {} is {} bytes, expected {size}: the download was cut short or the source is corrupt", self.digest, self.written);
        }
        if actual != self.digest {
            let _ = fs::remove_file(&self.partial);
            bail!("blob {} does not match its digest: its bytes hash to {actual} (the source served corrupt or different content)", self.digest);
        }
        self.file.sync_all()?;
        fs::rename(&self.partial, &self.dest).with_context(|| format!("moving {} into the blob cache", self.digest))?;
        Ok(())
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.expected_size.is_some_and(|s| self.written + buf.len() as u64 > s) {
            return Err(std::io::Error::other(format!("blob {} is longer than the {} bytes its descriptor says", self.digest, self.expected_size.unwrap_or(0))));
        }
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_checks_digest_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let d = Digest::of(b"hello world");
        let mut w = store.writer(&d, Some(11), true).unwrap();
        w.write_all(b"hello wor1d").unwrap();
        let err = w.commit().unwrap_err().to_string();
        assert!(err.contains("does not match its digest"), "{err}");
        assert!(!store.contains(&d));
        assert!(!dir.path().join("blobs/partial").join(d.hex()).exists(), "corrupt bytes are not kept for resuming");

        let mut w = store.writer(&d, Some(11), true).unwrap();
        assert!(w.write_all(b"hello world!").is_err(), "longer than the descriptor");
        store.put(&d, b"hello world").unwrap();
        assert_eq!(store.read(&d).unwrap(), b"hello world");
    }

    #[test]
    fn interrupted_downloads_resume() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let d = Digest::of(b"0123456789");
        let mut w = store.writer(&d, Some(10), true).unwrap();
        w.write_all(b"0123").unwrap();
        let err = w.commit().unwrap_err().to_string();
        assert!(err.contains("is 4 bytes, expected 10"), "{err}");
        let mut w = store.writer(&d, Some(10), true).unwrap();
        assert_eq!(w.offset(), 4);
        w.write_all(b"456789").unwrap();
        w.commit().unwrap();
        assert_eq!(store.read(&d).unwrap(), b"0123456789");
        // Without resume the partial bytes are discarded.
        let d2 = Digest::of(b"abc");
        let mut w = store.writer(&d2, Some(3), true).unwrap();
        w.write_all(b"xy").unwrap();
        drop(w);
        assert_eq!(store.writer(&d2, Some(3), false).unwrap().offset(), 0);
    }
}
