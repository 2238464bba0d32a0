//! Auditor packages: a range of entries with everything needed to check them offline
//! against the log's public key, and the check itself.
//!
//! A package is a JSON-lines file (UTF-8, one JSON object per line, `\n` endings):
//!
//! ```text
//! line 1      PackageHeader  {"format":"confide-audit-package/1","log_key":..., "from":F,"to":T,
//!                             "start_checkpoint":<note or null>,"end_checkpoint":<note>,
//!                             "consistency_proof":[base64 hashes]}
//! lines 2..   PackageLine    {"entry":{"seq":F,...},"inclusion_proof":[base64 hashes]}
//!             ... one line per entry, seq F, F+1, ..., T-1, in order
//! ```
//!
//! `log_key` is the C2SP verifier key of the log; an auditor should compare its
//! fingerprint with one obtained from the clinic out of band, or pass the pinned key to
//! [`check_package`]. The start checkpoint is the latest one at or before `from` (the
//! state an auditor may already hold from a previous package); the end checkpoint is
//! the first at or after `to`; the consistency proof links the two, and every entry's
//! inclusion proof leads to the end checkpoint's root.

use std::io::{BufRead, Read, Write};

use serde::{Deserialize, Serialize};

use crate::checkpoint::{LogPublicKey, SignedCheckpoint};
use crate::entry::{AuditEntry, Timestamp};
use crate::error::{Error, Finding};
use crate::hash::Hash;
use crate::proof::{
    LeafHashSource, consistency_proof, inclusion_proof, verify_consistency, verify_inclusion,
};

/// The `format` value of version 1 packages.
pub const PACKAGE_FORMAT: &str = "confide-audit-package/1";

/// Longest line [`check_package`] reads; a real line is well under 8 KiB.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// First line of a package.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageHeader {
    /// Always [`PACKAGE_FORMAT`].
    pub format: String,
    /// The log's C2SP verifier key (`name+hash+base64`).
    pub log_key: String,
    /// First sequence number included.
    pub from: u64,
    /// One past the last sequence number included.
    pub to: u64,
    /// Signed note of the latest checkpoint with size at most `from`, if there is one.
    pub start_checkpoint: Option<String>,
    /// Signed note of the checkpoint the inclusion proofs lead to (size at least `to`).
    pub end_checkpoint: String,
    /// RFC 6962 consistency proof from the start checkpoint to the end checkpoint
    /// (empty without a start checkpoint).
    pub consistency_proof: Vec<Hash>,
}

/// One entry line of a package.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageLine {
    /// The entry.
    pub entry: AuditEntry,
    /// Inclusion proof of the entry in the end checkpoint's tree.
    pub inclusion_proof: Vec<Hash>,
}

/// What a package covers, as reported by [`write_package`] and [`check_package`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackageReport {
    /// Log name.
    pub origin: String,
    /// SHA-256 fingerprint of the log key, to compare out of band.
    pub key_fingerprint: String,
    /// First sequence number.
    pub from: u64,
    /// One past the last sequence number.
    pub to: u64,
    /// Size of the start checkpoint (0 without one).
    pub start_size: u64,
    /// Size of the end checkpoint.
    pub end_size: u64,
    /// Root of the end checkpoint.
    pub end_root: Hash,
    /// Time of the end checkpoint.
    pub end_time: Timestamp,
    /// Entries in the package.
    pub entries: u64,
}

fn json_line<T: Serialize>(out: &mut impl Write, v: &T) -> Result<(), Error> {
    serde_json::to_writer(&mut *out, v).map_err(|e| Error::Source(Box::new(e)))?;
    out.write_all(b"\n").map_err(|e| Error::Source(Box::new(e)))
}

/// Writes a package for entries `[from, to)`.
///
/// `entries` must yield exactly those entries in order (typically streamed from the
/// store); `src` must hold at least `end.checkpoint.size` leaves. Every entry is
/// checked against the end checkpoint before it is written, so exporting a tampered
/// log fails with the same finding as [`crate::verify_log`] would give.
#[expect(clippy::too_many_arguments)] // Each input is distinct and named at the one call site.
pub fn write_package<W, S, I>(
    out: &mut W,
    src: &S,
    key: &LogPublicKey,
    from: u64,
    to: u64,
    start: Option<&SignedCheckpoint>,
    end: &SignedCheckpoint,
    entries: I,
) -> Result<PackageReport, Error>
where
    W: Write,
    S: LeafHashSource + ?Sized,
    I: IntoIterator<Item = Result<AuditEntry, Error>>,
{
    let proof = match start {
        Some(s) if s.checkpoint.size <= end.checkpoint.size => {
            consistency_proof(src, s.checkpoint.size, end.checkpoint.size)?.path
        }
        _ => Vec::new(),
    };
    let mut w = PackageWriter::start(out, key, from, to, start, end, proof)?;
    for e in entries {
        let entry = e?;
        let p = inclusion_proof(src, entry.seq(), end.checkpoint.size)?;
        w.write_entry(entry, p.path)?;
    }
    w.finish()
}

