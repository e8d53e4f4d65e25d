//! `append-latency`: sequential appends by one client, one at a time.

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args as ClapArgs;
use converge_ledger_client::{AppendOptions, Client};
use converge_ledger_server::{Ledger, LedgerConfig};
use converge_ledger_store::{FsyncPolicy, MemoryStore, Store};

use crate::report::{Goal, Latencies, Report};
use crate::setup::{Common, Server, new_entry, open_embedded};

/// Options of `append-latency`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    /// Measured appends per run (each case).
    #[arg(long, default_value_t = 5000)]
    appends: usize,
    /// Unmeasured appends first (connection and store warm-up).
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    /// Longest any one case may take per run (bounds the scenario on a slow
    /// disk); fewer appends are measured if it is reached (see `*_samples`).
    #[arg(long, default_value_t = 3.0)]
    max_case_secs: f64,
    /// Skip the breakdown cases (in-process, memory store, raw fsync).
    #[arg(long)]
    no_breakdown: bool,
}

impl Args {
    /// Whether to print JSON.
    pub fn json(&self) -> bool {
        self.common.json
    }
}

/// Runs the scenario.
pub async fn run(a: Args) -> anyhow::Result<Report> {
    a.common.check()?;
    let mut r = Report::new("append-latency");
    r.config("appends", a.appends);
    r.config("warmup", a.warmup);
    r.config("payload_bytes", a.common.payload_bytes);
    r.config("fsync", "always");
    r.config(
        "transport",
        "gRPC over 127.0.0.1, server and client in one process",
    );
    let payloads = a.common.payloads();
    let cap = Duration::from_secs_f64(a.max_case_secs);
    r.config("max_case_secs", a.max_case_secs);
    for run in 1..=a.common.runs {
        eprintln!("append-latency: run {run}/{}", a.common.runs);

        let dir = a.common.fresh_dir("latency")?;
        let store = open_embedded(dir.path(), FsyncPolicy::Always)?;
        let l = grpc_sequential(store, &payloads, a.warmup, a.appends, cap).await?;
        r.record(
            "grpc_embedded_p50",
            "us",
            l.p_us(50.0),
            Some(Goal::AtMost(300.0)),
        );
        r.record("grpc_embedded_p99", "us", l.p_us(99.0), None);
        r.record("grpc_embedded_mean", "us", l.mean_us(), None);
        r.record("grpc_embedded_samples", "count", l.len() as f64, None);
        drop(dir);

        if a.no_breakdown {
            continue;
        }
        // What the same appends cost without the gRPC hop.
        let dir = a.common.fresh_dir("latency")?;
        let store = open_embedded(dir.path(), FsyncPolicy::Always)?;
        let l = inprocess_sequential(store, &payloads, a.warmup, a.appends, false, cap).await?;
        r.record("inproc_embedded_p50", "us", l.p_us(50.0), None);
        r.record("inproc_embedded_p99", "us", l.p_us(99.0), None);
        drop(dir);

        // The same with an idempotency key per append, as every SDK append
        // carries one (index lookup + index write).
        let dir = a.common.fresh_dir("latency")?;
        let store = open_embedded(dir.path(), FsyncPolicy::Always)?;
        let l = inprocess_sequential(store, &payloads, a.warmup, a.appends, true, cap).await?;
        r.record("inproc_embedded_keyed_p50", "us", l.p_us(50.0), None);
        r.record("inproc_embedded_keyed_p99", "us", l.p_us(99.0), None);
        drop(dir);

        // What gRPC and the ledger cost without storage.
        let l = grpc_sequential(
            Arc::new(MemoryStore::new()),
            &payloads,
            a.warmup,
            a.appends,
            cap,
        )
        .await?;
        r.record("grpc_memory_p50", "us", l.p_us(50.0), None);
        r.record("grpc_memory_p99", "us", l.p_us(99.0), None);

        // What the disk charges for one small write + fsync, the floor of
        // every `fsync always` commit.
        let dir = a.common.fresh_dir("fsync")?;
        let path = dir.path().join("probe");
        let payload = payloads[0].clone();
        let n = a.appends.min(2000);
        let l = tokio::task::spawn_blocking(move || raw_fsync(&path, &payload, n, cap)).await??;
        r.record("raw_write_fsync_p50", "us", l.p_us(50.0), None);
        r.record("raw_write_fsync_p99", "us", l.p_us(99.0), None);
        drop(dir);
    }
    r.note("grpc_*: SDK Client::append (generates an idempotency key) -> tonic -> Ledger::append; one append in flight");
    r.note("inproc_*: Ledger::append directly (no idempotency key; *_keyed: a fresh key each), one in flight");
    r.note("each case stops after --max-case-secs (warm-up included); grpc_embedded_samples says how many appends were measured");
    r.note("raw_write_fsync: append the payload to a plain file + File::sync_all, the disk's floor per commit");
    Ok(r)
}

async fn grpc_sequential(
    store: Arc<dyn Store>,
    payloads: &[Vec<u8>],
    warmup: usize,
    n: usize,
    cap: Duration,
) -> anyhow::Result<Latencies> {
    let server = Server::start(store).await?;
    let client = Client::connect(server.url()).await?;
    let mut samples = Vec::with_capacity(n);
    let started = Instant::now();
    for i in 0..warmup + n {
        if started.elapsed() > cap {
            break;
        }
        let p = payloads[i % payloads.len()].clone();
        let t = Instant::now();
        client
            .append("latency", "bench", p, AppendOptions::default())
            .await?;
        if i >= warmup {
            samples.push(t.elapsed().as_nanos() as u64);
        }
    }
    drop(client);
    server.stop().await?;
    Ok(Latencies::new(samples))
}

async fn inprocess_sequential(
    store: Arc<dyn Store>,
    payloads: &[Vec<u8>],
    warmup: usize,
    n: usize,
    keyed: bool,
    cap: Duration,
) -> anyhow::Result<Latencies> {
    let ledger = Ledger::new(store, LedgerConfig::default());
    let mut samples = Vec::with_capacity(n);
    let started = Instant::now();
    for i in 0..warmup + n {
        if started.elapsed() > cap {
            break;
        }
        let e = new_entry(payloads[i % payloads.len()].clone());
        let t = Instant::now();
        let key = keyed.then(|| format!("bench-key-{i:016}"));
        ledger.append("latency".to_owned(), e, key).await?;
        if i >= warmup {
            samples.push(t.elapsed().as_nanos() as u64);
        }
    }
    ledger.shutdown().await?;
    Ok(Latencies::new(samples))
}

fn raw_fsync(
    path: &std::path::Path,
    payload: &[u8],
    n: usize,
    cap: Duration,
) -> anyhow::Result<Latencies> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let mut samples = Vec::with_capacity(n);
    let started = Instant::now();
    for _ in 0..n {
        if started.elapsed() > cap {
            break;
        }
        let t = Instant::now();
        f.write_all(payload)?;
        f.sync_all()?;
        samples.push(t.elapsed().as_nanos() as u64);
    }
    Ok(Latencies::new(samples))
}
