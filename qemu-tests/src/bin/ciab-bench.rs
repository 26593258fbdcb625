//! `ciab-bench`: the builder's numbers, each against a peer measured in the
//! same run.
//!
//! - cold build of `tiny` (empty stage cache, warm .deb cache) vs plain
//!   mmdebstrap of the same packages with the same .deb cache;
//! - rebuild with no change, and after one overlay file changed, vs the cold build;
//! - image sizes;
//! - QEMU start to the first-boot ready line, UEFI and BIOS, no network.
//!
//! - `flash`: writing the `eval` raw image to a file and to a loop device,
//!   `ciab flash` (read-back verify included) vs `dd bs=4M conv=sparse,fsync`
//!   vs `bmaptool copy`, caches dropped before each run, median of 3; and
//!   the installer ISO's boot-to-installed time under TCG.
//!
//! - `registry`: fetching a ≥1 GiB image (incompressible layers) from a local
//!   `docker-registry` into an empty blob cache and writing the bundle's
//!   Distribution tree, vs `skopeo copy --all` of the same image to an OCI
//!   layout; then the same fetch with a warm cache (and how many requests
//!   reached the registry). Page cache dropped before each run, median of 3.
//!
//! Run: `cargo run --release -p ciab-qemu-tests --bin ciab-bench [build|flash|registry]`
//! (as root; all when no argument is given).

use anyhow::{Context, Result};
use ciab_core::exec::Cmd;
use ciab_builder::qemu::{Firmware, Machine, Network};
use ciab_qemu_tests::harness::Vm;
use ciab_qemu_tests::images;
use std::path::Path;
use std::time::{Duration, Instant};

fn main() -> Result<()> {
    let what = std::env::args().nth(1).unwrap_or_default();
    if what.is_empty() || what == "build" {
        build_bench()?;
    }
    if what.is_empty() || what == "flash" {
        flash_bench()?;
    }
    if what.is_empty() || what == "registry" {
        registry_bench()?;
    }
    Ok(())
}

