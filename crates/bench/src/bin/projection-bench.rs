//! The WorldLine projections' costs: rebuilding them from receipts, query
//! latency at a million receipts, and how far they trail the head while
//! receipts arrive.
//!
//! ```sh
//! cargo build --release -p converge-ledger-bench --bin projection-bench
//! ./target/release/projection-bench [--receipts 1000000] [--worldlines 4] \
//!     [--queries 2000] [--rate 1000] [--seconds 10] [--fsync always|never] \
//!     [--postgres postgres://127.0.0.1/test]
//! ```
//!
//! 1. Writes `--receipts` receipts (commitment + outcome pairs from 32
//!    tasks; 100 proposers, 50 capabilities, 10,000 state keys) over
//!    `--worldlines` worldlines of embedded storage (or of PostgreSQL with
//!    `--postgres`), without projections.
//! 2. Starts the projector and times the fold of every receipt (a
//!    rebuild: what a new projection version or an empty derived space
//!    costs).
//! 3. Serves the ledger on loopback and times `--queries` queries of each
//!    kind through the SDK, one at a time (p50, p99).
//! 4. Appends pairs at `--rate` receipts/s to a fresh worldline for
//!    `--seconds`; after each acknowledged outcome a query with `min_seq`
//!    = its seq measures when the projection reflects it (the lag, plus
//!    one query).
//!
//! With `--migrate`, step 2 instead folds the receipts as the previous
//! release did (`capability_grants` version 1, no serving record), and the
//! server started in step 3 rebuilds version 2 beside it: step 4 runs
//! first, while it does, and the run ends with the time until the queries
//! switched to version 2.

/// The allocator the server binary uses, so that what is measured here is
/// what runs there (unless built with `--features system-allocator`).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use converge_ledger_client::proto::ledger::v1 as pb;
use converge_ledger_client::worldline::{
    CapabilitySet, Commitment, CommitmentId, Decision, Outcome, OutcomeStatus, PolicyRef,
    StateUpdate, WorldlineId, WorldlineLimits, projections,
};
use converge_ledger_client::{Client, Digest, projection_query};
use converge_ledger_postgres::testkit::{admin_query, unique_suffix};
use converge_ledger_postgres::{PostgresOptions, PostgresStore};
use converge_ledger_server::{Ledger, LedgerConfig, ServerConfig, Worldlines};
use converge_ledger_store::{EmbeddedOptions, EmbeddedStore, FsyncPolicy, Store};

#[derive(Parser)]
struct Args {
    /// Receipts written before the queries.
    #[arg(long, default_value_t = 1_000_000)]
    receipts: u64,
    /// Worldlines they are spread over.
    #[arg(long, default_value_t = 4)]
    worldlines: u64,
    /// Queries of each kind timed.
    #[arg(long, default_value_t = 2000)]
    queries: usize,
    /// Receipts per second during the lag measurement.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Length of the lag measurement.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Fold the receipts as the previous release did, then measure the lag
    /// while the server rebuilds capability_grants version 2 beside it, and
    /// the time until it switches.
    #[arg(long)]
    migrate: bool,
    /// With --migrate: seconds to wait after the previous release's fold,
    /// before the server starts.
    #[arg(long, default_value_t = 20)]
    settle_seconds: u64,
    /// always or never.
    #[arg(long, default_value = "always")]
    fsync: String,
    /// Rounds of the query measurement (the first runs right after the
    /// rebuild, with compactions still running).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Steps of niceness below the server's for the projector thread
    /// (`serve --worldline-projector-nice`).
    #[arg(long, default_value_t = converge_ledger_server::PROJECTOR_NICE_DEFAULT)]
    projector_nice: i32,
    /// Keep receipts and projections in PostgreSQL at this URL (in a fresh
    /// schema, dropped at the end) instead of embedded storage; `--fsync`
    /// does not apply.
    #[arg(long)]
    postgres: Option<String>,
}

