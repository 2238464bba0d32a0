//! Single-use activation links (`/api/activation/*`) and the password rules
//! (`/api/password/policy`). Documented in docs/protocol.md.
//!
//! An account an admin (or, for patients, staff) creates has no password: its owner
//! gets a link, `<origin>/#/activate/<token>`, passed on by hand or by the operator's
//! [`Notifier`]. Following it, the owner sets a password and, for roles that need one,
//! enrols a second factor with the enrolment session it returns (`/api/totp/*`). An
//! admin's reset of a password or a second factor issues a link the same way.
//!
//! Links carry 256 random bits; only their SHA-256 is stored; they expire (the
//! `activation_ttl_s` setting) and work once. The token travels in request bodies only,
//! never in a path or a query string a proxy or the server could log.

use std::sync::Arc;

use async_trait::async_trait;
use axum::Json;
use axum::extract::State;
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};

use super::login::{audit_grant, issue_session, verify_pw_gated, verify_totp};
use super::{AnySession, ApiError, ApiResult, AppState, Ctx, now};
use crate::audit::{AuditAction, Outcome};
use crate::auth::{
    ActivationPurpose, SessionKind, ThrottlePolicy, hash_password, hash_recovery_code, hash_token,
    legacy_recovery_hash, new_token,
};
use crate::model::{AccountId, Principal, Role, Timestamp};
use crate::password::{self, PasswordContext};
use crate::store::{AccountRecord, NewActivation, StoreTx};

/// Failed proofs (current password, second factor) per link before it must wait.
const POLICY_LINK: ThrottlePolicy = ThrottlePolicy {
    free: 5,
    cap_s: 300,
};

/// A link just issued: what the person it is for needs. Holds the token: pass it on,
/// never log it.
#[derive(Clone)]
pub struct ActivationLink {
    pub account: AccountId,
    pub purpose: ActivationPurpose,
    /// The secret part of the link (base64url, 256 bits).
    pub token: String,
    pub expires_at: Timestamp,
}

impl ActivationLink {
    /// The link's path and fragment on the server's origin: `/#/activate/<token>`. The
    /// token is in the fragment, which browsers never send to the server.
    pub fn path(&self) -> String {
        format!("/#/activate/{}", self.token)
    }
}

impl std::fmt::Debug for ActivationLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActivationLink")
            .field("account", &self.account)
            .field("purpose", &self.purpose)
            .field("token", &"<secret>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Delivers activation links to the people they are for. Delivery (e-mail, SMS, a
/// letter) is the operator's concern; the default, [`LogNotifier`], only notes that a
/// link was issued, and the admin who made it passes it on by hand.
#[async_trait]
pub trait Notifier: Send + Sync + 'static {
    /// Called once the link is stored. `account` carries the sealed contact details
    /// (open them with the keyring). Must not fail the action that made the link: a
    /// delivery problem is the notifier's to report.
    async fn notify_activation(&self, account: &AccountRecord, link: &ActivationLink);
}

/// The default [`Notifier`]: one log line per link, never the token.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogNotifier;

#[async_trait]
impl Notifier for LogNotifier {
    async fn notify_activation(&self, account: &AccountRecord, link: &ActivationLink) {
        tracing::info!(
            account = %account.id,
            purpose = link.purpose.as_str(),
            expires_at = link.expires_at.0,
            "activation link issued; the admin passes it on (no notifier configured)"
        );
    }
}

/// Issues a link for `account` inside `tx`, the transaction that makes the change it
/// follows from (a new account, a reset), and records its audit entry there: the link,
/// the change and the entry commit together. Any earlier unused link of the account
/// stops working, and the account waits for activation (it cannot log in) until the
/// link is used. After committing, hand the link to [`notify`].
///
/// This is the activation primitive other handlers call (staff creating a patient).
pub async fn issue(
    state: &AppState,
    tx: &mut Box<dyn StoreTx>,
    account: AccountId,
    purpose: ActivationPurpose,
    issued_by: &AnySession,
) -> ApiResult<ActivationLink> {
    let t = now();
    let link = new_link(
        tx.as_mut(),
        account,
        purpose,
        issued_by.account_id(),
        state.settings.activation_ttl_s,
        t,
    )
    .await?;
    let entry = issued_by
        .event(AuditAction::ActivationIssued, Outcome::Success)
        .target(account)
        .detail(purpose.as_str());
    if let Err(e) = tx.record_audit(&[entry]).await {
        super::audit_write_failed(
            AuditAction::ActivationIssued,
            super::AuditPolicy::Closed,
            &e,
        );
        return Err(ApiError::AuditUnavailable);
    }
    Ok(link)
}

