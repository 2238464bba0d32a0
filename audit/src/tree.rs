//! The growing tree: an O(log n) frontier for appends and roots, and an in-memory tree
//! that keeps every complete node for proofs.

use crate::error::Error;
use crate::hash::{Hash, empty_root, node_hash};
use crate::proof::LeafHashSource;

/// A complete (perfect) subtree of the log: `2^level` leaves starting at leaf
/// `index << level`.
///
/// Every interior node a proof needs from a store is either one of these or is folded
/// from a handful of them, so a store that keeps the hash of each `NodeId` when it is
/// completed answers any proof with O(log n) reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId {
    /// Height above the leaves; leaves are level 0.
    pub level: u8,
    /// Position among the nodes of that level, counted from the left.
    pub index: u64,
}

impl NodeId {
    /// First leaf covered.
    pub fn start(&self) -> u64 {
        self.index << self.level
    }

    /// One past the last leaf covered.
    pub fn end(&self) -> u64 {
        (self.index + 1) << self.level
    }
}

/// The right frontier of a log of `size` leaves: one hash per set bit of `size`,
/// the largest complete subtree first.
///
/// This is what an appender needs and no more: pushing a leaf merges at most
/// `log2(size)` nodes, and the root is folded from at most 64 hashes, so both stay
/// O(log n) in time and memory at any size. It is also the one thing an operator
/// must keep when archiving the leaves below `size` (see docs/operations.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompactRange {
    size: u64,
    nodes: Vec<Hash>,
}

impl Default for CompactRange {
    fn default() -> Self {
        Self::new()
    }
}

impl CompactRange {
    /// The frontier of the empty log.
    pub fn new() -> Self {
        Self {
            size: 0,
            nodes: Vec::new(),
        }
    }

    /// Rebuilds a frontier from stored hashes, largest subtree first.
    ///
    /// Fails if the number of hashes does not equal the number of set bits of `size`;
    /// whether the hashes are the right ones is decided later by comparing
    /// [`CompactRange::root`] with a signed checkpoint.
    pub fn from_parts(size: u64, nodes: Vec<Hash>) -> Result<Self, Error> {
        if nodes.len() != size.count_ones() as usize {
            return Err(Error::InvalidFrontier {
                size,
                hashes: nodes.len(),
            });
        }
        Ok(Self { size, nodes })
    }

    /// The node ids of the frontier of a log of `size` leaves, largest first; the
    /// order of [`CompactRange::nodes`].
    pub fn frontier_ids(size: u64) -> Vec<NodeId> {
        let mut out = Vec::with_capacity(size.count_ones() as usize);
        let mut start = 0u64;
        for level in (0..64u8).rev() {
            if size & (1u64 << level) != 0 {
                out.push(NodeId {
                    level,
                    index: start >> level,
                });
                start += 1u64 << level;
            }
        }
        out
    }

    /// Number of leaves appended so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The frontier hashes, largest subtree first.
    pub fn nodes(&self) -> &[Hash] {
        &self.nodes
    }

    /// Appends one leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        self.push_with(leaf, |_, _| {});
    }

    /// Appends one leaf hash and reports every node completed by it, the leaf first,
    /// so a store can persist them for later proofs.
    ///
    /// # Panics
    ///
    /// After 2^64 - 1 leaves, which no audit log reaches.
    pub fn push_with(&mut self, leaf: Hash, mut completed: impl FnMut(NodeId, &Hash)) {
        let mut hash = leaf;
        let mut id = NodeId {
            level: 0,
            index: self.size,
        };
        completed(id, &hash);
        // Each trailing one bit of `size` is a complete left sibling waiting for a
        // partner of the same height: the new node is that partner.
        let mut bits = self.size;
        while bits & 1 == 1 {
            // The frontier holds one node per set bit, so a set bit means a node is there.
            let left = self.nodes.pop().expect("frontier has a node per set bit");
            hash = node_hash(&left, &hash);
            id = NodeId {
                level: id.level + 1,
                index: id.index >> 1,
            };
            completed(id, &hash);
            bits >>= 1;
        }
        self.nodes.push(hash);
        self.size = self
            .size
            .checked_add(1)
            .expect("an audit log never holds 2^64 entries");
    }

    /// The Merkle tree hash of the leaves so far (RFC 6962 MTH).
    pub fn root(&self) -> Hash {
        let mut it = self.nodes.iter().rev();
        let Some(last) = it.next() else {
            return empty_root();
        };
        // MTH splits at the largest power of two below n, which is exactly the
        // frontier's largest subtree; folding right to left reproduces that recursion.
        it.fold(*last, |acc, left| node_hash(left, &acc))
    }
}

/// An in-memory log that keeps every completed node: about 2n hashes for n leaves.
///
/// Used by tests, the benchmark and the verifier; a database store plays the same role
/// with its node table.
#[derive(Clone, Debug, Default)]
pub struct MemoryTree {
    // levels[l][i] is the hash of NodeId { level: l, index: i }.
    levels: Vec<Vec<Hash>>,
    frontier: CompactRange,
}

