//! A receipt is a ledger entry of a worldline's context, read through the
//! WorldLine profile.
//!
//! | receipt field | entry field |
//! |---|---|
//! | `seq` | `sequence` |
//! | `receipt_hash` | `hash` |
//! | `prev_receipt_hash` | `prev_hash` (`None` for seq 1, whose link is the context's genesis hash) |
//! | kind | `key`: `wll.commitment` or `wll.outcome` |
//! | `timestamp_ns` | `appended_at_ns` (the server's clock) |
//! | `lamport` | `lamport` |
//! | body | `payload`, canonically encoded |
//! | — | `metadata`: always empty |
//!
//! Receipts so inherit the ledger's hash chain, Merkle proofs, signed heads
//! and every storage backend.

use converge_ledger_core::{Digest, Entry, Metadata, NewEntry, genesis_hash};

use crate::{Commitment, CommitmentId, Outcome, WorldlineError, WorldlineId, WorldlineLimits};

/// Entry key of a commitment receipt.
pub const COMMITMENT_KEY: &str = "wll.commitment";
/// Entry key of an outcome receipt.
pub const OUTCOME_KEY: &str = "wll.outcome";

/// The two kinds of receipt a worldline holds. Snapshots are not receipts:
/// they live in the worldline's snapshots context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReceiptKind {
    /// A decided proposal.
    Commitment,
    /// What came of a commitment.
    Outcome,
}

impl ReceiptKind {
    /// The entry key that marks this kind.
    pub fn entry_key(self) -> &'static str {
        match self {
            ReceiptKind::Commitment => COMMITMENT_KEY,
            ReceiptKind::Outcome => OUTCOME_KEY,
        }
    }

    /// The kind an entry key marks, if any.
    pub fn from_entry_key(key: &str) -> Option<ReceiptKind> {
        match key {
            COMMITMENT_KEY => Some(ReceiptKind::Commitment),
            OUTCOME_KEY => Some(ReceiptKind::Outcome),
            _ => None,
        }
    }
}

/// Where a receipt is: enough to name it, fetch it, and check it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReceiptRef {
    /// The stream it belongs to.
    pub worldline: WorldlineId,
    /// Its position, 1-based.
    pub seq: u64,
    /// Its entry hash.
    pub receipt_hash: Digest,
}

/// What a receipt says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiptBody {
    /// A commitment receipt.
    Commitment(Commitment),
    /// An outcome receipt.
    Outcome(Outcome),
}

/// One receipt of a worldline.
///
/// Read receipts with [`Receipt::from_entry`], which checks them; the
/// fields are public for reading and matching, and a receipt built by hand
/// is only as trustworthy as its builder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The stream it belongs to.
    pub worldline: WorldlineId,
    /// Position in the stream: 1, 2, 3, … without gaps (L3).
    pub seq: u64,
    /// The entry hash: binds the worldline, the position, the body, the
    /// time and the previous receipt (L2).
    pub receipt_hash: Digest,
    /// The previous receipt's hash; `None` for the first receipt.
    pub prev_receipt_hash: Option<Digest>,
    /// Server time at append, nanoseconds since the Unix epoch; never
    /// decreases along a worldline.
    pub timestamp_ns: u64,
    /// The worldline's Lamport clock at this receipt.
    pub lamport: u64,
    /// The body.
    pub body: ReceiptBody,
}

impl Receipt {
    /// Reads entry `entry` of `worldline`'s receipts context as a receipt,
    /// checking everything the entry must satisfy: its hash recomputes (L2;
    /// one SHA-256 over the payload), its key names a receipt kind, its
    /// metadata is empty, and its payload is a canonical, valid body under
    /// `limits`.
    ///
    /// Meant for entries read back from storage or received from a server,
    /// so every failure is [`WorldlineError::Corrupt`] naming the receipt.
    pub fn from_entry(
        worldline: &WorldlineId,
        entry: &Entry,
        limits: &WorldlineLimits,
    ) -> Result<Receipt, WorldlineError> {
        ReceiptReader::new(*worldline, limits).read(entry)
    }

