//! A key-transparency log the malicious server keeps for one victim: an RFC 6962 tree
//! signed with a key of its own, into which it writes the devices the real directory
//! answers with. Two of them made from the same seed but with different first entries
//! are a forked log: each is consistent on its own; together they are a split view.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use confide_audit::{
    AuditEvent, AuditLog, CheckpointPolicy, LogSigningKey, MemoryTree, Outcome, Priority,
    Timestamp, consistency_proof, inclusion_proof,
};
use confide_mls::transparency::{DirectoryAnswer, ProvenEntry};

const ORIGIN: &str = "confide.test/forked";

pub struct FakeLog {
    log: AuditLog,
    tree: MemoryTree,
    entries: Vec<String>,
    key: LogSigningKey,
    t: i64,
    note: String,
    /// (principal, device, key) -> seq of its registration here.
    devices: Vec<(String, String, String, u64)>,
}

impl FakeLog {
    /// A log whose history starts with `first` (the fork point: two logs with the same
    /// seed and different `first` disagree from entry 0 on).
    pub fn new(seed: u8, first: &str) -> Self {
        let key = LogSigningKey::from_seed(&[seed; 32]);
        let log = AuditLog::new(
            ORIGIN,
            LogSigningKey::from_seed(&[seed; 32]),
            CheckpointPolicy::default(),
        )
        .unwrap();
        let mut l = FakeLog {
            log,
            tree: MemoryTree::new(),
            entries: Vec::new(),
            key,
            t: 1_800_000_000_000,
            note: String::new(),
            devices: Vec::new(),
        };
        l.append("account:999", first, Some("appointment:1".into()), None);
        l.checkpoint();
        l
    }

    /// The verifier key line the proxy serves at `/api/audit/key`.
    pub fn vkey(&self) -> String {
        self.key.public_key().to_vkey(ORIGIN).unwrap()
    }

    fn append(
        &mut self,
        actor: &str,
        action: &str,
        target: Option<String>,
        detail: Option<String>,
    ) -> u64 {
        self.t += 1000;
        let a = self.log.append(
            Timestamp::from_unix_millis(self.t).unwrap(),
            AuditEvent {
                actor: actor.into(),
                role: None,
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

    fn checkpoint(&mut self) {
        self.log
            .request_checkpoint(Timestamp::from_unix_millis(self.t).unwrap());
        if let Some(cp) = self.log.poll_checkpoint() {
            self.note = cp.to_note(&self.key.public_key());
        }
    }

    fn proof(&self, seq: u64) -> Vec<String> {
        inclusion_proof(&self.tree, seq, self.tree.size())
            .unwrap()
            .path
            .iter()
            .map(|h| h.to_base64())
            .collect()
    }

    /// The real directory's answer, re-proven against this log: every device the real
    /// server listed is registered here (once) and served with this log's proof.
    pub fn rewrite(&mut self, real: &DirectoryAnswer) -> DirectoryAnswer {
        let mut out = real.clone();
        for d in &real.devices {
            let known = self.devices.iter().any(|(p, dev, k, _)| {
                p == &real.principal && dev == &d.device && k == &d.signature_key
            });
            if !known {
                let seq = self.append(
                    &real.principal,
                    "device_registered",
                    Some(format!("device:{}", d.device)),
                    Some(format!("ed25519:{}", d.signature_key)),
                );
                self.devices.push((
                    real.principal.clone(),
                    d.device.clone(),
                    d.signature_key.clone(),
                    seq,
                ));
            }
        }
        self.checkpoint();
        out.checkpoint = self.note.clone();
        for d in &mut out.devices {
            let seq = self
                .devices
                .iter()
                .find(|(p, dev, k, _)| {
                    p == &real.principal && dev == &d.device && k == &d.signature_key
                })
                .map(|x| x.3)
                .unwrap();
            d.status = "active".into();
            d.entries = vec![ProvenEntry {
                seq,
                entry: self.entries[seq as usize].clone(),
                proof: self.proof(seq),
            }];
        }
        out
    }

    /// A consistency proof between two sizes of this log, if both exist.
    pub fn consistency(&self, from: u64, to: u64) -> Option<Vec<String>> {
        if from > to || to > self.tree.size() {
            return None;
        }
        Some(
            consistency_proof(&self.tree, from, to)
                .ok()?
                .path
                .iter()
                .map(|h| h.to_base64())
                .collect(),
        )
    }
}

/// `from` and `to` of a `/api/audit/consistency?from=&to=` path.
pub fn consistency_query(path: &str) -> Option<(u64, u64)> {
    let q = path.split_once('?')?.1;
    let mut from = None;
    let mut to = None;
    for kv in q.split('&') {
        match kv.split_once('=') {
            Some(("from", v)) => from = v.parse().ok(),
            Some(("to", v)) => to = v.parse().ok(),
            _ => {}
        }
    }
    Some((from?, to?))
}

/// Base64 of `b` (shared by the tests' forgeries).
pub fn b64(b: &[u8]) -> String {
    B64.encode(b)
}
