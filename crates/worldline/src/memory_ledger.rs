//! An in-memory implementation of the contracts, written with the same
//! append rule, entries and checks a server uses: the model a server or
//! SDK implementation is tested against, and a ledger for tests.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use converge_ledger_core::{Digest, Entry, Head, NewEntry};

use crate::contracts::page_limit;
use crate::{
    CommitmentId, CommitmentLookup, LedgerReader, LedgerWriter, NoLookup, Outcome, OutcomeStatus,
    Receipt, ReceiptRef, Replay, SnapshotRef, State, VerifiedSnapshot, WorldlineError, WorldlineId,
    WorldlineLimits, check_outcome_for, check_range, check_state_hash, commitment_entry,
    outcome_entry, read_snapshot, snapshot_entries,
};

/// One worldline: its receipts context and its snapshots context.
struct Stream {
    receipts: Vec<Entry>,
    head: Head,
    /// The fold at the head: the state an outcome's updates are checked
    /// against.
    replay: Replay,
    /// Commitment id → sequence of its receipt (the commitment's
    /// idempotency key).
    by_commitment_id: HashMap<CommitmentId, u64>,
    /// Commitment receipt hash → sequence of its outcome (the outcome's
    /// idempotency key).
    outcome_of: HashMap<Digest, u64>,
    snapshots: Vec<Entry>,
    snapshots_head: Head,
    /// Anchor sequence → sequence of the last snapshot header at it.
    snapshot_at: BTreeMap<u64, u64>,
}

struct Inner {
    limits: WorldlineLimits,
    now_ns: u64,
    streams: BTreeMap<WorldlineId, Stream>,
    by_hash: HashMap<Digest, (WorldlineId, u64)>,
}

/// A WorldLine ledger held in memory, implementing [`LedgerWriter`] and
/// [`LedgerReader`] with [`WorldlineError`].
///
/// Time is a deterministic clock: it starts at
/// [`MemoryLedger::START_NS`] and moves 1 ms per append unless set with
/// [`MemoryLedger::set_now`].
pub struct MemoryLedger {
    inner: Mutex<Inner>,
}

/// A position the ledger's own indexes name but its entries do not hold: a
/// bug in this model, reported rather than panicking.
fn missing(worldline: &WorldlineId, what: &str, seq: u64) -> WorldlineError {
    WorldlineError::corrupt(format!("worldline {worldline} has no {what} at {seq}"))
}

impl Stream {
    fn new(worldline: WorldlineId, limits: &WorldlineLimits) -> Stream {
        Stream {
            receipts: Vec::new(),
            head: Head::empty(&worldline.context_id()),
            replay: Replay::genesis(worldline, limits.clone()),
            by_commitment_id: HashMap::new(),
            outcome_of: HashMap::new(),
            snapshots: Vec::new(),
            snapshots_head: Head::empty(&worldline.snapshots_context_id()),
            snapshot_at: BTreeMap::new(),
        }
    }

    fn receipt(
        &self,
        worldline: &WorldlineId,
        seq: u64,
        limits: &WorldlineLimits,
    ) -> Result<Receipt, WorldlineError> {
        let entry = usize::try_from(seq.wrapping_sub(1))
            .ok()
            .and_then(|i| self.receipts.get(i))
            .ok_or_else(|| missing(worldline, "receipt", seq))?;
        Receipt::from_entry(worldline, entry, limits)
    }
}

impl Inner {
    fn append(
        &mut self,
        worldline: &WorldlineId,
        new: NewEntry,
    ) -> Result<Receipt, WorldlineError> {
        self.now_ns += 1_000_000;
        let now = self.now_ns;
        let limits = self.limits.clone();
        let stream = self
            .streams
            .entry(*worldline)
            .or_insert_with(|| Stream::new(*worldline, &limits));
        let entry = stream.head.next_entry(&worldline.context_id(), new, now);
        let receipt = Receipt::from_entry(worldline, &entry, &limits)?;
        // Everything was checked before; a refusal here is a bug in the
        // checks, reported rather than written.
        stream.replay.apply(&receipt, &NoLookup)?;
        stream.head.advance(&entry);
        stream.receipts.push(entry);
        self.by_hash
            .insert(receipt.receipt_hash, (*worldline, receipt.seq));
        Ok(receipt)
    }