    /// The entry this receipt is (the inverse of [`Receipt::from_entry`]).
    pub fn to_entry(&self) -> Entry {
        let (key, payload) = match &self.body {
            ReceiptBody::Commitment(c) => (COMMITMENT_KEY, c.encode()),
            ReceiptBody::Outcome(o) => (OUTCOME_KEY, o.encode()),
        };
        Entry {
            sequence: self.seq,
            key: key.to_owned(),
            payload,
            metadata: Metadata::new(),
            appended_at_ns: self.timestamp_ns,
            lamport: self.lamport,
            prev_hash: self
                .prev_receipt_hash
                .unwrap_or_else(|| genesis_hash(&self.worldline.context_id())),
            hash: self.receipt_hash,
        }
    }

    /// Commitment or outcome.
    pub fn kind(&self) -> ReceiptKind {
        match self.body {
            ReceiptBody::Commitment(_) => ReceiptKind::Commitment,
            ReceiptBody::Outcome(_) => ReceiptKind::Outcome,
        }
    }

    /// Where this receipt is.
    pub fn reference(&self) -> ReceiptRef {
        ReceiptRef {
            worldline: self.worldline,
            seq: self.seq,
            receipt_hash: self.receipt_hash,
        }
    }

    /// The body, if this is a commitment receipt.
    pub fn commitment(&self) -> Option<&Commitment> {
        match &self.body {
            ReceiptBody::Commitment(c) => Some(c),
            ReceiptBody::Outcome(_) => None,
        }
    }

    /// The body, if this is an outcome receipt.
    pub fn outcome(&self) -> Option<&Outcome> {
        match &self.body {
            ReceiptBody::Outcome(o) => Some(o),
            ReceiptBody::Commitment(_) => None,
        }
    }
}

/// The payload of a commitment receipt: validated under `limits`, then
/// canonically encoded. Validation is part of the write path because an
/// invalid receipt, once appended, could never be read back (the ledger is
/// append-only).
pub fn commitment_payload(
    commitment: &Commitment,
    limits: &WorldlineLimits,
) -> Result<Vec<u8>, WorldlineError> {
    commitment.validate(limits)?;
    Ok(commitment.encode())
}

/// The payload of an outcome receipt: validated under `limits` (its own
/// rules; the rules against its commitment are
/// [`check_outcome_for`](crate::check_outcome_for)), then canonically
/// encoded.
pub fn outcome_payload(
    outcome: &Outcome,
    limits: &WorldlineLimits,
) -> Result<Vec<u8>, WorldlineError> {
    outcome.validate(limits)?;
    Ok(outcome.encode())
}

/// The entry to append for a commitment: key `wll.commitment`, the
/// validated payload, no metadata, no received Lamport time.
pub fn commitment_entry(
    commitment: &Commitment,
    limits: &WorldlineLimits,
) -> Result<NewEntry, WorldlineError> {
    Ok(new_entry(
        COMMITMENT_KEY,
        commitment_payload(commitment, limits)?,
    ))
}

/// The entry to append for an outcome: key `wll.outcome`, the validated
/// payload, no metadata, no received Lamport time.
pub fn outcome_entry(
    outcome: &Outcome,
    limits: &WorldlineLimits,
) -> Result<NewEntry, WorldlineError> {
    Ok(new_entry(OUTCOME_KEY, outcome_payload(outcome, limits)?))
}

pub(crate) fn new_entry(key: &str, payload: Vec<u8>) -> NewEntry {
    NewEntry {
        key: key.to_owned(),
        payload,
        metadata: Metadata::new(),
        lamport: 0,
    }
}

/// The idempotency key of a commitment's append:
/// `"wll.commitment/" + uuid`. A retried commitment with the same id and
/// content returns the original receipt; the same id with other content is
/// refused (`ALREADY_EXISTS`), so a commitment id names one receipt per
/// worldline.
pub fn commitment_idempotency_key(id: &CommitmentId) -> String {
    format!("{COMMITMENT_KEY}/{id}")
}

