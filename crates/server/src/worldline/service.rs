//! `converge.ledger.v1.WorldlineService`: the WorldLine profile over gRPC.
//! Every call authenticates and checks its right on the worldline's
//! receipts context (`append` to write, `read` to read) before anything.

use std::sync::Arc;

use converge_ledger_core::Digest;
use converge_ledger_proto::ledger::v1 as pb;
use converge_ledger_proto::ledger::v1::worldline_service_server::WorldlineService;
use converge_ledger_worldline::{Commitment, Outcome, PAGE_ITEMS_MAX, ReceiptRef, WorldlineId};
use tonic::{Request, Response, Status};

use super::rpc_projections::Query;
use super::{Worldlines, client_bytes};
use crate::convert::entry_to_proto;
use crate::{Authority, LedgerError, Right};

/// Bytes of state pairs per ReplayState message.
const STATE_CHUNK_BYTES: usize = 1024 * 1024;

/// The service; see the module documentation.
#[derive(Debug, Clone)]
pub struct WorldlineApi {
    /// The profile served.
    pub worldlines: Arc<Worldlines>,
    /// Who may do what.
    pub auth: Arc<Authority>,
}

pub(super) fn worldline(bytes: &[u8]) -> Result<WorldlineId, Status> {
    let id: [u8; 32] = bytes.try_into().map_err(|_| {
        Status::from(LedgerError::InvalidArgument(format!(
            "worldline_id is {} bytes; a worldline id is 32 bytes",
            bytes.len()
        )))
    })?;
    Ok(WorldlineId(id))
}

pub(super) fn digest(field: &str, bytes: &[u8]) -> Result<Digest, Status> {
    Digest::from_slice(bytes).ok_or_else(|| {
        LedgerError::InvalidArgument(format!(
            "{field} is {} bytes; a hash is 32 bytes",
            bytes.len()
        ))
        .into()
    })
}

fn receipt_response(a: super::AppendedReceipt) -> Response<pb::ReceiptResponse> {
    Response::new(pb::ReceiptResponse {
        receipt: Some(entry_to_proto(&a.entry)),
        duplicate: a.duplicate,
    })
}

