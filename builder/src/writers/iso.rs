//! Hybrid installer ISO: one image that boots four ways.
//!
//! * BIOS, CD: El Torito no-emulation entry -> GRUB `i386-pc-eltorito` core image.
//! * BIOS, disk: GRUB's `boot_hybrid.img` in the MBR, patched by xorriso to load
//!   the same core image (`--grub2-mbr` + `--grub2-boot-info`).
//! * UEFI, CD: El Torito EFI entry -> FAT image holding `/EFI/BOOT/BOOTX64.EFI`.
//! * UEFI, disk: the same FAT image, appended after the ISO and listed in GPT as
//!   an EFI System Partition (the layout Debian's and Ubuntu's ISOs use).
//!
//! The GRUB config is embedded in the core image, so the ISO carries no GRUB
//! modules or grub.cfg. Nothing is mounted: FAT is built with dosfstools+mtools.
//! Reproducible: SOURCE_DATE_EPOCH and TZ=UTC for every tool, all file dates in
//! both filesystems are forced to it (input mtimes never leak), and uid/gid/modes
//! are normalised by `-r`.

use anyhow::{bail, ensure, Context, Result};
use std::path::Path;
use ciab_core::exec::Cmd;
use std::process::Command;

pub struct IsoInput<'a> {
    /// ISO9660 volume label; GRUB finds the ISO by it.
    pub volume_id: &'a str,
    /// Files placed in the ISO root as they are.
    pub tree: &'a Path,
    /// bzImage for the BIOS path (`/ciab/vmlinuz`).
    pub kernel: &'a Path,
    /// initramfs for the BIOS path (`/ciab/initrd.img`).
    pub initrd: &'a Path,
    /// Kernel command line for the BIOS path (Linux syntax, `"` may group).
    pub cmdline: &'a str,
    /// EFI executable (a UKI) for the UEFI path.
    pub uki: &'a Path,
    pub source_date_epoch: i64,
    /// Scratch space; `<work_dir>/iso` is wiped and reused.
    pub work_dir: &'a Path,
    /// The ISO to write; written under a temporary name, then renamed.
    pub output: &'a Path,
}

const GRUB_DIR: &str = "/usr/lib/grub/i386-pc";
/// Linked into the core image because the ISO holds no `.mod` files.
/// part_* are needed when booted as a disk (GPT + protective MBR).
const GRUB_MODULES: &[&str] = &[
    "biosdisk", "iso9660", "part_gpt", "part_msdos", "search", "search_label",
    "search_fs_file", "linux", "boot", "normal", "configfile", "echo", "test",
    "serial", "terminal",
];

