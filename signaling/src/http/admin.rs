//! Administration: accounts and the audit log (`/api/admin/*`). Documented in
//! docs/protocol.md.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiResult, AppState, Authed};
use crate::audit::{AuditAction, AuditFilter, AuditRecord, AuditSeq, Outcome};
use crate::model::{AccountId, Role, Timestamp};

pub(super) async fn require_admin(state: &AppState, s: &Authed) -> ApiResult<AccountId> {
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
    let new = crate::ops::prepare_account(
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
    // The account and its entry commit together, or neither does.
    let mut tx = state.store.begin().await?;
    let id = tx.create_account(new).await?;
    state
        .commit_audited(
            tx,
            vec![
                s.event(AuditAction::AccountCreated, Outcome::Success)
                    .target(id),
            ],
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
    /// `account:N` (or `N`): entries about that patient's records.
    patient: Option<String>,
    /// Unix milliseconds: entries at or after.
    from: Option<i64>,
    /// Unix milliseconds: entries before.
    to: Option<i64>,
    after: Option<i64>,
    limit: Option<i64>,
}

pub async fn admin_audit(
    State(state): State<AppState>,
    s: Authed,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Vec<AuditRecord>>> {
    require_admin(&state, &s).await?;
    let action = match q.action.as_deref().filter(|a| !a.is_empty()) {
        None => None,
        Some(a) => Some(AuditAction::parse(a).ok_or(ApiError::BadRequest("unknown action"))?),
    };
    let patient = match q
        .patient
        .as_deref()
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        None => None,
        Some(p) => {
            let n: i64 = p
                .strip_prefix("account:")
                .unwrap_or(p)
                .parse()
                .map_err(|_| ApiError::BadRequest("patient: account:N"))?;
            Some(AccountId(n).to_string())
        }
    };
    let nonempty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    let records = state
        .store
        .audit_events(AuditFilter {
            actor: nonempty(q.actor),
            action,
            target: nonempty(q.target),
            patient: patient.clone(),
            since: q.from.map(Timestamp),
            until: q.to.map(Timestamp),
            outcome: None,
            after: q.after.map(AuditSeq),
            limit: Some(q.limit.unwrap_or(1000).clamp(1, 10_000)),
        })
        .await?;
    // Reading a patient's trail is reading about that patient: it shows in their
    // access report.
    let mut event = s
        .event(AuditAction::AuditRead, Outcome::Success)
        .detail(format!("{} entries", records.len()));
    if let Some(p) = patient {
        event = event.target(&p).patient(p);
    }
    state.audit(event).await?;
    Ok(Json(records))
}
