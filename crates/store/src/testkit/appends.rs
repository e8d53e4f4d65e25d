//! Conformance cases. Appends: sequence, chain, time, Lamport, idempotency, scans.

use super::*;

/// Sequences 1, 2, 3… across batches, each linked to the previous hash, the
/// head's Merkle root equal to the recomputed one.
pub fn appends_are_gapless_chained_and_merkle_rooted(h: &mut dyn Harness) {
    let s = h.store();
    let a = fill(s, "c", 3, 10);
    let b = fill(s, "c", 2, 20);
    let seqs: Vec<u64> = a.iter().chain(&b).map(|e| e.sequence).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    assert_eq!(b[0].prev_hash, a[2].hash);
    let head = verify_chain(s, "c");
    let leaves: Vec<Digest> = all(s, "c")
        .iter()
        .map(|e| converge_ledger_core::merkle::leaf_hash(&e.hash.0))
        .collect();
    assert_eq!(
        head.merkle_root(),
        converge_ledger_core::merkle::root_of_leaf_hashes(&leaves)
    );
    assert_eq!(all(s, "c")[1].payload, b"p1");
}

/// Interleaved appends to several contexts in one batch keep separate streams.
pub fn contexts_are_independent(h: &mut dyn Harness) {
    let s = h.store();
    let c = s
        .write(
            1,
            vec![
                append("x", "k", "1"),
                append("y", "k", "1"),
                append("x", "k", "2"),
            ],
        )
        .unwrap();
    let seqs: Vec<u64> = c.outcomes.iter().map(|o| appended(o).sequence).collect();
    assert_eq!(seqs, vec![1, 1, 2]);
    // Identical content in two contexts hashes differently.
    assert_ne!(appended(&c.outcomes[0]).hash, appended(&c.outcomes[1]).hash);
    assert_eq!(c.entries.len(), 3);
    verify_chain(s, "x");
    verify_chain(s, "y");
}

/// The server clock going backwards does not move timestamps back; received
/// Lamport times are merged.
pub fn timestamps_never_decrease_and_lamport_merges(h: &mut dyn Harness) {
    let s = h.store();
    let a = fill(s, "t", 1, 1_000);
    let b = fill(s, "t", 1, 500);
    assert_eq!(a[0].appended_at_ns, 1_000);
    assert_eq!(b[0].appended_at_ns, 1_000);
    let mut e = new("k", "v");
    e.lamport = 100;
    let c = s
        .write(
            2_000,
            vec![WriteCommand::Append(AppendCommand {
                context: "t".into(),
                entry: e,
                idempotency_key: None,
            })],
        )
        .unwrap();
    assert_eq!(appended(&c.outcomes[0]).lamport, 101);
    let d = fill(s, "t", 1, 3_000);
    assert_eq!(d[0].lamport, 102);
    verify_chain(s, "t");
}

/// The same idempotency key returns the original entry, within a batch,
/// across batches, and after reopening.
pub fn idempotent_retries_append_nothing(h: &mut dyn Harness) {
    let c = h
        .store()
        .write(
            1,
            vec![
                append_idem("i", "k", "v", "req-1"),
                append_idem("i", "k", "v", "req-1"),
            ],
        )
        .unwrap();
    let first = appended(&c.outcomes[0]);
    assert_eq!(c.outcomes[1], WriteOutcome::Duplicate(first.clone()));
    let again = h
        .store()
        .write(2, vec![append_idem("i", "k", "v", "req-1")])
        .unwrap();
    assert_eq!(again.outcomes[0], WriteOutcome::Duplicate(first.clone()));
    assert!(again.entries.is_empty());
    // Keys are per context.
    let other = h
        .store()
        .write(3, vec![append_idem("j", "k", "v", "req-1")])
        .unwrap();
    assert_eq!(appended(&other.outcomes[0]).sequence, 1);
    if h.reopen() {
        let after = h
            .store()
            .write(4, vec![append_idem("i", "k", "v", "req-1")])
            .unwrap();
        assert_eq!(after.outcomes[0], WriteOutcome::Duplicate(first));
    }
    assert_eq!(h.store().head("i").unwrap().unwrap().sequence, 1);
}

/// Reusing a key for different content is refused and appends nothing.
pub fn idempotency_conflict_is_reported(h: &mut dyn Harness) {
    let s = h.store();
    s.write(1, vec![append_idem("i", "k", "v", "req")]).unwrap();
    let c = s
        .write(2, vec![append_idem("i", "k", "other", "req")])
        .unwrap();
    assert_eq!(
        c.outcomes[0],
        WriteOutcome::IdempotencyConflict { sequence: 1 }
    );
    assert_eq!(s.head("i").unwrap().unwrap().sequence, 1);
}

/// `after` is exclusive, `until` inclusive, `key` exact; order is sequence
/// order.
pub fn scans_honour_after_until_and_key(h: &mut dyn Harness) {
    let s = h.store();
    fill(s, "s", 10, 1);
    let seqs = |v: Vec<Entry>| v.iter().map(|e| e.sequence).collect::<Vec<_>>();
    assert_eq!(
        seqs(scan(s, "s", 0, u64::MAX, None)),
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(seqs(scan(s, "s", 3, 6, None)), vec![4, 5, 6]);
    assert_eq!(seqs(scan(s, "s", 0, u64::MAX, Some("k1"))), vec![2, 5, 8]);
    assert_eq!(seqs(scan(s, "s", 2, 7, Some("k1"))), vec![5]);
    assert_eq!(seqs(scan(s, "s", 10, u64::MAX, None)), Vec::<u64>::new());
    assert!(scan(s, "s", 0, u64::MAX, Some("nope")).is_empty());
    // Early stop.
    let mut n = 0;
    s.scan(
        "s",
        Scan {
            after: 0,
            until: u64::MAX,
            key: None,
        },
        &mut |_| {
            n += 1;
            n < 4
        },
    )
    .unwrap();
    assert_eq!(n, 4);
    assert_eq!(s.entry("s", 7).unwrap().unwrap().payload, b"p6");
    assert!(s.entry("s", 11).unwrap().is_none());
}

/// An unknown context has no head and no entries.
pub fn unknown_context_is_empty(h: &mut dyn Harness) {
    let s = h.store();
    assert!(s.head("none").unwrap().is_none());
    assert!(all(s, "none").is_empty());
    assert!(s.entry("none", 1).unwrap().is_none());
}
