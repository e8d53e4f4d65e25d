//! The WorldLine profile served over gRPC, on every backend: the server
//! enforces L1-L5 atomically (one outcome per commitment even when 32
//! writers race, through two PostgreSQL nodes too), computes snapshot state
//! itself, and none of the public reference's holes is there. Every refusal
//! has its status and changes nothing.

mod common;

use std::sync::Arc;

use common::TestServer;
use converge_ledger_client::worldline::{
    CapabilitySet, Commitment, CommitmentId, Decision, EvidenceRef, Outcome, OutcomeStatus,
    PolicyRef, Receipt, ReceiptRef, StateUpdate, WorldlineId, WorldlineLimits,
};
use converge_ledger_client::{AppendOptions, Client, ClientError, Digest};
use converge_ledger_postgres::PostgresStore;
use converge_ledger_postgres::testkit::TestSchema;
use converge_ledger_server::{LedgerConfig, ServerConfig};
use converge_ledger_store::{EmbeddedOptions, EmbeddedStore, MemoryStore, Store};

fn commitment(n: u64, proposer: &str, accepted: bool) -> Commitment {
    let mut id = [0u8; 16];
    id[8..].copy_from_slice(&n.to_be_bytes());
    id[0] = 0x42;
    let granted: CapabilitySet = ["repo.write".to_owned()].into_iter().collect();
    Commitment {
        commitment_id: CommitmentId(id),
        class: "deploy".into(),
        intent: format!("roll out v{n}"),
        requested_capabilities: granted.clone(),
        targets: vec!["svc/api".into()],
        evidence: vec![EvidenceRef {
            uri: format!("cas://evidence/{n}"),
            digest: Digest::of(&[b"evidence", &n.to_be_bytes()]),
        }],
        proposer: proposer.into(),
        decision: if accepted {
            Decision::Accepted
        } else {
            Decision::Rejected {
                reason: "policy says no".into(),
            }
        },
        policy: PolicyRef {
            hash: Digest::of(&[b"policy"]),
            version: "v12".into(),
        },
        granted_capabilities: if accepted {
            granted
        } else {
            CapabilitySet::new()
        },
        revoked_capabilities: CapabilitySet::new(),
        decider: "kernel".into(),
    }
}

fn succeeded(of: &Receipt, updates: Vec<StateUpdate>) -> Outcome {
    Outcome {
        commitment: of.receipt_hash,
        status: OutcomeStatus::Succeeded,
        effects: vec![],
        proofs: vec![],
        state_updates: updates,
        reporter: "driver-1".into(),
    }
}

fn put(key: &str, value: &str) -> StateUpdate {
    StateUpdate::Put {
        key: key.into(),
        value: value.as_bytes().to_vec(),
    }
}

/// A backend under test: its store, and a way to open another node on it.
trait Backend {
    fn store(&self) -> Arc<dyn Store>;
    fn second_node(&self) -> Option<Arc<dyn Store>> {
        None
    }
}

struct Memory(Arc<MemoryStore>);
impl Backend for Memory {
    fn store(&self) -> Arc<dyn Store> {
        self.0.clone()
    }
}

