//! REST handlers. Documented in docs/protocol.md.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};

use super::{AnySession, ApiError, AppState, Authed, Ctx, clinical, label_of, now};
use crate::audit::{AuditAction, AuditFilter, AuditRecord, AuditSeq, Outcome};
use crate::auth::{
    DUMMY_HASH, Session, SessionKind, ThrottlePolicy, TotpSecret, hash_recovery_code, hash_token,
    new_token, recovery_codes, verify_password,
};
use crate::crypto::ctx;
use crate::model::{AccountId, AppointmentId, AppointmentStatus, Principal, Role, Timestamp};
use crate::proto::encode_b64;
use crate::store::{AccountRecord, Appointment, AppointmentQuery, NewAppointment, NewInvite};

type ApiResult<T> = Result<T, ApiError>;

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
}

/// Verifies a password under the hashing gate (at most one verification per core
/// runs; see `gate.rs`); `Err` when the gate is full and the request must be shed.
async fn verify_pw_gated(
    state: &AppState,
    phc: String,
    password: String,
) -> Result<bool, ApiError> {
    let admission = state
        .hash_gate
        .try_admit()
        .ok_or(ApiError::TooManyRequests(super::gate::SHED_RETRY_AFTER_S))?;
    Ok(admission
        .run(move || verify_password(&phc, &password))
        .await
        .unwrap_or(false))
}

async fn issue_session(
    state: &AppState,
    principal: Principal,
    role: Role,
    kind: SessionKind,
    scope: Option<AppointmentId>,
    lifetime_s: i64,
) -> ApiResult<(String, Session)> {
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
    state.store.create_session(&s).await?;
    Ok((token, s))
}

/// The audit entry of a session just issued, before its token leaves the server:
/// if the entry cannot be written the session is revoked at once, so the token the
/// caller never receives could not be used anyway (fail closed).
async fn audit_grant(state: &AppState, s: &Session, e: crate::audit::AuditEvent) -> ApiResult<()> {
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
        let (e, refusal) = throttled(super::gate::SHED_RETRY_AFTER_S, "overloaded");
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

    let fail = |detail: &'static str, action: AuditAction| {
        let mut e = ctx
            .event(actor.clone(), action, Outcome::Failure)
            .detail(detail);
        e.role = role;
        e
    };

    let phc = account
        .as_ref()
        .map(|a| a.password_hash.clone())
        .unwrap_or_else(|| DUMMY_HASH.to_string());
    let password = req.password;
    let pw_ok = admission
        .run(move || verify_password(&phc, &password))
        .await
        .unwrap_or(false);
    let Some(account) = account.filter(|a| pw_ok && !a.disabled) else {
        state
            .audit(fail("bad_credentials", AuditAction::LoginFailed))
            .await?;
        return Err(ApiError::InvalidCredentials);
    };

    if account.role.requires_mfa() && !account.totp_enabled {
        refund(&state, true);
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
        }));
    }

    if account.totp_enabled {
        let ok = match (&req.totp, &req.recovery_code) {
            (Some(code), _) => verify_totp(&state, &account, code, t).await?,
            (None, Some(rc)) => {
                let used = state
                    .store
                    .use_recovery_code(account.id, &hash_recovery_code(rc), t)
                    .await?;
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
    }))
}

async fn verify_totp(
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
    let (label, mfa) = match s.account_id() {
        Some(id) => {
            let a = state
                .store
                .account(id)
                .await?
                .ok_or(ApiError::Unauthorized)?;
            (label_of(&state, &a), a.totp_enabled)
        }
        None => ("Guest".into(), false),
    };
    Ok(Json(MeResp {
        principal: s.session.principal.to_string(),
        role: s.session.role,
        label,
        mfa_enabled: mfa,
        consultation: s.session.scope,
    }))
}

// ------------------------------------------------------------------ TOTP

#[derive(Serialize)]
pub struct EnrollResp {
    secret: String,
    otpauth_url: String,
}

/// The session's own account, which must not have a second factor yet (enrolment
/// and its confirmation both start here).
async fn unenrolled_account(
    state: &AppState,
    s: &AnySession,
) -> ApiResult<(AccountId, AccountRecord)> {
    let id = s.account_id().ok_or(ApiError::Forbidden)?;
    let account = state
        .store
        .account(id)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    if account.totp_enabled {
        return Err(ApiError::Conflict("a second factor is already enrolled"));
    }
    Ok((id, account))
}

