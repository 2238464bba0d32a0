//! The crate's one error type.

use std::fmt;

/// What a verification found wrong with the log or a package: the evidence of
/// tampering, naming the first entry that no longer matches where that is possible.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Finding {
    /// The entry with this sequence number no longer hashes to what the log committed
    /// to: a field was edited, or the row was moved to another position.
    Altered {
        /// Sequence number (leaf index) of the entry.
        seq: u64,
    },
    /// The entry with this sequence number is gone: the next stored entry has a later
    /// number.
    Missing {
        /// Sequence number of the first absent entry.
        seq: u64,
    },
    /// An entry turned up where another sequence number was due (a duplicate, or rows
    /// out of order).
    OutOfOrder {
        /// The sequence number that was due.
        expected: u64,
        /// The sequence number found there.
        found: u64,
    },
    /// The log ends before a signed checkpoint's size: entries at the end were deleted.
    Truncated {
        /// Sequence number of the first missing entry.
        seq: u64,
        /// Size the checkpoint commits to.
        checkpoint_size: u64,
    },
    /// The recomputed root differs from a signed checkpoint, but the stored per-entry
    /// hashes were rewritten to match the edited rows, so only the range can be named:
    /// some entry in `[from, to)` was altered.
    RangeAltered {
        /// First entry not yet covered by a matching checkpoint.
        from: u64,
        /// Size of the checkpoint that no longer matches.
        to: u64,
    },
    /// A checkpoint's signature does not verify under the log key.
    BadCheckpointSignature {
        /// Tree size the checkpoint claims.
        size: u64,
    },
    /// Two signed checkpoints cannot both be true of one append-only log.
    InconsistentCheckpoints {
        /// Smaller tree size.
        old_size: u64,
        /// Larger tree size.
        new_size: u64,
    },
    /// A package entry's inclusion proof does not lead to the end checkpoint's root.
    InclusionFailed {
        /// Sequence number of the entry.
        seq: u64,
    },
    /// A package entry contains characters the log never writes (control characters),
    /// so it was not produced by the log.
    NotCanonical {
        /// Sequence number of the entry.
        seq: u64,
    },
    /// A package carries a log key other than the one the auditor pinned.
    UnexpectedKey,
    /// The stored size (the head row, which every append raises in the same
    /// transaction) counts more entries than are present, and no checkpoint covers the
    /// missing ones: entries at the end were deleted, or the size was raised by hand.
    HeadAhead {
        /// Sequence number of the first missing entry (the number of rows present).
        seq: u64,
        /// The size the head row records.
        head_size: u64,
    },
    /// A witness cosignature on the checkpoint of this size does not verify.
    BadCosignature {
        /// Tree size of the checkpoint.
        size: u64,
    },
    /// The log offered a witness a checkpoint smaller than one the witness already
    /// cosigned: entries it had shown were taken away.
    RolledBack {
        /// Size the witness cosigned.
        seen: u64,
        /// Size now offered.
        offered: u64,
    },
    /// Rows exist at or beyond the size the head records: they were inserted outside
    /// the log (every append raises the size in the same transaction), and they stop
    /// every later append.
    BeyondHead {
        /// Sequence number of the first such row (the stored size).
        seq: u64,
        /// Number of rows present.
        rows: u64,
    },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Altered { seq } => {
                write!(f, "entry {seq} no longer matches the log (edited or moved)")
            }
            Finding::Missing { seq } => write!(f, "entry {seq} is missing (deleted)"),
            Finding::OutOfOrder { expected, found } => write!(
                f,
                "entry {found} found where entry {expected} was due (reordered or duplicated)"
            ),
            Finding::Truncated {
                seq,
                checkpoint_size,
            } => write!(
                f,
                "entries from {seq} are missing but a checkpoint covers {checkpoint_size} entries"
            ),
            Finding::RangeAltered { from, to } => write!(
                f,
                "an entry in {from}..{to} was altered and its stored hash rewritten"
            ),
            Finding::BadCheckpointSignature { size } => {
                write!(f, "checkpoint at size {size} has an invalid signature")
            }
            Finding::InconsistentCheckpoints { old_size, new_size } => write!(
                f,
                "checkpoints at sizes {old_size} and {new_size} are not consistent"
            ),
            Finding::InclusionFailed { seq } => write!(
                f,
                "entry {seq} does not match the signed log (edited, or its proof is wrong)"
            ),
            Finding::NotCanonical { seq } => {
                write!(f, "entry {seq} is not in the form the log writes")
            }
            Finding::BadCosignature { size } => {
                write!(
                    f,
                    "a witness cosignature on checkpoint {size} does not verify"
                )
            }
            Finding::RolledBack { seen, offered } => write!(
                f,
                "the log shrank from {seen} entries (already witnessed) to {offered}: history was rewritten"
            ),
            Finding::HeadAhead { seq, head_size } => write!(
                f,
                "entries from {seq} are missing: the stored log size is {head_size} entries"
            ),
            Finding::BeyondHead { seq, rows } => write!(
                f,
                "entries {seq}..{rows} lie beyond the stored log size {seq} (inserted outside the log)"
            ),
            Finding::UnexpectedKey => {
                write!(
                    f,
                    "the package is signed by a key other than the pinned one"
                )
            }
        }
    }
}

