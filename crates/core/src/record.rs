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

/// Checks a record's CRC and version without decoding it, and returns the
/// sequence it holds: for handing stored records on as they are, with the
/// same corruption check [`decode`] makes.
pub fn check(bytes: &[u8]) -> Result<u64, DecodeError> {
    let body = checked_body(bytes)?;
    match body {
        [RECORD_VERSION, seq @ ..] if seq.len() >= 8 => Ok(u64::from_be_bytes(
            seq[..8].try_into().expect("eight bytes"),
        )),
        [v, ..] if *v != RECORD_VERSION => Err(DecodeError(format!(
            "entry record has version {v}; this build reads version {RECORD_VERSION}"
        ))),
        _ => Err(DecodeError("entry record ends before its sequence".into())),
    }
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

/// Decodes a record, checking its CRC first. Does not check the hash chain;
/// that is the caller's job where it matters (verification, Load).
pub fn decode(bytes: &[u8]) -> Result<Entry, DecodeError> {
    let body = checked_body(bytes)?;
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
    let key = r.string32(FIELD_BYTES_MAX, "key")?;
    let count = r.u32()? as usize;
    let mut metadata = Metadata::new();
    for _ in 0..count {
        let k = r.string32(FIELD_BYTES_MAX, "metadata key")?;
        let v = r.string32(FIELD_BYTES_MAX, "metadata value")?;
        metadata.insert(k, v);
    }
    let payload = r.bytes32(FIELD_BYTES_MAX, "payload")?.to_vec();
    if r.remaining() != 0 {
        return Err(DecodeError("entry record has trailing bytes".into()));
    }
    Ok(Entry {
        sequence,
        key,
        payload,
        metadata,
        appended_at_ns,
        lamport,
        prev_hash,
        hash,
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
    fn check_returns_the_sequence_and_refuses_what_decode_refuses_for_its_crc_or_version() {
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
