//! Group commit: many concurrent requests, one storage batch, one fsync.
//!
//! Requests queue, bounded in commands and in bytes. A committer takes
//! whatever is queued (up to the batch limits), hands it to [`Store::write`]
//! as one batch and, once it is durable, publishes the new entries and
//! answers every request. While one batch is being written the next one
//! accumulates, so the batch size adapts to the load: one request alone pays
//! one fsync, a thousand concurrent requests share one.
//!
//! Who commits depends on the store ([`Store::may_block`]):
//! - a store whose writes may block on I/O (disk, database) gets a dedicated
//!   thread, so an fsync never stalls the async runtime;
//! - a store that never blocks (memory) is committed by the requests
//!   themselves: the request that finds no commit in flight commits the
//!   queue on its own thread and answers the others (leader/follower). One
//!   request alone crosses no thread; under load, a commit that finds more
//!   queued behind it hands the rest to a task of its own, so no request's
//!   answer waits for other requests' commits.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use converge_ledger_core::Entry;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::stats::WriterStats;
use crate::{Store, StoreError, WriteCommand, WriteOutcome};

/// The server clock, injectable for deterministic tests.
pub trait Clock: Send + Sync + 'static {
    /// Nanoseconds since the Unix epoch.
    fn now_ns(&self) -> u64;
}

/// The system wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ns(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    }
}

/// Bounds of the write queue and of one group commit.
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Most commands waiting for the writer.
    pub queue_commands_max: usize,
    /// Most bytes (payloads, keys, metadata) waiting for the writer.
    pub queue_bytes_max: usize,
    /// Most commands in one group commit.
    pub batch_commands_max: usize,
    /// Most bytes in one group commit (a single larger command still goes
    /// alone).
    pub batch_bytes_max: usize,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            queue_commands_max: 16 * 1024,
            queue_bytes_max: 256 * 1024 * 1024,
            batch_commands_max: 4096,
            batch_bytes_max: 16 * 1024 * 1024,
        }
    }
}

/// Why a write was not done.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WriteError {
    /// The storage failed; nothing of the batch became durable.
    Store(StoreError),
    /// The command alone is larger than the whole write queue.
    TooLarge {
        /// Its size in bytes.
        bytes: usize,
        /// The queue's byte limit.
        limit: usize,
    },
    /// The writer has shut down.
    Closed,
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Store(e) => e.fmt(f),
            WriteError::TooLarge { bytes, limit } => write!(
                f,
                "the write is {bytes} bytes, larger than the whole write queue ({limit} bytes)"
            ),
            WriteError::Closed => f.write_str("the ledger is shutting down"),
        }
    }
}

impl std::error::Error for WriteError {}

/// Called with every batch of newly durable entries, in commit order, before
/// any request of the batch is answered. Calls never overlap.
pub type OnCommit = Box<dyn Fn(&[(Arc<str>, Arc<Entry>)]) + Send + Sync + 'static>;

enum Msg {
    Job(Job),
    /// Commit what is queued before this, sync, and exit.
    Stop,
}

struct Job {
    command: WriteCommand,
    bytes: usize,
    reply: oneshot::Sender<Result<WriteOutcome, WriteError>>,
    /// Its bytes of the queue, and (committed in requests) its queue slot.
    _permits: (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>),
}

/// The answer to a queued write ([`Writer::enqueue`]): ready once the write
/// is durable (or failed).
#[derive(Debug)]
#[must_use = "a queued write is answered through its Pending"]
pub struct Pending(oneshot::Receiver<Result<WriteOutcome, WriteError>>);

impl std::future::Future for Pending {
    type Output = Result<WriteOutcome, WriteError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|answer| answer.unwrap_or(Err(WriteError::Closed)))
    }
}

/// The leadership of the requests' group commit, taken up by a caller that
/// queued into an idle queue: it commits when exercised or dropped, so a
/// caller cancelled between queueing and committing cannot strand the
/// queue.
struct Leadership<'a>(Option<&'a Arc<Combiner>>);

impl Leadership<'_> {
    fn exercise(&mut self) {
        if let Some(combiner) = self.0.take() {
            combiner.lead();
        }
    }
}

