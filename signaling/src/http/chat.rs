//! Stored E2EE chat ciphertext of a consultation (`/api/appointments/{id}/chat`).
//! Documented in docs/protocol.md.

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;

use super::{ApiError, ApiResult, AppState, Authed};
use crate::audit::{AuditAction, Outcome};
use crate::model::{AppointmentId, Role, Timestamp};
use crate::policy;
use crate::proto::encode_b64;

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
    let appt = state.store.appointment(id).await?.map(|a| a.facts());
    if policy::check(s.session.subject(), policy::Act::ReadChat, appt.as_ref()).is_err() {
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
                .target(id)
                .patient_opt(appt.as_ref().and_then(|a| a.patient)),
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
