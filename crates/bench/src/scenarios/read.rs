//! `read`: reading one large context, in process and over gRPC.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, ensure};
use clap::Args as ClapArgs;
use converge_ledger_client::{Client, GetOptions};
use converge_ledger_server::{Ledger, LedgerConfig};
use converge_ledger_store::{FsyncPolicy, Scan, Store};

use crate::report::{Goal, Report};
use crate::setup::{Common, Server, fill_context, open_embedded};

const CONTEXT: &str = "read-bench";

/// Options of `read`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    /// Entries in the context.
    #[arg(long, default_value_t = 1_000_000)]
    entries: u64,
    /// Entries per `Ledger::read_chunk` call.
    #[arg(long, default_value_t = 4096)]
    chunk: usize,
    /// Skip the gRPC `Client::read_all` case.
    #[arg(long)]
    no_grpc: bool,
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
    ensure!(
        a.entries > 0 && a.chunk > 0,
        "--entries and --chunk must be at least 1"
    );
    let mut r = Report::new("read");
    r.config("entries", a.entries);
    r.config("chunk", a.chunk);
    r.config("payload_bytes", a.common.payload_bytes);
    let dir = a.common.fresh_dir("read")?;
    let payloads = a.common.payloads();

    // Build with fsync never in big batches (not measured as a result), then
    // close and reopen so reads go through a freshly opened store.
    eprintln!("read: building {} entries", a.entries);
    let t = Instant::now();
    {
        let store = open_embedded(dir.path(), FsyncPolicy::Never)?;
        let (s, p, n) = (store.clone(), payloads.clone(), a.entries);
        tokio::task::spawn_blocking(move || fill_context(&*s, CONTEXT, n, 4096, &p)).await??;
        drop(store);
    }
    let built = t.elapsed();
    r.config("build_secs", (built.as_secs_f64() * 100.0).round() / 100.0);
    let t = Instant::now();
    let store: Arc<dyn Store> = open_embedded(dir.path(), FsyncPolicy::Always)?;
    r.config(
        "reopen_ms",
        (t.elapsed().as_secs_f64() * 1e5).round() / 100.0,
    );
    let head = store
        .head(CONTEXT)?
        .context("the built context is empty")?
        .sequence;
    ensure!(
        head == a.entries,
        "built {head} entries, wanted {}",
        a.entries
    );

    let ledger = Ledger::new(store.clone(), LedgerConfig::default());
    let server = Server::start_ledger(ledger.clone()).await?;
    let client = Client::connect(server.url()).await?;

    for run in 1..=a.common.runs {
        eprintln!("read: run {run}/{}", a.common.runs);

        // Ledger::read_chunk loops.
        let t = Instant::now();
        let mut after = 0u64;
        let mut count = 0u64;
        loop {
            let (chunk, _) = ledger
                .read_chunk(CONTEXT, after, head, None, a.chunk, usize::MAX)
                .await?;
            let Some(last) = chunk.last() else { break };
            after = last.sequence;
            count += chunk.len() as u64;
        }
        let secs = t.elapsed().as_secs_f64();
        ensure!(count == head, "read_chunk read {count} of {head} entries");
        r.record(
            "read_chunk_entries_per_s",
            "1/s",
            count as f64 / secs,
            Some(Goal::AtLeast(1_000_000.0)),
        );

        // Store::scan directly, on a blocking thread.
        let s = store.clone();
        let (count, secs) = tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            let mut count = 0u64;
            let mut bytes = 0usize;
            s.scan(
                CONTEXT,
                Scan {
                    after: 0,
                    until: head,
                    key: None,
                },
                &mut |e| {
                    count += 1;
                    bytes += e.payload.len();
                    true
                },
            )?;
            std::hint::black_box(bytes);
            Ok::<_, anyhow::Error>((count, t.elapsed().as_secs_f64()))
        })
        .await??;
        ensure!(count == head, "scan read {count} of {head} entries");
        r.record(
            "store_scan_entries_per_s",
            "1/s",
            count as f64 / secs,
            Some(Goal::AtLeast(1_000_000.0)),
        );

        if !a.no_grpc {
            let t = Instant::now();
            let mut count = 0u64;
            let latest = client
                .read_all(CONTEXT, GetOptions::default(), |_| count += 1)
                .await?;
            let secs = t.elapsed().as_secs_f64();
            ensure!(
                count == head && latest == head,
                "read_all read {count} of {head} entries"
            );
            r.record(
                "grpc_read_all_entries_per_s",
                "1/s",
                count as f64 / secs,
                None,
            );
        }
    }
    drop(client);
    server.stop().await?;
    drop(ledger);
    drop(store);
    drop(dir);
    r.note("store built with fsync never in 4096-entry Store::write batches, closed, reopened; reads hit the OS page cache");
    r.note("read_chunk: Ledger::read_chunk(after, head, chunk, no byte limit) in a loop (spawn_blocking + Store::scan per chunk)");
    r.note("grpc_read_all: SDK Client::read_all over converge.ledger.v1 Read (server chunks: 4096 entries / 1 MiB)");
    Ok(r)
}
