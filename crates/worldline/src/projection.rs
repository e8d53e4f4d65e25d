//! Projections (seed 4.6): derived views, each a versioned pure fold of a
//! worldline's receipts into an ordered key-value store.
//!
//! A projection step reads and writes only through a [`KvTxn`]; the caller
//! writes the resulting [`KvBatch`] atomically, and [`apply_receipt`] puts
//! the projection's checkpoint (through which receipt it has folded) into
//! the same batch. So a restart resumes exactly after the last receipt
//! whose writes are stored, a receipt is never folded twice, and a
//! projection can always be rebuilt from the receipts. A new version of a
//! projection writes under a new key prefix, beside the old one; readers
//! switch once it has caught up, and the old prefix is then deleted
//! ([`Serving`](crate::Serving)).

use converge_ledger_core::Digest;

use crate::codec::{Put, Reader};
use crate::keys::{Key, projection_prefix, worldline_prefix};
use crate::{KvBatch, KvRead, KvTxn, Receipt, WorldlineError, WorldlineId};

/// One derived view of worldlines.
pub trait Projection: Send + Sync {
    /// The name that prefixes its keys; ASCII, without `/`.
    fn name(&self) -> &'static str;

    /// Its version. A change to what it stores is a new version, rebuilt
    /// from the receipts under its own key prefix.
    fn version(&self) -> u32;

    /// Folds one receipt in. Called through [`apply_receipt`], which checks
    /// the receipt is the next one and records the checkpoint. Must depend
    /// only on the receipt and what `txn` reads, so that a rebuild gives the
    /// same store.
    fn apply(&self, receipt: &Receipt, txn: &mut KvTxn<'_>) -> Result<(), WorldlineError>;
}

/// The four projections of seed 4.6, in the order a server applies them.
pub fn projections() -> [&'static dyn Projection; 4] {
    [
        &crate::latest_state::LatestState,
        &crate::audit_index::AuditIndex,
        &crate::capability_grants::CapabilityGrants::CURRENT,
        &crate::provenance_dag::ProvenanceDag,
    ]
}

/// Through which receipt a projection has folded a worldline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProjectionCheckpoint {
    /// Sequence of the last receipt folded.
    pub through_seq: u64,
    /// Its receipt hash: a fold that resumes checks the next receipt links
    /// to it.
    pub through_hash: Digest,
}

const CHECKPOINT_MAGIC: &[u8; 4] = b"WLLP";
const CHECKPOINT_VERSION: u8 = 1;

impl ProjectionCheckpoint {
    /// `[4] "WLLP" | u8 version = 1 | u64 through_seq | [32] through_hash`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(45);
        out.extend_from_slice(CHECKPOINT_MAGIC);
        out.put_u8(CHECKPOINT_VERSION);
        out.put_u64(self.through_seq);
        out.put_digest(&self.through_hash);
        out
    }

    /// Decodes [`ProjectionCheckpoint::encode`]'s output.
    pub fn decode(bytes: &[u8]) -> Result<ProjectionCheckpoint, WorldlineError> {
        let mut r = Reader::new(bytes, "projection checkpoint");
        r.header(CHECKPOINT_MAGIC, CHECKPOINT_VERSION)?;
        let c = ProjectionCheckpoint {
            through_seq: r.u64("through_seq")?,
            through_hash: r.digest("through_hash")?,
        };
        r.finish()?;
        if c.through_seq == 0 {
            return Err(WorldlineError::invalid(
                "through_seq",
                "is 0; a checkpoint is written after a receipt, 1 or later",
            ));
        }
        Ok(c)
    }
}

/// The key of a projection's checkpoint for a worldline:
/// `<name>/<u32 version>/<worldline>/checkpoint/`.
pub fn checkpoint_key(projection: &dyn Projection, worldline: &WorldlineId) -> Vec<u8> {
    Key::table(
        projection.name(),
        projection.version(),
        worldline,
        "checkpoint",
    )
    .into_bytes()
}

/// The key prefix of everything a projection version stores, for all
/// worldlines: delete this range to drop a superseded version.
pub fn projection_key_prefix(projection: &dyn Projection) -> Vec<u8> {
    projection_prefix(projection.name(), projection.version())
}

/// The key prefix of everything a projection version stores for one
/// worldline.
pub fn worldline_key_prefix(projection: &dyn Projection, worldline: &WorldlineId) -> Vec<u8> {
    worldline_prefix(projection.name(), projection.version(), worldline)
}

/// A projection's checkpoint for a worldline; `None` before its first
/// receipt.
pub fn read_checkpoint(
    kv: &dyn KvRead,
    projection: &dyn Projection,
    worldline: &WorldlineId,
) -> Result<Option<ProjectionCheckpoint>, WorldlineError> {
    let key = checkpoint_key(projection, worldline);
    match kv.get(&key)? {
        None => Ok(None),
        Some(v) => ProjectionCheckpoint::decode(&v).map(Some).map_err(|e| {
            e.in_stored(format_args!(
                "{} checkpoint of worldline {worldline}",
                projection.name()
            ))
        }),
    }
}

/// What [`apply_receipt`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The receipt was folded in and the checkpoint moved to it.
    Applied,
    /// The projection had already folded this receipt; nothing was written.
    AlreadyApplied,
}

