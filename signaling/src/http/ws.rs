//! The `/ws` endpoint: one task per connection turns frames into calls on the
//! consultation state machine and the media plane, and writes replies.
//!
//! All writes to a socket go through its bounded outbound queue, so messages to one
//! participant keep their order whoever produced them. Room outputs are dispatched
//! while the room's lock is held (with `try_send`, never awaiting), which keeps the
//! order of events inside a consultation the same for every participant.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::media_lane::{ClientMedia, LaneRefused, MediaLane};
use super::{ApiError, AppState, Ctx, check_token, invite_label, label_of, now};
use crate::audit::{AuditAction, AuditEvent, Outcome};
use crate::auth::{SessionKind, hash_token};
use crate::media::{MediaEvent, MediaRoomId};
use crate::model::{
    AppointmentId, AppointmentStatus, DeviceId, ParticipantId, Principal, Role, Timestamp,
};
use crate::policy;
use crate::proto::{
    ClientMsg, ErrorCode, LeaveReason, PROTOCOL_VERSION, ProtoError, ServerMsg, decode_b64,
    decode_client,
};
use crate::room::{
    Consultation, JoinOutcome, Joiner, MemberState, MlsCommit, RoomError, RoomOutput,
};
use crate::store::NewChat;

/// What a connection task is asked to write.
#[derive(Debug)]
pub enum Outbound {
    Msg(ServerMsg),
    /// Close after everything queued before it has been written.
    Close,
}

/// A room plus a flag set when it is taken out of the hub, so a joiner that raced
/// with the removal retries on a fresh room instead of joining a dead one.
pub(crate) struct RoomSlot {
    pub room: Consultation,
    /// The room's ordered media-plane work, pushed under this slot's lock.
    lane: MediaLane,
    pub retired: bool,
}

pub(crate) struct ConnEntry {
    tx: mpsc::Sender<Outbound>,
    media_room: MediaRoomId,
}

/// Frames larger than this close the connection at the WebSocket layer; smaller
/// ones over the protocol limit get a `too_large` error frame instead.
const WS_MAX_MESSAGE: usize = 1 << 20;
const OUTBOUND_QUEUE: usize = 256;
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_AUTH_FAILURES: u32 = 5;
const TOUCH_EVERY_MS: i64 = 5_000;
/// SDP messages (`media_offer`, `media_answer`) per connection: each is parsed and
/// applied by the media worker that serves other consultations too. A join takes one
/// offer and an answer per participant whose tracks arrive; ICE restarts are rare.
pub const MEDIA_SDP_PER_S: u32 = 2;
pub const MEDIA_SDP_BURST: u32 = 10;
/// Trickled `ice_candidate` messages per connection (browsers gather a handful per
/// interface; the SFU is ICE-lite and reads the candidates in the offer).
pub const ICE_CANDIDATES_PER_S: u32 = 5;
pub const ICE_CANDIDATES_BURST: u32 = 20;
const _: () = assert!(ICE_CANDIDATES_BURST as usize <= super::MAX_PENDING_PER_PARTICIPANT);
const _: () = assert!(MEDIA_SDP_BURST as usize <= super::MAX_PENDING_PER_PARTICIPANT);

pub async fn upgrade(State(state): State<AppState>, ctx: Ctx, ws: WebSocketUpgrade) -> Response {
    // A place among the address's unauthenticated connections, held until `hello`
    // succeeds: without it one address could hold any number of sockets open
    // without ever authenticating.
    let slot = match ctx.ip {
        Some(ip) => match state
            .unauth_ws
            .try_open(ip, state.settings.ws_unauth_per_addr)
        {
            Some(slot) => Some(slot),
            None => {
                return ApiError::TooManyRequests(HELLO_TIMEOUT.as_secs() as i64).into_response();
            }
        },
        None => None,
    };
    ws.max_message_size(WS_MAX_MESSAGE)
        .max_frame_size(WS_MAX_MESSAGE)
        .on_upgrade(move |socket| run(state, ctx, socket, slot))
}

struct ConnAuth {
    token_hash: Vec<u8>,
    principal: Principal,
    role: Role,
    scope: Option<AppointmentId>,
    label: String,
}

