//! The axum edge: REST API, the `/ws` signaling endpoint, static files, health.
//!
//! [`router`] builds the whole `Router`; the server binary serves it over TLS with
//! `ConnectInfo<SocketAddr>` (source addresses are audited) and spawns
//! [`run_media`] once to drive the media plane.

pub mod access_log;
mod account;
pub mod activation;
mod admin;
mod appointments;
mod break_glass;
mod chat;
pub mod client_addr;
mod consent;
mod directory;
mod gate;
mod invites;
mod limiter;
mod login;
mod media_lane;
mod oversight;
mod patients;
mod schedule;
mod totp;
mod ws;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use axum::Json;
use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, put};
use dashmap::DashMap;
use parking_lot::Mutex;
use rand::RngCore;
use serde::Serialize;
use tokio::sync::mpsc;
use tower_http::services::{ServeDir, ServeFile};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::audit::{AuditAction, AuditEvent, Outcome};
use crate::auth::{Session, SessionKind, Throttle, hash_token};
use crate::crypto::Keyring;
use crate::media::{MediaEvent, MediaPlane};
use crate::model::{AccountId, AppointmentId, ParticipantId, Principal, Role, Timestamp};
use crate::settings::Settings;
use crate::store::{AccountRecord, Store, StoreError};

pub use directory::CheckpointSigner;
pub use gate::{Admission, HashGate, Occupied, SHED_RETRY_AFTER_S};
pub use limiter::{AddrKey, AddrLimiter};
pub use media_lane::MAX_PENDING_PER_PARTICIPANT;
pub use oversight::{AuditDesk, BadEntry, DeskError, PackageDownload, VerifyOutcome};
pub use ws::{
    ICE_CANDIDATES_BURST, ICE_CANDIDATES_PER_S, MEDIA_SDP_BURST, MEDIA_SDP_PER_S, Outbound,
};

/// Wall clock in milliseconds; the only place the edge reads time.
pub fn now() -> Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    Timestamp(ms)
}

/// Shared state; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub store: Arc<dyn Store>,
    pub keyring: Arc<Keyring>,
    pub settings: Settings,
    pub media: Arc<dyn MediaPlane>,
    pub static_dir: Option<PathBuf>,
    hub: Hub,
    throttle: Mutex<Throttle>,
    /// Keys recovery code hashes; kept outside the database.
    pub(crate) recovery_pepper: crate::auth::RecoveryPepper,
    /// Bounds concurrent password verification (CPU and memory); sheds the excess.
    pub hash_gate: HashGate,
    /// Requests per second per source address (IPv6: per /64) on the credential
    /// endpoints; pruned by [`run_housekeeping`].
    pub ip_limiter: AddrLimiter,
    /// Unauthenticated WebSocket connections per address.
    pub(crate) unauth_ws: Arc<client_addr::UnauthConns>,
    /// The audit log's checkpoint signer, which the key directory nudges so that a
    /// registration is provable when its response goes out. Set once by the server;
    /// without it, proofs cover entries once some checkpoint is signed (the server's
    /// periodic signer, `confide audit checkpoint`, or a test's own `AuditWriter`).
    signer: OnceLock<Arc<dyn CheckpointSigner>>,
    /// Verifies the audit log and exports auditor packages for the administration
    /// page; the server, which holds the log key, sets it once.
    desk: OnceLock<Arc<dyn AuditDesk>>,
    /// What each person last saw of each waiting room, and when it was audited
    /// (`waiting_rooms_viewed`): a page that polls records a view when what it shows
    /// changes, and again every [`schedule::VIEW_REAUDIT_S`], not every few seconds.
    /// Keyed by (actor, appointment); pruned by [`run_housekeeping`].
    pub(crate) views: DashMap<(String, Option<AppointmentId>), (String, Timestamp)>,
    /// Delivers activation links; [`activation::LogNotifier`] unless the operator's
    /// server sets another.
    notifier: OnceLock<Arc<dyn activation::Notifier>>,
}

/// Live consultations and connections.
pub(crate) struct Hub {
    // Keyed by our own ids (appointment row ids, counters).
    #[allow(clippy::type_complexity)]
    pub rooms: DashMap<AppointmentId, Arc<Mutex<ws::RoomSlot>>>,
    pub conns: DashMap<ParticipantId, ws::ConnEntry>,
    next_participant: AtomicU64,
    next_media_room: AtomicU64,
}

