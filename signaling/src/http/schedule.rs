//! The front desk's schedule: the clinic's appointments over a period with who is in
//! each consultation right now (`GET /api/schedule`), moving and cancelling
//! (`PATCH /api/appointments/{id}`, `POST /api/appointments/{id}/cancel`) and the live
//! waiting rooms (`GET /api/waiting-rooms`). Who may do what is
//! [`crate::policy::schedule_scope`] and [`crate::policy::check_change`]. Documented
//! in docs/protocol.md ("Front desk").

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::{Deserialize, Serialize};

use super::appointments::{AppointmentView, PersonRef, booking_decision};
use super::{ApiError, ApiResult, AppState, Authed, label_of, now};
use crate::audit::{AuditAction, AuditEvent, Outcome};
use crate::model::{AccountId, AppointmentId, AppointmentStatus, Role, Timestamp};
use crate::policy::{self, Change, ChangeRefusal, ScheduleScope};
use crate::room::{MemberState, Presence};
use crate::store::{Appointment, AppointmentChange, AppointmentQuery};

/// A page polling the waiting rooms records what it was shown again after this long
/// even when nothing changed.
pub(crate) const VIEW_REAUDIT_S: i64 = 600;

/// Display labels of accounts, looked up once per request.
struct Labels<'a> {
    state: &'a AppState,
    seen: HashMap<AccountId, String>,
}

impl<'a> Labels<'a> {
    fn new(state: &'a AppState) -> Self {
        Labels {
            state,
            seen: HashMap::new(),
        }
    }

    async fn person(&mut self, id: AccountId) -> ApiResult<PersonRef> {
        if let Some(l) = self.seen.get(&id) {
            return Ok(PersonRef {
                id,
                label: l.clone(),
            });
        }
        let label = match self.state.store.account(id).await? {
            Some(a) => label_of(self.state, &a),
            None => "unknown".into(),
        };
        self.seen.insert(id, label.clone());
        Ok(PersonRef { id, label })
    }
}

#[derive(Serialize)]
pub struct PresentPerson {
    principal: String,
    role: Role,
    label: String,
    /// Unix milliseconds: when they joined (the waiting room, or the call).
    since: Timestamp,
}

#[derive(Serialize, Default)]
pub struct PresenceView {
    /// Whether the appointment's doctor is in the consultation.
    doctor_in: bool,
    waiting: Vec<PresentPerson>,
    in_call: Vec<PresentPerson>,
}

impl PresenceView {
    fn of(p: &[Presence]) -> Self {
        let mut v = PresenceView::default();
        for m in p {
            let person = PresentPerson {
                principal: m.principal.to_string(),
                role: m.role,
                label: m.label.clone(),
                since: m.since,
            };
            match m.state {
                MemberState::Waiting => v.waiting.push(person),
                MemberState::Admitted => {
                    v.doctor_in |= m.role == Role::Doctor;
                    v.in_call.push(person);
                }
            }
        }
        v
    }

    /// What a viewer saw, to tell whether a later poll shows something new.
    fn signature(&self) -> String {
        let mut s = String::new();
        for (tag, list) in [("w", &self.waiting), ("c", &self.in_call)] {
            for p in list {
                s.push_str(tag);
                s.push_str(&p.principal);
                s.push(';');
            }
        }
        s
    }
}

#[derive(Serialize)]
pub struct ScheduleItem {
    /// As in `GET /api/appointments`; the reason only for the appointment's own doctor
    /// ([`policy::sees_reason`]).
    #[serde(flatten)]
    appointment: AppointmentView,
    presence: PresenceView,
}