struct Conn {
    id: ParticipantId,
    ctx: Ctx,
    tx: mpsc::Sender<Outbound>,
    auth: Option<ConnAuth>,
    room: Option<AppointmentId>,
    auth_failures: u32,
    rate_window: Instant,
    rate_count: u32,
    /// Media messages have their own, much lower rates than the generic one.
    sdp_rate: DefaultDirectRateLimiter,
    ice_rate: DefaultDirectRateLimiter,
    last_touch: Timestamp,
    /// The connection's place among its address's unauthenticated ones, given back
    /// once `hello` succeeds.
    unauth: Option<super::client_addr::UnauthSlot>,
}

impl Conn {
    fn send(&self, msg: ServerMsg) {
        if self.tx.try_send(Outbound::Msg(msg)).is_err() {
            tracing::debug!(participant = self.id.0, "outbound queue full");
        }
    }
    fn error(&self, code: ErrorCode) {
        self.send(ServerMsg::error(code));
    }
    fn close(&self) {
        let tx = self.tx.clone();
        if tx.try_send(Outbound::Close).is_err() {
            tokio::spawn(async move {
                let _ = tx.send(Outbound::Close).await;
            });
        }
    }
    fn actor(&self) -> String {
        self.auth
            .as_ref()
            .map(|a| a.principal.to_string())
            .unwrap_or_else(|| "anonymous".into())
    }
    fn event(&self, action: AuditAction, outcome: Outcome) -> AuditEvent {
        let mut e = self.ctx.event(self.actor(), action, outcome);
        e.role = self.auth.as_ref().map(|a| a.role);
        e
    }
}

