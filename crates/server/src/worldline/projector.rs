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
    Direction, ErrorCode, KvBatch, KvPair, KvRead, Projection, ReceiptReader, WorldlineError,
    WorldlineId, WorldlineLimits,
};
use converge_ledger_worldline::{
    ProjectionCheckpoint, apply_receipt, checkpoint_key, projections, read_checkpoint,
};

use super::{READ_CHUNK, read_entries, store_error};

/// How much lower than the server's own the projector thread's scheduling
/// priority is by default (a niceness added to the process's). Folding is
/// deferred work: at a lower priority it runs in the time the appends leave
/// (their fsync waits, their idle moments) instead of taking a core from
/// them, and catches up as soon as they pause (BENCHMARKS.md, WorldLine).
/// Not lower: fjall's flushes and compactions run at the server's priority,
/// and behind them a projector at 10 left queries waiting over 10 ms for
/// their `min_seq` right after a large load.
pub const PROJECTOR_NICE_DEFAULT: i32 = 5;
/// The highest niceness Linux has.
pub const NICE_MAX: i32 = 19;

/// Receipts folded into one write at most.
pub const FOLD_RECEIPTS_MAX: usize = 1024;
/// Bytes of projection writes in one batch, about (a batch is closed after
/// the receipt that passes this).
pub const FOLD_BYTES_MAX: usize = 4 * 1024 * 1024;
/// How often a fold whose guard keeps failing is retried before the
/// worldline goes back to the queue.
const GUARD_RETRIES_MAX: usize = 16;
/// How long a worldline whose storage was unavailable waits before it is
/// folded again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The derived space, as the projections read it.
pub struct Kv<'a>(pub &'a dyn DerivedKv);

impl KvRead for Kv<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, WorldlineError> {
        self.0.get(key).map_err(store_error)
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
}

impl Default for ProjectorStats {
    fn default() -> Self {
        ProjectorStats {
            receipts: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            lag_seconds: Histogram::new(SECONDS_BOUNDS),
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
}

#[derive(Default)]
struct Queue {
    order: VecDeque<WorldlineId>,
    /// The worldlines in `order`, with when each was queued.
    queued: HashMap<WorldlineId, Instant>,
    /// Worldlines waiting for storage to come back, and when to retry.
    later: Vec<(Instant, WorldlineId)>,
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
    Sweep,
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

    fn notify(&self, worldline: WorldlineId) {
        let mut q = self.lock();
        if q.stopping || q.failed.contains_key(&worldline) {
            return;
        }
        if let std::collections::hash_map::Entry::Vacant(v) = q.queued.entry(worldline) {
            v.insert(Instant::now());
            q.order.push_back(worldline);
            self.wake.notify_one();
        }
    }

    /// The next worldline to fold, or a sweep once `sweep_at` has passed
    /// with nothing queued; `None` once stopping.
    fn next(&self, sweep_at: Instant) -> Option<Next> {
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
                    v.insert(now);
                    q.order.push_back(w);
                }
            }
            if let Some(w) = q.order.pop_front() {
                let since = q.queued.remove(&w).unwrap_or(now);
                return Some(Next::Fold(w, since));
            }
            if now >= sweep_at {
                return Some(Next::Sweep);
            }
            let wait = q
                .later
                .iter()
                .map(|(at, _)| *at)
                .chain([sweep_at])
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
}

impl Projector {
    /// A projector over `store`'s derived space, or `None` if the store
    /// keeps none. Its thread starts at once and first queues every
    /// worldline, so projections catch up with receipts written while the
    /// server was down (or before it had projections).
    ///
    /// The thread runs `nice` steps of niceness below the server's own
    /// (0: the same priority; at most [`NICE_MAX`] in all). Where the
    /// system refuses, it says so in the log and runs at the server's.
    pub fn start(store: Arc<dyn Store>, limits: WorldlineLimits, nice: i32) -> Option<Projector> {
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
        };
        let thread = std::thread::Builder::new()
            .name("worldline-projector".into())
            .spawn(move || {
                lower_priority(nice);
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
            queued: q.order.len(),
            retrying: q.later.len(),
            failed: q.failed.len(),
        }
    }

    /// Queues `worldline` to be folded up to its head.
    pub fn notify(&self, worldline: WorldlineId) {
        self.shared.notify(worldline);
    }

