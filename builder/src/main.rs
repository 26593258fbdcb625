//! `ciab`: thin entry point; every verb lives in the library.

use anyhow::Result;
use ciab_builder::cli::{Cli, Command};
use ciab_builder::{build, doctor, flash, run, sign, spec, verify};
use clap::Parser;

/// Exit codes: 1 failure, 2 usage (clap), 65 invalid spec, 69 missing host tools.
const EXIT_FAILURE: i32 = 1;
const EXIT_DATAERR: i32 = 65;

fn main() {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    if let Err(err) = dispatch(cli.command) {
        eprintln!("ciab: error: {err:#}");
        let code = if err.chain().any(|e| e.downcast_ref::<spec::SpecError>().is_some()) { EXIT_DATAERR } else { EXIT_FAILURE };
        std::process::exit(code);
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).without_time().init();
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Doctor(args) => {
            let checks = doctor::check_all();
            if args.install {
                doctor::install_missing(&checks)?;
                let checks = doctor::check_all();
                print!("{}", doctor::table(&checks));
                return doctor::require(&checks, doctor::Need::Build).and_then(|_| doctor::require(&checks, doctor::Need::Run));
            }
            print!("{}", doctor::table(&checks));
            doctor::require(&checks, doctor::Need::Build)?;
            doctor::require(&checks, doctor::Need::Run)
        }
        Command::Validate(args) => {
            let s = spec::Spec::load(&args.spec)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!("{}: ok ({} {}, {} packages, overlays: {}, {} images, {} artifacts)", args.spec.display(), s.name, s.version, s.packages.len(),
                    s.overlays.iter().filter_map(|o| o.file_name()).map(|n| n.to_string_lossy().into_owned()).collect::<Vec<_>>().join(", "),
                    s.images.len(), s.artifacts.len());
                if let Err(e) = ciab_builder::fetch::check_pinned(&s) {
                    println!("warning: {e}");
                }
            }
            Ok(())
        }
        Command::Build(args) => {
            let opts = build::BuildOptions {
                spec: args.spec,
                out: args.out,
                cache_root: args.cache_dir.unwrap_or_else(ciab_builder::cache::default_root),
                firstboot_bin: args.firstboot_bin,
                create_key: !args.no_keygen,
                signing_key: args.key,
                fetch: args.fetch.options(),
            };
            let result = build::build(&opts)?;
            eprint!("{}", result.summary);
            println!("{}", result.out_dir.display());
            Ok(())
        }
        Command::Lock(args) => {
            let cache_root = args.cache_dir.clone().unwrap_or_else(ciab_builder::cache::default_root);
            let pins = ciab_builder::lock::lock(&args.spec, &cache_root, &args.fetch.options(), args.update)?;
            for p in &pins {
                println!("{}: {} {} = {}", p.origin.file.display(), p.what, p.key, p.value);
            }
            if pins.is_empty() {
                println!("{}: every image and artifact already pinned", args.spec.display());
            }
            Ok(())
        }
        Command::Verify(args) => {
            let m = verify::verify_dir(&args.dir, args.key.as_deref())?;
            println!("{}: ok: signature valid, {} outputs and {} partitions match ({} {})", args.dir.display(), m.outputs.len(), m.partitions.len(), m.image.name, m.image.version);
            Ok(())
        }
        Command::Keygen(args) => {
            let path = spec::expand_home(&args.key);
            let pk = sign::keygen(&path)?;
            println!("secret key: {}\npublic key: {}\n{}", path.display(), sign::public_key_path(&path).display(), pk.to_base64());
            Ok(())
        }
        Command::Flash(args) => flash::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Up(args) => run::up(&args),
    }
}
