//! Key transparency: every device credential the directory serves must be an entry of
//! the server's RFC 6962 audit log, proven by an inclusion proof against a checkpoint
//! signed with the log key; every newer checkpoint must extend the one this device saw
//! before (consistency proof); and checkpoints that members carry into their consultation
//! group must be consistent with ours. A server that shows one person a key and another
//! person a different history has to fork its log, and the fork shows up as a
//! consistency proof that cannot exist.
//!
//! Sans-IO like the rest of the crate: [`LogView`] says which proof it needs
//! ([`LogView::proof_needed`]) and the application fetches it
//! (`GET /api/audit/consistency?from=&to=`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use confide_audit::{
    AuditEntry, Hash, LogPublicKey, SignedCheckpoint, verify_consistency, verify_inclusion,
};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::identity::{DeviceId, DeviceName, Principal};

/// Audit action of a device registration (the server writes it; see docs/protocol.md).
pub const ACTION_REGISTERED: &str = "device_registered";
/// Audit action of a device revocation.
pub const ACTION_REVOKED: &str = "device_revoked";
/// Longest proof we accept (a tree of 2^64 leaves needs 64 hashes).
const MAX_PROOF: usize = 64;

fn kt(msg: impl Into<String>) -> Error {
    Error::Transparency(msg.into())
}

/// A checkpoint this device has accepted: tree size and root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeHead {
    /// Number of entries.
    pub size: u64,
    /// RFC 6962 root hash.
    pub root: Hash,
}

#[derive(Serialize, Deserialize)]
struct SavedHead {
    size: u64,
    root: String,
}

/// The directory's answer for one principal (`GET /api/directory/{principal}`).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct DirectoryAnswer {
    /// The principal asked about.
    pub principal: String,
    /// Its role (`doctor`, `patient`, `staff`, `admin`, `guest`). Display only.
    #[serde(default)]
    pub role: String,
    /// Its display label. Display only.
    #[serde(default)]
    pub label: String,
    /// The signed checkpoint the proofs lead to.
    pub checkpoint: String,
    /// The devices with their log entries.
    pub devices: Vec<DirectoryDevice>,
}

/// One device in a [`DirectoryAnswer`].
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct DirectoryDevice {
    /// Device id (32 hex).
    pub device: String,
    /// Ed25519 key, base64.
    pub signature_key: String,
    /// `active` or `revoked`, as the server claims; the proofs decide.
    #[serde(default)]
    pub status: String,
    /// Registration (and revocation) entries with inclusion proofs.
    pub entries: Vec<ProvenEntry>,
}

/// A log entry and its inclusion proof.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ProvenEntry {
    /// Leaf index.
    pub seq: u64,
    /// The entry as JSON (`AuditEntry::to_json`).
    pub entry: String,
    /// Inclusion path, base64 hashes.
    pub proof: Vec<String>,
}

/// A device whose registration is proven in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedDevice {
    /// The device.
    pub name: DeviceName,
    /// Its logged Ed25519 key.
    pub signature_key: [u8; 32],
    /// `false` if a revocation is proven, or the server says it is revoked.
    pub active: bool,
    /// Log index of the registration.
    pub registered_seq: u64,
}

/// This device's view of the audit log: the pinned log key and the newest tree head
/// it has accepted.
#[derive(Debug, Clone)]
pub struct LogView {
    key: LogPublicKey,
    origin: String,
    latest: Option<TreeHead>,
}

fn parse_hashes(list: &[String]) -> Result<Vec<Hash>> {
    if list.len() > MAX_PROOF {
        return Err(kt("proof too long"));
    }
    list.iter()
        .map(|s| Hash::from_base64(s).ok_or_else(|| kt("proof hash is not base64 SHA-256")))
        .collect()
}

impl LogView {
    /// Start from the log's verifier key (`GET /api/audit/key`), pinned by the
    /// application on first use, and a saved head ([`Self::save`]) if any.
    pub fn new(verifier_key: &str, saved: Option<&str>) -> Result<Self> {
        let (origin, key) =
            LogPublicKey::from_vkey(verifier_key).map_err(|_| kt("log verifier key"))?;
        let latest = match saved.filter(|s| !s.trim().is_empty()) {
            None => None,
            Some(s) => {
                let h: SavedHead = serde_json::from_str(s)
                    .map_err(|_| Error::InvalidArgument("saved log head"))?;
                Some(TreeHead {
                    size: h.size,
                    root: Hash::from_base64(&h.root)
                        .ok_or(Error::InvalidArgument("saved log head"))?,
                })
            }
        };
        Ok(Self {
            key,
            origin,
            latest,
        })
    }

    /// The newest head accepted, to persist.
    #[must_use]
    pub fn save(&self) -> String {
        match self.latest {
            None => String::new(),
            Some(h) => serde_json::json!({"size": h.size, "root": h.root.to_base64()}).to_string(),
        }
    }

    /// The newest head accepted.
    #[must_use]
    pub fn latest(&self) -> Option<TreeHead> {
        self.latest
    }

    /// Verify a checkpoint note's signature and origin; returns its head.
    pub fn parse_checkpoint(&self, note: &str) -> Result<TreeHead> {
        let cp = SignedCheckpoint::from_note(note, &self.key)
            .map_err(|_| kt("checkpoint signature or format"))?;
        if cp.checkpoint.origin != self.origin {
            return Err(kt("checkpoint of another log"));
        }
        Ok(TreeHead {
            size: cp.checkpoint.size,
            root: cp.checkpoint.root,
        })
    }

