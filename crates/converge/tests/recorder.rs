//! `Recorder` (StreamingCallback + ExperienceEventObserver) and
//! `restore_run`, with a real converge-core engine and ledger server.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Generator, Stage, Tee, TestServer, entries, wire};
use converge_core::{Budget, ContextKey, ContextState, Engine};
use converge_ledger_client::{ClientOptions, Entry};
use converge_ledger_converge::{
    EXPERIENCE_KEY, Error, OnFull, Recorder, RecorderOptions, context_key_name, restore_run,
};
use converge_pack::{PayloadRegistry, WireContextFact};

fn options(capacity: usize, on_full: OnFull) -> RecorderOptions {
    RecorderOptions {
        capacity,
        on_full,
        ..RecorderOptions::default()
    }
}

/// Each stored entry is the announcement at its position (key, and fact id
/// or event kind); `announced` may run longer than `stored`.
fn assert_announced(stored: &[Entry], announced: &[(u32, String, String)]) {
    for (entry, (_, key, what)) in stored.iter().zip(announced) {
        assert_eq!(&entry.key, key, "entry {}", entry.sequence);
        let got = entry
            .metadata
            .get("fact_id")
            .or(entry.metadata.get("kind"))
            .unwrap();
        assert_eq!(got, what, "entry {}", entry.sequence);
    }
}

/// An engine with a seed, a pipeline reacting to it, and two generators.
fn test_engine(facts_per_generator: usize) -> Engine {
    let mut engine = Engine::with_budget(Budget {
        max_cycles: 1000,
        max_facts: 100_000,
    });
    engine.register_suggestor(Stage::new(
        "seed",
        ContextKey::Seeds,
        "output of seed",
        None,
    ));
    engine.register_suggestor(Stage::new(
        "hypothesis",
        ContextKey::Hypotheses,
        "output of hypothesis",
        Some((ContextKey::Seeds, "seed")),
    ));
    engine.register_suggestor(Stage::new(
        "strategy",
        ContextKey::Strategies,
        "output of strategy",
        Some((ContextKey::Hypotheses, "hypothesis")),
    ));
    engine.register_suggestor(Generator::new(ContextKey::Signals, facts_per_generator, 40));
    engine.register_suggestor(Generator::new(
        ContextKey::Evaluations,
        facts_per_generator,
        25,
    ));
    engine
}

#[tokio::test]
async fn every_fact_and_event_becomes_an_entry_in_engine_order() {
    let server = TestServer::start();
    let client = server.client().await;
    let recorder = Recorder::connect(server.url(), "run-order", RecorderOptions::default())
        .await
        .unwrap();
    let mut engine = test_engine(150);
    let tee = Arc::new(Tee::new(recorder.clone()));
    engine.set_streaming(tee.clone());
    engine.set_event_observer(tee.clone());
    let result = engine.run(ContextState::new()).await.unwrap();
    assert!(result.converged);
    let stats = recorder.flush().await.unwrap();

    let seen = tee.seen();
    let facts = seen.iter().filter(|s| s.1 != EXPERIENCE_KEY).count();
    assert_eq!(facts, 3 + 150 + 150);
    assert_eq!(stats.facts as usize, facts);
    assert_eq!(stats.events as usize, seen.len() - facts);
    assert_eq!(stats.written as usize, seen.len());
    assert_eq!(stats.unrecorded, 0);

    let stored = entries(&client, "run-order").await;
    assert_eq!(stored.len(), seen.len());
    assert_eq!(stats.last_sequence, stored.len() as u64);
    for (entry, (cycle, key, what)) in stored.iter().zip(&seen) {
        assert_eq!(entry.metadata["cycle"], cycle.to_string());
        assert_eq!(&entry.key, key);
        if key == EXPERIENCE_KEY {
            assert_eq!(&entry.metadata["kind"], what);
            let event: serde_json::Value = serde_json::from_slice(&entry.payload).unwrap();
            assert_eq!(event["type"], what.as_str());
        } else {
            assert_eq!(&entry.metadata["fact_id"], what);
            // The payload is the fact itself, as the engine holds it.
            let wire: WireContextFact = serde_json::from_slice(&entry.payload).unwrap();
            let k = converge_ledger_converge::parse_context_key(key).unwrap();
            let fact = result
                .context
                .get(k)
                .iter()
                .find(|f| f.id().as_str() == what)
                .unwrap();
            assert_eq!(wire, fact.to_wire().unwrap());
            assert_eq!(context_key_name(k), *key);
        }
    }
    // The engine announces each promotion, then the fact.
    for pair in stored.windows(2) {
        if pair[1].key != EXPERIENCE_KEY {
            assert_eq!(pair[0].key, EXPERIENCE_KEY);
            assert_eq!(pair[0].metadata["kind"], "FactPromoted");
        }
    }
}

