//! Appointments: listing and booking (`/api/appointments`). Documented in
//! docs/protocol.md.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiResult, AppState, Authed, clinical, label_of, now};
use crate::audit::{AuditAction, Outcome};
use crate::crypto::ctx;
use crate::model::{AccountId, AppointmentId, AppointmentStatus, Principal, Role, Timestamp};
use crate::policy;
use crate::store::{AccountRecord, Appointment, AppointmentQuery, NewAppointment};

#[derive(Serialize)]
pub struct PersonRef {
    pub(super) id: AccountId,
    pub(super) label: String,
}

#[derive(Serialize)]
pub struct AppointmentView {
    id: AppointmentId,
    doctor: PersonRef,
    patient: Option<PersonRef>,
    start: i64,
    duration_s: i64,
    status: AppointmentStatus,
    /// Only for the doctor and patient of the appointment.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// Only in the doctor's own list: how many people are in the consultation's
    /// waiting room now (the patient, invited guests), so the list can say
    /// "patient waiting" before the doctor opens it.
    #[serde(skip_serializing_if = "Option::is_none")]
    waiting: Option<usize>,
}

async fn person(state: &AppState, id: AccountId) -> ApiResult<PersonRef> {
    let label = match state.store.account(id).await? {
        Some(a) => label_of(state, &a),
        None => "unknown".into(),
    };
    Ok(PersonRef { id, label })
}

pub(super) async fn view(
    state: &AppState,
    a: &Appointment,
    with_reason: bool,
) -> ApiResult<AppointmentView> {
    let patient = match a.patient {
        Some(p) => Some(person(state, p).await?),
        None => None,
    };
    let doctor = person(state, a.doctor).await?;
    Ok(AppointmentView::of(state, a, doctor, patient, with_reason))
}

impl AppointmentView {
    /// The view of `a` with its people already named; the reason is opened only when
    /// `with_reason` (the caller's policy decided).
    pub(super) fn of(
        state: &AppState,
        a: &Appointment,
        doctor: PersonRef,
        patient: Option<PersonRef>,
        with_reason: bool,
    ) -> Self {
        let reason = match (&a.reason, with_reason) {
            (Some(r), true) => state.keyring.open_string(ctx::REASON, r).ok(),
            _ => None,
        };
        AppointmentView {
            id: a.id,
            doctor,
            patient,
            start: a.start.secs(),
            duration_s: a.duration_s,
            status: a.status,
            reason,
            waiting: None,
        }
    }
}

