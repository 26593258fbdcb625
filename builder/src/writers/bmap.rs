//! bmaptool-compatible block map files (bmap format 2.0).
//!
//! `render` reproduces, byte for byte, what `bmaptool create` (bmap-tools 3.6,
//! `BmapCreate.py`) writes for an image whose mapped blocks are the given
//! ranges, so images we ship can be flashed with stock `bmaptool copy` and our
//! files diff cleanly against bmaptool's own.

use anyhow::{Context, Result, bail, ensure};
use sha2::{Digest, Sha256};

/// bmaptool takes the block size from the image's filesystem; we always
/// describe images in 4 KiB blocks, which is what ext4/xfs hosts give it too.
pub const BLOCK_SIZE: u64 = 4096;

/// Length of a hex sha256 digest; the file checksum field is this many '0's
/// while the file checksum is computed.
const CHECKSUM_HEX_LEN: usize = 64;

pub use ciab_core::contract::MappedRange;

/// The contents of a parsed bmap file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bmap {
    pub image_size: u64,
    pub block_size: u64,
    pub ranges: Vec<MappedRange>,
}

// Verbatim copy of _BMAP_START_TEMPLATE from BmapCreate.py: the comments are
// part of what BmapFileChecksum covers, so they must match to the byte for the
// output to be identical to bmaptool's.
const START_COMMENT: &str = r#"<?xml version="1.0" ?>
<!-- This file contains the block map for an image file, which is basically
     a list of useful (mapped) block numbers in the image file. In other words,
     it lists only those blocks which contain data (boot sector, partition
     table, file-system metadata, files, directories, extents, etc). These
     blocks have to be copied to the target device. The other blocks do not
     contain any useful data and do not have to be copied to the target
     device.

     The block map an optimization which allows to copy or flash the image to
     the image quicker than copying of flashing the entire image. This is
     because with bmap less data is copied: <MappedBlocksCount> blocks instead
     of <BlocksCount> blocks.

     Besides the machine-readable data, this file contains useful commentaries
     which contain human-readable information like image size, percentage of
     mapped data, etc.

     The 'version' attribute is the block map file format version in the
     'major.minor' format. The version major number is increased whenever an
     incompatible block map format change is made. The minor number changes
     in case of minor backward-compatible changes. -->

"#;