/// The store writes of a new link, without an audit entry (the command line records
/// its own): stores the hash, marks the account as waiting.
pub async fn new_link(
    tx: &mut dyn StoreTx,
    account: AccountId,
    purpose: ActivationPurpose,
    created_by: Option<AccountId>,
    ttl_s: i64,
    t: Timestamp,
) -> Result<ActivationLink, crate::store::StoreError> {
    let (token, token_hash) = new_token(&mut OsRng);
    let expires_at = t.plus_secs(ttl_s);
    tx.create_activation(NewActivation {
        account,
        token_hash,
        purpose,
        created_by,
        created_at: t,
        expires_at,
    })
    .await?;
    tx.set_activation_pending(account, true).await?;
    Ok(ActivationLink {
        account,
        purpose,
        token,
        expires_at,
    })
}

/// Hands a committed link to the configured [`Notifier`].
pub async fn notify(state: &AppState, link: &ActivationLink) {
    match state.store.account(link.account).await {
        Ok(Some(a)) => state.notifier().notify_activation(&a, link).await,
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "activation notice: account lookup failed"),
    }
}

/// The default notifier, as an `Arc` for [`AppState::set_notifier`]'s fallback.
pub(crate) fn default_notifier() -> Arc<dyn Notifier> {
    Arc::new(LogNotifier)
}

// ------------------------------------------------------------ password rules

/// The service's names a password must not contain.
pub(super) fn service_names(state: &AppState) -> [&str; 2] {
    ["Confide", state.settings.issuer.as_str()]
}

/// Checks a new password for `account` against [`crate::password`]; a refusal names
/// the rule (`password_too_short`, ...).
pub(super) fn check_new_password(
    state: &AppState,
    account: &AccountRecord,
    new_password: &str,
    second_factor: bool,
) -> ApiResult<()> {
    let names = service_names(state);
    password::check(
        new_password,
        PasswordContext {
            username: &account.username,
            service_names: &names,
            second_factor,
        },
    )
    .map_err(|p| ApiError::Refused {
        status: axum::http::StatusCode::BAD_REQUEST,
        code: p.code(),
        message: p.message(),
    })
}

/// Hashes a new password under the hashing gate (it costs what a verification does).
pub(super) async fn hash_pw_gated(state: &AppState, password: String) -> ApiResult<String> {
    let admission = state
        .hash_gate
        .try_admit()
        .ok_or(ApiError::TooManyRequests(super::SHED_RETRY_AFTER_S))?;
    admission
        .run(move || hash_password(&password, &mut OsRng))
        .await
        .ok_or(ApiError::Internal)?
        .map_err(|_| ApiError::Internal)
}

/// `GET /api/password/policy` (no auth): the rules, for the page to show.
pub async fn password_policy() -> Json<password::PolicyView> {
    Json(password::policy_view())
}

// ------------------------------------------------------------ the routes

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InspectReq {
    token: String,
}

#[derive(Serialize)]
pub struct InspectResp {
    purpose: ActivationPurpose,
    username: String,
    role: Role,
    expires_at: Timestamp,
    /// The password the person types: a new one (`activate`, `reset_password`) or the
    /// current one (`reset_second_factor`).
    password: &'static str,
    /// Minimum length of the new password for this account.
    min_length: usize,
    /// A code from the authenticator (or a recovery code) is needed as well.
    second_factor_code: bool,
    /// A second factor is enrolled after this step.
    enrol_second_factor: bool,
    policy: password::PolicyView,
}

/// A usable link and its account, or the refusal (audited).
async fn open_link(
    state: &AppState,
    ctx: &Ctx,
    token: &str,
) -> ApiResult<(crate::store::ActivationRecord, AccountRecord)> {
    if ctx.ip.is_some_and(|ip| !state.ip_limiter.check(ip)) {
        return Err(ApiError::TooManyRequests(1));
    }
    let refuse = |actor: String, detail: &'static str| {
        ctx.event(actor, AuditAction::ActivationRefused, Outcome::Denied)
            .detail(detail)
    };
    let record = if token.is_empty() || token.len() > 512 {
        None
    } else {
        state.store.activation_by_hash(&hash_token(token)).await?
    };
    let Some(record) = record else {
        state.audit(refuse("anonymous".into(), "unknown")).await?;
        return Err(ApiError::ActivationInvalid);
    };
    let actor = record.account.to_string();
    let t = now();
    let detail = if record.used_at.is_some() {
        Some("used")
    } else if record.expires_at <= t {
        Some("expired")
    } else {
        None
    };
    if let Some(d) = detail {
        state.audit(refuse(actor, d).target(record.account)).await?;
        return Err(ApiError::ActivationInvalid);
    }
    let account = state.store.account(record.account).await?;
    let Some(account) = account.filter(|a| !a.disabled) else {
        state
            .audit(refuse(actor, "account_disabled").target(record.account))
            .await?;
        return Err(ApiError::ActivationInvalid);
    };
    Ok((record, account))
}

