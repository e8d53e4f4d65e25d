//! The conformance suite every [`Store`] backend runs.
//!
//! A backend's test file provides a [`Harness`] and invokes
//! [`conformance_tests!`](crate::conformance_tests), which expands to one
//! `#[test]` per case, so a failure names the case.

use std::sync::Arc;

use converge_ledger_core::{Digest, Entry, Head, Limits, Metadata, NewEntry, snapshot};

use crate::{
    AppendCommand, BatchCommand, ImportCommand, ImportRejection, Scan, Store, WriteCommand,
    WriteOutcome,
};

/// Gives the suite a store, and a way to reopen it for persistent backends.
pub trait Harness {
    /// The store under test.
    fn store(&self) -> &dyn Store;
    /// Closes and reopens the store over the same data; returns `false` for
    /// backends without persistence (the reopen cases then check nothing and
    /// say so).
    fn reopen(&mut self) -> bool;
}

/// Expands to one `#[test]` per conformance case, each calling `$make()` for
/// a fresh [`Harness`].
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@cases $make;
            appends_are_gapless_chained_and_merkle_rooted,
            contexts_are_independent,
            timestamps_never_decrease_and_lamport_merges,
            idempotent_retries_append_nothing,
            idempotency_conflict_is_reported,
            scans_honour_after_until_and_key,
            unknown_context_is_empty,
            import_into_empty_context_restores_exactly,
            import_into_another_context_rechains,
            import_fail_if_exists_changes_nothing,
            import_extends_a_prefix_and_is_idempotent,
            import_that_diverges_names_the_first_sequence,
            find_by_hash_locates_entries,
            contexts_are_listed_with_heads,
            everything_survives_reopen,
            merkle_proofs_come_from_stored_nodes,
            batches_append_in_order_and_atomically,
            batch_retries_and_conflicts,
            conditional_batches_check_the_head,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let mut h = $make;
                $crate::testkit::$case(&mut h);
            }
        )*
    };
}

fn new(key: &str, payload: &str) -> NewEntry {
    NewEntry {
        key: key.into(),
        payload: payload.as_bytes().to_vec(),
        metadata: Metadata::new(),
        lamport: 0,
    }
}

fn append(ctx: &str, key: &str, payload: &str) -> WriteCommand {
    WriteCommand::Append(AppendCommand {
        context: ctx.into(),
        entry: new(key, payload),
        idempotency_key: None,
    })
}

fn append_idem(ctx: &str, key: &str, payload: &str, idem: &str) -> WriteCommand {
    WriteCommand::Append(AppendCommand {
        context: ctx.into(),
        entry: new(key, payload),
        idempotency_key: Some(idem.into()),
    })
}

fn batch(ctx: &str, payloads: &[&str], idem: Option<&str>, expected: Option<u64>) -> WriteCommand {
    WriteCommand::AppendBatch(BatchCommand {
        context: ctx.into(),
        entries: payloads.iter().map(|p| new("k", p)).collect(),
        idempotency_key: idem.map(Into::into),
        expected_sequence: expected,
    })
}

fn appended_batch(o: &WriteOutcome) -> Vec<Arc<Entry>> {
    match o {
        WriteOutcome::AppendedBatch(e) => e.clone(),
        other => panic!("expected AppendedBatch, got {other:?}"),
    }
}

fn appended(o: &WriteOutcome) -> Arc<Entry> {
    match o {
        WriteOutcome::Appended(e) => e.clone(),
        other => panic!("expected Appended, got {other:?}"),
    }
}

fn all(store: &dyn Store, ctx: &str) -> Vec<Entry> {
    scan(store, ctx, 0, u64::MAX, None)
}

fn scan(store: &dyn Store, ctx: &str, after: u64, until: u64, key: Option<&str>) -> Vec<Entry> {
    let mut out = Vec::new();
    store
        .scan(ctx, Scan { after, until, key }, &mut |e| {
            out.push(e);
            true
        })
        .unwrap();
    out
}

/// Checks the stored chain of `ctx` from genesis and that the head matches.
fn verify_chain(store: &dyn Store, ctx: &str) -> Head {
    let mut head = Head::empty(ctx);
    for e in all(store, ctx) {
        head.check_next(ctx, &e).unwrap();
        head.advance(&e);
    }
    let stored = store.head(ctx).unwrap().unwrap_or_else(|| Head::empty(ctx));
    assert_eq!(
        stored, head,
        "stored head of {ctx} differs from the recomputed one"
    );
    head
}