impl MemoryTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a leaf hash; returns its index.
    pub fn push(&mut self, leaf: Hash) -> u64 {
        let index = self.frontier.size();
        let levels = &mut self.levels;
        self.frontier.push_with(leaf, |id, h| {
            let l = id.level as usize;
            if levels.len() <= l {
                levels.push(Vec::new());
            }
            levels[l].push(*h);
        });
        index
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    /// Root of the whole tree.
    pub fn root(&self) -> Hash {
        self.frontier.root()
    }

    /// The frontier at the current size.
    pub fn frontier(&self) -> &CompactRange {
        &self.frontier
    }

    /// Hash of a completed node, if it exists.
    pub fn node(&self, id: NodeId) -> Option<Hash> {
        let level = self.levels.get(id.level as usize)?;
        let i = usize::try_from(id.index).ok()?;
        level.get(i).copied()
    }
}

/// Splits `[start, end)` into maximal aligned complete subtrees, left to right.
pub(crate) fn decompose(start: u64, end: u64) -> Vec<NodeId> {
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        // Largest level at which `at` is aligned and the node still fits in the range.
        let mut level = if at == 0 { 63 } else { at.trailing_zeros() };
        while level > 0 && (end - at) < (1u64 << level) {
            level -= 1;
        }
        out.push(NodeId {
            level: level as u8,
            index: at >> level,
        });
        at += 1u64 << level;
    }
    out
}

/// Folds node hashes (left to right as returned by [`decompose`]) into the hash of the
/// RFC 6962 subtree they cover. Only valid when the range starts at a multiple of a
/// power of two at least its length, which every subtree in PATH and PROOF does.
pub(crate) fn fold_right(hashes: &[Hash]) -> Option<Hash> {
    let mut it = hashes.iter().rev();
    let last = *it.next()?;
    Some(it.fold(last, |acc, left| node_hash(left, &acc)))
}

impl LeafHashSource for MemoryTree {
    fn size(&self) -> u64 {
        self.frontier.size()
    }

    fn leaf_hash(&self, index: u64) -> Result<Hash, Error> {
        self.node(NodeId { level: 0, index })
            .ok_or(Error::IndexOutOfRange {
                index,
                size: self.size(),
            })
    }

    fn subtree_hash(&self, start: u64, end: u64) -> Result<Hash, Error> {
        if start >= end || end > self.size() {
            return Err(Error::IndexOutOfRange {
                index: end,
                size: self.size(),
            });
        }
        let mut hashes = Vec::with_capacity(8);
        for id in decompose(start, end) {
            hashes.push(self.node(id).ok_or(Error::Unreachable(
                "complete node below size missing from memory tree",
            ))?);
        }
        fold_right(&hashes).ok_or(Error::Unreachable(
            "empty decomposition of a non-empty range",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::leaf_hash;

    /// RFC 6962 MTH written straight from the recursive definition, as an oracle.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros());
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    #[test]
    fn frontier_root_matches_recursive_definition() {
        let mut cr = CompactRange::new();
        let mut leaves = Vec::new();
        assert_eq!(cr.root(), mth(&leaves));
        for i in 0u32..300 {
            let l = leaf_hash(&i.to_be_bytes());
            leaves.push(l);
            cr.push(l);
            assert_eq!(cr.root(), mth(&leaves), "size {}", i + 1);
            assert_eq!(cr.nodes().len(), cr.size().count_ones() as usize);
        }
    }

    #[test]
    fn frontier_ids_match_completed_nodes() {
        let mut t = MemoryTree::new();
        for i in 0u32..100 {
            t.push(leaf_hash(&i.to_be_bytes()));
            let ids = CompactRange::frontier_ids(t.size());
            let hashes: Vec<Hash> = ids.iter().map(|id| t.node(*id).unwrap()).collect();
            assert_eq!(hashes, t.frontier().nodes());
            let rebuilt = CompactRange::from_parts(t.size(), hashes).unwrap();
            assert_eq!(rebuilt.root(), t.root());
        }
        assert!(CompactRange::from_parts(3, vec![]).is_err());
    }

    #[test]
    fn subtree_hash_matches_recursive_definition() {
        let mut t = MemoryTree::new();
        let mut leaves = Vec::new();
        for i in 0u32..70 {
            let l = leaf_hash(&i.to_be_bytes());
            leaves.push(l);
            t.push(l);
        }
        // Ranges starting at a multiple of a power of two at least their length.
        for start in 0..70u64 {
            for end in start + 1..=70 {
                let len = end - start;
                if start % len.next_power_of_two() != 0 {
                    continue;
                }
                let want = mth(&leaves[start as usize..end as usize]);
                assert_eq!(t.subtree_hash(start, end).unwrap(), want, "[{start},{end})");
            }
        }
        assert!(t.subtree_hash(3, 3).is_err());
        assert!(t.subtree_hash(0, 71).is_err());
    }

    #[test]
    fn decompose_covers_range() {
        for start in 0..40u64 {
            for end in start..80 {
                let ids = decompose(start, end);
                let mut at = start;
                for id in ids {
                    assert_eq!(id.start(), at);
                    at = id.end();
                }
                assert_eq!(at, end.max(start));
            }
        }
    }
}
