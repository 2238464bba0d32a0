//! Guest invites: creation by the appointment's doctor or staff, redemption by
//! the guest (`/api/appointments/{id}/invites`, `/api/invites/redeem`). Documented in
//! docs/protocol.md.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};

use super::login::new_session;
use super::{ApiError, ApiResult, AppState, Authed, Ctx, now};
use crate::audit::{AuditAction, Outcome};
use crate::auth::{SessionKind, hash_token, new_token};
use crate::model::{AppointmentId, Principal, Role, Timestamp};
use crate::policy;
use crate::store::NewInvite;

#[derive(Deserialize, Default)]
pub struct InviteReq {
    #[serde(default)]
    expires_in_s: Option<i64>,
    /// Who the guest is ("Interpreter: A. Rossi"): the name the doctor sees in the
    /// waiting room, so someone who got a forwarded link does not pass for the invitee.
    #[serde(default)]
    label: Option<String>,
}

/// Longest guest label, in characters.
pub const LABEL_MAX: usize = 80;

/// A usable guest label: trimmed, 1 to [`LABEL_MAX`] characters, no control characters
/// (it is shown to people, and must not rewrite their screen).
fn guest_label(raw: Option<&str>) -> Option<String> {
    let l = raw?.trim();
    let n = l.chars().count();
    ((1..=LABEL_MAX).contains(&n) && !l.chars().any(char::is_control)).then(|| l.to_string())
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
    let appt = state.store.appointment(id).await?.map(|a| a.facts());
    if let Err(refusal) = policy::check(s.session.subject(), policy::Act::Invite, appt.as_ref()) {
        state
            .audit(
                s.event(AuditAction::InviteCreated, Outcome::Denied)
                    .target(id)
                    .detail(refusal.to_string()),
            )
            .await?;
        // Unknown and not-yours look the same, so appointment ids cannot be probed.
        return Err(match refusal {
            policy::Refusal::Ended => ApiError::Conflict("the consultation has ended"),
            _ => ApiError::Forbidden,
        });
    }
    let req = body.map(|b| b.0).unwrap_or_default();
    let label = guest_label(req.label.as_deref()).ok_or(ApiError::BadRequest(
        "label the invite with the guest's name (1 to 80 characters)",
    ))?;
    let ttl = req
        .expires_in_s
        .unwrap_or(state.settings.invite_ttl_s)
        .clamp(1, 7 * 24 * 3600);
    let (token, hash) = new_token(&mut OsRng);
    let t = now();
    let expires_at = t.plus_secs(ttl);
    let by = s.account_id().ok_or(ApiError::Forbidden)?;
    // The invite and its entry commit together, or neither does.
    let mut tx = state.store.begin().await?;
    let invite = tx
        .create_invite(NewInvite {
            appointment: id,
            token_hash: hash,
            expires_at,
            created_by: by,
            created_at: t,
            label: Some(state.keyring.seal(
                crate::crypto::ctx::INVITE_LABEL,
                label.as_bytes(),
                &mut OsRng,
            )),
        })
        .await?;
    state
        .commit_audited(
            tx,
            vec![
                s.event(AuditAction::InviteCreated, Outcome::Success)
                    .target(id)
                    .patient_opt(appt.as_ref().and_then(|a| a.patient))
                    .detail(format!("guest:{}", invite.0)),
            ],
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
    // Redemption, consent, the guest's session and their entries commit together:
    // if the entries cannot be written the link stays unused and no session exists.
    let mut tx = state.store.begin().await?;
    if !tx.redeem_invite(invite.id, t).await? {
        drop(tx);
        state
            .audit(refuse(actor, "used").target(invite.appointment))
            .await?;
        return Err(ApiError::InviteInvalid);
    }
    tx.record_consent(&actor, &state.settings.terms_version, t)
        .await?;
    // The guest session lives no longer than the consultation window.
    let until = appt.end().plus_secs(state.settings.join_grace_s);
    let lifetime = ((until.0 - t.0) / 1000).clamp(60, state.settings.session_lifetime_s);
    let (token, s) = new_session(
        Principal::Guest(invite.id),
        Role::Guest,
        SessionKind::Full,
        Some(invite.appointment),
        lifetime,
    );
    tx.create_session(&s).await?;
    state
        .commit_audited(
            tx,
            vec![
                ctx.event(actor.clone(), AuditAction::InviteRedeemed, Outcome::Success)
                    .role(Role::Guest)
                    .target(invite.appointment)
                    .patient_opt(appt.patient),
                ctx.event(actor, AuditAction::ConsentAccepted, Outcome::Success)
                    .role(Role::Guest)
                    .detail(state.settings.terms_version.clone()),
            ],
        )
        .await?;
    Ok(Json(RedeemResp {
        token,
        role: Role::Guest,
        consultation: invite.appointment,
        expires_at: s.expires_at,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_labels_are_trimmed_bounded_and_printable() {
        assert_eq!(
            guest_label(Some("  Interpreter: A. Rossi ")).as_deref(),
            Some("Interpreter: A. Rossi")
        );
        assert_eq!(guest_label(Some("Zoë")).as_deref(), Some("Zoë"));
        for bad in [
            None,
            Some(""),
            Some("   "),
            Some("a\u{1b}[2J"),
            Some("line\nbreak"),
        ] {
            assert_eq!(guest_label(bad), None, "{bad:?}");
        }
        let max = "é".repeat(LABEL_MAX);
        assert_eq!(guest_label(Some(&max)), Some(max.clone()));
        assert_eq!(guest_label(Some(&format!("{max}e"))), None);
    }
}
