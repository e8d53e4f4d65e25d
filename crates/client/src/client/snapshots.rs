//! Snapshots and loads, whole or streamed.

use std::sync::Arc;

use converge_ledger_core::snapshot;
use converge_ledger_proto::context::v1 as pb;
use converge_ledger_proto::ledger::v1 as ext;

use super::*;
use crate::ClientError;

impl Client {
    /// A snapshot of the whole context.
    pub async fn snapshot(&self, context: &str) -> Result<SnapshotBlob, ClientError> {
        let request = pb::SnapshotRequest {
            context_id: context.to_owned(),
        };
        self.retry(|| {
            let mut c = self.context.clone();
            let r = self.request(request.clone());
            async move {
                let resp = c.snapshot(r).await?.into_inner();
                Ok(snapshot_blob(
                    resp.snapshot,
                    resp.sequence,
                    resp.metadata.unwrap_or_default(),
                ))
            }
        })
        .await
    }

    /// Restores a snapshot into `context` (verified by the server before
    /// anything is written). A snapshot signed by a key the server does not
    /// trust needs `allow_unknown_signer`. Transient failures are retried
    /// (Load is idempotent) except with `fail_if_exists`: a retry after a
    /// lost reply would report `AlreadyExists` for a load that succeeded, so
    /// that case returns the transient error for the caller to check.
    pub async fn load(
        &self,
        context: &str,
        snapshot: Vec<u8>,
        fail_if_exists: bool,
        allow_unknown_signer: bool,
    ) -> Result<LoadResult, ClientError> {
        let request = pb::LoadRequest {
            context_id: context.to_owned(),
            snapshot,
            fail_if_exists,
            allow_unknown_signer,
        };
        let call = || {
            let mut c = self.context.clone();
            let r = self.request(request.clone());
            async move { Ok(load_result(c.load(r).await?.into_inner())) }
        };
        self.load_call(fail_if_exists, call).await
    }

    /// A snapshot of any size (`converge.ledger.v1` SnapshotStream): its
    /// bytes are written to `out` piece by piece as they arrive, and what
    /// the server says about it is returned (with `bytes` empty). Not
    /// retried: after an error `out` holds a prefix; start again.
    pub async fn snapshot_to(
        &self,
        context: &str,
        out: &mut (dyn std::io::Write + Send),
    ) -> Result<SnapshotBlob, ClientError> {
        let mut c = self.ledger.clone();
        let mut stream = c
            .snapshot_stream(self.stream_request(ext::SnapshotStreamRequest {
                context_id: context.to_owned(),
            }))
            .await?
            .into_inner();
        let mut info: Option<SnapshotBlob> = None;
        let mut check = snapshot::PieceCheck::new();
        while let Some(chunk) = stream.message().await? {
            check.update(&chunk.data);
            if let Some(meta) = chunk.metadata {
                info = Some(snapshot_blob(Vec::new(), chunk.sequence, meta));
            }
            out.write_all(&chunk.data).map_err(|e| {
                ClientError::Io(format!("writing the snapshot of {context:?}: {e}"))
            })?;
        }
        let info = info.ok_or_else(|| {
            ClientError::Protocol(format!(
                "the snapshot stream of {context:?} ended without its metadata"
            ))
        })?;
        // A stream that ended early (the server failed mid-way) ends OK on
        // the wire; only the checksum tells.
        check
            .finish()
            .map_err(|e| ClientError::Verification(format!("the snapshot of {context:?}: {e}")))?;
        Ok(info)
    }

    /// [`Client::snapshot_to`] into memory: a snapshot beyond the message
    /// limit, as one blob.
    pub async fn snapshot_streamed(&self, context: &str) -> Result<SnapshotBlob, ClientError> {
        let mut bytes = Vec::new();
        let mut blob = self.snapshot_to(context, &mut bytes).await?;
        blob.bytes = bytes;
        Ok(blob)
    }

    /// [`Client::load`] for a snapshot of any size (`converge.ledger.v1`
    /// LoadStream): sent in pieces, verified completely by the server
    /// before anything is written, within its streamed-load budget
    /// ([`ServerInfo::load_stream_bytes_max`]).
    pub async fn load_streamed(
        &self,
        context: &str,
        snapshot: Vec<u8>,
        fail_if_exists: bool,
        allow_unknown_signer: bool,
    ) -> Result<LoadResult, ClientError> {
        // Below any server's request limit (never under one maximal
        // entry, which is larger whatever the limits).
        const PIECE: usize = 64 * 1024;
        let snapshot = Arc::new(snapshot);
        let call = || {
            let mut c = self.ledger.clone();
            let snapshot = snapshot.clone();
            let context = context.to_owned();
            async move {
                let pieces = snapshot.len().div_ceil(PIECE).max(1);
                let messages = (0..pieces).map(move |i| ext::LoadChunk {
                    context_id: if i == 0 {
                        context.clone()
                    } else {
                        String::new()
                    },
                    fail_if_exists,
                    allow_unknown_signer,
                    data: snapshot
                        [(i * PIECE).min(snapshot.len())..((i + 1) * PIECE).min(snapshot.len())]
                        .to_vec(),
                });
                let resp = c
                    .load_stream(self.stream_request(tokio_stream::iter(messages)))
                    .await?
                    .into_inner();
                Ok(load_result(resp))
            }
        };
        self.load_call(fail_if_exists, call).await
    }
}

fn snapshot_blob(bytes: Vec<u8>, sequence: u64, meta: pb::SnapshotMetadata) -> SnapshotBlob {
    SnapshotBlob {
        bytes,
        sequence,
        entry_count: meta.entry_count,
        version: meta.version,
        created_at_ns: meta.created_at_ns,
    }
}

fn load_result(r: pb::LoadResponse) -> LoadResult {
    LoadResult {
        entries_restored: r.entries_restored,
        latest_sequence: r.latest_sequence,
    }
}
