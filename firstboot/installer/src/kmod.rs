//! Loading the initramfs's kernel modules without kmod: `finit_module` on
//! each file of the list the builder wrote, in dependency order.

use anyhow::{Context, Result};
use std::path::Path;

/// `MODULE_INIT_COMPRESSED_FILE`: the kernel decompresses the module itself
/// (Debian's kernels have CONFIG_MODULE_DECOMPRESS and xz modules).
const COMPRESSED: i32 = 4;

fn flags(path: &Path) -> i32 {
    match path.extension().and_then(|e| e.to_str()) {
        Some("xz" | "zst" | "gz") => COMPRESSED,
        _ => 0,
    }
}

/// Loads one module file; already loaded is fine.
pub fn load(path: &Path) -> Result<()> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    match rustix::system::finit_module(&f, c"", flags(path)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("loading {}", path.display())),
    }
}

/// Loads every module named in `list` (paths relative to `dir`), in order.
/// Returns the failures; a module for absent hardware may refuse to load
/// and that must not stop the installer.
pub fn load_list(dir: &Path, list: &str) -> Vec<String> {
    list.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter_map(|rel| load(&dir.join(rel)).err().map(|e| format!("{e:#}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_modules_ask_the_kernel_to_decompress() {
        assert_eq!(flags(Path::new("kernel/fs/isofs/isofs.ko.xz")), COMPRESSED);
        assert_eq!(flags(Path::new("kernel/fs/isofs/isofs.ko")), 0);
    }
}
