//! How projections lay out their keys (`docs/design.md` §18):
//!
//! ```text
//! <projection name> '/' u32 version '/' [32] worldline '/' <table> '/' components
//! ```
//!
//! Components are big-endian integers, 32-byte digests, and strings
//! followed by a NUL byte. Strings here are identifiers or state keys, which
//! never hold NUL (they may not hold control characters), so the
//! terminator makes every string component prefix-free while keeping byte
//! order: `"a\0" < "ab\0"`. Fixing the leading components of a table is
//! therefore a key prefix, and a trailing time or sequence makes a range
//! of them a key range.

use converge_ledger_core::Digest;

use crate::{WorldlineError, WorldlineId};

/// The key prefix of everything one projection version stores.
pub(crate) fn projection_prefix(name: &str, version: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 6);
    push_projection_prefix(&mut k, name, version);
    k
}

fn push_projection_prefix(k: &mut Vec<u8>, name: &str, version: u32) {
    k.extend_from_slice(name.as_bytes());
    k.push(b'/');
    k.extend_from_slice(&version.to_be_bytes());
    k.push(b'/');
}

/// The key prefix of one projection version for one worldline.
pub(crate) fn worldline_prefix(name: &str, version: u32, worldline: &WorldlineId) -> Vec<u8> {
    worldline_prefix_with_room(name, version, worldline, 0)
}

/// [`worldline_prefix`] in a vector with `room` bytes more to grow into.
fn worldline_prefix_with_room(
    name: &str,
    version: u32,
    worldline: &WorldlineId,
    room: usize,
) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 6 + 33 + room);
    push_projection_prefix(&mut k, name, version);
    k.extend_from_slice(worldline.as_bytes());
    k.push(b'/');
    k
}

/// A key under construction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Key(Vec<u8>);

impl Key {
    /// The prefix of `table` of a projection for a worldline.
    pub(crate) fn table(name: &str, version: u32, worldline: &WorldlineId, table: &str) -> Key {
        // Room for the table and the components most keys have (two
        // strings and two integers), so a key is one allocation.
        let mut k = worldline_prefix_with_room(name, version, worldline, table.len() + 1 + 64);
        k.extend_from_slice(table.as_bytes());
        k.push(b'/');
        Key(k)
    }

    pub(crate) fn str(mut self, s: &str) -> Key {
        debug_assert!(!s.as_bytes().contains(&0), "key strings hold no NUL");
        self.0.extend_from_slice(s.as_bytes());
        self.0.push(0);
        self
    }

    pub(crate) fn u8(mut self, v: u8) -> Key {
        self.0.push(v);
        self
    }

    pub(crate) fn u32(mut self, v: u32) -> Key {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(crate) fn u64(mut self, v: u64) -> Key {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(crate) fn digest(mut self, d: &Digest) -> Key {
        self.0.extend_from_slice(&d.0);
        self
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }

    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// The smallest key above every key that starts with `prefix`. Every
/// prefix here starts with an ASCII projection name, so one exists.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return end;
        }
    }
    debug_assert!(false, "no key follows a prefix of 0xFF bytes");
    vec![0xFF; prefix.len() + 1]
}

/// Reads the components of a stored key back. Errors are
/// [`WorldlineError::Corrupt`]: keys come from storage.
pub(crate) struct KeyReader<'a> {
    rest: &'a [u8],
}

impl<'a> KeyReader<'a> {
    /// Reads `key`, which must start with `prefix`.
    pub(crate) fn new(key: &'a [u8], prefix: &[u8]) -> Result<KeyReader<'a>, WorldlineError> {
        key.strip_prefix(prefix)
            .map(|rest| KeyReader { rest })
            .ok_or_else(|| {
                WorldlineError::corrupt("a projection key lies outside the range it was read from")
            })
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WorldlineError> {
        if self.rest.len() < n {
            return Err(WorldlineError::corrupt("a projection key is truncated"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    pub(crate) fn str(&mut self) -> Result<&'a str, WorldlineError> {
        let end =
            self.rest.iter().position(|&b| b == 0).ok_or_else(|| {
                WorldlineError::corrupt("a projection key lacks a string terminator")
            })?;
        let s = std::str::from_utf8(&self.rest[..end]).map_err(|_| {
            WorldlineError::corrupt("a projection key holds a string that is not UTF-8")
        })?;
        self.rest = &self.rest[end + 1..];
        Ok(s)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, WorldlineError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u64(&mut self) -> Result<u64, WorldlineError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }

    pub(crate) fn finish(self) -> Result<(), WorldlineError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(WorldlineError::corrupt(
                "a projection key has trailing bytes",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminated_strings_keep_byte_order_and_are_prefix_free() {
        let w = WorldlineId::derive(b"w");
        let a = Key::table("p", 1, &w, "t").str("a").u64(9).into_bytes();
        let ab = Key::table("p", 1, &w, "t").str("ab").u64(0).into_bytes();
        assert!(a < ab);
        let pa = Key::table("p", 1, &w, "t").str("a").into_bytes();
        assert!(ab.starts_with(&pa[..pa.len() - 1]) && !ab.starts_with(&pa));
        let mut r = KeyReader::new(&ab, Key::table("p", 1, &w, "t").bytes()).unwrap();
        assert_eq!(r.str().unwrap(), "ab");
        assert_eq!(r.u64().unwrap(), 0);
        r.finish().unwrap();
        assert_eq!(prefix_end(b"ab/"), b"ab0");
        assert_eq!(prefix_end(&[1, 0xFF]), vec![2]);
    }
}
