//! The key directory's tables (`devices`, `key_packages`) and the reads of the Merkle
//! audit log that make its answers provable (latest checkpoint, entries, inclusion
//! proofs). The store only keeps rows; who may do what is decided in
//! `http::directory`.
//!
//! A registration is written in two steps around its audit entry: the row first, with
//! `registered_seq` NULL (pending: never served, never usable), then the entry, then
//! the row gets the entry's leaf index. The unique (principal, device) constraint thus
//! decides between concurrent registrations *before* anything is logged, and a failed
//! append leaves no registration behind ([`KeyDirectory::drop_pending_device`]).

use async_trait::async_trait;
use confide_audit::store::{AuditStore, Backend as AuditBackend};
use confide_audit::{AuditEntry, Hash};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::sql::{Backend, SqlStore};
use super::{Result, StoreError};
use crate::model::{DeviceId, Timestamp};

/// One device of a principal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceRecord {
    /// `account:17` or `guest:5`.
    pub principal: String,
    pub device: DeviceId,
    /// Ed25519 public key, 32 bytes.
    pub signature_key: Vec<u8>,
    /// Leaf index of the `device_registered` entry; `None` while it is being logged.
    pub registered_seq: Option<u64>,
    pub registered_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
    /// Leaf index of the `device_revoked` entry.
    pub revoked_seq: Option<u64>,
}

impl DeviceRecord {
    /// Logged and not revoked: may join, upload and hand out KeyPackages.
    pub fn is_active(&self) -> bool {
        self.registered_seq.is_some() && self.revoked_at.is_none()
    }
}

/// What [`KeyDirectory::add_pending_device`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NewDevice {
    /// A pending row was written; log the registration, then confirm it.
    Inserted,
    /// The principal already has this device id (in any state).
    Exists(DeviceRecord),
    /// The principal has `max_active` devices that are not revoked.
    TooMany,
}

/// KeyPackages stored for one device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyPackageCount {
    /// One-time KeyPackages not yet claimed.
    pub available: u64,
    pub last_resort: bool,
}

/// What [`KeyDirectory::add_key_packages`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddKeyPackages {
    Stored(KeyPackageCount),
    /// The device is not an active device of that principal.
    NoDevice,
    /// The one-time KeyPackages would exceed the cap; nothing was stored.
    TooMany,
}

/// A claimed KeyPackage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimedKeyPackage {
    pub data: Vec<u8>,
    /// The device's last-resort KeyPackage (not deleted by the claim).
    pub last_resort: bool,
}

/// The latest signed checkpoint of the audit log, as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogCheckpoint {
    /// Tree size it covers: entries `0..size`.
    pub size: u64,
    /// The C2SP signed note, as `GET /api/audit/checkpoint` serves it.
    pub note: String,
}

#[async_trait]
pub trait KeyDirectory: Send + Sync {
    /// The device `device` of `principal`, in any state.
    async fn device(&self, principal: &str, device: &DeviceId) -> Result<Option<DeviceRecord>>;
    /// Every logged device of `principal` (pending registrations left out), oldest
    /// first.
    async fn devices(&self, principal: &str) -> Result<Vec<DeviceRecord>>;
    /// Write a pending registration, unless the device id exists for this principal or
    /// the principal has `max_active` devices that are not revoked (pending ones count).
    async fn add_pending_device(
        &self,
        principal: &str,
        device: &DeviceId,
        signature_key: &[u8],
        now: Timestamp,
        max_active: u64,
    ) -> Result<NewDevice>;
    /// Record the registration's leaf index; false if the row is not pending (someone
    /// else confirmed it, or it is gone).
    async fn confirm_device(&self, principal: &str, device: &DeviceId, seq: u64) -> Result<bool>;
    /// Remove a registration whose audit entry could not be written.
    async fn drop_pending_device(&self, principal: &str, device: &DeviceId) -> Result<()>;
    /// Mark an active device revoked by the entry `seq` and delete its KeyPackages;
    /// false if it was not active.
    async fn revoke_device(
        &self,
        principal: &str,
        device: &DeviceId,
        now: Timestamp,
        seq: u64,
    ) -> Result<bool>;
    /// Store one-time KeyPackages (and replace the last-resort one) of an active
    /// device, keeping at most `max_one_time` one-time ones. All or nothing.
    async fn add_key_packages(
        &self,
        principal: &str,
        device: &DeviceId,
        one_time: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
        max_one_time: u64,
    ) -> Result<AddKeyPackages>;
    async fn key_package_count(
        &self,
        principal: &str,
        device: &DeviceId,
    ) -> Result<KeyPackageCount>;
    /// Take one one-time KeyPackage (deleted as it is taken: two claims never get the
    /// same one), or else the last-resort one (kept).
    async fn claim_key_package(
        &self,
        principal: &str,
        device: &DeviceId,
    ) -> Result<Option<ClaimedKeyPackage>>;