/// Render a bmap file for an image of `image_size` bytes whose data lives in
/// `ranges` (sorted, non-overlapping, 4096-aligned offsets).
///
/// Each range becomes one `<Range>`; bmaptool merges adjacent extents, so pass
/// merged ranges to get output identical to `bmaptool create`.
pub fn render(image_size: u64, ranges: &[MappedRange]) -> Result<String> {
    // bmaptool refuses zero-sized images too.
    ensure!(
        image_size > 0,
        "cannot create a bmap for a zero-sized image"
    );
    let blocks_cnt = image_size.div_ceil(BLOCK_SIZE);

    let mut mapped_cnt: u64 = 0;
    let mut prev_end: u64 = 0;
    for (i, r) in ranges.iter().enumerate() {
        let end = r.offset.checked_add(r.length).with_context(|| {
            format!(
                "range {i} overflows: offset {} length {}",
                r.offset, r.length
            )
        })?;
        ensure!(r.length > 0, "range {i} at offset {} is empty", r.offset);
        ensure!(
            r.offset % BLOCK_SIZE == 0,
            "range {i}: offset {} is not {BLOCK_SIZE}-aligned",
            r.offset
        );
        ensure!(
            r.offset >= prev_end,
            "range {i} at offset {} overlaps or is out of order",
            r.offset
        );
        ensure!(
            end <= image_size,
            "range {i} ends at {end}, beyond the image size {image_size}"
        );
        // Only the final partial block of the image may be short: a short
        // block mid-image would make the checksum cover fewer bytes than
        // bmaptool copy reads and verifies.
        ensure!(
            r.length % BLOCK_SIZE == 0 || end == image_size,
            "range {i} (offset {}, length {}) ends mid-block before the end of the image",
            r.offset,
            r.length
        );
        ensure!(
            r.sha256.len() == CHECKSUM_HEX_LEN
                && r.sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
            "range {i}: checksum {:?} is not a lowercase hex sha256",
            r.sha256
        );
        mapped_cnt += r.length.div_ceil(BLOCK_SIZE);
        prev_end = end;
    }

    let image_size_human = human_size(image_size);
    let mut xml = String::from(START_COMMENT);
    xml += "<bmap version=\"2.0\">\n";
    xml += &format!("    <!-- Image size in bytes: {image_size_human} -->\n");
    xml += &format!("    <ImageSize> {image_size} </ImageSize>\n\n");
    xml += "    <!-- Size of a block in bytes -->\n";
    xml += &format!("    <BlockSize> {BLOCK_SIZE} </BlockSize>\n\n");
    xml += "    <!-- Count of blocks in the image file -->\n";
    xml += &format!("    <BlocksCount> {blocks_cnt} </BlocksCount>\n\n");
    xml += "    <!-- Count of mapped blocks: ";

    // bmaptool writes space placeholders sized for the *image* size and later
    // overwrites them in place (seek + write) with the real values, so the
    // leftover padding (and, when the mapped size string is longer than the
    // image size string, the clobbered spaces) are part of the format.
    let pos1 = xml.len();
    xml += &format!(
        "{} or {}   -->\n",
        " ".repeat(image_size_human.len()),
        " ".repeat("100.0%".len())
    );
    xml += "    <MappedBlocksCount> ";
    let pos2 = xml.len();
    xml += &format!(
        "{} </MappedBlocksCount>\n\n",
        " ".repeat(blocks_cnt.to_string().len())
    );
    xml += "    <!-- Type of checksum used in this file -->\n";
    xml += "    <ChecksumType> sha256 </ChecksumType>\n\n";
    xml += "    <!-- The checksum of this bmap file. When it is calculated, the value of\n";
    xml += "         the checksum has be zero (all ASCII \"0\" symbols).  -->\n";
    xml += "    <BmapFileChecksum> ";
    let chksum_pos = xml.len();
    xml += &"0".repeat(CHECKSUM_HEX_LEN);
    xml += " </BmapFileChecksum>\n\n";
    xml += "    <!-- The block map which consists of elements which may either be a\n";
    xml += "         range of blocks or a single block. The 'chksum' attribute\n";
    xml += "         (if present) is the checksum of this blocks range. -->\n";
    xml += "    <BlockMap>\n";
    for r in ranges {
        let first = r.offset / BLOCK_SIZE;
        let last = (r.offset + r.length).div_ceil(BLOCK_SIZE) - 1;
        // bmaptool writes a single block as "N", not "N-N".
        if first == last {
            xml += &format!("        <Range chksum=\"{}\"> {first} </Range>\n", r.sha256);
        } else {
            xml += &format!(
                "        <Range chksum=\"{}\"> {first}-{last} </Range>\n",
                r.sha256
            );
        }
    }
    xml += "    </BlockMap>\n";
    xml += "</bmap>\n";

    // Python's `(mapped_cnt * 100.0) / blocks_cnt` with "%.1f": both Python
    // and Rust round the exact binary value half-to-even, so this matches.
    let mapped_percent = (mapped_cnt as f64 * 100.0) / blocks_cnt as f64;
    let mapped_human = human_size(mapped_cnt * BLOCK_SIZE);
    overwrite(
        &mut xml,
        pos1,
        &format!("{mapped_human} or {mapped_percent:.1}%"),
    )?;
    overwrite(&mut xml, pos2, &mapped_cnt.to_string())?;

    let chksum = file_checksum(&xml);
    overwrite(&mut xml, chksum_pos, &chksum)?;
    Ok(xml)
}