pub fn build_iso(input: &IsoInput) -> Result<()> {
    check_inputs(input)?;
    let grub_args = grub_cmdline_args(input.cmdline)?;
    let dir = input.work_dir.join("iso");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let epoch = input.source_date_epoch.to_string();

    // BIOS: GRUB core image with an embedded config. It searches by label rather
    // than trusting BIOS drive numbers; if the search fails, root stays the boot
    // device GRUB came from, which is right in the common case anyway.
    // `serial`/`terminal_*` errors (no COM1) are non-fatal in the embedded script.
    let cfg = format!(
        "serial --unit=0 --speed=115200\n\
         terminal_input serial console\n\
         terminal_output serial console\n\
         search --no-floppy --label --set=root {label}\n\
         echo 'ciab: booting from' $root\n\
         linux /ciab/vmlinuz {args}\n\
         initrd /ciab/initrd.img\n\
         boot\n",
        label = grub_quote(input.volume_id),
        args = grub_args.iter().map(|a| grub_quote(a)).collect::<Vec<_>>().join(" "),
    );
    let cfg_path = dir.join("early.cfg");
    std::fs::write(&cfg_path, cfg).with_context(|| format!("writing {}", cfg_path.display()))?;
    let bios_img = dir.join("bios.img");
    let mut mkimage = Command::new("grub-mkimage");
    mkimage.args(["-O", "i386-pc-eltorito", "-d", GRUB_DIR, "-p", "/boot/grub", "-c"])
        .arg(&cfg_path).arg("-o").arg(&bios_img).args(GRUB_MODULES);
    run(&mut mkimage, &epoch)?;

    // UEFI: FAT image sized for the UKI plus FAT tables/slack, rounded to MiB.
    // mcopy without -m: the file date comes from SOURCE_DATE_EPOCH, not the input.
    let uki_len = std::fs::metadata(input.uki)
        .with_context(|| format!("reading size of {}", input.uki.display()))?.len();
    let fat_kib = (uki_len + uki_len / 32 + (1 << 20)).div_ceil(1 << 20) * 1024;
    let efi_img = dir.join("efi.img");
    run(Command::new("mkfs.vfat").args(["--invariant", "-n", "CIAB-EFI", "-C"])
        .arg(&efi_img).arg(fat_kib.to_string()), &epoch)?;
    run(Command::new("mmd").arg("-i").arg(&efi_img).args(["::/EFI", "::/EFI/BOOT"]), &epoch)?;
    run(Command::new("mcopy").arg("-i").arg(&efi_img).arg(input.uki)
        .arg("::/EFI/BOOT/BOOTX64.EFI"), &epoch)?;

    let out_name = input.output.file_name()
        .with_context(|| format!("output {} has no file name", input.output.display()))?;
    let mut tmp_name = out_name.to_os_string();
    tmp_name.push(".partial");
    let tmp = input.output.with_file_name(tmp_name);
    if tmp.exists() {
        std::fs::remove_file(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }

    let mut x = Command::new("xorriso");
    // -no_rc: ignore /etc/xorriso and ~/.xorrisorc so the host cannot change the bytes.
    x.args(["-no_rc", "-as", "mkisofs", "-o"]).arg(&tmp)
        .args(["-iso-level", "3", "-r", "-V", input.volume_id])
        // SOURCE_DATE_EPOCH fixes volume dates and the GPT GUIDs; this also pins
        // every file's mtime, which otherwise would come from the inputs.
        .args(["--set_all_file_dates", &format!("={epoch}")])
        // Disk boot (BIOS): GRUB hybrid MBR; ISO starts at 64 sectors so the
        // partition table describes it; Ubuntu-style bootable flag for picky BIOSes.
        .arg("--grub2-mbr").arg(Path::new(GRUB_DIR).join("boot_hybrid.img"))
        .args(["-partition_offset", "16", "--mbr-force-bootable"])
        // Disk boot (UEFI): ESP as GPT partition 2, after the ISO, no overlap.
        .args(["-append_partition", "2", "0xef"]).arg(&efi_img)
        .arg("-appended_part_as_gpt")
        .args(["-c", "/ciab/boot.cat"])
        // CD boot (BIOS).
        .args(["-b", "/ciab/bios.img", "-no-emul-boot", "-boot-load-size", "4"])
        .args(["-boot-info-table", "--grub2-boot-info"])
        // CD boot (UEFI): points at the appended partition, so the ESP bytes are
        // stored once. Above 32 MiB the El Torito load size is written as 0,
        // which OVMF reads as "up to the end of the medium" (tested).
        .args(["-eltorito-alt-boot", "-e", "--interval:appended_partition_2:all::"])
        .args(["-no-emul-boot", "-graft-points"])
        .arg(graft("/", input.tree)?)
        .arg(graft("/ciab/vmlinuz", input.kernel)?)
        .arg(graft("/ciab/initrd.img", input.initrd)?)
        .arg(graft("/ciab/bios.img", &bios_img)?)
        // Boot files first, ahead of any multi-GiB payload in the tree: keeps
        // what firmware and GRUB read at low block addresses.
        .args(["--sort-weight", "1", "/ciab"])
        // Its cwd would be searched for .mkisofsrc; use our fresh directory.
        .current_dir(&dir);
    if let Err(e) = run(&mut x, &epoch) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, input.output)
        .with_context(|| format!("renaming {} to {}", tmp.display(), input.output.display()))?;
    Ok(())
}

fn check_inputs(i: &IsoInput) -> Result<()> {
    ensure!(!i.volume_id.is_empty() && i.volume_id.len() <= 32,
        "volume_id {:?} must be 1..=32 characters", i.volume_id);
    ensure!(i.volume_id.chars().all(|c| c.is_ascii_alphanumeric() || "_-. ".contains(c)),
        "volume_id {:?}: only ASCII letters, digits, '_', '-', '.', ' ' are allowed", i.volume_id);
    for (what, p) in [("kernel", i.kernel), ("initrd", i.initrd), ("uki", i.uki)] {
        let m = std::fs::metadata(p).with_context(|| format!("{what} {} is missing", p.display()))?;
        ensure!(m.is_file(), "{what} {} is not a regular file", p.display());
    }
    let m = std::fs::metadata(i.tree).with_context(|| format!("tree {} is missing", i.tree.display()))?;
    ensure!(m.is_dir(), "tree {} is not a directory", i.tree.display());
    // /ciab is ours; a clash would silently shadow or be shadowed by boot files.
    let reserved = i.tree.join("ciab");
    ensure!(!reserved.exists() && reserved.symlink_metadata().is_err(),
        "tree {} must not contain 'ciab' (reserved for boot files)", i.tree.display());
    Ok(())
}