async fn run(
    state: AppState,
    ctx: Ctx,
    socket: WebSocket,
    unauth: Option<super::client_addr::UnauthSlot>,
) {
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Outbound>(OUTBOUND_QUEUE);
    let mut conn = Conn {
        id: state.hub().participant_id(),
        ctx,
        tx,
        auth: None,
        room: None,
        auth_failures: 0,
        rate_window: Instant::now(),
        rate_count: 0,
        sdp_rate: RateLimiter::direct(quota(MEDIA_SDP_PER_S, MEDIA_SDP_BURST)),
        ice_rate: RateLimiter::direct(quota(ICE_CANDIDATES_PER_S, ICE_CANDIDATES_BURST)),
        last_touch: now(),
        unauth,
    };
    // Metrics: open WebSocket connections (decremented after `disconnect` below).
    metrics::gauge!(super::WS_CONNECTIONS).increment(1.0);
    let hello_deadline = tokio::time::sleep(HELLO_TIMEOUT);
    tokio::pin!(hello_deadline);
    let tick_ms = (state.settings.idle_timeout_s * 1000 / 3).clamp(200, 30_000) as u64;
    let mut tick = tokio::time::interval(Duration::from_millis(tick_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let opened = Instant::now();
    let ended: &'static str;

    loop {
        tokio::select! {
            frame = stream.next() => match frame {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => {
                    ended = "client_closed";
                    break;
                }
                Some(Ok(Message::Text(t))) => handle_frame(&state, &mut conn, t.as_str()).await,
                Some(Ok(Message::Binary(_))) => conn.send(ServerMsg::Error {
                    code: ErrorCode::InvalidMessage,
                    message: "binary frames are not part of the protocol".into(),
                }),
                Some(Ok(_)) => {}
            },
            out = rx.recv() => match out {
                Some(Outbound::Msg(m)) => {
                    let Ok(text) = serde_json::to_string(&m) else { continue };
                    if sink.send(Message::Text(text.into())).await.is_err() {
                        ended = "send_failed";
                        break;
                    }
                }
                Some(Outbound::Close) | None => {
                    let _ = sink.send(Message::Close(None)).await;
                    ended = "server_closed";
                    break;
                }
            },
            _ = tick.tick() => {
                if !on_tick(&state, &mut conn).await {
                    // Flush what on_tick queued (the error) before closing.
                    while let Ok(Outbound::Msg(m)) = rx.try_recv() {
                        if let Ok(text) = serde_json::to_string(&m) {
                            let _ = sink.send(Message::Text(text.into())).await;
                        }
                    }
                    let _ = sink.send(Message::Close(None)).await;
                    ended = "session_ended";
                    break;
                }
            }
            _ = &mut hello_deadline, if conn.auth.is_none() => {
                let m = ServerMsg::error(ErrorCode::NotAuthenticated);
                if let Ok(text) = serde_json::to_string(&m) {
                    let _ = sink.send(Message::Text(text.into())).await;
                }
                let _ = sink.send(Message::Close(None)).await;
                ended = "hello_timeout";
                break;
            }
        }
    }
    // One line per WebSocket session for operators (pseudonymous ids only, as the
    // request lines; see access_log.rs).
    let principal = conn
        .auth
        .as_ref()
        .map(|a| a.principal.to_string())
        .unwrap_or_else(|| "-".into());
    let consultation = conn.room.map(|r| r.0);
    disconnect(&state, &mut conn).await;
    metrics::gauge!(super::WS_CONNECTIONS).decrement(1.0);
    tracing::info!(
        target: "confide::ws",
        request_id = conn.ctx.request_id.as_str(),
        participant = conn.id.0,
        account = principal.as_str(),
        consultation,
        duration_s = opened.elapsed().as_secs(),
        ended,
        "websocket session"
    );
}

async fn disconnect(state: &AppState, conn: &mut Conn) {
    if let Some(appt) = conn.room.take() {
        let left = with_room(state, appt, |r| {
            r.handle_leave(now(), conn.id, LeaveReason::Disconnected)
        });
        if matches!(left, Some(Ok(()))) {
            state
                .audit_fail_open(
                    conn.event(AuditAction::Left, Outcome::Success)
                        .target(appt)
                        .detail("disconnected"),
                )
                .await;
        }
    }
    state.hub().conns.remove(&conn.id);
}

/// False when the connection must close (session gone).
async fn on_tick(state: &AppState, conn: &mut Conn) -> bool {
    let t = now();
    if let Some(appt) = conn.room {
        with_room(state, appt, |r| r.handle_timeout(t));
    }
    let Some(auth) = &conn.auth else { return true };
    let session = match state.store.session(&auth.token_hash).await {
        Ok(Some(s)) => s,
        // The row is gone (purged, or removed by an operator): the session no longer
        // exists, so neither does the connection's authentication (fail closed).
        Ok(None) => {
            conn.error(ErrorCode::SessionExpired);
            return false;
        }
        Err(e) => {
            tracing::warn!(error = %e, "session check failed");
            return true;
        }
    };
    // Being in a consultation is activity: the call must not log anyone off.
    if conn.room.is_some() && !session.revoked {
        let _ = state.store.touch_session(&auth.token_hash, t).await;
        conn.last_touch = t;
        if session.check(t, i64::MAX / 4000).is_ok() {
            return true;
        }
    }
    match session.check(t, state.settings.idle_timeout_s) {
        Ok(()) => true,
        Err(problem) => {
            if state
                .store
                .revoke_session(&auth.token_hash)
                .await
                .unwrap_or(false)
            {
                state
                    .audit_fail_open(
                        conn.event(AuditAction::SessionExpired, Outcome::Success)
                            .detail(problem.to_string()),
                    )
                    .await;
            }
            conn.error(ErrorCode::SessionExpired);
            false
        }
    }
}

fn rate_ok(state: &AppState, conn: &mut Conn) -> bool {
    let n = Instant::now();
    if n.duration_since(conn.rate_window) >= Duration::from_secs(1) {
        conn.rate_window = n;
        conn.rate_count = 0;
    }
    conn.rate_count += 1;
    conn.rate_count <= state.settings.ws_msgs_per_s
}

async fn handle_frame(state: &AppState, conn: &mut Conn, text: &str) {
    if !rate_ok(state, conn) {
        conn.error(ErrorCode::RateLimited);
        return;
    }
    let msg = match decode_client(text, &state.settings.limits) {
        Ok(m) => m,
        Err(e) => {
            conn.send(e.into());
            return;
        }
    };
    if let Err(e) = handle_msg(state, conn, msg).await {
        conn.send(e.into());
    }
}

/// An audit entry that could not be written refuses the action (fail closed; the
/// failure is already counted and logged).
fn audit_refused(_: ApiError) -> ProtoError {
    err(ErrorCode::Internal)
}

fn err(code: ErrorCode) -> ProtoError {
    ProtoError {
        code,
        message: code.default_message().to_string(),
    }
}

impl From<RoomError> for ProtoError {
    fn from(e: RoomError) -> Self {
        ProtoError {
            code: e.code(),
            message: e.message(),
        }
    }
}

async fn handle_msg(state: &AppState, conn: &mut Conn, msg: ClientMsg) -> Result<(), ProtoError> {
    if let ClientMsg::Hello { version, token } = msg {
        return hello(state, conn, version, &token).await;
    }
    if conn.auth.is_none() {
        return Err(err(ErrorCode::NotAuthenticated));
    }
    let t = now();
    if t.0 - conn.last_touch.0 > TOUCH_EVERY_MS
        && let Some(a) = &conn.auth
    {
        let _ = state.store.touch_session(&a.token_hash, t).await;
        conn.last_touch = t;
    }
    match msg {
        ClientMsg::Hello { .. } => Err(err(ErrorCode::AlreadyAuthenticated)),
        ClientMsg::Ping { nonce } => {
            conn.send(ServerMsg::Pong { nonce });
            Ok(())
        }
        ClientMsg::Join {
            consultation,
            device,
        } => join(state, conn, consultation, device).await,
        ClientMsg::Admit { participant } => {
            let appt = conn.room.ok_or(err(ErrorCode::NotInConsultation))?;
            // Recorded before the room admits (fail closed), for a decision the room
            // takes as things stand: the doctor admitting someone waiting. Should the
            // room still refuse (it filled up meanwhile), an `admit_refused` follows.
            let pending = with_room(state, appt, |r| {
                (r.role_of(conn.id) == Some(Role::Doctor)
                    && r.state_of(participant) == Some(MemberState::Waiting))
                .then(|| r.role_of(participant).unwrap_or(Role::Guest))
            })
            .flatten();
            if let Some(role) = pending {
                state
                    .audit(
                        conn.event(AuditAction::Admitted, Outcome::Success)
                            .target(participant)
                            .detail(format!("{appt} {role}")),
                    )
                    .await
                    .map_err(audit_refused)?;
            }
            let res = with_room(state, appt, |r| r.handle_admit(t, conn.id, participant))
                .unwrap_or(Err(RoomError::Ended));
            match &res {
                Ok(_) if pending.is_some() => {}
                Ok(role) => {
                    state
                        .audit_fail_open(
                            conn.event(AuditAction::Admitted, Outcome::Success)
                                .target(participant)
                                .detail(format!("{appt} {role}")),
                        )
                        .await
                }
                Err(e) => {
                    state
                        .audit_fail_open(
                            conn.event(AuditAction::AdmitRefused, Outcome::Denied)
                                .target(participant)
                                .detail(format!("{appt} {}", e.code().as_str())),
                        )
                        .await
                }
            }
            res.map(|_| ()).map_err(Into::into)
        }
        ClientMsg::Deny { participant } => {
            let appt = conn.room.ok_or(err(ErrorCode::NotInConsultation))?;
            let res = with_room(state, appt, |r| r.handle_deny(t, conn.id, participant))
                .unwrap_or(Err(RoomError::Ended));
            let (action, outcome) = match res {
                Ok(_) => (AuditAction::Denied, Outcome::Success),
                Err(_) => (AuditAction::AdmitRefused, Outcome::Denied),
            };
            state
                .audit_fail_open(
                    conn.event(action, outcome)
                        .target(participant)
                        .detail(appt.to_string()),
                )
                .await;
            res.map(|_| ()).map_err(Into::into)
        }
        ClientMsg::Leave => {
            let appt = conn.room.ok_or(err(ErrorCode::NotInConsultation))?;
            let res = with_room(state, appt, |r| {
                r.handle_leave(now(), conn.id, LeaveReason::Left)
            })
            .unwrap_or(Err(RoomError::NotMember));
            conn.room = None;
            state.hub().conns.remove(&conn.id);
            state
                .audit_fail_open(conn.event(AuditAction::Left, Outcome::Success).target(appt))
                .await;
            res.map_err(Into::into)
        }
        ClientMsg::End => {
            let appt = conn.room.ok_or(err(ErrorCode::NotInConsultation))?;
            let res =
                with_room(state, appt, |r| r.handle_end(conn.id)).unwrap_or(Err(RoomError::Ended));
            match res {
                Ok(()) => {
                    conn.room = None;
                    if let Err(e) = state
                        .store
                        .set_appointment_status(appt, AppointmentStatus::Ended)
                        .await
                    {
                        tracing::error!(error = %e, "could not mark the appointment ended");
                    }
                    state
                        .audit_fail_open(
                            conn.event(AuditAction::Ended, Outcome::Success)
                                .target(appt),
                        )
                        .await;
                    Ok(())
                }
                Err(e) => {
                    state
                        .audit(
                            conn.event(AuditAction::EndRefused, Outcome::Denied)
                                .target(appt)
                                .detail(e.code().as_str()),
                        )
                        .await
                        .map_err(audit_refused)?;
                    Err(e.into())
                }
            }
        }
        ClientMsg::MediaOffer { sdp } => media_request(state, conn, ClientMedia::Offer(sdp)),
        ClientMsg::MediaAnswer { sdp } => media_request(state, conn, ClientMedia::Answer(sdp)),
        ClientMsg::IceCandidate { candidate } => {
            media_request(state, conn, ClientMedia::Candidate(candidate))
        }
        ClientMsg::MlsCommit {
            commit,
            welcome,
            add,
        } => {
            let appt = conn.room.ok_or(err(ErrorCode::NotInConsultation))?;
            let limit = state.settings.limits.mls;
            let c = MlsCommit {
                commit: decode_b64(&commit, limit, "commit")?,
                welcome: welcome
                    .as_deref()
                    .map(|w| decode_b64(w, limit, "welcome"))
                    .transpose()?,
                add,
            };
            let adds = !c.add.is_empty();
            let add_list = c.add.clone();
            // Admissions by commit are recorded as `admit` ones are, before the room
            // admits (fail closed): one entry per added participant who is waiting.
            // Plain commits are not audited (one per epoch, and they say nothing about
            // who is in).
            let pending: Vec<(ParticipantId, Role)> = if adds {
                with_room(state, appt, |r| {
                    add_list
                        .iter()
                        .filter(|p| r.state_of(**p) == Some(MemberState::Waiting))
                        .map(|p| (*p, r.role_of(*p).unwrap_or(Role::Guest)))
                        .collect()
                })
                .unwrap_or_default()
            } else {
                Vec::new()
            };
            for (who, role) in &pending {
                state
                    .audit(
                        conn.event(AuditAction::Admitted, Outcome::Success)
                            .target(*who)
                            .detail(format!("{appt} {role} mls")),
                    )
                    .await
                    .map_err(audit_refused)?;
            }
            let res = with_room(state, appt, |r| r.handle_mls_commit(t, conn.id, c))
                .unwrap_or(Err(RoomError::Ended));
            match &res {
                Ok(accepted) => {
                    // Someone who started waiting between the two looks is admitted
                    // too; recorded after the fact (fail open).
                    for (who, role) in &accepted.admitted {
                        if pending.iter().any(|(p, _)| p == who) {
                            continue;
                        }
                        state
                            .audit_fail_open(
                                conn.event(AuditAction::Admitted, Outcome::Success)
                                    .target(*who)
                                    .detail(format!("{appt} {role} mls")),
                            )
                            .await;
                    }
                }
                Err(e) if adds => {
                    for who in add_list {
                        state
                            .audit(
                                conn.event(AuditAction::AdmitRefused, Outcome::Denied)
                                    .target(who)
                                    .detail(format!("{appt} {} mls", e.code().as_str())),
                            )
                            .await
                            .map_err(audit_refused)?;
                    }
                }
                Err(_) => {}
            }
            res.map(|_| ()).map_err(Into::into)
        }
        ClientMsg::Chat { ciphertext } => {
            let appt = conn.room.ok_or(err(ErrorCode::NotInConsultation))?;
            with_room(state, appt, |r| r.check_chat(conn.id)).unwrap_or(Err(RoomError::Ended))?;
            let bytes = decode_b64(&ciphertext, state.settings.limits.chat, "ciphertext")?;
            let role = conn.auth.as_ref().map(|a| a.role).unwrap_or(Role::Guest);
            let id = state
                .store
                .store_chat(NewChat {
                    appointment: appt,
                    sender: conn.id,
                    sender_role: role,
                    sent_at: t,
                    ciphertext: bytes,
                })
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "chat store failed");
                    err(ErrorCode::Internal)
                })?;
            with_room(state, appt, |r| r.handle_chat(conn.id, id, t, ciphertext))
                .unwrap_or(Err(RoomError::Ended))
                .map_err(Into::into)
        }
    }
}

