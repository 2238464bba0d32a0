use confide_audit::*;

pub const ORIGIN: &str = "clinic.example/audit";

pub fn t(ms: i64) -> Timestamp {
    Timestamp::from_unix_millis(ms).unwrap()
}

pub fn event(i: u64) -> AuditEvent {
    AuditEvent {
        actor: format!("account:{}", i % 7),
        role: Some(
            if i.is_multiple_of(2) {
                "doctor"
            } else {
                "patient"
            }
            .into(),
        ),
        action: if i.is_multiple_of(3) {
            "join_ok"
        } else {
            "appointments_listed"
        }
        .into(),
        target: Some(format!("consultation:{}", i % 5)),
        patient: Some(format!("account:{}", 100 + i % 3)),
        outcome: if i.is_multiple_of(11) {
            Outcome::Denied
        } else {
            Outcome::Success
        },
        source: Some("198.51.100.7".into()),
        request_id: Some(format!("req-{i}")),
        priority: Priority::Normal,
        detail: None,
    }
}

/// A log of `n` entries as a store would hold it: rows with their stored leaf hashes,
/// the node tree, and the checkpoints the policy signed (every `every` entries), plus
/// a final checkpoint at `n`.
pub struct Fixture {
    pub public: LogPublicKey,
    pub rows: Vec<StoredEntry>,
    pub tree: MemoryTree,
    pub checkpoints: Vec<SignedCheckpoint>,
}

pub fn fixture(n: u64, every: u64) -> Fixture {
    let key = LogSigningKey::from_seed(&[42; 32]);
    let public = key.public_key();
    let policy = CheckpointPolicy {
        max_entries: every,
        max_delay_ms: 3_600_000,
    };
    let mut log = AuditLog::new(ORIGIN, key, policy).unwrap();
    let mut rows = Vec::new();
    let mut tree = MemoryTree::new();
    let mut checkpoints = Vec::new();
    for i in 0..n {
        let a = log.append(t(1_800_000_000_000 + i as i64 * 1000), event(i));
        tree.push(a.leaf_hash);
        rows.push(StoredEntry {
            entry: a.entry,
            leaf_hash: Some(a.leaf_hash),
        });
        while let Some(cp) = log.poll_checkpoint() {
            checkpoints.push(cp);
        }
    }
    log.request_checkpoint(t(1_900_000_000_000));
    checkpoints.extend(log.poll_checkpoint());
    Fixture {
        public,
        rows,
        tree,
        checkpoints,
    }
}

impl Fixture {
    pub fn verify(&self, rows: &[StoredEntry]) -> Result<VerifyReport, Error> {
        verify_log(
            rows.iter().cloned().map(Ok),
            &self.checkpoints,
            &self.public,
            ORIGIN,
            None,
        )
    }
}

/// Rebuilds an entry with one field changed, as a direct SQL UPDATE would.
pub fn with_event(e: &AuditEntry, f: impl FnOnce(&mut AuditEvent)) -> AuditEntry {
    let mut ev = e.event();
    f(&mut ev);
    AuditEntry::new(e.seq(), e.time(), ev)
}