async fn item(
    state: &AppState,
    labels: &mut Labels<'_>,
    s: &Authed,
    a: &Appointment,
) -> ApiResult<ScheduleItem> {
    let patient = match a.patient {
        Some(p) => Some(labels.person(p).await?),
        None => None,
    };
    let doctor = labels.person(a.doctor).await?;
    let with_reason = policy::sees_reason(s.session.subject(), &a.facts());
    Ok(ScheduleItem {
        appointment: AppointmentView::of(state, a, doctor, patient, with_reason),
        presence: PresenceView::of(&state.presence(a.id)),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Period {
    /// Unix seconds.
    from: i64,
    /// Unix seconds, exclusive.
    to: i64,
}

#[derive(Serialize)]
pub struct ScheduleResp {
    from: i64,
    to: i64,
    appointments: Vec<ScheduleItem>,
}

/// Refuse `s` (audited as `action`, denied) when it has no schedule.
async fn scope_of(state: &AppState, s: &Authed, action: AuditAction) -> ApiResult<ScheduleScope> {
    match policy::schedule_scope(s.session.subject()) {
        Ok(scope) => Ok(scope),
        Err(refusal) => {
            state
                .audit(s.event(action, Outcome::Denied).detail(refusal.to_string()))
                .await?;
            Err(ApiError::Forbidden)
        }
    }
}

pub async fn schedule(
    State(state): State<AppState>,
    s: Authed,
    q: Result<Query<Period>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<ScheduleResp>> {
    let scope = scope_of(&state, &s, AuditAction::AppointmentsListed).await?;
    let Ok(Query(p)) = q else {
        return Err(ApiError::BadRequest(
            "from and to (Unix seconds) are required",
        ));
    };
    if p.to <= p.from || p.to - p.from > policy::SCHEDULE_MAX_DAYS * 86_400 {
        return Err(ApiError::BadRequest(
            "the period must be non-empty and at most 31 days",
        ));
    }
    let list = state
        .store
        .list_appointments(AppointmentQuery {
            doctor: match scope {
                ScheduleScope::Clinic => None,
                ScheduleScope::Doctor(d) => Some(d),
            },
            from: Some(Timestamp::from_secs(p.from)),
            to: Some(Timestamp::from_secs(p.to)),
            ..Default::default()
        })
        .await?;
    let mut labels = Labels::new(&state);
    let mut out = Vec::with_capacity(list.len());
    for a in &list {
        out.push(item(&state, &mut labels, &s, a).await?);
    }
    // As for `GET /api/appointments`: one entry per appointment shown, naming its
    // patient, all committed before anything is returned.
    let mut events: Vec<AuditEvent> = list
        .iter()
        .map(|a| {
            s.event(AuditAction::AppointmentsListed, Outcome::Success)
                .target(a.id)
                .patient_opt(a.patient)
                .detail("schedule")
        })
        .collect();
    if events.is_empty() {
        events.push(
            s.event(AuditAction::AppointmentsListed, Outcome::Success)
                .detail("schedule"),
        );
    }
    state
        .commit_audited(state.store.begin().await?, events)
        .await?;
    Ok(Json(ScheduleResp {
        from: p.from,
        to: p.to,
        appointments: out,
    }))
}

#[derive(Serialize)]
pub struct WaitingRoom {
    appointment: AppointmentId,
    doctor: PersonRef,
    patient: Option<PersonRef>,
    start: i64,
    duration_s: i64,
    #[serde(flatten)]
    presence: PresenceView,
}

/// Whether `actor` was already shown `signature` for `room` recently; records that it
/// is being shown now otherwise.
fn seen_recently(
    state: &AppState,
    actor: &str,
    room: Option<AppointmentId>,
    signature: &str,
    t: Timestamp,
) -> bool {
    let key = (actor.to_owned(), room);
    if let Some(prev) = state.views.get(&key)
        && prev.0 == signature
        && t.0 - prev.1.0 < VIEW_REAUDIT_S * 1000
    {
        return true;
    }
    state.views.insert(key, (signature.to_owned(), t));
    false
}

/// Forget views older than [`VIEW_REAUDIT_S`] (they would be audited again anyway).
pub(crate) fn prune_views(state: &AppState, t: Timestamp) {
    state
        .views
        .retain(|_, (_, at)| t.0 - at.0 < VIEW_REAUDIT_S * 1000);
}

pub async fn waiting_rooms(
    State(state): State<AppState>,
    s: Authed,
) -> ApiResult<Json<Vec<WaitingRoom>>> {
    let scope = scope_of(&state, &s, AuditAction::WaitingRoomsViewed).await?;
    let mut labels = Labels::new(&state);
    let mut out = Vec::new();
    let mut shown = Vec::new();
    for (id, people) in state.all_presence() {
        let Some(a) = state.store.appointment(id).await? else {
            continue;
        };
        if !policy::in_scope(scope, &a.facts()) {
            continue;
        }
        let patient = match a.patient {
            Some(p) => Some(labels.person(p).await?),
            None => None,
        };
        let presence = PresenceView::of(&people);
        shown.push((a.id, a.patient, presence.signature()));
        out.push(WaitingRoom {
            appointment: a.id,
            doctor: labels.person(a.doctor).await?,
            patient,
            start: a.start.secs(),
            duration_s: a.duration_s,
            presence,
        });
    }
    // Who is waiting where is about patients: each room shown is recorded (naming its
    // patient), but a page polling every few seconds records a room again only when
    // what it shows changed or after ten minutes.
    let t = now();
    let actor = s.actor();
    let mut events = Vec::new();
    for (id, patient, sig) in &shown {
        if !seen_recently(&state, &actor, Some(*id), sig, t) {
            events.push(
                s.event(AuditAction::WaitingRoomsViewed, Outcome::Success)
                    .target(*id)
                    .patient_opt(*patient),
            );
        }
    }
    if shown.is_empty() && !seen_recently(&state, &actor, None, "", t) {
        events.push(s.event(AuditAction::WaitingRoomsViewed, Outcome::Success));
    }
    if !events.is_empty()
        && let Err(e) = state
            .commit_audited(state.store.begin().await?, events)
            .await
    {
        // Nothing was recorded, so nothing counts as seen.
        for (id, _, _) in &shown {
            state.views.remove(&(actor.clone(), Some(*id)));
        }
        state.views.remove(&(actor.clone(), None));
        return Err(e);
    }
    Ok(Json(out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveReq {
    /// New start, Unix seconds.
    #[serde(default)]
    start: Option<i64>,
    #[serde(default)]
    duration_min: Option<i64>,
    /// Another doctor (staff only: a doctor may not hand an appointment on).
    #[serde(default)]
    doctor: Option<AccountId>,
}

#[derive(Serialize)]
pub struct ChangeResp {
    id: AppointmentId,
    doctor: AccountId,
    start: i64,
    duration_s: i64,
    status: AppointmentStatus,
}

/// The appointment if `s` may change it now; a refusal is audited
/// (`appointment_change_refused`, its reason in the detail) and answered `403`
/// (not yours, wrong role) or `409` (ended, started, in progress).
async fn changeable(
    state: &AppState,
    s: &Authed,
    id: AppointmentId,
    change: Change,
) -> ApiResult<Appointment> {
    let appt = state.store.appointment(id).await?;
    let live = appt
        .as_ref()
        .is_some_and(|a| !state.presence(a.id).is_empty());
    let facts = appt.as_ref().map(Appointment::facts);
    let verdict = policy::check_change(s.session.subject(), change, facts.as_ref(), now(), live);
    match (verdict, appt) {
        (Ok(_), Some(a)) => Ok(a),
        (verdict, appt) => {
            let refusal = verdict.err().unwrap_or(ChangeRefusal::NotYours);
            let kind = match change {
                Change::Move => "move",
                Change::Cancel => "cancel",
            };
            state
                .audit(
                    s.event(AuditAction::AppointmentChangeRefused, Outcome::Denied)
                        .target(id)
                        .patient_opt(appt.and_then(|a| a.patient))
                        .detail(format!("{kind}:{refusal}")),
                )
                .await?;
            Err(match refusal {
                ChangeRefusal::NotYours | ChangeRefusal::WrongRole => ApiError::Forbidden,
                ChangeRefusal::Ended => ApiError::Conflict("the appointment is ended or cancelled"),
                ChangeRefusal::Started => ApiError::Conflict("the appointment has already started"),
                ChangeRefusal::InProgress => {
                    ApiError::Conflict("someone is in the consultation right now")
                }
            })
        }
    }
}

pub async fn move_appointment(
    State(state): State<AppState>,
    s: Authed,
    Path(id): Path<i64>,
    Json(req): Json<MoveReq>,
) -> ApiResult<Json<ChangeResp>> {
    let id = AppointmentId(id);
    let a = changeable(&state, &s, id, Change::Move).await?;
    if req.start.is_none() && req.duration_min.is_none() && req.doctor.is_none() {
        return Err(ApiError::BadRequest(
            "give a new start, duration_min or doctor",
        ));
    }
    let change = AppointmentChange {
        doctor: req.doctor.unwrap_or(a.doctor),
        start: req.start.map(Timestamp::from_secs).unwrap_or(a.start),
        duration_s: match req.duration_min {
            Some(m) => {
                if !(policy::DURATION_MIN_MINUTES..=policy::DURATION_MAX_MINUTES).contains(&m) {
                    return Err(ApiError::BadRequest("duration_min must be 5..=480"));
                }
                m * 60
            }
            None => a.duration_s,
        },
    };
    if change.start <= now() {
        return Err(ApiError::BadRequest("the new start is in the past"));
    }
    // The moved appointment must be one the caller could book: the same booking
    // policy (another doctor only by staff, active doctor and patient).
    if let Err(refusal) = booking_decision(&state, &s, change.doctor, a.patient).await? {
        state
            .audit(
                s.event(AuditAction::AppointmentChangeRefused, Outcome::Denied)
                    .target(id)
                    .patient_opt(a.patient)
                    .detail(format!("move:booking:{refusal}")),
            )
            .await?;
        return Err(ApiError::Forbidden);
    }
    let mut detail = Vec::new();
    if change.start != a.start {
        detail.push(format!("start:{}->{}", a.start.secs(), change.start.secs()));
    }
    if change.duration_s != a.duration_s {
        detail.push(format!(
            "duration_s:{}->{}",
            a.duration_s, change.duration_s
        ));
    }
    if change.doctor != a.doctor {
        detail.push(format!("doctor:{}->{}", a.doctor, change.doctor));
    }
    // The change and its entry commit together, or neither does.
    let mut tx = state.store.begin().await?;
    if !tx.move_appointment(id, change).await? {
        return Err(ApiError::Conflict("the appointment is ended or cancelled"));
    }
    state
        .commit_audited(
            tx,
            vec![
                s.event(AuditAction::AppointmentMoved, Outcome::Success)
                    .target(id)
                    .patient_opt(a.patient)
                    .detail(detail.join(" ")),
            ],
        )
        .await?;
    Ok(Json(ChangeResp {
        id,
        doctor: change.doctor,
        start: change.start.secs(),
        duration_s: change.duration_s,
        status: AppointmentStatus::Booked,
    }))
}

pub async fn cancel_appointment(
    State(state): State<AppState>,
    s: Authed,
    Path(id): Path<i64>,
) -> ApiResult<Json<ChangeResp>> {
    let id = AppointmentId(id);
    let a = changeable(&state, &s, id, Change::Cancel).await?;
    let mut tx = state.store.begin().await?;
    if !tx.cancel_appointment(id).await? {
        return Err(ApiError::Conflict("the appointment is ended or cancelled"));
    }
    state
        .commit_audited(
            tx,
            vec![
                s.event(AuditAction::AppointmentCancelled, Outcome::Success)
                    .target(id)
                    .patient_opt(a.patient),
            ],
        )
        .await?;
    Ok(Json(ChangeResp {
        id,
        doctor: a.doctor,
        start: a.start.secs(),
        duration_s: a.duration_s,
        status: AppointmentStatus::Cancelled,
    }))
}

/// `GET /api/doctors`: the clinic's active doctors, for the booking form (staff and
/// admins: those whose schedule is the clinic's; a doctor books only for themself).
pub async fn doctors(State(state): State<AppState>, s: Authed) -> ApiResult<Json<Vec<PersonRef>>> {
    match policy::schedule_scope(s.session.subject()) {
        Ok(ScheduleScope::Clinic) => {}
        Ok(ScheduleScope::Doctor(_)) | Err(_) => {
            state
                .audit(
                    s.event(AuditAction::DoctorsListed, Outcome::Denied)
                        .detail("not allowed for this role"),
                )
                .await?;
            return Err(ApiError::Forbidden);
        }
    }
    let mut out: Vec<PersonRef> = state
        .store
        .list_accounts()
        .await?
        .iter()
        .filter(|a| a.role == Role::Doctor && !a.disabled)
        .map(|a| PersonRef {
            id: a.id,
            label: label_of(&state, a),
        })
        .collect();
    out.sort_by(|a, b| a.label.cmp(&b.label));
    state
        .audit(
            s.event(AuditAction::DoctorsListed, Outcome::Success)
                .detail(format!("{} doctors", out.len())),
        )
        .await?;
    Ok(Json(out))
}
