use std::collections::BTreeMap;

use crate::Digest;

/// Entry metadata: string keys to string values, kept sorted so that the
/// canonical encoding (and therefore the hash) does not depend on the order a
/// client sent them in.
pub type Metadata = BTreeMap<String, String>;

/// Domain separation for entry hashes (see `docs/design.md`, "Entry hash").
const ENTRY_DOMAIN: &[u8] = b"converge-ledger/entry/v1\0";
/// Domain separation for the genesis link of a context's chain.
const GENESIS_DOMAIN: &[u8] = b"converge-ledger/genesis/v1\0";

/// What a writer asks to append; the ledger assigns everything else.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewEntry {
    /// The entry's key (the original ledger's "kind": fact, trace, ...).
    pub key: String,
    /// Opaque bytes; the ledger never interprets them.
    pub payload: Vec<u8>,
    /// Opaque string pairs.
    pub metadata: Metadata,
    /// A Lamport time the writer received from elsewhere (0: none). The
    /// context's clock becomes `max(local, received) + 1`.
    pub lamport: u64,
}

/// One immutable entry of a context's stream.
///
/// The context id is not part of the struct: an entry always lives in exactly
/// one context, and the context id is bound into [`Entry::hash`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Position in the context, 1, 2, 3, ... without gaps.
    pub sequence: u64,
    /// Key as given by the writer.
    pub key: String,
    /// Payload as given by the writer.
    pub payload: Vec<u8>,
    /// Metadata as given by the writer.
    pub metadata: Metadata,
    /// Server clock at append, never decreasing within a context.
    pub appended_at_ns: u64,
    /// Lamport clock of the context at this entry; strictly increasing.
    pub lamport: u64,
    /// Hash of the previous entry, or the context's genesis hash for entry 1.
    pub prev_hash: Digest,
    /// SHA-256 over the canonical encoding of this entry (including
    /// `prev_hash`), which chains it to all history before it.
    pub hash: Digest,
}

impl Entry {
    /// The entry id exposed on the wire: the lowercase hex entry hash. It is
    /// unique across contexts (the hash binds the context id and sequence)
    /// and anyone can recompute it.
    pub fn id(&self) -> String {
        self.hash.to_hex()
    }

    /// Recomputes the hash of this entry's content in `context`.
    pub fn compute_hash(&self, context: &str) -> Digest {
        entry_hash(
            context,
            self.sequence,
            &self.key,
            &self.payload,
            &self.metadata,
            self.appended_at_ns,
            self.lamport,
            &self.prev_hash,
        )
    }

    /// Approximate bytes this entry occupies in memory and on the wire; used
    /// for response-size limits.
    pub fn approximate_size(&self) -> usize {
        let meta: usize = self
            .metadata
            .iter()
            .map(|(k, v)| k.len() + v.len() + 8)
            .sum();
        self.key.len() + self.payload.len() + meta + 64 + 3 * 8 + 64 + 16
    }
}

/// The `prev_hash` of a context's first entry: SHA-256 of a domain prefix and
/// the length-prefixed context id, so that identical content in two contexts
/// never hashes alike.
pub fn genesis_hash(context: &str) -> Digest {
    Digest::of(&[
        GENESIS_DOMAIN,
        &(context.len() as u32).to_be_bytes(),
        context.as_bytes(),
    ])
}

/// SHA-256 over the canonical encoding of an entry (layout in
/// `docs/design.md`). Streams into the hasher; allocates nothing.
#[allow(clippy::too_many_arguments)]
pub(crate) fn entry_hash(
    context: &str,
    sequence: u64,
    key: &str,
    payload: &[u8],
    metadata: &Metadata,
    appended_at_ns: u64,
    lamport: u64,
    prev_hash: &Digest,
) -> Digest {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(ENTRY_DOMAIN);
    h.update((context.len() as u32).to_be_bytes());
    h.update(context.as_bytes());
    h.update(sequence.to_be_bytes());
    h.update((key.len() as u32).to_be_bytes());
    h.update(key.as_bytes());
    h.update((payload.len() as u64).to_be_bytes());
    h.update(payload);
    h.update((metadata.len() as u32).to_be_bytes());
    for (k, v) in metadata {
        h.update((k.len() as u32).to_be_bytes());
        h.update(k.as_bytes());
        h.update((v.len() as u32).to_be_bytes());
        h.update(v.as_bytes());
    }
    h.update(appended_at_ns.to_be_bytes());
    h.update(lamport.to_be_bytes());
    h.update(prev_hash.0);
    Digest(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vectors published in `docs/design.md`, computed independently
    /// of this code (a few lines of Python with hashlib); any other
    /// implementation of the encoding must reproduce them.
    #[test]
    fn published_test_vectors() {
        let g = genesis_hash("ctx-1");
        assert_eq!(
            g.to_hex(),
            "cead77ed6a8362901472253b1c2f7408e9f18a8bbeca374329caed5fe73b8a9f",
            "genesis(\"ctx-1\")"
        );
        let mut metadata = Metadata::new();
        metadata.insert("cycle".into(), "1".into());
        metadata.insert("agent".into(), "analyst".into());
        let e1 = Entry {
            sequence: 1,
            key: "facts".into(),
            payload: b"market_size: 2.4B".to_vec(),
            metadata,
            appended_at_ns: 1_700_000_000_000_000_000,
            lamport: 1,
            prev_hash: g,
            hash: Digest::ZERO,
        };
        let h1 = e1.compute_hash("ctx-1");
        assert_eq!(
            h1.to_hex(),
            "e83d6d42a778028ed8ff5eb60744cfac3a069e0e26cdcf675ee4861a00d8e520",
            "entry 1"
        );
        let mut tree = crate::Frontier::new();
        tree.push_entry(&h1);
        assert_eq!(
            tree.root().to_hex(),
            "6e14df4c89ae4a0a54d11cb554c03085beeec8c263b720482ba1abe733bf8dcf",
            "Merkle root after entry 1"
        );
    }

    #[test]
    fn hash_binds_context_and_every_field() {
        let base = Entry {
            sequence: 1,
            key: "k".into(),
            payload: b"p".to_vec(),
            metadata: Metadata::new(),
            appended_at_ns: 5,
            lamport: 1,
            prev_hash: genesis_hash("a"),
            hash: Digest::ZERO,
        };
        let h = base.compute_hash("a");
        assert_ne!(h, base.compute_hash("b"));
        let mut e = base.clone();
        e.sequence = 2;
        assert_ne!(h, e.compute_hash("a"));
        let mut e = base.clone();
        e.key = "K".into();
        assert_ne!(h, e.compute_hash("a"));
        let mut e = base.clone();
        e.payload = b"q".to_vec();
        assert_ne!(h, e.compute_hash("a"));
        let mut e = base.clone();
        e.metadata.insert("x".into(), String::new());
        assert_ne!(h, e.compute_hash("a"));
        let mut e = base.clone();
        e.appended_at_ns = 6;
        assert_ne!(h, e.compute_hash("a"));
        let mut e = base.clone();
        e.lamport = 2;
        assert_ne!(h, e.compute_hash("a"));
        let mut e = base.clone();
        e.prev_hash = Digest::ZERO;
        assert_ne!(h, e.compute_hash("a"));
        // Length prefixes keep field boundaries unambiguous.
        let mut e1 = base.clone();
        e1.key = "ab".into();
        e1.payload = b"c".to_vec();
        let mut e2 = base;
        e2.key = "a".into();
        e2.payload = b"bc".to_vec();
        assert_ne!(e1.compute_hash("a"), e2.compute_hash("a"));
    }
}
