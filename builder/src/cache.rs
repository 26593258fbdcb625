//! The content-addressed stage cache under `${XDG_CACHE_HOME:-~/.cache}/ciab`.
//!
//! Layout:
//! - `debs/`                  downloaded .deb files, shared by every build
//! - `stages/<stage>/<key>/`  one complete stage output; `<key>` is the sha256
//!   of exactly the inputs that change the output
//! - `stages/<stage>/.tmp-*`  a stage being built; renamed into place only when
//!   complete, so an interrupted build never leaves a partial entry
//! - `lock`                   held for the duration of a build

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::path::{Path, PathBuf};

/// The cache root and its lock.
pub struct Cache {
    root: PathBuf,
    _lock: File,
}

/// The default cache root: `$CIAB_CACHE_DIR`, else `${XDG_CACHE_HOME:-~/.cache}/ciab`.
pub fn default_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("CIAB_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("ciab")
}

impl Cache {
    /// Opens (creating) the cache at `root` and takes its lock, waiting for
    /// another build that holds it.
    pub fn open(root: &Path) -> Result<Cache> {
        fs::create_dir_all(root.join("stages")).with_context(|| format!("creating cache {}", root.display()))?;
        let lock_path = root.join("lock");
        let lock = File::create(&lock_path).with_context(|| format!("creating {}", lock_path.display()))?;
        if rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            tracing::info!("waiting for another ciab build to release {}", lock_path.display());
            rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
                .with_context(|| format!("locking {}", lock_path.display()))?;
        }
        let cache = Cache { root: root.to_owned(), _lock: lock };
        cache.sweep_temporaries()?;
        Ok(cache)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where downloaded .deb files are kept across builds.
    pub fn debs_dir(&self) -> PathBuf {
        self.root.join("debs")
    }

    /// The entry directory of `stage` with `key` (may not exist).
    pub fn entry(&self, stage: &str, key: &str) -> PathBuf {
        self.root.join("stages").join(stage).join(key)
    }

    /// Returns the complete entry for (`stage`, `key`), building it with
    /// `build(tmp_dir)` when absent. The bool says whether it was cached.
    pub fn get_or_build(&self, stage: &str, key: &str, build: impl FnOnce(&Path) -> Result<()>) -> Result<(PathBuf, bool)> {
        let entry = self.entry(stage, key);
        if entry.is_dir() {
            // Mark as recently used, for pruning.
            let _ = filetime::set_file_mtime(&entry, filetime::FileTime::now());
            return Ok((entry, true));
        }
        let parent = entry.parent().context("cache entry has no parent")?;
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        let tmp = parent.join(format!(".tmp-{key}-{}", std::process::id()));
        remove_stage_temporary(&tmp)?;
        fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let guard = RemoveOnDrop(tmp.clone());
        build(&tmp)?;
        fs::rename(&tmp, &entry).with_context(|| format!("moving {} into place", entry.display()))?;
        std::mem::forget(guard);
        Ok((entry, false))
    }

    /// Keeps the `keep` most recently used entries of each stage.
    pub fn prune(&self, keep: usize) -> Result<()> {
        let stages = self.root.join("stages");
        for stage in fs::read_dir(&stages).with_context(|| format!("listing {}", stages.display()))? {
            let stage = stage?.path();
            let mut entries: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(&stage)?
                .flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
                .collect();
            entries.sort();
            let excess = entries.len().saturating_sub(keep);
            for (_, old) in entries.into_iter().take(excess) {
                tracing::debug!("pruning cache entry {}", old.display());
                remove_dir_all_if_exists(&old)?;
            }
        }
        Ok(())
    }

