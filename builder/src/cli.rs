//! Command-line arguments of `ciab`.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Build, verify and boot Cloud-in-a-Box appliance images.
///
/// A spec (images/<name>.toml) becomes a bootable, signed, reproducible disk
/// image in out/<name>/: <name>.raw (UEFI and BIOS), <name>.qcow2,
/// manifest.json with its minisign signature, and an SPDX SBOM.
#[derive(Debug, Parser)]
#[command(name = "ciab", version, propagate_version = true, help_expected = true, max_term_width = 100)]
pub struct Cli {
    /// More output (-v: debug, -vv: trace); also RUST_LOG.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Install missing host tools, build the default image and boot it in QEMU.
    Up(UpArgs),
    /// Check the host tools the build and the tests need.
    Doctor(DoctorArgs),
    /// Parse and check a spec; print it resolved.
    Validate(ValidateArgs),
    /// Build an image from a spec.
    Build(BuildArgs),
    /// Pin the spec's images to digests and artifacts to sha256s.
    ///
    /// Resolves each `[[registry.images]]` tag to its manifest digest at its
    /// source and hashes each `[[artifacts]]` file, then writes `digest =` /
    /// `sha256 =` into the spec file that declares the entry. Entries already
    /// pinned are left alone unless --update.
    Lock(LockArgs),
    /// Check an output directory's signature and every digest in its manifest.
    Verify(VerifyArgs),
    /// Write a signed image (or its installer ISO) to a disk or USB stick.
    ///
    /// Checks the signature, refuses disks that are mounted, hold the running
    /// system or are too small, asks before overwriting (unless --yes), writes
    /// only the image's data ranges, zeroes the rest, then reads every range
    /// back and compares it with the signed block map.
    Flash(FlashArgs),
    /// Create a minisign signing key pair.
    Keygen(KeygenArgs),
    /// Boot a built image in QEMU with the serial console on this terminal.
    Run(RunArgs),
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Install the Debian packages of missing tools with apt (needs root).
    #[arg(long)]
    pub install: bool,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The spec file.
    #[arg(default_value = crate::spec::DEFAULT_SPEC)]
    pub spec: PathBuf,
    /// Print the resolved spec as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The spec file.
    #[arg(default_value = crate::spec::DEFAULT_SPEC)]
    pub spec: PathBuf,
    /// Output parent directory; the image lands in <out>/<name>/.
    #[arg(short, long, default_value = "out")]
    pub out: PathBuf,
    /// Stage and download cache [default: ${XDG_CACHE_HOME:-~/.cache}/ciab].
    #[arg(long, env = "CIAB_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// minisign secret key [default: the spec's signing.key].
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// The ciab-firstboot binary to install [default: beside ciab].
    #[arg(long, help_heading = "Advanced")]
    pub firstboot_bin: Option<PathBuf>,
    /// Fail instead of creating the signing key when it does not exist.
    #[arg(long, help_heading = "Advanced")]
    pub no_keygen: bool,
    #[command(flatten)]
    pub fetch: FetchArgs,
}

/// How image and artifact downloads reach the network.
#[derive(Debug, Clone, Args)]
pub struct FetchArgs {
    /// A registry (host:port) to reach over plain HTTP instead of HTTPS,
    /// e.g. a local mirror; repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT", help_heading = "Fetching")]
    pub insecure_registries: Vec<String>,
    /// Downloads in flight at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64), help_heading = "Fetching")]
    pub jobs: u16,
}

impl FetchArgs {
    pub fn options(&self) -> crate::fetch::FetchOptions {
        crate::fetch::FetchOptions { insecure_registries: self.insecure_registries.clone(), jobs: usize::from(self.jobs) }
    }
}