fn build_bench() -> Result<()> {
    let work = images::work_dir().join("bench");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let cache = work.join("cache");
    std::fs::create_dir_all(&cache)?;
    let debs = ciab_builder::cache::default_root().join("debs");
    std::fs::create_dir_all(&debs)?;
    Cmd::new("cp").arg("-al").arg(&debs).arg(cache.join("debs")).run()?;

    // Warm the .deb cache first so neither side pays for downloads.
    let tiny_spec = images::repo_root().join("images/tiny.toml");
    images::build_with(&images::options(&tiny_spec, &work.join("warm-out"), &ciab_builder::cache::default_root())?)?;

    let spec = ciab_builder::spec::Spec::load(&tiny_spec)?;
    let t = Instant::now();
    plain_mmdebstrap(&spec, &debs, &work.join("mmdebstrap-tree"))?;
    let mmdebstrap = t.elapsed();
    let _ = std::fs::remove_dir_all(work.join("mmdebstrap-tree"));

    // The overlay-change spec includes tiny and adds one layer.
    let scratch = work.join("checkout");
    std::fs::create_dir_all(scratch.join("images"))?;
    std::fs::create_dir_all(scratch.join("overlays/extra/etc"))?;
    std::fs::write(scratch.join("overlays/extra/etc/motd"), "one\n")?;
    let bench_spec = scratch.join("images/bench.toml");
    // Named `tiny`: first boot takes its sizing profile from the image name.
    std::fs::write(&bench_spec, format!("include = [{:?}]\n[overlays]\nlayers = [\"extra\"]\n", tiny_spec.display().to_string()))?;
    let opts = images::options(&bench_spec, &work.join("out"), &cache)?;

    let t = Instant::now();
    let cold = images::build_with(&opts)?;
    let cold_t = t.elapsed();
    let t = Instant::now();
    images::build_with(&opts)?;
    let nochange_t = t.elapsed();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
    std::fs::write(scratch.join("overlays/extra/etc/motd"), format!("changed at {nanos}\n"))?;
    let t = Instant::now();
    images::build_with(&opts)?;
    let onefile_t = t.elapsed();

    let out = &cold.out_dir;
    let manifest = ciab_builder::verify::verify_dir(out, None)?;
    let raw = manifest.outputs.iter().find(|o| o.kind == "raw").context("no raw output")?;
    let qcow = manifest.outputs.iter().find(|o| o.kind == "qcow2").context("no qcow2 output")?;
    let data: u64 = manifest.disk.block_map.iter().map(|r| r.length).sum();

    let uefi = time_to_ready(&out.join(&raw.path), Firmware::Uefi)?;
    let bios = time_to_ready(&out.join(&raw.path), Firmware::Bios)?;

    let s = |d: Duration| format!("{:.1} s", d.as_secs_f64());
    let mib = |b: u64| format!("{:.0} MiB", b as f64 / (1 << 20) as f64);
    println!("ciab-bench ({} on {} cores)", manifest.image.kernel, std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    println!("{:<44} {:>10} {:>16}", "measure", "value", "ratio");
    println!("{:<44} {:>10} {:>16}", "plain mmdebstrap, same packages, warm debs", s(mmdebstrap), "1.00 (peer)");
    println!("{:<44} {:>10} {:>16}", "ciab cold build of tiny (warm debs)", s(cold_t), format!("{:.2}x mmdebstrap", cold_t.as_secs_f64() / mmdebstrap.as_secs_f64()));
    println!("{:<44} {:>10} {:>16}", "rebuild, no change", s(nochange_t), format!("{:.3}x cold", nochange_t.as_secs_f64() / cold_t.as_secs_f64()));
    println!("{:<44} {:>10} {:>16}", "rebuild, one overlay file changed", s(onefile_t), format!("{:.3}x cold", onefile_t.as_secs_f64() / cold_t.as_secs_f64()));
    println!("{:<44} {:>10}", "raw image, apparent size", mib(raw.size));
    println!("{:<44} {:>10}", "raw image, data (block map)", mib(data));
    println!("{:<44} {:>10}", "qcow2 (zstd)", mib(qcow.size));
    println!("{:<44} {:>10}", "QEMU/TCG start to ready, UEFI, no network", s(uefi));
    println!("{:<44} {:>10}", "QEMU/TCG start to ready, BIOS, no network", s(bios));
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

fn plain_mmdebstrap(spec: &ciab_builder::spec::Spec, debs: &Path, tree: &Path) -> Result<()> {
    let sources = ciab_builder::mirror::resolve(spec.debian.mirror.as_deref(), spec.debian.security_mirror.as_deref(), Path::new("/etc/apt"))?;
    let q = |p: &Path| ciab_core::exec::shell_quote(&p.to_string_lossy());
    let mut cmd = Cmd::new("mmdebstrap")
        .arg("--mode=root")
        .arg(format!("--variant={}", spec.debian.variant))
        .arg(format!("--include={}", spec.packages.join(",")))
        .arg("--skip=download/empty")
        .arg("--skip=essential/unlink")
        .arg("--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/")
        .arg(format!("--setup-hook=sync-in {} /var/cache/apt/archives/", q(debs)))
        .arg(&spec.debian.suite)
        .arg(tree);
    for l in sources.lines(&spec.debian.suite, &spec.debian.components) {
        cmd = cmd.arg(l);
    }
    cmd.run()?;
    Ok(())
}

fn time_to_ready(image: &Path, firmware: Firmware) -> Result<Duration> {
    // First boot claims the disk after the image: give it an 8 GB one.
    let disk = images::disk_with_image(image, &images::work_dir().join(format!("bench-{firmware}")), "8G")?;
    let mut m = Machine::new(&disk);
    m.firmware = firmware;
    m.accel = ciab_builder::run::choose_accel("auto")?;
    m.memory_mib = 1024;
    m.cpus = 2;
    m.snapshot = true;
    m.network = Network::None;
    let t = Instant::now();
    let vm = Vm::start(&m)?;
    vm.wait_for_line(ciab_core::contract::READY_LINE, Duration::from_secs(300))?;
    Ok(t.elapsed())
}

fn drop_caches() {
    let _ = Cmd::new("sync").run();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

/// Median wall time of three runs of `f`, each after `prepare` and with
/// the page cache dropped.
fn median3(mut prepare: impl FnMut() -> Result<()>, mut f: impl FnMut() -> Result<()>) -> Result<Duration> {
    let mut times = Vec::new();
    for _ in 0..3 {
        prepare()?;
        drop_caches();
        let t = Instant::now();
        f()?;
        times.push(t.elapsed());
    }
    times.sort();
    Ok(times[1])
}

fn flash_bench() -> Result<()> {
    let work = images::work_dir().join("bench-flash");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let eval = images::build_with(&images::options(&images::repo_root().join("images/eval.toml"), &images::work_dir().join("out"), &ciab_builder::cache::default_root())?)?;
    let dir = eval.out_dir;
    let raw = dir.join("eval.raw");
    let bmap = dir.join("eval.bmap");
    let size = std::fs::metadata(&raw)?.len();
    let ciab = images::ciab_bin()?;
    let target = work.join("target.img");
    let rm = || {
        let _ = std::fs::remove_file(&target);
        Ok(())
    };
    let t = target.to_str().context("path")?.to_owned();
    let file_ours = median3(rm, || Cmd::new(&ciab).arg("flash").arg(&dir).arg(&t).args(["--to-file", "--yes"]).run().map(|_| ()))?;
    let file_dd = median3(rm, || {
        Cmd::new("dd").arg(format!("if={}", raw.display())).arg(format!("of={t}")).args(["bs=4M", "conv=sparse,fsync", "status=none"]).run().map(|_| ())
    })?;
    let file_bmap = median3(rm, || Cmd::new("bmaptool").args(["-q", "copy", "--bmap"]).arg(&bmap).arg(&raw).arg(&t).run().map(|_| ()))?;

    // A loop device over a file as large as the image.
    let backing = work.join("loop-backing");
    std::fs::File::create(&backing)?.set_len(size)?;
    let dev = Cmd::new("losetup").args(["--find", "--show"]).arg(&backing).run()?.trim().to_owned();
    let none = || Ok(());
    let result = (|| -> Result<(Duration, Duration, Duration)> {
        let ours = median3(none, || Cmd::new(&ciab).arg("flash").arg(&dir).arg(&dev).arg("--yes").run().map(|_| ()))?;
        let dd = median3(none, || {
            Cmd::new("dd").arg(format!("if={}", raw.display())).arg(format!("of={dev}")).args(["bs=4M", "conv=sparse,fsync", "status=none"]).run().map(|_| ())
        })?;
        let bmap_t = median3(none, || Cmd::new("bmaptool").args(["-q", "copy", "--bmap"]).arg(&bmap).arg(&raw).arg(&dev).run().map(|_| ()))?;
        Ok((ours, dd, bmap_t))
    })();
    let _ = Cmd::new("losetup").arg("-d").arg(&dev).run();
    let (loop_ours, loop_dd, loop_bmap) = result?;

    let installer = installer_time(&work)?;

    let manifest = ciab_builder::verify::verify_dir(&dir, None)?;
    let data: u64 = manifest.disk.block_map.iter().map(|r| r.length).sum();
    let s = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    let mibs = |d: Duration| format!("{:.0} MiB/s", data as f64 / d.as_secs_f64() / (1 << 20) as f64);
    println!("ciab-bench flash: eval.raw {} MiB apparent, {} MiB data; median of 3, page cache dropped before each", size >> 20, data >> 20);
    println!("{:<46} {:>9} {:>12} {:>22}", "measure", "time", "data rate", "ratio (peer / ours)");
    for (label, ours, dd, bm) in [("file", file_ours, file_dd, file_bmap), ("loop device", loop_ours, loop_dd, loop_bmap)] {
        println!("{:<46} {:>9} {:>12} {:>22}", format!("{label}: ciab flash (incl. read-back verify)"), s(ours), mibs(ours), "1.00");
        println!("{:<46} {:>9} {:>12} {:>22}", format!("{label}: dd bs=4M conv=sparse,fsync"), s(dd), mibs(dd), format!("{:.2}", dd.as_secs_f64() / ours.as_secs_f64()));
        println!("{:<46} {:>9} {:>12} {:>22}", format!("{label}: bmaptool copy"), s(bm), mibs(bm), format!("{:.2}", bm.as_secs_f64() / ours.as_secs_f64()));
    }
    println!("{:<46} {:>9}", "installer ISO (tiny): QEMU/TCG start to installed", s(installer));
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// Boots the tiny installer ISO (UEFI, virtual CD) with a blank target disk
/// and returns the time from QEMU start to the installed line.
fn installer_time(work: &Path) -> Result<Duration> {
    let out = images::tiny_installer()?;
    let target = work.join("installer-target.raw");
    std::fs::File::create(&target)?.set_len(16 << 30)?;
    let mut m = Machine::new(&target);
    m.firmware = Firmware::Uefi;
    m.accel = ciab_builder::run::choose_accel("auto")?;
    m.memory_mib = 1536;
    m.network = Network::None;
    m.disk_boot_index = 1;
    m.extra_args = vec![
        "-drive".into(),
        format!("file={},format=raw,readonly=on,media=cdrom,if=none,id=cd", out.join("tinybox.iso").display()).into(),
        "-device".into(),
        "ide-cd,drive=cd,bootindex=0".into(),
        "-no-reboot".into(),
    ];
    let t = Instant::now();
    let vm = Vm::start(&m)?;
    vm.wait_for_line(ciab_core::contract::INSTALLED_LINE, Duration::from_secs(600))?;
    Ok(t.elapsed())
}

fn registry_bench() -> Result<()> {
    use ciab_builder::fetch::{FetchOptions, Fetcher};
    use ciab_builder::spec::{ImageSource, ImageSpec, Origin};
    use ciab_qemu_tests::oci_fixtures::{random_layout, LocalRegistry};
    let work = images::work_dir().join("bench-registry");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let total: u64 = 1 << 30;
    let layout = random_layout(&work.join("layout"), "1", total, 8, 42)?;
    let origin = LocalRegistry::start_writable(&work.join("origin"))?;
    origin.push(&layout, "bench/random", "1")?;
    std::fs::remove_dir_all(&layout.dir)?;
    let host = origin.host();
    let spec = ImageSpec {
        reference: "registry.k8s.io/bench/random:1".into(),
        digest: Some(layout.digest.clone()),
        platforms: vec!["linux/amd64".into()],
        source: ImageSource::Registry { reference: format!("{host}/bench/random:1") },
        origin: Origin::default(),
    };
    let opts = FetchOptions { insecure_registries: vec![host.clone()], jobs: 4 };
    let cache = work.join("cache");
    let tree = work.join("bundle");
    let skopeo_dir = work.join("skopeo");
    let clear = || -> Result<()> {
        for d in [&cache, &tree, &skopeo_dir] {
            let _ = std::fs::remove_dir_all(d);
        }
        Ok(())
    };
    let ours = median3(clear, || {
        let f = Fetcher::new(&cache, &opts)?;
        let fetched = f.images(std::slice::from_ref(&spec))?;
        let contents: Vec<_> = fetched.iter().map(|i| i.content.clone()).collect();
        ciab_builder::oci::distribution::write(&tree, &contents, |d| f.store().path(d))?;
        Ok(())
    })?;
    let skopeo = median3(clear, || {
        Cmd::new("skopeo")
            .args(["--insecure-policy", "copy", "-q", "--all", "--src-tls-verify=false"])
            .arg(format!("docker://{host}/bench/random:1"))
            .arg(format!("oci:{}:1", skopeo_dir.display()))
            .run()
            .map(|_| ())
    })?;
    // Warm: the blob cache holds everything; nothing should reach the registry.
    let f = Fetcher::new(&cache, &opts)?;
    f.images(std::slice::from_ref(&spec))?;
    let gets_before = origin.log().matches("\"GET /v2/").count();
    // The count below means something only if the registry logs requests.
    anyhow::ensure!(gets_before > 0, "the registry's log shows no GET requests at all: cannot count the warm fetch's");
    let t = Instant::now();
    f.images(std::slice::from_ref(&spec))?;
    let warm = t.elapsed();
    let gets = origin.log().matches("\"GET /v2/").count() - gets_before;
    let mib = total as f64 / 1048576.0;
    println!("ciab-bench registry: one image, 8 incompressible layers, {mib:.0} MiB, from a local docker-registry over HTTP; median of 3, page cache dropped before each");
    println!("  cold fetch + bundle tree  {:>6.2} s  {:>6.0} MiB/s", ours.as_secs_f64(), mib / ours.as_secs_f64());
    println!("  skopeo copy --all (OCI)   {:>6.2} s  {:>6.0} MiB/s", skopeo.as_secs_f64(), mib / skopeo.as_secs_f64());
    println!("  ratio skopeo/ours          {:>6.2}x", skopeo.as_secs_f64() / ours.as_secs_f64());
    println!("  warm fetch                {:>6.3} s, {gets} GET requests reached the registry", warm.as_secs_f64());
    Ok(())
}
