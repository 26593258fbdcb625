//! Deterministic newc ("070701") cpio writer for Linux initramfs images.
//!
//! Everything that could vary between builds (inode numbers, owners, times,
//! entry order, device numbers of the host filesystem) is fixed or derived
//! from the entry list, so the same inputs always give the same bytes.

use anyhow::{Context, Result, bail, ensure};
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// Where a regular file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Read when the archive is written (not when the entry is made).
    Path(PathBuf),
    Bytes(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File(Content),
    /// Target stored verbatim as the link's data, as the kernel expects.
    Symlink(PathBuf),
    CharDev {
        major: u32,
        minor: u32,
    },
}

/// One archive member. `name` is relative to the archive root (no leading
/// `/`, no `..`), e.g. `dev/console`; `mode` holds only permission bits
/// (0o7777), the file type comes from `kind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: PathBuf,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u32,
}

impl Entry {
    /// Owned by root (0:0): an initramfs has no other users to map to.
    pub fn new(name: impl Into<PathBuf>, kind: Kind, mode: u32, mtime: u32) -> Entry {
        Entry {
            name: name.into(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime,
        }
    }
    pub fn dir(name: impl Into<PathBuf>, mode: u32, mtime: u32) -> Entry {
        Entry::new(name, Kind::Dir, mode, mtime)
    }
    pub fn file_bytes(name: impl Into<PathBuf>, bytes: Vec<u8>, mode: u32, mtime: u32) -> Entry {
        Entry::new(name, Kind::File(Content::Bytes(bytes)), mode, mtime)
    }
    pub fn file_path(
        name: impl Into<PathBuf>,
        src: impl Into<PathBuf>,
        mode: u32,
        mtime: u32,
    ) -> Entry {
        Entry::new(name, Kind::File(Content::Path(src.into())), mode, mtime)
    }
    /// Symlink permission bits are meaningless on Linux; 0o777 is what
    /// `ln -s` produces and what cpio tools show.
    pub fn symlink(name: impl Into<PathBuf>, target: impl Into<PathBuf>, mtime: u32) -> Entry {
        Entry::new(name, Kind::Symlink(target.into()), 0o777, mtime)
    }
    pub fn char_dev(
        name: impl Into<PathBuf>,
        major: u32,
        minor: u32,
        mode: u32,
        mtime: u32,
    ) -> Entry {
        Entry::new(name, Kind::CharDev { major, minor }, mode, mtime)
    }
}

/// Write `entries` in the given order, then the `TRAILER!!!` record.
pub fn write_newc(mut out: impl Write, entries: &[Entry]) -> Result<()> {
    let mut offset: u64 = 0;
    for (i, e) in entries.iter().enumerate() {
        check_name(&e.name)?;
        ensure!(
            e.mode & !0o7777 == 0,
            "{}: mode {:o} has bits beyond 0o7777",
            e.name.display(),
            e.mode
        );
        let data: Vec<u8> = match &e.kind {
            Kind::File(Content::Bytes(b)) => b.clone(),
            Kind::File(Content::Path(p)) => fs::read(p)
                .with_context(|| format!("reading {} for {}", p.display(), e.name.display()))?,
            Kind::Symlink(t) => t.as_os_str().as_bytes().to_vec(),
            Kind::Dir | Kind::CharDev { .. } => Vec::new(),
        };
        let (ftype, nlink, rdev) = match e.kind {
            Kind::Dir => (S_IFDIR, 2, (0, 0)),
            Kind::File(_) => (S_IFREG, 1, (0, 0)),
            Kind::Symlink(_) => (S_IFLNK, 1, (0, 0)),
            Kind::CharDev { major, minor } => (S_IFCHR, 1, (major, minor)),
        };
        // Sequential inodes from 1 keep the archive reproducible; with nlink 1
        // on files the kernel never treats two entries as hard links.
        let ino = u32::try_from(i + 1).context("too many cpio entries")?;
        let size = u32::try_from(data.len())
            .with_context(|| format!("{} is too big for newc (4 GiB limit)", e.name.display()))?;
        let hdr = Header {
            ino,
            mode: ftype | e.mode,
            uid: e.uid,
            gid: e.gid,
            nlink,
            mtime: e.mtime,
            size,
            rdev,
        };
        offset += write_record(&mut out, &hdr, e.name.as_os_str().as_bytes(), &data)
            .with_context(|| format!("writing cpio entry {}", e.name.display()))?;
    }
    // GNU cpio and the kernel's gen_init_cpio both write the trailer with
    // nlink 1 and everything else zero.
    let trailer = Header {
        ino: 0,
        mode: 0,
        uid: 0,
        gid: 0,
        nlink: 1,
        mtime: 0,
        size: 0,
        rdev: (0, 0),
    };
    offset +=
        write_record(&mut out, &trailer, b"TRAILER!!!", &[]).context("writing cpio trailer")?;
    // Pad to a 512-byte boundary like GNU cpio and gen_init_cpio; the kernel
    // skips zero padding between concatenated archives.
    let pad = (512 - offset % 512) % 512;
    out.write_all(&vec![0u8; pad as usize])
        .context("writing cpio padding")?;
    out.flush().context("flushing cpio archive")?;
    Ok(())
}

struct Header {
    ino: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: u32,
    size: u32,
    rdev: (u32, u32),
}

/// One header + name + data with newc padding; returns bytes written.
fn write_record(out: &mut impl Write, h: &Header, name: &[u8], data: &[u8]) -> Result<u64> {
    let namesize = name.len() + 1; // includes the NUL
    // devmajor/devminor (the device holding the file) are zeroed: they are
    // host-specific and only used for hard-link detection; check is 0 for
    // newc (070702 would carry a checksum).
    let header = format!(
        "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
        h.ino,
        h.mode,
        h.uid,
        h.gid,
        h.nlink,
        h.mtime,
        h.size,
        0,
        0,
        h.rdev.0,
        h.rdev.1,
        namesize,
        0
    );
    out.write_all(header.as_bytes())?;
    out.write_all(name)?;
    out.write_all(&[0])?;
    // The 110-byte header plus name is padded to a multiple of 4, and so is
    // the data, so every header starts 4-aligned.
    let name_pad = pad4(110 + namesize);
    out.write_all(&[0u8; 3][..name_pad])?;
    out.write_all(data)?;
    let data_pad = pad4(data.len());
    out.write_all(&[0u8; 3][..data_pad])?;
    Ok((110 + namesize + name_pad + data.len() + data_pad) as u64)
}

fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

fn check_name(name: &Path) -> Result<()> {
    let bytes = name.as_os_str().as_bytes();
    ensure!(!bytes.is_empty(), "empty cpio entry name");
    ensure!(
        !bytes.contains(&0),
        "cpio entry name {:?} contains NUL",
        name
    );
    for c in name.components() {
        match c {
            Component::Normal(_) => {}
            // Absolute or `..` names would escape the extraction root; `.`
            // components would make the same file appear under two names.
            _ => bail!(
                "cpio entry name {:?} must be relative without '.' or '..' components",
                name
            ),
        }
    }
    Ok(())
}

/// Entries for everything under `root` (not `root` itself), parents before
/// children, siblings sorted by byte value of their names, all owned by root
/// with mtime `mtime`. Permission bits and symlink targets are preserved;
/// character devices keep their numbers; other special files are an error.
pub fn from_tree(root: &Path, mtime: u32) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    walk(root, Path::new(""), mtime, &mut out)?;
    Ok(out)
}