pub async fn list_appointments(
    State(state): State<AppState>,
    s: Authed,
) -> ApiResult<Json<Vec<AppointmentView>>> {
    let me = s.account_id();
    let list = match (s.session.role, me) {
        (Role::Doctor, Some(id)) => {
            state
                .store
                .list_appointments(AppointmentQuery {
                    doctor: Some(id),
                    ..Default::default()
                })
                .await?
        }
        (Role::Patient, Some(id)) => {
            state
                .store
                .list_appointments(AppointmentQuery {
                    patient: Some(id),
                    ..Default::default()
                })
                .await?
        }
        (Role::Staff, _) => {
            state
                .store
                .list_appointments(AppointmentQuery::default())
                .await?
        }
        (Role::Guest, _) => match s.session.scope {
            Some(id) => state.store.appointment(id).await?.into_iter().collect(),
            None => vec![],
        },
        _ => {
            state
                .audit(s.event(AuditAction::AppointmentsListed, Outcome::Denied))
                .await?;
            return Err(ApiError::Forbidden);
        }
    };
    let mut out = Vec::with_capacity(list.len());
    for a in &list {
        let mut v = view(&state, a, clinical(s.session.role)).await?;
        // The doctor's list is of their own appointments only (queried by doctor
        // above); booked ones are the only ones a waiting room can be open for.
        if s.session.role == Role::Doctor && a.status == AppointmentStatus::Booked {
            v.waiting = Some(state.waiting_in(a.id));
        }
        out.push(v);
    }
    // One entry per appointment shown, naming its patient, so that the per-patient
    // access report lists whoever listed that patient's appointments; all of them
    // commit together before anything is returned (fail closed).
    let mut events: Vec<_> = list
        .iter()
        .map(|a| {
            s.event(AuditAction::AppointmentsListed, Outcome::Success)
                .target(a.id)
                .patient_opt(a.patient)
        })
        .collect();
    if events.is_empty() {
        events.push(s.event(AuditAction::AppointmentsListed, Outcome::Success));
    }
    state
        .commit_audited(state.store.begin().await?, events)
        .await?;
    Ok(Json(out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BookReq {
    doctor: AccountId,
    patient: Option<AccountId>,
    /// Unix seconds.
    start: i64,
    duration_min: i64,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Serialize)]
pub struct BookResp {
    id: AppointmentId,
}

/// The booking policy's decision on `doctor` and `patient` for the caller, with the
/// facts it needs read from the store. Booking and moving both ask here, so a moved
/// appointment is held to the rule a new one is.
pub(super) async fn booking_decision(
    state: &AppState,
    s: &Authed,
    doctor: AccountId,
    patient: Option<AccountId>,
) -> ApiResult<Result<(), policy::BookingRefusal>> {
    let facts = |a: AccountRecord| policy::AccountFacts {
        id: a.id,
        role: a.role,
        disabled: a.disabled,
    };
    let doctor_facts = state.store.account(doctor).await?.map(facts);
    let patient_facts = match patient {
        Some(p) => Some(state.store.account(p).await?.map(facts)),
        None => None,
    };
    let already_treats = match patient {
        Some(p) if s.session.role == Role::Doctor => {
            state
                .store
                .share_appointment(&Principal::Account(doctor), &Principal::Account(p))
                .await?
        }
        _ => false,
    };
    Ok(policy::check_booking(
        s.session.subject(),
        policy::BookingRequest {
            doctor: doctor_facts.as_ref(),
            patient: patient_facts.as_ref().map(Option::as_ref),
            already_treats,
        },
    ))
}

pub async fn book_appointment(
    State(state): State<AppState>,
    s: Authed,
    Json(req): Json<BookReq>,
) -> ApiResult<(StatusCode, Json<BookResp>)> {
    let me = s.account_id();
    if !(policy::DURATION_MIN_MINUTES..=policy::DURATION_MAX_MINUTES).contains(&req.duration_min) {
        return Err(ApiError::BadRequest("duration_min must be 5..=480"));
    }
    if req
        .reason
        .as_ref()
        .is_some_and(|r| r.len() > policy::REASON_MAX_BYTES)
    {
        return Err(ApiError::BadRequest("reason is too long"));
    }
    if let Err(refusal) = booking_decision(&state, &s, req.doctor, req.patient).await? {
        state
            .audit(
                s.event(AuditAction::AppointmentBookRefused, Outcome::Denied)
                    .detail(refusal.to_string()),
            )
            .await?;
        // One answer whatever the reason, so ids cannot be probed for patients.
        return Err(ApiError::Forbidden);
    }
    let booker = me.ok_or(ApiError::Forbidden)?;
    let reason = req
        .reason
        .filter(|r| !r.is_empty())
        .map(|r| state.keyring.seal(ctx::REASON, r.as_bytes(), &mut OsRng));
    // The appointment and its entry commit together, or neither does.
    let mut tx = state.store.begin().await?;
    let id = tx
        .create_appointment(NewAppointment {
            doctor: req.doctor,
            patient: req.patient,
            start: Timestamp::from_secs(req.start),
            duration_s: req.duration_min * 60,
            reason,
            created_by: booker,
            created_at: now(),
        })
        .await?;
    state
        .commit_audited(
            tx,
            vec![
                s.event(AuditAction::AppointmentBooked, Outcome::Success)
                    .target(id)
                    .patient_opt(req.patient),
            ],
        )
        .await?;
    Ok((StatusCode::CREATED, Json(BookResp { id })))
}