    fn stored(&self, hash: &Digest) -> Result<Option<Receipt>, WorldlineError> {
        let Some((w, seq)) = self.by_hash.get(hash) else {
            return Ok(None);
        };
        let stream = self
            .streams
            .get(w)
            .ok_or_else(|| missing(w, "receipt", *seq))?;
        stream.receipt(w, *seq, &self.limits).map(Some)
    }

    /// The state after receipt `seq`: replay from the nearest snapshot at or
    /// before it (verified on the way), else from genesis.
    fn state_at(&self, worldline: &WorldlineId, seq: u64) -> Result<State, WorldlineError> {
        let stream = self
            .streams
            .get(worldline)
            .ok_or_else(|| missing(worldline, "receipt", seq))?;
        let mut replay = match stream.snapshot_at.range(..=seq).next_back() {
            Some((_, &header_seq)) => {
                let snapshot = self.read_snapshot(worldline, header_seq)?;
                let anchor =
                    stream.receipt(worldline, snapshot.header().anchor_seq, &self.limits)?;
                snapshot.check_anchor(&anchor.reference())?;
                Replay::from_snapshot(snapshot, self.limits.clone())
            }
            None => Replay::genesis(*worldline, self.limits.clone()),
        };
        let lookup =
            |w: &WorldlineId, h: &Digest| Ok(self.stored(h)?.filter(|r| r.worldline == *w));
        for s in replay.seq() + 1..=seq {
            replay.apply(
                &stream.receipt(worldline, s, &self.limits)?,
                &lookup as &dyn CommitmentLookup,
            )?;
        }
        Ok(replay.into_state())
    }

    fn read_snapshot(
        &self,
        worldline: &WorldlineId,
        header_seq: u64,
    ) -> Result<VerifiedSnapshot, WorldlineError> {
        let entries = usize::try_from(header_seq.wrapping_sub(1))
            .ok()
            .and_then(|i| self.streams.get(worldline)?.snapshots.get(i..))
            .ok_or_else(|| missing(worldline, "snapshot entry", header_seq))?;
        read_snapshot(worldline, entries, &self.limits)
    }
}

impl MemoryLedger {
    /// The clock's first reading: 2023-11-14T22:13:20Z.
    pub const START_NS: u64 = 1_700_000_000_000_000_000;

    /// An empty ledger enforcing `limits` (checked with
    /// [`WorldlineLimits::check`]).
    pub fn new(limits: WorldlineLimits) -> Result<MemoryLedger, WorldlineError> {
        limits.check()?;
        Ok(MemoryLedger {
            inner: Mutex::new(Inner {
                limits,
                now_ns: MemoryLedger::START_NS,
                streams: BTreeMap::new(),
                by_hash: HashMap::new(),
            }),
        })
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>, WorldlineError> {
        self.inner.lock().map_err(|_| WorldlineError::Unavailable {
            message: "the in-memory ledger is unusable: a call panicked while holding it".into(),
        })
    }

    /// Sets the clock; the next append is stamped `now_ns + 1 ms` (never
    /// earlier than the previous receipt).
    pub fn set_now(&self, now_ns: u64) -> Result<(), WorldlineError> {
        self.lock()?.now_ns = now_ns;
        Ok(())
    }

    /// The state at the head of `worldline` (empty for an unknown one).
    pub fn state(&self, worldline: &WorldlineId) -> Result<State, WorldlineError> {
        Ok(self
            .lock()?
            .streams
            .get(worldline)
            .map(|s| s.replay.state().clone())
            .unwrap_or_default())
    }

    /// The entries of `worldline`'s receipts context, as a store would hold
    /// them.
    pub fn receipt_entries(&self, worldline: &WorldlineId) -> Result<Vec<Entry>, WorldlineError> {
        Ok(self
            .lock()?
            .streams
            .get(worldline)
            .map(|s| s.receipts.clone())
            .unwrap_or_default())
    }

    /// The entries of `worldline`'s snapshots context.
    pub fn snapshot_entries(&self, worldline: &WorldlineId) -> Result<Vec<Entry>, WorldlineError> {
        Ok(self
            .lock()?
            .streams
            .get(worldline)
            .map(|s| s.snapshots.clone())
            .unwrap_or_default())
    }

    /// Every snapshot of `worldline`, read back and verified, in the order
    /// they were written.
    pub fn snapshots(
        &self,
        worldline: &WorldlineId,
    ) -> Result<Vec<VerifiedSnapshot>, WorldlineError> {
        let inner = self.lock()?;
        let Some(stream) = inner.streams.get(worldline) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let mut seq = 1;
        while seq as usize <= stream.snapshots.len() {
            let s = inner.read_snapshot(worldline, seq)?;
            seq += 1 + u64::from(s.header().chunk_count);
            out.push(s);
        }
        Ok(out)
    }
}

impl LedgerWriter for MemoryLedger {
    type Error = WorldlineError;

