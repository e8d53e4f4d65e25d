//! Offline verification of stored contexts: every record decodes, every
//! hash recomputes, the chain links from genesis without gaps, and the stored
//! head (sequence, hash, Merkle root) is what the entries fold to.

use converge_ledger_core::{Entry, Head};

use crate::{Scan, Store, StoreError, proofs};

/// A context that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The context.
    pub context: String,
    /// Its head, recomputed from the entries (equal to the stored one).
    pub head: Head,
}

/// The first thing wrong with a context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyFailure {
    /// The context.
    pub context: String,
    /// The first sequence that fails (0: the head record itself).
    pub sequence: u64,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "context {:?} fails at sequence {}: {}",
            self.context, self.sequence, self.reason
        )
    }
}

impl std::error::Error for VerifyFailure {}

/// Verifies one context, calling `progress(done, total)` every 65 536
/// entries.
pub fn verify_context(
    store: &dyn Store,
    context: &str,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Verified, VerifyFailure> {
    let fail = |sequence: u64, reason: String| VerifyFailure {
        context: context.to_owned(),
        sequence,
        reason,
    };
    let stored = store
        .head(context)
        .map_err(|e| fail(0, e.to_string()))?
        .ok_or_else(|| fail(0, "the context has no head".into()))?;
    let mut head = Head::empty(context);
    let mut failure: Option<VerifyFailure> = None;
    let scanned = store.scan(
        context,
        Scan {
            after: 0,
            until: u64::MAX,
            key: None,
        },
        &mut |e: Entry| {
            if let Err(err) = head.check_next(context, &e) {
                failure = Some(fail(err.sequence, err.reason));
                return false;
            }
            head.advance(&e);
            if head.sequence.is_multiple_of(65_536) {
                progress(head.sequence, stored.sequence);
            }
            true
        },
    );
    if let Some(f) = failure {
        return Err(f);
    }
    if let Err(e) = scanned {
        let sequence = match &e {
            StoreError::Corrupt { sequence, .. } => *sequence,
            _ => head.sequence + 1,
        };
        return Err(fail(sequence, e.to_string()));
    }
    progress(head.sequence, stored.sequence);
    if head.sequence < stored.sequence {
        return Err(fail(
            head.sequence + 1,
            format!(
                "entry {} is missing: the head says {} entries",
                head.sequence + 1,
                stored.sequence
            ),
        ));
    }
    if head != stored {
        return Err(fail(
            0,
            format!(
                "the stored head (sequence {}, hash {}) is not what the entries fold to (sequence {}, hash {})",
                stored.sequence, stored.hash, head.sequence, head.hash
            ),
        ));
    }
    let from_nodes =
        proofs::root_at(store, context, head.sequence).map_err(|e| fail(0, e.to_string()))?;
    if from_nodes != head.merkle_root() {
        return Err(fail(
            0,
            format!(
                "the stored Merkle nodes give root {from_nodes}, the entries give {}",
                head.merkle_root()
            ),
        ));
    }
    Ok(Verified {
        context: context.to_owned(),
        head,
    })
}