#[tonic::async_trait]
impl WorldlineService for WorldlineApi {
    async fn append_commitment(
        &self,
        request: Request<pb::AppendCommitmentRequest>,
    ) -> Result<Response<pb::ReceiptResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let r = request.into_inner();
        let w = worldline(&r.worldline_id)?;
        caller.require(Right::Append, &w.context_id())?;
        let commitment =
            Commitment::decode(&r.commitment, self.worldlines.limits()).map_err(client_bytes)?;
        let a = self.worldlines.append_commitment(&w, &commitment).await?;
        Ok(receipt_response(a))
    }

    async fn append_outcome(
        &self,
        request: Request<pb::AppendOutcomeRequest>,
    ) -> Result<Response<pb::ReceiptResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let r = request.into_inner();
        let w = worldline(&r.worldline_id)?;
        caller.require(Right::Append, &w.context_id())?;
        let outcome =
            Outcome::decode(&r.outcome, self.worldlines.limits()).map_err(client_bytes)?;
        let a = self.worldlines.append_outcome(&w, &outcome).await?;
        Ok(receipt_response(a))
    }

    async fn append_snapshot(
        &self,
        request: Request<pb::AppendSnapshotRequest>,
    ) -> Result<Response<pb::AppendSnapshotResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let r = request.into_inner();
        let w = worldline(&r.worldline_id)?;
        caller.require(Right::Append, &w.context_id())?;
        let anchor = ReceiptRef {
            worldline: w,
            seq: r.anchor_seq,
            receipt_hash: digest("anchor_hash", &r.anchor_hash)?,
        };
        let expected = if r.expected_state_hash.is_empty() {
            None
        } else {
            Some(digest("expected_state_hash", &r.expected_state_hash)?)
        };
        let s = self
            .worldlines
            .append_snapshot(&anchor, expected.as_ref())
            .await?;
        Ok(Response::new(pb::AppendSnapshotResponse {
            anchor_seq: s.anchor.seq,
            anchor_hash: s.anchor.receipt_hash.0.to_vec(),
            state_hash: s.state_hash.0.to_vec(),
            header_seq: s.header_seq,
            duplicate: s.duplicate,
        }))
    }

    async fn worldline_head(
        &self,
        request: Request<pb::WorldlineHeadRequest>,
    ) -> Result<Response<pb::WorldlineHeadResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let w = worldline(&request.get_ref().worldline_id)?;
        caller.require(Right::Read, &w.context_id())?;
        let head = self.worldlines.head(&w).await?;
        Ok(Response::new(pb::WorldlineHeadResponse {
            seq: head.map_or(0, |h| h.seq),
            receipt_hash: head.map_or_else(Vec::new, |h| h.receipt_hash.0.to_vec()),
        }))
    }

    async fn read_receipts(
        &self,
        request: Request<pb::ReadReceiptsRequest>,
    ) -> Result<Response<pb::ReadReceiptsResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let r = request.into_inner();
        let w = worldline(&r.worldline_id)?;
        caller.require(Right::Read, &w.context_id())?;
        let bytes_max = self
            .worldlines
            .ledger()
            .config()
            .effective_response_bytes_max();
        let receipts = self
            .worldlines
            .read_range(&w, r.from, r.to, PAGE_ITEMS_MAX, bytes_max)
            .await?;
        Ok(Response::new(pb::ReadReceiptsResponse {
            receipts: receipts.iter().map(|(_, e)| entry_to_proto(e)).collect(),
        }))
    }

    async fn get_receipt(
        &self,
        request: Request<pb::GetReceiptRequest>,
    ) -> Result<Response<pb::GetReceiptResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let hash = digest("receipt_hash", &request.get_ref().receipt_hash)?;
        // A receipt of a worldline the caller may not read is answered as
        // if there were none.
        match self.worldlines.get_by_hash(&hash).await? {
            Some(r) if caller.allows(Right::Read, &r.worldline.context_id()) => {
                Ok(Response::new(pb::GetReceiptResponse {
                    worldline_id: r.worldline.0.to_vec(),
                    receipt: Some(entry_to_proto(&r.to_entry())),
                }))
            }
            _ => Err(LedgerError::NotFound(format!("no receipt has hash {hash}")).into()),
        }
    }

    async fn list_worldlines(
        &self,
        request: Request<pb::ListWorldlinesRequest>,
    ) -> Result<Response<pb::ListWorldlinesResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let r = request.into_inner();
        let after = if r.after.is_empty() {
            None
        } else {
            Some(worldline(&r.after)?)
        };
        let limit = if r.limit == 0 { 100 } else { r.limit as usize };
        let visible = caller.clone();
        let list = self
            .worldlines
            .worldlines(after.as_ref(), limit, move |c| {
                visible.allows(Right::Read, c)
            })
            .await?;
        Ok(Response::new(pb::ListWorldlinesResponse {
            worldlines: list
                .iter()
                .map(|h| pb::WorldlineHeadEntry {
                    worldline_id: h.worldline.0.to_vec(),
                    seq: h.seq,
                    receipt_hash: h.receipt_hash.0.to_vec(),
                })
                .collect(),
        }))
    }

    type ReplayStateStream = std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<pb::ReplayStateChunk, Status>> + Send>,
    >;

    async fn replay_state(
        &self,
        request: Request<pb::ReplayStateRequest>,
    ) -> Result<Response<Self::ReplayStateStream>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let r = request.into_inner();
        let w = worldline(&r.worldline_id)?;
        caller.require(Right::Read, &w.context_id())?;
        let head = self.worldlines.head(&w).await?.map_or(0, |h| h.seq);
        let seq = if r.seq == 0 { head } else { r.seq };
        if seq > head {
            return Err(LedgerError::OutOfRange(format!(
                "worldline {w} has receipts 1..={head}; there is no state after receipt {seq}"
            ))
            .into());
        }
        let (state, at) = self.worldlines.state_at(&w, seq).await?;
        let hash = state.hash();
        let (count, bytes) = (state.len() as u64, state.bytes());
        let at_hash = at.map_or_else(Vec::new, |a| a.receipt_hash.0.to_vec());
        let prefix = r.key_prefix;
        // A pull stream: one message is built when the transport asks for
        // it, so the state (bounded by state_bytes_max) is held once, never
        // also as messages.
        let pairs = state
            .into_pairs()
            .filter(move |(k, _)| k.starts_with(&prefix))
            .peekable();
        let stream = futures_util::stream::unfold(Some(pairs), move |pairs| {
            let at_hash = at_hash.clone();
            async move {
                let mut pairs = pairs?;
                let mut chunk = Vec::new();
                let mut size = 0;
                while let Some((k, v)) = pairs.peek() {
                    if !chunk.is_empty() && size + k.len() + v.len() > STATE_CHUNK_BYTES {
                        break;
                    }
                    size += k.len() + v.len() + 8;
                    let (key, value) = pairs.next()?;
                    chunk.push(pb::StatePair { key, value });
                }
                let last = pairs.peek().is_none();
                let message = pb::ReplayStateChunk {
                    seq,
                    receipt_hash: at_hash,
                    pairs: chunk,
                    state_hash: if last { hash.0.to_vec() } else { Vec::new() },
                    pair_count: if last { count } else { 0 },
                    state_bytes: if last { bytes } else { 0 },
                    last,
                };
                Some((Ok(message), (!last).then_some(pairs)))
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn verify_worldline(
        &self,
        request: Request<pb::VerifyWorldlineRequest>,
    ) -> Result<Response<pb::VerifyWorldlineResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let w = worldline(&request.get_ref().worldline_id)?;
        caller.require(Right::Read, &w.context_id())?;
        let v = self.worldlines.verify(&w).await?;
        Ok(Response::new(pb::VerifyWorldlineResponse {
            ok: v.failure.is_none(),
            receipts: v.receipts,
            head_seq: v.head.map_or(0, |h| h.seq),
            head_hash: v.head.map_or_else(Vec::new, |h| h.receipt_hash.0.to_vec()),
            state_hash: v.state_hash.0.to_vec(),
            snapshots: v.snapshots,
            failed_seq: v.failure.as_ref().map_or(0, |(s, _)| *s),
            error: v
                .failure
                .map_or_else(String::new, |(_, e)| e.message().to_owned()),
        }))
    }

    async fn projected_state(
        &self,
        request: Request<pb::ProjectedStateRequest>,
    ) -> Result<Response<pb::ProjectedStateResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let mut r = request.into_inner();
        let q = Query::parse(r.query.take())?;
        caller.require(Right::Read, &q.worldline.context_id())?;
        Ok(Response::new(self.worldlines.projected_state(q, r).await?))
    }

    async fn query_audit(
        &self,
        request: Request<pb::QueryAuditRequest>,
    ) -> Result<Response<pb::QueryAuditResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let mut r = request.into_inner();
        let q = Query::parse(r.query.take())?;
        caller.require(Right::Read, &q.worldline.context_id())?;
        Ok(Response::new(self.worldlines.query_audit(q, r).await?))
    }

    async fn query_grants(
        &self,
        request: Request<pb::QueryGrantsRequest>,
    ) -> Result<Response<pb::QueryGrantsResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let mut r = request.into_inner();
        let q = Query::parse(r.query.take())?;
        caller.require(Right::Read, &q.worldline.context_id())?;
        Ok(Response::new(self.worldlines.query_grants(q, r).await?))
    }

    async fn query_provenance(
        &self,
        request: Request<pb::QueryProvenanceRequest>,
    ) -> Result<Response<pb::QueryProvenanceResponse>, Status> {
        let caller = self.auth.authenticate(&request)?;
        let mut r = request.into_inner();
        let q = Query::parse(r.query.take())?;
        caller.require(Right::Read, &q.worldline.context_id())?;
        Ok(Response::new(self.worldlines.query_provenance(q, r).await?))
    }
}