fn commitment(n: u64) -> Commitment {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&n.to_be_bytes());
    id[8] = 0x80;
    let cap = format!("cap-{}", n % 50);
    let granted: CapabilitySet = [cap.clone()].into_iter().collect();
    // Every tenth commitment revokes what the previous one of its actor
    // held, so grants have history.
    let revoked: CapabilitySet = if n % 10 == 9 {
        [format!("cap-{}", (n + 49) % 50)].into_iter().collect()
    } else {
        CapabilitySet::new()
    };
    Commitment {
        commitment_id: CommitmentId(id),
        class: format!("class-{}", n % 8),
        intent: "change".into(),
        requested_capabilities: granted.clone(),
        targets: vec!["svc/api".into()],
        evidence: vec![converge_ledger_client::worldline::EvidenceRef {
            uri: format!("cas://e/{n}"),
            digest: Digest::of(&[&n.to_be_bytes()]),
        }],
        proposer: format!("agent-{}", n % 100),
        decision: Decision::Accepted,
        policy: PolicyRef {
            hash: Digest::of(&[b"policy"]),
            version: "v1".into(),
        },
        granted_capabilities: granted,
        revoked_capabilities: revoked,
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
            key: format!("k{}", n % 10_000),
            value: vec![7; 64],
        }],
        reporter: "driver".into(),
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn report(what: &str, mut us: Vec<f64>) {
    let p50 = percentile(&mut us, 0.5);
    let p99 = percentile(&mut us, 0.99);
    println!(
        "{what}: p50 {:.2} ms, p99 {:.2} ms ({} queries)",
        p50 / 1000.0,
        p99 / 1000.0,
        us.len()
    );
}

/// Times `n` calls of `query`.
async fn time<F, Fut>(n: usize, mut query: F) -> Vec<f64>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        query(i).await;
        out.push(t.elapsed().as_secs_f64() * 1e6);
    }
    out
}

/// Starts a projector on the receipts written and times until every
/// projection of every worldline reflects its head.
async fn rebuild(
    ledger: &Arc<Ledger>,
    worldlines: &Worldlines,
    ids: &[WorldlineId],
    written: u64,
    projector_nice: i32,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let projecting = Worldlines::new(ledger.clone(), WorldlineLimits::default())?
        .with_projections_at(projector_nice);
    let projector = projecting
        .projector()
        .expect("embedded storage keeps projections")
        .clone();
    let mut heads = Vec::new();
    for w in ids {
        heads.push(worldlines.head(w).await?.map_or(0, |h| h.seq));
    }
    loop {
        let p = projector.clone();
        let ids2 = ids.to_vec();
        let done = tokio::task::spawn_blocking(move || {
            ids2.iter()
                .map(|w| {
                    projections()
                        .iter()
                        .map(|proj| p.checkpoint(*proj, w).unwrap().map_or(0, |c| c.through_seq))
                        .min()
                        .unwrap_or(0)
                })
                .collect::<Vec<u64>>()
        })
        .await?;
        if done == heads {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "rebuild of 4 projections over {written} receipts: {secs:.1} s, {:.0} receipts/s",
        written as f64 / secs
    );
    projecting.stop_projections().await;
    drop(projecting);

    Ok(())
}

/// Folds every receipt of `ids` into the derived space as the previous
/// release did: capability_grants at version 1, and no serving record.
async fn seed_previous_release(
    ledger: &Arc<Ledger>,
    worldlines: &Worldlines,
    ids: &[WorldlineId],
) -> anyhow::Result<()> {
    use converge_ledger_client::worldline::capability_grants::CapabilityGrants;
    use converge_ledger_client::worldline::{KvBatch, Projection, apply_receipt};
    let set: Vec<&'static dyn Projection> = projections()
        .into_iter()
        .map(|p| {
            if p.name() == "capability_grants" {
                &CapabilityGrants::V1 as &dyn Projection
            } else {
                p
            }
        })
        .collect();
    let store = ledger.store().clone();
    for w in ids {
        let head = worldlines.head(w).await?.map_or(0, |h| h.seq);
        let mut from = 1;
        while from <= head {
            let to = head.min(from + 1023);
            let receipts = worldlines
                .read_range(w, from, to, usize::MAX, usize::MAX)
                .await?;
            let store = store.clone();
            let set = set.clone();
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                let kv = store
                    .derived()
                    .expect("embedded storage keeps a derived space");
                let view = converge_ledger_server::DerivedRead(kv);
                let mut batch = KvBatch::new();
                for (r, _) in &receipts {
                    for p in &set {
                        apply_receipt(*p, r, &view, &mut batch)?;
                    }
                }
                let writes: Vec<_> = batch.into_writes().collect();
                anyhow::ensure!(kv.write_if(&[], &writes)?, "unguarded write refused");
                Ok(())
            })
            .await??;
            from = to + 1;
        }
    }
    Ok(())
}

