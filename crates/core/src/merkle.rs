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
        self.push_leaf_hash_with(leaf, |_, _, _| {});
    }

    /// Appends a leaf and reports every perfect subtree it completes as
    /// `(level, index, root)`: the subtree of `2^level` leaves starting at
    /// leaf `index * 2^level`. Stores keep some of these (see
    /// [`STORED_LEVEL_STRIDE`]) so that proofs need few reads.
    pub fn push_leaf_hash_with(&mut self, leaf: Digest, completed: impl FnMut(u8, u64, &Digest)) {
        self.push_node(0, leaf, completed);
    }

    /// Pushes the root of a perfect subtree of `2^level` leaves that starts
    /// where the tree ends (the caller checks the boundary).
    fn push_node(
        &mut self,
        start_level: u8,
        root: Digest,
        mut completed: impl FnMut(u8, u64, &Digest),
    ) {
        let mut node = root;
        let mut size = self.size >> start_level;
        let mut level = start_level;
        // Like a binary counter: each trailing one bit merges two equal
        // perfect subtrees into one twice as large.
        while size & 1 == 1 {
            let left = self
                .nodes
                .pop()
                .expect("frontier has a node per set bit of its size");
            node = node_hash(&left, &node);
            size >>= 1;
            level += 1;
            completed(level, size, &node);
        }
        self.nodes.push(node);
        self.size += 1 << start_level;
        debug_assert_eq!(self.nodes.len(), self.size.count_ones() as usize);
    }

    /// Appends a perfect subtree of `2^level` leaves given its root; the
    /// tree's size must be a multiple of `2^level` (the subtree starts on
    /// its own boundary). Equivalent to pushing its leaves one by one.
    pub fn push_subtree(&mut self, level: u8, root: Digest) {
        assert!(
            level < 63 && self.size.trailing_zeros() >= u32::from(level),
            "a subtree of 2^{level} leaves cannot follow {} leaves",
            self.size
        );
        self.push_node(level, root, |_, _, _| {});
    }

    /// Appends an entry: its leaf is `H(0x00 ‖ entry_hash)`.
    pub fn push_entry(&mut self, entry_hash: &Digest) {
        self.push_leaf_hash(leaf_hash(&entry_hash.0));
    }

    /// The frontier nodes with their levels, largest subtree first.
    pub fn nodes(&self) -> impl Iterator<Item = (u8, &Digest)> {
        let size = self.size;
        (0..64u8)
            .rev()
            .filter(move |b| size >> b & 1 == 1)
            .zip(self.nodes.iter())
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

/// Interior nodes at levels that are multiples of this (and above 0) are kept
/// by the stores: one extra record per 15 entries, and any perfect subtree
/// root is at most `2^(STRIDE-1)` stored nodes (or leaves) away.
pub const STORED_LEVEL_STRIDE: u8 = 4;

/// Whether a completed node at `level` is kept by the stores.
pub fn is_stored_level(level: u8) -> bool {
    level > 0 && level.is_multiple_of(STORED_LEVEL_STRIDE)
}

/// Where proof generation gets the roots of perfect subtrees.
pub trait NodeSource {
    /// The error of the underlying storage.
    type Error;
    /// Root of the perfect subtree of `2^level` leaves starting at leaf
    /// `index * 2^level`; it must be complete in the tree.
    fn perfect(&mut self, level: u8, index: u64) -> Result<Digest, Self::Error>;
}

/// `MTH(D[start..start+len])` of a subtree whose left parts are aligned, as
/// every subtree met by the RFC algorithms is.
pub fn subtree_root<S: NodeSource>(src: &mut S, start: u64, len: u64) -> Result<Digest, S::Error> {
    debug_assert!(len > 0);
    if len.is_power_of_two() && start.is_multiple_of(len) {
        return src.perfect(len.trailing_zeros() as u8, start / len);
    }
    let k = largest_power_of_two_below(len);
    let left = subtree_root(src, start, k)?;
    let right = subtree_root(src, start + k, len - k)?;
    Ok(node_hash(&left, &right))
}

/// The audit path of leaf `index` in the tree of the first `size` leaves
/// (RFC 9162 §2.1.3.1), leaf side first. Requires `index < size`.
pub fn inclusion_proof<S: NodeSource>(
    src: &mut S,
    index: u64,
    size: u64,
) -> Result<Vec<Digest>, S::Error> {
    assert!(index < size, "leaf {index} is not in a tree of {size}");
    let mut path = Vec::new();
    path_rec(src, index, 0, size, &mut path)?;
    Ok(path)
}

fn path_rec<S: NodeSource>(
    src: &mut S,
    m: u64,
    start: u64,
    n: u64,
    out: &mut Vec<Digest>,
) -> Result<(), S::Error> {
    if n <= 1 {
        return Ok(());
    }
    let k = largest_power_of_two_below(n);
    if m < k {
        path_rec(src, m, start, k, out)?;
        out.push(subtree_root(src, start + k, n - k)?);
    } else {
        path_rec(src, m - k, start + k, n - k, out)?;
        out.push(subtree_root(src, start, k)?);
    }
    Ok(())
}

/// The consistency proof between the trees of the first `old` and `new`
/// leaves (RFC 9162 §2.1.4.1). Requires `0 < old <= new`.
pub fn consistency_proof<S: NodeSource>(
    src: &mut S,
    old: u64,
    new: u64,
) -> Result<Vec<Digest>, S::Error> {
    assert!(
        0 < old && old <= new,
        "no consistency proof from {old} to {new}"
    );
    let mut proof = Vec::new();
    if old < new {
        subproof_rec(src, old, 0, new, true, &mut proof)?;
    }
    Ok(proof)
}

fn subproof_rec<S: NodeSource>(
    src: &mut S,
    m: u64,
    start: u64,
    n: u64,
    whole: bool,
    out: &mut Vec<Digest>,
) -> Result<(), S::Error> {
    if m == n {
        if !whole {
            out.push(subtree_root(src, start, n)?);
        }
        return Ok(());
    }
    let k = largest_power_of_two_below(n);
    if m <= k {
        subproof_rec(src, m, start, k, whole, out)?;
        out.push(subtree_root(src, start + k, n - k)?);
    } else {
        subproof_rec(src, m - k, start + k, n - k, false, out)?;
        out.push(subtree_root(src, start, k)?);
    }
    Ok(())
}

/// Why a proof did not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProofError(pub String);

impl std::fmt::Display for ProofError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProofError {}

/// Verifies that `leaf` (a leaf hash) is leaf `index` of the tree of `size`
/// leaves with root `root` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    leaf: &Digest,
    index: u64,
    size: u64,
    proof: &[Digest],
    root: &Digest,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError(format!(
            "leaf index {index} is outside a tree of {size}"
        )));
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return Err(ProofError("the inclusion proof is too long".into()));
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError("the inclusion proof is too short".into()));
    }
    if r != *root {
        return Err(ProofError(format!(
            "the inclusion proof leads to root {r}, not {root}"
        )));
    }
    Ok(())
}

