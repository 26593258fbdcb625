//! Unified Kernel Images, assembled with objcopy from systemd's EFI stub.
//!
//! The stub comes from the image's own `systemd-boot-efi` package, so the UKI
//! matches the systemd inside. Sections are placed after the stub's last
//! section at its section alignment; `.linux` goes last because the kernel
//! may grow past its file size when it decompresses in place.

use ciab_core::exec::Cmd;
use anyhow::{bail, Context, Result};
use std::path::Path;

/// What goes into a UKI.
pub struct UkiInput<'a> {
    pub stub: &'a Path,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub cmdline: &'a str,
    pub os_release: &'a str,
    pub uname: &'a str,
    pub work_dir: &'a Path,
    pub output: &'a Path,
    /// PE header timestamp: the image's source date.
    pub timestamp: u32,
}

/// The facts of a PE32+ image that placing new sections needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeLayout {
    pub image_base: u64,
    pub section_alignment: u64,
    /// First RVA past every existing section.
    pub end_rva: u64,
}

fn le16(b: &[u8], at: usize) -> Result<u64> {
    b.get(at..at + 2).map(|s| u16::from_le_bytes([s[0], s[1]]) as u64).context("PE header truncated")
}
fn le32(b: &[u8], at: usize) -> Result<u64> {
    b.get(at..at + 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as u64).context("PE header truncated")
}
fn le64(b: &[u8], at: usize) -> Result<u64> {
    Ok(le32(b, at)? | (le32(b, at + 4)? << 32))
}

/// Reads the layout of a PE32+ file.
pub fn pe_layout(pe: &[u8]) -> Result<PeLayout> {
    if pe.get(0..2) != Some(b"MZ") {
        bail!("not a PE file (no MZ header)");
    }
    let pe_off = le32(pe, 0x3c)? as usize;
    if pe.get(pe_off..pe_off + 4) != Some(b"PE\0\0") {
        bail!("not a PE file (no PE signature)");
    }
    let coff = pe_off + 4;
    let sections = le16(pe, coff + 2)? as usize;
    let opt_size = le16(pe, coff + 16)? as usize;
    let opt = coff + 20;
    if le16(pe, opt)? != 0x20b {
        bail!("not a PE32+ (64-bit) image");
    }
    let image_base = le64(pe, opt + 24)?;
    let section_alignment = le32(pe, opt + 32)?;
    if section_alignment == 0 || !section_alignment.is_power_of_two() {
        bail!("PE section alignment {section_alignment} is not a power of two");
    }
    let table = opt + opt_size;
    let mut end = 0;
    for i in 0..sections {
        let s = table + i * 40;
        let vsize = le32(pe, s + 8)?;
        let va = le32(pe, s + 12)?;
        end = end.max(va + vsize);
    }
    Ok(PeLayout { image_base, section_alignment, end_rva: end })
}

