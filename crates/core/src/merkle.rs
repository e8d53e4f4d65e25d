//! RFC 6962 / RFC 9162 Merkle tree over a context's entry hashes.
//!
//! Leaves are `H(0x00 ‖ entry_hash)`, interior nodes `H(0x01 ‖ left ‖ right)`;
//! a tree of `n` leaves splits at the largest power of two below `n`, so an
//! odd leaf is never duplicated (the Bitcoin-style ambiguity of
//! CVE-2012-2459 cannot arise). The root of the empty tree is `SHA-256("")`.
//!
//! A context keeps only its [`Frontier`]: the roots of the perfect subtrees
//! that make up the tree, one per set bit of the size, so appending costs one
//! leaf hash plus, amortised, one node hash, and the root is `O(log n)`.

use crate::{DecodeError, Digest, Reader};

/// `H(0x00 ‖ data)`.
pub fn leaf_hash(data: &[u8]) -> Digest {
    Digest::of(&[&[0x00], data])
}

/// `H(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Digest, right: &Digest) -> Digest {
    Digest::of(&[&[0x01], &left.0, &right.0])
}

/// Root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Digest {
    Digest::of(&[])
}

/// The compact state of an append-only Merkle tree.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frontier {
    size: u64,
    /// Roots of the perfect subtrees, largest (leftmost) first. Invariant:
    /// `nodes.len() == size.count_ones()`.
    nodes: Vec<Digest>,
}

impl Frontier {
    /// The empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf given its *leaf hash* (already `H(0x00 ‖ ...)`).
    pub fn push_leaf_hash(&mut self, leaf: Digest) {
        let mut node = leaf;
        let mut size = self.size;
        // Like a binary counter: each trailing one bit merges two equal
        // perfect subtrees into one twice as large.
        while size & 1 == 1 {
            let left = self
                .nodes
                .pop()
                .expect("frontier has a node per set bit of its size");
            node = node_hash(&left, &node);
            size >>= 1;
        }
        self.nodes.push(node);
        self.size += 1;
        debug_assert_eq!(self.nodes.len(), self.size.count_ones() as usize);
    }

    /// Appends an entry: its leaf is `H(0x00 ‖ entry_hash)`.
    pub fn push_entry(&mut self, entry_hash: &Digest) {
        self.push_leaf_hash(leaf_hash(&entry_hash.0));
    }

    /// The Merkle tree hash of all leaves pushed so far.
    pub fn root(&self) -> Digest {
        let mut it = self.nodes.iter().rev();
        let Some(last) = it.next() else {
            return empty_root();
        };
        it.fold(*last, |acc, left| node_hash(left, &acc))
    }

    /// Appends the canonical encoding: `u64` size then the frontier nodes.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.size.to_be_bytes());
        for n in &self.nodes {
            out.extend_from_slice(&n.0);
        }
    }

    pub(crate) fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let size = r.u64()?;
        let count = size.count_ones() as usize;
        let mut nodes = Vec::with_capacity(count);
        for _ in 0..count {
            nodes.push(r.digest()?);
        }
        Ok(Self { size, nodes })
    }
}

/// Merkle tree hash of `leaves` (leaf hashes), computed recursively per the
/// RFC definition. `O(n)`; the reference the incremental code is checked
/// against and what offline verification uses for small inputs.
pub fn root_of_leaf_hashes(leaves: &[Digest]) -> Digest {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = largest_power_of_two_below(n as u64) as usize;
            node_hash(
                &root_of_leaf_hashes(&leaves[..k]),
                &root_of_leaf_hashes(&leaves[k..]),
            )
        }
    }
}

/// The largest power of two strictly smaller than `n` (`n >= 2`).
pub fn largest_power_of_two_below(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The leaf inputs of the RFC 6962 reference test data (as used by the
    /// certificate-transparency implementations).
    fn rfc6962_leaves() -> Vec<Vec<u8>> {
        vec![
            vec![],
            vec![0x00],
            vec![0x10],
            vec![0x20, 0x21],
            vec![0x30, 0x31],
            vec![0x40, 0x41, 0x42, 0x43],
            vec![0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57],
            (0x60..=0x6f).collect(),
        ]
    }

    const RFC6962_ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    #[test]
    fn rfc6962_reference_roots() {
        assert_eq!(
            Frontier::new().root().to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut f = Frontier::new();
        let mut leaves = Vec::new();
        for (i, data) in rfc6962_leaves().iter().enumerate() {
            f.push_leaf_hash(leaf_hash(data));
            leaves.push(leaf_hash(data));
            assert_eq!(f.root().to_hex(), RFC6962_ROOTS[i], "size {}", i + 1);
            assert_eq!(root_of_leaf_hashes(&leaves), f.root(), "size {}", i + 1);
        }
    }

    #[test]
    fn incremental_equals_recursive_and_round_trips() {
        let mut f = Frontier::new();
        let mut leaves = Vec::new();
        for i in 0u32..300 {
            let l = leaf_hash(&i.to_be_bytes());
            f.push_leaf_hash(l);
            leaves.push(l);
            assert_eq!(f.root(), root_of_leaf_hashes(&leaves), "size {}", i + 1);
            let mut buf = Vec::new();
            f.encode_into(&mut buf);
            let mut r = Reader::new(&buf, "frontier");
            assert_eq!(Frontier::decode_from(&mut r).unwrap(), f);
            assert_eq!(r.remaining(), 0);
        }
    }
}
