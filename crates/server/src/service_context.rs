//! `converge.context.v1.ContextService`: the contract, served exactly.

use std::pin::Pin;
use std::sync::Arc;

use converge_ledger_proto::context::v1 as pb;
use pb::context_service_server::ContextService;
use prost::Message;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::auth::{Authority, Caller, Right};
use crate::convert::{append_parts, entry_into_proto, snapshot_metadata};
use crate::{Ledger, LedgerError, entry_to_proto};

/// Whether a Load may bring in a snapshot signed by a key the server does
/// not trust: the client must ask, and the operator allow it (server-wide,
/// or through the caller's admin right on the target). A request flag alone
/// never suffices.
pub(crate) fn accept_unknown_signer(
    ledger: &Ledger,
    caller: &Caller,
    context: &str,
    asked: bool,
) -> bool {
    asked && (ledger.config().accept_unknown_signers || caller.allows(Right::Admin, context))
}

pub(crate) struct ContextApi {
    pub(crate) ledger: Arc<Ledger>,
    pub(crate) auth: Arc<Authority>,
}

type WatchResponseStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl ContextService for ContextApi {
    async fn append(
        &self,
        request: Request<pb::AppendRequest>,
    ) -> Result<Response<pb::AppendResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let r = request.into_inner();
        caller.require(Right::Append, &r.context_id)?;
        let (context, entry, idempotency_key) = append_parts(r);
        let appended = self.ledger.append(context, entry, idempotency_key).await?;
        Ok(Response::new(pb::AppendResponse {
            entry: Some(entry_to_proto(&appended.entry)),
        }))
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let r = request.into_inner();
        caller.require(Right::Read, &r.context_id)?;
        let max_bytes = self.ledger.config().effective_response_bytes_max();
        let max_entries = if r.limit == 0 {
            usize::MAX
        } else {
            r.limit as usize
        };
        let key = (!r.key.is_empty()).then_some(r.key.as_str());
        let (latest, entries, truncated) = self
            .ledger
            .read_page(&r.context_id, r.after_sequence, key, max_entries, max_bytes)
            .await?;
        let entries: Vec<pb::Entry> = entries.into_iter().map(entry_into_proto).collect();
        let response = pb::GetResponse {
            entries,
            latest_sequence: latest,
        };
        // Stopped by the byte budget (not by the caller's own limit), or the
        // exact encoding is over: refuse rather than truncate silently.
        let over_budget = truncated && response.entries.len() < max_entries;
        if over_budget || response.encoded_len() > max_bytes {
            return Err(LedgerError::ResourceExhausted(format!(
                "the response would exceed the message limit of {max_bytes} bytes (--max-response-bytes); \
                 page with `limit` and `after_sequence` (the first {} entries fit), or stream with \
                 converge.ledger.v1.LedgerService/Read",
                response.entries.len().saturating_sub(1).max(1)
            ))
            .into());
        }
        Ok(Response::new(response))
    }

    async fn snapshot(
        &self,
        request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<pb::SnapshotResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let r = request.into_inner();
        caller.require(Right::Read, &r.context_id)?;
        let s = self.ledger.snapshot(&r.context_id).await?;
        Ok(Response::new(pb::SnapshotResponse {
            snapshot: s.bytes,
            sequence: s.head.sequence,
            metadata: Some(snapshot_metadata(&s.head, s.created_at_ns, &s.signed)),
        }))
    }

    async fn load(
        &self,
        request: Request<pb::LoadRequest>,
    ) -> Result<Response<pb::LoadResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let r = request.into_inner();
        caller.require(Right::Load, &r.context_id)?;
        let loaded = self
            .ledger
            .load(
                r.context_id.clone(),
                r.snapshot,
                r.fail_if_exists,
                accept_unknown_signer(&self.ledger, &caller, &r.context_id, r.allow_unknown_signer),
            )
            .await?;
        Ok(Response::new(loaded.into()))
    }

    type WatchStream = WatchResponseStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let r = request.into_inner();
        caller.require(Right::Read, &r.context_id)?;
        let limits = self.ledger.limits();
        limits.check_key_filter(&r.key).map_err(LedgerError::from)?;
        let key = (!r.key.is_empty()).then_some(r.key);
        let stream = self.ledger.watch(r.context_id, key, r.from_sequence)?;
        let stream = stream.map(|item| {
            item.map(|e| pb::WatchEvent {
                entry: Some(entry_to_proto(&e)),
            })
            .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
