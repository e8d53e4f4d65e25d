//! The WorldLine profile (docs/design.md §18) from the SDK. Every receipt
//! received is checked before it is returned: its entry hash recomputes in
//! its worldline's context, its body is canonical and valid, and an
//! appended receipt carries exactly the commitment or outcome sent. Appends
//! are retried on transient failures: the server makes each idempotent
//! (commitments on their id, outcomes on their commitment).

use converge_ledger_core::Digest;
use converge_ledger_proto::ledger::v1 as ext;
use converge_ledger_worldline::{
    Commitment, Outcome, Receipt, ReceiptRef, SnapshotRef, StateHasher, WorldlineId,
    WorldlineLimits,
};

use super::{Client, digest, entry_from_proto};
use crate::ClientError;

/// What a server said of a whole worldline it replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorldlineVerdict {
    /// Every rule held and every snapshot matched the replay.
    pub ok: bool,
    /// Receipts checked.
    pub receipts: u64,
    /// The head reached.
    pub head: Option<ReceiptRef>,
    /// The state hash there.
    pub state_hash: Digest,
    /// Snapshots checked.
    pub snapshots: u64,
    /// When not ok: the first receipt (or snapshot header) at fault, and why.
    pub failure: Option<(u64, String)>,
}

/// A worldline's state after one receipt, as the server replayed it; its
/// hash was recomputed from the pairs received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorldlineState {
    /// The receipt the state is after (`None`: the empty worldline).
    pub at: Option<ReceiptRef>,
    /// Pairs in key order.
    pub pairs: Vec<(String, Vec<u8>)>,
    /// Their state hash (docs/design.md §18, "State and state hash").
    pub state_hash: Digest,
}

/// The common part of a projection query: `worldline`, waiting for
/// receipt `min_seq` (0: no wait), first page of the default size.
pub fn projection_query(worldline: &WorldlineId, min_seq: u64) -> ext::ProjectionQuery {
    ext::ProjectionQuery {
        worldline_id: worldline.0.to_vec(),
        min_seq,
        ..Default::default()
    }
}

fn receipt_of(
    worldline: &WorldlineId,
    entry: Option<converge_ledger_proto::context::v1::Entry>,
    limits: &WorldlineLimits,
) -> Result<Receipt, ClientError> {
    let entry = entry_from_proto(
        entry.ok_or_else(|| ClientError::Protocol("a response without its receipt".into()))?,
    )?;
    Receipt::from_entry(worldline, &entry, limits).map_err(|e| {
        ClientError::Verification(format!("a receipt the server sent fails its checks: {e}"))
    })
}

fn refused(e: converge_ledger_worldline::WorldlineError) -> ClientError {
    ClientError::InvalidArgument(format!("{e}; nothing was sent"))
}

impl Client {
    fn worldline_client(
        &self,
    ) -> converge_ledger_proto::ledger::v1::worldline_service_client::WorldlineServiceClient<
        tonic::transport::Channel,
    > {
        self.worldline.clone()
    }

    /// Appends a decided commitment to `worldline`. Validated here first
    /// (an invalid one is refused without a round trip); a retry of the
    /// same commitment returns the first receipt.
    pub async fn append_commitment(
        &self,
        worldline: &WorldlineId,
        commitment: &Commitment,
    ) -> Result<Receipt, ClientError> {
        let body = converge_ledger_worldline::commitment_payload(
            commitment,
            &self.options().worldline_limits,
        )
        .map_err(refused)?;
        let request = ext::AppendCommitmentRequest {
            worldline_id: worldline.0.to_vec(),
            commitment: body,
        };
        self.retry(|| {
            let mut c = self.worldline_client();
            let r = self.request(request.clone());
            async move {
                let resp = c.append_commitment(r).await?.into_inner();
                let receipt = receipt_of(worldline, resp.receipt, &self.options().worldline_limits)?;
                if receipt.commitment() != Some(commitment) {
                    return Err(ClientError::Verification(format!(
                        "the server acknowledged receipt {} of worldline {worldline} with another body than the commitment sent",
                        receipt.seq
                    )));
                }
                Ok(receipt)
            }
        })
        .await
    }

