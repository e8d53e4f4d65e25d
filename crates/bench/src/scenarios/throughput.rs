//! `append-throughput`: many concurrent gRPC clients, each appending to its
//! own context.

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use clap::{Args as ClapArgs, ValueEnum};
use converge_ledger_client::{AppendOptions, BatchEntry, BatchOptions, Client};
use converge_ledger_store::{FsyncPolicy, MemoryStore, Store};

use super::{Load, Stop, closed_loop};
use crate::report::{Goal, Report};
use crate::setup::{Common, Server, open_embedded};

/// How the clients reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// One connection per client.
    PerConnection,
    /// One `Client` (one HTTP/2 connection) shared by all tasks.
    Shared,
    /// Both, one after the other.
    Both,
}

/// Options of `append-throughput`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    /// Concurrent clients (tasks), each with its own context.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seconds each case runs per run (3 runs x 3 cases x 4 s stays under a minute).
    #[arg(long, default_value_t = 4.0)]
    duration_secs: f64,
    /// Appends per client instead of a duration.
    #[arg(long)]
    count: Option<u64>,
    /// Skip the memory-store case (per-connection clients, no disk).
    #[arg(long)]
    no_memory: bool,
    /// Connection layout.
    #[arg(long, value_enum, default_value_t = Mode::Both)]
    mode: Mode,
    /// Entries per append: above 1, each client sends AppendBatch requests
    /// of this many entries (ordered, atomic) and the rate that counts is
    /// entries/s.
    #[arg(long, default_value_t = 1)]
    batch: usize,
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
    if a.clients == 0 {
        bail!("--clients must be at least 1");
    }
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let stop = match a.count {
        Some(n) => Stop::Count(n),
        None => Stop::After(Duration::from_secs_f64(a.duration_secs)),
    };
    let mut r = Report::new("append-throughput");
    r.config("clients", a.clients);
    match a.count {
        Some(n) => r.config("appends_per_client", n),
        None => r.config("duration_secs", a.duration_secs),
    }
    r.config("payload_bytes", a.common.payload_bytes);
    r.config("fsync", "always");
    r.config("mode", format!("{:?}", a.mode));
    r.config("batch_entries", a.batch);
    let modes: &[(Mode, &str)] = match a.mode {
        Mode::PerConnection => &[(Mode::PerConnection, "per_conn")],
        Mode::Shared => &[(Mode::Shared, "shared")],
        Mode::Both => &[(Mode::PerConnection, "per_conn"), (Mode::Shared, "shared")],
    };
    let payloads = a.common.payloads();
    let mut cases: Vec<(Mode, bool, &str)> = modes.iter().map(|&(m, l)| (m, false, l)).collect();
    if !a.no_memory {
        cases.push((Mode::PerConnection, true, "memory_per_conn"));
    }
    for run in 1..=a.common.runs {
        for &(mode, memory, label) in &cases {
            eprintln!("append-throughput: run {run}/{}, {label}", a.common.runs);
            let dir = a.common.fresh_dir("throughput")?;
            let store: Arc<dyn Store> = if memory {
                Arc::new(MemoryStore::new())
            } else {
                open_embedded(dir.path(), FsyncPolicy::Always)?
            };
            let server = Server::start(store).await?;
            let mut clients = Vec::with_capacity(a.clients);
            if mode == Mode::Shared {
                let c = Client::connect(server.url()).await?;
                clients.resize(a.clients, c);
            } else {
                for _ in 0..a.clients {
                    clients.push(Client::connect(server.url()).await?);
                }
            }
            let clients = Arc::new(clients);
            let contexts: Arc<Vec<String>> =
                Arc::new((0..a.clients).map(|i| format!("tp-{i}")).collect());
            let p = payloads.clone();
            let batch = a.batch;
            let load: Load = closed_loop(a.clients, stop, move |i, k| {
                let c = clients[i].clone();
                let ctx = contexts[i].clone();
                let pick = |j: usize| p[(i + (k as usize * batch + j) * 7) % p.len()].clone();
                let entries: Vec<BatchEntry> = if batch > 1 {
                    (0..batch)
                        .map(|j| BatchEntry {
                            key: "bench".into(),
                            payload: pick(j),
                            metadata: Default::default(),
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                let single = pick(0);
                async move {
                    if batch > 1 {
                        c.append_batch(&ctx, entries, BatchOptions::default())
                            .await
                            .map(|_| ())
                    } else {
                        c.append(&ctx, "bench", single, AppendOptions::default())
                            .await
                            .map(|_| ())
                    }
                }
            })
            .await?;
            server.stop().await?;
            drop(dir);
            let goal = (!memory).then_some(Goal::AtLeast(50_000.0));
            if batch > 1 {
                r.record(
                    &format!("{label}_entries_per_s"),
                    "1/s",
                    load.rate() * batch as f64,
                    goal,
                );
                load.record(&mut r, label, None);
            } else {
                load.record(&mut r, label, goal);
            }
        }
    }
    r.note("server and 64 clients share this process and its cores; *_cpu_cores is the whole process's CPU use (max = nproc)");
    if a.batch > 1 {
        r.note("--batch: *_appends_per_s and *_latency_* count AppendBatch requests; *_entries_per_s counts entries");
    }
    r.note("memory_per_conn: the same load on MemoryStore: what gRPC + the ledger manage without storage");
    r.note("writer_running / writer_in_disk_wait / writer_waiting_for_work: share of 2 ms samples of the group-commit thread in state R (running or runnable) / D (disk wait, fsync) / S (idle)");
    r.note("writer_cpu_cores: CPU of the group-commit thread (staging, hashing, fjall batch, fsync wait is not CPU)");
    Ok(r)
}
