use std::sync::Arc;

use converge_ledger_core::{Digest, Entry, Head};

use crate::{Committed, StoreError, WriteCommand};

/// Which entries of a context [`Store::scan`] visits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan<'a> {
    /// Only entries with a sequence greater than this.
    pub after: u64,
    /// Only entries with a sequence at most this (use the head read before
    /// the scan to get a consistent cut).
    pub until: u64,
    /// Only entries with exactly this key, when given.
    pub key: Option<&'a str>,
}

/// The storage contract of the ledger.
///
/// # Contract
///
/// 1. **Atomic, ordered batches.** [`Store::write`] applies its commands in
///    order as if one at a time, and either all of their effects become
///    durable (under the backend's configured durability) and visible, or
///    none does and an error is returned. A failed write moves no head.
/// 2. **The append rule.** An append produces `head.next_entry(...)` of
///    `converge_ledger_core`: sequence `head + 1`, time
///    `max(now_ns, last time)`, Lamport `max(local, received) + 1`, chained
///    to the head's hash; the Merkle frontier advances with it.
/// 3. **Idempotency.** An append with an idempotency key already used in the
///    same context (in an earlier batch, before a restart, or earlier in the
///    same batch) appends nothing and reports `Duplicate` (same key, payload
///    and metadata) or `IdempotencyConflict`.
/// 4. **Imports** write nothing unless the whole command is acceptable:
///    into an empty context all entries; `fail_if_exists` on a non-empty
///    one is rejected; otherwise the snapshot must agree with every stored
///    entry it overlaps and only the missing tail is written.
/// 5. **Reads see committed data only**, never part of a batch; a head
///    returned by [`Store::head`] is never ahead of what [`Store::scan`]
///    can read.
/// 6. **Bounded memory.** `scan` streams; it never materialises a context.
/// 7. **Single writer.** Callers may call `write` from several threads; the
///    backend serialises them.
pub trait Store: Send + Sync + 'static {
    /// Applies `commands` atomically; `now_ns` is the server clock for every
    /// append of the batch.
    fn write(&self, now_ns: u64, commands: Vec<WriteCommand>) -> Result<Committed, StoreError>;

    /// The committed head of `context`, or `None` if it has no entries.
    fn head(&self, context: &str) -> Result<Option<Head>, StoreError>;

    /// Visits the entries selected by `scan` in sequence order until `visit`
    /// returns `false`.
    fn scan(
        &self,
        context: &str,
        scan: Scan<'_>,
        visit: &mut dyn FnMut(Entry) -> bool,
    ) -> Result<(), StoreError>;

    /// [`Store::scan`], visiting each entry as its record
    /// (`converge_ledger_core::record`) with its sequence. Backends that store
    /// records hand them on as stored, with their CRC checked; the default
    /// encodes each entry `scan` visits.
    fn scan_records(
        &self,
        context: &str,
        scan: Scan<'_>,
        visit: &mut dyn FnMut(u64, &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let mut buf = Vec::new();
        self.scan(context, scan, &mut |e| {
            buf.clear();
            converge_ledger_core::record::encode_into(&e, &mut buf);
            visit(e.sequence, &buf)
        })
    }

    /// One entry by sequence.
    fn entry(&self, context: &str, sequence: u64) -> Result<Option<Entry>, StoreError>;

    /// The context and sequence of the entry with this hash.
    fn find_by_hash(&self, hash: &Digest) -> Result<Option<(String, u64)>, StoreError>;

    /// Roots of the completed Merkle subtrees of `context` at `level` (a
    /// stored level, see `converge_ledger_core::merkle::is_stored_level`)
    /// with indices `start..start + count`, in order. Every completed node
    /// at a stored level is kept, in the same batch as the entry that
    /// completed it.
    fn merkle_nodes(
        &self,
        context: &str,
        level: u8,
        start: u64,
        count: u64,
    ) -> Result<Vec<Digest>, StoreError>;

    /// Visits the non-empty contexts whose id sorts after `after` (`""`:
    /// all) with their heads, in context-id order, until `visit` returns
    /// `false`. A page costs what it visits, not the number of contexts.
    fn contexts(
        &self,
        after: &str,
        visit: &mut dyn FnMut(&str, &Head) -> bool,
    ) -> Result<(), StoreError>;

    /// Makes everything written so far durable regardless of the fsync
    /// policy (used at shutdown and by the interval policy).
    fn sync(&self) -> Result<(), StoreError>;

    /// Whether calls may block the calling thread on I/O (a disk, a
    /// database). A store that answers `false` (memory) is called directly
    /// on the async runtime's threads: reads run on the request's thread,
    /// and group commit runs on the thread of the request that finds no
    /// commit in flight (see [`crate::Writer`]). Answer `false` only when
    /// every call takes microseconds and never waits on anything but the
    /// store's own short critical sections.
    fn may_block(&self) -> bool {
        true
    }

    /// The failure that makes this store refuse every write until it is
    /// reopened (a failed fsync, a full disk), if any: health checks report
    /// it and shutdown exits with it. `None` while the store is healthy, and
    /// always for stores that recover by themselves (a database connection
    /// that comes back).
    fn failure(&self) -> Option<StoreError> {
        None
    }

    /// Size and pool use, for metrics; cheap (no I/O).
    fn stats(&self) -> crate::stats::StorageStats {
        crate::stats::StorageStats::default()
    }

    /// The derived key-value space beside the entries (for projections),
    /// if this backend keeps one. It is stored with the backend's own
    /// durability and shared by every node of a shared backend.
    fn derived(&self) -> Option<&dyn crate::derived::DerivedKv> {
        None
    }
}

/// Up to `n` heads of `contexts` with ids after `cursor`, copied (for
/// [`visit_heads`] under a backend's lock).
pub(crate) fn heads_after<V>(
    contexts: &std::collections::BTreeMap<Arc<str>, V>,
    cursor: &str,
    n: usize,
    head: impl Fn(&V) -> &Head,
) -> Vec<(Arc<str>, Head)> {
    use std::ops::Bound;
    contexts
        .range::<str, _>((Bound::Excluded(cursor), Bound::Unbounded))
        .take(n)
        .map(|(k, c)| (k.clone(), head(c).clone()))
        .collect()
}

/// Heads copied per lock acquisition by [`visit_heads`].
const HEADS_PER_LOCK: usize = 256;

/// Visits heads in id order after `after`, copying them in small batches
/// under a backend's lock (`batch(cursor, n)`: up to `n` heads with ids
/// after `cursor`), so the lock is never held while `visit` runs and a page
/// never copies more than it visits (plus one batch).
pub(crate) fn visit_heads(
    after: &str,
    mut batch: impl FnMut(&str, usize) -> Vec<(Arc<str>, Head)>,
    visit: &mut dyn FnMut(&str, &Head) -> bool,
) {
    let mut cursor: Arc<str> = Arc::from(after);
    loop {
        let heads = batch(&cursor, HEADS_PER_LOCK);
        let full = heads.len() == HEADS_PER_LOCK;
        for (context, head) in heads {
            if !visit(&context, &head) {
                return;
            }
            cursor = context;
        }
        if !full {
            return;
        }
    }
}