    /// Appends the outcome of a commitment of `worldline` (at most one per
    /// commitment; a retry of the same outcome returns the first receipt).
    pub async fn append_outcome(
        &self,
        worldline: &WorldlineId,
        outcome: &Outcome,
    ) -> Result<Receipt, ClientError> {
        let body =
            converge_ledger_worldline::outcome_payload(outcome, &self.options().worldline_limits)
                .map_err(refused)?;
        let request = ext::AppendOutcomeRequest {
            worldline_id: worldline.0.to_vec(),
            outcome: body,
        };
        self.retry(|| {
            let mut c = self.worldline_client();
            let r = self.request(request.clone());
            async move {
                let resp = c.append_outcome(r).await?.into_inner();
                let receipt = receipt_of(worldline, resp.receipt, &self.options().worldline_limits)?;
                if receipt.outcome() != Some(outcome) {
                    return Err(ClientError::Verification(format!(
                        "the server acknowledged receipt {} of worldline {worldline} with another body than the outcome sent",
                        receipt.seq
                    )));
                }
                Ok(receipt)
            }
        })
        .await
    }

    /// Closes a rejected commitment with its rejection outcome.
    pub async fn append_rejection_outcome(
        &self,
        worldline: &WorldlineId,
        commitment: &Digest,
        reporter: &str,
    ) -> Result<Receipt, ClientError> {
        self.append_outcome(worldline, &Outcome::rejection(*commitment, reporter))
            .await
    }

    /// Snapshots the state after `anchor`; the server computes it, and
    /// compares `expected_state_hash` if given.
    pub async fn append_worldline_snapshot(
        &self,
        anchor: &ReceiptRef,
        expected_state_hash: Option<&Digest>,
    ) -> Result<SnapshotRef, ClientError> {
        let request = ext::AppendSnapshotRequest {
            worldline_id: anchor.worldline.0.to_vec(),
            anchor_seq: anchor.seq,
            anchor_hash: anchor.receipt_hash.0.to_vec(),
            expected_state_hash: expected_state_hash.map_or_else(Vec::new, |d| d.0.to_vec()),
        };
        let resp = self
            .retry(|| {
                let mut c = self.worldline_client();
                let r = self.request(request.clone());
                async move { Ok(c.append_snapshot(r).await?.into_inner()) }
            })
            .await?;
        let anchor_hash = digest(&resp.anchor_hash, "anchor hash")?;
        if resp.anchor_seq != anchor.seq || anchor_hash != anchor.receipt_hash {
            return Err(ClientError::Verification(format!(
                "the server snapshotted receipt {} {anchor_hash}, not the anchor asked for",
                resp.anchor_seq
            )));
        }
        Ok(SnapshotRef {
            anchor: *anchor,
            state_hash: digest(&resp.state_hash, "state hash")?,
            header_seq: resp.header_seq,
        })
    }

    /// The last receipt of `worldline`; `None` if it has none.
    pub async fn worldline_head(
        &self,
        worldline: &WorldlineId,
    ) -> Result<Option<ReceiptRef>, ClientError> {
        let request = ext::WorldlineHeadRequest {
            worldline_id: worldline.0.to_vec(),
        };
        let resp = self
            .retry(|| {
                let mut c = self.worldline_client();
                let r = self.request(request.clone());
                async move { Ok(c.worldline_head(r).await?.into_inner()) }
            })
            .await?;
        if resp.seq == 0 {
            return Ok(None);
        }
        Ok(Some(ReceiptRef {
            worldline: *worldline,
            seq: resp.seq,
            receipt_hash: digest(&resp.receipt_hash, "receipt hash")?,
        }))
    }

