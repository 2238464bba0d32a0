//! [`Store`] over sqlx's `Any` driver: one body of SQL for SQLite and PostgreSQL
//! (both accept `$n` placeholders and `RETURNING`), with each backend's own DDL in
//! `migrations/{sqlite,postgres}`. Booleans are stored as integers 0/1 and times as
//! Unix milliseconds so the two backends decode identically.

use async_trait::async_trait;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool, Row};

use super::*;
use crate::auth::{Session, SessionKind};
use crate::model::Principal;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone, Debug)]
pub struct SqlStore {
    pool: AnyPool,
    backend: Backend,
}

const ACCOUNT_COLS: &str = "id, username, role, password_hash, display_name, contact, totp_secret, \
     totp_enabled, totp_last_step, disabled, created_at, activation_pending, totp_pending";
const ACTIVATION_COLS: &str =
    "id, account_id, purpose, created_by, created_at, expires_at, used_at";
const APPOINTMENT_COLS: &str =
    "id, doctor_id, patient_id, start_at, duration_s, reason, status, created_by, created_at";
const SESSION_COLS: &str = "token_hash, account_id, invite_id, role, kind, scope_appointment, \
     created_at, last_seen, expires_at, revoked";

impl SqlStore {
    /// Connect (creating a SQLite file if needed) and run the migrations.
    /// `sqlite://path` or `postgres://...`.
    pub async fn connect(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(StoreError::Db("unsupported database URL scheme".into()));
        };
        let url = match backend {
            Backend::Sqlite if !url.contains('?') && !url.contains(":memory:") => {
                format!("{url}?mode=rwc")
            }
            _ => url.to_string(),
        };
        let max = if backend == Backend::Sqlite { 4 } else { 10 };
        let sqlite = backend == Backend::Sqlite;
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    // Writes take the file's one write lock (`BEGIN IMMEDIATE`) and an
                    // action commits with its audit entry, so a refused write is an
                    // action refused: under a burst, wait for the lock rather than fail.
                    if sqlite {
                        sqlx::query("PRAGMA busy_timeout = 30000")
                            .execute(conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        if backend == Backend::Sqlite {
            // WAL lets readers proceed during a write; the setting persists in the file.
            sqlx::query("PRAGMA journal_mode=WAL")
                .execute(&pool)
                .await?;
        }
        let store = SqlStore { pool, backend };
        match backend {
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&store.pool).await?,
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&store.pool).await?,
        }
        super::merkle::open(&store).await?;
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn b(v: bool) -> i64 {
    i64::from(v)
}

fn role_of(s: &str) -> Result<Role> {
    Role::parse(s).ok_or(StoreError::Corrupt("role"))
}

fn account_from(r: &AnyRow) -> Result<AccountRecord> {
    let role: String = r.try_get(2)?;
    Ok(AccountRecord {
        id: AccountId(r.try_get(0)?),
        username: r.try_get(1)?,
        role: role_of(&role)?,
        password_hash: r.try_get(3)?,
        display_name: r.try_get(4)?,
        contact: r.try_get(5)?,
        totp_secret: r.try_get(6)?,
        totp_enabled: r.try_get::<i64, _>(7)? != 0,
        totp_last_step: r.try_get(8)?,
        disabled: r.try_get::<i64, _>(9)? != 0,
        created_at: Timestamp(r.try_get(10)?),
        activation_pending: r.try_get::<i64, _>(11)? != 0,
        totp_pending: r.try_get(12)?,
    })
}

fn activation_from(r: &AnyRow) -> Result<ActivationRecord> {
    let purpose: String = r.try_get(2)?;
    Ok(ActivationRecord {
        id: r.try_get(0)?,
        account: AccountId(r.try_get(1)?),
        purpose: ActivationPurpose::parse(&purpose).ok_or(StoreError::Corrupt("purpose"))?,
        created_by: r.try_get::<Option<i64>, _>(3)?.map(AccountId),
        created_at: Timestamp(r.try_get(4)?),
        expires_at: Timestamp(r.try_get(5)?),
        used_at: r.try_get::<Option<i64>, _>(6)?.map(Timestamp),
    })
}

fn appointment_from(r: &AnyRow) -> Result<Appointment> {
    let status: String = r.try_get(6)?;
    Ok(Appointment {
        id: AppointmentId(r.try_get(0)?),
        doctor: AccountId(r.try_get(1)?),
        patient: r.try_get::<Option<i64>, _>(2)?.map(AccountId),
        start: Timestamp(r.try_get(3)?),
        duration_s: r.try_get(4)?,
        reason: r.try_get(5)?,
        status: AppointmentStatus::parse(&status).ok_or(StoreError::Corrupt("status"))?,
        created_by: AccountId(r.try_get(7)?),
        created_at: Timestamp(r.try_get(8)?),
    })
}

fn invite_from(r: &AnyRow) -> Result<InviteRecord> {
    Ok(InviteRecord {
        id: InviteId(r.try_get(0)?),
        appointment: AppointmentId(r.try_get(1)?),
        expires_at: Timestamp(r.try_get(2)?),
        used_at: r.try_get::<Option<i64>, _>(3)?.map(Timestamp),
        label: r.try_get(4)?,
    })
}

fn session_from(r: &AnyRow) -> Result<Session> {
    let account: Option<i64> = r.try_get(1)?;
    let invite: Option<i64> = r.try_get(2)?;
    let principal = match (account, invite) {
        (Some(a), _) => Principal::Account(AccountId(a)),
        (None, Some(i)) => Principal::Guest(InviteId(i)),
        (None, None) => return Err(StoreError::Corrupt("session principal")),
    };
    let role: String = r.try_get(3)?;
    let kind: String = r.try_get(4)?;
    Ok(Session {
        token_hash: r.try_get(0)?,
        principal,
        role: role_of(&role)?,
        kind: SessionKind::parse(&kind).ok_or(StoreError::Corrupt("session kind"))?,
        scope: r.try_get::<Option<i64>, _>(5)?.map(AppointmentId),
        created_at: Timestamp(r.try_get(6)?),
        last_seen: Timestamp(r.try_get(7)?),
        expires_at: Timestamp(r.try_get(8)?),
        revoked: r.try_get::<i64, _>(9)? != 0,
    })
}

// Writes shared by the store's own methods and by audited transactions
// ([`SqlTx`]): one body of SQL whatever the executor.

async fn w_create_account(c: &mut AnyConnection, a: NewAccount) -> Result<AccountId> {
    let row = sqlx::query(
        "INSERT INTO accounts (username, role, password_hash, display_name, contact, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(a.username)
    .bind(a.role.as_str())
    .bind(a.password_hash)
    .bind(a.display_name)
    .bind(a.contact)
    .bind(a.created_at.0)
    .fetch_one(&mut *c)
    .await?;
    Ok(AccountId(row.try_get(0)?))
}

async fn w_create_session(c: &mut AnyConnection, s: &Session) -> Result<()> {
    let (account, invite) = match &s.principal {
        Principal::Account(a) => (Some(a.0), None),
        Principal::Guest(i) => (None, Some(i.0)),
    };
    sqlx::query(
        "INSERT INTO sessions (token_hash, account_id, invite_id, role, kind, scope_appointment, \
         created_at, last_seen, expires_at, revoked) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(s.token_hash.clone())
    .bind(account)
    .bind(invite)
    .bind(s.role.as_str())
    .bind(s.kind.as_str())
    .bind(s.scope.map(|a| a.0))
    .bind(s.created_at.0)
    .bind(s.last_seen.0)
    .bind(s.expires_at.0)
    .bind(b(s.revoked))
    .execute(&mut *c)
    .await?;
    Ok(())
}

async fn w_create_appointment(c: &mut AnyConnection, a: NewAppointment) -> Result<AppointmentId> {
    let row = sqlx::query(
        "INSERT INTO appointments (doctor_id, patient_id, start_at, duration_s, reason, status, \
         created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
    )
    .bind(a.doctor.0)
    .bind(a.patient.map(|p| p.0))
    .bind(a.start.0)
    .bind(a.duration_s)
    .bind(a.reason)
    .bind(AppointmentStatus::Booked.as_str())
    .bind(a.created_by.0)
    .bind(a.created_at.0)
    .fetch_one(&mut *c)
    .await?;
    Ok(AppointmentId(row.try_get(0)?))
}

async fn w_create_invite(c: &mut AnyConnection, i: NewInvite) -> Result<InviteId> {
    let row = sqlx::query(
        "INSERT INTO invites (appointment_id, token_hash, expires_at, created_by, created_at, label) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(i.appointment.0)
    .bind(i.token_hash)
    .bind(i.expires_at.0)
    .bind(i.created_by.0)
    .bind(i.created_at.0)
    .bind(i.label)
    .fetch_one(&mut *c)
    .await?;
    Ok(InviteId(row.try_get(0)?))
}

async fn w_redeem_invite(c: &mut AnyConnection, id: InviteId, now: Timestamp) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE invites SET used_at = $1 WHERE id = $2 AND used_at IS NULL AND expires_at > $1",
    )
    .bind(now.0)
    .bind(id.0)
    .execute(&mut *c)
    .await?;
    Ok(r.rows_affected() == 1)
}

async fn w_revoke_consent(c: &mut AnyConnection, subject: &str, now: Timestamp) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE consents SET revoked_at = $1 WHERE subject = $2 AND revoked_at IS NULL",
    )
    .bind(now.0)
    .bind(subject)
    .execute(&mut *c)
    .await?;
    Ok(r.rows_affected() > 0)
}