impl Hub {
    pub fn participant_id(&self) -> ParticipantId {
        ParticipantId(self.next_participant.fetch_add(1, Ordering::Relaxed))
    }
    pub fn media_room_id(&self) -> crate::media::MediaRoomId {
        crate::media::MediaRoomId(self.next_media_room.fetch_add(1, Ordering::Relaxed))
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(
        store: Arc<dyn Store>,
        keyring: Arc<Keyring>,
        settings: Settings,
        media: Arc<dyn MediaPlane>,
        static_dir: Option<PathBuf>,
        recovery_pepper: crate::auth::RecoveryPepper,
    ) -> Self {
        AppState(Arc::new(Inner {
            store,
            keyring,
            settings,
            media,
            static_dir,
            hub: Hub {
                rooms: DashMap::new(),
                conns: DashMap::new(),
                next_participant: AtomicU64::new(1),
                next_media_room: AtomicU64::new(1),
            },
            throttle: Mutex::new(Throttle::default()),
            recovery_pepper,
            hash_gate: HashGate::for_this_machine(),
            ip_limiter: AddrLimiter::new(10, 30),
            unauth_ws: Arc::new(client_addr::UnauthConns::default()),
            signer: OnceLock::new(),
            desk: OnceLock::new(),
            views: DashMap::new(),
            notifier: OnceLock::new(),
        }))
    }

    /// Connect the audit desk (once; later calls are ignored and return false).
    pub fn set_audit_desk(&self, desk: Arc<dyn AuditDesk>) -> bool {
        self.desk.set(desk).is_ok()
    }

    pub(crate) fn audit_desk(&self) -> Option<&Arc<dyn AuditDesk>> {
        self.desk.get()
    }

    /// Who is in the consultation of `appt` right now (empty when nobody is).
    pub fn presence(&self, appt: AppointmentId) -> Vec<crate::room::Presence> {
        let Some(slot) = self.hub.rooms.get(&appt).map(|s| s.value().clone()) else {
            return Vec::new();
        };
        let g = slot.lock();
        if g.retired {
            return Vec::new();
        }
        g.room.presence()
    }

    /// Every live consultation with someone in it, and who.
    pub fn all_presence(&self) -> Vec<(AppointmentId, Vec<crate::room::Presence>)> {
        // Clone the slots first: a room's lock is never held while the map is.
        let slots: Vec<_> = self
            .hub
            .rooms
            .iter()
            .map(|e| (*e.key(), e.value().clone()))
            .collect();
        let mut out = Vec::new();
        for (id, slot) in slots {
            let g = slot.lock();
            if g.retired {
                continue;
            }
            let p = g.room.presence();
            if !p.is_empty() {
                out.push((id, p));
            }
        }
        out.sort_by_key(|(id, _)| *id);
        out
    }

    /// Connect the delivery of activation links (once; later calls are ignored and
    /// return false). Without it, links are only noted in the log (never their token).
    pub fn set_notifier(&self, n: Arc<dyn activation::Notifier>) -> bool {
        self.notifier.set(n).is_ok()
    }

    pub(crate) fn notifier(&self) -> Arc<dyn activation::Notifier> {
        self.notifier
            .get()
            .cloned()
            .unwrap_or_else(activation::default_notifier)
    }

    /// Connect the audit log's checkpoint signer (once; later calls are ignored and
    /// return false).
    pub fn set_checkpoint_signer(&self, signer: Arc<dyn CheckpointSigner>) -> bool {
        self.signer.set(signer).is_ok()
    }

    pub(crate) fn checkpoint_signer(&self) -> Option<&Arc<dyn CheckpointSigner>> {
        self.signer.get()
    }

    pub(crate) fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Write the audit entry of an action that has not taken effect yet, or whose
    /// effect the caller withholds or undoes on error: fail closed. When the entry
    /// cannot be written the caller must not carry the action out and answers
    /// [`ApiError::AuditUnavailable`]; the failure is counted
    /// (`confide_audit_write_failures_total{policy="closed"}`) and logged at error level.
    pub async fn audit(&self, e: AuditEvent) -> Result<(), ApiError> {
        if self.write_audit(e, AuditPolicy::Closed).await {
            Ok(())
        } else {
            Err(ApiError::AuditUnavailable)
        }
    }

    /// Records `events` in `tx`, the transaction that made the change they describe,
    /// and commits both: fail closed with nothing half done. When the entries cannot be
    /// written the transaction is rolled back (the change never happens), the failure
    /// is counted and logged as for [`AppState::audit`], and the caller answers
    /// [`ApiError::AuditUnavailable`].
    pub async fn commit_audited(
        &self,
        mut tx: Box<dyn crate::store::StoreTx>,
        events: Vec<AuditEvent>,
    ) -> Result<(), ApiError> {
        for e in &events {
            op_metrics::on_audit(e.action);
        }
        if let Err(err) = tx.record_audit(&events).await {
            drop(tx);
            if let Some(e) = events.first() {
                audit_write_failed(e.action, AuditPolicy::Closed, &err);
            }
            return Err(ApiError::AuditUnavailable);
        }
        tx.commit().await?;
        Ok(())
    }

    /// Write the audit entry of an action that must happen even when its entry cannot
    /// be written: ending access (logout, revocation, expiry, disabling an account,
    /// leaving or ending a consultation). A failure is counted
    /// (`policy="open"`) and logged at error level; the action goes on.
    pub async fn audit_fail_open(&self, e: AuditEvent) {
        self.write_audit(e, AuditPolicy::Open).await;
    }

    async fn write_audit(&self, e: AuditEvent, policy: AuditPolicy) -> bool {
        let action = e.action;
        op_metrics::on_audit(action);
        match self.store.record_audit(e).await {
            Ok(_) => true,
            Err(err) => {
                audit_write_failed(action, policy, &err);
                false
            }
        }
    }

    /// Forgets limiter and throttle state that no longer limits anything: addresses
    /// whose bucket has refilled, throttle keys idle for an hour and out of their delay.
    /// [`run_housekeeping`] calls it every minute, so neither grows with the number
    /// of addresses or usernames ever seen.
    pub fn prune_limiters(&self, now: Timestamp) {
        self.ip_limiter.prune();
        self.throttle.lock().prune(now);
    }

    /// Keys held by the login throttle (tests, metrics).
    pub fn throttle_len(&self) -> usize {
        self.throttle.lock().len()
    }

    /// Number of live consultations (for tests and metrics).
    pub fn live_rooms(&self) -> usize {
        self.hub.rooms.len()
    }

    /// How many people are in the waiting room of `appt` now (0 when nobody is
    /// connected to it). The slot is cloned out of the map before it is locked, as the
    /// WebSocket handlers do, so this never holds a map shard and a room lock at once.
    pub fn waiting_in(&self, appt: AppointmentId) -> usize {
        let Some(slot) = self.hub.rooms.get(&appt).map(|s| s.value().clone()) else {
            return 0;
        };
        let slot = slot.lock();
        if slot.retired {
            return 0;
        }
        slot.room.count(crate::room::MemberState::Waiting)
    }

    /// Live consultations with their admitted and waiting participants, counted at
    /// once (the metrics endpoint calls this on each scrape; each room lock is held
    /// only to count).
    pub fn census(&self) -> Census {
        let mut c = Census::default();
        for slot in self.hub.rooms.iter() {
            let slot = slot.value().lock();
            if slot.retired {
                continue;
            }
            c.consultations += 1;
            c.admitted += slot.room.count(crate::room::MemberState::Admitted);
            c.waiting += slot.room.count(crate::room::MemberState::Waiting);
        }
        c
    }
}

/// Whether an action goes ahead when its audit entry cannot be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AuditPolicy {
    /// The action is refused.
    Closed,
    /// The action goes ahead (it ends someone's access).
    Open,
}

