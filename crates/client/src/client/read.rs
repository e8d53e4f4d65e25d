//! Reads, and the checks every received entry passes.

use converge_ledger_core::{Digest, Entry, record};
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
            encoding: ext::ReadEncoding::Records as i32,
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
            if !msg.records.is_empty() && !msg.entries.is_empty() {
                return Err(ClientError::Protocol(
                    "a Read message carried both entry messages and entry records".into(),
                ));
            }
            for e in msg.entries {
                let e = entry_from_proto(e)?;
                check.check(&e)?;
                visit(e);
            }
            for e in Records(&msg.records) {
                let e = e?;
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

/// The entries of a `READ_ENCODING_RECORDS` message: u32 big-endian length
/// ‖ entry record, one after the other. Each record's CRC is checked as it
/// decodes; hashes and links are the caller's [`EntryCheck`].
pub(crate) struct Records<'a>(pub(crate) &'a [u8]);

impl Iterator for Records<'_> {
    type Item = Result<Entry, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let Some((len, rest)) = self.0.split_first_chunk::<4>() else {
            self.0 = &[];
            return Some(Err(ClientError::Protocol(
                "a Read message's records end inside a length".into(),
            )));
        };
        let len = u32::from_be_bytes(*len) as usize;
        if len > rest.len() {
            self.0 = &[];
            return Some(Err(ClientError::Protocol(format!(
                "a Read message's record claims {len} bytes; {} remain",
                rest.len()
            ))));
        }
        let (bytes, rest) = rest.split_at(len);
        self.0 = rest;
        // A record that does not decode (its CRC first) was damaged on the
        // way or by the server: the same class as an entry whose hash does
        // not recompute.
        Some(record::decode(bytes).map_err(|e| {
            ClientError::Verification(format!("a Read message's entry record: {}", e.0))
        }))
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

#[cfg(test)]
mod tests {
    use converge_ledger_core::{Head, NewEntry};

    use super::*;

    fn framed(entries: &[Entry]) -> Vec<u8> {
        let mut out = Vec::new();
        for e in entries {
            let r = record::encode(e);
            out.extend_from_slice(&(r.len() as u32).to_be_bytes());
            out.extend_from_slice(&r);
        }
        out
    }

    fn chain(n: u8) -> Vec<Entry> {
        let mut head = Head::empty("c");
        (0..n)
            .map(|i| {
                let e = head.next_entry(
                    "c",
                    NewEntry {
                        key: "k".into(),
                        payload: vec![i; 3],
                        ..NewEntry::default()
                    },
                    i as u64,
                );
                head.advance(&e);
                e
            })
            .collect()
    }

    #[test]
    fn records_decode_in_order_and_every_cut_or_flipped_byte_is_an_error_never_an_entry_too_many() {
        let entries = chain(3);
        let bytes = framed(&entries);
        let got: Vec<Entry> = Records(&bytes).collect::<Result<_, _>>().unwrap();
        assert_eq!(got, entries);
        assert_eq!(Records(&[]).count(), 0);
        let frame = bytes.len() / 3;
        for cut in 1..bytes.len() {
            let r: Vec<_> = Records(&bytes[..cut]).collect();
            let whole = cut / frame;
            assert_eq!(
                r.iter().filter(|x| x.is_ok()).count(),
                whole,
                "cut at {cut}"
            );
            if cut % frame == 0 {
                assert_eq!(r.len(), whole, "cut at {cut}");
            } else {
                assert!(r.last().is_some_and(|l| l.is_err()), "cut at {cut}");
                assert_eq!(r.len(), whole + 1, "one error, then nothing: cut at {cut}");
            }
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            let r: Result<Vec<Entry>, _> = Records(&b).collect();
            assert!(r.is_err(), "a flip at {i} went unnoticed");
        }
        let mut b = bytes.clone();
        b[4 + 9] ^= 0x01;
        assert!(matches!(
            Records(&b).next(),
            Some(Err(ClientError::Verification(m))) if m.contains("checksum")
        ));
    }
}
