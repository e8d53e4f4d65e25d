//! Offline verification of stored contexts: every record decodes, every
//! hash recomputes, the chain links from genesis without gaps, and the stored
//! head (sequence, hash, Merkle root) is what the entries fold to.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// Entries per chunk handed to a hashing thread.
const CHUNK: usize = 2048;

/// Verifies one context, calling `progress(done, total)` every 65 536
/// entries.
///
/// The scan (reading, checksums, decoding), the chain links and the Merkle
/// frontier run on the calling thread; recomputing each entry's hash, the
/// bulk of the work, runs on the machine's other cores in parallel. The
/// failure reported is the first failing sequence, whichever check finds
/// it.
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
    let hashers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .saturating_sub(1)
        .min(8);
    // The lowest sequence whose hash does not recompute (u64::MAX: none yet).
    let bad_hash = AtomicU64::new(u64::MAX);
    let bad_reason: Mutex<Option<(u64, String)>> = Mutex::new(None);
    let check_chunk = |chunk: &[Entry]| {
        for e in chunk {
            if e.sequence >= bad_hash.load(Ordering::Relaxed) {
                return;
            }
            let computed = e.compute_hash(context);
            if computed != e.hash {
                bad_hash.fetch_min(e.sequence, Ordering::Relaxed);
                let mut r = bad_reason.lock().unwrap_or_else(|p| p.into_inner());
                if r.as_ref().is_none_or(|(s, _)| e.sequence < *s) {
                    *r = Some((
                        e.sequence,
                        format!(
                            "content hashes to {computed} but the entry claims {}",
                            e.hash
                        ),
                    ));
                }
                return;
            }
        }
    };
    let mut head = Head::empty(context);
    let mut failure: Option<VerifyFailure> = None;
    let scanned = std::thread::scope(|scope| {
        let mut senders = Vec::with_capacity(hashers);
        for _ in 0..hashers {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Entry>>(4);
            senders.push(tx);
            let check = &check_chunk;
            scope.spawn(move || {
                for chunk in rx {
                    check(&chunk);
                }
            });
        }
        let mut chunk = Vec::with_capacity(CHUNK);
        let mut next = 0usize;
        let mut dispatch = |chunk: Vec<Entry>| match senders.get(next % senders.len().max(1)) {
            Some(tx) => {
                next += 1;
                // A hasher only stops early by returning; it never drops
                // its receiver before the sender is dropped.
                let _ = tx.send(chunk);
            }
            None => check_chunk(&chunk),
        };
        let scanned = store.scan(
            context,
            Scan {
                after: 0,
                until: u64::MAX,
                key: None,
            },
            &mut |e: Entry| {
                if e.sequence >= bad_hash.load(Ordering::Relaxed) {
                    return false;
                }
                if let Err(err) = head.check_link(&e) {
                    failure = Some(fail(err.sequence, err.reason));
                    return false;
                }
                head.advance(&e);
                if head.sequence.is_multiple_of(65_536) {
                    progress(head.sequence, stored.sequence);
                }
                chunk.push(e);
                if chunk.len() == CHUNK {
                    dispatch(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK)));
                }
                true
            },
        );
        if !chunk.is_empty() {
            dispatch(chunk);
        }
        drop(dispatch);
        drop(senders);
        scanned
    });
    // Every hasher has finished (the scope joined them).
    if let Some((sequence, reason)) = bad_reason.into_inner().unwrap_or_else(|p| p.into_inner())
        && failure.as_ref().is_none_or(|f| sequence <= f.sequence)
    {
        return Err(fail(sequence, reason));
    }
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
