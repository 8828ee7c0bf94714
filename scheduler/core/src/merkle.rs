//! The decision log's Merkle tree, in the form of RFC 9162 (Certificate
//! Transparency 2.0), section 2.1: SHA-256, leaves hashed with a 0x00
//! prefix, interior nodes with 0x01, and the tree over `n` leaves split at
//! the largest power of two smaller than `n`.
//!
//! The replicated state keeps only a `Frontier` (the roots of the perfect
//! subtrees that make up the tree, O(log n) hashes), which is enough to
//! append and to compute the root; the leaves themselves live in each
//! replica's journal. Proofs are computed over leaf hashes (by whoever
//! holds the journal) and verified with the root alone.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// `MTH({d(0)}) = SHA-256(0x00 || d(0))`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The hash of the empty tree: `SHA-256()`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The perfect subtrees covering the leaves so far, largest (leftmost)
/// first: one per set bit of `size`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frontier {
    size: u64,
    #[serde(with = "hashes_hex")]
    roots: Vec<Hash>,
}

impl Frontier {
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf (its leaf hash).
    pub fn push(&mut self, leaf: Hash) {
        let mut node = leaf;
        // Each trailing 1 bit of the old size is a subtree of the same
        // height as the one being carried: merge them.
        let mut size = self.size;
        while size & 1 == 1 {
            let left = self.roots.pop().expect("one root per set bit");
            node = node_hash(&left, &node);
            size >>= 1;
        }
        self.roots.push(node);
        self.size += 1;
    }

    /// The tree head: the subtree roots folded right to left.
    pub fn root(&self) -> Hash {
        let mut iter = self.roots.iter().rev();
        match iter.next() {
            None => empty_root(),
            Some(last) => iter.fold(*last, |acc, left| node_hash(left, &acc)),
        }
    }
}

/// The largest power of two strictly smaller than `n` (n >= 2).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// `MTH(D[n])` over leaf hashes.
pub fn root_of(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root_of(&leaves[..k]), &root_of(&leaves[k..]))
        }
    }
}

/// The audit path of leaf `index` (RFC 9162 2.1.3.1), leaf hashes given.
pub fn inclusion_proof(leaves: &[Hash], index: usize) -> Vec<Hash> {
    let n = leaves.len();
    if n <= 1 || index >= n {
        return Vec::new();
    }
    let k = split(n);
    if index < k {
        let mut p = inclusion_proof(&leaves[..k], index);
        p.push(root_of(&leaves[k..]));
        p
    } else {
        let mut p = inclusion_proof(&leaves[k..], index - k);
        p.push(root_of(&leaves[..k]));
        p
    }
}

/// Verifies an inclusion proof (RFC 9162 2.1.3.2).
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
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

/// The consistency proof from the first `m` leaves to all of them
/// (RFC 9162 2.1.4.1).
pub fn consistency_proof(leaves: &[Hash], m: usize) -> Vec<Hash> {
    if m == 0 || m >= leaves.len() {
        return Vec::new();
    }
    subproof(m, leaves, true)
}

fn subproof(m: usize, leaves: &[Hash], complete: bool) -> Vec<Hash> {
    let n = leaves.len();
    if m == n {
        return if complete {
            Vec::new()
        } else {
            vec![root_of(leaves)]
        };
    }
    let k = split(n);
    if m <= k {
        let mut p = subproof(m, &leaves[..k], complete);
        p.push(root_of(&leaves[k..]));
        p
    } else {
        let mut p = subproof(m - k, &leaves[k..], false);
        p.push(root_of(&leaves[..k]));
        p
    }
}

