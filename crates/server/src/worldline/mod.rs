//! The WorldLine profile served by the ledger (docs/design.md §18): receipts
//! appended only after the server checked them, atomically, on every
//! backend and across nodes.
//!
//! How each invariant holds:
//! - L1, L2, L3: receipts are entries; the store's append rule chains and
//!   numbers them, and the generic API cannot write `wll/` contexts.
//! - L4: an outcome's idempotency key names its commitment, so the store
//!   admits one outcome per commitment inside its commit (under the head
//!   row lock on PostgreSQL); an identical retry gets the first receipt.
//!   The commitment's existence and decision are read from the cached
//!   replay below, which has met every commitment up to the head.
//! - State limit and L5: checked against the worldline's state, which this
//!   node keeps as a replay caught up from storage before each check; the
//!   outcome is then appended only if the head is still the one the state
//!   is for (a conditional append), so a receipt another node appended in
//!   between makes this node catch up and check again.
//! - Commitment ids: the commitment's idempotency key.
//!
//! Replays run on blocking threads over the store directly; writes go
//! through the group-commit writer like every append.

mod json;
mod projector;
mod query;
mod rpc_projections;
mod service;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use converge_ledger_core::{Digest, Entry};
use converge_ledger_store::{BatchCommand, Scan, Store, WriteOutcome};
use converge_ledger_worldline::{
    Commitment, CommitmentLookup, ErrorCode, Outcome, OutcomeStatus, Receipt, ReceiptReader,
    ReceiptRef, Replay, SNAPSHOT_KEY, SnapshotHeader, State, VerifiedSnapshot, WorldlineError,
    WorldlineId, WorldlineLimits, check_state_hash, check_status, commitment_entry,
    commitment_idempotency_key, outcome_entry, outcome_idempotency_key, read_snapshot,
    snapshot_entries,
};

pub use json::receipt_json;
pub use projector::{
    FOLD_BYTES_MAX, FOLD_RECEIPTS_MAX, Kv as DerivedRead, NICE_MAX, PROJECTOR_CACHE_BYTES_DEFAULT,
    PROJECTOR_NICE_DEFAULT, Projector, ProjectorOptions, ProjectorQueue, ProjectorStats,
    RETIRE_AFTER_DEFAULT,
};
pub use query::{Position, WAIT_DEFAULT, WAIT_MAX};
pub(crate) use rpc_projections::Query as ProjectionQuery;
pub use service::WorldlineApi;

use crate::{Ledger, LedgerError};

/// How often an outcome is retried when other writers keep moving the
/// worldline's head between the check and the append.
const CONFLICT_RETRIES_MAX: usize = 64;

/// Entries read per step of a catch-up or replay.
const READ_CHUNK: usize = 1024;

/// Payload bytes read per step at most (always at least one entry): with
/// the chunks a pipelined replay holds in flight, a replay's buffers stay
/// within a few times this, whatever the receipts' sizes.
const READ_CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// Chunks read ahead of a pipelined replay's fold.
const READ_AHEAD: usize = 2;

/// An appended (or retried) receipt.
#[derive(Debug, Clone)]
pub struct AppendedReceipt {
    /// The receipt.
    pub receipt: Receipt,
    /// The entry that holds it.
    pub entry: Arc<Entry>,
    /// A retry: nothing was appended; this is the receipt written first.
    pub duplicate: bool,
}

/// A written (or retried) snapshot.
#[derive(Debug, Clone, Copy)]
pub struct WrittenSnapshot {
    /// Its anchor.
    pub anchor: ReceiptRef,
    /// The state hash the ledger computed at the anchor.
    pub state_hash: Digest,
    /// Sequence of its header entry in the snapshots context.
    pub header_seq: u64,
    /// A retry of a snapshot at the same anchor: nothing was written.
    pub duplicate: bool,
}

/// What a whole-worldline verification found.
#[derive(Debug, Clone)]
pub struct Verified {
    /// Receipts replayed.
    pub receipts: u64,
    /// The head reached.
    pub head: Option<ReceiptRef>,
    /// The state hash at the head.
    pub state_hash: Digest,
    /// Snapshots checked against the replay.
    pub snapshots: u64,
    /// The first receipt (or snapshot header, in the snapshots context)
    /// that breaks a rule, and the error.
    pub failure: Option<(u64, WorldlineError)>,
}

/// A worldline's state as this node last saw it, and the lock that orders
/// this node's checked appends to it.
type Cached = Arc<tokio::sync::Mutex<Option<Replay>>>;

/// The WorldLine profile over a [`Ledger`].
pub struct Worldlines {
    ledger: Arc<Ledger>,
    limits: WorldlineLimits,
    cache: Mutex<Cache>,
    /// Receipts read back from storage to bring cached replays up to a
    /// head before an outcome's check (not counting replays from genesis).
    caught_up: std::sync::atomic::AtomicU64,
    /// Keeps the projections, once [`Worldlines::with_projections`] started it.
    projector: Option<Arc<Projector>>,
}

impl std::fmt::Debug for Worldlines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worldlines")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Cached replays, least recently used evicted first once more than
/// `entries_max` are held or their memory passes `bytes_max` (each
/// replay's state bytes and about 100 bytes per receipt it remembers; a
/// replay in use is never evicted, so one worldline larger than the
/// budget still works, alone).
struct Cache {
    /// Replay, last use, estimated bytes.
    entries: HashMap<WorldlineId, (Cached, u64, u64)>,
    tick: u64,
    entries_max: usize,
    bytes_max: u64,
}

