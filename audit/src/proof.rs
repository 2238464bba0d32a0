//! Inclusion and consistency proofs: generation as defined in RFC 6962 section 2.1.1
//! (PATH) and 2.1.2 (PROOF), verification as specified in RFC 9162 sections 2.1.3.2 and
//! 2.1.4.2.
//!
//! Verification never panics and never trusts sizes from the proof's producer: a proof
//! that is too long, too short or for impossible sizes is an [`Error::InvalidProof`].

use std::cell::RefCell;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::hash::{Hash, empty_root, node_hash};
use crate::tree::{CompactRange, NodeId, decompose, fold_right};

/// Longest path any proof can have: one hash per level of a 2^64-leaf tree, plus the
/// extra hash a consistency proof may carry.
pub const MAX_PROOF_LEN: usize = 65;

/// Where proof generation reads hashes from: the in-memory tree, or a database.
///
/// Implementations only need [`LeafHashSource::leaf_hash`]; the default
/// [`LeafHashSource::subtree_hash`] folds leaves and costs O(end - start). A store that
/// keeps completed node hashes (see [`crate::NodeId`]) should override it to make every
/// proof O(log n) reads.
pub trait LeafHashSource {
    /// Number of leaves the source holds.
    fn size(&self) -> u64;

    /// Hash of leaf `index`.
    fn leaf_hash(&self, index: u64) -> Result<Hash, Error>;

    /// RFC 6962 MTH of leaves `[start, end)`.
    ///
    /// Called only with `start < end <= size` and `start` a multiple of a power of two
    /// at least `end - start`: the subtrees that PATH and PROOF visit.
    fn subtree_hash(&self, start: u64, end: u64) -> Result<Hash, Error> {
        let mut cr = CompactRange::new();
        for i in start..end {
            cr.push(self.leaf_hash(i)?);
        }
        Ok(cr.root())
    }
}

/// Proof that one leaf is in a tree of a given size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProof {
    /// The leaf's index (the entry's sequence number).
    pub leaf_index: u64,
    /// Size of the tree the proof is for.
    pub tree_size: u64,
    /// Sibling hashes from the leaf up to the root.
    pub path: Vec<Hash>,
}

/// Proof that a tree of `old_size` leaves is a prefix of a tree of `new_size` leaves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyProof {
    /// Size of the older tree.
    pub old_size: u64,
    /// Size of the newer tree.
    pub new_size: u64,
    /// Node hashes as produced by RFC 6962 PROOF.
    pub path: Vec<Hash>,
}

/// Largest power of two strictly below `n`; `n` must be at least 2.
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// RFC 6962 `PATH(m, D[n])` for leaf `index` in the tree of the first `size` leaves.
pub fn inclusion_proof<S: LeafHashSource + ?Sized>(
    src: &S,
    index: u64,
    size: u64,
) -> Result<InclusionProof, Error> {
    if index >= size || size > src.size() {
        return Err(Error::IndexOutOfRange {
            index,
            size: size.min(src.size()),
        });
    }
    let mut path = Vec::new();
    // Walk down from the root, then reverse: PATH lists siblings bottom-up.
    let (mut lo, mut hi) = (0u64, size);
    while hi - lo > 1 {
        let k = split(hi - lo);
        if index < lo + k {
            path.push(src.subtree_hash(lo + k, hi)?);
            hi = lo + k;
        } else {
            path.push(src.subtree_hash(lo, lo + k)?);
            lo += k;
        }
    }
    path.reverse();
    Ok(InclusionProof {
        leaf_index: index,
        tree_size: size,
        path,
    })
}

