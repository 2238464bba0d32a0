//! Administration beyond accounts: the audit trail's checks from the page (verify,
//! the auditor's package, the per-patient access report), a person's active sessions,
//! and the clinic's effective settings (`/api/admin/audit/*`, `/api/admin/accounts/{id}/sessions*`,
//! `/api/admin/settings`). Admins only, every action audited. Documented in
//! docs/protocol.md ("Administration").
//!
//! Verifying the log and exporting a package need the log's public key and origin,
//! which the server holds (`confide audit ...` uses the same code): signaling asks
//! through [`AuditDesk`], which the server implements and hands to
//! [`AppState::set_audit_desk`].

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::admin::require_admin;
use super::{ApiError, ApiResult, AppState, Authed, now};
use crate::audit::{AuditAction, Outcome};
use crate::model::{AccountId, Role, Timestamp};

/// What `confide audit verify` found, as the administration page shows it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct VerifyOutcome {
    /// Every entry matches and every checkpoint verifies.
    pub ok: bool,
    /// Entries in the log (when it verified: all of them; otherwise those checked).
    pub size: u64,
    /// Entries covered by the newest checkpoint.
    pub signed_size: u64,
    /// Checkpoints whose signature and root were checked.
    pub checkpoints: u64,
    /// Newest entries not yet covered by a checkpoint.
    pub unsigned_tail: u64,
    /// The first problem, when there is one.
    pub first_bad: Option<BadEntry>,
}

/// Where verification stopped.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct BadEntry {
    /// The entry named, when the finding names one.
    pub seq: Option<u64>,
    /// What `confide audit verify` prints (`entry 12 no longer matches`).
    pub message: String,
}

