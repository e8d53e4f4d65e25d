//! `LedgerContextStore` (converge-core's ContextStore) with real engine
//! contexts and a ledger server.

mod common;

use std::collections::BTreeMap;

use common::{Generator, Stage, TestServer, entries, wire};
use converge_core::traits::ContextStore;
use converge_core::{Budget, ContextKey, ContextState, Engine};
use converge_ledger_client::AppendOptions;
use converge_ledger_converge::{LedgerContextStore, SAVE_KEY};

async fn run(context: ContextState, signals: usize, hypotheses: usize) -> ContextState {
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
    engine.register_suggestor(Generator::new(ContextKey::Signals, signals, 7));
    engine.register_suggestor(Generator::new(ContextKey::Hypotheses, hypotheses, 3));
    let result = engine.run(context).await.unwrap();
    assert!(result.converged);
    result.context
}

/// Saves through the trait, as converge-core callers do.
async fn save<S: ContextStore>(store: &S, scope: &str, ctx: &ContextState) {
    store.save_context(scope, ctx).await.unwrap();
}

async fn load<S: ContextStore>(store: &S, scope: &str) -> Option<ContextState> {
    store.load_context(scope).await.unwrap()
}

#[tokio::test]
async fn what_is_loaded_equals_what_was_saved() {
    let server = TestServer::start();
    let store = LedgerContextStore::new(server.client().await);
    let mut ctx = run(ContextState::new(), 40, 12).await;
    // Pending proposals are part of the state too.
    ctx.add_input(ContextKey::Constraints, "budget", "spend at most 10k")
        .unwrap();
    ctx.add_input(ContextKey::Constraints, "deadline", "ship by Friday")
        .unwrap();

    save(&store, "job-1", &ctx).await;
    let loaded = load(&store, "job-1").await.expect("saved");

    assert_eq!(wire(&loaded), wire(&ctx));
    assert_eq!(loaded.version(), ctx.version());
    for key in [
        ContextKey::Seeds,
        ContextKey::Signals,
        ContextKey::Hypotheses,
    ] {
        assert_eq!(
            loaded.get(key),
            ctx.get(key),
            "{key:?}: same facts, same order"
        );
    }
    assert!(loaded.has_pending_proposals());
    assert!(loaded.dirty_keys().is_empty());

    // The loaded context runs on like the original.
    let a = run(ctx, 50, 12).await;
    let b = run(loaded, 50, 12).await;
    assert_eq!(wire(&a), wire(&b));
}

#[tokio::test]
async fn unknown_scopes_load_as_none_and_scopes_are_separate() {
    let server = TestServer::start();
    let store = LedgerContextStore::new(server.client().await);
    assert!(load(&store, "never-saved").await.is_none());

    let a = run(ContextState::new(), 5, 1).await;
    let b = run(ContextState::new(), 9, 2).await;
    save(&store, "a/1", &a).await;
    save(&store, "a%2F1", &b).await;
    assert_eq!(wire(&load(&store, "a/1").await.unwrap()), wire(&a));
    assert_eq!(wire(&load(&store, "a%2F1").await.unwrap()), wire(&b));
    assert_ne!(store.context_id("a/1"), store.context_id("a%2F1"));

    let empty = ContextState::new();
    save(&store, "empty", &empty).await;
    let loaded = load(&store, "empty").await.unwrap();
    assert_eq!(wire(&loaded), wire(&empty));
}

#[tokio::test]
async fn saving_a_grown_context_writes_only_the_new_facts() {
    let server = TestServer::start();
    let client = server.client().await;
    let store = LedgerContextStore::new(client.clone());

    let first = run(ContextState::new(), 30, 6).await;
    let r1 = store.save("grow", &first).await.unwrap();
    assert!(!r1.extended);
    assert_eq!(r1.facts_written, 1 + 30 + 6);

    // Saving the same context again writes no fact.
    let again = store.save("grow", &first).await.unwrap();
    assert!(again.extended);
    assert_eq!(again.facts_written, 0);

    let grown = run(first, 45, 10).await;
    let r2 = store.save("grow", &grown).await.unwrap();
    assert!(r2.extended);
    assert_eq!(r2.facts_written, 15 + 4);
    assert_eq!(
        wire(&store.load("grow").await.unwrap().unwrap()),
        wire(&grown)
    );

    let stored = entries(&client, &store.context_id("grow")).await;
    let facts = stored.iter().filter(|e| e.key != SAVE_KEY).count();
    assert_eq!(facts, 1 + 45 + 10, "no fact is stored twice");
    assert_eq!(stored.iter().filter(|e| e.key == SAVE_KEY).count(), 3);
}

