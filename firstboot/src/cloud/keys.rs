//! Key repositories made on the box in Rust instead of by
//! `keystone-manage fernet_setup` / `credential_setup` (each ~35 s of Python
//! start-up under TCG, for what is 32 random bytes a file).
//!
//! Keystone's layout: a directory of files named by integers, each holding
//! one URL-safe base64 Fernet key (32 bytes: signing key + encryption key);
//! `0` is the staged key, the highest number the primary one. A fresh
//! repository has `0` and `1`, as `fernet_setup` leaves it.

use anyhow::{Context, Result};
use base64::Engine as _;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// A new Fernet key as Keystone (and the `cryptography` package) reads it.
pub fn fernet_key() -> Result<String> {
    Ok(base64::engine::general_purpose::URL_SAFE.encode(crate::model::secrets::random_bytes::<32>()?))
}

/// Is `dir` a repository with a staged and a primary key?
pub fn repository_is_complete(dir: &Path) -> bool {
    ["0", "1"].iter().all(|n| std::fs::read(dir.join(n)).map(|k| k.len() == 44).unwrap_or(false))
}

/// Creates the missing keys of a fresh repository, owned by `owner` (uid,
/// gid), directory 0700, keys 0600. Existing keys are kept: tokens and
/// credentials encrypted with them stay readable.
pub fn ensure_repository(dir: &Path, owner: (u32, u32)) -> Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    chown(dir, owner)?;
    let mut created = 0;
    for name in ["0", "1"] {
        let path = dir.join(name);
        if std::fs::read(&path).map(|k| k.len() == 44).unwrap_or(false) {
            continue;
        }
        ciab_core::atomic::write_atomic_mode(&path, fernet_key()?.as_bytes(), 0o600)?;
        chown(&path, owner)?;
        created += 1;
    }
    Ok(created)
}

pub fn chown(path: &Path, (uid, gid): (u32, u32)) -> Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).with_context(|| format!("chown {uid}:{gid} {}", path.display()))
}

/// The uid and gid of `user` in `<root>/etc/passwd`.
pub fn system_user(root: &Path, user: &str) -> Result<(u32, u32)> {
    let path = root.join("etc/passwd");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4 && f[0] == user).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
        })
        .with_context(|| format!("no user {user} in {}: is its package installed?", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fernet_keys() {
        let k = fernet_key().unwrap();
        assert_eq!(k.len(), 44);
        let raw = base64::engine::general_purpose::URL_SAFE.decode(&k).unwrap();
        assert_eq!(raw.len(), 32);
        assert_ne!(k, fernet_key().unwrap());
    }

    /// Python's `cryptography` (what Keystone uses; Debian's
    /// python3-cryptography, which test.sh installs) accepts the key and
    /// round-trips a token with it.
    #[test]
    fn python_cryptography_accepts_the_key() {
        let k = fernet_key().unwrap();
        let out = std::process::Command::new("/usr/bin/python3")
            .args(["-c", "import sys; from cryptography.fernet import Fernet; f = Fernet(sys.argv[1].encode()); print(f.decrypt(f.encrypt(b'ok')).decode())", &k])
            .output()
            .expect("/usr/bin/python3 (Debian's python3) runs");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok", "{}", String::from_utf8_lossy(&out.stderr));
    }

    #[test]
    fn repository_keeps_existing_keys() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("fernet-keys");
        let me = (rustix::process::getuid().as_raw(), rustix::process::getgid().as_raw());
        assert!(!repository_is_complete(&repo));
        assert_eq!(ensure_repository(&repo, me).unwrap(), 2);
        assert!(repository_is_complete(&repo));
        let primary = std::fs::read(repo.join("1")).unwrap();
        std::fs::remove_file(repo.join("0")).unwrap();
        assert_eq!(ensure_repository(&repo, me).unwrap(), 1);
        assert_eq!(std::fs::read(repo.join("1")).unwrap(), primary);
        assert_eq!(std::fs::metadata(repo.join("0")).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&repo).unwrap().permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn users_come_from_passwd() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), "root:x:0:0::/root:/bin/sh\nkeystone:x:101:104::/var/lib/keystone:/usr/sbin/nologin\n").unwrap();
        assert_eq!(system_user(dir.path(), "keystone").unwrap(), (101, 104));
        assert!(format!("{:#}", system_user(dir.path(), "glance").unwrap_err()).contains("no user glance"));
    }
}
