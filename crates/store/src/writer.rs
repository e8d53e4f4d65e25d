//! Group commit: many concurrent requests, one storage batch, one fsync.
//!
//! Requests queue on a bounded channel. A dedicated thread takes whatever is
//! queued (up to the batch limits), hands it to [`Store::write`] as one batch
//! and, once it is durable, publishes the new entries and answers every
//! request. While one batch is being fsynced the next one accumulates, so the
//! batch size adapts to the load: one request alone pays one fsync, a
//! thousand concurrent requests share one.

use std::sync::Arc;
use std::sync::atomic::Ordering;
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
/// any request of the batch is answered.
pub type OnCommit = Box<dyn Fn(&[(Arc<str>, Arc<Entry>)]) + Send + 'static>;

enum Msg {
    Job(Job),
    /// Commit what is queued before this, sync, and exit.
    Stop,
}

struct Job {
    command: WriteCommand,
    bytes: usize,
    reply: oneshot::Sender<Result<WriteOutcome, WriteError>>,
    _permit: OwnedSemaphorePermit,
}

/// Handle to the group-commit thread. Dropping every handle (or calling
/// [`Writer::shutdown`]) lets the thread drain the queue, sync the store and
/// exit.
pub struct Writer {
    tx: mpsc::Sender<Msg>,
    bytes: Arc<Semaphore>,
    /// Queue byte limit, in the semaphore's unit (bytes).
    bytes_max: usize,
    /// Fires when the thread has drained, synced and exited, with the
    /// result of the final sync.
    done: std::sync::Mutex<Option<oneshot::Receiver<Result<(), StoreError>>>>,
    stats: Arc<WriterStats>,
    queue_commands_max: usize,
}

impl Writer {
    /// Starts the writer thread over `store`.
    pub fn spawn(
        store: Arc<dyn Store>,
        config: WriterConfig,
        clock: Arc<dyn Clock>,
        on_commit: OnCommit,
    ) -> Writer {
        let (tx, rx) = mpsc::channel(config.queue_commands_max.max(1));
        let bytes_max = config
            .queue_bytes_max
            .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        let (done_tx, done) = oneshot::channel();
        let stats = Arc::new(WriterStats::default());
        let queue_commands_max = config.queue_commands_max.max(1);
        let recorder = stats.clone();
        std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || {
                let synced = run(store, config, clock, on_commit, rx, &recorder);
                let _ = done_tx.send(synced);
            })
            .expect("spawning the writer thread");
        Writer {
            tx,
            bytes: Arc::new(Semaphore::new(bytes_max)),
            bytes_max,
            done: std::sync::Mutex::new(Some(done)),
            stats,
            queue_commands_max,
        }
    }

    /// What the writer did since it started.
    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    /// Commands and bytes waiting in the queue now (and being committed).
    pub fn queued(&self) -> (usize, usize) {
        let commands = self.queue_commands_max - self.tx.capacity().min(self.queue_commands_max);
        let bytes = self.bytes_max - self.bytes.available_permits().min(self.bytes_max);
        (commands, bytes)
    }

    /// Queues `command` and waits until it is durable (or failed). Waits for
    /// queue space when the queue is full: back-pressure, never unbounded
    /// memory.
    pub async fn submit(&self, command: WriteCommand) -> Result<WriteOutcome, WriteError> {
        let bytes = command.approximate_size().max(1);
        if bytes > self.bytes_max {
            return Err(WriteError::TooLarge {
                bytes,
                limit: self.bytes_max,
            });
        }
        let permit = self
            .bytes
            .clone()
            .acquire_many_owned(bytes as u32)
            .await
            .map_err(|_| WriteError::Closed)?;
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Job(Job {
                command,
                bytes,
                reply,
                _permit: permit,
            }))
            .await
            .map_err(|_| WriteError::Closed)?;
        rx.await.map_err(|_| WriteError::Closed)?
    }

    /// Stops accepting writes, lets everything already queued commit, syncs
    /// the store and waits for the writer thread to exit. An error says the
    /// final sync failed: writes acknowledged under a relaxed fsync policy
    /// may not be on disk. Only the first call reports it.
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        self.bytes.close();
        let _ = self.tx.send(Msg::Stop).await;
        let done = self.done.lock().unwrap_or_else(|p| p.into_inner()).take();
        match done {
            Some(done) => done.await.unwrap_or(Err(StoreError::Internal(
                "the writer thread ended without reporting its final sync".into(),
            ))),
            None => Ok(()),
        }
    }
}

fn run(
    store: Arc<dyn Store>,
    config: WriterConfig,
    clock: Arc<dyn Clock>,
    on_commit: OnCommit,
    mut rx: mpsc::Receiver<Msg>,
    stats: &WriterStats,
) -> Result<(), StoreError> {
    let mut jobs: Vec<Job> = Vec::with_capacity(config.batch_commands_max);
    let mut stopping = false;
    while !stopping {
        let first = match rx.blocking_recv() {
            Some(Msg::Job(job)) => job,
            Some(Msg::Stop) | None => break,
        };
        let mut bytes = first.bytes;
        jobs.push(first);
        while jobs.len() < config.batch_commands_max && bytes < config.batch_bytes_max {
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
        let (commands, replies): (Vec<_>, Vec<_>) = jobs
            .drain(..)
            .map(|j| (j.command, (j.reply, j._permit)))
            .unzip();
        stats.batch_commands.observe(commands.len() as f64);
        let started = std::time::Instant::now();
        let written = store.write(clock.now_ns(), commands);
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
                    on_commit(&committed.entries);
                }
                for ((reply, _permit), outcome) in replies.into_iter().zip(committed.outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                stats.failed_commits.fetch_add(1, Ordering::Relaxed);
                for (reply, _permit) in replies {
                    let _ = reply.send(Err(WriteError::Store(e.clone())));
                }
            }
        }
    }
    // Refuse whatever arrives after the stop, then make everything durable.
    rx.close();
    store.sync()
}
