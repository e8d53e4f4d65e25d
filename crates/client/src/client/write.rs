//! Appends, single and batched, with idempotent retries.

use converge_ledger_core::{Entry, genesis_hash};
use converge_ledger_proto::context::v1 as pb;
use converge_ledger_proto::ledger::v1 as ext;

use super::*;
use crate::ClientError;

impl Client {
    /// Appends one entry and returns it as stored. Transient failures are
    /// retried with the same idempotency key: exactly one entry results.
    /// While other appends of this client are in flight, it is pipelined
    /// ([`ClientOptions::pipeline_appends`]).
    pub async fn append(
        &self,
        context: &str,
        key: &str,
        payload: Vec<u8>,
        options: AppendOptions,
    ) -> Result<Entry, ClientError> {
        let request = pb::AppendRequest {
            context_id: context.to_owned(),
            key: key.to_owned(),
            payload,
            metadata: options.metadata.into_iter().collect(),
            idempotency_key: options.idempotency_key.unwrap_or_else(generated_key),
            lamport: options.lamport,
        };
        let (_inflight, crowded) = self.pipe.begin();
        let request = if crowded && self.options.pipeline_appends {
            match self
                .pipe
                .append(&|| self.link(), request, self.options.request_timeout)
                .await
            {
                Ok(entry) => return Ok(entry),
                Err(Err(refused)) => return Err(refused),
                Err(Ok(request)) => request,
            }
        } else {
            request
        };
        self.retry(|| {
            let mut c = self.context.clone();
            let r = self.request(request.clone());
            let sent = &request;
            async move {
                let resp = c.append(r).await?.into_inner();
                let e = entry_from_proto(resp.entry.ok_or_else(|| {
                    ClientError::Protocol("append response without an entry".into())
                })?)?;
                EntryCheck::new(context).check(&e)?;
                if e.key != sent.key || e.payload != sent.payload || e.metadata.len() != sent.metadata.len()
                    || e.metadata.iter().any(|(k, v)| sent.metadata.get(k) != Some(v))
                {
                    return Err(ClientError::Verification(format!(
                        "the server acknowledged entry {} of {context:?} with other content than was appended",
                        e.sequence
                    )));
                }
                Ok(e)
            }
        })
        .await
    }

    /// Appends `entries` to `context` in order, atomically: they get
    /// consecutive sequences and become durable in one commit, or nothing
    /// is appended. One round trip whatever the count (up to the server's
    /// [`ServerInfo::batch_entries_max`] and the message limit). Transient
    /// failures are retried under one idempotency key, so the batch is
    /// appended exactly once. Every returned entry is checked: its hash
    /// recomputes from what was sent, and each links to the one before.
    pub async fn append_batch(
        &self,
        context: &str,
        entries: Vec<BatchEntry>,
        options: BatchOptions,
    ) -> Result<BatchResult, ClientError> {
        let request = ext::AppendBatchRequest {
            context_id: context.to_owned(),
            entries: entries
                .into_iter()
                .map(|e| ext::BatchEntry {
                    key: e.key,
                    payload: e.payload,
                    metadata: e.metadata.into_iter().collect(),
                })
                .collect(),
            idempotency_key: options.idempotency_key.unwrap_or_else(generated_key),
            expected_sequence: options.expected_sequence,
            lamport: options.lamport,
        };
        let resp = self
            .retry(|| {
                let mut c = self.ledger.clone();
                let r = self.request(request.clone());
                async move { Ok(c.append_batch(r).await?.into_inner()) }
            })
            .await?;
        let n = request.entries.len();
        if resp.receipts.len() != n {
            return Err(ClientError::Protocol(format!(
                "a batch of {n} entries was acknowledged with {} receipts",
                resp.receipts.len()
            )));
        }
        let first = resp.first_sequence;
        if first == 0 {
            return Err(ClientError::Protocol(
                "a batch was acknowledged at sequence 0".into(),
            ));
        }
        if let Some(expected) = options.expected_sequence
            && !resp.duplicate
            && first != expected + 1
        {
            return Err(ClientError::Verification(format!(
                "a batch conditional on head {expected} of {context:?} was appended at sequence {first}"
            )));
        }
        let mut prev = digest(&resp.prev_hash, "previous hash")?;
        if first == 1 && prev != genesis_hash(context) {
            return Err(ClientError::Verification(format!(
                "the first entry of {context:?} does not link to the context's genesis hash"
            )));
        }
        let mut out = Vec::with_capacity(n);
        for (i, (e, receipt)) in request.entries.into_iter().zip(resp.receipts).enumerate() {
            let entry = Entry {
                sequence: first + i as u64,
                key: e.key,
                payload: e.payload,
                metadata: e.metadata.into_iter().collect(),
                appended_at_ns: receipt.appended_at_ns,
                lamport: receipt.lamport,
                prev_hash: prev,
                hash: digest(&receipt.hash, "entry hash")?,
            };
            if entry.compute_hash(context) != entry.hash {
                return Err(ClientError::Verification(format!(
                    "the server acknowledged entry {} of {context:?} with a hash that does not \
                     match what was appended",
                    entry.sequence
                )));
            }
            prev = entry.hash;
            out.push(entry);
        }
        Ok(BatchResult {
            entries: out,
            duplicate: resp.duplicate,
        })
    }
}