    fn append_commitment(
        &self,
        worldline: &WorldlineId,
        commitment: &crate::Commitment,
    ) -> Result<Receipt, WorldlineError> {
        let mut inner = self.lock()?;
        let new = commitment_entry(commitment, &inner.limits)?;
        if let Some(stream) = inner.streams.get(worldline)
            && let Some(&seq) = stream.by_commitment_id.get(&commitment.commitment_id)
        {
            let existing = stream.receipt(worldline, seq, &inner.limits)?;
            if existing.commitment() == Some(commitment) {
                return Ok(existing);
            }
            return Err(WorldlineError::AlreadyExists {
                message: format!(
                    "commitment id {} names receipt {seq} of worldline {worldline}, with other content; a retry must send the same commitment",
                    commitment.commitment_id
                ),
            });
        }
        let receipt = inner.append(worldline, new)?;
        if let Some(stream) = inner.streams.get_mut(worldline) {
            stream
                .by_commitment_id
                .insert(commitment.commitment_id, receipt.seq);
        }
        Ok(receipt)
    }

    fn append_outcome(
        &self,
        worldline: &WorldlineId,
        outcome: &Outcome,
    ) -> Result<Receipt, WorldlineError> {
        let mut inner = self.lock()?;
        let new = outcome_entry(outcome, &inner.limits)?;
        let commitment = inner
            .stored(&outcome.commitment)?
            .filter(|r| r.worldline == *worldline)
            .ok_or_else(|| WorldlineError::UnknownCommitment {
                commitment: outcome.commitment,
                message: format!(
                    "worldline {worldline} has no commitment {}",
                    outcome.commitment
                ),
            })?;
        check_outcome_for(worldline, &commitment, outcome)?;
        let stream = inner
            .streams
            .get(worldline)
            .ok_or_else(|| missing(worldline, "receipt", commitment.seq))?;
        if let Some(&seq) = stream.outcome_of.get(&outcome.commitment) {
            let existing = stream.receipt(worldline, seq, &inner.limits)?;
            if existing.outcome() == Some(outcome) {
                return Ok(existing);
            }
            return Err(WorldlineError::AlreadyExists {
                message: format!(
                    "commitment {} already has its outcome, receipt {seq}; a commitment has one outcome",
                    outcome.commitment
                ),
            });
        }
        if outcome.status == OutcomeStatus::Succeeded {
            stream
                .replay
                .state()
                .check_updates(&outcome.state_updates, &inner.limits)?;
        }
        let receipt = inner.append(worldline, new)?;
        if let Some(stream) = inner.streams.get_mut(worldline) {
            stream.outcome_of.insert(outcome.commitment, receipt.seq);
        }
        Ok(receipt)
    }