/// Count and log a failed audit write, loudly: an operator alert should fire on the
/// first one (docs/operations.md, "What fails closed").
pub(crate) fn audit_write_failed(
    action: AuditAction,
    policy: AuditPolicy,
    err: &dyn std::fmt::Display,
) {
    let policy = match policy {
        AuditPolicy::Closed => "closed",
        AuditPolicy::Open => "open",
    };
    metrics::counter!(op_metrics::AUDIT_WRITE_FAILURES, "policy" => policy).increment(1);
    if policy == "closed" {
        tracing::error!(
            action = action.as_str(),
            error = %err,
            "AUDIT LOG UNWRITABLE: action refused (fail closed); run `confide audit verify`"
        );
    } else {
        tracing::error!(
            action = action.as_str(),
            error = %err,
            "AUDIT LOG UNWRITABLE: action carried out unrecorded (fail open); run `confide audit verify`"
        );
    }
}

/// What [`AppState::census`] counts. Numbers only: no names, no ids.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Census {
    /// Live consultations.
    pub consultations: usize,
    /// Participants admitted to a live consultation.
    pub admitted: usize,
    /// Participants in a waiting room.
    pub waiting: usize,
}

/// Operator metrics kept by signaling itself, through the `metrics` facade (a no-op
/// until the server installs a recorder). Derived from audit actions so each is counted
/// in exactly one place; labels are fixed words, never a person or an id.
mod op_metrics {
    use crate::audit::AuditAction;

