//! Second-factor enrolment (`/api/totp/*`). Documented in docs/protocol.md.
//!
//! Two ways in. An enrolment-only session (a clinician's first login, or an activation
//! link just followed) enrols the account's first second factor; the password was
//! typed moments before. A full session enrols or changes one only with the password
//! typed again, so a session left open on a shared computer cannot swap the second
//! factor. A change leaves the old second factor working until the new one is
//! confirmed.

use axum::Json;
use axum::extract::State;
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};

use super::login::{audit_grant, issue_session};
use super::{AnySession, ApiError, ApiResult, AppState, now};
use crate::audit::{AuditAction, Outcome};
use crate::auth::{SessionKind, TotpSecret, recovery_codes};
use crate::crypto::ctx;
use crate::model::{AccountId, Timestamp};
use crate::store::AccountRecord;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct EnrollReq {
    /// The account's password; required with a full session.
    #[serde(default)]
    password: Option<String>,
}

#[derive(Serialize)]
pub struct EnrollResp {
    secret: String,
    otpauth_url: String,
    /// The otpauth URL as a QR code, an SVG document (the page shows it as an image).
    qr_svg: String,
}

/// The session's own account, and whether the session may enrol for it: an enrolment
/// session only while no second factor is enabled; a full session only with the
/// password (checked by the caller).
async fn own_account(state: &AppState, s: &AnySession) -> ApiResult<(AccountId, AccountRecord)> {
    let id = s.account_id().ok_or(ApiError::Forbidden)?;
    let account = state
        .store
        .account(id)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    if s.session.kind == SessionKind::Enroll && account.totp_enabled {
        return Err(ApiError::Conflict("a second factor is already enrolled"));
    }
    Ok((id, account))
}

pub async fn totp_enroll(
    State(state): State<AppState>,
    s: AnySession,
    body: Option<Json<EnrollReq>>,
) -> ApiResult<Json<EnrollResp>> {
    let req = body.map(|Json(r)| r).unwrap_or_default();
    let (id, account) = own_account(&state, &s).await?;
    if s.session.kind == SessionKind::Full {
        super::account::reauthenticate(&state, &s, &account, req.password).await?;
    }
    let secret = TotpSecret::generate(&mut OsRng);
    let qr_svg = secret
        .qr_svg(&state.settings.issuer, &account.username)
        .ok_or(ApiError::BadRequest(
            "the issuer or username is too long for a QR code",
        ))?;
    let sealed = state.keyring.seal(ctx::TOTP_SECRET, &secret.0, &mut OsRng);
    // The pending secret and its entry commit together, or neither does.
    let mut tx = state.store.begin().await?;
    tx.set_totp_pending(id, sealed).await?;
    state
        .commit_audited(
            tx,
            vec![
                s.event(AuditAction::MfaEnrollStarted, Outcome::Success)
                    .detail(if account.totp_enabled {
                        "change"
                    } else {
                        "first"
                    }),
            ],
        )
        .await?;
    Ok(Json(EnrollResp {
        otpauth_url: secret.otpauth_url(&state.settings.issuer, &account.username),
        secret: secret.base32(),
        qr_svg,
    }))
}

#[derive(Deserialize)]
pub struct ConfirmReq {
    code: String,
}

#[derive(Serialize)]
pub struct ConfirmResp {
    recovery_codes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<Timestamp>,
}

pub async fn totp_confirm(
    State(state): State<AppState>,
    s: AnySession,
    Json(req): Json<ConfirmReq>,
) -> ApiResult<Json<ConfirmResp>> {
    let (id, account) = own_account(&state, &s).await?;
    let sealed = account
        .totp_pending
        .as_ref()
        .ok_or(ApiError::BadRequest("start enrolment first"))?;
    let secret = state
        .keyring
        .open(ctx::TOTP_SECRET, sealed)
        .map_err(|_| ApiError::Internal)?;
    let t = now();
    let Some(step) = TotpSecret::from_bytes(secret.to_vec()).verify(&req.code, t, None) else {
        state
            .audit(
                s.event(AuditAction::MfaFailed, Outcome::Failure)
                    .detail("enrolment"),
            )
            .await?;
        return Err(ApiError::InvalidCredentials);
    };
    let codes = recovery_codes(&state.recovery_pepper, &mut OsRng);
    // The second factor, its recovery codes and the entry commit together.
    let mut tx = state.store.begin().await?;
    tx.enable_totp(id, step).await?;
    tx.replace_recovery_codes(id, codes.iter().map(|(_, h)| h.clone()).collect())
        .await?;
    state
        .commit_audited(
            tx,
            vec![s.event(AuditAction::MfaEnrolled, Outcome::Success).detail(
                if account.totp_enabled {
                    "change"
                } else {
                    "first"
                },
            )],
        )
        .await?;
    let (token, expires_at) = if s.session.kind == SessionKind::Enroll {
        state.store.revoke_session(&s.session.token_hash).await?;
        let (token, full) = issue_session(
            &state,
            s.session.principal.clone(),
            s.session.role,
            SessionKind::Full,
            None,
            state.settings.session_lifetime_s,
        )
        .await?;
        audit_grant(
            &state,
            &full,
            s.event(AuditAction::LoginOk, Outcome::Success)
                .detail("after_enrolment"),
        )
        .await?;
        (Some(token), Some(full.expires_at))
    } else {
        (None, None)
    };
    Ok(Json(ConfirmResp {
        recovery_codes: codes.into_iter().map(|(c, _)| c).collect(),
        token,
        expires_at,
    }))
}
