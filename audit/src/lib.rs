//! Confide's tamper-evident audit trail: an append-only Merkle log of audit entries in
//! the style of Certificate Transparency (RFC 6962 / RFC 9162 tree hashing), with
//! signed checkpoints, inclusion and consistency proofs, and auditor packages that can
//! be checked offline.
//!
//! # Design
//!
//! ```text
//!  signaling ──record_audit(AuditEvent)──▶ AuditLog (this crate, sans-IO)
//!                                           │ append(now, event) -> Appended {entry, leaf_hash, nodes}
//!                                           │ poll_checkpoint()  -> SignedCheckpoint (every N entries / T ms)
//!                                           ▼
//!                                 store: audit entries, node hashes, checkpoints
//!                                           │
//!          confide audit verify ◀───────────┤ verify_log(entries, checkpoints, key)
//!          confide audit export ◀───────────┤ write_package(..) with proofs from LeafHashSource
//!          confide audit check  (offline)   └ check_package(file, pinned key)
//! ```
//!
//! - **Entries** ([`AuditEntry`]) hold who (a pseudonymous account id), role, action,
//!   target, patient, outcome, UTC time, source address, request id, priority and a
//!   short detail code, after FHIR AuditEvent. Text is neutralised ([`neutralise`]); the bytes hashed into the log are
//!   a length-prefixed canonical encoding ([`AuditEntry::encode_canonical`]).
//! - **The tree** follows RFC 6962: leaf = `SHA-256(0x00 || entry bytes)`, node =
//!   `SHA-256(0x01 || left || right)`. [`CompactRange`] keeps the right frontier, so an
//!   append and the root cost O(log n) time and memory at any size.
//! - **Proofs**: [`inclusion_proof`] and [`consistency_proof`] implement RFC 6962 PATH
//!   and PROOF over any [`LeafHashSource`]; [`verify_inclusion`] and
//!   [`verify_consistency`] are the RFC 9162 verification algorithms.
//! - **Checkpoints** are C2SP signed notes (origin, size, base64 root, a `time` line)
//!   signed with the log's Ed25519 key ([`LogSigningKey`], zeroized, no `Debug`).
//! - **Witnesses** cosign checkpoints in the C2SP `tlog-cosignature` format
//!   ([`WitnessSigningKey::cosign`]) only when [`WitnessState::check`] proves the new
//!   checkpoint extends the last one they cosigned; [`open_cosigned`] requires it.
//! - **Verification** ([`verify_log`]) recomputes the tree and names the first entry
//!   that no longer matches; [`check_package`] does the same for an export without any
//!   database.
//!
//! # The loop
//!
//! [`AuditLog`] has the shape of every Confide core: one mutation
//! ([`AuditLog::append`] or [`AuditLog::handle_timeout`]), then drain
//! [`AuditLog::poll_checkpoint`] until `None`, persist, and sleep until
//! [`AuditLog::poll_timeout`]. Time is always an input.
//!
//! # What this crate does not do
//!
//! - No I/O, no clock, no randomness: the caller passes `now` and the key seed, and
//!   persists what comes out. The optional SQL persistence lives behind the `store`
//!   feature, in its own module.
//! - It does not decide what is audited, and it cannot recognise protected health
//!   information: **callers must never put names, message content, clinical data,
//!   secrets or tokens into an [`AuditEvent`]**, only pseudonymous identifiers and
//!   codes. Neutralising text stops log injection, not over-sharing.
//! - It never deletes entries. Archiving old ranges is an operator procedure that
//!   keeps proofs valid (docs/operations.md, "Audit log retention and archiving").
//! - A checkpoint proves what the log said at signing time; entries appended after the
//!   latest checkpoint are not yet protected, which is why the policy signs every N
//!   entries or T milliseconds.
//!
//! # Errors and panics
//!
//! One error type, [`Error`]; tampering is reported as [`Error::Tampered`] carrying a
//! [`Finding`]. Nothing here panics on untrusted input (packages, checkpoint notes,
//! database rows): lengths are bounded, sizes checked, and every `expect` names the
//! invariant that makes it unreachable.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod checkpoint;
mod cosign;
mod entry;
mod error;
mod hash;
mod log;
mod package;
mod proof;
mod report;
#[cfg(feature = "store")]
pub mod store;
mod tree;
mod verify;

pub use checkpoint::{Checkpoint, LogPublicKey, LogSigningKey, MAX_NOTE_BYTES, SignedCheckpoint};
pub use cosign::{
    COSIGNATURE_V1, Cosignature, WitnessPublicKey, WitnessSigningKey, WitnessState, open_cosigned,
};
pub use entry::{
    AuditEntry, AuditEvent, ENCODING_VERSION, MAX_FIELD_BYTES, Outcome, Priority, Timestamp,
    neutralise,
};
pub use error::{Error, Finding};
pub use hash::{HASH_LEN, Hash, empty_root, leaf_hash, node_hash};
pub use log::{Appended, AuditLog, CheckpointPolicy};
pub use package::{
    MAX_LINE_BYTES, PACKAGE_FORMAT, PackageHeader, PackageLine, PackageReport, PackageWriter,
    check_package, write_package,
};
pub use proof::{
    ConsistencyProof, InclusionProof, LeafHashSource, MAX_PROOF_LEN, NodeMap, consistency_proof,
    consistency_proof_nodes, inclusion_proof, inclusion_proof_nodes, root_from_inclusion_proof,
    verify_consistency, verify_inclusion,
};
pub use report::{AccessRecord, PATIENT_RECORD_KINDS, access_report};
pub use tree::{CompactRange, MemoryTree, NodeId};
pub use verify::{LogVerifier, StoredEntry, VerifyReport, verify_log};