    pub(crate) const AUTH_FAILURES: &str = "confide_auth_failures_total";
    pub(crate) const TOKEN_REVOCATIONS: &str = "confide_token_revocations_total";
    pub(crate) const WS_CONNECTIONS: &str = "confide_websocket_connections";
    pub(crate) const AUDIT_WRITE_FAILURES: &str = "confide_audit_write_failures_total";

    pub(crate) fn on_audit(action: AuditAction) {
        let (name, label) = match action {
            AuditAction::LoginFailed => (AUTH_FAILURES, "login"),
            AuditAction::LoginThrottled => (AUTH_FAILURES, "throttled"),
            AuditAction::MfaFailed => (AUTH_FAILURES, "mfa"),
            AuditAction::ReauthFailed => (AUTH_FAILURES, "reauth"),
            AuditAction::WsAuthFailed => (AUTH_FAILURES, "websocket"),
            AuditAction::Logout => (TOKEN_REVOCATIONS, "logout"),
            AuditAction::SessionExpired => (TOKEN_REVOCATIONS, "expired"),
            AuditAction::TokenRevoked => (TOKEN_REVOCATIONS, "revoked"),
            AuditAction::AccountDisabled => (TOKEN_REVOCATIONS, "account_disabled"),
            _ => return,
        };
        let key = if name == AUTH_FAILURES {
            "kind"
        } else {
            "reason"
        };
        metrics::counter!(name, key => label).increment(1);
    }
}
pub(crate) use op_metrics::WS_CONNECTIONS;

/// Route the media plane's events to connections. Run once per state, for the life of
/// the server. (What signaling asks of the media plane goes through each consultation's
/// own ordered lane, `media_lane`.)
pub async fn run_media(state: AppState, mut events: mpsc::Receiver<MediaEvent>) {
    while let Some(ev) = events.recv().await {
        ws::route_media_event(&state, ev);
    }
}

/// How often [`run_housekeeping`] prunes the limiters.
pub const HOUSEKEEPING_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Periodic upkeep: the in-memory limiters ([`AppState::prune_limiters`]) and the
/// session table (expired and revoked rows are deleted, so it does not grow with every
/// login ever made). Run once per state, for the life of the server.
pub async fn run_housekeeping(state: AppState) {
    let mut tick = tokio::time::interval(HOUSEKEEPING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let t = now();
        state.prune_limiters(t);
        schedule::prune_views(&state, t);
        match state.store.purge_sessions(t).await {
            Ok(n) if n > 0 => tracing::debug!(sessions = n, "purged expired sessions"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "purging expired sessions failed"),
        }
    }
}

/// What the browser client asks before it starts: whether its test hooks may run.
/// Unauthenticated (the page asks before login) and the same for everyone.
async fn client_config(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "test_hooks": state.settings.client_test_hooks }))
}

/// Build the router: REST under `/api`, `/ws`, `/healthz`, `/readyz`, static `/`.
pub fn router(state: AppState) -> Router {
    router_with(state, Router::new())
}