    /// Receipts `from..=to` (1-based), stopping at the head; pages through
    /// the server's response limit. Checks each receipt and that each
    /// links to the one before.
    pub async fn read_receipts(
        &self,
        worldline: &WorldlineId,
        from: u64,
        to: u64,
    ) -> Result<Vec<Receipt>, ClientError> {
        converge_ledger_worldline::check_range(from, to).map_err(refused)?;
        let mut out: Vec<Receipt> = Vec::new();
        let mut next = from;
        while next <= to {
            let request = ext::ReadReceiptsRequest {
                worldline_id: worldline.0.to_vec(),
                from: next,
                to,
            };
            let resp = self
                .retry(|| {
                    let mut c = self.worldline_client();
                    let r = self.request(request.clone());
                    async move { Ok(c.read_receipts(r).await?.into_inner()) }
                })
                .await?;
            if resp.receipts.is_empty() {
                break;
            }
            for e in resp.receipts {
                let r = receipt_of(worldline, Some(e), &self.options().worldline_limits)?;
                if r.seq != next {
                    return Err(ClientError::Verification(format!(
                        "asked for receipt {next} of worldline {worldline}, got {}",
                        r.seq
                    )));
                }
                if let Some(prev) = out.last()
                    && r.prev_receipt_hash != Some(prev.receipt_hash)
                {
                    return Err(ClientError::Verification(format!(
                        "receipt {} of worldline {worldline} does not link to receipt {}",
                        r.seq, prev.seq
                    )));
                }
                next += 1;
                out.push(r);
            }
        }
        Ok(out)
    }

    /// The server's `latest_state` projection: one key or the pairs under
    /// a prefix at the projection's position (`response.position` says
    /// which receipt that is and how far behind the head). With
    /// `query.min_seq`, the server first waits until the projection
    /// reflects that receipt: read your own writes with the seq of the
    /// receipt you appended.
    pub async fn projected_state(
        &self,
        request: ext::ProjectedStateRequest,
    ) -> Result<ext::ProjectedStateResponse, ClientError> {
        self.retry(|| {
            let mut c = self.worldline_client();
            let r = self.request(request.clone());
            async move { Ok(c.projected_state(r).await?.into_inner()) }
        })
        .await
    }

    /// The value of state key `key` in `worldline` once the projection
    /// reflects receipt `min_seq` (0: wherever it is), and the position.
    pub async fn projected_value(
        &self,
        worldline: &WorldlineId,
        key: &str,
        min_seq: u64,
    ) -> Result<(Option<Vec<u8>>, ext::ProjectionPosition), ClientError> {
        let resp = self
            .projected_state(ext::ProjectedStateRequest {
                query: Some(projection_query(worldline, min_seq)),
                select: Some(ext::projected_state_request::Select::Key(key.to_owned())),
                with_state_hash: false,
            })
            .await?;
        let position = resp.position.ok_or_else(|| {
            ClientError::Protocol("a projection answer without its position".into())
        })?;
        let value = resp
            .pairs
            .into_iter()
            .find(|p| p.key == key)
            .map(|p| p.value);
        Ok((value, position))
    }

    /// The server's `audit_index` projection: commitments by one filter and
    /// a time range, paged.
    pub async fn query_audit(
        &self,
        request: ext::QueryAuditRequest,
    ) -> Result<ext::QueryAuditResponse, ClientError> {
        self.retry(|| {
            let mut c = self.worldline_client();
            let r = self.request(request.clone());
            async move { Ok(c.query_audit(r).await?.into_inner()) }
        })
        .await
    }

    /// The server's `capability_grants` projection: what was in force at a
    /// seq or an instant, or the history of grants and revocations.
    pub async fn query_grants(
        &self,
        request: ext::QueryGrantsRequest,
    ) -> Result<ext::QueryGrantsResponse, ClientError> {
        self.retry(|| {
            let mut c = self.worldline_client();
            let r = self.request(request.clone());
            async move { Ok(c.query_grants(r).await?.into_inner()) }
        })
        .await
    }

    /// The server's `provenance_dag` projection: lineage of an outcome or
    /// a state key, what depended on a commitment, the writes of a key,
    /// the commitments citing evidence.
    pub async fn query_provenance(
        &self,
        request: ext::QueryProvenanceRequest,
    ) -> Result<ext::QueryProvenanceResponse, ClientError> {
        self.retry(|| {
            let mut c = self.worldline_client();
            let r = self.request(request.clone());
            async move { Ok(c.query_provenance(r).await?.into_inner()) }
        })
        .await
    }