    /// The latest signed checkpoint, if one has been signed.
    async fn log_checkpoint(&self) -> Result<Option<LogCheckpoint>>;
    /// The audit log entry `seq`.
    async fn log_entry(&self, seq: u64) -> Result<Option<AuditEntry>>;
    /// RFC 6962 inclusion proof of entry `seq` in the tree of `size` entries.
    async fn log_inclusion_proof(&self, seq: u64, size: u64) -> Result<Vec<Hash>>;
}

const DEVICE_COLS: &str =
    "principal, device, signature_key, registered_seq, registered_at, revoked_at, revoked_seq";

fn seq_of(v: Option<i64>) -> Result<Option<u64>> {
    v.map(|s| u64::try_from(s).map_err(|_| StoreError::Corrupt("log sequence number")))
        .transpose()
}

fn to_i64(seq: u64) -> Result<i64> {
    i64::try_from(seq).map_err(|_| StoreError::Corrupt("log sequence number"))
}

fn device_from(r: &AnyRow) -> Result<DeviceRecord> {
    let device: String = r.try_get(1)?;
    Ok(DeviceRecord {
        principal: r.try_get(0)?,
        device: DeviceId::parse(&device).ok_or(StoreError::Corrupt("device id"))?,
        signature_key: r.try_get(2)?,
        registered_seq: seq_of(r.try_get(3)?)?,
        registered_at: Timestamp(r.try_get(4)?),
        revoked_at: r.try_get::<Option<i64>, _>(5)?.map(Timestamp),
        revoked_seq: seq_of(r.try_get(6)?)?,
    })
}

fn audit_err(e: confide_audit::Error) -> StoreError {
    StoreError::Db(format!("audit log: {e}"))
}

impl SqlStore {
    fn audit_store(&self) -> AuditStore {
        let backend = match self.backend() {
            Backend::Sqlite => AuditBackend::Sqlite,
            Backend::Postgres => AuditBackend::Postgres,
        };
        AuditStore::attach(self.pool().clone(), backend)
    }
}

#[async_trait]
impl KeyDirectory for SqlStore {
    async fn device(&self, principal: &str, device: &DeviceId) -> Result<Option<DeviceRecord>> {
        let q = format!("SELECT {DEVICE_COLS} FROM devices WHERE principal = $1 AND device = $2");
        let row = sqlx::query(&q)
            .bind(principal)
            .bind(device.as_str())
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(device_from).transpose()
    }

    async fn devices(&self, principal: &str) -> Result<Vec<DeviceRecord>> {
        let q = format!(
            "SELECT {DEVICE_COLS} FROM devices \
             WHERE principal = $1 AND registered_seq IS NOT NULL ORDER BY registered_seq"
        );
        let rows = sqlx::query(&q)
            .bind(principal)
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(device_from).collect()
    }