#[tokio::test]
async fn a_run_larger_than_the_servers_batch_limits_is_recorded_whole_in_order() {
    let server = TestServer::small_batches();
    let client = server.client().await;
    let info = client.server_info().await.unwrap();
    assert_eq!(info.batch_entries_max, 7);
    // Never below one maximal entry (about 18 KiB here).
    assert!(info.request_bytes_max < 32 * 1024, "{info:?}");
    let recorder = Recorder::connect(server.url(), "run-small", RecorderOptions::default())
        .await
        .unwrap();
    let mut engine = test_engine(100);
    let tee = Arc::new(Tee::new(recorder.clone()));
    engine.set_streaming(tee.clone());
    engine.set_event_observer(tee.clone());
    engine.run(ContextState::new()).await.unwrap();
    let stats = recorder.flush().await.unwrap();
    let seen = tee.seen();
    assert_eq!(stats.written as usize, seen.len());
    let stored = entries(&client, "run-small").await;
    assert_eq!(stored.len(), seen.len());
    assert_announced(&stored, &seen);
}

#[tokio::test]
async fn restore_run_rebuilds_the_context_of_a_recorded_run() {
    let server = TestServer::start();
    let client = server.client().await;
    let recorder = Recorder::connect(server.url(), "run-restore", RecorderOptions::default())
        .await
        .unwrap();
    let mut engine = test_engine(60);
    recorder.attach(&mut engine);
    let result = engine.run(ContextState::new()).await.unwrap();
    recorder.finish().await.unwrap();

    let restored = restore_run(
        &client,
        "run-restore",
        &PayloadRegistry::with_pack_payloads(),
    )
    .await
    .unwrap();
    assert_eq!(restored.facts, 3 + 60 + 60);
    assert_eq!(restored.events, restored.facts);
    assert_eq!(restored.last_cycle, result.cycles - 1);
    assert_eq!(wire(&restored.context), wire(&result.context));
    assert_eq!(
        converge_core::integrity::MerkleRoot::from_context(&restored.context),
        result.integrity.merkle_root
    );
}

