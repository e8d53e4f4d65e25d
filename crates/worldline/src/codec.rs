//! The building blocks of every encoding in this crate: big-endian
//! fixed-width integers, `len32(x)` = `u32(len(x)) ‖ x`, `u32` counts, and a
//! leading `[4] magic ‖ u8 version` per body kind (`docs/design.md` §18).
//!
//! Decoders built on [`Reader`] never panic and never trust a length or a
//! count: every length is checked against its limit before anything is
//! taken, and every count against both its limit and the bytes that remain,
//! so a decoder allocates at most a small multiple of its input.

use std::fmt;

use converge_ledger_core::Digest;

use crate::WorldlineError;

/// Appends the fixed-width and length-prefixed forms to a buffer.
pub(crate) trait Put {
    fn put_u8(&mut self, v: u8);
    fn put_u32(&mut self, v: u32);
    fn put_u64(&mut self, v: u64);
    fn put_digest(&mut self, d: &Digest);
    /// `u32(len) ‖ bytes`. Lengths above `u32::MAX` cannot occur: every
    /// field is bounded by [`WorldlineLimits`](crate::WorldlineLimits),
    /// whose maxima fit 32 bits.
    fn put_len32(&mut self, bytes: &[u8]);
    /// A `u32` count of a list.
    fn put_count(&mut self, n: usize);
}

impl Put for Vec<u8> {
    fn put_u8(&mut self, v: u8) {
        self.push(v);
    }
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_digest(&mut self, d: &Digest) {
        self.extend_from_slice(&d.0);
    }
    fn put_len32(&mut self, bytes: &[u8]) {
        debug_assert!(u32::try_from(bytes.len()).is_ok());
        self.put_u32(bytes.len() as u32);
        self.extend_from_slice(bytes);
    }
    fn put_count(&mut self, n: usize) {
        debug_assert!(u32::try_from(n).is_ok());
        self.put_u32(n as u32);
    }
}

/// A bounds-checked cursor over untrusted bytes. Errors are
/// [`WorldlineError::Invalid`] naming the body (`what`) and the field.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Reader { bytes, what }
    }

    fn fail(&self, field: impl fmt::Display, problem: impl fmt::Display) -> WorldlineError {
        WorldlineError::invalid(field, format!("in the {} {problem}", self.what))
    }

    pub(crate) fn take(
        &mut self,
        n: usize,
        field: impl fmt::Display,
    ) -> Result<&'a [u8], WorldlineError> {
        if self.bytes.len() < n {
            return Err(self.fail(
                field,
                format_args!("is truncated: {n} bytes needed, {} left", self.bytes.len()),
            ));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    pub(crate) fn u8(&mut self, field: impl fmt::Display) -> Result<u8, WorldlineError> {
        Ok(self.take(1, field)?[0])
    }

    pub(crate) fn u32(&mut self, field: impl fmt::Display) -> Result<u32, WorldlineError> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self, field: impl fmt::Display) -> Result<u64, WorldlineError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8, field)?);
        Ok(u64::from_be_bytes(a))
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        field: impl fmt::Display,
    ) -> Result<[u8; N], WorldlineError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, field)?);
        Ok(a)
    }

    pub(crate) fn digest(&mut self, field: impl fmt::Display) -> Result<Digest, WorldlineError> {
        Ok(Digest(self.array::<32>(field)?))
    }

    /// `len32` bytes of at most `max`; the length is checked before anything
    /// is taken.
    pub(crate) fn bytes32(
        &mut self,
        field: impl fmt::Display,
        max: usize,
    ) -> Result<&'a [u8], WorldlineError> {
        let len = self.u32(&field)? as usize;
        if len > max {
            return Err(self.fail(field, format_args!("is {len} bytes; at most {max} allowed")));
        }
        self.take(len, field)
    }

    /// `len32` UTF-8 of at most `max` bytes.
    pub(crate) fn str32(
        &mut self,
        field: impl fmt::Display,
        max: usize,
    ) -> Result<&'a str, WorldlineError> {
        let b = self.bytes32(&field, max)?;
        std::str::from_utf8(b).map_err(|_| self.fail(field, "is not UTF-8"))
    }

    /// A `u32` count of at most `max` items, each taking at least
    /// `item_bytes_min` bytes: a count the remaining bytes cannot hold is
    /// refused before any item is read or any space reserved.
    pub(crate) fn count(
        &mut self,
        field: impl fmt::Display,
        max: usize,
        item_bytes_min: usize,
    ) -> Result<usize, WorldlineError> {
        let n = self.u32(&field)? as usize;
        if n > max {
            return Err(self.fail(field, format_args!("has {n} items; at most {max} allowed")));
        }
        if n.saturating_mul(item_bytes_min) > self.bytes.len() {
            return Err(self.fail(
                field,
                format_args!(
                    "is truncated: {n} items need at least {} bytes, {} left",
                    n.saturating_mul(item_bytes_min),
                    self.bytes.len()
                ),
            ));
        }
        Ok(n)
    }

    /// The leading `[4] magic ‖ u8 version` of a body.
    pub(crate) fn header(&mut self, magic: &[u8; 4], version: u8) -> Result<(), WorldlineError> {
        let m = self.take(4, "magic")?;
        if m != magic {
            return Err(self.fail(
                "magic",
                format_args!(
                    "is {:?}; a {} starts with {:?}",
                    String::from_utf8_lossy(m),
                    self.what,
                    String::from_utf8_lossy(magic)
                ),
            ));
        }
        let v = self.u8("version")?;
        if v != version {
            return Err(self.fail(
                "version",
                format_args!("is {v}; this build reads version {version}"),
            ));
        }
        Ok(())
    }

    /// Refuses trailing bytes: a canonical body ends where its last field
    /// does.
    pub(crate) fn finish(self) -> Result<(), WorldlineError> {
        if !self.bytes.is_empty() {
            return Err(WorldlineError::invalid(
                self.what,
                format!(
                    "has {} trailing bytes after its last field",
                    self.bytes.len()
                ),
            ));
        }
        Ok(())
    }
}

