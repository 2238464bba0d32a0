//! Bridge from [`AuditLog::record_audit`](super::AuditLog::record_audit) to the
//! tamper-evident Merkle log of `confide-audit`, the one audit store: every recorded
//! event is appended, in the same database, to `audit_log` (tables created at connect
//! time), and read back from it.
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
        patient: e.patient.clone(),
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

/// The event's own time, as the Merkle log records it.
pub(crate) fn time_of(e: &AuditEvent) -> Result<confide_audit::Timestamp> {
    confide_audit::Timestamp::from_unix_millis(e.at.0)
        .ok_or(StoreError::Corrupt("audit time out of range"))
}

/// Appends `e` to the Merkle log at the event's own time.
pub(crate) async fn record(store: &SqlStore, e: &AuditEvent) -> Result<u64> {
    attach(store)
        .append(time_of(e)?, to_merkle(e))
        .await
        .map_err(err)
}

/// Appends `events` inside the caller's open transaction, so that they commit or roll
/// back with the change they record.
pub(crate) async fn record_within(
    conn: &mut sqlx::AnyConnection,
    events: &[AuditEvent],
) -> Result<Vec<u64>> {
    let items = events
        .iter()
        .map(|e| Ok((time_of(e)?, to_merkle(e))))
        .collect::<Result<Vec<_>>>()?;
    AuditStore::append_within(conn, items).await.map_err(err)
}

pub(crate) fn attach(store: &SqlStore) -> AuditStore {
    AuditStore::attach(store.pool().clone(), backend(store.backend()))
}

/// Reads a Merkle log entry back as signaling's event; `None` for an entry whose
/// action or role this server does not know (not written by it).
pub(crate) fn from_merkle(e: &confide_audit::AuditEntry) -> Option<AuditEvent> {
    Some(AuditEvent {
        actor: e.actor().to_owned(),
        role: match e.role() {
            Some(r) => Some(crate::model::Role::parse(r)?),
            None => None,
        },
        action: crate::audit::AuditAction::parse(e.action())?,
        target: e.target().map(str::to_owned),
        patient: e.patient().map(str::to_owned),
        outcome: match e.outcome() {
            confide_audit::Outcome::Success => Outcome::Success,
            confide_audit::Outcome::Failure => Outcome::Failure,
            confide_audit::Outcome::Denied => Outcome::Denied,
        },
        at: crate::model::Timestamp(e.time().unix_millis()),
        source: e.source().map(str::to_owned),
        request_id: e.request_id().map(str::to_owned),
        priority: match e.priority() {
            confide_audit::Priority::Normal => Priority::Normal,
            confide_audit::Priority::High => Priority::High,
        },
        detail: e.detail().map(str::to_owned),
    })
}