/// What the page asks for on each purpose.
struct Needs {
    new_password: bool,
    current_password: bool,
    second_factor_code: bool,
    enrol_second_factor: bool,
    /// The account has (or will have) a second factor: the shorter minimum applies.
    second_factor: bool,
}

fn needs(purpose: ActivationPurpose, a: &AccountRecord) -> Needs {
    match purpose {
        ActivationPurpose::Activate => Needs {
            new_password: true,
            current_password: false,
            second_factor_code: false,
            enrol_second_factor: a.role.requires_mfa(),
            second_factor: a.role.requires_mfa(),
        },
        ActivationPurpose::ResetPassword => Needs {
            new_password: true,
            current_password: false,
            second_factor_code: a.totp_enabled,
            enrol_second_factor: a.role.requires_mfa() && !a.totp_enabled,
            second_factor: a.role.requires_mfa() || a.totp_enabled,
        },
        ActivationPurpose::ResetSecondFactor => Needs {
            new_password: false,
            current_password: true,
            second_factor_code: false,
            enrol_second_factor: true,
            second_factor: true,
        },
    }
}

/// `POST /api/activation/inspect` (no auth) — what the link is for, whose it is, and
/// the password rules that apply. Does not use the link up.
pub async fn inspect(
    State(state): State<AppState>,
    ctx: Ctx,
    Json(req): Json<InspectReq>,
) -> ApiResult<Json<InspectResp>> {
    let (record, account) = open_link(&state, &ctx, &req.token).await?;
    let n = needs(record.purpose, &account);
    Ok(Json(InspectResp {
        purpose: record.purpose,
        username: account.username,
        role: account.role,
        expires_at: record.expires_at,
        password: if n.new_password { "new" } else { "current" },
        min_length: password::min_len(n.second_factor),
        second_factor_code: n.second_factor_code,
        enrol_second_factor: n.enrol_second_factor,
        policy: password::policy_view(),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompleteReq {
    token: String,
    /// The new password (`activate`, `reset_password`).
    #[serde(default)]
    new_password: Option<String>,
    /// The current password (`reset_second_factor`).
    #[serde(default)]
    current_password: Option<String>,
    /// A code from the authenticator (`reset_password` of an account with one).
    #[serde(default)]
    totp: Option<String>,
    /// Or one of the recovery codes.
    #[serde(default)]
    recovery_code: Option<String>,
}

#[derive(Serialize)]
pub struct CompleteResp {
    role: Role,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idle_timeout_s: Option<i64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    mfa_enrollment_required: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    enrollment_token: Option<String>,
}

/// `POST /api/activation/complete` (no auth) — uses the link up: sets the new password
/// (or proves the current one), revokes the account's sessions, and returns a session:
/// an enrolment-only one when a second factor must be enrolled next (`/api/totp/*`,
/// which then returns the recovery codes and a full session), a full one otherwise.
pub async fn complete(
    State(state): State<AppState>,
    ctx: Ctx,
    Json(req): Json<CompleteReq>,
) -> ApiResult<Json<CompleteResp>> {
    let (record, account) = open_link(&state, &ctx, &req.token).await?;
    let n = needs(record.purpose, &account);
    let actor = account.id.to_string();
    let fail = |action: AuditAction, detail: &'static str| {
        ctx.event(actor.clone(), action, Outcome::Failure)
            .role(account.role)
            .target(account.id)
            .detail(detail)
    };

    let new_password = if n.new_password {
        let p = req
            .new_password
            .ok_or(ApiError::BadRequest("new_password is required"))?;
        check_new_password(&state, &account, &p, n.second_factor)?;
        Some(p)
    } else {
        None
    };

    // What the proofs need must be there before an attempt is counted.
    if n.current_password && req.current_password.is_none() {
        return Err(ApiError::BadRequest("current_password is required"));
    }
    if n.second_factor_code && req.totp.is_none() && req.recovery_code.is_none() {
        return Err(ApiError::MfaRequired);
    }
    // Proofs the link alone does not give: throttled per link, so holding a link does
    // not allow guessing the code or the password behind it.
    let key = format!("act:{}", record.id);
    let t = now();
    if n.current_password || n.second_factor_code {
        let attempt = state
            .throttle
            .lock()
            .handle_attempt(&[(key.clone(), POLICY_LINK)], t);
        if let Err(wait) = attempt {
            state
                .audit(fail(AuditAction::ActivationRefused, "throttle"))
                .await?;
            return Err(ApiError::TooManyRequests(wait));
        }
    }
    if n.current_password {
        let current = req
            .current_password
            .ok_or(ApiError::BadRequest("current_password is required"))?;
        let ok = account.has_password()
            && current.len() <= 1024
            && verify_pw_gated(&state, account.password_hash.clone(), current).await?;
        if !ok {
            state
                .audit(fail(AuditAction::ReauthFailed, "bad_password"))
                .await?;
            return Err(ApiError::InvalidCredentials);
        }
    }
    let mut recovery_used = false;
    if n.second_factor_code {
        let ok = match (&req.totp, &req.recovery_code) {
            (Some(code), _) => verify_totp(&state, &account, code, t).await?,
            (None, Some(rc)) => {
                let peppered = hash_recovery_code(&state.recovery_pepper, rc);
                recovery_used = state
                    .store
                    .use_recovery_code(account.id, &peppered, t)
                    .await?
                    || state
                        .store
                        .use_recovery_code(account.id, &legacy_recovery_hash(rc), t)
                        .await?;
                recovery_used
            }
            (None, None) => return Err(ApiError::MfaRequired),
        };
        if !ok {
            state
                .audit(fail(AuditAction::MfaFailed, "activation"))
                .await?;
            return Err(ApiError::InvalidCredentials);
        }
    }
    if n.current_password || n.second_factor_code {
        state.throttle.lock().handle_success(&key);
    }

    let phc = match new_password {
        Some(p) => Some(hash_pw_gated(&state, p).await?),
        None => None,
    };
    // The link is used up, the password set, the account's old sessions ended and the
    // entries written together, or none of it happens.
    let mut tx = state.store.begin().await?;
    if !tx.use_activation(record.id, now()).await? {
        drop(tx);
        state
            .audit(
                ctx.event(
                    actor.clone(),
                    AuditAction::ActivationRefused,
                    Outcome::Denied,
                )
                .target(account.id)
                .detail("used"),
            )
            .await?;
        return Err(ApiError::ActivationInvalid);
    }
    if let Some(phc) = &phc {
        tx.set_password_hash(account.id, phc).await?;
    }
    tx.set_activation_pending(account.id, false).await?;
    let revoked = tx.revoke_account_sessions(account.id, None).await?;
    let mut events = vec![
        ctx.event(
            actor.clone(),
            AuditAction::AccountActivated,
            Outcome::Success,
        )
        .role(account.role)
        .target(account.id)
        .detail(record.purpose.as_str()),
    ];
    if recovery_used {
        events.push(
            ctx.event(
                actor.clone(),
                AuditAction::MfaRecoveryUsed,
                Outcome::Success,
            )
            .role(account.role)
            .detail("activation")
            .high(),
        );
    }
    if revoked > 0 {
        events.push(
            ctx.event(actor.clone(), AuditAction::TokenRevoked, Outcome::Success)
                .role(account.role)
                .target(account.id)
                .detail(format!("{revoked} sessions")),
        );
    }
    state.commit_audited(tx, events).await?;

    let enrol = n.enrol_second_factor;
    let (kind, lifetime) = if enrol {
        (SessionKind::Enroll, ENROL_SESSION_S)
    } else {
        (SessionKind::Full, state.settings.session_lifetime_s)
    };
    let (token, s) = issue_session(
        &state,
        Principal::Account(account.id),
        account.role,
        kind,
        None,
        lifetime,
    )
    .await?;
    audit_grant(
        &state,
        &s,
        ctx.event(actor, AuditAction::LoginOk, Outcome::Success)
            .role(account.role)
            .detail(if enrol {
                "mfa_enrollment_required"
            } else {
                "after_activation"
            }),
    )
    .await?;
    Ok(Json(if enrol {
        CompleteResp {
            role: account.role,
            token: None,
            expires_at: None,
            idle_timeout_s: None,
            mfa_enrollment_required: true,
            enrollment_token: Some(token),
        }
    } else {
        CompleteResp {
            role: account.role,
            token: Some(token),
            expires_at: Some(s.expires_at),
            idle_timeout_s: Some(state.settings.idle_timeout_s),
            mfa_enrollment_required: false,
            enrollment_token: None,
        }
    }))
}

/// Lifetime of an enrolment-only session, in seconds.
pub(super) const ENROL_SESSION_S: i64 = 600;