fn walk(root: &Path, rel: &Path, mtime: u32, out: &mut Vec<Entry>) -> Result<()> {
    let dir = root.join(rel);
    let mut names = Vec::new();
    for de in fs::read_dir(&dir).with_context(|| format!("reading directory {}", dir.display()))? {
        names.push(
            de.with_context(|| format!("reading directory {}", dir.display()))?
                .file_name(),
        );
    }
    // read_dir order depends on the filesystem; sort for reproducibility.
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in names {
        let rel_path = rel.join(&name);
        let full = root.join(&rel_path);
        let md = fs::symlink_metadata(&full).with_context(|| format!("stat {}", full.display()))?;
        let ft = md.file_type();
        let perm = md.mode() & 0o7777;
        if ft.is_dir() {
            out.push(Entry::dir(&rel_path, perm, mtime));
            walk(root, &rel_path, mtime, out)?;
        } else if ft.is_file() {
            out.push(Entry::file_path(&rel_path, &full, perm, mtime));
        } else if ft.is_symlink() {
            let target =
                fs::read_link(&full).with_context(|| format!("readlink {}", full.display()))?;
            out.push(Entry::symlink(&rel_path, target, mtime));
        } else if ft.is_char_device() {
            let rdev = md.rdev();
            let (major, minor) = (rustix::fs::major(rdev), rustix::fs::minor(rdev));
            out.push(Entry::char_dev(&rel_path, major, minor, perm, mtime));
        } else {
            bail!(
                "{}: unsupported file type (block device, fifo or socket)",
                full.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};
    use std::process::{Command, Stdio};

    const MTIME: u32 = 1_700_000_000;

    fn build_tree(root: &Path) {
        fs::create_dir_all(root.join("usr/lib/nested")).unwrap();
        fs::create_dir(root.join("bin")).unwrap();
        fs::write(root.join("init"), b"#!/bin/sh\nexec /bin/sh\n").unwrap();
        fs::set_permissions(root.join("init"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(root.join("usr/lib/nested/empty"), b"").unwrap();
        fs::set_permissions(
            root.join("usr/lib/nested/empty"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        fs::write(root.join("usr/lib/nested/data"), vec![7u8; 5001]).unwrap();
        fs::set_permissions(
            root.join("usr/lib/nested/data"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        fs::set_permissions(root.join("usr/lib"), fs::Permissions::from_mode(0o750)).unwrap();
        symlink("../usr/lib/nested/data", root.join("bin/link")).unwrap();
    }

    fn archive(root: &Path) -> (Vec<Entry>, Vec<u8>) {
        let mut entries = from_tree(root, MTIME).unwrap();
        entries.insert(0, Entry::dir("dev", 0o755, MTIME));
        entries.insert(1, Entry::char_dev("dev/console", 5, 1, 0o600, MTIME));
        let mut buf = Vec::new();
        write_newc(&mut buf, &entries).unwrap();
        (entries, buf)
    }

    fn cpio(args: &[&str], dir: &Path, input: &[u8]) -> std::process::Output {
        let mut child = Command::new("cpio")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run cpio (apt install cpio)");
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }

    #[test]
    fn tree_order_and_determinism() {
        let src = tempfile::tempdir().unwrap();
        build_tree(src.path());
        let (entries, a) = archive(src.path());
        let names: Vec<_> = entries
            .iter()
            .map(|e| e.name.to_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "bin",
                "bin/link",
                "init",
                "usr",
                "usr/lib",
                "usr/lib/nested",
                "usr/lib/nested/data",
                "usr/lib/nested/empty"
            ]
        );
        let (_, b) = archive(src.path());
        assert_eq!(a, b, "two runs differ");
        assert_eq!(a.len() % 512, 0);

        let out = cpio(&["-t"], src.path(), &a);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listed: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
        assert_eq!(listed, names);
    }

    #[test]
    fn gnu_cpio_extracts_it() {
        let uid = Command::new("id").arg("-u").output().unwrap().stdout;
        if uid != b"0\n" {
            eprintln!("skipping: need root to create device nodes");
            return;
        }
        let src = tempfile::tempdir().unwrap();
        build_tree(src.path());
        let (entries, bytes) = archive(src.path());
        let dst = tempfile::tempdir().unwrap();
        let out = cpio(&["-idm", "--no-absolute-filenames"], dst.path(), &bytes);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        for e in &entries {
            let p = dst.path().join(&e.name);
            let md =
                fs::symlink_metadata(&p).unwrap_or_else(|err| panic!("{}: {err}", p.display()));
            assert_eq!((md.uid(), md.gid()), (0, 0), "{}", p.display());
            match &e.kind {
                Kind::Dir => assert!(md.is_dir()),
                Kind::File(Content::Path(srcp)) => {
                    assert!(md.is_file());
                    assert_eq!(
                        fs::read(&p).unwrap(),
                        fs::read(srcp).unwrap(),
                        "{}",
                        p.display()
                    );
                }
                Kind::File(Content::Bytes(_)) => unreachable!(),
                Kind::Symlink(t) => assert_eq!(&fs::read_link(&p).unwrap(), t),
                Kind::CharDev { major, minor } => {
                    assert!(md.file_type().is_char_device());
                    assert_eq!(
                        (rustix::fs::major(md.rdev()), rustix::fs::minor(md.rdev())),
                        (*major, *minor)
                    );
                }
            }
            if !matches!(e.kind, Kind::Symlink(_)) {
                assert_eq!(md.mode() & 0o7777, e.mode, "{}", p.display());
            }
            // GNU cpio -m sets a directory's mtime before creating its
            // children, which then bump it, so only check the others.
            if !matches!(e.kind, Kind::Symlink(_) | Kind::Dir) {
                assert_eq!(md.mtime(), MTIME as i64, "{}", p.display());
            }
        }
        assert_eq!(
            fs::metadata(dst.path().join("usr/lib/nested/empty"))
                .unwrap()
                .len(),
            0
        );
        assert_eq!(
            fs::symlink_metadata(dst.path().join("usr/lib"))
                .unwrap()
                .mode()
                & 0o7777,
            0o750
        );
    }

    #[test]
    fn header_layout() {
        let mut buf = Vec::new();
        write_newc(
            &mut buf,
            &[Entry::file_bytes("a", b"hello".to_vec(), 0o644, 1)],
        )
        .unwrap();
        // 110 + "a\0" = 112 (aligned), data 5 -> padded to 8.
        assert_eq!(&buf[..6], b"070701");
        assert_eq!(&buf[6..14], b"00000001"); // ino
        assert_eq!(&buf[14..22], b"000081A4"); // S_IFREG | 0644
        assert_eq!(&buf[110..112], b"a\0");
        assert_eq!(&buf[112..117], b"hello");
        assert_eq!(&buf[117..120], &[0, 0, 0]);
        assert_eq!(&buf[120..126], b"070701");
        assert_eq!(&buf[230..241], b"TRAILER!!!\0");
    }

    #[test]
    fn rejects_bad_names() {
        for bad in ["/abs", "a/../b", "./a", ""] {
            let r = write_newc(Vec::new(), &[Entry::dir(bad, 0o755, 0)]);
            assert!(r.is_err(), "{bad:?} accepted");
        }
    }
}
