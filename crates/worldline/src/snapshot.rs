//! Snapshots: a worldline's state at an anchor receipt, stored in the
//! worldline's snapshots context as one header entry followed by chunk
//! entries, all appended in one atomic batch.
//!
//! A snapshot is a checkpoint, never an override: replay may start from one
//! instead of genesis, and must then reach exactly the state a replay from
//! genesis reaches (L5). It lives outside the receipts context, so writing
//! one never moves the worldline's head and never sits between receipts.
//!
//! Layouts (`docs/design.md` §18):
//!
//! ```text
//! header (key "wll.snapshot"):
//!   [4] "WLLS" | u8 version = 1 | u64 anchor_seq | [32] anchor_hash
//!   | [32] state_hash | u64 pair_count | u64 state_bytes
//!   | u32 chunk_bytes_max | u32 chunk_count
//! chunk i (key "wll.snapshot.chunk"), i = 0 .. chunk_count - 1:
//!   [4] "WLLK" | u8 version = 1 | u64 anchor_seq | u32 i
//!   | u32 n | n × (len32(key) ‖ len32(value))
//! ```
//!
//! Chunking is canonical: pairs in key order, packed greedily. A chunk takes
//! pairs while its whole payload stays within `chunk_bytes_max`; the first
//! pair that does not fit starts the next chunk. Every chunk holds at least
//! one pair and the empty state has no chunk. A pair is never split: the
//! limits guarantee that a chunk holds the largest pair
//! ([`WorldlineLimits::check`]). So one state and one chunk size give one
//! sequence of entries, and the reader refuses any other.

use converge_ledger_core::{Digest, Entry, NewEntry};

use crate::codec::{Put, Reader};
use crate::limits::Field;
use crate::receipt::new_entry;
use crate::{ReceiptRef, State, StateHasher, WorldlineError, WorldlineId, WorldlineLimits};

/// Entry key of a snapshot header.
pub const SNAPSHOT_KEY: &str = "wll.snapshot";
/// Entry key of a snapshot chunk.
pub const SNAPSHOT_CHUNK_KEY: &str = "wll.snapshot.chunk";

const HEADER_MAGIC: &[u8; 4] = b"WLLS";
const CHUNK_MAGIC: &[u8; 4] = b"WLLK";
const VERSION: u8 = 1;

/// Bytes of a chunk payload before its pairs.
pub(crate) const CHUNK_HEADER_BYTES: usize = 4 + 1 + 8 + 4 + 4;

/// Encoded size of one pair in a chunk.
pub(crate) const fn pair_encoded_len(key_len: usize, value_len: usize) -> usize {
    4 + key_len + 4 + value_len
}

/// What a snapshot says about itself; the payload of its header entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SnapshotHeader {
    /// The receipt the state is anchored at: the state after applying
    /// receipts `1..=anchor_seq`. At least 1.
    pub anchor_seq: u64,
    /// The receipt hash at `anchor_seq`, binding the snapshot to one
    /// history.
    pub anchor_hash: Digest,
    /// The state hash at the anchor.
    pub state_hash: Digest,
    /// Number of pairs in the state.
    pub pair_count: u64,
    /// Total key and value bytes in the state; checked against
    /// `state_bytes_max` before any chunk is read, so a reader's memory is
    /// bounded by what the header admits.
    pub state_bytes: u64,
    /// The chunk size the snapshot was cut with, so the reader can check
    /// the cut is the canonical one even if the writer's limit changes.
    pub chunk_bytes_max: u32,
    /// Number of chunk entries that follow the header.
    pub chunk_count: u32,
}