/// Verifies that the tree of size `m` with root `old` is a prefix of the
/// tree of size `n` with root `new` (RFC 9162 2.1.4.2).
pub fn verify_consistency(m: u64, n: u64, old: &Hash, new: &Hash, proof: &[Hash]) -> bool {
    if m > n {
        return false;
    }
    if m == n {
        return proof.is_empty() && old == new;
    }
    if m == 0 {
        return proof.is_empty();
    }
    let mut proof = proof.to_vec();
    if m.is_power_of_two() {
        proof.insert(0, *old);
    }
    let Some((first, rest)) = proof.split_first() else {
        return false;
    };
    let (mut fnode, mut snode) = (m - 1, n - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
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
    snode == 0 && fr == *old && sr == *new
}

mod hashes_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[super::Hash], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(hex::encode))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<super::Hash>, D::Error> {
        let texts = Vec::<String>::deserialize(d)?;
        texts
            .iter()
            .map(|t| {
                let bytes = hex::decode(t).map_err(serde::de::Error::custom)?;
                bytes
                    .try_into()
                    .map_err(|_| serde::de::Error::custom("a hash is 32 bytes"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The leaves of the test vectors of the Certificate Transparency
    /// reference implementation (also used by RFC 9162's implementations).
    fn vector_leaves() -> Vec<Hash> {
        let data: [&[u8]; 8] = [
            b"",
            b"\x00",
            b"\x10",
            b"\x20\x21",
            b"\x30\x31",
            b"\x40\x41\x42\x43",
            b"\x50\x51\x52\x53\x54\x55\x56\x57",
            b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
        ];
        data.iter().map(|d| leaf_hash(d)).collect()
    }

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

    #[test]
    fn roots_match_the_test_vectors_by_both_ways_of_computing_them() {
        let leaves = vector_leaves();
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut f = Frontier::default();
        for (i, leaf) in leaves.iter().enumerate() {
            f.push(*leaf);
            assert_eq!(hex::encode(f.root()), ROOTS[i], "size {}", i + 1);
            assert_eq!(hex::encode(root_of(&leaves[..=i])), ROOTS[i]);
        }
    }

    #[test]
    fn inclusion_proofs_verify_and_fail_when_anything_changes() {
        let leaves = vector_leaves();
        for n in 1..=leaves.len() {
            let root = root_of(&leaves[..n]);
            for i in 0..n {
                let p = inclusion_proof(&leaves[..n], i);
                assert!(verify_inclusion(&leaves[i], i as u64, n as u64, &p, &root));
                // Another leaf, another index, another size: refused.
                let other = leaves[(i + 1) % n];
                if other != leaves[i] {
                    assert!(!verify_inclusion(&other, i as u64, n as u64, &p, &root));
                }
                if n > 1 {
                    let j = (i + 1) % n;
                    assert!(!verify_inclusion(&leaves[i], j as u64, n as u64, &p, &root));
                }
                // The path for size n does not prove the leaf in the tree
                // of size n + 1 (whose root differs).
                if n < leaves.len() {
                    let bigger = root_of(&leaves[..=n]);
                    assert!(!verify_inclusion(
                        &leaves[i],
                        i as u64,
                        n as u64 + 1,
                        &p,
                        &bigger
                    ));
                }
            }
        }
        // RFC 9162 example: leaf 0 of 8 is proven by 3 hashes.
        assert_eq!(inclusion_proof(&leaves, 0).len(), 3);
    }

    #[test]
    fn consistency_proofs_verify_and_catch_a_rewritten_history() {
        let leaves = vector_leaves();
        for n in 1..=leaves.len() {
            let new = root_of(&leaves[..n]);
            for m in 1..=n {
                let old = root_of(&leaves[..m]);
                let p = consistency_proof(&leaves[..n], m);
                assert!(
                    verify_consistency(m as u64, n as u64, &old, &new, &p),
                    "{m} -> {n}"
                );
                if m < n {
                    // A history that changed leaf 0 is caught.
                    let mut forged = leaves[..m].to_vec();
                    forged[0] = leaf_hash(b"rewritten");
                    let forged_old = root_of(&forged);
                    assert!(!verify_consistency(
                        m as u64,
                        n as u64,
                        &forged_old,
                        &new,
                        &p
                    ));
                }
            }
        }
        // The proof sizes of RFC 9162's worked example (tree of 7 leaves).
        assert_eq!(consistency_proof(&leaves[..7], 3).len(), 4);
        assert_eq!(consistency_proof(&leaves[..7], 4).len(), 1);
        assert_eq!(consistency_proof(&leaves[..7], 6).len(), 3);
    }

    #[test]
    fn a_frontier_round_trips_through_serde() {
        let mut f = Frontier::default();
        for leaf in vector_leaves().iter().take(5) {
            f.push(*leaf);
        }
        let json = serde_json::to_string(&f).unwrap();
        let back: Frontier = serde_json::from_str(&json).unwrap();
        assert_eq!(back, f);
        assert_eq!(back.root(), f.root());
    }
}
