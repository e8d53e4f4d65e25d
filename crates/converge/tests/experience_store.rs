//! `LedgerExperienceStore` (converge-core's ExperienceStore) with events
//! emitted by a real converge-core engine, against a ledger server.

mod common;

use std::sync::{Arc, Mutex};

use common::{Generator, Stage, TestServer};
use converge_core::experience_store::{
    ArtifactKind, EventQuery, ExperienceEvent, ExperienceEventEnvelope, ExperienceEventKind,
    ExperienceRecord, ExperienceStore, TimeRange, UserExperienceEvent, UserExperienceEventEnvelope,
};
use converge_core::governed_artifact::{GovernedArtifactState, LifecycleEvent};
use converge_core::kernel_boundary::{RemoteReplayTrace, ReplayTrace, Replayability};
use converge_core::{
    ContextKey, ContextState, Criterion, Engine, TypesBudgets, TypesIntentId, TypesIntentKind,
    TypesRootIntent, TypesRunHooks,
};
use converge_ledger_converge::{ExperienceStoreOptions, LedgerExperienceStore};

/// Experience events of one real engine run for the intent `intent`
/// (FactPromoted per fact, then OutcomeRecorded; with a fact budget of 3,
/// BudgetExceeded then OutcomeRecorded).
async fn engine_events(intent: &str, facts: usize, max_facts: u32) -> Vec<ExperienceEvent> {
    let mut engine = Engine::new();
    engine.register_suggestor(Stage::new(
        "seed",
        ContextKey::Seeds,
        "output of seed",
        None,
    ));
    engine.register_suggestor(Generator::new(ContextKey::Signals, facts, 2));
    let intent = TypesRootIntent::builder()
        .id(TypesIntentId::new(intent))
        .kind(TypesIntentKind::Custom)
        .request("collect signals")
        .success_criteria(vec![Criterion::required(
            "signals",
            "signals are collected",
        )])
        .budgets(TypesBudgets {
            max_facts,
            ..TypesBudgets::default()
        })
        .build();
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let observer = move |e: &ExperienceEvent| sink.lock().unwrap().push(e.clone());
    let _ = engine
        .run_with_types_intent_and_hooks(
            ContextState::new(),
            &intent,
            TypesRunHooks {
                criterion_evaluator: None,
                event_observer: Some(Arc::new(observer)),
            },
        )
        .await;
    let out = events.lock().unwrap().clone();
    assert!(!out.is_empty());
    out
}

fn envelope(
    id: &str,
    event: ExperienceEvent,
    at: &str,
    tenant: Option<&str>,
    corr: Option<&str>,
) -> ExperienceEventEnvelope {
    let mut e = ExperienceEventEnvelope::new(id, event).with_timestamp(at);
    e.tenant_id = tenant.map(Into::into);
    e.correlation_id = corr.map(Into::into);
    e
}

fn ids(events: &[ExperienceEventEnvelope]) -> Vec<String> {
    events
        .iter()
        .map(|e| e.event_id.as_str().to_owned())
        .collect()
}

fn store(server: &TestServer) -> LedgerExperienceStore {
    LedgerExperienceStore::connect(server.url(), ExperienceStoreOptions::default()).unwrap()
}

/// Two tenants, events of real runs spread over hours, correlation ids per
/// run, chain ids from the engine (the intent id).
struct Fixture {
    server: TestServer,
    store: LedgerExperienceStore,
    /// Every appended envelope, in append order.
    all: Vec<ExperienceEventEnvelope>,
}

async fn fixture() -> Fixture {
    let server = TestServer::start();
    let store = store(&server);
    let mut all = Vec::new();
    let runs = [
        ("acme", "run-a1", "intent-alpha", "2026-03-01T09", 4, 100),
        ("acme", "run-a2", "intent-beta", "2026-03-01T11", 3, 100),
        ("globex", "run-g1", "intent-alpha", "2026-03-01T10", 2, 100),
        ("acme", "run-a3", "intent-gamma", "2026-03-02T08", 8, 3), // budget exhausted
    ];
    for (tenant, corr, intent, hour, facts, budget) in runs {
        for (i, event) in engine_events(intent, facts, budget)
            .await
            .into_iter()
            .enumerate()
        {
            let at = format!("{hour}:{:02}:00Z", i);
            all.push(envelope(
                &format!("{corr}-{i}"),
                event,
                &at,
                Some(tenant),
                Some(corr),
            ));
        }
    }
    // One event without a tenant, appended late but occurring early.
    all.push(envelope(
        "no-tenant-1",
        ExperienceEvent::BudgetExceeded {
            chain_id: "intent-alpha".into(),
            resource: converge_core::experience_store::BudgetResource::Tokens,
            limit: "1000".into(),
            observed: Some("1200".into()),
        },
        "2026-03-01T08:30:00Z",
        None,
        Some("run-x"),
    ));
    // Append one by one, and the rest as a batch.
    let (one, rest) = all.split_at(5);
    for e in one {
        store.append_event(e.clone()).unwrap();
    }
    store.append_events(rest).unwrap();
    Fixture { server, store, all }
}

