//! Offline verification of stored contexts: every record decodes, every
//! hash recomputes, the chain links from genesis without gaps, and the stored
//! head (sequence, hash, Merkle root) is what the entries fold to.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use converge_ledger_core::merkle::{Frontier, leaf_hash};
use converge_ledger_core::{Digest, Entry, Head};

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

/// How [`verify_context_with`] splits the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyOptions {
    /// Threads, the calling one included (0 counts as 1).
    pub threads: usize,
    /// log2 of the entries per unit of work (at most 40): a unit is one
    /// perfect subtree of the Merkle tree, so units combine by their roots.
    pub unit_log2: u8,
}

impl Default for VerifyOptions {
    /// One thread per core (at most 8), units of 65 536 entries.
    fn default() -> Self {
        Self {
            threads: std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(8),
            unit_log2: 16,
        }
    }
}

/// Hash, time and Lamport clock of an entry: what links it to its
/// neighbours.
type Ends = (Digest, u64, u64);

/// What one unit of consecutive entries folds to.
struct UnitSummary {
    /// The first entry's previous hash, time and Lamport clock.
    first: Ends,
    /// The last entry's hash, time and Lamport clock.
    last: Ends,
    /// Root of the unit's subtree when it is whole; its leaf hashes when it
    /// is the partial last unit.
    tree: Result<Digest, Vec<Digest>>,
}

/// Why a unit failed on its own.
struct UnitFailure {
    sequence: u64,
    reason: String,
    /// The unit's first entry, when it was read.
    first: Option<Ends>,
}

type UnitResult = Result<UnitSummary, UnitFailure>;