#[tokio::test]
async fn an_interrupted_run_resumes_without_redoing_recorded_work() {
    let server = TestServer::start();
    let client = server.client().await;
    let stages = |hang_at: Option<usize>| {
        let keys = [
            ContextKey::Seeds,
            ContextKey::Signals,
            ContextKey::Hypotheses,
            ContextKey::Evaluations,
            ContextKey::Strategies,
            ContextKey::Constraints,
        ];
        let mut out = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let after = (i > 0).then(|| (keys[i - 1], format!("stage-{}", i - 1)));
            let id = format!("stage-{i}");
            let mut s = Stage::new(
                &id,
                *key,
                &format!("output of {id}"),
                after.as_ref().map(|(k, id)| (*k, id.as_str())),
            );
            s.hang = hang_at == Some(i);
            out.push(s);
        }
        out
    };
    let run = |stages: Vec<Stage>| {
        let counters: Vec<_> = stages.iter().map(|s| s.executions.clone()).collect();
        let mut engine = Engine::new();
        for s in stages {
            engine.register_suggestor(s);
        }
        (engine, counters)
    };

    // Uninterrupted, for reference.
    let (mut engine, counters) = run(stages(None));
    let reference = engine.run(ContextState::new()).await.unwrap();
    assert!(counters.iter().all(|c| c.load(Ordering::SeqCst) == 1));

    // First attempt: stage 3 never returns; the run is abandoned.
    let recorder = Recorder::connect(server.url(), "run-resume", RecorderOptions::default())
        .await
        .unwrap();
    let (mut engine, first) = run(stages(Some(3)));
    recorder.attach(&mut engine);
    let abandoned =
        tokio::time::timeout(Duration::from_millis(300), engine.run(ContextState::new())).await;
    assert!(abandoned.is_err(), "the run should hang at stage 3");
    recorder.flush().await.unwrap();
    drop(engine);
    drop(recorder);
    let done: Vec<usize> = first.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    assert_eq!(done, [1, 1, 1, 0, 0, 0]);

    // Second attempt: restore from the ledger and finish.
    let restored = restore_run(
        &client,
        "run-resume",
        &PayloadRegistry::with_pack_payloads(),
    )
    .await
    .unwrap();
    assert_eq!(restored.facts, 3);
    let recorder = Recorder::connect(server.url(), "run-resume", RecorderOptions::default())
        .await
        .unwrap();
    assert_eq!(recorder.stats().start_sequence, 6);
    let (mut engine, second) = run(stages(None));
    recorder.attach(&mut engine);
    let resumed = engine.run(restored.context).await.unwrap();
    recorder.finish().await.unwrap();
    let redone: Vec<usize> = second.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    assert_eq!(
        redone,
        [0, 0, 0, 1, 1, 1],
        "recorded stages must not run again"
    );

    assert_eq!(
        resumed.integrity.merkle_root,
        reference.integrity.merkle_root
    );
    for key in [
        ContextKey::Seeds,
        ContextKey::Hypotheses,
        ContextKey::Constraints,
    ] {
        let ids = |c: &ContextState| -> Vec<String> {
            c.get(key)
                .iter()
                .map(|f| f.id().as_str().to_owned())
                .collect()
        };
        assert_eq!(ids(&resumed.context), ids(&reference.context));
    }
    // The ledger now holds the whole run, and restores to the final context.
    let full = restore_run(
        &client,
        "run-resume",
        &PayloadRegistry::with_pack_payloads(),
    )
    .await
    .unwrap();
    assert_eq!(full.facts, 6);
    assert_eq!(wire(&full.context), wire(&resumed.context));
}

#[tokio::test]
async fn a_full_buffer_with_wait_slows_the_engine_but_records_everything() {
    let server = TestServer::start();
    let client = server.client().await;
    let recorder = Recorder::connect(server.url(), "run-wait", options(4, OnFull::Wait))
        .await
        .unwrap();
    let mut engine = test_engine(100);
    recorder.attach(&mut engine);
    engine.run(ContextState::new()).await.unwrap();
    let stats = recorder.flush().await.unwrap();
    assert!(stats.waited > Duration::ZERO, "{stats:?}");
    assert!(stats.high_water <= 4);
    assert_eq!(stats.unrecorded, 0);
    assert_eq!(stats.facts, 203);
    assert_eq!(
        entries(&client, "run-wait").await.len() as u64,
        stats.facts + stats.events
    );
}

#[tokio::test]
async fn a_full_buffer_with_fail_keeps_a_gapless_prefix_and_reports_it() {
    let server = TestServer::start();
    let client = server.client().await;
    let recorder = Recorder::connect(server.url(), "run-fail", options(4, OnFull::Fail))
        .await
        .unwrap();
    let mut engine = test_engine(200);
    let tee = Arc::new(Tee::new(recorder.clone()));
    engine.set_streaming(tee.clone());
    engine.set_event_observer(tee.clone());
    // The engine is not slowed down: it converges whatever the ledger does.
    let result = engine.run(ContextState::new()).await.unwrap();
    assert!(result.converged);
    let announced = tee.seen();

    let err = recorder.flush().await.unwrap_err();
    let Error::BufferFull {
        capacity,
        unrecorded,
    } = err
    else {
        panic!("expected BufferFull, got {err:?}");
    };
    assert_eq!(capacity, 4);
    let stored = entries(&client, "run-fail").await;
    assert!(unrecorded > 0);
    assert_eq!(stored.len() as u64 + unrecorded, announced.len() as u64);
    // What is stored is exactly the first announcements, in order.
    assert_announced(&stored, &announced);
    assert_eq!(recorder.stats().unrecorded, unrecorded);
}

