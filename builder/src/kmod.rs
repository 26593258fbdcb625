//! Picking kernel module files for an initramfs from `modules.dep`: the
//! installer's (which `ciab_installer::kmod` loads) and the tiny guest's.

use anyhow::{Context, Result, bail};
use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

const SUFFIXES: [&str; 4] = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"];

/// Module name of a module file path: `kernel/drivers/nvme/host/nvme-core.ko.xz`
/// -> `nvme_core`. The kernel treats `-` and `_` in module names as the same
/// character; we normalise to `_` like kmod does.
fn module_name(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    let stem = SUFFIXES.iter().find_map(|s| file.strip_suffix(s))?;
    Some(normalize(stem))
}

fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// Relative paths (as listed in `modules.dep`) of the modules `names` and
/// everything they depend on, each dependency before its users so the list
/// is a valid load order. Built-in names are skipped silently.
pub fn closure(modules_dir: &Path, names: &[&str]) -> Result<Vec<PathBuf>> {
    let dep_path = modules_dir.join("modules.dep");
    let dep_text =
        fs::read_to_string(&dep_path).with_context(|| format!("reading {}", dep_path.display()))?;
    // module path -> its dependency paths (depmod lists the full transitive
    // set, but we still recurse so the order never depends on depmod's).
    let mut deps: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut by_name: HashMap<String, &str> = HashMap::new();
    for (n, line) in dep_text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (module, rest) = line
            .split_once(':')
            .with_context(|| format!("{}:{}: no ':' in {line:?}", dep_path.display(), n + 1))?;
        let name = module_name(module).with_context(|| {
            format!(
                "{}:{}: {module:?} is not a .ko file",
                dep_path.display(),
                n + 1
            )
        })?;
        by_name.insert(name, module);
        deps.insert(module, rest.split_whitespace().collect());
    }

    let builtin_path = modules_dir.join("modules.builtin");
    // A kernel with everything built in may legitimately lack the file.
    let builtin_text = match fs::read_to_string(&builtin_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", builtin_path.display())),
    };
    let builtin: HashSet<String> = builtin_text
        .lines()
        .filter_map(|l| module_name(l.trim()))
        .collect();

    let mut order = Vec::new();
    let mut done = HashSet::new();
    for &name in names {
        let key = normalize(name);
        match by_name.get(&key) {
            Some(module) => visit(module, &deps, &mut done, &mut Vec::new(), &mut order)?,
            None if builtin.contains(&key) => {}
            None => bail!(
                "kernel module {name:?} is neither a module nor built in for {}",
                modules_dir.display()
            ),
        }
    }
    Ok(order.into_iter().map(PathBuf::from).collect())
}

