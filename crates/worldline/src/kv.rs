//! The ordered key-value store projections are folded over, and an
//! in-memory implementation of it.
//!
//! Backends (memory, fjall, PostgreSQL) implement [`KvRead`] over raw bytes
//! and write a [`KvBatch`](crate::KvBatch) atomically; everything else about
//! projections is in this crate, so every backend stores the same keys and
//! values.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::{KvBatch, WorldlineError};

/// One stored pair: key, value.
pub type KvPair = (Vec<u8>, Vec<u8>);

/// The order a [`KvRead::range`] returns keys in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Ascending byte order of the keys.
    Forward,
    /// Descending byte order of the keys: the latest first, when keys end
    /// in big-endian sequences or times.
    Backward,
}

/// Read access to an ordered key-value store, keys and values being bytes
/// and keys ordered by unsigned byte comparison (`memcmp`; PostgreSQL
/// `bytea` order, fjall's default).
///
/// Queries that take several calls (a state streamed in pages) must be
/// given a store that reads one consistent snapshot (a fjall snapshot, a
/// PostgreSQL `REPEATABLE READ` transaction); otherwise they may see a
/// projection half-way through a batch.
pub trait KvRead {
    /// The value stored at `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, WorldlineError>;

    /// The values stored at `keys`, one per key in the same order (`None`
    /// where absent). A store that pays a round trip per read answers them
    /// in one; the default reads them one by one.
    fn get_many(&self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, WorldlineError> {
        keys.iter().map(|k| self.get(k)).collect()
    }

    /// The pairs with `start <= key < end`, in `direction` order, at most
    /// `limit` of them. Empty when `start >= end` or `limit == 0`.
    fn range(
        &self,
        start: &[u8],
        end: &[u8],
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<KvPair>, WorldlineError>;
}

impl<T: KvRead + ?Sized> KvRead for &T {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, WorldlineError> {
        (**self).get(key)
    }

    fn get_many(&self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, WorldlineError> {
        (**self).get_many(keys)
    }

    fn range(
        &self,
        start: &[u8],
        end: &[u8],
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<KvPair>, WorldlineError> {
        (**self).range(start, end, direction, limit)
    }
}

/// An in-memory ordered store: the model the other backends are tested
/// against, and a backend for tests and in-process use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryKv {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl MemoryKv {
    /// An empty store.
    pub fn new() -> MemoryKv {
        MemoryKv::default()
    }

    /// Applies every write of `batch` (all at once: nothing can observe a
    /// part of it).
    pub fn apply(&mut self, batch: KvBatch) {
        for (key, value) in batch.into_writes() {
            match value {
                Some(v) => {
                    self.map.insert(key, v);
                }
                None => {
                    self.map.remove(&key);
                }
            }
        }
    }

    /// Number of stored pairs.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every pair, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.map.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))
    }
}

impl KvRead for MemoryKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, WorldlineError> {
        Ok(self.map.get(key).cloned())
    }

    fn range(
        &self,
        start: &[u8],
        end: &[u8],
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<KvPair>, WorldlineError> {
        if start >= end {
            return Ok(Vec::new());
        }
        let r = self
            .map
            .range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)));
        let pairs = |(k, v): (&Vec<u8>, &Vec<u8>)| (k.clone(), v.clone());
        Ok(match direction {
            Direction::Forward => r.take(limit).map(pairs).collect(),
            Direction::Backward => r.rev().take(limit).map(pairs).collect(),
        })
    }
}