/// Folds `receipt` into `projection`: reads `kv` through `batch`, writes
/// into `batch`, and writes the projection's checkpoint into `batch` too.
/// Write `batch` in one atomic write.
///
/// A receipt at or before the checkpoint is skipped (so re-feeding after a
/// crash is harmless); one that does not directly follow it is
/// [`WorldlineError::OutOfOrder`]: a gap, or a receipt at the checkpoint's
/// sequence with another hash.
pub fn apply_receipt(
    projection: &dyn Projection,
    receipt: &Receipt,
    kv: &dyn KvRead,
    batch: &mut KvBatch,
) -> Result<Applied, WorldlineError> {
    let mut txn = KvTxn::new(kv, batch);
    let checkpoint = read_checkpoint(&txn, projection, &receipt.worldline)?;
    let (through_seq, through_hash) =
        checkpoint.map_or((0, None), |c| (c.through_seq, Some(c.through_hash)));
    let out_of_order = |problem: String| WorldlineError::OutOfOrder {
        message: format!(
            "{} of worldline {} has folded through receipt {through_seq}; receipt {} {problem}",
            projection.name(),
            receipt.worldline,
            receipt.seq
        ),
    };
    if receipt.seq == through_seq && Some(receipt.receipt_hash) != through_hash {
        return Err(out_of_order("has another hash than the one folded".into()));
    }
    if receipt.seq <= through_seq {
        return Ok(Applied::AlreadyApplied);
    }
    if receipt.seq != through_seq + 1 {
        return Err(out_of_order(format!(
            "leaves a gap; send receipt {} next",
            through_seq + 1
        )));
    }
    if receipt.prev_receipt_hash != through_hash {
        return Err(out_of_order(
            "does not link to the last receipt folded".into(),
        ));
    }
    projection.apply(receipt, &mut txn)?;
    let checkpoint = ProjectionCheckpoint {
        through_seq: receipt.seq,
        through_hash: receipt.receipt_hash,
    };
    txn.put(
        checkpoint_key(projection, &receipt.worldline),
        checkpoint.encode(),
    );
    Ok(Applied::Applied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{Chain, fold, put};
    use crate::{ErrorCode, MemoryKv, OutcomeStatus};

    #[test]
    fn a_receipt_folded_twice_is_skipped_and_a_gap_is_refused() {
        let mut ch = Chain::new(b"w");
        let a = ch.commit("agent", true, &["x"], &[]);
        let o = ch.outcome(&a, OutcomeStatus::Succeeded, vec![put("k", "1")]);
        let b = ch.commit("agent", true, &[], &[]);
        let kv = fold(&ch);
        for p in projections() {
            let mut batch = KvBatch::new();
            assert_eq!(
                apply_receipt(p, &o, &kv, &mut batch).unwrap(),
                Applied::AlreadyApplied
            );
            assert!(batch.is_empty());
            let c = read_checkpoint(&kv, p, &ch.worldline).unwrap().unwrap();
            assert_eq!((c.through_seq, c.through_hash), (3, b.receipt_hash));
        }
        let mut batch = KvBatch::new();
        let e = apply_receipt(
            &crate::latest_state::LatestState,
            &o,
            &MemoryKv::new(),
            &mut batch,
        )
        .unwrap_err();
        assert_eq!(e.code(), ErrorCode::FailedPrecondition);
        // Same position as the checkpoint, another history.
        let mut other = Chain::new(b"w");
        other.commit("agent", true, &["x"], &[]);
        other.commit("agent", true, &[], &[]);
        let third = other.commit("someone else", true, &[], &[]);
        let mut batch = KvBatch::new();
        let e =
            apply_receipt(&crate::audit_index::AuditIndex, &third, &kv, &mut batch).unwrap_err();
        assert!(e.message().contains("another hash"), "{e}");
    }

    #[test]
    fn several_receipts_in_one_batch_fold_as_one_per_batch() {
        let mut ch = Chain::new(b"w");
        let a = ch.commit("agent", true, &["x"], &[]);
        ch.outcome(
            &a,
            OutcomeStatus::Succeeded,
            vec![put("k", "1"), put("k", "2")],
        );
        let b = ch.commit("agent", true, &[], &["x"]);
        ch.outcome(&b, OutcomeStatus::Succeeded, vec![put("j", "3")]);
        let one_by_one = fold(&ch);
        let mut kv = MemoryKv::new();
        let mut batch = KvBatch::new();
        for r in &ch.receipts {
            for p in projections() {
                apply_receipt(p, r, &kv, &mut batch).unwrap();
            }
        }
        kv.apply(batch);
        assert_eq!(kv, one_by_one);
    }

    #[test]
    fn checkpoints_round_trip_and_damaged_ones_never_panic() {
        let c = ProjectionCheckpoint {
            through_seq: 7,
            through_hash: Digest::of(&[b"h"]),
        };
        let b = c.encode();
        assert_eq!(ProjectionCheckpoint::decode(&b), Ok(c));
        crate::testkit::never_panics_on_mutations(&b, |m| {
            if let Ok(d) = ProjectionCheckpoint::decode(m) {
                assert_eq!(d.encode(), m);
            }
        });
    }
}