async fn w_create_break_glass(
    c: &mut AnyConnection,
    admin: AccountId,
    patient: AccountId,
    reason: &str,
    now: Timestamp,
    expires_at: Timestamp,
) -> Result<i64> {
    let row = sqlx::query(
        "INSERT INTO break_glass (admin_id, patient_id, reason, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(admin.0)
    .bind(patient.0)
    .bind(reason)
    .bind(now.0)
    .bind(expires_at.0)
    .fetch_one(&mut *c)
    .await?;
    Ok(row.try_get(0)?)
}

async fn w_record_consent(
    c: &mut AnyConnection,
    subject: &str,
    version: &str,
    now: Timestamp,
) -> Result<()> {
    // One active consent per subject: accepting a new version supersedes the old.
    sqlx::query("UPDATE consents SET revoked_at = $1 WHERE subject = $2 AND revoked_at IS NULL")
        .bind(now.0)
        .bind(subject)
        .execute(&mut *c)
        .await?;
    sqlx::query("INSERT INTO consents (subject, version, accepted_at) VALUES ($1, $2, $3)")
        .bind(subject)
        .bind(version)
        .bind(now.0)
        .execute(&mut *c)
        .await?;
    Ok(())
}

async fn w_set_totp_pending(
    c: &mut AnyConnection,
    id: AccountId,
    sealed_secret: Vec<u8>,
) -> Result<()> {
    // The enabled secret, if any, stays in force until the pending one is confirmed.
    sqlx::query("UPDATE accounts SET totp_pending = $1 WHERE id = $2")
        .bind(sealed_secret)
        .bind(id.0)
        .execute(&mut *c)
        .await?;
    Ok(())
}

async fn w_enable_totp(c: &mut AnyConnection, id: AccountId, step: i64) -> Result<()> {
    // The pending secret replaces the enabled one (if any) in one statement.
    let r = sqlx::query(
        "UPDATE accounts SET totp_secret = totp_pending, totp_pending = NULL, totp_enabled = 1, \
         totp_last_step = $1 WHERE id = $2 AND totp_pending IS NOT NULL",
    )
    .bind(step)
    .bind(id.0)
    .execute(&mut *c)
    .await?;
    if r.rows_affected() != 1 {
        return Err(StoreError::Corrupt("no pending second factor to enable"));
    }
    Ok(())
}

async fn w_create_activation(c: &mut AnyConnection, a: NewActivation) -> Result<i64> {
    sqlx::query("DELETE FROM activations WHERE account_id = $1 AND used_at IS NULL")
        .bind(a.account.0)
        .execute(&mut *c)
        .await?;
    let row = sqlx::query(
        "INSERT INTO activations (account_id, token_hash, purpose, created_by, created_at, \
         expires_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(a.account.0)
    .bind(a.token_hash)
    .bind(a.purpose.as_str())
    .bind(a.created_by.map(|x| x.0))
    .bind(a.created_at.0)
    .bind(a.expires_at.0)
    .fetch_one(&mut *c)
    .await?;
    Ok(row.try_get(0)?)
}

async fn w_use_activation(c: &mut AnyConnection, id: i64, now: Timestamp) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE activations SET used_at = $1 WHERE id = $2 AND used_at IS NULL AND expires_at > $1",
    )
    .bind(now.0)
    .bind(id)
    .execute(&mut *c)
    .await?;
    Ok(r.rows_affected() == 1)
}

