//! The caller's own account (`/api/account*`): its state, a password change, new
//! recovery codes. Documented in docs/protocol.md.
//!
//! Every change here asks for the password again, whatever the session: a session
//! left open must not be enough to take the account over.

use axum::Json;
use axum::extract::State;
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};

use super::activation::{check_new_password, hash_pw_gated};
use super::login::verify_pw_gated;
use super::{AnySession, ApiError, ApiResult, AppState, Authed};
use crate::audit::{AuditAction, Outcome};
use crate::auth::{ThrottlePolicy, recovery_codes};
use crate::model::{AccountId, Role};
use crate::password;
use crate::store::AccountRecord;

/// Wrong passwords typed again per account before it must wait.
const POLICY_REAUTH: ThrottlePolicy = ThrottlePolicy {
    free: 5,
    cap_s: 300,
};

/// Checks the password typed again for a sensitive step (throttled per account):
/// `Ok` when it is right, otherwise the refusal, audited.
pub(super) async fn reauthenticate(
    state: &AppState,
    s: &AnySession,
    account: &AccountRecord,
    password: Option<String>,
) -> ApiResult<()> {
    let password = password.ok_or(ApiError::BadRequest("password is required"))?;
    let key = format!("reauth:{}", account.id);
    let attempt = state
        .throttle
        .lock()
        .handle_attempt(&[(key.clone(), POLICY_REAUTH)], super::now());
    if let Err(wait) = attempt {
        state
            .audit(
                s.event(AuditAction::ReauthFailed, Outcome::Denied)
                    .detail("throttle"),
            )
            .await?;
        return Err(ApiError::TooManyRequests(wait));
    }
    let ok = account.has_password()
        && password.len() <= 1024
        && verify_pw_gated(state, account.password_hash.clone(), password).await?;
    if !ok {
        state
            .audit(
                s.event(AuditAction::ReauthFailed, Outcome::Failure)
                    .detail("bad_password"),
            )
            .await?;
        return Err(ApiError::InvalidCredentials);
    }
    state.throttle.lock().handle_success(&key);
    Ok(())
}

/// The caller's own account (guests have none).
async fn own(state: &AppState, s: &Authed) -> ApiResult<AccountRecord> {
    let id: AccountId = s.account_id().ok_or(ApiError::Forbidden)?;
    state.store.account(id).await?.ok_or(ApiError::Unauthorized)
}

#[derive(Serialize)]
pub struct AccountResp {
    username: String,
    role: Role,
    mfa_enabled: bool,
    /// Unused recovery codes (0 without a second factor).
    recovery_codes_remaining: u32,
    /// The minimum length a new password must have for this account.
    password_min_length: usize,
}

/// `GET /api/account`.
pub async fn account(State(state): State<AppState>, s: Authed) -> ApiResult<Json<AccountResp>> {
    let a = own(&state, &s).await?;
    let remaining = if a.totp_enabled {
        state.store.recovery_codes_remaining(a.id).await?
    } else {
        0
    };
    Ok(Json(AccountResp {
        password_min_length: password::min_len(a.totp_enabled || a.role.requires_mfa()),
        username: a.username,
        role: a.role,
        mfa_enabled: a.totp_enabled,
        recovery_codes_remaining: remaining,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangePasswordReq {
    current_password: String,
    new_password: String,
}

#[derive(Serialize)]
pub struct ChangePasswordResp {
    /// The account's other sessions, ended by the change.
    revoked_sessions: u64,
}

/// `POST /api/account/password`: the current password, then the new one (held to the
/// password rules). Every other session of the account ends; this one goes on.
pub async fn change_password(
    State(state): State<AppState>,
    s: Authed,
    Json(req): Json<ChangePasswordReq>,
) -> ApiResult<Json<ChangePasswordResp>> {
    let a = own(&state, &s).await?;
    reauthenticate(&state, &s, &a, Some(req.current_password)).await?;
    check_new_password(
        &state,
        &a,
        &req.new_password,
        a.totp_enabled || a.role.requires_mfa(),
    )?;
    let phc = hash_pw_gated(&state, req.new_password).await?;
    // The new hash, the other sessions' end and the entries commit together.
    let mut tx = state.store.begin().await?;
    tx.set_password_hash(a.id, &phc).await?;
    let revoked = tx
        .revoke_account_sessions(a.id, Some(&s.session.token_hash))
        .await?;
    state
        .commit_audited(
            tx,
            vec![
                s.event(AuditAction::PasswordChanged, Outcome::Success)
                    .target(a.id),
                s.event(AuditAction::TokenRevoked, Outcome::Success)
                    .target(a.id)
                    .detail(format!("{revoked} sessions")),
            ],
        )
        .await?;
    Ok(Json(ChangePasswordResp {
        revoked_sessions: revoked,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewCodesReq {
    password: String,
}

#[derive(Serialize)]
pub struct RenewCodesResp {
    recovery_codes: Vec<String>,
}

/// `POST /api/account/recovery-codes`: ten new recovery codes (the password again);
/// every earlier code stops working.
pub async fn renew_recovery_codes(
    State(state): State<AppState>,
    s: Authed,
    Json(req): Json<RenewCodesReq>,
) -> ApiResult<Json<RenewCodesResp>> {
    let a = own(&state, &s).await?;
    if !a.totp_enabled {
        return Err(ApiError::Conflict("enrol a second factor first"));
    }
    reauthenticate(&state, &s, &a, Some(req.password)).await?;
    let codes = recovery_codes(&state.recovery_pepper, &mut OsRng);
    let mut tx = state.store.begin().await?;
    tx.replace_recovery_codes(a.id, codes.iter().map(|(_, h)| h.clone()).collect())
        .await?;
    state
        .commit_audited(
            tx,
            vec![
                s.event(AuditAction::RecoveryCodesRenewed, Outcome::Success)
                    .target(a.id),
            ],
        )
        .await?;
    Ok(Json(RenewCodesResp {
        recovery_codes: codes.into_iter().map(|(c, _)| c).collect(),
    }))
}
