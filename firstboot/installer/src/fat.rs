//! FAT filesystems read and written in place on a block device, without
//! mounting (no vfat/nls modules needed): the stick's CIAB-CONFIG partition,
//! the installer's EFI partition, and the installed disk's ESP.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// A byte window `[start, start + len)` of a file or device, as a stream.
pub struct Window {
    file: File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Window {
    pub fn new(file: File, start: u64, len: u64) -> Window {
        Window { file, start, len, pos: 0 }
    }
}

impl Read for Window {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        let n = self.file.read_at(&mut buf[..n], self.start + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for Window {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        if n == 0 && !buf.is_empty() {
            return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "past the end of the partition"));
        }
        let n = self.file.write_at(&buf[..n], self.start + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

impl Seek for Window {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => p as i128,
            SeekFrom::End(d) => self.len as i128 + d as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if pos < 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start"));
        }
        self.pos = pos as u64;
        Ok(self.pos)
    }
}

/// The volume label of a FAT filesystem at the start of `dev`, from its boot
/// sector; `None` when `dev` holds no FAT filesystem.
pub fn label(dev: &Path) -> Option<String> {
    let f = File::open(dev).ok()?;
    let mut b = [0u8; 512];
    f.read_exact_at(&mut b, 0).ok()?;
    if b[510..512] != [0x55, 0xAA] {
        return None;
    }
    let at = if &b[0x52..0x57] == b"FAT32" {
        0x47
    } else if &b[0x36..0x39] == b"FAT" {
        0x2B
    } else {
        return None;
    };
    Some(String::from_utf8_lossy(&b[at..at + 11]).trim().to_owned())
}

fn open_fs(dev: &Path, start: u64, len: u64, write: bool) -> Result<fatfs::FileSystem<Window>> {
    let file = std::fs::OpenOptions::new().read(true).write(write).open(dev).with_context(|| format!("opening {}", dev.display()))?;
    let len = if len == 0 { rustix::fs::seek(&file, rustix::fs::SeekFrom::End(0))? } else { len };
    fatfs::FileSystem::new(Window::new(file, start, len), fatfs::FsOptions::new()).with_context(|| format!("{} holds no FAT filesystem at byte {start}", dev.display()))
}

/// Reads `path` (`ciab/site.toml`) from the FAT filesystem filling `dev`.
/// `Ok(None)` when the file does not exist.
pub fn read_file(dev: &Path, path: &str) -> Result<Option<String>> {
    let fs = open_fs(dev, 0, 0, false)?;
    let mut f = match fs.root_dir().open_file(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {path} on {}", dev.display())),
    };
    let mut text = String::new();
    f.read_to_string(&mut text).with_context(|| format!("reading {path} on {}", dev.display()))?;
    Ok(Some(text))
}

/// Writes `path` (in an existing or new directory `dir`) into the FAT
/// filesystem at byte `start` of `dev`.
pub fn write_file(dev: &Path, start: u64, len: u64, dir: &str, name: &str, data: &[u8]) -> Result<()> {
    if data.is_empty() {
        bail!("refusing to write an empty {dir}/{name}");
    }
    let fs = open_fs(dev, start, len, true)?;
    let d = match fs.root_dir().open_dir(dir) {
        Ok(d) => d,
        Err(_) => fs.root_dir().create_dir(dir).with_context(|| format!("creating {dir} on {}", dev.display()))?,
    };
    let mut f = d.create_file(name).with_context(|| format!("creating {dir}/{name} on {}", dev.display()))?;
    f.truncate()?;
    f.write_all(data)?;
    f.flush()?;
    drop(f);
    drop(d);
    fs.unmount().with_context(|| format!("closing the filesystem on {}", dev.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ciab_core::exec::Cmd;

    #[test]
    fn reads_and_writes_a_file_in_a_fat_image_at_an_offset() {
        let dir = tempfile::tempdir().unwrap();
        let fat = dir.path().join("fat.img");
        if Cmd::new("mkfs.vfat").args(["-C", "-n", "CIAB-CONFIG"]).arg(&fat).arg("8192").run().is_err() {
            eprintln!("mkfs.vfat missing (dosfstools); skipping");
            return;
        }
        assert_eq!(label(&fat).as_deref(), Some("CIAB-CONFIG"));
        assert_eq!(read_file(&fat, "site.toml").unwrap(), None);
        // The same filesystem 1 MiB into a "disk", as an ESP sits in a GPT.
        let disk = dir.path().join("disk.img");
        let mut image = vec![0u8; 1 << 20];
        image.extend(std::fs::read(&fat).unwrap());
        std::fs::write(&disk, &image).unwrap();
        write_file(&disk, 1 << 20, 8192 * 1024, "ciab", "site.toml", b"hostname = \"box7\"\n").unwrap();
        let back = std::fs::read(&disk).unwrap();
        std::fs::write(&fat, &back[1 << 20..]).unwrap();
        assert_eq!(read_file(&fat, "ciab/site.toml").unwrap().as_deref(), Some("hostname = \"box7\"\n"));
        // mtools, an independent FAT implementation, sees the same file.
        let out = Cmd::new("mtype").arg("-i").arg(&fat).arg("::/ciab/site.toml").run();
        if let Ok(text) = out {
            assert_eq!(text, "hostname = \"box7\"\n");
        }
        assert_eq!(label(&disk), None, "sector 0 of the disk is not a FAT boot sector");
    }
}
