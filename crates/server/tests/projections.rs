//! The WorldLine projections served (seed 4.6) on memory, embedded and
//! PostgreSQL storage, and through two PostgreSQL nodes: kept up to date as
//! receipts arrive, answering state, audit, grant and provenance queries at
//! a position they name, resuming from their durable checkpoint after a
//! restart, and refusing bad queries with a clear status.

mod common;

use std::sync::Arc;

use common::TestServer;
use converge_ledger_client::proto::ledger::v1 as pb;
use converge_ledger_client::worldline::{
    CapabilitySet, Commitment, CommitmentId, Decision, EvidenceRef, Outcome, OutcomeStatus,
    PolicyRef, ProofRef, Receipt, StateUpdate, WorldlineId,
};
use converge_ledger_client::{Client, ClientError, Digest, projection_query};
use converge_ledger_postgres::PostgresStore;
use converge_ledger_postgres::testkit::TestSchema;
use converge_ledger_server::{Ledger, LedgerConfig, ServerConfig, Worldlines};
use converge_ledger_store::{EmbeddedOptions, EmbeddedStore, MemoryStore, Store};

fn caps(names: &[&str]) -> CapabilitySet {
    names.iter().map(|s| s.to_string()).collect()
}

/// A decided commitment: `n` makes the id, the intent and the evidence.
fn commitment(
    n: u64,
    proposer: &str,
    decision: Decision,
    grant: &[&str],
    revoke: &[&str],
) -> Commitment {
    let mut id = [0u8; 16];
    id[8..].copy_from_slice(&n.to_be_bytes());
    id[0] = 0x51;
    Commitment {
        commitment_id: CommitmentId(id),
        class: if n.is_multiple_of(2) {
            "deploy".into()
        } else {
            "config".into()
        },
        intent: format!("change {n}"),
        requested_capabilities: caps(grant),
        targets: vec![format!("svc/{n}")],
        evidence: vec![EvidenceRef {
            uri: format!("cas://evidence/{n}"),
            digest: evidence_digest(n),
        }],
        proposer: proposer.into(),
        decision,
        policy: PolicyRef {
            hash: Digest::of(&[b"policy"]),
            version: "v7".into(),
        },
        granted_capabilities: caps(grant),
        revoked_capabilities: caps(revoke),
        decider: "kernel".into(),
    }
}

fn evidence_digest(n: u64) -> Digest {
    Digest::of(&[b"evidence", &n.to_be_bytes()])
}

fn outcome(of: &Receipt, status: OutcomeStatus, updates: Vec<StateUpdate>) -> Outcome {
    Outcome {
        commitment: of.receipt_hash,
        proofs: match status {
            OutcomeStatus::Succeeded => vec![ProofRef {
                uri: format!("cas://proof/{}", of.seq),
                digest: Digest::of(&[b"proof", &of.seq.to_be_bytes()]),
            }],
            _ => vec![],
        },
        status,
        effects: vec![],
        state_updates: updates,
        reporter: "driver".into(),
    }
}

fn put(key: &str, value: &str) -> StateUpdate {
    StateUpdate::Put {
        key: key.into(),
        value: value.as_bytes().to_vec(),
    }
}

fn rejected() -> Decision {
    Decision::Rejected {
        reason: "policy says no".into(),
    }
}

/// What the scenario wrote, for the assertions.
struct Written {
    c1: Receipt,
    o1: Receipt,
    c2: Receipt,
    c3: Receipt,
    o4: Receipt,
    head: u64,
}

/// c1 (alice, granted repo.write) → succeeded: a=1, b=2; c2 (bob) rejected →
/// rejection; c3 (alice, revokes repo.write) → failed; c4 (bob, granted
/// net.egress) → succeeded: deletes b, a=3.
async fn scenario(client: &Client, w: &WorldlineId) -> Written {
    let c1 = client
        .append_commitment(
            w,
            &commitment(1, "alice", Decision::Accepted, &["repo.write"], &[]),
        )
        .await
        .unwrap();
    let o1 = client
        .append_outcome(
            w,
            &outcome(
                &c1,
                OutcomeStatus::Succeeded,
                vec![put("a", "1"), put("b", "2")],
            ),
        )
        .await
        .unwrap();
    let c2 = client
        .append_commitment(w, &commitment(2, "bob", rejected(), &[], &[]))
        .await
        .unwrap();
    client
        .append_rejection_outcome(w, &c2.receipt_hash, "driver")
        .await
        .unwrap();
    let c3 = client
        .append_commitment(
            w,
            &commitment(3, "alice", Decision::Accepted, &[], &["repo.write"]),
        )
        .await
        .unwrap();
    client
        .append_outcome(
            w,
            &outcome(
                &c3,
                OutcomeStatus::Failed {
                    reason: "timed out".into(),
                },
                vec![],
            ),
        )
        .await
        .unwrap();
    let c4 = client
        .append_commitment(
            w,
            &commitment(4, "bob", Decision::Accepted, &["net.egress"], &[]),
        )
        .await
        .unwrap();
    let o4 = client
        .append_outcome(
            w,
            &outcome(
                &c4,
                OutcomeStatus::Succeeded,
                vec![StateUpdate::Delete { key: "b".into() }, put("a", "3")],
            ),
        )
        .await
        .unwrap();
    let head = o4.seq;
    Written {
        c1,
        o1,
        c2,
        c3,
        o4,
        head,
    }
}

fn query(w: &WorldlineId, min_seq: u64) -> Option<pb::ProjectionQuery> {
    Some(projection_query(w, min_seq))
}

fn position(p: &Option<pb::ProjectionPosition>) -> &pb::ProjectionPosition {
    p.as_ref().expect("every answer names its position")
}

