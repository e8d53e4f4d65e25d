//! Signed heads: an Ed25519 signature by the server over a context's
//! (id, size, Merkle root, head hash, timestamp). See `docs/design.md`,
//! "Signed heads".

use std::fmt;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

use crate::{Digest, Head, LoadedFrom};

/// Domain separation of the signed statement, version 2 (with where loaded
/// history came from).
const HEAD_DOMAIN: &[u8] = b"converge-ledger/signed-head/v2\0";
/// Version 1, still verified in snapshots of version 1.
const HEAD_DOMAIN_V1: &[u8] = b"converge-ledger/signed-head/v1\0";

/// An Ed25519 public key (32 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        Digest(self.0).to_hex()
    }

    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Result<PublicKey, SignatureError> {
        let d =
            Digest::from_hex(s).map_err(|e| SignatureError(format!("not a public key: {e}")))?;
        VerifyingKey::from_bytes(&d.0)
            .map_err(|_| SignatureError("not a valid Ed25519 public key".into()))?;
        Ok(PublicKey(d.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A signature that does not verify, or a malformed key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureError(pub String);

impl fmt::Display for SignatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SignatureError {}

/// The server's head-signing key.
pub struct HeadSigner {
    key: SigningKey,
}

impl fmt::Debug for HeadSigner {
    /// Never prints the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HeadSigner({})", self.public_key())
    }
}

impl HeadSigner {
    /// A signer from a 32-byte secret seed.
    pub fn from_seed(seed: [u8; 32]) -> HeadSigner {
        HeadSigner {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// The secret seed (for writing the key file).
    pub fn seed(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The public key clients verify against.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.key.verifying_key().to_bytes())
    }

    /// Signs the head of `context`.
    pub fn sign(&self, context: &str, head: &Head) -> SignedHead {
        let mut s = SignedHead {
            context: context.to_owned(),
            size: head.sequence,
            root: head.merkle_root(),
            head_hash: head.hash,
            timestamp_ns: head.appended_at_ns,
            loaded: head.loaded,
            public_key: self.public_key(),
            signature: [0; 64],
        };
        s.signature = self.key.sign(&s.statement()).to_bytes();
        s
    }
}

#[cfg(test)]
impl HeadSigner {
    /// A signature over the version 1 statement, as earlier builds made.
    pub(crate) fn sign_v1(&self, context: &str, head: &Head) -> SignedHead {
        let mut s = self.sign(context, head);
        s.signature = self.key.sign(&s.statement_v1()).to_bytes();
        s
    }
}

/// A head with the server's signature over it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHead {
    /// The context.
    pub context: String,
    /// Tree size = head sequence.
    pub size: u64,
    /// Merkle root over the `size` entries.
    pub root: Digest,
    /// Hash of the last entry (genesis hash when empty).
    pub head_hash: Digest,
    /// Time of the last entry (0 when empty).
    pub timestamp_ns: u64,
    /// Whether, and from which signer, entries were loaded rather than
    /// appended here ([`Head::loaded`]).
    pub loaded: Option<LoadedFrom>,
    /// Who signed.
    pub public_key: PublicKey,
    /// Ed25519 signature over [`SignedHead::statement`].
    pub signature: [u8; 64],
}

impl SignedHead {
    /// The signed bytes:
    /// `"converge-ledger/signed-head/v2\0" ‖ len32(context) ‖ u64 size ‖
    /// [32] root ‖ [32] head hash ‖ u64 timestamp_ns ‖ u64 loaded_through ‖
    /// [32] loaded_signer` (both zero when nothing was loaded).
    pub fn statement(&self) -> Vec<u8> {
        let mut m = self.statement_with(HEAD_DOMAIN);
        let (through, signer) = self
            .loaded
            .map_or((0, [0; 32]), |l| (l.through, l.signer.0));
        m.extend_from_slice(&through.to_be_bytes());
        m.extend_from_slice(&signer);
        m
    }

    /// The statement of version 1 (no loaded fields), signed by earlier
    /// builds and found in snapshots of version 1.
    pub fn statement_v1(&self) -> Vec<u8> {
        self.statement_with(HEAD_DOMAIN_V1)
    }

    fn statement_with(&self, domain: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(domain.len() + 4 + self.context.len() + 8 + 64 + 48);
        m.extend_from_slice(domain);
        m.extend_from_slice(&(self.context.len() as u32).to_be_bytes());
        m.extend_from_slice(self.context.as_bytes());
        m.extend_from_slice(&self.size.to_be_bytes());
        m.extend_from_slice(&self.root.0);
        m.extend_from_slice(&self.head_hash.0);
        m.extend_from_slice(&self.timestamp_ns.to_be_bytes());
        m
    }

    /// Checks the signature (over [`SignedHead::statement`]) against the
    /// embedded public key (strict verification: no malleable signatures,
    /// no weak keys).
    pub fn verify(&self) -> Result<(), SignatureError> {
        self.verify_statement(&self.statement())
    }

    /// [`SignedHead::verify`] for a signature over the version 1 statement.
    pub fn verify_v1(&self) -> Result<(), SignatureError> {
        if self.loaded.is_some() {
            return Err(SignatureError(
                "a version 1 signature cannot cover loaded history".into(),
            ));
        }
        self.verify_statement(&self.statement_v1())
    }

    fn verify_statement(&self, statement: &[u8]) -> Result<(), SignatureError> {
        let key = VerifyingKey::from_bytes(&self.public_key.0).map_err(|_| {
            SignatureError(format!(
                "{} is not a valid Ed25519 public key",
                self.public_key
            ))
        })?;
        let sig = ed25519_dalek::Signature::from_bytes(&self.signature);
        key.verify_strict(statement, &sig).map_err(|_| {
            SignatureError(format!(
                "the signature over the head of {:?} at size {} does not verify with key {}",
                self.context, self.size, self.public_key
            ))
        })
    }

    /// Checks that this signs exactly `head` of `context`.
    pub fn matches(&self, context: &str, head: &Head) -> bool {
        self.context == context
            && self.size == head.sequence
            && self.root == head.merkle_root()
            && self.head_hash == head.hash
            && self.timestamp_ns == head.appended_at_ns
            && self.loaded == head.loaded
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Metadata, NewEntry};

    #[test]
    fn signatures_verify_and_any_change_breaks_them() {
        let signer = HeadSigner::from_seed([7; 32]);
        let mut head = Head::empty("c");
        let e = head.next_entry(
            "c",
            NewEntry {
                key: "k".into(),
                payload: vec![1],
                metadata: Metadata::new(),
                lamport: 0,
            },
            5,
        );
        head.advance(&e);
        let signed = signer.sign("c", &head);
        signed.verify().unwrap();
        assert!(signed.matches("c", &head));
        let mut s = signed.clone();
        s.size = 2;
        assert!(s.verify().is_err());
        let mut s = signed.clone();
        s.context = "d".into();
        assert!(s.verify().is_err());
        let mut s = signed.clone();
        s.root.0[0] ^= 1;
        assert!(s.verify().is_err());
        let mut s = signed.clone();
        s.timestamp_ns += 1;
        assert!(s.verify().is_err());
        let mut s = signed.clone();
        s.signature[10] ^= 1;
        assert!(s.verify().is_err());
        // Loaded history is part of what is signed: a head that says it
        // was appended here does not verify as one that was loaded.
        let mut loaded = head.clone();
        loaded.loaded = Some(LoadedFrom {
            through: 1,
            signer: PublicKey([9; 32]),
        });
        let l = signer.sign("c", &loaded);
        l.verify().unwrap();
        let mut s = l.clone();
        s.loaded = None;
        assert!(s.verify().is_err());
        let mut s = signed.clone();
        s.loaded = l.loaded;
        assert!(s.verify().is_err());
        let mut s = signed;
        s.public_key = HeadSigner::from_seed([8; 32]).public_key();
        assert!(s.verify().is_err());
        assert_eq!(
            PublicKey::from_hex(&signer.public_key().to_hex()).unwrap(),
            signer.public_key()
        );
    }
}