async fn w_set_password_hash(c: &mut AnyConnection, id: AccountId, phc: &str) -> Result<()> {
    sqlx::query("UPDATE accounts SET password_hash = $1 WHERE id = $2")
        .bind(phc)
        .bind(id.0)
        .execute(&mut *c)
        .await?;
    Ok(())
}

async fn w_set_activation_pending(
    c: &mut AnyConnection,
    id: AccountId,
    pending: bool,
) -> Result<()> {
    sqlx::query("UPDATE accounts SET activation_pending = $1 WHERE id = $2")
        .bind(b(pending))
        .bind(id.0)
        .execute(&mut *c)
        .await?;
    Ok(())
}

async fn w_clear_second_factor(c: &mut AnyConnection, id: AccountId) -> Result<()> {
    sqlx::query(
        "UPDATE accounts SET totp_secret = NULL, totp_pending = NULL, totp_enabled = 0, \
         totp_last_step = NULL WHERE id = $1",
    )
    .bind(id.0)
    .execute(&mut *c)
    .await?;
    sqlx::query("DELETE FROM recovery_codes WHERE account_id = $1")
        .bind(id.0)
        .execute(&mut *c)
        .await?;
    Ok(())
}

async fn w_set_account_disabled(
    c: &mut AnyConnection,
    id: AccountId,
    disabled: bool,
) -> Result<bool> {
    let r = sqlx::query("UPDATE accounts SET disabled = $1 WHERE id = $2")
        .bind(b(disabled))
        .bind(id.0)
        .execute(&mut *c)
        .await?;
    Ok(r.rows_affected() == 1)
}

async fn w_revoke_account_sessions(
    c: &mut AnyConnection,
    id: AccountId,
    keep: Option<&[u8]>,
) -> Result<u64> {
    let r = match keep {
        Some(k) => sqlx::query(
            "UPDATE sessions SET revoked = 1 WHERE account_id = $1 AND revoked = 0 \
             AND token_hash <> $2",
        )
        .bind(id.0)
        .bind(k.to_vec()),
        None => {
            sqlx::query("UPDATE sessions SET revoked = 1 WHERE account_id = $1 AND revoked = 0")
                .bind(id.0)
        }
    }
    .execute(&mut *c)
    .await?;
    Ok(r.rows_affected())
}