/// Parse a bmap file (as written by `render` or `bmaptool create`), verifying
/// its BmapFileChecksum the way `bmaptool copy` does.
pub fn parse(text: &str) -> Result<Bmap> {
    let doc = roxmltree::Document::parse(text).context("bmap file is not well-formed XML")?;
    let root = doc.root_element();
    ensure!(
        root.has_tag_name("bmap"),
        "root element is <{}>, expected <bmap>",
        root.tag_name().name()
    );
    let version = root
        .attribute("version")
        .context("<bmap> has no version attribute")?;
    // Format 1.4 is identical to 2.0 (a numbering mistake in bmap-tools 3.0).
    ensure!(
        version.starts_with("2.") || version == "1.4",
        "unsupported bmap format version {version:?} (need 2.x)"
    );

    let field = |name: &str| -> Result<&str> {
        root.children()
            .find(|n| n.has_tag_name(name))
            .with_context(|| format!("bmap file has no <{name}>"))
            .map(|n| n.text().unwrap_or("").trim())
    };
    let number = |name: &str| -> Result<u64> {
        let t = field(name)?;
        t.parse()
            .with_context(|| format!("<{name}> {t:?} is not a number"))
    };

    let cs_type = field("ChecksumType")?;
    ensure!(
        cs_type == "sha256",
        "unsupported checksum type {cs_type:?} (only sha256)"
    );

    // Verify before trusting anything else. Like bmaptool: replace the first
    // occurrence of the stored checksum in the raw text with zeros and hash.
    let stored = field("BmapFileChecksum")?;
    ensure!(
        stored.len() == CHECKSUM_HEX_LEN,
        "BmapFileChecksum {stored:?} is not a sha256"
    );
    let pos = text
        .find(stored)
        .context("BmapFileChecksum value not found in the raw text")?;
    let mut zeroed = text.to_owned();
    overwrite(&mut zeroed, pos, &"0".repeat(CHECKSUM_HEX_LEN))?;
    let computed = file_checksum(&zeroed);
    ensure!(
        computed == stored,
        "bmap file checksum mismatch: computed {computed}, file says {stored}"
    );

    let image_size = number("ImageSize")?;
    let block_size = number("BlockSize")?;
    let blocks_cnt = number("BlocksCount")?;
    let mapped_cnt = number("MappedBlocksCount")?;
    ensure!(block_size > 0, "BlockSize is zero");
    ensure!(
        image_size.div_ceil(block_size) == blocks_cnt,
        "inconsistent bmap: {image_size} bytes is not {blocks_cnt} blocks of {block_size}"
    );

    let block_map = root
        .children()
        .find(|n| n.has_tag_name("BlockMap"))
        .context("bmap file has no <BlockMap>")?;
    let mut ranges = Vec::new();
    let mut seen_blocks: u64 = 0;
    for el in block_map.children().filter(|n| n.has_tag_name("Range")) {
        let spec = el.text().unwrap_or("").trim();
        let (first, last) = match spec.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (spec, spec),
        };
        let first: u64 = first
            .parse()
            .with_context(|| format!("bad block range {spec:?}"))?;
        let last: u64 = last
            .parse()
            .with_context(|| format!("bad block range {spec:?}"))?;
        ensure!(
            first <= last && last < blocks_cnt,
            "block range {spec:?} outside 0-{}",
            blocks_cnt - 1
        );
        let sha256 = el
            .attribute("chksum")
            .with_context(|| format!("range {spec:?} has no chksum attribute"))?
            .to_owned();
        let offset = first * block_size;
        // The last block of the image may be partial; the range then covers
        // only the bytes that exist, which is also what its checksum covers.
        let end = ((last + 1) * block_size).min(image_size);
        ranges.push(MappedRange {
            offset,
            length: end - offset,
            sha256,
        });
        seen_blocks += last - first + 1;
    }
    if seen_blocks != mapped_cnt {
        bail!("MappedBlocksCount says {mapped_cnt} but the ranges cover {seen_blocks} blocks");
    }
    Ok(Bmap {
        image_size,
        block_size,
        ranges,
    })
}

