//! A worldline's state and its hash.
//!
//! ```text
//! state_hash = SHA-256( "converge-ledger/wll-state/v1\0"
//!                     ‖ u64 pair count
//!                     ‖ for each pair in byte order of the key:
//!                         len32(key) ‖ u64 len(value) ‖ value )
//! ```
//!
//! The count comes first, so the hash can be computed while pairs stream in
//! key order from anywhere ([`StateHasher`]): from memory, from a snapshot,
//! or from a backend's ordered key range.

use std::collections::BTreeMap;

use converge_ledger_core::Digest;
use sha2::Digest as _;

use crate::{StateUpdate, WorldlineError, WorldlineLimits};

const STATE_DOMAIN: &[u8] = b"converge-ledger/wll-state/v1\0";

/// The state of a worldline: keys to opaque values, ordered by key bytes,
/// with the total of key and value bytes kept so that
/// [`WorldlineLimits::state_bytes_max`] can be enforced before an update is
/// applied.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct State {
    pairs: BTreeMap<String, Vec<u8>>,
    /// Sum of `key.len() + value.len()` over `pairs`.
    bytes: u64,
}

impl State {
    /// The empty state (a worldline at genesis).
    pub fn new() -> State {
        State::default()
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.pairs.get(key).map(Vec::as_slice)
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether no key is set.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Total key and value bytes: what [`WorldlineLimits::state_bytes_max`]
    /// bounds.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The pairs in key byte order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &[u8])> + '_ {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// The pairs in key byte order, taken out (no copy).
    pub fn into_pairs(self) -> impl ExactSizeIterator<Item = (String, Vec<u8>)> {
        self.pairs.into_iter()
    }

    /// The state hash (module documentation).
    pub fn hash(&self) -> Digest {
        let mut h = StateHasher::new(self.pairs.len() as u64);
        for (k, v) in &self.pairs {
            h.update(k.as_bytes(), v);
        }
        h.finalize()
    }

    /// The total bytes the state would hold after `updates` (applied in
    /// order), without changing it.
    pub fn bytes_after(&self, updates: &[StateUpdate]) -> u64 {
        // Sizes come from the state itself, so the total never underflows.
        bytes_after(self.bytes, updates, |key| {
            Ok(self.pairs.get(key).map(Vec::len))
        })
        .unwrap_or_default()
    }

    /// Refuses updates that would take the state past
    /// `limits.state_bytes_max` ([`WorldlineError::StateLimit`]). The server
    /// calls this (or the same check over the `latest_state` projection)
    /// before appending a succeeded outcome.
    pub fn check_updates(
        &self,
        updates: &[StateUpdate],
        limits: &WorldlineLimits,
    ) -> Result<(), WorldlineError> {
        check_total(self.bytes_after(updates), limits)
    }

    /// Applies `updates` in order, all or none: if they would take the state
    /// past `limits.state_bytes_max`, nothing changes.
    pub fn apply(
        &mut self,
        updates: &[StateUpdate],
        limits: &WorldlineLimits,
    ) -> Result<(), WorldlineError> {
        self.check_updates(updates, limits)?;
        for u in updates {
            match u {
                StateUpdate::Put { key, value } => self.put(key.clone(), value.clone()),
                StateUpdate::Delete { key } => self.delete(key),
            }
        }
        Ok(())
    }

    /// Sets one pair, keeping the byte count.
    pub(crate) fn put(&mut self, key: String, value: Vec<u8>) {
        let add = (key.len() + value.len()) as u64;
        if let Some(old) = self.pairs.get(&key) {
            self.bytes -= (key.len() + old.len()) as u64;
        }
        self.bytes += add;
        self.pairs.insert(key, value);
    }

    fn delete(&mut self, key: &str) {
        if let Some(old) = self.pairs.remove(key) {
            self.bytes -= (key.len() + old.len()) as u64;
        }
    }
}

/// The total after `updates` on a state of `bytes` whose current value
/// sizes `size_of` reports; shared by [`State`] and the `latest_state`
/// projection, which reads sizes from a key-value store. Sizes that exceed
/// `bytes` (only possible in a corrupt store) are
/// [`WorldlineError::Corrupt`].
pub(crate) fn bytes_after(
    bytes: u64,
    updates: &[StateUpdate],
    mut size_of: impl FnMut(&str) -> Result<Option<usize>, WorldlineError>,
) -> Result<u64, WorldlineError> {
    // Keys touched earlier in the same outcome: their size after those
    // updates, None when deleted.
    let mut touched: BTreeMap<&str, Option<usize>> = BTreeMap::new();
    let mut total = bytes;
    for u in updates {
        let key = u.key();
        let old = match touched.get(key) {
            Some(size) => *size,
            None => size_of(key)?,
        };
        if let Some(old) = old {
            total = total.checked_sub((key.len() + old) as u64).ok_or_else(|| {
                WorldlineError::corrupt(format!(
                    "state key {key:?} holds more bytes than the state's total of {bytes}"
                ))
            })?;
        }
        let new = match u {
            StateUpdate::Put { value, .. } => {
                total += (key.len() + value.len()) as u64;
                Some(value.len())
            }
            StateUpdate::Delete { .. } => None,
        };
        touched.insert(key, new);
    }
    Ok(total)
}

pub(crate) fn check_total(total: u64, limits: &WorldlineLimits) -> Result<(), WorldlineError> {
    if total > limits.state_bytes_max {
        return Err(WorldlineError::StateLimit {
            message: format!(
                "the state would hold {total} bytes of keys and values; at most {} allowed (state_bytes_max); delete keys first",
                limits.state_bytes_max
            ),
        });
    }
    Ok(())
}

/// Computes a state hash from pairs fed one at a time, in key order.
///
/// [`StateHasher::new`] and [`StateHasher::update`] trust the caller;
/// [`StateHasher::push`] and [`StateHasher::finish`] check the order and
/// the count, for pairs read back from storage.
pub struct StateHasher {
    hasher: sha2::Sha256,
    expected: u64,
    seen: u64,
    last_key: Vec<u8>,
}

impl StateHasher {
    /// A hasher for a state of `pair_count` pairs.
    pub fn new(pair_count: u64) -> StateHasher {
        let mut hasher = sha2::Sha256::new();
        hasher.update(STATE_DOMAIN);
        hasher.update(pair_count.to_be_bytes());
        StateHasher {
            hasher,
            expected: pair_count,
            seen: 0,
            last_key: Vec::new(),
        }
    }

