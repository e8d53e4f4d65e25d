//! The projections served (seed 4.6): folded incrementally as receipts
//! arrive, into the store's derived key-value space, each write guarded by
//! the checkpoints it started from.
//!
//! One projector thread per node takes worldlines from a queue (a receipt
//! appended here or announced by another node, a query that found a
//! projection behind, the start-up sweep), reads the receipts after the
//! lowest of the four checkpoints, folds up to [`FOLD_RECEIPTS_MAX`] of them
//! (or [`FOLD_BYTES_MAX`] of writes) into one batch with every projection's
//! checkpoint, and writes it if the checkpoints are still the ones it read.
//! A node that lost that race (another node folded the same receipts)
//! reads again and finds them folded. Nothing is recomputed from genesis
//! unless the derived space is empty, and a restart resumes after the last
//! receipt whose writes are stored.
//!
//! Queries read the derived space directly. A query that needs several
//! reads is checked like a seqlock: the projection's checkpoint is read
//! before and after, and the query is run again if a write moved it in
//! between, so every answer is one consistent position.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use converge_ledger_core::Entry;
use converge_ledger_store::Store;
use converge_ledger_store::derived::{DerivedKv, DerivedWrite, Guard};
use converge_ledger_store::stats::{Histogram, SECONDS_BOUNDS};
use converge_ledger_worldline::{
    Direction, ErrorCode, KvBatch, KvPair, KvRead, Projection, ReceiptReader, SERVING_KEY, Serving,
    WorldlineError, WorldlineId, WorldlineLimits, projections, stored_keys,
};
use converge_ledger_worldline::{
    ProjectionCheckpoint, StoredServing, apply_receipt, checkpoint_key, read_checkpoint,
};

use super::{READ_CHUNK, read_chunk, store_error};

/// How much lower than the server's own the projector thread's scheduling
/// priority is by default (a niceness added to the process's). Folding is
/// deferred work: at a lower priority it runs in the time the appends leave
/// (their fsync waits, their idle moments) instead of taking a core from
/// them, and catches up as soon as they pause (BENCHMARKS.md, WorldLine).
/// Not lower: fjall's flushes and compactions run at the server's priority,
/// and behind them a projector at 10 left queries waiting over 10 ms for
/// their `min_seq` right after a large load.
pub const PROJECTOR_NICE_DEFAULT: i32 = 5;
/// Bytes of projection records the projector keeps in memory between
/// folds by default ([`FoldCache`]).
pub const PROJECTOR_CACHE_BYTES_DEFAULT: usize = 64 << 20;
/// The highest niceness Linux has.
pub const NICE_MAX: i32 = 19;
/// How long a retired projection version's records are kept after the
/// queries moved to its successor, by default: the time a rolling upgrade
/// has to replace the nodes of the earlier release, which still answer
/// from it (and fold it).
pub const RETIRE_AFTER_DEFAULT: Duration = Duration::from_secs(3600);

/// How a projector runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProjectorOptions {
    /// Steps of niceness below the server's (0: the same priority; at most
    /// [`NICE_MAX`] in all).
    pub nice: i32,
    /// How long a retired projection version's records are kept after the
    /// switch before they are deleted.
    pub retire_after: Duration,
    /// Bytes of projection records the projector keeps in memory between
    /// folds, about, at most (0: none). Used only where every read is a
    /// round trip ([`DerivedKv::reads_are_round_trips`]) unless
    /// `cache_on_any_store`.
    pub cache_bytes: usize,
    /// Keep records in memory on every store, also where a read costs what
    /// remembering it does (embedded, memory storage: no gain measured).
    /// For tests that race projectors with the cache on.
    pub cache_on_any_store: bool,
}

impl Default for ProjectorOptions {
    fn default() -> Self {
        ProjectorOptions {
            nice: PROJECTOR_NICE_DEFAULT,
            retire_after: RETIRE_AFTER_DEFAULT,
            cache_bytes: PROJECTOR_CACHE_BYTES_DEFAULT,
            cache_on_any_store: false,
        }
    }
}

/// Receipts folded into one write at most.
pub const FOLD_RECEIPTS_MAX: usize = 1024;
/// Receipts a rebuilding projection version folds per step: a fold of new
/// receipts waits for at most one step (a few milliseconds).
pub const REBUILD_STEP_RECEIPTS: usize = 128;
/// Bytes of projection writes in one batch, about (a batch is closed after
/// the receipt that passes this).
pub const FOLD_BYTES_MAX: usize = 4 * 1024 * 1024;
/// How long after it last read a worldline's serving record and
/// checkpoints a projector that remembers the worldline starts its folds
/// from what its own writes left, without reading them again (each read a
/// round trip on PostgreSQL). The write is guarded by the checkpoints, so
/// a fold from checkpoints another node has moved stores nothing and reads
/// them; reading them again at least this often lets a node see a
/// projection version another node began to rebuild.
const ASSUME_START_FOR: Duration = Duration::from_millis(250);
/// How often a fold whose guard keeps failing is retried before the
/// worldline goes back to the queue.
const GUARD_RETRIES_MAX: usize = 16;
/// How long a worldline whose storage was unavailable waits before it is
/// folded again.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Keys of a retired projection version deleted per write.
const RETIRE_KEYS_PER_WRITE: usize = 1024;
/// How often a projection version that rebuilds is checked for having
/// caught up everywhere, while the projector has nothing queued.
const SWITCH_CHECK_EVERY: Duration = Duration::from_millis(200);
/// Maintenance that came due runs after this long even while worldlines
/// keep the queue busy.
const MAINTAIN_STARVED: Duration = Duration::from_secs(1);

/// What one [`Folder::fold`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Folded {
    /// Receipts folded into the versions queries read.
    live: u64,
    /// When the oldest of them was appended (ns since the Unix epoch, by
    /// the appending node's clock).
    oldest_appended_ns: Option<u64>,
    /// When the last of them were stored: by this node's monotonic clock,
    /// and its wall clock (ns since the Unix epoch).
    stored: Option<(Instant, u64)>,
}

impl Folded {
    /// How long the receipts folded into the versions queries read waited
    /// to be stored: from `queued` (when their worldline was queued), else
    /// from the oldest one's append. `None` when there were none, or when
    /// that append lies ahead of this node's wall clock (clocks disagree:
    /// no honest sample).
    fn waited(&self, queued: Option<Instant>) -> Option<Duration> {
        let (at, wall_ns) = self.stored.filter(|_| self.live > 0)?;
        match (queued, self.oldest_appended_ns) {
            (Some(queued), _) => Some(at.saturating_duration_since(queued)),
            (None, Some(ns)) if ns <= wall_ns => Some(Duration::from_nanos(wall_ns - ns)),
            _ => None,
        }
    }
}

/// The derived space, as the projections read it.
pub struct Kv<'a>(pub &'a dyn DerivedKv);

impl KvRead for Kv<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, WorldlineError> {
        self.0.get(key).map_err(store_error)
    }

    fn get_many(&self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, WorldlineError> {
        let values = self.0.get_many(keys).map_err(store_error)?;
        if values.len() != keys.len() {
            return Err(WorldlineError::corrupt(format!(
                "the derived store answered {} values for {} keys",
                values.len(),
                keys.len()
            )));
        }
        Ok(values)
    }

    fn range(
        &self,
        start: &[u8],
        end: &[u8],
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<KvPair>, WorldlineError> {
        self.0
            .range(start, end, direction == Direction::Backward, limit)
            .map_err(store_error)
    }
}

/// Counters of the projector, for metrics and tests.
#[derive(Debug)]
pub struct ProjectorStats {
    /// Receipts folded (by this node).
    pub receipts: AtomicU64,
    /// Guarded writes that found a checkpoint moved (another node won).
    pub conflicts: AtomicU64,
    /// Batches written.
    pub writes: AtomicU64,
    /// Per fold that found receipts to fold: seconds from the worldline
    /// being queued (its receipts committed, announced or swept) to its
    /// projections stored up to the head the fold saw.
    pub lag_seconds: Histogram,
    /// Projection versions this node switched the queries to, once they
    /// had caught up with the version they replace.
    pub switches: AtomicU64,
    /// Keys of retired projection versions this node deleted.
    pub retired_keys: AtomicU64,
    /// Projections answered from an older version while their current one
    /// rebuilds, as this node last read the serving record.
    pub rebuilding: AtomicU64,
}

impl Default for ProjectorStats {
    fn default() -> Self {
        ProjectorStats {
            receipts: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            lag_seconds: Histogram::new(SECONDS_BOUNDS),
            switches: AtomicU64::new(0),
            retired_keys: AtomicU64::new(0),
            rebuilding: AtomicU64::new(0),
        }
    }
}

/// How many worldlines the projector has in each state, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProjectorQueue {
    /// Queued to be folded.
    pub queued: usize,
    /// Waiting to be retried (storage was unavailable, or another node
    /// kept folding them).
    pub retrying: usize,
    /// Stopped: a stored receipt does not decode or breaks a rule.
    pub failed: usize,
    /// Queued for a step of the projection version they rebuild.
    pub rebuilding: usize,
    /// Whose projection version being rebuilt refused a receipt: the
    /// versions queries read go on; that version does not (nor the switch
    /// to it) until the projector restarts.
    pub rebuild_failed: usize,
}