/// An auditor package on its way out: the run of entries it covers, then its bytes
/// in pieces (the first holds at least the header line).
pub struct PackageDownload {
    pub from: u64,
    pub to: u64,
    pub chunks: mpsc::Receiver<Result<Vec<u8>, String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum DeskError {
    /// No entry was recorded in the period asked for.
    #[error("no audit entries in that period")]
    Empty,
    /// The log could not be read or checked (logged by the desk).
    #[error("{0}")]
    Failed(String),
}

/// The checks that need the log key, done by whoever holds it (the server).
#[async_trait::async_trait]
pub trait AuditDesk: Send + Sync {
    /// `confide audit verify`: recompute the log and check every checkpoint.
    async fn verify(&self) -> Result<VerifyOutcome, DeskError>;
    /// `confide audit export` for the entries recorded in `[since, until)`, streamed:
    /// a checkpoint is signed first so the package covers everything up to now.
    async fn package(
        &self,
        since: Timestamp,
        until: Timestamp,
    ) -> Result<PackageDownload, DeskError>;
}

fn desk(state: &AppState) -> ApiResult<&std::sync::Arc<dyn AuditDesk>> {
    state.audit_desk().ok_or(ApiError::Refused {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "log_unavailable",
        message: "the audit log cannot be checked by this server",
    })
}

fn desk_failed(e: DeskError) -> ApiError {
    match e {
        DeskError::Empty => ApiError::NotFound,
        DeskError::Failed(m) => {
            tracing::error!(error = %m, "audit desk");
            ApiError::Internal
        }
    }
}

pub async fn verify(State(state): State<AppState>, s: Authed) -> ApiResult<Json<VerifyOutcome>> {
    require_admin(&state, &s).await?;
    let r = desk(&state)?.verify().await.map_err(desk_failed)?;
    let detail = match &r.first_bad {
        None => format!("ok size:{}", r.size),
        Some(b) => format!("failed {}", b.message),
    };
    // A log that fails its check is something a reviewer must see. Fails open: the
    // answer carries no patient data, and a log broken so that nothing can be
    // appended (a row forged past its head) is exactly when the admin must still be
    // told what verification found.
    let mut event = s
        .event(AuditAction::AuditVerified, Outcome::Success)
        .detail(detail);
    if !r.ok {
        event = event.high();
    }
    state.audit_fail_open(event).await;
    Ok(Json(r))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Period {
    /// Unix milliseconds.
    from: i64,
    /// Unix milliseconds, exclusive.
    to: i64,
}

fn period(q: Result<Query<Period>, axum::extract::rejection::QueryRejection>) -> ApiResult<Period> {
    match q {
        Ok(Query(p)) if p.from < p.to => Ok(p),
        _ => Err(ApiError::BadRequest(
            "from and to (Unix milliseconds), from before to",
        )),
    }
}

pub async fn package(
    State(state): State<AppState>,
    s: Authed,
    q: Result<Query<Period>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    require_admin(&state, &s).await?;
    let p = period(q)?;
    let mut dl = desk(&state)?
        .package(Timestamp(p.from), Timestamp(p.to))
        .await
        .map_err(desk_failed)?;
    // The first piece is the header: a package that cannot even start (a tampered
    // checkpoint) is an error response, not a broken download.
    let first = match dl.chunks.recv().await {
        Some(Ok(bytes)) => bytes,
        Some(Err(e)) => return Err(desk_failed(DeskError::Failed(e))),
        None => return Err(desk_failed(DeskError::Failed("export ended early".into()))),
    };
    // Exporting hands out every entry in the run: recorded before a byte goes out.
    state
        .audit(
            s.event(AuditAction::AuditExported, Outcome::Success)
                .detail(format!("entries {}..{}", dl.from, dl.to)),
        )
        .await?;
    let rest = futures_util::stream::unfold(dl.chunks, |mut rx| async move {
        let item = rx.recv().await?;
        Some((item.map_err(std::io::Error::other), rx))
    });
    let body = Body::from_stream(
        futures_util::stream::once(async move { Ok::<_, std::io::Error>(first) }).chain(rest),
    );
    let name = format!("confide-audit-{}-{}.jsonl", dl.from, dl.to);
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        body,
    )
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    /// `account:N` or `N`.
    patient: String,
    from: i64,
    to: i64,
}

#[derive(Serialize)]
pub struct ReportResp {
    patient: String,
    /// Appointments the patient has on record.
    appointments: usize,
    from: i64,
    to: i64,
    rows: Vec<serde_json::Value>,
}

pub async fn report(
    State(state): State<AppState>,
    s: Authed,
    q: Result<Query<ReportQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<ReportResp>> {
    require_admin(&state, &s).await?;
    let Ok(Query(q)) = q else {
        return Err(ApiError::BadRequest(
            "patient, from and to (Unix milliseconds)",
        ));
    };
    if q.from >= q.to {
        return Err(ApiError::BadRequest("from must be before to"));
    }
    let id = q
        .patient
        .strip_prefix("account:")
        .unwrap_or(&q.patient)
        .parse::<i64>()
        .map(AccountId)
        .map_err(|_| ApiError::BadRequest("patient: account:N"))?;
    // Only patients have an access report; another id is the same 404 as none.
    match state.store.account(id).await? {
        Some(a) if a.role == Role::Patient => {}
        _ => return Err(ApiError::NotFound),
    }
    let (appointments, rows) = crate::ops::patient_access_report(
        state.store.as_ref(),
        id,
        Timestamp(q.from),
        Timestamp(q.to),
    )
    .await?;
    state
        .audit(
            s.event(AuditAction::AuditReportRead, Outcome::Success)
                .target(id)
                .patient(id),
        )
        .await?;
    Ok(Json(ReportResp {
        patient: id.to_string(),
        appointments,
        from: q.from,
        to: q.to,
        rows: rows.iter().map(crate::ops::access_record_json).collect(),
    }))
}

#[derive(Serialize)]
pub struct SessionView {
    /// Not secret: the first 8 bytes of the stored token hash, in hex. Enough to tell
    /// sessions apart and revoke one; useless for logging in.
    id: String,
    /// `full`, or `enroll` (a clinician's first login, good only for enrolling TOTP).
    kind: &'static str,
    created_at: Timestamp,
    last_seen: Timestamp,
    expires_at: Timestamp,
}

fn session_id(hash: &[u8]) -> String {
    hex::encode(&hash[..hash.len().min(8)])
}

/// The account, if it exists; else the admin gets 404 (audited as a refused list).
async fn known_account(state: &AppState, s: &Authed, id: AccountId) -> ApiResult<()> {
    if state.store.account(id).await?.is_none() {
        state
            .audit(
                s.event(AuditAction::SessionsListed, Outcome::Denied)
                    .target(id)
                    .detail("unknown_account"),
            )
            .await?;
        return Err(ApiError::NotFound);
    }
    Ok(())
}

pub async fn sessions(
    State(state): State<AppState>,
    s: Authed,
    Path(id): Path<i64>,
) -> ApiResult<Json<Vec<SessionView>>> {
    require_admin(&state, &s).await?;
    let id = AccountId(id);
    known_account(&state, &s, id).await?;
    let list = state.store.account_sessions(id, now()).await?;
    state
        .audit(
            s.event(AuditAction::SessionsListed, Outcome::Success)
                .target(id)
                .detail(format!("{} sessions", list.len())),
        )
        .await?;
    Ok(Json(
        list.iter()
            .map(|x| SessionView {
                id: session_id(&x.token_hash),
                kind: x.kind.as_str(),
                created_at: x.created_at,
                last_seen: x.last_seen,
                expires_at: x.expires_at,
            })
            .collect(),
    ))
}

pub async fn revoke_session(
    State(state): State<AppState>,
    s: Authed,
    Path((id, session)): Path<(i64, String)>,
) -> ApiResult<StatusCode> {
    require_admin(&state, &s).await?;
    let id = AccountId(id);
    known_account(&state, &s, id).await?;
    // Only a session of this account: an id of someone else's is not found.
    let hash = state
        .store
        .account_sessions(id, now())
        .await?
        .into_iter()
        .find(|x| session_id(&x.token_hash) == session)
        .map(|x| x.token_hash);
    let Some(hash) = hash else {
        return Err(ApiError::NotFound);
    };
    let revoked = state.store.revoke_session(&hash).await?;
    // Ending access never waits for the audit log (fail open).
    if revoked {
        state
            .audit_fail_open(
                s.event(AuditAction::TokenRevoked, Outcome::Success)
                    .target(id)
                    .detail(format!("session {session}")),
            )
            .await;
    }
    Ok(StatusCode::NO_CONTENT)
}

pub async fn revoke_all_sessions(
    State(state): State<AppState>,
    s: Authed,
    Path(id): Path<i64>,
) -> ApiResult<Json<serde_json::Value>> {
    require_admin(&state, &s).await?;
    let id = AccountId(id);
    known_account(&state, &s, id).await?;
    let n = state.store.revoke_account_sessions(id).await?;
    state
        .audit_fail_open(
            s.event(AuditAction::TokenRevoked, Outcome::Success)
                .target(id)
                .detail(format!("{n} sessions")),
        )
        .await;
    Ok(Json(serde_json::json!({ "revoked": n })))
}

/// The settings a clinic runs with, as far as they exist today; nothing secret (no
/// key, no path to one, no test-only switch beyond whether it is on).
#[derive(Serialize)]
pub struct SettingsView {
    issuer: String,
    idle_timeout_s: i64,
    session_lifetime_s: i64,
    join_grace_s: i64,
    rejoin_grace_s: i64,
    invite_ttl_s: i64,
    break_glass_ttl_s: i64,
    terms_version: String,
    max_participants: usize,
    booking: BookingLimits,
    ws_messages_per_s: u32,
    ws_unauthenticated_per_address: usize,
    trusted_proxies: Vec<String>,
    /// WebSocket size limits in bytes.
    limits: serde_json::Value,
    client_test_hooks: bool,
}

#[derive(Serialize)]
pub struct BookingLimits {
    duration_min_minutes: i64,
    duration_max_minutes: i64,
    reason_max_bytes: usize,
    schedule_max_days: i64,
}

pub async fn settings(State(state): State<AppState>, s: Authed) -> ApiResult<Json<SettingsView>> {
    require_admin(&state, &s).await?;
    state
        .audit(s.event(AuditAction::SettingsRead, Outcome::Success))
        .await?;
    let c = &state.settings;
    Ok(Json(SettingsView {
        issuer: c.issuer.clone(),
        idle_timeout_s: c.idle_timeout_s,
        session_lifetime_s: c.session_lifetime_s,
        join_grace_s: c.join_grace_s,
        rejoin_grace_s: crate::room::REJOIN_GRACE_S,
        invite_ttl_s: c.invite_ttl_s,
        break_glass_ttl_s: c.break_glass_ttl_s,
        terms_version: c.terms_version.clone(),
        max_participants: crate::room::MAX_ADMITTED,
        booking: BookingLimits {
            duration_min_minutes: crate::policy::DURATION_MIN_MINUTES,
            duration_max_minutes: crate::policy::DURATION_MAX_MINUTES,
            reason_max_bytes: crate::policy::REASON_MAX_BYTES,
            schedule_max_days: crate::policy::SCHEDULE_MAX_DAYS,
        },
        ws_messages_per_s: c.ws_msgs_per_s,
        ws_unauthenticated_per_address: c.ws_unauth_per_addr,
        trusted_proxies: c.trusted_proxies.iter().map(|n| n.to_string()).collect(),
        limits: serde_json::json!({
            "frame": c.limits.frame, "sdp": c.limits.sdp, "candidate": c.limits.candidate,
            "chat": c.limits.chat, "token": c.limits.token, "mls": c.limits.mls,
        }),
        client_test_hooks: c.client_test_hooks,
    }))
}
