//! The write engine behind `ciab flash` and the USB installer: an image is
//! its size plus a block map (ranges with sha256); everything outside the map
//! is zero. The engine checks each range against its sha256 *before* writing
//! it, writes only the mapped ranges with large aligned (O_DIRECT) writes,
//! zeroes the gaps by discard where the device can, flushes, then reads every
//! written range back past the page cache and compares again.
//!
//! Reading and hashing run on one thread while the other writes, so a fast
//! target is never waiting on sha256.

use crate::contract::MappedRange;
use crate::sparse::{check_map, data_ranges, gaps, ByteRange};
use anyhow::{bail, Context, Result};
use rustix::fs::{FallocateFlags, OFlags};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Alignment of O_DIRECT buffers, offsets and lengths.
const ALIGN: usize = 4096;

/// What to write: the image's size and its block map.
#[derive(Debug, Clone, Copy)]
pub struct Image<'a> {
    pub size: u64,
    pub map: &'a [MappedRange],
}

impl Image<'_> {
    pub fn mapped_bytes(&self) -> u64 {
        self.map.iter().map(|r| r.length).sum()
    }
}

/// Where the mapped bytes come from.
#[derive(Debug)]
pub enum Source {
    /// A (sparse) image file: each range is at its own offset. Bytes outside
    /// the map must be zero, and are checked to be.
    ImageFile { file: File, path: PathBuf },
    /// The ranges' bytes back to back from `base` (the installer's payload).
    Packed { file: File, path: PathBuf, base: u64 },
}

impl Source {
    pub fn image_file(path: &Path) -> Result<Source> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        Ok(Source::ImageFile { file, path: path.to_path_buf() })
    }

    fn describe(&self) -> String {
        match self {
            Source::ImageFile { path, .. } | Source::Packed { path, .. } => path.display().to_string(),
        }
    }
}

/// What kind of thing is written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// A disk: gaps must be zeroed, old data is everywhere.
    BlockDevice,
    /// A new regular file already sized to the image: its gaps are holes,
    /// which read as zero.
    NewFile,
}

/// The device or file written to.
#[derive(Debug)]
pub struct Target {
    pub path: PathBuf,
    pub kind: TargetKind,
    buffered: File,
    direct: Option<File>,
}

impl Target {
    /// Opens a block device for writing, exclusively (the kernel refuses
    /// O_EXCL while anything has it mounted).
    pub fn block_device(path: &Path) -> Result<Target> {
        let open = |extra: OFlags| {
            OpenOptions::new().read(true).write(true).custom_flags((OFlags::EXCL | extra).bits() as i32).open(path)
        };
        let buffered = open(OFlags::empty()).map_err(|e| match e.raw_os_error() {
            Some(16) => anyhow::anyhow!("{} is busy (mounted or in use by the kernel); unmount it first", path.display()),
            _ => anyhow::Error::new(e).context(format!("opening {} for writing", path.display())),
        })?;
        let direct = open(OFlags::DIRECT).ok();
        Ok(Target { path: path.to_path_buf(), kind: TargetKind::BlockDevice, buffered, direct })
    }

    /// Creates a new file of `size` bytes at `path` (which must not exist:
    /// callers write to a temporary name and rename when verified).
    pub fn new_file(path: &Path, size: u64) -> Result<Target> {
        let buffered = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        buffered.set_len(size).with_context(|| format!("sizing {}", path.display()))?;
        let direct = OpenOptions::new().read(true).write(true).custom_flags(OFlags::DIRECT.bits() as i32).open(path).ok();
        Ok(Target { path: path.to_path_buf(), kind: TargetKind::NewFile, buffered, direct })
    }

    /// The descriptor for an aligned transfer of `len` bytes: O_DIRECT where
    /// the target allows it.
    fn file_for(&self, len: usize) -> &File {
        match &self.direct {
            Some(direct) if len > 0 => direct,
            _ => &self.buffered,
        }
    }

    /// Size of the device (or file) in bytes.
    pub fn size(&self) -> Result<u64> {
        let end = rustix::fs::seek(&self.buffered, rustix::fs::SeekFrom::End(0)).with_context(|| format!("sizing {}", self.path.display()))?;
        Ok(end)
    }
}