impl Cache {
    fn evict(&mut self) {
        loop {
            let total: u64 = self.entries.values().map(|(_, _, b)| *b).sum();
            if self.entries.len() <= self.entries_max && total <= self.bytes_max {
                return;
            }
            let victim = self
                .entries
                .iter()
                .filter(|(_, (c, _, _))| Arc::strong_count(c) == 1)
                .min_by_key(|(_, (_, used, _))| *used)
                .map(|(w, _)| *w);
            match victim {
                Some(w) => {
                    self.entries.remove(&w);
                }
                None => return,
            }
        }
    }
}

/// Memory a replay holds, estimated: its state and about 100 bytes per
/// receipt (what it remembers of commitments).
fn replay_bytes(replay: &Replay) -> u64 {
    replay.state().bytes() + 100 * replay.seq()
}

/// The status class of a worldline error, as a ledger error.
pub(crate) fn to_ledger(e: WorldlineError) -> LedgerError {
    let message = e.message().to_owned();
    match e.code() {
        ErrorCode::InvalidArgument => LedgerError::InvalidArgument(message),
        ErrorCode::FailedPrecondition => LedgerError::FailedPrecondition(message),
        ErrorCode::NotFound => LedgerError::NotFound(message),
        ErrorCode::AlreadyExists => LedgerError::AlreadyExists(message),
        ErrorCode::ResourceExhausted => LedgerError::ResourceExhausted(message),
        ErrorCode::DataLoss => LedgerError::DataLoss(message),
        _ => LedgerError::Unavailable(message),
    }
}

/// A client's bytes that do not decode are its mistake, never data loss.
fn client_bytes(e: WorldlineError) -> LedgerError {
    match e.code() {
        ErrorCode::DataLoss => LedgerError::InvalidArgument(e.message().to_owned()),
        _ => to_ledger(e),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LedgerError> + Send + 'static,
) -> Result<T, LedgerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| LedgerError::Internal(format!("a worldline task failed: {e}")))?
}

/// Commitments looked up by hash in the store (for replays that start
/// from a snapshot and meet outcomes of earlier commitments).
struct StoreLookup<'a> {
    store: &'a dyn Store,
    limits: &'a WorldlineLimits,
}

impl CommitmentLookup for StoreLookup<'_> {
    fn commitment(
        &self,
        worldline: &WorldlineId,
        hash: &Digest,
    ) -> Result<Option<Receipt>, WorldlineError> {
        receipt_by_hash(self.store, hash, self.limits)
            .map(|r| r.filter(|r| r.worldline == *worldline))
    }
}

fn store_error(e: converge_ledger_store::StoreError) -> WorldlineError {
    match e {
        e @ converge_ledger_store::StoreError::Corrupt { .. } => {
            WorldlineError::corrupt(e.to_string())
        }
        other => WorldlineError::Unavailable {
            message: other.to_string(),
        },
    }
}

/// The receipt with this hash, in whichever worldline.
fn receipt_by_hash(
    store: &dyn Store,
    hash: &Digest,
    limits: &WorldlineLimits,
) -> Result<Option<Receipt>, WorldlineError> {
    let Some((context, seq)) = store.find_by_hash(hash).map_err(store_error)? else {
        return Ok(None);
    };
    let Ok(worldline) = WorldlineId::from_context_id(&context) else {
        return Ok(None);
    };
    let entry = store
        .entry(&context, seq)
        .map_err(store_error)?
        .ok_or_else(|| {
            WorldlineError::corrupt(format!(
                "the hash index names entry {seq} of {context}, which is missing"
            ))
        })?;
    Receipt::from_entry(&worldline, &entry, limits).map(Some)
}

/// Entries `after+1..` of `context`, at most `max` and about
/// [`READ_CHUNK_BYTES`] of payload (always at least one), and the error
/// that ended the scan early, if one did: the entries before it are good.
fn scan_entries(
    store: &dyn Store,
    context: &str,
    after: u64,
    until: u64,
    max: usize,
    key: Option<&str>,
) -> (Vec<Entry>, Result<(), converge_ledger_store::StoreError>) {
    let mut out = Vec::new();
    let mut bytes = 0;
    let scanned = store.scan(context, Scan { after, until, key }, &mut |e| {
        bytes += e.payload.len();
        out.push(e);
        !chunk_full(out.len(), bytes, max)
    });
    (out, scanned)
}

/// Whether a chunk of `len` entries holding `bytes` of payload is as large
/// as [`scan_entries`] makes one: a chunk that is not ended where the store's
/// entries (or the scan's `until`) did.
fn chunk_full(len: usize, bytes: usize, max: usize) -> bool {
    len >= max || bytes >= READ_CHUNK_BYTES
}

/// [`read_entries`], and whether the chunk is full ([`chunk_full`]): when it
/// is not, the store held no more entries up to `until` when it was read.
fn read_chunk(
    store: &dyn Store,
    context: &str,
    after: u64,
    until: u64,
    max: usize,
) -> Result<(Vec<Entry>, bool), WorldlineError> {
    let entries = read_entries(store, context, after, until, max, None)?;
    let bytes = entries.iter().map(|e| e.payload.len()).sum();
    let full = chunk_full(entries.len(), bytes, max);
    Ok((entries, full))
}