fn quota(per_s: u32, burst: u32) -> Quota {
    let nz = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(nz(per_s)).allow_burst(nz(burst))
}

/// Queues a participant's media request on its consultation's lane, after its own rate
/// limit and the room's admission check; the answer or error comes back on the
/// connection when the media plane has handled it.
fn media_request(state: &AppState, conn: &mut Conn, req: ClientMedia) -> Result<(), ProtoError> {
    let (limiter, what, per_s, burst) = match req {
        ClientMedia::Candidate(_) => (
            &conn.ice_rate,
            "ice_candidate",
            ICE_CANDIDATES_PER_S,
            ICE_CANDIDATES_BURST,
        ),
        _ => (
            &conn.sdp_rate,
            "media_offer and media_answer",
            MEDIA_SDP_PER_S,
            MEDIA_SDP_BURST,
        ),
    };
    if limiter.check().is_err() {
        return Err(ProtoError {
            code: ErrorCode::RateLimited,
            message: format!(
                "too many {what} messages: at most {per_s} per second (bursts of {burst})"
            ),
        });
    }
    let appt = conn.room.ok_or(err(ErrorCode::NotInConsultation))?;
    let tx = conn.tx.clone();
    // Checked and queued under the room's lock, so it lands in the lane before any
    // removal or close the room decides later.
    with_slot(state, appt, |slot| {
        let (_, who) = slot.room.check_media(conn.id)?;
        slot.lane
            .client(&state.media, who, req, tx)
            .map_err(|refused| ProtoError {
                code: match refused {
                    LaneRefused::Busy => ErrorCode::RateLimited,
                    LaneRefused::Closed => ErrorCode::ConsultationEnded,
                },
                message: refused.to_string(),
            })
    })
    .unwrap_or(Err(RoomError::Ended.into()))
}