async fn w_replace_recovery_codes(
    c: &mut AnyConnection,
    id: AccountId,
    hashes: Vec<Vec<u8>>,
) -> Result<()> {
    sqlx::query("DELETE FROM recovery_codes WHERE account_id = $1")
        .bind(id.0)
        .execute(&mut *c)
        .await?;
    for h in hashes {
        sqlx::query("INSERT INTO recovery_codes (account_id, code_hash) VALUES ($1, $2)")
            .bind(id.0)
            .bind(h)
            .execute(&mut *c)
            .await?;
    }
    Ok(())
}

async fn w_set_date_of_birth(c: &mut AnyConnection, id: AccountId, sealed: Vec<u8>) -> Result<()> {
    sqlx::query("UPDATE accounts SET date_of_birth = $1 WHERE id = $2")
        .bind(sealed)
        .bind(id.0)
        .execute(&mut *c)
        .await?;
    Ok(())
}

async fn w_replace_patient_index(
    c: &mut AnyConnection,
    id: AccountId,
    key_id: u32,
    macs: Vec<[u8; 32]>,
) -> Result<()> {
    sqlx::query("DELETE FROM patient_index WHERE account_id = $1 AND key_id = $2")
        .bind(id.0)
        .bind(i64::from(key_id))
        .execute(&mut *c)
        .await?;
    let mut macs = macs;
    macs.sort_unstable();
    macs.dedup();
    for m in macs {
        sqlx::query("INSERT INTO patient_index (account_id, key_id, mac) VALUES ($1, $2, $3)")
            .bind(id.0)
            .bind(i64::from(key_id))
            .bind(m.to_vec())
            .execute(&mut *c)
            .await?;
    }
    Ok(())
}

async fn w_move_appointment(
    c: &mut AnyConnection,
    id: AppointmentId,
    ch: AppointmentChange,
) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE appointments SET doctor_id = $1, start_at = $2, duration_s = $3 \
         WHERE id = $4 AND status = $5",
    )
    .bind(ch.doctor.0)
    .bind(ch.start.0)
    .bind(ch.duration_s)
    .bind(id.0)
    .bind(AppointmentStatus::Booked.as_str())
    .execute(&mut *c)
    .await?;
    Ok(r.rows_affected() == 1)
}

async fn w_cancel_appointment(c: &mut AnyConnection, id: AppointmentId) -> Result<bool> {
    let r = sqlx::query("UPDATE appointments SET status = $1 WHERE id = $2 AND status = $3")
        .bind(AppointmentStatus::Cancelled.as_str())
        .bind(id.0)
        .bind(AppointmentStatus::Booked.as_str())
        .execute(&mut *c)
        .await?;
    Ok(r.rows_affected() == 1)
}

fn break_glass_from(r: &AnyRow) -> Result<BreakGlassGrant> {
    Ok(BreakGlassGrant {
        id: r.try_get(0)?,
        admin: AccountId(r.try_get(1)?),
        reason: r.try_get(2)?,
        created_at: Timestamp(r.try_get(3)?),
        expires_at: Timestamp(r.try_get(4)?),
        patient: AccountId(r.try_get(5)?),
    })
}

/// [`StoreTx`] over one sqlx transaction.
pub struct SqlTx {
    tx: sqlx::Transaction<'static, sqlx::Any>,
}