#[tokio::test]
async fn saving_a_different_context_starts_a_new_generation() {
    let server = TestServer::start();
    let store = LedgerContextStore::new(server.client().await);

    let a = run(ContextState::new(), 20, 4).await;
    let b = run(ContextState::new(), 8, 9).await; // not an extension of a
    store.save("swap", &a).await.unwrap();
    let r = store.save("swap", &b).await.unwrap();
    assert!(!r.extended);
    assert_eq!(r.facts_written, 1 + 8 + 9);
    assert_eq!(wire(&store.load("swap").await.unwrap().unwrap()), wire(&b));

    // Back to a: the last save wins.
    store.save("swap", &a).await.unwrap();
    assert_eq!(wire(&store.load("swap").await.unwrap().unwrap()), wire(&a));

    // A context that lost a key is not an extension either.
    let mut shrunk = ContextState::new();
    shrunk
        .add_input(ContextKey::Seeds, "other", "something else")
        .unwrap();
    let shrunk = run(shrunk, 0, 0).await;
    let r = store.save("swap", &shrunk).await.unwrap();
    assert!(!r.extended);
    assert_eq!(
        wire(&store.load("swap").await.unwrap().unwrap()),
        wire(&shrunk)
    );
}

#[tokio::test]
async fn an_unfinished_save_changes_nothing() {
    let server = TestServer::start();
    let client = server.client().await;
    let store = LedgerContextStore::new(client.clone());
    let ctx_id = store.context_id("crash");

    let a = run(ContextState::new(), 10, 2).await;
    store.save("crash", &a).await.unwrap();
    let marker = entries(&client, &ctx_id).await.last().unwrap().clone();
    let generation = marker.metadata["generation"].clone();

    // A save that died after writing two facts of a different context at
    // the positions the next save will use, and before its marker.
    let other = run(ContextState::new(), 14, 2).await;
    for i in [10usize, 11] {
        let fact = &other.get(ContextKey::Signals)[i];
        let metadata: BTreeMap<String, String> = [
            ("generation".to_owned(), generation.clone()),
            ("index".to_owned(), i.to_string()),
            ("fact_id".to_owned(), fact.id().as_str().to_owned()),
        ]
        .into();
        client
            .append(
                &ctx_id,
                "Signals",
                converge_ledger_converge::encode_fact(fact).unwrap(),
                AppendOptions {
                    metadata,
                    idempotency_key: Some(format!("g{generation}/Signals/{i}")),
                    lamport: 0,
                },
            )
            .await
            .unwrap();
    }
    // Loading still gives the last completed save.
    assert_eq!(wire(&store.load("crash").await.unwrap().unwrap()), wire(&a));

    // A grown `a` follows the unfinished save, not its own marker: it is
    // saved as a new generation (never mixing with those facts), and loads
    // exactly.
    let grown = run(a, 13, 3).await;
    let r = store.save("crash", &grown).await.unwrap();
    assert!(!r.extended);
    assert_eq!(
        wire(&store.load("crash").await.unwrap().unwrap()),
        wire(&grown)
    );
}

#[tokio::test]
async fn concurrent_saves_of_one_scope_never_interleave_and_the_last_wins() {
    let server = TestServer::start();
    let client = server.client().await;
    let a = run(ContextState::new(), 40, 5).await;
    let b = run(ContextState::new(), 12, 30).await;
    let one = LedgerContextStore::new(server.client().await);
    let two = LedgerContextStore::new(server.client().await);
    let ctx_id = one.context_id("race");
    for _ in 0..5 {
        let (ra, rb) = tokio::join!(one.save("race", &a), two.save("race", &b));
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        let last = if ra.marker_sequence > rb.marker_sequence {
            &a
        } else {
            &b
        };
        assert_eq!(
            wire(&one.load("race").await.unwrap().unwrap()),
            wire(last),
            "the save whose marker is last is what loads"
        );
    }
    // Every save is contiguous: the facts right before a marker belong to
    // its generation, and no other save's entries sit between them.
    let stored = entries(&client, &ctx_id).await;
    let mut pending: Vec<&str> = Vec::new();
    for e in &stored {
        if e.key == SAVE_KEY {
            let generation = e.metadata["generation"].as_str();
            assert!(
                pending.iter().all(|g| *g == generation),
                "a save at {} mixes facts of generations {pending:?}",
                e.sequence
            );
            pending.clear();
        } else {
            pending.push(e.metadata["generation"].as_str());
        }
    }
    assert!(pending.is_empty(), "every save ends with its marker");
}

