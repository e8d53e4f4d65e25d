//! `converge.ledger.v1.LedgerService`: the ledger's own operations.

use std::pin::Pin;
use std::sync::Arc;

use converge_ledger_core::{Digest, NewEntry};
use converge_ledger_proto::context::v1 as context_pb;
use converge_ledger_proto::ledger::v1 as pb;
use pb::ledger_service_server::LedgerService;
use tokio::sync::OwnedSemaphorePermit;
use tokio_stream::Stream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Authority, Right};
use crate::convert::entry_into_proto;
use crate::convert::snapshot_metadata;
use crate::ledger::metadata_from_wire;
use crate::service_context::accept_unknown_signer;
use crate::{Ledger, LedgerError, entry_to_proto};

pub(crate) struct LedgerApi {
    pub(crate) ledger: Arc<Ledger>,
    pub(crate) auth: Arc<Authority>,
    /// The largest request message the server decodes.
    pub(crate) request_bytes_max: usize,
    /// What ServerInfo says of the WorldLine profile.
    pub(crate) worldline: pb::WorldlineInfo,
}

/// Bytes of entries per streamed Read message.
const READ_CHUNK_BYTES: usize = 1024 * 1024;
/// Entries per streamed Read message.
const READ_CHUNK_ENTRIES: usize = 4096;
/// Contexts per ListContexts page when the caller gives no limit.
const LIST_DEFAULT: usize = 1000;
/// Most contexts per ListContexts page.
const LIST_MAX: usize = 10_000;

type ReadStream = Pin<Box<dyn Stream<Item = Result<pb::ReadResponse, Status>> + Send>>;

/// A streamed Read in progress.
struct Reading {
    ledger: Arc<Ledger>,
    context: String,
    key: Option<String>,
    /// Entries up to this were sent.
    after: u64,
    /// The head when the read started; the stream ends at or before it.
    latest: u64,
    /// Entries the caller still wants.
    remaining: u64,
    chunk_bytes: usize,
    /// Send entry records (`READ_ENCODING_RECORDS`) instead of messages.
    records: bool,
    _permit: OwnedSemaphorePermit,
}

impl Reading {
    /// The next message; `None` when everything asked for was sent.
    async fn next(&mut self) -> Result<Option<pb::ReadResponse>, LedgerError> {
        if self.remaining == 0 {
            return Ok(None);
        }
        let want = self.remaining.min(READ_CHUNK_ENTRIES as u64) as usize;
        if self.records {
            let chunk = self
                .ledger
                .read_records_chunk(
                    &self.context,
                    self.after,
                    self.latest,
                    self.key.as_deref(),
                    want,
                    self.chunk_bytes,
                )
                .await?;
            if chunk.count == 0 {
                return Ok(None);
            }
            self.after = chunk.last;
            self.remaining -= chunk.count;
            return Ok(Some(pb::ReadResponse {
                entries: Vec::new(),
                latest_sequence: self.latest,
                records: chunk.framed.into(),
            }));
        }
        let (entries, _) = self
            .ledger
            .read_chunk(
                &self.context,
                self.after,
                self.latest,
                self.key.as_deref(),
                want,
                self.chunk_bytes,
            )
            .await?;
        let Some(last) = entries.last().map(|e| e.sequence) else {
            return Ok(None);
        };
        self.after = last;
        self.remaining -= entries.len() as u64;
        Ok(Some(pb::ReadResponse {
            entries: entries.into_iter().map(entry_into_proto).collect(),
            latest_sequence: self.latest,
            records: Default::default(),
        }))
    }
}
type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotChunk, Status>> + Send>>;

/// The next message of a load stream, refused when the client stays
/// silent for [`LOAD_STREAM_IDLE`].
async fn next_chunk(
    chunks: &mut Streaming<pb::LoadChunk>,
) -> Result<Option<pb::LoadChunk>, Status> {
    match tokio::time::timeout(LOAD_STREAM_IDLE, chunks.message()).await {
        Ok(message) => message,
        Err(_) => Err(LedgerError::InvalidArgument(format!(
            "the load stream sent nothing for {} s; nothing was loaded",
            LOAD_STREAM_IDLE.as_secs()
        ))
        .into()),
    }
}