fn fill(store: &dyn Store, ctx: &str, n: u64, now: u64) -> Vec<Arc<Entry>> {
    let cmds = (0..n)
        .map(|i| append(ctx, &format!("k{}", i % 3), &format!("p{i}")))
        .collect();
    let c = store.write(now, cmds).unwrap();
    c.outcomes.iter().map(appended).collect()
}

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

fn snapshot_entries(s: &dyn Store, ctx: &str) -> Vec<Entry> {
    let head = s.head(ctx).unwrap().unwrap();
    let signed = converge_ledger_core::HeadSigner::from_seed([1; 32]).sign(ctx, &head);
    let mut w = snapshot::Writer::new(ctx, &head, 9, &signed);
    for e in all(s, ctx) {
        w.push(&e).unwrap();
    }
    let bytes = w.finish().unwrap();
    snapshot::decode_and_verify(&bytes, &Limits::default())
        .unwrap()
        .1
}

fn rechain(ctx: &str, entries: &[Entry]) -> Vec<Entry> {
    let mut head = Head::empty(ctx);
    entries
        .iter()
        .map(|e| {
            let mut e = e.clone();
            e.prev_hash = head.hash;
            e.hash = e.compute_hash(ctx);
            head.advance(&e);
            e
        })
        .collect()
}

fn import(ctx: &str, entries: Vec<Entry>, fail_if_exists: bool) -> WriteCommand {
    WriteCommand::Import(ImportCommand {
        context: ctx.into(),
        entries,
        fail_if_exists,
    })
}

/// Into an empty context: exact keys, payloads, metadata, sequences,
/// timestamps and hashes.
pub fn import_into_empty_context_restores_exactly(h: &mut dyn Harness) {
    let src = crate::MemoryStore::new();
    fill(&src, "a", 5, 77);
    let entries = snapshot_entries(&src, "a");
    let s = h.store();
    let c = s
        .write(1, vec![import("a", entries.clone(), true)])
        .unwrap();
    assert_eq!(
        c.outcomes[0],
        WriteOutcome::Imported {
            restored: 5,
            head: 5
        }
    );
    assert_eq!(c.entries.len(), 5);
    assert_eq!(all(s, "a"), entries);
    verify_chain(s, "a");
    // Appends continue the chain with time never going back.
    let next = fill(s, "a", 1, 1);
    assert_eq!(next[0].sequence, 6);
    assert_eq!(next[0].appended_at_ns, 77);
}

/// Into another context id: same content and sequences, a new chain.
pub fn import_into_another_context_rechains(h: &mut dyn Harness) {
    let src = crate::MemoryStore::new();
    fill(&src, "a", 4, 77);
    let entries = snapshot_entries(&src, "a");
    let s = h.store();
    let c = s
        .write(1, vec![import("b", rechain("b", &entries), false)])
        .unwrap();
    assert_eq!(
        c.outcomes[0],
        WriteOutcome::Imported {
            restored: 4,
            head: 4
        }
    );
    let got = all(s, "b");
    for (g, e) in got.iter().zip(&entries) {
        assert_eq!(
            (
                g.sequence,
                &g.key,
                &g.payload,
                &g.metadata,
                g.appended_at_ns
            ),
            (
                e.sequence,
                &e.key,
                &e.payload,
                &e.metadata,
                e.appended_at_ns
            )
        );
        assert_ne!(g.hash, e.hash);
    }
    verify_chain(s, "b");
}

/// `fail_if_exists` on a non-empty context writes nothing.
pub fn import_fail_if_exists_changes_nothing(h: &mut dyn Harness) {
    let s = h.store();
    fill(s, "a", 2, 1);
    let before = all(s, "a");
    let src = crate::MemoryStore::new();
    fill(&src, "a", 3, 1);
    let c = s
        .write(2, vec![import("a", snapshot_entries(&src, "a"), true)])
        .unwrap();
    assert_eq!(
        c.outcomes[0],
        WriteOutcome::ImportRejected(ImportRejection::AlreadyExists { head: 2 })
    );
    assert!(c.entries.is_empty());
    assert_eq!(all(s, "a"), before);
}

