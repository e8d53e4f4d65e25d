//! A converge-core run recorded as a WorldLine, then replayed and queried
//! through the ledger's projections: who proposed each fact, what the
//! engine decided under which policy, and where every state key came from.
//!
//! ```sh
//! cargo run -p converge-ledger-converge --example worldline -- --in-process
//! converge-ledger serve --storage memory     # or against a running ledger:
//! cargo run -p converge-ledger-converge --example worldline -- --worldline demo
//! ```
//!
//! Options: `--addr URL` (default `$CONVERGE_LEDGER_ADDR` or
//! `http://127.0.0.1:50051`), `--token TOKEN`, `--worldline NAME` (default
//! `converge-demo`), `--in-process` to start a private in-memory server.

mod support;

use anyhow::Context as _;
use converge_core::{ContextKey, ContextState, Engine};
use converge_ledger_client::proto::ledger::v1 as pb;
use converge_ledger_client::worldline::WorldlineId;
use converge_ledger_client::{Client, projection_query};
use converge_ledger_converge::WorldlineTap;
use support::{Generator, Stage, arg, client_options, flag, start_memory_server};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = if flag("--in-process") {
        start_memory_server()
    } else {
        arg("--addr")
            .or_else(|| std::env::var("CONVERGE_LEDGER_ADDR").ok())
            .unwrap_or_else(|| "http://127.0.0.1:50051".to_owned())
    };
    let name = arg("--worldline").unwrap_or_else(|| "converge-demo".to_owned());
    let w = WorldlineId::derive(name.as_bytes());
    let client = Client::connect_with(&addr, client_options())
        .await
        .with_context(|| format!("connecting to the ledger at {addr}"))?;

    // 1. A run: a market seed, a hypothesis and a strategy that build on
    //    it, and a generator of signals.
    let mut engine = Engine::new();
    for (id, key, text, after) in [
        (
            "market",
            ContextKey::Seeds,
            "market: European e-bike rentals",
            None,
        ),
        (
            "demand",
            ContextKey::Hypotheses,
            "demand doubles in cities with bike lanes",
            Some((ContextKey::Seeds, "market")),
        ),
        (
            "pricing",
            ContextKey::Strategies,
            "launch with per-minute pricing in two cities",
            Some((ContextKey::Hypotheses, "demand")),
        ),
    ] {
        engine.register_suggestor(Stage::new(id, key, text, after));
    }
    engine.register_suggestor(Generator::new(ContextKey::Signals, 12, 4));
    let tap = WorldlineTap::new();
    tap.attach(&mut engine);
    let result = engine
        .run(ContextState::new())
        .await
        .context("the engine failed")?;
    println!(
        "converged in {} cycles; {} facts promoted",
        result.cycles,
        tap.promotions()
    );

    // 2. Recorded: one commitment and one outcome per promoted fact.
    let recorded = tap.write(&client, &w).await?;
    let head = recorded.last().map_or(0, |r| r.outcome.seq);
    println!("worldline {name} ({w}): {} receipts", head);

    // 3. Replayed by the ledger, and the same state from the projection.
    let replayed = client.worldline_state(&w, 0).await?;
    let projected = client
        .projected_state(pb::ProjectedStateRequest {
            query: Some(projection_query(&w, head)),
            select: None,
            with_state_hash: true,
        })
        .await?;
    println!(
        "state: {} keys; replay hash {}, projection hash {} ({})",
        replayed.pairs.len(),
        replayed.state_hash,
        converge_ledger_client::Digest::from_slice(&projected.state_hash)
            .map_or("?".into(), |d| d.to_hex()),
        if projected.state_hash == replayed.state_hash.0.to_vec() {
            "equal"
        } else {
            "DIFFERENT"
        }
    );

    // 4. Why is the strategy in the state? Its lineage.
    let strategy = recorded
        .iter()
        .find(|r| r.state_key.starts_with("Strategies/"))
        .context("the strategy fact")?;
    let lineage = client
        .query_provenance(pb::QueryProvenanceRequest {
            query: Some(projection_query(&w, head)),
            target: Some(pb::query_provenance_request::Target::Key(
                strategy.state_key.clone(),
            )),
            ..Default::default()
        })
        .await?
        .lineage
        .context("a lineage for the strategy")?;
    let c = lineage.commitment.unwrap_or_default();
    println!(
        "{}: proposed by {}, accepted by {} under policy {}, evidence {}",
        strategy.state_key,
        c.proposer,
        c.decider,
        c.policy.map(|p| p.version).unwrap_or_default(),
        lineage.evidence.first().map_or("-", |e| e.uri.as_str()),
    );

    // 5. Who / what: every commitment of the signal generator's agent.
    let signals = client
        .query_audit(pb::QueryAuditRequest {
            query: Some(projection_query(&w, head)),
            filter: Some(pb::query_audit_request::Filter::CommitmentClass(
                "Signals".into(),
            )),
            ..Default::default()
        })
        .await?;
    let proposers: std::collections::BTreeSet<&str> = signals
        .records
        .iter()
        .map(|r| r.proposer.as_str())
        .collect();
    println!(
        "{} Signals commitments, proposed by {:?}",
        signals.records.len(),
        proposers
    );

    // 6. And the whole worldline verifies: L1-L5 from genesis.
    let verdict = client.verify_worldline(&w).await?;
    println!("verify: {}", if verdict.ok { "ok" } else { "FAILED" });
    anyhow::ensure!(verdict.ok && projected.state_hash == replayed.state_hash.0.to_vec());
    Ok(())
}
