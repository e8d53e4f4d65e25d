//! The runtime contracts of seed 004 (§4.4): what the kernel writes with
//! and what governance tools read with. Plain synchronous traits; the
//! server implements them over the ledger, the SDK over gRPC, and
//! [`MemoryLedger`](crate::MemoryLedger) in memory as their model.
//!
//! Each trait has an associated error type, so an SDK can return its own
//! error (with transport failures) as long as every [`WorldlineError`]
//! converts into it.

use converge_ledger_core::Digest;

use crate::{
    Commitment, CommitmentLookup, Outcome, PAGE_ITEMS_MAX, Receipt, ReceiptRef, Replay,
    WorldlineError, WorldlineId, WorldlineLimits,
};

/// Where a snapshot is and what it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SnapshotRef {
    /// The receipt the state is anchored at.
    pub anchor: ReceiptRef,
    /// The state hash at the anchor, as the ledger computed it.
    pub state_hash: Digest,
    /// Sequence of the snapshot's header entry in the worldline's snapshots
    /// context.
    pub header_seq: u64,
}

/// Appends receipts to worldlines. Every method validates before it
/// writes, and writes one receipt (or one snapshot) atomically or nothing.
pub trait LedgerWriter {
    /// The error every method returns.
    type Error: From<WorldlineError>;

    /// Appends a decided commitment to `worldline` (created by its first
    /// receipt).
    ///
    /// Idempotent on `commitment.commitment_id`: the same commitment again
    /// returns the receipt first written; the same id with other content is
    /// [`WorldlineError::AlreadyExists`]. An invalid commitment is
    /// [`WorldlineError::Invalid`].
    fn append_commitment(
        &self,
        worldline: &WorldlineId,
        commitment: &Commitment,
    ) -> Result<Receipt, Self::Error>;

    /// Appends the outcome of the commitment `outcome.commitment` names.
    ///
    /// Errors: [`WorldlineError::Invalid`] for an invalid outcome;
    /// [`WorldlineError::UnknownCommitment`] if no commitment of
    /// `worldline` has that hash; [`WorldlineError::DecisionMismatch`] if
    /// the status does not fit the decision;
    /// [`WorldlineError::StateLimit`] if its updates would take the state
    /// past `state_bytes_max`. At most one outcome per commitment (L4),
    /// atomically: the same outcome again returns the receipt first
    /// written; another is [`WorldlineError::AlreadyExists`].
    fn append_outcome(
        &self,
        worldline: &WorldlineId,
        outcome: &Outcome,
    ) -> Result<Receipt, Self::Error>;

    /// Appends [`Outcome::rejection`]`(commitment, reporter)`: the close of
    /// a rejected commitment. Errors as [`LedgerWriter::append_outcome`].
    fn append_rejection_outcome(
        &self,
        worldline: &WorldlineId,
        commitment: &Digest,
        reporter: &str,
    ) -> Result<Receipt, Self::Error>;

    /// Snapshots the state after receipt `anchor` into the worldline's
    /// snapshots context, never moving the worldline's head.
    ///
    /// The ledger computes that state itself, by replay from the nearest
    /// earlier snapshot (L5); `expected_state_hash`, if given, is only
    /// compared with it. Errors: [`WorldlineError::SnapshotMismatch`] if
    /// the worldline has no receipt at `anchor.seq`, another hash there, or
    /// a state with another hash.
    fn append_snapshot(
        &self,
        anchor: &ReceiptRef,
        expected_state_hash: Option<&Digest>,
    ) -> Result<SnapshotRef, Self::Error>;
}

/// Reads worldlines.
pub trait LedgerReader {
    /// The error every method returns.
    type Error: From<WorldlineError>;

    /// The last receipt of `worldline`; `None` if it has none.
    fn head(&self, worldline: &WorldlineId) -> Result<Option<ReceiptRef>, Self::Error>;

    /// Receipts `from..=to` (1-based, inclusive; [`check_range`]), stopping
    /// at the head. An implementation may return a shorter, non-empty
    /// prefix to stay within its response limits; continue from the last
    /// sequence returned plus one. Empty only when `from` is past the head.
    fn read_range(
        &self,
        worldline: &WorldlineId,
        from: u64,
        to: u64,
    ) -> Result<Vec<Receipt>, Self::Error>;

    /// The receipt with this receipt hash, in whichever worldline.
    fn get_by_hash(&self, hash: &Digest) -> Result<Option<Receipt>, Self::Error>;

    /// Worldlines with at least one receipt, in id order, after `after`,
    /// at most `limit` (lowered to [`PAGE_ITEMS_MAX`]).
    fn worldlines(
        &self,
        after: Option<&WorldlineId>,
        limit: usize,
    ) -> Result<Vec<WorldlineId>, Self::Error>;
}

/// The argument check of [`LedgerReader::read_range`]: `1 <= from <= to`.
pub fn check_range(from: u64, to: u64) -> Result<(), WorldlineError> {
    if from == 0 || from > to {
        return Err(WorldlineError::invalid(
            "range",
            format!(
                "is {from}..={to}; sequences start at 1 and a range runs from its first to its last"
            ),
        ));
    }
    Ok(())
}

/// Replays `worldline` from genesis through everything `reader` returns,
/// checking every receipt (see [`Replay`]).
pub fn replay_worldline<R: LedgerReader + ?Sized>(
    reader: &R,
    worldline: &WorldlineId,
    limits: &WorldlineLimits,
) -> Result<Replay, R::Error> {
    let mut replay = Replay::genesis(*worldline, limits.clone());
    let Some(head) = reader.head(worldline)? else {
        return Ok(replay);
    };
    while replay.seq() < head.seq {
        let page = reader.read_range(worldline, replay.seq() + 1, head.seq)?;
        if page.is_empty() {
            return Err(WorldlineError::corrupt(format!(
                "worldline {worldline} has head {} but no receipt {} could be read",
                head.seq,
                replay.seq() + 1
            ))
            .into());
        }
        for r in &page {
            replay.apply(r, &crate::NoLookup)?;
        }
    }
    if replay.head() != Some(head) {
        return Err(WorldlineError::corrupt(format!(
            "worldline {worldline}: its head is seq {} hash {} but its receipts end at {:?}",
            head.seq,
            head.receipt_hash,
            replay.head().map(|h| (h.seq, h.receipt_hash.to_hex()))
        ))
        .into());
    }
    Ok(replay)
}

/// A [`CommitmentLookup`] over a [`LedgerReader`]: `get_by_hash`, kept to
/// the worldline asked for.
pub struct ReaderLookup<'a, R: ?Sized>(pub &'a R);

impl<R> CommitmentLookup for ReaderLookup<'_, R>
where
    R: LedgerReader<Error = WorldlineError> + ?Sized,
{
    fn commitment(
        &self,
        worldline: &WorldlineId,
        hash: &Digest,
    ) -> Result<Option<Receipt>, WorldlineError> {
        Ok(self
            .0
            .get_by_hash(hash)?
            .filter(|r| r.worldline == *worldline))
    }
}

/// The page size a reader lowers `limit` to.
pub(crate) fn page_limit(limit: usize) -> usize {
    limit.clamp(1, PAGE_ITEMS_MAX)
}
