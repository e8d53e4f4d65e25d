//! The stored form of an entry: versioned, length-prefixed, and closed by a
//! CRC-32 so that a flipped bit on disk (corruption) is told apart from a
//! consistent but different entry (tampering, caught by the hash chain).
//!
//! Layout (all integers big-endian), see `docs/design.md`:
//!
//! ```text
//! u8 version (1) | u64 sequence | u64 appended_at_ns | u64 lamport
//! | [32] prev_hash | [32] hash | u32 len, key | u32 count, (u32 len, k, u32 len, v)*
//! | u32 len, payload | u32 crc32 of everything before it
//! ```

use crate::{DecodeError, Entry, Metadata, Reader};

const RECORD_VERSION: u8 = 1;

/// Upper bound on any single field while decoding; keeps a corrupt length
/// from asking for gigabytes.
const FIELD_BYTES_MAX: usize = 1 << 30;

/// Encodes `entry` into `out`.
pub fn encode_into(entry: &Entry, out: &mut Vec<u8>) {
    let start = out.len();
    out.reserve(entry.approximate_size());
    out.push(RECORD_VERSION);
    out.extend_from_slice(&entry.sequence.to_be_bytes());
    out.extend_from_slice(&entry.appended_at_ns.to_be_bytes());
    out.extend_from_slice(&entry.lamport.to_be_bytes());
    out.extend_from_slice(&entry.prev_hash.0);
    out.extend_from_slice(&entry.hash.0);
    put_bytes(out, entry.key.as_bytes());
    out.extend_from_slice(&(entry.metadata.len() as u32).to_be_bytes());
    for (k, v) in &entry.metadata {
        put_bytes(out, k.as_bytes());
        put_bytes(out, v.as_bytes());
    }
    put_bytes(out, &entry.payload);
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// Encodes `entry` into a fresh buffer.
pub fn encode(entry: &Entry) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(entry, &mut out);
    out
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

/// Checks a record as [`decode`] does (CRC, version, every length, UTF-8,
/// nothing left over) without copying any field out of it, and returns the
/// sequence it holds: for handing stored records on as they are.
pub fn check(bytes: &[u8]) -> Result<u64, DecodeError> {
    parse(checked_body(bytes)?, |_, _| {}).map(|f| f.sequence)
}

/// The record without its CRC, once the CRC matches.
fn checked_body(bytes: &[u8]) -> Result<&[u8], DecodeError> {
    if bytes.len() < 4 {
        return Err(DecodeError(
            "entry record is shorter than its checksum".into(),
        ));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let actual = crc32fast::hash(body);
    if stored != actual {
        return Err(DecodeError(format!(
            "entry record checksum mismatch (stored {stored:08x}, computed {actual:08x}): the bytes were corrupted"
        )));
    }
    Ok(body)
}

/// A record's fields, borrowed from its bytes.
struct Fields<'a> {
    sequence: u64,
    appended_at_ns: u64,
    lamport: u64,
    prev_hash: crate::Digest,
    hash: crate::Digest,
    key: &'a str,
    payload: &'a [u8],
}

/// Reads a record body (CRC already checked), handing each metadata pair to
/// `pair` in stored order.
fn parse<'a>(
    body: &'a [u8],
    mut pair: impl FnMut(&'a str, &'a str),
) -> Result<Fields<'a>, DecodeError> {
    let mut r = Reader::new(body, "entry record");
    let v = r.u8()?;
    if v != RECORD_VERSION {
        return Err(DecodeError(format!(
            "entry record has version {v}; this build reads version {RECORD_VERSION}"
        )));
    }
    let sequence = r.u64()?;
    let appended_at_ns = r.u64()?;
    let lamport = r.u64()?;
    let prev_hash = r.digest()?;
    let hash = r.digest()?;
    let key = r.str32(FIELD_BYTES_MAX, "key")?;
    let count = r.u32()? as usize;
    for _ in 0..count {
        let k = r.str32(FIELD_BYTES_MAX, "metadata key")?;
        let v = r.str32(FIELD_BYTES_MAX, "metadata value")?;
        pair(k, v);
    }
    let payload = r.bytes32(FIELD_BYTES_MAX, "payload")?;
    if r.remaining() != 0 {
        return Err(DecodeError("entry record has trailing bytes".into()));
    }
    Ok(Fields {
        sequence,
        appended_at_ns,
        lamport,
        prev_hash,
        hash,
        key,
        payload,
    })
}

/// Decodes a record, checking its CRC first. Does not check the hash chain;
/// that is the caller's job where it matters (verification, Load).
pub fn decode(bytes: &[u8]) -> Result<Entry, DecodeError> {
    let mut metadata = Metadata::new();
    let f = parse(checked_body(bytes)?, |k, v| {
        metadata.insert(k.to_owned(), v.to_owned());
    })?;
    Ok(Entry {
        sequence: f.sequence,
        key: f.key.to_owned(),
        payload: f.payload.to_vec(),
        metadata,
        appended_at_ns: f.appended_at_ns,
        lamport: f.lamport,
        prev_hash: f.prev_hash,
        hash: f.hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Head, NewEntry};

    fn sample() -> Entry {
        let mut metadata = Metadata::new();
        metadata.insert("cycle".into(), "3".into());
        Head::empty("c").next_entry(
            "c",
            NewEntry {
                key: "facts".into(),
                payload: vec![0, 1, 2, 255],
                metadata,
                lamport: 0,
            },
            42,
        )
    }

    #[test]
    fn round_trip() {
        let e = sample();
        assert_eq!(decode(&encode(&e)).unwrap(), e);
    }

    #[test]
    fn check_returns_the_sequence_and_refuses_what_decode_refuses_without_copying_fields() {
        let e = sample();
        let bytes = encode(&e);
        assert_eq!(check(&bytes).unwrap(), e.sequence);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(check(&b).is_err(), "a flip at {i} went unnoticed");
        }
        for n in 0..bytes.len() {
            assert!(check(&bytes[..n]).is_err(), "a cut at {n} went unnoticed");
        }
        let mut other = bytes[..bytes.len() - 4].to_vec();
        other[0] = 2;
        let crc = crc32fast::hash(&other);
        other.extend_from_slice(&crc.to_be_bytes());
        assert!(check(&other).unwrap_err().0.contains("version 2"));
        // Well-formed CRC, malformed inside: refused like decode refuses it.
        let recrc = |mut body: Vec<u8>| {
            let crc = crc32fast::hash(&body);
            body.extend_from_slice(&crc.to_be_bytes());
            body
        };
        let body = &bytes[..bytes.len() - 4];
        let trailing = recrc([body, &[0]].concat());
        assert!(check(&trailing).unwrap_err().0.contains("trailing"));
        assert!(decode(&trailing).is_err());
        // The key's first byte (after version, three u64, two digests and
        // the key's length) made invalid UTF-8.
        let mut not_utf8 = body.to_vec();
        not_utf8[1 + 24 + 64 + 4] = 0xff;
        let not_utf8 = recrc(not_utf8);
        assert!(check(&not_utf8).unwrap_err().0.contains("UTF-8"));
        assert!(decode(&not_utf8).is_err());
    }

    #[test]
    fn every_flipped_byte_and_every_truncation_is_an_error() {
        let bytes = encode(&sample());
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(decode(&b).is_err(), "flip at {i} went unnoticed");
        }
        for n in 0..bytes.len() {
            assert!(
                decode(&bytes[..n]).is_err(),
                "truncation to {n} went unnoticed"
            );
        }
    }
}