    /// The receipt with this hash, in whichever worldline.
    pub async fn get_receipt(&self, hash: &Digest) -> Result<Option<Receipt>, ClientError> {
        let request = ext::GetReceiptRequest {
            receipt_hash: hash.0.to_vec(),
        };
        let resp = self
            .retry(|| {
                let mut c = self.worldline_client();
                let r = self.request(request.clone());
                async move {
                    match c.get_receipt(r).await {
                        Ok(r) => Ok(Some(r.into_inner())),
                        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
                        Err(s) => Err(s.into()),
                    }
                }
            })
            .await?;
        let Some(resp) = resp else { return Ok(None) };
        let w = WorldlineId(
            resp.worldline_id
                .as_slice()
                .try_into()
                .map_err(|_| ClientError::Protocol("a worldline id of another length".into()))?,
        );
        let r = receipt_of(&w, resp.receipt, &self.options().worldline_limits)?;
        if r.receipt_hash != *hash {
            return Err(ClientError::Verification(format!(
                "asked for receipt {hash}, got {}",
                r.receipt_hash
            )));
        }
        Ok(Some(r))
    }

    /// Worldlines with a receipt, in id order, after `after`, one page of
    /// at most `limit`, with their heads.
    pub async fn worldlines(
        &self,
        after: Option<&WorldlineId>,
        limit: u32,
    ) -> Result<Vec<ReceiptRef>, ClientError> {
        let request = ext::ListWorldlinesRequest {
            after: after.map_or_else(Vec::new, |w| w.0.to_vec()),
            limit,
        };
        let resp = self
            .retry(|| {
                let mut c = self.worldline_client();
                let r = self.request(request.clone());
                async move { Ok(c.list_worldlines(r).await?.into_inner()) }
            })
            .await?;
        resp.worldlines
            .into_iter()
            .map(|h| {
                Ok(ReceiptRef {
                    worldline: WorldlineId(h.worldline_id.as_slice().try_into().map_err(|_| {
                        ClientError::Protocol("a worldline id of another length".into())
                    })?),
                    seq: h.seq,
                    receipt_hash: digest(&h.receipt_hash, "receipt hash")?,
                })
            })
            .collect()
    }

    /// The state after receipt `seq` (0: the head), replayed by the
    /// server; its hash is recomputed from the pairs received and must
    /// match what the server says.
    pub async fn worldline_state(
        &self,
        worldline: &WorldlineId,
        seq: u64,
    ) -> Result<WorldlineState, ClientError> {
        let request = ext::ReplayStateRequest {
            worldline_id: worldline.0.to_vec(),
            seq,
            key_prefix: String::new(),
        };
        let mut stream = self
            .worldline_client()
            .replay_state(self.stream_request(request))
            .await?
            .into_inner();
        let mut pairs = Vec::new();
        while let Some(chunk) = stream.message().await? {
            pairs.extend(chunk.pairs.into_iter().map(|p| (p.key, p.value)));
            if chunk.last {
                let claimed = digest(&chunk.state_hash, "state hash")?;
                let mut hasher = StateHasher::new(pairs.len() as u64);
                for (k, v) in &pairs {
                    hasher
                        .push(k.as_bytes(), v)
                        .map_err(|e| ClientError::Verification(e.to_string()))?;
                }
                let computed = hasher
                    .finish()
                    .map_err(|e| ClientError::Verification(e.to_string()))?;
                if computed != claimed || chunk.pair_count != pairs.len() as u64 {
                    return Err(ClientError::Verification(format!(
                        "the state of worldline {worldline} hashes to {computed}, the server says {claimed}"
                    )));
                }
                let at = if chunk.seq == 0 {
                    None
                } else {
                    Some(ReceiptRef {
                        worldline: *worldline,
                        seq: chunk.seq,
                        receipt_hash: digest(&chunk.receipt_hash, "receipt hash")?,
                    })
                };
                return Ok(WorldlineState {
                    at,
                    pairs,
                    state_hash: computed,
                });
            }
        }
        Err(ClientError::Protocol(
            "the state stream ended before its last message".into(),
        ))
    }

