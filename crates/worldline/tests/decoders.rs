//! Every decoder, fed arbitrary bytes and mutations of valid encodings:
//! it returns an error or a value, never panics, and whatever it accepts
//! re-encodes to exactly the bytes it was given (so a receipt hash names
//! one body).

use converge_ledger_core::{Digest, Entry, Head, Metadata, NewEntry};
use converge_ledger_worldline::{
    COMMITMENT_KEY, CapabilitySet, Commitment, CommitmentId, Cursor, Decision, Direction, Effect,
    ErrorCode, EvidenceRef, KvBatch, KvRead, MemoryKv, OUTCOME_KEY, Outcome, OutcomeStatus,
    PolicyRef, ProjectionCheckpoint, ProofRef, Receipt, SnapshotHeader, State, StateUpdate,
    WorldlineId, WorldlineLimits, apply_receipt, audit_index, capability_grants, latest_state,
    projections, provenance_dag, read_snapshot, snapshot_entries,
};

mod common;
use common::{Rng, arbitrary, mutations};

fn commitments() -> Vec<Commitment> {
    let full = Commitment {
        commitment_id: CommitmentId::parse("0190a5b2-7c3e-7def-8a12-3456789abcde").unwrap(),
        class: "deploy".into(),
        intent: "roll out\tv2\n".into(),
        requested_capabilities: ["a", "bb", "c"].map(String::from).into(),
        targets: vec!["t1".into(), "t1".into(), "t2".into()],
        evidence: vec![
            EvidenceRef {
                uri: "cas://e1".into(),
                digest: Digest::of(&[b"1"]),
            },
            EvidenceRef {
                uri: "cas://e2".into(),
                digest: Digest::of(&[b"2"]),
            },
        ],
        proposer: "agent-é".into(),
        decision: Decision::Accepted,
        policy: PolicyRef {
            hash: Digest::of(&[b"p"]),
            version: "v12".into(),
        },
        granted_capabilities: ["a", "c"].map(String::from).into(),
        revoked_capabilities: ["z"].map(String::from).into(),
        decider: "kernel".into(),
    };
    let rejected = Commitment {
        decision: Decision::Rejected {
            reason: "no".into(),
        },
        granted_capabilities: CapabilitySet::new(),
        revoked_capabilities: CapabilitySet::new(),
        evidence: Vec::new(),
        ..full.clone()
    };
    vec![full, rejected]
}

fn outcomes() -> Vec<Outcome> {
    let full = Outcome {
        commitment: Digest::of(&[b"c"]),
        status: OutcomeStatus::Succeeded,
        effects: vec![Effect {
            kind: "k".into(),
            target: "t".into(),
            description: String::new(),
        }],
        proofs: vec![ProofRef {
            uri: "cas://p".into(),
            digest: Digest::of(&[b"p"]),
        }],
        state_updates: vec![
            StateUpdate::Put {
                key: "a".into(),
                value: vec![0, 1, 2],
            },
            StateUpdate::Delete { key: "b".into() },
            StateUpdate::Put {
                key: "a".into(),
                value: Vec::new(),
            },
        ],
        reporter: "driver".into(),
    };
    let failed = Outcome {
        status: OutcomeStatus::Failed { reason: "x".into() },
        state_updates: Vec::new(),
        ..full.clone()
    };
    vec![
        full,
        failed,
        Outcome::rejection(Digest::of(&[b"c"]), "kernel"),
    ]
}

#[test]
fn commitment_decoding_never_panics_and_accepts_only_canonical_bytes() {
    let l = WorldlineLimits::default();
    let check = |b: &[u8]| {
        if let Ok(c) = Commitment::decode(b, &l) {
            assert_eq!(c.encode(), b, "accepted bytes that re-encode differently");
        }
    };
    for c in commitments() {
        assert_eq!(Commitment::decode(&c.encode(), &l).unwrap(), c);
        mutations(&c.encode(), 3000, check);
    }
    arbitrary(1, b"WLLC\x01", 5000, 400, check);
}