impl Drop for Leadership<'_> {
    fn drop(&mut self) {
        self.exercise();
    }
}

/// Handle to the group committer. Dropping every handle (or calling
/// [`Writer::shutdown`]) lets it drain the queue, sync the store and stop.
pub struct Writer {
    bytes: Arc<Semaphore>,
    /// Queue byte limit, in the semaphore's unit (bytes).
    bytes_max: usize,
    stats: Arc<WriterStats>,
    queue_commands_max: usize,
    committer: Committer,
}

enum Committer {
    /// A dedicated thread commits (stores that may block).
    Thread {
        tx: mpsc::Sender<Msg>,
        /// Fires when the thread has drained, synced and exited, with the
        /// result of the final sync.
        done: Mutex<Option<oneshot::Receiver<Result<(), StoreError>>>>,
    },
    /// The requests commit (stores that never block).
    Requests(Arc<Combiner>),
}

/// What the committer needs, shared by whoever commits.
struct Commit {
    store: Arc<dyn Store>,
    config: WriterConfig,
    clock: Arc<dyn Clock>,
    on_commit: OnCommit,
    stats: Arc<WriterStats>,
}

impl Writer {
    /// Starts the group committer over `store`: a thread of its own when
    /// the store may block, the requests themselves when it never does.
    pub fn spawn(
        store: Arc<dyn Store>,
        config: WriterConfig,
        clock: Arc<dyn Clock>,
        on_commit: OnCommit,
    ) -> Writer {
        let bytes_max = config
            .queue_bytes_max
            .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        let stats = Arc::new(WriterStats::default());
        let queue_commands_max = config.queue_commands_max.max(1);
        let inline = !store.may_block();
        let commit = Commit {
            store,
            config,
            clock,
            on_commit,
            stats: stats.clone(),
        };
        let committer = if inline {
            Committer::Requests(Arc::new(Combiner {
                slots: Arc::new(Semaphore::new(queue_commands_max)),
                state: Mutex::new(Queue::default()),
                idle: tokio::sync::Notify::new(),
                commit,
            }))
        } else {
            let (tx, rx) = mpsc::channel(queue_commands_max);
            let (done_tx, done) = oneshot::channel();
            std::thread::Builder::new()
                .name("ledger-writer".into())
                .spawn(move || {
                    let synced = run(commit, rx);
                    let _ = done_tx.send(synced);
                })
                .expect("spawning the writer thread");
            Committer::Thread {
                tx,
                done: Mutex::new(Some(done)),
            }
        };
        Writer {
            bytes: Arc::new(Semaphore::new(bytes_max)),
            bytes_max,
            stats,
            queue_commands_max,
            committer,
        }
    }

    /// What the writer did since it started.
    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    /// Whether requests commit on their own threads (the store never
    /// blocks) rather than through the writer thread.
    pub fn commits_in_requests(&self) -> bool {
        matches!(self.committer, Committer::Requests(_))
    }

    /// Commands and bytes waiting in the queue now (and being committed).
    pub fn queued(&self) -> (usize, usize) {
        let free = match &self.committer {
            Committer::Thread { tx, .. } => tx.capacity(),
            Committer::Requests(c) => c.slots.available_permits(),
        };
        let commands = self.queue_commands_max - free.min(self.queue_commands_max);
        let bytes = self.bytes_max - self.bytes.available_permits().min(self.bytes_max);
        (commands, bytes)
    }

    /// Queues `command` and waits until it is durable (or failed). Waits for
    /// queue space when the queue is full: back-pressure, never unbounded
    /// memory.
    pub async fn submit(&self, command: WriteCommand) -> Result<WriteOutcome, WriteError> {
        let mut leadership = Leadership(None);
        let pending = self.queue(command, &mut leadership).await;
        drop(leadership);
        pending?.await
    }