    /// Feeds one pair without checks (pairs must come in strictly
    /// increasing key order, `pair_count` of them).
    pub fn update(&mut self, key: &[u8], value: &[u8]) {
        self.hasher.update((key.len() as u32).to_be_bytes());
        self.hasher.update(key);
        self.hasher.update((value.len() as u64).to_be_bytes());
        self.hasher.update(value);
        self.seen += 1;
    }

    /// Feeds one pair, refusing ([`WorldlineError::Corrupt`]) a key that
    /// does not follow the previous one or a pair beyond the count.
    pub fn push(&mut self, key: &[u8], value: &[u8]) -> Result<(), WorldlineError> {
        if self.seen == self.expected {
            return Err(WorldlineError::corrupt(format!(
                "state has more than the {} pairs it declares",
                self.expected
            )));
        }
        if self.seen > 0 && key <= self.last_key.as_slice() {
            return Err(WorldlineError::corrupt(format!(
                "state key {:?} does not follow {:?}; pairs come in strictly increasing key order",
                String::from_utf8_lossy(key),
                String::from_utf8_lossy(&self.last_key)
            )));
        }
        if u32::try_from(key.len()).is_err() {
            return Err(WorldlineError::corrupt("a state key is 4 GiB or longer"));
        }
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        self.update(key, value);
        Ok(())
    }

    /// The hash, after checking that exactly `pair_count` pairs were fed.
    pub fn finish(self) -> Result<Digest, WorldlineError> {
        if self.seen != self.expected {
            return Err(WorldlineError::corrupt(format!(
                "state declares {} pairs but {} were read",
                self.expected, self.seen
            )));
        }
        Ok(self.finalize())
    }

    /// The hash, without checking the count.
    pub fn finalize(self) -> Digest {
        Digest(self.hasher.finalize().into())
    }
}

/// The hash of the empty state, `SHA-256(domain ‖ u64 0)`.
pub fn empty_state_hash() -> Digest {
    StateHasher::new(0).finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &[u8]) -> StateUpdate {
        StateUpdate::Put {
            key: k.into(),
            value: v.to_vec(),
        }
    }

    #[test]
    fn updates_apply_in_order_and_the_byte_count_follows() {
        let l = WorldlineLimits::default();
        let mut s = State::new();
        s.apply(&[put("a", b"1"), put("b", b"22"), put("a", b"333")], &l)
            .unwrap();
        assert_eq!(s.get("a"), Some(&b"333"[..]));
        assert_eq!(s.bytes(), 4 + 3);
        s.apply(
            &[
                StateUpdate::Delete { key: "a".into() },
                StateUpdate::Delete { key: "zz".into() },
            ],
            &l,
        )
        .unwrap();
        assert_eq!(s.bytes(), 3);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn an_outcome_that_would_pass_the_state_limit_changes_nothing() {
        let l = WorldlineLimits {
            state_bytes_max: 10,
            ..WorldlineLimits::default()
        };
        let mut s = State::new();
        s.apply(&[put("k", b"123456789")], &l).unwrap();
        let before = s.clone();
        let e = s.apply(&[put("j", b"")], &l).unwrap_err();
        assert!(matches!(e, WorldlineError::StateLimit { .. }), "{e}");
        assert_eq!(s, before);
        // Deleting first, in the same outcome, makes room.
        s.apply(
            &[
                StateUpdate::Delete { key: "k".into() },
                put("j", b"12345678"),
            ],
            &l,
        )
        .unwrap();
        assert_eq!(s.bytes_after(&[put("j", b"1"), put("j", b"12")]), 3);
    }

    #[test]
    fn the_streaming_hasher_checks_order_and_count() {
        let mut s = State::new();
        s.put("a".into(), b"1".to_vec());
        s.put("b".into(), Vec::new());
        let mut h = StateHasher::new(2);
        h.push(b"a", b"1").unwrap();
        assert!(h.push(b"a", b"").is_err());
        h.push(b"b", b"").unwrap();
        assert!(h.push(b"c", b"").is_err());
        assert_eq!(h.finish().unwrap(), s.hash());
        let mut h = StateHasher::new(3);
        h.push(b"a", b"1").unwrap();
        assert!(h.finish().is_err());
        assert_eq!(State::new().hash(), empty_state_hash());
    }
}