    /// Queues the worldline whose receipts context is `context`, if it is
    /// one (the tap the ledger calls for every appended context).
    pub fn notify_context(&self, context: &str) {
        if let Ok(w) = WorldlineId::from_context_id(context) {
            self.shared.notify(w);
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

    /// Runs `query` over the derived space at one consistent position of
    /// `projection`: the checkpoint read before and after must agree, else
    /// the query runs again (a write moved it). Returns the checkpoint and
    /// the answer.
    pub fn consistent<T>(
        &self,
        projection: &dyn Projection,
        worldline: &WorldlineId,
        query: impl Fn(&dyn KvRead) -> Result<T, WorldlineError>,
    ) -> Result<(Option<ProjectionCheckpoint>, T), WorldlineError> {
        let kv = Kv(self.kv());
        for _ in 0..64 {
            let before = read_checkpoint(&kv, projection, worldline)?;
            let answer = query(&kv)?;
            let after = read_checkpoint(&kv, projection, worldline)?;
            if before == after {
                return Ok((after, answer));
            }
        }
        Err(WorldlineError::Unavailable {
            message: format!(
                "the {} projection of worldline {worldline} moved during 64 attempts to read it; retry",
                projection.name()
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
        self.sweep();
        let mut sweep_at = Instant::now() + SWEEP_EVERY;
        while let Some(next) = self.shared.next(sweep_at) {
            let (next, since) = match next {
                Next::Fold(w, since) => (w, since),
                Next::Sweep => {
                    self.sweep();
                    sweep_at = Instant::now() + SWEEP_EVERY;
                    continue;
                }
            };
            match self.fold(&next) {
                // Also when nothing was left to fold (another node did it):
                // a query waiting here looks again.
                Ok(folded) => {
                    if folded > 0 {
                        self.shared
                            .stats
                            .lag_seconds
                            .observe_duration(since.elapsed());
                    }
                    self.shared.progress.send_modify(|n| *n += 1);
                }
                Err(e) if e.code() == ErrorCode::Unavailable => {
                    tracing::warn!(worldline = %next, error = %e.message(), "projection paused; storage unavailable");
                    self.shared
                        .lock()
                        .later
                        .push((Instant::now() + RETRY_AFTER, next));
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

    /// Folds `worldline` up to its head as it is now; returns how many
    /// receipts this node folded.
    pub fn fold(&self, worldline: &WorldlineId) -> Result<u64, WorldlineError> {
        let reader = ReceiptReader::new(*worldline, &self.limits);
        let context = reader.context();
        let kv = self
            .store
            .derived()
            .expect("a projector exists only over a derived space");
        let all = projections();
        let mut conflicts = 0;
        let mut total = 0;
        loop {
            let head = self
                .store
                .head(context)
                .map_err(store_error)?
                .map_or(0, |h| h.sequence);
            let mut guards: Vec<Guard> = Vec::with_capacity(all.len());
            let mut from = u64::MAX;
            for p in all {
                let key = checkpoint_key(p, worldline);
                let value = kv.get(&key).map_err(store_error)?;
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
                from = from.min(seq);
                guards.push((key, value));
            }
            if from >= head {
                return Ok(total);
            }
            // The checkpoints just read are what the folds read them as.
            let known = Pinned {
                kv: Kv(kv),
                pinned: &guards,
            };
            let until = head.min(from + FOLD_RECEIPTS_MAX as u64);
            let mut batch = KvBatch::new();
            let mut folded = 0u64;
            let mut at = from;
            let mut stale = false;
            'read: while at < until {
                let entries: Vec<Entry> = read_entries(
                    &*self.store,
                    context,
                    at,
                    until,
                    READ_CHUNK.min((until - at) as usize),
                    None,
                )?;
                if entries.is_empty() {
                    return Err(WorldlineError::corrupt(format!(
                        "worldline {worldline} ends at receipt {at}, before its head {head}"
                    )));
                }
                for e in &entries {
                    let receipt = reader
                        .read(e)
                        .map_err(|err| err.in_stored(format_args!("receipt {}", e.sequence)))?;
                    for p in all {
                        if let Err(err) = apply_receipt(p, &receipt, &known, &mut batch) {
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
                    folded += 1;
                    at = e.sequence;
                    if batch.bytes() >= FOLD_BYTES_MAX {
                        break 'read;
                    }
                }
            }
            let writes: Vec<DerivedWrite> = batch.into_writes().collect();
            if !stale && kv.write_if(&guards, &writes).map_err(store_error)? {
                self.shared
                    .stats
                    .receipts
                    .fetch_add(folded, Ordering::Relaxed);
                self.shared.stats.writes.fetch_add(1, Ordering::Relaxed);
                self.shared.progress.send_modify(|n| *n += 1);
                conflicts = 0;
                total += folded;
            } else {
                self.shared.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                conflicts += 1;
                if conflicts >= GUARD_RETRIES_MAX {
                    // Another node keeps folding this worldline: leave it to
                    // it, and look again later.
                    self.shared
                        .lock()
                        .later
                        .push((Instant::now() + RETRY_AFTER, *worldline));
                    return Ok(total);
                }
            }
        }
    }
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
/// read to start): those are answered without reading them again.
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

/// Whether any of `guards` (checkpoint keys and the values a fold read)
/// holds something else now: another node folded meanwhile.
fn checkpoints_moved(kv: &dyn DerivedKv, guards: &[Guard]) -> Result<bool, WorldlineError> {
    for (key, read) in guards {
        if kv.get(key).map_err(store_error)? != *read {
            return Ok(true);
        }
    }
    Ok(false)
}
