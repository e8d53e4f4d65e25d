//! The derived key-value space: an ordered map of bytes beside the entries,
//! for data computed from them (the WorldLine projections).
//!
//! Nothing in it is part of the ledger's history: it can always be rebuilt
//! from the entries, so it is never hashed, signed or verified, and a
//! backend may lose a tail of it at a crash as long as every write stays
//! atomic. Writers guard each write with the values they read
//! ([`DerivedKv::write_if`]), so several writers (several nodes over one
//! PostgreSQL database) never interleave half-updates: one wins, the others
//! see their guard fail and read again.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::RwLock;

use crate::StoreError;

/// One key and the value it must hold (`None`: it must be absent) for a
/// guarded write to apply.
pub type Guard = (Vec<u8>, Option<Vec<u8>>);

/// One stored key and its value.
pub type Pair = (Vec<u8>, Vec<u8>);

/// One write: a key and its new value (`None`: delete it).
pub type DerivedWrite = (Vec<u8>, Option<Vec<u8>>);

/// An ordered key-value space, keys compared as unsigned bytes (`memcmp`,
/// PostgreSQL `bytea` order).
pub trait DerivedKv: Send + Sync {
    /// The value at `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// The values at `keys`, one per key in the same order (`None` where
    /// absent; a key named twice is answered twice). Backends that pay a
    /// round trip per read (PostgreSQL) answer them all in one; the others
    /// read them one by one. Every answer comes from one read (a
    /// consistent view) only where the backend says so.
    fn get_many(&self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        keys.iter().map(|k| self.get(k)).collect()
    }

    /// Up to `limit` pairs with `start <= key < end`, ascending, or
    /// descending when `reverse`. Empty when `start >= end` or `limit == 0`.
    fn range(
        &self,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<Pair>, StoreError>;

    /// Applies `writes` (at most one per key) in one atomic write if every
    /// guard holds at the moment of the write; returns `false`, having
    /// written nothing, if one does not. Readers see all of the writes or
    /// none.
    fn write_if(&self, guards: &[Guard], writes: &[DerivedWrite]) -> Result<bool, StoreError>;

    /// Whether every read is a round trip to another process (PostgreSQL):
    /// then readers gain by keeping what they read in memory. `false` for
    /// the space in this process (memory, fjall), where a read costs about
    /// what a lookup in such a memory would.
    fn reads_are_round_trips(&self) -> bool {
        false
    }
}

/// The derived space in RAM, for the memory store.
#[derive(Default)]
pub struct MemoryDerived {
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemoryDerived {
    /// An empty space.
    pub fn new() -> MemoryDerived {
        MemoryDerived::default()
    }
}

/// The pairs of `map` in `start..end`, in order, at most `limit`.
fn range_of(
    map: &BTreeMap<Vec<u8>, Vec<u8>>,
    start: &[u8],
    end: &[u8],
    reverse: bool,
    limit: usize,
) -> Vec<Pair> {
    if start >= end || limit == 0 {
        return Vec::new();
    }
    let r = map.range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)));
    let copy = |(k, v): (&Vec<u8>, &Vec<u8>)| (k.clone(), v.clone());
    if reverse {
        r.rev().take(limit).map(copy).collect()
    } else {
        r.take(limit).map(copy).collect()
    }
}

impl DerivedKv for MemoryDerived {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        Ok(map.get(key).cloned())
    }

    fn range(
        &self,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<Pair>, StoreError> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        Ok(range_of(&map, start, end, reverse, limit))
    }

    fn write_if(&self, guards: &[Guard], writes: &[DerivedWrite]) -> Result<bool, StoreError> {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        if guards
            .iter()
            .any(|(k, expected)| map.get(k.as_slice()) != expected.as_ref())
        {
            return Ok(false);
        }
        for (k, v) in writes {
            match v {
                Some(v) => {
                    map.insert(k.clone(), v.clone());
                }
                None => {
                    map.remove(k.as_slice());
                }
            }
        }
        Ok(true)
    }
}

/// Checks a backend against the contract: guards, atomic writes, ranges in
/// both directions with limits. Panics on the first disagreement.
#[cfg(any(test, feature = "testkit"))]
pub fn check_contract(kv: &dyn DerivedKv, prefix: &[u8]) {
    let key = |s: &str| [prefix, s.as_bytes()].concat();
    let end = [prefix, &[0xff]].concat();
    assert_eq!(kv.get(&key("a")).unwrap(), None, "starts empty");
    let writes: Vec<DerivedWrite> = ["a", "b", "b\0x", "c"]
        .iter()
        .map(|s| (key(s), Some(s.as_bytes().to_vec())))
        .collect();
    assert!(kv.write_if(&[(key("a"), None)], &writes).unwrap());
    assert!(
        !kv.write_if(&[(key("a"), None)], &[(key("z"), Some(b"z".to_vec()))])
            .unwrap(),
        "a guard expecting absence fails once the key exists"
    );
    assert_eq!(
        kv.get(&key("z")).unwrap(),
        None,
        "a failed guard writes nothing"
    );
    assert_eq!(kv.get(&key("b")).unwrap(), Some(b"b".to_vec()));
    // Several keys in one read: in the order asked, absent ones as `None`,
    // a key asked twice answered twice.
    let (ka, kb, kz, kc) = (key("a"), key("b"), key("z"), key("c"));
    assert_eq!(
        kv.get_many(&[&kc, &kz, &ka, &kb, &kc]).unwrap(),
        vec![
            Some(b"c".to_vec()),
            None,
            Some(b"a".to_vec()),
            Some(b"b".to_vec()),
            Some(b"c".to_vec())
        ]
    );
    assert!(kv.get_many(&[]).unwrap().is_empty());
    let all = kv.range(prefix, &end, false, 100).unwrap();
    let keys: Vec<Vec<u8>> = all.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(keys, vec![key("a"), key("b"), key("b\0x"), key("c")]);
    let back = kv.range(prefix, &end, true, 2).unwrap();
    assert_eq!(
        back.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        vec![key("c"), key("b\0x")]
    );
    assert!(
        kv.range(&key("c"), &key("b"), false, 10)
            .unwrap()
            .is_empty()
    );
    assert!(kv.range(prefix, &end, false, 0).unwrap().is_empty());
    assert_eq!(kv.range(&key("b"), &key("c"), false, 10).unwrap().len(), 2);
    // A guard on a value, a delete and a put in one write.
    assert!(
        !kv.write_if(&[(key("a"), Some(b"x".to_vec()))], &[(key("a"), None)])
            .unwrap()
    );
    assert!(
        kv.write_if(
            &[(key("a"), Some(b"a".to_vec())), (key("q"), None)],
            &[(key("a"), None), (key("c"), Some(b"c2".to_vec()))]
        )
        .unwrap()
    );
    assert_eq!(kv.get(&key("a")).unwrap(), None);
    assert_eq!(kv.get(&key("c")).unwrap(), Some(b"c2".to_vec()));
    // Binary keys sort as unsigned bytes.
    assert!(
        kv.write_if(
            &[],
            &[
                (key("\u{7f}"), Some(vec![1])),
                ([prefix, &[0x80]].concat(), Some(vec![2]))
            ]
        )
        .unwrap()
    );
    let tail = kv.range(&key("\u{7f}"), &end, false, 10).unwrap();
    assert_eq!(tail.len(), 2);
    assert_eq!(tail[1].1, vec![2]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_derived_space_keeps_the_contract() {
        check_contract(&MemoryDerived::new(), b"t/");
    }
}
