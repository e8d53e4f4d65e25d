//! The contracts, driven through the in-memory ledger: what each append
//! accepts and refuses, idempotent retries, and snapshots as checkpoints.

use converge_ledger_core::Digest;
use converge_ledger_worldline::{
    CapabilitySet, Commitment, CommitmentId, Decision, ErrorCode, LedgerReader, LedgerWriter,
    MemoryKv, MemoryLedger, NoLookup, Outcome, OutcomeStatus, PolicyRef, ReaderLookup, Receipt,
    Replay, StateUpdate, WorldlineId, WorldlineLimits, apply_receipt, latest_state, projections,
    replay_worldline,
};

fn commitment(n: u8, accepted: bool) -> Commitment {
    let mut id = [0u8; 16];
    id[15] = n;
    id[0] = 1;
    Commitment {
        commitment_id: CommitmentId(id),
        class: "deploy".into(),
        intent: format!("step {n}"),
        requested_capabilities: CapabilitySet::new(),
        targets: vec!["svc/api".into()],
        evidence: Vec::new(),
        proposer: "agent".into(),
        decision: if accepted {
            Decision::Accepted
        } else {
            Decision::Rejected {
                reason: "no".into(),
            }
        },
        policy: PolicyRef {
            hash: Digest::of(&[b"policy"]),
            version: "v1".into(),
        },
        granted_capabilities: CapabilitySet::new(),
        revoked_capabilities: CapabilitySet::new(),
        decider: "kernel".into(),
    }
}

fn succeeded(c: &Receipt, updates: Vec<StateUpdate>) -> Outcome {
    Outcome {
        commitment: c.receipt_hash,
        status: OutcomeStatus::Succeeded,
        effects: Vec::new(),
        proofs: Vec::new(),
        state_updates: updates,
        reporter: "driver".into(),
    }
}

fn put(k: &str, v: &str) -> StateUpdate {
    StateUpdate::Put {
        key: k.into(),
        value: v.as_bytes().to_vec(),
    }
}

fn ledger() -> MemoryLedger {
    MemoryLedger::new(WorldlineLimits::default()).unwrap()
}

#[test]
fn a_retried_commitment_returns_its_receipt_and_a_changed_one_is_refused() {
    let l = ledger();
    let w = WorldlineId::derive(b"agent");
    let r1 = l.append_commitment(&w, &commitment(1, true)).unwrap();
    let again = l.append_commitment(&w, &commitment(1, true)).unwrap();
    assert_eq!(again, r1);
    let mut changed = commitment(1, true);
    changed.intent = "something else".into();
    let e = l.append_commitment(&w, &changed).unwrap_err();
    assert_eq!(e.code(), ErrorCode::AlreadyExists);
    assert_eq!(l.head(&w).unwrap(), Some(r1.reference()));
    // Another worldline has its own ids.
    let other = WorldlineId::derive(b"other");
    assert_eq!(
        l.append_commitment(&other, &commitment(1, true))
            .unwrap()
            .seq,
        1
    );
}

#[test]
fn an_outcome_needs_a_commitment_of_its_worldline_with_a_fitting_decision() {
    let l = ledger();
    let w = WorldlineId::derive(b"agent");
    let acc = l.append_commitment(&w, &commitment(1, true)).unwrap();
    let rej = l.append_commitment(&w, &commitment(2, false)).unwrap();
    let unknown = Outcome::rejection(Digest::of(&[b"nothing"]), "driver");
    assert_eq!(
        l.append_outcome(&w, &unknown).unwrap_err().code(),
        ErrorCode::NotFound
    );
    let elsewhere = WorldlineId::derive(b"other");
    let e = l
        .append_rejection_outcome(&elsewhere, &rej.receipt_hash, "kernel")
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::NotFound);
    let e = l.append_outcome(&w, &succeeded(&rej, vec![])).unwrap_err();
    assert_eq!(e.code(), ErrorCode::FailedPrecondition, "{e}");
    let e = l
        .append_rejection_outcome(&w, &acc.receipt_hash, "kernel")
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::FailedPrecondition, "{e}");
    let o = l
        .append_rejection_outcome(&w, &rej.receipt_hash, "kernel")
        .unwrap();
    let e = l
        .append_outcome(&w, &Outcome::rejection(o.receipt_hash, "x"))
        .unwrap_err();
    assert_eq!(
        e.code(),
        ErrorCode::NotFound,
        "an outcome is not a commitment: {e}"
    );
    let mut bad = succeeded(&acc, vec![]);
    bad.reporter.clear();
    assert_eq!(
        l.append_outcome(&w, &bad).unwrap_err().code(),
        ErrorCode::InvalidArgument
    );
    assert_eq!(l.head(&w).unwrap().unwrap().seq, 3);
}