/// The expected answer: filter, order by occurred_at then append order.
fn expect(
    all: &[ExperienceEventEnvelope],
    keep: impl Fn(&ExperienceEventEnvelope) -> bool,
) -> Vec<String> {
    let mut v: Vec<(String, usize, String)> = all
        .iter()
        .enumerate()
        .filter(|(_, e)| keep(e))
        .map(|(i, e)| {
            (
                e.occurred_at.as_str().to_owned(),
                i,
                e.event_id.as_str().to_owned(),
            )
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, _, id)| id).collect()
}

fn tenant(e: &ExperienceEventEnvelope) -> Option<&str> {
    e.tenant_id.as_ref().map(|t| t.as_str())
}

#[tokio::test]
async fn query_by_tenant() {
    let f = fixture().await;
    let acme = f.store.query_events(&EventQuery {
        tenant_id: Some("acme".into()),
        ..EventQuery::default()
    });
    let acme = acme.unwrap();
    assert_eq!(ids(&acme), expect(&f.all, |e| tenant(e) == Some("acme")));
    assert!(acme.len() > 10);
    let globex = f
        .store
        .query_events(&EventQuery {
            tenant_id: Some("globex".into()),
            ..EventQuery::default()
        })
        .unwrap();
    assert_eq!(
        ids(&globex),
        expect(&f.all, |e| tenant(e) == Some("globex"))
    );
    let nobody = f
        .store
        .query_events(&EventQuery {
            tenant_id: Some("initech".into()),
            ..EventQuery::default()
        })
        .unwrap();
    assert!(nobody.is_empty());
    // No tenant: every event, whatever its tenant.
    let everyone = f.store.query_events(&EventQuery::default()).unwrap();
    assert_eq!(ids(&everyone), expect(&f.all, |_| true));
    // The envelopes come back whole.
    let first = &f.all[0];
    let back = everyone
        .iter()
        .find(|e| e.event_id == first.event_id)
        .unwrap();
    assert_eq!(
        serde_json::to_value(back).unwrap(),
        serde_json::to_value(first).unwrap()
    );
    // A tenant's query reads that tenant's contexts only.
    let plan = f
        .store
        .plan(&EventQuery {
            tenant_id: Some("acme".into()),
            ..EventQuery::default()
        })
        .unwrap();
    assert_eq!(plan, ["converge/experience/t.acme/events"]);
}

#[tokio::test]
async fn query_by_time_range() {
    let f = fixture().await;
    let at = |e: &ExperienceEventEnvelope| e.occurred_at.as_str().to_owned();
    let cases = [
        (Some("2026-03-01T10:00:00Z"), Some("2026-03-01T11:01:00Z")),
        (Some("2026-03-01T11:00:00Z"), None),
        (None, Some("2026-03-01T09:02:00Z")),
        (Some("2026-03-01T09:01:00Z"), Some("2026-03-01T09:01:00Z")), // inclusive
        (Some("2026-03-03T00:00:00Z"), None),                         // nothing
    ];
    for (start, end) in cases {
        let q = EventQuery {
            time_range: Some(TimeRange {
                start: start.map(Into::into),
                end: end.map(Into::into),
            }),
            ..EventQuery::default()
        };
        let got = f.store.query_events(&q).unwrap();
        let want = expect(&f.all, |e| {
            start.is_none_or(|s| at(e).as_str() >= s) && end.is_none_or(|x| at(e).as_str() <= x)
        });
        assert_eq!(ids(&got), want, "{start:?}..{end:?}");
    }
    assert_eq!(
        f.store
            .query_events(&EventQuery {
                time_range: Some(TimeRange {
                    start: Some("2026-03-01T09:01:00Z".into()),
                    end: Some("2026-03-01T09:01:00Z".into()),
                }),
                ..EventQuery::default()
            })
            .unwrap()
            .len(),
        1
    );
    // A narrow range reads its hour's bucket, not the tenant's events.
    let plan = f
        .store
        .plan(&EventQuery {
            tenant_id: Some("acme".into()),
            time_range: Some(TimeRange {
                start: Some("2026-03-01T11:00:00Z".into()),
                end: Some("2026-03-01T11:59:59Z".into()),
            }),
            ..EventQuery::default()
        })
        .unwrap();
    assert_eq!(plan, ["converge/experience/t.acme/time/2026-03-01T11"]);
}