/// Phases, in order, for progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Check,
    Zero,
    Write,
    Verify,
}

impl Phase {
    pub fn label(self) -> &'static str {
        match self {
            Phase::Check => "checking the image",
            Phase::Zero => "zeroing unused space",
            Phase::Write => "writing",
            Phase::Verify => "verifying",
        }
    }
}

/// A progress report: `done` of `total` bytes in `phase`.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub phase: Phase,
    pub done: u64,
    pub total: u64,
}

/// What a flash did and how long each part took.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub written: u64,
    pub zeroed: u64,
    /// Bytes of gaps zeroed by discard/write-zeroes rather than written.
    pub discarded: u64,
    pub verified: u64,
    pub check_time: Duration,
    pub write_time: Duration,
    pub verify_time: Duration,
}

/// A zeroed buffer whose usable slice starts on an [`ALIGN`] boundary, as
/// O_DIRECT wants; safe code cannot ask the allocator for alignment, so it
/// over-allocates and slices.
struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let raw = vec![0u8; len + ALIGN];
        let start = (ALIGN - raw.as_ptr() as usize % ALIGN) % ALIGN;
        AlignedBuf { raw, start, len }
    }
    fn slice(&mut self, n: usize) -> &mut [u8] {
        assert!(n <= self.len);
        &mut self.raw[self.start..self.start + n]
    }
}

/// A range's length, and the part of it O_DIRECT can move (the rest, an
/// unaligned tail at the image's end, goes through the page cache).
fn split(r: &MappedRange) -> (usize, usize) {
    let n = r.length as usize;
    (n, n - n % ALIGN)
}

fn range_name(i: usize, r: &MappedRange) -> String {
    format!("range {i} (bytes {}..{}, {} KiB)", r.offset, r.offset + r.length, r.length / 1024)
}

/// Writes `image` from `source` to `target`, then verifies by reading back.
/// Fails naming the range on any mismatch.
pub fn flash(image: &Image, source: &Source, target: &Target, progress: &mut dyn FnMut(Progress)) -> Result<Report> {
    check_map(image.map, image.size).context("the signed block map is malformed")?;
    let target_size = target.size()?;
    if target_size < image.size {
        bail!("{} holds {} bytes; the image needs {}", target.path.display(), target_size, image.size);
    }
    let mut report = Report::default();
    let t = Instant::now();
    check_source_gaps(image, source, progress)?;
    report.check_time = t.elapsed();

    let t = Instant::now();
    if target.kind == TargetKind::BlockDevice {
        let (zeroed, discarded) = zero_gaps(image, target, progress)?;
        report.zeroed = zeroed;
        report.discarded = discarded;
        clear_old_tail(image, target, target_size)?;
    }
    report.written = write_ranges(image, source, target, progress)?;
    target.buffered.sync_all().with_context(|| format!("flushing {}", target.path.display()))?;
    report.write_time = t.elapsed();

    let t = Instant::now();
    report.verified = verify(image, target, progress)?;
    report.verify_time = t.elapsed();
    Ok(report)
}