#[derive(Debug, Args)]
pub struct LockArgs {
    /// The spec file.
    #[arg(default_value = crate::spec::DEFAULT_SPEC)]
    pub spec: PathBuf,
    /// Re-resolve entries that are already pinned (a tag that moved, a changed file).
    #[arg(long)]
    pub update: bool,
    /// Download cache [default: ${XDG_CACHE_HOME:-~/.cache}/ciab].
    #[arg(long, env = "CIAB_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    #[command(flatten)]
    pub fetch: FetchArgs,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The output directory (out/<name>).
    pub dir: PathBuf,
    /// Public key to check the signature with [default: the directory's
    /// signing.pub: proves integrity only; pass yours to prove origin].
    #[arg(long)]
    pub key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct FlashArgs {
    /// The output directory (out/<name>), its .raw image or its .iso installer.
    pub image: PathBuf,
    /// The whole disk to overwrite (/dev/sdX), or a file with --to-file.
    pub target: PathBuf,
    /// Write the installer ISO instead of the disk image (for a USB stick
    /// that installs the image onto a box's internal disk).
    #[arg(long)]
    pub installer: bool,
    /// The target is a regular file (created, or replaced when verified).
    #[arg(long)]
    pub to_file: bool,
    /// Do not ask before overwriting.
    #[arg(short, long)]
    pub yes: bool,
    /// Public key to check the signature with [default: the directory's
    /// signing.pub: proves integrity only; pass yours to prove origin].
    #[arg(long)]
    pub key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Secret key file; the public key is written beside it as <key>.pub.
    #[arg(long, default_value = crate::sign::DEFAULT_KEY_PATH)]
    pub key: String,
}

#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// The output directory (out/<name>) or an image file.
    pub image: PathBuf,
    /// Boot with SeaBIOS (legacy BIOS) instead of OVMF (UEFI).
    #[arg(long)]
    pub bios: bool,
    /// Memory in MiB (the eval profile's minimum is 12 GiB; the guest only
    /// touches what it uses).
    #[arg(long, default_value_t = 12288)]
    pub memory: u32,
    /// Virtual CPUs (the eval profile's minimum is 4).
    #[arg(long, default_value_t = 4)]
    pub cpus: u32,
    /// Size of the virtual disk the image sits on (first boot claims the
    /// rest); a throw-away overlay, the image itself is never written.
    #[arg(long, default_value = "64G")]
    pub disk_size: String,
    /// No network device at all (proves the image needs none).
    #[arg(long)]
    pub no_network: bool,
    /// Host port forwarded to the guest's SSH port 22.
    #[arg(long, default_value_t = 2222)]
    pub ssh_port: u16,
    /// Host port forwarded to the guest's status page (8080).
    #[arg(long, default_value_t = 8080)]
    pub status_port: u16,
    /// Host port forwarded to the cloud's TLS front end (guest port 443);
    /// the box advertises its APIs as https://localhost:PORT/… so clients on
    /// this machine can use the catalog.
    #[arg(long, default_value_t = 8443)]
    pub https_port: u16,
    /// A site.toml to hand the box on a CIAB-CONFIG disk, instead of the one
    /// `ciab run` writes (host name ciab, public endpoint localhost:HTTPS_PORT).
    #[arg(long, value_name = "FILE")]
    pub site: Option<PathBuf>,
    /// Accelerator: auto (probe KVM, fall back to TCG), kvm or tcg.
    #[arg(long, default_value = "auto", help_heading = "Advanced")]
    pub accel: String,
    /// Skip the signature check of an output directory before booting.
    #[arg(long, help_heading = "Advanced")]
    pub no_verify: bool,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// The spec file.
    #[arg(default_value = crate::spec::DEFAULT_SPEC)]
    pub spec: PathBuf,
    /// Output parent directory.
    #[arg(short, long, default_value = "out")]
    pub out: PathBuf,
    /// Build only; do not boot.
    #[arg(long)]
    pub no_run: bool,
    /// Boot with SeaBIOS instead of OVMF.
    #[arg(long)]
    pub bios: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent_and_every_option_documented() {
        // help_expected makes debug_assert fail on an undocumented argument.
        Cli::command().debug_assert();
    }

    #[test]
    fn help_fits_80_columns() {
        let mut cmd = Cli::command().term_width(80);
        cmd.build();
        let mut names: Vec<String> = cmd.get_subcommands().map(|s| s.get_name().to_owned()).collect();
        names.push(String::new());
        for name in names {
            let help = if name.is_empty() {
                cmd.render_long_help().to_string()
            } else {
                cmd.find_subcommand_mut(&name).unwrap().render_long_help().to_string()
            };
            for line in help.lines() {
                assert!(line.chars().count() <= 80, "{name}: help line over 80 columns: {line:?}");
            }
        }
    }
}