impl SnapshotHeader {
    /// The header payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + 8 + 32 + 32 + 8 + 8 + 4 + 4);
        out.extend_from_slice(HEADER_MAGIC);
        out.put_u8(VERSION);
        out.put_u64(self.anchor_seq);
        out.put_digest(&self.anchor_hash);
        out.put_digest(&self.state_hash);
        out.put_u64(self.pair_count);
        out.put_u64(self.state_bytes);
        out.put_u32(self.chunk_bytes_max);
        out.put_u32(self.chunk_count);
        out
    }

    /// Decodes and checks a header payload: an anchor of 1 or more, a
    /// state within `limits.state_bytes_max`, a chunk size that holds a
    /// pair, and a chunk count possible for the pair count.
    pub fn decode(
        bytes: &[u8],
        limits: &WorldlineLimits,
    ) -> Result<SnapshotHeader, WorldlineError> {
        let mut r = Reader::new(bytes, "snapshot header");
        r.header(HEADER_MAGIC, VERSION)?;
        let h = SnapshotHeader {
            anchor_seq: r.u64("anchor_seq")?,
            anchor_hash: r.digest("anchor_hash")?,
            state_hash: r.digest("state_hash")?,
            pair_count: r.u64("pair_count")?,
            state_bytes: r.u64("state_bytes")?,
            chunk_bytes_max: r.u32("chunk_bytes_max")?,
            chunk_count: r.u32("chunk_count")?,
        };
        r.finish()?;
        if h.anchor_seq == 0 {
            return Err(WorldlineError::invalid(
                "anchor_seq",
                "is 0; a snapshot is anchored at a receipt, 1 or later",
            ));
        }
        if h.state_bytes > limits.state_bytes_max {
            return Err(WorldlineError::invalid(
                "state_bytes",
                format!(
                    "is {}; at most {} allowed (state_bytes_max)",
                    h.state_bytes, limits.state_bytes_max
                ),
            ));
        }
        let min_chunk = CHUNK_HEADER_BYTES + pair_encoded_len(1, 0);
        if (h.chunk_bytes_max as usize) < min_chunk {
            return Err(WorldlineError::invalid(
                "chunk_bytes_max",
                format!(
                    "is {}; a chunk holds at least one pair, {min_chunk} bytes",
                    h.chunk_bytes_max
                ),
            ));
        }
        let chunks_possible =
            (h.pair_count == 0) == (h.chunk_count == 0) && u64::from(h.chunk_count) <= h.pair_count;
        // Every pair holds a key of at least one byte.
        if !chunks_possible || h.pair_count > h.state_bytes {
            return Err(WorldlineError::invalid(
                "chunk_count",
                format!(
                    "is {} for {} pairs of {} bytes; every chunk holds a pair and every pair a key",
                    h.chunk_count, h.pair_count, h.state_bytes
                ),
            ));
        }
        Ok(h)
    }

    /// The receipt this snapshot is anchored at.
    pub fn anchor(&self, worldline: &WorldlineId) -> ReceiptRef {
        ReceiptRef {
            worldline: *worldline,
            seq: self.anchor_seq,
            receipt_hash: self.anchor_hash,
        }
    }
}

/// A snapshot ready to append to the worldline's snapshots context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotBatch {
    /// What the header entry says.
    pub header: SnapshotHeader,
    /// The header entry, then the chunk entries, in order. Append them as
    /// one atomic batch, so a reader never finds a header without its
    /// chunks.
    pub entries: Vec<NewEntry>,
}

