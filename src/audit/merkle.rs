//! The RFC 6962 / RFC 9162 Merkle tree over receipts.
//!
//! Leaf hash `SHA-256(0x00 || leaf)`, node hash `SHA-256(0x01 || left ||
//! right)` (RFC 9162 section 2.1.1), the tree head over `n` leaves split at
//! the largest power of two below `n`. Proof generation follows RFC 6962
//! section 2.1.1 (`PATH`) and 2.1.2 (`PROOF`/`SUBPROOF`); verification follows
//! RFC 9162 sections 2.1.3.2 and 2.1.4.2, bit for bit, so that any RFC 9162
//! verifier accepts our proofs and ours rejects what theirs would.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(leaf);
    h.finalize().into()
}

pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The hash of an empty tree: SHA-256 of the empty string.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Largest power of two strictly smaller than `n` (n >= 2).
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// An append-only tree that keeps every complete subtree's hash, so heads
/// and proofs for any size up to its own cost O(log n) hashes.
#[derive(Debug, Clone, Default)]
pub struct MerkleTree {
    // INVARIANT: levels[i][j] is the hash of leaves [j*2^i, (j+1)*2^i), and
    // levels[i].len() == levels[0].len() >> i.
    levels: Vec<Vec<Hash>>,
}

impl MerkleTree {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn push(&mut self, leaf_hash: Hash) {
        if self.levels.is_empty() {
            self.levels.push(Vec::new());
        }
        self.levels[0].push(leaf_hash);
        let mut level = 0;
        while self.levels[level].len().is_multiple_of(2) {
            let n = self.levels[level].len();
            let parent = node_hash(&self.levels[level][n - 2], &self.levels[level][n - 1]);
            if self.levels.len() == level + 1 {
                self.levels.push(Vec::new());
            }
            self.levels[level + 1].push(parent);
            level += 1;
        }
    }

    /// Drops leaves past `size` (used to undo a batch that did not commit).
    pub fn truncate(&mut self, size: u64) {
        for (i, level) in self.levels.iter_mut().enumerate() {
            level.truncate((size >> i) as usize);
        }
    }

    pub fn leaf(&self, index: u64) -> Option<Hash> {
        self.levels
            .first()?
            .get(usize::try_from(index).ok()?)
            .copied()
    }

    /// MTH(D[lo:hi]); callers guarantee lo < hi <= len.
    fn range_hash(&self, lo: u64, hi: u64) -> Hash {
        let n = hi - lo;
        if n.is_power_of_two() && lo.is_multiple_of(n) {
            let level = n.trailing_zeros() as usize;
            return self.levels[level][(lo >> level) as usize];
        }
        let k = split_point(n);
        node_hash(&self.range_hash(lo, lo + k), &self.range_hash(lo + k, hi))
    }

    /// The tree head over the first `size` leaves.
    pub fn root(&self, size: u64) -> Option<Hash> {
        match size {
            0 => Some(empty_root()),
            s if s <= self.len() => Some(self.range_hash(0, s)),
            _ => None,
        }
    }

    /// RFC 6962 section 2.1.1: the audit path for leaf `index` in the tree
    /// of the first `size` leaves.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Option<Vec<Hash>> {
        if index >= size || size > self.len() {
            return None;
        }
        let mut proof = Vec::new();
        self.path(index, 0, size, &mut proof);
        Some(proof)
    }

    fn path(&self, m: u64, lo: u64, hi: u64, out: &mut Vec<Hash>) {
        let n = hi - lo;
        if n == 1 {
            return;
        }
        let k = split_point(n);
        if m < k {
            self.path(m, lo, lo + k, out);
            out.push(self.range_hash(lo + k, hi));
        } else {
            self.path(m - k, lo + k, hi, out);
            out.push(self.range_hash(lo, lo + k));
        }
    }

    /// RFC 6962 section 2.1.2: proof that the tree of `old` leaves is a
    /// prefix of the tree of `new` leaves.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Option<Vec<Hash>> {
        if old > new || new > self.len() {
            return None;
        }
        let mut proof = Vec::new();
        if old > 0 && old < new {
            self.subproof(old, 0, new, true, &mut proof);
        }
        Some(proof)
    }

    fn subproof(&self, m: u64, lo: u64, hi: u64, complete: bool, out: &mut Vec<Hash>) {
        let n = hi - lo;
        if m == n {
            if !complete {
                out.push(self.range_hash(lo, hi));
            }
            return;
        }
        let k = split_point(n);
        if m <= k {
            self.subproof(m, lo, lo + k, complete, out);
            out.push(self.range_hash(lo + k, hi));
        } else {
            self.subproof(m - k, lo + k, hi, false, out);
            out.push(self.range_hash(lo, lo + k));
        }
    }
}