    async fn add_pending_device(
        &self,
        principal: &str,
        device: &DeviceId,
        signature_key: &[u8],
        now: Timestamp,
        max_active: u64,
    ) -> Result<NewDevice> {
        if let Some(d) = self.device(principal, device).await? {
            return Ok(NewDevice::Exists(d));
        }
        // One statement, so the count and the insert see the same rows.
        let inserted = sqlx::query(
            "INSERT INTO devices (principal, device, signature_key, registered_at) \
             SELECT $1, $2, $3, $4 WHERE \
             (SELECT COUNT(*) FROM devices WHERE principal = $1 AND revoked_at IS NULL) < $5",
        )
        .bind(principal)
        .bind(device.as_str())
        .bind(signature_key.to_vec())
        .bind(now.0)
        .bind(i64::try_from(max_active).unwrap_or(i64::MAX))
        .execute(self.pool())
        .await;
        match inserted {
            Ok(r) if r.rows_affected() == 1 => Ok(NewDevice::Inserted),
            Ok(_) => Ok(NewDevice::TooMany),
            // The same device id registered concurrently: report that one.
            Err(e) => match StoreError::from(e) {
                StoreError::Conflict => self
                    .device(principal, device)
                    .await?
                    .map(NewDevice::Exists)
                    .ok_or(StoreError::Corrupt("device vanished after a conflict")),
                e => Err(e),
            },
        }
    }