/// How long a LoadStream may go without sending a message.
const LOAD_STREAM_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// Snapshot bytes per SnapshotStream message.
const SNAPSHOT_PIECE_BYTES: usize = 1024 * 1024;

#[tonic::async_trait]
impl LedgerService for LedgerApi {
    async fn head(
        &self,
        request: Request<pb::HeadRequest>,
    ) -> Result<Response<pb::HeadResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let r = request.into_inner();
        caller.require(Right::Read, &r.context_id)?;
        let (head, signed) = self.ledger.signed_head(&r.context_id).await?;
        let entry = if r.include_entry && head.sequence > 0 {
            // Entries are immutable: the one at the head's sequence is the
            // head's entry whatever was appended since.
            let (entries, _) = self
                .ledger
                .read_chunk(
                    &r.context_id,
                    head.sequence - 1,
                    head.sequence,
                    None,
                    1,
                    usize::MAX,
                )
                .await?;
            let entry = entries.into_iter().next().ok_or_else(|| {
                LedgerError::DataLoss(format!(
                    "the head of {:?} is at sequence {}, but that entry cannot be read",
                    r.context_id, head.sequence
                ))
            })?;
            Some(entry_to_proto(&entry))
        } else {
            None
        };
        Ok(Response::new(pb::HeadResponse {
            entry,
            sequence: head.sequence,
            hash: head.hash.0.to_vec(),
            merkle_root: head.merkle_root().0.to_vec(),
            lamport: head.lamport,
            appended_at_ns: head.appended_at_ns,
            context_id: r.context_id,
            signature: signed.signature.to_vec(),
            public_key: signed.public_key.0.to_vec(),
            loaded_through: head.loaded.map_or(0, |l| l.through),
            loaded_signer: head.loaded.map_or_else(Vec::new, |l| l.signer.0.to_vec()),
        }))
    }

    type ReadStream = ReadStream;

    async fn read(
        &self,
        request: Request<pb::ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let r = request.into_inner();
        caller.require(Right::Read, &r.context_id)?;
        let records = match pb::ReadEncoding::try_from(r.encoding) {
            Ok(pb::ReadEncoding::Entries) => false,
            Ok(pb::ReadEncoding::Records) => true,
            Err(_) => {
                return Err(LedgerError::InvalidArgument(format!(
                    "encoding {} is not a ReadEncoding: READ_ENCODING_ENTRIES (0) or READ_ENCODING_RECORDS (1)",
                    r.encoding
                ))
                .into());
            }
        };
        let latest = self.ledger.read_head(&r.context_id, &r.key).await?;
        let permit = self.ledger.open_stream()?;
        // Never above the response limit (one entry always fits in it).
        let chunk_bytes = READ_CHUNK_BYTES.min(self.ledger.config().effective_response_bytes_max());
        let read = Reading {
            ledger: self.ledger.clone(),
            context: r.context_id,
            key: (!r.key.is_empty()).then_some(r.key),
            after: r.after_sequence,
            latest,
            remaining: if r.limit == 0 { u64::MAX } else { r.limit },
            chunk_bytes,
            records,
            _permit: permit,
        };
        // A pull stream: each message is read from storage when the
        // transport asks for it, so a client that stops reading holds one
        // message at most, and no task.
        let stream = futures_util::stream::unfold(Some(read), |state| async move {
            let mut read = state?;
            match read.next().await {
                Ok(Some(msg)) => Some((Ok(msg), Some(read))),
                Ok(None) => None,
                Err(e) => Some((Err(Status::from(e)), None)),
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_contexts(
        &self,
        request: Request<pb::ListContextsRequest>,
    ) -> Result<Response<pb::ListContextsResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let r = request.into_inner();
        let limit = match r.limit {
            0 => LIST_DEFAULT,
            n => (n as usize).min(LIST_MAX),
        };
        let contexts = self
            .ledger
            .list_contexts(&r.after_context_id, limit, move |c| {
                caller.allows(Right::Read, c)
            })
            .await?
            .into_iter()
            .map(|(context_id, head)| pb::ContextHead {
                context_id,
                sequence: head.sequence,
            })
            .collect();
        Ok(Response::new(pb::ListContextsResponse { contexts }))
    }

    async fn inclusion_proof(
        &self,
        request: Request<pb::InclusionProofRequest>,
    ) -> Result<Response<pb::InclusionProofResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let r = request.into_inner();
        caller.require(Right::Read, &r.context_id)?;
        let p = self
            .ledger
            .inclusion_proof(&r.context_id, r.sequence, r.tree_size)
            .await?;
        Ok(Response::new(pb::InclusionProofResponse {
            sequence: p.sequence,
            tree_size: p.tree_size,
            entry_hash: p.entry_hash.0.to_vec(),
            path: p.path.iter().map(|d| d.0.to_vec()).collect(),
            root: p.root.0.to_vec(),
        }))
    }

    async fn consistency_proof(
        &self,
        request: Request<pb::ConsistencyProofRequest>,
    ) -> Result<Response<pb::ConsistencyProofResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let r = request.into_inner();
        caller.require(Right::Read, &r.context_id)?;
        let p = self
            .ledger
            .consistency_proof(&r.context_id, r.old_size, r.new_size)
            .await?;
        Ok(Response::new(pb::ConsistencyProofResponse {
            old_size: p.old_size,
            new_size: p.new_size,
            proof: p.proof.iter().map(|d| d.0.to_vec()).collect(),
            old_root: p.old_root.0.to_vec(),
            new_root: p.new_root.0.to_vec(),
        }))
    }

    async fn get_by_hash(
        &self,
        request: Request<pb::GetByHashRequest>,
    ) -> Result<Response<pb::GetByHashResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let r = request.into_inner();
        let hash = Digest::from_slice(&r.hash).ok_or_else(|| {
            LedgerError::InvalidArgument(format!(
                "hash is {} bytes; an entry hash is 32 bytes",
                r.hash.len()
            ))
        })?;
        // An entry of a context the caller may not read is answered as if
        // there were none: its existence is not revealed.
        match self.ledger.get_by_hash(hash).await? {
            Some((context_id, entry)) if caller.allows(Right::Read, &context_id) => {
                Ok(Response::new(pb::GetByHashResponse {
                    context_id,
                    entry: Some(entry_to_proto(&entry)),
                }))
            }
            _ => Err(LedgerError::NotFound(format!("no entry has hash {hash}")).into()),
        }
    }

    async fn server_info(
        &self,
        request: Request<pb::ServerInfoRequest>,
    ) -> Result<Response<pb::ServerInfoResponse>, Status> {
        self.auth.authenticate(&request)?;
        Ok(Response::new(pb::ServerInfoResponse {
            public_key: self.ledger.public_key().0.to_vec(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            batch_entries_max: u32::try_from(self.ledger.limits().batch_entries_max)
                .unwrap_or(u32::MAX),
            load_stream_bytes_max: self.ledger.load_stream_bytes_max() as u64,
            request_bytes_max: self.request_bytes_max as u64,
            worldline: Some(self.worldline),
            append_stream_message_appends_max: u32::try_from(
                self.ledger.config().append_stream_message_appends_max,
            )
            .unwrap_or(u32::MAX),
            append_stream_inflight_max: u32::try_from(
                self.ledger.config().append_stream_inflight_max,
            )
            .unwrap_or(u32::MAX),
            append_stream_inflight_bytes_max: self.ledger.config().append_stream_inflight_bytes_max
                as u64,
        }))
    }

    type SnapshotStreamStream = SnapshotStream;

    async fn snapshot_stream(
        &self,
        request: Request<pb::SnapshotStreamRequest>,
    ) -> Result<Response<Self::SnapshotStreamStream>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let r = request.into_inner();
        caller.require(Right::Read, &r.context_id)?;
        let (info, pieces) = self
            .ledger
            .snapshot_stream(
                &r.context_id,
                SNAPSHOT_PIECE_BYTES.min(self.ledger.config().effective_response_bytes_max()),
            )
            .await?;
        let mut first = Some(snapshot_metadata(
            &info.head,
            info.created_at_ns,
            &info.signed,
        ));
        let sequence = info.head.sequence;
        let stream = pieces.map(move |piece| {
            piece
                .map(|data| {
                    let metadata = first.take();
                    pb::SnapshotChunk {
                        sequence: if metadata.is_some() { sequence } else { 0 },
                        metadata,
                        data,
                    }
                })
                .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn load_stream(
        &self,
        request: Request<Streaming<pb::LoadChunk>>,
    ) -> Result<Response<context_pb::LoadResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let mut chunks = request.into_inner();
        let _stream = self.ledger.open_stream()?;
        let first = next_chunk(&mut chunks).await?.ok_or_else(|| {
            LedgerError::InvalidArgument(
                "the load stream is empty; its first message names the context".into(),
            )
        })?;
        let context = first.context_id;
        caller.require(Right::Load, &context)?;
        let fail_if_exists = first.fail_if_exists;
        let accept_unknown_signer =
            accept_unknown_signer(&self.ledger, &caller, &context, first.allow_unknown_signer);
        self.ledger
            .limits()
            .check_context_id(&context)
            .map_err(LedgerError::from)?;
        // The budget counts twice the snapshot's bytes: the bytes, and the
        // entries decoded from them while both are alive.
        let mut held = self.ledger.reserve_load_bytes(2 * first.data.len())?;
        let mut total = first.data.len();
        let mut pieces = vec![first.data];
        while let Some(chunk) = next_chunk(&mut chunks).await? {
            if chunk.data.is_empty() {
                continue;
            }
            held.merge(self.ledger.reserve_load_bytes(2 * chunk.data.len())?);
            total += chunk.data.len();
            pieces.push(chunk.data);
        }
        let mut bytes = Vec::with_capacity(total);
        for piece in pieces {
            bytes.extend_from_slice(&piece);
        }
        let loaded = self
            .ledger
            .load(context, bytes, fail_if_exists, accept_unknown_signer)
            .await?;
        drop(held);
        Ok(Response::new(loaded.into()))
    }

    async fn append_batch(
        &self,
        request: Request<pb::AppendBatchRequest>,
    ) -> Result<Response<pb::AppendBatchResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let r = request.into_inner();
        caller.require(Right::Append, &r.context_id)?;
        let mut entries: Vec<NewEntry> = r
            .entries
            .into_iter()
            .map(|e| NewEntry {
                key: e.key,
                payload: e.payload,
                metadata: metadata_from_wire(e.metadata),
                lamport: 0,
            })
            .collect();
        if let Some(first) = entries.first_mut() {
            first.lamport = r.lamport;
        }
        let batch = self
            .ledger
            .append_batch(
                r.context_id,
                entries,
                Some(r.idempotency_key),
                r.expected_sequence,
            )
            .await?;
        let first = batch.entries.first();
        Ok(Response::new(pb::AppendBatchResponse {
            first_sequence: first.map_or(0, |e| e.sequence),
            prev_hash: first.map_or_else(Vec::new, |e| e.prev_hash.0.to_vec()),
            receipts: batch
                .entries
                .iter()
                .map(|e| pb::EntryReceipt {
                    hash: e.hash.0.to_vec(),
                    lamport: e.lamport,
                    appended_at_ns: e.appended_at_ns,
                })
                .collect(),
            duplicate: batch.duplicate,
        }))
    }

    type AppendStreamStream = crate::service_stream::AppendStreamOut;

    async fn append_stream(
        &self,
        request: Request<Streaming<pb::AppendStreamRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let held = request
            .extensions()
            .get::<crate::conn::HeldBytes>()
            .cloned();
        let conn = request.extensions().get::<crate::ConnInfo>().cloned();
        let stream = crate::service_stream::open(
            self.ledger.clone(),
            caller,
            held,
            conn.as_ref(),
            request.into_inner(),
        )?;
        Ok(Response::new(stream))
    }
}