impl Finding {
    /// The first entry named by the finding, when one can be named.
    pub fn seq(&self) -> Option<u64> {
        match self {
            Finding::Altered { seq }
            | Finding::Missing { seq }
            | Finding::Truncated { seq, .. }
            | Finding::HeadAhead { seq, .. }
            | Finding::InclusionFailed { seq }
            | Finding::NotCanonical { seq }
            | Finding::BeyondHead { seq, .. } => Some(*seq),
            Finding::OutOfOrder { expected, .. } => Some(*expected),
            Finding::RangeAltered { .. }
            | Finding::BadCosignature { .. }
            | Finding::RolledBack { .. }
            | Finding::BadCheckpointSignature { .. }
            | Finding::InconsistentCheckpoints { .. }
            | Finding::UnexpectedKey => None,
        }
    }
}

/// Errors of this crate. Variants say whose fault it is: the data under check
/// ([`Error::Tampered`], [`Error::InvalidProof`], [`Error::Malformed`]), the caller
/// ([`Error::IndexOutOfRange`], [`Error::InvalidFrontier`], [`Error::InvalidOrigin`]),
/// the storage behind a [`crate::LeafHashSource`] ([`Error::Source`]), or a bug
/// ([`Error::Unreachable`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Verification found evidence that the log or package was changed after the fact.
    #[error("tampering detected: {0}")]
    Tampered(Finding),
    /// A proof is malformed or does not verify.
    #[error("invalid proof: {0}")]
    InvalidProof(&'static str),
    /// Untrusted input (a package, a checkpoint note, a database row) could not be
    /// parsed.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// What was being parsed.
        what: &'static str,
        /// Why it was refused.
        detail: String,
    },
    /// The caller asked about a leaf or size the log does not have.
    #[error("index {index} is out of range for a log of {size} entries")]
    IndexOutOfRange {
        /// The index or size asked for.
        index: u64,
        /// The size available.
        size: u64,
    },
    /// A frontier was rebuilt with the wrong number of hashes for its size.
    #[error("a frontier of size {size} needs one hash per set bit, got {hashes}")]
    InvalidFrontier {
        /// Claimed size.
        size: u64,
        /// Hashes supplied.
        hashes: usize,
    },
    /// A checkpoint that had to carry a witness's cosignature does not.
    #[error("checkpoint at size {size} carries no cosignature by witness {witness}")]
    Unwitnessed {
        /// Tree size of the checkpoint.
        size: u64,
        /// The witness's name.
        witness: String,
    },
    /// A log origin (key name) is empty or contains whitespace or `+`.
    #[error("invalid log origin: must be non-empty without whitespace or '+'")]
    InvalidOrigin,
    /// The storage behind a hash source or log failed.
    #[error("storage error: {0}")]
    Source(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Errors of this variant should never be produced by the library; please file a
    /// bug if you see one.
    #[error("internal error: {0}")]
    Unreachable(&'static str),
}

impl Error {
    /// The tampering finding, if this error is one.
    pub fn finding(&self) -> Option<&Finding> {
        match self {
            Error::Tampered(f) => Some(f),
            _ => None,
        }
    }

    pub(crate) fn malformed(what: &'static str, detail: impl Into<String>) -> Self {
        Error::Malformed {
            what,
            detail: detail.into(),
        }
    }
}