/// Appends pairs at `rate` receipts/s to a fresh worldline for `seconds`;
/// after each acknowledged outcome a query with `min_seq` = its seq times
/// when the projection reflects it. Returns the times in µs.
async fn lag(client: &Client, url: &str, rate: u64, seconds: u64) -> anyhow::Result<Vec<f64>> {
    let w = WorldlineId::derive(b"projection-bench-lag");
    let pairs = rate / 2 * seconds;
    let interval = Duration::from_secs_f64(2.0 / rate as f64);
    let mut lags = Vec::new();
    let mut ticker = tokio::time::interval(interval);
    let reader = Client::connect(url).await?;
    let mut pending = tokio::task::JoinSet::new();
    for n in 0..pairs {
        ticker.tick().await;
        let cm = client
            .append_commitment(&w, &commitment((1 << 62) | n))
            .await?;
        let o = client
            .append_outcome(&w, &outcome(cm.receipt_hash, n))
            .await?;
        let acked = Instant::now();
        let r = reader.clone();
        pending.spawn(async move {
            r.projected_value(&w, &format!("k{}", n % 10_000), o.seq)
                .await
                .expect("lag query");
            acked.elapsed().as_secs_f64() * 1e6
        });
        while let Some(done) = pending.try_join_next() {
            lags.push(done?);
        }
    }
    while let Some(done) = pending.join_next().await {
        lags.push(done?);
    }
    Ok(lags)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let Some(url) = args.postgres.clone() else {
        let mut options = EmbeddedOptions::new(dir.path());
        options.fsync = match args.fsync.as_str() {
            "never" => FsyncPolicy::Never,
            _ => FsyncPolicy::Always,
        };
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(options)?);
        return measure(args, store).await;
    };
    let mut options = PostgresOptions::new(&url);
    options.schema = format!("cl_projection_bench_{}", unique_suffix());
    eprintln!("PostgreSQL: {}", options.describe());
    let opening = options.clone();
    let store: Arc<dyn Store> =
        Arc::new(tokio::task::spawn_blocking(move || PostgresStore::open(opening)).await??);
    let measured = measure(args, store).await;
    let drop_schema = format!(r#"DROP SCHEMA IF EXISTS "{}" CASCADE"#, options.schema);
    if let Err(e) = tokio::task::spawn_blocking(move || admin_query(&url, &drop_schema)).await? {
        eprintln!("could not drop schema {}: {e}", options.schema);
    }
    measured
}

