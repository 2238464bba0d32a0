//! The audit API: append an event, read events back. Deliberately narrow so a
//! tamper-evident (Merkle) log can wrap it without changes elsewhere.

use async_trait::async_trait;
use sqlx::Row;

use super::sql::SqlStore;
use super::{Result, StoreError};
use crate::audit::{
    AuditAction, AuditEvent, AuditFilter, AuditRecord, AuditSeq, Outcome, Priority,
};
use crate::model::{Role, Timestamp};

#[async_trait]
pub trait AuditLog: Send + Sync {
    /// Append one event; returns its sequence number (strictly increasing).
    async fn record_audit(&self, event: AuditEvent) -> Result<AuditSeq> {
        self.record_audit_leaf(event).await.map(|(seq, _)| seq)
    }
    /// Append one event; returns its sequence number and its leaf index in the Merkle
    /// log, which inclusion proofs are about (the key directory serves proofs of the
    /// entries it writes).
    async fn record_audit_leaf(&self, event: AuditEvent) -> Result<(AuditSeq, u64)>;
    /// Events matching `filter`, oldest first.
    async fn audit_events(&self, filter: AuditFilter) -> Result<Vec<AuditRecord>>;
}

#[async_trait]
impl AuditLog for SqlStore {
    async fn record_audit_leaf(&self, e: AuditEvent) -> Result<(AuditSeq, u64)> {
        let leaf = super::merkle::record(self, &e).await?;
        let row = sqlx::query(
            "INSERT INTO audit_events (at, actor, role, action, target, outcome, source, request_id, priority, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING seq",
        )
        .bind(e.at.0)
        .bind(e.actor)
        .bind(e.role.map(|r| r.as_str().to_string()))
        .bind(e.action.as_str())
        .bind(e.target)
        .bind(e.outcome.as_str())
        .bind(e.source)
        .bind(e.request_id)
        .bind(e.priority.as_str())
        .bind(e.detail)
        .fetch_one(self.pool())
        .await?;
        Ok((AuditSeq(row.try_get::<i64, _>(0)?), leaf))
    }

    async fn audit_events(&self, f: AuditFilter) -> Result<Vec<AuditRecord>> {
        // Every filter is bound; NULL means "any".
        let rows = sqlx::query(
            "SELECT seq, at, actor, role, action, target, outcome, source, request_id, priority, detail \
             FROM audit_events \
             WHERE ($1 IS NULL OR actor = $1) AND ($2 IS NULL OR action = $2) \
               AND ($3 IS NULL OR target = $3) AND ($4 IS NULL OR outcome = $4) \
               AND seq > $5 \
             ORDER BY seq LIMIT $6",
        )
        .bind(f.actor)
        .bind(f.action.map(|a| a.as_str().to_string()))
        .bind(f.target)
        .bind(f.outcome.map(|o| o.as_str().to_string()))
        .bind(f.after.map(|s| s.0).unwrap_or(0))
        .bind(f.limit.unwrap_or(10_000).clamp(1, 100_000))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let role: Option<String> = r.try_get(3)?;
                let action: String = r.try_get(4)?;
                let outcome: String = r.try_get(6)?;
                let priority: String = r.try_get(9)?;
                Ok(AuditRecord {
                    seq: AuditSeq(r.try_get(0)?),
                    event: AuditEvent {
                        at: Timestamp(r.try_get(1)?),
                        actor: r.try_get(2)?,
                        role: role.as_deref().and_then(Role::parse),
                        action: AuditAction::parse(&action)
                            .ok_or(StoreError::Corrupt("audit action"))?,
                        target: r.try_get(5)?,
                        outcome: Outcome::parse(&outcome)
                            .ok_or(StoreError::Corrupt("audit outcome"))?,
                        source: r.try_get(7)?,
                        request_id: r.try_get(8)?,
                        priority: if priority == "high" {
                            Priority::High
                        } else {
                            Priority::Normal
                        },
                        detail: r.try_get(10)?,
                    },
                })
            })
            .collect()
    }
}