/// Verifies that the tree of `old` leaves with root `old_root` is a prefix
/// of the tree of `new` leaves with root `new_root` (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Digest,
    new_root: &Digest,
    proof: &[Digest],
) -> Result<(), ProofError> {
    if old > new {
        return Err(ProofError(format!(
            "the old size {old} is larger than the new size {new}"
        )));
    }
    if old == new {
        return if proof.is_empty() && old_root == new_root {
            Ok(())
        } else {
            Err(ProofError(format!(
                "two trees of size {old} with different roots {old_root} and {new_root}"
            )))
        };
    }
    if old == 0 {
        // The empty tree is a prefix of every tree.
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(ProofError(
                "a proof from the empty tree must be empty".into(),
            ))
        };
    }
    let mut path: Vec<Digest> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return Err(ProofError("the consistency proof is empty".into()));
    };
    let (mut fn_, mut sn) = (old - 1, new - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if sn == 0 {
            return Err(ProofError("the consistency proof is too long".into()));
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError("the consistency proof is too short".into()));
    }
    if fr != *old_root {
        return Err(ProofError(format!(
            "the proof does not lead to the old root {old_root} (got {fr}): history before size {old} changed"
        )));
    }
    if sr != *new_root {
        return Err(ProofError(format!(
            "the proof does not lead to the new root {new_root} (got {sr})"
        )));
    }
    Ok(())
}

/// A [`NodeSource`] over leaf hashes in memory: for tests and small inputs.
pub struct InMemoryLeaves<'a>(pub &'a [Digest]);