    /// Removes stage temporaries left by builds that died (their pid is gone).
    fn sweep_temporaries(&self) -> Result<()> {
        let stages = self.root.join("stages");
        for stage in fs::read_dir(&stages)?.flatten() {
            for e in fs::read_dir(stage.path())?.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(rest) = name.strip_prefix(".tmp-") {
                    let pid = rest.rsplit('-').next().and_then(|p| p.parse::<u32>().ok());
                    if pid.is_none_or(|p| !Path::new(&format!("/proc/{p}")).exists()) {
                        tracing::debug!("removing stale {}", e.path().display());
                        remove_stage_temporary(&e.path())?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Mount points at or below `path`, deepest first, from /proc/self/mounts.
fn mounts_below(path: &Path) -> Vec<PathBuf> {
    let Ok(canonical) = path.canonicalize() else { return Vec::new() };
    let Ok(table) = fs::read_to_string("/proc/self/mounts") else { return Vec::new() };
    let mut points: Vec<PathBuf> = table
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        // /proc/self/mounts escapes spaces and tabs as octal.
        .map(|p| PathBuf::from(p.replace("\\040", " ").replace("\\011", "\t")))
        .filter(|p| p.starts_with(&canonical))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points
}

/// Removes the temporary tree of an interrupted stage. A killed mmdebstrap
/// can leave /proc, /sys and /dev/pts mounted inside its chroot: those are
/// detached first, so removal never reaches into a live kernel filesystem.
pub fn remove_stage_temporary(path: &Path) -> Result<()> {
    for point in mounts_below(path) {
        tracing::warn!("detaching {} left mounted by an interrupted build", point.display());
        ciab_core::exec::Cmd::new("umount").package("mount").arg("--lazy").arg(&point).run()?;
    }
    if !mounts_below(path).is_empty() {
        anyhow::bail!("{} still has mounts below it: remove them by hand before building again", path.display());
    }
    remove_dir_all_if_exists(path)
}

/// Removes a directory tree if it exists.
pub fn remove_dir_all_if_exists(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Deletes a temporary directory unless defused with `mem::forget`.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Err(e) = remove_stage_temporary(&self.0) {
            tracing::warn!("could not clean up {}: {e:#}", self.0.display());
        }
    }
}

/// Builds a stage key from named inputs; the names keep keys from colliding
/// when two inputs swap values.
#[derive(Clone, Default)]
pub struct KeyBuilder(Sha256);

impl KeyBuilder {
    pub fn new(stage: &str) -> Self {
        let mut k = KeyBuilder(Sha256::new());
        k.add("stage", stage.as_bytes());
        k
    }

    pub fn add(&mut self, name: &str, value: impl AsRef<[u8]>) -> &mut Self {
        let value = value.as_ref();
        self.0.update((name.len() as u64).to_le_bytes());
        self.0.update(name.as_bytes());
        self.0.update((value.len() as u64).to_le_bytes());
        self.0.update(value);
        self
    }

    /// Adds every file under `dir` (relative path, mode, symlink target, contents).
    pub fn add_tree(&mut self, name: &str, dir: &Path) -> Result<&mut Self> {
        use std::os::unix::fs::PermissionsExt;
        for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
            let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
            let rel = entry.path().strip_prefix(dir).unwrap_or(entry.path()).to_string_lossy().into_owned();
            let meta = entry.path().symlink_metadata().with_context(|| format!("reading {}", entry.path().display()))?;
            self.add(&format!("{name}:path"), &rel);
            self.add(&format!("{name}:mode"), meta.permissions().mode().to_le_bytes());
            if meta.file_type().is_symlink() {
                let target = fs::read_link(entry.path())?;
                self.add(&format!("{name}:link"), target.to_string_lossy().as_bytes());
            } else if meta.is_file() {
                let digest = crate::fsutil::sha256_file(entry.path())?;
                self.add(&format!("{name}:sha256"), &digest);
            }
        }
        Ok(self)
    }

    /// The key: 32 hex characters of sha256 (128 bits).
    pub fn finish(&self) -> String {
        hex::encode(&self.0.clone().finalize()[..16])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_once_then_hits() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let mut runs = 0;
        for _ in 0..2 {
            let (path, _) = cache
                .get_or_build("s", "k1", |tmp| {
                    runs += 1;
                    fs::write(tmp.join("f"), "x")?;
                    Ok(())
                })
                .unwrap();
            assert_eq!(fs::read_to_string(path.join("f")).unwrap(), "x");
        }
        assert_eq!(runs, 1);
    }

    #[test]
    fn failed_build_leaves_no_entry_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let err = cache
            .get_or_build("s", "k", |tmp| {
                fs::write(tmp.join("half"), "x")?;
                anyhow::bail!("disk full")
            })
            .unwrap_err();
        assert_eq!(err.to_string(), "disk full");
        assert!(!cache.entry("s", "k").exists());
        assert_eq!(fs::read_dir(dir.path().join("stages/s")).unwrap().count(), 0);
    }

    #[test]
    fn stale_temporary_with_a_mount_inside_is_detached_then_removed() {
        let dir = tempfile::tempdir().unwrap();
        let stale = dir.path().join("stages/rootfs/.tmp-k-999999998");
        fs::create_dir_all(stale.join("tree/proc")).unwrap();
        ciab_core::exec::Cmd::new("mount").args(["-t", "tmpfs", "none"]).arg(stale.join("tree/proc")).run().unwrap();
        fs::write(stale.join("tree/proc/inside"), "x").unwrap();
        let _cache = Cache::open(dir.path()).unwrap();
        assert!(!stale.exists());
        assert!(mounts_below(dir.path()).is_empty());
    }

    #[test]
    fn stale_temporaries_of_dead_builds_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let stale = dir.path().join("stages/s/.tmp-k-999999999");
        fs::create_dir_all(&stale).unwrap();
        let _cache = Cache::open(dir.path()).unwrap();
        assert!(!stale.exists());
    }

    #[test]
    fn keys_depend_on_names_values_and_tree_contents() {
        let a = KeyBuilder::new("s").add("a", "1").add("b", "2").finish();
        let b = KeyBuilder::new("s").add("a", "2").add("b", "1").finish();
        assert_ne!(a, b);
        assert_eq!(a, KeyBuilder::new("s").add("a", "1").add("b", "2").finish());
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("f"), "one").unwrap();
        let k1 = KeyBuilder::new("t").add_tree("o", dir.path()).unwrap().finish();
        fs::write(dir.path().join("f"), "two").unwrap();
        let k2 = KeyBuilder::new("t").add_tree("o", dir.path()).unwrap().finish();
        assert_ne!(k1, k2);
    }

    #[test]
    fn prune_keeps_most_recent() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        for k in ["a", "b", "c"] {
            cache.get_or_build("s", k, |_| Ok(())).unwrap();
            let t = filetime::FileTime::from_unix_time(match k { "a" => 100, "b" => 300, _ => 200 }, 0);
            filetime::set_file_mtime(cache.entry("s", k), t).unwrap();
        }
        cache.prune(2).unwrap();
        assert!(!cache.entry("s", "a").exists());
        assert!(cache.entry("s", "b").exists() && cache.entry("s", "c").exists());
    }
}
