//! `ciab verify`: the signature first, then every digest the manifest names,
//! and the installer ISO against its own signed description when present.

use anyhow::{bail, Context, Result};
use ciab_core::contract::{InstallerInfo, Manifest, INSTALLER_FILE, INSTALLER_SIG_FILE, MANIFEST_FILE, MANIFEST_SIG_FILE};
use std::path::Path;

/// One thing that does not match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub what: String,
    pub expected: String,
    pub actual: String,
}

/// Verifies `dir` against its signed manifest with the public key `pubkey`
/// (default: the key the directory carries, which only proves integrity; pass
/// your own key file to prove origin). Returns the manifest on success.
pub fn verify_dir(dir: &Path, pubkey: Option<&Path>) -> Result<Manifest> {
    let manifest_path = dir.join(MANIFEST_FILE);
    let key_path = pubkey.map(Path::to_path_buf).unwrap_or_else(|| dir.join(crate::sign::PUBLIC_KEY_FILE));
    let pk = crate::sign::load_public_key(&key_path)?;
    let manifest_bytes = crate::sign::read_signed(&pk, &key_path, &manifest_path, &dir.join(MANIFEST_SIG_FILE))?;
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes).with_context(|| format!("parsing {}", manifest_path.display()))?;

    let mut bad = Vec::new();
    for out in &manifest.outputs {
        let path = dir.join(&out.path);
        if !path.exists() {
            bad.push(Mismatch { what: out.path.clone(), expected: format!("sha256 {}", out.sha256), actual: "missing".into() });
            continue;
        }
        let size = std::fs::metadata(&path)?.len();
        if size != out.size {
            bad.push(Mismatch { what: format!("{} size", out.path), expected: out.size.to_string(), actual: size.to_string() });
        }
        // The raw image and its partitions are hashed in one read.
        let ranges: Vec<(u64, u64)> = if out.kind == "raw" { manifest.partitions.iter().map(|p| (p.offset, p.size)).collect() } else { Vec::new() };
        let (digest, part_digests) = crate::fsutil::sha256_file_and_ranges(&path, &ranges)?;
        if digest != out.sha256 {
            bad.push(Mismatch { what: out.path.clone(), expected: format!("sha256 {}", out.sha256), actual: format!("sha256 {digest}") });
        }
        for (p, digest) in manifest.partitions.iter().zip(part_digests) {
            if digest != p.sha256 {
                bad.push(Mismatch {
                    what: format!("{} partition {} ({}) at offset {}", out.path, p.number, p.label, p.offset),
                    expected: format!("sha256 {}", p.sha256),
                    actual: format!("sha256 {digest}"),
                });
            }
        }
    }
    // The installer ISO, when there is one, is described by its own signed file.
    let info_path = dir.join(INSTALLER_FILE);
    if info_path.exists() {
        let data = crate::sign::read_signed(&pk, &key_path, &info_path, &dir.join(INSTALLER_SIG_FILE))?;
        let info: InstallerInfo = serde_json::from_slice(&data).with_context(|| format!("parsing {}", info_path.display()))?;
        let iso = dir.join(&info.iso.path);
        let digest = crate::fsutil::sha256_file(&iso).unwrap_or_else(|_| "missing".into());
        if digest != info.iso.sha256 {
            bad.push(Mismatch { what: info.iso.path.clone(), expected: format!("sha256 {}", info.iso.sha256), actual: format!("sha256 {digest}") });
        }
        let manifest_sha = crate::fsutil::sha256_bytes(&manifest_bytes);
        if manifest_sha != info.manifest_sha256 {
            bad.push(Mismatch { what: format!("{INSTALLER_FILE} manifest_sha256"), expected: info.manifest_sha256.clone(), actual: manifest_sha });
        }
    }
    if !bad.is_empty() {
        let lines: Vec<String> = bad.iter().map(|m| format!("  {}: expected {}, found {}", m.what, m.expected, m.actual)).collect();
        bail!("{} does not match its signed manifest:\n{}", dir.display(), lines.join("\n"));
    }
    Ok(manifest)
}
