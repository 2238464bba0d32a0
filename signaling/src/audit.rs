//! Audit event types. Storage lives in `store::audit` behind one narrow API; the one
//! store is the tamper-evident Merkle log of `confide-audit`.
//!
//! An event says who (pseudonymous id and role), did what, to what, with which
//! outcome, when (UTC) and from where. It never carries message content, secrets,
//! tokens or names.

use serde::{Deserialize, Serialize};

use crate::model::{Role, Timestamp};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AuditSeq(pub i64);

macro_rules! actions {
    ($($variant:ident => $s:literal,)*) => {
        /// Every security-relevant action. The string form is what is stored.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum AuditAction { $($variant,)* }
        impl AuditAction {
            pub const ALL: &'static [AuditAction] = &[$(AuditAction::$variant,)*];
            pub fn as_str(self) -> &'static str {
                match self { $(AuditAction::$variant => $s,)* }
            }
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some(AuditAction::$variant),)* _ => None }
            }
        }
    };
}

actions! {
    LoginOk => "login_ok",
    LoginFailed => "login_failed",
    LoginThrottled => "login_throttled",
    MfaEnrollStarted => "mfa_enroll_started",
    MfaEnrolled => "mfa_enrolled",
    MfaFailed => "mfa_failed",
    MfaRecoveryUsed => "mfa_recovery_used",
    Logout => "logout",
    SessionExpired => "session_expired",
    TokenRevoked => "token_revoked",
    WsAuthOk => "ws_auth_ok",
    WsAuthFailed => "ws_auth_failed",
    AppointmentBooked => "appointment_booked",
    AppointmentBookRefused => "appointment_book_refused",
    AppointmentsListed => "appointments_listed",
    InviteCreated => "invite_created",
    InviteRedeemed => "invite_redeemed",
    InviteRefused => "invite_refused",
    JoinWaiting => "join_waiting",
    JoinOk => "join_ok",
    JoinRefused => "join_refused",
    Admitted => "admitted",
    AdmitRefused => "admit_refused",
    Denied => "denied",
    Left => "left",
    Ended => "ended",
    EndRefused => "end_refused",
    ConsentAccepted => "consent_accepted",
    ConsentRevoked => "consent_revoked",
    ChatHistoryRead => "chat_history_read",
    ChatHistoryRefused => "chat_history_refused",
    AccountCreated => "account_created",
    AccountDisabled => "account_disabled",
    AccountEnabled => "account_enabled",
    // An admin reset a password or a second factor (high priority; detail says which).
    AccountReset => "account_reset",
    // A single-use activation link was issued (detail: its purpose) or refused.
    ActivationIssued => "activation_issued",
    ActivationRefused => "activation_refused",
    // The owner followed the link (detail: its purpose).
    AccountActivated => "account_activated",
    PasswordChanged => "password_changed",
    // A wrong current password where a step asks for it again.
    ReauthFailed => "reauth_failed",
    RecoveryCodesRenewed => "recovery_codes_renewed",
    AdminRefused => "admin_refused",
    AuditRead => "audit_read",
    BreakGlassGranted => "break_glass_granted",
    BreakGlassRefused => "break_glass_refused",
    BreakGlassAccess => "break_glass_access",
    KeyRotated => "key_rotated",
    // Front desk and administration (docs/protocol.md, "Front desk").
    AppointmentMoved => "appointment_moved",
    AppointmentCancelled => "appointment_cancelled",
    AppointmentChangeRefused => "appointment_change_refused",
    WaitingRoomsViewed => "waiting_rooms_viewed",
    PatientSearched => "patient_searched",
    PatientCreated => "patient_created",
    AuditVerified => "audit_verified",
    AuditExported => "audit_exported",
    AuditReportRead => "audit_report_read",
    SessionsListed => "sessions_listed",
    BreakGlassReviewed => "break_glass_reviewed",
    SettingsRead => "settings_read",
    DoctorsListed => "doctors_listed",
    // Key directory: target `device:<id>`, detail `ed25519:<base64 key>`. Clients
    // verify these entries (confide_mls::transparency), so the strings are fixed.
    DeviceRegistered => "device_registered",
    DeviceRevoked => "device_revoked",
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure,
    /// Refused by policy (role, assignment, window, consent, throttling).
    Denied,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Denied => "denied",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "success" => Outcome::Success,
            "failure" => Outcome::Failure,
            "denied" => Outcome::Denied,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Normal,
    /// Emergency access and other events a reviewer must look at.
    High,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Normal => "normal",
            Priority::High => "high",
        }
    }
}

/// One audit record as handed to the store. Plain data on purpose.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Pseudonymous actor: `account:12`, `guest:3`, or `anonymous`.
    pub actor: String,
    pub role: Option<Role>,
    pub action: AuditAction,
    /// What the action was about: `appointment:4`, `participant:9`, `account:2`, ...
    pub target: Option<String>,
    /// The patient whose record the action touched (`account:9`), when it touched one:
    /// what the per-patient access report selects on.
    #[serde(default)]
    pub patient: Option<String>,
    pub outcome: Outcome,
    pub at: Timestamp,
    /// Source IP address, if the action came over the network.
    pub source: Option<String>,
    pub request_id: Option<String>,
    pub priority: Priority,
    /// A reason the actor had to state (break-glass) or a short machine code for a
    /// refusal (`outside_window`). Never message content or secrets.
    pub detail: Option<String>,
}

impl AuditEvent {
    pub fn new(
        actor: impl Into<String>,
        action: AuditAction,
        outcome: Outcome,
        at: Timestamp,
    ) -> Self {
        AuditEvent {
            actor: actor.into(),
            role: None,
            action,
            target: None,
            patient: None,
            outcome,
            at,
            source: None,
            request_id: None,
            priority: Priority::Normal,
            detail: None,
        }
    }
    pub fn role(mut self, r: Role) -> Self {
        self.role = Some(r);
        self
    }
    pub fn target(mut self, t: impl ToString) -> Self {
        self.target = Some(t.to_string());
        self
    }
    pub fn patient(mut self, p: impl ToString) -> Self {
        self.patient = Some(p.to_string());
        self
    }
    /// The patient when there is one (an appointment without a patient has none).
    pub fn patient_opt(mut self, p: Option<impl ToString>) -> Self {
        self.patient = p.map(|p| p.to_string());
        self
    }
    pub fn source(mut self, s: Option<String>) -> Self {
        self.source = s;
        self
    }
    pub fn request_id(mut self, r: Option<String>) -> Self {
        self.request_id = r;
        self
    }
    pub fn high(mut self) -> Self {
        self.priority = Priority::High;
        self
    }
    pub fn detail(mut self, d: impl Into<String>) -> Self {
        self.detail = Some(d.into());
        self
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: AuditSeq,
    #[serde(flatten)]
    pub event: AuditEvent,
}

/// Read filter; all set fields must match. Results come in sequence order.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<AuditAction>,
    pub target: Option<String>,
    /// The patient the entry names (`account:9`).
    #[serde(default)]
    pub patient: Option<String>,
    pub outcome: Option<Outcome>,
    /// Entries at or after this time.
    #[serde(default)]
    pub since: Option<Timestamp>,
    /// Entries before this time.
    #[serde(default)]
    pub until: Option<Timestamp>,
    pub after: Option<AuditSeq>,
    pub limit: Option<i64>,
}