struct Embedded(Arc<EmbeddedStore>, #[allow(dead_code)] tempfile::TempDir);
impl Backend for Embedded {
    fn store(&self) -> Arc<dyn Store> {
        self.0.clone()
    }
}

struct Postgres(TestSchema);
impl Backend for Postgres {
    fn store(&self) -> Arc<dyn Store> {
        // Opening blocks on its own runtime: off the async worker.
        let options = self.0.options();
        Arc::new(tokio::task::block_in_place(|| {
            PostgresStore::open(options).unwrap()
        }))
    }
    fn second_node(&self) -> Option<Arc<dyn Store>> {
        Some(self.store())
    }
}

fn backends(test: &str) -> Vec<(&'static str, Box<dyn Backend>)> {
    let dir = tempfile::tempdir().unwrap();
    let embedded = EmbeddedStore::open(EmbeddedOptions::new(dir.path())).unwrap();
    let mut out: Vec<(&'static str, Box<dyn Backend>)> = vec![
        ("memory", Box::new(Memory(Arc::new(MemoryStore::new())))),
        ("embedded", Box::new(Embedded(Arc::new(embedded), dir))),
    ];
    if let Some(schema) = TestSchema::create(test) {
        out.push(("postgres", Box::new(Postgres(schema))));
    }
    out
}

async fn serve(store: Arc<dyn Store>, limits: WorldlineLimits) -> (TestServer, Client) {
    let server = TestServer::start_full(
        store,
        LedgerConfig::default(),
        ServerConfig {
            worldline_limits: limits,
            ..ServerConfig::default()
        },
        "127.0.0.1:0",
    )
    .await;
    let client = Client::connect(&server.url()).await.unwrap();
    (server, client)
}

async fn rules_hold_and_refusals_change_nothing(name: &str, backend: &dyn Backend) {
    let (server, c) = serve(backend.store(), WorldlineLimits::default()).await;
    let w = WorldlineId::derive(format!("agent-{name}").as_bytes());
    let other = WorldlineId::derive(format!("other-{name}").as_bytes());

    // A commitment, and its retry: the same receipt, nothing appended.
    let accepted = c
        .append_commitment(&w, &commitment(1, "agent-7", true))
        .await
        .unwrap();
    assert_eq!(accepted.seq, 1);
    let again = c
        .append_commitment(&w, &commitment(1, "agent-7", true))
        .await
        .unwrap();
    assert_eq!(
        again, accepted,
        "{name}: a retried commitment is the same receipt"
    );
    // The same id with other content is refused (the reference appended it).
    let mut changed = commitment(1, "agent-7", true);
    changed.intent = "something else".into();
    let e = c.append_commitment(&w, &changed).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::AlreadyExists(m) if m.contains("receipt 1")),
        "{name}: {e:?}"
    );
    let rejected = c
        .append_commitment(&w, &commitment(2, "agent-7", false))
        .await
        .unwrap();
    assert_eq!(rejected.seq, 2);

    // Outcomes that do not fit their commitment's decision.
    let e = c
        .append_outcome(&w, &Outcome::rejection(accepted.receipt_hash, "driver-1"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ClientError::FailedPrecondition(_)),
        "{name}: {e:?}"
    );
    let e = c
        .append_outcome(&w, &succeeded(&rejected, vec![put("k", "v")]))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ClientError::FailedPrecondition(_)),
        "{name}: {e:?}"
    );
    // Unknown and foreign commitments.
    let mut unknown = succeeded(&accepted, vec![]);
    unknown.commitment = Digest::of(&[b"no such receipt"]);
    let e = c.append_outcome(&w, &unknown).await.unwrap_err();
    assert!(matches!(e, ClientError::NotFound(_)), "{name}: {e:?}");
    let foreign = c
        .append_commitment(&other, &commitment(9, "x", true))
        .await
        .unwrap();
    let e = c
        .append_outcome(&w, &succeeded(&foreign, vec![]))
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::NotFound(_)), "{name}: {e:?}");
    assert_eq!(
        c.worldline_head(&w).await.unwrap().unwrap().seq,
        2,
        "{name}"
    );

    // One outcome per commitment: the retry is the same receipt, another
    // outcome is refused naming the first (the reference accepted it).
    let first = c
        .append_outcome(&w, &succeeded(&accepted, vec![put("svc/api/version", "2")]))
        .await
        .unwrap();
    assert_eq!(first.seq, 3);
    let retry = c
        .append_outcome(&w, &succeeded(&accepted, vec![put("svc/api/version", "2")]))
        .await
        .unwrap();
    assert_eq!(retry, first, "{name}");
    let e = c
        .append_outcome(&w, &succeeded(&accepted, vec![put("svc/api/version", "3")]))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::AlreadyExists(m) if m.contains("receipt 3")),
        "{name}: {e:?}"
    );
    let closed = c
        .append_rejection_outcome(&w, &rejected.receipt_hash, "kernel")
        .await
        .unwrap();
    assert_eq!(closed.seq, 4);

    // The generic API cannot write a worldline's context.
    let e = c
        .append(
            &w.context_id(),
            "wll.outcome",
            b"forged".to_vec(),
            AppendOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::InvalidArgument(m) if m.contains("reserved")),
        "{name}: {e:?}"
    );
    let e = c
        .append_batch(
            &w.snapshots_context_id(),
            vec![converge_ledger_client::BatchEntry {
                key: "wll.snapshot".into(),
                payload: b"x".to_vec(),
                metadata: Default::default(),
            }],
            converge_ledger_client::BatchOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, ClientError::InvalidArgument(_)),
        "{name}: {e:?}"
    );
    c.append("plain", "k", b"v".to_vec(), AppendOptions::default())
        .await
        .unwrap();
    let blob = c.snapshot("plain").await.unwrap();
    let e = c
        .load(&w.context_id(), blob.bytes, false, false)
        .await
        .unwrap_err();
    assert!(
        matches!(e, ClientError::InvalidArgument(_)),
        "{name}: {e:?}"
    );
    assert_eq!(
        c.worldline_head(&w).await.unwrap().unwrap().seq,
        4,
        "{name}"
    );

    // Reads: every receipt checked by the SDK, linked, with the bodies.
    let receipts = c.read_receipts(&w, 1, 100).await.unwrap();
    assert_eq!(receipts.len(), 4, "{name}");
    assert_eq!(receipts[2], first);
    assert_eq!(
        c.get_receipt(&first.receipt_hash).await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(c.get_receipt(&Digest::of(&[b"none"])).await.unwrap(), None);
    let listed = c.worldlines(None, 100).await.unwrap();
    assert!(
        listed.iter().any(|h| h.worldline == w && h.seq == 4),
        "{name}"
    );
    assert!(listed.iter().any(|h| h.worldline == other), "{name}");

    // State by replay, and a snapshot whose state the ledger computed.
    let state = c.worldline_state(&w, 0).await.unwrap();
    assert_eq!(
        state.pairs,
        vec![("svc/api/version".to_owned(), b"2".to_vec())]
    );
    let anchor = first.reference();
    let wrong = Digest::of(&[b"made up state"]);
    let e = c
        .append_worldline_snapshot(&anchor, Some(&wrong))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ClientError::FailedPrecondition(_)),
        "{name}: {e:?}"
    );
    let snap = c
        .append_worldline_snapshot(&anchor, Some(&state.state_hash))
        .await
        .unwrap();
    assert_eq!(snap.state_hash, state.state_hash);
    let beyond = ReceiptRef { seq: 99, ..anchor };
    let e = c
        .append_worldline_snapshot(&beyond, None)
        .await
        .unwrap_err();
    assert!(
        matches!(e, ClientError::FailedPrecondition(_)),
        "{name}: {e:?}"
    );
    let forged_anchor = ReceiptRef {
        receipt_hash: Digest::of(&[b"not receipt 3"]),
        ..anchor
    };
    let e = c
        .append_worldline_snapshot(&forged_anchor, None)
        .await
        .unwrap_err();
    assert!(
        matches!(e, ClientError::FailedPrecondition(_)),
        "{name}: {e:?}"
    );

    // A snapshot anchored before a later outcome does not roll state back
    // (the reference's replay did).
    let third = c
        .append_commitment(&w, &commitment(3, "agent-7", true))
        .await
        .unwrap();
    c.append_outcome(&w, &succeeded(&third, vec![put("svc/api/version", "3")]))
        .await
        .unwrap();
    let early = c
        .append_worldline_snapshot(&receipts[0].reference(), None)
        .await
        .unwrap();
    assert_ne!(early.state_hash, snap.state_hash);
    let now = c.worldline_state(&w, 0).await.unwrap();
    assert_eq!(
        now.pairs,
        vec![("svc/api/version".to_owned(), b"3".to_vec())]
    );
    assert_eq!(now.at.unwrap().seq, 6);
    let at3 = c.worldline_state(&w, 3).await.unwrap();
    assert_eq!(at3.state_hash, state.state_hash, "{name}");

    let verdict = c.verify_worldline(&w).await.unwrap();
    assert!(verdict.ok, "{name}: {verdict:?}");
    assert_eq!((verdict.receipts, verdict.snapshots), (6, 2), "{name}");
    assert_eq!(verdict.state_hash, now.state_hash);
    server.stop().await;
}