#[tokio::test]
async fn query_by_kinds() {
    let f = fixture().await;
    for kinds in [
        vec![ExperienceEventKind::FactPromoted],
        vec![
            ExperienceEventKind::OutcomeRecorded,
            ExperienceEventKind::BudgetExceeded,
        ],
        vec![ExperienceEventKind::GateDecisionRecorded],
    ] {
        let got = f
            .store
            .query_events(&EventQuery {
                kinds: kinds.clone(),
                ..EventQuery::default()
            })
            .unwrap();
        let want = expect(&f.all, |e| kinds.contains(&e.event.kind()));
        assert_eq!(ids(&got), want, "{kinds:?}");
        assert!(got.iter().all(|e| kinds.contains(&e.event.kind())));
    }
    // The engine's budget exhaustion is there, with its chain.
    let exceeded = f
        .store
        .query_events(&EventQuery {
            tenant_id: Some("acme".into()),
            kinds: vec![ExperienceEventKind::BudgetExceeded],
            ..EventQuery::default()
        })
        .unwrap();
    assert_eq!(ids(&exceeded).len(), 1);
    let plan = f
        .store
        .plan(&EventQuery {
            tenant_id: Some("acme".into()),
            kinds: vec![ExperienceEventKind::OutcomeRecorded],
            ..EventQuery::default()
        })
        .unwrap();
    assert_eq!(plan, ["converge/experience/t.acme/kind/OutcomeRecorded"]);
}

#[tokio::test]
async fn query_by_correlation_id() {
    let f = fixture().await;
    for corr in ["run-a1", "run-a2", "run-g1", "run-x", "run-nothing"] {
        let got = f
            .store
            .query_events(&EventQuery {
                correlation_id: Some(corr.into()),
                ..EventQuery::default()
            })
            .unwrap();
        let want = expect(&f.all, |e| {
            e.correlation_id.as_ref().map(|c| c.as_str()) == Some(corr)
        });
        assert_eq!(ids(&got), want, "{corr}");
    }
    let plan = f
        .store
        .plan(&EventQuery {
            tenant_id: Some("acme".into()),
            correlation_id: Some("run-a2".into()),
            ..EventQuery::default()
        })
        .unwrap();
    assert_eq!(plan, ["converge/experience/t.acme/corr/run-a2"]);
}

#[tokio::test]
async fn query_by_chain_id() {
    let f = fixture().await;
    let chain = |e: &ExperienceEventEnvelope| match &e.event {
        ExperienceEvent::OutcomeRecorded { chain_id, .. }
        | ExperienceEvent::BudgetExceeded { chain_id, .. } => Some(chain_id.as_str().to_owned()),
        _ => None,
    };
    for id in ["intent-alpha", "intent-beta", "intent-gamma", "intent-none"] {
        let got = f
            .store
            .query_events(&EventQuery {
                chain_id: Some(id.into()),
                ..EventQuery::default()
            })
            .unwrap();
        let want = expect(&f.all, |e| chain(e).as_deref() == Some(id));
        assert_eq!(ids(&got), want, "{id}");
    }
    // intent-alpha ran for two tenants, and one event has no tenant.
    let alpha = f
        .store
        .query_events(&EventQuery {
            chain_id: Some("intent-alpha".into()),
            ..EventQuery::default()
        })
        .unwrap();
    assert_eq!(alpha.len(), 3);
    assert_eq!(alpha[0].event_id, "no-tenant-1", "earliest first");
}

#[tokio::test]
async fn query_with_limit_and_all_filters_together() {
    let f = fixture().await;
    let all = expect(&f.all, |_| true);
    for limit in [0, 1, 5, all.len(), all.len() + 10] {
        let got = f
            .store
            .query_events(&EventQuery {
                limit: Some(limit),
                ..EventQuery::default()
            })
            .unwrap();
        assert_eq!(ids(&got), all[..limit.min(all.len())], "limit {limit}");
    }
    let q = EventQuery {
        tenant_id: Some("acme".into()),
        time_range: Some(TimeRange {
            start: Some("2026-03-01T09:01:00Z".into()),
            end: Some("2026-03-02T23:00:00Z".into()),
        }),
        kinds: vec![ExperienceEventKind::FactPromoted],
        correlation_id: Some("run-a1".into()),
        chain_id: None,
        limit: Some(2),
    };
    let got = f.store.query_events(&q).unwrap();
    assert_eq!(ids(&got), ["run-a1-1", "run-a1-2"]);
}