/// Verifies one context with [`VerifyOptions::default`], calling
/// `progress(done, total)` about every 65 536 entries.
pub fn verify_context(
    store: &dyn Store,
    context: &str,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Verified, VerifyFailure> {
    verify_context_with(store, context, VerifyOptions::default(), progress)
}

/// Verifies one context, calling `progress(done, total)` after each unit.
///
/// The context is cut into units of `2^unit_log2` consecutive entries, each
/// one perfect subtree of the Merkle tree. Threads verify units
/// independently (scan, checksums, decoding, hashes, links and order inside
/// the unit, the unit's subtree root); the calling thread then checks the
/// links between units in order and folds their roots into the context's
/// tree. The failure reported is the first failing sequence, whichever
/// check finds it.
pub fn verify_context_with(
    store: &dyn Store,
    context: &str,
    options: VerifyOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Verified, VerifyFailure> {
    let unit_log2 = options.unit_log2.min(40);
    let unit = 1u64 << unit_log2;
    let threads = options.threads;
    let fail = |sequence: u64, reason: String| VerifyFailure {
        context: context.to_owned(),
        sequence,
        reason,
    };
    let stored = store
        .head(context)
        .map_err(|e| fail(0, e.to_string()))?
        .ok_or_else(|| fail(0, "the context has no head".into()))?;
    let total = stored.sequence;
    let units = total.div_ceil(unit);
    // The lowest failing sequence found so far (u64::MAX: none); units
    // beyond it are not worth verifying.
    let first_bad = AtomicU64::new(u64::MAX);
    let next_unit = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let results: Mutex<Vec<Option<UnitResult>>> = Mutex::new((0..units).map(|_| None).collect());
    // Claims and verifies the next unit; `None` when there is none left
    // worth verifying, else the entries verified so far by every thread.
    let step = || -> Option<u64> {
        let u = next_unit.fetch_add(1, Ordering::Relaxed);
        if u >= units || u * unit >= first_bad.load(Ordering::Relaxed) {
            return None;
        }
        let start = u * unit;
        let end = (start + unit).min(total);
        let r = verify_unit(store, context, start, end, end - start == unit);
        if let Err(f) = &r {
            first_bad.fetch_min(f.sequence, Ordering::Relaxed);
        }
        results.lock().unwrap_or_else(|p| p.into_inner())[u as usize] = Some(r);
        Some(done.fetch_add(end - start, Ordering::Relaxed) + (end - start))
    };
    std::thread::scope(|scope| {
        for _ in 1..threads.clamp(1, units.max(1) as usize) {
            scope.spawn(|| while step().is_some() {});
        }
        // The calling thread works too, and reports progress.
        while let Some(now) = step() {
            progress(now, total);
        }
    });

    // Fold the units in order: the links between them, and their trees.
    let mut head = Head::empty(context);
    let results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    for (u, r) in results.into_iter().enumerate() {
        let first = u as u64 * unit + 1;
        // A unit is skipped only after an earlier unit failed, and that
        // failure is returned before this point.
        let r = r.ok_or_else(|| fail(first, "not verified".into()))?;
        let ends = match &r {
            Ok(summary) => Some(&summary.first),
            Err(f) => f.first.as_ref(),
        };
        if let Some((prev, time, lamport)) = ends
            && let Err(reason) = head.check_follows(prev, *time, *lamport)
        {
            return Err(fail(first, reason));
        }
        let summary = r.map_err(|f| fail(f.sequence, f.reason))?;
        match summary.tree {
            Ok(root) => head.frontier.push_subtree(unit_log2, root),
            Err(leaves) => {
                for l in leaves {
                    head.frontier.push_leaf_hash(l);
                }
            }
        }
        head.sequence = head.frontier.size();
        (head.hash, head.appended_at_ns, head.lamport) = summary.last;
    }
    // Nothing may follow the stored head.
    let mut beyond = None;
    store
        .scan(
            context,
            Scan {
                after: total,
                until: u64::MAX,
                key: None,
            },
            &mut |e: Entry| {
                beyond = Some(e.sequence);
                false
            },
        )
        .map_err(|e| fail(total + 1, e.to_string()))?;
    if let Some(sequence) = beyond {
        return Err(fail(
            sequence,
            format!("entry {sequence} lies beyond the stored head ({total} entries)"),
        ));
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
    if !head.same_history(&stored) {
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

/// Verifies the entries `start+1..=end` (a whole unit, or the partial last
/// one) on their own: each is present,
/// decodes, hashes to what it claims, links to the one before and keeps
/// time and Lamport order; returns what they fold to, or the first failing
/// sequence and why.
fn verify_unit(store: &dyn Store, context: &str, start: u64, end: u64, whole: bool) -> UnitResult {
    let mut frontier = Frontier::new();
    let mut leaves = Vec::new();
    let mut first: Option<Ends> = None;
    // The last entry verified, as a head without its tree (the unit's
    // tree is built separately).
    let mut tip: Option<Head> = None;
    let mut expected = start + 1;
    let mut failure: Option<(u64, String)> = None;
    let scanned = store.scan(
        context,
        Scan {
            after: start,
            until: end,
            key: None,
        },
        &mut |e: Entry| {
            if e.sequence != expected {
                failure = Some((
                    expected,
                    format!(
                        "entry {expected} is missing (the next stored entry is {})",
                        e.sequence
                    ),
                ));
                return false;
            }
            // The entry before the unit is checked when the units are
            // folded: the first entry is checked against its own link.
            let tip = tip.get_or_insert_with(|| {
                first = Some((e.prev_hash, e.appended_at_ns, e.lamport));
                Head {
                    sequence: start,
                    hash: e.prev_hash,
                    lamport: 0,
                    appended_at_ns: 0,
                    frontier: Frontier::new(),
                    loaded: None,
                }
            });
            if let Err(err) = tip.check_next(context, &e) {
                failure = Some((expected, err.reason));
                return false;
            }
            (tip.sequence, tip.hash, tip.appended_at_ns, tip.lamport) =
                (e.sequence, e.hash, e.appended_at_ns, e.lamport);
            let leaf = leaf_hash(&e.hash.0);
            if whole {
                frontier.push_leaf_hash(leaf);
            } else {
                leaves.push(leaf);
            }
            expected += 1;
            true
        },
    );
    let failed = |(sequence, reason): (u64, String)| UnitFailure {
        sequence,
        reason,
        first,
    };
    if let Some(f) = failure {
        return Err(failed(f));
    }
    if let Err(e) = scanned {
        let sequence = match &e {
            StoreError::Corrupt { sequence, .. } => *sequence,
            _ => expected,
        };
        return Err(failed((sequence, e.to_string())));
    }
    if expected <= end {
        return Err(failed((
            expected,
            format!("entry {expected} is missing: the head says {end} or more entries"),
        )));
    }
    match (first, tip) {
        (Some(first), Some(tip)) => Ok(UnitSummary {
            first,
            last: (tip.hash, tip.appended_at_ns, tip.lamport),
            tree: if whole {
                Ok(frontier.root())
            } else {
                Err(leaves)
            },
        }),
        _ => Err(failed((
            start + 1,
            format!("entry {} is missing", start + 1),
        ))),
    }
}
