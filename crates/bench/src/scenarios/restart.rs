//! `restart`: how long a big store takes to open, after a clean close and
//! after an unclean stop.
//!
//! The store is built by a child process (this binary, hidden subcommand
//! `__restart-build`) that ends with `std::process::exit` while the store is
//! still open: no destructor, no final sync, background flushes cut off. Each
//! open is timed inside another child (`__restart-open`) so every sample is a
//! fresh process; an unclean sample exits the same way (the store stays in
//! its unclean state), a clean one drops the store first.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use clap::Args as ClapArgs;
use converge_ledger_store::{
    AppendCommand, Clock as _, FsyncPolicy, Store, SystemClock, WriteCommand,
};
use serde_json::{Value, json};

use crate::report::{Goal, Report};
use crate::setup::{Common, new_entry, open_embedded, payload_pool};

/// Options of `restart`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    /// Entries in the store.
    #[arg(long, default_value_t = 10_000_000)]
    entries: u64,
    /// Contexts the entries are spread over.
    #[arg(long, default_value_t = 100)]
    contexts: usize,
    /// Appends per `Store::write` while building (fsync never).
    #[arg(long, default_value_t = 10_000)]
    batch: usize,
    /// Kill the build after this many seconds.
    #[arg(long, default_value_t = 900)]
    build_timeout_secs: u64,
    /// Open this existing store (built by an earlier `--keep` run) instead of
    /// building one; it is opened as found, then closed cleanly.
    #[arg(long)]
    existing: Option<PathBuf>,
    /// Keep the built store and print its path.
    #[arg(long)]
    keep: bool,
    /// Also time cold opens: `sync` and drop the OS page cache before each
    /// (root only; affects the whole machine).
    #[arg(long)]
    drop_caches: bool,
}

impl Args {
    /// Whether to print JSON.
    pub fn json(&self) -> bool {
        self.common.json
    }
}

/// Options of the hidden `__restart-build`.
#[derive(ClapArgs, Debug)]
pub struct BuildArgs {
    #[arg(long)]
    dir: PathBuf,
    #[arg(long)]
    entries: u64,
    #[arg(long)]
    contexts: usize,
    #[arg(long)]
    batch: usize,
    #[arg(long)]
    payload_bytes: usize,
    #[arg(long)]
    seed: u64,
}

/// Options of the hidden `__restart-open`.
#[derive(ClapArgs, Debug)]
pub struct OpenArgs {
    #[arg(long)]
    dir: PathBuf,
    /// Close the store cleanly before exiting.
    #[arg(long)]
    clean: bool,
}

fn context_name(i: usize) -> String {
    format!("rs-{i}")
}

