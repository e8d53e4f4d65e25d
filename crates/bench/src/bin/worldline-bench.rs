//! The WorldLine profile's costs: commitment + outcome pairs through gRPC
//! beside plain appends in the same run, and replay speed.
//!
//! ```sh
//! cargo run --release -p converge-ledger-bench --bin worldline-bench -- \
//!     [--clients 64] [--seconds 5] [--rounds 3] [--replay-receipts 200000] [--fsync always|never] \
//!     [--projections on|off] [--projector-nice 5]
//! ```
//!
//! An in-process server on loopback over embedded storage in a temporary
//! directory; `--clients` SDK clients (one connection each). Rounds
//! alternate plain appends and pairs; medians are reported, and the ratio
//! of a pair's cost to one plain append's.

/// The allocator the server binary uses, so that what is measured here is
/// what runs there (unless built with `--features system-allocator`).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[allow(dead_code)] // the benchmark uses the thread CPU sampling only
#[path = "../cpu.rs"]
mod cpu;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use converge_ledger_client::worldline::{
    CapabilitySet, Commitment, CommitmentId, Decision, Outcome, OutcomeStatus, PolicyRef,
    StateUpdate, WorldlineId, WorldlineLimits,
};
use converge_ledger_client::{AppendOptions, Client, ClientError, Digest};
use converge_ledger_server::{Ledger, LedgerConfig, ServerConfig, Worldlines};
use converge_ledger_store::{EmbeddedOptions, EmbeddedStore, FsyncPolicy};

#[derive(Parser)]
struct Args {
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Length of one measured round.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Rounds of each workload (interleaved).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Receipts in the worldline replayed for the replay speed.
    #[arg(long, default_value_t = 200_000)]
    replay_receipts: u64,
    /// always or never.
    #[arg(long, default_value = "always")]
    fsync: String,
    /// Keep the projections up to date while measuring: on or off.
    #[arg(long, default_value = "on")]
    projections: String,
    /// Steps of niceness below the server's for the projector thread
    /// (`serve --worldline-projector-nice`).
    #[arg(long, default_value_t = converge_ledger_server::PROJECTOR_NICE_DEFAULT)]
    projector_nice: i32,
}

fn commitment(n: u64) -> Commitment {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&n.to_be_bytes());
    id[8] = 0x80;
    let caps: CapabilitySet = ["repo.write".to_owned()].into_iter().collect();
    Commitment {
        commitment_id: CommitmentId(id),
        class: "deploy".into(),
        intent: "roll out".into(),
        requested_capabilities: caps.clone(),
        targets: vec!["svc/api".into()],
        evidence: vec![],
        proposer: "agent".into(),
        decision: Decision::Accepted,
        policy: PolicyRef {
            hash: Digest::of(&[b"policy"]),
            version: "v1".into(),
        },
        granted_capabilities: caps,
        revoked_capabilities: CapabilitySet::new(),
        decider: "kernel".into(),
    }
}

