//! minisign keys and signatures for manifests.
//!
//! Keys are unencrypted minisign keys (the builder runs unattended); the
//! secret key file is created with mode 0600 and never overwritten. The public
//! key sits beside it as `<key>.pub` and is copied into every output directory.

use anyhow::{bail, Context, Result};
use minisign::{KeyPair, PublicKey, PublicKeyBox, SecretKey, SignatureBox};
use std::fs;
use std::io::{Cursor, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Default secret key location (`~` is $HOME).
pub const DEFAULT_KEY_PATH: &str = "~/.config/ciab/signing.key";
/// Name of the public key copied into each output directory.
pub const PUBLIC_KEY_FILE: &str = "signing.pub";

/// Path of the public key that belongs to secret key `key`.
pub fn public_key_path(key: &Path) -> PathBuf {
    let mut s = key.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

/// Generates a key pair at `key` (secret, 0600) and `key.pub`. Refuses to overwrite.
pub fn keygen(key: &Path) -> Result<PublicKey> {
    if key.exists() {
        bail!("{} already exists: refusing to overwrite a signing key (delete it first or pass another path)", key.display());
    }
    if let Some(dir) = key.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // An empty password stores the key unencrypted but with its checksum, so
    // loading it verifies the key's integrity.
    let KeyPair { pk, sk } = KeyPair::generate_encrypted_keypair(Some(String::new())).context("generating a minisign key pair")?;
    let sk_text = sk.to_box(Some("ciab signing key (unencrypted)"))?.into_string();
    let pk_text = pk.to_box()?.into_string();
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(key)
        .with_context(|| format!("creating {}", key.display()))?;
    f.write_all(sk_text.as_bytes()).and_then(|_| f.sync_all()).with_context(|| format!("writing {}", key.display()))?;
    let pub_path = public_key_path(key);
    crate::fsutil::write_atomic(&pub_path, pk_text.as_bytes())?;
    Ok(pk)
}

/// Loads the secret key at `key`.
pub fn load_secret_key(key: &Path) -> Result<SecretKey> {
    let text = fs::read_to_string(key).with_context(|| {
        format!("reading signing key {}: create one with `ciab keygen --key {}`", key.display(), key.display())
    })?;
    SecretKey::from_box(text.into(), Some(String::new()))
        .map_err(|e| anyhow::anyhow!("{}: not an unencrypted minisign secret key: {e}", key.display()))
}

/// Loads a public key file (minisign format).
pub fn load_public_key(path: &Path) -> Result<PublicKey> {
    let text = fs::read_to_string(path).with_context(|| format!("reading public key {}", path.display()))?;
    PublicKeyBox::from_string(&text)
        .and_then(|b| b.into_public_key())
        .map_err(|e| anyhow::anyhow!("{}: not a minisign public key: {e}", path.display()))
}

/// The public key text of a secret key, in minisign's file format.
pub fn public_key_text(sk: &SecretKey) -> Result<String> {
    Ok(PublicKey::from_secret_key(sk)?.to_box()?.into_string())
}

/// Signs `data`; the trusted comment names the signed file.
pub fn sign(sk: &SecretKey, data: &[u8], what: &str) -> Result<String> {
    let pk = PublicKey::from_secret_key(sk)?;
    let sig = minisign::sign(Some(&pk), sk, Cursor::new(data), Some(&format!("file:{what}")), Some("ciab manifest signature"))
        .context("signing")?;
    Ok(sig.into_string())
}

/// Verifies `sig_text` over `data` with `pk`.
pub fn verify(pk: &PublicKey, data: &[u8], sig_text: &str) -> Result<()> {
    let sig = SignatureBox::from_string(sig_text).map_err(|e| anyhow::anyhow!("unreadable signature: {e}"))?;
    minisign::verify(pk, &sig, Cursor::new(data), true, false, false).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Reads `doc` and checks its detached signature `sig` with `pk` (loaded
/// from `key_path`, named in errors). Returns the document's bytes: nothing
/// of an unverified document reaches the caller.
pub fn read_signed(pk: &PublicKey, key_path: &Path, doc: &Path, sig: &Path) -> Result<Vec<u8>> {
    let data = fs::read(doc).with_context(|| format!("reading {}", doc.display()))?;
    let sig_text = fs::read_to_string(sig).with_context(|| format!("reading {}", sig.display()))?;
    verify(pk, &data, &sig_text).with_context(|| format!("{}: signature does not verify with {}", doc.display(), key_path.display()))?;
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_sign_verify_and_tamper() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k/signing.key");
        let pk = keygen(&key).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(load_public_key(&public_key_path(&key)).unwrap(), pk);
        let sk = load_secret_key(&key).unwrap();
        let sig = sign(&sk, b"hello", "manifest.json").unwrap();
        verify(&pk, b"hello", &sig).unwrap();
        assert!(verify(&pk, b"hellO", &sig).is_err());
        let other = keygen(&dir.path().join("other.key")).unwrap();
        assert!(verify(&other, b"hello", &sig).is_err());
        let err = keygen(&key).unwrap_err().to_string();
        assert!(err.contains("refusing to overwrite"), "{err}");
    }

    #[test]
    fn missing_key_says_how_to_make_one() {
        let err = format!("{:#}", load_secret_key(Path::new("/nonexistent/x.key")).unwrap_err());
        assert!(err.contains("ciab keygen --key /nonexistent/x.key"), "{err}");
    }
}