    /// Queues `commands` in order and returns once all are queued (waiting
    /// for queue space as [`Writer::submit`] does), with each one's answer
    /// to come: they commit in this order, in one group commit or in
    /// several consecutive ones. For a caller with many independent writes
    /// in hand (a pipelined stream), which need not wait for one before
    /// queueing the next.
    ///
    /// Unlike [`Writer::submit`], it never waits in line for queue space
    /// (a waiter in line is handed space as it frees, and keeps it while its
    /// caller does not poll it: a stream whose client stopped reading could
    /// hold space that every other write waits behind). It takes space only
    /// when all a command needs is free at once, and otherwise retries
    /// every millisecond.
    pub async fn enqueue(&self, commands: Vec<WriteCommand>) -> Vec<Result<Pending, WriteError>> {
        let mut leadership = Leadership(None);
        let mut queued = Vec::with_capacity(commands.len());
        for command in commands {
            let mut command = Some(command);
            let answer = loop {
                match self.try_queue(&mut command, &mut leadership) {
                    Some(answer) => break answer,
                    None => {
                        // Full: what is queued must commit to make room.
                        leadership.exercise();
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    }
                }
            };
            queued.push(answer);
        }
        queued
    }

    /// Queues `command` if the queue has room for it now; `None` (the
    /// command left in place) when it has not.
    fn try_queue<'a>(
        &'a self,
        command: &mut Option<WriteCommand>,
        leadership: &mut Leadership<'a>,
    ) -> Option<Result<Pending, WriteError>> {
        use tokio::sync::TryAcquireError;
        use tokio::sync::mpsc::error::TrySendError;
        let bytes = command.as_ref()?.approximate_size().max(1);
        if bytes > self.bytes_max {
            return Some(Err(WriteError::TooLarge {
                bytes,
                limit: self.bytes_max,
            }));
        }
        let permit = match self.bytes.clone().try_acquire_many_owned(bytes as u32) {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => return Some(Err(WriteError::Closed)),
            Err(TryAcquireError::NoPermits) => return None,
        };
        let (reply, rx) = oneshot::channel();
        match &self.committer {
            Committer::Thread { tx, .. } => {
                let slot = match tx.try_reserve() {
                    Ok(slot) => slot,
                    Err(TrySendError::Closed(())) => return Some(Err(WriteError::Closed)),
                    Err(TrySendError::Full(())) => return None,
                };
                slot.send(Msg::Job(Job {
                    command: command.take()?,
                    bytes,
                    reply,
                    _permits: (permit, None),
                }));
            }
            Committer::Requests(combiner) => {
                let slot = match combiner.slots.clone().try_acquire_owned() {
                    Ok(slot) => slot,
                    Err(TryAcquireError::Closed) => return Some(Err(WriteError::Closed)),
                    Err(TryAcquireError::NoPermits) => return None,
                };
                let job = Job {
                    command: command.take()?,
                    bytes,
                    reply,
                    _permits: (permit, Some(slot)),
                };
                match combiner.enqueue(job) {
                    Ok(true) => leadership.0 = Some(combiner),
                    Ok(false) => {}
                    Err(e) => return Some(Err(e)),
                }
            }
        }
        Some(Ok(Pending(rx)))
    }

    /// Queues one command. When requests commit, one that finds no commit
    /// in flight takes up the leadership (`leadership`): the caller commits
    /// once it has queued what it has, or before it would wait for queue
    /// space (which only a commit frees).
    async fn queue<'a>(
        &'a self,
        command: WriteCommand,
        leadership: &mut Leadership<'a>,
    ) -> Result<Pending, WriteError> {
        use tokio::sync::TryAcquireError;
        let bytes = command.approximate_size().max(1);
        if bytes > self.bytes_max {
            return Err(WriteError::TooLarge {
                bytes,
                limit: self.bytes_max,
            });
        }
        let permit = match self.bytes.clone().try_acquire_many_owned(bytes as u32) {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => return Err(WriteError::Closed),
            Err(TryAcquireError::NoPermits) => {
                leadership.exercise();
                self.bytes
                    .clone()
                    .acquire_many_owned(bytes as u32)
                    .await
                    .map_err(|_| WriteError::Closed)?
            }
        };
        let (reply, rx) = oneshot::channel();
        match &self.committer {
            Committer::Thread { tx, .. } => {
                tx.send(Msg::Job(Job {
                    command,
                    bytes,
                    reply,
                    _permits: (permit, None),
                }))
                .await
                .map_err(|_| WriteError::Closed)?;
            }
            Committer::Requests(combiner) => {
                let slot = match combiner.slots.clone().try_acquire_owned() {
                    Ok(slot) => slot,
                    Err(TryAcquireError::Closed) => return Err(WriteError::Closed),
                    Err(TryAcquireError::NoPermits) => {
                        leadership.exercise();
                        combiner
                            .slots
                            .clone()
                            .acquire_owned()
                            .await
                            .map_err(|_| WriteError::Closed)?
                    }
                };
                let job = Job {
                    command,
                    bytes,
                    reply,
                    _permits: (permit, Some(slot)),
                };
                if combiner.enqueue(job)? {
                    leadership.0 = Some(combiner);
                }
            }
        }
        Ok(Pending(rx))
    }

    /// Stops accepting writes, lets everything already queued commit, syncs
    /// the store and waits for the committer to stop. An error says the
    /// final sync failed (writes acknowledged under a relaxed fsync policy
    /// may not be on disk) or the committer died. With the writer thread
    /// only the first call reports it; requests committing report it on
    /// every call.
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        self.bytes.close();
        match &self.committer {
            Committer::Thread { tx, done } => {
                let _ = tx.send(Msg::Stop).await;
                let done = done.lock().unwrap_or_else(|p| p.into_inner()).take();
                match done {
                    Some(done) => done.await.unwrap_or(Err(StoreError::Internal(
                        "the writer thread ended without reporting its final sync".into(),
                    ))),
                    None => Ok(()),
                }
            }
            Committer::Requests(combiner) => combiner.shutdown().await,
        }
    }
}