async fn hello(
    state: &AppState,
    conn: &mut Conn,
    version: u32,
    token: &str,
) -> Result<(), ProtoError> {
    if conn.auth.is_some() {
        return Err(err(ErrorCode::AlreadyAuthenticated));
    }
    if version != PROTOCOL_VERSION {
        return Err(ProtoError {
            code: ErrorCode::UnsupportedVersion,
            message: format!("this server speaks protocol version {PROTOCOL_VERSION}"),
        });
    }
    let checked = check_token(state, token, &conn.ctx).await;
    let session = match checked {
        Ok(s) if s.kind == SessionKind::Full => s,
        other => {
            let code = match other {
                Err(ApiError::SessionExpired) => ErrorCode::SessionExpired,
                _ => ErrorCode::AuthFailed,
            };
            state
                .audit(
                    conn.event(AuditAction::WsAuthFailed, Outcome::Failure)
                        .detail(code.as_str()),
                )
                .await
                .map_err(audit_refused)?;
            conn.auth_failures += 1;
            if conn.auth_failures >= MAX_AUTH_FAILURES {
                conn.error(code);
                conn.close();
                return Ok(());
            }
            return Err(err(code));
        }
    };
    let label = match session.principal {
        Principal::Account(id) => match state.store.account(id).await {
            Ok(Some(a)) => label_of(state, &a),
            _ => session.role.to_string(),
        },
        Principal::Guest(id) => match state.store.invite(id).await {
            Ok(Some(i)) => invite_label(state, &i),
            _ => session.role.to_string(),
        },
    };
    // Recorded before the connection counts as authenticated (fail closed).
    state
        .audit(
            conn.ctx
                .event(
                    session.principal.to_string(),
                    AuditAction::WsAuthOk,
                    Outcome::Success,
                )
                .role(session.role),
        )
        .await
        .map_err(audit_refused)?;
    conn.unauth = None;
    conn.auth = Some(ConnAuth {
        token_hash: hash_token(token),
        principal: session.principal.clone(),
        role: session.role,
        scope: session.scope,
        label,
    });
    conn.send(ServerMsg::Welcome {
        version: PROTOCOL_VERSION,
        role: session.role,
        idle_timeout_s: state.settings.idle_timeout_s.max(0) as u64,
    });
    Ok(())
}

