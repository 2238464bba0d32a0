//! Test-only hooks that break the rules on purpose, to prove that *other* clients refuse
//! what a malicious member or server would send. Built only with the
//! `danger-test-hooks` feature, which no shipped binary enables.

use zeroize::Zeroizing;

use crate::device::{ClaimedKeyPackage, Device, client, key_package_message, random};
use crate::error::Result;
use crate::group::{Commit, ConsultationGroup};
use crate::identity::DeviceName;
use crate::storage::Store;

/// Commit an Add from any member, skipping the local owner check.
pub fn commit_add_as_any_member(
    group: &mut ConsultationGroup,
    device: &Device,
    key_packages: &[ClaimedKeyPackage],
) -> Result<Commit> {
    group.add_unchecked(device, key_packages)
}

/// A KeyPackage that *claims* `name` and `claimed_key` but is signed with `device`'s
/// key: what a server that does not hold a victim's secret key could forge.
pub fn key_package_claiming(
    device: &Device,
    name: &DeviceName,
    claimed_key: &[u8; 32],
) -> Result<Vec<u8>> {
    // A throwaway client with its own storage: the credential names `name` and
    // `claimed_key`, the signatures are made with `device`'s secret.
    let secret: Zeroizing<[u8; 32]> = Zeroizing::new(
        device
            .secret_key()
            .as_slice()
            .try_into()
            .map_err(|_| crate::Error::Internal("device secret is not 32 bytes".into()))?,
    );
    let forger = client(name, claimed_key, &secret, Store::default());
    key_package_message(&forger, false)
}

/// A group of the ghost's own under a chosen group id (to forge commits and Welcomes
/// that name a real consultation's group).
pub fn group_with_id(
    device: &Device,
    consultation: &str,
    group_id: &[u8],
) -> Result<ConsultationGroup> {
    ConsultationGroup::create_with_id(device, consultation, group_id)
}

/// A fresh Ed25519 secret key (a ghost's own key): 32 random bytes, the form
/// [`Device::restore`] takes.
pub fn fresh_signer() -> Result<Zeroizing<[u8; 32]>> {
    Ok(Zeroizing::new(random()?))
}

/// A signed RFC 6962 log kept in memory, written the way the server writes device
/// entries: the log a test server (honest or forking) serves its checkpoints and proofs
/// from.
pub struct TestLog {
    origin: String,
    log: confide_audit::AuditLog,
    tree: confide_audit::MemoryTree,
    entries: Vec<String>,
    key: confide_audit::LogSigningKey,
    t: i64,
    note: String,
}

impl TestLog {
    /// An empty log named `origin`, signed with a key made from `seed`.
    pub fn new(origin: &str, seed: u8) -> Self {
        use confide_audit::{AuditLog, CheckpointPolicy, LogSigningKey, MemoryTree};
        let log = AuditLog::new(
            origin,
            LogSigningKey::from_seed(&[seed; 32]),
            CheckpointPolicy::default(),
        )
        .expect("a valid origin");
        TestLog {
            origin: origin.to_string(),
            log,
            tree: MemoryTree::new(),
            entries: Vec::new(),
            key: LogSigningKey::from_seed(&[seed; 32]),
            t: 1_800_000_000_000,
            note: String::new(),
        }
    }

    /// The verifier key line a server serves at `/api/audit/key`.
    pub fn vkey(&self) -> String {
        self.key
            .public_key()
            .to_vkey(&self.origin)
            .expect("a valid origin")
    }

    /// Append one event, a second after the previous one; returns its sequence number.
    pub fn append(
        &mut self,
        actor: &str,
        role: Option<&str>,
        action: &str,
        target: Option<String>,
        detail: Option<String>,
    ) -> u64 {
        use confide_audit::{AuditEvent, Outcome, Priority, Timestamp};
        self.t += 1000;
        let a = self.log.append(
            Timestamp::from_unix_millis(self.t).expect("a valid time"),
            AuditEvent {
                actor: actor.into(),
                role: role.map(Into::into),
                action: action.into(),
                target,
                patient: None,
                outcome: Outcome::Success,
                source: None,
                request_id: None,
                priority: Priority::Normal,
                detail,
            },
        );
        self.tree.push(a.leaf_hash);
        self.entries.push(a.entry.to_json());
        a.entry.seq()
    }

    /// Ask for a checkpoint now: the signed note of the new one, if the log made one.
    pub fn checkpoint(&mut self) -> Option<String> {
        use confide_audit::Timestamp;
        self.log
            .request_checkpoint(Timestamp::from_unix_millis(self.t).expect("a valid time"));
        let cp = self.log.poll_checkpoint()?;
        self.note = cp.to_note(&self.key.public_key());
        Some(self.note.clone())
    }

    /// The newest checkpoint's signed note (empty before the first).
    pub fn note(&self) -> &str {
        &self.note
    }

    /// Entry `seq` with its inclusion proof against the whole tree.
    pub fn proven(&self, seq: u64) -> crate::transparency::ProvenEntry {
        let proof = confide_audit::inclusion_proof(&self.tree, seq, self.tree.size())
            .expect("an entry of this log")
            .path
            .iter()
            .map(|h| h.to_base64())
            .collect();
        crate::transparency::ProvenEntry {
            seq,
            entry: self.entries[seq as usize].clone(),
            proof,
        }
    }

    /// A consistency proof between two sizes of this log, if both exist.
    pub fn consistency(&self, from: u64, to: u64) -> Option<Vec<String>> {
        if from > to || to > self.tree.size() {
            return None;
        }
        Some(
            confide_audit::consistency_proof(&self.tree, from, to)
                .ok()?
                .path
                .iter()
                .map(|h| h.to_base64())
                .collect(),
        )
    }
}