#[test]
fn a_commitment_has_at_most_one_outcome_and_an_identical_retry_returns_it() {
    let l = ledger();
    let w = WorldlineId::derive(b"agent");
    let c = l.append_commitment(&w, &commitment(1, true)).unwrap();
    let first = l
        .append_outcome(&w, &succeeded(&c, vec![put("k", "1")]))
        .unwrap();
    assert_eq!(
        l.append_outcome(&w, &succeeded(&c, vec![put("k", "1")]))
            .unwrap(),
        first
    );
    let e = l
        .append_outcome(&w, &succeeded(&c, vec![put("k", "2")]))
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::AlreadyExists);
    let failed = Outcome {
        status: OutcomeStatus::Failed {
            reason: "late".into(),
        },
        ..succeeded(&c, vec![])
    };
    assert_eq!(
        l.append_outcome(&w, &failed).unwrap_err().code(),
        ErrorCode::AlreadyExists
    );
    assert_eq!(l.state(&w).unwrap().get("k"), Some(&b"1"[..]));
}

#[test]
fn an_outcome_that_would_pass_the_state_limit_is_refused_and_deleting_first_makes_room() {
    let limits = WorldlineLimits {
        state_bytes_max: 8,
        ..WorldlineLimits::default()
    };
    let l = MemoryLedger::new(limits).unwrap();
    let w = WorldlineId::derive(b"agent");
    let c1 = l.append_commitment(&w, &commitment(1, true)).unwrap();
    l.append_outcome(&w, &succeeded(&c1, vec![put("k", "1234567")]))
        .unwrap();
    let c2 = l.append_commitment(&w, &commitment(2, true)).unwrap();
    let e = l
        .append_outcome(&w, &succeeded(&c2, vec![put("j", "1")]))
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::ResourceExhausted, "{e}");
    let del = StateUpdate::Delete { key: "k".into() };
    l.append_outcome(&w, &succeeded(&c2, vec![del, put("j", "1")]))
        .unwrap();
    assert_eq!(l.state(&w).unwrap().bytes(), 2);
}

#[test]
fn a_snapshot_anchored_before_later_outcomes_never_rolls_state_back() {
    let l = ledger();
    let w = WorldlineId::derive(b"agent");
    let c1 = l.append_commitment(&w, &commitment(1, true)).unwrap();
    let o1 = l
        .append_outcome(&w, &succeeded(&c1, vec![put("k", "1")]))
        .unwrap();
    let c2 = l.append_commitment(&w, &commitment(2, true)).unwrap();
    l.append_outcome(&w, &succeeded(&c2, vec![put("k", "2")]))
        .unwrap();
    let head = l.head(&w).unwrap().unwrap();

    // Written after seq 4, anchored at seq 2.
    let snap = l.append_snapshot(&o1.reference(), None).unwrap();
    assert_eq!(
        l.head(&w).unwrap(),
        Some(head),
        "a snapshot never moves the head"
    );
    assert_eq!(snap.anchor.seq, 2);

    // The state at the head, a replay from the snapshot, a new snapshot at
    // the head (computed from the old one), and the projection all keep
    // the later outcome.
    assert_eq!(l.state(&w).unwrap().get("k"), Some(&b"2"[..]));
    let verified = l.snapshots(&w).unwrap().remove(0);
    assert_eq!(verified.state().get("k"), Some(&b"1"[..]));
    let mut replay = Replay::from_snapshot(verified, WorldlineLimits::default());
    for r in l.read_range(&w, 3, head.seq).unwrap() {
        replay.apply(&r, &ReaderLookup(&l)).unwrap();
    }
    assert_eq!(replay.state().get("k"), Some(&b"2"[..]));
    let at_head = l
        .append_snapshot(&head, Some(&replay.state_hash()))
        .unwrap();
    assert_eq!(at_head.state_hash, l.state(&w).unwrap().hash());
    // And a snapshot written after that one, anchored before it, holds the
    // state at its own anchor, not the newer snapshot's.
    let behind = l.append_snapshot(&c2.reference(), None).unwrap();
    let verified = l.snapshots(&w).unwrap().remove(2);
    assert_eq!(verified.header().anchor_seq, 3);
    assert_eq!(verified.state().get("k"), Some(&b"1"[..]));
    assert_eq!(behind.state_hash, verified.state().hash());
    let mut kv = MemoryKv::new();
    for r in l.read_range(&w, 1, head.seq).unwrap() {
        let mut batch = converge_ledger_worldline::KvBatch::new();
        for p in projections() {
            apply_receipt(p, &r, &kv, &mut batch).unwrap();
        }
        kv.apply(batch);
    }
    assert_eq!(
        latest_state::value(&kv, &w, "k").unwrap(),
        Some(b"2".to_vec())
    );
}