#[derive(Default)]
struct Queue {
    /// Worldlines in the order they were queued; one no longer in `queued`
    /// (a fold took it, or folded what it was queued for) is passed over.
    order: VecDeque<WorldlineId>,
    /// The worldlines queued, with when each was queued and the last
    /// receipt it was queued for (`u64::MAX`: not known, to its head).
    queued: HashMap<WorldlineId, (Instant, u64)>,
    /// Worldlines whose rebuilding projection version is behind, folded a
    /// step at a time (see `Shared::next`).
    rebuild: VecDeque<WorldlineId>,
    /// Worldlines whose rebuilding version refused a receipt, and why.
    rebuild_failed: HashMap<WorldlineId, String>,
    /// The worldlines in `rebuild`.
    rebuild_queued: std::collections::HashSet<WorldlineId>,
    /// No rebuild step before this: the last step's end plus its duration,
    /// so a rebuild takes at most half the projector's time.
    rebuild_after: Option<Instant>,
    /// Worldlines waiting for storage to come back, and when to retry.
    later: Vec<(Instant, WorldlineId)>,
    /// The worldline being folded, and the last receipt its fold has read
    /// (0 before its first read): a query waiting for a receipt up to there
    /// need not queue the worldline again.
    folding: Option<(WorldlineId, u64)>,
    /// Worldlines whose receipts cannot be folded, and why: a stored
    /// receipt that does not decode or breaks a rule. Queries say so;
    /// `worldline verify` names the receipt.
    failed: HashMap<WorldlineId, String>,
    stopping: bool,
}

/// How often every worldline is looked at again, for receipts this node
/// was not told about (another node's, while the notifications were down).
const SWEEP_EVERY: Duration = Duration::from_secs(30);

enum Next {
    /// A worldline to fold, and since when it waits.
    Fold(WorldlineId, Instant),
    /// A worldline whose rebuilding version to move one step, and since
    /// when its new receipts wait if it was also queued for a fold (the
    /// step folds them first, into the versions queries read).
    Rebuild(WorldlineId, Option<Instant>),
    Sweep,
    /// Nothing is queued: switch a rebuilt projection version, delete a
    /// batch of a retired one.
    Maintain,
}