/// [`router`] with `extra` routes (the server's public audit log routes) mounted
/// inside the same security-header layers as everything else.
pub fn router_with(state: AppState, extra: Router) -> Router {
    let api = Router::new()
        .route("/login", post(login::login))
        .route("/logout", post(login::logout))
        .route("/me", get(login::me))
        .route("/client-config", get(client_config))
        .route("/password/policy", get(activation::password_policy))
        .route("/activation/inspect", post(activation::inspect))
        .route("/activation/complete", post(activation::complete))
        .route("/account", get(account::account))
        .route("/account/password", post(account::change_password))
        .route(
            "/account/recovery-codes",
            post(account::renew_recovery_codes),
        )
        .route("/totp/enroll", post(totp::totp_enroll))
        .route("/totp/confirm", post(totp::totp_confirm))
        .route(
            "/appointments",
            get(appointments::list_appointments).post(appointments::book_appointment),
        )
        .route("/appointments/{id}", patch(schedule::move_appointment))
        .route(
            "/appointments/{id}/cancel",
            post(schedule::cancel_appointment),
        )
        .route("/schedule", get(schedule::schedule))
        .route("/waiting-rooms", get(schedule::waiting_rooms))
        .route("/doctors", get(schedule::doctors))
        .route(
            "/patients",
            get(patients::search_patients).post(patients::create_patient),
        )
        .route("/appointments/{id}/invites", post(invites::create_invite))
        .route("/appointments/{id}/chat", get(chat::chat_history))
        .route("/invites/redeem", post(invites::redeem_invite))
        .route("/consent/terms", get(consent::consent_terms))
        .route(
            "/consent",
            get(consent::consent_status).post(consent::consent_accept),
        )
        .route("/consent", delete(consent::consent_revoke))
        .route(
            "/admin/accounts",
            get(admin::admin_accounts).post(admin::admin_create_account),
        )
        .route(
            "/admin/accounts/{id}/disable",
            post(admin::admin_disable_account),
        )
        .route(
            "/admin/accounts/{id}/enable",
            post(admin::admin_enable_account),
        )
        .route(
            "/admin/accounts/{id}/reset",
            post(admin::admin_reset_account),
        )
        .route("/admin/audit", get(admin::admin_audit))
        .route("/admin/audit/verify", post(oversight::verify))
        .route("/admin/audit/package", get(oversight::package))
        .route("/admin/audit/report", get(oversight::report))
        .route(
            "/admin/accounts/{id}/sessions",
            get(oversight::sessions).delete(oversight::revoke_all_sessions),
        )
        .route(
            "/admin/accounts/{id}/sessions/{session}",
            delete(oversight::revoke_session),
        )
        .route("/admin/settings", get(oversight::settings))
        .route(
            "/admin/break-glass",
            post(break_glass::break_glass).get(break_glass::break_glass_grants),
        )
        .route(
            "/admin/break-glass/appointments/{id}",
            get(break_glass::break_glass_appointment),
        )
        .route(
            "/devices/{device}",
            put(directory::register_device).delete(directory::revoke_device),
        )
        .route(
            "/devices/{device}/key_packages",
            get(directory::key_package_count)
                .post(directory::upload_key_packages)
                .layer(DefaultBodyLimit::max(directory::KEY_PACKAGE_BODY_MAX)),
        )
        .route("/directory/{principal}", get(directory::lookup))
        .route(
            "/directory/{principal}/devices/{device}/key_package",
            post(directory::claim_key_package),
        )
        .fallback(|| async { ApiError::NotFound })
        .layer(SetResponseHeaderLayer::overriding(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ));

    let static_service = match &state.static_dir {
        Some(dir) if dir.is_dir() => {
            let index = dir.join("index.html");
            Router::new().fallback_service(ServeDir::new(dir).fallback(ServeFile::new(index)))
        }
        _ => Router::new().route("/", get(builtin_page)),
    };

    Router::new()
        .nest("/api", api)
        .route("/ws", get(ws::upgrade))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .merge(static_service)
        .with_state(state)
        .merge(extra)
        .layer(axum::middleware::from_fn(access_log::log_request))
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::HeaderName::from_static("permissions-policy"),
            HeaderValue::from_static("camera=(self), microphone=(self), geolocation=()"),
        ))
}

/// 'wasm-unsafe-eval' lets the page instantiate the E2EE wasm module without
/// allowing `eval`; frame-ancestors 'none' forbids framing (clickjacking).
pub const CSP: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; \
     worker-src 'self' blob:; connect-src 'self'; img-src 'self' data: blob:; \
     media-src 'self' blob: mediastream:; style-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

