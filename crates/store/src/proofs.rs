//! Merkle proofs served from a [`Store`]: `O(log n)` subtree roots, each
//! assembled from at most `2^(STRIDE-1)` stored nodes or leaves read in one
//! range, never a scan of the context.

use converge_ledger_core::merkle::{self, NodeSource, STORED_LEVEL_STRIDE, is_stored_level};
use converge_ledger_core::{Digest, Entry};

use crate::{Scan, Store, StoreError};

/// Perfect-subtree roots of one context, from a store.
pub struct StoreNodes<'a> {
    store: &'a dyn Store,
    context: &'a str,
    /// Storage reads made so far (for tests and metrics).
    pub reads: u64,
}

impl<'a> StoreNodes<'a> {
    /// Nodes of `context` in `store`.
    pub fn new(store: &'a dyn Store, context: &'a str) -> Self {
        Self {
            store,
            context,
            reads: 0,
        }
    }

    fn missing(&self, what: String) -> StoreError {
        StoreError::Corrupt {
            context: self.context.to_owned(),
            sequence: 0,
            reason: format!("{what} is missing from storage"),
        }
    }
}

impl NodeSource for StoreNodes<'_> {
    type Error = StoreError;

    fn perfect(&mut self, level: u8, index: u64) -> Result<Digest, StoreError> {
        let base = if is_stored_level(level) {
            level
        } else {
            level - level % STORED_LEVEL_STRIDE
        };
        let span = level - base;
        let count = 1u64 << span;
        let parts: Vec<Digest> = if base == 0 {
            // Leaves: one range of at most 2^(STRIDE-1) entries.
            let first = index << level;
            let mut leaves = Vec::with_capacity(count as usize);
            self.reads += 1;
            self.store.scan(
                self.context,
                Scan {
                    after: first,
                    until: first + count,
                    key: None,
                },
                &mut |e: Entry| {
                    leaves.push(merkle::leaf_hash(&e.hash.0));
                    true
                },
            )?;
            leaves
        } else {
            self.reads += 1;
            self.store
                .merkle_nodes(self.context, base, index << span, count)?
        };
        if parts.len() as u64 != count {
            return Err(self.missing(format!(
                "the Merkle subtree at level {level}, index {index} (needs {count} parts at level {base}, found {})",
                parts.len()
            )));
        }
        Ok(merkle::root_of_leaf_hashes(&parts))
    }
}

/// The Merkle root of the first `size` entries of `context`.
pub fn root_at(store: &dyn Store, context: &str, size: u64) -> Result<Digest, StoreError> {
    if size == 0 {
        return Ok(merkle::empty_root());
    }
    merkle::subtree_root(&mut StoreNodes::new(store, context), 0, size)
}

/// Inclusion proof of entry `sequence` in the tree of the first `size`
/// entries. Requires `1 <= sequence <= size <= head`.
pub fn inclusion_proof(
    store: &dyn Store,
    context: &str,
    sequence: u64,
    size: u64,
) -> Result<Vec<Digest>, StoreError> {
    merkle::inclusion_proof(&mut StoreNodes::new(store, context), sequence - 1, size)
}

/// Consistency proof between the trees of the first `old` and `new` entries.
/// Requires `1 <= old <= new <= head`.
pub fn consistency_proof(
    store: &dyn Store,
    context: &str,
    old: u64,
    new: u64,
) -> Result<Vec<Digest>, StoreError> {
    merkle::consistency_proof(&mut StoreNodes::new(store, context), old, new)
}