/// What the projector thread and the query side share.
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Bumped after every write (and every failure), so waiting queries
    /// look again.
    progress: tokio::sync::watch::Sender<u64>,
    stats: ProjectorStats,
    /// Set once the start-up sweep has queued every worldline.
    swept: AtomicBool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `worldline` to be folded to its head.
    fn notify(&self, worldline: WorldlineId) {
        self.notify_through(worldline, u64::MAX);
    }

    /// Queues `worldline` to be folded through receipt `seq` at least,
    /// unless the fold under way has read its receipts through `seq`
    /// already: that fold folds them (or, if its write loses a race, reads
    /// again). A worldline already queued stays where it is.
    fn notify_through(&self, worldline: WorldlineId, seq: u64) {
        let mut q = self.lock();
        if q.stopping || q.failed.contains_key(&worldline) {
            return;
        }
        if let Some((_, through)) = q.queued.get_mut(&worldline) {
            *through = (*through).max(seq);
            return;
        }
        if q.folding
            .is_some_and(|(w, read)| w == worldline && read >= seq)
        {
            return;
        }
        q.queued.insert(worldline, (Instant::now(), seq));
        q.order.push_back(worldline);
        self.wake.notify_one();
    }

    /// A fold of `worldline` stored its receipts through `seq`: if it was
    /// queued again for no later receipt, it leaves the queue (a fold
    /// would find nothing).
    fn folded_through(&self, worldline: WorldlineId, seq: u64) {
        let mut q = self.lock();
        if q.queued
            .get(&worldline)
            .is_some_and(|&(_, through)| through <= seq)
        {
            q.queued.remove(&worldline);
        }
    }

    /// The fold under way has read `worldline`'s receipts through `seq`.
    fn reading(&self, worldline: WorldlineId, seq: u64) {
        let mut q = self.lock();
        if let Some((w, through)) = &mut q.folding
            && *w == worldline
        {
            *through = (*through).max(seq);
        }
    }

    /// Queues `worldline` for a step of the projection version it rebuilds.
    fn queue_rebuild(&self, worldline: WorldlineId) {
        let mut q = self.lock();
        if q.stopping
            || q.failed.contains_key(&worldline)
            || q.rebuild_failed.contains_key(&worldline)
        {
            return;
        }
        if q.rebuild_queued.insert(worldline) {
            q.rebuild.push_back(worldline);
            self.wake.notify_one();
        }
    }

    /// The next worldline to fold, or a sweep once `sweep_at` has passed
    /// with nothing queued, or maintenance once `maintain_at` has; `None`
    /// once stopping.
    fn next(&self, sweep_at: Instant, maintain_at: Option<Instant>) -> Option<Next> {
        let mut q = self.lock();
        loop {
            if q.stopping {
                return None;
            }
            let now = Instant::now();
            let mut due = Vec::new();
            q.later.retain(|(at, w)| {
                if *at <= now {
                    due.push(*w);
                    false
                } else {
                    true
                }
            });
            for w in due {
                if let std::collections::hash_map::Entry::Vacant(v) = q.queued.entry(w) {
                    v.insert((now, u64::MAX));
                    q.order.push_back(w);
                }
            }
            if maintain_at.is_some_and(|at| now >= at + MAINTAIN_STARVED) {
                return Some(Next::Maintain);
            }
            // A rebuild step at most half the time (the last step's
            // duration must pass after it): the folds of new receipts wait
            // for at most one step, and the rebuild leaves CPU to the
            // appends and queries it runs beside, busy or not.
            let step_due = q.rebuild_after.is_none_or(|at| now >= at);
            if step_due && let Some(w) = q.rebuild.pop_front() {
                q.rebuild_queued.remove(&w);
                // The step brings the versions queries read to the head
                // first, so it does the fold queued for this worldline:
                // that fold's wait is measured by the step, and the fold
                // leaves the queue.
                let since = q.queued.remove(&w).map(|(since, _)| since);
                if since.is_some() {
                    q.order.retain(|o| *o != w);
                }
                q.folding = Some((w, 0));
                return Some(Next::Rebuild(w, since));
            }
            while let Some(w) = q.order.pop_front() {
                let Some((since, _)) = q.queued.remove(&w) else {
                    continue;
                };
                q.folding = Some((w, 0));
                return Some(Next::Fold(w, since));
            }
            if now >= sweep_at {
                return Some(Next::Sweep);
            }
            if maintain_at.is_some_and(|at| now >= at) {
                return Some(Next::Maintain);
            }
            let wait = q
                .later
                .iter()
                .map(|(at, _)| *at)
                .chain([sweep_at])
                .chain(maintain_at)
                .chain(q.rebuild_after.filter(|_| !q.rebuild.is_empty()))
                .min()
                .map_or(SWEEP_EVERY, |at| at.saturating_duration_since(now));
            q = self
                .wake
                .wait_timeout(q, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// Keeps the projections of every worldline up to date, and answers
/// queries over them.
pub struct Projector {
    store: Arc<dyn Store>,
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Projector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projector")
            .field("stats", &self.shared.stats)
            .finish_non_exhaustive()
    }
}

/// The projector thread's side.
struct Folder {
    store: Arc<dyn Store>,
    limits: WorldlineLimits,
    shared: Arc<Shared>,
    retire_after: Duration,
    cache: std::cell::RefCell<FoldCache>,
}

/// Projection records of the worldlines this projector folded lately, as
/// its own reads and writes left them, so that a fold reads from storage
/// only what it has not seen (on PostgreSQL each read is a round trip).
///
/// Every write to a worldline's records moves the checkpoints of the
/// versions it writes, in the same atomic write (and a switch of versions
/// moves the serving record). So a worldline's remembered records are the
/// stored ones as long as the serving record and its checkpoints are what
/// they were when they were remembered: each fold reads those anyway, and
/// forgets the worldline when they differ (another node folded it, or
/// switched a version, or the space was rebuilt). A fold that wrote
/// nothing after reading (its guard failed, it was stale, it failed)
/// forgets it too, since its reads may have met another node's writes.
/// Bounded in bytes: past the bound, the worldlines folded longest ago are
/// forgotten.
///
/// That equal checkpoints mean equal records also rests on folds being
/// deterministic: a checkpoint names a receipt by seq and hash, and a
/// version's records are a function of the receipts up to it, so a
/// checkpoint that comes back to an earlier value (a crash lost the last
/// projection writes on PostgreSQL, which commit them without waiting for
/// the flush; the space was rebuilt) comes back with the same records. A
/// record changed in storage behind its checkpoint (damage, a hand edit)
/// is not read again while remembered: a later fold may write over it.
#[derive(Default)]
struct FoldCache {
    worldlines: HashMap<WorldlineId, Remembered>,
    bytes: usize,
    max_bytes: usize,
    clock: u64,
}

/// One worldline's remembered records.
#[derive(Default)]
struct Remembered {
    /// The serving record and checkpoints (keys and values) the records
    /// are valid at.
    at: Vec<Guard>,
    /// Key → value (`None`: absent).
    values: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// When the serving record and checkpoints were last read from
    /// storage (not assumed, [`FoldCache::assumed_start`]).
    read_at: Option<Instant>,
    bytes: usize,
    used: u64,
}

/// Bytes a remembered record is counted at: key, value, and the map's
/// slot and the two allocations, about.
fn remembered_bytes(key: &[u8], value: &Option<Vec<u8>>) -> usize {
    key.len() + value.as_ref().map_or(0, Vec::len) + 128
}

/// Bytes the serving record and checkpoints a [`Remembered`] is valid at
/// are counted at.
fn at_bytes(at: &[Guard]) -> usize {
    at.iter().map(|(k, v)| remembered_bytes(k, v)).sum()
}

impl Remembered {
    fn put(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.bytes += remembered_bytes(&key, &value);
        if let Some(old) = self.values.get(&key) {
            self.bytes -= remembered_bytes(&key, old);
        }
        self.values.insert(key, value);
    }
}

impl FoldCache {
    fn new(max_bytes: usize) -> FoldCache {
        FoldCache {
            max_bytes,
            ..FoldCache::default()
        }
    }

    /// What is remembered of `worldline` if it is valid `at` (the serving
    /// record and checkpoints just read), else an empty record set; either
    /// way taken out until [`FoldCache::keep`] puts it back.
    fn take(&mut self, worldline: &WorldlineId, at: &[Guard]) -> Remembered {
        let Some(mut r) = self.worldlines.remove(worldline) else {
            return Remembered::default();
        };
        self.bytes -= r.bytes;
        if r.at != at {
            return Remembered::default();
        }
        // Kept, `bytes` counts `at` too; taken, only the records.
        r.bytes -= at_bytes(&r.at);
        r
    }

    /// The serving record and checkpoints a fold of `worldline` may start
    /// from without reading them: those its last write left, if they were
    /// last read from storage less than [`ASSUME_START_FOR`] ago.
    fn assumed_start(&self, worldline: &WorldlineId) -> Option<Vec<Guard>> {
        let r = self.worldlines.get(worldline)?;
        r.read_at
            .is_some_and(|at| at.elapsed() < ASSUME_START_FOR)
            .then(|| r.at.clone())
    }

    /// Puts back what is remembered of `worldline`, valid `at`; forgets
    /// the worldlines folded longest ago while over the bound.
    fn keep(&mut self, worldline: WorldlineId, mut r: Remembered, at: Vec<Guard>) {
        if let Some(old) = self.worldlines.remove(&worldline) {
            self.bytes -= old.bytes;
        }
        if r.bytes > self.max_bytes / 2 {
            return;
        }
        self.clock += 1;
        r.used = self.clock;
        r.bytes += at_bytes(&at);
        r.at = at;
        self.bytes += r.bytes;
        self.worldlines.insert(worldline, r);
        if self.bytes > self.max_bytes {
            let mut by_use: Vec<(u64, WorldlineId)> =
                self.worldlines.iter().map(|(w, r)| (r.used, *w)).collect();
            by_use.sort_unstable_by_key(|(used, _)| *used);
            for (_, w) in by_use {
                if self.bytes <= self.max_bytes / 4 * 3 {
                    break;
                }
                if let Some(r) = self.worldlines.remove(&w) {
                    self.bytes -= r.bytes;
                }
            }
        }
    }
}

/// The derived space as one fold reads it: what is remembered of the
/// worldline first, then storage (and what storage answers is remembered).
struct Remembering<'a> {
    kv: Kv<'a>,
    memo: &'a std::cell::RefCell<Remembered>,
}

impl KvRead for Remembering<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, WorldlineError> {
        if let Some(v) = self.memo.borrow().values.get(key) {
            return Ok(v.clone());
        }
        let v = self.kv.get(key)?;
        self.memo.borrow_mut().put(key.to_vec(), v.clone());
        Ok(v)
    }

    fn get_many(&self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, WorldlineError> {
        let missing: Vec<&[u8]> = {
            let memo = self.memo.borrow();
            keys.iter()
                .copied()
                .filter(|k| !memo.values.contains_key(*k))
                .collect()
        };
        let read = self.kv.get_many(&missing)?;
        let mut memo = self.memo.borrow_mut();
        for (k, v) in missing.iter().zip(read) {
            memo.put(k.to_vec(), v);
        }
        Ok(keys.iter().map(|k| memo.values[*k].clone()).collect())
    }

    fn range(
        &self,
        start: &[u8],
        end: &[u8],
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<KvPair>, WorldlineError> {
        self.kv.range(start, end, direction, limit)
    }
}

impl Projector {
    /// A projector over `store`'s derived space, or `None` if the store
    /// keeps none. Its thread starts at once and first queues every
    /// worldline, so projections catch up with receipts written while the
    /// server was down (or before it had projections).
    ///
    /// The thread runs `options.nice` steps of niceness below the
    /// server's own. Where the system refuses, it says so in the log and
    /// runs at the server's.
    pub fn start(
        store: Arc<dyn Store>,
        limits: WorldlineLimits,
        options: ProjectorOptions,
    ) -> Option<Projector> {
        store.derived()?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            progress: tokio::sync::watch::channel(0).0,
            stats: ProjectorStats::default(),
            swept: AtomicBool::new(false),
        });
        let folder = Folder {
            store: store.clone(),
            limits,
            shared: shared.clone(),
            retire_after: options.retire_after,
            // Worth it only where a read is a round trip: in this process
            // a read costs about what remembering it does.
            cache: std::cell::RefCell::new(FoldCache::new(
                if options.cache_on_any_store
                    || store.derived().is_some_and(|d| d.reads_are_round_trips())
                {
                    options.cache_bytes
                } else {
                    0
                },
            )),
        };
        let thread = std::thread::Builder::new()
            .name("worldline-projector".into())
            .spawn(move || {
                lower_priority(options.nice);
                folder.run()
            })
            .expect("cannot start the projector thread");
        Some(Projector {
            store,
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    fn kv(&self) -> &dyn DerivedKv {
        self.store
            .derived()
            .expect("a projector exists only over a derived space")
    }

    /// Counters.
    pub fn stats(&self) -> &ProjectorStats {
        &self.shared.stats
    }

    /// How many worldlines are queued, retrying and failed.
    pub fn queue(&self) -> ProjectorQueue {
        let q = self.shared.lock();
        ProjectorQueue {
            queued: q.queued.len(),
            retrying: q.later.len(),
            failed: q.failed.len(),
            rebuilding: q.rebuild.len(),
            rebuild_failed: q.rebuild_failed.len(),
        }
    }

    /// Queues `worldline` to be folded up to its head.
    pub fn notify(&self, worldline: WorldlineId) {
        self.shared.notify(worldline);
    }

    /// Queues `worldline` to be folded, unless it is queued or being
    /// folded through receipt `seq` already (for a query waiting for that
    /// receipt: an extra fold would find nothing, and delay the next).
    pub fn notify_behind(&self, worldline: WorldlineId, seq: u64) {
        self.shared.notify_through(worldline, seq);
    }

    /// Queues the worldline whose receipts context is `context`, if it is
    /// one (the tap the ledger calls for every appended context).
    /// `through` is the receipt the worldline reached, when known.
    pub fn notify_context(&self, context: &str, through: Option<u64>) {
        // Told of every commit: a context outside the namespace is passed
        // over without building the error that parsing it would.
        if !converge_ledger_worldline::is_reserved_context(context) {
            return;
        }
        if let Ok(w) = WorldlineId::from_context_id(context) {
            self.shared.notify_through(w, through.unwrap_or(u64::MAX));
        }
    }

    /// Stops the thread after the fold in progress and waits for it (so
    /// the store is no longer used once this returns). Blocks: call it from
    /// a blocking thread.
    pub fn stop(&self) {
        self.signal_stop();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }

    fn signal_stop(&self) {
        self.shared.lock().stopping = true;
        self.shared.wake.notify_all();
    }

    /// Why `worldline` cannot be projected, if it cannot.
    pub fn failure(&self, worldline: &WorldlineId) -> Option<String> {
        self.shared.lock().failed.get(worldline).cloned()
    }

    /// A receiver that changes after every write.
    pub fn progress(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.progress.subscribe()
    }

    /// Whether every worldline stored at start-up has been queued.
    pub fn swept(&self) -> bool {
        self.shared.swept.load(Ordering::Acquire)
    }
    /// The checkpoint of `projection` for `worldline`.
    pub fn checkpoint(
        &self,
        projection: &dyn Projection,
        worldline: &WorldlineId,
    ) -> Result<Option<ProjectionCheckpoint>, WorldlineError> {
        read_checkpoint(&Kv(self.kv()), projection, worldline)
    }

    /// The serving record and the checkpoint of the version that answers
    /// the projection called `name` for `worldline`, as read now: what
    /// [`Projector::consistent_from`] can start from.
    pub(crate) fn answering_read(
        &self,
        name: &str,
        worldline: &WorldlineId,
    ) -> Result<Answering, WorldlineError> {
        answering(&Kv(self.kv()), name, worldline)
    }

    /// Runs `query` over the derived space at one consistent position of
    /// the projection called `name`, in the version queries are answered
    /// from (handed to `query`): the serving record and that version's
    /// checkpoint read before and after must agree, else the query runs
    /// again (a fold moved the checkpoint, or a switch retired the
    /// version). Returns the version, its checkpoint and the answer.
    pub fn consistent<T>(
        &self,
        name: &str,
        worldline: &WorldlineId,
        query: impl Fn(&dyn KvRead, &'static dyn Projection) -> Result<T, WorldlineError>,
    ) -> Result<(&'static dyn Projection, Option<ProjectionCheckpoint>, T), WorldlineError> {
        self.consistent_from(None, name, worldline, query)
    }

    /// [`Projector::consistent`], its first attempt from `start` (the
    /// serving record and checkpoint a caller has just read, so that they
    /// are not read again) when given.
    pub(crate) fn consistent_from<T>(
        &self,
        mut start: Option<Answering>,
        name: &str,
        worldline: &WorldlineId,
        query: impl Fn(&dyn KvRead, &'static dyn Projection) -> Result<T, WorldlineError>,
    ) -> Result<(&'static dyn Projection, Option<ProjectionCheckpoint>, T), WorldlineError> {
        let kv = Kv(self.kv());
        for _ in 0..64 {
            let Answering {
                serving,
                projection,
                key,
                checkpoint: before,
            } = match start.take() {
                Some(read) => read,
                None => answering(&kv, name, worldline)?,
            };
            // The query reads the checkpoint as it was read here.
            let pinned = [(key, before)];
            let view = Pinned {
                kv: Kv(kv.0),
                pinned: &pinned,
            };
            let answer = query(&view, projection);
            let (key, before) = &pinned[0];
            let after = kv.get_many(&[SERVING_KEY, key])?;
            if after[0] != serving.bytes || after[1] != *before {
                // A switch (the version read may be being deleted) or a
                // fold moved what the query read: even an error may be an
                // artefact of that. Ask again.
                continue;
            }
            let answer = answer?;
            let checkpoint = before
                .as_deref()
                .map(|v| decode_checkpoint(v, projection, worldline))
                .transpose()?;
            return Ok((projection, checkpoint, answer));
        }
        Err(WorldlineError::Unavailable {
            message: format!(
                "the {name} projection of worldline {worldline} moved during 64 attempts to read it; retry"
            ),
        })
    }
}

impl Drop for Projector {
    fn drop(&mut self) {
        // Without waiting: a drop may run on an async worker.
        self.signal_stop();
    }
}

impl Folder {
    fn run(self) {
        self.record_serving();
        self.sweep();
        let mut sweep_at = Instant::now() + SWEEP_EVERY;
        // Look once the start-up sweep's folds are done: a version may be
        // rebuilding, or a retired one may still hold keys.
        let mut maintain_at = Some(Instant::now());
        while let Some(next) = self.shared.next(sweep_at, maintain_at) {
            let started = Instant::now();
            let (next, since, rebuild) = match next {
                Next::Fold(w, since) => (w, Some(since), false),
                Next::Rebuild(w, since) => (w, since, true),
                Next::Sweep => {
                    self.sweep();
                    sweep_at = Instant::now() + SWEEP_EVERY;
                    // Another node may have switched a version meanwhile.
                    maintain_at.get_or_insert_with(Instant::now);
                    continue;
                }
                Next::Maintain => {
                    maintain_at = match self.maintain() {
                        Ok(at) => at,
                        Err(e) => {
                            tracing::warn!(error = %e.message(), "projection versions: maintenance failed; retrying");
                            Some(Instant::now() + RETRY_AFTER)
                        }
                    };
                    continue;
                }
            };
            let mut folded = Folded::default();
            let result = self.fold(&next, rebuild, &mut folded);
            self.shared.lock().folding = None;
            if rebuild {
                let took = started.elapsed();
                self.shared.lock().rebuild_after = Some(Instant::now() + took);
            }
            // Receipts stored into the versions queries read, also by a
            // rebuild call (whose step may then have failed), waited from
            // when they were queued until that write; those a rebuild call
            // folded before their notice queued them, from their append.
            if let Some(waited) = folded.waited(since) {
                self.shared.stats.lag_seconds.observe_duration(waited);
            }
            match result {
                // Also when nothing was left to fold (another node did it):
                // a query waiting here looks again.
                Ok(()) => {
                    self.shared.progress.send_modify(|n| *n += 1);
                }
                Err(e) if e.code() == ErrorCode::Unavailable => {
                    tracing::warn!(worldline = %next, error = %e.message(), "projection paused; storage unavailable");
                    self.shared
                        .lock()
                        .later
                        .push((Instant::now() + RETRY_AFTER, next));
                }
                Err(e) if rebuild => {
                    // The versions queries read are at the head (a step
                    // folds them first): only the rebuild stops here.
                    tracing::error!(worldline = %next, error = %e.message(), "projection version rebuild stopped; the version queries read goes on");
                    self.shared
                        .lock()
                        .rebuild_failed
                        .insert(next, e.message().to_owned());
                    // The fold this step took over is queued again: if the
                    // error came from the versions queries read, that fold
                    // meets it and says so.
                    if since.is_some() {
                        self.shared.notify(next);
                    }
                }
                Err(e) => {
                    tracing::error!(worldline = %next, error = %e.message(), "projection stopped");
                    self.shared
                        .lock()
                        .failed
                        .insert(next, e.message().to_owned());
                    self.shared.progress.send_modify(|n| *n += 1);
                }
            }
        }
    }

    /// Writes the serving record if the store has none yet (a new store,
    /// or one written before the record existed: then the projections it
    /// holds keep answering while their new versions rebuild).
    fn record_serving(&self) {
        let kv = self.kv();
        loop {
            if self.shared.lock().stopping {
                return;
            }
            let written = Serving::load(&Kv(kv)).and_then(|stored| {
                if stored.bytes.is_none() {
                    kv.write_if(
                        &[(SERVING_KEY.to_vec(), None)],
                        &[(SERVING_KEY.to_vec(), Some(stored.serving.encode()))],
                    )
                    .map_err(store_error)?;
                }
                Ok(stored.serving)
            });
            match written {
                Ok(serving) => {
                    let switching = serving.switching();
                    self.shared
                        .stats
                        .rebuilding
                        .store(switching.len() as u64, Ordering::Relaxed);
                    for (old, new) in switching {
                        match old {
                            Some(old) => tracing::info!(
                                projection = new.name(),
                                answering = old.version(),
                                rebuilding = new.version(),
                                "projection answered from its stored version while the new one rebuilds beside it"
                            ),
                            None => tracing::warn!(
                                projection = new.name(),
                                stored = serving.version(new.name()),
                                rebuilding = new.version(),
                                "projection stored at a version this release no longer reads: not answered until the new version has reached every worldline's head"
                            ),
                        }
                    }
                    return;
                }
                Err(e) if e.code() == ErrorCode::Unavailable => {
                    tracing::warn!(error = %e.message(), "cannot read the projections' serving record; retrying");
                    std::thread::sleep(RETRY_AFTER);
                }
                Err(e) => {
                    // Folds read the record too, and say so per worldline.
                    tracing::error!(error = %e.message(), "the projections' serving record is damaged");
                    return;
                }
            }
        }
    }

    fn kv(&self) -> &dyn DerivedKv {
        self.store
            .derived()
            .expect("a projector exists only over a derived space")
    }

    /// Switches the queries of every projection whose new version has
    /// caught up with the old one on every worldline, and deletes a batch
    /// of what versions retired longer than `retire_after` ago still
    /// store. Returns when to look again (`None`: nothing left to do).
    fn maintain(&self) -> Result<Option<Instant>, WorldlineError> {
        let kv = self.kv();
        let stored = Serving::load(&Kv(kv))?;
        let guard = [(SERVING_KEY.to_vec(), stored.bytes.clone())];
        let now_ns = wall_clock_ns();
        let mut next: Option<Instant> = None;
        for (retired, since_ns) in stored.serving.retired() {
            let keep_until = since_ns.saturating_add(self.retire_after.as_nanos() as u64);
            if now_ns < keep_until {
                // Nodes of the earlier release may still answer from it.
                let wait = Duration::from_nanos(keep_until - now_ns);
                next = Some(next.map_or(Instant::now() + wait, |n| n.min(Instant::now() + wait)));
                continue;
            }
            let keys = stored_keys(&Kv(kv), retired, RETIRE_KEYS_PER_WRITE)?;
            if keys.is_empty() {
                continue;
            }
            let n = keys.len() as u64;
            let deletes: Vec<DerivedWrite> = keys.into_iter().map(|k| (k, None)).collect();
            // Guarded by the record that retired the version: a record
            // moved meanwhile is read again first.
            if kv.write_if(&guard, &deletes).map_err(store_error)? {
                self.shared
                    .stats
                    .retired_keys
                    .fetch_add(n, Ordering::Relaxed);
            }
            // More may be left: again as soon as nothing is queued.
            return Ok(Some(Instant::now()));
        }
        let switching = stored.serving.switching();
        self.shared
            .stats
            .rebuilding
            .store(switching.len() as u64, Ordering::Relaxed);
        if switching.is_empty() {
            return Ok(next);
        }
        if !self.shared.lock().rebuild.is_empty() {
            // Still rebuilding here: no scan of every worldline yet.
            return Ok(Some(Instant::now() + SWITCH_CHECK_EVERY));
        }
        let mut serving = stored.serving.clone();
        let mut switched = Vec::new();
        let mut check_again = SWITCH_CHECK_EVERY;
        for (old, new) in switching {
            match self.behind_somewhere(old, new)? {
                None => {
                    serving = serving.with(new.name(), new.version(), now_ns);
                    switched.push((old, new));
                }
                Some(w) => {
                    let stuck = {
                        let q = self.shared.lock();
                        q.failed.contains_key(&w) || q.rebuild_failed.contains_key(&w)
                    };
                    if stuck {
                        // It cannot catch up until repaired: look rarely.
                        check_again = check_again.max(SWEEP_EVERY);
                    } else {
                        self.shared.notify(w);
                    }
                }
            }
        }
        if switched.is_empty() {
            return Ok(Some(Instant::now() + check_again));
        }
        let record = [(SERVING_KEY.to_vec(), Some(serving.encode()))];
        if kv.write_if(&guard, &record).map_err(store_error)? {
            self.shared
                .stats
                .rebuilding
                .fetch_sub(switched.len() as u64, Ordering::Relaxed);
            for (old, new) in switched {
                tracing::info!(
                    projection = new.name(),
                    answering = new.version(),
                    retired = old.map(|o| o.version()),
                    retire_after_s = self.retire_after.as_secs(),
                    "projection version caught up on every worldline: queries now answered from it; the retired version is deleted after the grace period"
                );
                self.shared.stats.switches.fetch_add(1, Ordering::Relaxed);
            }
            self.shared.progress.send_modify(|n| *n += 1);
        }
        Ok(Some(Instant::now()))
    }

    /// The first worldline where `new` has not folded as far as `old` has
    /// (without `old`, a version this code no longer reads: not up to the
    /// head), if any.
    fn behind_somewhere(
        &self,
        old: Option<&dyn Projection>,
        new: &dyn Projection,
    ) -> Result<Option<WorldlineId>, WorldlineError> {
        let kv = Kv(self.kv());
        let mut behind = None;
        let mut failure = None;
        self.each_worldline(&mut |w| {
            let through = |p: &dyn Projection| {
                read_checkpoint(&kv, p, &w).map(|c| c.map_or(0, |c| c.through_seq))
            };
            let target = match old {
                Some(old) => through(old),
                None => self
                    .store
                    .head(&w.context_id())
                    .map(|h| h.map_or(0, |h| h.sequence))
                    .map_err(store_error),
            };
            match target.and_then(|t| Ok((t, through(new)?))) {
                Ok((t, n)) if n < t => {
                    behind = Some(w);
                    false
                }
                Ok(_) => true,
                Err(e) => {
                    failure = Some(e);
                    false
                }
            }
        })
        .map_err(store_error)?;
        match failure {
            Some(e) => Err(e),
            None => Ok(behind),
        }
    }

    /// Calls `visit` with every stored worldline until it returns `false`.
    fn each_worldline(
        &self,
        visit: &mut dyn FnMut(WorldlineId) -> bool,
    ) -> Result<(), converge_ledger_store::StoreError> {
        let mut after = converge_ledger_worldline::NAMESPACE.to_owned();
        loop {
            let mut page = Vec::new();
            self.store.contexts(&after, &mut |c, _| {
                page.push(c.to_owned());
                page.len() < 1024 && c.starts_with(converge_ledger_worldline::NAMESPACE)
            })?;
            let Some(last) = page.last().cloned() else {
                return Ok(());
            };
            for c in &page {
                if let Ok(w) = WorldlineId::from_context_id(c)
                    && !visit(w)
                {
                    return Ok(());
                }
            }
            if !last.starts_with(converge_ledger_worldline::NAMESPACE) || page.len() < 1024 {
                return Ok(());
            }
            after = last;
        }
    }

    /// Queues every stored worldline.
    fn sweep(&self) {
        let mut after = converge_ledger_worldline::NAMESPACE.to_owned();
        loop {
            if self.shared.lock().stopping {
                return;
            }
            let mut page = Vec::new();
            let listed = self.store.contexts(&after, &mut |c, _| {
                page.push(c.to_owned());
                page.len() < 1024 && c.starts_with(converge_ledger_worldline::NAMESPACE)
            });
            if let Err(e) = listed {
                tracing::warn!(error = %e, "cannot list worldlines for the projections; retrying");
                std::thread::sleep(RETRY_AFTER);
                continue;
            }
            let Some(last) = page.last().cloned() else {
                break;
            };
            for c in &page {
                if let Ok(w) = WorldlineId::from_context_id(c) {
                    self.shared.notify(w);
                }
            }
            if !last.starts_with(converge_ledger_worldline::NAMESPACE) || page.len() < 1024 {
                break;
            }
            after = last;
        }
        self.shared.swept.store(true, Ordering::Release);
    }

    /// Folds `worldline` up to its head as it is now. Records in `done`
    /// how many receipts this node stored into the versions queries read
    /// (a rebuilding version's step is not counted), when the oldest of
    /// them was appended and when the last were stored: also when a later
    /// step fails.
    ///
    /// While a projection version rebuilds, the versions queries read are
    /// brought to the head (with the rebuilding one only where it has
    /// caught up with them); a rebuilding version behind them moves only in
    /// steps of [`REBUILD_STEP_RECEIPTS`] (`rebuild`), at most half the
    /// projector's time (`Shared::next`), so a rebuild holds up what
    /// queries wait for by at most one step.
    fn fold(
        &self,
        worldline: &WorldlineId,
        rebuild: bool,
        done: &mut Folded,
    ) -> Result<(), WorldlineError> {
        let reader = ReceiptReader::new(*worldline, &self.limits);
        let context = reader.context();
        let kv = self.kv();
        let mut conflicts = 0;
        let mut assumed = if self.cache.borrow().max_bytes > 0 {
            self.cache.borrow().assumed_start(worldline)
        } else {
            None
        };
        loop {
            let (start, read) = match assumed.take().and_then(|at| start_from(kv, &at, worldline)) {
                Some(start) => (start, false),
                None => (serving_and_checkpoints(kv, worldline)?, true),
            };
            let FoldStart {
                serving,
                all,
                checkpoints,
            } = start;
            let rebuilding: Vec<&'static dyn Projection> = serving
                .serving
                .switching()
                .into_iter()
                .map(|(_, new)| new)
                .collect();
            // The worldline's head is read only while a version rebuilds,
            // to choose between folding new receipts and a rebuild step.
            // Otherwise the fold reads the receipts after its checkpoints
            // until the store holds no more: on PostgreSQL each read is a
            // round trip, and a fold's round trips are most of the time a
            // query waits for it at `min_seq`.
            let head = if rebuilding.is_empty() {
                None
            } else {
                Some(
                    self.store
                        .head(context)
                        .map_err(store_error)?
                        .map_or(0, |h| h.sequence),
                )
            };
            let mut guards: Vec<Guard> = Vec::with_capacity(all.len() + 1);
            if !rebuilding.is_empty() {
                // Folds of a version another node may retire meanwhile are
                // guarded by the record they read, so that none writes it
                // again. Only then: on PostgreSQL every guard key is a lock
                // all nodes' folds would queue on.
                guards.push((SERVING_KEY.to_vec(), serving.bytes.clone()));
            }
            let mut live_from = u64::MAX;
            let mut rebuild_from = u64::MAX;
            let mut through = Vec::with_capacity(all.len());
            for (&p, (key, value)) in all.iter().zip(checkpoints) {
                let seq = match &value {
                    None => 0,
                    Some(v) => {
                        ProjectionCheckpoint::decode(v)
                            .map_err(|e| {
                                e.in_stored(format_args!("{} checkpoint of {worldline}", p.name()))
                            })?
                            .through_seq
                    }
                };
                if rebuilding
                    .iter()
                    .any(|r| r.name() == p.name() && r.version() == p.version())
                {
                    rebuild_from = rebuild_from.min(seq);
                } else {
                    live_from = live_from.min(seq);
                }
                through.push(seq);
                guards.push((key, value));
            }
            // What queries read first; a rebuilding version joins from the
            // receipt where it has caught up.
            let (from, rebuild_step) = match head {
                None => (live_from, false),
                Some(head) if live_from < head => (live_from, false),
                Some(head) if rebuild_from < head => {
                    if !rebuild {
                        self.shared.queue_rebuild(*worldline);
                        return Ok(());
                    }
                    (rebuild_from, true)
                }
                Some(_) => return Ok(()),
            };
            let folding: Vec<&'static dyn Projection> = all
                .iter()
                .zip(&through)
                .filter(|(_, seq)| **seq >= from)
                .map(|(p, _)| *p)
                .collect();
            // The checkpoints just read are what the folds read them as;
            // with a cache, what is remembered of the worldline at them is
            // read from memory too.
            let remembers = self.cache.borrow().max_bytes > 0;
            let valid_at: Vec<Guard> = if remembers {
                std::iter::once((SERVING_KEY.to_vec(), serving.bytes.clone()))
                    .chain(guards.iter().filter(|(k, _)| k != SERVING_KEY).cloned())
                    .collect()
            } else {
                Vec::new()
            };
            let memo = std::cell::RefCell::new(self.cache.borrow_mut().take(worldline, &valid_at));
            if read {
                memo.borrow_mut().read_at = Some(Instant::now());
            }
            for (k, v) in &valid_at {
                memo.borrow_mut().put(k.clone(), v.clone());
            }
            let remembering = Remembering {
                kv: Kv(kv),
                memo: &memo,
            };
            let pinned = Pinned {
                kv: Kv(kv),
                pinned: &guards,
            };
            let known: &dyn KvRead = if remembers { &remembering } else { &pinned };
            let step = if rebuild_step {
                REBUILD_STEP_RECEIPTS
            } else {
                FOLD_RECEIPTS_MAX
            };
            let until = from
                .saturating_add(step as u64)
                .min(head.unwrap_or(u64::MAX));
            let mut batch = KvBatch::new();
            let mut folded = 0u64;
            let mut at = from;
            let mut first_appended_ns = 0;
            let mut stale = false;
            // The store held no receipt after `at` when it was last read.
            let mut ended = false;
            'read: while at < until {
                let (entries, full): (Vec<Entry>, bool) = read_chunk(
                    &*self.store,
                    context,
                    at,
                    until,
                    READ_CHUNK.min((until - at) as usize),
                )?;
                if let Some(last) = entries.last() {
                    self.shared.reading(*worldline, last.sequence);
                }
                if entries.is_empty() {
                    if let Some(head) = head {
                        return Err(WorldlineError::corrupt(format!(
                            "worldline {worldline} ends at receipt {at}, before its head {head}"
                        )));
                    }
                    ended = true;
                    break;
                }
                for e in &entries {
                    if e.sequence != at + 1 {
                        return Err(WorldlineError::corrupt(format!(
                            "receipt {} of worldline {worldline} is missing: the store holds \
                             receipt {} after receipt {at}",
                            at + 1,
                            e.sequence
                        )));
                    }
                    let receipt = reader
                        .read(e)
                        .map_err(|err| err.in_stored(format_args!("receipt {}", e.sequence)))?;
                    for &p in &folding {
                        if let Err(err) = apply_receipt(p, &receipt, known, &mut batch) {
                            // Each read sees the latest commit: another
                            // node's fold committed between two of this
                            // fold's reads can make them disagree (a pair
                            // present that the count read before did not
                            // hold). Such an error is trusted only when no
                            // checkpoint moved meanwhile; otherwise this
                            // fold is stale, as its guarded write would be.
                            if checkpoints_moved(kv, &guards)? {
                                stale = true;
                                break 'read;
                            }
                            return Err(err);
                        }
                    }
                    if folded == 0 {
                        first_appended_ns = e.appended_at_ns;
                    }
                    folded += 1;
                    at = e.sequence;
                    if batch.bytes() >= FOLD_BYTES_MAX {
                        break 'read;
                    }
                }
                if !full && at < until {
                    ended = true;
                    break;
                }
            }
            if folded == 0 && !stale {
                // What is remembered stays valid: nothing was written.
                if remembers {
                    self.cache
                        .borrow_mut()
                        .keep(*worldline, memo.into_inner(), valid_at);
                }
                // Nothing after the checkpoints (another node folded it).
                return Ok(());
            }
            let writes: Vec<DerivedWrite> = batch.into_writes().collect();
            if !stale && kv.write_if(&guards, &writes).map_err(store_error)? {
                self.remember(*worldline, memo.into_inner(), valid_at, writes);
                self.shared
                    .stats
                    .receipts
                    .fetch_add(folded, Ordering::Relaxed);
                self.shared.stats.writes.fetch_add(1, Ordering::Relaxed);
                self.shared.progress.send_modify(|n| *n += 1);
                conflicts = 0;
                if !rebuild_step && folded > 0 {
                    self.shared.folded_through(*worldline, at);
                    done.live += folded;
                    done.oldest_appended_ns.get_or_insert(first_appended_ns);
                    done.stored = Some((Instant::now(), wall_clock_ns()));
                }
                if rebuild_step {
                    if head.is_some_and(|head| at < head) {
                        // Behind whatever was queued meanwhile.
                        self.shared.queue_rebuild(*worldline);
                    }
                    return Ok(());
                }
                if ended && head.is_none() {
                    // Folded to the end the store held after this fold was
                    // taken from the queue. A receipt committed since is
                    // announced since, and that notice queued the worldline
                    // again: reading the checkpoints and the receipts again
                    // here would find nothing new.
                    return Ok(());
                }
            } else {
                self.shared.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                if rebuild_step {
                    // Another node built this step: one step per turn
                    // still, so folds of new receipts wait for no more.
                    self.shared.queue_rebuild(*worldline);
                    return Ok(());
                }
                conflicts += 1;
                if conflicts >= GUARD_RETRIES_MAX {
                    // Another node keeps folding this worldline: leave it to
                    // it, and look again later.
                    self.shared
                        .lock()
                        .later
                        .push((Instant::now() + RETRY_AFTER, *worldline));
                    return Ok(());
                }
            }
        }
    }
}

impl Folder {
    /// After a fold's write: what it read and wrote of `worldline` is
    /// remembered, valid at the serving record and checkpoints it wrote
    /// (`at` with its writes applied). Writes of empty values (index keys,
    /// read only through ranges) are remembered only over a value already
    /// remembered.
    fn remember(
        &self,
        worldline: WorldlineId,
        mut memo: Remembered,
        mut at: Vec<Guard>,
        writes: Vec<DerivedWrite>,
    ) {
        if self.cache.borrow().max_bytes == 0 {
            return;
        }
        let written: HashMap<&[u8], &Option<Vec<u8>>> =
            writes.iter().map(|(k, v)| (k.as_slice(), v)).collect();
        for (k, v) in &mut at {
            if let Some(&new) = written.get(k.as_slice()) {
                v.clone_from(new);
            }
        }
        drop(written);
        for (k, v) in writes {
            if v.as_ref().is_some_and(Vec::is_empty) && !memo.values.contains_key(&k) {
                continue;
            }
            memo.put(k, v);
        }
        self.cache.borrow_mut().keep(worldline, memo, at);
    }
}

/// Nanoseconds since the Unix epoch by the wall clock (shared by nodes,
/// unlike `Instant`).
fn wall_clock_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Adds `nice` to the calling thread's niceness (on Linux a thread has its
/// own), up to [`NICE_MAX`].
fn lower_priority(nice: i32) {
    if nice <= 0 {
        return;
    }
    let thread = Some(rustix::thread::gettid());
    let lowered = rustix::process::getpriority_process(thread).and_then(|now| {
        rustix::process::setpriority_process(thread, now.saturating_add(nice).min(NICE_MAX))
    });
    if let Err(e) = lowered {
        tracing::warn!(error = %e, nice, "cannot lower the projector thread's priority; it runs at the server's");
    }
}

/// The derived space with some keys' values known (the checkpoints a fold
/// read to start, the checkpoint a query read first): `get` and `get_many`
/// answer those without reading them again; `range` reads the store as it
/// is (no fold or query reads checkpoints through a range).
struct Pinned<'a> {
    kv: Kv<'a>,
    pinned: &'a [Guard],
}

impl KvRead for Pinned<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, WorldlineError> {
        match self.pinned.iter().find(|(k, _)| k.as_slice() == key) {
            Some((_, value)) => Ok(value.clone()),
            None => self.kv.get(key),
        }
    }

    fn get_many(&self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, WorldlineError> {
        let pinned = |key: &[u8]| self.pinned.iter().find(|(k, _)| k.as_slice() == key);
        let unpinned: Vec<&[u8]> = keys
            .iter()
            .copied()
            .filter(|k| pinned(k).is_none())
            .collect();
        let mut read = self.kv.get_many(&unpinned)?.into_iter();
        keys.iter()
            .map(|k| match pinned(k) {
                Some((_, value)) => Ok(value.clone()),
                None => read.next().ok_or_else(|| {
                    WorldlineError::corrupt(
                        "the derived store answered fewer values than the keys it was asked for",
                    )
                }),
            })
            .collect()
    }

    fn range(
        &self,
        start: &[u8],
        end: &[u8],
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<KvPair>, WorldlineError> {
        self.kv.range(start, end, direction, limit)
    }
}

/// The serving record, the projection versions a fold keeps up to date
/// by it, and their checkpoint keys and values for `worldline`. The
/// versions this code builds are those unless one rebuilds: their
/// checkpoints are read with the serving record, in one read (one round
/// trip on PostgreSQL).
fn serving_and_checkpoints(
    kv: &dyn DerivedKv,
    worldline: &WorldlineId,
) -> Result<FoldStart, WorldlineError> {
    let kv = Kv(kv);
    let likely = Serving::current().folded();
    let checkpoints = |versions: &[&'static dyn Projection]| -> Vec<Vec<u8>> {
        versions
            .iter()
            .map(|&p| checkpoint_key(p, worldline))
            .collect()
    };
    let mut keys = vec![SERVING_KEY.to_vec()];
    keys.extend(checkpoints(&likely));
    let mut read = kv
        .get_many(&keys.iter().map(Vec::as_slice).collect::<Vec<_>>())?
        .into_iter();
    let serving = Serving::from_stored(&kv, read.next().flatten())?;
    let all = serving.serving.folded();
    let same = all.len() == likely.len()
        && all
            .iter()
            .zip(&likely)
            .all(|(a, b)| a.name() == b.name() && a.version() == b.version());
    let keys = checkpoints(&all);
    let values: Vec<Option<Vec<u8>>> = if same {
        read.collect()
    } else {
        kv.get_many(&keys.iter().map(Vec::as_slice).collect::<Vec<_>>())?
    };
    Ok(FoldStart {
        serving,
        all,
        checkpoints: keys.into_iter().zip(values).collect(),
    })
}

/// A fold's start from the serving record and checkpoints in `at` (as a
/// fold remembered them, [`FoldCache::assumed_start`]), without reading;
/// `None` if they do not name a serving record or hold every checkpoint
/// its versions need.
fn start_from(kv: &dyn DerivedKv, at: &[Guard], worldline: &WorldlineId) -> Option<FoldStart> {
    let value = |key: &[u8]| at.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let bytes = value(SERVING_KEY)??;
    let serving = Serving::from_stored(&Kv(kv), Some(bytes)).ok()?;
    let all = serving.serving.folded();
    let checkpoints = all
        .iter()
        .map(|&p| {
            let key = checkpoint_key(p, worldline);
            value(&key).map(|v| (key, v))
        })
        .collect::<Option<Vec<Guard>>>()?;
    Some(FoldStart {
        serving,
        all,
        checkpoints,
    })
}

/// What a fold starts from ([`serving_and_checkpoints`]).
struct FoldStart {
    serving: StoredServing,
    /// The projection versions folded.
    all: Vec<&'static dyn Projection>,
    /// Their checkpoint keys and stored values, in the same order.
    checkpoints: Vec<Guard>,
}

/// What a query of one projection starts from: the serving record and the
/// checkpoint of the version that answers, as read
/// ([`Projector::answering_read`]).
pub(crate) struct Answering {
    /// The serving record read.
    serving: StoredServing,
    /// The version it answers the projection from.
    projection: &'static dyn Projection,
    /// That version's checkpoint key for the worldline.
    key: Vec<u8>,
    /// The checkpoint stored there.
    checkpoint: Option<Vec<u8>>,
}

/// The serving record and the checkpoint for `worldline` of the version
/// it answers the projection called `name` from. The version this code
/// builds answers unless one rebuilds: its checkpoint is read with the
/// serving record, in one read (one round trip on PostgreSQL).
fn answering(
    kv: &Kv<'_>,
    name: &str,
    worldline: &WorldlineId,
) -> Result<Answering, WorldlineError> {
    let likely = projections()
        .into_iter()
        .find(|p| p.name() == name)
        .map(|p| checkpoint_key(p, worldline));
    let mut read = match &likely {
        Some(k) => kv.get_many(&[SERVING_KEY, k])?.into_iter(),
        None => vec![kv.get(SERVING_KEY)?].into_iter(),
    };
    let serving = Serving::from_stored(kv, read.next().flatten())?;
    let projection = serving.serving.answering(name)?;
    let key = checkpoint_key(projection, worldline);
    let checkpoint = match read.next() {
        Some(value) if likely.as_ref() == Some(&key) => value,
        _ => kv.get(&key)?,
    };
    Ok(Answering {
        serving,
        projection,
        key,
        checkpoint,
    })
}

impl Answering {
    /// The checkpoint read, decoded.
    pub(crate) fn checkpoint(
        &self,
        worldline: &WorldlineId,
    ) -> Result<Option<ProjectionCheckpoint>, WorldlineError> {
        self.checkpoint
            .as_deref()
            .map(|v| decode_checkpoint(v, self.projection, worldline))
            .transpose()
    }
}

fn decode_checkpoint(
    bytes: &[u8],
    projection: &dyn Projection,
    worldline: &WorldlineId,
) -> Result<ProjectionCheckpoint, WorldlineError> {
    ProjectionCheckpoint::decode(bytes).map_err(|e| {
        e.in_stored(format_args!(
            "{} checkpoint of worldline {worldline}",
            projection.name()
        ))
    })
}

/// Whether any of `guards` (checkpoint keys, and the serving record while
/// a version rebuilds, with the values a fold read) holds something else
/// now: another node folded, or switched a version, meanwhile.
fn checkpoints_moved(kv: &dyn DerivedKv, guards: &[Guard]) -> Result<bool, WorldlineError> {
    let keys: Vec<&[u8]> = guards.iter().map(|(k, _)| k.as_slice()).collect();
    let now = Kv(kv).get_many(&keys)?;
    Ok(guards.iter().zip(&now).any(|((_, read), now)| read != now))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            progress: tokio::sync::watch::channel(0).0,
            stats: ProjectorStats::default(),
            swept: AtomicBool::new(false),
        }
    }

    /// Appends `pairs` commitment + outcome pairs to `w` (no projector).
    async fn pairs(worldlines: &crate::Worldlines, w: &WorldlineId, from: u64, pairs: u64) {
        use converge_ledger_worldline::{
            Commitment, CommitmentId, Decision, Outcome, OutcomeStatus, PolicyRef, StateUpdate,
        };
        for n in from..from + pairs {
            let mut id = [0u8; 16];
            id[8..].copy_from_slice(&n.to_be_bytes());
            id[0] = 0x51;
            let c = Commitment {
                commitment_id: CommitmentId(id),
                class: "deploy".into(),
                intent: format!("change {n}"),
                requested_capabilities: ["cap".to_owned()].into_iter().collect(),
                targets: vec![],
                evidence: vec![],
                proposer: "agent".into(),
                decision: Decision::Accepted,
                policy: PolicyRef {
                    hash: converge_ledger_core::Digest::ZERO,
                    version: "v1".into(),
                },
                granted_capabilities: ["cap".to_owned()].into_iter().collect(),
                revoked_capabilities: Default::default(),
                decider: "kernel".into(),
            };
            let c = worldlines.append_commitment(w, &c).await.unwrap();
            let o = Outcome {
                commitment: c.receipt.receipt_hash,
                status: OutcomeStatus::Succeeded,
                effects: vec![],
                proofs: vec![],
                state_updates: vec![StateUpdate::Put {
                    key: format!("k{n}"),
                    value: n.to_be_bytes().to_vec(),
                }],
                reporter: "driver".into(),
            };
            worldlines.append_outcome(w, &o).await.unwrap();
        }
    }

    /// The lag of receipts a rebuild step folds into the versions queries
    /// read before their notice queued them is measured from their append:
    /// `fold` says when the oldest receipt it folded there was appended, and
    /// only for those versions.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fold_reports_when_the_oldest_receipt_it_folded_into_the_live_versions_was_appended()
    {
        use converge_ledger_store::MemoryStore;
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let ledger = crate::Ledger::new(store.clone(), crate::LedgerConfig::default());
        let worldlines = crate::Worldlines::new(ledger.clone(), Default::default()).unwrap();
        let w = WorldlineId::derive(b"lag");
        // Queries answer capability_grants from version 1, so version 2
        // rebuilds beside it.
        let derived = store.derived().unwrap();
        let serving = Serving::current().with("capability_grants", 1, 1).encode();
        assert!(
            derived
                .write_if(
                    &[(SERVING_KEY.to_vec(), None)],
                    &[(SERVING_KEY.to_vec(), Some(serving))]
                )
                .unwrap()
        );
        pairs(&worldlines, &w, 0, 2).await;
        let appended = |seq: u64| {
            store
                .entry(&w.context_id(), seq)
                .unwrap()
                .unwrap()
                .appended_at_ns
        };
        let folder = Folder {
            store: store.clone(),
            limits: WorldlineLimits::default(),
            shared: Arc::new(shared()),
            retire_after: Duration::from_secs(3600),
            cache: std::cell::RefCell::new(FoldCache::new(PROJECTOR_CACHE_BYTES_DEFAULT)),
        };
        let fold = |rebuild| {
            let mut done = Folded::default();
            tokio::task::block_in_place(|| folder.fold(&w, rebuild, &mut done)).unwrap();
            assert_eq!(done.stored.is_some(), done.live > 0);
            (done.live, done.oldest_appended_ns)
        };
        // A fold of the versions queries read (version 2 waits for a step).
        assert_eq!(fold(false), (4, Some(appended(1))));
        assert_eq!(fold(false), (0, None), "nothing left to fold");
        // Version 2 caught up with them there; start it again from
        // scratch, so that it is behind.
        let v2 = converge_ledger_worldline::projection_key_prefix(
            &converge_ledger_worldline::capability_grants::CapabilityGrants::V2,
        );
        // The prefix ends in `/`: the next byte value ends the range.
        let mut end = v2.clone();
        *end.last_mut().unwrap() += 1;
        let deletes: Vec<DerivedWrite> = derived
            .range(&v2, &end, false, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(k, _)| (k, None))
            .collect();
        assert!(!deletes.is_empty());
        assert!(derived.write_if(&[], &deletes).unwrap());
        // Two more pairs, whose notice has not arrived: a rebuild step
        // first brings the versions queries read to the head, and those
        // receipts count from the oldest of them; then it builds version 2,
        // which does not count.
        pairs(&worldlines, &w, 2, 2).await;
        assert_eq!(fold(true), (4, Some(appended(5))));
        assert_eq!(fold(true), (0, None), "nothing left to fold");
        assert_eq!(
            folder.shared.stats.receipts.load(Ordering::Relaxed),
            4 + 4 + 8,
            "receipts per write: 4 live, 4 live, then 8 into version 2"
        );
        ledger.shutdown().await.unwrap();
    }

    /// A folder over `store`, remembering up to `cache_bytes`.
    fn folder(store: &Arc<dyn Store>, cache_bytes: usize) -> Folder {
        Folder {
            store: store.clone(),
            limits: WorldlineLimits::default(),
            shared: Arc::new(shared()),
            retire_after: Duration::from_secs(3600),
            cache: std::cell::RefCell::new(FoldCache::new(cache_bytes)),
        }
    }

    /// The stored latest_state meta record of `w` (pair count, bytes).
    fn meta_key(store: &Arc<dyn Store>, w: &WorldlineId) -> Vec<u8> {
        use converge_ledger_worldline::latest_state::LatestState;
        let prefix = converge_ledger_worldline::worldline_key_prefix(&LatestState, w);
        let mut end = prefix.clone();
        *end.last_mut().unwrap() += 1;
        let pairs = store
            .derived()
            .unwrap()
            .range(&prefix, &end, false, 1000)
            .unwrap();
        pairs
            .into_iter()
            .map(|(k, _)| k)
            .find(|k| k[prefix.len()..].starts_with(b"meta/"))
            .expect("a meta record")
    }

    fn pair_count(store: &Arc<dyn Store>, w: &WorldlineId) -> u64 {
        converge_ledger_worldline::latest_state::head(&Kv(store.derived().unwrap()), w)
            .unwrap()
            .unwrap()
            .pair_count
    }

    /// A fold reads what the folds before it read and wrote from memory,
    /// not from storage: a record changed in storage behind the
    /// checkpoints' back (which no writer does) is not even read. Without
    /// memory the damaged record stops the fold.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fold_reads_what_earlier_folds_read_and_wrote_from_memory() {
        use converge_ledger_store::MemoryStore;
        for cache_bytes in [PROJECTOR_CACHE_BYTES_DEFAULT, 0] {
            let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
            let ledger = crate::Ledger::new(store.clone(), crate::LedgerConfig::default());
            let worldlines = crate::Worldlines::new(ledger.clone(), Default::default()).unwrap();
            let w = WorldlineId::derive(b"memory");
            let folder = folder(&store, cache_bytes);
            let fold =
                || tokio::task::block_in_place(|| folder.fold(&w, false, &mut Folded::default()));
            pairs(&worldlines, &w, 0, 1).await;
            fold().unwrap();
            let meta = meta_key(&store, &w);
            let derived = store.derived().unwrap();
            assert!(
                derived
                    .write_if(&[], &[(meta, Some(b"garbage".to_vec()))])
                    .unwrap()
            );
            pairs(&worldlines, &w, 1, 1).await;
            let folded = fold();
            if cache_bytes > 0 {
                folded.unwrap();
                assert_eq!(
                    pair_count(&store, &w),
                    2,
                    "the meta record written from memory"
                );
            } else {
                let e = folded.expect_err("the damaged meta record is read");
                assert_eq!(e.code(), ErrorCode::DataLoss, "{e:?}");
            }
            ledger.shutdown().await.unwrap();
        }
    }

    /// What a folder remembers is forgotten once another folder (another
    /// node) folds the worldline: its next fold reads storage again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fold_forgets_what_it_remembered_once_another_node_folded_the_worldline() {
        use converge_ledger_store::MemoryStore;
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let ledger = crate::Ledger::new(store.clone(), crate::LedgerConfig::default());
        let worldlines = crate::Worldlines::new(ledger.clone(), Default::default()).unwrap();
        let w = WorldlineId::derive(b"two nodes");
        let (a, b) = (
            folder(&store, PROJECTOR_CACHE_BYTES_DEFAULT),
            folder(&store, PROJECTOR_CACHE_BYTES_DEFAULT),
        );
        let fold = |f: &Folder| {
            tokio::task::block_in_place(|| f.fold(&w, false, &mut Folded::default())).unwrap()
        };
        // As a projector does first: a fold starts from unread checkpoints
        // only with a serving record stored.
        tokio::task::block_in_place(|| a.record_serving());
        pairs(&worldlines, &w, 0, 1).await;
        fold(&a);
        pairs(&worldlines, &w, 1, 1).await;
        fold(&b);
        assert_eq!(pair_count(&store, &w), 2);
        pairs(&worldlines, &w, 2, 1).await;
        // With the meta record it remembered (one pair), a would count 2.
        // a folded the worldline last less than ASSUME_START_FOR ago, so
        // it starts from the checkpoints its own write left, unread: its
        // guarded write finds them moved (one conflict), and it reads.
        let conflicts = |f: &Folder| f.shared.stats.conflicts.load(Ordering::Relaxed);
        assert_eq!((conflicts(&a), conflicts(&b)), (0, 0));
        fold(&a);
        assert_eq!(pair_count(&store, &w), 3);
        assert_eq!(conflicts(&a), 1, "a started from the checkpoints it wrote");
        // Its next fold starts from what it wrote just now: no conflict.
        pairs(&worldlines, &w, 3, 1).await;
        fold(&a);
        assert_eq!(pair_count(&store, &w), 4);
        assert_eq!(conflicts(&a), 1);
        ledger.shutdown().await.unwrap();
    }

    #[test]
    fn a_cache_past_its_bound_forgets_the_worldlines_folded_longest_ago() {
        let mut cache = FoldCache::new(10_000);
        let at = vec![(b"c".to_vec(), Some(vec![1]))];
        let remembered = |n: usize| {
            let mut r = Remembered::default();
            for i in 0..n {
                r.put(format!("k{i}").into_bytes(), Some(vec![0; 100]));
            }
            r
        };
        let ids: Vec<WorldlineId> = (0..4u8).map(|i| WorldlineId::derive(&[i])).collect();
        for w in &ids {
            cache.keep(*w, remembered(20), at.clone());
        }
        assert!(cache.bytes <= 10_000, "{} bytes", cache.bytes);
        assert!(
            !cache.worldlines.contains_key(&ids[0]),
            "the oldest forgotten"
        );
        assert!(cache.worldlines.contains_key(&ids[3]), "the newest kept");
        assert_eq!(
            cache.bytes,
            cache.worldlines.values().map(|r| r.bytes).sum::<usize>()
        );
        // Valid only at what it was kept at.
        let other = vec![(b"c".to_vec(), Some(vec![2]))];
        assert!(cache.take(&ids[3], &other).values.is_empty());
        assert!(
            !cache.worldlines.contains_key(&ids[3]),
            "taken out either way"
        );
        cache.keep(ids[3], remembered(3), at.clone());
        let before = cache.bytes;
        let r = cache.take(&ids[3], &at);
        assert_eq!(r.values.len(), 3);
        cache.keep(ids[3], r, at.clone());
        assert_eq!(
            cache.bytes, before,
            "taking and keeping again counts the same"
        );
        // One worldline over half the bound is not kept at all (and what
        // was kept of it is gone).
        cache.keep(ids[3], remembered(60), at.clone());
        assert!(!cache.worldlines.contains_key(&ids[3]));
        assert_eq!(
            cache.bytes,
            cache.worldlines.values().map(|r| r.bytes).sum::<usize>()
        );
    }

    #[test]
    fn lag_runs_to_the_write_from_the_queueing_else_from_an_append_not_ahead_of_this_clock() {
        let queued = Instant::now();
        let at = queued + Duration::from_millis(3);
        let wall_ns = 10_000_000_000;
        let folded = |live, oldest_appended_ns| Folded {
            live,
            oldest_appended_ns,
            stored: Some((at, wall_ns)),
        };
        let ms = Duration::from_millis;
        assert_eq!(folded(2, Some(1)).waited(Some(queued)), Some(ms(3)));
        assert_eq!(
            folded(2, Some(wall_ns - 7_000_000)).waited(None),
            Some(ms(7))
        );
        assert_eq!(
            folded(2, Some(wall_ns + 1)).waited(None),
            None,
            "an append ahead of this clock"
        );
        assert_eq!(folded(0, None).waited(Some(queued)), None, "nothing live");
        assert_eq!(Folded::default().waited(Some(queued)), None);
    }

    #[test]
    fn a_notice_of_receipts_a_fold_has_read_or_stored_queues_no_second_fold() {
        let s = shared();
        let (a, b) = (WorldlineId::derive(b"a"), WorldlineId::derive(b"b"));
        let now = Instant::now();
        let is_sweep = |n: Option<Next>| matches!(n, Some(Next::Sweep));
        s.notify_through(a, 3);
        match s.next(now, None) {
            Some(Next::Fold(w, _)) => assert_eq!(w, a),
            _ => panic!("expected the fold of a"),
        }
        // The fold has read a's receipts through 5: notices up to 5 (the
        // tap's, a waiting query's) are its own; 6 is not, nor one that
        // does not say how far it reaches, nor one for another worldline.
        s.reading(a, 5);
        s.notify_through(a, 5);
        assert!(s.lock().queued.is_empty(), "receipt 5 is being folded");
        s.notify_through(b, 5);
        s.notify_through(a, 6);
        assert_eq!(s.lock().queued.len(), 2);
        // The fold stored through 6 after all (it read again): a leaves
        // the queue. b, queued through 5, stays when a fold of b stores
        // only through 4; the next fold is b's.
        s.folded_through(a, 6);
        s.folded_through(b, 4);
        assert_eq!(s.lock().queued.keys().collect::<Vec<_>>(), vec![&b]);
        match s.next(now, None) {
            Some(Next::Fold(w, _)) => assert_eq!(w, b),
            _ => panic!("expected the fold of b"),
        }
        assert!(is_sweep(s.next(now, None)), "nothing else is queued");
        // A notice that does not say how far it reaches stays queued
        // whatever was stored, and a second notice keeps the first's place
        // with the later receipt.
        s.notify(a);
        s.folded_through(a, 1_000);
        s.notify_through(b, 2);
        s.notify_through(b, 9);
        s.folded_through(b, 8);
        assert_eq!(s.lock().queued.len(), 2);
        s.lock().folding = None;
        match (s.next(now, None), s.next(now, None)) {
            (Some(Next::Fold(x, _)), Some(Next::Fold(y, _))) => assert_eq!((x, y), (a, b)),
            _ => panic!("expected the folds of a and b"),
        }
    }

    #[test]
    fn a_rebuild_step_takes_over_the_fold_queued_for_its_worldline_with_the_time_it_was_queued() {
        let s = shared();
        let (a, b) = (WorldlineId::derive(b"a"), WorldlineId::derive(b"b"));
        let later = Instant::now() + SWEEP_EVERY;
        s.notify(a);
        let queued_at = s.lock().queued[&a].0;
        s.notify(b);
        s.queue_rebuild(a);
        // The step comes first, and carries a's queued fold with it.
        match s.next(later, None) {
            Some(Next::Rebuild(w, since)) => {
                assert_eq!(w, a);
                assert_eq!(since, Some(queued_at));
            }
            _ => panic!("expected the rebuild step of a"),
        }
        // a's fold is gone from the queue; b's is next, and then nothing.
        assert_eq!(s.lock().order, VecDeque::from([b]));
        match s.next(later, None) {
            Some(Next::Fold(w, _)) => assert_eq!(w, b),
            _ => panic!("expected the fold of b"),
        }
        assert!(s.lock().queued.is_empty() && s.lock().order.is_empty());
        // A step of a worldline with no fold queued waits since nothing.
        s.queue_rebuild(b);
        match s.next(later, None) {
            Some(Next::Rebuild(w, since)) => assert_eq!((w, since), (b, None)),
            _ => panic!("expected the rebuild step of b"),
        }
    }
}