/// `__restart-build`: writes the entries, then exits without closing.
pub fn child_build(a: BuildArgs) -> anyhow::Result<()> {
    ensure!(
        a.contexts > 0 && a.batch > 0,
        "contexts and batch must be at least 1"
    );
    let store = open_embedded(&a.dir, FsyncPolicy::Never)?;
    let payloads = payload_pool(a.seed, a.payload_bytes, 1024);
    let names: Vec<String> = (0..a.contexts).map(context_name).collect();
    let start = Instant::now();
    let mut done = 0u64;
    let mut next_report = 1_000_000u64;
    while done < a.entries {
        let k = (a.batch as u64).min(a.entries - done);
        let commands = (done..done + k)
            .map(|n| {
                WriteCommand::Append(AppendCommand {
                    context: names[(n as usize) % names.len()].clone(),
                    entry: new_entry(payloads[(n as usize) % payloads.len()].clone()),
                    idempotency_key: None,
                })
            })
            .collect();
        store.write(SystemClock.now_ns(), commands)?;
        done += k;
        if done >= next_report {
            let s = start.elapsed().as_secs_f64();
            eprintln!(
                "restart build: {done} entries in {s:.1} s ({:.0}/s)",
                done as f64 / s
            );
            next_report += 1_000_000;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let line = json!({ "entries": done, "secs": secs, "disk_bytes": store.disk_space() });
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    // The unclean stop: no destructor runs, the store is never closed.
    std::process::exit(0);
}

/// `__restart-open`: opens, reads a head, reports, exits (cleanly or not).
pub fn child_open(a: OpenArgs) -> anyhow::Result<()> {
    let t = Instant::now();
    let store = open_embedded(&a.dir, FsyncPolicy::Always)?;
    let open = t.elapsed();
    let head = store.head(&context_name(0))?;
    let open_head = t.elapsed();
    let mut contexts = 0u64;
    let mut entries = 0u64;
    store.contexts("", &mut |_, h| {
        contexts += 1;
        entries += h.sequence;
        true
    })?;
    let close_ms = if a.clean {
        let t = Instant::now();
        drop(store);
        Some(t.elapsed().as_secs_f64() * 1e3)
    } else {
        None
    };
    let line = json!({
        "open_ms": open.as_secs_f64() * 1e3,
        "open_head_ms": open_head.as_secs_f64() * 1e3,
        "first_head_sequence": head.map_or(0, |h| h.sequence),
        "contexts": contexts,
        "entries": entries,
        "close_ms": close_ms,
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    std::process::exit(0);
}

/// Runs this binary with `args`; returns the JSON line it printed last.
fn child(args: &[String], timeout: Duration) -> anyhow::Result<Value> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let mut c = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting a child process")?;
    let start = Instant::now();
    let status = loop {
        if let Some(s) = c.try_wait()? {
            break s;
        }
        if start.elapsed() > timeout {
            let _ = c.kill();
            let _ = c.wait();
            bail!(
                "child {args:?} took longer than {timeout:?}; killed (scale down with --entries)"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    std::io::Read::read_to_string(&mut c.stdout.take().context("child stdout")?, &mut out)?;
    ensure!(status.success(), "child {args:?} failed: {status}");
    let line = out.lines().last().context("the child printed nothing")?;
    serde_json::from_str(line).with_context(|| format!("child output {line:?}"))
}

fn drop_caches() -> anyhow::Result<()> {
    sync()?;
    std::fs::write("/proc/sys/vm/drop_caches", "3\n")
        .context("writing /proc/sys/vm/drop_caches (needs root); omit --drop-caches")
}

fn sync() -> anyhow::Result<()> {
    let s = Command::new("sync").status().context("running sync")?;
    ensure!(s.success(), "sync failed");
    Ok(())
}

fn open_sample(dir: &Path, clean: bool, cold: bool) -> anyhow::Result<Value> {
    if cold {
        drop_caches()?;
    }
    let mut args = vec![
        "__restart-open".to_owned(),
        "--dir".to_owned(),
        dir.display().to_string(),
    ];
    if clean {
        args.push("--clean".to_owned());
    }
    child(&args, Duration::from_secs(120))
}

fn num(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(f64::NAN)
}

/// Runs the scenario (synchronous: all work happens in child processes).
pub fn run(a: Args) -> anyhow::Result<Report> {
    a.common.check()?;
    let mut r = Report::new("restart");
    r.config("contexts", a.contexts);
    r.config("payload_bytes", a.common.payload_bytes);
    let mut _tempdir = None;
    let dir = match &a.existing {
        Some(d) => {
            r.config("store", d.display().to_string());
            d.clone()
        }
        None => {
            let t = a.common.fresh_dir("restart")?;
            let d = t.path().to_path_buf();
            if a.keep {
                let kept = t.keep();
                eprintln!("restart: keeping the store in {}", kept.display());
            } else {
                _tempdir = Some(t);
            }
            d
        }
    };
    let expected = if a.existing.is_none() {
        eprintln!(
            "restart: building {} entries over {} contexts in a child process",
            a.entries, a.contexts
        );
        let built = child(
            &[
                "__restart-build".into(),
                "--dir".into(),
                dir.display().to_string(),
                "--entries".into(),
                a.entries.to_string(),
                "--contexts".into(),
                a.contexts.to_string(),
                "--batch".into(),
                a.batch.to_string(),
                "--payload-bytes".into(),
                a.common.payload_bytes.to_string(),
                "--seed".into(),
                a.common.seed.to_string(),
            ],
            Duration::from_secs(a.build_timeout_secs),
        )?;
        r.config("entries", a.entries);
        r.config("build_secs", (num(&built, "secs") * 10.0).round() / 10.0);
        r.config("disk_bytes_after_build", built["disk_bytes"].clone());
        Some(a.entries)
    } else {
        None
    };

    let record = |r: &mut Report, prefix: &str, v: &Value| -> anyhow::Result<()> {
        if let Some(n) = expected {
            let got = v["entries"].as_u64().unwrap_or(0);
            ensure!(
                got == n,
                "{prefix}: the reopened store holds {got} entries, {n} were written"
            );
        }
        r.record(&format!("{prefix}_open_ms"), "ms", num(v, "open_ms"), None);
        r.record(
            &format!("{prefix}_open_head_ms"),
            "ms",
            num(v, "open_head_ms"),
            Some(Goal::AtMost(2000.0)),
        );
        Ok(())
    };

    // The state as left behind: after a build, unclean (the builder never
    // closed the store); with --existing, whatever it is ("as_found").
    let state = if a.existing.is_none() {
        "unclean"
    } else {
        "as_found"
    };
    {
        // Right after a build the kernel is still writing back what the
        // build left dirty (fsync never); the first open competes with that.
        eprintln!("restart: {state} open before any sync");
        let v = open_sample(&dir, false, false)?;
        record(&mut r, &format!("{state}_immediate"), &v)?;
        r.config("entries_found", v["entries"].clone());
        // Each sample exits without closing, so the state stays as it was.
        for run in 1..=a.common.runs {
            eprintln!("restart: {state} open {run}/{}", a.common.runs);
            sync()?;
            let v = open_sample(&dir, false, false)?;
            record(&mut r, &format!("{state}_warm"), &v)?;
            if a.drop_caches {
                let v = open_sample(&dir, false, true)?;
                record(&mut r, &format!("{state}_cold"), &v)?;
            }
        }
    }
    // Close cleanly once, then time clean opens.
    eprintln!("restart: opening and closing cleanly");
    let v = open_sample(&dir, true, false)?;
    r.config(
        "first_clean_close_ms",
        (num(&v, "close_ms") * 10.0).round() / 10.0,
    );
    if expected.is_none() {
        r.config("entries", v["entries"].clone());
    }
    for run in 1..=a.common.runs {
        eprintln!("restart: clean open {run}/{}", a.common.runs);
        sync()?;
        let v = open_sample(&dir, true, false)?;
        record(&mut r, "clean_warm", &v)?;
        if a.drop_caches {
            let v = open_sample(&dir, true, true)?;
            record(&mut r, "clean_cold", &v)?;
        }
    }
    r.note("open_ms: EmbeddedStore::open; open_head_ms: open + the first Store::head, each timed inside a fresh child process");
    r.note("unclean: the builder exited via std::process::exit with the store open (no drop, no final sync, flushes cut off); fsync never, so the OS had every write");
    r.note("as_found (with --existing): the store's state as found, e.g. after the builder was killed with SIGKILL mid-write");
    r.note("*_immediate: one open before any sync (right after a build: the builder died, while the kernel still writes back its dirty pages; every other sample runs `sync` first (not timed)");
    r.note("warm: the store's files are in the OS page cache (just written); cold: after sync + drop_caches");
    Ok(r)
}