/// Every projection answers what the scenario implies, at the head.
async fn check_answers(client: &Client, w: &WorldlineId, s: &Written) {
    // latest_state: the pairs, and a hash equal to the replay's.
    let state = client
        .projected_state(pb::ProjectedStateRequest {
            query: query(w, s.head),
            select: None,
            with_state_hash: true,
        })
        .await
        .unwrap();
    let p = position(&state.position);
    assert_eq!((p.through_seq, p.head_seq, p.behind), (s.head, s.head, 0));
    assert_eq!(p.through_hash, s.o4.receipt_hash.0.to_vec());
    assert_eq!(p.projection, "latest_state");
    let pairs: Vec<(String, Vec<u8>)> = state
        .pairs
        .iter()
        .map(|p| (p.key.clone(), p.value.clone()))
        .collect();
    assert_eq!(pairs, vec![("a".to_owned(), b"3".to_vec())]);
    assert_eq!((state.pair_count, state.state_bytes), (1, 2));
    let replayed = client.worldline_state(w, 0).await.unwrap();
    assert_eq!(
        state.state_hash,
        replayed.state_hash.0.to_vec(),
        "projection and replay agree"
    );
    let (value, _) = client.projected_value(w, "b", s.head).await.unwrap();
    assert_eq!(value, None, "b was deleted by c4's outcome");

    // audit_index: by proposer, by decision, latest first, with outcomes.
    let by_alice = client
        .query_audit(pb::QueryAuditRequest {
            query: query(w, s.head),
            filter: Some(pb::query_audit_request::Filter::Proposer("alice".into())),
            ..Default::default()
        })
        .await
        .unwrap();
    let seqs: Vec<u64> = by_alice
        .records
        .iter()
        .map(|r| r.receipt.as_ref().unwrap().seq)
        .collect();
    assert_eq!(seqs, vec![s.c1.seq, s.c3.seq]);
    let first = &by_alice.records[0];
    assert!(first.accepted);
    assert_eq!(first.policy.as_ref().unwrap().version, "v7");
    let o = first.outcome.as_ref().expect("c1's outcome was folded");
    assert_eq!(o.status, pb::OutcomeKind::Succeeded as i32);
    assert_eq!(o.receipt.as_ref().unwrap().seq, s.o1.seq);
    let failed = by_alice.records[1].outcome.as_ref().unwrap();
    assert_eq!(
        (failed.status, failed.reason.as_str()),
        (pb::OutcomeKind::Failed as i32, "timed out")
    );
    let refused = client
        .query_audit(pb::QueryAuditRequest {
            query: query(w, s.head),
            filter: Some(pb::query_audit_request::Filter::Decision(
                pb::DecisionFilter::Rejected as i32,
            )),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(refused.records.len(), 1);
    assert_eq!(refused.records[0].rejection_reason, "policy says no");
    assert_eq!(refused.records[0].receipt.as_ref().unwrap().seq, s.c2.seq);
    let latest = client
        .query_audit(pb::QueryAuditRequest {
            query: query(w, s.head),
            latest_first: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(latest.records.len(), 4);
    assert_eq!(latest.records[0].proposer, "bob");
    assert_eq!(
        latest.records[0].commitment_id,
        commitment(4, "bob", Decision::Accepted, &[], &[])
            .commitment_id
            .to_string()
    );

    // Paging: two pages of two, then nothing more.
    let mut q = projection_query(w, s.head);
    q.limit = 2;
    let page1 = client
        .query_audit(pb::QueryAuditRequest {
            query: Some(q.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page1.records.len(), 2);
    assert!(!page1.next_cursor.is_empty());
    q.cursor = page1.next_cursor;
    let page2 = client
        .query_audit(pb::QueryAuditRequest {
            query: Some(q),
            ..Default::default()
        })
        .await
        .unwrap();
    let seqs: Vec<u64> = page2
        .records
        .iter()
        .map(|r| r.receipt.as_ref().unwrap().seq)
        .collect();
    assert_eq!(seqs.len(), 2);
    assert!(seqs[0] > page1.records[1].receipt.as_ref().unwrap().seq);

    // capability_grants: in force after c1, revoked by c3, history.
    let after_c1 = client
        .query_grants(pb::QueryGrantsRequest {
            query: query(w, s.head),
            at: Some(pb::query_grants_request::At::AtSeq(s.c1.seq)),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(after_c1.grants.len(), 1);
    let g = &after_c1.grants[0];
    assert_eq!(
        (g.actor.as_str(), g.capability.as_str()),
        ("alice", "repo.write")
    );
    assert_eq!(g.granted.as_ref().unwrap().seq, s.c1.seq);
    assert_eq!(g.revoked.as_ref().map(|r| r.seq), Some(s.c3.seq));
    let now = client
        .query_grants(pb::QueryGrantsRequest {
            query: query(w, s.head),
            ..Default::default()
        })
        .await
        .unwrap();
    let in_force: Vec<(&str, &str)> = now
        .grants
        .iter()
        .map(|g| (g.actor.as_str(), g.capability.as_str()))
        .collect();
    assert_eq!(in_force, vec![("bob", "net.egress")]);
    assert_eq!(now.at_seq, s.head);
    let history = client
        .query_grants(pb::QueryGrantsRequest {
            query: query(w, s.head),
            actor: "alice".into(),
            at: Some(pb::query_grants_request::At::History(true)),
            ..Default::default()
        })
        .await
        .unwrap();
    let events: Vec<(u64, bool, bool)> = history
        .events
        .iter()
        .map(|e| (e.receipt.as_ref().unwrap().seq, e.revoke, e.effective))
        .collect();
    assert_eq!(
        events,
        vec![(s.c1.seq, false, true), (s.c3.seq, true, true)]
    );

    // provenance_dag: from key a back to c4's decision, evidence and proof;
    // at an earlier seq, to c1; forward from c1 to the keys it wrote.
    let of_a = client
        .query_provenance(pb::QueryProvenanceRequest {
            query: query(w, s.head),
            target: Some(pb::query_provenance_request::Target::Key("a".into())),
            ..Default::default()
        })
        .await
        .unwrap();
    let write = of_a.write.expect("a was written");
    assert_eq!(write.seq, s.o4.seq);
    let l = of_a.lineage.expect("its lineage");
    assert_eq!(l.commitment.as_ref().unwrap().proposer, "bob");
    assert_eq!(l.evidence[0].digest, evidence_digest(4).0.to_vec());
    assert_eq!(l.proofs.len(), 1);
    let of_a_then = client
        .query_provenance(pb::QueryProvenanceRequest {
            query: query(w, s.head),
            target: Some(pb::query_provenance_request::Target::Key("a".into())),
            at_seq: s.o1.seq,
            ..Default::default()
        })
        .await
        .unwrap();
    let l = of_a_then.lineage.expect("a was written by o1 at that seq");
    assert_eq!(l.commitment.unwrap().receipt.unwrap().seq, s.c1.seq);
    let forward = client
        .query_provenance(pb::QueryProvenanceRequest {
            query: query(w, s.head),
            target: Some(pb::query_provenance_request::Target::DependentsOf(
                s.c1.receipt_hash.0.to_vec(),
            )),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(forward.outcome.unwrap().receipt.unwrap().seq, s.o1.seq);
    let keys: Vec<&str> = forward.keys.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(keys, vec!["a", "b"]);
    let history_b = client
        .query_provenance(pb::QueryProvenanceRequest {
            query: query(w, s.head),
            target: Some(pb::query_provenance_request::Target::KeyHistory("b".into())),
            ..Default::default()
        })
        .await
        .unwrap();
    let writes: Vec<(u64, bool)> = history_b
        .writes
        .iter()
        .map(|k| (k.seq, k.deleted))
        .collect();
    assert_eq!(writes, vec![(s.o1.seq, false), (s.o4.seq, true)]);
    let citing = client
        .query_provenance(pb::QueryProvenanceRequest {
            query: query(w, s.head),
            target: Some(pb::query_provenance_request::Target::Citing(
                evidence_digest(3).0.to_vec(),
            )),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        citing.commitments.iter().map(|c| c.seq).collect::<Vec<_>>(),
        vec![s.c3.seq]
    );
}

/// A backend under test.
enum Backend {
    Memory,
    Embedded(tempfile::TempDir),
    Postgres(TestSchema),
}

impl Backend {
    fn all(test: &str) -> Vec<(&'static str, Backend)> {
        let mut out = vec![
            ("memory", Backend::Memory),
            ("embedded", Backend::Embedded(tempfile::tempdir().unwrap())),
        ];
        if let Some(schema) = TestSchema::create(test) {
            out.push(("postgres", Backend::Postgres(schema)));
        }
        out
    }

    /// A store (a new node, for PostgreSQL; the one store, for memory).
    fn open(&self, memory: &Arc<MemoryStore>) -> Arc<dyn Store> {
        match self {
            Backend::Memory => memory.clone(),
            Backend::Embedded(dir) => {
                Arc::new(EmbeddedStore::open(EmbeddedOptions::new(dir.path())).unwrap())
            }
            Backend::Postgres(schema) => {
                let options = schema.options();
                Arc::new(tokio::task::block_in_place(|| {
                    PostgresStore::open(options).unwrap()
                }))
            }
        }
    }
}

async fn serve(store: Arc<dyn Store>) -> (TestServer, Client) {
    let server = TestServer::start_full(
        store,
        LedgerConfig::default(),
        ServerConfig::default(),
        "127.0.0.1:0",
    )
    .await;
    let client = Client::connect(&server.url()).await.unwrap();
    (server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_answer_state_audit_grants_and_provenance_on_every_backend() {
    for (name, backend) in Backend::all("projections_answer") {
        let memory = Arc::new(MemoryStore::new());
        let store = backend.open(&memory);
        tokio::task::block_in_place(|| {
            converge_ledger_store::derived::check_contract(
                store
                    .derived()
                    .expect("every backend keeps a derived space"),
                b"contract-check/",
            )
        });
        let (server, client) = serve(store).await;
        let w = WorldlineId::derive(name.as_bytes());
        let s = scenario(&client, &w).await;
        check_answers(&client, &w, &s).await;
        server.stop().await;
        eprintln!("{name}: ok");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_survive_a_restart_and_fold_only_the_receipts_after_their_checkpoint() {
    for (name, backend) in Backend::all("projections_restart") {
        if matches!(backend, Backend::Memory) {
            continue; // nothing survives a restart in memory
        }
        let memory = Arc::new(MemoryStore::new());
        let w = WorldlineId::derive(b"restart");
        let first = {
            let ledger = Ledger::new(backend.open(&memory), LedgerConfig::default());
            let worldlines = Worldlines::new(ledger.clone(), Default::default())
                .unwrap()
                .with_projections();
            let c = worldlines
                .append_commitment(
                    &w,
                    &commitment(1, "alice", Decision::Accepted, &["repo.write"], &[]),
                )
                .await
                .unwrap();
            let o = worldlines
                .append_outcome(
                    &w,
                    &outcome(&c.receipt, OutcomeStatus::Succeeded, vec![put("a", "1")]),
                )
                .await
                .unwrap();
            let p = worldlines.projector().unwrap().clone();
            common::eventually(10, "the first node folds both receipts", || {
                (p.stats()
                    .receipts
                    .load(std::sync::atomic::Ordering::Relaxed)
                    >= 2)
                    .then_some(())
            })
            .await;
            worldlines.stop_projections().await;
            ledger.shutdown().await.unwrap();
            o.receipt
        };
        // The server restarts on the same storage: the projections are
        // where they were; the start-up sweep folds nothing.
        let ledger = Ledger::new(backend.open(&memory), LedgerConfig::default());
        let worldlines = Worldlines::new(ledger.clone(), Default::default())
            .unwrap()
            .with_projections();
        let p = worldlines.projector().unwrap().clone();
        common::eventually(10, "the sweep ran", || p.swept().then_some(())).await;
        let checkpoint = tokio::task::block_in_place(|| {
            p.checkpoint(
                &converge_ledger_client::worldline::latest_state::LatestState,
                &w,
            )
        })
        .unwrap()
        .expect("a checkpoint survived the restart");
        assert_eq!(
            (checkpoint.through_seq, checkpoint.through_hash),
            (first.seq, first.receipt_hash),
            "{name}"
        );
        let c2 = worldlines
            .append_commitment(&w, &commitment(2, "bob", Decision::Accepted, &[], &[]))
            .await
            .unwrap();
        let (pos, pairs) = worldlines
            .query_projection(
                &w,
                &converge_ledger_client::worldline::latest_state::LatestState,
                c2.receipt.seq,
                None,
                move |kv| {
                    converge_ledger_client::worldline::latest_state::pairs(kv, &w, "", None, 10)
                        .map(|p| p.items)
                },
            )
            .await
            .unwrap();
        assert_eq!(pos.through_seq, c2.receipt.seq);
        assert_eq!(pairs, vec![("a".to_owned(), b"1".to_vec())], "{name}");
        assert_eq!(
            p.stats()
                .receipts
                .load(std::sync::atomic::Ordering::Relaxed),
            1,
            "{name}: after the restart only the new receipt is folded"
        );
        worldlines.stop_projections().await;
        ledger.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_postgres_nodes_keep_one_set_of_projections_that_both_answer_from() {
    let Some(schema) = TestSchema::create("projections_two_nodes") else {
        return;
    };
    let memory = Arc::new(MemoryStore::new());
    let backend = Backend::Postgres(schema);
    let (a, ca) = serve(backend.open(&memory)).await;
    let (b, cb) = serve(backend.open(&memory)).await;
    let w = WorldlineId::derive(b"two nodes");
    // Writes alternate between the nodes; both fold, their guarded writes
    // race on the same checkpoints.
    let mut last = 0;
    let mut heads = Vec::new();
    for n in 0..20u64 {
        let (writer, reader) = if n.is_multiple_of(2) {
            (&ca, &cb)
        } else {
            (&cb, &ca)
        };
        let c = writer
            .append_commitment(
                &w,
                &commitment(100 + n, "alice", Decision::Accepted, &[], &[]),
            )
            .await
            .unwrap();
        let o = writer
            .append_outcome(
                &w,
                &outcome(
                    &c,
                    OutcomeStatus::Succeeded,
                    vec![put(&format!("k{n}"), &n.to_string())],
                ),
            )
            .await
            .unwrap();
        last = o.seq;
        heads.push(o.seq);
        // Read your own write through the other node.
        let (v, pos) = reader
            .projected_value(&w, &format!("k{n}"), last)
            .await
            .unwrap();
        assert_eq!(v, Some(n.to_string().into_bytes()));
        assert!(pos.through_seq >= last);
    }
    let sa = ca
        .projected_state(pb::ProjectedStateRequest {
            query: query(&w, last),
            select: None,
            with_state_hash: true,
        })
        .await
        .unwrap();
    let sb = cb
        .projected_state(pb::ProjectedStateRequest {
            query: query(&w, last),
            select: None,
            with_state_hash: true,
        })
        .await
        .unwrap();
    assert_eq!(sa.state_hash, sb.state_hash);
    assert_eq!(sa.pair_count, 20);
    assert_eq!(
        sa.state_hash,
        ca.worldline_state(&w, 0)
            .await
            .unwrap()
            .state_hash
            .0
            .to_vec()
    );
    let audit = cb
        .query_audit(pb::QueryAuditRequest {
            query: query(&w, last),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        audit.records.len(),
        20,
        "each commitment indexed once, whichever node folded it"
    );
    assert!(audit.records.iter().all(|r| r.outcome.is_some()));
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_projection_queries_are_refused_with_their_status() {
    let (server, client) = serve(Arc::new(MemoryStore::new())).await;
    let w = WorldlineId::derive(b"bad queries");
    let s = scenario(&client, &w).await;
    let state = |q: pb::ProjectionQuery, select| pb::ProjectedStateRequest {
        query: Some(q),
        select,
        with_state_hash: false,
    };
    let mut over = projection_query(&w, 0);
    over.limit = 1001;
    let e = client.projected_state(state(over, None)).await.unwrap_err();
    assert!(
        matches!(e, ClientError::InvalidArgument(_)),
        "{}: {e:?}",
        "a page over 1000 items"
    );
    let mut forged = projection_query(&w, 0);
    forged.cursor = vec![0; 5000];
    let e = client
        .projected_state(state(forged, None))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ClientError::InvalidArgument(_)),
        "{}: {e:?}",
        "a cursor over 4096 bytes"
    );
    let e = client
        .projected_state(state(
            projection_query(&w, 0),
            Some(pb::projected_state_request::Select::Key("a\0b".into())),
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ClientError::InvalidArgument(_)),
        "{}: {e:?}",
        "a key holding NUL"
    );
    let e = client
        .projected_state(pb::ProjectedStateRequest::default())
        .await
        .unwrap_err();
    assert!(
        matches!(e, ClientError::InvalidArgument(_)),
        "{}: {e:?}",
        "no query"
    );
    let mut short = projection_query(&w, 0);
    short.worldline_id = vec![1; 7];
    let e = client
        .projected_state(state(short, None))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ClientError::InvalidArgument(_)),
        "{}: {e:?}",
        "a 7-byte worldline id"
    );
    let e = client
        .projected_state(state(projection_query(&w, s.head + 1), None))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ClientError::OutOfRange(_)),
        "{}: {e:?}",
        "min_seq past the head"
    );
    let e = client
        .query_provenance(pb::QueryProvenanceRequest {
            query: query(&w, 0),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(e, ClientError::InvalidArgument(_)),
        "{}: {e:?}",
        "no target"
    );
    let e = client
        .query_provenance(pb::QueryProvenanceRequest {
            query: query(&w, 0),
            target: Some(pb::query_provenance_request::Target::Outcome(vec![1, 2, 3])),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(e, ClientError::InvalidArgument(_)),
        "{}: {e:?}",
        "a 3-byte hash"
    );
    let e = client
        .query_audit(pb::QueryAuditRequest {
            query: query(&w, 0),
            filter: Some(pb::query_audit_request::Filter::Decision(9)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(e, ClientError::InvalidArgument(_)),
        "{}: {e:?}",
        "an unknown decision filter"
    );
    let e = client
        .query_audit(pb::QueryAuditRequest {
            query: query(&w, 0),
            from_ns: 10,
            until_ns: 5,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(e, ClientError::InvalidArgument(_)),
        "{}: {e:?}",
        "an inverted time range"
    );
    // A worldline nobody wrote: empty answers at position 0, not errors.
    let empty = WorldlineId::derive(b"never written");
    let answer = client
        .projected_state(state(projection_query(&empty, 0), None))
        .await
        .unwrap();
    assert_eq!(position(&answer.position).through_seq, 0);
    assert!(answer.pairs.is_empty());
    // Nothing the refusals did changed the projections.
    check_answers(&client, &w, &s).await;
    server.stop().await;
}

/// Everything the projections store for `worldlines`, as one fold from
/// genesis over the stored receipts would leave it.
async fn folded_from_scratch(
    worldlines: &Worldlines,
    ids: &[WorldlineId],
) -> Vec<(Vec<u8>, Vec<u8>)> {
    use converge_ledger_client::worldline::{KvBatch, MemoryKv, apply_receipt, projections};
    let mut kv = MemoryKv::new();
    for w in ids {
        let head = worldlines.head(w).await.unwrap().map_or(0, |h| h.seq);
        let receipts = worldlines
            .read_range(w, 1, head, usize::MAX, usize::MAX)
            .await
            .unwrap();
        assert_eq!(receipts.len() as u64, head);
        for (r, _) in &receipts {
            let mut batch = KvBatch::new();
            for p in projections() {
                apply_receipt(p, r, &kv, &mut batch).unwrap();
            }
            kv.apply(batch);
        }
    }
    kv.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_projectors_leave_exactly_what_one_fold_from_scratch_leaves() {
    race_projectors(false).await;
}

/// The same with each projector keeping records in memory between folds
/// (as on PostgreSQL): what one remembers must be forgotten whenever the
/// other folded the worldline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_projectors_that_remember_records_leave_exactly_what_one_fold_from_scratch_leaves() {
    race_projectors(true).await;
}

async fn race_projectors(remember: bool) {
    // Two projectors over one store (as two nodes over one database), both
    // told of every receipt while eight writers append grants,
    // revocations and state updates: their guarded writes interleave with
    // different batch boundaries, and the result must be one fold's.
    let ledger = Ledger::new(Arc::new(MemoryStore::new()), LedgerConfig::default());
    let options = converge_ledger_server::ProjectorOptions {
        cache_on_any_store: remember,
        ..Default::default()
    };
    let a = Arc::new(
        Worldlines::new(ledger.clone(), Default::default())
            .unwrap()
            .with_projector(options),
    );
    let b = Worldlines::new(ledger.clone(), Default::default())
        .unwrap()
        .with_projector(options);
    let ids = [
        WorldlineId::derive(b"race-1"),
        WorldlineId::derive(b"race-2"),
    ];
    eight_writers(&a, &ids, 150).await;
    for w in &ids {
        let head = a.head(w).await.unwrap().unwrap().seq;
        for wl in [&*a, &b] {
            wl.query_projection(
                w,
                &converge_ledger_client::worldline::provenance_dag::ProvenanceDag,
                head,
                None,
                |_| Ok(()),
            )
            .await
            .unwrap();
            for p in converge_ledger_client::worldline::projections() {
                let cp = tokio::task::block_in_place(|| wl.projector().unwrap().checkpoint(p, w))
                    .unwrap()
                    .unwrap();
                assert_eq!(cp.through_seq, head, "{} caught up", p.name());
            }
        }
    }
    let stats = |wl: &Worldlines| {
        wl.projector()
            .unwrap()
            .stats()
            .receipts
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    eprintln!("folded by a: {}, by b: {}", stats(&a), stats(&b));
    assert_one_fold_of_the_current_versions(&a, ledger.store(), &ids).await;
    a.stop_projections().await;
    b.stop_projections().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_appended_while_a_fold_runs_are_folded_without_a_query_asking() {
    // A fold ends at the last receipt it read: a receipt committed after
    // that read is announced after the worldline left the queue, and that
    // notice queues it again. Nothing else may bring these receipts in:
    // no query asks (one behind its `min_seq` queues the worldline itself),
    // and the projector's periodic sweep is 30 s away.
    let ledger = Ledger::new(Arc::new(MemoryStore::new()), LedgerConfig::default());
    let wl = Arc::new(
        Worldlines::new(ledger.clone(), Default::default())
            .unwrap()
            .with_projector(Default::default()),
    );
    let ids = [
        WorldlineId::derive(b"notice-1"),
        WorldlineId::derive(b"notice-2"),
    ];
    eight_writers(&wl, &ids, 60).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    for w in &ids {
        let head = wl.head(w).await.unwrap().unwrap().seq;
        assert_eq!(head, 4 * 60 * 2, "every receipt appended");
        for p in converge_ledger_client::worldline::projections() {
            loop {
                let through =
                    tokio::task::block_in_place(|| wl.projector().unwrap().checkpoint(p, w))
                        .unwrap()
                        .map_or(0, |c| c.through_seq);
                if through == head {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{} of {w} stays at receipt {through} of {head}: the receipts after it were \
                     never folded",
                    p.name()
                );
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    }
    wl.stop_projections().await;
}

/// The niceness in a `/proc/.../stat` line: the 19th field, counted from
/// the state (the 3rd) after the command's closing parenthesis.
fn niceness(stat: &str) -> i64 {
    let rest = &stat[stat.rfind(')').expect("stat names a command") + 1..];
    rest.split_whitespace().nth(16).unwrap().parse().unwrap()
}

/// The niceness of this process's threads named `name` (Linux: a thread has
/// its own), from `/proc/self/task/*/stat`.
fn niceness_of_threads(name: &str) -> Vec<i64> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue; // the thread ended meanwhile
        };
        if comm.trim_end() == name {
            found.push(niceness(
                &std::fs::read_to_string(dir.join("stat")).unwrap(),
            ));
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_projector_thread_runs_the_configured_steps_below_the_server_and_still_folds() {
    let own = niceness(&std::fs::read_to_string("/proc/self/stat").unwrap());
    let w = WorldlineId::derive(b"niced");
    for (steps, expected) in [(0, own), (7, (own + 7).min(19)), (19, 19)] {
        let ledger = Ledger::new(Arc::new(MemoryStore::new()), LedgerConfig::default());
        let worldlines = Worldlines::new(ledger.clone(), Default::default())
            .unwrap()
            .with_projections_at(steps);
        let c = worldlines
            .append_commitment(
                &w,
                &commitment(1, "alice", Decision::Accepted, &["repo.write"], &[]),
            )
            .await
            .unwrap();
        worldlines
            .append_outcome(
                &w,
                &outcome(&c.receipt, OutcomeStatus::Succeeded, vec![put("k", "v")]),
            )
            .await
            .unwrap();
        // The projector folds at its priority: its answer reflects the
        // outcome.
        let projector = worldlines.projector().expect("projections on").clone();
        let (_, checkpoint, value) = tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                let answer = projector
                    .consistent("latest_state", &w, |kv, _| {
                        converge_ledger_worldline::latest_state::value(kv, &w, "k")
                    })
                    .unwrap();
                if answer.1.is_some_and(|c| c.through_seq == 2)
                    || std::time::Instant::now() > deadline
                {
                    break answer;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        })
        .await
        .unwrap();
        assert_eq!(checkpoint.map(|c| c.through_seq), Some(2));
        assert_eq!(value, Some(b"v".to_vec()));
        assert_eq!(
            niceness_of_threads("worldline-proje"),
            vec![expected],
            "the projector thread, {steps} steps below a server at niceness {own}"
        );
        worldlines.stop_projections().await;
    }
}

/// The projection set of the release before capability_grants version 2.
fn previous_release() -> Vec<&'static dyn converge_ledger_client::worldline::Projection> {
    use converge_ledger_client::worldline::capability_grants::CapabilityGrants;
    converge_ledger_client::worldline::projections()
        .into_iter()
        .map(|p| {
            if p.name() == "capability_grants" {
                &CapabilityGrants::V1 as &dyn converge_ledger_client::worldline::Projection
            } else {
                p
            }
        })
        .collect()
}

/// Folds every receipt of `ids` with `set` into a fresh in-memory space.
async fn fold_with(
    worldlines: &Worldlines,
    ids: &[WorldlineId],
    set: &[&'static dyn converge_ledger_client::worldline::Projection],
) -> converge_ledger_client::worldline::MemoryKv {
    use converge_ledger_client::worldline::{KvBatch, MemoryKv, apply_receipt};
    let mut kv = MemoryKv::new();
    for w in ids {
        let head = worldlines.head(w).await.unwrap().map_or(0, |h| h.seq);
        let receipts = worldlines
            .read_range(w, 1, head, usize::MAX, usize::MAX)
            .await
            .unwrap();
        for (r, _) in &receipts {
            let mut batch = KvBatch::new();
            for p in set {
                apply_receipt(*p, r, &kv, &mut batch).unwrap();
            }
            kv.apply(batch);
        }
    }
    kv
}

/// Every pair of the store's derived space.
fn derived_pairs(store: &Arc<dyn Store>) -> Vec<(Vec<u8>, Vec<u8>)> {
    tokio::task::block_in_place(|| {
        store
            .derived()
            .unwrap()
            .range(&[], &[0xff; 64], false, usize::MAX)
            .unwrap()
    })
}

/// Appends `pairs` commitments (grants and revocations among three actors
/// and five capabilities) with their outcomes to `w`.
/// Eight tasks appending `pairs` grant, revocation and state pairs each,
/// four to each of `ids`, all done when this returns.
async fn eight_writers(worldlines: &Arc<Worldlines>, ids: &[WorldlineId; 2], pairs: u64) {
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let (wl, w) = (worldlines.clone(), ids[(t % 2) as usize]);
        tasks.push(tokio::spawn(async move {
            grants_and_revocations(&wl, &w, t, pairs).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn grants_and_revocations(worldlines: &Worldlines, w: &WorldlineId, seed: u64, pairs: u64) {
    for n in 0..pairs {
        let k = seed * 100_000 + n;
        let cap = format!("cap-{}", k % 5);
        let (grant, revoke): (&[&str], &[&str]) = if n % 3 == 2 {
            (&[], &[cap.as_str()])
        } else {
            (&[cap.as_str()], &[])
        };
        let c = worldlines
            .append_commitment(
                w,
                &commitment(
                    k,
                    &format!("actor-{}", k % 3),
                    Decision::Accepted,
                    grant,
                    revoke,
                ),
            )
            .await
            .unwrap();
        worldlines
            .append_outcome(
                w,
                &outcome(
                    &c.receipt,
                    OutcomeStatus::Succeeded,
                    vec![put(&format!("k{}", k % 7), &k.to_string())],
                ),
            )
            .await
            .unwrap();
    }
}

/// What the grants projection served for `w`: the version that answered,
/// the grants in force at every `step`-th receipt, and the whole history.
async fn served_grants(
    worldlines: &Worldlines,
    w: &WorldlineId,
    step: u64,
) -> (
    u32,
    Vec<converge_ledger_client::worldline::capability_grants::Grant>,
    Vec<converge_ledger_client::worldline::capability_grants::GrantEvent>,
) {
    use converge_ledger_client::worldline::Direction;
    use converge_ledger_client::worldline::capability_grants::CapabilityGrants;
    let head = worldlines.head(w).await.unwrap().unwrap().seq;
    let w = *w;
    let (pos, (grants, events)) = worldlines
        .query_projection_versioned(
            &w,
            &CapabilityGrants::CURRENT,
            0,
            None,
            move |kv, answering| {
                let g = CapabilityGrants::of_version(answering.version()).unwrap();
                let mut grants = Vec::new();
                for seq in (0..=head).step_by(step as usize) {
                    grants.extend(g.in_force_at_seq(kv, &w, None, seq, None, 1000)?.items);
                }
                let events = g.history(kv, &w, None, Direction::Forward, None, 1000)?;
                Ok((grants, events.items))
            },
        )
        .await
        .unwrap();
    (pos.version, grants, events)
}

/// Writes into the store's derived space what the previous release's
/// projector left after folding every receipt of `ids` (capability_grants
/// at version 1, no serving record), and returns it.
async fn seed_previous_release(
    worldlines: &Worldlines,
    store: &Arc<dyn Store>,
    ids: &[WorldlineId],
) -> converge_ledger_client::worldline::MemoryKv {
    let old = fold_with(worldlines, ids, &previous_release()).await;
    let writes: Vec<_> = old
        .iter()
        .map(|(k, v)| (k.to_vec(), Some(v.to_vec())))
        .collect();
    tokio::task::block_in_place(|| store.derived().unwrap().write_if(&[], &writes).unwrap());
    old
}

/// What capability_grants version 1 answers over `kv` for `w`: the grants
/// in force at every `step`-th receipt up to `head`, and the history.
fn v1_grants(
    kv: &converge_ledger_client::worldline::MemoryKv,
    w: &WorldlineId,
    head: u64,
    step: u64,
) -> (
    Vec<converge_ledger_client::worldline::capability_grants::Grant>,
    Vec<converge_ledger_client::worldline::capability_grants::GrantEvent>,
) {
    use converge_ledger_client::worldline::Direction;
    use converge_ledger_client::worldline::capability_grants::CapabilityGrants;
    let v1 = CapabilityGrants::V1;
    let mut grants = Vec::new();
    for seq in (0..=head).step_by(step as usize) {
        grants.extend(
            v1.in_force_at_seq(kv, w, None, seq, None, 1000)
                .unwrap()
                .items,
        );
    }
    let events = v1
        .history(kv, w, None, Direction::Forward, None, 1000)
        .unwrap()
        .items;
    (grants, events)
}

/// The derived space holds exactly what one fold of `ids` with the current
/// versions writes, and the serving record naming capability_grants 2.
async fn assert_one_fold_of_the_current_versions(
    worldlines: &Worldlines,
    store: &Arc<dyn Store>,
    ids: &[WorldlineId],
) {
    use converge_ledger_client::worldline::{SERVING_KEY, Serving};
    let mut expected = folded_from_scratch(worldlines, ids).await;
    let record = tokio::task::block_in_place(|| store.derived().unwrap().get(SERVING_KEY))
        .unwrap()
        .expect("a serving record");
    assert_eq!(
        Serving::decode(&record)
            .unwrap()
            .version("capability_grants"),
        2
    );
    expected.push((SERVING_KEY.to_vec(), record));
    expected.sort();
    let stored = derived_pairs(store);
    assert_eq!(
        stored.len(),
        expected.len(),
        "as many records as one fold writes"
    );
    assert!(stored == expected, "the records are exactly one fold's");
}

fn projector_options(retire_after_secs: u64) -> converge_ledger_server::ProjectorOptions {
    converge_ledger_server::ProjectorOptions {
        retire_after: std::time::Duration::from_secs(retire_after_secs),
        ..Default::default()
    }
}

fn relaxed(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(std::sync::atomic::Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_projection_version_rebuilds_beside_the_old_one_which_answers_until_it_is_switched_and_deleted()
 {
    use converge_ledger_client::worldline::capability_grants::CapabilityGrants;
    use converge_ledger_client::worldline::latest_state::LatestState;
    use converge_ledger_client::worldline::{SERVING_KEY, Serving, projection_key_prefix};
    let dir = tempfile::tempdir().unwrap();
    let embedded = Arc::new(EmbeddedStore::open(EmbeddedOptions::new(dir.path())).unwrap());
    let store: Arc<dyn Store> = embedded.clone();
    let ledger = Ledger::new(store.clone(), LedgerConfig::default());
    let writer = Worldlines::new(ledger.clone(), Default::default()).unwrap();
    let (w, broken) = (
        WorldlineId::derive(b"versions"),
        WorldlineId::derive(b"versions-broken"),
    );
    grants_and_revocations(&writer, &w, 1, 120).await;
    grants_and_revocations(&writer, &broken, 2, 10).await;
    let old = seed_previous_release(&writer, &store, &[w, broken]).await;
    let v1_keys = |pairs: &[(Vec<u8>, Vec<u8>)]| {
        let prefix = projection_key_prefix(&CapabilityGrants::V1);
        pairs.iter().filter(|(k, _)| k.starts_with(&prefix)).count()
    };
    assert!(v1_keys(&derived_pairs(&store)) > 100);
    let head = writer.head(&w).await.unwrap().unwrap().seq;
    let expected = v1_grants(&old, &w, head, 7);
    assert!(expected.0.len() > 50 && expected.1.iter().any(|e| !e.effective));

    // Bit rot in an early receipt of the other worldline, which then
    // grows: version 2 cannot be built there, so it cannot catch up
    // everywhere; the versions queries read still fold the new receipts.
    let context = broken.context_id();
    let original = embedded.raw_entry(&context, 3).unwrap();
    let mut damaged = original.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 0x01;
    embedded.raw_put_entry(&context, 3, &damaged);
    grants_and_revocations(&writer, &broken, 3, 4).await;
    let broken_head = writer.head(&broken).await.unwrap().unwrap().seq;

    let first = Worldlines::new(ledger.clone(), Default::default())
        .unwrap()
        .with_projector(projector_options(0));
    let p = first.projector().unwrap().clone();
    let through = |p: &converge_ledger_server::Projector,
                   projection: &dyn converge_ledger_client::worldline::Projection,
                   w: &WorldlineId| {
        tokio::task::block_in_place(|| p.checkpoint(projection, w))
            .unwrap()
            .map_or(0, |c| c.through_seq)
    };
    common::eventually(20, "version 2 rebuilt on the healthy worldline", || {
        (through(&p, &CapabilityGrants::V2, &w) == head
            && through(&p, &LatestState, &broken) == broken_head
            && through(&p, &CapabilityGrants::V1, &broken) == broken_head)
            .then_some(())
    })
    .await;
    assert_eq!(through(&p, &CapabilityGrants::V2, &broken), 0);
    // Only the rebuild of that worldline stopped; its live versions go on.
    common::eventually(20, "the rebuild of the damaged worldline stopped", || {
        (p.queue().rebuild_failed == 1).then_some(())
    })
    .await;
    assert_eq!(p.queue().failed, 0);
    assert!(p.failure(&broken).is_none());
    // Caught up there, but not everywhere: version 1 still answers.
    let (version, grants, events) = served_grants(&first, &w, 7).await;
    assert_eq!(
        version, 1,
        "the old version answers while the new one is behind somewhere"
    );
    assert_eq!((grants, events), expected);
    assert_eq!(relaxed(&p.stats().rebuilding), 1);
    // New receipts reach both versions.
    grants_and_revocations(&first, &w, 4, 6).await;
    let head = first.head(&w).await.unwrap().unwrap().seq;
    common::eventually(20, "both versions fold the new receipts", || {
        (through(&p, &CapabilityGrants::V1, &w) == head
            && through(&p, &CapabilityGrants::V2, &w) == head)
            .then_some(())
    })
    .await;
    assert_eq!(relaxed(&p.stats().switches), 0);
    let record = tokio::task::block_in_place(|| store.derived().unwrap().get(SERVING_KEY)).unwrap();
    assert_eq!(
        Serving::decode(&record.expect("the projector wrote the serving record"))
            .unwrap()
            .version("capability_grants"),
        1
    );
    first.stop_projections().await;

    // The receipt repaired, a restarted projector builds version 2 on that
    // worldline too and switches the queries to it; version 1 is kept for
    // the grace period (nodes of the previous release answer from it).
    embedded.raw_put_entry(&context, 3, &original);
    let second = Worldlines::new(ledger.clone(), Default::default())
        .unwrap()
        .with_projector(projector_options(3600));
    let p = second.projector().unwrap().clone();
    common::eventually(20, "the switch to version 2", || {
        (relaxed(&p.stats().switches) == 1).then_some(())
    })
    .await;
    assert_eq!(relaxed(&p.stats().rebuilding), 0);
    let (version, grants, events) = served_grants(&second, &w, 7).await;
    assert_eq!(version, 2);
    let now = fold_with(&second, &[w], &previous_release()).await;
    assert_eq!((grants, events), v1_grants(&now, &w, head, 7));
    let v1_kept = v1_keys(&derived_pairs(&store));
    assert!(v1_kept > 100, "version 1 kept for the grace period");
    second.stop_projections().await;

    // Past the grace period (0 here), version 1 is deleted: what is left
    // is exactly one fold with the current versions, and the record.
    let third = Worldlines::new(ledger.clone(), Default::default())
        .unwrap()
        .with_projector(projector_options(0));
    let p = third.projector().unwrap().clone();
    common::eventually(20, "version 1 deleted", || {
        (v1_keys(&derived_pairs(&store)) == 0).then_some(())
    })
    .await;
    assert_eq!(relaxed(&p.stats().retired_keys), v1_kept as u64);
    assert_eq!(relaxed(&p.stats().switches), 0);
    assert_one_fold_of_the_current_versions(&third, &store, &[w, broken]).await;
    third.stop_projections().await;
    ledger.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_projectors_switching_versions_while_writers_append_leave_exactly_one_fold_of_the_new_versions()
 {
    // Two projectors (as two nodes over one database) start on a store the
    // previous release folded, while four writers append: both fold both
    // versions, one switches, both delete; what is left must be one fold
    // of the current versions, whatever the interleaving. b keeps records
    // in memory between folds (as on PostgreSQL), a does not.
    let ledger = Ledger::new(Arc::new(MemoryStore::new()), LedgerConfig::default());
    let store = ledger.store().clone();
    let writer = Arc::new(Worldlines::new(ledger.clone(), Default::default()).unwrap());
    let ids = [
        WorldlineId::derive(b"switch-1"),
        WorldlineId::derive(b"switch-2"),
    ];
    for (i, w) in ids.iter().enumerate() {
        grants_and_revocations(&writer, w, i as u64, 60).await;
    }
    seed_previous_release(&writer, &store, &ids).await;
    let a = Arc::new(
        Worldlines::new(ledger.clone(), Default::default())
            .unwrap()
            .with_projector(projector_options(0)),
    );
    let b = Worldlines::new(ledger.clone(), Default::default())
        .unwrap()
        .with_projector(converge_ledger_server::ProjectorOptions {
            cache_on_any_store: true,
            ..projector_options(0)
        });
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let (wl, w) = (a.clone(), ids[(t % 2) as usize]);
        tasks.push(tokio::spawn(async move {
            grants_and_revocations(&wl, &w, 10 + t, 40).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let switches = |wl: &Worldlines| {
        wl.projector()
            .unwrap()
            .stats()
            .switches
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let v1 = converge_ledger_client::worldline::projection_key_prefix(
        &converge_ledger_client::worldline::capability_grants::CapabilityGrants::V1,
    );
    common::eventually(30, "one projector switched and version 1 is gone", || {
        (switches(&a) + switches(&b) == 1
            && !derived_pairs(&store)
                .iter()
                .any(|(k, _)| k.starts_with(&v1)))
        .then_some(())
    })
    .await;
    for w in &ids {
        let head = a.head(w).await.unwrap().unwrap().seq;
        for wl in [&*a, &b] {
            let (pos, ()) = wl
                .query_projection(
                    w,
                    &converge_ledger_client::worldline::capability_grants::CapabilityGrants::CURRENT,
                    head,
                    None,
                    |_| Ok(()),
                )
                .await
                .unwrap();
            assert_eq!((pos.version, pos.through_seq), (2, head));
            for p in converge_ledger_client::worldline::projections() {
                wl.query_projection(w, p, head, None, |_| Ok(()))
                    .await
                    .unwrap();
            }
        }
    }
    assert_one_fold_of_the_current_versions(&a, &store, &ids).await;
    a.stop_projections().await;
    b.stop_projections().await;
}