/// Cuts `state`, the state after receipt `anchor`, into a snapshot with
/// chunks of at most `limits.snapshot_chunk_bytes_max` bytes.
///
/// The server computes `state` itself, by replay (L5); a state or state
/// hash a client supplies is only compared with it
/// ([`VerifiedSnapshot::check_state_hash`]).
pub fn snapshot_entries(
    anchor: &ReceiptRef,
    state: &State,
    limits: &WorldlineLimits,
) -> Result<SnapshotBatch, WorldlineError> {
    limits.check()?;
    if anchor.seq == 0 {
        return Err(WorldlineError::invalid(
            "anchor_seq",
            "is 0; a snapshot is anchored at a receipt, 1 or later",
        ));
    }
    let chunk_max = limits.snapshot_chunk_bytes_max;
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut current: Option<(Vec<u8>, u32)> = None;
    for (key, value) in state.iter() {
        let len = pair_encoded_len(key.len(), value.len());
        if CHUNK_HEADER_BYTES + len > chunk_max {
            // The state was built under other limits than these.
            return Err(WorldlineError::invalid(
                "limits.snapshot_chunk_bytes_max",
                format!(
                    "is {chunk_max} bytes, too small for state key {key:?} ({len} bytes with its framing)"
                ),
            ));
        }
        if current
            .as_ref()
            .is_some_and(|(buf, _)| buf.len() + len > chunk_max)
            && let Some((buf, n)) = current.take()
        {
            chunks.push(finish_chunk(buf, n));
        }
        let (buf, n) = current.get_or_insert_with(|| {
            let mut buf = Vec::with_capacity(chunk_max.min(1 << 20));
            buf.extend_from_slice(CHUNK_MAGIC);
            buf.put_u8(VERSION);
            buf.put_u64(anchor.seq);
            buf.put_u32(chunks.len() as u32);
            buf.put_u32(0); // pair count, patched when the chunk is full
            (buf, 0)
        });
        buf.put_len32(key.as_bytes());
        buf.put_len32(value);
        *n += 1;
    }
    if let Some((buf, n)) = current {
        chunks.push(finish_chunk(buf, n));
    }
    let header = SnapshotHeader {
        anchor_seq: anchor.seq,
        anchor_hash: anchor.receipt_hash,
        state_hash: state.hash(),
        pair_count: state.len() as u64,
        state_bytes: state.bytes(),
        chunk_bytes_max: chunk_max as u32,
        chunk_count: chunks.len() as u32,
    };
    let mut entries = Vec::with_capacity(1 + chunks.len());
    entries.push(new_entry(SNAPSHOT_KEY, header.encode()));
    entries.extend(chunks.into_iter().map(|c| new_entry(SNAPSHOT_CHUNK_KEY, c)));
    Ok(SnapshotBatch { header, entries })
}

fn finish_chunk(mut buf: Vec<u8>, pairs: u32) -> Vec<u8> {
    buf[CHUNK_HEADER_BYTES - 4..CHUNK_HEADER_BYTES].copy_from_slice(&pairs.to_be_bytes());
    buf
}

/// A snapshot read back and verified: the state it holds hashes to the
/// header's `state_hash`, and its entries are exactly the canonical cut.
/// Only [`SnapshotReader::finish`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSnapshot {
    worldline: WorldlineId,
    header: SnapshotHeader,
    header_seq: u64,
    state: State,
}

impl VerifiedSnapshot {
    /// The worldline it belongs to.
    pub fn worldline(&self) -> &WorldlineId {
        &self.worldline
    }

    /// What its header says.
    pub fn header(&self) -> &SnapshotHeader {
        &self.header
    }

    /// The sequence of its header entry in the snapshots context.
    pub fn header_seq(&self) -> u64 {
        self.header_seq
    }

    /// The state at the anchor.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Takes the state out.
    pub fn into_state(self) -> State {
        self.state
    }

    /// Checks the anchor against the worldline's receipt at `anchor_seq`
    /// (read from the receipts context). A replay that continues past the
    /// anchor checks the link itself; a snapshot at the head has no receipt
    /// after it, so a server checks this before serving one.
    pub fn check_anchor(&self, receipt: &ReceiptRef) -> Result<(), WorldlineError> {
        let anchor = self.header.anchor(&self.worldline);
        if *receipt != anchor {
            return Err(WorldlineError::corrupt(format!(
                "snapshot at {} of worldline {} is anchored at seq {} hash {}, but the worldline has seq {} hash {} there",
                self.header_seq,
                self.worldline,
                anchor.seq,
                anchor.receipt_hash,
                receipt.seq,
                receipt.receipt_hash
            )));
        }
        Ok(())
    }

    /// Compares a client-supplied state hash with this snapshot's
    /// ([`WorldlineError::SnapshotMismatch`] if they differ).
    pub fn check_state_hash(&self, expected: &Digest) -> Result<(), WorldlineError> {
        check_state_hash(self.header.anchor_seq, expected, &self.header.state_hash)
    }
}

