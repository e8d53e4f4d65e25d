//! Pages of query results and the cursors that continue them.

use crate::keys::prefix_end;
use crate::{Direction, KvPair, KvRead, WorldlineError};

/// Most items one query returns; larger limits are lowered to it, so every
/// query reads a bounded number of keys.
pub const PAGE_ITEMS_MAX: usize = 1000;

/// Longest cursor accepted, in bytes (a cursor is a key suffix: at most a
/// state key or two identifiers and a few integers).
pub const CURSOR_BYTES_MAX: usize = 4096;

/// Where the next page starts: opaque bytes a client sends back as they
/// were received (a server can carry them as a `bytes` page token).
///
/// A cursor is the key, relative to the query's own key prefix, of the last
/// item returned. A query only ever reads inside its own prefix and range,
/// so a forged cursor can skip items but never reach another worldline's or
/// another index's keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cursor(Vec<u8>);

impl Cursor {
    /// A cursor received back from a client.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Cursor, WorldlineError> {
        if bytes.len() > CURSOR_BYTES_MAX {
            return Err(WorldlineError::invalid(
                "cursor",
                format!(
                    "is {} bytes; at most {CURSOR_BYTES_MAX} allowed",
                    bytes.len()
                ),
            ));
        }
        Ok(Cursor(bytes))
    }

    /// The bytes to hand to a client.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Takes the bytes out.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// One page of results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items, in the query's order.
    pub items: Vec<T>,
    /// Where the next page starts; `None` when this page is the last.
    pub next: Option<Cursor>,
}

impl<T> Page<T> {
    /// Maps the items, keeping the cursor.
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            next: self.next,
        }
    }
}

/// One page of the keys under `prefix` whose suffix lies in `[lo, hi)`
/// (`hi = None`: to the end of the prefix), in `direction`, after
/// `cursor`. Returns `(suffix, value)` pairs: keys relative to `prefix`.
pub(crate) fn scan(
    kv: &dyn KvRead,
    prefix: &[u8],
    lo: &[u8],
    hi: Option<&[u8]>,
    direction: Direction,
    cursor: Option<&Cursor>,
    limit: usize,
) -> Result<Page<KvPair>, WorldlineError> {
    let limit = limit.clamp(1, PAGE_ITEMS_MAX);
    let join = |suffix: &[u8]| [prefix, suffix].concat();
    let mut start = join(lo);
    let mut end = match hi {
        Some(hi) => join(hi),
        None => prefix_end(prefix),
    };
    if let Some(c) = cursor {
        match direction {
            // The smallest key after the cursor's is the cursor's and a NUL.
            Direction::Forward => start = start.max([prefix, &c.0, &[0]].concat()),
            Direction::Backward => end = end.min(join(&c.0)),
        }
    }
    let mut pairs = kv.range(&start, &end, direction, limit + 1)?;
    let more = pairs.len() > limit;
    pairs.truncate(limit);
    let mut items = Vec::with_capacity(pairs.len());
    for (k, v) in pairs {
        let suffix = k
            .strip_prefix(prefix)
            .filter(|_| k >= start && k < end)
            .ok_or_else(|| {
                WorldlineError::corrupt("the store returned a key outside the range asked for")
            })?
            .to_vec();
        items.push((suffix, v));
    }
    let next = if more {
        items.last().map(|(s, _)| Cursor(s.clone()))
    } else {
        None
    };
    Ok(Page { items, next })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KvBatch, MemoryKv};

    #[test]
    fn pages_cover_a_range_once_in_either_direction() {
        let mut kv = MemoryKv::new();
        let mut b = KvBatch::new();
        for i in 0..25u8 {
            b.put(vec![b'p', b'/', i], vec![i]);
        }
        b.put(b"q/".to_vec(), vec![]);
        kv.apply(b);
        for d in [Direction::Forward, Direction::Backward] {
            let mut seen = Vec::new();
            let mut cursor = None;
            loop {
                let page = scan(&kv, b"p/", &[3], Some(&[20]), d, cursor.as_ref(), 4).unwrap();
                seen.extend(page.items.iter().map(|(_, v)| v[0]));
                match page.next {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            let mut want: Vec<u8> = (3..20).collect();
            if d == Direction::Backward {
                want.reverse();
            }
            assert_eq!(seen, want);
        }
        let all = scan(&kv, b"p/", &[], None, Direction::Forward, None, 100).unwrap();
        assert_eq!(all.items.len(), 25);
        assert!(Cursor::from_bytes(vec![0; CURSOR_BYTES_MAX + 1]).is_err());
    }
}