#[tokio::test]
async fn appends_are_idempotent_by_event_id() {
    let f = fixture().await;
    let before = f.store.query_events(&EventQuery::default()).unwrap().len();
    // The same event again, alone and in a batch: nothing new.
    f.store.append_event(f.all[3].clone()).unwrap();
    f.store.append_events(&f.all[..4]).unwrap();
    assert_eq!(
        f.store.query_events(&EventQuery::default()).unwrap().len(),
        before
    );
    // Another event under a used id is refused.
    let mut other = f.all[3].clone();
    other.occurred_at = "2030-01-01T00:00:00Z".into();
    let err = f.store.append_event(other).unwrap_err();
    assert!(err.to_string().contains("already"), "{err}");
    drop(f.server);
}

#[tokio::test]
async fn trace_links_are_found_by_id() {
    let server = TestServer::start();
    let store = store(&server);
    let trace = |fp: &str| {
        ReplayTrace::Remote(RemoteReplayTrace {
            provider_name: "provider".into(),
            provider_model_id: "model-1".into(),
            request_fingerprint: fp.into(),
            response_fingerprint: "resp".into(),
            temperature: 0.0,
            top_p: 1.0,
            max_tokens: 256,
            provider_metadata: Default::default(),
            retried: false,
            retry_reasons: Vec::new(),
            replayability: Replayability::BestEffort,
        })
    };
    for (id, link, fp, tenant) in [
        ("e1", "trace-1", "req-1", Some("acme")),
        ("e2", "trace-2", "req-2", None),
        ("e3", "trace-1", "req-1b", Some("globex")), // recorded again
    ] {
        store
            .append_event(envelope(
                id,
                ExperienceEvent::ReplayTraceRecorded {
                    trace_link_id: link.into(),
                    trace_link: trace(fp),
                },
                "2026-03-01T00:00:00Z",
                tenant,
                None,
            ))
            .unwrap();
    }
    let got = store.get_trace_link(&"trace-2".into()).unwrap().unwrap();
    assert_eq!(
        serde_json::to_value(got).unwrap(),
        serde_json::to_value(trace("req-2")).unwrap()
    );
    let latest = store.get_trace_link(&"trace-1".into()).unwrap().unwrap();
    assert_eq!(
        serde_json::to_value(latest).unwrap(),
        serde_json::to_value(trace("req-1b")).unwrap()
    );
    assert!(store.get_trace_link(&"trace-9".into()).unwrap().is_none());
}