/// [`scan_entries`], failing on a store error.
fn read_entries(
    store: &dyn Store,
    context: &str,
    after: u64,
    until: u64,
    max: usize,
    key: Option<&str>,
) -> Result<Vec<Entry>, WorldlineError> {
    let (out, scanned) = scan_entries(store, context, after, until, max, key);
    scanned.map_err(store_error)?;
    Ok(out)
}

/// One step of a replay: the entries after `at` (up to `until`), read and
/// half of them checked ([`ReceiptReader::check`], the others by the fold,
/// see [`checked_here`]), and the error that stopped the step
/// early with the sequence it concerns: an entry that does not check, or
/// none where one must be.
type Step = (Vec<Entry>, Option<(u64, WorldlineError)>);

fn read_step(store: &dyn Store, reader: &ReceiptReader<'_>, at: u64, until: u64) -> Step {
    let (mut entries, scanned) = scan_entries(store, reader.context(), at, until, READ_CHUNK, None);
    // The entries read before one the store could not read are good; the
    // failure names the one after them.
    let mut stopped = scanned.err().map(|e| {
        (
            entries.last().map_or(at, |e| e.sequence) + 1,
            store_error(e),
        )
    });
    if stopped.is_none() && entries.is_empty() {
        let missing = WorldlineError::corrupt(format!(
            "receipt {} of worldline {} is missing (the replay runs to {until})",
            at + 1,
            reader.worldline()
        ));
        stopped = Some((at + 1, missing));
    }
    // The reading side checks every other entry; the folding side checks
    // the rest before it decodes them ([`checked_here`]), so the hashing is
    // shared by both threads of a pipelined replay.
    let bad = entries.iter().enumerate().find_map(|(i, e)| {
        (!checked_here(i))
            .then(|| reader.check(e).err().map(|err| (i, e.sequence, err)))
            .flatten()
    });
    if let Some((i, seq, err)) = bad {
        entries.truncate(i);
        stopped = Some((seq, err));
    }
    (entries, stopped)
}

/// Whether the entry at `index` of a step is checked ([`ReceiptReader::check`])
/// by the folding side rather than the reading side: every other one. The
/// folding side meets the entries in order, so the first entry that fails
/// either side's check is still the one reported.
fn checked_here(index: usize) -> bool {
    index % 2 == 1
}

/// Feeds the receipts `after+1 ..= until` of `reader`'s worldline, in
/// order, to `apply`; stops at the first error, with the sequence it
/// concerns. Long ranges are pipelined over two threads: a second thread
/// reads the store and recomputes every other hash up to [`READ_AHEAD`]
/// steps ahead, while this one recomputes the other hashes, decodes each
/// receipt and folds it; so split, the two halves cost about the same.
fn fold_receipts(
    store: &dyn Store,
    reader: &ReceiptReader<'_>,
    after: u64,
    until: u64,
    mut apply: impl FnMut(&Receipt) -> Result<(), WorldlineError>,
) -> Result<(), (u64, WorldlineError)> {
    let mut feed = |(entries, stopped): Step| -> Result<u64, (u64, WorldlineError)> {
        let mut last = None;
        for (i, e) in entries.iter().enumerate() {
            if checked_here(i) {
                reader.check(e).map_err(|err| (e.sequence, err))?;
            }
            reader
                .decode_checked(e)
                .and_then(|r| apply(&r))
                .map_err(|err| (e.sequence, err))?;
            last = Some(e.sequence);
        }
        match stopped {
            Some(e) => Err(e),
            None => Ok(last.expect("a step without an error holds an entry")),
        }
    };
    let in_turn = |feed: &mut dyn FnMut(Step) -> Result<u64, (u64, WorldlineError)>| {
        let mut at = after;
        while at < until {
            at = feed(read_step(store, reader, at, until))?;
        }
        Ok(())
    };
    if until.saturating_sub(after) <= READ_CHUNK as u64 {
        return in_turn(&mut feed);
    }
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Step>(READ_AHEAD);
        let spawned = std::thread::Builder::new()
            .name("worldline-read".to_owned())
            .spawn_scoped(scope, move || {
                let mut at = after;
                while at < until {
                    let step = read_step(store, reader, at, until);
                    let next = match (&step.1, step.0.last()) {
                        (None, Some(e)) => Some(e.sequence),
                        _ => None,
                    };
                    // A closed channel: the fold stopped at an error.
                    if tx.send(step).is_err() {
                        return;
                    }
                    match next {
                        Some(n) => at = n,
                        None => return,
                    }
                }
            });
        if spawned.is_err() {
            // No second thread to be had: read and fold in turn.
            return in_turn(&mut feed);
        }
        // Ends when the reader is done; a reader that panicked ends it
        // early, and the scope then re-raises the panic.
        for step in rx {
            feed(step)?;
        }
        Ok(())
    })
}

/// Feeds receipts `replay.seq()+1 ..= until` from the store into `replay`.
fn advance(
    store: &dyn Store,
    replay: &mut Replay,
    until: u64,
    limits: &WorldlineLimits,
) -> Result<(), WorldlineError> {
    let worldline = *replay.worldline();
    let lookup = StoreLookup { store, limits };
    let reader = ReceiptReader::new(worldline, limits);
    let after = replay.seq();
    fold_receipts(store, &reader, after, until, |r| replay.apply(r, &lookup)).map_err(|(_, e)| e)
}