/// Compares a client's expected state hash with the one the ledger computed
/// at `anchor_seq` (L5: a client's state is only compared, never taken).
pub fn check_state_hash(
    anchor_seq: u64,
    expected: &Digest,
    computed: &Digest,
) -> Result<(), WorldlineError> {
    if expected != computed {
        return Err(WorldlineError::SnapshotMismatch {
            message: format!(
                "the state hash given is {expected}, but the state after receipt {anchor_seq} hashes to {computed}"
            ),
        });
    }
    Ok(())
}

/// Reads a snapshot back from its entries, one at a time, verifying as it
/// goes: entry hashes and links in the snapshots context, keys, the
/// canonical cut, key order, counts, byte totals and finally the state
/// hash. Every failure is [`WorldlineError::Corrupt`]. Memory is bounded by
/// the header's `state_bytes`, itself bounded by `state_bytes_max`.
pub struct SnapshotReader {
    worldline: WorldlineId,
    context: String,
    limits: WorldlineLimits,
    header: SnapshotHeader,
    header_seq: u64,
    /// Sequence and hash of the last entry read, for the chain link.
    last_seq: u64,
    last_hash: Digest,
    /// Payload size of the last chunk read, for the greedy-cut check.
    last_chunk_bytes: usize,
    chunks_read: u32,
    state: State,
    hasher: StateHasher,
}

impl SnapshotReader {
    /// Starts from the header entry (key `wll.snapshot`) of `worldline`'s
    /// snapshots context.
    pub fn new(
        worldline: &WorldlineId,
        header_entry: &Entry,
        limits: &WorldlineLimits,
    ) -> Result<SnapshotReader, WorldlineError> {
        let context = worldline.snapshots_context_id();
        let location = format!(
            "snapshot entry {} of worldline {worldline}",
            header_entry.sequence
        );
        check_entry(&context, header_entry, SNAPSHOT_KEY, &location)?;
        let header = SnapshotHeader::decode(&header_entry.payload, limits)
            .map_err(|e| e.in_stored(&location))?;
        Ok(SnapshotReader {
            worldline: *worldline,
            context,
            limits: limits.clone(),
            header,
            header_seq: header_entry.sequence,
            last_seq: header_entry.sequence,
            last_hash: header_entry.hash,
            last_chunk_bytes: 0,
            chunks_read: 0,
            state: State::new(),
            hasher: StateHasher::new(header.pair_count),
        })
    }

    /// What the header says.
    pub fn header(&self) -> &SnapshotHeader {
        &self.header
    }

    /// How many chunk entries are still to come (read entries
    /// `header_seq + 1 ..= header_seq + chunk_count`).
    pub fn chunks_remaining(&self) -> u32 {
        self.header.chunk_count - self.chunks_read
    }

    /// Reads the next chunk entry.
    pub fn push(&mut self, entry: &Entry) -> Result<(), WorldlineError> {
        let location = format!(
            "snapshot entry {} of worldline {}",
            entry.sequence, self.worldline
        );
        if self.chunks_remaining() == 0 {
            return Err(WorldlineError::corrupt(format!(
                "{location}: the snapshot at {} has all its {} chunks already",
                self.header_seq, self.header.chunk_count
            )));
        }
        if entry.sequence != self.last_seq + 1 || entry.prev_hash != self.last_hash {
            return Err(WorldlineError::corrupt(format!(
                "{location}: does not directly follow entry {} of the snapshot at {}",
                self.last_seq, self.header_seq
            )));
        }
        check_entry(&self.context, entry, SNAPSHOT_CHUNK_KEY, &location)?;
        self.read_chunk(&entry.payload)
            .map_err(|e| e.in_stored(&location))?;
        self.last_seq = entry.sequence;
        self.last_hash = entry.hash;
        self.chunks_read += 1;
        Ok(())
    }