#[async_trait]
impl StoreTx for SqlTx {
    async fn create_account(&mut self, a: NewAccount) -> Result<AccountId> {
        w_create_account(&mut self.tx, a).await
    }
    async fn create_session(&mut self, s: &Session) -> Result<()> {
        w_create_session(&mut self.tx, s).await
    }
    async fn create_appointment(&mut self, a: NewAppointment) -> Result<AppointmentId> {
        w_create_appointment(&mut self.tx, a).await
    }
    async fn create_invite(&mut self, i: NewInvite) -> Result<InviteId> {
        w_create_invite(&mut self.tx, i).await
    }
    async fn redeem_invite(&mut self, id: InviteId, now: Timestamp) -> Result<bool> {
        w_redeem_invite(&mut self.tx, id, now).await
    }
    async fn record_consent(&mut self, subject: &str, version: &str, now: Timestamp) -> Result<()> {
        w_record_consent(&mut self.tx, subject, version, now).await
    }
    async fn revoke_consent(&mut self, subject: &str, now: Timestamp) -> Result<bool> {
        w_revoke_consent(&mut self.tx, subject, now).await
    }
    async fn create_break_glass(
        &mut self,
        admin: AccountId,
        patient: AccountId,
        reason: &str,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> Result<i64> {
        w_create_break_glass(&mut self.tx, admin, patient, reason, now, expires_at).await
    }
    async fn set_totp_pending(&mut self, id: AccountId, sealed_secret: Vec<u8>) -> Result<()> {
        w_set_totp_pending(&mut self.tx, id, sealed_secret).await
    }
    async fn enable_totp(&mut self, id: AccountId, step: i64) -> Result<()> {
        w_enable_totp(&mut self.tx, id, step).await
    }
    async fn replace_recovery_codes(&mut self, id: AccountId, hashes: Vec<Vec<u8>>) -> Result<()> {
        w_replace_recovery_codes(&mut self.tx, id, hashes).await
    }
    async fn set_date_of_birth(&mut self, id: AccountId, sealed: Vec<u8>) -> Result<()> {
        w_set_date_of_birth(&mut self.tx, id, sealed).await
    }
    async fn replace_patient_index(
        &mut self,
        id: AccountId,
        key_id: u32,
        macs: Vec<[u8; 32]>,
    ) -> Result<()> {
        w_replace_patient_index(&mut self.tx, id, key_id, macs).await
    }
    async fn move_appointment(&mut self, id: AppointmentId, c: AppointmentChange) -> Result<bool> {
        w_move_appointment(&mut self.tx, id, c).await
    }
    async fn cancel_appointment(&mut self, id: AppointmentId) -> Result<bool> {
        w_cancel_appointment(&mut self.tx, id).await
    }
    async fn create_activation(&mut self, a: NewActivation) -> Result<i64> {
        w_create_activation(&mut self.tx, a).await
    }
    async fn use_activation(&mut self, id: i64, now: Timestamp) -> Result<bool> {
        w_use_activation(&mut self.tx, id, now).await
    }
    async fn set_password_hash(&mut self, id: AccountId, phc: &str) -> Result<()> {
        w_set_password_hash(&mut self.tx, id, phc).await
    }
    async fn set_activation_pending(&mut self, id: AccountId, pending: bool) -> Result<()> {
        w_set_activation_pending(&mut self.tx, id, pending).await
    }
    async fn clear_second_factor(&mut self, id: AccountId) -> Result<()> {
        w_clear_second_factor(&mut self.tx, id).await
    }
    async fn set_account_disabled(&mut self, id: AccountId, disabled: bool) -> Result<bool> {
        w_set_account_disabled(&mut self.tx, id, disabled).await
    }
    async fn revoke_account_sessions(&mut self, id: AccountId, keep: Option<&[u8]>) -> Result<u64> {
        w_revoke_account_sessions(&mut self.tx, id, keep).await
    }
    async fn record_audit(&mut self, events: &[crate::audit::AuditEvent]) -> Result<()> {
        super::merkle::record_within(&mut self.tx, events).await?;
        Ok(())
    }
    async fn commit(self: Box<Self>) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }
}

#[async_trait]
impl Store for SqlStore {
    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn begin(&self) -> Result<Box<dyn StoreTx>> {
        // SQLite: take the write lock up front. A deferred transaction that reads
        // before it writes fails at once with "database is locked" when another writer
        // commits in between; an immediate one waits on the busy timeout instead.
        let tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        Ok(Box::new(SqlTx { tx }))
    }

    async fn create_account(&self, a: NewAccount) -> Result<AccountId> {
        w_create_account(&mut *self.pool.acquire().await?, a).await
    }

    async fn account(&self, id: AccountId) -> Result<Option<AccountRecord>> {
        let q = format!("SELECT {ACCOUNT_COLS} FROM accounts WHERE id = $1");
        let row = sqlx::query(&q)
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(account_from).transpose()
    }

    async fn account_by_username(&self, username: &str) -> Result<Option<AccountRecord>> {
        let q = format!("SELECT {ACCOUNT_COLS} FROM accounts WHERE username = $1");
        let row = sqlx::query(&q)
            .bind(username)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(account_from).transpose()
    }

    async fn list_accounts(&self) -> Result<Vec<AccountRecord>> {
        let q = format!("SELECT {ACCOUNT_COLS} FROM accounts ORDER BY id");
        let rows = sqlx::query(&q).fetch_all(&self.pool).await?;
        rows.iter().map(account_from).collect()
    }

    async fn set_account_disabled(&self, id: AccountId, disabled: bool) -> Result<bool> {
        w_set_account_disabled(&mut *self.pool.acquire().await?, id, disabled).await
    }

    async fn login_throttle(&self, id: AccountId) -> Result<Option<(u32, Timestamp)>> {
        let row = sqlx::query("SELECT login_failures, login_next_at FROM accounts WHERE id = $1")
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
        let Some(r) = row else { return Ok(None) };
        let failures: i64 = r.try_get(0)?;
        let failures =
            u32::try_from(failures).map_err(|_| StoreError::Corrupt("login_failures"))?;
        Ok(Some((failures, Timestamp(r.try_get(1)?))))
    }

