//! The per-patient access report: who touched one patient's records, and when.

use std::collections::{BTreeMap, BTreeSet};

use crate::entry::{AuditEntry, Outcome, Timestamp};

/// One account's accesses to the patient's records in the report period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessRecord {
    /// Pseudonymous id of the account (`anonymous` for unauthenticated attempts).
    pub actor: String,
    /// Role recorded with the accesses.
    pub role: Option<String>,
    /// Earliest access in the period.
    pub first: Timestamp,
    /// Latest access in the period.
    pub last: Timestamp,
    /// Number of entries.
    pub count: u64,
    /// Entries that were denied or failed.
    pub refused: u64,
    /// Distinct actions, e.g. `join_ok`, `appointment_booked`.
    pub actions: BTreeSet<String>,
    /// Distinct targets touched, e.g. `consultation:7`.
    pub targets: BTreeSet<String>,
    /// Sequence numbers of the entries, so each line can be proven with an inclusion
    /// proof.
    pub seqs: Vec<u64>,
}

/// Target kinds the report covers by default: the patient's appointments and
/// consultations.
pub const PATIENT_RECORD_KINDS: &[&str] = &["appointment", "consultation"];

/// Every account that acted on `patient`'s records between `from` (inclusive) and
/// `to` (exclusive), one line per (account, role), ordered by first access. Attempts
/// that were refused count too: an auditor wants those most.
///
/// An entry is about the patient when its `patient` field is `patient` and its target
/// kind is one of `kinds` (normally [`PATIENT_RECORD_KINDS`]), or when its target is
/// one of `targets`: the patient's appointment and consultation ids (`appointment:4`)
/// as the caller's store lists them, which also covers entries recorded without a
/// patient id. Feed it the entries a store pre-selected by time; it filters again so
/// that a sloppy query cannot widen the report.
pub fn access_report<'a, I>(
    entries: I,
    patient: &str,
    targets: &BTreeSet<String>,
    from: Timestamp,
    to: Timestamp,
    kinds: &[&str],
) -> Vec<AccessRecord>
where
    I: IntoIterator<Item = &'a AuditEntry>,
{
    let mut by_actor: BTreeMap<(String, Option<String>), AccessRecord> = BTreeMap::new();
    for e in entries {
        if e.time() < from || e.time() >= to {
            continue;
        }
        let by_patient =
            e.patient() == Some(patient) && e.target_kind().is_some_and(|k| kinds.contains(&k));
        let by_target = e.target().is_some_and(|t| targets.contains(t));
        if !(by_patient || by_target) {
            continue;
        }
        let key = (e.actor().to_owned(), e.role().map(str::to_owned));
        let rec = by_actor.entry(key).or_insert_with(|| AccessRecord {
            actor: e.actor().to_owned(),
            role: e.role().map(str::to_owned),
            first: e.time(),
            last: e.time(),
            count: 0,
            refused: 0,
            actions: BTreeSet::new(),
            targets: BTreeSet::new(),
            seqs: Vec::new(),
        });
        rec.first = rec.first.min(e.time());
        rec.last = rec.last.max(e.time());
        rec.count += 1;
        if e.outcome() != Outcome::Success {
            rec.refused += 1;
        }
        rec.actions.insert(e.action().to_owned());
        if let Some(t) = e.target() {
            rec.targets.insert(t.to_owned());
        }
        rec.seqs.push(e.seq());
    }
    let mut out: Vec<AccessRecord> = by_actor.into_values().collect();
    out.sort_by(|a, b| (a.first, &a.actor).cmp(&(b.first, &b.actor)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::AuditEvent;

    #[test]
    fn groups_by_account_and_filters_patient_time_and_kind() {
        let t = |ms| Timestamp::from_unix_millis(ms).unwrap();
        let mk = |seq, ms, actor: &str, patient: Option<&str>, target: &str, outcome| {
            AuditEntry::new(
                seq,
                t(ms),
                AuditEvent {
                    actor: actor.into(),
                    role: Some("doctor".into()),
                    action: "read".into(),
                    outcome,
                    target: Some(target.into()),
                    patient: patient.map(Into::into),
                    ..Default::default()
                },
            )
        };
        let entries = [
            mk(
                0,
                100,
                "account:1",
                Some("account:9"),
                "appointment:1",
                Outcome::Success,
            ),
            mk(
                1,
                200,
                "account:2",
                Some("account:9"),
                "consultation:5",
                Outcome::Denied,
            ),
            mk(
                2,
                300,
                "account:1",
                None,
                "consultation:6",
                Outcome::Success,
            ),
            mk(
                3,
                300,
                "account:3",
                Some("account:8"),
                "consultation:7",
                Outcome::Success,
            ),
            mk(
                4,
                400,
                "account:4",
                Some("account:9"),
                "account:9",
                Outcome::Success,
            ),
            mk(
                5,
                999,
                "account:5",
                Some("account:9"),
                "appointment:1",
                Outcome::Success,
            ),
        ];
        let targets: BTreeSet<String> = ["consultation:6".to_string()].into();
        let r = access_report(
            &entries,
            "account:9",
            &targets,
            t(100),
            t(999),
            PATIENT_RECORD_KINDS,
        );
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].actor, "account:1");
        assert_eq!((r[0].count, r[0].first, r[0].last), (2, t(100), t(300)));
        assert_eq!(r[0].seqs, vec![0, 2]);
        assert_eq!(r[1].actor, "account:2");
        assert_eq!(r[1].refused, 1);
    }
}
