//! Snapshots (whole, or streamed in pieces) and loads: verified completely
//! before anything is written.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;

use converge_ledger_core::Entry;
use converge_ledger_core::{Head, SignedHead, snapshot};
use converge_ledger_store::{ImportCommand, ImportRejection, Scan, WriteCommand, WriteOutcome};
use futures_util::stream::Stream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{Ledger, blocking};
use crate::LedgerError;

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

/// The pieces of a streamed snapshot, in order.
pub type PieceStream = Pin<Box<dyn Stream<Item = Result<Vec<u8>, LedgerError>> + Send>>;

/// A streamed snapshot being cut into pieces.
struct Pieces {
    /// `None` once the last piece is out.
    writer: Option<snapshot::Writer>,
    ledger: Arc<Ledger>,
    context: String,
    /// The head sequence the snapshot ends at.
    head: u64,
    /// Entries up to this are in the writer.
    after: u64,
    /// Entries read from storage and not yet in the writer.
    pending: VecDeque<Entry>,
    header_sent: bool,
    piece_bytes: usize,
    _permit: OwnedSemaphorePermit,
}

impl Pieces {
    /// The next piece; `None` after the last one. The header comes alone
    /// first; then a piece is cut before an entry that would take it past
    /// `piece_bytes`, so no piece is larger than that or than one entry
    /// record; the last piece carries the trailing checksum.
    async fn next(&mut self) -> Result<Option<Vec<u8>>, LedgerError> {
        let damaged = |context: &str, why: String| {
            LedgerError::DataLoss(format!("context {context:?} cannot be snapshotted: {why}"))
        };
        let Some(writer) = self.writer.as_mut() else {
            return Ok(None);
        };
        if !self.header_sent {
            self.header_sent = true;
            return Ok(Some(writer.take()));
        }
        loop {
            if let Some(e) = self.pending.front() {
                if writer.pending() > 0
                    && writer.pending() + e.approximate_size() + RECORD_OVERHEAD > self.piece_bytes
                {
                    return Ok(Some(writer.take()));
                }
                let e = self.pending.pop_front().expect("front exists");
                writer
                    .push(&e)
                    .map_err(|err| damaged(&self.context, err.to_string()))?;
                self.after = e.sequence;
                continue;
            }
            if self.after >= self.head {
                // Done: the rest and the checksum.
                let last = self.writer.take().expect("checked above").finish();
                return last
                    .map(Some)
                    .map_err(|err| damaged(&self.context, err.to_string()));
            }
            let (entries, _) = self
                .ledger
                .read_chunk(
                    &self.context,
                    self.after,
                    self.head,
                    None,
                    4096,
                    self.piece_bytes,
                )
                .await?;
            if entries.is_empty() {
                return Err(damaged(
                    &self.context,
                    format!("entry {} is missing", self.after + 1),
                ));
            }
            self.pending.extend(entries);
        }
    }
}

/// A successful load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    /// Entries written.
    pub restored: u64,
    /// The context's head sequence afterwards.
    pub latest_sequence: u64,
}

impl Ledger {
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
    /// pieces (in order) follow from the returned stream, read from storage
    /// only as they are consumed: a client that stops reading holds at most
    /// one piece and one chunk of entries, and no task.
    pub async fn snapshot_stream(
        self: &Arc<Self>,
        context: &str,
        piece_bytes: usize,
    ) -> Result<(SnapshotInfo, PieceStream), LedgerError> {
        self.config.limits.check_context_id(context)?;
        let permit = self.open_stream()?;
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
        let info = SnapshotInfo {
            head: head.clone(),
            created_at_ns,
            signed: signed.clone(),
        };
        let pieces = Pieces {
            writer: Some(snapshot::Writer::new(
                &context,
                &head,
                created_at_ns,
                &signed,
            )),
            ledger: self.clone(),
            context,
            head: head.sequence,
            after: 0,
            pending: VecDeque::new(),
            header_sent: false,
            piece_bytes,
            _permit: permit,
        };
        let stream = futures_util::stream::unfold(Some(pieces), |state| async move {
            let mut p = state?;
            match p.next().await {
                Ok(Some(piece)) => Some((Ok(piece), Some(p))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        });
        Ok((info, Box::pin(stream)))
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
    /// trust, entry times), then restores it into `context`.
    ///
    /// The signer must be this server's key or a trusted one, unless
    /// `accept_unknown_signer`: the caller's decision from the operator's
    /// configuration or the rights of the requesting principal, never from
    /// a flag the client sets alone. Either way the loaded entries are
    /// marked in the head ([`Head::loaded`]) with the snapshot's signer, so
    /// the signed head says they were loaded, not appended here.
    pub async fn load(
        &self,
        context: String,
        bytes: Vec<u8>,
        fail_if_exists: bool,
        accept_unknown_signer: bool,
    ) -> Result<Loaded, LedgerError> {
        self.config.limits.check_context_id(&context)?;
        super::write::check_not_reserved(&context)?;
        let limits = self.config.limits.clone();
        let target = context.clone();
        let own = self.public_key();
        let trusted = self.config.trusted_keys.clone();
        let latest = self
            .clock
            .now_ns()
            .saturating_add(self.config.clock_skew_max.as_nanos() as u64);
        let (entries, signer) = blocking(move || {
            let (header, entries) = snapshot::decode_and_verify(&bytes, &limits)
                .map_err(|e| LedgerError::InvalidArgument(format!("{e}; nothing was loaded")))?;
            let signer = header.signed.public_key;
            if signer != own && !trusted.contains(&signer) && !accept_unknown_signer {
                return Err(LedgerError::FailedPrecondition(format!(
                    "the snapshot is signed by key {signer}, which this server does not trust; nothing was \
                     loaded. Start the server with --trusted-key {signer}, or load it as a principal \
                     with the admin right on {target:?} (or on a server started with \
                     --accept-unknown-signers) asking for allow_unknown_signer (CLI: \
                     --allow-unknown-signer)"
                )));
            }
            // Times come from the snapshot's server: one from the future
            // would stamp every later append of this context with it (time
            // never goes back).
            if let Some(e) = entries.iter().find(|e| e.appended_at_ns > latest) {
                return Err(LedgerError::InvalidArgument(format!(
                    "entry {} of the snapshot has time {} ns, later than this server's clock plus \
                     the allowed skew (LedgerConfig::clock_skew_max); nothing was loaded",
                    e.sequence, e.appended_at_ns
                )));
            }
            let entries = if header.context == target {
                entries
            } else {
                rechain(&target, entries)
            };
            Ok((entries, signer))
        })
        .await?;
        let outcome = self
            .writer
            .submit(WriteCommand::Import(ImportCommand {
                context: context.clone(),
                entries,
                fail_if_exists,
                signer,
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
            other => Err(LedgerError::Internal(format!(
                "unexpected write outcome {other:?}"
            ))),
        }
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
