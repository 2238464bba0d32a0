//! Login, logout and the caller's own identity (`/api/login`, `/api/logout`,
//! `/api/me`), with the login throttle's policies. Documented in docs/protocol.md.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};

use super::{AnySession, ApiError, ApiResult, AppState, Authed, Ctx, invite_label, label_of, now};
use crate::audit::{AuditAction, Outcome};
use crate::auth::{
    DUMMY_HASH, Session, SessionKind, ThrottlePolicy, TotpSecret, hash_recovery_code,
    legacy_recovery_hash, new_token, verify_password,
};
use crate::crypto::ctx;
use crate::model::{AppointmentId, Principal, Role, Timestamp};
use crate::store::AccountRecord;

const POLICY_ACCOUNT_ADDR: ThrottlePolicy = ThrottlePolicy {
    free: 3,
    cap_s: 300,
};
const POLICY_ADDR: ThrottlePolicy = ThrottlePolicy {
    free: 10,
    cap_s: 300,
};
// Low cap: distributed guessing slows an account, but cannot keep its owner out.
const POLICY_ACCOUNT: ThrottlePolicy = ThrottlePolicy {
    free: 10,
    cap_s: 30,
};

// ------------------------------------------------------------------ login

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginReq {
    username: String,
    password: String,
    #[serde(default)]
    totp: Option<String>,
    #[serde(default)]
    recovery_code: Option<String>,
}

#[derive(Serialize)]
pub struct LoginResp {
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<Role>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idle_timeout_s: Option<i64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    mfa_enrollment_required: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    enrollment_token: Option<String>,
    /// After a login with a recovery code: how many unused codes are left.
    #[serde(skip_serializing_if = "Option::is_none")]
    recovery_codes_remaining: Option<u32>,
}

/// Verifies a password under the hashing gate (at most one verification per core
/// runs; see `gate.rs`); `Err` when the gate is full and the request must be shed.
pub(super) async fn verify_pw_gated(
    state: &AppState,
    phc: String,
    password: String,
) -> Result<bool, ApiError> {
    let admission = state
        .hash_gate
        .try_admit()
        .ok_or(ApiError::TooManyRequests(super::SHED_RETRY_AFTER_S))?;
    Ok(admission
        .run(move || verify_password(&phc, &password))
        .await
        .unwrap_or(false))
}

pub(super) async fn issue_session(
    state: &AppState,
    principal: Principal,
    role: Role,
    kind: SessionKind,
    scope: Option<AppointmentId>,
    lifetime_s: i64,
) -> ApiResult<(String, Session)> {
    let (token, s) = new_session(principal, role, kind, scope, lifetime_s);
    state.store.create_session(&s).await?;
    Ok((token, s))
}

/// A fresh session and its token, not yet stored.
pub(super) fn new_session(
    principal: Principal,
    role: Role,
    kind: SessionKind,
    scope: Option<AppointmentId>,
    lifetime_s: i64,
) -> (String, Session) {
    let (token, hash) = new_token(&mut OsRng);
    let now = now();
    let s = Session {
        token_hash: hash,
        principal,
        role,
        kind,
        scope,
        created_at: now,
        last_seen: now,
        expires_at: now.plus_secs(lifetime_s),
        revoked: false,
    };
    (token, s)
}

/// The audit entry of a session just issued, before its token leaves the server:
/// if the entry cannot be written the session is revoked at once, so the token the
/// caller never receives could not be used anyway (fail closed).
pub(super) async fn audit_grant(
    state: &AppState,
    s: &Session,
    e: crate::audit::AuditEvent,
) -> ApiResult<()> {
    if let Err(err) = state.audit(e).await {
        if let Err(e) = state.store.revoke_session(&s.token_hash).await {
            tracing::error!(error = %e, "could not revoke an unaudited session");
        }
        return Err(err);
    }
    Ok(())
}

fn throttle_keys(username: &str, ctx: &Ctx) -> [(String, ThrottlePolicy); 3] {
    // IPv6 by /64, as the per-address rate limit: rotating inside one's own /64
    // gives no fresh throttle.
    let ip = ctx
        .ip
        .map(|ip| super::AddrKey::of(ip).to_string())
        .unwrap_or_else(|| "-".into());
    let user = username.to_ascii_lowercase();
    [
        (format!("ua:{user}|{ip}"), POLICY_ACCOUNT_ADDR),
        (format!("a:{ip}"), POLICY_ADDR),
        (format!("u:{user}"), POLICY_ACCOUNT),
    ]
}

