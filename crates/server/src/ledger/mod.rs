//! The ledger in process: validation, group-commit appends, bounded reads,
//! snapshots and loads, proofs, and gapless watches over one [`Store`], in
//! one file per concern.

mod read;
mod snapshot;
mod watch;
mod write;

use std::sync::Arc;

use converge_ledger_core::{HeadSigner, Limits, Metadata, PublicKey};
use converge_ledger_store::{Clock, Store, SystemClock, Writer};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{Hub, LedgerConfig, LedgerError};

pub use read::{ConsistencyProof, InclusionProof, RecordsChunk};
pub use snapshot::{Loaded, Snapshot, SnapshotInfo};
pub use watch::WatchStream;
pub use write::{Appended, AppendedBatch, PendingAppend};

/// The ledger in process: validation, group-commit appends, bounded reads,
/// snapshots, loads and gapless watches over one [`Store`].
pub struct Ledger {
    store: Arc<dyn Store>,
    writer: Writer,
    hub: Arc<Hub>,
    config: LedgerConfig,
    clock: Arc<dyn Clock>,
    watchers: Arc<Semaphore>,
    /// Bytes streamed loads may hold at once.
    load_budget: Arc<Semaphore>,
    /// Read, SnapshotStream and LoadStream streams open at once.
    streams: Arc<Semaphore>,
    /// AppendStreams open at once.
    append_streams: Arc<Semaphore>,
    /// Signs heads and snapshots.
    signer: Arc<HeadSigner>,
    /// Flips to `true` when shutdown begins; watch streams end on it.
    stopping: tokio::sync::watch::Sender<bool>,
    /// Told the contexts of every durable commit, and of every context
    /// another node announced (see [`Ledger::tap_appended`]).
    taps: Taps,
}

/// Callbacks told which contexts gained entries.
/// A callback told the context of a commit and, when known, the sequence
/// it reached ([`Ledger::tap_appended`]).
pub type AppendedTap = Arc<dyn Fn(&str, Option<u64>) + Send + Sync>;

type Taps = Arc<std::sync::RwLock<Vec<AppendedTap>>>;

fn tell(taps: &Taps, context: &str, through: Option<u64>) {
    for tap in taps.read().unwrap_or_else(|p| p.into_inner()).iter() {
        tap(context, through);
    }
}

impl Ledger {
    /// A ledger over `store` with the system clock and a fresh, ephemeral
    /// signing key (use [`Ledger::with_signer`] to keep a key across
    /// restarts).
    pub fn new(store: Arc<dyn Store>, config: LedgerConfig) -> Arc<Ledger> {
        let signer = Arc::new(HeadSigner::from_seed(crate::keys::random_seed()));
        Self::with_signer(store, config, signer, Arc::new(SystemClock))
    }

