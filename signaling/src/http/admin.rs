//! Administration: accounts and the audit log (`/api/admin/*`). Documented in
//! docs/protocol.md.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiResult, AppState, Authed};
use crate::audit::{AuditAction, AuditFilter, AuditRecord, AuditSeq, Outcome};
use crate::model::{AccountId, Role};

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
