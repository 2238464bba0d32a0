//! Whole-log verification: recompute the tree from the stored entries and hold it
//! against every signed checkpoint.

use crate::checkpoint::{Checkpoint, LogPublicKey, SignedCheckpoint};
use crate::entry::AuditEntry;
use crate::error::{Error, Finding};
use crate::hash::Hash;
use crate::tree::CompactRange;

/// One stored row as the verifier reads it back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEntry {
    /// The entry rebuilt from the row's columns.
    pub entry: AuditEntry,
    /// The leaf hash the store wrote at append time, if it keeps one. It is only a
    /// hint, never trusted on its own: it lets the verifier name the exact row that
    /// changed instead of only the checkpoint range.
    pub leaf_hash: Option<Hash>,
}

/// What a successful verification covered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Entries read (after the archived prefix, if any).
    pub entries: u64,
    /// Size of the log as recomputed.
    pub size: u64,
    /// Root as recomputed.
    pub root: Hash,
    /// Checkpoints whose signature and root were checked.
    pub checkpoints_checked: usize,
    /// Largest size covered by a matching signed checkpoint.
    pub signed_size: u64,
    /// Entries after the latest checkpoint: not yet protected by a signature.
    pub unsigned_tail: u64,
}

/// Recomputes the log from `entries` (in stored order, which must be sequence order)
/// and checks it against `checkpoints`.
///
/// Every checkpoint's signature is checked under `key` and its origin against
/// `origin`; each checkpoint's root must equal the recomputed root at its size, which
/// also proves all checkpoints consistent with each other. The first problem is
/// returned as [`Error::Tampered`], naming the first entry that no longer matches:
///
/// - a row whose content no longer hashes to its stored leaf hash, or that sits at
///   the wrong position: [`Finding::Altered`];
/// - a gap in sequence numbers: [`Finding::Missing`]; a repeated or earlier number:
///   [`Finding::OutOfOrder`];
/// - rows removed from the end: [`Finding::Truncated`];
/// - a root mismatch when the stored hashes were rewritten too:
///   [`Finding::RangeAltered`], bounded by the two checkpoints around it.
///
/// `archived` starts verification after an archived prefix: the frontier kept at
/// archive time, whose root must equal the signed checkpoint of that size (see
/// docs/operations.md). Memory use is O(log n) whatever the log size. For entries that
/// arrive in batches (an async database cursor) use [`LogVerifier`] directly.
pub fn verify_log<I>(
    entries: I,
    checkpoints: &[SignedCheckpoint],
    key: &LogPublicKey,
    origin: &str,
    archived: Option<&CompactRange>,
) -> Result<VerifyReport, Error>
where
    I: IntoIterator<Item = Result<StoredEntry, Error>>,
{
    let mut v = LogVerifier::new(checkpoints, key, origin, archived)?;
    for row in entries {
        v.push(&row?)?;
    }
    v.finish()
}

/// The incremental form of [`verify_log`]: feed entries with [`LogVerifier::push`] in
/// sequence order, then call [`LogVerifier::finish`]. The first error is final.
pub struct LogVerifier {
    // Signed checkpoints, sorted by size, duplicates checked.
    cps: Vec<Checkpoint>,
    next: usize,
    tree: CompactRange,
    signed_size: u64,
    checked: usize,
    read: u64,
}

impl LogVerifier {
    /// Checks every checkpoint's signature and origin, and the archived frontier if
    /// any, before the first entry.
    pub fn new(
        checkpoints: &[SignedCheckpoint],
        key: &LogPublicKey,
        origin: &str,
        archived: Option<&CompactRange>,
    ) -> Result<Self, Error> {
        let mut cps: Vec<Checkpoint> = Vec::with_capacity(checkpoints.len());
        for c in checkpoints {
            if c.checkpoint.origin != origin {
                return Err(Error::Tampered(Finding::BadCheckpointSignature {
                    size: c.checkpoint.size,
                }));
            }
            c.verify(key)?;
            cps.push(c.checkpoint.clone());
        }
        cps.sort_by_key(|c| c.size);
        for w in cps.windows(2) {
            if w[0].size == w[1].size && w[0].root != w[1].root {
                return Err(Error::Tampered(Finding::InconsistentCheckpoints {
                    old_size: w[0].size,
                    new_size: w[1].size,
                }));
            }
        }
        let tree = archived.cloned().unwrap_or_default();
        let base = tree.size();
        let next = cps.partition_point(|c| c.size < base);
        if base > 0 {
            let anchor = cps.get(next).filter(|c| c.size == base).ok_or_else(|| {
                Error::malformed(
                    "archive frontier",
                    format!("no signed checkpoint at the archive size {base}"),
                )
            })?;
            if anchor.root != tree.root() {
                return Err(Error::Tampered(Finding::RangeAltered { from: 0, to: base }));
            }
        }
        let mut v = Self {
            cps,
            next,
            tree,
            signed_size: base,
            checked: 0,
            read: 0,
        };
        // Checkpoints at the starting size (0, or the archive size) match here.
        v.match_checkpoints()?;
        Ok(v)
    }

    /// The sequence number due next.
    pub fn expected(&self) -> u64 {
        self.tree.size()
    }

    /// Checks one stored entry.
    pub fn push(&mut self, row: &StoredEntry) -> Result<(), Error> {
        let expected = self.tree.size();
        let seq = row.entry.seq();
        if seq > expected {
            return Err(Error::Tampered(Finding::Missing { seq: expected }));
        }
        if seq < expected {
            return Err(Error::Tampered(Finding::OutOfOrder {
                expected,
                found: seq,
            }));
        }
        let h = row.entry.leaf_hash();
        if row.leaf_hash.is_some_and(|stored| stored != h) {
            return Err(Error::Tampered(Finding::Altered { seq }));
        }
        self.tree.push(h);
        self.read += 1;
        self.match_checkpoints()
    }

    /// Ends verification: fails if a checkpoint covers more entries than were read.
    pub fn finish(self) -> Result<VerifyReport, Error> {
        if let Some(c) = self.cps.get(self.next) {
            return Err(Error::Tampered(Finding::Truncated {
                seq: self.tree.size(),
                checkpoint_size: c.size,
            }));
        }
        Ok(VerifyReport {
            entries: self.read,
            size: self.tree.size(),
            root: self.tree.root(),
            checkpoints_checked: self.checked,
            signed_size: self.signed_size,
            unsigned_tail: self.tree.size() - self.signed_size,
        })
    }

    fn match_checkpoints(&mut self) -> Result<(), Error> {
        while let Some(c) = self
            .cps
            .get(self.next)
            .filter(|c| c.size == self.tree.size())
        {
            if c.root != self.tree.root() {
                return Err(Error::Tampered(Finding::RangeAltered {
                    from: self.signed_size,
                    to: c.size,
                }));
            }
            self.signed_size = c.size;
            self.checked += 1;
            self.next += 1;
        }
        Ok(())
    }
}