    /// A ledger over `store` with a given signing key and clock.
    pub fn with_signer(
        store: Arc<dyn Store>,
        config: LedgerConfig,
        signer: Arc<HeadSigner>,
        clock: Arc<dyn Clock>,
    ) -> Arc<Ledger> {
        let hub = Hub::new(config.hub);
        let publish = hub.clone();
        let taps: Taps = Arc::default();
        let told = taps.clone();
        let writer = Writer::spawn(
            store.clone(),
            config.writer.clone(),
            clock.clone(),
            Box::new(move |entries| {
                publish.publish(entries);
                if told.read().unwrap_or_else(|p| p.into_inner()).is_empty() {
                    return;
                }
                // Each run of one context's entries, with the last sequence
                // it reached.
                let mut run: Option<(&str, u64)> = None;
                for (context, entry) in entries {
                    match &mut run {
                        Some((c, through)) if *c == &**context => *through = entry.sequence,
                        _ => {
                            if let Some((c, through)) = run {
                                tell(&told, c, Some(through));
                            }
                            run = Some((context, entry.sequence));
                        }
                    }
                }
                if let Some((c, through)) = run {
                    tell(&told, c, Some(through));
                }
            }),
        );
        Arc::new(Ledger {
            store,
            writer,
            hub,
            watchers: Arc::new(Semaphore::new(config.watchers_max)),
            streams: Arc::new(Semaphore::new(config.streams_max)),
            append_streams: Arc::new(Semaphore::new(config.append_streams_max)),
            load_budget: Arc::new(Semaphore::new(
                config
                    .load_stream_bytes_max
                    .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize)),
            )),
            signer,
            config,
            clock,
            stopping: tokio::sync::watch::channel(false).0,
            taps,
        })
    }

    /// Calls `tap` with the context of every commit from now on, at least
    /// once per context per group commit (after the entries are durable and
    /// published to watchers), with the sequence the context reached in it;
    /// and with every context another node announced through
    /// [`Ledger::notify_appended`], with `None` (how far it reached is not
    /// known). Keep it cheap: it runs on the commit path.
    pub fn tap_appended(&self, tap: AppendedTap) {
        self.taps
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(tap);
    }

    /// The limits requests are checked against.
    pub fn limits(&self) -> &Limits {
        &self.config.limits
    }

    /// The configuration.
    pub fn config(&self) -> &LedgerConfig {
        &self.config
    }

    /// The key heads and snapshots are signed with.
    pub fn public_key(&self) -> PublicKey {
        self.signer.public_key()
    }

    /// The server clock, in nanoseconds since the Unix epoch.
    pub fn now_ns(&self) -> u64 {
        self.clock.now_ns()
    }

    /// The store underneath.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Begins shutdown: ends every watch, stops accepting writes, commits
    /// what is queued and syncs the store. An error means the store failed
    /// (the final sync, or earlier: a failed fsync, a full disk), so writes
    /// acknowledged under a relaxed fsync policy may not be on disk.
    pub async fn shutdown(&self) -> Result<(), LedgerError> {
        self.stopping.send_replace(true);
        self.writer.shutdown().await?;
        match self.store.failure() {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// The failure that stopped the store from accepting writes, if any (a
    /// failed fsync, a full disk): the server is not healthy until an
    /// operator restarts it.
    pub fn storage_failure(&self) -> Option<LedgerError> {
        self.store.failure().map(LedgerError::from)
    }

    /// Turns `true` when shutdown begins (streams that take new work stop
    /// taking it).
    pub(crate) fn stopping(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// Ends every watch stream (the first step of shutdown).
    pub fn stop_watches(&self) {
        // `send_replace`, not `send`: the flag must stick even when no watch
        // is open yet, so a watch that starts later sees it.
        self.stopping.send_replace(true);
    }

    /// A slot for one Read, SnapshotStream or LoadStream stream, held for
    /// as long as the stream is open; refused past `streams_max`.
    pub fn open_stream(&self) -> Result<OwnedSemaphorePermit, LedgerError> {
        self.streams.clone().try_acquire_owned().map_err(|_| {
            LedgerError::ResourceExhausted(format!(
                "{} streams (Read, SnapshotStream, LoadStream) are open, the server's limit; close \
                 one or retry later",
                self.config.streams_max
            ))
        })
    }

    /// A slot for one AppendStream, held for as long as it is open;
    /// refused past `append_streams_max` (an SDK client then appends with
    /// calls).
    pub(crate) fn open_append_stream(&self) -> Result<OwnedSemaphorePermit, LedgerError> {
        self.append_streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                LedgerError::ResourceExhausted(format!(
                    "{} AppendStreams are open, the server's limit (--max-append-streams); append \
                 with calls, or retry later",
                    self.config.append_streams_max
                ))
            })
    }

    /// Number of open AppendStreams.
    pub fn open_append_streams(&self) -> usize {
        in_use(&self.append_streams, self.config.append_streams_max)
    }

    /// Bytes of entries the watch hub holds for live delivery.
    pub fn buffered_bytes(&self) -> usize {
        self.hub.buffered_bytes()
    }

    /// Number of open watches.
    pub fn open_watches(&self) -> usize {
        self.config.watchers_max - self.watchers.available_permits()
    }

    /// Number of open server streams (Read, SnapshotStream, LoadStream).
    pub fn open_streams(&self) -> usize {
        in_use(&self.streams, self.config.streams_max)
    }

    /// What the group-commit writer did since the start.
    pub fn writer_stats(&self) -> &converge_ledger_store::stats::WriterStats {
        self.writer.stats()
    }

    /// Commands and bytes in the writer's queue now.
    pub fn writer_queued(&self) -> (usize, usize) {
        self.writer.queued()
    }
}

impl Ledger {
    /// Runs a store call whose work is bounded (a head, a page of entries
    /// read in order, a proof): directly on stores that never block, on the
    /// blocking pool otherwise. Work that grows with the data (snapshots,
    /// replays, reads filtered by key, which may pass over any number of
    /// other entries) uses [`blocking`]. A panic in the call is answered
    /// as the blocking pool's would be.
    async fn quick<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, LedgerError> + Send + 'static,
    ) -> Result<T, LedgerError> {
        if self.store.may_block() {
            blocking(f).await
        } else {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
                Err(LedgerError::Internal(
                    "a storage call failed: it panicked".into(),
                ))
            })
        }
    }

    /// [`Ledger::quick`] for reads filtered by `key`: those go to the
    /// blocking pool, since the memory store finds the matching entries by
    /// passing over the others.
    async fn read_call<T: Send + 'static>(
        &self,
        key: Option<&str>,
        f: impl FnOnce() -> Result<T, LedgerError> + Send + 'static,
    ) -> Result<T, LedgerError> {
        if key.is_some() {
            blocking(f).await
        } else {
            self.quick(f).await
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LedgerError> + Send + 'static,
) -> Result<T, LedgerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| LedgerError::Internal(format!("a storage task failed: {e}")))?
}

/// Metadata from the wire (a hash map) into the canonical sorted map.
pub(crate) fn metadata_from_wire(m: std::collections::HashMap<String, String>) -> Metadata {
    m.into_iter().collect()
}

/// Slots of `slots` (created with `max` permits) held now.
fn in_use(slots: &Semaphore, max: usize) -> usize {
    max - slots.available_permits().min(max)
}