/// Reads a strictly increasing (sorted by bytes, no duplicates) set of
/// strings (their content is checked by the body's validation).
pub(crate) fn read_sorted_set(
    r: &mut Reader<'_>,
    name: &'static str,
    max_items: usize,
    max_bytes: usize,
) -> Result<std::collections::BTreeSet<String>, WorldlineError> {
    let n = r.count(name, max_items, 4)?;
    let mut set = std::collections::BTreeSet::new();
    let mut last: Option<&str> = None;
    for i in 0..n {
        let s = r.str32(crate::limits::Field::item(name, i), max_bytes)?;
        if let Some(prev) = last
            && prev >= s
        {
            return Err(WorldlineError::invalid(
                crate::limits::Field::item(name, i),
                format!(
                    "is {s:?} after {prev:?}; a set is encoded sorted by bytes without duplicates"
                ),
            ));
        }
        last = Some(s);
        set.insert(s.to_owned());
    }
    Ok(set)
}

/// Writes a set (already sorted by `BTreeSet`) as `u32 count ‖ len32` each.
pub(crate) fn put_set(out: &mut Vec<u8>, set: &std::collections::BTreeSet<String>) {
    out.put_count(set.len());
    for s in set {
        out.put_len32(s.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_the_remaining_bytes_cannot_hold_is_refused_before_reading() {
        let mut b = Vec::new();
        b.put_u32(1000);
        b.extend_from_slice(&[0; 10]);
        let mut r = Reader::new(&b, "test body");
        let e = r.count("items", 10_000, 4).unwrap_err();
        assert!(e.message().contains("truncated"), "{e}");
    }

    #[test]
    fn lengths_beyond_their_limit_are_refused_before_taking_bytes() {
        let mut b = Vec::new();
        b.put_u32(u32::MAX);
        let mut r = Reader::new(&b, "test body");
        let e = r.bytes32("class", 256).unwrap_err();
        assert_eq!(
            e.message(),
            "class in the test body is 4294967295 bytes; at most 256 allowed"
        );
    }

    #[test]
    fn unsorted_and_duplicate_sets_are_refused() {
        for items in [["b", "a"], ["a", "a"]] {
            let mut b = Vec::new();
            b.put_count(2);
            for s in items {
                b.put_len32(s.as_bytes());
            }
            let mut r = Reader::new(&b, "test body");
            assert!(read_sorted_set(&mut r, "caps", 10, 10).is_err());
        }
    }
}