fn align(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// Builds the UKI at `input.output`.
pub fn build(input: &UkiInput) -> Result<()> {
    let stub = std::fs::read(input.stub).with_context(|| format!("reading {}", input.stub.display()))?;
    let layout = pe_layout(&stub).with_context(|| format!("reading the EFI stub {}", input.stub.display()))?;
    let dir = input.work_dir.join("uki");
    std::fs::create_dir_all(&dir)?;
    let osrel = dir.join("os-release");
    let cmdline = dir.join("cmdline");
    let uname = dir.join("uname");
    std::fs::write(&osrel, input.os_release)?;
    std::fs::write(&cmdline, input.cmdline)?;
    std::fs::write(&uname, input.uname)?;
    let sections: [(&str, &Path); 5] = [
        (".osrel", &osrel),
        (".cmdline", &cmdline),
        (".uname", &uname),
        (".initrd", input.initrd),
        (".linux", input.kernel),
    ];
    if let Some(parent) = input.output.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut cmd = Cmd::new("objcopy").package("binutils");
    let mut rva = align(layout.end_rva, layout.section_alignment);
    for (name, path) in sections {
        let size = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.len();
        cmd = cmd
            .arg("--add-section")
            .arg(format!("{name}={}", path.display()))
            .arg("--change-section-vma")
            .arg(format!("{name}={:#x}", layout.image_base + rva));
        rva = align(rva + size, layout.section_alignment);
    }
    cmd.arg(input.stub).arg(input.output).run().context("assembling the unified kernel image")?;
    let mut pe = std::fs::read(input.output).with_context(|| format!("reading {}", input.output.display()))?;
    set_timestamp(&mut pe, input.timestamp)?;
    std::fs::write(input.output, pe).with_context(|| format!("writing {}", input.output.display()))?;
    Ok(())
}

/// objcopy stamps the PE header with the current time; a reproducible image
/// needs the source date instead, and the PE checksum recomputed over it.
pub fn set_timestamp(pe: &mut [u8], timestamp: u32) -> Result<()> {
    pe_layout(pe)?;
    let coff = le32(pe, 0x3c)? as usize + 4;
    pe[coff + 4..coff + 8].copy_from_slice(&timestamp.to_le_bytes());
    let checksum_at = coff + 20 + 64;
    pe[checksum_at..checksum_at + 4].copy_from_slice(&[0; 4]);
    let sum = pe_checksum(pe, checksum_at);
    pe[checksum_at..checksum_at + 4].copy_from_slice(&sum.to_le_bytes());
    Ok(())
}

/// The PE image checksum (as imagehlp's CheckSumMappedFile): a 16-bit
/// one's-complement-style sum of the file, the checksum field skipped, plus the length.
fn pe_checksum(pe: &[u8], checksum_at: usize) -> u32 {
    let mut sum: u64 = 0;
    for (i, chunk) in pe.chunks(2).enumerate() {
        let at = i * 2;
        if at == checksum_at || at == checksum_at + 2 {
            continue;
        }
        let word = u64::from(chunk[0]) | (u64::from(*chunk.get(1).unwrap_or(&0)) << 8);
        sum += word;
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum as u32).wrapping_add(pe.len() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_pe() {
        assert!(pe_layout(b"hello").unwrap_err().to_string().contains("no MZ header"));
    }

    /// A minimal PE32+ header: two sections, 4 KiB alignment.
    fn synthetic_pe() -> Vec<u8> {
        let mut b = vec![0u8; 0x400];
        b[0..2].copy_from_slice(b"MZ");
        b[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
        b[0x80..0x84].copy_from_slice(b"PE\0\0");
        let coff = 0x84;
        b[coff + 2..coff + 4].copy_from_slice(&2u16.to_le_bytes());
        b[coff + 16..coff + 18].copy_from_slice(&240u16.to_le_bytes());
        let opt = coff + 20;
        b[opt..opt + 2].copy_from_slice(&0x20bu16.to_le_bytes());
        b[opt + 24..opt + 32].copy_from_slice(&0x1_4000_0000u64.to_le_bytes());
        b[opt + 32..opt + 36].copy_from_slice(&0x1000u32.to_le_bytes());
        let table = opt + 240;
        for (i, (va, vsize)) in [(0x1000u32, 0x2345u32), (0x4000, 0x10)].iter().enumerate() {
            let s = table + i * 40;
            b[s + 8..s + 12].copy_from_slice(&vsize.to_le_bytes());
            b[s + 12..s + 16].copy_from_slice(&va.to_le_bytes());
        }
        b
    }

    #[test]
    fn timestamp_and_checksum_are_rewritten() {
        let mut pe = synthetic_pe();
        set_timestamp(&mut pe, 0x1234_5678).unwrap();
        assert_eq!(le32(&pe, 0x88).unwrap(), 0x1234_5678);
        let stored = le32(&pe, 0x84 + 20 + 64).unwrap() as u32;
        assert_eq!(stored, pe_checksum(&pe, 0x84 + 20 + 64));
        // The checksum depends on content.
        let mut other = pe.clone();
        other[0x300] = 1;
        assert_ne!(pe_checksum(&other, 0x84 + 20 + 64), stored);
    }

    #[test]
    fn reads_layout_of_a_pe32_plus() {
        let l = pe_layout(&synthetic_pe()).unwrap();
        assert_eq!(l, PeLayout { image_base: 0x1_4000_0000, section_alignment: 0x1000, end_rva: 0x4010 });
        assert_eq!(align(l.end_rva, l.section_alignment), 0x5000);
        let mut pe32 = synthetic_pe();
        pe32[0x84 + 20] = 0x0b;
        pe32[0x84 + 21] = 0x01;
        assert!(pe_layout(&pe32).unwrap_err().to_string().contains("PE32+"));
    }
}
