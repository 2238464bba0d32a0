//! The audit API: append an event, read events back. Both go to the one store, the
//! Merkle log (`store::merkle`), which `confide audit verify` covers: there is no
//! second, unverified copy to read from.

use std::collections::BTreeSet;

use async_trait::async_trait;
use confide_audit::AccessRecord;
use confide_audit::store::EntryFilter;

use super::sql::SqlStore;
use super::{Result, StoreError};
use crate::audit::{AuditEvent, AuditFilter, AuditRecord, AuditSeq, Outcome};
use crate::model::Timestamp;

/// The Merkle log's time of `t`; times outside its range (before 1970, after 9999)
/// are clamped to the ends, which selects the same entries.
pub(crate) fn log_time(t: Timestamp) -> confide_audit::Timestamp {
    const MAX_MILLIS: i64 = 253_402_300_799_999;
    // Clamped into the log's range, so always representable.
    confide_audit::Timestamp::from_unix_millis(t.0.clamp(0, MAX_MILLIS))
        .expect("a time clamped into the log's range")
}

#[async_trait]
pub trait AuditLog: Send + Sync {
    /// Append one event; returns its sequence number (its leaf index in the Merkle
    /// log, dense from 0).
    async fn record_audit(&self, event: AuditEvent) -> Result<AuditSeq> {
        self.record_audit_leaf(event).await.map(|(seq, _)| seq)
    }
    /// Append one event; returns its sequence number and its leaf index in the Merkle
    /// log, which inclusion proofs are about (the key directory serves proofs of the
    /// entries it writes).
    async fn record_audit_leaf(&self, event: AuditEvent) -> Result<(AuditSeq, u64)>;
    /// Events matching `filter`, oldest first.
    async fn audit_events(&self, filter: AuditFilter) -> Result<Vec<AuditRecord>>;
    /// Every account that touched `patient`'s records in `[from, to)`: entries naming
    /// the patient, and entries whose target is one of `targets` (the patient's
    /// appointments, which the caller lists). `confide audit report` and the
    /// administration page both read it.
    async fn access_report(
        &self,
        patient: &str,
        targets: &BTreeSet<String>,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<AccessRecord>>;
}

#[async_trait]
impl AuditLog for SqlStore {
    async fn record_audit_leaf(&self, e: AuditEvent) -> Result<(AuditSeq, u64)> {
        let leaf = super::merkle::record(self, &e).await?;
        let seq = i64::try_from(leaf).map_err(|_| StoreError::Corrupt("audit sequence"))?;
        Ok((AuditSeq(seq), leaf))
    }

    async fn audit_events(&self, f: AuditFilter) -> Result<Vec<AuditRecord>> {
        let filter = EntryFilter {
            actor: f.actor,
            action: f.action.map(|a| a.as_str().to_owned()),
            target: f.target,
            patient: f.patient,
            outcome: f.outcome.map(|o| match o {
                Outcome::Success => confide_audit::Outcome::Success,
                Outcome::Failure => confide_audit::Outcome::Failure,
                Outcome::Denied => confide_audit::Outcome::Denied,
            }),
            since: f.since.map(log_time),
            until: f.until.map(log_time),
            from: f
                .after
                .map_or(0, |s| u64::try_from(s.0.saturating_add(1)).unwrap_or(0)),
            limit: u64::try_from(f.limit.unwrap_or(10_000).clamp(1, 100_000)).unwrap_or(1),
        };
        let rows = super::merkle::attach(self)
            .query(&filter)
            .await
            .map_err(|e| StoreError::Db(format!("audit log: {e}")))?;
        rows.iter()
            .map(|r| {
                let seq = i64::try_from(r.entry.seq())
                    .map_err(|_| StoreError::Corrupt("audit sequence"))?;
                let event = super::merkle::from_merkle(&r.entry).ok_or(StoreError::Corrupt(
                    "audit entry of an unknown action or role",
                ))?;
                Ok(AuditRecord {
                    seq: AuditSeq(seq),
                    event,
                })
            })
            .collect()
    }

    async fn access_report(
        &self,
        patient: &str,
        targets: &BTreeSet<String>,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<AccessRecord>> {
        super::merkle::attach(self)
            .access_report(patient, targets, log_time(from), log_time(to))
            .await
            .map_err(|e| StoreError::Db(format!("audit log: {e}")))
    }
}
