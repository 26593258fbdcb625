//! qcow2 images: the raw disk converted by `qemu-img` with zstd compression
//! (holes stay unallocated), and the virtual size a downloaded qcow2 guest
//! image declares.

use anyhow::{bail, Context as _, Result};
use ciab_core::exec::Cmd;
use std::path::Path;

/// Writes `out`, a zstd-compressed qcow2 of the raw disk image `raw`.
pub fn convert(raw: &Path, out: &Path) -> Result<()> {
    Cmd::new("qemu-img")
        .package("qemu-utils")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2", "-c", "-o", "compression_type=zstd"])
        .arg(raw)
        .arg(out)
        .run()
        .context("converting the raw disk to qcow2")?;
    Ok(())
}

/// A qcow2 file's virtual disk size (its header's `size` field).
pub fn virtual_size(path: &Path) -> Result<u64> {
    use std::io::Read as _;
    let mut header = [0u8; 32];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .with_context(|| format!("reading the header of {}", path.display()))?;
    if &header[..4] != b"QFI\xfb" {
        bail!("{} is not a qcow2 image, but the spec says disk_format = \"qcow2\"", path.display());
    }
    Ok(u64::from_be_bytes(header[24..32].try_into()?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn qcow2_virtual_size_is_read_from_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("x.qcow2");
        ciab_core::exec::Cmd::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&q).arg("3G").run().unwrap();
        assert_eq!(super::virtual_size(&q).unwrap(), 3 << 30);
        let raw = dir.path().join("x.raw");
        std::fs::write(&raw, vec![0u8; 4096]).unwrap();
        let err = format!("{:#}", super::virtual_size(&raw).unwrap_err());
        assert!(err.contains("is not a qcow2 image"), "{err}");
    }
}
