//! Crash-safe file replacement: the new content is complete on disk before
//! it takes the old name, and the rename itself is made durable. Used by the
//! journal and by every step that writes a file.

use anyhow::{Context, Result};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `data` to `path` (mode 0644): see [`write_atomic_mode`].
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    write_atomic_mode(path, data, 0o644)
}

/// Writes `data` to `path`: temp file `.<name>.tmp-<pid>-<n>` in the same
/// directory, fsync, rename, fsync of the directory. After a power loss at
/// any instant `path` holds either the old or the new content, never a mix;
/// a temp file the loss left behind is removed by [`remove_stale_temps`].
pub fn write_atomic_mode(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = parent_dir(path);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!("{}{}-{}", temp_prefix(path), std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
    let result = (|| -> Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        // Exactly `mode`, whatever the umask, before any byte lands: a
        // secret is never readable by others, not even for a moment.
        f.set_permissions(fs::Permissions::from_mode(mode)).with_context(|| format!("setting the mode of {}", tmp.display()))?;
        f.write_all(data).with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all().with_context(|| format!("fsync of {}", tmp.display()))?;
        drop(f);
        fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(&dir)
}

/// fsync a directory so that a rename inside it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("fsync of directory {}", dir.display()))
}

/// Removes temp files of `path` left by a write cut short by a power loss.
/// Best effort: failure to clean up is harmless.
pub fn remove_stale_temps(path: &Path) {
    let prefix = temp_prefix(path);
    let Ok(entries) = fs::read_dir(parent_dir(path)) else { return };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Parent directory of `path` ("." for a bare file name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Prefix of the temp files [`write_atomic_mode`] uses for `path`.
fn temp_prefix(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "file".to_owned());
    format!(".{name}.tmp-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_with_mode_and_leaves_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/secret");
        write_atomic_mode(&p, b"one", 0o600).unwrap();
        write_atomic_mode(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read_dir(dir.path().join("sub")).unwrap().count(), 1);
    }

    #[test]
    fn stale_temps_of_a_cut_write_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("firstboot.json");
        fs::write(dir.path().join(".firstboot.json.tmp-123-0"), "half").unwrap();
        fs::write(dir.path().join("other"), "kept").unwrap();
        remove_stale_temps(&p);
        let left: Vec<String> = fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(left, ["other"]);
    }
}