/// RFC 9162 section 2.1.3.2: does `proof` show `leaf_hash` at `index` in the
/// tree of `size` leaves with head `root`?
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf_hash: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> bool {
    if index >= size {
        return false;
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf_hash;
    for p in proof {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && r == *root
}

/// RFC 9162 section 2.1.4.2: does `proof` show the tree of `old` leaves
/// (head `old_root`) is a prefix of the tree of `new` leaves (head `new_root`)?
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old > new {
        return false;
    }
    if old == new {
        return proof.is_empty() && old_root == new_root;
    }
    if old == 0 {
        return proof.is_empty();
    }
    if proof.is_empty() {
        return false;
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let (mut fnode, mut snode) = (old - 1, new - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && fr == *old_root && sr == *new_root
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(hex_str: &str) -> Hash {
        hex::decode(hex_str)
            .expect("hex")
            .try_into()
            .expect("32 bytes")
    }

    // Known answers from transparency-dev/merkle, proof/verify_test.go at
    // commit 02194e9afb6c1d95b5381350007963aa70fff472 (the RFC 6962 test
    // vectors Certificate Transparency implementations share).
    const LEAVES: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn vector_tree() -> MerkleTree {
        let mut t = MerkleTree::new();
        for leaf in LEAVES {
            t.push(leaf_hash(&hex::decode(leaf).expect("hex")));
        }
        t
    }

    #[test]
    fn known_answer_roots() {
        let t = vector_tree();
        assert_eq!(
            t.root(0),
            Some(h(
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            ))
        );
        for (i, root) in ROOTS.iter().enumerate() {
            assert_eq!(t.root(i as u64 + 1), Some(h(root)), "size {}", i + 1);
        }
    }

    #[test]
    fn known_answer_proofs() {
        let t = vector_tree();
        // (1-based leaf, size, proof)
        let inclusion: [(u64, u64, &[&str]); 4] = [
            (
                1,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                &[
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                3,
                3,
                &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
            ),
            (
                2,
                5,
                &[
                    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        for (leaf, size, want) in inclusion {
            let want: Vec<Hash> = want.iter().map(|x| h(x)).collect();
            assert_eq!(
                t.inclusion_proof(leaf - 1, size),
                Some(want.clone()),
                "inclusion {leaf}/{size}"
            );
            let root = t.root(size).expect("root");
            let lh = t.leaf(leaf - 1).expect("leaf");
            assert!(verify_inclusion(leaf - 1, size, &lh, &want, &root));
        }
        let consistency: [(u64, u64, &[&str]); 4] = [
            (
                1,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                5,
                &[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
            (
                6,
                7,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
        ];
        for (old, new, want) in consistency {
            let want: Vec<Hash> = want.iter().map(|x| h(x)).collect();
            assert_eq!(
                t.consistency_proof(old, new),
                Some(want.clone()),
                "consistency {old}->{new}"
            );
            let (r1, r2) = (t.root(old).expect("r"), t.root(new).expect("r"));
            assert!(verify_consistency(old, new, &r1, &r2, &want));
        }
    }

    #[test]
    fn honest_proofs_pass_and_tampered_ones_fail_across_sizes() {
        let mut t = MerkleTree::new();
        for i in 0u32..70 {
            t.push(leaf_hash(&i.to_be_bytes()));
        }
        let bogus = leaf_hash(b"bogus");
        for size in 1..=70u64 {
            let root = t.root(size).expect("root");
            for index in 0..size {
                let leaf = t.leaf(index).expect("leaf");
                let proof = t.inclusion_proof(index, size).expect("proof");
                assert!(
                    verify_inclusion(index, size, &leaf, &proof, &root),
                    "{index}/{size}"
                );
                assert!(!verify_inclusion(index, size, &bogus, &proof, &root));
                assert!(
                    !verify_inclusion(index ^ 1, size, &leaf, &proof, &root) || index ^ 1 == index
                );
                assert!(!verify_inclusion(index, size * 2, &leaf, &proof, &root) || size == 0);
                for i in 0..proof.len() {
                    let mut bad = proof.clone();
                    bad[i][0] ^= 8;
                    assert!(!verify_inclusion(index, size, &leaf, &bad, &root));
                }
                let mut longer = proof.clone();
                longer.push(root);
                assert!(!verify_inclusion(index, size, &leaf, &longer, &root));
                if !proof.is_empty() {
                    assert!(!verify_inclusion(
                        index,
                        size,
                        &leaf,
                        &proof[..proof.len() - 1],
                        &root
                    ));
                }
            }
            for old in 1..=size {
                let r1 = t.root(old).expect("r");
                let proof = t.consistency_proof(old, size).expect("proof");
                assert!(
                    verify_consistency(old, size, &r1, &root, &proof),
                    "{old}->{size}"
                );
                if old < size {
                    assert!(
                        !verify_consistency(old, size, &root, &r1, &proof),
                        "swapped {old}->{size}"
                    );
                    assert!(!verify_consistency(old, size, &r1, &bogus, &proof));
                    for i in 0..proof.len() {
                        let mut bad = proof.clone();
                        bad[i][0] ^= 16;
                        assert!(!verify_consistency(old, size, &r1, &root, &bad));
                    }
                    assert!(!verify_consistency(old, size, &r1, &root, &[]));
                    let mut longer = proof.clone();
                    longer.push(root);
                    assert!(!verify_consistency(old, size, &r1, &root, &longer));
                }
            }
        }
    }

    #[test]
    fn truncate_restores_an_earlier_tree() {
        let mut t = MerkleTree::new();
        for i in 0u32..13 {
            t.push(leaf_hash(&i.to_be_bytes()));
        }
        let root9 = t.root(9).expect("r");
        t.truncate(9);
        assert_eq!(t.len(), 9);
        assert_eq!(t.root(9), Some(root9));
        t.push(leaf_hash(b"x"));
        assert_ne!(t.root(10), None);
    }
}
