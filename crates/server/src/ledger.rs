use std::sync::Arc;

use converge_ledger_core::{
    Digest, Entry, Head, HeadSigner, Limits, Metadata, NewEntry, PublicKey, SignedHead, snapshot,
};
use converge_ledger_store::{
    AppendCommand, BatchCommand, Clock, ImportCommand, ImportRejection, Scan, Store, SystemClock,
    WriteCommand, WriteOutcome, Writer, proofs,
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
    /// Bytes streamed loads may hold at once.
    load_budget: Arc<Semaphore>,
    /// Signs heads and snapshots.
    signer: Arc<HeadSigner>,
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

/// A successful batch append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendedBatch {
    /// The entries as stored, in order (consecutive sequences).
    pub entries: Vec<Arc<Entry>>,
    /// `true` when this was a retry of an earlier batch with the same
    /// idempotency key and nothing new was appended.
    pub duplicate: bool,
}

/// Bytes a stored record takes beyond [`Entry::approximate_size`], at most
/// (length prefixes, numbers, checksum).
const RECORD_OVERHEAD: usize = 256;

/// What a streamed snapshot describes.
#[derive(Debug, Clone)]
pub struct SnapshotInfo {
    /// The head it ends at.
    pub head: Head,
    /// Server time it was taken.
    pub created_at_ns: u64,
    /// The server's signature over `head`.
    pub signed: SignedHead,
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
    /// The server's signature over `head`.
    pub signed: SignedHead,
}

/// A successful load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    /// Entries written.
    pub restored: u64,
    /// The context's head sequence afterwards.
    pub latest_sequence: u64,
}

/// An inclusion proof and what it proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InclusionProof {
    /// The entry's sequence.
    pub sequence: u64,
    /// Size of the tree the proof is for.
    pub tree_size: u64,
    /// The entry's hash.
    pub entry_hash: Digest,
    /// Audit path, leaf side first.
    pub path: Vec<Digest>,
    /// Root of the tree of `tree_size` entries.
    pub root: Digest,
}

/// A consistency proof and the two roots it links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistencyProof {
    /// Size of the older tree.
    pub old_size: u64,
    /// Size of the newer tree.
    pub new_size: u64,
    /// The proof.
    pub proof: Vec<Digest>,
    /// Root of the older tree.
    pub old_root: Digest,
    /// Root of the newer tree.
    pub new_root: Digest,
}