async fn builtin_page() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Confide</title></head>\
         <body><h1>Confide</h1><p>The server is running. The browser client is not \
         installed; the API is under <code>/api</code> and signaling at <code>/ws</code> \
         (see docs/protocol.md).</p></body></html>",
    )
}

async fn readyz(axum::extract::State(state): axum::extract::State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "store not ready");
            (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
        }
    }
}

// ------------------------------------------------------------------ errors

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// Every REST error goes through here; bodies are generic and never carry
/// internal details.
#[derive(Debug)]
pub enum ApiError {
    BadRequest(&'static str),
    /// Wrong credentials, unknown account or bad second factor: one text for all.
    InvalidCredentials,
    MfaRequired,
    Unauthorized,
    SessionExpired,
    Forbidden,
    NotFound,
    Conflict(&'static str),
    /// A refusal with its own machine-readable code (the key directory's).
    Refused {
        status: StatusCode,
        code: &'static str,
        message: &'static str,
    },
    ConsentRequired,
    InviteInvalid,
    /// The activation link is unknown, used, expired, or its account disabled.
    ActivationInvalid,
    /// The account waits for its owner to follow an activation link.
    ActivationPending,
    TooManyRequests(i64),
    /// The action's audit entry could not be written, so the action was not carried
    /// out (fail closed).
    AuditUnavailable,
    Internal,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = match &self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", *m),
            ApiError::InvalidCredentials => (
                StatusCode::UNAUTHORIZED,
                "invalid_credentials",
                "invalid username, password or code",
            ),
            ApiError::MfaRequired => (
                StatusCode::UNAUTHORIZED,
                "mfa_required",
                "a one-time code from your authenticator is required",
            ),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", "log in first"),
            ApiError::SessionExpired => (
                StatusCode::UNAUTHORIZED,
                "session_expired",
                "session expired or revoked; log in again",
            ),
            ApiError::Forbidden => (StatusCode::FORBIDDEN, "forbidden", "not allowed"),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found", "not found"),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, "conflict", *m),
            ApiError::Refused {
                status,
                code,
                message,
            } => (*status, *code, *message),
            ApiError::ConsentRequired => (
                StatusCode::BAD_REQUEST,
                "consent_required",
                "accept the current telehealth terms first",
            ),
            ApiError::InviteInvalid => (
                StatusCode::NOT_FOUND,
                "invite_invalid",
                "the invite link is invalid, used or expired",
            ),
            ApiError::ActivationInvalid => (
                StatusCode::NOT_FOUND,
                "activation_invalid",
                "the activation link is invalid, used or expired; ask your administrator for a new one",
            ),
            ApiError::ActivationPending => (
                StatusCode::FORBIDDEN,
                "activation_pending",
                "this account is not activated yet: open the activation link your administrator gave you",
            ),
            ApiError::TooManyRequests(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_attempts",
                "too many attempts; wait and try again",
            ),
            ApiError::AuditUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_unavailable",
                "the action could not be recorded in the audit log, so it was not carried out",
            ),
            ApiError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            ),
        };
        let mut resp = (
            status,
            Json(ErrorBody {
                error: ErrorDetail { code, message },
            }),
        )
            .into_response();
        if let ApiError::TooManyRequests(secs) = self
            && let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => ApiError::Conflict("already exists"),
            e => {
                tracing::error!(error = %e, "store error");
                ApiError::Internal
            }
        }
    }
}

// ------------------------------------------------------------- extractors

/// Where a request came from and its id, for the audit log.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub ip: Option<IpAddr>,
    pub request_id: String,
}

impl Ctx {
    pub fn source(&self) -> Option<String> {
        self.ip.map(|i| i.to_string())
    }
    pub fn event(
        &self,
        actor: impl Into<String>,
        action: AuditAction,
        outcome: Outcome,
    ) -> AuditEvent {
        AuditEvent::new(actor, action, outcome, now())
            .source(self.source())
            .request_id(Some(self.request_id.clone()))
    }
}