impl NodeSource for InMemoryLeaves<'_> {
    type Error = std::convert::Infallible;
    fn perfect(&mut self, level: u8, index: u64) -> Result<Digest, Self::Error> {
        let n = 1usize << level;
        let start = index as usize * n;
        Ok(root_of_leaf_hashes(&self.0[start..start + n]))
    }
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

    #[test]
    fn pushing_subtree_roots_equals_pushing_their_leaves() {
        let all = leaves(300);
        for level in 0u8..=5 {
            let k = 1usize << level;
            for whole in 0..=(300 / k) {
                // `whole` subtrees of 2^level leaves, then single leaves.
                let n = (whole * k + 3).min(300);
                let mut f = Frontier::new();
                for c in 0..whole {
                    f.push_subtree(level, root_of_leaf_hashes(&all[c * k..(c + 1) * k]));
                }
                for l in &all[whole * k..n] {
                    f.push_leaf_hash(*l);
                }
                assert_eq!(f.size(), n as u64);
                assert_eq!(
                    f.root(),
                    root_of_leaf_hashes(&all[..n]),
                    "level {level}, {n}"
                );
            }
        }
    }

    #[test]
    #[should_panic(expected = "cannot follow")]
    fn a_subtree_off_its_boundary_is_refused() {
        let mut f = Frontier::new();
        f.push_leaf_hash(leaf_hash(b"x"));
        f.push_subtree(1, leaf_hash(b"y"));
    }

    fn leaves(n: u32) -> Vec<Digest> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    #[test]
    fn every_inclusion_proof_verifies_and_any_change_fails() {
        let all = leaves(70);
        for size in 1..=70u64 {
            let tree = &all[..size as usize];
            let root = root_of_leaf_hashes(tree);
            for index in 0..size {
                let proof = inclusion_proof(&mut InMemoryLeaves(tree), index, size).unwrap();
                assert!(proof.len() <= 64 - (size - 1).leading_zeros() as usize + 1);
                verify_inclusion(&tree[index as usize], index, size, &proof, &root).unwrap();
                // Wrong leaf, wrong index, wrong root, altered or cut proof.
                let other = leaf_hash(b"x");
                assert!(verify_inclusion(&other, index, size, &proof, &root).is_err());
                if size > 1 {
                    let wrong = (index + 1) % size;
                    assert!(
                        verify_inclusion(&tree[index as usize], wrong, size, &proof, &root)
                            .is_err()
                    );
                    let mut bad = proof.clone();
                    bad[0].0[0] ^= 1;
                    assert!(
                        verify_inclusion(&tree[index as usize], index, size, &bad, &root).is_err()
                    );
                    assert!(
                        verify_inclusion(&tree[index as usize], index, size, &proof[1..], &root)
                            .is_err()
                    );
                }
                assert!(
                    verify_inclusion(&tree[index as usize], index, size, &proof, &leaf_hash(b"r"))
                        .is_err()
                );
            }
        }
    }

    #[test]
    fn every_consistency_proof_verifies_and_rewritten_history_fails() {
        let all = leaves(50);
        for new in 1..=50u64 {
            let new_root = root_of_leaf_hashes(&all[..new as usize]);
            for old in 1..=new {
                let old_root = root_of_leaf_hashes(&all[..old as usize]);
                let proof =
                    consistency_proof(&mut InMemoryLeaves(&all[..new as usize]), old, new).unwrap();
                verify_consistency(old, new, &old_root, &new_root, &proof).unwrap();
                // A different old history (leaf 0 rewritten) is detected.
                let mut forged = all[..old as usize].to_vec();
                forged[0] = leaf_hash(b"rewritten");
                let forged_root = root_of_leaf_hashes(&forged);
                assert!(
                    verify_consistency(old, new, &forged_root, &new_root, &proof).is_err(),
                    "{old}->{new}"
                );
                if !proof.is_empty() {
                    let mut bad = proof.clone();
                    let last = bad.len() - 1;
                    bad[last].0[5] ^= 1;
                    assert!(verify_consistency(old, new, &old_root, &new_root, &bad).is_err());
                }
            }
        }
    }

    #[test]
    fn consistency_between_the_rfc6962_reference_roots() {
        let data = rfc6962_leaves();
        let all: Vec<Digest> = data.iter().map(|d| leaf_hash(d)).collect();
        for new in 1..=8u64 {
            for old in 1..=new {
                let proof =
                    consistency_proof(&mut InMemoryLeaves(&all[..new as usize]), old, new).unwrap();
                let old_root = Digest::from_hex(RFC6962_ROOTS[old as usize - 1]).unwrap();
                let new_root = Digest::from_hex(RFC6962_ROOTS[new as usize - 1]).unwrap();
                verify_consistency(old, new, &old_root, &new_root, &proof).unwrap();
            }
        }
    }

    #[test]
    fn completed_nodes_are_the_perfect_subtree_roots() {
        let all = leaves(64);
        let mut f = Frontier::new();
        let mut seen = Vec::new();
        for l in &all {
            f.push_leaf_hash_with(*l, |level, index, d| seen.push((level, index, *d)));
        }
        assert_eq!(seen.len(), 63);
        for (level, index, d) in seen {
            assert_eq!(InMemoryLeaves(&all).perfect(level, index).unwrap(), d);
        }
        let levels: Vec<u8> = f.nodes().map(|(l, _)| l).collect();
        assert_eq!(levels, vec![6]);
    }
}