/// Split a Linux command line into the words GRUB must pass so the kernel sees
/// the same thing. GRUB re-joins `linux` arguments, wraps ones with spaces in
/// `"..."` and backslash-escapes `\ ' "` (which Linux does not unescape), so
/// those characters cannot survive and are refused instead of mangled.
fn grub_cmdline_args(cmdline: &str) -> Result<Vec<String>> {
    if let Some(c) = cmdline.chars().find(|c| c.is_control() || *c == '\\' || *c == '\'') {
        bail!("kernel command line {cmdline:?}: character {c:?} cannot be passed through GRUB");
    }
    let (mut words, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    for c in cmdline.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
    }
    ensure!(!quoted, "kernel command line {cmdline:?}: unbalanced '\"'");
    if !cur.is_empty() {
        words.push(cur);
    }
    Ok(words)
}

/// Single quotes make GRUB's parser take `$`, `;`, `"` and spaces literally.
/// Callers have already refused `'` itself.
fn grub_quote(s: &str) -> String {
    format!("'{s}'")
}

/// `-graft-points` pathspec; `=` and `\` in either side must be escaped.
fn graft(iso_path: &str, disk: &Path) -> Result<String> {
    let disk = disk.to_str().with_context(|| format!("path {} is not UTF-8", disk.display()))?;
    let esc = |s: &str| s.replace('\\', "\\\\").replace('=', "\\=");
    Ok(format!("{}={}", esc(iso_path), esc(disk)))
}

/// Runs a tool through the project's wrapper with the same clock and time
/// zone for every tool (FAT stores local time).
fn run(cmd: &mut Command, source_date_epoch: &str) -> Result<()> {
    let program = cmd.get_program().to_owned();
    let package = match program.to_str() {
        Some("grub-mkimage") => "grub-pc-bin",
        Some("mkfs.vfat") => "dosfstools",
        Some("mmd" | "mcopy") => "mtools",
        _ => "xorriso",
    };
    let mut c = Cmd::new(&program)
        .package(package)
        .args(cmd.get_args())
        .env("SOURCE_DATE_EPOCH", source_date_epoch)
        .env("TZ", "UTC")
        .env("LC_ALL", "C")
        .env("MTOOLS_SKIP_CHECK", "1");
    if let Some(dir) = cmd.get_current_dir() {
        c = c.current_dir(dir);
    }
    c.run().map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_input_names_the_file() {
        let d = std::env::temp_dir().join(format!("ciab-iso-unit-{}", std::process::id()));
        std::fs::create_dir_all(d.join("tree")).unwrap();
        std::fs::write(d.join("k"), b"k").unwrap();
        std::fs::write(d.join("u"), b"u").unwrap();
        let missing = d.join("no-such-initrd.img");
        let input = IsoInput {
            volume_id: "CIAB-INSTALL", tree: &d.join("tree"), kernel: &d.join("k"),
            initrd: &missing, cmdline: "console=ttyS0", uki: &d.join("u"),
            source_date_epoch: 0, work_dir: &d, output: &d.join("out.iso"),
        };
        let err = format!("{:#}", build_iso(&input).unwrap_err());
        assert!(err.contains("initrd") && err.contains(&missing.display().to_string()), "{err}");
        assert!(!d.join("out.iso").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn cmdline_words_follow_linux_quoting() {
        assert_eq!(grub_cmdline_args(r#" a  foo="x y" b=$x;z "#).unwrap(),
            ["a", "foo=x y", "b=$x;z"]);
        assert!(grub_cmdline_args("a 'b'").is_err());
        assert!(grub_cmdline_args(r"a\b").is_err());
        assert!(grub_cmdline_args("a\nb").is_err());
        assert!(grub_cmdline_args(r#"a="b"#).is_err());
    }

    #[test]
    fn failed_command_reports_status_and_stderr() {
        let err = run(Command::new("sh").args(["-c", "echo boom >&2; exit 3"]), "0").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("sh failed (exit status 3)") && msg.contains("boom"), "{msg}");
        let err = run(&mut Command::new("/nonexistent/tool"), "0").unwrap_err();
        assert!(format!("{err:#}").contains("tool not found"), "{err:#}");
    }

    #[test]
    fn graft_escapes() {
        assert_eq!(graft("/x", Path::new("/a=b\\c")).unwrap(), r"/x=/a\=b\\c");
    }
}