/// RFC 6962 `PROOF(m, D[n])` between the trees of the first `old_size` and `new_size`
/// leaves.
pub fn consistency_proof<S: LeafHashSource + ?Sized>(
    src: &S,
    old_size: u64,
    new_size: u64,
) -> Result<ConsistencyProof, Error> {
    if old_size > new_size || new_size > src.size() {
        return Err(Error::IndexOutOfRange {
            index: old_size.max(new_size),
            size: src.size(),
        });
    }
    let mut path = Vec::new();
    if old_size > 0 && old_size < new_size {
        // SUBPROOF(m, D[lo:hi], complete), unrolled; `complete` says whether D[lo:m]
        // is a subtree the verifier already knows (its old root), in which case its
        // hash is left out.
        let (mut lo, mut hi, mut m, mut complete) = (0u64, new_size, old_size, true);
        loop {
            let n = hi - lo;
            if m == n {
                if !complete {
                    path.push(src.subtree_hash(lo, hi)?);
                }
                break;
            }
            let k = split(n);
            if m <= k {
                path.push(src.subtree_hash(lo + k, hi)?);
                hi = lo + k;
            } else {
                path.push(src.subtree_hash(lo, lo + k)?);
                lo += k;
                m -= k;
                complete = false;
            }
        }
        path.reverse();
    }
    Ok(ConsistencyProof {
        old_size,
        new_size,
        path,
    })
}

/// Recomputes the root from a leaf hash and its inclusion path (RFC 9162 2.1.3.2).
pub fn root_from_inclusion_proof(
    index: u64,
    size: u64,
    leaf: &Hash,
    path: &[Hash],
) -> Result<Hash, Error> {
    if index >= size {
        return Err(Error::InvalidProof("leaf index is not below the tree size"));
    }
    if path.len() > MAX_PROOF_LEN {
        return Err(Error::InvalidProof("inclusion path is too long"));
    }
    let (mut f_n, mut s_n) = (index, size - 1);
    let mut r = *leaf;
    for p in path {
        if s_n == 0 {
            return Err(Error::InvalidProof("inclusion path is too long"));
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return Err(Error::InvalidProof("inclusion path is too short"));
    }
    Ok(r)
}

/// Checks that `leaf` is at `index` in the tree of `size` leaves with root `root`.
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf: &Hash,
    path: &[Hash],
    root: &Hash,
) -> Result<(), Error> {
    let got = root_from_inclusion_proof(index, size, leaf, path)?;
    if got != *root {
        return Err(Error::InvalidProof(
            "inclusion path does not lead to the root",
        ));
    }
    Ok(())
}

