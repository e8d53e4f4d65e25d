use std::sync::Arc;

use converge_ledger_core::{Entry, Head, Limits, Metadata, NewEntry, snapshot};
use converge_ledger_store::{
    AppendCommand, Clock, ImportCommand, ImportRejection, Scan, Store, SystemClock, WriteCommand,
    WriteOutcome, Writer,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::{Hub, LedgerConfig, LedgerError};

/// The ledger in process: validation, group-commit appends, bounded reads,
/// snapshots, loads and gapless watches over one [`Store`].
pub struct Ledger {
    store: Arc<dyn Store>,
    writer: Writer,
    hub: Arc<Hub>,
    config: LedgerConfig,
    clock: Arc<dyn Clock>,
    watchers: Arc<Semaphore>,
    /// Flips to `true` when shutdown begins; watch streams end on it.
    stopping: watch::Sender<bool>,
}

/// A successful append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The entry as stored.
    pub entry: Arc<Entry>,
    /// `true` when this was a retry of an earlier append with the same
    /// idempotency key and nothing new was appended.
    pub duplicate: bool,
}

/// A snapshot blob and what it describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The encoded snapshot (`converge_ledger_core::snapshot`).
    pub bytes: Vec<u8>,
    /// Head the snapshot ends at.
    pub head: Head,
    /// Server time it was taken.
    pub created_at_ns: u64,
}

/// A successful load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    /// Entries written.
    pub restored: u64,
    /// The context's head sequence afterwards.
    pub latest_sequence: u64,
}

/// A live watch: entries in sequence order, no gap, no duplicate. Ends when
/// the ledger shuts down; dropping it frees its resources.
pub type WatchStream = ReceiverStream<Result<Arc<Entry>, LedgerError>>;

impl Ledger {
    /// A ledger over `store` with the system clock.
    pub fn new(store: Arc<dyn Store>, config: LedgerConfig) -> Arc<Ledger> {
        Self::with_clock(store, config, Arc::new(SystemClock))
    }

    /// A ledger over `store` with an injected clock.
    pub fn with_clock(
        store: Arc<dyn Store>,
        config: LedgerConfig,
        clock: Arc<dyn Clock>,
    ) -> Arc<Ledger> {
        let hub = Arc::new(Hub::new(config.watch_buffer_entries));
        let publish = hub.clone();
        let writer = Writer::spawn(
            store.clone(),
            config.writer.clone(),
            clock.clone(),
            Box::new(move |entries| publish.publish(entries)),
        );
        Arc::new(Ledger {
            store,
            writer,
            hub,
            watchers: Arc::new(Semaphore::new(config.watchers_max)),
            config,
            clock,
            stopping: watch::channel(false).0,
        })
    }

    /// The limits requests are checked against.
    pub fn limits(&self) -> &Limits {
        &self.config.limits
    }

    /// The configuration.
    pub fn config(&self) -> &LedgerConfig {
        &self.config
    }

    /// The store underneath.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Appends one entry; returns once it is durable under the store's
    /// policy.
    pub async fn append(
        &self,
        context: String,
        entry: NewEntry,
        idempotency_key: Option<String>,
    ) -> Result<Appended, LedgerError> {
        self.config.limits.check_append(
            &context,
            &entry.key,
            entry.payload.len(),
            &entry.metadata,
            idempotency_key.as_deref().unwrap_or(""),
        )?;
        let idempotency_key = idempotency_key.filter(|k| !k.is_empty());
        let key_for_error = idempotency_key.clone();
        let outcome = self
            .writer
            .submit(WriteCommand::Append(AppendCommand {
                context: context.clone(),
                entry,
                idempotency_key,
            }))
            .await?;
        match outcome {
            WriteOutcome::Appended(entry) => Ok(Appended {
                entry,
                duplicate: false,
            }),
            WriteOutcome::Duplicate(entry) => Ok(Appended {
                entry,
                duplicate: true,
            }),
            WriteOutcome::IdempotencyConflict { sequence } => {
                Err(LedgerError::AlreadyExists(format!(
                    "idempotency key {:?} was already used in context {context:?} for sequence {sequence}, \
                 with a different key, payload or metadata; use a new idempotency key for a new entry",
                    key_for_error.unwrap_or_default()
                )))
            }
            other => Err(LedgerError::Unavailable(format!(
                "unexpected write outcome {other:?}"
            ))),
        }
    }