#[tokio::test]
async fn a_save_beyond_the_servers_batch_limits_is_chained_and_loads_exactly() {
    let server = TestServer::small_batches();
    let client = server.client().await;
    let store = LedgerContextStore::new(client.clone());
    let a = run(ContextState::new(), 40, 9).await;
    let r = store.save("chained", &a).await.unwrap();
    assert_eq!(r.facts_written, 1 + 40 + 9);
    assert_eq!(
        wire(&store.load("chained").await.unwrap().unwrap()),
        wire(&a)
    );
    // It took several batches: 51 entries at 7 per batch.
    assert_eq!(r.marker_sequence, 51);
    let grown = run(a, 47, 12).await;
    let r = store.save("chained", &grown).await.unwrap();
    assert!(r.extended);
    assert_eq!(r.facts_written, 7 + 3);
    assert_eq!(
        wire(&store.load("chained").await.unwrap().unwrap()),
        wire(&grown)
    );
    assert_eq!(
        entries(&client, &store.context_id("chained")).await.len(),
        62
    );
}

#[tokio::test]
async fn a_tampered_fact_fails_the_merkle_check() {
    let server = TestServer::start();
    let client = server.client().await;
    let store = LedgerContextStore::new(client.clone()).with_prefix("tamper/");
    let a = run(ContextState::new(), 3, 1).await;
    store.save("t", &a).await.unwrap();
    let ctx_id = store.context_id("t");
    assert!(ctx_id.starts_with("tamper/"));
    let stored = entries(&client, &ctx_id).await;
    let marker = stored.last().unwrap();
    let mut markerv: serde_json::Value = serde_json::from_slice(&marker.payload).unwrap();

    // Re-save the same marker after a forged fact in the same slot of a new
    // generation: the facts no longer hash to the saved root.
    let generation = stored.len() as u64 + 1;
    let mut forged: serde_json::Value = serde_json::from_slice(&stored[0].payload).unwrap();
    let key = stored[0].key.clone();
    forged["payload"]["payload"]["text"] = "forged".into();
    let mut all = vec![(
        key,
        serde_json::to_vec(&forged).unwrap(),
        stored[0].metadata.clone(),
    )];
    for e in &stored[1..stored.len() - 1] {
        all.push((e.key.clone(), e.payload.clone(), e.metadata.clone()));
    }
    for (key, payload, mut metadata) in all {
        metadata.insert("generation".into(), generation.to_string());
        client
            .append(
                &ctx_id,
                &key,
                payload,
                AppendOptions {
                    metadata,
                    ..AppendOptions::default()
                },
            )
            .await
            .unwrap();
    }
    markerv["generation"] = generation.into();
    client
        .append(
            &ctx_id,
            SAVE_KEY,
            serde_json::to_vec(&markerv).unwrap(),
            AppendOptions::default(),
        )
        .await
        .unwrap();
    let err = store.load("t").await.unwrap_err();
    assert!(err.to_string().contains("merkle"), "{err}");
}

/// Regression: a save retried on any FAILED_PRECONDITION, not only when
/// another save moved the head; a precondition that fails the same way
/// every time (here: storage refusing writes over its configuration) was
/// tried eight times. Now it fails at once, after one write.
#[tokio::test]
async fn a_save_is_retried_only_when_another_save_moved_the_head() {
    use std::sync::Arc;

    use converge_ledger_store::testkit::Probe;
    use converge_ledger_store::{MemoryStore, StoreError};

    let probe = Arc::new(Probe::failing(Arc::new(MemoryStore::new()), || {
        Some(StoreError::Config(
            "the database refuses writes to this schema".into(),
        ))
    }));
    let server = TestServer::start_on(
        probe.clone(),
        converge_ledger_server::LedgerConfig::default(),
        converge_ledger_server::ServerConfig::default(),
    );
    let store = LedgerContextStore::new(server.client().await);
    let ctx = run(ContextState::new(), 3, 2).await;
    let e = store.save("refused", &ctx).await.unwrap_err();
    assert!(e.to_string().contains("refuses writes"), "{e}");
    assert_eq!(probe.writes(), 1, "the save was retried: {e}");
}
