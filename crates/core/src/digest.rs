use std::fmt;

/// A SHA-256 digest: entry hashes, chain links, Merkle nodes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The all-zero digest; never the hash of anything the ledger writes.
    pub const ZERO: Digest = Digest([0; 32]);

    /// SHA-256 over the concatenation of `parts`.
    pub fn of(parts: &[&[u8]]) -> Digest {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        for p in parts {
            h.update(p);
        }
        Digest(h.finalize().into())
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Builds a digest from a 32-byte slice; `None` for any other length.
    pub fn from_slice(bytes: &[u8]) -> Option<Digest> {
        <[u8; 32]>::try_from(bytes).ok().map(Digest)
    }

    /// Lowercase hexadecimal, 64 characters.
    pub fn to_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 64];
        for (pair, b) in out.chunks_exact_mut(2).zip(self.0) {
            pair[0] = HEX[(b >> 4) as usize];
            pair[1] = HEX[(b & 0xf) as usize];
        }
        // Hex digits are ASCII, hence UTF-8.
        String::from_utf8(out.to_vec()).expect("hex digits are ASCII")
    }

    /// Parses 64 hexadecimal characters (either case).
    pub fn from_hex(s: &str) -> Result<Digest, ParseDigestError> {
        let b = s.as_bytes();
        if b.len() != 64 {
            return Err(ParseDigestError(format!(
                "a digest is 64 hex characters; got {}",
                b.len()
            )));
        }
        let nibble = |c: u8| -> Result<u8, ParseDigestError> {
            match c {
                b'0'..=b'9' => Ok(c - b'0'),
                b'a'..=b'f' => Ok(c - b'a' + 10),
                b'A'..=b'F' => Ok(c - b'A' + 10),
                _ => Err(ParseDigestError(format!(
                    "{:?} is not a hex digit",
                    c as char
                ))),
            }
        };
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = (nibble(b[2 * i])? << 4) | nibble(b[2 * i + 1])?;
        }
        Ok(Digest(out))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A [`HashMap`](std::collections::HashMap) keyed by digests, hashed with
/// [`DigestState`].
pub type DigestMap<V> = std::collections::HashMap<Digest, V, DigestState>;

/// Hashes [`Digest`] keys for hash maps, several times cheaper than the
/// standard SipHash: a digest is a SHA-256 output, already uniform, so a
/// keyed folded multiply per 8 bytes spreads it enough. The keys are drawn
/// per map from the standard library's random source, so bucket positions
/// cannot be aimed at from outside by choosing what gets hashed. Meant for
/// digest keys only: for other keys use the standard hasher.
#[derive(Clone, Debug)]
pub struct DigestState {
    k0: u64,
    k1: u64,
}

impl Default for DigestState {
    fn default() -> Self {
        use std::hash::BuildHasher as _;
        let random = std::hash::RandomState::new();
        DigestState {
            k0: random.hash_one(0u64),
            k1: random.hash_one(1u64) | 1,
        }
    }
}

impl std::hash::BuildHasher for DigestState {
    type Hasher = DigestHasher;

    fn build_hasher(&self) -> DigestHasher {
        DigestHasher {
            k1: self.k1,
            h: self.k0,
        }
    }
}

/// The hasher of a [`DigestState`].
#[derive(Debug)]
pub struct DigestHasher {
    k1: u64,
    h: u64,
}

impl DigestHasher {
    #[inline]
    fn mix(&mut self, word: u64) {
        let p = u128::from(self.h ^ word) * u128::from(self.k1);
        self.h = (p as u64) ^ ((p >> 64) as u64);
    }
}

impl std::hash::Hasher for DigestHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            self.mix(u64::from_le_bytes(w.try_into().expect("8 bytes")));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.mix(u64::from_le_bytes(last) ^ ((rest.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.h
    }
}

/// A string that is not a 64-character hex digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseDigestError(String);

impl fmt::Display for ParseDigestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseDigestError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_maps_find_what_they_hold_and_spread_digests_over_the_buckets() {
        use std::hash::BuildHasher as _;
        let mut m: DigestMap<u64> = DigestMap::default();
        for n in 0..10_000u64 {
            m.insert(Digest::of(&[&n.to_le_bytes()]), n);
        }
        for n in 0..10_000u64 {
            assert_eq!(m.get(&Digest::of(&[&n.to_le_bytes()])), Some(&n));
        }
        assert_eq!(m.get(&Digest::of(&[b"absent"])), None);
        // The low bits (a table's bucket index) of 4096 hashes fill most of
        // 4096 buckets, as uniform hashes do (about 63%).
        let state = DigestState::default();
        let mut used = std::collections::HashSet::new();
        for n in 0..4096u64 {
            used.insert(state.hash_one(Digest::of(&[&n.to_le_bytes()])) & 4095);
        }
        assert!(used.len() > 2400, "{} buckets of 4096", used.len());
        // Two maps hash the same digest differently.
        let d = Digest::of(&[b"x"]);
        assert_ne!(state.hash_one(d), DigestState::default().hash_one(d));
    }

    #[test]
    fn hex_round_trip_and_sha256_of_empty() {
        let d = Digest::of(&[]);
        assert_eq!(
            d.to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(Digest::from_hex(&d.to_hex().to_uppercase()), Ok(d));
        assert!(Digest::from_hex("zz").is_err());
        assert!(Digest::from_hex(&"g".repeat(64)).is_err());
    }
}
