//! `ciab-firstboot`: turns a generic ciab image into this box's system on its
//! first power-on, and shows how far it got.

use anyhow::{Context, Result};
use ciab_firstboot::engine::{ConsoleReporter, Engine, MultiReporter, RunOutcome};
use ciab_firstboot::status::{self, SdNotifyReporter, StatusServer};
use ciab_core::contract;
use ciab_firstboot::engine::journal::Journal;
use ciab_firstboot::steps;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};

/// First boot of a ciab appliance: discover, plan, secrets, storage, network.
#[derive(Debug, Parser)]
#[command(name = "ciab-firstboot", version)]
struct Cli {
    /// State directory (journal, plan, secrets).
    #[arg(long, default_value = "/var/lib/ciab", global = true)]
    state_dir: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run (or resume) first boot; the default.
    Run,
    /// Resume a first boot that stopped in the failed state.
    Retry,
    /// Show each step's state.
    Status {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Serve the status page and /status.json.
    ServeStatus {
        /// TCP port.
        #[arg(long, default_value_t = ciab_firstboot::status::DEFAULT_PORT)]
        port: u16,
    },
    /// Print the discovered hardware as JSON.
    Discover,
}

fn main() {
    let cli = Cli::parse();
    ciab_firstboot::engine::report::console_notes();
    match dispatch(&cli) {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            tracing::error!("error: {err:#}");
            std::process::exit(1);
        }
    }
}

fn journal_path(state_dir: &Path) -> PathBuf {
    state_dir.join("firstboot.json")
}

fn dispatch(cli: &Cli) -> Result<i32> {
    match cli.command.as_ref().unwrap_or(&Command::Run) {
        Command::Run | Command::Retry => run(&cli.state_dir),
        Command::Status { json } => {
            let path = journal_path(&cli.state_dir);
            let journal = Journal::read(&path)?.with_context(|| format!("no first-boot journal at {} yet", path.display()))?;
            if *json {
                println!("{}", status::to_json(&journal));
            } else {
                print!("{}", status::render_table(&journal));
            }
            Ok(0)
        }
        Command::ServeStatus { port } => {
            let server = StatusServer::start(("0.0.0.0", *port), journal_path(&cli.state_dir)).with_context(|| format!("listening on port {port}"))?;
            tracing::info!("status page on {}", server.local_addr());
            loop {
                std::thread::park();
            }
        }
        Command::Discover => {
            println!("{}", serde_json::to_string_pretty(&ciab_firstboot::model::hardware::discover(Path::new("/"))?)?);
            Ok(0)
        }
    }
}

/// VmHWM from /proc/self/status: the most memory this process held.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn run(state_dir: &Path) -> Result<i32> {
    std::fs::create_dir_all(state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
    let mut ctx = ciab_firstboot::ctx::Ctx::new(Path::new("/"), state_dir);
    ctx.resume();
    let mut engine = Engine::new(journal_path(state_dir), steps::all())?;
    let mut reporter = MultiReporter(vec![Box::new(ConsoleReporter::stdout()), Box::new(SdNotifyReporter::from_env(true))]);
    match engine.run(&mut ctx, &mut reporter)? {
        RunOutcome::Done => {
            if let Some(rss) = peak_rss_kib() {
                tracing::info!("peak memory {} KiB", rss);
            }
            // The contract's marker, verbatim: the installer's and the
            // tests' waits match this exact line.
            println!("{}", contract::READY_LINE);
            Ok(0)
        }
        RunOutcome::Failed { step, error } => {
            tracing::info!("FAILED at step {step}: {error}");
            tracing::info!("fix the cause, then run `ciab-firstboot retry` or reboot");
            Ok(1)
        }
    }
}