    fn read_chunk(&mut self, payload: &[u8]) -> Result<(), WorldlineError> {
        let chunk_max = self.header.chunk_bytes_max as usize;
        if payload.len() > chunk_max {
            return Err(WorldlineError::invalid(
                "chunk",
                format!(
                    "is {} bytes; the snapshot was cut at {chunk_max}",
                    payload.len()
                ),
            ));
        }
        let mut r = Reader::new(payload, "snapshot chunk");
        r.header(CHUNK_MAGIC, VERSION)?;
        let anchor_seq = r.u64("anchor_seq")?;
        let index = r.u32("index")?;
        if anchor_seq != self.header.anchor_seq || index != self.chunks_read {
            return Err(WorldlineError::invalid(
                "chunk",
                format!(
                    "is chunk {index} of a snapshot anchored at {anchor_seq}; expected chunk {} anchored at {}",
                    self.chunks_read, self.header.anchor_seq
                ),
            ));
        }
        let n = r.count("pairs", usize::MAX, pair_encoded_len(1, 0))?;
        if n == 0 {
            return Err(WorldlineError::invalid(
                "pairs",
                "is empty; every chunk holds a pair",
            ));
        }
        for i in 0..n {
            let key = r.str32(
                Field::member("pairs", i, "key"),
                self.limits.state_key_bytes_max,
            )?;
            self.limits
                .check_state_key(Field::member("pairs", i, "key"), key)?;
            let value = r.bytes32(
                Field::member("pairs", i, "value"),
                self.limits.state_value_bytes_max,
            )?;
            if i == 0
                && self.chunks_read > 0
                && self.last_chunk_bytes + pair_encoded_len(key.len(), value.len()) <= chunk_max
            {
                return Err(WorldlineError::invalid(
                    "chunk",
                    format!(
                        "starts with key {key:?}, which fits in the chunk before it; chunks are packed greedily"
                    ),
                ));
            }
            self.hasher.push(key.as_bytes(), value)?;
            self.state.put(key.to_owned(), value.to_vec());
            if self.state.bytes() > self.header.state_bytes {
                return Err(WorldlineError::invalid(
                    "pairs",
                    format!(
                        "exceed the {} state bytes the header declares",
                        self.header.state_bytes
                    ),
                ));
            }
        }
        r.finish()?;
        self.last_chunk_bytes = payload.len();
        Ok(())
    }

    /// Finishes once every chunk is read: the counts, the byte total and the
    /// state hash must be what the header says.
    pub fn finish(self) -> Result<VerifiedSnapshot, WorldlineError> {
        let location = format!(
            "snapshot at entry {} of worldline {}",
            self.header_seq, self.worldline
        );
        if self.chunks_remaining() != 0 {
            return Err(WorldlineError::corrupt(format!(
                "{location}: {} of its {} chunks are missing",
                self.chunks_remaining(),
                self.header.chunk_count
            )));
        }
        if self.state.bytes() != self.header.state_bytes {
            return Err(WorldlineError::corrupt(format!(
                "{location}: its pairs hold {} bytes but the header says {}",
                self.state.bytes(),
                self.header.state_bytes
            )));
        }
        let hash = self.hasher.finish().map_err(|e| e.in_stored(&location))?;
        if hash != self.header.state_hash {
            return Err(WorldlineError::corrupt(format!(
                "{location}: its state hashes to {hash} but the header says {}",
                self.header.state_hash
            )));
        }
        Ok(VerifiedSnapshot {
            worldline: self.worldline,
            header: self.header,
            header_seq: self.header_seq,
            state: self.state,
        })
    }
}

/// Reads a whole snapshot from its header entry and the entries after it
/// (at least `chunk_count` of them; extra entries are ignored).
pub fn read_snapshot(
    worldline: &WorldlineId,
    entries: &[Entry],
    limits: &WorldlineLimits,
) -> Result<VerifiedSnapshot, WorldlineError> {
    let (first, rest) = entries.split_first().ok_or_else(|| {
        WorldlineError::corrupt(format!(
            "snapshot of worldline {worldline}: no header entry"
        ))
    })?;
    let mut reader = SnapshotReader::new(worldline, first, limits)?;
    for entry in rest.iter().take(reader.chunks_remaining() as usize) {
        reader.push(entry)?;
    }
    reader.finish()
}

