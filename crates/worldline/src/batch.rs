//! Writes a projection fold produces, and reads that see them.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::{Direction, KvPair, KvRead, WorldlineError};

/// The writes of one or more projection steps, to be applied by the caller
/// in one atomic write together with the projections' checkpoints.
///
/// A later write of a key replaces an earlier one, so the batch holds at
/// most one write per key and [`KvBatch::writes`] lists them in key order:
/// the same receipts always give the same batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvBatch {
    /// Key to new value; `None` deletes the key.
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Bytes of keys and values in `writes`, kept as writes arrive (a
    /// projector asks after every receipt).
    bytes: usize,
}

impl KvBatch {
    /// An empty batch.
    pub fn new() -> KvBatch {
        KvBatch::default()
    }

    /// Sets `key` to `value`.
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        let added = key.len() + value.len();
        self.replace(key, Some(value), added);
    }

    /// Deletes `key`.
    pub fn delete(&mut self, key: Vec<u8>) {
        let added = key.len();
        self.replace(key, None, added);
    }

    /// Number of writes (one per key).
    pub fn len(&self) -> usize {
        self.writes.len()
    }

    /// Whether nothing is written.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// Bytes of keys and values written, for bounding a batch.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn replace(&mut self, key: Vec<u8>, value: Option<Vec<u8>>, added: usize) {
        let key_len = key.len();
        if let Some(old) = self.writes.insert(key, value) {
            self.bytes -= key_len + old.map_or(0, |v| v.len());
        }
        self.bytes += added;
    }

    /// The writes in key order: `(key, Some(value))` puts, `(key, None)`
    /// deletes.
    pub fn writes(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> + '_ {
        self.writes
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_deref()))
    }

    /// Takes the writes out, in key order.
    pub fn into_writes(self) -> impl Iterator<Item = (Vec<u8>, Option<Vec<u8>>)> {
        self.writes.into_iter()
    }

    /// A view of `base` with this batch applied on top.
    pub fn view<'a>(&'a self, base: &'a dyn KvRead) -> BatchView<'a> {
        BatchView { base, batch: self }
    }

    fn get_over(&self, base: &dyn KvRead, key: &[u8]) -> Result<Option<Vec<u8>>, WorldlineError> {
        match self.writes.get(key) {
            Some(w) => Ok(w.clone()),
            None => base.get(key),
        }
    }

    /// [`KvRead::get_many`] through the batch: the keys it does not write
    /// are read from `base` in one call.
    fn get_many_over(
        &self,
        base: &dyn KvRead,
        keys: &[&[u8]],
    ) -> Result<Vec<Option<Vec<u8>>>, WorldlineError> {
        let unwritten: Vec<&[u8]> = keys
            .iter()
            .copied()
            .filter(|k| !self.writes.contains_key(*k))
            .collect();
        let mut stored = base.get_many(&unwritten)?.into_iter();
        keys.iter()
            .map(|k| match self.writes.get(*k) {
                Some(w) => Ok(w.clone()),
                None => stored.next().ok_or_else(|| {
                    WorldlineError::corrupt(
                        "the derived store answered fewer values than the keys it was asked for",
                    )
                }),
            })
            .collect()
    }

    fn range_over(
        &self,
        base: &dyn KvRead,
        start: &[u8],
        end: &[u8],
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<KvPair>, WorldlineError> {
        if start >= end || limit == 0 {
            return Ok(Vec::new());
        }
        let pending = self
            .writes
            .range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)));
        // Each pending write hides at most one base key, so the first
        // `limit` merged keys are among the first `limit + hidden` base keys.
        let hidden = pending.clone().count();
        let stored = base.range(start, end, direction, limit.saturating_add(hidden))?;
        let mut pending: Vec<(&Vec<u8>, &Option<Vec<u8>>)> = pending.collect();
        if direction == Direction::Backward {
            pending.reverse();
        }
        let before = |a: &[u8], b: &[u8]| match direction {
            Direction::Forward => a < b,
            Direction::Backward => a > b,
        };
        let mut out = Vec::with_capacity(limit.min(stored.len() + pending.len()));
        let (mut s, mut p) = (
            stored.into_iter().peekable(),
            pending.into_iter().peekable(),
        );
        while out.len() < limit {
            let take_stored = match (s.peek(), p.peek()) {
                (Some((sk, _)), Some((pk, _))) => before(sk, pk),
                (Some(_), None) => true,
                (None, _) => false,
            };
            if take_stored {
                out.extend(s.next());
            } else if let Some((pk, pv)) = p.next() {
                // A pending write replaces the stored value of its key.
                if s.peek().is_some_and(|(sk, _)| sk == pk) {
                    s.next();
                }
                if let Some(v) = pv {
                    out.push((pk.clone(), v.clone()));
                }
            } else {
                break;
            }
        }
        Ok(out)
    }
}