/// Depth-first post-order: all of a module's dependencies are emitted before
/// it. `stack` catches dependency cycles (depmod forbids them, but a
/// corrupt modules.dep must not recurse forever).
fn visit<'a>(
    module: &'a str,
    deps: &HashMap<&'a str, Vec<&'a str>>,
    done: &mut HashSet<&'a str>,
    stack: &mut Vec<&'a str>,
    order: &mut Vec<&'a str>,
) -> Result<()> {
    if done.contains(module) {
        return Ok(());
    }
    if stack.contains(&module) {
        bail!(
            "dependency cycle in modules.dep: {} -> {module}",
            stack.join(" -> ")
        );
    }
    stack.push(module);
    let my_deps = deps.get(module).with_context(|| {
        format!(
            "{} depends on {module}, which modules.dep does not list",
            stack[0]
        )
    })?;
    for &d in my_deps {
        visit(d, deps, done, stack, order)?;
    }
    stack.pop();
    done.insert(module);
    order.push(module);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One of the real Debian module trees ciab has unpacked, if any.
    fn real_modules_dir() -> Option<PathBuf> {
        // The rootfs stages of earlier builds in the real cache, if any.
        let stages = crate::cache::default_root().join("stages/rootfs");
        let mut found: Vec<PathBuf> = Vec::new();
        for stage in fs::read_dir(&stages).ok()?.flatten() {
            let mods = stage.path().join("tree/usr/lib/modules");
            for k in fs::read_dir(&mods).into_iter().flatten().flatten() {
                if k.path().join("modules.dep").is_file() {
                    found.push(k.path());
                }
            }
        }
        found.sort();
        found.into_iter().next()
    }

    fn names(v: &[PathBuf]) -> Vec<String> {
        v.iter()
            .map(|p| module_name(p.to_str().unwrap()).unwrap())
            .collect()
    }

    fn pos(v: &[String], n: &str) -> usize {
        v.iter()
            .position(|x| x == n)
            .unwrap_or_else(|| panic!("{n} missing from {v:?}"))
    }

    #[test]
    fn module_names() {
        assert_eq!(
            module_name("kernel/drivers/nvme/host/nvme-core.ko.xz").unwrap(),
            "nvme_core"
        );
        assert_eq!(module_name("a/b.ko").unwrap(), "b");
        assert_eq!(module_name("a/b.ko.zst").unwrap(), "b");
        assert_eq!(module_name("a/b.ko.gz").unwrap(), "b");
        assert_eq!(module_name("a/b.o"), None);
    }

    #[test]
    fn synthetic_tree() {
        let d = tempfile::tempdir().unwrap();
        fs::write(
            d.path().join("modules.dep"),
            "k/top-mod.ko.zst: k/mid.ko.gz k/base.ko\nk/mid.ko.gz: k/base.ko\nk/base.ko:\nk/other.ko: k/base.ko\n",
        )
        .unwrap();
        fs::write(d.path().join("modules.builtin"), "kernel/fs/ext4/ext4.ko\n").unwrap();
        let got = closure(d.path(), &["top_mod", "ext4", "other", "base"]).unwrap();
        assert_eq!(
            got,
            ["k/base.ko", "k/mid.ko.gz", "k/top-mod.ko.zst", "k/other.ko"].map(PathBuf::from)
        );

        fs::write(d.path().join("modules.dep"), "a.ko: b.ko\nb.ko: a.ko\n").unwrap();
        let e = closure(d.path(), &["a"]).unwrap_err();
        assert!(format!("{e:#}").contains("cycle"), "{e:#}");
    }

    #[test]
    fn real_debian_tree() {
        let Some(dir) = real_modules_dir() else {
            eprintln!("skipping: no unpacked Debian kernel modules");
            return;
        };
        let wanted = [
            "virtio_blk",
            "virtio_scsi",
            "nvme",
            "ahci",
            "sd_mod",
            "sr_mod",
            "usb_storage",
            "uas",
            "xhci_pci",
            "isofs",
            "vfat",
            "ext4",
            "usb-storage", // spelled both ways on purpose
        ];
        let got = closure(&dir, &wanted).unwrap();
        let n = names(&got);
        eprintln!("{} modules: {n:?}", n.len());

        // No duplicates, every file exists.
        assert_eq!(n.iter().collect::<HashSet<_>>().len(), n.len());
        for p in &got {
            assert!(p.is_relative() && dir.join(p).is_file(), "{}", p.display());
        }
        for (before, after) in [
            ("jbd2", "ext4"),
            ("mbcache", "ext4"),
            ("crc16", "ext4"),
            ("scsi_mod", "sd_mod"),
            ("usb_storage", "uas"),
            ("usbcore", "usb_storage"),
            ("fat", "vfat"),
            ("cdrom", "isofs"),
            ("cdrom", "sr_mod"),
            ("nvme_core", "nvme"),
            ("libahci", "ahci"),
        ] {
            assert!(
                pos(&n, before) < pos(&n, after),
                "{before} should precede {after}: {n:?}"
            );
        }
        // Every module's modules.dep dependencies come before it.
        let dep_text = fs::read_to_string(dir.join("modules.dep")).unwrap();
        for line in dep_text.lines() {
            let (m, ds) = line.split_once(':').unwrap();
            if let Some(i) = got.iter().position(|p| p == Path::new(m)) {
                for d in ds.split_whitespace() {
                    let j = got.iter().position(|p| p == Path::new(d)).unwrap();
                    assert!(j < i, "{d} after {m}");
                }
            }
        }
        assert_eq!(closure(&dir, &wanted).unwrap(), got, "not deterministic");

        let e = closure(&dir, &["virtio_blk", "no_such_mod"]).unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("no_such_mod") && msg.contains(dir.to_str().unwrap()),
            "{msg}"
        );
    }

    #[test]
    fn builtin_is_satisfied() {
        let Some(dir) = real_modules_dir() else {
            return;
        };
        // virtio and virtio_pci are built into Debian's kernel.
        assert_eq!(
            closure(&dir, &["virtio", "virtio_pci"]).unwrap(),
            Vec::<PathBuf>::new()
        );
    }
}