impl Commit {
    /// Writes `jobs` as one batch and answers each of them.
    fn batch(&self, jobs: &mut Vec<Job>) {
        let (commands, replies): (Vec<_>, Vec<_>) = jobs
            .drain(..)
            .map(|j| (j.command, (j.reply, j._permits)))
            .unzip();
        let stats = &self.stats;
        stats.batch_commands.observe(commands.len() as f64);
        let started = std::time::Instant::now();
        let written = self.store.write(self.clock.now_ns(), commands);
        stats.commit_seconds.observe_duration(started.elapsed());
        match written {
            Ok(committed) => {
                stats
                    .entries
                    .fetch_add(committed.entries.len() as u64, Ordering::Relaxed);
                let payload: usize = committed.entries.iter().map(|(_, e)| e.payload.len()).sum();
                stats
                    .payload_bytes
                    .fetch_add(payload as u64, Ordering::Relaxed);
                if !committed.entries.is_empty() {
                    (self.on_commit)(&committed.entries);
                }
                // Each request leaves the queue's accounting before it is
                // answered: an answered request is never counted as queued.
                for ((reply, permits), outcome) in replies.into_iter().zip(committed.outcomes) {
                    drop(permits);
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                stats.failed_commits.fetch_add(1, Ordering::Relaxed);
                for (reply, permits) in replies {
                    drop(permits);
                    let _ = reply.send(Err(WriteError::Store(e.clone())));
                }
            }
        }
    }

    /// Whether a batch holding `commands` commands and `bytes` bytes has
    /// room for more.
    fn has_room(&self, commands: usize, bytes: usize) -> bool {
        commands < self.config.batch_commands_max && bytes < self.config.batch_bytes_max
    }
}

fn run(commit: Commit, mut rx: mpsc::Receiver<Msg>) -> Result<(), StoreError> {
    let mut jobs: Vec<Job> = Vec::with_capacity(commit.config.batch_commands_max);
    let mut stopping = false;
    while !stopping {
        let first = match rx.blocking_recv() {
            Some(Msg::Job(job)) => job,
            Some(Msg::Stop) | None => break,
        };
        let mut bytes = first.bytes;
        jobs.push(first);
        while commit.has_room(jobs.len(), bytes) {
            match rx.try_recv() {
                Ok(Msg::Job(job)) => {
                    bytes += job.bytes;
                    jobs.push(job);
                }
                Ok(Msg::Stop) => {
                    stopping = true;
                    break;
                }
                Err(_) => break,
            }
        }
        commit.batch(&mut jobs);
    }
    // Refuse whatever arrives after the stop, then make everything durable.
    rx.close();
    commit.store.sync()
}

/// Group commit by the requests themselves (leader/follower), for stores
/// that never block.
struct Combiner {
    /// Queue slots (`queue_commands_max`).
    slots: Arc<Semaphore>,
    state: Mutex<Queue>,
    /// Told whenever committing stops with the queue empty.
    idle: tokio::sync::Notify,
    commit: Commit,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Someone is committing: it will take what is queued.
    committing: bool,
    /// Shut down: nothing more is accepted.
    closed: bool,
    /// A commit panicked or its committer was dropped: the queue was
    /// refused.
    abandoned: bool,
}

impl Combiner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `job`; `true` when the caller must commit (no one else is).
    fn enqueue(&self, job: Job) -> Result<bool, WriteError> {
        let mut q = self.lock();
        if q.closed {
            return Err(WriteError::Closed);
        }
        q.jobs.push_back(job);
        Ok(!std::mem::replace(&mut q.committing, true))
    }