async fn join(
    state: &AppState,
    conn: &mut Conn,
    id: AppointmentId,
    device: Option<DeviceId>,
) -> Result<(), ProtoError> {
    let refuse = |code: ErrorCode| {
        conn.event(AuditAction::JoinRefused, Outcome::Denied)
            .target(id)
            .detail(code.as_str())
    };
    if conn.room.is_some() {
        state
            .audit(refuse(ErrorCode::AlreadyJoined))
            .await
            .map_err(audit_refused)?;
        return Err(err(ErrorCode::AlreadyJoined));
    }
    let Some(auth) = &conn.auth else {
        return Err(err(ErrorCode::NotAuthenticated));
    };
    let appt = state.store.appointment(id).await.map_err(|e| {
        tracing::error!(error = %e, "appointment lookup failed");
        err(ErrorCode::Internal)
    })?;
    let subject = policy::Subject {
        principal: &auth.principal,
        role: auth.role,
        scope: auth.scope,
    };
    let t = now();
    let act = policy::Act::Join {
        now: t,
        grace_s: state.settings.join_grace_s,
    };
    let facts = appt.as_ref().map(|a| a.facts());
    let decision = policy::check(subject, act, facts.as_ref())
        .and_then(|_| appt.ok_or(policy::Refusal::NotYours));
    let appointment = match decision {
        Ok(a) => a,
        Err(refusal) => {
            let code = match refusal {
                policy::Refusal::NotYours => ErrorCode::WrongConsultation,
                policy::Refusal::WrongRole => ErrorCode::Forbidden,
                policy::Refusal::Ended => ErrorCode::ConsultationEnded,
                policy::Refusal::OutsideWindow => ErrorCode::OutsideWindow,
            };
            state.audit(refuse(code)).await.map_err(audit_refused)?;
            return Err(err(code));
        }
    };
    if matches!(auth.role, Role::Patient | Role::Guest) {
        let consent = state
            .store
            .active_consent(&auth.principal.to_string())
            .await
            .map_err(|_| err(ErrorCode::Internal))?;
        if consent.is_none_or(|c| c.version != state.settings.terms_version) {
            state
                .audit(refuse(ErrorCode::ConsentRequired))
                .await
                .map_err(audit_refused)?;
            return Err(err(ErrorCode::ConsentRequired));
        }
    }
    // The device others will fetch a KeyPackage for must be one of the joiner's own,
    // logged and not revoked.
    if let Some(d) = &device {
        let found = state
            .store
            .device(&auth.principal.to_string(), d)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "device lookup failed");
                err(ErrorCode::Internal)
            })?;
        if !found.is_some_and(|f| f.is_active()) {
            state
                .audit(refuse(ErrorCode::UnknownDevice))
                .await
                .map_err(audit_refused)?;
            return Err(err(ErrorCode::UnknownDevice));
        }
    }

    let joiner = Joiner {
        id: conn.id,
        principal: auth.principal.clone(),
        role: auth.role,
        label: auth.label.clone(),
        device,
    };
    let closes_at = appointment.end().plus_secs(state.settings.join_grace_s);
    let hub = state.hub();
    let result = loop {
        let slot = hub
            .rooms
            .entry(id)
            .or_insert_with(|| {
                let media_room = hub.media_room_id();
                Arc::new(Mutex::new(RoomSlot {
                    room: Consultation::new(id, media_room, closes_at),
                    lane: MediaLane::new(media_room),
                    retired: false,
                }))
            })
            .clone();
        let mut g = slot.lock();
        if g.retired {
            drop(g);
            std::thread::yield_now();
            continue;
        }
        hub.conns.insert(
            conn.id,
            ConnEntry {
                tx: conn.tx.clone(),
                media_room: g.room.media_room(),
            },
        );
        let res = g.room.handle_join(t, joiner.clone());
        drain(state, &mut g);
        break res;
    };
    match result {
        Ok(outcome) => {
            conn.room = Some(id);
            let action = match outcome {
                JoinOutcome::Joined => AuditAction::JoinOk,
                JoinOutcome::Waiting => AuditAction::JoinWaiting,
                // Admitted again within the rejoin grace: a join, not a waiting one.
                JoinOutcome::Readmitted => AuditAction::JoinOk,
            };
            let recorded = state
                .audit(
                    conn.event(action, Outcome::Success)
                        .target(id)
                        .patient_opt(appointment.patient)
                        .detail(conn.id.to_string()),
                )
                .await;
            if let Err(e) = recorded {
                // Fail closed: take the joiner out again before anyone acts on it.
                conn.room = None;
                let _ = with_room(state, id, |r| {
                    r.handle_leave(now(), conn.id, LeaveReason::Disconnected)
                });
                hub.conns.remove(&conn.id);
                return Err(audit_refused(e));
            }
            Ok(())
        }
        Err(e) => {
            hub.conns.remove(&conn.id);
            state.audit(refuse(e.code())).await.map_err(audit_refused)?;
            Err(e.into())
        }
    }
}