/// A snapshot that extends the stored chain appends only the missing tail;
/// loading it again, or a shorter prefix, changes nothing.
pub fn import_extends_a_prefix_and_is_idempotent(h: &mut dyn Harness) {
    let src = crate::MemoryStore::new();
    fill(&src, "a", 6, 5);
    let full = snapshot_entries(&src, "a");
    let s = h.store();
    s.write(1, vec![import("a", full[..2].to_vec(), false)])
        .unwrap();
    let c = s.write(1, vec![import("a", full.clone(), false)]).unwrap();
    assert_eq!(
        c.outcomes[0],
        WriteOutcome::Imported {
            restored: 4,
            head: 6
        }
    );
    let seqs: Vec<u64> = c.entries.iter().map(|(_, e)| e.sequence).collect();
    assert_eq!(seqs, vec![3, 4, 5, 6]);
    let c = s.write(1, vec![import("a", full.clone(), false)]).unwrap();
    assert_eq!(
        c.outcomes[0],
        WriteOutcome::Imported {
            restored: 0,
            head: 6
        }
    );
    let c = s
        .write(1, vec![import("a", full[..3].to_vec(), false)])
        .unwrap();
    assert_eq!(
        c.outcomes[0],
        WriteOutcome::Imported {
            restored: 0,
            head: 6
        }
    );
    assert_eq!(all(s, "a"), full);
}

/// A snapshot that disagrees with stored history is refused, naming the
/// first differing sequence.
pub fn import_that_diverges_names_the_first_sequence(h: &mut dyn Harness) {
    let s = h.store();
    let src = crate::MemoryStore::new();
    fill(&src, "a", 8, 5);
    let theirs = snapshot_entries(&src, "a");
    s.write(1, vec![import("a", theirs[..5].to_vec(), false)])
        .unwrap();
    let mut forked = theirs.clone();
    forked[3].payload = b"fork".to_vec();
    let forked = rechain("a", &forked);
    let c = s.write(2, vec![import("a", forked, false)]).unwrap();
    assert_eq!(
        c.outcomes[0],
        WriteOutcome::ImportRejected(ImportRejection::Diverged { sequence: 4 })
    );
    assert_eq!(s.head("a").unwrap().unwrap().sequence, 5);
}

/// Every entry is found by its hash.
pub fn find_by_hash_locates_entries(h: &mut dyn Harness) {
    let s = h.store();
    let es = fill(s, "h", 3, 1);
    for e in &es {
        assert_eq!(
            s.find_by_hash(&e.hash).unwrap(),
            Some(("h".to_string(), e.sequence))
        );
    }
    assert_eq!(s.find_by_hash(&Digest::ZERO).unwrap(), None);
}

/// `contexts` lists every non-empty context with its head.
pub fn contexts_are_listed_with_heads(h: &mut dyn Harness) {
    let s = h.store();
    fill(s, "b", 2, 1);
    fill(s, "a", 1, 1);
    let list = |after: &str, limit: usize| {
        let mut seen = Vec::new();
        s.contexts(after, &mut |c, head| {
            seen.push((c.to_string(), head.sequence));
            seen.len() < limit
        })
        .unwrap();
        seen
    };
    assert_eq!(
        list("", usize::MAX),
        vec![("a".to_string(), 1), ("b".to_string(), 2)]
    );
    assert_eq!(list("a", usize::MAX), vec![("b".to_string(), 2)]);
    assert_eq!(list("", 1), vec![("a".to_string(), 1)]);
    assert!(list("b", usize::MAX).is_empty());
    // More contexts than one internal batch (256), paged by 100.
    let names: Vec<String> = (0..600).map(|i| format!("p{i:04}")).collect();
    for chunk in names.chunks(200) {
        let commands = chunk.iter().map(|n| append(n, "k", "v")).collect();
        s.write(2, commands).unwrap();
    }
    let mut paged = Vec::new();
    let mut after = "p".to_string();
    loop {
        let page = list(&after, 100);
        let Some(last) = page.last() else { break };
        after = last.0.clone();
        paged.extend(page.into_iter().map(|(c, _)| c));
    }
    assert_eq!(paged, names);
}