    /// Commits one batch as the leader; if more was queued meanwhile, hands
    /// the leadership to a task that commits the rest, so the caller's own
    /// answer is not held back by other requests' commits.
    fn lead(self: &Arc<Self>) {
        if !self.commit_one() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                // The lease gives the leadership back if the task is dropped
                // before the queue is empty (a runtime shutting down drops
                // tasks, even unstarted ones).
                let lease = Lease(self.clone());
                runtime.spawn(async move {
                    while lease.0.commit_one() {
                        tokio::task::yield_now().await;
                    }
                    std::mem::forget(lease);
                });
            }
            // Outside a Tokio runtime there is no task to hand over to:
            // commit the rest here.
            Err(_) => while self.commit_one() {},
        }
    }

    /// Commits one batch of what is queued (the caller is the leader).
    /// Returns `true` when more is queued and the caller is still the
    /// leader, `false` when the queue is empty and leadership is released.
    /// A commit that panics is caught: its requests and every queued one
    /// are answered `Closed`, the queue closes, and shutdown reports it.
    fn commit_one(&self) -> bool {
        let mut jobs = Vec::new();
        {
            let mut q = self.lock();
            let mut bytes = 0;
            while self.commit.has_room(jobs.len(), bytes) {
                let Some(job) = q.jobs.pop_front() else { break };
                bytes += job.bytes;
                jobs.push(job);
            }
        }
        if !jobs.is_empty() {
            let committed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.commit.batch(&mut jobs)
            }));
            if committed.is_err() {
                // Whatever the batch had not answered is answered `Closed`
                // by dropping its reply senders.
                drop(jobs);
                self.abandon();
                return false;
            }
        }
        // Checking for more and releasing happen under one lock: a request
        // queued after this sees no leader and leads itself.
        let mut q = self.lock();
        if q.jobs.is_empty() {
            q.committing = false;
            // Only a shutdown waits for this, and it marks the queue closed
            // (under this lock) before it waits.
            let waited = q.closed;
            drop(q);
            if waited {
                self.idle.notify_waiters();
            }
            false
        } else {
            true
        }
    }

    /// Gives the leadership up for good: every queued request is answered
    /// `Closed`, nothing more is accepted, and shutdown reports it.
    fn abandon(&self) {
        let orphaned = {
            let mut q = self.lock();
            q.committing = false;
            q.closed = true;
            q.abandoned = true;
            std::mem::take(&mut q.jobs)
        };
        drop(orphaned);
        self.idle.notify_waiters();
    }

    async fn shutdown(&self) -> Result<(), StoreError> {
        self.slots.close();
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            {
                let mut q = self.lock();
                q.closed = true;
                if q.abandoned {
                    return Err(StoreError::Internal(
                        "a group commit panicked; the writes queued with it were refused".into(),
                    ));
                }
                // Not committing means nothing is queued: whoever queues
                // while no one commits becomes the leader at once.
                if !q.committing {
                    break;
                }
            }
            idle.await;
        }
        self.commit.store.sync()
    }
}

impl Drop for Combiner {
    /// The last handle is gone and the queue is empty (a leader holds a
    /// handle while it commits): make everything durable, as the writer
    /// thread does when its channel closes.
    fn drop(&mut self) {
        let _ = self.commit.store.sync();
    }
}