    async fn confirm_device(&self, principal: &str, device: &DeviceId, seq: u64) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE devices SET registered_seq = $1 \
             WHERE principal = $2 AND device = $3 AND registered_seq IS NULL",
        )
        .bind(to_i64(seq)?)
        .bind(principal)
        .bind(device.as_str())
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn drop_pending_device(&self, principal: &str, device: &DeviceId) -> Result<()> {
        sqlx::query(
            "DELETE FROM devices WHERE principal = $1 AND device = $2 AND registered_seq IS NULL",
        )
        .bind(principal)
        .bind(device.as_str())
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn revoke_device(
        &self,
        principal: &str,
        device: &DeviceId,
        now: Timestamp,
        seq: u64,
    ) -> Result<bool> {
        let mut tx = self.pool().begin().await?;
        let r = sqlx::query(
            "UPDATE devices SET revoked_at = $1, revoked_seq = $2 \
             WHERE principal = $3 AND device = $4 AND revoked_at IS NULL \
             AND registered_seq IS NOT NULL",
        )
        .bind(now.0)
        .bind(to_i64(seq)?)
        .bind(principal)
        .bind(device.as_str())
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM key_packages WHERE principal = $1 AND device = $2")
            .bind(principal)
            .bind(device.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn add_key_packages(
        &self,
        principal: &str,
        device: &DeviceId,
        one_time: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
        max_one_time: u64,
    ) -> Result<AddKeyPackages> {
        let mut tx = self.pool().begin().await?;
        // Writing the device row first takes the write lock (SQLite) or the row lock
        // (PostgreSQL) before counting, so concurrent uploads for one device queue up
        // and the cap holds; it also checks that the device is active.
        let active = sqlx::query(
            "UPDATE devices SET registered_at = registered_at \
             WHERE principal = $1 AND device = $2 AND revoked_at IS NULL \
             AND registered_seq IS NOT NULL",
        )
        .bind(principal)
        .bind(device.as_str())
        .execute(&mut *tx)
        .await?;
        if active.rows_affected() != 1 {
            return Ok(AddKeyPackages::NoDevice);
        }
        let have = count_one_time(&mut tx, principal, device).await?;
        if have.saturating_add(one_time.len() as u64) > max_one_time {
            return Ok(AddKeyPackages::TooMany);
        }
        for kp in one_time {
            sqlx::query(
                "INSERT INTO key_packages (principal, device, data, last_resort) \
                 VALUES ($1, $2, $3, 0)",
            )
            .bind(principal)
            .bind(device.as_str())
            .bind(kp)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(kp) = last_resort {
            sqlx::query(
                "DELETE FROM key_packages WHERE principal = $1 AND device = $2 AND last_resort = 1",
            )
            .bind(principal)
            .bind(device.as_str())
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO key_packages (principal, device, data, last_resort) \
                 VALUES ($1, $2, $3, 1)",
            )
            .bind(principal)
            .bind(device.as_str())
            .bind(kp)
            .execute(&mut *tx)
            .await?;
        }
        let count = KeyPackageCount {
            available: count_one_time(&mut tx, principal, device).await?,
            last_resort: has_last_resort(&mut tx, principal, device).await?,
        };
        tx.commit().await?;
        Ok(AddKeyPackages::Stored(count))
    }

    async fn key_package_count(
        &self,
        principal: &str,
        device: &DeviceId,
    ) -> Result<KeyPackageCount> {
        let mut conn = self.pool().acquire().await?;
        Ok(KeyPackageCount {
            available: count_one_time(&mut conn, principal, device).await?,
            last_resort: has_last_resort(&mut conn, principal, device).await?,
        })
    }

    async fn claim_key_package(
        &self,
        principal: &str,
        device: &DeviceId,
    ) -> Result<Option<ClaimedKeyPackage>> {
        // One statement picks and deletes, so a row goes to one claimant only. On
        // PostgreSQL, SKIP LOCKED lets a concurrent claim take the next row instead of
        // waiting for this one and then finding it gone; SQLite runs writes one at a
        // time anyway.
        let lock = match self.backend() {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let q = format!(
            "DELETE FROM key_packages WHERE id = (SELECT id FROM key_packages \
             WHERE principal = $1 AND device = $2 AND last_resort = 0 ORDER BY id LIMIT 1{lock}) \
             RETURNING data"
        );
        let taken = sqlx::query(&q)
            .bind(principal)
            .bind(device.as_str())
            .fetch_optional(self.pool())
            .await?;
        if let Some(r) = taken {
            return Ok(Some(ClaimedKeyPackage {
                data: r.try_get(0)?,
                last_resort: false,
            }));
        }
        let kept = sqlx::query(
            "SELECT data FROM key_packages WHERE principal = $1 AND device = $2 AND last_resort = 1",
        )
        .bind(principal)
        .bind(device.as_str())
        .fetch_optional(self.pool())
        .await?;
        kept.map(|r| {
            Ok(ClaimedKeyPackage {
                data: r.try_get(0)?,
                last_resort: true,
            })
        })
        .transpose()
    }

    async fn log_checkpoint(&self) -> Result<Option<LogCheckpoint>> {
        // Served as stored: the clients verify the signature against the log key they
        // pinned, which is the check that matters (GET /api/audit/checkpoint also
        // checks it before serving, for the operator's sake).
        let row =
            sqlx::query("SELECT size, note FROM audit_checkpoints ORDER BY size DESC LIMIT 1")
                .fetch_optional(self.pool())
                .await?;
        row.map(|r| {
            Ok(LogCheckpoint {
                size: u64::try_from(r.try_get::<i64, _>(0)?)
                    .map_err(|_| StoreError::Corrupt("checkpoint size"))?,
                note: r.try_get(1)?,
            })
        })
        .transpose()
    }

    async fn log_entry(&self, seq: u64) -> Result<Option<AuditEntry>> {
        let rows = self
            .audit_store()
            .entries(seq, 1)
            .await
            .map_err(audit_err)?;
        Ok(rows.into_iter().map(|s| s.entry).find(|e| e.seq() == seq))
    }

    async fn log_inclusion_proof(&self, seq: u64, size: u64) -> Result<Vec<Hash>> {
        Ok(self
            .audit_store()
            .inclusion_proof(seq, size)
            .await
            .map_err(audit_err)?
            .path)
    }
}

/// How many KeyPackages of `device` are stored, of the last-resort kind or not.
async fn count_key_packages(
    conn: &mut sqlx::AnyConnection,
    principal: &str,
    device: &DeviceId,
    last_resort: bool,
) -> Result<u64> {
    let r = sqlx::query(
        "SELECT COUNT(*) FROM key_packages WHERE principal = $1 AND device = $2 AND last_resort = $3",
    )
    .bind(principal)
    .bind(device.as_str())
    .bind(i64::from(last_resort))
    .fetch_one(conn)
    .await?;
    u64::try_from(r.try_get::<i64, _>(0)?).map_err(|_| StoreError::Corrupt("count"))
}

async fn count_one_time(
    conn: &mut sqlx::AnyConnection,
    principal: &str,
    device: &DeviceId,
) -> Result<u64> {
    count_key_packages(conn, principal, device, false).await
}

async fn has_last_resort(
    conn: &mut sqlx::AnyConnection,
    principal: &str,
    device: &DeviceId,
) -> Result<bool> {
    Ok(count_key_packages(conn, principal, device, true).await? > 0)
}
