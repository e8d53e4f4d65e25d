//! Rows to entries and heads, with the checks that tell corrupt data from a
//! failed database.
//!
//! Integers the ledger keeps as `u64` (sequence, time, Lamport clock) are
//! `bigint` columns holding the same 64 bits; sequences and times fit
//! below 2^63, a Lamport clock above it (only if a writer sends one) reads
//! back unchanged. Metadata is a `bytea` in the entry record's encoding
//! (`u32 count ‖ (len32 k ‖ len32 v)*`): metadata may contain any
//! characters, NUL included, which `text` and `jsonb` cannot hold.

use converge_ledger_core::{Digest, Entry, Head, Metadata};
use converge_ledger_store::StoreError;
use tokio_postgres::Row;

/// Columns every entry query selects, in this order.
pub(crate) const ENTRY_COLUMNS: &str =
    "seq, key, payload, metadata, appended_at_ns, lamport, prev_hash, hash";

pub(crate) fn to_i64(v: u64) -> i64 {
    v as i64
}

pub(crate) fn to_u64(v: i64) -> u64 {
    v as u64
}

/// Sequences and indices bound as upper limits: `u64::MAX` means "no limit".
pub(crate) fn clamp_i64(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

pub(crate) fn encode_metadata(m: &Metadata) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(4 + m.iter().map(|(k, v)| 8 + k.len() + v.len()).sum::<usize>());
    out.extend_from_slice(&(m.len() as u32).to_be_bytes());
    for (k, v) in m {
        out.extend_from_slice(&(k.len() as u32).to_be_bytes());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    out
}

pub(crate) fn decode_metadata(b: &[u8]) -> Result<Metadata, String> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        if b.len() < n {
            return Err("metadata is truncated".into());
        }
        let (h, t) = b.split_at(n);
        *b = t;
        Ok(h)
    }
    fn len(b: &mut &[u8]) -> Result<usize, String> {
        let h = take(b, 4)?;
        Ok(u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize)
    }
    fn string(b: &mut &[u8]) -> Result<String, String> {
        let n = len(b)?;
        String::from_utf8(take(b, n)?.to_vec()).map_err(|_| "metadata is not UTF-8".to_string())
    }
    let mut b = b;
    let count = len(&mut b)?;
    let mut m = Metadata::new();
    for _ in 0..count {
        let k = string(&mut b)?;
        let v = string(&mut b)?;
        m.insert(k, v);
    }
    if !b.is_empty() {
        return Err("metadata has trailing bytes".into());
    }
    Ok(m)
}

fn corrupt(context: &str, sequence: u64, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        context: context.to_owned(),
        sequence,
        reason: reason.into(),
    }
}

fn digest(context: &str, sequence: u64, what: &str, b: &[u8]) -> Result<Digest, StoreError> {
    Digest::from_slice(b).ok_or_else(|| {
        corrupt(
            context,
            sequence,
            format!("{what} is {} bytes, not 32", b.len()),
        )
    })
}

/// An entry from a row selected with [`ENTRY_COLUMNS`]. The stored hash must
/// recompute from the stored content (the equivalent of the embedded
/// record's checksum: a row altered in the database is reported, never
/// served).
pub(crate) fn entry_from_row(context: &str, row: &Row) -> Result<Entry, StoreError> {
    let column = |e: tokio_postgres::Error| {
        corrupt(context, 0, format!("an entry row does not decode: {e}"))
    };
    let sequence = to_u64(row.try_get::<_, i64>(0).map_err(column)?);
    let key: String = row.try_get(1).map_err(column)?;
    let payload: Vec<u8> = row.try_get(2).map_err(column)?;
    let metadata: &[u8] = row.try_get(3).map_err(column)?;
    let metadata = decode_metadata(metadata).map_err(|r| corrupt(context, sequence, r))?;
    let appended_at_ns = to_u64(row.try_get::<_, i64>(4).map_err(column)?);
    let lamport = to_u64(row.try_get::<_, i64>(5).map_err(column)?);
    let prev_hash = digest(
        context,
        sequence,
        "the previous hash",
        row.try_get(6).map_err(column)?,
    )?;
    let hash = digest(
        context,
        sequence,
        "the hash",
        row.try_get(7).map_err(column)?,
    )?;
    let entry = Entry {
        sequence,
        key,
        payload,
        metadata,
        appended_at_ns,
        lamport,
        prev_hash,
        hash,
    };
    let computed = entry.compute_hash(context);
    if computed != entry.hash {
        return Err(corrupt(
            context,
            sequence,
            format!(
                "the stored entry hashes to {computed}, not to its stored hash {}: the row was altered",
                entry.hash
            ),
        ));
    }
    Ok(entry)
}

/// A head from its stored encoding; the `seq` column must agree with it.
pub(crate) fn head_from_bytes(context: &str, seq: i64, bytes: &[u8]) -> Result<Head, StoreError> {
    let head = Head::decode(bytes).map_err(|e| corrupt(context, 0, e.0))?;
    if to_i64(head.sequence) != seq {
        return Err(corrupt(
            context,
            0,
            format!(
                "the head row says sequence {seq} but its encoded head is at {}",
                head.sequence
            ),
        ));
    }
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_any_characters() {
        let mut m = Metadata::new();
        m.insert("nul\0key".into(), "line\nbreak \u{1F600}".into());
        m.insert("a".into(), String::new());
        assert_eq!(decode_metadata(&encode_metadata(&m)).unwrap(), m);
        assert_eq!(
            decode_metadata(&encode_metadata(&Metadata::new())).unwrap(),
            Metadata::new()
        );
        let bytes = encode_metadata(&m);
        for n in 0..bytes.len() {
            assert!(decode_metadata(&bytes[..n]).is_err(), "truncation to {n}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(decode_metadata(&long).is_err());
    }

    #[test]
    fn u64_values_survive_bigint() {
        for v in [0, 1, i64::MAX as u64, i64::MAX as u64 + 1, u64::MAX] {
            assert_eq!(to_u64(to_i64(v)), v);
        }
        assert_eq!(clamp_i64(u64::MAX), i64::MAX);
    }
}