#[test]
fn outcome_decoding_never_panics_and_accepts_only_canonical_bytes() {
    let l = WorldlineLimits::default();
    let check = |b: &[u8]| {
        if let Ok(o) = Outcome::decode(b, &l) {
            assert_eq!(o.encode(), b, "accepted bytes that re-encode differently");
        }
    };
    for o in outcomes() {
        assert_eq!(Outcome::decode(&o.encode(), &l).unwrap(), o);
        mutations(&o.encode(), 3000, check);
    }
    arbitrary(2, b"WLLO\x01", 5000, 400, check);
}

#[test]
fn snapshot_header_and_checkpoint_decoding_never_panic() {
    let l = WorldlineLimits::default();
    let h = SnapshotHeader {
        anchor_seq: 9,
        anchor_hash: Digest::of(&[b"a"]),
        state_hash: Digest::of(&[b"s"]),
        pair_count: 3,
        state_bytes: 40,
        chunk_bytes_max: 1 << 20,
        chunk_count: 2,
    };
    let check = |b: &[u8]| {
        if let Ok(d) = SnapshotHeader::decode(b, &l) {
            assert_eq!(d.encode(), b);
        }
    };
    mutations(&h.encode(), 2000, check);
    arbitrary(3, b"WLLS\x01", 3000, 200, check);
    let c = ProjectionCheckpoint {
        through_seq: 4,
        through_hash: Digest::of(&[b"h"]),
    };
    let check = |b: &[u8]| {
        if let Ok(d) = ProjectionCheckpoint::decode(b) {
            assert_eq!(d.encode(), b);
        }
    };
    mutations(&c.encode(), 2000, check);
    arbitrary(4, b"WLLP\x01", 3000, 100, check);
}

/// Entries with mutated payloads and a correct hash: the hash check passes
/// and the body decoder is what is tested.
#[test]
fn receipts_from_entries_with_any_payload_never_panic_and_round_trip() {
    let l = WorldlineLimits::default();
    let w = WorldlineId::derive(b"fuzz");
    let ctx = w.context_id();
    let head = Head::empty(&ctx);
    let entry = |key: &str, payload: &[u8]| {
        let new = NewEntry {
            key: key.into(),
            payload: payload.to_vec(),
            metadata: Metadata::new(),
            lamport: 0,
        };
        head.next_entry(&ctx, new, 1)
    };
    let check = |e: &Entry| match Receipt::from_entry(&w, e, &l) {
        Ok(r) => assert_eq!(&r.to_entry(), e),
        Err(err) => assert_eq!(err.code(), ErrorCode::DataLoss, "{err}"),
    };
    for c in commitments() {
        mutations(&c.encode(), 500, |b| check(&entry(COMMITMENT_KEY, b)));
    }
    for o in outcomes() {
        mutations(&o.encode(), 500, |b| check(&entry(OUTCOME_KEY, b)));
    }
    let mut valid = entry(COMMITMENT_KEY, &commitments()[0].encode());
    valid.payload[7] ^= 1;
    assert!(
        Receipt::from_entry(&w, &valid, &l).is_err(),
        "a payload changed after hashing"
    );
}

