//! `ciab doctor`: are the host tools the build and the tests need there?
//!
//! One table of every tool: found or missing, its version, and the Debian
//! package that provides it. `ciab build` runs the same check before any work.

use ciab_core::exec::Cmd;
use anyhow::{bail, Result};
use std::path::Path;

/// What a tool is needed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// `ciab build`.
    Build,
    /// `ciab run` and the QEMU tests.
    Run,
}

/// A host tool (a program, or a firmware file).
#[derive(Debug, Clone)]
pub struct Tool {
    pub name: &'static str,
    pub package: &'static str,
    pub need: Need,
    probe: Probe,
}

#[derive(Debug, Clone)]
enum Probe {
    /// Run the program with these arguments; the version is in the first line
    /// of stdout or stderr that contains a digit.
    Program(&'static [&'static str]),
    /// A file that must exist.
    File(&'static str),
}

/// Every tool ciab uses.
pub fn tools() -> Vec<Tool> {
    use Need::*;
    use Probe::*;
    vec![
        Tool { name: "mmdebstrap", package: "mmdebstrap", need: Build, probe: Program(&["--version"]) },
        Tool { name: "mkfs.ext4", package: "e2fsprogs", need: Build, probe: Program(&["-V"]) },
        Tool { name: "mkfs.vfat", package: "dosfstools", need: Build, probe: Program(&["--help"]) },
        Tool { name: "mcopy", package: "mtools", need: Build, probe: Program(&["--version"]) },
        Tool { name: "mksquashfs", package: "squashfs-tools", need: Build, probe: Program(&["-version"]) },
        Tool { name: "objcopy", package: "binutils", need: Build, probe: Program(&["--version"]) },
        // Guest images carry kernel modules decompressed.
        Tool { name: "xz", package: "xz-utils", need: Build, probe: Program(&["--version"]) },
        Tool { name: "grub-mkimage", package: "grub-pc-bin", need: Build, probe: Program(&["--version"]) },
        Tool { name: "/usr/lib/grub/i386-pc/boot.img", package: "grub-pc-bin", need: Build, probe: File("/usr/lib/grub/i386-pc/boot.img") },
        Tool { name: "xorriso", package: "xorriso", need: Build, probe: Program(&["-version"]) },
        Tool { name: "/usr/lib/grub/i386-pc/boot_hybrid.img", package: "grub-pc-bin", need: Build, probe: File("/usr/lib/grub/i386-pc/boot_hybrid.img") },
        Tool { name: "readelf", package: "binutils", need: Build, probe: Program(&["--version"]) },
        Tool { name: "qemu-img", package: "qemu-utils", need: Build, probe: Program(&["--version"]) },
        Tool { name: "qemu-system-x86_64", package: "qemu-system-x86", need: Run, probe: Program(&["--version"]) },
        Tool { name: "OVMF (UEFI firmware)", package: "ovmf", need: Run, probe: File("/usr/share/OVMF/OVMF_CODE_4M.fd") },
        Tool { name: "SeaBIOS", package: "seabios", need: Run, probe: File("/usr/share/seabios/bios-256k.bin") },
        Tool { name: "sfdisk", package: "fdisk", need: Run, probe: Program(&["--version"]) },
    ]
}

/// The result of probing one tool.
#[derive(Debug, Clone)]
pub struct Check {
    pub tool: Tool,
    /// `Some(version)` when found.
    pub version: Option<String>,
}

impl Tool {
    /// Probes the tool.
    pub fn check(&self) -> Check {
        let version = match &self.probe {
            Probe::File(path) => Path::new(path).exists().then(|| "present".to_owned()),
            Probe::Program(args) => probe_program(self.name, args),
        };
        Check { tool: self.clone(), version }
    }
}

fn probe_program(name: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(name)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let line = text.lines().find(|l| l.chars().any(|c| c.is_ascii_digit()))?;
    Some(line.trim().chars().take(60).collect())
}

/// Probes every tool.
pub fn check_all() -> Vec<Check> {
    tools().iter().map(Tool::check).collect()
}

/// Renders the doctor table.
pub fn table(checks: &[Check]) -> String {
    let mut s = format!("{:<32} {:<8} {:<16} {}\n", "tool", "status", "package", "version");
    for c in checks {
        s.push_str(&format!(
            "{:<32} {:<8} {:<16} {}\n",
            c.tool.name,
            if c.version.is_some() { "ok" } else { "MISSING" },
            c.tool.package,
            c.version.as_deref().unwrap_or("-")
        ));
    }
    s
}

/// Versions of the tools that shape the image's bytes, for cache keys and the manifest.
pub fn build_tool_versions(checks: &[Check]) -> std::collections::BTreeMap<String, String> {
    checks
        .iter()
        .filter(|c| c.tool.need == Need::Build)
        .filter_map(|c| Some((c.tool.name.to_owned(), c.version.clone()?)))
        .collect()
}

/// Fails with the table when a tool needed for `need` is missing.
pub fn require(checks: &[Check], need: Need) -> Result<()> {
    let missing: Vec<&Check> = checks.iter().filter(|c| c.tool.need == need && c.version.is_none()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let packages = missing_packages(&missing);
    bail!(
        "host tools are missing:\n\n{}\ninstall them with `ciab doctor --install` or `apt-get install {}`",
        table(checks),
        packages.join(" ")
    )
}

fn missing_packages(missing: &[&Check]) -> Vec<&'static str> {
    let mut packages: Vec<&'static str> = missing.iter().map(|c| c.tool.package).collect();
    packages.sort();
    packages.dedup();
    packages
}

/// Installs the packages of missing tools with apt (root only).
///
/// Checks again after each round: installing one package can remove another
/// (Debian's qemu-system-x86 replaces a backported qemu-utils, taking
/// qemu-img with it), so a second round installs what went missing.
pub fn install_missing(checks: &[Check]) -> Result<()> {
    let mut checks = checks.to_vec();
    for round in 0..2 {
        let missing: Vec<&Check> = checks.iter().filter(|c| c.version.is_none()).collect();
        if missing.is_empty() {
            return Ok(());
        }
        if !rustix::process::geteuid().is_root() {
            bail!("installing packages needs root: run `sudo ciab doctor --install`");
        }
        let packages = missing_packages(&missing);
        eprintln!("ciab: installing {}", packages.join(" "));
        if round == 0 {
            Cmd::new("apt-get").package("apt").args(["update", "-qq"]).run()?;
        }
        Cmd::new("apt-get")
            .package("apt")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&packages)
            .run()?;
        checks = check_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_is_reported_with_its_package() {
        let fake = Tool { name: "ciab-no-such-tool", package: "ciab-fake-pkg", need: Need::Build, probe: Probe::Program(&["--version"]) };
        let checks = vec![fake.check(), Tool { name: "sh", package: "dash", need: Need::Build, probe: Probe::File("/bin/sh") }.check()];
        assert!(checks[0].version.is_none());
        assert_eq!(checks[1].version.as_deref(), Some("present"));
        let err = require(&checks, Need::Build).unwrap_err().to_string();
        assert!(err.contains("ciab-no-such-tool                MISSING  ciab-fake-pkg"), "{err}");
        assert!(err.contains("apt-get install ciab-fake-pkg"), "{err}");
        // A missing run-time tool does not block a build.
        assert!(require(&checks[1..], Need::Build).is_ok());
    }

    #[test]
    fn version_is_read_from_output() {
        let v = probe_program("sh", &["-c", "echo 'tool 1.2.3 (x)'"]).unwrap();
        assert_eq!(v, "tool 1.2.3 (x)");
    }
}