    fn append_rejection_outcome(
        &self,
        worldline: &WorldlineId,
        commitment: &Digest,
        reporter: &str,
    ) -> Result<Receipt, WorldlineError> {
        self.append_outcome(worldline, &Outcome::rejection(*commitment, reporter))
    }

    fn append_snapshot(
        &self,
        anchor: &ReceiptRef,
        expected_state_hash: Option<&Digest>,
    ) -> Result<SnapshotRef, WorldlineError> {
        let mut inner = self.lock()?;
        let w = &anchor.worldline;
        let head_seq = inner.streams.get(w).map_or(0, |s| s.head.sequence);
        if anchor.seq == 0 || anchor.seq > head_seq {
            return Err(WorldlineError::SnapshotMismatch {
                message: format!(
                    "worldline {w} has receipts 1..={head_seq}; a snapshot is anchored at one of them, not at {}",
                    anchor.seq
                ),
            });
        }
        let at = inner
            .streams
            .get(w)
            .ok_or_else(|| missing(w, "receipt", anchor.seq))?
            .receipt(w, anchor.seq, &inner.limits)?;
        if at.receipt_hash != anchor.receipt_hash {
            return Err(WorldlineError::SnapshotMismatch {
                message: format!(
                    "receipt {} of worldline {w} has hash {}, not {}",
                    anchor.seq, at.receipt_hash, anchor.receipt_hash
                ),
            });
        }
        let state = inner.state_at(w, anchor.seq)?;
        let state_hash = state.hash();
        if let Some(expected) = expected_state_hash {
            check_state_hash(anchor.seq, expected, &state_hash)?;
        }
        let batch = snapshot_entries(anchor, &state, &inner.limits)?;
        inner.now_ns += 1_000_000;
        let now = inner.now_ns;
        let stream = inner
            .streams
            .get_mut(w)
            .ok_or_else(|| missing(w, "receipt", anchor.seq))?;
        let context = w.snapshots_context_id();
        let header_seq = stream.snapshots_head.sequence + 1;
        for new in batch.entries {
            let e = stream.snapshots_head.next_entry(&context, new, now);
            stream.snapshots_head.advance(&e);
            stream.snapshots.push(e);
        }
        stream.snapshot_at.insert(anchor.seq, header_seq);
        Ok(SnapshotRef {
            anchor: *anchor,
            state_hash,
            header_seq,
        })
    }
}

impl LedgerReader for MemoryLedger {
    type Error = WorldlineError;

    fn head(&self, worldline: &WorldlineId) -> Result<Option<ReceiptRef>, WorldlineError> {
        let inner = self.lock()?;
        Ok(inner.streams.get(worldline).and_then(|s| {
            (s.head.sequence > 0).then_some(ReceiptRef {
                worldline: *worldline,
                seq: s.head.sequence,
                receipt_hash: s.head.hash,
            })
        }))
    }

    fn read_range(
        &self,
        worldline: &WorldlineId,
        from: u64,
        to: u64,
    ) -> Result<Vec<Receipt>, WorldlineError> {
        check_range(from, to)?;
        let inner = self.lock()?;
        let Some(stream) = inner.streams.get(worldline) else {
            return Ok(Vec::new());
        };
        (from..=to.min(stream.head.sequence))
            .map(|seq| stream.receipt(worldline, seq, &inner.limits))
            .collect()
    }

    fn get_by_hash(&self, hash: &Digest) -> Result<Option<Receipt>, WorldlineError> {
        self.lock()?.stored(hash)
    }

    fn worldlines(
        &self,
        after: Option<&WorldlineId>,
        limit: usize,
    ) -> Result<Vec<WorldlineId>, WorldlineError> {
        use std::ops::Bound::{Excluded, Unbounded};
        let inner = self.lock()?;
        let start = after.map_or(Unbounded, Excluded);
        Ok(inner
            .streams
            .range((start, Unbounded))
            .map(|(w, _)| *w)
            .take(page_limit(limit))
            .collect())
    }
}

impl std::fmt::Debug for MemoryLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryLedger").finish_non_exhaustive()
    }
}