    /// Asks the server to replay `worldline` from genesis and check every
    /// rule and snapshot.
    pub async fn verify_worldline(
        &self,
        worldline: &WorldlineId,
    ) -> Result<WorldlineVerdict, ClientError> {
        let request = ext::VerifyWorldlineRequest {
            worldline_id: worldline.0.to_vec(),
        };
        let mut c = self.worldline_client();
        let resp = c
            .verify_worldline(self.stream_request(request))
            .await?
            .into_inner();
        Ok(WorldlineVerdict {
            ok: resp.ok,
            receipts: resp.receipts,
            head: if resp.head_seq == 0 {
                None
            } else {
                Some(ReceiptRef {
                    worldline: *worldline,
                    seq: resp.head_seq,
                    receipt_hash: digest(&resp.head_hash, "head hash")?,
                })
            },
            state_hash: digest(&resp.state_hash, "state hash")?,
            snapshots: resp.snapshots,
            failure: (!resp.ok).then_some((resp.failed_seq, resp.error)),
        })
    }
}

/// Seed 004's synchronous contracts ([`LedgerWriter`], [`LedgerReader`])
/// over a [`Client`], for code that is not async (a governance tool, a
/// kernel). Each call runs on a runtime of its own; do not call it from
/// inside an async runtime's worker (use the [`Client`] methods there).
///
/// [`LedgerWriter`]: converge_ledger_worldline::LedgerWriter
/// [`LedgerReader`]: converge_ledger_worldline::LedgerReader
pub struct BlockingWorldlines {
    client: Client,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for BlockingWorldlines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockingWorldlines").finish_non_exhaustive()
    }
}

impl BlockingWorldlines {
    /// Connects to `addr` with `options`, on a runtime of its own.
    pub fn connect(
        addr: impl Into<String>,
        options: crate::ClientOptions,
    ) -> Result<BlockingWorldlines, ClientError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Connect(format!("cannot start a runtime: {e}")))?;
        let client = runtime.block_on(Client::connect_with(addr, options))?;
        Ok(BlockingWorldlines { client, runtime })
    }
}

impl converge_ledger_worldline::LedgerWriter for BlockingWorldlines {
    type Error = ClientError;

    fn append_commitment(
        &self,
        worldline: &WorldlineId,
        commitment: &Commitment,
    ) -> Result<Receipt, ClientError> {
        self.runtime
            .block_on(self.client.append_commitment(worldline, commitment))
    }

    fn append_outcome(
        &self,
        worldline: &WorldlineId,
        outcome: &Outcome,
    ) -> Result<Receipt, ClientError> {
        self.runtime
            .block_on(self.client.append_outcome(worldline, outcome))
    }

    fn append_rejection_outcome(
        &self,
        worldline: &WorldlineId,
        commitment: &Digest,
        reporter: &str,
    ) -> Result<Receipt, ClientError> {
        self.runtime.block_on(
            self.client
                .append_rejection_outcome(worldline, commitment, reporter),
        )
    }

    fn append_snapshot(
        &self,
        anchor: &ReceiptRef,
        expected_state_hash: Option<&Digest>,
    ) -> Result<SnapshotRef, ClientError> {
        self.runtime.block_on(
            self.client
                .append_worldline_snapshot(anchor, expected_state_hash),
        )
    }
}

impl converge_ledger_worldline::LedgerReader for BlockingWorldlines {
    type Error = ClientError;

    fn head(&self, worldline: &WorldlineId) -> Result<Option<ReceiptRef>, ClientError> {
        self.runtime.block_on(self.client.worldline_head(worldline))
    }

    fn read_range(
        &self,
        worldline: &WorldlineId,
        from: u64,
        to: u64,
    ) -> Result<Vec<Receipt>, ClientError> {
        self.runtime
            .block_on(self.client.read_receipts(worldline, from, to))
    }

    fn get_by_hash(&self, hash: &Digest) -> Result<Option<Receipt>, ClientError> {
        self.runtime.block_on(self.client.get_receipt(hash))
    }

    fn worldlines(
        &self,
        after: Option<&WorldlineId>,
        limit: usize,
    ) -> Result<Vec<WorldlineId>, ClientError> {
        let limit = u32::try_from(limit).unwrap_or(u32::MAX);
        Ok(self
            .runtime
            .block_on(self.client.worldlines(after, limit))?
            .into_iter()
            .map(|h| h.worldline)
            .collect())
    }
}