    /// The consistency proof needed before `head` can be accepted: `(from, to)` sizes,
    /// or `None` if no proof is needed (first head, or the same as ours).
    #[must_use]
    pub fn proof_needed(&self, head: &TreeHead) -> Option<(u64, u64)> {
        let ours = self.latest?;
        if ours.size == head.size {
            return None;
        }
        Some((ours.size.min(head.size), ours.size.max(head.size)))
    }

    /// Accept `head` (from [`Self::parse_checkpoint`]) given the consistency proof
    /// between it and our latest head (either may be the older). A head of the same size
    /// with another root, or a proof that does not verify, is a forked log.
    pub fn accept(&mut self, head: TreeHead, proof: &[String]) -> Result<()> {
        if let Some(ours) = self.latest {
            check_consistent(&ours, &head, &parse_hashes(proof)?)?;
            if head.size <= ours.size {
                return Ok(());
            }
        }
        self.latest = Some(head);
        Ok(())
    }

    /// Check a head another member carried into the group against ours (split-view
    /// detection). Does not change our head.
    pub fn check_peer_head(&self, peer: &TreeHead, proof: &[String]) -> Result<()> {
        match self.latest {
            None => Ok(()),
            Some(ours) => check_consistent(&ours, peer, &parse_hashes(proof)?),
        }
    }

    /// Verify a directory answer whose checkpoint was accepted with [`Self::accept`]:
    /// every device must have a registration entry for exactly this principal, device
    /// and key, included in that checkpoint. Devices without a proven registration are
    /// returned in the error list, never as trusted.
    pub fn verify_directory(
        &self,
        answer: &DirectoryAnswer,
    ) -> Result<(Vec<LoggedDevice>, Vec<String>)> {
        let head = self.parse_checkpoint(&answer.checkpoint)?;
        match self.latest {
            Some(l) if l == head => {}
            _ => return Err(kt("directory answer not under the accepted checkpoint")),
        }
        let principal = Principal::new(&answer.principal)?;
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        for d in &answer.devices {
            match verify_device(&principal, d, &head) {
                Ok(dev) => ok.push(dev),
                Err(e) => bad.push(format!("{}: {e}", d.device)),
            }
        }
        Ok((ok, bad))
    }
}

fn check_consistent(a: &TreeHead, b: &TreeHead, proof: &[Hash]) -> Result<()> {
    let (old, new) = if a.size <= b.size { (a, b) } else { (b, a) };
    verify_consistency(old.size, new.size, &old.root, &new.root, proof)
        .map_err(|_| kt("the log is not consistent with the checkpoint seen before: split view"))
}

fn verify_device(
    principal: &Principal,
    d: &DirectoryDevice,
    head: &TreeHead,
) -> Result<LoggedDevice> {
    let device = DeviceId::parse(&d.device)?;
    let key_bytes = B64
        .decode(&d.signature_key)
        .map_err(|_| Error::Malformed("signature key".into()))?;
    let key: [u8; 32] = key_bytes
        .as_slice()
        .try_into()
        .map_err(|_| Error::Malformed("signature key".into()))?;
    let target = format!("device:{device}");
    let detail = format!("ed25519:{}", B64.encode(key));
    let mut registered = None;
    let mut revoked = false;
    for pe in &d.entries {
        let entry = AuditEntry::from_json(&pe.entry).map_err(|_| kt("log entry does not parse"))?;
        if entry.seq() != pe.seq {
            return Err(kt("log entry index mismatch"));
        }
        if pe.seq >= head.size {
            return Err(kt("log entry not yet covered by the checkpoint"));
        }
        verify_inclusion(
            pe.seq,
            head.size,
            &entry.leaf_hash(),
            &parse_hashes(&pe.proof)?,
            &head.root,
        )
        .map_err(|_| kt("inclusion proof does not lead to the checkpoint"))?;
        if entry.actor() != principal.as_str() || entry.target() != Some(target.as_str()) {
            return Err(kt("log entry is about another device"));
        }
        match entry.action() {
            ACTION_REGISTERED if entry.detail() == Some(detail.as_str()) => {
                registered = Some(pe.seq);
            }
            ACTION_REGISTERED => return Err(kt("logged key differs from the served key")),
            ACTION_REVOKED => revoked = true,
            _ => return Err(kt("unexpected log entry")),
        }
    }
    let registered_seq = registered.ok_or_else(|| kt("device registration is not in the log"))?;
    Ok(LoggedDevice {
        name: DeviceName {
            principal: principal.clone(),
            device,
        },
        signature_key: key,
        active: !revoked && d.status != "revoked",
        registered_seq,
    })
}

/// What members send each other inside the group as MLS application messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum GroupPayload {
    /// A chat line.
    Chat {
        /// The text.
        text: String,
    },
    /// The sender's newest accepted log head, so members can compare views.
    Checkpoint {
        /// Tree size.
        size: u64,
        /// Root, base64.
        root: String,
    },
}

impl GroupPayload {
    /// Encode as JSON bytes.
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decode; unknown or malformed payloads are an error, never a panic.
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        serde_json::from_slice(b).map_err(|_| Error::Malformed("group payload".into()))
    }

    /// The head a `Checkpoint` payload carries.
    pub fn head(&self) -> Result<Option<TreeHead>> {
        match self {
            Self::Checkpoint { size, root } => Ok(Some(TreeHead {
                size: *size,
                root: Hash::from_base64(root).ok_or_else(|| Error::Malformed("root".into()))?,
            })),
            Self::Chat { .. } => Ok(None),
        }
    }
}