fn check_entry(
    context: &str,
    entry: &Entry,
    key: &str,
    location: &str,
) -> Result<(), WorldlineError> {
    let computed = entry.compute_hash(context);
    if computed != entry.hash {
        return Err(WorldlineError::corrupt(format!(
            "{location}: its content hashes to {computed} but it claims {}",
            entry.hash
        )));
    }
    if entry.key != key {
        return Err(WorldlineError::corrupt(format!(
            "{location}: has key {:?} where {key:?} belongs",
            entry.key
        )));
    }
    if !entry.metadata.is_empty() {
        return Err(WorldlineError::corrupt(format!(
            "{location}: has {} metadata pairs; snapshot entries carry none",
            entry.metadata.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use converge_ledger_core::Head;

    use super::*;
    use crate::{ErrorCode, StateUpdate};

    /// Appends `batch` to a fresh snapshots context, as a server would.
    pub(crate) fn append(w: &WorldlineId, batch: &SnapshotBatch) -> Vec<Entry> {
        let ctx = w.snapshots_context_id();
        let mut head = Head::empty(&ctx);
        batch
            .entries
            .iter()
            .map(|n| {
                let e = head.next_entry(&ctx, n.clone(), 7);
                head.advance(&e);
                e
            })
            .collect()
    }

    fn state(pairs: &[(&str, usize)]) -> State {
        let mut s = State::new();
        let updates: Vec<_> = pairs
            .iter()
            .map(|(k, n)| StateUpdate::Put {
                key: (*k).into(),
                value: vec![b'v'; *n],
            })
            .collect();
        s.apply(&updates, &WorldlineLimits::default()).unwrap();
        s
    }

    fn anchor(w: &WorldlineId) -> ReceiptRef {
        ReceiptRef {
            worldline: *w,
            seq: 4,
            receipt_hash: Digest::of(&[b"r4"]),
        }
    }

    fn small_chunks() -> WorldlineLimits {
        WorldlineLimits {
            state_key_bytes_max: 8,
            state_value_bytes_max: 40,
            snapshot_chunk_bytes_max: 80,
            ..WorldlineLimits::default()
        }
    }

    #[test]
    fn a_snapshot_reads_back_to_the_state_it_was_cut_from() {
        let w = WorldlineId::derive(b"w");
        let l = small_chunks();
        for s in [
            State::new(),
            state(&[("a", 1)]),
            state(&[("a", 40), ("b", 30), ("c", 0), ("d", 40), ("e", 5)]),
        ] {
            let batch = snapshot_entries(&anchor(&w), &s, &l).unwrap();
            let entries = append(&w, &batch);
            let v = read_snapshot(&w, &entries, &l).unwrap();
            assert_eq!(v.state(), &s);
            assert_eq!(v.header().state_hash, s.hash());
            v.check_anchor(&anchor(&w)).unwrap();
            for e in &batch.entries[1..] {
                assert!(e.payload.len() <= 80);
            }
        }
    }

    #[test]
    fn chunks_are_packed_greedily_and_pairs_are_never_split() {
        let w = WorldlineId::derive(b"w");
        let l = small_chunks();
        // Each pair is 4+1+4+30 = 39 bytes; 21 + 39 = 60 fits, 60 + 39 does not.
        let s = state(&[("a", 30), ("b", 30), ("c", 30)]);
        let batch = snapshot_entries(&anchor(&w), &s, &l).unwrap();
        assert_eq!(batch.header.chunk_count, 3);
        let s = state(&[("a", 10), ("b", 10), ("c", 30)]);
        let batch = snapshot_entries(&anchor(&w), &s, &l).unwrap();
        assert_eq!(batch.header.chunk_count, 2);
    }

    #[test]
    fn a_cut_that_is_not_greedy_is_refused() {
        let w = WorldlineId::derive(b"w");
        let l = small_chunks();
        let s = state(&[("a", 10), ("b", 10)]);
        let good = snapshot_entries(&anchor(&w), &s, &l).unwrap();
        assert_eq!(good.header.chunk_count, 1);
        // The same pairs cut in two chunks.
        let one = snapshot_entries(&anchor(&w), &state(&[("a", 10)]), &l).unwrap();
        let two = snapshot_entries(&anchor(&w), &state(&[("b", 10)]), &l).unwrap();
        let mut second = two.entries[1].payload.clone();
        second[CHUNK_HEADER_BYTES - 8..CHUNK_HEADER_BYTES - 4].copy_from_slice(&1u32.to_be_bytes());
        let header = SnapshotHeader {
            chunk_count: 2,
            ..good.header
        };
        let forged = SnapshotBatch {
            header,
            entries: vec![
                new_entry(SNAPSHOT_KEY, header.encode()),
                one.entries[1].clone(),
                new_entry(SNAPSHOT_CHUNK_KEY, second),
            ],
        };
        let e = read_snapshot(&w, &append(&w, &forged), &l).unwrap_err();
        assert!(e.message().contains("greedily"), "{e}");
    }

    #[test]
    fn made_up_state_missing_chunks_and_a_wrong_anchor_are_data_loss() {
        let w = WorldlineId::derive(b"w");
        let l = small_chunks();
        let s = state(&[("a", 30), ("b", 30), ("c", 30)]);
        let batch = snapshot_entries(&anchor(&w), &s, &l).unwrap();
        let entries = append(&w, &batch);
        let e = read_snapshot(&w, &entries[..3], &l).unwrap_err();
        assert_eq!(e.code(), ErrorCode::DataLoss);
        // A header claiming another state hash, chained correctly.
        let mut forged = batch.clone();
        forged.header.state_hash = Digest::of(&[b"made up"]);
        forged.entries[0] = new_entry(SNAPSHOT_KEY, forged.header.encode());
        let e = read_snapshot(&w, &append(&w, &forged), &l).unwrap_err();
        assert!(e.message().contains("hashes to"), "{e}");
        let v = read_snapshot(&w, &entries, &l).unwrap();
        let other = ReceiptRef {
            seq: 4,
            receipt_hash: Digest::ZERO,
            worldline: w,
        };
        assert_eq!(
            v.check_anchor(&other).unwrap_err().code(),
            ErrorCode::DataLoss
        );
        let e = v.check_state_hash(&Digest::ZERO).unwrap_err();
        assert_eq!(e.code(), ErrorCode::FailedPrecondition);
        // Chunks from the snapshot read in another context.
        let elsewhere = WorldlineId::derive(b"other");
        assert!(read_snapshot(&elsewhere, &entries, &l).is_err());
    }

    #[test]
    fn a_header_that_admits_more_than_the_state_limit_is_refused_before_any_chunk() {
        let l = WorldlineLimits::default();
        let h = SnapshotHeader {
            anchor_seq: 1,
            anchor_hash: Digest::ZERO,
            state_hash: Digest::ZERO,
            pair_count: 1,
            state_bytes: l.state_bytes_max + 1,
            chunk_bytes_max: 1 << 20,
            chunk_count: 1,
        };
        assert!(
            SnapshotHeader::decode(&h.encode(), &l)
                .unwrap_err()
                .message()
                .contains("state_bytes_max")
        );
        let zero = SnapshotHeader {
            anchor_seq: 0,
            state_bytes: 1,
            ..h
        };
        assert!(SnapshotHeader::decode(&zero.encode(), &l).is_err());
        let chunks = SnapshotHeader {
            chunk_count: 2,
            state_bytes: 1,
            ..h
        };
        assert!(SnapshotHeader::decode(&chunks.encode(), &l).is_err());
    }
}