/// The leadership held by a spawned committing task; dropped before the
/// task finished (its runtime shut down), it abandons the queue rather than
/// leave requests waiting for a committer that will never run.
struct Lease(Arc<Combiner>);

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use converge_ledger_core::NewEntry;

    use super::*;
    use crate::testkit::Probe;
    use crate::{AppendCommand, MemoryStore};

    /// A store that never blocks (memory: requests commit), or one that
    /// may (embedded, without fsync: the writer thread commits). The
    /// directory lives as long as the store is used.
    fn store(may_block: bool) -> (Arc<dyn Store>, Option<tempfile::TempDir>) {
        if !may_block {
            return (Arc::new(MemoryStore::new()), None);
        }
        #[cfg(feature = "embedded")]
        {
            use crate::{EmbeddedOptions, EmbeddedStore, FsyncPolicy};
            let dir = tempfile::tempdir().unwrap();
            let mut options = EmbeddedOptions::new(dir.path().join("db"));
            options.fsync = FsyncPolicy::Never;
            (Arc::new(EmbeddedStore::open(options).unwrap()), Some(dir))
        }
        #[cfg(not(feature = "embedded"))]
        unreachable!("the writer-thread tests need the embedded store")
    }

    fn append(context: &str, i: usize) -> WriteCommand {
        WriteCommand::Append(AppendCommand {
            context: context.to_owned(),
            entry: NewEntry {
                key: "k".into(),
                payload: i.to_be_bytes().to_vec(),
                metadata: Default::default(),
                lamport: 0,
            },
            idempotency_key: None,
        })
    }

    fn writer(
        store: Arc<dyn Store>,
        config: WriterConfig,
        commits: Arc<AtomicUsize>,
    ) -> Arc<Writer> {
        Arc::new(Writer::spawn(
            store,
            config,
            Arc::new(SystemClock),
            Box::new(move |entries| {
                commits.fetch_add(entries.len(), Ordering::SeqCst);
            }),
        ))
    }

    /// A request left unanswered shows as a timeout, not a hung test.
    async fn within_10s(f: impl std::future::Future<Output = ()>) {
        tokio::time::timeout(std::time::Duration::from_secs(10), f)
            .await
            .expect("a request was left waiting: no committer took it");
    }

    /// 400 tasks over 4 contexts, 5 appends each, with a small queue and
    /// small batches: every append answered with its own entry, each
    /// context gapless, every entry published once.
    async fn concurrent_appends_are_all_answered_gapless(may_block: bool) {
        let (store, _dir) = store(may_block);
        let published = Arc::new(AtomicUsize::new(0));
        let config = WriterConfig {
            queue_commands_max: 16,
            batch_commands_max: 7,
            ..WriterConfig::default()
        };
        let w = writer(store.clone(), config, published.clone());
        assert_eq!(w.commits_in_requests(), !may_block);
        let mut tasks = Vec::new();
        for t in 0..400usize {
            let w = w.clone();
            tasks.push(tokio::spawn(async move {
                let context = format!("c{}", t % 4);
                let mut got = Vec::new();
                for i in 0..5 {
                    let n = t * 5 + i;
                    match w.submit(append(&context, n)).await {
                        Ok(WriteOutcome::Appended(e)) => {
                            assert_eq!(
                                e.payload,
                                n.to_be_bytes().to_vec(),
                                "answered another's entry"
                            );
                            got.push(e.sequence);
                        }
                        other => panic!("append {n}: {other:?}"),
                    }
                }
                (context, got)
            }));
        }
        let mut by_context: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
        for t in tasks {
            let (c, seqs) = t.await.unwrap();
            by_context.entry(c).or_default().extend(seqs);
        }
        for (c, mut seqs) in by_context {
            seqs.sort_unstable();
            assert_eq!(seqs, (1..=500).collect::<Vec<u64>>(), "context {c}");
            assert_eq!(store.head(&c).unwrap().unwrap().sequence, 500);
        }
        assert_eq!(published.load(Ordering::SeqCst), 2000);
        assert_eq!(w.stats().entries.load(Ordering::SeqCst), 2000);
        assert_eq!(w.queued(), (0, 0));
        w.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_committing_themselves_answer_every_concurrent_append_gapless() {
        within_10s(concurrent_appends_are_all_answered_gapless(false)).await;
    }

    #[cfg(feature = "embedded")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_writer_thread_answers_every_concurrent_append_gapless() {
        within_10s(concurrent_appends_are_all_answered_gapless(true)).await;
    }

    /// 300 tasks submit once each, at the same instant, into batches of 7:
    /// the requests queued behind a commit are committed by whoever leads
    /// next, with no further request to carry them.
    async fn a_burst_is_committed_without_later_requests(may_block: bool) {
        let (store, _dir) = store(may_block);
        let config = WriterConfig {
            batch_commands_max: 7,
            ..WriterConfig::default()
        };
        let w = writer(store.clone(), config, Arc::default());
        let start = Arc::new(tokio::sync::Barrier::new(300));
        let mut tasks = Vec::new();
        for i in 0..300usize {
            let (w, start) = (w.clone(), start.clone());
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                w.submit(append("c", i)).await
            }));
        }
        for t in tasks {
            assert!(matches!(t.await.unwrap(), Ok(WriteOutcome::Appended(_))));
        }
        assert_eq!(store.head("c").unwrap().unwrap().sequence, 300);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_committing_themselves_leave_no_burst_request_behind() {
        within_10s(a_burst_is_committed_without_later_requests(false)).await;
    }

    #[cfg(feature = "embedded")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_writer_thread_leaves_no_burst_request_behind() {
        within_10s(a_burst_is_committed_without_later_requests(true)).await;
    }

    /// A commit is held in flight (its store write waits for a signal)
    /// while 50 more appends queue behind it and two shutdowns begin: both
    /// shutdowns wait, every queued append commits, and a submit after the
    /// shutdown is refused and writes nothing.
    async fn shutdown_commits_what_is_queued_and_refuses_the_rest(may_block: bool) {
        let (inner, _dir) = store(may_block);
        let (release, held) = std::sync::mpsc::channel::<()>();
        let held = Mutex::new(Some(held));
        let (entered_tx, entered) = std::sync::mpsc::channel::<()>();
        let entered_tx = Mutex::new(entered_tx);
        let store: Arc<dyn Store> = Arc::new(Probe::failing(inner, move || {
            // The first write waits until the test lets it go.
            if let Some(held) = held.lock().unwrap().take() {
                let _ = entered_tx.lock().unwrap().send(());
                let _ = held.recv();
            }
            None
        }));
        let w = writer(store.clone(), WriterConfig::default(), Arc::default());
        let first = {
            let w = w.clone();
            tokio::spawn(async move { w.submit(append("c", 0)).await })
        };
        tokio::task::spawn_blocking(move || entered.recv().unwrap())
            .await
            .unwrap();
        let mut tasks = vec![first];
        for i in 1..=50usize {
            let w = w.clone();
            tasks.push(tokio::spawn(async move { w.submit(append("c", i)).await }));
        }
        // Let them queue, and both shutdowns begin, while the commit waits.
        while w.queued().0 < 50 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let shutdowns: Vec<_> = (0..2)
            .map(|_| {
                let w = w.clone();
                tokio::spawn(async move { w.shutdown().await })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        release.send(()).unwrap();
        for s in shutdowns {
            s.await.unwrap().unwrap();
        }
        for t in tasks {
            assert!(
                matches!(t.await.unwrap(), Ok(WriteOutcome::Appended(_))),
                "an append queued before the shutdown was not committed"
            );
        }
        assert_eq!(store.head("c").unwrap().unwrap().sequence, 51);
        assert!(matches!(
            w.submit(append("c", 999)).await,
            Err(WriteError::Closed)
        ));
        assert_eq!(store.head("c").unwrap().unwrap().sequence, 51);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_committing_themselves_drain_the_queue_at_shutdown() {
        within_10s(shutdown_commits_what_is_queued_and_refuses_the_rest(false)).await;
    }

    #[cfg(feature = "embedded")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_writer_thread_drains_the_queue_at_shutdown() {
        within_10s(shutdown_commits_what_is_queued_and_refuses_the_rest(true)).await;
    }

    /// A commit that panics leaves no request waiting forever: its own and
    /// every queued request are answered `Closed`, later ones too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_commit_answers_every_waiting_request_closed_and_shutdown_reports_it() {
        let writes = AtomicUsize::new(0);
        let store: Arc<dyn Store> =
            Arc::new(Probe::failing(Arc::new(MemoryStore::new()), move || {
                let n = writes.fetch_add(1, Ordering::SeqCst) + 1;
                assert_ne!(n, 3, "write {n} fails by design");
                None
            }));
        let w = writer(store.clone(), WriterConfig::default(), Arc::default());
        for i in 0..2 {
            assert!(matches!(
                w.submit(append("c", i)).await,
                Ok(WriteOutcome::Appended(_))
            ));
        }
        let mut tasks = Vec::new();
        for i in 0..50usize {
            let w = w.clone();
            tasks.push(tokio::spawn(async move { w.submit(append("c", i)).await }));
        }
        let outcomes = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            let mut v = Vec::new();
            for t in tasks {
                v.push(t.await);
            }
            v
        })
        .await
        .expect("no request may wait forever after a commit panicked");
        for o in outcomes {
            // The panic is caught: the leader's own request is answered too.
            assert!(matches!(o.unwrap(), Err(WriteError::Closed)));
        }
        assert!(matches!(
            w.submit(append("c", 7)).await,
            Err(WriteError::Closed)
        ));
        assert_eq!(store.head("c").unwrap().unwrap().sequence, 2);
        assert!(
            w.shutdown().await.is_err(),
            "shutdown must report that a commit died"
        );
    }

    /// One caller queues 60 commands to one context at once through a
    /// queue of 8 while 20 others submit: the 60 commit in the order given,
    /// and everyone is answered.
    async fn enqueued_commands_commit_in_order_through_a_full_queue(may_block: bool) {
        let (store, _dir) = store(may_block);
        let config = WriterConfig {
            queue_commands_max: 8,
            batch_commands_max: 3,
            ..WriterConfig::default()
        };
        let w = writer(store, config, Arc::default());
        let others: Vec<_> = (0..20)
            .map(|i| {
                let w = w.clone();
                tokio::spawn(async move { w.submit(append("other", 1000 + i)).await })
            })
            .collect();
        let pending = w
            .enqueue((0..60).map(|i| append("mine", i)).collect())
            .await;
        let mut last = 0;
        for (i, p) in pending.into_iter().enumerate() {
            match p.unwrap().await {
                Ok(WriteOutcome::Appended(e)) => {
                    assert_eq!(e.payload, i.to_be_bytes().to_vec());
                    assert!(e.sequence > last, "command {i} committed out of order");
                    last = e.sequence;
                }
                other => panic!("command {i}: {other:?}"),
            }
        }
        assert_eq!(last, 60);
        for o in others {
            assert!(matches!(o.await.unwrap(), Ok(WriteOutcome::Appended(_))));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_committing_themselves_commit_enqueued_commands_in_order() {
        within_10s(enqueued_commands_commit_in_order_through_a_full_queue(
            false,
        ))
        .await;
    }

    #[cfg(feature = "embedded")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_writer_thread_commits_enqueued_commands_in_order() {
        within_10s(enqueued_commands_commit_in_order_through_a_full_queue(true)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_enqueue_cancelled_half_way_leaves_the_queue_committing() {
        within_10s(async {
            let (store, _dir) = store(false);
            let config = WriterConfig {
                queue_commands_max: 4,
                batch_commands_max: 2,
                ..WriterConfig::default()
            };
            let w = writer(store.clone(), config, Arc::default());
            // Held back by nothing but the queue's size, then dropped while
            // it waits for room.
            let big = w.enqueue((0..400).map(|i| append("c", i)).collect());
            let _ = tokio::time::timeout(std::time::Duration::from_millis(3), big).await;
            match w.submit(append("c", 9999)).await {
                Ok(WriteOutcome::Appended(e)) => {
                    let head = store.head("c").unwrap().unwrap();
                    assert_eq!(e.sequence, head.sequence, "answered once committed");
                }
                other => panic!("{other:?}"),
            }
        })
        .await;
    }
}