/// The streaming form of [`write_package`], for stores that read entries and node
/// hashes in batches: [`PackageWriter::start`], one [`PackageWriter::write_entry`]
/// per entry in order, then [`PackageWriter::finish`].
pub struct PackageWriter<'w, W: Write> {
    out: &'w mut W,
    report: PackageReport,
    expected: u64,
}

impl<'w, W: Write> PackageWriter<'w, W> {
    /// Checks both checkpoints and the consistency proof between them, and writes the
    /// header line.
    pub fn start(
        out: &'w mut W,
        key: &LogPublicKey,
        from: u64,
        to: u64,
        start: Option<&SignedCheckpoint>,
        end: &SignedCheckpoint,
        consistency_path: Vec<Hash>,
    ) -> Result<Self, Error> {
        let end_cp = &end.checkpoint;
        if from > to || to > end_cp.size {
            return Err(Error::IndexOutOfRange {
                index: to,
                size: end_cp.size,
            });
        }
        if let Some(s) = start
            && (s.checkpoint.size > from || s.checkpoint.origin != end_cp.origin)
        {
            return Err(Error::IndexOutOfRange {
                index: s.checkpoint.size,
                size: from,
            });
        }
        end.verify(key)?;
        if let Some(s) = start {
            s.verify(key)?;
            verify_consistency(
                s.checkpoint.size,
                end_cp.size,
                &s.checkpoint.root,
                &end_cp.root,
                &consistency_path,
            )
            .map_err(|_| {
                Error::Tampered(Finding::InconsistentCheckpoints {
                    old_size: s.checkpoint.size,
                    new_size: end_cp.size,
                })
            })?;
        } else if !consistency_path.is_empty() {
            return Err(Error::InvalidProof(
                "consistency proof without a start checkpoint",
            ));
        }
        let header = PackageHeader {
            format: PACKAGE_FORMAT.to_owned(),
            log_key: key.to_vkey(&end_cp.origin)?,
            from,
            to,
            start_checkpoint: start.map(|s| s.to_note(key)),
            end_checkpoint: end.to_note(key),
            consistency_proof: consistency_path,
        };
        json_line(out, &header)?;
        Ok(Self {
            out,
            report: PackageReport {
                origin: end_cp.origin.clone(),
                key_fingerprint: key.fingerprint(),
                from,
                to,
                start_size: start.map_or(0, |s| s.checkpoint.size),
                end_size: end_cp.size,
                end_root: end_cp.root,
                end_time: end_cp.time,
                entries: to - from,
            },
            expected: from,
        })
    }

    /// The output written so far, for a caller that passes it on in pieces
    /// (`AuditStore::export_with` with the `store` feature): anything taken out of it stays
    /// written as far as the package is concerned.
    pub fn sink_mut(&mut self) -> &mut W {
        self.out
    }

    /// The sequence number due next.
    pub fn expected(&self) -> u64 {
        self.expected
    }

    /// Checks the entry's position and inclusion proof against the end checkpoint,
    /// then writes its line.
    pub fn write_entry(
        &mut self,
        entry: AuditEntry,
        inclusion_path: Vec<Hash>,
    ) -> Result<(), Error> {
        let expected = self.expected;
        if expected >= self.report.to {
            return Err(Error::IndexOutOfRange {
                index: entry.seq(),
                size: self.report.to,
            });
        }
        if entry.seq() != expected {
            return Err(Error::Tampered(if entry.seq() > expected {
                Finding::Missing { seq: expected }
            } else {
                Finding::OutOfOrder {
                    expected,
                    found: entry.seq(),
                }
            }));
        }
        verify_inclusion(
            expected,
            self.report.end_size,
            &entry.leaf_hash(),
            &inclusion_path,
            &self.report.end_root,
        )
        .map_err(|_| Error::Tampered(Finding::Altered { seq: expected }))?;
        json_line(
            self.out,
            &PackageLine {
                entry,
                inclusion_proof: inclusion_path,
            },
        )?;
        self.expected += 1;
        Ok(())
    }

    /// Fails if entries are missing; flushes the output.
    pub fn finish(self) -> Result<PackageReport, Error> {
        if self.expected != self.report.to {
            return Err(Error::Tampered(Finding::Missing { seq: self.expected }));
        }
        self.out.flush().map_err(|e| Error::Source(Box::new(e)))?;
        Ok(self.report)
    }
}