/// Steps 1 to 4 over `store`.
async fn measure(args: Args, store: Arc<dyn Store>) -> anyhow::Result<()> {
    let ledger = Ledger::new(store, LedgerConfig::default());

    // 1. The history, without projections.
    let worldlines = Arc::new(Worldlines::new(ledger.clone(), WorldlineLimits::default())?);
    let ids: Vec<WorldlineId> = (0..args.worldlines)
        .map(|i| WorldlineId::derive(format!("projection-bench-{i}").as_bytes()))
        .collect();
    let writers = 32u64;
    let per = args.receipts / 2 / writers;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..writers {
        let (wl, w) = (worldlines.clone(), ids[(t % args.worldlines) as usize]);
        tasks.push(tokio::spawn(async move {
            for n in 0..per {
                let k = t * per + n;
                let c = wl
                    .append_commitment(&w, &commitment(k))
                    .await
                    .expect("commitment");
                wl.append_outcome(&w, &outcome(c.receipt.receipt_hash, n))
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

    let mut heads = Vec::new();
    for w in &ids {
        heads.push(worldlines.head(w).await?.map_or(0, |h| h.seq));
    }

    // 2. Rebuild (or, with --migrate, the previous release's fold).
    if args.migrate {
        let started = Instant::now();
        seed_previous_release(&ledger, &worldlines, &ids).await?;
        let secs = started.elapsed().as_secs_f64();
        println!(
            "the previous release's fold (capability_grants version 1) over {written} receipts: {secs:.1} s"
        );
        // An upgraded server starts on a store at rest: let the flushes and
        // compactions of that fold finish first.
        tokio::time::sleep(Duration::from_secs(args.settle_seconds)).await;
    } else {
        rebuild(&ledger, &worldlines, &ids, written, args.projector_nice).await?;
    }

    // 3. Queries through gRPC.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let served = ledger.clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let config = ServerConfig {
            worldline_projector_nice: args.projector_nice,
            ..ServerConfig::default()
        };
        converge_ledger_server::run(listener, served, config, async {
            let _ = stop_rx.await;
        })
        .await
    });
    let client = Client::connect(&url).await?;
    if args.migrate {
        let serving = Instant::now();
        // When the serving record moves to version 2, polled beside the
        // lag measurement.
        let store = ledger.store().clone();
        let switch = tokio::spawn(async move {
            loop {
                let store = store.clone();
                let version = tokio::task::spawn_blocking(move || -> anyhow::Result<u32> {
                    let kv = store.derived().expect("a derived space");
                    Ok(
                        match kv.get(converge_ledger_client::worldline::SERVING_KEY)? {
                            Some(b) => converge_ledger_client::worldline::Serving::decode(&b)?
                                .version("capability_grants"),
                            None => 1,
                        },
                    )
                })
                .await??;
                if version == 2 {
                    return anyhow::Ok(serving.elapsed().as_secs_f64());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        report(
            &format!(
                "lag at {} receipts/s while capability_grants version 2 rebuilds beside version 1",
                args.rate
            ),
            lag(&client, &url, args.rate, args.seconds).await?,
        );
        let during = serving.elapsed().as_secs_f64();
        let switched = switch.await??;
        println!(
            "queries switched to capability_grants version 2 {switched:.2} s after the server \
             started ({written} receipts rebuilt); the lag was measured over the first {during:.1} s{}",
            if switched < during {
                ", part of it after the switch"
            } else {
                ""
            }
        );
        let _ = stop_tx.send(());
        server.await??;
        return Ok(());
    }
    let q = args.queries;
    // State keys that exist (fewer than 10,000 in a small run).
    let keys = per.min(10_000);
    let pick = |i: usize| ids[i % ids.len()];
    let mix = |i: usize| (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 20;
    let c = &client;
    for round in 1..=args.rounds {
        report(
            &format!("round {round}: latest_state: one key"),
            time(q, |i| async move {
                let (v, _) = c
                    .projected_value(&pick(i), &format!("k{}", mix(i) % keys), 0)
                    .await
                    .expect("state");
                assert!(v.is_some());
            })
            .await,
        );
        report(
            &format!("round {round}: audit_index: one proposer, a page of 100"),
            time(q, |i| async move {
                let r = c
                    .query_audit(pb::QueryAuditRequest {
                        query: Some(projection_query(&pick(i), 0)),
                        filter: Some(pb::query_audit_request::Filter::Proposer(format!(
                            "agent-{}",
                            mix(i) % 100
                        ))),
                        latest_first: i % 2 == 0,
                        ..Default::default()
                    })
                    .await
                    .expect("audit");
                assert!(!r.records.is_empty() && r.records.len() <= 100);
            })
            .await,
        );
        let (heads2, ids2) = (&heads, &ids);
        report(
            &format!("round {round}: capability_grants: one actor, in force at a random seq"),
            time(q, |i| async move {
                let w = i % ids2.len();
                c.query_grants(pb::QueryGrantsRequest {
                    query: Some(projection_query(&ids2[w], 0)),
                    actor: format!("agent-{}", mix(i) % 100),
                    at: Some(pb::query_grants_request::At::AtSeq(1 + mix(i) % heads2[w])),
                    ..Default::default()
                })
                .await
                .expect("grants");
            })
            .await,
        );
        report(
            &format!("round {round}: provenance_dag: lineage of a state key"),
            time(q, |i| async move {
                let r = c
                    .query_provenance(pb::QueryProvenanceRequest {
                        query: Some(projection_query(&pick(i), 0)),
                        target: Some(pb::query_provenance_request::Target::Key(format!(
                            "k{}",
                            mix(i) % keys
                        ))),
                        ..Default::default()
                    })
                    .await
                    .expect("provenance");
                assert!(r.lineage.is_some());
            })
            .await,
        );
    }

    // 4. Lag at --rate receipts/s.
    report(
        &format!(
            "lag at {} receipts/s (ack of an outcome until a query with its min_seq answers)",
            args.rate
        ),
        lag(&client, &url, args.rate, args.seconds).await?,
    );
    let _ = stop_tx.send(());
    server.await??;
    Ok(())
}