/// Entries, heads, indexes and idempotency keys survive a reopen.
pub fn everything_survives_reopen(h: &mut dyn Harness) {
    fill(h.store(), "r", 4, 1);
    h.store()
        .write(2, vec![append_idem("r", "k", "v", "key")])
        .unwrap();
    let before = all(h.store(), "r");
    let head = h.store().head("r").unwrap();
    if !h.reopen() {
        eprintln!("everything_survives_reopen: this backend does not persist; nothing to reopen");
        return;
    }
    assert_eq!(all(h.store(), "r"), before);
    assert_eq!(h.store().head("r").unwrap(), head);
    assert_eq!(scan(h.store(), "r", 0, u64::MAX, Some("k1")).len(), 1);
    assert!(h.store().find_by_hash(&before[2].hash).unwrap().is_some());
    let next = fill(h.store(), "r", 1, 3);
    assert_eq!(next[0].sequence, 6);
    assert_eq!(next[0].prev_hash, before[4].hash);
}

/// Inclusion and consistency proofs built from the store's nodes verify
/// against the head's root, for every size, across batches, imports and a
/// reopen; and cost few reads.
pub fn merkle_proofs_come_from_stored_nodes(h: &mut dyn Harness) {
    use converge_ledger_core::merkle;
    for n in [1u64, 7, 40, 29] {
        fill(h.store(), "m", n, 1);
    }
    let src = crate::MemoryStore::new();
    fill(&src, "n", 300, 5);
    h.store()
        .write(1, vec![import("n", snapshot_entries(&src, "n"), false)])
        .unwrap();
    let reopened = h.reopen();
    let s = h.store();
    for ctx in ["m", "n"] {
        let entries = all(s, ctx);
        let leaves: Vec<Digest> = entries
            .iter()
            .map(|e| merkle::leaf_hash(&e.hash.0))
            .collect();
        let size = entries.len() as u64;
        assert_eq!(
            crate::proofs::root_at(s, ctx, size).unwrap(),
            s.head(ctx).unwrap().unwrap().merkle_root(),
            "{ctx}: root from stored nodes"
        );
        for tree in [1, 2, 15, 16, 17, 33, 64, size - 1, size] {
            let root = merkle::root_of_leaf_hashes(&leaves[..tree as usize]);
            assert_eq!(crate::proofs::root_at(s, ctx, tree).unwrap(), root);
            for seq in [1, tree / 2 + 1, tree] {
                let proof = crate::proofs::inclusion_proof(s, ctx, seq, tree).unwrap();
                merkle::verify_inclusion(&leaves[seq as usize - 1], seq - 1, tree, &proof, &root)
                    .unwrap();
            }
            for old in [1, tree / 3 + 1, tree] {
                let old_root = merkle::root_of_leaf_hashes(&leaves[..old as usize]);
                let proof = crate::proofs::consistency_proof(s, ctx, old, tree).unwrap();
                merkle::verify_consistency(old, tree, &old_root, &root, &proof).unwrap();
            }
        }
        let mut nodes = crate::proofs::StoreNodes::new(s, ctx);
        merkle::inclusion_proof(&mut nodes, 0, size).unwrap();
        assert!(nodes.reads <= 3 * 64, "{} reads for one proof", nodes.reads);
    }
    let _ = reopened;
}