/// An image file must be zero outside its map: otherwise its digest would
/// not be what the signed manifest says, even though every range matches.
fn check_source_gaps(image: &Image, source: &Source, progress: &mut dyn FnMut(Progress)) -> Result<()> {
    let Source::ImageFile { file, path } = source else { return Ok(()) };
    let len = file.metadata()?.len();
    if len != image.size {
        bail!("{} is {len} bytes; its manifest says {}", path.display(), image.size);
    }
    let holes = gaps(image.map, image.size);
    let data = data_ranges(file).with_context(|| format!("mapping {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let total = image.size;
    for d in &data {
        for h in &holes {
            let start = d.offset.max(h.offset);
            let end = d.end().min(h.end());
            let mut pos = start;
            while pos < end {
                let n = ((end - pos) as usize).min(buf.len());
                file.read_exact_at(&mut buf[..n], pos).with_context(|| format!("reading {}", path.display()))?;
                if let Some(i) = buf[..n].iter().position(|&b| b != 0) {
                    bail!(
                        "{} has data at byte {} where its signed block map says zero: the image was modified after signing",
                        path.display(),
                        pos + i as u64
                    );
                }
                pos += n as u64;
            }
        }
        progress(Progress { phase: Phase::Check, done: d.end(), total });
    }
    Ok(())
}

/// Zeroes the gaps between ranges on a disk: discard-and-zero where the
/// device can (fast, and good for flash media), else write-zeroes.
/// Returns (bytes zeroed, bytes of those done by discard).
fn zero_gaps(image: &Image, target: &Target, progress: &mut dyn FnMut(Progress)) -> Result<(u64, u64)> {
    let holes: Vec<ByteRange> = gaps(image.map, image.size);
    let total: u64 = holes.iter().map(|h| h.length).sum();
    let (mut done, mut discarded) = (0u64, 0u64);
    let zeros = vec![0u8; 4 << 20];
    for h in holes {
        let punch = rustix::fs::fallocate(&target.buffered, FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE, h.offset, h.length);
        if punch.is_ok() {
            discarded += h.length;
        } else if rustix::fs::fallocate(&target.buffered, FallocateFlags::ZERO_RANGE, h.offset, h.length).is_err() {
            let mut pos = h.offset;
            while pos < h.end() {
                let n = ((h.end() - pos) as usize).min(zeros.len());
                target.buffered.write_all_at(&zeros[..n], pos).with_context(|| format!("zeroing {} at byte {pos}", target.path.display()))?;
                pos += n as u64;
            }
        }
        done += h.length;
        progress(Progress { phase: Phase::Zero, done, total });
    }
    Ok((done, discarded))
}

/// Zeroes the device's last MiB when it extends past the image: a disk that
/// held a GPT keeps its backup copy there, and udev/blkid trust that stale
/// table enough to withhold the new partitions' by-partuuid links, so the
/// installed system would not find its ESP. (RAID and LVM metadata kept at
/// the end of a disk go with it.)
fn clear_old_tail(image: &Image, target: &Target, device_size: u64) -> Result<()> {
    const TAIL: u64 = 1 << 20;
    if device_size <= image.size {
        return Ok(());
    }
    let start = (device_size - TAIL).max(image.size);
    let zeros = vec![0u8; (device_size - start) as usize];
    target.buffered.write_all_at(&zeros, start).with_context(|| format!("clearing the end of {}", target.path.display()))
}

/// Reads, hashes and checks ranges on a second thread; writes them here.
fn write_ranges(image: &Image, source: &Source, target: &Target, progress: &mut dyn FnMut(Progress)) -> Result<u64> {
    let total = image.mapped_bytes();
    let max = image.map.iter().map(|r| r.length as usize).max().unwrap_or(0);
    let (full_tx, full_rx) = mpsc::sync_channel::<Result<(usize, AlignedBuf)>>(2);
    let (empty_tx, empty_rx) = mpsc::channel::<AlignedBuf>();
    for _ in 0..3 {
        let _ = empty_tx.send(AlignedBuf::new(max.next_multiple_of(ALIGN)));
    }
    // The closure owns the writer's channel ends: when a write fails they
    // drop, so the reader's next send or recv fails and it stops instead of
    // waiting forever for buffers that will not come back.
    std::thread::scope(move |s| -> Result<u64> {
        s.spawn(move || {
            let mut packed_pos = 0u64;
            for (i, r) in image.map.iter().enumerate() {
                let Ok(mut buf) = empty_rx.recv() else { return };
                let n = r.length as usize;
                let (file, at) = match source {
                    Source::ImageFile { file, .. } => (file, r.offset),
                    Source::Packed { file, base, .. } => (file, base + packed_pos),
                };
                packed_pos += r.length;
                let item = file
                    .read_exact_at(buf.slice(n), at)
                    .with_context(|| format!("reading {} of {}", range_name(i, r), source.describe()))
                    .and_then(|()| {
                        let digest = hex::encode(Sha256::digest(buf.slice(n)));
                        if digest != r.sha256 {
                            bail!(
                                "{} of {} has sha256 {digest}, the signed map says {}: the image is corrupt or was modified; nothing of this range was written",
                                range_name(i, r),
                                source.describe(),
                                r.sha256
                            );
                        }
                        Ok((i, buf))
                    });
                let failed = item.is_err();
                if full_tx.send(item).is_err() || failed {
                    return;
                }
            }
        });
        let mut done = 0u64;
        for _ in 0..image.map.len() {
            let (i, mut buf) = full_rx.recv().context("the reader thread stopped")??;
            let r = &image.map[i];
            write_range(target, i, r, &mut buf)?;
            done += r.length;
            progress(Progress { phase: Phase::Write, done, total });
            let _ = empty_tx.send(buf);
        }
        Ok(done)
    })
}

fn write_range(target: &Target, i: usize, r: &MappedRange, buf: &mut AlignedBuf) -> Result<()> {
    let fail = |e: std::io::Error| {
        let hint = if e.raw_os_error() == Some(5) || e.raw_os_error() == Some(6) { " (was the device removed?)" } else { "" };
        anyhow::Error::new(e).context(format!("writing {} to {}{hint}", range_name(i, r), target.path.display()))
    };
    let (n, aligned) = split(r);
    target.file_for(aligned).write_all_at(buf.slice(aligned), r.offset).map_err(fail)?;
    if aligned < n {
        target.buffered.write_all_at(&buf.slice(n)[aligned..], r.offset + aligned as u64).map_err(fail)?;
    }
    Ok(())
}

/// Reads every range back from the target, past the page cache, and checks
/// its sha256. Returns the bytes verified. Several ranges are in flight at
/// once (a queue depth the device can use, hashing beside the reads).
fn verify(image: &Image, target: &Target, progress: &mut dyn FnMut(Progress)) -> Result<u64> {
    const READERS: usize = 3;
    let total = image.mapped_bytes();
    // Without O_DIRECT, drop the cached pages so the read goes to the medium.
    if target.direct.is_none() {
        let _ = rustix::fs::fadvise(&target.buffered, 0, image.size, rustix::fs::Advice::DontNeed);
    }
    let max = image.map.iter().map(|r| r.length as usize).max().unwrap_or(0);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let (tx, rx) = mpsc::channel::<Result<u64>>();
    std::thread::scope(|s| -> Result<u64> {
        for _ in 0..READERS {
            let (tx, next) = (tx.clone(), &next);
            s.spawn(move || {
                let mut buf = AlignedBuf::new(max.next_multiple_of(ALIGN));
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(r) = image.map.get(i) else { return };
                    let result = verify_range(target, i, r, &mut buf).map(|()| r.length);
                    let failed = result.is_err();
                    if tx.send(result).is_err() || failed {
                        // Let the others stop at their next range.
                        next.store(image.map.len(), std::sync::atomic::Ordering::Relaxed);
                        return;
                    }
                }
            });
        }
        drop(tx);
        let mut done = 0;
        for result in rx {
            done += result?;
            progress(Progress { phase: Phase::Verify, done, total });
        }
        if done != total {
            bail!("verify stopped after {done} of {total} bytes");
        }
        Ok(done)
    })
}

fn verify_range(target: &Target, i: usize, r: &MappedRange, buf: &mut AlignedBuf) -> Result<()> {
    let read_fail = |e: std::io::Error| anyhow::Error::new(e).context(format!("reading back {} from {}", range_name(i, r), target.path.display()));
    let (n, aligned) = split(r);
    target.file_for(aligned).read_exact_at(buf.slice(aligned), r.offset).map_err(read_fail)?;
    if aligned < n {
        target.buffered.read_exact_at(&mut buf.slice(n)[aligned..], r.offset + aligned as u64).map_err(read_fail)?;
    }
    let digest = hex::encode(Sha256::digest(buf.slice(n)));
    if digest != r.sha256 {
        bail!(
            "verify failed: {} on {} reads back with sha256 {digest}, expected {}; the medium does not hold what was written",
            range_name(i, r),
            target.path.display(),
            r.sha256
        );
    }
    Ok(())
}

/// Reads a target back and checks it against a map without writing: what
/// the tests (and `ciab flash --verify-only`) use to check a medium.
pub fn verify_only(image: &Image, target: &Target) -> Result<u64> {
    check_map(image.map, image.size)?;
    verify(image, target, &mut |_| {})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sparse::block_map;

    fn image_file(dir: &Path) -> (PathBuf, Vec<MappedRange>) {
        let path = dir.join("image.raw");
        let f = File::create(&path).unwrap();
        f.set_len(48 << 20).unwrap();
        f.write_all_at(&[0x55; 512], 510).unwrap();
        f.write_all_at(&vec![0xA5; 20 << 20], 3 << 20).unwrap();
        f.write_all_at(&[9u8; 100], (48 << 20) - 100).unwrap();
        let map = block_map(&path).unwrap();
        (path, map)
    }

    #[test]
    fn writes_a_new_file_equal_to_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let (path, map) = image_file(dir.path());
        let image = Image { size: 48 << 20, map: &map };
        let out = dir.path().join("out.img");
        let target = Target::new_file(&out, image.size).unwrap();
        let mut phases = Vec::new();
        let report = flash(&image, &Source::image_file(&path).unwrap(), &target, &mut |p| phases.push(p.phase)).unwrap();
        assert_eq!(report.written, image.mapped_bytes());
        assert_eq!(report.verified, image.mapped_bytes());
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&path).unwrap());
        assert!(phases.contains(&Phase::Write) && phases.contains(&Phase::Verify));
    }

    #[test]
    fn a_packed_source_writes_the_same_image() {
        let dir = tempfile::tempdir().unwrap();
        let (path, map) = image_file(dir.path());
        let src = std::fs::read(&path).unwrap();
        let mut packed = vec![0xEEu8; 7]; // a header the payload skips
        for r in &map {
            packed.extend_from_slice(&src[r.offset as usize..(r.offset + r.length) as usize]);
        }
        let packed_path = dir.path().join("payload");
        std::fs::write(&packed_path, &packed).unwrap();
        let source = Source::Packed { file: File::open(&packed_path).unwrap(), path: packed_path, base: 7 };
        let out = dir.path().join("out.img");
        let image = Image { size: 48 << 20, map: &map };
        flash(&image, &source, &Target::new_file(&out, image.size).unwrap(), &mut |_| {}).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), src);
    }

    #[test]
    fn a_modified_range_is_refused_before_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let (path, map) = image_file(dir.path());
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0xFF], (3 << 20) + 12345).unwrap();
        let image = Image { size: 48 << 20, map: &map };
        let out = dir.path().join("out.img");
        let err = flash(&image, &Source::image_file(&path).unwrap(), &Target::new_file(&out, image.size).unwrap(), &mut |_| {})
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("range 1 (bytes 3145728..") && msg.contains("nothing of this range was written"), "{msg}");
        // The bad range never reached the target.
        let mut b = [1u8; 1];
        File::open(&out).unwrap().read_exact_at(&mut b, (3 << 20) + 12345).unwrap();
        assert_eq!(b[0], 0);
    }

    #[test]
    fn data_outside_the_map_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, map) = image_file(dir.path());
        OpenOptions::new().write(true).open(&path).unwrap().write_all_at(&[1], 30 << 20).unwrap();
        let image = Image { size: 48 << 20, map: &map };
        let out = dir.path().join("out.img");
        let err = flash(&image, &Source::image_file(&path).unwrap(), &Target::new_file(&out, image.size).unwrap(), &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("data at byte {}", 30 << 20)), "{err}");
    }

    #[test]
    fn verify_catches_a_changed_byte_on_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let (path, map) = image_file(dir.path());
        let image = Image { size: 48 << 20, map: &map };
        let out = dir.path().join("out.img");
        flash(&image, &Source::image_file(&path).unwrap(), &Target::new_file(&out, image.size).unwrap(), &mut |_| {}).unwrap();
        OpenOptions::new().write(true).open(&out).unwrap().write_all_at(&[0], (20 << 20) + 1).unwrap();
        let target = Target { path: out.clone(), kind: TargetKind::NewFile, buffered: File::open(&out).unwrap(), direct: None };
        let err = verify_only(&image, &target).unwrap_err().to_string();
        assert!(err.contains("verify failed: range 2 (bytes 19922944.."), "{err}");
    }

    #[test]
    fn a_too_small_target_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, map) = image_file(dir.path());
        let image = Image { size: 48 << 20, map: &map };
        let out = dir.path().join("small.img");
        let err = flash(&image, &Source::image_file(&path).unwrap(), &Target::new_file(&out, 1 << 20).unwrap(), &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("holds 1048576 bytes; the image needs 50331648"), "{err}");
    }
}
