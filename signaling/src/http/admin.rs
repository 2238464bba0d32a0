//! Administration: accounts and the audit log (`/api/admin/*`). Documented in
//! docs/protocol.md.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::activation::{self, ActivationLink};
use super::{ApiError, ApiResult, AppState, Authed};
use crate::audit::{AuditAction, AuditFilter, AuditRecord, AuditSeq, Outcome};
use crate::auth::ActivationPurpose;
use crate::model::{AccountId, Role, Timestamp};
use crate::store::AccountRecord;

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
    /// Waiting for its owner to follow an activation link.
    activation_pending: bool,
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
                activation_pending: a.activation_pending,
            })
            .collect(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateAccountReq {
    username: String,
    role: Role,
    display_name: String,
    #[serde(default)]
    contact: Option<String>,
}

/// What the admin passes on: the link's token (the page makes
/// `<origin>/#/activate/<token>`), never a password.
#[derive(Serialize)]
pub struct LinkResp {
    id: AccountId,
    purpose: ActivationPurpose,
    activation_token: String,
    expires_at: Timestamp,
}

impl LinkResp {
    fn of(link: ActivationLink) -> Self {
        LinkResp {
            id: link.account,
            purpose: link.purpose,
            activation_token: link.token.clone(),
            expires_at: link.expires_at,
        }
    }
}

/// `POST /api/admin/accounts`: a new account without a password, and the single-use
/// link its owner activates it with.
pub async fn admin_create_account(
    State(state): State<AppState>,
    s: Authed,
    Json(req): Json<CreateAccountReq>,
) -> ApiResult<(StatusCode, Json<LinkResp>)> {
    require_admin(&state, &s).await?;
    if req.role == Role::Guest {
        return Err(ApiError::BadRequest("guests come from invites"));
    }
    let display_name = req.display_name.trim().to_owned();
    let new = crate::ops::prepare_account(
        &state.keyring,
        crate::ops::AccountSpec {
            username: req.username,
            role: req.role,
            password: None,
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
    // A patient is findable at the front desk by name (no date of birth here).
    let index = (req.role == Role::Patient)
        .then(|| crate::store::keys::patient_index_macs(&state.keyring, &display_name, None));
    // The account, its link and their entries commit together, or none of it happens.
    let mut tx = state.store.begin().await?;
    let id = tx.create_account(new).await?;
    if let Some((key, macs)) = index {
        tx.replace_patient_index(id, key, macs).await?;
    }
    let link = activation::issue(&state, &mut tx, id, ActivationPurpose::Activate, &s).await?;
    state
        .commit_audited(
            tx,
            vec![
                s.event(AuditAction::AccountCreated, Outcome::Success)
                    .target(id),
            ],
        )
        .await?;
    activation::notify(&state, &link).await;
    Ok((StatusCode::CREATED, Json(LinkResp::of(link))))
}

/// The target of an admin action on one account, which must not be the admin's own
/// (an admin cannot reset themself past the re-authentication the account page asks).
async fn other_account(
    state: &AppState,
    s: &Authed,
    admin: AccountId,
    id: i64,
) -> ApiResult<AccountRecord> {
    let id = AccountId(id);
    if id == admin {
        state
            .audit(
                s.event(AuditAction::AdminRefused, Outcome::Denied)
                    .target(id)
                    .detail("own_account"),
            )
            .await?;
        return Err(ApiError::Forbidden);
    }
    state.store.account(id).await?.ok_or(ApiError::NotFound)
}

#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ResetWhat {
    Password,
    SecondFactor,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetReq {
    what: ResetWhat,
}

/// `POST /api/admin/accounts/{id}/reset`: clears the password or the second factor,
/// ends every session of the account, and returns a fresh link for its owner. The
/// admin never sees a secret; the entry is high priority.
pub async fn admin_reset_account(
    State(state): State<AppState>,
    s: Authed,
    Path(id): Path<i64>,
    Json(req): Json<ResetReq>,
) -> ApiResult<Json<LinkResp>> {
    let admin = require_admin(&state, &s).await?;
    let account = other_account(&state, &s, admin, id).await?;
    if account.disabled {
        return Err(ApiError::Conflict(
            "the account is disabled; enable it first",
        ));
    }
    let purpose = match req.what {
        ResetWhat::Password => {
            let never_activated = !account.has_password()
                && state
                    .store
                    .latest_activation(account.id)
                    .await?
                    .is_none_or(|a| a.purpose == ActivationPurpose::Activate);
            if never_activated {
                ActivationPurpose::Activate
            } else {
                ActivationPurpose::ResetPassword
            }
        }
        ResetWhat::SecondFactor => {
            if !account.has_password() {
                // Its owner proves the password on the link; there is none to prove.
                return Err(ApiError::Conflict(
                    "the account has no password yet; reset the password instead",
                ));
            }
            if !account.totp_enabled && !account.role.requires_mfa() {
                return Err(ApiError::Conflict("the account has no second factor"));
            }
            ActivationPurpose::ResetSecondFactor
        }
    };
    let what = match req.what {
        ResetWhat::Password => "password",
        ResetWhat::SecondFactor => "second_factor",
    };
    let mut tx = state.store.begin().await?;
    match req.what {
        ResetWhat::Password => tx.set_password_hash(account.id, "").await?,
        ResetWhat::SecondFactor => tx.clear_second_factor(account.id).await?,
    }
    let revoked = tx.revoke_account_sessions(account.id, None).await?;
    let link = activation::issue(&state, &mut tx, account.id, purpose, &s).await?;
    state
        .commit_audited(
            tx,
            vec![
                s.event(AuditAction::AccountReset, Outcome::Success)
                    .target(account.id)
                    .detail(what)
                    .high(),
                s.event(AuditAction::TokenRevoked, Outcome::Success)
                    .target(account.id)
                    .detail(format!("{revoked} sessions")),
            ],
        )
        .await?;
    activation::notify(&state, &link).await;
    Ok(Json(LinkResp::of(link)))
}

/// `POST /api/admin/accounts/{id}/enable`: lets a disabled account log in again.
pub async fn admin_enable_account(
    State(state): State<AppState>,
    s: Authed,
    Path(id): Path<i64>,
) -> ApiResult<StatusCode> {
    let admin = require_admin(&state, &s).await?;
    let account = other_account(&state, &s, admin, id).await?;
    let mut tx = state.store.begin().await?;
    tx.set_account_disabled(account.id, false).await?;
    state
        .commit_audited(
            tx,
            vec![
                s.event(AuditAction::AccountEnabled, Outcome::Success)
                    .target(account.id),
            ],
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
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