/// The snapshot headers of a worldline: (anchor seq, header seq), in
/// snapshots-context order.
fn snapshot_headers(
    store: &dyn Store,
    worldline: &WorldlineId,
    limits: &WorldlineLimits,
) -> Result<Vec<(SnapshotHeader, u64)>, WorldlineError> {
    let context = worldline.snapshots_context_id();
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let entries = read_entries(
            store,
            &context,
            after,
            u64::MAX,
            READ_CHUNK,
            Some(SNAPSHOT_KEY),
        )?;
        let Some(last) = entries.last() else {
            return Ok(out);
        };
        after = last.sequence;
        for e in &entries {
            let header = SnapshotHeader::decode(&e.payload, limits).map_err(|err| {
                err.in_stored(format!(
                    "snapshot header {} of worldline {worldline}",
                    e.sequence
                ))
            })?;
            out.push((header, e.sequence));
        }
    }
}

/// The snapshot whose header is entry `header_seq`, read and verified.
fn load_snapshot(
    store: &dyn Store,
    worldline: &WorldlineId,
    header_seq: u64,
    chunk_count: u32,
    limits: &WorldlineLimits,
) -> Result<VerifiedSnapshot, WorldlineError> {
    let context = worldline.snapshots_context_id();
    let count = 1 + chunk_count as u64;
    let entries = read_entries(
        store,
        &context,
        header_seq - 1,
        header_seq + count - 1,
        count as usize,
        None,
    )?;
    read_snapshot(worldline, &entries, limits)
}

/// A replay positioned after receipt `seq`: from the latest snapshot
/// anchored at or before it (verified, and its anchor checked against the
/// stored receipt), else from genesis.
fn replay_to(
    store: &dyn Store,
    worldline: &WorldlineId,
    seq: u64,
    limits: &WorldlineLimits,
) -> Result<Replay, WorldlineError> {
    let best = snapshot_headers(store, worldline, limits)?
        .into_iter()
        .filter(|(h, _)| h.anchor_seq <= seq)
        .max_by_key(|(h, header_seq)| (h.anchor_seq, *header_seq));
    let mut replay = match best {
        Some((header, header_seq)) => {
            let snapshot = load_snapshot(store, worldline, header_seq, header.chunk_count, limits)?;
            let context = worldline.context_id();
            let anchor = store
                .entry(&context, header.anchor_seq)
                .map_err(store_error)?
                .ok_or_else(|| {
                    WorldlineError::corrupt(format!(
                        "a snapshot of worldline {worldline} is anchored at receipt {}, which is missing",
                        header.anchor_seq
                    ))
                })?;
            let anchor = Receipt::from_entry(worldline, &anchor, limits)?;
            snapshot.check_anchor(&anchor.reference())?;
            Replay::from_snapshot(snapshot, limits.clone())
        }
        None => Replay::genesis(*worldline, limits.clone()),
    };
    advance(store, &mut replay, seq, limits)?;
    Ok(replay)
}

impl Worldlines {
    /// The profile over `ledger`, enforcing `limits`.
    pub fn new(ledger: Arc<Ledger>, limits: WorldlineLimits) -> Result<Worldlines, LedgerError> {
        limits.check().map_err(to_ledger)?;
        Ok(Worldlines {
            ledger,
            limits,
            cache: Mutex::new(Cache {
                entries: HashMap::new(),
                tick: 0,
                entries_max: 1024,
                bytes_max: 256 * 1024 * 1024,
            }),
            caught_up: std::sync::atomic::AtomicU64::new(0),
            projector: None,
        })
    }

    /// The same, keeping the projections (seed 4.6) up to date in the
    /// store's derived space from now on: every receipt committed here or
    /// announced by another node is folded in. A store without a derived
    /// space serves no projections (their queries say so). Call
    /// [`Worldlines::stop_projections`] before closing the store.
    ///
    /// The projector thread runs [`PROJECTOR_NICE_DEFAULT`] steps below the
    /// server's priority; [`Worldlines::with_projections_at`] chooses.
    pub fn with_projections(self) -> Worldlines {
        self.with_projections_at(PROJECTOR_NICE_DEFAULT)
    }

    /// [`Worldlines::with_projections`], with the projector thread `nice`
    /// steps of niceness below the server's (0: the same priority).
    pub fn with_projections_at(self, nice: i32) -> Worldlines {
        self.with_projector(ProjectorOptions {
            nice,
            ..ProjectorOptions::default()
        })
    }

    /// [`Worldlines::with_projections`], the projector run as `options`
    /// say.
    pub fn with_projector(mut self, options: ProjectorOptions) -> Worldlines {
        if let Some(p) = Projector::start(self.ledger.store().clone(), self.limits.clone(), options)
        {
            let p = Arc::new(p);
            let tap = Arc::downgrade(&p);
            self.ledger
                .tap_appended(Arc::new(move |context: &str, through: Option<u64>| {
                    if let Some(p) = tap.upgrade() {
                        p.notify_context(context, through);
                    }
                }));
            self.projector = Some(p);
        }
        self
    }

    /// The projector, when projections are kept.
    pub fn projector(&self) -> Option<&Arc<Projector>> {
        self.projector.as_ref()
    }

