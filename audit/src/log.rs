//! The appending side: a sans-IO core that numbers entries, keeps the frontier and
//! decides when to sign a checkpoint.

use crate::checkpoint::{Checkpoint, LogSigningKey, SignedCheckpoint};
use crate::entry::{AuditEntry, AuditEvent, Timestamp};
use crate::error::Error;
use crate::hash::Hash;
use crate::tree::{CompactRange, NodeId};

/// When to sign: after `max_entries` unsigned entries, or `max_delay_ms` after the
/// oldest unsigned entry, whichever comes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointPolicy {
    /// Sign once this many entries are not covered by a checkpoint (N). At least 1.
    pub max_entries: u64,
    /// Sign once the oldest uncovered entry is this old, in milliseconds (T).
    pub max_delay_ms: u64,
}

impl Default for CheckpointPolicy {
    /// 1000 entries or 2 seconds: an entry is covered by a signature (and so can no
    /// longer be dropped unnoticed once a witness has seen it) within seconds. Signing
    /// is one Ed25519 signature and one row per checkpoint, at most one every two
    /// seconds, and only while entries arrive (docs/benchmarks.md has the cost).
    fn default() -> Self {
        Self {
            max_entries: 1000,
            max_delay_ms: 2_000,
        }
    }
}

impl CheckpointPolicy {
    /// Whether a checkpoint is due with `unsigned` entries not yet covered, the oldest
    /// of them recorded at `oldest_unsigned`, at time `now`.
    pub fn is_due(
        &self,
        unsigned: u64,
        oldest_unsigned: Option<Timestamp>,
        now: Timestamp,
    ) -> bool {
        let late = oldest_unsigned
            .is_some_and(|since| now >= since.saturating_add_millis(self.max_delay_ms));
        unsigned > 0 && (unsigned >= self.max_entries.max(1) || late)
    }
}

/// What one append produced, for the store to persist in the same transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct Appended {
    /// The entry as recorded, with its sequence number and time.
    pub entry: AuditEntry,
    /// Its leaf hash.
    pub leaf_hash: Hash,
    /// Every complete node this append finished (the leaf first); storing them makes
    /// later proofs O(log n) reads.
    pub nodes: Vec<(NodeId, Hash)>,
}

/// The audit log core.
///
/// It holds only the O(log n) frontier, never the entries. The loop, as for every
/// Confide core: one mutation ([`AuditLog::append`] or [`AuditLog::handle_timeout`]),
/// then drain [`AuditLog::poll_checkpoint`] until it returns `None`, persist what came
/// out, and wake up again at [`AuditLog::poll_timeout`].
///
/// ```
/// # use confide_audit::*;
/// let key = LogSigningKey::from_seed(&[1; 32]);
/// let policy = CheckpointPolicy { max_entries: 2, max_delay_ms: 1000 };
/// let mut log = AuditLog::new("clinic.example/audit", key, policy)?;
/// let t0 = Timestamp::from_unix_millis(1_800_000_000_000).unwrap();
/// let event = AuditEvent { actor: "account:12".into(), action: "appointments_listed".into(), ..Default::default() };
/// let a = log.append(t0, event.clone());
/// # let _ = &a;
/// // store a.entry, a.leaf_hash and a.nodes ...
/// assert!(log.poll_checkpoint().is_none());
/// // ... one entry is unsigned, so the core wants to be woken a second later.
/// assert_eq!(log.poll_timeout(), Some(t0.saturating_add_millis(1000)));
/// let _ = log.append(t0, event);
/// let cp = log.poll_checkpoint().expect("two entries reach max_entries");
/// assert_eq!(cp.checkpoint.size, 2);
/// assert!(log.poll_checkpoint().is_none() && log.poll_timeout().is_none());
/// # Ok::<(), confide_audit::Error>(())
/// ```
pub struct AuditLog {
    origin: String,
    key: LogSigningKey,
    policy: CheckpointPolicy,
    frontier: CompactRange,
    last_signed: Option<Checkpoint>,
    // Time of the oldest entry not covered by a checkpoint.
    unsigned_since: Option<Timestamp>,
    // Latest time seen, so checkpoint times never go backwards when the clock does.
    now: Option<Timestamp>,
    due: bool,
}

impl AuditLog {
    /// A new, empty log named `origin` (for example `clinic.example/audit`).
    pub fn new(origin: &str, key: LogSigningKey, policy: CheckpointPolicy) -> Result<Self, Error> {
        Self::resume(origin, key, policy, CompactRange::new(), None, None)
    }

    /// Continues a stored log from its frontier and latest checkpoint.
    /// `oldest_unsigned` is the time of the first entry after that checkpoint, if any.
    pub fn resume(
        origin: &str,
        key: LogSigningKey,
        policy: CheckpointPolicy,
        frontier: CompactRange,
        last_signed: Option<Checkpoint>,
        oldest_unsigned: Option<Timestamp>,
    ) -> Result<Self, Error> {
        // The origin doubles as the signed-note key name; a bad one would only be
        // noticed when the first checkpoint is parsed back.
        let probe = key.public_key();
        probe.to_vkey(origin)?;
        let signed = last_signed.as_ref().map_or(0, |c| c.size);
        let unsigned_since = if frontier.size() > signed {
            oldest_unsigned
        } else {
            None
        };
        let mut log = Self {
            origin: origin.to_owned(),
            key,
            policy: CheckpointPolicy {
                max_entries: policy.max_entries.max(1),
                ..policy
            },
            frontier,
            last_signed,
            unsigned_since,
            now: oldest_unsigned,
            due: false,
        };
        log.update_due();
        Ok(log)
    }

