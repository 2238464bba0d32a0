//! Emergency access (`/api/admin/break-glass*`). Documented in docs/protocol.md.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::admin::require_admin;
use super::appointments::{AppointmentView, view};
use super::login::{verify_pw_gated, verify_totp};
use super::{ApiError, ApiResult, AppState, Authed, now};
use crate::audit::{AuditAction, Outcome};
use crate::auth::ThrottlePolicy;
use crate::crypto::ctx;
use crate::model::{AccountId, AppointmentId, Principal, Role, Timestamp};

/// Break-glass re-authentication: three free failures, then growing delays up to
/// five minutes.
const POLICY_REAUTH: ThrottlePolicy = ThrottlePolicy {
    free: 3,
    cap_s: 300,
};
use crate::store::AccountRecord;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakGlassReq {
    /// The patient whose appointments the grant opens (one patient per grant).
    patient: AccountId,
    reason: String,
    password: String,
    totp: String,
}

#[derive(Serialize)]
pub struct BreakGlassResp {
    grant: i64,
    patient: AccountId,
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
    let is_patient = matches!(
        state.store.account(req.patient).await?,
        Some(p) if p.role == Role::Patient
    );
    if !is_patient {
        state.audit(refuse("not_a_patient")).await?;
        return Err(ApiError::BadRequest("patient: the id of a patient account"));
    }
    let account = state
        .store
        .account(id)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    let t = now();
    // Re-authentication is throttled like a login (counted before verifying), so a
    // stolen admin session cannot be used to guess the admin's password.
    let key = [(format!("bg:{id}"), POLICY_REAUTH)];
    let attempt = state.throttle.lock().handle_attempt(&key, t);
    if let Err(wait) = attempt {
        state.audit(refuse("throttled")).await?;
        return Err(ApiError::TooManyRequests(wait));
    }
    let pw_ok = verify_pw_gated(&state, account.password_hash.clone(), req.password).await?;
    let code_ok = pw_ok && verify_totp(&state, &account, &req.totp, t).await?;
    if !code_ok {
        state.audit(refuse("reauthentication_failed")).await?;
        return Err(ApiError::InvalidCredentials);
    }
    state.throttle.lock().handle_success(&key[0].0);
    let expires_at = t.plus_secs(state.settings.break_glass_ttl_s);
    // The grant and its entry commit together, or neither does.
    let mut tx = state.store.begin().await?;
    let grant = tx
        .create_break_glass(id, req.patient, &reason, t, expires_at)
        .await?;
    state
        .commit_audited(
            tx,
            vec![
                s.event(AuditAction::BreakGlassGranted, Outcome::Success)
                    .high()
                    .target(format!("break-glass:{grant}"))
                    .patient(req.patient)
                    .detail(reason),
            ],
        )
        .await?;
    // For the operator watching the log: emergency access is rare and reviewed. The
    // reason stays in the audit trail (it can describe the patient).
    tracing::warn!(
        target: "confide::security",
        admin = %Principal::Account(id),
        patient = %Principal::Account(req.patient),
        grant,
        expires_in_s = state.settings.break_glass_ttl_s,
        "break-glass access granted"
    );
    Ok((
        StatusCode::CREATED,
        Json(BreakGlassResp {
            grant,
            patient: req.patient,
            expires_at,
        }),
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
    // A grant opens its one patient's appointments: an appointment of anyone else,
    // without a patient, or unknown is refused alike.
    let appt = state.store.appointment(id).await?;
    let grant = match appt.as_ref().and_then(|a| a.patient) {
        Some(p) => state.store.active_break_glass(admin, p, now()).await?,
        None => None,
    };
    let (Some(grant), Some(appt)) = (grant, appt) else {
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
                .patient_opt(appt.patient)
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

#[derive(Serialize)]
pub struct GrantView {
    grant: i64,
    admin: super::appointments::PersonRef,
    patient: super::appointments::PersonRef,
    reason: String,
    created_at: Timestamp,
    expires_at: Timestamp,
    /// Not yet expired.
    active: bool,
}

/// Grants shown for review: the newest this many.
const REVIEW_LIMIT: i64 = 500;

/// The grants for review (newest first): who, for which patient, why, when, until
/// when. Each grant shown is recorded, naming its patient.
pub async fn break_glass_grants(
    State(state): State<AppState>,
    s: Authed,
) -> ApiResult<Json<Vec<GrantView>>> {
    require_admin(&state, &s).await?;
    let t = now();
    let grants = state.store.list_break_glass(REVIEW_LIMIT).await?;
    let mut out = Vec::with_capacity(grants.len());
    for g in &grants {
        let person = async |id: AccountId| -> ApiResult<super::appointments::PersonRef> {
            let label = match state.store.account(id).await? {
                Some(a) => super::label_of(&state, &a),
                None => "unknown".into(),
            };
            Ok(super::appointments::PersonRef { id, label })
        };
        out.push(GrantView {
            grant: g.id,
            admin: person(g.admin).await?,
            patient: person(g.patient).await?,
            reason: g.reason.clone(),
            created_at: g.created_at,
            expires_at: g.expires_at,
            active: g.expires_at > t,
        });
    }
    let mut events: Vec<_> = grants
        .iter()
        .map(|g| {
            s.event(AuditAction::BreakGlassReviewed, Outcome::Success)
                .target(g.patient)
                .patient(g.patient)
                .detail(format!("break-glass:{}", g.id))
        })
        .collect();
    if events.is_empty() {
        events.push(s.event(AuditAction::BreakGlassReviewed, Outcome::Success));
    }
    state
        .commit_audited(state.store.begin().await?, events)
        .await?;
    Ok(Json(out))
}