/// Checks that the tree of `old_size` leaves with root `old_root` is a prefix of the
/// tree of `new_size` leaves with root `new_root` (RFC 9162 2.1.4.2, plus the trivial
/// cases it leaves to the caller: equal sizes need equal roots and an empty proof, and
/// the empty tree needs the empty root and an empty proof).
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    path: &[Hash],
) -> Result<(), Error> {
    if old_size > new_size {
        return Err(Error::InvalidProof("old tree is larger than the new tree"));
    }
    if path.len() > MAX_PROOF_LEN {
        return Err(Error::InvalidProof("consistency path is too long"));
    }
    if old_size == new_size {
        if !path.is_empty() {
            return Err(Error::InvalidProof("equal sizes need an empty proof"));
        }
        if old_root != new_root {
            return Err(Error::InvalidProof("equal sizes but different roots"));
        }
        return Ok(());
    }
    if old_size == 0 {
        if !path.is_empty() {
            return Err(Error::InvalidProof(
                "a proof from the empty tree must be empty",
            ));
        }
        if *old_root != empty_root() {
            return Err(Error::InvalidProof("old root is not the empty tree's root"));
        }
        return Ok(());
    }
    if path.is_empty() {
        return Err(Error::InvalidProof("consistency path is empty"));
    }
    // If the old tree is complete its root is the first node of the path, which the
    // proof leaves out because the verifier has it.
    let mut nodes: Vec<Hash> = Vec::with_capacity(path.len() + 1);
    if old_size.is_power_of_two() {
        nodes.push(*old_root);
    }
    nodes.extend_from_slice(path);
    let (mut f_n, mut s_n) = (old_size - 1, new_size - 1);
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let (mut fr, mut sr) = (nodes[0], nodes[0]);
    for c in &nodes[1..] {
        if s_n == 0 {
            return Err(Error::InvalidProof("consistency path is too long"));
        }
        if f_n & 1 == 1 || f_n == s_n {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return Err(Error::InvalidProof("consistency path is too short"));
    }
    if fr != *old_root {
        return Err(Error::InvalidProof("proof does not lead to the old root"));
    }
    if sr != *new_root {
        return Err(Error::InvalidProof("proof does not lead to the new root"));
    }
    Ok(())
}

/// A source that answers from a map of completed nodes, for stores that cannot be
/// read synchronously: fetch [`inclusion_proof_nodes`] / [`consistency_proof_nodes`]
/// from the database first, put them here, then generate the proof.
#[derive(Clone, Debug, Default)]
pub struct NodeMap {
    size: u64,
    nodes: HashMap<NodeId, Hash>,
}

impl NodeMap {
    /// An empty map for a log of `size` leaves.
    pub fn new(size: u64) -> Self {
        Self {
            size,
            nodes: HashMap::new(),
        }
    }

    /// Adds a node hash.
    pub fn insert(&mut self, id: NodeId, hash: Hash) {
        self.nodes.insert(id, hash);
    }

    /// Number of nodes held.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Whether the map has a node.
    pub fn contains(&self, id: &NodeId) -> bool {
        self.nodes.contains_key(id)
    }
}

impl LeafHashSource for NodeMap {
    fn size(&self) -> u64 {
        self.size
    }

    fn leaf_hash(&self, index: u64) -> Result<Hash, Error> {
        self.subtree_hash(index, index + 1)
    }

    fn subtree_hash(&self, start: u64, end: u64) -> Result<Hash, Error> {
        let mut hashes = Vec::with_capacity(8);
        for id in decompose(start, end) {
            hashes.push(
                *self
                    .nodes
                    .get(&id)
                    .ok_or(Error::Unreachable("node missing from prefetched map"))?,
            );
        }
        fold_right(&hashes).ok_or(Error::Unreachable("empty range"))
    }
}

/// Records which subtrees a proof asks for, without knowing any hash: proof shapes
/// depend only on sizes and indices.
struct Recorder {
    size: u64,
    ids: RefCell<Vec<NodeId>>,
}

impl LeafHashSource for Recorder {
    fn size(&self) -> u64 {
        self.size
    }
    fn leaf_hash(&self, index: u64) -> Result<Hash, Error> {
        self.subtree_hash(index, index + 1)
    }
    fn subtree_hash(&self, start: u64, end: u64) -> Result<Hash, Error> {
        self.ids.borrow_mut().extend(decompose(start, end));
        Ok(Hash([0; 32]))
    }
}

/// The completed nodes [`inclusion_proof`] reads for leaf `index` in a tree of `size`.
pub fn inclusion_proof_nodes(index: u64, size: u64) -> Result<Vec<NodeId>, Error> {
    let r = Recorder {
        size,
        ids: RefCell::new(Vec::new()),
    };
    inclusion_proof(&r, index, size)?;
    Ok(r.ids.into_inner())
}

/// The completed nodes [`consistency_proof`] reads between `old_size` and `new_size`.
pub fn consistency_proof_nodes(old_size: u64, new_size: u64) -> Result<Vec<NodeId>, Error> {
    let r = Recorder {
        size: new_size,
        ids: RefCell::new(Vec::new()),
    };
    consistency_proof(&r, old_size, new_size)?;
    Ok(r.ids.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::leaf_hash;
    use crate::tree::MemoryTree;

    /// A source that only knows leaves, to exercise the default `subtree_hash`.
    struct Leaves(Vec<Hash>);
    impl LeafHashSource for Leaves {
        fn size(&self) -> u64 {
            self.0.len() as u64
        }
        fn leaf_hash(&self, index: u64) -> Result<Hash, Error> {
            self.0
                .get(index as usize)
                .copied()
                .ok_or(Error::IndexOutOfRange {
                    index,
                    size: self.size(),
                })
        }
    }

    fn trees(n: u32) -> (MemoryTree, Leaves, Vec<Hash>) {
        let mut t = MemoryTree::new();
        let mut leaves = Vec::new();
        let mut roots = vec![empty_root()];
        for i in 0..n {
            let l = leaf_hash(&i.to_le_bytes());
            t.push(l);
            leaves.push(l);
            roots.push(t.root());
        }
        (t, Leaves(leaves), roots)
    }

    #[test]
    fn every_inclusion_proof_verifies_and_sources_agree() {
        let (t, leaves, roots) = trees(40);
        for size in 1..=40u64 {
            for index in 0..size {
                let p = inclusion_proof(&t, index, size).unwrap();
                assert_eq!(p, inclusion_proof(&leaves, index, size).unwrap());
                let leaf = leaves.0[index as usize];
                verify_inclusion(index, size, &leaf, &p.path, &roots[size as usize]).unwrap();
                // Any other index or size must fail.
                if size > 1 {
                    let other = (index + 1) % size;
                    assert!(
                        verify_inclusion(other, size, &leaf, &p.path, &roots[size as usize])
                            .is_err()
                    );
                }
                // The next tree's root needs a different path (the old path can still
                // lead to the old root at size + 1, so compare with the new root).
                if size < 40 {
                    let next = &roots[size as usize + 1];
                    assert!(verify_inclusion(index, size + 1, &leaf, &p.path, next).is_err());
                }
            }
        }
    }

    #[test]
    fn every_consistency_proof_verifies() {
        let (t, leaves, roots) = trees(40);
        for new in 0..=40u64 {
            for old in 0..=new {
                let p = consistency_proof(&t, old, new).unwrap();
                assert_eq!(p, consistency_proof(&leaves, old, new).unwrap());
                verify_consistency(
                    old,
                    new,
                    &roots[old as usize],
                    &roots[new as usize],
                    &p.path,
                )
                .unwrap();
                if old > 0 && old < new {
                    let mut bad = p.path.clone();
                    bad[0].0[0] ^= 1;
                    assert!(
                        verify_consistency(
                            old,
                            new,
                            &roots[old as usize],
                            &roots[new as usize],
                            &bad
                        )
                        .is_err()
                    );
                }
            }
        }
    }

    #[test]
    fn prefetched_node_maps_give_the_same_proofs() {
        let (t, _, _) = trees(37);
        for size in 1..=37u64 {
            for index in 0..size {
                let mut m = NodeMap::new(size);
                for id in inclusion_proof_nodes(index, size).unwrap() {
                    m.insert(id, t.node(id).unwrap());
                }
                assert_eq!(
                    inclusion_proof(&m, index, size).unwrap(),
                    inclusion_proof(&t, index, size).unwrap()
                );
            }
            for old in 0..=size {
                let mut m = NodeMap::new(size);
                for id in consistency_proof_nodes(old, size).unwrap() {
                    m.insert(id, t.node(id).unwrap());
                }
                assert_eq!(
                    consistency_proof(&m, old, size).unwrap(),
                    consistency_proof(&t, old, size).unwrap()
                );
            }
        }
    }

    #[test]
    fn out_of_range_requests_are_errors() {
        let (t, _, _) = trees(5);
        assert!(inclusion_proof(&t, 5, 5).is_err());
        assert!(inclusion_proof(&t, 0, 6).is_err());
        assert!(consistency_proof(&t, 3, 2).is_err());
        assert!(consistency_proof(&t, 1, 6).is_err());
        let h = leaf_hash(b"");
        assert!(root_from_inclusion_proof(0, 0, &h, &[]).is_err());
        assert!(root_from_inclusion_proof(0, 1, &h, &vec![h; 70]).is_err());
    }
}