/// Reads one line of at most [`MAX_LINE_BYTES`]; `None` at end of input.
fn read_line<R: BufRead>(r: &mut R, buf: &mut Vec<u8>) -> Result<Option<()>, Error> {
    buf.clear();
    let n = r
        .by_ref()
        .take(MAX_LINE_BYTES as u64 + 1)
        .read_until(b'\n', buf)
        .map_err(|e| Error::Source(Box::new(e)))?;
    if n == 0 {
        return Ok(None);
    }
    if buf.len() > MAX_LINE_BYTES {
        return Err(Error::malformed("package", "line too long"));
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    }
    Ok(Some(()))
}

/// Verifies a package without any database: the checkpoints' signatures, the
/// consistency proof between them, and every entry's position, form and inclusion
/// proof. Returns the first problem, naming the entry where there is one.
///
/// With `pinned`, the package's key must be that key; without it the package's own key
/// is used and the caller must compare [`PackageReport::key_fingerprint`] with a
/// trusted copy.
pub fn check_package<R: BufRead>(
    mut input: R,
    pinned: Option<&LogPublicKey>,
) -> Result<PackageReport, Error> {
    let mut buf = Vec::new();
    read_line(&mut input, &mut buf)?.ok_or_else(|| Error::malformed("package", "empty"))?;
    let header: PackageHeader = serde_json::from_slice(&buf)
        .map_err(|e| Error::malformed("package header", e.to_string()))?;
    if header.format != PACKAGE_FORMAT {
        return Err(Error::malformed("package header", "unknown format"));
    }
    let (origin, key) = LogPublicKey::from_vkey(&header.log_key)?;
    if pinned.is_some_and(|p| *p != key) {
        return Err(Error::Tampered(Finding::UnexpectedKey));
    }
    let end = SignedCheckpoint::from_note(&header.end_checkpoint, &key)?;
    let end_cp = &end.checkpoint;
    if end_cp.origin != origin {
        return Err(Error::Tampered(Finding::BadCheckpointSignature {
            size: end_cp.size,
        }));
    }
    if header.from > header.to || header.to > end_cp.size {
        return Err(Error::malformed(
            "package header",
            "entry range is not covered by the end checkpoint",
        ));
    }
    let start_size = match &header.start_checkpoint {
        Some(note) => {
            let start = SignedCheckpoint::from_note(note, &key)?;
            let s = &start.checkpoint;
            if s.origin != origin {
                return Err(Error::Tampered(Finding::BadCheckpointSignature {
                    size: s.size,
                }));
            }
            if s.size > header.from {
                return Err(Error::malformed(
                    "package header",
                    "start checkpoint is after the first entry",
                ));
            }
            verify_consistency(
                s.size,
                end_cp.size,
                &s.root,
                &end_cp.root,
                &header.consistency_proof,
            )
            .map_err(|_| {
                Error::Tampered(Finding::InconsistentCheckpoints {
                    old_size: s.size,
                    new_size: end_cp.size,
                })
            })?;
            s.size
        }
        None => {
            if !header.consistency_proof.is_empty() {
                return Err(Error::malformed(
                    "package header",
                    "consistency proof without a start checkpoint",
                ));
            }
            0
        }
    };

    let mut expected = header.from;
    while read_line(&mut input, &mut buf)?.is_some() {
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let line: PackageLine = serde_json::from_slice(&buf).map_err(|e| {
            Error::malformed("package entry", format!("line for entry {expected}: {e}"))
        })?;
        let seq = line.entry.seq();
        if expected >= header.to {
            return Err(Error::Tampered(Finding::OutOfOrder {
                expected: header.to,
                found: seq,
            }));
        }
        if seq != expected {
            return Err(Error::Tampered(if seq > expected {
                Finding::Missing { seq: expected }
            } else {
                Finding::OutOfOrder {
                    expected,
                    found: seq,
                }
            }));
        }
        if !line.entry.is_canonical() {
            return Err(Error::Tampered(Finding::NotCanonical { seq }));
        }
        verify_inclusion(
            seq,
            end_cp.size,
            &line.entry.leaf_hash(),
            &line.inclusion_proof,
            &end_cp.root,
        )
        .map_err(|_| Error::Tampered(Finding::InclusionFailed { seq }))?;
        expected += 1;
    }
    if expected != header.to {
        return Err(Error::Tampered(Finding::Missing { seq: expected }));
    }
    Ok(PackageReport {
        origin,
        key_fingerprint: key.fingerprint(),
        from: header.from,
        to: header.to,
        start_size,
        end_size: end_cp.size,
        end_root: end_cp.root,
        end_time: end_cp.time,
        entries: header.to - header.from,
    })
}
