//! Per-box secrets: generated on the box from the kernel's CSPRNG, stored one
//! file each under /var/lib/ciab/secrets with mode 0600, owned by root. The
//! image carries none; a secret that exists is never regenerated (services
//! configured with it would break).

use anyhow::{bail, Context, Result};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Where secrets live on the box.
pub const SECRETS_DIR: &str = "/var/lib/ciab/secrets";
/// Bytes of entropy per secret.
const SECRET_BYTES: usize = 32;

/// `N` bytes from the kernel's CSPRNG.
pub fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut buf = [0u8; N];
    let mut filled = 0;
    while filled < N {
        filled += rustix::rand::getrandom(&mut buf[filled..], rustix::rand::GetRandomFlags::empty()).context("getrandom")?;
    }
    Ok(buf)
}

/// A fresh secret: 32 random bytes as 64 hex characters (safe in every
/// config-file syntax the services use).
pub fn generate() -> Result<String> {
    Ok(hex::encode(random_bytes::<SECRET_BYTES>()?))
}

/// A random (version 4) UUID in its canonical text form.
pub fn uuid4() -> Result<String> {
    Ok(uuid::Builder::from_random_bytes(random_bytes::<16>()?).into_uuid().to_string())
}

/// Is `name` present, non-empty, mode 0600 and owned by root?
fn is_sound(dir: &Path, name: &str) -> bool {
    let Ok(meta) = fs::metadata(dir.join(name)) else { return false };
    meta.len() > 0 && meta.permissions().mode() & 0o777 == 0o600 && meta.uid() == 0
}

/// Creates every missing secret in `dir`; returns how many were created.
pub fn ensure(dir: &Path, names: &[&str]) -> Result<usize> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).with_context(|| format!("securing {}", dir.display()))?;
    let mut created = 0;
    for name in names {
        if name.is_empty() || name.contains('/') {
            bail!("invalid secret name {name:?}");
        }
        let path = dir.join(name);
        if path.exists() {
            // Never regenerate: only repair permissions.
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).with_context(|| format!("securing {}", path.display()))?;
            continue;
        }
        ciab_core::atomic::write_atomic_mode(&path, generate()?.as_bytes(), 0o600)?;
        created += 1;
    }
    Ok(created)
}

/// The secret `name` from `dir`, trimmed.
pub fn read(dir: &Path, name: &str) -> Result<String> {
    let path = dir.join(name);
    let text = fs::read_to_string(&path).with_context(|| format!("reading secret {}: did the secrets step run?", path.display()))?;
    Ok(text.trim().to_owned())
}

/// Are all secrets in place?
pub fn complete(dir: &Path, names: &[&str]) -> bool {
    names.iter().all(|n| is_sound(dir, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_private_and_never_regenerated() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("secrets");
        let names = ["mariadb-root", "keystone-admin"];
        assert!(!complete(&d, &names));
        assert_eq!(ensure(&d, &names).unwrap(), 2);
        assert!(complete(&d, &names));
        let a = fs::read_to_string(d.join("mariadb-root")).unwrap();
        let b = fs::read_to_string(d.join("keystone-admin")).unwrap();
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert_eq!(fs::metadata(&d).unwrap().permissions().mode() & 0o777, 0o700);
        fs::set_permissions(d.join("mariadb-root"), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(!complete(&d, &names), "a readable secret is not sound");
        assert_eq!(ensure(&d, &names).unwrap(), 0);
        assert_eq!(fs::read_to_string(d.join("mariadb-root")).unwrap(), a, "existing secrets are kept");
        assert!(complete(&d, &names));
        assert!(ensure(&d, &["../x"]).is_err());
    }

    #[test]
    fn uuids_are_version_4() {
        let u = uuid4().unwrap();
        assert_eq!(u.len(), 36);
        assert_eq!(u.split('-').map(str::len).collect::<Vec<_>>(), [8, 4, 4, 4, 12]);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"), "{u}");
        assert_ne!(u, uuid4().unwrap());
    }

}