fn outcome(of: Digest, n: u64) -> Outcome {
    Outcome {
        commitment: of,
        status: OutcomeStatus::Succeeded,
        effects: vec![],
        proofs: vec![],
        state_updates: vec![StateUpdate::Put {
            key: format!("k{}", n % 64),
            value: vec![7; 128],
        }],
        reporter: "driver".into(),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Operations of `work` run by every client for `seconds`.
async fn round<F, Fut>(clients: &[Client], seconds: u64, work: F) -> u64
where
    F: Fn(Client, usize, u64) -> Fut + Send + Sync + 'static + Clone,
    Fut: std::future::Future<Output = ()> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let (c, done, stop, work) = (c.clone(), done.clone(), stop.clone(), work.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                work(c.clone(), i, n).await;
                n += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    done.load(Ordering::Relaxed)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let mut options = EmbeddedOptions::new(dir.path());
    options.fsync = match args.fsync.as_str() {
        "never" => FsyncPolicy::Never,
        _ => FsyncPolicy::Always,
    };
    let store = Arc::new(EmbeddedStore::open(options)?);
    let ledger = Ledger::new(store, LedgerConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let served = ledger.clone();
    let config = ServerConfig {
        worldline_projections: args.projections != "off",
        worldline_projector_nice: args.projector_nice,
        ..ServerConfig::default()
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        converge_ledger_server::run(listener, served, config, async {
            let _ = stop_rx.await;
        })
        .await
    });
    let mut clients = Vec::new();
    for _ in 0..args.clients {
        clients.push(Client::connect(&url).await?);
    }

    let run_id = std::process::id() as u64;
    let projections = args.projections != "off";
    let (mut appends, mut pairs, mut catch_up) = (Vec::new(), Vec::new(), Vec::new());
    let mut projector_cpu = Vec::new();
    for r in 0..args.rounds {
        let started = Instant::now();
        let a = round(&clients, args.seconds, |c: Client, i, n| async move {
            let _ = c
                .append(
                    &format!("bench-{i}"),
                    "k",
                    vec![7; 256],
                    AppendOptions::default(),
                )
                .await
                .expect("append");
            let _ = n;
        })
        .await as f64
            / started.elapsed().as_secs_f64();
        let worldline =
            move |i: usize| WorldlineId::derive(format!("bench-{run_id}-{r}-{i}").as_bytes());
        let last_seq: Arc<Vec<AtomicU64>> =
            Arc::new((0..clients.len()).map(|_| AtomicU64::new(0)).collect());
        let seqs = last_seq.clone();
        let cpu_before = cpu::CpuSample::now();
        let started = Instant::now();
        let done = round(&clients, args.seconds, move |c: Client, i, n| {
            let seqs = seqs.clone();
            async move {
                let w = worldline(i);
                let id = ((i as u64) << 40) | ((r as u64) << 32) | n;
                let committed = c
                    .append_commitment(&w, &commitment(id))
                    .await
                    .expect("commitment");
                let answered = c
                    .append_outcome(&w, &outcome(committed.receipt_hash, n))
                    .await
                    .expect("outcome");
                seqs[i].store(answered.seq, Ordering::Relaxed);
            }
        })
        .await;
        // The projections must keep up: the round ends once every
        // worldline's projections reflect its last outcome, and pairs/s
        // counts that wait.
        let appended = started.elapsed();
        if projections {
            let mut waits = Vec::new();
            for (i, c) in clients.iter().enumerate() {
                let (c, seq) = (c.clone(), last_seq[i].load(Ordering::Relaxed));
                waits.push(tokio::spawn(async move {
                    // Each call waits up to 5 s for the projection, then
                    // answers UNAVAILABLE: ask again.
                    if seq == 0 {
                        return;
                    }
                    loop {
                        match c.projected_value(&worldline(i), "k0", seq).await {
                            Ok(_) => break,
                            Err(ClientError::Unavailable(_)) => continue,
                            Err(e) => panic!("projection of worldline {i}: {e}"),
                        }
                    }
                }));
            }
            for w in waits {
                w.await?;
            }
        }
        let caught_up = started.elapsed() - appended;
        let p = done as f64 / started.elapsed().as_secs_f64();
        // CPU of the projector thread per receipt it folded (all of the
        // round's receipts, now that it caught up).
        let folding = cpu_before.thread_cores(&cpu::CpuSample::now(), "worldline-proje")
            * started.elapsed().as_secs_f64()
            / (2 * done) as f64
            * 1e6;
        eprintln!(
            "round {r}: {a:.0} appends/s, {p:.0} pairs/s (projections caught up {:.1} ms after the last pair; \
             projector {folding:.1} us CPU per receipt)",
            caught_up.as_secs_f64() * 1e3
        );
        projector_cpu.push(folding);
        appends.push(a);
        pairs.push(p);
        catch_up.push(caught_up.as_secs_f64() * 1e3);
    }
    let (a, p) = (median(appends), median(pairs));
    println!(
        "{} clients, fsync {}, projections {}: plain appends {a:.0}/s; commitment+outcome pairs \
         {p:.0}/s ({:.0} receipts/s); a pair costs {:.2}x one append; projections caught up \
         {:.1} ms after a round, the projector thread used {:.1} us CPU per receipt (medians)",
        args.clients,
        args.fsync,
        args.projections,
        2.0 * p,
        a / p,
        median(catch_up),
        median(projector_cpu),
    );

    // Replay speed: one worldline of alternating commitments and outcomes.
    let worldlines = Worldlines::new(ledger.clone(), WorldlineLimits::default())?;
    let w = WorldlineId::derive(format!("replay-{run_id}").as_bytes());
    let started = Instant::now();
    let writers = 32u64;
    let per = args.replay_receipts / 2 / writers;
    let worldlines = Arc::new(worldlines);
    // Commitments from many tasks (group commit), then their outcomes.
    let mut tasks = Vec::new();
    for t in 0..writers {
        let wl = worldlines.clone();
        tasks.push(tokio::spawn(async move {
            let mut hashes = Vec::new();
            for n in 0..per {
                let c = wl
                    .append_commitment(&w, &commitment((1 << 60) | (t << 32) | n))
                    .await
                    .expect("commitment");
                hashes.push(c.receipt.receipt_hash);
            }
            for (n, h) in hashes.into_iter().enumerate() {
                wl.append_outcome(&w, &outcome(h, n as u64))
                    .await
                    .expect("outcome");
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let written = 2 * per * writers;
    eprintln!(
        "wrote {written} receipts in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut speeds = Vec::new();
    for _ in 0..args.rounds {
        let started = Instant::now();
        let v = worldlines.verify(&w).await?;
        assert!(v.failure.is_none(), "{:?}", v.failure);
        speeds.push(v.receipts as f64 / started.elapsed().as_secs_f64());
    }
    println!(
        "replay from genesis (verify) of {written} receipts: {:.0} receipts/s (median of {})",
        median(speeds),
        args.rounds
    );
    let _ = stop_tx.send(());
    server.await??;
    Ok(())
}