/// ServerInfo says how the WorldLine profile is served: the limits receipts
/// are validated under (a client can adopt them) and whether projections
/// are kept.
#[tokio::test]
async fn server_info_announces_the_worldline_limits_and_whether_projections_are_kept() {
    let limits = WorldlineLimits {
        state_value_bytes_max: 4096,
        state_bytes_max: 1 << 20,
        list_items_max: 17,
        ..WorldlineLimits::default()
    };
    for projections in [true, false] {
        let server = TestServer::start_full(
            Arc::new(MemoryStore::new()),
            LedgerConfig::default(),
            ServerConfig {
                worldline_limits: limits.clone(),
                worldline_projections: projections,
                ..ServerConfig::default()
            },
            "127.0.0.1:0",
        )
        .await;
        let client = Client::connect(&server.url()).await.unwrap();
        let info = client.server_info().await.unwrap().worldline.unwrap();
        assert_eq!(info.projections, projections);
        assert_eq!(info.limits, limits);
        server.stop().await;
    }
}

/// Verification and replay of a worldline longer than one read step (1024
/// receipts), where the store is read ahead on a second thread: the verdict
/// and the states equal those of receipt-by-receipt reading, and a receipt
/// altered deep inside is named, with every receipt before it counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_worldline_verifies_and_replays_across_read_steps_and_names_an_altered_receipt() {
    use converge_ledger_server::{Ledger, Worldlines};
    use converge_ledger_store::FsyncPolicy;
    let dir = tempfile::tempdir().unwrap();
    let mut options = EmbeddedOptions::new(dir.path());
    options.fsync = FsyncPolicy::Never;
    let store = Arc::new(EmbeddedStore::open(options).unwrap());
    let ledger = Ledger::new(store.clone(), LedgerConfig::default());
    let worldlines = Worldlines::new(ledger.clone(), WorldlineLimits::default()).unwrap();
    let w = WorldlineId::derive(b"long");
    let mut states = Vec::new();
    for n in 0..1500u64 {
        let c = worldlines
            .append_commitment(&w, &commitment(n, "agent", true))
            .await
            .unwrap();
        let o = worldlines
            .append_outcome(
                &w,
                &succeeded(
                    &c.receipt,
                    vec![put(&format!("k{}", n % 97), &n.to_string())],
                ),
            )
            .await
            .unwrap();
        if o.receipt.seq == 2000 {
            worldlines
                .append_snapshot(&o.receipt.reference(), None)
                .await
                .unwrap();
        }
        // The state after each pair, computed by this test.
        states.push((o.receipt.seq, n));
    }
    let verdict = worldlines.verify(&w).await.unwrap();
    assert!(verdict.failure.is_none(), "{:?}", verdict.failure);
    assert_eq!((verdict.receipts, verdict.snapshots), (3000, 1));
    let (at_head, head) = worldlines.state_at(&w, 3000).await.unwrap();
    assert_eq!(head.unwrap().seq, 3000);
    assert_eq!(verdict.state_hash, at_head.hash());
    // At 1800 (a replay from genesis over two read steps): key k{n % 97}
    // holds the last n written to it by then.
    let (at_1800, _) = worldlines.state_at(&w, 1800).await.unwrap();
    let mut expected = std::collections::BTreeMap::new();
    for (seq, n) in &states {
        if *seq <= 1800 {
            expected.insert(format!("k{}", n % 97), n.to_string().into_bytes());
        }
    }
    let got: std::collections::BTreeMap<String, Vec<u8>> = at_1800
        .iter()
        .map(|(k, v)| (k.to_owned(), v.to_vec()))
        .collect();
    assert_eq!(got, expected);

    // One byte of receipt 2500's stored record changed.
    let context = w.context_id();
    let mut raw = store.raw_entry(&context, 2500).unwrap();
    let last = raw.len() - 1;
    raw[last] ^= 0x01;
    store.raw_put_entry(&context, 2500, &raw);
    let verdict = worldlines.verify(&w).await.unwrap();
    let (seq, e) = verdict.failure.expect("the altered receipt is found");
    assert_eq!(seq, 2500, "{e}");
    assert_eq!(verdict.receipts, 2499);
    assert_eq!(
        e.code(),
        converge_ledger_client::worldline::ErrorCode::DataLoss
    );
    // Replays through it refuse; before it they still answer.
    assert!(worldlines.state_at(&w, 2600).await.is_err());
    worldlines.state_at(&w, 2400).await.unwrap();
    ledger.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worldline_rules_hold_and_refusals_change_nothing_on_every_backend() {
    for (name, backend) in backends("wll_rules") {
        rules_hold_and_refusals_change_nothing(name, &*backend).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_racing_outcomes_of_one_commitment_append_exactly_one_on_every_backend() {
    for (name, backend) in backends("wll_race") {
        let (a, ca) = serve(backend.store(), WorldlineLimits::default()).await;
        // Through a second node where the backend has them.
        let second = match backend.second_node() {
            Some(store) => Some(serve(store, WorldlineLimits::default()).await),
            None => None,
        };
        let w = WorldlineId::derive(format!("race-{name}").as_bytes());
        let target = ca
            .append_commitment(&w, &commitment(1, "a", true))
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for i in 0..32u32 {
            let client = match (&second, i % 2) {
                (Some((_, cb)), 1) => cb.clone(),
                _ => ca.clone(),
            };
            let o = succeeded(&target, vec![put("winner", &i.to_string())]);
            tasks.push(tokio::spawn(
                async move { client.append_outcome(&w, &o).await },
            ));
        }
        let mut won = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok(r) => won.push(r),
                Err(ClientError::AlreadyExists(_)) => {}
                Err(e) => panic!("{name}: {e:?}"),
            }
        }
        assert_eq!(
            won.len(),
            1,
            "{name}: exactly one outcome appended: {won:?}"
        );
        assert_eq!(
            ca.worldline_head(&w).await.unwrap().unwrap().seq,
            2,
            "{name}"
        );
        let verdict = ca.verify_worldline(&w).await.unwrap();
        assert!(verdict.ok, "{name}: {verdict:?}");
        if let Some((b, _)) = second {
            b.stop().await;
        }
        a.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_past_the_state_limit_are_refused_and_deleting_first_makes_room() {
    let limits = WorldlineLimits {
        state_bytes_max: 64 * 1024,
        ..WorldlineLimits::default()
    };
    let (s, c) = serve(Arc::new(MemoryStore::new()), limits).await;
    let w = WorldlineId::derive(b"quota");
    let big = "x".repeat(40 * 1024);
    let c1 = c
        .append_commitment(&w, &commitment(1, "a", true))
        .await
        .unwrap();
    c.append_outcome(&w, &succeeded(&c1, vec![put("big", &big)]))
        .await
        .unwrap();
    let c2 = c
        .append_commitment(&w, &commitment(2, "a", true))
        .await
        .unwrap();
    let too_much = succeeded(&c2, vec![put("more", &big)]);
    let e = c.append_outcome(&w, &too_much).await.unwrap_err();
    assert!(matches!(e, ClientError::ResourceExhausted(_)), "{e:?}");
    assert_eq!(c.worldline_head(&w).await.unwrap().unwrap().seq, 3);
    let fits = succeeded(
        &c2,
        vec![StateUpdate::Delete { key: "big".into() }, put("more", &big)],
    );
    let r = c.append_outcome(&w, &fits).await.unwrap();
    assert_eq!(r.seq, 4);
    // A retry of an outcome appended earlier is its receipt, even when the
    // state it would now reach is past the limit.
    let c3 = c
        .append_commitment(&w, &commitment(3, "a", true))
        .await
        .unwrap();
    let o3 = succeeded(&c3, vec![put("third", &"y".repeat(20 * 1024))]);
    let r3 = c.append_outcome(&w, &o3).await.unwrap();
    assert_eq!(c.append_outcome(&w, &o3).await.unwrap(), r3);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commitment_retried_after_a_restart_is_the_first_receipt() {
    let dir = tempfile::tempdir().unwrap();
    let w = WorldlineId::derive(b"restart");
    let first = {
        let store = Arc::new(EmbeddedStore::open(EmbeddedOptions::new(dir.path())).unwrap());
        let (s, c) = serve(store, WorldlineLimits::default()).await;
        let r = c
            .append_commitment(&w, &commitment(1, "a", true))
            .await
            .unwrap();
        s.stop().await;
        r
    };
    let store = Arc::new(EmbeddedStore::open(EmbeddedOptions::new(dir.path())).unwrap());
    let (s, c) = serve(store, WorldlineLimits::default()).await;
    assert_eq!(
        c.append_commitment(&w, &commitment(1, "a", true))
            .await
            .unwrap(),
        first
    );
    let o = c
        .append_outcome(&w, &succeeded(&first, vec![put("k", "v")]))
        .await
        .unwrap();
    assert_eq!(o.seq, 2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_receipts_and_ids_are_invalid_arguments() {
    use converge_ledger_proto::ledger::v1 as pb;
    use converge_ledger_proto::ledger::v1::worldline_service_client::WorldlineServiceClient;
    let s = TestServer::memory().await;
    let mut raw = WorldlineServiceClient::connect(s.url()).await.unwrap();
    let w = WorldlineId::derive(b"garbage");
    let cases: Vec<(&str, tonic::Status)> = vec![
        (
            "short id",
            raw.append_commitment(pb::AppendCommitmentRequest {
                worldline_id: vec![1; 7],
                commitment: vec![],
            })
            .await
            .unwrap_err(),
        ),
        (
            "garbage commitment",
            raw.append_commitment(pb::AppendCommitmentRequest {
                worldline_id: w.0.to_vec(),
                commitment: b"WLLC\x01garbage".to_vec(),
            })
            .await
            .unwrap_err(),
        ),
        (
            "garbage outcome",
            raw.append_outcome(pb::AppendOutcomeRequest {
                worldline_id: w.0.to_vec(),
                outcome: vec![0xff; 40],
            })
            .await
            .unwrap_err(),
        ),
        (
            "short anchor hash",
            raw.append_snapshot(pb::AppendSnapshotRequest {
                worldline_id: w.0.to_vec(),
                anchor_seq: 1,
                anchor_hash: vec![1, 2],
                expected_state_hash: vec![],
            })
            .await
            .unwrap_err(),
        ),
    ];
    for (what, status) in cases {
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{what}: {status:?}"
        );
        assert!(!status.message().is_empty(), "{what}");
    }
    // Nothing was written anywhere.
    let c = Client::connect(&s.url()).await.unwrap();
    assert!(c.worldlines(None, 10).await.unwrap().is_empty());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_shows_the_seed_tables_as_views_over_the_ledger() {
    let Some(schema) = TestSchema::create("wll_views") else {
        return;
    };
    let backend = Postgres(schema);
    let (s, c) = serve(backend.store(), WorldlineLimits::default()).await;
    let w = WorldlineId::derive(b"views");
    let first = c
        .append_commitment(&w, &commitment(1, "a", true))
        .await
        .unwrap();
    let second = c
        .append_outcome(&w, &succeeded(&first, vec![put("k", "v")]))
        .await
        .unwrap();
    let snap = c
        .append_worldline_snapshot(&second.reference(), None)
        .await
        .unwrap();
    let schema = &backend.0.schema;
    let query = |sql: String| {
        converge_ledger_postgres::testkit::admin_query(&backend.0.url(), &sql).unwrap()
    };
    let rows = query(format!(
        r#"SELECT encode(worldline_id, 'hex'), seq, kind, encode(receipt_hash, 'hex'),
                  prev_hash IS NULL, encode(prev_hash, 'hex')
             FROM "{schema}".wll_receipts ORDER BY seq"#
    ));
    let hex = |d: &Digest| Some(d.to_hex());
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0][0], Some(w.to_hex()));
    assert_eq!(
        rows[0][1..5].to_vec(),
        vec![
            Some("1".into()),
            Some("commitment".into()),
            hex(&first.receipt_hash),
            Some("t".into())
        ]
    );
    assert_eq!(
        rows[1][1..].to_vec(),
        vec![
            Some("2".into()),
            Some("outcome".into()),
            hex(&second.receipt_hash),
            Some("f".into()),
            hex(&first.receipt_hash)
        ]
    );
    let rows = query(format!(
        r#"SELECT encode(worldline_id, 'hex'), snapshot_seq, encode(anchored_receipt, 'hex'),
                  encode(state_hash, 'hex'), length(state_blob) > 0
             FROM "{schema}".wll_snapshots"#
    ));
    assert_eq!(
        rows,
        vec![vec![
            Some(w.to_hex()),
            Some(snap.header_seq.to_string()),
            hex(&second.receipt_hash),
            hex(&snap.state_hash),
            Some("t".into())
        ]]
    );
    // Views over append-only history: writing them is refused.
    let refused = converge_ledger_postgres::testkit::admin_query(
        &backend.0.url(),
        &format!(r#"DELETE FROM "{schema}".wll_receipts"#),
    );
    assert!(refused.is_err(), "{refused:?}");
    s.stop().await;
}

/// What a contract call came to, comparable across implementations whose
/// clocks (so hashes) differ: the receipt's seq and body, with the
/// commitment an outcome answers named by its place in `commitments`; or
/// the error's class.
fn outcome_of(
    r: Result<Receipt, converge_ledger_client::worldline::ErrorCode>,
    commitments: &[Digest],
) -> String {
    use converge_ledger_client::worldline::ReceiptBody;
    match r {
        Ok(r) => match &r.body {
            ReceiptBody::Outcome(o) => {
                let of = commitments.iter().position(|h| *h == o.commitment);
                let mut o = o.clone();
                o.commitment = Digest::of(&[b"normalized"]);
                format!("ok {} outcome of commitment #{of:?}: {o:?}", r.seq)
            }
            body => format!("ok {} {body:?}", r.seq),
        },
        Err(code) => format!("err {code:?}"),
    }
}

fn client_code(e: &ClientError) -> converge_ledger_client::worldline::ErrorCode {
    use converge_ledger_client::worldline::ErrorCode;
    match e {
        ClientError::InvalidArgument(_) => ErrorCode::InvalidArgument,
        ClientError::FailedPrecondition(_) => ErrorCode::FailedPrecondition,
        ClientError::NotFound(_) => ErrorCode::NotFound,
        ClientError::AlreadyExists(_) => ErrorCode::AlreadyExists,
        ClientError::ResourceExhausted(_) => ErrorCode::ResourceExhausted,
        ClientError::DataLoss(_) | ClientError::Verification(_) => ErrorCode::DataLoss,
        _ => ErrorCode::Unavailable,
    }
}

#[test]
fn the_sdk_contracts_answer_random_operations_exactly_as_the_model_does() {
    use converge_ledger_client::BlockingWorldlines;
    use converge_ledger_client::worldline::{LedgerReader, LedgerWriter, MemoryLedger};
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(TestServer::memory());
    let sdk = BlockingWorldlines::connect(server.url(), Default::default()).unwrap();
    let model = MemoryLedger::new(WorldlineLimits::default()).unwrap();
    let seed: u64 = std::env::var("CONVERGE_LEDGER_WORLDLINE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0004);
    let steps: usize = std::env::var("CONVERGE_LEDGER_WORLDLINE_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    eprintln!("seed {seed}, {steps} steps (CONVERGE_LEDGER_WORLDLINE_SEED / _STEPS)");
    let mut x = seed.max(1);
    let mut rnd = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let worldlines = [WorldlineId::derive(b"m-1"), WorldlineId::derive(b"m-2")];
    // Commitments written so far: (worldline, model receipt, sdk receipt).
    let mut written: Vec<(usize, Receipt, Receipt)> = Vec::new();
    for step in 0..steps {
        let wi = rnd(2) as usize;
        let w = &worldlines[wi];
        let (m, s) = match rnd(10) {
            0..=3 => {
                // A new commitment, or a retry / a reuse of an id.
                let n = rnd(40);
                let mut c = commitment(n, "agent", rnd(3) != 0);
                if rnd(5) == 0 {
                    c.intent = format!("other intent {step}");
                }
                let m = model.append_commitment(w, &c);
                let s = sdk.append_commitment(w, &c);
                if let (Ok(mr), Ok(sr)) = (&m, &s)
                    && !written
                        .iter()
                        .any(|(_, r, _)| r.receipt_hash == mr.receipt_hash)
                {
                    written.push((wi, mr.clone(), sr.clone()));
                }
                (m.map_err(|e| e.code()), s.map_err(|e| client_code(&e)))
            }
            4..=8 if !written.is_empty() => {
                // An outcome of some commitment, maybe of the other
                // worldline, maybe of the wrong kind, maybe a second one.
                let (cw, mr, sr) = written[rnd(written.len() as u64) as usize].clone();
                let status = match rnd(4) {
                    0 => OutcomeStatus::Failed {
                        reason: "broke".into(),
                    },
                    1 => OutcomeStatus::Rejection,
                    _ => OutcomeStatus::Succeeded,
                };
                let updates = if status == OutcomeStatus::Succeeded {
                    match rnd(3) {
                        0 => vec![StateUpdate::Delete {
                            key: format!("k{}", rnd(5)),
                        }],
                        _ => vec![put(&format!("k{}", rnd(5)), &format!("v{}", rnd(3)))],
                    }
                } else {
                    vec![]
                };
                let make = |of: &Receipt| Outcome {
                    commitment: of.receipt_hash,
                    status: status.clone(),
                    effects: vec![],
                    proofs: vec![],
                    state_updates: updates.clone(),
                    reporter: "driver".into(),
                };
                let target = if rnd(6) == 0 {
                    &worldlines[1 - cw]
                } else {
                    &worldlines[cw]
                };
                let m = model.append_outcome(target, &make(&mr));
                let s = sdk.append_outcome(target, &make(&sr));
                (m.map_err(|e| e.code()), s.map_err(|e| client_code(&e)))
            }
            _ => {
                // A snapshot at a random receipt: compare the computed
                // state hashes.
                let head = model.head(w).unwrap().map_or(0, |h| h.seq);
                if head == 0 {
                    continue;
                }
                let seq = 1 + rnd(head);
                let m_at = model.read_range(w, seq, seq).unwrap().remove(0);
                let s_at = sdk.read_range(w, seq, seq).unwrap().remove(0);
                let ms = model.append_snapshot(&m_at.reference(), None).unwrap();
                let ss = sdk.append_snapshot(&s_at.reference(), None).unwrap();
                assert_eq!(
                    ms.state_hash, ss.state_hash,
                    "seed {seed} step {step}: snapshot at {seq}"
                );
                continue;
            }
        };
        let model_hashes: Vec<Digest> = written.iter().map(|(_, m, _)| m.receipt_hash).collect();
        let sdk_hashes: Vec<Digest> = written.iter().map(|(_, _, s)| s.receipt_hash).collect();
        assert_eq!(
            outcome_of(m, &model_hashes),
            outcome_of(s, &sdk_hashes),
            "seed {seed} step {step}: the model and the server disagree"
        );
    }
    for w in &worldlines {
        let m = model.state(w).unwrap();
        let s = runtime
            .block_on(async {
                Client::connect(&server.url())
                    .await
                    .unwrap()
                    .worldline_state(w, 0)
                    .await
            })
            .unwrap();
        assert_eq!(m.hash(), s.state_hash, "seed {seed}: final state of {w}");
        assert_eq!(
            sdk.head(w).unwrap().map(|h| h.seq),
            model.head(w).unwrap().map(|h| h.seq)
        );
    }
    drop(sdk);
    runtime.block_on(server.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_of_several_megabytes_streams_in_pieces_and_hashes_as_replayed() {
    let (s, c) = serve(Arc::new(MemoryStore::new()), WorldlineLimits::default()).await;
    let w = WorldlineId::derive(b"big state");
    let value = "v".repeat(512 * 1024);
    for n in 0..6u64 {
        let r = c
            .append_commitment(&w, &commitment(n, "a", true))
            .await
            .unwrap();
        c.append_outcome(&w, &succeeded(&r, vec![put(&format!("key-{n}"), &value)]))
            .await
            .unwrap();
    }
    let state = c.worldline_state(&w, 0).await.unwrap();
    assert_eq!(state.pairs.len(), 6);
    assert!(state.pairs.iter().all(|(_, v)| v.len() == value.len()));
    // Six 512 KiB pairs cannot fit one 1 MiB message: it came in pieces.
    use converge_ledger_proto::ledger::v1 as pb;
    let mut raw =
        converge_ledger_proto::ledger::v1::worldline_service_client::WorldlineServiceClient::connect(
            s.url(),
        )
        .await
        .unwrap();
    let mut stream = raw
        .replay_state(pb::ReplayStateRequest {
            worldline_id: w.0.to_vec(),
            seq: 0,
            key_prefix: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut messages = 0;
    while let Some(m) = stream.message().await.unwrap() {
        messages += 1;
        if m.last {
            assert_eq!(m.state_hash, state.state_hash.0.to_vec());
        }
    }
    assert!(messages >= 3, "{messages} messages");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_checks_receipts_under_the_limits_it_is_given() {
    let raised = WorldlineLimits {
        identifier_bytes_max: 512,
        ..WorldlineLimits::default()
    };
    let (s, default_client) = serve(Arc::new(MemoryStore::new()), raised.clone()).await;
    let w = WorldlineId::derive(b"raised");
    let mut c = commitment(1, "a", true);
    c.class = "c".repeat(300);
    // Past the default limits: refused here, before anything is sent.
    let e = default_client.append_commitment(&w, &c).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::InvalidArgument(m) if m.contains("nothing was sent")),
        "{e:?}"
    );
    assert_eq!(default_client.worldline_head(&w).await.unwrap(), None);
    let raised_client = Client::connect_with(
        &s.url(),
        converge_ledger_client::ClientOptions {
            worldline_limits: raised,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let r = raised_client.append_commitment(&w, &c).await.unwrap();
    assert_eq!(
        raised_client.read_receipts(&w, 1, 1).await.unwrap(),
        vec![r]
    );
    // A client under the defaults cannot vouch for that receipt.
    let e = default_client.read_receipts(&w, 1, 1).await.unwrap_err();
    assert!(matches!(e, ClientError::Verification(_)), "{e:?}");
    s.stop().await;
}

/// An outcome's check finds the node's cached replay already past the
/// commitment this node just appended (nothing read back from storage),
/// and still catches up from storage, and checks, when another node (here
/// a second `Worldlines` over the same ledger, or a second PostgreSQL
/// node) appended in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_check_against_the_replay_their_commitment_moved_and_catch_up_after_another_node()
{
    use converge_ledger_server::{Ledger, Worldlines};
    let node = |store: Arc<dyn Store>| {
        Worldlines::new(
            Ledger::new(store, LedgerConfig::default()),
            WorldlineLimits::default(),
        )
        .unwrap()
    };
    for (name, backend) in backends("worldline_cached_replay") {
        let store = backend.store();
        let here = node(store.clone());
        let other = node(backend.second_node().unwrap_or(store));
        let w = WorldlineId::derive(name.as_bytes());
        for n in 0..20u64 {
            let c = here
                .append_commitment(&w, &commitment(n, "agent", true))
                .await
                .unwrap();
            here.append_outcome(&w, &succeeded(&c.receipt, vec![put("k", &n.to_string())]))
                .await
                .unwrap();
        }
        // The first outcome replayed from genesis; every later one found
        // its commitment already applied.
        assert_eq!(here.caught_up_receipts(), 0, "{name}");
        // Another node's commitment: this node reads it back, once.
        let c = other
            .append_commitment(&w, &commitment(100, "agent", true))
            .await
            .unwrap();
        here.append_outcome(&w, &succeeded(&c.receipt, vec![put("k", "100")]))
            .await
            .unwrap();
        assert_eq!(here.caught_up_receipts(), 1, "{name}");
        // A rejected commitment appended here moves the replay too, and its
        // wrong outcome is still refused by the check.
        let r = here
            .append_commitment(&w, &commitment(101, "agent", false))
            .await
            .unwrap();
        let e = here
            .append_outcome(&w, &succeeded(&r.receipt, vec![]))
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                converge_ledger_server::LedgerError::FailedPrecondition(_)
            ),
            "{name}: {e:?}"
        );
        assert_eq!(here.caught_up_receipts(), 1, "{name}");
        let verdict = here.verify(&w).await.unwrap();
        assert!(verdict.failure.is_none(), "{name}: {:?}", verdict.failure);
        assert_eq!(verdict.receipts, 43, "{name}");
        let (state, _) = here.state_at(&w, 43).await.unwrap();
        assert_eq!(state.get("k"), Some(&b"100"[..]), "{name}");
    }
}