#[test]
fn snapshots_with_mutated_chunks_never_panic_and_what_is_accepted_is_canonical() {
    let l = WorldlineLimits {
        state_key_bytes_max: 8,
        state_value_bytes_max: 16,
        snapshot_chunk_bytes_max: 80,
        ..WorldlineLimits::default()
    };
    let w = WorldlineId::derive(b"fuzz");
    let mut state = State::new();
    let updates: Vec<_> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|k| StateUpdate::Put {
            key: (*k).into(),
            value: vec![7; 12],
        })
        .collect();
    state.apply(&updates, &l).unwrap();
    let anchor = converge_ledger_worldline::ReceiptRef {
        worldline: w,
        seq: 3,
        receipt_hash: Digest::of(&[b"r"]),
    };
    let batch = snapshot_entries(&anchor, &state, &l).unwrap();
    assert!(batch.entries.len() > 2);
    let ctx = w.snapshots_context_id();
    let chain = |entries: &[NewEntry]| {
        let mut head = Head::empty(&ctx);
        entries
            .iter()
            .map(|n| {
                let e = head.next_entry(&ctx, n.clone(), 1);
                head.advance(&e);
                e
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        read_snapshot(&w, &chain(&batch.entries), &l)
            .unwrap()
            .state(),
        &state
    );
    for i in 0..batch.entries.len() {
        mutations(&batch.entries[i].payload, 300, |b| {
            let mut entries = batch.entries.clone();
            entries[i].payload = b.to_vec();
            match read_snapshot(&w, &chain(&entries), &l) {
                Ok(v) => {
                    // Canonical for the chunk size it records.
                    let cut = WorldlineLimits {
                        state_key_bytes_max: 1,
                        state_value_bytes_max: 12,
                        snapshot_chunk_bytes_max: v.header().chunk_bytes_max as usize,
                        ..l.clone()
                    };
                    let again = snapshot_entries(&v.header().anchor(&w), v.state(), &cut).unwrap();
                    assert_eq!(
                        again.entries, entries,
                        "accepted a snapshot that is not the canonical cut"
                    );
                }
                Err(e) => assert_eq!(e.code(), ErrorCode::DataLoss, "{e}"),
            }
        });
    }
}

#[test]
fn ids_and_uuids_parse_only_their_canonical_forms_and_never_panic() {
    let mut rng = Rng(5);
    let alphabet = b"0123456789abcdefABCDEF-/wlsnpht\xc3\xa9";
    for _ in 0..20_000 {
        let any = rng.below(90) as usize;
        let len = *rng.pick(&[36usize, 64, 68, 78, any]);
        let bytes: Vec<u8> = (0..len).map(|_| *rng.pick(alphabet)).collect();
        let Ok(s) = String::from_utf8(bytes) else {
            continue;
        };
        if let Ok(id) = WorldlineId::from_hex(&s) {
            assert_eq!(id.to_hex(), s);
        }
        if let Ok(id) = WorldlineId::from_context_id(&s) {
            assert_eq!(id.context_id(), s);
        }
        if let Ok(id) = WorldlineId::from_snapshots_context_id(&s) {
            assert_eq!(id.snapshots_context_id(), s);
        }
        if let Ok(id) = CommitmentId::parse(&s) {
            assert_eq!(id.to_string(), s.to_lowercase());
        }
    }
}

/// A store folded from a small worldline.
fn folded() -> (WorldlineId, MemoryKv, Vec<Receipt>) {
    let l = converge_ledger_worldline::MemoryLedger::new(WorldlineLimits::default()).unwrap();
    let w = WorldlineId::derive(b"fuzz");
    use converge_ledger_worldline::{LedgerReader, LedgerWriter};
    let mut receipts = Vec::new();
    for (i, mut c) in commitments().into_iter().enumerate() {
        c.commitment_id.0[0] = i as u8 + 1;
        let r = l.append_commitment(&w, &c).unwrap();
        let o = if c.decision.is_accepted() {
            Outcome {
                commitment: r.receipt_hash,
                ..outcomes()[0].clone()
            }
        } else {
            Outcome::rejection(r.receipt_hash, "kernel")
        };
        l.append_outcome(&w, &o).unwrap();
    }
    let head = l.head(&w).unwrap().unwrap();
    let mut kv = MemoryKv::new();
    for r in l.read_range(&w, 1, head.seq).unwrap() {
        let mut batch = KvBatch::new();
        // Every version this code reads, so damage reaches each decoder.
        for p in projections()
            .into_iter()
            .chain(converge_ledger_worldline::superseded())
        {
            apply_receipt(p, &r, &kv, &mut batch).unwrap();
        }
        kv.apply(batch);
        receipts.push(r);
    }
    (w, kv, receipts)
}

/// Runs every query of every projection; errors are fine, panics are not.
fn query_everything(
    kv: &dyn KvRead,
    w: &WorldlineId,
    receipts: &[Receipt],
    cursor: Option<&Cursor>,
) {
    let _ = latest_state::value(kv, w, "a");
    let _ = latest_state::head(kv, w);
    let _ = latest_state::pairs(kv, w, "", cursor, 10);
    let _ = latest_state::state_hash(kv, w);
    for f in [
        audit_index::AuditFilter::All,
        audit_index::AuditFilter::Proposer("agent-é".into()),
        audit_index::AuditFilter::RequestedCapability("a".into()),
        audit_index::AuditFilter::Decision(audit_index::DecisionKind::Rejected),
    ] {
        for d in [Direction::Forward, Direction::Backward] {
            let _ = audit_index::query(kv, w, &f, audit_index::TimeRange::ALL, d, cursor, 10);
        }
    }
    for grants in [
        capability_grants::CapabilityGrants::V1,
        capability_grants::CapabilityGrants::V2,
    ] {
        let _ = grants.in_force_at_seq(kv, w, None, 3, cursor, 10);
        let _ = grants.in_force_at_time(kv, w, Some("agent-é"), u64::MAX, cursor, 10);
        let _ = grants.history(kv, w, None, Direction::Backward, cursor, 10);
    }
    for r in receipts {
        let h = r.receipt_hash;
        let _ = audit_index::record(kv, w, r.seq);
        let _ = provenance_dag::node(kv, w, &h);
        let _ = provenance_dag::lineage(kv, w, &h);
        let _ = provenance_dag::outcome_of(kv, w, &h);
        let _ = provenance_dag::keys_written_by(kv, w, &h, cursor, 10);
        let _ = provenance_dag::commitments_citing(
            kv,
            w,
            &Digest::of(&[b"1"]),
            Direction::Forward,
            cursor,
            10,
        );
    }
    let _ = provenance_dag::writer_of_key(kv, w, "a", 10);
    let _ = provenance_dag::lineage_of_key(kv, w, "a", 10);
    for r in receipts {
        let _ = provenance_dag::dependents(kv, w, &r.receipt_hash, cursor, 10);
    }
    let _ = provenance_dag::key_history(kv, w, "a", Direction::Forward, cursor, 10);
}

#[test]
fn projection_queries_over_damaged_values_or_forged_cursors_never_panic() {
    let (w, kv, receipts) = folded();
    let mut rng = Rng(6);
    let keys: Vec<Vec<u8>> = kv.iter().map(|(k, _)| k.to_vec()).collect();
    for _ in 0..400 {
        let mut damaged = kv.clone();
        let mut batch = KvBatch::new();
        for _ in 0..=rng.below(3) {
            let k = rng.pick(&keys).clone();
            let v = damaged.get(&k).unwrap().unwrap_or_default();
            let mut v2 = v.clone();
            match rng.below(3) {
                0 => v2.truncate(rng.below(v.len() as u64 + 1) as usize),
                1 if !v2.is_empty() => {
                    let i = rng.below(v2.len() as u64) as usize;
                    v2[i] ^= 1 << rng.below(8);
                }
                _ => {
                    let n = rng.below(80) as usize;
                    v2 = rng.bytes(n);
                }
            }
            batch.put(k, v2);
        }
        damaged.apply(batch);
        query_everything(&damaged, &w, &receipts, None);
    }
    for _ in 0..400 {
        let n = rng.below(80) as usize;
        let c = Cursor::from_bytes(rng.bytes(n)).unwrap();
        query_everything(&kv, &w, &receipts, Some(&c));
    }
}