/// The idempotency key of an outcome's append: `"wll.outcome/" + hex` of
/// the commitment's receipt hash. It makes L4's "at most one outcome per
/// commitment" atomic: the key is checked inside the ledger's group commit
/// (under the head row lock on PostgreSQL), so two racing outcomes cannot
/// both be appended; an identical retry returns the first.
pub fn outcome_idempotency_key(commitment: &Digest) -> String {
    format!("{OUTCOME_KEY}/{}", commitment.to_hex())
}

/// Reads one worldline's entries as receipts, with the checks of
/// [`Receipt::from_entry`]; the worldline's context id and genesis hash are
/// computed once, so a loop over many receipts (replay, verification,
/// projections) pays only for the hash and the decoding of each.
#[derive(Debug, Clone)]
pub struct ReceiptReader<'a> {
    worldline: WorldlineId,
    context: String,
    genesis: Digest,
    limits: &'a WorldlineLimits,
}

/// Names a receipt in an error, formatted only when there is one.
struct Location<'a>(u64, &'a WorldlineId);

impl std::fmt::Display for Location<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "receipt {} of worldline {}", self.0, self.1)
    }
}

impl<'a> ReceiptReader<'a> {
    /// A reader for `worldline`'s receipts under `limits`.
    pub fn new(worldline: WorldlineId, limits: &'a WorldlineLimits) -> ReceiptReader<'a> {
        let context = worldline.context_id();
        let genesis = genesis_hash(&context);
        ReceiptReader {
            worldline,
            context,
            genesis,
            limits,
        }
    }

    /// The worldline read.
    pub fn worldline(&self) -> &WorldlineId {
        &self.worldline
    }

    /// The ledger context holding its receipts.
    pub fn context(&self) -> &str {
        &self.context
    }

    /// Reads `entry` as a receipt (see [`Receipt::from_entry`]).
    pub fn read(&self, entry: &Entry) -> Result<Receipt, WorldlineError> {
        self.check(entry)?;
        self.decode_checked(entry)
    }

    /// The entry-level half of [`ReceiptReader::read`]: the sequence, the
    /// hash (one SHA-256 over the payload), the empty metadata and the
    /// first receipt's link to the genesis.
    /// With [`ReceiptReader::decode_checked`], the two halves can run on
    /// different threads.
    pub fn check(&self, entry: &Entry) -> Result<(), WorldlineError> {
        let location = Location(entry.sequence, &self.worldline);
        if entry.sequence == 0 {
            return Err(WorldlineError::corrupt(format!(
                "{location}: sequence 0; receipts start at 1"
            )));
        }
        let computed = entry.compute_hash(&self.context);
        if computed != entry.hash {
            return Err(WorldlineError::corrupt(format!(
                "{location}: its content hashes to {computed} but it claims {}",
                entry.hash
            )));
        }
        if !entry.metadata.is_empty() {
            return Err(WorldlineError::corrupt(format!(
                "{location}: has {} metadata pairs; receipts carry none",
                entry.metadata.len()
            )));
        }
        if entry.sequence == 1 && entry.prev_hash != self.genesis {
            return Err(WorldlineError::corrupt(format!(
                "{location}: links to {} instead of the worldline's genesis {}",
                entry.prev_hash, self.genesis
            )));
        }
        Ok(())
    }

    /// The body half of [`ReceiptReader::read`]: the key naming a receipt
    /// kind, and the payload decoded and validated as that kind, of an
    /// entry that passed [`ReceiptReader::check`]. Without
    /// that check first, nothing says the entry is one the ledger wrote.
    pub fn decode_checked(&self, entry: &Entry) -> Result<Receipt, WorldlineError> {
        let location = Location(entry.sequence, &self.worldline);
        let limits = self.limits;
        let body = match ReceiptKind::from_entry_key(&entry.key) {
            Some(ReceiptKind::Commitment) => ReceiptBody::Commitment(
                Commitment::decode(&entry.payload, limits).map_err(|e| e.in_stored(&location))?,
            ),
            Some(ReceiptKind::Outcome) => ReceiptBody::Outcome(
                Outcome::decode(&entry.payload, limits).map_err(|e| e.in_stored(&location))?,
            ),
            None => {
                return Err(WorldlineError::corrupt(format!(
                    "{location}: has key {:?}; a receipt is {COMMITMENT_KEY:?} or {OUTCOME_KEY:?}",
                    entry.key
                )));
            }
        };
        Ok(Receipt {
            worldline: self.worldline,
            seq: entry.sequence,
            receipt_hash: entry.hash,
            prev_receipt_hash: (entry.sequence > 1).then_some(entry.prev_hash),
            timestamp_ns: entry.appended_at_ns,
            lamport: entry.lamport,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use converge_ledger_core::Head;

    use super::*;
    use crate::ErrorCode;

    fn first_entry(w: &WorldlineId) -> Entry {
        let l = WorldlineLimits::default();
        let new = commitment_entry(&crate::commitment::tests::sample(), &l).unwrap();
        Head::empty(&w.context_id()).next_entry(&w.context_id(), new, 1_700_000_000_000_000_000)
    }

    #[test]
    fn an_entry_round_trips_through_a_receipt() {
        let w = WorldlineId::derive(b"agent-7");
        let e = first_entry(&w);
        let r = Receipt::from_entry(&w, &e, &WorldlineLimits::default()).unwrap();
        assert_eq!(r.seq, 1);
        assert_eq!(r.prev_receipt_hash, None);
        assert_eq!(r.kind(), ReceiptKind::Commitment);
        assert_eq!(r.to_entry(), e);
    }

    #[test]
    fn a_tampered_entry_or_one_from_another_worldline_is_data_loss() {
        let l = WorldlineLimits::default();
        let w = WorldlineId::derive(b"agent-7");
        let e = first_entry(&w);
        let other = WorldlineId::derive(b"agent-8");
        assert_eq!(
            Receipt::from_entry(&other, &e, &l).unwrap_err().code(),
            ErrorCode::DataLoss
        );
        let mut m = e.clone();
        m.payload[10] ^= 1;
        assert_eq!(
            Receipt::from_entry(&w, &m, &l).unwrap_err().code(),
            ErrorCode::DataLoss
        );
    }

    #[test]
    fn entries_with_metadata_foreign_keys_or_bad_payloads_are_not_receipts() {
        let l = WorldlineLimits::default();
        let w = WorldlineId::derive(b"agent-7");
        let ctx = w.context_id();
        let head = Head::empty(&ctx);
        let mut with_meta = commitment_entry(&crate::commitment::tests::sample(), &l).unwrap();
        with_meta.metadata.insert("a".into(), "b".into());
        let cases = [
            with_meta,
            new_entry("facts", crate::commitment::tests::sample().encode()),
            new_entry(OUTCOME_KEY, crate::commitment::tests::sample().encode()),
            // A snapshot is never a receipt: it cannot sit in the stream and
            // override the state replay reaches.
            new_entry(
                crate::SNAPSHOT_KEY,
                crate::commitment::tests::sample().encode(),
            ),
        ];
        for new in cases {
            let e = head.next_entry(&ctx, new, 5);
            let err = Receipt::from_entry(&w, &e, &l).unwrap_err();
            assert_eq!(err.code(), ErrorCode::DataLoss, "{err}");
            assert!(err.message().starts_with("receipt 1 of worldline"), "{err}");
        }
    }

    #[test]
    fn idempotency_keys_fit_the_ledgers_key_limits() {
        let id = crate::commitment::tests::sample().commitment_id;
        let k = commitment_idempotency_key(&id);
        assert_eq!(k, "wll.commitment/0190a5b2-7c3e-7def-8a12-3456789abcde");
        let o = outcome_idempotency_key(&Digest::ZERO);
        assert_eq!(o.len(), "wll.outcome/".len() + 64);
        converge_ledger_core::Limits::default()
            .check_idempotency_key(&o)
            .unwrap();
    }
}
