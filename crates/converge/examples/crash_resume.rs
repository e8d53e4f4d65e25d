//! A run recorded into the ledger survives its process being killed.
//!
//! ```sh
//! converge-ledger serve --storage memory        # terminal 1 (or pass --in-process)
//! cargo run --release -p converge-ledger-converge --example crash_resume
//! ```
//!
//! 1. A reference run of an eight-stage pipeline, without the ledger.
//! 2. A child process records the same run and is killed (SIGKILL) after
//!    its fourth stage.
//! 3. This process restores the context from the ledger and finishes the
//!    run: only the stages whose work is not in the ledger execute, and the
//!    final context equals the reference run's.
//!
//! Options: `--token TOKEN` (default `$CONVERGE_LEDGER_TOKEN`) for a ledger
//! with an auth file; `--addr URL` (default `$CONVERGE_LEDGER_ADDR` or
//! `http://127.0.0.1:50051`), `--in-process` (a private in-memory server).

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use converge_core::{ContextKey, ContextState, ConvergeResult, Engine};
use converge_ledger_client::Client;
use converge_ledger_converge::{Recorder, restore_run};
use converge_pack::PayloadRegistry;
use support::{Stage, arg, flag, start_memory_server};

const KEYS: [ContextKey; 8] = [
    ContextKey::Seeds,
    ContextKey::Signals,
    ContextKey::Hypotheses,
    ContextKey::Competitors,
    ContextKey::Evaluations,
    ContextKey::Strategies,
    ContextKey::Constraints,
    ContextKey::Votes,
];

/// The pipeline: stage i runs once stage i-1's fact exists.
fn engine(delay: Duration, print: bool) -> (Engine, Vec<Arc<AtomicUsize>>) {
    let mut engine = Engine::new();
    let mut counters = Vec::new();
    for (i, key) in KEYS.iter().enumerate() {
        let after = (i > 0).then(|| (KEYS[i - 1], format!("stage-{}", i - 1)));
        let mut stage = Stage::new(
            &format!("stage-{i}"),
            *key,
            &format!("result of stage {i}"),
            after.as_ref().map(|(k, id)| (*k, id.as_str())),
        );
        stage.delay = delay;
        if print {
            stage.on_execute = Some(Arc::new(|id| println!("executed {id}")));
        }
        counters.push(stage.executions.clone());
        engine.register_suggestor(stage);
    }
    (engine, counters)
}

fn executions(counters: &[Arc<AtomicUsize>]) -> usize {
    counters.iter().map(|c| c.load(Ordering::SeqCst)).sum()
}

fn ids(result: &ConvergeResult) -> Vec<(ContextKey, Vec<String>)> {
    KEYS.iter()
        .map(|k| {
            let ids = result
                .context
                .get(*k)
                .iter()
                .map(|f| f.id().as_str().to_owned());
            (*k, ids.collect())
        })
        .collect()
}

/// The child: records the run, printing each stage as it executes, until
/// it is killed.
async fn worker(addr: &str, context: &str) -> anyhow::Result<()> {
    let recorder = Recorder::connect(addr, context, support::recorder_options()).await?;
    let (mut engine, _) = engine(Duration::from_millis(250), true);
    recorder.attach(&mut engine);
    engine.run(ContextState::new()).await?;
    recorder.finish().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = if flag("--in-process") {
        start_memory_server()
    } else {
        arg("--addr")
            .or_else(|| std::env::var("CONVERGE_LEDGER_ADDR").ok())
            .unwrap_or_else(|| "http://127.0.0.1:50051".to_owned())
    };
    if let Some(context) = arg("--worker") {
        return worker(&addr, &context).await;
    }
    let client = Client::connect_with(&addr, support::client_options())
        .await
        .with_context(|| format!("connecting to {addr} (is `converge-ledger serve` running?)"))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let context = format!("crash-demo-{stamp}");

    // 1. Reference.
    let (mut reference_engine, counters) = engine(Duration::ZERO, false);
    let reference = reference_engine.run(ContextState::new()).await?;
    println!(
        "reference run, no ledger: {} suggestor executions, {} facts",
        executions(&counters),
        reference.integrity.fact_count
    );

    // 2. The child records, and is killed after stage 3 executed.
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--addr", &addr, "--worker", &context])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the worker process")?;
    let stdout = child.stdout.take().context("worker stdout")?;
    let mut first_run = 0;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("  [worker {}] {line}", child.id());
        if line.starts_with("executed ") {
            first_run += 1;
        }
        if line == "executed stage-3" {
            std::thread::sleep(Duration::from_millis(100));
            child.kill()?;
            break;
        }
    }
    let status = child.wait()?;
    if status.success() {
        bail!("the worker finished before it could be killed");
    }
    println!("worker killed ({status}) after {first_run} suggestor executions");

    // 3. Restore and finish.
    let restored = restore_run(&client, &context, &PayloadRegistry::with_pack_payloads()).await?;
    println!(
        "restored from {context:?}: {} facts, {} experience events, {} entries",
        restored.facts, restored.events, restored.last_sequence
    );
    let recorder = Recorder::connect(&addr, &context, support::recorder_options()).await?;
    let (mut resumed_engine, counters) = engine(Duration::ZERO, false);
    recorder.attach(&mut resumed_engine);
    let resumed = resumed_engine.run(restored.context).await?;
    let stats = recorder.finish().await?;
    let second_run = executions(&counters);
    println!(
        "resumed run: {second_run} suggestor executions, {} new facts recorded (entries {}..={})",
        stats.facts,
        stats.start_sequence + 1,
        stats.last_sequence
    );
    for (i, c) in counters.iter().enumerate() {
        println!(
            "  stage-{i}: executed {} time(s) after the restore",
            c.load(Ordering::SeqCst)
        );
    }

    ensure!(
        second_run == KEYS.len() - restored.facts,
        "the resumed run executed {second_run} stages, expected {}",
        KEYS.len() - restored.facts
    );
    ensure!(
        resumed.integrity.merkle_root == reference.integrity.merkle_root
            && ids(&resumed) == ids(&reference),
        "the resumed context differs from the reference run"
    );
    println!(
        "same final context as the uninterrupted run (Merkle root {}); \
         {} of {} stages were not executed again",
        resumed.integrity.merkle_root.to_hex(),
        restored.facts,
        KEYS.len()
    );
    Ok(())
}
