//! The pure core of the Converge ledger.
//!
//! Everything here is deterministic and free of I/O: the [`Entry`] model, its
//! canonical encoding and SHA-256 hash chain, the RFC 6962 Merkle tree kept as
//! an incremental [`Frontier`], the per-context [`Head`] and the append rule
//! that advances it, the storage [`record`] codec, the portable [`snapshot`]
//! format and the [`Limits`] every request is checked against.
//!
//! The byte layouts are specified in `docs/design.md`, with test vectors that
//! the unit tests of this crate check.

mod digest;
mod entry;
mod head;
mod limits;
pub mod merkle;
pub mod record;
mod signing;
pub mod snapshot;

pub use digest::{Digest, DigestHasher, DigestMap, DigestState, ParseDigestError};
pub use entry::{Entry, Metadata, NewEntry, genesis_hash};
pub use head::{ChainError, Head, LoadedFrom};
pub use limits::{LAMPORT_MAX, LimitError, Limits, is_format_char, unprintable_char};
pub use merkle::Frontier;
pub use signing::{HeadSigner, PublicKey, SignatureError, SignedHead};

/// Decoding failure of a stored record, a head or a snapshot.
///
/// Carries a human message naming what was wrong; decoders never panic on
/// malformed input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

/// A little cursor over a byte slice used by every decoder in this crate.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Self { bytes, what }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len()
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(DecodeError(format!(
                "{} is truncated: needed {n} more bytes, {} left",
                self.what,
                self.bytes.len()
            )));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    pub(crate) fn digest(&mut self) -> Result<Digest, DecodeError> {
        let b = self.take(32)?;
        let mut a = [0u8; 32];
        a.copy_from_slice(b);
        Ok(Digest(a))
    }

    /// A `u32` length followed by that many bytes, bounded by `max`.
    pub(crate) fn bytes32(&mut self, max: usize, field: &str) -> Result<&'a [u8], DecodeError> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(DecodeError(format!(
                "{} has a {field} of {len} bytes; at most {max} allowed",
                self.what
            )));
        }
        self.take(len)
    }

    pub(crate) fn string32(&mut self, max: usize, field: &str) -> Result<String, DecodeError> {
        self.str32(max, field).map(str::to_owned)
    }

    /// [`Reader::string32`] without the copy.
    pub(crate) fn str32(&mut self, max: usize, field: &str) -> Result<&'a str, DecodeError> {
        let b = self.bytes32(max, field)?;
        std::str::from_utf8(b)
            .map_err(|_| DecodeError(format!("{} has a {field} that is not UTF-8", self.what)))
    }
}