pub async fn login(
    State(state): State<AppState>,
    ctx: Ctx,
    Json(req): Json<LoginReq>,
) -> ApiResult<Json<LoginResp>> {
    if req.username.len() > 128 || req.password.len() > 1024 {
        return Err(ApiError::InvalidCredentials);
    }
    let keys = throttle_keys(&req.username, &ctx);
    let t = now();
    let account = state.store.account_by_username(&req.username).await?;
    let actor = account
        .as_ref()
        .map(|a| a.id.to_string())
        .unwrap_or_else(|| "anonymous".into());
    let role = account.as_ref().map(|a| a.role);

    let throttled = |retry: i64, detail: &'static str| {
        let mut e = ctx
            .event(actor.clone(), AuditAction::LoginThrottled, Outcome::Denied)
            .detail(detail);
        e.role = role;
        (e, ApiError::TooManyRequests(retry))
    };
    let rate_ok = ctx.ip.is_none_or(|ip| state.ip_limiter.check(ip));
    if !rate_ok {
        let (e, refusal) = throttled(1, "rate");
        state.audit(e).await?;
        return Err(refusal);
    }
    // A place in the hashing gate first: a shed login costs no throttle charge.
    let Some(admission) = state.hash_gate.try_admit() else {
        let (e, refusal) = throttled(super::SHED_RETRY_AFTER_S, "overloaded");
        state.audit(e).await?;
        return Err(refusal);
    };
    // The attempt is counted before the password is verified, in the same step as the
    // check, so parallel guesses cannot all pass the check first.
    let attempt = state.throttle.lock().handle_attempt(&keys, t);
    if let Err(wait) = attempt {
        let (e, refusal) = throttled(wait, "throttle");
        state.audit(e).await?;
        return Err(refusal);
    }
    // Gives the attempt's charge back when it was not a failure.
    let refund = |state: &AppState, success: bool| {
        let mut th = state.throttle.lock();
        for (i, (k, p)) in keys.iter().enumerate() {
            // A success clears the account's keys; the address only gets its charge back.
            if success && i != 1 {
                th.handle_success(k);
            } else {
                th.refund(k, *p);
            }
        }
    };

    // The account's own counter also lives in the database, so a restart or another
    // node continues the count: charged there too, before verifying. A concurrent
    // attempt that changed it first wins; this one is refused.
    let persisted = match &account {
        Some(a) => {
            let charged = match state.store.login_throttle(a.id).await? {
                Some((f, next)) => match POLICY_ACCOUNT.charge(f, next, t) {
                    Ok((nf, nnext)) => state
                        .store
                        .set_login_throttle(a.id, f, nf, nnext)
                        .await?
                        .then_some(nf)
                        .ok_or(1),
                    Err(wait) => Err(wait),
                },
                None => Err(1),
            };
            match charged {
                Ok(nf) => Some((a.id, nf)),
                Err(wait) => {
                    refund(&state, false);
                    let (e, refusal) = throttled(wait, "throttle");
                    state.audit(e).await?;
                    return Err(refusal);
                }
            }
        }
        None => None,
    };
    // Gives the persisted charge back (`success`: clears the count).
    let settle = |success: bool| {
        let store = state.store.clone();
        async move {
            let Some((id, seen)) = persisted else {
                return Ok::<(), ApiError>(());
            };
            let (f, next) = if success {
                (0, t)
            } else {
                POLICY_ACCOUNT.uncharge(seen, t)
            };
            // Losing this race to a concurrent failure keeps the higher count: the
            // conservative side.
            store.set_login_throttle(id, seen, f, next).await?;
            Ok(())
        }
    };

    let fail = |detail: &'static str, action: AuditAction| {
        let mut e = ctx
            .event(actor.clone(), action, Outcome::Failure)
            .detail(detail);
        e.role = role;
        e
    };

    // An account without a password (waiting for activation) costs the same one
    // verification as any other.
    let phc = account
        .as_ref()
        .filter(|a| a.has_password())
        .map(|a| a.password_hash.clone())
        .unwrap_or_else(|| DUMMY_HASH.to_string());
    let password = req.password;
    let pw_ok = admission
        .run(move || verify_password(&phc, &password))
        .await
        .unwrap_or(false);
    // An account waiting for activation says so: to anyone when it has no password
    // yet (there is nothing to guess; its username is all this tells), and only after
    // the right password when an admin reset its second factor.
    let waiting = |a: &AccountRecord| a.activation_pending && (pw_ok || !a.has_password());
    let Some(account) = account.filter(|a| (pw_ok || waiting(a)) && !a.disabled) else {
        state
            .audit(fail("bad_credentials", AuditAction::LoginFailed))
            .await?;
        return Err(ApiError::InvalidCredentials);
    };
    if account.activation_pending {
        if pw_ok {
            // The right password is no guess: its charge is given back.
            refund(&state, true);
            settle(true).await?;
        }
        state
            .audit(fail("activation_pending", AuditAction::LoginFailed))
            .await?;
        return Err(ApiError::ActivationPending);
    }

    if account.role.requires_mfa() && !account.totp_enabled {
        refund(&state, true);
        settle(true).await?;
        let (token, s) = issue_session(
            &state,
            Principal::Account(account.id),
            account.role,
            SessionKind::Enroll,
            None,
            600,
        )
        .await?;
        audit_grant(
            &state,
            &s,
            ctx.event(
                account.id.to_string(),
                AuditAction::LoginOk,
                Outcome::Success,
            )
            .role(account.role)
            .detail("mfa_enrollment_required"),
        )
        .await?;
        return Ok(Json(LoginResp {
            token: None,
            role: Some(account.role),
            expires_at: None,
            idle_timeout_s: None,
            mfa_enrollment_required: true,
            enrollment_token: Some(token),
            recovery_codes_remaining: None,
        }));
    }

    let mut recovery_used = false;
    if account.totp_enabled {
        let ok = match (&req.totp, &req.recovery_code) {
            (Some(code), _) => verify_totp(&state, &account, code, t).await?,
            (None, Some(rc)) => {
                let peppered = hash_recovery_code(&state.recovery_pepper, rc);
                let mut used = state
                    .store
                    .use_recovery_code(account.id, &peppered, t)
                    .await?;
                if !used {
                    // Codes made before the pepper existed, until new ones are made.
                    used = state
                        .store
                        .use_recovery_code(account.id, &legacy_recovery_hash(rc), t)
                        .await?;
                }
                recovery_used = used;
                if used {
                    state
                        .audit(
                            ctx.event(
                                account.id.to_string(),
                                AuditAction::MfaRecoveryUsed,
                                Outcome::Success,
                            )
                            .role(account.role)
                            .high(),
                        )
                        .await?;
                }
                used
            }
            (None, None) => {
                // The password was right; the code comes in the next request.
                refund(&state, false);
                settle(false).await?;
                return Err(ApiError::MfaRequired);
            }
        };
        if !ok {
            state
                .audit(fail("bad_second_factor", AuditAction::MfaFailed))
                .await?;
            return Err(ApiError::InvalidCredentials);
        }
    }

    refund(&state, true);
    settle(true).await?;
    let (token, s) = issue_session(
        &state,
        Principal::Account(account.id),
        account.role,
        SessionKind::Full,
        None,
        state.settings.session_lifetime_s,
    )
    .await?;
    audit_grant(
        &state,
        &s,
        ctx.event(
            account.id.to_string(),
            AuditAction::LoginOk,
            Outcome::Success,
        )
        .role(account.role),
    )
    .await?;
    Ok(Json(LoginResp {
        token: Some(token),
        role: Some(account.role),
        expires_at: Some(s.expires_at),
        idle_timeout_s: Some(state.settings.idle_timeout_s),
        mfa_enrollment_required: false,
        enrollment_token: None,
        recovery_codes_remaining: if recovery_used {
            Some(state.store.recovery_codes_remaining(account.id).await?)
        } else {
            None
        },
    }))
}