/// A live watch: entries in sequence order, no gap, no duplicate. Ends when
/// the ledger shuts down; dropping it frees its resources.
pub type WatchStream = ReceiverStream<Result<Arc<Entry>, LedgerError>>;

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
            load_budget: Arc::new(Semaphore::new(
                config
                    .load_stream_bytes_max
                    .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize)),
            )),
            signer,
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

    /// The key heads and snapshots are signed with.
    pub fn public_key(&self) -> PublicKey {
        self.signer.public_key()
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
            &entry,
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
            WriteOutcome::Failed(e) => Err(e.into()),
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

    /// Validates a read of `context` filtered by `key` (empty: all keys) and
    /// returns the head sequence the read ends at (0: no entries).
    pub async fn read_head(&self, context: &str, key: &str) -> Result<u64, LedgerError> {
        self.config.limits.check_key_filter(key)?;
        Ok(self.head(context).await?.map_or(0, |h| h.sequence))
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
        let signer = self.signer.clone();
        blocking(move || {
            let head = store.head(&context)?.unwrap_or_else(|| Head::empty(&context));
            let signed = signer.sign(&context, &head);
            let mut w = snapshot::Writer::new(&context, &head, created_at_ns, &signed);
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
            Ok(Snapshot { bytes, head, created_at_ns, signed })
        })
        .await
    }

    /// The snapshot of `context` in pieces of about `piece_bytes`, with no
    /// size ceiling: the head it ends at is read and signed first; the
    /// pieces (in order, then nothing) follow through the returned
    /// receiver, read from storage only as fast as they are consumed.
    pub async fn snapshot_stream(
        self: &Arc<Self>,
        context: &str,
        piece_bytes: usize,
    ) -> Result<(SnapshotInfo, mpsc::Receiver<Result<Vec<u8>, LedgerError>>), LedgerError> {
        self.config.limits.check_context_id(context)?;
        let store = self.store.clone();
        let context = context.to_owned();
        let created_at_ns = self.clock.now_ns();
        let signer = self.signer.clone();
        let (head, signed) = {
            let (store, context) = (store.clone(), context.clone());
            blocking(move || {
                let head = store
                    .head(&context)?
                    .unwrap_or_else(|| Head::empty(&context));
                let signed = signer.sign(&context, &head);
                Ok((head, signed))
            })
            .await?
        };
        let (tx, rx) = mpsc::channel(2);
        let info = SnapshotInfo {
            head: head.clone(),
            created_at_ns,
            signed: signed.clone(),
        };
        // An async task reading bounded chunks, like Read: a client that
        // stops reading holds a little memory, never a blocking thread.
        let store_reader = self.clone();
        tokio::spawn(async move {
            let mut w = snapshot::Writer::new(&context, &head, created_at_ns, &signed);
            // The header alone first; then a piece is cut before an entry
            // that would take it past `piece_bytes`, so no piece is larger
            // than that or than one entry record.
            if tx.send(Ok(w.take())).await.is_err() {
                return;
            }
            let mut after = 0;
            while after < head.sequence {
                let chunk = store_reader
                    .read_chunk(&context, after, head.sequence, None, 4096, piece_bytes)
                    .await;
                let entries = match chunk {
                    Ok((entries, _)) if !entries.is_empty() => entries,
                    Ok(_) => {
                        let _ = tx
                            .send(Err(LedgerError::DataLoss(format!(
                                "context {context:?} cannot be snapshotted: entry {} is missing",
                                after + 1
                            ))))
                            .await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                for e in &entries {
                    if w.pending() > 0
                        && w.pending() + e.approximate_size() + RECORD_OVERHEAD > piece_bytes
                        && tx.send(Ok(w.take())).await.is_err()
                    {
                        return;
                    }
                    if let Err(err) = w.push(e) {
                        let _ = tx
                            .send(Err(LedgerError::DataLoss(format!(
                                "context {context:?} cannot be snapshotted: {err}"
                            ))))
                            .await;
                        return;
                    }
                    after = e.sequence;
                }
            }
            let last = w.finish().map_err(|e| {
                LedgerError::DataLoss(format!("context {context:?} cannot be snapshotted: {e}"))
            });
            let _ = tx.send(last).await;
        });
        Ok((info, rx))
    }

    /// The streamed-load budget in force, in bytes.
    pub fn load_stream_bytes_max(&self) -> usize {
        self.config
            .load_stream_bytes_max
            .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize))
    }

    /// Reserves `bytes` of the streamed-load budget; refused (nothing
    /// waits) when other streamed loads hold too much of it.
    pub fn reserve_load_bytes(&self, bytes: usize) -> Result<OwnedSemaphorePermit, LedgerError> {
        let max = self.load_stream_bytes_max();
        let refuse = || {
            LedgerError::ResourceExhausted(format!(
                "streamed loads may hold at most {max} bytes at once, over all loads, a snapshot \
                 counting twice its size (its bytes and its decoded entries) \
                 (LedgerConfig::load_stream_bytes_max); this one needs more than is free; nothing \
                 was loaded"
            ))
        };
        let n = u32::try_from(bytes).map_err(|_| refuse())?;
        self.load_budget
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| refuse())
    }

    /// Verifies `bytes` completely (checksum, chain, root, signature, signer
    /// trust), then restores it into `context`.
    pub async fn load(
        &self,
        context: String,
        bytes: Vec<u8>,
        fail_if_exists: bool,
        allow_unknown_signer: bool,
    ) -> Result<Loaded, LedgerError> {
        self.config.limits.check_context_id(&context)?;
        let limits = self.config.limits.clone();
        let target = context.clone();
        let own = self.public_key();
        let trusted = self.config.trusted_keys.clone();
        let entries = blocking(move || {
            let (header, entries) = snapshot::decode_and_verify(&bytes, &limits)
                .map_err(|e| LedgerError::InvalidArgument(format!("{e}; nothing was loaded")))?;
            let signer = header.signed.public_key;
            if signer != own && !trusted.contains(&signer) && !allow_unknown_signer {
                return Err(LedgerError::FailedPrecondition(format!(
                    "the snapshot is signed by key {signer}, which this server does not trust; nothing was \
                     loaded. Load it with allow_unknown_signer (CLI: --allow-unknown-signer) or start the \
                     server with --trusted-key {signer}"
                )));
            }
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
            WriteOutcome::Failed(e) => Err(e.into()),
            other => Err(LedgerError::Unavailable(format!(
                "unexpected write outcome {other:?}"
            ))),
        }
    }

    /// Appends `entries` to `context` in order, atomically: they take
    /// consecutive sequences in one commit, or nothing is appended. With
    /// `expected_sequence`, only if the context's head sequence is exactly
    /// that when the batch commits. Each entry's `lamport` is a received
    /// Lamport time merged before it (the gRPC service sets the request's on
    /// the first entry).
    pub async fn append_batch(
        &self,
        context: String,
        entries: Vec<NewEntry>,
        idempotency_key: Option<String>,
        expected_sequence: Option<u64>,
    ) -> Result<AppendedBatch, LedgerError> {
        let limits = &self.config.limits;
        limits.check_context_id(&context)?;
        limits.check_batch_len(entries.len())?;
        limits.check_idempotency_key(idempotency_key.as_deref().unwrap_or(""))?;
        for (i, e) in entries.iter().enumerate() {
            limits
                .check_entry(&e.key, e.payload.len(), &e.metadata, e.lamport)
                .map_err(|err| {
                    LedgerError::InvalidArgument(format!("entries[{i}]: {}", err.message))
                })?;
        }
        let idempotency_key = idempotency_key.filter(|k| !k.is_empty());
        let key_for_error = idempotency_key.clone();
        let outcome = self
            .writer
            .submit(WriteCommand::AppendBatch(BatchCommand {
                context: context.clone(),
                entries,
                idempotency_key,
                expected_sequence,
            }))
            .await?;
        match outcome {
            WriteOutcome::AppendedBatch(entries) => Ok(AppendedBatch {
                entries,
                duplicate: false,
            }),
            WriteOutcome::DuplicateBatch(entries) => Ok(AppendedBatch {
                entries,
                duplicate: true,
            }),
            WriteOutcome::IdempotencyConflict { sequence } => {
                Err(LedgerError::AlreadyExists(format!(
                    "idempotency key {:?} was already used in context {context:?} for the entries \
                     from sequence {sequence} on, which differ from this batch; use a new \
                     idempotency key for a new batch",
                    key_for_error.unwrap_or_default()
                )))
            }
            WriteOutcome::SequenceMismatch { expected, actual } => {
                Err(LedgerError::FailedPrecondition(format!(
                    "context {context:?} is at sequence {actual}, not the expected {expected}; \
                     nothing was appended (read the new entries, then retry with \
                     expected_sequence {actual})"
                )))
            }
            WriteOutcome::Failed(e) => Err(e.into()),
            other => Err(LedgerError::Unavailable(format!(
                "unexpected write outcome {other:?}"
            ))),
        }
    }

    /// The committed head of `context` (empty head when unknown), signed.
    pub async fn signed_head(&self, context: &str) -> Result<(Head, SignedHead), LedgerError> {
        let head = self
            .head(context)
            .await?
            .unwrap_or_else(|| Head::empty(context));
        let signed = self.signer.sign(context, &head);
        Ok((head, signed))
    }

    /// Proof that entry `sequence` is in the tree of the first `tree_size`
    /// entries (`tree_size` 0: the head).
    pub async fn inclusion_proof(
        &self,
        context: &str,
        sequence: u64,
        tree_size: u64,
    ) -> Result<InclusionProof, LedgerError> {
        let head = self.head(context).await?.map_or(0, |h| h.sequence);
        let size = if tree_size == 0 { head } else { tree_size };
        if size > head {
            return Err(LedgerError::OutOfRange(format!(
                "tree size {size} is beyond the head of context {context:?} ({head})"
            )));
        }
        if sequence == 0 || sequence > size {
            return Err(LedgerError::OutOfRange(format!(
                "sequence {sequence} is not in the tree of size {size} of context {context:?} (sequences start at 1)"
            )));
        }
        let store = self.store.clone();
        let context = context.to_owned();
        blocking(move || {
            let entry = store.entry(&context, sequence)?.ok_or_else(|| {
                LedgerError::DataLoss(format!(
                    "entry {sequence} of {context:?} is missing below the head"
                ))
            })?;
            let path = proofs::inclusion_proof(store.as_ref(), &context, sequence, size)?;
            let root = proofs::root_at(store.as_ref(), &context, size)?;
            Ok(InclusionProof {
                sequence,
                tree_size: size,
                entry_hash: entry.hash,
                path,
                root,
            })
        })
        .await
    }

    /// Proof that the tree of `old_size` entries is a prefix of the tree of
    /// `new_size` entries (`new_size` 0: the head).
    pub async fn consistency_proof(
        &self,
        context: &str,
        old_size: u64,
        new_size: u64,
    ) -> Result<ConsistencyProof, LedgerError> {
        let head = self.head(context).await?.map_or(0, |h| h.sequence);
        let new = if new_size == 0 { head } else { new_size };
        if new > head {
            return Err(LedgerError::OutOfRange(format!(
                "tree size {new} is beyond the head of context {context:?} ({head})"
            )));
        }
        if old_size == 0 || old_size > new {
            return Err(LedgerError::OutOfRange(format!(
                "old size {old_size} must be between 1 and the new size {new}"
            )));
        }
        let store = self.store.clone();
        let context = context.to_owned();
        blocking(move || {
            let proof = proofs::consistency_proof(store.as_ref(), &context, old_size, new)?;
            let old_root = proofs::root_at(store.as_ref(), &context, old_size)?;
            let new_root = proofs::root_at(store.as_ref(), &context, new)?;
            Ok(ConsistencyProof {
                old_size,
                new_size: new,
                proof,
                old_root,
                new_root,
            })
        })
        .await
    }

    /// The entry with this hash and its context.
    pub async fn get_by_hash(&self, hash: Digest) -> Result<Option<(String, Entry)>, LedgerError> {
        let store = self.store.clone();
        blocking(move || {
            let Some((context, sequence)) = store.find_by_hash(&hash)? else {
                return Ok(None);
            };
            let entry = store.entry(&context, sequence)?.ok_or_else(|| {
                LedgerError::DataLoss(format!(
                    "the hash index names {context:?}#{sequence}, which is missing"
                ))
            })?;
            Ok(Some((context, entry)))
        })
        .await
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
        if *self.stopping.borrow() {
            return Err(LedgerError::Unavailable(
                "the ledger is shutting down; watch another node or retry after the restart".into(),
            ));
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
        let chunk_entries = self.config.watch_catch_up_chunk.max(1);
        let chunk_bytes = self.config.effective_response_bytes_max();
        // Every sequence <= `handled` was delivered or filtered out.
        let mut handled = from;
        loop {
            // Catch up from storage to the committed head.
            let head = self.head(context).await?.map_or(0, |h| h.sequence);
            while handled < head {
                let (chunk, _) = self
                    .read_chunk(context, handled, head, key, chunk_entries, chunk_bytes)
                    .await?;
                let Some(last) = chunk.last().map(|e| e.sequence) else {
                    break;
                };
                for e in chunk {
                    if !send_unless_stopping(tx, &mut stopping, Arc::new(e)).await {
                        return Ok(());
                    }
                }
                handled = last;
            }
            handled = handled.max(head);
            // Follow live entries until a gap sends us back to storage.
            loop {
                let next = tokio::select! {
                    biased;
                    _ = stopping.wait_for(|s| *s) => return Ok(()),
                    _ = tx.closed() => return Ok(()),
                    next = live.recv() => next,
                };
                match next {
                    Ok(e) if e.sequence <= handled => continue,
                    Ok(e) if e.sequence == handled + 1 => {
                        handled = e.sequence;
                        if key.is_none_or(|k| e.key == k)
                            && !send_unless_stopping(tx, &mut stopping, e).await
                        {
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

    /// Tells the ledger that `context` may have entries it did not write
    /// itself (another node over a shared store appended them). If the
    /// context is watched here, the missing entries are read from storage and
    /// published to its watchers, in order. Cheap when nobody watches.
    pub async fn notify_appended(&self, context: &str) -> Result<(), LedgerError> {
        let Some(mut last) = self.hub.last_published(context) else {
            return Ok(());
        };
        let head = self.head(context).await?.map_or(0, |h| h.sequence);
        let context: Arc<str> = Arc::from(context);
        while last < head {
            let (chunk, _) = self
                .read_chunk(
                    &context,
                    last,
                    head,
                    None,
                    self.config.watch_catch_up_chunk,
                    usize::MAX,
                )
                .await?;
            let Some(end) = chunk.last().map(|e| e.sequence) else {
                break;
            };
            let published: Vec<(Arc<str>, Arc<Entry>)> = chunk
                .into_iter()
                .map(|e| (context.clone(), Arc::new(e)))
                .collect();
            self.hub.publish(&published);
            last = end;
        }
        Ok(())
    }

    /// [`Ledger::notify_appended`] for every watched context: the periodic
    /// catch-up that covers notifications lost (e.g. during a reconnect).
    pub async fn notify_all_watched(&self) -> Result<(), LedgerError> {
        for context in self.hub.watched() {
            self.notify_appended(&context).await?;
        }
        Ok(())
    }

    /// Begins shutdown: ends every watch, stops accepting writes, commits
    /// what is queued and syncs the store.
    pub async fn shutdown(&self) {
        self.stopping.send_replace(true);
        self.writer.shutdown().await;
    }

    /// Ends every watch stream (the first step of shutdown).
    pub fn stop_watches(&self) {
        // `send_replace`, not `send`: the flag must stick even when no watch
        // is open yet, so a watch that starts later sees it.
        self.stopping.send_replace(true);
    }

    /// Number of open watches.
    pub fn open_watches(&self) -> usize {
        self.config.watchers_max - self.watchers.available_permits()
    }
}

/// Sends one watch item unless shutdown begins first (a client that stopped
/// reading must not hold shutdown up). `false`: stop watching.
async fn send_unless_stopping(
    tx: &mpsc::Sender<Result<Arc<Entry>, LedgerError>>,
    stopping: &mut watch::Receiver<bool>,
    entry: Arc<Entry>,
) -> bool {
    tokio::select! {
        biased;
        _ = stopping.wait_for(|s| *s) => false,
        sent = tx.send(Ok(entry)) => sent.is_ok(),
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
