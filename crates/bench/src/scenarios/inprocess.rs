//! `inprocess-throughput`: `Ledger::append` from many tokio tasks, no gRPC.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args as ClapArgs;
use converge_ledger_core::Head;
use converge_ledger_server::{Ledger, LedgerConfig};
use converge_ledger_store::{
    AppendCommand, Clock as _, FsyncPolicy, MemoryStore, Store, SystemClock, WriteCommand,
};

use super::{Stop, closed_loop};
use crate::report::{Goal, Report};
use crate::setup::{Common, new_entry, open_embedded};

/// Options of `inprocess-throughput`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    /// Concurrent tasks (each has one append in flight).
    #[arg(long, default_value_t = 256)]
    tasks: usize,
    /// Contexts the tasks spread over (task i appends to context i % contexts).
    #[arg(long, default_value_t = 64)]
    contexts: usize,
    /// Seconds per storage case per run (3 runs x 3 cases x 3 s plus the ceilings stays under a minute).
    #[arg(long, default_value_t = 3.0)]
    duration_secs: f64,
    /// Only the embedded `fsync always` case.
    #[arg(long)]
    only_embedded: bool,
}

impl Args {
    /// Whether to print JSON.
    pub fn json(&self) -> bool {
        self.common.json
    }
}

#[derive(Clone, Copy)]
enum Case {
    Always,
    Never,
    Memory,
}

/// Runs the scenario.
pub async fn run(a: Args) -> anyhow::Result<Report> {
    a.common.check()?;
    if a.tasks == 0 || a.contexts == 0 {
        bail!("--tasks and --contexts must be at least 1");
    }
    let mut r = Report::new("inprocess-throughput");
    r.config("tasks", a.tasks);
    r.config("contexts", a.contexts);
    r.config("duration_secs", a.duration_secs);
    r.config("payload_bytes", a.common.payload_bytes);
    let cases: &[(Case, &str)] = if a.only_embedded {
        &[(Case::Always, "embedded_always")]
    } else {
        &[
            (Case::Always, "embedded_always"),
            (Case::Never, "embedded_never"),
            (Case::Memory, "memory"),
        ]
    };
    let payloads = a.common.payloads();
    let contexts: Arc<Vec<String>> = Arc::new((0..a.contexts).map(|i| format!("ip-{i}")).collect());
    for run in 1..=a.common.runs {
        for &(case, label) in cases {
            eprintln!("inprocess-throughput: run {run}/{}, {label}", a.common.runs);
            let dir = a.common.fresh_dir("inprocess")?;
            let store: Arc<dyn Store> = match case {
                Case::Always => open_embedded(dir.path(), FsyncPolicy::Always)?,
                Case::Never => open_embedded(dir.path(), FsyncPolicy::Never)?,
                Case::Memory => Arc::new(MemoryStore::new()),
            };
            let ledger = Ledger::new(store, LedgerConfig::default());
            let (l, p, c, n) = (
                ledger.clone(),
                payloads.clone(),
                contexts.clone(),
                a.contexts,
            );
            let load = closed_loop(
                a.tasks,
                Stop::After(Duration::from_secs_f64(a.duration_secs)),
                move |i, k| {
                    let l = l.clone();
                    let ctx = c[i % n].clone();
                    let e = new_entry(p[(i + k as usize * 7) % p.len()].clone());
                    async move { l.append(ctx, e, None).await.map(|_| ()) }
                },
            )
            .await?;
            ledger.shutdown().await?;
            drop(ledger);
            drop(dir);
            let goal = matches!(case, Case::Always).then_some(Goal::AtLeast(500_000.0));
            load.record(&mut r, label, goal);
        }
        if !a.only_embedded {
            eprintln!(
                "inprocess-throughput: run {run}/{}, ceilings",
                a.common.runs
            );
            let (p, c) = (payloads.clone(), contexts.clone());
            let ns =
                tokio::task::spawn_blocking(move || chain_ns_per_entry(&c, &p, 200_000)).await?;
            r.record("chain_hash_ns_per_entry", "ns", ns, None);
            for (fsync, label) in [
                (FsyncPolicy::Always, "always"),
                (FsyncPolicy::Never, "never"),
            ] {
                let dir = a.common.fresh_dir("ceiling")?;
                let store = open_embedded(dir.path(), fsync)?;
                let (p, c, batch) = (payloads.clone(), contexts.clone(), a.tasks);
                let rate = tokio::task::spawn_blocking(move || {
                    direct_writes(&*store, &c, &p, batch, 100_000)
                })
                .await??;
                r.record(&format!("store_write_{label}_per_s"), "1/s", rate, None);
                drop(dir);
            }
        }
    }
    r.note("Ledger::append(context, entry, None): no idempotency key, so no idempotency index lookups or writes");
    r.note("chain_hash_ns_per_entry: one thread computing Head::next_entry + advance (entry hash + Merkle frontier), the CPU floor of staging");
    r.note("store_write_*_per_s: Store::write called directly in a loop with batches of --tasks appends over the contexts (no Ledger, no tokio), 100k appends");
    r.note("writer_cpu_cores near 1.0 means the single group-commit thread is CPU-bound; writer_running / writer_in_disk_wait / writer_waiting_for_work: share of 2 ms samples of that thread in state R (running or runnable) / D (disk wait, fsync) / S (idle)");
    Ok(r)
}

/// Nanoseconds per entry to chain `n` entries round-robin over `contexts`.
fn chain_ns_per_entry(contexts: &[String], payloads: &[Vec<u8>], n: usize) -> f64 {
    let mut heads: Vec<Head> = contexts.iter().map(|c| Head::empty(c)).collect();
    let now = SystemClock.now_ns();
    let t = Instant::now();
    for i in 0..n {
        let k = i % contexts.len();
        let e = heads[k].next_entry(
            &contexts[k],
            new_entry(payloads[i % payloads.len()].clone()),
            now,
        );
        heads[k].advance(&e);
        std::hint::black_box(&e);
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

/// Appends per second through `Store::write` alone, `batch` appends a call.
fn direct_writes(
    store: &dyn Store,
    contexts: &[String],
    payloads: &[Vec<u8>],
    batch: usize,
    n: usize,
) -> anyhow::Result<f64> {
    let t = Instant::now();
    let mut done = 0;
    while done < n {
        let k = batch.min(n - done);
        let commands = (done..done + k)
            .map(|i| {
                WriteCommand::Append(AppendCommand {
                    context: contexts[i % contexts.len()].clone(),
                    entry: new_entry(payloads[i % payloads.len()].clone()),
                    idempotency_key: None,
                })
            })
            .collect();
        store.write(SystemClock.now_ns(), commands)?;
        done += k;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}