pub(super) async fn verify_totp(
    state: &AppState,
    account: &AccountRecord,
    code: &str,
    t: Timestamp,
) -> ApiResult<bool> {
    let Some(sealed) = &account.totp_secret else {
        return Ok(false);
    };
    let secret = state
        .keyring
        .open(ctx::TOTP_SECRET, sealed)
        .map_err(|_| ApiError::Internal)?;
    let secret = TotpSecret::from_bytes(secret.to_vec());
    match secret.verify(code, t, account.totp_last_step) {
        // The conditional update makes a concurrent second use of the code fail too.
        Some(step) => Ok(state.store.use_totp_step(account.id, step).await?),
        None => Ok(false),
    }
}

pub async fn logout(State(state): State<AppState>, s: AnySession) -> ApiResult<StatusCode> {
    state.store.revoke_session(&s.session.token_hash).await?;
    // Ending access never waits for the audit log (fail open).
    state
        .audit_fail_open(s.event(AuditAction::Logout, Outcome::Success))
        .await;
    state
        .audit_fail_open(
            s.event(AuditAction::TokenRevoked, Outcome::Success)
                .detail("logout"),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize)]
pub struct MeResp {
    /// `account:N` or `guest:N`: what this device's MLS credential names and what the
    /// key directory files its devices under.
    principal: String,
    role: Role,
    label: String,
    mfa_enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    consultation: Option<AppointmentId>,
}

pub async fn me(State(state): State<AppState>, s: Authed) -> ApiResult<Json<MeResp>> {
    let (label, mfa) = match &s.session.principal {
        Principal::Account(id) => {
            let a = state
                .store
                .account(*id)
                .await?
                .ok_or(ApiError::Unauthorized)?;
            (label_of(&state, &a), a.totp_enabled)
        }
        Principal::Guest(id) => {
            let invite = state.store.invite(*id).await?;
            let label = invite.map(|i| invite_label(&state, &i));
            (label.unwrap_or_else(|| "Guest".into()), false)
        }
    };
    Ok(Json(MeResp {
        principal: s.session.principal.to_string(),
        role: s.session.role,
        label,
        mfa_enabled: mfa,
        consultation: s.session.scope,
    }))
}