#[tokio::test]
async fn artifact_state_transitions_are_events() {
    let server = TestServer::start();
    let store = store(&server);
    let mut approve = LifecycleEvent::new(
        GovernedArtifactState::Draft,
        GovernedArtifactState::Approved,
        "reviewer",
        "passed evaluation",
    );
    approve.timestamp = "2026-03-05T10:00:00Z".into();
    approve.tenant_id = Some("acme".into());
    let mut activate = approve.clone();
    activate.from_state = GovernedArtifactState::Approved;
    activate.to_state = GovernedArtifactState::Active;
    activate.timestamp = "2026-03-05T11:00:00Z".into();
    for event in [&approve, &activate, &approve] {
        store
            .write_artifact_state_transition(
                &"adapter-7".into(),
                ArtifactKind::Adapter,
                event.clone(),
            )
            .unwrap();
    }
    let got = store
        .query_events(&EventQuery {
            tenant_id: Some("acme".into()),
            kinds: vec![ExperienceEventKind::ArtifactStateTransitioned],
            ..EventQuery::default()
        })
        .unwrap();
    assert_eq!(
        got.len(),
        2,
        "writing the same transition twice records it once"
    );
    let states: Vec<_> = got
        .iter()
        .map(|e| match &e.event {
            ExperienceEvent::ArtifactStateTransitioned {
                artifact_id,
                artifact_kind,
                event,
            } => {
                assert_eq!(artifact_id.as_str(), "adapter-7");
                assert_eq!(*artifact_kind, ArtifactKind::Adapter);
                assert_eq!(e.occurred_at.as_str(), event.timestamp);
                event.to_state
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        states,
        [
            GovernedArtifactState::Approved,
            GovernedArtifactState::Active
        ]
    );
}

#[tokio::test]
async fn user_events_are_records_beside_engine_events() {
    let f = fixture().await;
    let user = |id: &str, at: &str, corr: &str| {
        let mut e = UserExperienceEventEnvelope::new(
            id,
            UserExperienceEvent::UserOverrideIssued {
                target: converge_core::experience_store::OverrideTarget::Fact("Signals-0".into()),
                actor: "alice".into(),
                policy_snapshot_hash: None,
                reason: "known bad source".into(),
            },
        )
        .with_timestamp(at)
        .with_tenant("acme");
        e.correlation_id = Some(corr.into());
        e
    };
    f.store
        .append_user_event(user("u1", "2026-03-01T09:02:30Z", "run-a1"))
        .unwrap();
    f.store
        .append_user_event(user("u2", "2026-03-01T07:00:00Z", "run-a1"))
        .unwrap();

    let q = EventQuery {
        tenant_id: Some("acme".into()),
        correlation_id: Some("run-a1".into()),
        ..EventQuery::default()
    };
    let records = f.store.query_records(&q).unwrap();
    let order: Vec<(String, bool)> = records
        .iter()
        .map(|r| match r {
            ExperienceRecord::Engine(e) => (e.event_id.as_str().to_owned(), false),
            ExperienceRecord::User(u) => (u.event_id.as_str().to_owned(), true),
        })
        .collect();
    let engine = expect(&f.all, |e| {
        e.correlation_id.as_ref().map(|c| c.as_str()) == Some("run-a1")
    });
    let mut want: Vec<(String, bool)> = engine.iter().map(|i| (i.clone(), false)).collect();
    want.insert(0, ("u2".into(), true)); // earliest
    want.insert(4, ("u1".into(), true)); // between 09:02:00 and 09:03:00
    assert_eq!(order, want);
    // Engine-side queries leave user events out, and so do kinds and chains.
    assert_eq!(ids(&f.store.query_events(&q).unwrap()), engine);
    let kinds = EventQuery {
        kinds: vec![ExperienceEventKind::FactPromoted],
        ..q.clone()
    };
    assert!(
        f.store
            .query_records(&kinds)
            .unwrap()
            .iter()
            .all(|r| matches!(r, ExperienceRecord::Engine(_)))
    );
}

#[test]
fn the_store_works_from_plain_threads_too() {
    let server = TestServer::start();
    let store = store(&server);
    let event = ExperienceEvent::BudgetExceeded {
        chain_id: "c".into(),
        resource: converge_core::experience_store::BudgetResource::Cycles,
        limit: "1".into(),
        observed: None,
    };
    store
        .append_event(envelope(
            "t1",
            event,
            "2026-01-01T00:00:00Z",
            Some("x"),
            None,
        ))
        .unwrap();
    assert_eq!(store.query_events(&EventQuery::default()).unwrap().len(), 1);
}

/// Regression: a query read (and held) every matching event before applying
/// its limit. Now it holds at most the limit, and reads time buckets in
/// order, stopping once the limit is met by events before the next bucket.
#[tokio::test]
async fn a_query_with_a_limit_reads_and_holds_little_more_than_the_limit() {
    use converge_ledger_store::MemoryStore;
    use converge_ledger_store::testkit::Probe;

    let probe = Arc::new(Probe::new(Arc::new(MemoryStore::new())));
    let server = TestServer::start_on(
        probe.clone(),
        converge_ledger_server::LedgerConfig::default(),
        converge_ledger_server::ServerConfig::default(),
    );
    let store = store(&server);
    let template = engine_events("intent-many", 1, 100).await.remove(0);
    // 40 hours of 25 events each, appended latest hour first and with
    // minutes out of order: append order says nothing about time order.
    let mut all = Vec::new();
    for hour in (0..40).rev() {
        for minute in [
            7, 3, 9, 1, 5, 8, 2, 6, 4, 0, 17, 13, 19, 11, 15, 18, 12, 16, 14, 10, 27, 23, 29, 21,
            25,
        ] {
            let at = format!(
                "2026-04-{:02}T{:02}:{minute:02}:00Z",
                1 + hour / 24,
                hour % 24
            );
            let e = envelope(
                &format!("e-{hour}-{minute}"),
                template.clone(),
                &at,
                Some("acme"),
                None,
            );
            store.append_event(e.clone()).unwrap();
            all.push(e);
        }
    }
    all.sort_by(|a, b| a.occurred_at.as_str().cmp(b.occurred_at.as_str()));
    let before = probe.scanned();
    let got = store
        .query_events(&EventQuery {
            tenant_id: Some("acme".into()),
            limit: Some(3),
            ..EventQuery::default()
        })
        .unwrap();
    let read = probe.scanned() - before;
    assert_eq!(ids(&got), ids(&all[..3]));
    // The bucket list (40), the first hour's references (25), the three
    // events, and the heads read while planning: far from the 1000 events.
    assert!(read <= 100, "the query read {read} entries");
}
