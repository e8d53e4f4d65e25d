//! `converge-ledger-bench`: benchmarks of the Converge ledger.
//!
//! Every scenario runs on loopback (127.0.0.1) only, repeats `--runs` times
//! and reports the median per metric with the target it is held against.
//! See `BENCHMARKS.md` at the repository root for results and how to rerun.

mod cpu;
mod report;
mod scenarios;
mod setup;

/// The allocator the server binary uses, so that what is measured here is
/// what runs there (unless built with `--features system-allocator`).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

use scenarios::{inprocess, latency, read, restart, throughput, watch_lag};

/// Benchmarks of the Converge ledger (loopback only, bounded runs).
#[derive(Parser, Debug)]
#[command(name = "converge-ledger-bench", version, about)]
struct Cli {
    /// Tokio worker threads (default: one per core).
    #[arg(long, global = true)]
    worker_threads: Option<usize>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Sequential appends over gRPC by one client: p50/p99/mean latency
    /// (target p50 <= 300 us), with an in-process, memory-store and raw-fsync
    /// breakdown.
    AppendLatency(latency::Args),
    /// Concurrent gRPC clients, each appending to its own context: appends/s
    /// (target >= 50k/s).
    AppendThroughput(throughput::Args),
    /// In-process Ledger::append from many tasks, group commit with fsync
    /// always: appends/s (target >= 500k/s), plus fsync never and memory.
    InprocessThroughput(inprocess::Args),
    /// Reading a 1M-entry context via Ledger::read_chunk, Store::scan and
    /// gRPC Client::read_all: entries/s (target >= 1M/s).
    Read(read::Args),
    /// Watcher lag under a paced append load over gRPC: p50/p99 ms (target
    /// p99 <= 2 ms).
    WatchLag(watch_lag::Args),
    /// Opening a 10M-entry store after a clean close and after an unclean
    /// stop: ms to open + first head (target <= 2 s).
    Restart(restart::Args),
    /// (internal) Builds the restart store, then exits without closing it.
    #[command(name = "__restart-build", hide = true)]
    RestartBuild(restart::BuildArgs),
    /// (internal) Times one open of the restart store.
    #[command(name = "__restart-open", hide = true)]
    RestartOpen(restart::OpenArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let json;
    let load_before = cpu::loadavg();
    let machine = cpu::MachineSample::now();
    let mut report = match cli.command {
        Cmd::RestartBuild(a) => return restart::child_build(a),
        Cmd::RestartOpen(a) => return restart::child_open(a),
        Cmd::Restart(a) => {
            json = a.json();
            restart::run(a)?
        }
        cmd => {
            let mut rt = tokio::runtime::Builder::new_multi_thread();
            rt.enable_all().thread_name("bench-rt");
            if let Some(n) = cli.worker_threads {
                rt.worker_threads(n);
            }
            let rt = rt.build()?;
            match cmd {
                Cmd::AppendLatency(a) => {
                    json = a.json();
                    rt.block_on(latency::run(a))?
                }
                Cmd::AppendThroughput(a) => {
                    json = a.json();
                    rt.block_on(throughput::run(a))?
                }
                Cmd::InprocessThroughput(a) => {
                    json = a.json();
                    rt.block_on(inprocess::run(a))?
                }
                Cmd::Read(a) => {
                    json = a.json();
                    rt.block_on(read::run(a))?
                }
                Cmd::WatchLag(a) => {
                    json = a.json();
                    rt.block_on(watch_lag::run(a))?
                }
                Cmd::Restart(_) | Cmd::RestartBuild(_) | Cmd::RestartOpen(_) => {
                    unreachable!("handled above")
                }
            }
        }
    };
    report.config("loadavg_1m_before", load_before);
    report.config("loadavg_1m_after", cpu::loadavg());
    let others = machine.others_cores(&cpu::MachineSample::now());
    report.config("other_processes_cores", (others * 100.0).round() / 100.0);
    report.print(json);
    Ok(())
}