    /// Stops keeping projections and waits for the fold in progress, so
    /// the store is no longer written by them.
    pub async fn stop_projections(&self) {
        if let Some(p) = self.projector.clone() {
            let _ = tokio::task::spawn_blocking(move || p.stop()).await;
        }
    }

    /// The same, caching replays in at most `bytes` of memory (256 MiB by
    /// default).
    pub fn with_cache_bytes(self, bytes: u64) -> Worldlines {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .bytes_max = bytes;
        self
    }

    /// The limits enforced.
    pub fn limits(&self) -> &WorldlineLimits {
        &self.limits
    }

    /// The ledger below.
    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    fn cached(&self, worldline: &WorldlineId) -> Cached {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.tick += 1;
        let tick = cache.tick;
        if let Some((c, used, _)) = cache.entries.get_mut(worldline) {
            *used = tick;
            return c.clone();
        }
        let c: Cached = Arc::default();
        cache.entries.insert(*worldline, (c.clone(), tick, 0));
        cache.evict();
        c
    }

    /// Records what `worldline`'s replay holds now, evicting others if the
    /// cache is over its budget.
    fn note_bytes(&self, worldline: &WorldlineId, bytes: u64) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, _, b)) = cache.entries.get_mut(worldline) {
            *b = bytes;
        }
        cache.evict();
    }

    /// Brings `slot` up to the worldline's stored head; returns the head.
    async fn catch_up(
        &self,
        worldline: &WorldlineId,
        slot: &mut Option<Replay>,
    ) -> Result<u64, LedgerError> {
        let head = self
            .ledger
            .head(&worldline.context_id())
            .await?
            .map_or(0, |h| h.sequence);
        if slot.as_ref().is_some_and(|r| r.seq() == head) {
            return Ok(head);
        }
        let store = self.ledger.store().clone();
        let limits = self.limits.clone();
        let w = *worldline;
        let current = slot.take();
        let replay = blocking(move || {
            let (mut replay, cached) = match current {
                Some(r) if r.seq() <= head => (r, true),
                _ => (
                    replay_to(&*store, &w, 0, &limits).map_err(to_ledger)?,
                    false,
                ),
            };
            let from = replay.seq();
            advance(&*store, &mut replay, head, &limits).map_err(to_ledger)?;
            Ok((replay, if cached { head - from } else { 0 }))
        })
        .await?;
        let (replay, read_back) = replay;
        self.caught_up
            .fetch_add(read_back, std::sync::atomic::Ordering::Relaxed);
        self.note_bytes(worldline, replay_bytes(&replay));
        *slot = Some(replay);
        Ok(head)
    }

    /// Receipts read back from storage to bring a cached replay up to its
    /// worldline's head before an outcome's check (replays from genesis
    /// not counted): receipts another node appended, or this node's when
    /// the replay was busy as they were appended.
    pub fn caught_up_receipts(&self) -> u64 {
        self.caught_up.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Moves `worldline`'s cached replay over a receipt this node just
    /// appended, when the replay stands right before it and no check holds
    /// it: the commitment's outcome then finds the replay at the head and
    /// checks without reading the commitment back from storage (and
    /// without a blocking thread's hand-off). Otherwise, or should the
    /// receipt not apply, the next check catches up from storage.
    fn advance_cached(&self, worldline: &WorldlineId, appended: &AppendedReceipt) {
        let cached = {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            match cache.entries.get(worldline) {
                Some((c, _, _)) => c.clone(),
                None => return,
            }
        };
        let Ok(mut slot) = cached.try_lock() else {
            return;
        };
        let Some(replay) = slot.as_mut() else {
            return;
        };
        if replay.seq().checked_add(1) != Some(appended.entry.sequence) {
            return;
        }
        let applied = replay.apply(
            &appended.receipt,
            &StoreLookup {
                store: &**self.ledger.store(),
                limits: &self.limits,
            },
        );
        let bytes = match applied {
            Ok(()) => replay_bytes(replay),
            Err(_) => {
                *slot = None;
                return;
            }
        };
        drop(slot);
        self.note_bytes(worldline, bytes);
    }

    fn receipt_of(&self, worldline: &WorldlineId, entry: &Entry) -> Result<Receipt, LedgerError> {
        Receipt::from_entry(worldline, entry, &self.limits).map_err(to_ledger)
    }

    /// The receipt of a one-entry batch's outcome: `None` for a conflict
    /// or a head mismatch, which the caller interprets.
    fn single(
        &self,
        worldline: &WorldlineId,
        outcome: &WriteOutcome,
    ) -> Result<Option<AppendedReceipt>, LedgerError> {
        let (entries, duplicate) = match outcome {
            WriteOutcome::AppendedBatch(e) => (e, false),
            WriteOutcome::DuplicateBatch(e) => (e, true),
            WriteOutcome::IdempotencyConflict { .. } | WriteOutcome::SequenceMismatch { .. } => {
                return Ok(None);
            }
            other => {
                return Err(LedgerError::Internal(format!(
                    "unexpected write outcome {other:?} for a receipt"
                )));
            }
        };
        let [entry] = entries.as_slice() else {
            return Err(LedgerError::Internal(format!(
                "a receipt append returned {} entries",
                entries.len()
            )));
        };
        Ok(Some(AppendedReceipt {
            receipt: self.receipt_of(worldline, entry)?,
            entry: entry.clone(),
            duplicate,
        }))
    }

    /// Appends a decided commitment (idempotent on its commitment id).
    pub async fn append_commitment(
        &self,
        worldline: &WorldlineId,
        commitment: &Commitment,
    ) -> Result<AppendedReceipt, LedgerError> {
        let new = commitment_entry(commitment, &self.limits).map_err(client_bytes)?;
        let outcome = self
            .ledger
            .submit_reserved(BatchCommand {
                context: worldline.context_id(),
                entries: vec![new],
                idempotency_key: Some(commitment_idempotency_key(&commitment.commitment_id)),
                expected_sequence: None,
            })
            .await?;
        if let Some(appended) = self.single(worldline, &outcome)? {
            self.advance_cached(worldline, &appended);
            return Ok(appended);
        }
        match outcome {
            WriteOutcome::IdempotencyConflict { sequence } => {
                Err(LedgerError::AlreadyExists(format!(
                    "commitment id {} names receipt {sequence} of worldline {worldline}, with other \
                     content; a retry must send the same commitment, a new commitment needs a new id",
                    commitment.commitment_id
                )))
            }
            other => Err(LedgerError::Internal(format!(
                "unexpected write outcome {other:?} for a commitment"
            ))),
        }
    }

    /// Appends the outcome of a commitment: at most one per commitment,
    /// atomically (an identical retry returns the first receipt).
    pub async fn append_outcome(
        &self,
        worldline: &WorldlineId,
        outcome: &Outcome,
    ) -> Result<AppendedReceipt, LedgerError> {
        let new = outcome_entry(outcome, &self.limits).map_err(client_bytes)?;
        let key = outcome_idempotency_key(&outcome.commitment);
        let context = worldline.context_id();
        let cached = self.cached(worldline);
        let mut slot = cached.lock().await;
        for _ in 0..CONFLICT_RETRIES_MAX {
            let head = self.catch_up(worldline, &mut slot).await?;
            let replay = slot.as_ref().ok_or_else(|| {
                LedgerError::Internal("a caught-up worldline has no replay".into())
            })?;
            // The cached replay started at genesis: it has met every
            // commitment of this worldline up to the head, and knows its
            // decision.
            let Some((accepted, _)) = replay.commitment_status(&outcome.commitment) else {
                return Err(LedgerError::NotFound(format!(
                    "worldline {worldline} has no commitment receipt with hash {}; an outcome \
                     names a commitment of its own worldline",
                    outcome.commitment
                )));
            };
            check_status(accepted, &outcome.status).map_err(to_ledger)?;
            let fits = match &outcome.status {
                OutcomeStatus::Succeeded => replay
                    .state()
                    .check_updates(&outcome.state_updates, &self.limits),
                _ => Ok(()),
            };
            // An outcome past the state limit may still be a retry of one
            // appended before the state grew: a write conditional on a head
            // that cannot be tells (the store checks the key first).
            let expected = if fits.is_ok() { head } else { u64::MAX };
            let written = self
                .ledger
                .submit_reserved(BatchCommand {
                    context: context.clone(),
                    entries: vec![new.clone()],
                    idempotency_key: Some(key.clone()),
                    expected_sequence: Some(expected),
                })
                .await?;
            if let Some(appended) = self.single(worldline, &written)? {
                if !appended.duplicate
                    && let Some(replay) = slot.as_mut()
                {
                    let applied = replay.apply(
                        &appended.receipt,
                        &StoreLookup {
                            store: &**self.ledger.store(),
                            limits: &self.limits,
                        },
                    );
                    if applied.is_err() {
                        // Caught up again from storage on the next use.
                        *slot = None;
                    }
                }
                return Ok(appended);
            }
            match written {
                WriteOutcome::IdempotencyConflict { sequence } => {
                    return Err(LedgerError::AlreadyExists(format!(
                        "commitment {} already has its outcome, receipt {sequence} of worldline \
                         {worldline}; a commitment has one outcome (a retry must send the same one)",
                        outcome.commitment
                    )));
                }
                WriteOutcome::SequenceMismatch { .. } => {
                    if let Err(e) = fits {
                        return Err(to_ledger(e));
                    }
                    // Another writer moved the head: catch up, check again.
                }
                other => {
                    return Err(LedgerError::Internal(format!(
                        "unexpected write outcome {other:?} for an outcome"
                    )));
                }
            }
        }
        Err(LedgerError::Unavailable(format!(
            "worldline {worldline} kept changing under {CONFLICT_RETRIES_MAX} attempts to append \
             the outcome; nothing was appended, retry"
        )))
    }

    /// Appends the rejection outcome of a rejected commitment.
    pub async fn append_rejection_outcome(
        &self,
        worldline: &WorldlineId,
        commitment: &Digest,
        reporter: &str,
    ) -> Result<AppendedReceipt, LedgerError> {
        self.append_outcome(worldline, &Outcome::rejection(*commitment, reporter))
            .await
    }

    /// The state after receipt `seq` (by replay from the nearest snapshot),
    /// and that receipt.
    pub async fn state_at(
        &self,
        worldline: &WorldlineId,
        seq: u64,
    ) -> Result<(State, Option<ReceiptRef>), LedgerError> {
        let store = self.ledger.store().clone();
        let limits = self.limits.clone();
        let w = *worldline;
        blocking(move || {
            let replay = replay_to(&*store, &w, seq, &limits).map_err(to_ledger)?;
            let head = replay.head();
            Ok((replay.into_state(), head))
        })
        .await
    }

    /// Snapshots the state after `anchor`, computed by the ledger (L5);
    /// `expected_state_hash` is only compared. A retry at the same anchor
    /// writes nothing.
    pub async fn append_snapshot(
        &self,
        anchor: &ReceiptRef,
        expected_state_hash: Option<&Digest>,
    ) -> Result<WrittenSnapshot, LedgerError> {
        let w = anchor.worldline;
        let head = self
            .ledger
            .head(&w.context_id())
            .await?
            .map_or(0, |h| h.sequence);
        if anchor.seq == 0 || anchor.seq > head {
            return Err(to_ledger(WorldlineError::SnapshotMismatch {
                message: format!(
                    "worldline {w} has receipts 1..={head}; a snapshot is anchored at one of them, not at {}",
                    anchor.seq
                ),
            }));
        }
        let (state, at) = self.state_at(&w, anchor.seq).await?;
        let at = at.ok_or_else(|| {
            LedgerError::Internal(format!("a replay to receipt {} reached none", anchor.seq))
        })?;
        if at.receipt_hash != anchor.receipt_hash {
            return Err(to_ledger(WorldlineError::SnapshotMismatch {
                message: format!(
                    "receipt {} of worldline {w} has hash {}, not {}",
                    anchor.seq, at.receipt_hash, anchor.receipt_hash
                ),
            }));
        }
        let state_hash = state.hash();
        if let Some(expected) = expected_state_hash {
            check_state_hash(anchor.seq, expected, &state_hash).map_err(to_ledger)?;
        }
        let batch = snapshot_entries(anchor, &state, &self.limits).map_err(to_ledger)?;
        drop(state);
        let written = self
            .ledger
            .submit_reserved(BatchCommand {
                context: w.snapshots_context_id(),
                entries: batch.entries,
                idempotency_key: Some(format!("wll.snapshot/{}", anchor.receipt_hash.to_hex())),
                expected_sequence: None,
            })
            .await?;
        let (first, duplicate) = match &written {
            WriteOutcome::AppendedBatch(e) => (e.first(), false),
            WriteOutcome::DuplicateBatch(e) => (e.first(), true),
            // The same anchor has one state, so one snapshot: a conflict
            // means the stored one is not what the ledger computes now.
            WriteOutcome::IdempotencyConflict { sequence } => {
                return Err(LedgerError::DataLoss(format!(
                    "the snapshot of worldline {w} at receipt {} (header {sequence}) differs from \
                     the state replay computes there",
                    anchor.seq
                )));
            }
            other => {
                return Err(LedgerError::Internal(format!(
                    "unexpected write outcome {other:?} for a snapshot"
                )));
            }
        };
        let header_seq = first
            .map(|e| e.sequence)
            .ok_or_else(|| LedgerError::Internal("a snapshot of no entries".into()))?;
        Ok(WrittenSnapshot {
            anchor: *anchor,
            state_hash,
            header_seq,
            duplicate,
        })
    }

    /// The last receipt of `worldline`.
    pub async fn head(&self, worldline: &WorldlineId) -> Result<Option<ReceiptRef>, LedgerError> {
        let head = self.ledger.head(&worldline.context_id()).await?;
        Ok(head.filter(|h| h.sequence > 0).map(|h| ReceiptRef {
            worldline: *worldline,
            seq: h.sequence,
            receipt_hash: h.hash,
        }))
    }

    /// Receipts `from..=to`, at most `max_entries` and about `max_bytes`
    /// (always at least one).
    pub async fn read_range(
        &self,
        worldline: &WorldlineId,
        from: u64,
        to: u64,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Vec<(Receipt, Entry)>, LedgerError> {
        converge_ledger_worldline::check_range(from, to).map_err(to_ledger)?;
        let (entries, _) = self
            .ledger
            .read_chunk(
                &worldline.context_id(),
                from - 1,
                to,
                None,
                max_entries,
                max_bytes,
            )
            .await?;
        entries
            .into_iter()
            .map(|e| Ok((self.receipt_of(worldline, &e)?, e)))
            .collect()
    }

    /// The receipt with this hash, in whichever worldline, and its entry.
    pub async fn get_by_hash(&self, hash: &Digest) -> Result<Option<Receipt>, LedgerError> {
        let store = self.ledger.store().clone();
        let limits = self.limits.clone();
        let h = *hash;
        blocking(move || receipt_by_hash(&*store, &h, &limits).map_err(to_ledger)).await
    }

    /// Worldlines with a receipt, in id order, after `after`, at most
    /// `limit`, those `visible` admits; with their heads.
    pub async fn worldlines(
        &self,
        after: Option<&WorldlineId>,
        limit: usize,
        visible: impl Fn(&str) -> bool + Send + Sync + 'static,
    ) -> Result<Vec<ReceiptRef>, LedgerError> {
        let limit = limit.clamp(1, converge_ledger_worldline::PAGE_ITEMS_MAX);
        let mut cursor = after.map_or_else(
            || converge_ledger_worldline::NAMESPACE.to_owned(),
            |w| w.context_id(),
        );
        let mut out = Vec::new();
        let visible = Arc::new(visible);
        while out.len() < limit {
            let v = visible.clone();
            let page = self
                .ledger
                .list_contexts(&cursor, limit, move |c| {
                    // Receipt contexts only (not their snapshots), and
                    // only inside the namespace.
                    WorldlineId::from_context_id(c).is_ok() && v(c)
                })
                .await?;
            let Some((last, _)) = page.last() else { break };
            let next = last.clone();
            for (context, head) in page {
                if out.len() < limit
                    && let Ok(w) = WorldlineId::from_context_id(&context)
                {
                    out.push(ReceiptRef {
                        worldline: w,
                        seq: head.sequence,
                        receipt_hash: head.hash,
                    });
                }
            }
            if !next.starts_with(converge_ledger_worldline::NAMESPACE) {
                break;
            }
            cursor = next;
        }
        Ok(out)
    }

    /// Replays a whole worldline from genesis, checking every rule and
    /// every snapshot against the replay.
    pub async fn verify(&self, worldline: &WorldlineId) -> Result<Verified, LedgerError> {
        let head = self
            .ledger
            .head(&worldline.context_id())
            .await?
            .map_or(0, |h| h.sequence);
        let store = self.ledger.store().clone();
        let limits = self.limits.clone();
        let w = *worldline;
        blocking(move || Ok(verify_blocking(&*store, &w, head, &limits))).await
    }
}

fn verify_blocking(
    store: &dyn Store,
    worldline: &WorldlineId,
    head: u64,
    limits: &WorldlineLimits,
) -> Verified {
    let mut replay = Replay::genesis(*worldline, limits.clone());
    let mut verified = Verified {
        receipts: 0,
        head: None,
        state_hash: replay.state_hash(),
        snapshots: 0,
        failure: None,
    };
    let headers = match snapshot_headers(store, worldline, limits) {
        Ok(h) => h,
        Err(e) => {
            verified.failure = Some((0, e));
            return verified;
        }
    };
    let mut by_anchor: Vec<(SnapshotHeader, u64)> = headers;
    by_anchor.sort_by_key(|(h, seq)| (h.anchor_seq, *seq));
    let mut next = 0;
    let check_snapshots = |replay: &Replay, next: &mut usize, verified: &mut Verified| {
        while let Some((header, header_seq)) = by_anchor.get(*next) {
            if header.anchor_seq > replay.seq() {
                break;
            }
            *next += 1;
            let checked = load_snapshot(store, worldline, *header_seq, header.chunk_count, limits)
                .and_then(|s| {
                    let at = replay.head().ok_or_else(|| {
                        WorldlineError::corrupt("a snapshot anchored at receipt 0".to_owned())
                    })?;
                    s.check_anchor(&at)?;
                    s.check_state_hash(&replay.state_hash())
                        .map_err(|e| WorldlineError::corrupt(e.message().to_owned()))
                });
            match checked {
                Ok(()) => verified.snapshots += 1,
                Err(e) => {
                    verified.failure = Some((
                        *header_seq,
                        WorldlineError::corrupt(format!(
                            "snapshot header {header_seq} (anchored at receipt {}): {}",
                            header.anchor_seq,
                            e.message()
                        )),
                    ));
                    return;
                }
            }
        }
    };
    let reader = ReceiptReader::new(*worldline, limits);
    let folded = fold_receipts(store, &reader, 0, head, |r| {
        replay.apply(r, &converge_ledger_worldline::NoLookup)?;
        verified.receipts += 1;
        check_snapshots(&replay, &mut next, &mut verified);
        match &verified.failure {
            // Stops the fold; the failure names the snapshot, not this receipt.
            Some((_, e)) => Err(e.clone()),
            None => Ok(()),
        }
    });
    if let Err(failure) = folded
        && verified.failure.is_none()
    {
        verified.failure = Some(failure);
    }
    if verified.failure.is_none()
        && let Some((header, header_seq)) = by_anchor.get(next)
    {
        verified.failure = Some((
            *header_seq,
            WorldlineError::corrupt(format!(
                "snapshot header {header_seq} is anchored at receipt {}, past the head {}",
                header.anchor_seq,
                replay.seq()
            )),
        ));
    }
    verified.head = replay.head();
    verified.state_hash = replay.state_hash();
    verified
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(entries_max: usize, bytes_max: u64) -> Cache {
        Cache {
            entries: HashMap::new(),
            tick: 0,
            entries_max,
            bytes_max,
        }
    }

    #[test]
    fn the_replay_cache_evicts_the_least_recently_used_replays_nobody_holds() {
        let mut c = cache(2, 1000);
        let ids: Vec<WorldlineId> = (0..4u8).map(|i| WorldlineId([i; 32])).collect();
        let held: Cached = Arc::default();
        c.entries.insert(ids[0], (held.clone(), 1, 10));
        c.entries.insert(ids[1], (Arc::default(), 2, 10));
        c.entries.insert(ids[2], (Arc::default(), 3, 10));
        c.evict();
        // Over the count: the oldest unheld one (1) goes, the held oldest stays.
        assert!(c.entries.contains_key(&ids[0]) && !c.entries.contains_key(&ids[1]));
        assert_eq!(c.entries.len(), 2);
        // Over the bytes: unheld ones go until under, the held one stays
        // even alone over the budget.
        c.entries.insert(ids[3], (Arc::default(), 4, 600));
        if let Some(e) = c.entries.get_mut(&ids[0]) {
            e.2 = 2000;
        }
        c.evict();
        assert_eq!(c.entries.len(), 1);
        assert!(c.entries.contains_key(&ids[0]));
        drop(held);
        c.evict();
        assert!(c.entries.is_empty());
    }
}