pub(crate) fn request_id() -> String {
    let mut b = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

impl FromRequestParts<AppState> for Ctx {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // Behind a listed reverse proxy the client is named by `X-Forwarded-For`;
        // from anyone else that header is ignored.
        let ip = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| {
            let forwarded = parts
                .headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok());
            client_addr::client_ip(c.0.ip(), forwarded, &state.settings.trusted_proxies)
        });
        // The id the request's log line and `x-request-id` carry, so the log, the
        // client and the audit entries name one request alike.
        let request_id = parts
            .extensions
            .get::<access_log::RequestLog>()
            .map(|l| l.id.clone())
            .unwrap_or_else(request_id);
        Ok(Ctx { ip, request_id })
    }
}

/// A request with a valid session of any kind (full or enrolment-only).
#[derive(Clone, Debug)]
pub struct AnySession {
    pub session: Session,
    pub ctx: Ctx,
}

impl AnySession {
    pub fn actor(&self) -> String {
        self.session.principal.to_string()
    }
    pub fn account_id(&self) -> Option<AccountId> {
        match self.session.principal {
            Principal::Account(a) => Some(a),
            Principal::Guest(_) => None,
        }
    }
    pub fn event(&self, action: AuditAction, outcome: Outcome) -> AuditEvent {
        self.ctx
            .event(self.actor(), action, outcome)
            .role(self.session.role)
    }
}

/// A request with a valid full session.
#[derive(Clone, Debug)]
pub struct Authed(pub AnySession);

impl std::ops::Deref for Authed {
    type Target = AnySession;
    fn deref(&self) -> &AnySession {
        &self.0
    }
}

/// Look up and check a bearer token; touches the session on success. Shared by
/// REST and the WebSocket `hello`.
pub(crate) async fn check_token(
    state: &AppState,
    token: &str,
    ctx: &Ctx,
) -> Result<Session, ApiError> {
    let hash = hash_token(token);
    let Some(session) = state.store.session(&hash).await? else {
        return Err(ApiError::Unauthorized);
    };
    let now = now();
    if let Err(problem) = session.check(now, state.settings.idle_timeout_s) {
        // Idle or expired sessions are revoked on first sight, so they stay dead.
        if state.store.revoke_session(&hash).await? {
            state
                .audit_fail_open(
                    ctx.event(
                        session.principal.to_string(),
                        AuditAction::SessionExpired,
                        Outcome::Success,
                    )
                    .role(session.role)
                    .detail(problem.to_string()),
                )
                .await;
        }
        return Err(ApiError::SessionExpired);
    }
    if let Principal::Account(id) = session.principal {
        match state.store.account(id).await? {
            Some(a) if !a.disabled => {}
            _ => return Err(ApiError::SessionExpired),
        }
    }
    state.store.touch_session(&hash, now).await?;
    Ok(session)
}

fn bearer(parts: &Parts) -> Option<&str> {
    let v = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let t = v.strip_prefix("Bearer ")?.trim();
    (!t.is_empty() && t.len() <= 512).then_some(t)
}

impl FromRequestParts<AppState> for AnySession {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let ctx = Ctx::from_request_parts(parts, state).await?;
        let token = bearer(parts).ok_or(ApiError::Unauthorized)?;
        let session = check_token(state, token, &ctx).await?;
        if let Some(log) = parts.extensions.get::<access_log::RequestLog>() {
            log.set_principal(&session.principal);
        }
        Ok(AnySession { session, ctx })
    }
}

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let s = AnySession::from_request_parts(parts, state).await?;
        if s.session.kind != SessionKind::Full {
            return Err(ApiError::Forbidden);
        }
        Ok(Authed(s))
    }
}

// ------------------------------------------------------------- helpers

/// The display label of an account, opened from its sealed column.
pub(crate) fn label_of(state: &AppState, a: &AccountRecord) -> String {
    state
        .keyring
        .open_string(crate::crypto::ctx::DISPLAY_NAME, &a.display_name)
        .unwrap_or_else(|_| a.role.to_string())
}

/// The display label of a guest: the name its invite was made under ("Guest" for an
/// invite made before invites carried one).
pub(crate) fn invite_label(state: &AppState, i: &crate::store::InviteRecord) -> String {
    i.label
        .as_ref()
        .and_then(|l| {
            state
                .keyring
                .open_string(crate::crypto::ctx::INVITE_LABEL, l)
                .ok()
        })
        .unwrap_or_else(|| "Guest".into())
}

/// Whether `role` may see the clinical content of appointments at all.
pub(crate) fn clinical(role: Role) -> bool {
    matches!(role, Role::Doctor | Role::Patient)
}