    /// The committed head of `context` (`None`: no entries).
    pub async fn head(&self, context: &str) -> Result<Option<Head>, LedgerError> {
        self.config.limits.check_context_id(context)?;
        let store = self.store.clone();
        let context = context.to_owned();
        blocking(move || store.head(&context).map_err(LedgerError::from)).await
    }

    /// Entries of `context` with `after < sequence <= until`, filtered by
    /// `key`, at most `max_entries`, stopping before `max_bytes` (by
    /// [`Entry::approximate_size`]) would be exceeded (but always at least
    /// one entry). Returns the entries and whether the read stopped early on
    /// a limit.
    pub async fn read_chunk(
        &self,
        context: &str,
        after: u64,
        until: u64,
        key: Option<&str>,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Entry>, bool), LedgerError> {
        let store = self.store.clone();
        let context = context.to_owned();
        let key = key.map(str::to_owned);
        blocking(move || {
            let mut out = Vec::new();
            let mut bytes = 0usize;
            let mut truncated = false;
            store.scan(
                &context,
                Scan {
                    after,
                    until,
                    key: key.as_deref(),
                },
                &mut |e| {
                    let size = e.approximate_size();
                    if out.len() >= max_entries || (!out.is_empty() && bytes + size > max_bytes) {
                        truncated = true;
                        return false;
                    }
                    bytes += size;
                    out.push(e);
                    true
                },
            )?;
            Ok((out, truncated))
        })
        .await
    }

    /// A snapshot of the whole context, refused when larger than the response
    /// limit.
    pub async fn snapshot(&self, context: &str) -> Result<Snapshot, LedgerError> {
        self.config.limits.check_context_id(context)?;
        let store = self.store.clone();
        let context = context.to_owned();
        let max = self.config.effective_response_bytes_max();
        let created_at_ns = self.clock.now_ns();
        blocking(move || {
            let head = store.head(&context)?.unwrap_or_else(|| Head::empty(&context));
            let mut w = snapshot::Writer::new(&context, &head, created_at_ns);
            let mut failure = None;
            store.scan(
                &context,
                Scan { after: 0, until: head.sequence, key: None },
                &mut |e| {
                    if let Err(err) = w.push(&e) {
                        failure = Some(LedgerError::DataLoss(format!(
                            "context {context:?} cannot be snapshotted: {err}"
                        )));
                        return false;
                    }
                    if w.len() > max {
                        failure = Some(LedgerError::ResourceExhausted(format!(
                            "the snapshot of context {context:?} ({} entries) exceeds the response limit of {} bytes \
                             (--max-response-bytes); raise the limit, or read the context in pages with Get \
                             or converge.ledger.v1.LedgerService/Read",
                            head.sequence, max
                        )));
                        return false;
                    }
                    true
                },
            )?;
            if let Some(f) = failure {
                return Err(f);
            }
            let bytes = w.finish().map_err(|e| {
                LedgerError::DataLoss(format!("context {context:?} cannot be snapshotted: {e}"))
            })?;
            Ok(Snapshot { bytes, head, created_at_ns })
        })
        .await
    }

    /// Verifies `bytes` completely, then restores it into `context`.
    pub async fn load(
        &self,
        context: String,
        bytes: Vec<u8>,
        fail_if_exists: bool,
    ) -> Result<Loaded, LedgerError> {
        self.config.limits.check_context_id(&context)?;
        let limits = self.config.limits.clone();
        let target = context.clone();
        let entries = blocking(move || {
            let (header, entries) = snapshot::decode_and_verify(&bytes, &limits)
                .map_err(|e| LedgerError::InvalidArgument(format!("{e}; nothing was loaded")))?;
            Ok(if header.context == target {
                entries
            } else {
                rechain(&target, entries)
            })
        })
        .await?;
        let outcome = self
            .writer
            .submit(WriteCommand::Import(ImportCommand {
                context: context.clone(),
                entries,
                fail_if_exists,
            }))
            .await?;
        match outcome {
            WriteOutcome::Imported { restored, head } => Ok(Loaded {
                restored,
                latest_sequence: head,
            }),
            WriteOutcome::ImportRejected(ImportRejection::AlreadyExists { head }) => {
                Err(LedgerError::AlreadyExists(format!(
                    "context {context:?} already has {head} entries and fail_if_exists is set; nothing was loaded"
                )))
            }
            WriteOutcome::ImportRejected(ImportRejection::Diverged { sequence }) => {
                Err(LedgerError::FailedPrecondition(format!(
                    "the snapshot does not extend context {context:?}: its entry {sequence} differs from the \
                     stored one; nothing was loaded"
                )))
            }
            other => Err(LedgerError::Unavailable(format!(
                "unexpected write outcome {other:?}"
            ))),
        }
    }

