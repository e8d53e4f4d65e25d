//! The client-chosen identity of a commitment: a UUID.

use std::fmt;
use std::str::FromStr;

use crate::WorldlineError;

/// A commitment's UUID, 16 bytes. The kernel chooses it when it proposes;
/// a retried append with the same id is the same commitment (the ledger
/// derives the commitment's idempotency key from it,
/// [`commitment_idempotency_key`](crate::commitment_idempotency_key)).
///
/// Text form: the canonical `8-4-4-4-12` hexadecimal groups, printed in
/// lowercase; parsing also accepts uppercase (RFC 9562 §4). The nil UUID is
/// refused by validation: it is what an unset field looks like.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct CommitmentId(pub [u8; 16]);

impl CommitmentId {
    /// The all-zero UUID, never a valid commitment id.
    pub const NIL: CommitmentId = CommitmentId([0; 16]);

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Parses `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (hex digits of either
    /// case).
    pub fn parse(s: &str) -> Result<CommitmentId, WorldlineError> {
        let refuse = || {
            WorldlineError::invalid(
                "commitment_id",
                format!("is {s:?}; a UUID is 32 hexadecimal digits grouped 8-4-4-4-12"),
            )
        };
        let b = s.as_bytes();
        if b.len() != 36 {
            return Err(refuse());
        }
        let mut out = [0u8; 16];
        let mut nibbles = 0usize;
        for (i, &c) in b.iter().enumerate() {
            if matches!(i, 8 | 13 | 18 | 23) {
                if c != b'-' {
                    return Err(refuse());
                }
                continue;
            }
            let v = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                b'A'..=b'F' => c - b'A' + 10,
                _ => return Err(refuse()),
            };
            out[nibbles / 2] |= if nibbles.is_multiple_of(2) { v << 4 } else { v };
            nibbles += 1;
        }
        Ok(CommitmentId(out))
    }
}

impl fmt::Display for CommitmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for CommitmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CommitmentId({self})")
    }
}

impl FromStr for CommitmentId {
    type Err = WorldlineError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CommitmentId::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canonical_form_round_trips_and_prints_lowercase() {
        let s = "0190a5b2-7c3e-7def-8a12-3456789abcde";
        let id = CommitmentId::parse(s).unwrap();
        assert_eq!(id.0[0], 0x01);
        assert_eq!(id.0[15], 0xde);
        assert_eq!(id.to_string(), s);
        assert_eq!(CommitmentId::parse(&s.to_uppercase()), Ok(id));
    }

    #[test]
    fn anything_but_8_4_4_4_12_hex_groups_is_refused() {
        for bad in [
            "",
            "0190a5b27c3e7def8a123456789abcde",
            "0190a5b2-7c3e-7def-8a12-3456789abcd",
            "0190a5b2-7c3e-7def-8a12-3456789abcdeX",
            "0190a5b2-7c3e-7def-8a12_3456789abcde",
            "0190a5b2-7c3e-7def-8a12-3456789abcdg",
            "{0190a5b2-7c3e-7def-8a12-3456789abc}",
            "0190a5b2-7c3e-7déf-8a12-3456789abcd",
        ] {
            assert!(CommitmentId::parse(bad).is_err(), "{bad:?}");
        }
    }
}