pub async fn totp_enroll(
    State(state): State<AppState>,
    s: AnySession,
) -> ApiResult<Json<EnrollResp>> {
    let (id, account) = unenrolled_account(&state, &s).await?;
    let secret = TotpSecret::generate(&mut OsRng);
    let sealed = state.keyring.seal(ctx::TOTP_SECRET, &secret.0, &mut OsRng);
    state.store.set_totp_pending(id, sealed).await?;
    state
        .audit(s.event(AuditAction::MfaEnrollStarted, Outcome::Success))
        .await?;
    Ok(Json(EnrollResp {
        otpauth_url: secret.otpauth_url(&state.settings.issuer, &account.username),
        secret: secret.base32(),
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
    let (id, account) = unenrolled_account(&state, &s).await?;
    let sealed = account
        .totp_secret
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
    state.store.enable_totp(id, step).await?;
    let codes = recovery_codes(&mut OsRng);
    state
        .store
        .replace_recovery_codes(id, codes.iter().map(|(_, h)| h.clone()).collect())
        .await?;
    state
        .audit(s.event(AuditAction::MfaEnrolled, Outcome::Success))
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

// ------------------------------------------------------------ appointments

#[derive(Serialize)]
pub struct PersonRef {
    id: AccountId,
    label: String,
}

#[derive(Serialize)]
pub struct AppointmentView {
    id: AppointmentId,
    doctor: PersonRef,
    patient: Option<PersonRef>,
    start: i64,
    duration_s: i64,
    status: AppointmentStatus,
    /// Only for the doctor and patient of the appointment.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

async fn person(state: &AppState, id: AccountId) -> ApiResult<PersonRef> {
    let label = match state.store.account(id).await? {
        Some(a) => label_of(state, &a),
        None => "unknown".into(),
    };
    Ok(PersonRef { id, label })
}

async fn view(state: &AppState, a: &Appointment, with_reason: bool) -> ApiResult<AppointmentView> {
    let patient = match a.patient {
        Some(p) => Some(person(state, p).await?),
        None => None,
    };
    let reason = match (&a.reason, with_reason) {
        (Some(r), true) => state.keyring.open_string(ctx::REASON, r).ok(),
        _ => None,
    };
    Ok(AppointmentView {
        id: a.id,
        doctor: person(state, a.doctor).await?,
        patient,
        start: a.start.secs(),
        duration_s: a.duration_s,
        status: a.status,
        reason,
    })
}

pub async fn list_appointments(
    State(state): State<AppState>,
    s: Authed,
) -> ApiResult<Json<Vec<AppointmentView>>> {
    let me = s.account_id();
    let list = match (s.session.role, me) {
        (Role::Doctor, Some(id)) => {
            state
                .store
                .list_appointments(AppointmentQuery {
                    doctor: Some(id),
                    patient: None,
                })
                .await?
        }
        (Role::Patient, Some(id)) => {
            state
                .store
                .list_appointments(AppointmentQuery {
                    doctor: None,
                    patient: Some(id),
                })
                .await?
        }
        (Role::Staff, _) => {
            state
                .store
                .list_appointments(AppointmentQuery::default())
                .await?
        }
        (Role::Guest, _) => match s.session.scope {
            Some(id) => state.store.appointment(id).await?.into_iter().collect(),
            None => vec![],
        },
        _ => {
            state
                .audit(s.event(AuditAction::AppointmentsListed, Outcome::Denied))
                .await?;
            return Err(ApiError::Forbidden);
        }
    };
    let mut out = Vec::with_capacity(list.len());
    for a in &list {
        out.push(view(&state, a, clinical(s.session.role)).await?);
    }
    state
        .audit(s.event(AuditAction::AppointmentsListed, Outcome::Success))
        .await?;
    Ok(Json(out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BookReq {
    doctor: AccountId,
    patient: Option<AccountId>,
    /// Unix seconds.
    start: i64,
    duration_min: i64,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Serialize)]
pub struct BookResp {
    id: AppointmentId,
}

pub async fn book_appointment(
    State(state): State<AppState>,
    s: Authed,
    Json(req): Json<BookReq>,
) -> ApiResult<(StatusCode, Json<BookResp>)> {
    let me = s.account_id();
    let allowed = match s.session.role {
        Role::Staff => true,
        Role::Doctor => me == Some(req.doctor),
        _ => false,
    };
    if !allowed {
        state
            .audit(
                s.event(AuditAction::AppointmentBookRefused, Outcome::Denied)
                    .detail("role"),
            )
            .await?;
        return Err(ApiError::Forbidden);
    }
    if !(5..=480).contains(&req.duration_min) {
        return Err(ApiError::BadRequest("duration_min must be 5..=480"));
    }
    if req.reason.as_ref().is_some_and(|r| r.len() > 2000) {
        return Err(ApiError::BadRequest("reason is too long"));
    }
    let doctor_ok = matches!(state.store.account(req.doctor).await?, Some(a) if a.role == Role::Doctor && !a.disabled);
    let patient_ok = match req.patient {
        None => true,
        Some(p) => {
            matches!(state.store.account(p).await?, Some(a) if a.role == Role::Patient && !a.disabled)
        }
    };
    if !doctor_ok || !patient_ok {
        state
            .audit(
                s.event(AuditAction::AppointmentBookRefused, Outcome::Failure)
                    .detail("bad_participants"),
            )
            .await?;
        return Err(ApiError::BadRequest(
            "doctor or patient is not a valid account",
        ));
    }
    let booker = me.ok_or(ApiError::Forbidden)?;
    let reason = req
        .reason
        .filter(|r| !r.is_empty())
        .map(|r| state.keyring.seal(ctx::REASON, r.as_bytes(), &mut OsRng));
    let id = state
        .store
        .create_appointment(NewAppointment {
            doctor: req.doctor,
            patient: req.patient,
            start: Timestamp::from_secs(req.start),
            duration_s: req.duration_min * 60,
            reason,
            created_by: booker,
            created_at: now(),
        })
        .await?;
    state
        .audit(
            s.event(AuditAction::AppointmentBooked, Outcome::Success)
                .target(id),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(BookResp { id })))
}

// ----------------------------------------------------------------- invites

#[derive(Deserialize, Default)]
pub struct InviteReq {
    #[serde(default)]
    expires_in_s: Option<i64>,
}

#[derive(Serialize)]
pub struct InviteResp {
    invite_token: String,
    consultation: AppointmentId,
    expires_at: Timestamp,
}

pub async fn create_invite(
    State(state): State<AppState>,
    s: Authed,
    Path(id): Path<i64>,
    body: Option<Json<InviteReq>>,
) -> ApiResult<(StatusCode, Json<InviteResp>)> {
    let id = AppointmentId(id);
    let appt = state.store.appointment(id).await?;
    let allowed = match (&appt, s.session.role) {
        (Some(_), Role::Staff) => true,
        (Some(a), Role::Doctor) => Some(a.doctor) == s.account_id(),
        _ => false,
    };
    if !allowed {
        state
            .audit(
                s.event(AuditAction::InviteCreated, Outcome::Denied)
                    .target(id),
            )
            .await?;
        return Err(if appt.is_some() {
            ApiError::Forbidden
        } else {
            ApiError::NotFound
        });
    }
    let ttl = body
        .and_then(|b| b.0.expires_in_s)
        .unwrap_or(state.settings.invite_ttl_s)
        .clamp(1, 7 * 24 * 3600);
    let (token, hash) = new_token(&mut OsRng);
    let t = now();
    let expires_at = t.plus_secs(ttl);
    let by = s.account_id().ok_or(ApiError::Forbidden)?;
    let invite = state
        .store
        .create_invite(NewInvite {
            appointment: id,
            token_hash: hash,
            expires_at,
            created_by: by,
            created_at: t,
        })
        .await?;
    state
        .audit(
            s.event(AuditAction::InviteCreated, Outcome::Success)
                .target(id)
                .detail(format!("guest:{}", invite.0)),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(InviteResp {
            invite_token: token,
            consultation: id,
            expires_at,
        }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedeemReq {
    invite_token: String,
    /// The terms version the guest accepted; must be the current one.
    #[serde(default)]
    accept_terms_version: Option<String>,
}

#[derive(Serialize)]
pub struct RedeemResp {
    token: String,
    role: Role,
    consultation: AppointmentId,
    expires_at: Timestamp,
}

pub async fn redeem_invite(
    State(state): State<AppState>,
    ctx: Ctx,
    Json(req): Json<RedeemReq>,
) -> ApiResult<Json<RedeemResp>> {
    if ctx.ip.is_some_and(|ip| !state.ip_limiter.check(ip)) {
        return Err(ApiError::TooManyRequests(1));
    }
    let t = now();
    let invite = if req.invite_token.len() <= 512 {
        state
            .store
            .invite_by_hash(&hash_token(&req.invite_token))
            .await?
    } else {
        None
    };
    let refuse = |actor: String, detail: &'static str| {
        ctx.event(actor, AuditAction::InviteRefused, Outcome::Denied)
            .role(Role::Guest)
            .detail(detail)
    };
    let Some(invite) = invite else {
        state.audit(refuse("anonymous".into(), "unknown")).await?;
        return Err(ApiError::InviteInvalid);
    };
    let actor = Principal::Guest(invite.id).to_string();
    if invite.used_at.is_some() {
        state
            .audit(refuse(actor, "used").target(invite.appointment))
            .await?;
        return Err(ApiError::InviteInvalid);
    }
    if invite.expires_at <= t {
        state
            .audit(refuse(actor, "expired").target(invite.appointment))
            .await?;
        return Err(ApiError::InviteInvalid);
    }
    if req.accept_terms_version.as_deref() != Some(state.settings.terms_version.as_str()) {
        // Checked before redeeming so a guest who has not accepted yet keeps the link.
        return Err(ApiError::ConsentRequired);
    }
    let appt = state
        .store
        .appointment(invite.appointment)
        .await?
        .ok_or(ApiError::InviteInvalid)?;
    if !state.store.redeem_invite(invite.id, t).await? {
        state
            .audit(refuse(actor, "used").target(invite.appointment))
            .await?;
        return Err(ApiError::InviteInvalid);
    }
    state
        .store
        .record_consent(&actor, &state.settings.terms_version, t)
        .await?;
    // The guest session lives no longer than the consultation window.
    let until = appt.end().plus_secs(state.settings.join_grace_s);
    let lifetime = ((until.0 - t.0) / 1000).clamp(60, state.settings.session_lifetime_s);
    let (token, s) = issue_session(
        &state,
        Principal::Guest(invite.id),
        Role::Guest,
        SessionKind::Full,
        Some(invite.appointment),
        lifetime,
    )
    .await?;
    audit_grant(
        &state,
        &s,
        ctx.event(actor.clone(), AuditAction::InviteRedeemed, Outcome::Success)
            .role(Role::Guest)
            .target(invite.appointment),
    )
    .await?;
    audit_grant(
        &state,
        &s,
        ctx.event(actor, AuditAction::ConsentAccepted, Outcome::Success)
            .role(Role::Guest)
            .detail(state.settings.terms_version.clone()),
    )
    .await?;
    Ok(Json(RedeemResp {
        token,
        role: Role::Guest,
        consultation: invite.appointment,
        expires_at: s.expires_at,
    }))
}

// ----------------------------------------------------------------- consent

#[derive(Serialize)]
pub struct TermsResp {
    version: String,
    text: String,
}

pub async fn consent_terms(State(state): State<AppState>) -> Json<TermsResp> {
    Json(TermsResp {
        version: state.settings.terms_version.clone(),
        text: state.settings.terms_text.clone(),
    })
}

#[derive(Serialize)]
pub struct ConsentResp {
    accepted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    accepted_at: Option<Timestamp>,
    current_version: String,
}

pub async fn consent_status(
    State(state): State<AppState>,
    s: Authed,
) -> ApiResult<Json<ConsentResp>> {
    let c = state.store.active_consent(&s.actor()).await?;
    Ok(Json(ConsentResp {
        accepted: c
            .as_ref()
            .is_some_and(|c| c.version == state.settings.terms_version),
        version: c.as_ref().map(|c| c.version.clone()),
        accepted_at: c.map(|c| c.accepted_at),
        current_version: state.settings.terms_version.clone(),
    }))
}

#[derive(Deserialize)]
pub struct ConsentReq {
    version: String,
}

pub async fn consent_accept(
    State(state): State<AppState>,
    s: Authed,
    Json(req): Json<ConsentReq>,
) -> ApiResult<Json<ConsentResp>> {
    if !matches!(s.session.role, Role::Patient | Role::Guest) {
        return Err(ApiError::Forbidden);
    }
    if req.version != state.settings.terms_version {
        return Err(ApiError::BadRequest(
            "that is not the current terms version",
        ));
    }
    let t = now();
    state
        .store
        .record_consent(&s.actor(), &req.version, t)
        .await?;
    state
        .audit(
            s.event(AuditAction::ConsentAccepted, Outcome::Success)
                .detail(req.version.clone()),
        )
        .await?;
    Ok(Json(ConsentResp {
        accepted: true,
        version: Some(req.version),
        accepted_at: Some(t),
        current_version: state.settings.terms_version.clone(),
    }))
}

pub async fn consent_revoke(State(state): State<AppState>, s: Authed) -> ApiResult<StatusCode> {
    let revoked = state.store.revoke_consent(&s.actor(), now()).await?;
    let outcome = if revoked {
        Outcome::Success
    } else {
        Outcome::Failure
    };
    state
        .audit(s.event(AuditAction::ConsentRevoked, outcome))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

// -------------------------------------------------------------------- chat

#[derive(Serialize)]
pub struct ChatView {
    id: crate::model::ChatId,
    from: crate::model::ParticipantId,
    sender_role: Role,
    time: Timestamp,
    ciphertext: String,
}

pub async fn chat_history(
    State(state): State<AppState>,
    s: Authed,
    Path(id): Path<i64>,
) -> ApiResult<Json<Vec<ChatView>>> {
    let id = AppointmentId(id);
    let appt = state.store.appointment(id).await?;
    let allowed = match (&appt, &s.session.principal, s.session.role) {
        (Some(a), Principal::Account(me), Role::Doctor) => a.doctor == *me,
        (Some(a), Principal::Account(me), Role::Patient) => a.patient == Some(*me),
        (Some(a), Principal::Guest(_), Role::Guest) => s.session.scope == Some(a.id),
        _ => false,
    };
    if !allowed {
        state
            .audit(
                s.event(AuditAction::ChatHistoryRefused, Outcome::Denied)
                    .target(id),
            )
            .await?;
        return Err(ApiError::Forbidden);
    }
    let rows = state.store.chat_history(id).await?;
    state
        .audit(
            s.event(AuditAction::ChatHistoryRead, Outcome::Success)
                .target(id),
        )
        .await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| ChatView {
                id: r.id,
                from: r.sender,
                sender_role: r.sender_role,
                time: r.sent_at,
                ciphertext: encode_b64(&r.ciphertext),
            })
            .collect(),
    ))
}

// ------------------------------------------------------------------- admin

async fn require_admin(state: &AppState, s: &Authed) -> ApiResult<AccountId> {
    match (s.session.role, s.account_id()) {
        (Role::Admin, Some(id)) => Ok(id),
        _ => {
            state
                .audit(s.event(AuditAction::AdminRefused, Outcome::Denied))
                .await?;
            Err(ApiError::Forbidden)
        }
    }
}

#[derive(Serialize)]
pub struct AccountView {
    id: AccountId,
    username: String,
    role: Role,
    mfa_enabled: bool,
    disabled: bool,
}

pub async fn admin_accounts(
    State(state): State<AppState>,
    s: Authed,
) -> ApiResult<Json<Vec<AccountView>>> {
    require_admin(&state, &s).await?;
    let list = state.store.list_accounts().await?;
    Ok(Json(
        list.into_iter()
            .map(|a| AccountView {
                id: a.id,
                username: a.username,
                role: a.role,
                mfa_enabled: a.totp_enabled,
                disabled: a.disabled,
            })
            .collect(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateAccountReq {
    username: String,
    role: Role,
    password: String,
    display_name: String,
    #[serde(default)]
    contact: Option<String>,
}

pub async fn admin_create_account(
    State(state): State<AppState>,
    s: Authed,
    Json(req): Json<CreateAccountReq>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    require_admin(&state, &s).await?;
    if req.role == Role::Guest {
        return Err(ApiError::BadRequest("guests come from invites"));
    }
    let id = crate::ops::create_account(
        state.store.as_ref(),
        &state.keyring,
        crate::ops::AccountSpec {
            username: req.username,
            role: req.role,
            password: req.password,
            display_name: req.display_name,
            contact: req.contact,
        },
    )
    .await
    .map_err(|e| match e {
        crate::ops::OpsError::Invalid(m) => ApiError::BadRequest(m),
        crate::ops::OpsError::Store(e) => e.into(),
        _ => ApiError::Internal,
    })?;
    state
        .audit(
            s.event(AuditAction::AccountCreated, Outcome::Success)
                .target(id),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "id": id }))))
}

pub async fn admin_disable_account(
    State(state): State<AppState>,
    s: Authed,
    Path(id): Path<i64>,
) -> ApiResult<StatusCode> {
    require_admin(&state, &s).await?;
    let id = AccountId(id);
    if !state.store.set_account_disabled(id, true).await? {
        return Err(ApiError::NotFound);
    }
    let n = state.store.revoke_account_sessions(id).await?;
    // Ending access never waits for the audit log (fail open).
    state
        .audit_fail_open(
            s.event(AuditAction::AccountDisabled, Outcome::Success)
                .target(id),
        )
        .await;
    state
        .audit_fail_open(
            s.event(AuditAction::TokenRevoked, Outcome::Success)
                .target(id)
                .detail(format!("{n} sessions")),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
pub struct AuditQuery {
    action: Option<String>,
    actor: Option<String>,
    target: Option<String>,
    after: Option<i64>,
    limit: Option<i64>,
}

pub async fn admin_audit(
    State(state): State<AppState>,
    s: Authed,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Vec<AuditRecord>>> {
    require_admin(&state, &s).await?;
    let action = match q.action.as_deref() {
        None => None,
        Some(a) => Some(AuditAction::parse(a).ok_or(ApiError::BadRequest("unknown action"))?),
    };
    let records = state
        .store
        .audit_events(AuditFilter {
            actor: q.actor,
            action,
            target: q.target,
            outcome: None,
            after: q.after.map(AuditSeq),
            limit: Some(q.limit.unwrap_or(1000).clamp(1, 10_000)),
        })
        .await?;
    state
        .audit(s.event(AuditAction::AuditRead, Outcome::Success))
        .await?;
    Ok(Json(records))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakGlassReq {
    reason: String,
    password: String,
    totp: String,
}

#[derive(Serialize)]
pub struct BreakGlassResp {
    grant: i64,
    expires_at: Timestamp,
}

/// Emergency access: re-authentication (password and a fresh TOTP code) plus a
/// stated reason buys a short grant; every step is audited with high priority.
pub async fn break_glass(
    State(state): State<AppState>,
    s: Authed,
    Json(req): Json<BreakGlassReq>,
) -> ApiResult<(StatusCode, Json<BreakGlassResp>)> {
    let id = require_admin(&state, &s).await?;
    let refuse = |detail: &'static str| {
        s.event(AuditAction::BreakGlassRefused, Outcome::Denied)
            .high()
            .detail(detail)
    };
    let reason = req.reason.trim().to_string();
    if reason.len() < 10 || reason.len() > 1000 {
        state.audit(refuse("reason_missing")).await?;
        return Err(ApiError::BadRequest(
            "state a reason (10 to 1000 characters)",
        ));
    }
    let account = state
        .store
        .account(id)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    let t = now();
    let pw_ok = verify_pw_gated(&state, account.password_hash.clone(), req.password).await?;
    let code_ok = pw_ok && verify_totp(&state, &account, &req.totp, t).await?;
    if !code_ok {
        state.audit(refuse("reauthentication_failed")).await?;
        return Err(ApiError::InvalidCredentials);
    }
    let expires_at = t.plus_secs(state.settings.break_glass_ttl_s);
    let grant = state
        .store
        .create_break_glass(id, &reason, t, expires_at)
        .await?;
    state
        .audit(
            s.event(AuditAction::BreakGlassGranted, Outcome::Success)
                .high()
                .target(format!("break-glass:{grant}"))
                .detail(reason),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(BreakGlassResp { grant, expires_at }),
    ))
}

#[derive(Serialize)]
pub struct EmergencyView {
    appointment: AppointmentView,
    doctor_contact: Option<String>,
    patient_contact: Option<String>,
    grant: i64,
}

pub async fn break_glass_appointment(
    State(state): State<AppState>,
    s: Authed,
    Path(id): Path<i64>,
) -> ApiResult<Response> {
    let admin = require_admin(&state, &s).await?;
    let id = AppointmentId(id);
    let Some(grant) = state.store.active_break_glass(admin, now()).await? else {
        state
            .audit(
                s.event(AuditAction::BreakGlassAccess, Outcome::Denied)
                    .high()
                    .target(id)
                    .detail("no_active_grant"),
            )
            .await?;
        return Err(ApiError::Forbidden);
    };
    let appt = state
        .store
        .appointment(id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let contact = |a: Option<AccountRecord>| {
        a.and_then(|a| a.contact)
            .and_then(|c| state.keyring.open_string(ctx::CONTACT, &c).ok())
    };
    let doctor_contact = contact(state.store.account(appt.doctor).await?);
    let patient_contact = match appt.patient {
        Some(p) => contact(state.store.account(p).await?),
        None => None,
    };
    let v = view(&state, &appt, true).await?;
    state
        .audit(
            s.event(AuditAction::BreakGlassAccess, Outcome::Success)
                .high()
                .target(id)
                .detail(format!("break-glass:{}", grant.id)),
        )
        .await?;
    Ok(Json(EmergencyView {
        appointment: v,
        doctor_contact,
        patient_contact,
        grant: grant.id,
    })
    .into_response())
}
