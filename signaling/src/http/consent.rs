//! Telehealth terms and consent (`/api/consent*`). Documented in docs/protocol.md.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiResult, AppState, Authed, now};
use crate::audit::{AuditAction, Outcome};
use crate::model::{Role, Timestamp};

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
    // The consent and its entry commit together, or neither does.
    let mut tx = state.store.begin().await?;
    tx.record_consent(&s.actor(), &req.version, t).await?;
    state
        .commit_audited(
            tx,
            vec![
                s.event(AuditAction::ConsentAccepted, Outcome::Success)
                    .detail(req.version.clone()),
            ],
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
    // Withdrawing consent ends a permission: it stands even when its entry cannot be
    // written (fail open, counted and logged).
    state
        .audit_fail_open(s.event(AuditAction::ConsentRevoked, outcome))
        .await;
    Ok(StatusCode::NO_CONTENT)
}
