//! Reads, and the checks every received entry passes.

use converge_ledger_core::{Digest, Entry};
use converge_ledger_proto::context::v1 as pb;
use converge_ledger_proto::ledger::v1 as ext;

use super::*;
use crate::ClientError;

impl Client {
    /// Entries of a context (one message; see [`Client::read_all`] for
    /// contexts beyond the message limit).
    pub async fn get(&self, context: &str, options: GetOptions) -> Result<GetResult, ClientError> {
        let request = pb::GetRequest {
            context_id: context.to_owned(),
            key: options.key.unwrap_or_default(),
            after_sequence: options.after,
            limit: options.limit,
        };
        let (filtered, after, unlimited) = (
            !request.key.is_empty(),
            request.after_sequence,
            request.limit == 0,
        );
        self.retry(|| {
            let mut c = self.context.clone();
            let r = self.request(request.clone());
            async move {
                let resp = c.get(r).await?.into_inner();
                let entries: Vec<Entry> = resp
                    .entries
                    .into_iter()
                    .map(entry_from_proto)
                    .collect::<Result<_, _>>()?;
                let mut check = match filtered {
                    false => EntryCheck::contiguous(context, after),
                    true => EntryCheck::new(context),
                };
                for e in &entries {
                    check.check(e)?;
                }
                if unlimited {
                    check.finish(resp.latest_sequence)?;
                }
                Ok(GetResult {
                    entries,
                    latest_sequence: resp.latest_sequence,
                })
            }
        })
        .await
    }

    /// Streams entries in chunks through the extension `Read`, calling
    /// `visit` for each; memory stays bounded whatever the context's size.
    /// Returns the head sequence at the start of the read.
    pub async fn read_all(
        &self,
        context: &str,
        options: GetOptions,
        mut visit: impl FnMut(Entry),
    ) -> Result<u64, ClientError> {
        let request = ext::ReadRequest {
            context_id: context.to_owned(),
            key: options.key.unwrap_or_default(),
            after_sequence: options.after,
            limit: options.limit as u64,
        };
        let (key_filtered, after, limited) = (
            !request.key.is_empty(),
            request.after_sequence,
            request.limit != 0,
        );
        let mut stream = self
            .ledger
            .clone()
            .read(self.stream_request(request))
            .await?
            .into_inner();
        let mut latest = 0;
        let mut check = match key_filtered {
            false => EntryCheck::contiguous(context, after),
            true => EntryCheck::new(context),
        };
        while let Some(msg) = stream.message().await? {
            latest = msg.latest_sequence;
            for e in msg.entries {
                let e = entry_from_proto(e)?;
                check.check(&e)?;
                visit(e);
            }
        }
        if !limited {
            check.finish(latest)?;
        }
        Ok(latest)
    }

    /// The entry with `hash` and its context, verified against the hash.
    pub async fn get_by_hash(&self, hash: &Digest) -> Result<(String, Entry), ClientError> {
        let r = self
            .ledger
            .clone()
            .get_by_hash(self.request(ext::GetByHashRequest {
                hash: hash.0.to_vec(),
            }))
            .await?
            .into_inner();
        let entry = entry_from_proto(
            r.entry
                .ok_or_else(|| ClientError::Protocol("no entry in the response".into()))?,
        )?;
        EntryCheck::new(&r.context_id).check(&entry)?;
        if entry.hash != *hash {
            return Err(ClientError::Verification(format!(
                "asked for entry {hash}, got {}",
                entry.hash
            )));
        }
        Ok((r.context_id, entry))
    }
}

/// Checks entries of one context as they arrive: each hash recomputes, and
/// each entry that directly follows the previous one links to it.
pub(crate) struct EntryCheck<'a> {
    context: &'a str,
    last: Option<(u64, Digest)>,
    /// For unfiltered reads: the sequence the next entry must have (a
    /// server that skips entries is caught).
    next: Option<u64>,
}

impl<'a> EntryCheck<'a> {
    /// Checks hashes and links of entries that may skip sequences (filtered
    /// reads, single entries).
    pub(crate) fn new(context: &'a str) -> Self {
        Self {
            context,
            last: None,
            next: None,
        }
    }

    /// Also requires every sequence after `after`, without gaps.
    pub(crate) fn contiguous(context: &'a str, after: u64) -> Self {
        Self {
            context,
            last: None,
            next: Some(after + 1),
        }
    }

    /// Continues a check after `last` (a resumed watch).
    pub(crate) fn resume(context: &'a str, last: Option<(u64, Digest)>, next: Option<u64>) -> Self {
        Self {
            context,
            last,
            next,
        }
    }

    /// For contiguous checks of a complete read: the entries must reach
    /// `latest` (the head the server reported).
    pub(crate) fn finish(&self, latest: u64) -> Result<(), ClientError> {
        match self.next {
            Some(n) if n <= latest => Err(ClientError::Verification(format!(
                "the server reported {latest} entries in {:?} but returned none after {}",
                self.context,
                n - 1
            ))),
            _ => Ok(()),
        }
    }

    pub(crate) fn last(&self) -> Option<(u64, Digest)> {
        self.last
    }

    pub(crate) fn check(&mut self, e: &Entry) -> Result<(), ClientError> {
        let computed = e.compute_hash(self.context);
        if computed != e.hash {
            return Err(ClientError::Verification(format!(
                "entry {} of {:?} hashes to {computed}, not to the {} it claims",
                e.sequence, self.context, e.hash
            )));
        }
        if let Some(n) = self.next {
            if e.sequence != n {
                return Err(ClientError::Verification(format!(
                    "expected entry {n} of {:?}, the server sent entry {}",
                    self.context, e.sequence
                )));
            }
            self.next = Some(n + 1);
        }
        if let Some((seq, hash)) = self.last {
            if e.sequence <= seq {
                return Err(ClientError::Verification(format!(
                    "entry {} of {:?} arrived after entry {seq}",
                    e.sequence, self.context
                )));
            }
            if e.sequence == seq + 1 && e.prev_hash != hash {
                return Err(ClientError::Verification(format!(
                    "entry {} of {:?} does not link to entry {seq}",
                    e.sequence, self.context
                )));
            }
        }
        self.last = Some((e.sequence, e.hash));
        Ok(())
    }
}

/// Converts a wire entry, checking that its hashes are well-formed and that
/// its id is its hash.
pub(crate) fn entry_from_proto(e: pb::Entry) -> Result<Entry, ClientError> {
    let hash = digest(&e.hash, "entry hash")?;
    let prev_hash = digest(&e.prev_hash, "previous hash")?;
    if e.id != hash.to_hex() {
        return Err(ClientError::Protocol(format!(
            "entry {} has id {:?}, which is not its hash {hash}",
            e.sequence, e.id
        )));
    }
    Ok(Entry {
        sequence: e.sequence,
        key: e.key,
        payload: e.payload,
        metadata: e.metadata.into_iter().collect(),
        appended_at_ns: e.appended_at_ns,
        lamport: e.lamport,
        prev_hash,
        hash,
    })
}