    /// The log's name.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Number of entries appended.
    pub fn size(&self) -> u64 {
        self.frontier.size()
    }

    /// Current root.
    pub fn root(&self) -> Hash {
        self.frontier.root()
    }

    /// The frontier, to persist or to rebuild the core later.
    pub fn frontier(&self) -> &CompactRange {
        &self.frontier
    }

    /// The latest checkpoint signed by this core or given to [`AuditLog::resume`].
    pub fn last_checkpoint(&self) -> Option<&Checkpoint> {
        self.last_signed.as_ref()
    }

    /// Records `event` at time `now`; returns the numbered entry and its hashes.
    pub fn append(&mut self, now: Timestamp, event: AuditEvent) -> Appended {
        self.observe(now);
        let entry = AuditEntry::new(self.frontier.size(), now, event);
        let leaf_hash = entry.leaf_hash();
        let mut nodes = Vec::with_capacity(2);
        self.frontier
            .push_with(leaf_hash, |id, h| nodes.push((id, *h)));
        if self.unsigned_since.is_none() {
            self.unsigned_since = Some(now);
        }
        self.update_due();
        Appended {
            entry,
            leaf_hash,
            nodes,
        }
    }

    /// Tells the core the time; call when [`AuditLog::poll_timeout`] is reached.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.observe(now);
        self.update_due();
    }

    /// Asks for a checkpoint now regardless of policy (for example at shutdown or
    /// before an export); the next [`AuditLog::poll_checkpoint`] signs one if any entry
    /// is unsigned.
    pub fn request_checkpoint(&mut self, now: Timestamp) {
        self.observe(now);
        self.due = self.unsigned() > 0;
    }

    /// The checkpoint to store and publish, when one is due.
    pub fn poll_checkpoint(&mut self) -> Option<SignedCheckpoint> {
        if !self.due {
            return None;
        }
        let time = self.now?;
        let cp = Checkpoint {
            origin: self.origin.clone(),
            size: self.frontier.size(),
            root: self.frontier.root(),
            time,
        };
        let signed = self.key.sign(cp.clone());
        self.last_signed = Some(cp);
        self.unsigned_since = None;
        self.due = false;
        Some(signed)
    }

    /// When the core next needs [`AuditLog::handle_timeout`]; `None` when every entry
    /// is signed.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.unsigned_since
            .map(|t| t.saturating_add_millis(self.policy.max_delay_ms))
    }

    fn unsigned(&self) -> u64 {
        self.frontier.size() - self.last_signed.as_ref().map_or(0, |c| c.size)
    }

    fn observe(&mut self, now: Timestamp) {
        self.now = Some(self.now.map_or(now, |t| t.max(now)));
    }

    fn update_due(&mut self) {
        let n = self.unsigned();
        let late = match (self.unsigned_since, self.now) {
            (Some(since), Some(now)) => {
                now >= since.saturating_add_millis(self.policy.max_delay_ms)
            }
            _ => false,
        };
        self.due = self.due || (n > 0 && (n >= self.policy.max_entries || late));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_unix_millis(ms).unwrap()
    }

    fn ev() -> AuditEvent {
        AuditEvent {
            actor: "account:3".into(),
            action: "appointment_booked".into(),
            ..Default::default()
        }
    }

    #[test]
    fn signs_after_delay_even_with_few_entries() {
        let key = LogSigningKey::from_seed(&[3; 32]);
        let public = key.public_key();
        let policy = CheckpointPolicy {
            max_entries: 100,
            max_delay_ms: 5_000,
        };
        let mut log = AuditLog::new("c.example/audit", key, policy).unwrap();
        assert_eq!(log.poll_timeout(), None);
        let _ = log.append(t(10_000), ev());
        let _ = log.append(t(12_000), ev());
        assert!(log.poll_checkpoint().is_none());
        assert_eq!(log.poll_timeout(), Some(t(15_000)));
        log.handle_timeout(t(14_999));
        assert!(log.poll_checkpoint().is_none());
        log.handle_timeout(t(15_000));
        let cp = log.poll_checkpoint().unwrap();
        assert_eq!((cp.checkpoint.size, cp.checkpoint.time), (2, t(15_000)));
        cp.verify(&public).unwrap();
        assert_eq!(log.poll_timeout(), None);
        // A clock that steps back does not make checkpoint times go backwards.
        let a = log.append(t(1_000), ev());
        assert_eq!(a.entry.seq(), 2);
        log.request_checkpoint(t(1_000));
        assert_eq!(log.poll_checkpoint().unwrap().checkpoint.time, t(15_000));
    }

    #[test]
    fn resume_continues_numbering_and_roots() {
        let policy = CheckpointPolicy::default();
        let mut a = AuditLog::new(
            "c.example/audit",
            LogSigningKey::from_seed(&[4; 32]),
            policy,
        )
        .unwrap();
        for i in 0..10 {
            let _ = a.append(t(i), ev());
        }
        let mut b = AuditLog::resume(
            "c.example/audit",
            LogSigningKey::from_seed(&[4; 32]),
            policy,
            a.frontier().clone(),
            None,
            Some(t(0)),
        )
        .unwrap();
        let x = a.append(t(20), ev());
        let y = b.append(t(20), ev());
        assert_eq!(x, y);
        assert_eq!(a.root(), b.root());
        assert!(AuditLog::new("bad origin", LogSigningKey::from_seed(&[4; 32]), policy).is_err());
    }
}
