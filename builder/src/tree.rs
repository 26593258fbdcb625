//! Operations on directory trees that become filesystems.

use anyhow::{Context, Result};
use std::path::Path;

/// Sets every mtime newer than `epoch` to `epoch` (symlinks included, not followed),
/// so files written at build time do not carry the build's clock.
pub fn clamp_mtimes(root: &Path, epoch: i64) -> Result<()> {
    let t = filetime::FileTime::from_unix_time(epoch, 0);
    // Children before parents: setting a file's time does not touch its
    // directory's mtime, but creating entries does, and this runs after.
    for entry in walkdir::WalkDir::new(root).contents_first(true) {
        let entry = entry.with_context(|| format!("walking {}", root.display()))?;
        let meta = entry.path().symlink_metadata().with_context(|| format!("reading {}", entry.path().display()))?;
        let mtime = filetime::FileTime::from_last_modification_time(&meta);
        if mtime.unix_seconds() > epoch || (mtime.unix_seconds() == epoch && mtime.nanoseconds() != 0) {
            filetime::set_symlink_file_times(entry.path(), t, t)
                .with_context(|| format!("setting the time of {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// Bytes allocated by a tree (like `du -s --apparent-size`, hard links once).
pub fn disk_usage(root: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    for entry in walkdir::WalkDir::new(root) {
        let entry = entry.with_context(|| format!("walking {}", root.display()))?;
        let meta = entry.path().symlink_metadata()?;
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
            continue;
        }
        total += meta.len();
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamps_only_newer_times() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old");
        let new = dir.path().join("new");
        std::fs::write(&old, "a").unwrap();
        std::fs::write(&new, "b").unwrap();
        std::os::unix::fs::symlink("new", dir.path().join("link")).unwrap();
        filetime::set_file_mtime(&old, filetime::FileTime::from_unix_time(1000, 0)).unwrap();
        clamp_mtimes(dir.path(), 5000).unwrap();
        let m = |p: &Path| filetime::FileTime::from_last_modification_time(&p.symlink_metadata().unwrap()).unix_seconds();
        assert_eq!(m(&old), 1000);
        assert_eq!(m(&new), 5000);
        assert_eq!(m(&dir.path().join("link")), 5000);
        assert_eq!(m(dir.path()), 5000);
    }
}