    /// Watches `context`: entries with a sequence above `from` (matching
    /// `key` if given) from storage, then live, without gap or duplicate.
    pub fn watch(
        self: &Arc<Self>,
        context: String,
        key: Option<String>,
        from: u64,
    ) -> Result<WatchStream, LedgerError> {
        self.config.limits.check_context_id(&context)?;
        if let Some(k) = &key {
            self.config.limits.check_key(k)?;
        }
        let permit = self.watchers.clone().try_acquire_owned().map_err(|_| {
            LedgerError::ResourceExhausted(format!(
                "{} watches are open, the limit (--max-watchers); close one or retry later",
                self.config.watchers_max
            ))
        })?;
        let (tx, rx) = mpsc::channel(64);
        let ledger = self.clone();
        tokio::spawn(async move {
            if let Err(e) = ledger
                .watch_loop(&context, key.as_deref(), from, &tx, permit)
                .await
            {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(ReceiverStream::new(rx))
    }

    /// The watch algorithm (docs/design.md, "Watch"): subscribe first, then
    /// read storage up to the head seen after subscribing, then follow live
    /// entries; whenever live delivery shows a gap (the watcher lagged), go
    /// back to storage from the last sequence handled.
    async fn watch_loop(
        &self,
        context: &str,
        key: Option<&str>,
        from: u64,
        tx: &mpsc::Sender<Result<Arc<Entry>, LedgerError>>,
        _permit: OwnedSemaphorePermit,
    ) -> Result<(), LedgerError> {
        let mut stopping = self.stopping.subscribe();
        let mut live = self.hub.subscribe(context);
        // Every sequence <= `handled` was delivered or filtered out.
        let mut handled = from;
        loop {
            // Catch up from storage to the committed head.
            let head = self.head(context).await?.map_or(0, |h| h.sequence);
            while handled < head {
                let (chunk, _) = self
                    .read_chunk(
                        context,
                        handled,
                        head,
                        key,
                        self.config.watch_catch_up_chunk,
                        usize::MAX,
                    )
                    .await?;
                let Some(last) = chunk.last().map(|e| e.sequence) else {
                    break;
                };
                for e in chunk {
                    if tx.send(Ok(Arc::new(e))).await.is_err() {
                        return Ok(());
                    }
                }
                handled = last;
                if *stopping.borrow() {
                    return Ok(());
                }
            }
            handled = handled.max(head);
            // Follow live entries until a gap sends us back to storage.
            loop {
                let next = tokio::select! {
                    biased;
                    _ = stopping.changed() => return Ok(()),
                    _ = tx.closed() => return Ok(()),
                    next = live.recv() => next,
                };
                match next {
                    Ok(e) if e.sequence <= handled => continue,
                    Ok(e) if e.sequence == handled + 1 => {
                        handled = e.sequence;
                        if key.is_none_or(|k| e.key == k) && tx.send(Ok(e)).await.is_err() {
                            return Ok(());
                        }
                    }
                    // A gap (e.g. after Lagged, or entries imported while we
                    // were reading): storage has everything published.
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                }
            }
        }
    }

    /// Begins shutdown: ends every watch, stops accepting writes, commits
    /// what is queued and syncs the store.
    pub async fn shutdown(&self) {
        let _ = self.stopping.send(true);
        self.writer.shutdown().await;
    }

    /// Ends every watch stream (the first step of shutdown).
    pub fn stop_watches(&self) {
        let _ = self.stopping.send(true);
    }

    /// Number of open watches.
    pub fn open_watches(&self) -> usize {
        self.config.watchers_max - self.watchers.available_permits()
    }
}

/// Re-links verified entries into another context's chain (the context id is
/// part of every hash); content, sequences and times are unchanged.
fn rechain(context: &str, entries: Vec<Entry>) -> Vec<Entry> {
    let mut head = Head::empty(context);
    entries
        .into_iter()
        .map(|mut e| {
            e.prev_hash = head.hash;
            e.hash = e.compute_hash(context);
            head.advance(&e);
            e
        })
        .collect()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LedgerError> + Send + 'static,
) -> Result<T, LedgerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| LedgerError::Unavailable(format!("storage task failed: {e}")))?
}

/// Metadata from the wire (a hash map) into the canonical sorted map.
pub(crate) fn metadata_from_wire(m: std::collections::HashMap<String, String>) -> Metadata {
    m.into_iter().collect()
}
