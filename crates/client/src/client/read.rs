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
        let (key, after, limit) = (
            (!request.key.is_empty()).then_some(request.key.as_str()),
            request.after_sequence,
            request.limit,
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
                let mut check = match &key {
                    None => EntryCheck::contiguous(context, after),
                    Some(k) => EntryCheck::only_key(context, k, after),
                }
                .at_most(limit as u64);
                for e in &entries {
                    check.check(e)?;
                }
                if limit == 0 {
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
        let (key, after, limit) = (
            (!request.key.is_empty()).then(|| request.key.clone()),
            request.after_sequence,
            request.limit,
        );
        let mut stream = self
            .ledger
            .clone()
            .read(self.stream_request(request))
            .await?
            .into_inner();
        let mut latest = 0;
        let mut check = match &key {
            None => EntryCheck::contiguous(context, after),
            Some(k) => EntryCheck::only_key(context, k, after),
        }
        .at_most(limit);
        while let Some(msg) = stream.message().await? {
            latest = msg.latest_sequence;
            accept(msg, &mut check, &mut visit)?;
        }
        if limit == 0 {
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

/// Checks the entries of one Read message, in either encoding (a server
/// that predates `ReadRequest.encoding` sends Entry messages), and hands
/// each to `visit` once it passed.
fn accept(
    msg: ext::ReadResponse,
    check: &mut EntryCheck<'_>,
    visit: &mut impl FnMut(Entry),
) -> Result<(), ClientError> {
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
    Ok(())
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
    /// For key-filtered reads: the key every entry must have, and the
    /// sequence every entry must be above.
    key: Option<(&'a str, u64)>,
    /// At most this many entries (0: no limit), and how many came.
    limit: u64,
    seen: u64,
}

impl<'a> EntryCheck<'a> {
    /// Checks hashes and links of entries that may skip sequences (filtered
    /// reads, single entries).
    pub(crate) fn new(context: &'a str) -> Self {
        Self {
            context,
            last: None,
            next: None,
            key: None,
            limit: 0,
            seen: 0,
        }
    }

    /// Also requires every sequence after `after`, without gaps.
    pub(crate) fn contiguous(context: &'a str, after: u64) -> Self {
        Self {
            context,
            last: None,
            next: Some(after + 1),
            key: None,
            limit: 0,
            seen: 0,
        }
    }

    /// For a read filtered by `key`: every entry must have that key and a
    /// sequence above `after` (gaps are expected).
    pub(crate) fn only_key(context: &'a str, key: &'a str, after: u64) -> Self {
        Self {
            key: Some((key, after)),
            ..Self::new(context)
        }
    }

    /// Also refuses more than `limit` entries (0: no limit).
    pub(crate) fn at_most(self, limit: u64) -> Self {
        Self { limit, ..self }
    }

    /// Continues a check after `last` (a resumed watch).
    pub(crate) fn resume(context: &'a str, last: Option<(u64, Digest)>, next: Option<u64>) -> Self {
        Self {
            last,
            next,
            ..Self::new(context)
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
        self.seen += 1;
        if self.limit != 0 && self.seen > self.limit {
            return Err(ClientError::Verification(format!(
                "the server sent more than the {} entries of {:?} asked for",
                self.limit, self.context
            )));
        }
        if let Some((key, after)) = self.key {
            if e.key != key {
                return Err(ClientError::Verification(format!(
                    "entry {} of {:?} has key {:?}; the read asked for key {key:?}",
                    e.sequence, self.context, e.key
                )));
            }
            if e.sequence <= after {
                return Err(ClientError::Verification(format!(
                    "entry {} of {:?} came in a read of entries after {after}",
                    e.sequence, self.context
                )));
            }
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

    fn entry_to_proto(e: Entry) -> pb::Entry {
        pb::Entry {
            id: e.hash.to_hex(),
            key: e.key,
            payload: e.payload,
            sequence: e.sequence,
            appended_at_ns: e.appended_at_ns,
            metadata: e.metadata.into_iter().collect(),
            lamport: e.lamport,
            hash: e.hash.0.to_vec(),
            prev_hash: e.prev_hash.0.to_vec(),
        }
    }

    fn message(entries: &[Entry], as_records: bool) -> ext::ReadResponse {
        ext::ReadResponse {
            entries: if as_records {
                Vec::new()
            } else {
                entries.iter().cloned().map(entry_to_proto).collect()
            },
            latest_sequence: entries.len() as u64,
            records: if as_records {
                framed(entries).into()
            } else {
                Default::default()
            },
        }
    }

    fn accepted(msgs: Vec<ext::ReadResponse>, context: &str) -> Result<Vec<Entry>, ClientError> {
        let mut check = EntryCheck::contiguous(context, 0);
        let mut got = Vec::new();
        for m in msgs {
            accept(m, &mut check, &mut |e| got.push(e))?;
        }
        Ok(got)
    }

    #[test]
    fn a_read_accepts_entries_in_either_encoding_and_refuses_another_context_a_gap_a_broken_link_or_both_encodings_at_once()
     {
        let entries = chain(6);
        for as_records in [true, false] {
            // Either encoding, and a server that switches between messages.
            let msgs = vec![
                message(&entries[..3], as_records),
                message(&entries[3..], !as_records),
            ];
            assert_eq!(accepted(msgs, "c").unwrap(), entries);
            let refused = |msgs, context| {
                let err = accepted(msgs, context).unwrap_err();
                assert!(matches!(err, ClientError::Verification(_)), "{err}");
            };
            refused(vec![message(&entries, as_records)], "d");
            let gap = [&entries[..2], &entries[3..]].concat();
            refused(vec![message(&gap, as_records)], "c");
            let mut unlinked = entries.clone();
            unlinked[3].prev_hash = unlinked[1].hash;
            unlinked[3].hash = unlinked[3].compute_hash("c");
            refused(vec![message(&unlinked, as_records)], "c");
        }
        let mut both = message(&entries[..3], false);
        both.records = framed(&entries[3..]).into();
        assert!(matches!(
            accepted(vec![both], "c"),
            Err(ClientError::Protocol(m)) if m.contains("both")
        ));
    }

    #[test]
    fn a_filtered_or_limited_read_refuses_another_key_an_entry_at_or_before_its_start_or_one_past_its_limit()
     {
        let mut head = Head::empty("c");
        let entries: Vec<Entry> = (0..6u8)
            .map(|i| {
                let e = head.next_entry(
                    "c",
                    NewEntry {
                        key: if i % 2 == 0 { "a" } else { "b" }.into(),
                        payload: vec![i],
                        ..NewEntry::default()
                    },
                    i as u64,
                );
                head.advance(&e);
                e
            })
            .collect();
        let of = |key: &str| -> Vec<Entry> {
            entries.iter().filter(|e| e.key == key).cloned().collect()
        };
        let run = |mut check: EntryCheck<'_>, sent: &[Entry]| -> Result<usize, ClientError> {
            let mut n = 0;
            accept(message(sent, true), &mut check, &mut |_| n += 1)?;
            Ok(n)
        };
        assert_eq!(run(EntryCheck::only_key("c", "a", 0), &of("a")).unwrap(), 3);
        assert_eq!(
            run(EntryCheck::only_key("c", "a", 1), &of("a")[1..]).unwrap(),
            2
        );
        let refused = |r: Result<usize, ClientError>, what: &str| {
            assert!(
                matches!(&r, Err(ClientError::Verification(m)) if m.contains(what)),
                "{r:?}"
            );
        };
        refused(
            run(EntryCheck::only_key("c", "a", 0), &entries[..2]),
            "has key",
        );
        refused(run(EntryCheck::only_key("c", "a", 1), &of("a")), "after 1");
        let limited = EntryCheck::only_key("c", "a", 0).at_most(2);
        refused(run(limited, &of("a")), "more than the 2");
        assert_eq!(
            run(EntryCheck::contiguous("c", 0).at_most(6), &entries).unwrap(),
            6
        );
        refused(
            run(EntryCheck::contiguous("c", 0).at_most(5), &entries),
            "more than the 5",
        );
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