/// A read-only view of a store with a batch applied on top
/// ([`KvBatch::view`]).
pub struct BatchView<'a> {
    base: &'a dyn KvRead,
    batch: &'a KvBatch,
}

impl KvRead for BatchView<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, WorldlineError> {
        self.batch.get_over(self.base, key)
    }

    fn get_many(&self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, WorldlineError> {
        self.batch.get_many_over(self.base, keys)
    }

    fn range(
        &self,
        start: &[u8],
        end: &[u8],
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<KvPair>, WorldlineError> {
        self.batch
            .range_over(self.base, start, end, direction, limit)
    }
}

/// What a projection step works with: reads of the store that see the
/// writes already in the batch (earlier receipts of the same batch, earlier
/// writes of the same receipt), and writes into the batch.
pub struct KvTxn<'a> {
    base: &'a dyn KvRead,
    batch: &'a mut KvBatch,
}

impl<'a> KvTxn<'a> {
    /// Reads `base` through `batch` and writes into `batch`.
    pub fn new(base: &'a dyn KvRead, batch: &'a mut KvBatch) -> KvTxn<'a> {
        KvTxn { base, batch }
    }

    /// Sets `key` to `value`.
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.batch.put(key, value);
    }

    /// Deletes `key`.
    pub fn delete(&mut self, key: Vec<u8>) {
        self.batch.delete(key);
    }
}

impl KvRead for KvTxn<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, WorldlineError> {
        self.batch.get_over(self.base, key)
    }

    fn get_many(&self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, WorldlineError> {
        self.batch.get_many_over(self.base, keys)
    }

    fn range(
        &self,
        start: &[u8],
        end: &[u8],
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<KvPair>, WorldlineError> {
        self.batch
            .range_over(self.base, start, end, direction, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryKv;

    #[test]
    fn the_running_byte_count_equals_a_recount_after_overwrites_and_deletes() {
        let mut b = KvBatch::new();
        let recount = |b: &KvBatch| -> usize {
            b.writes()
                .map(|(k, v)| k.len() + v.map_or(0, <[u8]>::len))
                .sum()
        };
        b.put(b"ab".to_vec(), vec![1; 10]);
        b.put(b"cd".to_vec(), vec![2; 3]);
        assert_eq!((b.bytes(), recount(&b)), (17, 17));
        b.put(b"ab".to_vec(), vec![3; 1]);
        assert_eq!((b.bytes(), recount(&b)), (8, 8));
        b.delete(b"cd".to_vec());
        b.delete(b"zz".to_vec());
        assert_eq!((b.bytes(), recount(&b)), (7, 7));
        b.put(b"zz".to_vec(), vec![4; 5]);
        assert_eq!((b.bytes(), recount(&b)), (12, 12));
    }

    /// Random stores and batches (a tiny seeded generator): every range
    /// read through a batch equals the same read after applying it.
    #[test]
    fn reads_through_a_batch_equal_reads_after_applying_it() {
        let mut x: u64 = 0x5eed;
        let mut next = move |n: u64| {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)) % n
        };
        for _ in 0..200 {
            let mut base = MemoryKv::new();
            let mut pre = KvBatch::new();
            for _ in 0..next(20) {
                pre.put(vec![next(16) as u8], vec![next(4) as u8]);
            }
            base.apply(pre);
            let mut batch = KvBatch::new();
            for _ in 0..next(20) {
                let k = vec![next(16) as u8];
                if next(2) == 0 {
                    batch.put(k, vec![9]);
                } else {
                    batch.delete(k);
                }
            }
            let mut after = base.clone();
            after.apply(batch.clone());
            for _ in 0..20 {
                let (a, b) = (next(17) as u8, next(17) as u8);
                let limit = next(20) as usize;
                for d in [Direction::Forward, Direction::Backward] {
                    let got = batch.view(&base).range(&[a], &[b], d, limit).unwrap();
                    assert_eq!(got, after.range(&[a], &[b], d, limit).unwrap());
                }
                let k = [a];
                assert_eq!(batch.view(&base).get(&k).unwrap(), after.get(&k).unwrap());
                let many: [&[u8]; 3] = [&[a], &[b], &[a]];
                assert_eq!(
                    batch.view(&base).get_many(&many).unwrap(),
                    after.get_many(&many).unwrap()
                );
            }
        }
    }
}