#[test]
fn a_snapshot_is_computed_by_the_ledger_and_a_client_state_hash_is_only_compared() {
    let l = ledger();
    let w = WorldlineId::derive(b"agent");
    let c1 = l.append_commitment(&w, &commitment(1, true)).unwrap();
    let o1 = l
        .append_outcome(&w, &succeeded(&c1, vec![put("k", "1")]))
        .unwrap();
    let made_up = Digest::of(&[b"made up"]);
    let e = l
        .append_snapshot(&o1.reference(), Some(&made_up))
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::FailedPrecondition);
    let mut wrong_hash = o1.reference();
    wrong_hash.receipt_hash = Digest::ZERO;
    assert_eq!(
        l.append_snapshot(&wrong_hash, None).unwrap_err().code(),
        ErrorCode::FailedPrecondition
    );
    let mut beyond = o1.reference();
    beyond.seq = 3;
    assert!(l.append_snapshot(&beyond, None).is_err());
    assert!(
        l.snapshot_entries(&w).unwrap().is_empty(),
        "nothing was written"
    );
    let right = l.state(&w).unwrap().hash();
    assert_eq!(
        l.append_snapshot(&o1.reference(), Some(&right))
            .unwrap()
            .state_hash,
        right
    );
}

#[test]
fn reads_page_through_a_worldline_and_replay_verifies_it() {
    let l = ledger();
    let w = WorldlineId::derive(b"agent");
    for n in 0..5 {
        let c = l.append_commitment(&w, &commitment(n, n % 2 == 0)).unwrap();
        if n % 2 == 0 {
            l.append_outcome(&w, &succeeded(&c, vec![put(&format!("k{n}"), "v")]))
                .unwrap();
        } else {
            l.append_rejection_outcome(&w, &c.receipt_hash, "kernel")
                .unwrap();
        }
    }
    assert_eq!(
        l.read_range(&w, 3, 5)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    assert_eq!(l.read_range(&w, 9, 20).unwrap().len(), 2);
    assert_eq!(l.read_range(&w, 11, 20).unwrap(), vec![]);
    assert_eq!(
        l.read_range(&w, 0, 2).unwrap_err().code(),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        l.read_range(&w, 3, 2).unwrap_err().code(),
        ErrorCode::InvalidArgument
    );
    let r = l.read_range(&w, 4, 4).unwrap().remove(0);
    assert_eq!(l.get_by_hash(&r.receipt_hash).unwrap(), Some(r));
    let replay = replay_worldline(&l, &w, &WorldlineLimits::default()).unwrap();
    assert_eq!(replay.state(), &l.state(&w).unwrap());
    assert_eq!(replay.head(), l.head(&w).unwrap());
    let mut genesis = Replay::genesis(w, WorldlineLimits::default());
    for e in l.receipt_entries(&w).unwrap() {
        let r = Receipt::from_entry(&w, &e, &WorldlineLimits::default()).unwrap();
        genesis.apply(&r, &NoLookup).unwrap();
    }
    assert_eq!(genesis.state_hash(), replay.state_hash());
}

#[test]
fn worldlines_are_listed_in_id_order_a_page_at_a_time() {
    let l = ledger();
    let mut ids: Vec<_> = (0..5u8).map(|i| WorldlineId::derive(&[i])).collect();
    for w in &ids {
        l.append_commitment(w, &commitment(1, true)).unwrap();
    }
    ids.sort();
    let first = l.worldlines(None, 2).unwrap();
    assert_eq!(first, ids[..2]);
    let rest = l.worldlines(first.last(), 10).unwrap();
    assert_eq!(rest, ids[2..]);
}
