//! Bridge from [`AuditLog::record_audit`](super::AuditLog::record_audit) to the
//! tamper-evident Merkle log of `confide-audit`: every recorded event is also appended,
//! in the same database, to `audit_log` (tables created at connect time).
//!
//! Appending needs no key; the server's signer task holds the log key and signs
//! checkpoints (`confide_audit::store::AuditWriter::tick`).

use confide_audit::store::{AuditStore, Backend as AuditBackend};

use super::sql::{Backend, SqlStore};
use super::{Result, StoreError};
use crate::audit::{AuditEvent, Outcome, Priority};

fn backend(b: Backend) -> AuditBackend {
    match b {
        Backend::Sqlite => AuditBackend::Sqlite,
        Backend::Postgres => AuditBackend::Postgres,
    }
}

fn err(e: confide_audit::Error) -> StoreError {
    StoreError::Db(format!("audit log: {e}"))
}

/// Creates the Merkle log tables and triggers if missing.
pub(crate) async fn open(store: &SqlStore) -> Result<()> {
    AuditStore::open(store.pool().clone(), backend(store.backend()))
        .await
        .map_err(err)?;
    Ok(())
}

/// The Merkle log's view of an event: the same fields, no others.
pub fn to_merkle(e: &AuditEvent) -> confide_audit::AuditEvent {
    confide_audit::AuditEvent {
        actor: e.actor.clone(),
        role: e.role.map(|r| r.as_str().to_owned()),
        action: e.action.as_str().to_owned(),
        target: e.target.clone(),
        // Not known at this layer; the per-patient report also matches on `target`.
        patient: None,
        outcome: match e.outcome {
            Outcome::Success => confide_audit::Outcome::Success,
            Outcome::Failure => confide_audit::Outcome::Failure,
            Outcome::Denied => confide_audit::Outcome::Denied,
        },
        source: e.source.clone(),
        request_id: e.request_id.clone(),
        priority: match e.priority {
            Priority::Normal => confide_audit::Priority::Normal,
            Priority::High => confide_audit::Priority::High,
        },
        detail: e.detail.clone(),
    }
}

/// Appends `e` to the Merkle log at the event's own time.
pub(crate) async fn record(store: &SqlStore, e: &AuditEvent) -> Result<u64> {
    let at = confide_audit::Timestamp::from_unix_millis(e.at.0)
        .ok_or(StoreError::Corrupt("audit time out of range"))?;
    AuditStore::attach(store.pool().clone(), backend(store.backend()))
        .append(at, to_merkle(e))
        .await
        .map_err(err)
}
