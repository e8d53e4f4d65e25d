//! `converge.ledger.v1.LedgerService`: the ledger's own operations.

use std::pin::Pin;
use std::sync::Arc;

use converge_ledger_core::Head;
use converge_ledger_proto::ledger::v1 as pb;
use pb::ledger_service_server::LedgerService;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::{Ledger, LedgerError, entry_to_proto};

pub(crate) struct LedgerApi {
    pub(crate) ledger: Arc<Ledger>,
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

#[tonic::async_trait]
impl LedgerService for LedgerApi {
    async fn head(
        &self,
        request: Request<pb::HeadRequest>,
    ) -> Result<Response<pb::HeadResponse>, Status> {
        let r = request.into_inner();
        let head = self
            .ledger
            .head(&r.context_id)
            .await?
            .unwrap_or_else(|| Head::empty(&r.context_id));
        Ok(Response::new(pb::HeadResponse {
            sequence: head.sequence,
            hash: head.hash.0.to_vec(),
            merkle_root: head.merkle_root().0.to_vec(),
            lamport: head.lamport,
            appended_at_ns: head.appended_at_ns,
            context_id: r.context_id,
        }))
    }

    type ReadStream = ReadStream;

    async fn read(
        &self,
        request: Request<pb::ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let r = request.into_inner();
        let limits = self.ledger.limits();
        limits
            .check_context_id(&r.context_id)
            .map_err(LedgerError::from)?;
        limits.check_key_filter(&r.key).map_err(LedgerError::from)?;
        let latest = self
            .ledger
            .head(&r.context_id)
            .await?
            .map_or(0, |h| h.sequence);
        let (tx, rx) = mpsc::channel(4);
        let ledger = self.ledger.clone();
        tokio::spawn(async move {
            let key = (!r.key.is_empty()).then_some(r.key.as_str());
            let mut after = r.after_sequence;
            let mut remaining = if r.limit == 0 { u64::MAX } else { r.limit };
            loop {
                let want = remaining.min(READ_CHUNK_ENTRIES as u64) as usize;
                let chunk = ledger
                    .read_chunk(&r.context_id, after, latest, key, want, READ_CHUNK_BYTES)
                    .await;
                let msg = match chunk {
                    Ok((entries, _)) => {
                        let Some(last) = entries.last().map(|e| e.sequence) else {
                            break;
                        };
                        after = last;
                        remaining -= entries.len() as u64;
                        Ok(pb::ReadResponse {
                            entries: entries.iter().map(entry_to_proto).collect(),
                            latest_sequence: latest,
                        })
                    }
                    Err(e) => Err(Status::from(e)),
                };
                let failed = msg.is_err();
                if tx.send(msg).await.is_err() || failed || remaining == 0 {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_contexts(
        &self,
        request: Request<pb::ListContextsRequest>,
    ) -> Result<Response<pb::ListContextsResponse>, Status> {
        let r = request.into_inner();
        let limit = match r.limit {
            0 => LIST_DEFAULT,
            n => (n as usize).min(LIST_MAX),
        };
        let store = self.ledger.store().clone();
        let contexts = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            store.contexts(&mut |c, h| {
                if c > r.after_context_id.as_str() {
                    out.push(pb::ContextHead {
                        context_id: c.to_owned(),
                        sequence: h.sequence,
                    });
                }
                out.len() < limit
            })?;
            Ok::<_, converge_ledger_store::StoreError>(out)
        })
        .await
        .map_err(|e| Status::unavailable(format!("storage task failed: {e}")))?
        .map_err(LedgerError::from)?;
        Ok(Response::new(pb::ListContextsResponse { contexts }))
    }
}