/// Run `f` on the live room of `appt` and dispatch what it produced; retires the
/// room once it is empty or ended. `None` if there is no live room.
fn with_room<R>(
    state: &AppState,
    appt: AppointmentId,
    f: impl FnOnce(&mut Consultation) -> R,
) -> Option<R> {
    with_slot(state, appt, |slot| f(&mut slot.room))
}

/// [`with_room`] with the whole slot (the room and its media lane).
fn with_slot<R>(
    state: &AppState,
    appt: AppointmentId,
    f: impl FnOnce(&mut RoomSlot) -> R,
) -> Option<R> {
    let hub = state.hub();
    let slot = hub.rooms.get(&appt)?.value().clone();
    let mut g = slot.lock();
    if g.retired {
        return None;
    }
    let r = f(&mut g);
    drain(state, &mut g);
    if g.room.is_empty() || g.room.is_ended() {
        g.retired = true;
        drop(g);
        hub.rooms.remove_if(&appt, |_, v| Arc::ptr_eq(v, &slot));
    }
    Some(r)
}

fn drain(state: &AppState, slot: &mut RoomSlot) {
    while let Some(out) = slot.room.poll_output() {
        match out {
            RoomOutput::Send { to, msg } => send_to(state, to, Outbound::Msg(msg)),
            RoomOutput::Close { who } => send_to(state, who, Outbound::Close),
            RoomOutput::Media(cmd) => slot.lane.room_cmd(&state.media, cmd),
        }
    }
}