/// sha256 of the whole file text as bmaptool computes it (with the checksum
/// field already zeroed by the caller).
fn file_checksum(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Emulates bmaptool's seek-and-write on its output file: replace bytes in
/// place starting at `pos`, never inserting.
fn overwrite(s: &mut String, pos: usize, with: &str) -> Result<()> {
    let end = pos + with.len();
    ensure!(
        end <= s.len(),
        "internal error: overwrite at {pos} past end of bmap text"
    );
    s.replace_range(pos..end, with);
    Ok(())
}

/// `human_size` from BmapHelpers.py, including its repeated float division
/// (the rounding of the last digit depends on it).
fn human_size(size: u64) -> String {
    if size == 1 {
        return "1 byte".into();
    }
    if size < 512 {
        return format!("{size} bytes");
    }
    let mut s = size as f64;
    for unit in ["KiB", "MiB", "GiB", "TiB"] {
        s /= 1024.0;
        if s < 1024.0 {
            return format!("{s:.1} {unit}");
        }
    }
    format!("{s:.1} EiB")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::FileExt;
    use std::path::Path;
    use std::process::Command;

    fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    /// Content-based mapping, as ciab does it: 4 KiB blocks holding any
    /// non-zero byte, merged into runs.
    fn ranges_of(data: &[u8]) -> Vec<MappedRange> {
        let mut out: Vec<MappedRange> = Vec::new();
        let mut run: Option<(usize, usize)> = None;
        let bs = BLOCK_SIZE as usize;
        let nblocks = data.len().div_ceil(bs);
        for b in 0..=nblocks {
            let nonzero = b < nblocks
                && data[b * bs..((b + 1) * bs).min(data.len())]
                    .iter()
                    .any(|&x| x != 0);
            match (nonzero, run) {
                (true, None) => run = Some((b * bs, 0)),
                (false, Some((start, _))) => {
                    let end = (b * bs).min(data.len());
                    out.push(MappedRange {
                        offset: start as u64,
                        length: (end - start) as u64,
                        sha256: sha(&data[start..end]),
                    });
                    run = None;
                }
                _ => {}
            }
        }
        out
    }

    /// Rewrite the BmapFileChecksum of edited text so only the edit is wrong.
    fn reseal(text: &str) -> String {
        let doc = roxmltree::Document::parse(text).unwrap();
        let old = doc
            .descendants()
            .find(|n| n.has_tag_name("BmapFileChecksum"))
            .unwrap()
            .text()
            .unwrap()
            .trim()
            .to_owned();
        let pos = text.find(&old).unwrap();
        let mut t = text.to_owned();
        overwrite(&mut t, pos, &"0".repeat(64)).unwrap();
        let c = file_checksum(&t);
        overwrite(&mut t, pos, &c).unwrap();
        t
    }

    /// A sparse image where only non-zero bytes are ever written, so that
    /// FIEMAP (bmaptool create) and content scanning agree on the mapping.
    fn make_image(path: &Path) -> Vec<u8> {
        let size: u64 = 10 * 1024 * 1024 + 1234; // ends mid-block
        let f = fs::File::create(path).unwrap();
        f.set_len(size).unwrap();
        let mut img = vec![0u8; size as usize];
        let mut put = |off: u64, len: usize, seed: u8| {
            let buf: Vec<u8> = (0..len)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
                .collect();
            f.write_all_at(&buf, off).unwrap();
            img[off as usize..off as usize + len].copy_from_slice(&buf);
        };
        put(0, 512, 1); // one block, partially written
        put(8192 + 100, 3 * 4096, 2); // straddles 4 blocks: 2..=5
        put(1024 * 1024, 64 * 1024, 3); // aligned 16 blocks
        put(5 * 1024 * 1024 + 4000, 200, 4); // crosses one block boundary
        put(size - 1234 - 4096 + 7, 4096 + 1227, 5); // last two blocks, through EOF
        drop(f);
        img
    }

    fn bmaptool(args: &[&str]) -> std::process::Output {
        Command::new("bmaptool")
            .args(args)
            .output()
            .expect("run bmaptool")
    }

    #[test]
    fn human_size_matches_python() {
        assert_eq!(human_size(1), "1 byte");
        assert_eq!(human_size(511), "511 bytes");
        assert_eq!(human_size(512), "0.5 KiB");
        assert_eq!(human_size(1048575), "1024.0 KiB");
        assert_eq!(human_size(10 * 1024 * 1024 + 1234), "10.0 MiB");
        assert_eq!(human_size(2304), "2.2 KiB"); // 2.25 rounds half-even
    }

    #[test]
    fn round_trip() {
        let img: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i % 251) as u8 + 1).collect();
        let ranges = vec![
            MappedRange {
                offset: 0,
                length: 4096,
                sha256: sha(&img[..4096]),
            },
            MappedRange {
                offset: 8192,
                length: 4196,
                sha256: sha(&img[8192..]),
            },
        ];
        let text = render(img.len() as u64, &ranges).unwrap();
        assert!(
            text.contains("<Range chksum=\"")
                && text.contains("> 0 </Range>")
                && text.contains("> 2-3 </Range>")
        );
        let b = parse(&text).unwrap();
        assert_eq!(
            b,
            Bmap {
                image_size: img.len() as u64,
                block_size: 4096,
                ranges
            }
        );

        // Any edit without resealing must be caught by the file checksum.
        let bad = text.replace("<ImageSize> 12388 ", "<ImageSize> 12389 ");
        assert_ne!(bad, text);
        assert!(format!("{:#}", parse(&bad).unwrap_err()).contains("checksum mismatch"));
    }

    #[test]
    fn rejects_bad_ranges() {
        let r = |offset, length| MappedRange {
            offset,
            length,
            sha256: "0".repeat(64),
        };
        assert!(render(0, &[]).is_err());
        assert!(render(8192, &[r(100, 4096)]).is_err()); // unaligned
        assert!(render(8192, &[r(0, 100)]).is_err()); // short block mid-image
        assert!(render(8192, &[r(4096, 4096), r(0, 4096)]).is_err()); // order
        assert!(render(8192, &[r(4096, 8192)]).is_err()); // past end
        assert!(render(8192, &[]).is_ok()); // nothing mapped is fine
    }

    #[test]
    fn bmaptool_copies_and_verifies_our_bmap() {
        let dir = tempfile::tempdir().unwrap();
        let img_path = dir.path().join("f.img");
        let img = make_image(&img_path);
        let ranges = ranges_of(&img);
        assert_eq!(ranges.len(), 5, "{ranges:?}");
        let text = render(img.len() as u64, &ranges).unwrap();
        let bmap_path = dir.path().join("f.bmap");
        fs::write(&bmap_path, &text).unwrap();

        let out_path = dir.path().join("out.img");
        let o = bmaptool(&[
            "copy",
            "--bmap",
            bmap_path.to_str().unwrap(),
            img_path.to_str().unwrap(),
            out_path.to_str().unwrap(),
        ]);
        assert!(
            o.status.success(),
            "bmaptool copy failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(fs::read(&out_path).unwrap() == img, "copied image differs");

        // Tamper with one range checksum but keep the file checksum valid, so
        // the failure can only come from verifying the range data.
        let victim = &ranges[2].sha256;
        let flipped: String = victim.chars().rev().collect();
        let tampered = reseal(&text.replacen(victim.as_str(), &flipped, 1));
        assert!(parse(&tampered).is_ok());
        fs::write(&bmap_path, &tampered).unwrap();
        let o = bmaptool(&[
            "copy",
            "--bmap",
            bmap_path.to_str().unwrap(),
            img_path.to_str().unwrap(),
            out_path.to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success(),
            "bmaptool accepted a wrong range checksum"
        );
        assert!(
            err.contains("checksum mismatch for blocks range"),
            "unexpected error: {err}"
        );

        // And an unsealed edit is rejected by bmaptool's file checksum.
        fs::write(&bmap_path, text.replacen(victim.as_str(), &flipped, 1)).unwrap();
        let o = bmaptool(&[
            "copy",
            "--bmap",
            bmap_path.to_str().unwrap(),
            img_path.to_str().unwrap(),
            out_path.to_str().unwrap(),
        ]);
        assert!(!o.status.success());
        assert!(String::from_utf8_lossy(&o.stderr).contains("checksum mismatch for bmap file"));
    }

    #[test]
    fn identical_to_bmaptool_create() {
        let dir = tempfile::tempdir().unwrap();
        let img_path = dir.path().join("f.img");
        let img = make_image(&img_path);
        let ours = render(img.len() as u64, &ranges_of(&img)).unwrap();
        let theirs_path = dir.path().join("theirs.bmap");
        let o = bmaptool(&[
            "create",
            "-o",
            theirs_path.to_str().unwrap(),
            img_path.to_str().unwrap(),
        ]);
        assert!(
            o.status.success(),
            "bmaptool create failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let theirs = fs::read_to_string(&theirs_path).unwrap();
        if ours != theirs {
            fs::write("/tmp/ciab-parts/ours.bmap", &ours).unwrap();
            fs::write("/tmp/ciab-parts/theirs.bmap", &theirs).unwrap();
            panic!("render differs from bmaptool create; see /tmp/ciab-parts/{{ours,theirs}}.bmap");
        }
        // And we read bmaptool's own output back to the same ranges.
        assert_eq!(parse(&theirs).unwrap().ranges, ranges_of(&img));
    }

    /// Edge cases of the in-place overwritten comment: "1 byte", "N bytes",
    /// and 9217 bytes where "12.0 KiB" mapped is longer than the "9.0 KiB"
    /// placeholder and eats one of the spaces before "-->".
    #[test]
    fn identical_to_bmaptool_create_small_full_images() {
        let dir = tempfile::tempdir().unwrap();
        for size in [1usize, 100, 4096, 4097, 9217, 1048575] {
            let img = vec![1u8; size];
            let p = dir.path().join("full.img");
            fs::write(&p, &img).unwrap();
            let b = dir.path().join("full.bmap");
            let o = bmaptool(&["create", "-o", b.to_str().unwrap(), p.to_str().unwrap()]);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let ours = render(size as u64, &ranges_of(&img)).unwrap();
            assert_eq!(ours, fs::read_to_string(&b).unwrap(), "size {size}");
        }
    }
}