/// A batch takes consecutive sequences in its own order, interleaves with
/// single appends of the same write exactly as submitted, and chains like
/// single appends.
pub fn batches_append_in_order_and_atomically(h: &mut dyn Harness) {
    let s = h.store();
    let c = s
        .write(
            5,
            vec![
                append("b", "k", "one"),
                batch("b", &["two", "three", "four"], None, None),
                append("b", "k", "five"),
                batch("other", &["x"], None, None),
            ],
        )
        .unwrap();
    let b = appended_batch(&c.outcomes[1]);
    assert_eq!(
        b.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    assert_eq!(appended(&c.outcomes[2]).sequence, 5);
    assert_eq!(appended_batch(&c.outcomes[3])[0].sequence, 1);
    let stored = all(s, "b");
    let payloads: Vec<&[u8]> = stored.iter().map(|e| e.payload.as_slice()).collect();
    assert_eq!(
        payloads,
        vec![
            b"one".as_slice(),
            b"two".as_slice(),
            b"three".as_slice(),
            b"four".as_slice(),
            b"five".as_slice()
        ]
    );
    assert_eq!(*b[0], stored[1]);
    assert_eq!(c.entries.len(), 6, "every new entry is published");
    verify_chain(s, "b");
    verify_chain(s, "other");
    // An empty batch appends nothing.
    let e = s
        .write(6, vec![batch("b", &[], Some("empty"), None)])
        .unwrap();
    assert_eq!(e.outcomes[0], WriteOutcome::AppendedBatch(Vec::new()));
    assert_eq!(s.head("b").unwrap().unwrap().sequence, 5);
}

/// A batch sent again under its idempotency key returns the first entries
/// and appends nothing, within a write, across writes and after reopening;
/// the key with other entries is a conflict naming the first sequence.
pub fn batch_retries_and_conflicts(h: &mut dyn Harness) {
    let c = h
        .store()
        .write(
            1,
            vec![
                append("r", "k", "zero"),
                batch("r", &["a", "b"], Some("batch-1"), None),
                batch("r", &["a", "b"], Some("batch-1"), None),
            ],
        )
        .unwrap();
    let first = appended_batch(&c.outcomes[1]);
    assert_eq!(first[0].sequence, 2);
    assert_eq!(c.outcomes[2], WriteOutcome::DuplicateBatch(first.clone()));
    let again = h
        .store()
        .write(2, vec![batch("r", &["a", "b"], Some("batch-1"), Some(0))])
        .unwrap();
    assert_eq!(
        again.outcomes[0],
        WriteOutcome::DuplicateBatch(first.clone()),
        "a retry is recognised before the head condition"
    );
    assert!(again.entries.is_empty());
    for other in [&["a", "c"][..], &["a"][..], &["a", "b", "c"][..]] {
        let c = h
            .store()
            .write(3, vec![batch("r", other, Some("batch-1"), None)])
            .unwrap();
        assert_eq!(
            c.outcomes[0],
            WriteOutcome::IdempotencyConflict { sequence: 2 },
            "{other:?}"
        );
    }
    // A single append under the batch's key is not a retry of it, even
    // with the batch's first entry; a batch of one under a single
    // append's key is.
    let single = WriteCommand::Append(AppendCommand {
        context: "r".into(),
        entry: new("k", "a"),
        idempotency_key: Some("batch-1".into()),
    });
    let c = h.store().write(3, vec![single]).unwrap();
    assert_eq!(
        c.outcomes[0],
        WriteOutcome::IdempotencyConflict { sequence: 2 }
    );
    let one = appended(
        &h.store()
            .write(3, vec![append_idem("r", "k", "solo", "single-1")])
            .unwrap()
            .outcomes[0],
    );
    let c = h
        .store()
        .write(3, vec![batch("r", &["solo"], Some("single-1"), None)])
        .unwrap();
    assert_eq!(c.outcomes[0], WriteOutcome::DuplicateBatch(vec![one]));
    if h.reopen() {
        let after = h
            .store()
            .write(4, vec![batch("r", &["a", "b"], Some("batch-1"), None)])
            .unwrap();
        assert_eq!(after.outcomes[0], WriteOutcome::DuplicateBatch(first));
    }
    assert_eq!(h.store().head("r").unwrap().unwrap().sequence, 4);
    verify_chain(h.store(), "r");
}

/// A conditional batch appends only at the expected head; otherwise it
/// reports the actual head and appends nothing, and the rest of the write
/// commits as usual.
pub fn conditional_batches_check_the_head(h: &mut dyn Harness) {
    let s = h.store();
    let c = s
        .write(
            1,
            vec![
                batch("c", &["a"], None, Some(0)),
                batch("c", &["b"], None, Some(0)),
                batch("c", &["c", "d"], None, Some(1)),
                batch("c", &["e"], None, Some(2)),
                append("c", "k", "f"),
            ],
        )
        .unwrap();
    assert_eq!(appended_batch(&c.outcomes[0])[0].sequence, 1);
    assert_eq!(
        c.outcomes[1],
        WriteOutcome::SequenceMismatch {
            expected: 0,
            actual: 1
        }
    );
    assert_eq!(appended_batch(&c.outcomes[2])[1].sequence, 3);
    assert_eq!(
        c.outcomes[3],
        WriteOutcome::SequenceMismatch {
            expected: 2,
            actual: 3
        }
    );
    assert_eq!(appended(&c.outcomes[4]).sequence, 4);
    let later = s.write(2, vec![batch("c", &["g"], None, Some(4))]).unwrap();
    assert_eq!(appended_batch(&later.outcomes[0])[0].sequence, 5);
    let payloads: Vec<Vec<u8>> = all(s, "c").into_iter().map(|e| e.payload).collect();
    assert_eq!(
        payloads,
        [b"a", b"c", b"d", b"f", b"g"].map(|p| p.to_vec()).to_vec()
    );
    verify_chain(s, "c");
}