fn send_to(state: &AppState, to: ParticipantId, out: Outbound) {
    let Some(entry) = state.hub().conns.get(&to) else {
        return;
    };
    match entry.tx.try_send(out) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(Outbound::Close)) => {
            let tx = entry.tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(Outbound::Close).await;
            });
        }
        Err(_) => tracing::debug!(
            participant = to.0,
            "dropped a message to a slow or gone connection"
        ),
    }
}

/// Forward a media plane event to the participant it is about.
pub(crate) fn route_media_event(state: &AppState, ev: MediaEvent) {
    let (room, who, msg) = match ev {
        MediaEvent::Offer {
            room,
            participant,
            sdp,
        } => (room, participant, ServerMsg::MediaOffer { sdp }),
        MediaEvent::Candidate {
            room,
            participant,
            candidate,
        } => (room, participant, ServerMsg::IceCandidate { candidate }),
        MediaEvent::Connected { participant, .. } => {
            tracing::debug!(participant = participant.0, "media connected");
            return;
        }
        MediaEvent::Disconnected {
            participant,
            reason,
            ..
        } => {
            tracing::debug!(participant = participant.0, %reason, "media disconnected");
            return;
        }
    };
    let pid = ParticipantId(who.0);
    let Some(entry) = state.hub().conns.get(&pid) else {
        return;
    };
    // A late event for a room the participant is no longer in is dropped.
    if entry.media_room == room {
        let _ = entry.tx.try_send(Outbound::Msg(msg));
    }
}
