//! The conformance suite every [`Store`] backend runs.
//!
//! A backend's test file provides a [`Harness`] and invokes
//! [`conformance_tests!`](crate::conformance_tests), which expands to one
//! `#[test]` per case, so a failure names the case.

pub(crate) use std::sync::Arc;

pub(crate) use converge_ledger_core::{Digest, Entry, Head, Limits, Metadata, NewEntry, snapshot};

pub(crate) use crate::{
    AppendCommand, BatchCommand, ImportCommand, ImportRejection, Scan, Store, WriteCommand,
    WriteOutcome,
};

mod appends;
mod batches;
mod imports;
mod probe;
mod reads;

pub use appends::*;
pub use batches::*;
pub use imports::*;
pub use probe::Probe;
pub use reads::*;

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

pub(crate) fn new(key: &str, payload: &str) -> NewEntry {
    NewEntry {
        key: key.into(),
        payload: payload.as_bytes().to_vec(),
        metadata: Metadata::new(),
        lamport: 0,
    }
}

pub(crate) fn append(ctx: &str, key: &str, payload: &str) -> WriteCommand {
    WriteCommand::Append(AppendCommand {
        context: ctx.into(),
        entry: new(key, payload),
        idempotency_key: None,
    })
}

pub(crate) fn append_idem(ctx: &str, key: &str, payload: &str, idem: &str) -> WriteCommand {
    WriteCommand::Append(AppendCommand {
        context: ctx.into(),
        entry: new(key, payload),
        idempotency_key: Some(idem.into()),
    })
}

pub(crate) fn batch(
    ctx: &str,
    payloads: &[&str],
    idem: Option<&str>,
    expected: Option<u64>,
) -> WriteCommand {
    WriteCommand::AppendBatch(BatchCommand {
        context: ctx.into(),
        entries: payloads.iter().map(|p| new("k", p)).collect(),
        idempotency_key: idem.map(Into::into),
        expected_sequence: expected,
    })
}

pub(crate) fn appended_batch(o: &WriteOutcome) -> Vec<Arc<Entry>> {
    match o {
        WriteOutcome::AppendedBatch(e) => e.clone(),
        other => panic!("expected AppendedBatch, got {other:?}"),
    }
}

pub(crate) fn appended(o: &WriteOutcome) -> Arc<Entry> {
    match o {
        WriteOutcome::Appended(e) => e.clone(),
        other => panic!("expected Appended, got {other:?}"),
    }
}

pub(crate) fn all(store: &dyn Store, ctx: &str) -> Vec<Entry> {
    scan(store, ctx, 0, u64::MAX, None)
}

pub(crate) fn scan(
    store: &dyn Store,
    ctx: &str,
    after: u64,
    until: u64,
    key: Option<&str>,
) -> Vec<Entry> {
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
pub(crate) fn verify_chain(store: &dyn Store, ctx: &str) -> Head {
    let mut head = Head::empty(ctx);
    for e in all(store, ctx) {
        head.check_next(ctx, &e).unwrap();
        head.advance(&e);
    }
    let stored = store.head(ctx).unwrap().unwrap_or_else(|| Head::empty(ctx));
    assert!(
        stored.same_history(&head),
        "stored head of {ctx} differs from the recomputed one: {stored:?} {head:?}"
    );
    head
}

pub(crate) fn fill(store: &dyn Store, ctx: &str, n: u64, now: u64) -> Vec<Arc<Entry>> {
    let cmds = (0..n)
        .map(|i| append(ctx, &format!("k{}", i % 3), &format!("p{i}")))
        .collect();
    let c = store.write(now, cmds).unwrap();
    c.outcomes.iter().map(appended).collect()
}

pub(crate) fn snapshot_entries(s: &dyn Store, ctx: &str) -> Vec<Entry> {
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

pub(crate) fn rechain(ctx: &str, entries: &[Entry]) -> Vec<Entry> {
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

pub(crate) fn import(ctx: &str, entries: Vec<Entry>, fail_if_exists: bool) -> WriteCommand {
    WriteCommand::Import(ImportCommand {
        context: ctx.into(),
        entries,
        fail_if_exists,
        signer: converge_ledger_core::PublicKey([7; 32]),
    })
}
