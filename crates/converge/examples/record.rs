//! Records a converge-core run into the ledger while it converges.
//!
//! ```sh
//! converge-ledger serve --storage memory                       # terminal 1
//! converge-ledger watch demo-run --from 0                      # terminal 2
//! cargo run --release -p converge-ledger-converge --example record -- --context demo-run
//! ```
//!
//! Options: `--token TOKEN` (default `$CONVERGE_LEDGER_TOKEN`) for a ledger
//! with an auth file; `--addr URL` (default `$CONVERGE_LEDGER_ADDR` or
//! `http://127.0.0.1:50051`), `--context ID` (default `demo-run`),
//! `--delay-ms N` per suggestor execution (default 400, so the run can be
//! watched), `--in-process` to start a private in-memory server instead.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use converge_core::{ContextKey, ContextState, Engine};
use converge_ledger_converge::Recorder;
use support::{Generator, Stage, arg, flag, start_memory_server};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = if flag("--in-process") {
        start_memory_server()
    } else {
        arg("--addr")
            .or_else(|| std::env::var("CONVERGE_LEDGER_ADDR").ok())
            .unwrap_or_else(|| "http://127.0.0.1:50051".to_owned())
    };
    let context = arg("--context").unwrap_or_else(|| "demo-run".to_owned());
    let delay = Duration::from_millis(
        arg("--delay-ms")
            .map(|d| d.parse())
            .transpose()
            .context("--delay-ms takes milliseconds")?
            .unwrap_or(400),
    );

    let recorder = Recorder::connect(&addr, &context, support::recorder_options())
        .await
        .with_context(|| {
            format!("connecting to the ledger at {addr} (is `converge-ledger serve` running?)")
        })?;
    println!(
        "recording into context {context:?} at {addr} (it holds {} entries already)",
        recorder.stats().start_sequence
    );

    let print: support::OnExecute = Arc::new(|id| println!("  suggestor {id} executed"));
    let mut engine = Engine::new();
    let steps = [
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
            "competitors",
            ContextKey::Competitors,
            "three incumbents, none with app-first pricing",
            Some((ContextKey::Hypotheses, "demand")),
        ),
        (
            "pricing",
            ContextKey::Strategies,
            "launch with per-minute pricing in two cities",
            Some((ContextKey::Competitors, "competitors")),
        ),
        (
            "risk",
            ContextKey::Constraints,
            "permits take 3 to 6 months per city",
            Some((ContextKey::Strategies, "pricing")),
        ),
    ];
    for (id, key, text, after) in steps {
        let mut s = Stage::new(id, key, text, after);
        s.delay = delay;
        s.on_execute = Some(print.clone());
        engine.register_suggestor(s);
    }
    let mut signals = Generator::new(ContextKey::Signals, 12, 3);
    signals.delay = delay;
    engine.register_suggestor(signals);
    recorder.attach(&mut engine);

    let started = Instant::now();
    let result = engine
        .run(ContextState::new())
        .await
        .context("the engine failed")?;
    let ran = started.elapsed();
    // No hidden work: wait until every fact and event is in the ledger.
    let stats = recorder.finish().await.context("recording failed")?;
    println!(
        "converged in {} cycles ({ran:.2?}): {} facts and {} experience events recorded, \
         entries {}..={} of {context:?}",
        result.cycles,
        stats.facts,
        stats.events,
        stats.start_sequence + 1,
        stats.last_sequence
    );
    println!(
        "Merkle root of the final context: {}",
        result.integrity.merkle_root.to_hex()
    );
    Ok(())
}