#[tokio::test]
async fn a_failed_write_is_reported_and_nothing_after_it_is_recorded() {
    let server = TestServer::start();
    let recorder = Recorder::connect(
        server.url(),
        "run-broken",
        RecorderOptions {
            client: ClientOptions {
                attempts: 1,
                request_timeout: Duration::from_secs(2),
                connect_timeout: Duration::from_secs(2),
                ..ClientOptions::default()
            },
            ..RecorderOptions::default()
        },
    )
    .await
    .unwrap();
    server.stop();
    let mut engine = test_engine(20);
    recorder.attach(&mut engine);
    engine.run(ContextState::new()).await.unwrap();
    let err = recorder.flush().await.unwrap_err();
    assert!(matches!(err, Error::Ledger { .. }), "{err:?}");
    assert!(err.is_transient(), "{err:?}");
    let stats = recorder.stats();
    assert_eq!(stats.written, 0);
    assert_eq!(stats.unrecorded, stats.facts + stats.events);
    // The error stays: a second flush reports it again.
    assert_eq!(recorder.flush().await.unwrap_err(), err);
}

#[tokio::test]
async fn a_foreign_append_into_the_run_context_stops_the_recording_cleanly() {
    let server = TestServer::start();
    let client = server.client().await;
    let recorder = Recorder::connect(server.url(), "run-shared", RecorderOptions::default())
        .await
        .unwrap();
    let mut engine = test_engine(5);
    recorder.attach(&mut engine);
    engine.run(ContextState::new()).await.unwrap();
    let first = recorder.flush().await.unwrap();
    assert!(first.written > 0);
    // Someone else writes into the run's context between two runs.
    client
        .append(
            "run-shared",
            "intruder",
            b"x".to_vec(),
            converge_ledger_client::AppendOptions::default(),
        )
        .await
        .unwrap();
    let mut engine = test_engine(5);
    recorder.attach(&mut engine);
    engine.run(ContextState::new()).await.unwrap();
    let err = recorder.flush().await.unwrap_err();
    assert!(
        err.to_string()
            .contains("something else appended to the run's context"),
        "{err}"
    );
    assert!(!err.is_transient(), "{err:?}");
    // The ledger holds the first run and the foreign entry, nothing of the
    // second run interleaved with it.
    let stored = entries(&client, "run-shared").await;
    assert_eq!(stored.len() as u64, first.written + 1);
    assert_eq!(stored.last().unwrap().key, "intruder");
    assert_eq!(recorder.stats().written, first.written);
}

#[tokio::test]
async fn after_finish_nothing_more_is_recorded() {
    let server = TestServer::start();
    let client = server.client().await;
    let recorder = Recorder::connect(server.url(), "run-finish", RecorderOptions::default())
        .await
        .unwrap();
    let mut engine = test_engine(5);
    recorder.attach(&mut engine);
    engine.run(ContextState::new()).await.unwrap();
    let stats = recorder.finish().await.unwrap();
    let stored = entries(&client, "run-finish").await.len();
    assert_eq!(stored as u64, stats.written);

    // A second run with the finished recorder: announced, not recorded.
    let mut engine = test_engine(7);
    recorder.attach(&mut engine);
    engine.run(ContextState::new()).await.unwrap();
    let err = recorder.flush().await.unwrap_err();
    assert!(
        matches!(err, Error::Closed { unrecorded } if unrecorded > 0),
        "{err:?}"
    );
    assert_eq!(entries(&client, "run-finish").await.len(), stored);
}

#[tokio::test]
async fn a_recorder_cannot_connect_to_nothing() {
    let server = TestServer::start();
    let url = server.url();
    server.stop();
    let err = Recorder::connect(
        url,
        "run-x",
        RecorderOptions {
            client: ClientOptions {
                attempts: 1,
                connect_timeout: Duration::from_secs(2),
                ..ClientOptions::default()
            },
            ..RecorderOptions::default()
        },
    )
    .await
    .err()
    .unwrap();
    assert!(matches!(err, Error::Ledger { .. }), "{err:?}");
}