    async fn set_login_throttle(
        &self,
        id: AccountId,
        seen: u32,
        failures: u32,
        next_at: Timestamp,
    ) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE accounts SET login_failures = $1, login_next_at = $2 \
             WHERE id = $3 AND login_failures = $4",
        )
        .bind(i64::from(failures))
        .bind(next_at.0)
        .bind(id.0)
        .bind(i64::from(seen))
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn set_totp_pending(&self, id: AccountId, sealed_secret: Vec<u8>) -> Result<()> {
        w_set_totp_pending(&mut *self.pool.acquire().await?, id, sealed_secret).await
    }

    async fn enable_totp(&self, id: AccountId, step: i64) -> Result<()> {
        w_enable_totp(&mut *self.pool.acquire().await?, id, step).await
    }

    async fn use_totp_step(&self, id: AccountId, step: i64) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE accounts SET totp_last_step = $1 \
             WHERE id = $2 AND (totp_last_step IS NULL OR totp_last_step < $1)",
        )
        .bind(step)
        .bind(id.0)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn replace_recovery_codes(&self, id: AccountId, hashes: Vec<Vec<u8>>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        w_replace_recovery_codes(&mut tx, id, hashes).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn use_recovery_code(&self, id: AccountId, hash: &[u8], now: Timestamp) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE recovery_codes SET used_at = $1 \
             WHERE account_id = $2 AND code_hash = $3 AND used_at IS NULL",
        )
        .bind(now.0)
        .bind(id.0)
        .bind(hash.to_vec())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn recovery_codes_remaining(&self, id: AccountId) -> Result<u32> {
        let row = sqlx::query(
            "SELECT COUNT(*) FROM recovery_codes WHERE account_id = $1 AND used_at IS NULL",
        )
        .bind(id.0)
        .fetch_one(&self.pool)
        .await?;
        let n: i64 = row.try_get(0)?;
        u32::try_from(n).map_err(|_| StoreError::Corrupt("recovery code count"))
    }

    async fn activation_by_hash(&self, token_hash: &[u8]) -> Result<Option<ActivationRecord>> {
        let q = format!("SELECT {ACTIVATION_COLS} FROM activations WHERE token_hash = $1");
        let row = sqlx::query(&q)
            .bind(token_hash.to_vec())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(activation_from).transpose()
    }

    async fn latest_activation(&self, account: AccountId) -> Result<Option<ActivationRecord>> {
        let q = format!(
            "SELECT {ACTIVATION_COLS} FROM activations WHERE account_id = $1 \
             ORDER BY id DESC LIMIT 1"
        );
        let row = sqlx::query(&q)
            .bind(account.0)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(activation_from).transpose()
    }

    async fn create_session(&self, s: &Session) -> Result<()> {
        w_create_session(&mut *self.pool.acquire().await?, s).await
    }

    async fn session(&self, token_hash: &[u8]) -> Result<Option<Session>> {
        let q = format!("SELECT {SESSION_COLS} FROM sessions WHERE token_hash = $1");
        let row = sqlx::query(&q)
            .bind(token_hash.to_vec())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(session_from).transpose()
    }

    async fn touch_session(&self, token_hash: &[u8], now: Timestamp) -> Result<()> {
        sqlx::query("UPDATE sessions SET last_seen = $1 WHERE token_hash = $2 AND last_seen < $1")
            .bind(now.0)
            .bind(token_hash.to_vec())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn revoke_session(&self, token_hash: &[u8]) -> Result<bool> {
        let r =
            sqlx::query("UPDATE sessions SET revoked = 1 WHERE token_hash = $1 AND revoked = 0")
                .bind(token_hash.to_vec())
                .execute(&self.pool)
                .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn revoke_account_sessions(&self, id: AccountId) -> Result<u64> {
        w_revoke_account_sessions(&mut *self.pool.acquire().await?, id, None).await
    }

    async fn account_sessions(&self, id: AccountId, now: Timestamp) -> Result<Vec<Session>> {
        let q = format!(
            "SELECT {SESSION_COLS} FROM sessions \
             WHERE account_id = $1 AND revoked = 0 AND expires_at > $2 ORDER BY created_at"
        );
        let rows = sqlx::query(&q)
            .bind(id.0)
            .bind(now.0)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(session_from).collect()
    }

    async fn purge_sessions(&self, now: Timestamp) -> Result<u64> {
        let r = sqlx::query("DELETE FROM sessions WHERE expires_at <= $1 OR revoked = 1")
            .bind(now.0)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }

    async fn create_appointment(&self, a: NewAppointment) -> Result<AppointmentId> {
        w_create_appointment(&mut *self.pool.acquire().await?, a).await
    }

    async fn appointment(&self, id: AppointmentId) -> Result<Option<Appointment>> {
        let q = format!("SELECT {APPOINTMENT_COLS} FROM appointments WHERE id = $1");
        let row = sqlx::query(&q)
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(appointment_from).transpose()
    }

    async fn list_appointments(&self, q: AppointmentQuery) -> Result<Vec<Appointment>> {
        // Overlap with [from, to): starts before `to` and ends after `from`.
        let sql = format!(
            "SELECT {APPOINTMENT_COLS} FROM appointments \
             WHERE ($1 IS NULL OR doctor_id = $1) AND ($2 IS NULL OR patient_id = $2) \
               AND ($3 IS NULL OR start_at < $3) \
               AND ($4 IS NULL OR start_at + duration_s * 1000 > $4) \
             ORDER BY start_at, id"
        );
        let rows = sqlx::query(&sql)
            .bind(q.doctor.map(|d| d.0))
            .bind(q.patient.map(|p| p.0))
            .bind(q.to.map(|t| t.0))
            .bind(q.from.map(|t| t.0))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(appointment_from).collect()
    }

    async fn set_appointment_status(&self, id: AppointmentId, s: AppointmentStatus) -> Result<()> {
        sqlx::query("UPDATE appointments SET status = $1 WHERE id = $2")
            .bind(s.as_str())
            .bind(id.0)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn share_appointment(&self, a: &Principal, b: &Principal) -> Result<bool> {
        use Principal::{Account, Guest};
        // Only redeemed invites: an unused one has no principal behind it yet.
        let q = match (a, b) {
            (Account(x), Account(y)) => sqlx::query(
                "SELECT 1 FROM appointments \
                 WHERE (doctor_id = $1 AND patient_id = $2) OR (doctor_id = $2 AND patient_id = $1) \
                 LIMIT 1",
            )
            .bind(x.0)
            .bind(y.0),
            (Account(x), Guest(g)) | (Guest(g), Account(x)) => sqlx::query(
                "SELECT 1 FROM invites i JOIN appointments a ON a.id = i.appointment_id \
                 WHERE i.id = $1 AND i.used_at IS NOT NULL \
                 AND (a.doctor_id = $2 OR a.patient_id = $2) LIMIT 1",
            )
            .bind(g.0)
            .bind(x.0),
            (Guest(g), Guest(h)) => sqlx::query(
                "SELECT 1 FROM invites i JOIN invites j ON i.appointment_id = j.appointment_id \
                 WHERE i.id = $1 AND j.id = $2 AND i.used_at IS NOT NULL AND j.used_at IS NOT NULL \
                 LIMIT 1",
            )
            .bind(g.0)
            .bind(h.0),
        };
        Ok(q.fetch_optional(&self.pool).await?.is_some())
    }

    async fn create_invite(&self, i: NewInvite) -> Result<InviteId> {
        w_create_invite(&mut *self.pool.acquire().await?, i).await
    }

    async fn invite_by_hash(&self, token_hash: &[u8]) -> Result<Option<InviteRecord>> {
        let row = sqlx::query(
            "SELECT id, appointment_id, expires_at, used_at, label FROM invites WHERE token_hash = $1",
        )
        .bind(token_hash.to_vec())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(invite_from).transpose()
    }

    async fn invite(&self, id: InviteId) -> Result<Option<InviteRecord>> {
        let row = sqlx::query(
            "SELECT id, appointment_id, expires_at, used_at, label FROM invites WHERE id = $1",
        )
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(invite_from).transpose()
    }

    async fn redeem_invite(&self, id: InviteId, now: Timestamp) -> Result<bool> {
        w_redeem_invite(&mut *self.pool.acquire().await?, id, now).await
    }

    async fn record_consent(&self, subject: &str, version: &str, now: Timestamp) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        w_record_consent(&mut tx, subject, version, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn revoke_consent(&self, subject: &str, now: Timestamp) -> Result<bool> {
        w_revoke_consent(&mut *self.pool.acquire().await?, subject, now).await
    }

    async fn active_consent(&self, subject: &str) -> Result<Option<ConsentRecord>> {
        let row = sqlx::query(
            "SELECT subject, version, accepted_at, revoked_at FROM consents \
             WHERE subject = $1 AND revoked_at IS NULL ORDER BY id DESC LIMIT 1",
        )
        .bind(subject)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(ConsentRecord {
                subject: r.try_get(0)?,
                version: r.try_get(1)?,
                accepted_at: Timestamp(r.try_get(2)?),
                revoked_at: r.try_get::<Option<i64>, _>(3)?.map(Timestamp),
            })
        })
        .transpose()
    }

    async fn store_chat(&self, c: NewChat) -> Result<ChatId> {
        let row = sqlx::query(
            "INSERT INTO chat_messages (appointment_id, sender_participant, sender_role, sent_at, ciphertext) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(c.appointment.0)
        .bind(c.sender.0 as i64)
        .bind(c.sender_role.as_str())
        .bind(c.sent_at.0)
        .bind(c.ciphertext)
        .fetch_one(&self.pool)
        .await?;
        Ok(ChatId(row.try_get(0)?))
    }

    async fn chat_history(&self, appointment: AppointmentId) -> Result<Vec<ChatRecord>> {
        let rows = sqlx::query(
            "SELECT id, appointment_id, sender_participant, sender_role, sent_at, ciphertext \
             FROM chat_messages WHERE appointment_id = $1 ORDER BY id",
        )
        .bind(appointment.0)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let role: String = r.try_get(3)?;
                Ok(ChatRecord {
                    id: ChatId(r.try_get(0)?),
                    appointment: AppointmentId(r.try_get(1)?),
                    sender: ParticipantId(r.try_get::<i64, _>(2)? as u64),
                    sender_role: role_of(&role)?,
                    sent_at: Timestamp(r.try_get(4)?),
                    ciphertext: r.try_get(5)?,
                })
            })
            .collect()
    }

    async fn data_keys(&self) -> Result<Vec<WrappedDataKey>> {
        let rows = sqlx::query("SELECT id, wrapped, active FROM data_keys ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(WrappedDataKey {
                    id: u32::try_from(r.try_get::<i64, _>(0)?)
                        .map_err(|_| StoreError::Corrupt("key id"))?,
                    wrapped: r.try_get(1)?,
                    active: r.try_get::<i64, _>(2)? != 0,
                })
            })
            .collect()
    }

    async fn put_data_key(&self, k: WrappedDataKey, now: Timestamp) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        if k.active {
            sqlx::query("UPDATE data_keys SET active = 0")
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM data_keys WHERE id = $1")
            .bind(i64::from(k.id))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO data_keys (id, wrapped, active, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(i64::from(k.id))
        .bind(k.wrapped)
        .bind(b(k.active))
        .bind(now.0)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn delete_data_key(&self, id: u32) -> Result<()> {
        sqlx::query("DELETE FROM data_keys WHERE id = $1")
            .bind(i64::from(id))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn sealed_cells(&self) -> Result<Vec<SealedCell>> {
        let mut out = Vec::new();
        for column in SealedColumn::ALL {
            let (table, col) = column.table_column();
            // Table and column names come from the fixed list above, never from input.
            let q = format!("SELECT id, {col} FROM {table} WHERE {col} IS NOT NULL ORDER BY id");
            for r in sqlx::query(&q).fetch_all(&self.pool).await? {
                out.push(SealedCell {
                    column,
                    row: r.try_get(0)?,
                    value: r.try_get(1)?,
                });
            }
        }
        Ok(out)
    }

    async fn update_sealed_cell(&self, c: &SealedCell) -> Result<()> {
        let (table, col) = c.column.table_column();
        let q = format!("UPDATE {table} SET {col} = $1 WHERE id = $2");
        sqlx::query(&q)
            .bind(c.value.clone())
            .bind(c.row)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn create_break_glass(
        &self,
        admin: AccountId,
        patient: AccountId,
        reason: &str,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> Result<i64> {
        w_create_break_glass(
            &mut *self.pool.acquire().await?,
            admin,
            patient,
            reason,
            now,
            expires_at,
        )
        .await
    }

    async fn active_break_glass(
        &self,
        admin: AccountId,
        patient: AccountId,
        now: Timestamp,
    ) -> Result<Option<BreakGlassGrant>> {
        let row = sqlx::query(
            "SELECT id, admin_id, reason, created_at, expires_at, patient_id FROM break_glass \
             WHERE admin_id = $1 AND patient_id = $2 AND expires_at > $3 ORDER BY id DESC LIMIT 1",
        )
        .bind(admin.0)
        .bind(patient.0)
        .bind(now.0)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(break_glass_from).transpose()
    }

    async fn list_break_glass(&self, limit: i64) -> Result<Vec<BreakGlassGrant>> {
        // Grants from before grants named a patient have none; they open nothing
        // and are left out of the review list.
        let rows = sqlx::query(
            "SELECT id, admin_id, reason, created_at, expires_at, patient_id FROM break_glass \
             WHERE patient_id IS NOT NULL ORDER BY id DESC LIMIT $1",
        )
        .bind(limit.clamp(1, 10_000))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(break_glass_from).collect()
    }

    async fn date_of_birth(&self, id: AccountId) -> Result<Option<Vec<u8>>> {
        let row = sqlx::query("SELECT date_of_birth FROM accounts WHERE id = $1")
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => r.try_get(0)?,
            None => None,
        })
    }

    async fn replace_patient_index(
        &self,
        id: AccountId,
        key_id: u32,
        macs: Vec<[u8; 32]>,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        w_replace_patient_index(&mut tx, id, key_id, macs).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn unindexed_patients(&self, key_id: u32) -> Result<Vec<AccountId>> {
        let rows = sqlx::query(
            "SELECT a.id FROM accounts a WHERE a.role = $1 AND NOT EXISTS \
             (SELECT 1 FROM patient_index p WHERE p.account_id = a.id AND p.key_id = $2) \
             ORDER BY a.id",
        )
        .bind(Role::Patient.as_str())
        .bind(i64::from(key_id))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(AccountId(r.try_get(0)?))).collect()
    }

    async fn drop_patient_index_except(&self, key_id: u32) -> Result<u64> {
        let r = sqlx::query("DELETE FROM patient_index WHERE key_id <> $1")
            .bind(i64::from(key_id))
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }

    async fn search_patient_index(
        &self,
        key_id: u32,
        macs: &[[u8; 32]],
        limit: i64,
    ) -> Result<Vec<AccountId>> {
        let mut want: Vec<[u8; 32]> = macs.to_vec();
        want.sort_unstable();
        want.dedup();
        if want.is_empty() {
            return Ok(Vec::new());
        }
        // One placeholder per MAC ($3, $4, ...); the count is bounded by the caller
        // (a name has at most blind_index::MAX_NAME_TERMS words, plus a date).
        let list = (0..want.len())
            .map(|i| format!("${}", i + 4))
            .collect::<Vec<_>>()
            .join(", ");
        let q = format!(
            "SELECT account_id FROM patient_index WHERE key_id = $1 AND mac IN ({list}) \
             GROUP BY account_id HAVING COUNT(DISTINCT mac) = $2 ORDER BY account_id LIMIT $3"
        );
        let mut query = sqlx::query(&q)
            .bind(i64::from(key_id))
            .bind(want.len() as i64)
            .bind(limit.clamp(1, 1000));
        for m in &want {
            query = query.bind(m.to_vec());
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok(AccountId(r.try_get(0)?))).collect()
    }
}
