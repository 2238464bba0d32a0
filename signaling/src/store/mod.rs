//! Persistence: one [`Store`] trait; [`SqlStore`] implements it over SQLite (the
//! embedded default) and PostgreSQL, each with its own migrations, and the store
//! test suite runs one body against both.
//!
//! Sealed columns hold envelopes from [`crate::crypto`]; the store never sees the
//! keys. The audit table and its API live in [`audit`]; the key directory's tables and
//! the log reads behind its proofs in [`directory`].

pub mod audit;
pub mod directory;
pub mod keys;
pub mod merkle;
mod sql;

pub use audit::AuditLog;
pub use directory::{
    AddKeyPackages, ClaimedKeyPackage, DeviceRecord, KeyDirectory, KeyPackageCount, LogCheckpoint,
    NewDevice,
};
pub use sql::{Backend, SqlStore, SqlTx};

use async_trait::async_trait;

use crate::auth::{ActivationPurpose, Session};
use crate::model::{
    AccountId, AppointmentId, AppointmentStatus, ChatId, InviteId, ParticipantId, Principal, Role,
    Timestamp,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Unique constraint hit (e.g. username taken).
    #[error("already exists")]
    Conflict,
    #[error("stored data is inconsistent: {0}")]
    Corrupt(&'static str),
    /// Database or driver error; logged, never shown to clients.
    #[error("database error: {0}")]
    Db(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(d) = &e
            && d.is_unique_violation()
        {
            return StoreError::Conflict;
        }
        StoreError::Db(e.to_string())
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Db(e.to_string())
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Clone, Debug)]
pub struct NewAccount {
    pub username: String,
    pub role: Role,
    pub password_hash: String,
    /// Sealed.
    pub display_name: Vec<u8>,
    /// Sealed.
    pub contact: Option<Vec<u8>>,
    pub created_at: Timestamp,
}

#[derive(Clone, Debug)]
pub struct AccountRecord {
    pub id: AccountId,
    pub username: String,
    pub role: Role,
    pub password_hash: String,
    pub display_name: Vec<u8>,
    pub contact: Option<Vec<u8>>,
    /// Sealed; the second factor in use once `totp_enabled`.
    pub totp_secret: Option<Vec<u8>>,
    pub totp_enabled: bool,
    pub totp_last_step: Option<i64>,
    pub disabled: bool,
    pub created_at: Timestamp,
    /// Waiting for its owner to follow an activation link: cannot log in.
    pub activation_pending: bool,
    /// Sealed; a second factor being enrolled, not yet confirmed (the enabled one, if
    /// any, keeps working until it is).
    pub totp_pending: Option<Vec<u8>>,
}

impl AccountRecord {
    /// Whether the account has a password at all (an account an admin created has
    /// none until it is activated, nor one whose password an admin reset).
    pub fn has_password(&self) -> bool {
        !self.password_hash.is_empty()
    }
}

/// A single-use link for an account's owner, stored as the hash of its token only.
#[derive(Clone, Debug)]
pub struct NewActivation {
    pub account: AccountId,
    pub token_hash: Vec<u8>,
    pub purpose: ActivationPurpose,
    /// Who issued it; `None` from the command line.
    pub created_by: Option<AccountId>,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

#[derive(Clone, Debug)]
pub struct ActivationRecord {
    pub id: i64,
    pub account: AccountId,
    pub purpose: ActivationPurpose,
    pub created_by: Option<AccountId>,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
    pub used_at: Option<Timestamp>,
}

impl ActivationRecord {
    /// Unused and unexpired at `now`.
    pub fn usable(&self, now: Timestamp) -> bool {
        self.used_at.is_none() && now < self.expires_at
    }
}

#[derive(Clone, Debug)]
pub struct NewAppointment {
    pub doctor: AccountId,
    pub patient: Option<AccountId>,
    pub start: Timestamp,
    pub duration_s: i64,
    /// Sealed.
    pub reason: Option<Vec<u8>>,
    pub created_by: AccountId,
    pub created_at: Timestamp,
}

#[derive(Clone, Debug)]
pub struct Appointment {
    pub id: AppointmentId,
    pub doctor: AccountId,
    pub patient: Option<AccountId>,
    pub start: Timestamp,
    pub duration_s: i64,
    pub reason: Option<Vec<u8>>,
    pub status: AppointmentStatus,
    pub created_by: AccountId,
    pub created_at: Timestamp,
}

impl Appointment {
    pub fn end(&self) -> Timestamp {
        self.start.plus_secs(self.duration_s)
    }

    /// What [`crate::policy`] decides on.
    pub fn facts(&self) -> crate::policy::AppointmentFacts {
        crate::policy::AppointmentFacts {
            id: self.id,
            doctor: self.doctor,
            patient: self.patient,
            status: self.status,
            start: self.start,
            end: self.end(),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct AppointmentQuery {
    pub doctor: Option<AccountId>,
    pub patient: Option<AccountId>,
    /// Only appointments that overlap `[from, to)` (either bound may be open).
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
}

/// What moving an appointment changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppointmentChange {
    pub doctor: AccountId,
    pub start: Timestamp,
    pub duration_s: i64,
}

#[derive(Clone, Debug)]
pub struct NewInvite {
    pub appointment: AppointmentId,
    pub token_hash: Vec<u8>,
    pub expires_at: Timestamp,
    pub created_by: AccountId,
    pub created_at: Timestamp,
    /// The guest's name as the inviter gave it, sealed ([`crate::crypto::ctx::INVITE_LABEL`]).
    pub label: Option<Vec<u8>>,
}

#[derive(Clone, Debug)]
pub struct InviteRecord {
    pub id: InviteId,
    pub appointment: AppointmentId,
    pub expires_at: Timestamp,
    pub used_at: Option<Timestamp>,
    /// Sealed; `None` for invites made before labels existed.
    pub label: Option<Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsentRecord {
    pub subject: String,
    pub version: String,
    pub accepted_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

#[derive(Clone, Debug)]
pub struct NewChat {
    pub appointment: AppointmentId,
    pub sender: ParticipantId,
    pub sender_role: Role,
    pub sent_at: Timestamp,
    pub ciphertext: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatRecord {
    pub id: ChatId,
    pub appointment: AppointmentId,
    pub sender: ParticipantId,
    pub sender_role: Role,
    pub sent_at: Timestamp,
    pub ciphertext: Vec<u8>,
}

#[derive(Clone, Debug)]
pub struct WrappedDataKey {
    pub id: u32,
    pub wrapped: Vec<u8>,
    pub active: bool,
}

/// One sealed value somewhere in the database, for re-sealing on key rotation.
#[derive(Clone, Debug)]
pub struct SealedCell {
    pub column: SealedColumn,
    pub row: i64,
    pub value: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SealedColumn {
    DisplayName,
    Contact,
    TotpSecret,
    Reason,
    InviteLabel,
    DateOfBirth,
    TotpPending,
}

impl SealedColumn {
    pub const ALL: [SealedColumn; 7] = [
        SealedColumn::DisplayName,
        SealedColumn::Contact,
        SealedColumn::TotpSecret,
        SealedColumn::Reason,
        SealedColumn::InviteLabel,
        SealedColumn::DateOfBirth,
        SealedColumn::TotpPending,
    ];
    pub fn table_column(self) -> (&'static str, &'static str) {
        match self {
            SealedColumn::DisplayName => ("accounts", "display_name"),
            SealedColumn::Contact => ("accounts", "contact"),
            SealedColumn::TotpSecret => ("accounts", "totp_secret"),
            SealedColumn::Reason => ("appointments", "reason"),
            SealedColumn::InviteLabel => ("invites", "label"),
            SealedColumn::DateOfBirth => ("accounts", "date_of_birth"),
            SealedColumn::TotpPending => ("accounts", "totp_pending"),
        }
    }
    /// The AAD context the value was sealed with.
    pub fn context(self) -> &'static str {
        use crate::crypto::ctx;
        match self {
            SealedColumn::DisplayName => ctx::DISPLAY_NAME,
            SealedColumn::Contact => ctx::CONTACT,
            SealedColumn::TotpSecret => ctx::TOTP_SECRET,
            SealedColumn::Reason => ctx::REASON,
            SealedColumn::InviteLabel => ctx::INVITE_LABEL,
            SealedColumn::DateOfBirth => ctx::DATE_OF_BIRTH,
            // Pending and enabled secrets are sealed alike: enabling one moves the
            // envelope from one column to the other.
            SealedColumn::TotpPending => ctx::TOTP_SECRET,
        }
    }
}

#[derive(Clone, Debug)]
pub struct BreakGlassGrant {
    pub id: i64,
    pub admin: AccountId,
    /// The one patient whose appointments the grant opens.
    pub patient: AccountId,
    pub reason: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

/// A write and the audit entries that record it, in one database transaction: the
/// entries commit with the change or neither happens (an action whose entry cannot be
/// written is not left half done). Dropping it without [`StoreTx::commit`] rolls back.
///
/// Hold it briefly: recording takes the audit log's head lock, which serialises every
/// audited write and append.
#[async_trait]
pub trait StoreTx: Send {
    async fn create_account(&mut self, a: NewAccount) -> Result<AccountId>;
    async fn create_session(&mut self, s: &Session) -> Result<()>;
    async fn create_appointment(&mut self, a: NewAppointment) -> Result<AppointmentId>;
    async fn create_invite(&mut self, i: NewInvite) -> Result<InviteId>;
    /// As [`Store::redeem_invite`].
    async fn redeem_invite(&mut self, id: InviteId, now: Timestamp) -> Result<bool>;
    async fn record_consent(&mut self, subject: &str, version: &str, now: Timestamp) -> Result<()>;
    async fn revoke_consent(&mut self, subject: &str, now: Timestamp) -> Result<bool>;
    async fn create_break_glass(
        &mut self,
        admin: AccountId,
        patient: AccountId,
        reason: &str,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> Result<i64>;
    async fn set_totp_pending(&mut self, id: AccountId, sealed_secret: Vec<u8>) -> Result<()>;
    async fn enable_totp(&mut self, id: AccountId, step: i64) -> Result<()>;
    async fn replace_recovery_codes(&mut self, id: AccountId, hashes: Vec<Vec<u8>>) -> Result<()>;
    /// Store a patient's sealed date of birth.
    async fn set_date_of_birth(&mut self, id: AccountId, sealed: Vec<u8>) -> Result<()>;
    /// As [`Store::replace_patient_index`].
    async fn replace_patient_index(
        &mut self,
        id: AccountId,
        key_id: u32,
        macs: Vec<[u8; 32]>,
    ) -> Result<()>;
    /// Move a booked appointment; false if it is not booked (ended, cancelled,
    /// unknown), in which case nothing changes.
    async fn move_appointment(&mut self, id: AppointmentId, c: AppointmentChange) -> Result<bool>;
    /// Cancel a booked appointment; false if it is not booked.
    async fn cancel_appointment(&mut self, id: AppointmentId) -> Result<bool>;
    /// Stores a new activation link for its account; any earlier unused link of that
    /// account stops working (one live link per account).
    async fn create_activation(&mut self, a: NewActivation) -> Result<i64>;
    /// Marks the link used if it is unused and unexpired at `now`; false otherwise.
    /// Atomic, so a link works once even under concurrent use.
    async fn use_activation(&mut self, id: i64, now: Timestamp) -> Result<bool>;
    /// Replaces the account's password hash (empty: no password).
    async fn set_password_hash(&mut self, id: AccountId, phc: &str) -> Result<()>;
    async fn set_activation_pending(&mut self, id: AccountId, pending: bool) -> Result<()>;
    /// Removes the second factor (enabled and pending) and every recovery code.
    async fn clear_second_factor(&mut self, id: AccountId) -> Result<()>;
    async fn set_account_disabled(&mut self, id: AccountId, disabled: bool) -> Result<bool>;
    /// Revokes every session of the account except the one whose token hash is
    /// `keep` (all of them when `None`); returns how many.
    async fn revoke_account_sessions(&mut self, id: AccountId, keep: Option<&[u8]>) -> Result<u64>;
    /// Appends `events` to the audit log inside this transaction.
    async fn record_audit(&mut self, events: &[crate::audit::AuditEvent]) -> Result<()>;
    async fn commit(self: Box<Self>) -> Result<()>;
}

#[async_trait]
pub trait Store: AuditLog + KeyDirectory + Send + Sync + 'static {
    async fn ping(&self) -> Result<()>;

    /// Starts a transaction for a write that is audited together with its entries.
    async fn begin(&self) -> Result<Box<dyn StoreTx>>;

    // accounts
    async fn create_account(&self, a: NewAccount) -> Result<AccountId>;
    async fn account(&self, id: AccountId) -> Result<Option<AccountRecord>>;
    async fn account_by_username(&self, username: &str) -> Result<Option<AccountRecord>>;
    async fn list_accounts(&self) -> Result<Vec<AccountRecord>>;
    async fn set_account_disabled(&self, id: AccountId, disabled: bool) -> Result<bool>;
    /// The account's persisted login throttle: failures counted and when the next
    /// attempt is allowed (`None`: no such account).
    async fn login_throttle(&self, id: AccountId) -> Result<Option<(u32, Timestamp)>>;
    /// Compare-and-set of the persisted login throttle: from `seen` failures to
    /// `failures`, next attempt at `next_at`. False when another attempt (on this node
    /// or another) changed the count first, so concurrent attempts cannot both pass.
    async fn set_login_throttle(
        &self,
        id: AccountId,
        seen: u32,
        failures: u32,
        next_at: Timestamp,
    ) -> Result<bool>;
    /// Store a new (sealed) TOTP secret, not yet enabled.
    async fn set_totp_pending(&self, id: AccountId, sealed_secret: Vec<u8>) -> Result<()>;
    /// Enable TOTP, recording the step of the code that confirmed it.
    async fn enable_totp(&self, id: AccountId, step: i64) -> Result<()>;
    /// Record `step` as used if it is newer than the last used step; false means
    /// the code was already used (or a newer one was), i.e. a replay.
    async fn use_totp_step(&self, id: AccountId, step: i64) -> Result<bool>;
    async fn replace_recovery_codes(&self, id: AccountId, hashes: Vec<Vec<u8>>) -> Result<()>;
    /// Consume a recovery code; false if unknown or already used.
    async fn use_recovery_code(&self, id: AccountId, hash: &[u8], now: Timestamp) -> Result<bool>;
    /// Recovery codes of the account not used yet.
    async fn recovery_codes_remaining(&self, id: AccountId) -> Result<u32>;

    // activation links (tokens are stored only as hashes)
    async fn activation_by_hash(&self, token_hash: &[u8]) -> Result<Option<ActivationRecord>>;
    /// The account's newest link, used or not.
    async fn latest_activation(&self, account: AccountId) -> Result<Option<ActivationRecord>>;

    // sessions (tokens are stored only as hashes)
    async fn create_session(&self, s: &Session) -> Result<()>;
    async fn session(&self, token_hash: &[u8]) -> Result<Option<Session>>;
    async fn touch_session(&self, token_hash: &[u8], now: Timestamp) -> Result<()>;
    async fn revoke_session(&self, token_hash: &[u8]) -> Result<bool>;
    async fn revoke_account_sessions(&self, id: AccountId) -> Result<u64>;
    /// The account's sessions that are neither revoked nor past their absolute
    /// lifetime at `now`, oldest first.
    async fn account_sessions(&self, id: AccountId, now: Timestamp) -> Result<Vec<Session>>;
    /// Deletes sessions past their absolute lifetime at `now`, and revoked ones;
    /// returns how many.
    async fn purge_sessions(&self, now: Timestamp) -> Result<u64>;

    // appointments
    async fn create_appointment(&self, a: NewAppointment) -> Result<AppointmentId>;
    async fn appointment(&self, id: AppointmentId) -> Result<Option<Appointment>>;
    async fn list_appointments(&self, q: AppointmentQuery) -> Result<Vec<Appointment>>;
    async fn set_appointment_status(&self, id: AppointmentId, s: AppointmentStatus) -> Result<()>;
    /// Whether `a` and `b` are parties of one appointment, whatever its status: its
    /// doctor and patient, or a guest who redeemed an invite to it and its doctor,
    /// patient or another such guest. The relation that lets two principals meet in a
    /// consultation, and so look each other up in the key directory.
    async fn share_appointment(&self, a: &Principal, b: &Principal) -> Result<bool>;

    // invites
    async fn create_invite(&self, i: NewInvite) -> Result<InviteId>;
    async fn invite_by_hash(&self, token_hash: &[u8]) -> Result<Option<InviteRecord>>;
    async fn invite(&self, id: InviteId) -> Result<Option<InviteRecord>>;
    /// Mark the invite used if it is unused and unexpired; false otherwise. Atomic,
    /// so an invite link works once even under concurrent redemption.
    async fn redeem_invite(&self, id: InviteId, now: Timestamp) -> Result<bool>;

    // consent; `subject` is a pseudonymous principal id (`account:3`, `guest:7`)
    async fn record_consent(&self, subject: &str, version: &str, now: Timestamp) -> Result<()>;
    async fn revoke_consent(&self, subject: &str, now: Timestamp) -> Result<bool>;
    async fn active_consent(&self, subject: &str) -> Result<Option<ConsentRecord>>;

    // chat ciphertext
    async fn store_chat(&self, c: NewChat) -> Result<ChatId>;
    async fn chat_history(&self, appointment: AppointmentId) -> Result<Vec<ChatRecord>>;

    // encryption at rest
    async fn data_keys(&self) -> Result<Vec<WrappedDataKey>>;
    /// Insert or replace a wrapped key; if `active`, every other key becomes inactive.
    async fn put_data_key(&self, k: WrappedDataKey, now: Timestamp) -> Result<()>;
    async fn delete_data_key(&self, id: u32) -> Result<()>;
    async fn sealed_cells(&self) -> Result<Vec<SealedCell>>;
    async fn update_sealed_cell(&self, c: &SealedCell) -> Result<()>;

    // break-glass
    /// A grant to `admin` for `patient`'s appointments.
    async fn create_break_glass(
        &self,
        admin: AccountId,
        patient: AccountId,
        reason: &str,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> Result<i64>;
    /// The newest `limit` grants, newest first, expired ones included (for review).
    async fn list_break_glass(&self, limit: i64) -> Result<Vec<BreakGlassGrant>>;
    /// `admin`'s unexpired grant for `patient`, if any.
    async fn active_break_glass(
        &self,
        admin: AccountId,
        patient: AccountId,
        now: Timestamp,
    ) -> Result<Option<BreakGlassGrant>>;

    // patient search (crate::blind_index)
    /// A patient's sealed date of birth, if one was recorded.
    async fn date_of_birth(&self, id: AccountId) -> Result<Option<Vec<u8>>>;
    /// Replace the account's index rows made under data key `key_id` with `macs`.
    async fn replace_patient_index(
        &self,
        id: AccountId,
        key_id: u32,
        macs: Vec<[u8; 32]>,
    ) -> Result<()>;
    /// Patients (role patient) with no index row under `key_id`: those to index.
    async fn unindexed_patients(&self, key_id: u32) -> Result<Vec<AccountId>>;
    /// Delete every index row not made under `key_id` (after a rotation re-indexed).
    async fn drop_patient_index_except(&self, key_id: u32) -> Result<u64>;
    /// Accounts that have every one of `macs` under `key_id` (at most `limit`).
    async fn search_patient_index(
        &self,
        key_id: u32,
        macs: &[[u8; 32]],
        limit: i64,
    ) -> Result<Vec<AccountId>>;
}
