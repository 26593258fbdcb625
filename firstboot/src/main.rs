//! `ciab-firstboot`: runs once on a box's first power-on.
//!
//! This is the minimal service of the builder milestone: it discovers the
//! hardware, records it under /var/lib/ciab, writes the completion stamp and
//! prints the ready line on the console. The step engine (plan, secrets,
//! storage, network, resumable journal) replaces the body of `run` later.

use anyhow::{Context, Result};
use ciab_firstboot::{contract, discover};
use std::path::Path;

const STATE_DIR: &str = "/var/lib/ciab";

fn main() {
    if let Err(err) = run() {
        eprintln!("ciab-firstboot: failed: {err:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = args.first().map(String::as_str).unwrap_or("/");
    let hw = discover::discover(Path::new(root))?;
    println!(
        "ciab-firstboot: discover: {} cpus, {} MiB RAM, firmware {:?}, kvm device {}",
        hw.cpus,
        hw.memory_bytes >> 20,
        hw.firmware,
        if hw.kvm_device { "present" } else { "absent" }
    );
    for d in &hw.disks {
        println!(
            "ciab-firstboot: discover: disk {} {} MiB{}{}",
            d.name,
            d.size_bytes >> 20,
            if d.rotational { " rotational" } else { "" },
            if d.removable { " removable" } else { "" }
        );
    }
    for n in &hw.nics {
        println!("ciab-firstboot: discover: nic {} {} carrier={}", n.name, n.mac, n.carrier);
    }
    if root == "/" {
        std::fs::create_dir_all(STATE_DIR).with_context(|| format!("creating {STATE_DIR}"))?;
        let json = serde_json::to_vec_pretty(&hw)?;
        let path = Path::new(STATE_DIR).join("hardware.json");
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, json).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
    }
    println!("{}", contract::READY_LINE);
    Ok(())
}
