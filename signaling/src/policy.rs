//! Who may act on an appointment: the one rule behind joining a consultation, reading
//! its chat history and inviting a guest to it.
//!
//! Sans-IO: the edge looks the appointment up and passes its facts and `now` in; the
//! answer is a value. Keeping the rule in one place means a change to it (a new role,
//! a new state) cannot reach one endpoint and miss another.

use crate::model::{AccountId, AppointmentId, AppointmentStatus, Principal, Role, Timestamp};

/// Who is asking: the parts of a session the rule reads.
#[derive(Clone, Copy, Debug)]
pub struct Subject<'a> {
    pub principal: &'a Principal,
    pub role: Role,
    /// The one appointment a guest session is good for.
    pub scope: Option<AppointmentId>,
}

/// The parts of an appointment the rule reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppointmentFacts {
    pub id: AppointmentId,
    pub doctor: AccountId,
    pub patient: Option<AccountId>,
    pub status: AppointmentStatus,
    pub start: Timestamp,
    pub end: Timestamp,
}

/// What the subject wants to do with the appointment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// Enter the consultation (the waiting room, then the call). Only while it is
    /// booked and within `grace_s` of its window.
    Join { now: Timestamp, grace_s: i64 },
    /// Read the stored (end-to-end encrypted) chat of the consultation.
    ReadChat,
    /// Create a guest invite link for a consultation that is still booked.
    Invite,
}

/// How the subject stands to the appointment, when the rule lets them act.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relation {
    /// The appointment's doctor.
    Doctor,
    /// The appointment's patient.
    Patient,
    /// A guest whose invite is for this appointment.
    Guest,
    /// Scheduling staff, who manage every appointment but see no clinical content.
    Staff,
}

/// Why the rule refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No such appointment, or not the subject's: one answer for both, so appointment
    /// ids cannot be probed.
    #[error("not your consultation")]
    NotYours,
    /// The subject's role never does this (staff or admin entering a consultation).
    #[error("not allowed for this role")]
    WrongRole,
    /// The appointment is ended or cancelled.
    #[error("the consultation has ended")]
    Ended,
    /// Too early or too late to join.
    #[error("outside the consultation window")]
    OutsideWindow,
}

/// How `s` stands to `a`, whatever they want to do: `None` for no relation.
pub fn relation(s: Subject<'_>, a: &AppointmentFacts) -> Option<Relation> {
    match (s.principal, s.role) {
        (Principal::Account(me), Role::Doctor) if a.doctor == *me => Some(Relation::Doctor),
        (Principal::Account(me), Role::Patient) if a.patient == Some(*me) => {
            Some(Relation::Patient)
        }
        (Principal::Guest(_), Role::Guest) if s.scope == Some(a.id) => Some(Relation::Guest),
        (Principal::Account(_), Role::Staff) => Some(Relation::Staff),
        _ => None,
    }
}

/// May `s` do `act` on `a` (`None`: no such appointment)?
pub fn check(s: Subject<'_>, act: Act, a: Option<&AppointmentFacts>) -> Result<Relation, Refusal> {
    let a = a.ok_or(Refusal::NotYours)?;
    let rel = relation(s, a);
    match act {
        Act::Join { now, grace_s } => {
            // Staff and admins never sit in a consultation, assigned or not.
            if matches!(s.role, Role::Staff | Role::Admin) {
                return Err(Refusal::WrongRole);
            }
            let rel = rel.ok_or(Refusal::NotYours)?;
            if a.status != AppointmentStatus::Booked {
                return Err(Refusal::Ended);
            }
            if now < a.start.plus_secs(-grace_s) || now > a.end.plus_secs(grace_s) {
                return Err(Refusal::OutsideWindow);
            }
            Ok(rel)
        }
        Act::ReadChat => match rel {
            Some(r @ (Relation::Doctor | Relation::Patient | Relation::Guest)) => Ok(r),
            _ => Err(Refusal::NotYours),
        },
        Act::Invite => {
            let rel = match rel {
                Some(r @ (Relation::Doctor | Relation::Staff)) => r,
                _ => return Err(Refusal::NotYours),
            };
            if a.status != AppointmentStatus::Booked {
                return Err(Refusal::Ended);
            }
            Ok(rel)
        }
    }
}

/// The parts of an account booking reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccountFacts {
    pub id: AccountId,
    pub role: Role,
    pub disabled: bool,
}

/// An appointment someone asks to book, with what the edge found about its people.
#[derive(Clone, Copy, Debug)]
pub struct BookingRequest<'a> {
    /// The doctor's account; `None` when the id names no account.
    pub doctor: Option<&'a AccountFacts>,
    /// `None`: no patient yet. `Some(None)`: the id names no account.
    pub patient: Option<Option<&'a AccountFacts>>,
    /// Whether the doctor already has an appointment with this patient (a care
    /// relationship, started by staff booking a first visit).
    pub already_treats: bool,
}

/// Why a booking was refused. The API answers all of them alike ("not allowed"), so a
/// doctor cannot learn whether an id is a patient; the audit entry says which.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BookingRefusal {
    /// Only staff and doctors book.
    #[error("role")]
    Role,
    /// A doctor books only for themselves.
    #[error("not_self")]
    NotSelf,
    /// The doctor id is not an active doctor.
    #[error("doctor")]
    Doctor,
    /// The patient id is not an active patient.
    #[error("patient")]
    Patient,
    /// A doctor books only patients they already treat.
    #[error("no_relationship")]
    NoRelationship,
}

/// The booking policy: scheduling staff book any active doctor with any active patient
/// (staff start care relationships); a doctor books only for themselves, with no
/// patient or with a patient they already have an appointment with.
pub fn check_booking(s: Subject<'_>, b: BookingRequest<'_>) -> Result<(), BookingRefusal> {
    let me = match (s.principal, s.role) {
        (Principal::Account(me), Role::Staff | Role::Doctor) => *me,
        _ => return Err(BookingRefusal::Role),
    };
    let doctor = b
        .doctor
        .filter(|d| d.role == Role::Doctor && !d.disabled)
        .ok_or(BookingRefusal::Doctor)?;
    if s.role == Role::Doctor && doctor.id != me {
        return Err(BookingRefusal::NotSelf);
    }
    let Some(patient) = b.patient else {
        return Ok(());
    };
    patient
        .filter(|p| p.role == Role::Patient && !p.disabled)
        .ok_or(BookingRefusal::Patient)?;
    if s.role == Role::Doctor && !b.already_treats {
        return Err(BookingRefusal::NoRelationship);
    }
    Ok(())
}

/// Shortest and longest appointment, in minutes.
pub const DURATION_MIN_MINUTES: i64 = 5;
pub const DURATION_MAX_MINUTES: i64 = 480;
/// Longest appointment reason, in bytes.
pub const REASON_MAX_BYTES: usize = 2000;
/// Longest period one schedule read covers.
pub const SCHEDULE_MAX_DAYS: i64 = 31;

/// A change to a booked appointment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Another time, length or doctor. The new doctor and patient go through
    /// [`check_booking`] as well, so moving never gets round the booking policy.
    Move,
    /// Call it off.
    Cancel,
}

/// Why a change was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChangeRefusal {
    /// No such appointment, or not the subject's (a doctor's other doctors'
    /// appointments): one answer, as for [`Refusal::NotYours`].
    #[error("not_yours")]
    NotYours,
    /// Patients, guests and admins do not change appointments.
    #[error("role")]
    WrongRole,
    /// Ended or cancelled already.
    #[error("ended")]
    Ended,
    /// Its start time has passed: what happened stays on record as it was.
    #[error("started")]
    Started,
    /// Someone is in its waiting room or call right now.
    #[error("in_progress")]
    InProgress,
}

/// May `s` make `change` to `a` (`None`: no such appointment) at `now`? `live` says
/// whether anyone is connected to its consultation. Scheduling staff change any
/// appointment, a doctor only their own; only booked appointments that have not
/// started and have nobody waiting or in the call.
pub fn check_change(
    s: Subject<'_>,
    _change: Change,
    a: Option<&AppointmentFacts>,
    now: Timestamp,
    live: bool,
) -> Result<Relation, ChangeRefusal> {
    // Moving and cancelling follow one rule today; the kind is passed so that a rule
    // that tells them apart changes here only.
    if !matches!(s.role, Role::Staff | Role::Doctor) {
        return Err(ChangeRefusal::WrongRole);
    }
    let a = a.ok_or(ChangeRefusal::NotYours)?;
    let rel = match relation(s, a) {
        Some(r @ (Relation::Staff | Relation::Doctor)) => r,
        _ => return Err(ChangeRefusal::NotYours),
    };
    if a.status != AppointmentStatus::Booked {
        return Err(ChangeRefusal::Ended);
    }
    if live {
        return Err(ChangeRefusal::InProgress);
    }
    if now >= a.start {
        return Err(ChangeRefusal::Started);
    }
    Ok(rel)
}

/// Which appointments a subject's schedule (and waiting-room overview) shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleScope {
    /// The whole clinic: scheduling staff and admins.
    Clinic,
    /// One doctor's own appointments.
    Doctor(AccountId),
}

/// Whose schedule `s` may read: staff and admins the clinic's, a doctor their own;
/// patients and guests none (they have `GET /api/appointments`).
pub fn schedule_scope(s: Subject<'_>) -> Result<ScheduleScope, Refusal> {
    match (s.principal, s.role) {
        (Principal::Account(_), Role::Staff | Role::Admin) => Ok(ScheduleScope::Clinic),
        (Principal::Account(me), Role::Doctor) => Ok(ScheduleScope::Doctor(*me)),
        _ => Err(Refusal::WrongRole),
    }
}

/// Whether what a schedule scope shows includes appointment `a`.
pub fn in_scope(scope: ScheduleScope, a: &AppointmentFacts) -> bool {
    match scope {
        ScheduleScope::Clinic => true,
        ScheduleScope::Doctor(d) => a.doctor == d,
    }
}

/// May `s` look patients up in the register and create patient accounts? Scheduling
/// staff and admins only. Doctors are refused on purpose: the booking policy never
/// tells a doctor whether an id is a patient, and a search of the whole register
/// would; a doctor finds their patients on their own schedule.
pub fn check_patient_register(s: Subject<'_>) -> Result<(), Refusal> {
    match (s.principal, s.role) {
        (Principal::Account(_), Role::Staff | Role::Admin) => Ok(()),
        _ => Err(Refusal::WrongRole),
    }
}

/// Whether the appointment's own data (its `reason`) may be shown to `s`: only to its
/// doctor. Staff book with a reason but do not read it back; admins read clinical
/// data only through break-glass.
pub fn sees_reason(s: Subject<'_>, a: &AppointmentFacts) -> bool {
    matches!(relation(s, a), Some(Relation::Doctor))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::InviteId;

    const DOCTOR: AccountId = AccountId(1);
    const PATIENT: AccountId = AccountId(2);
    const OTHER_DOCTOR: AccountId = AccountId(3);
    const OTHER_PATIENT: AccountId = AccountId(4);
    const STAFF: AccountId = AccountId(5);
    const ADMIN: AccountId = AccountId(6);
    const APPT: AppointmentId = AppointmentId(10);
    const GRACE: i64 = 600;

    fn appt(status: AppointmentStatus) -> AppointmentFacts {
        AppointmentFacts {
            id: APPT,
            doctor: DOCTOR,
            patient: Some(PATIENT),
            status,
            start: Timestamp::from_secs(10_000),
            end: Timestamp::from_secs(10_000 + 1800),
        }
    }

    fn who(p: &Principal, role: Role, scope: Option<AppointmentId>) -> Subject<'_> {
        Subject {
            principal: p,
            role,
            scope,
        }
    }

    fn join_at(secs: i64) -> Act {
        Act::Join {
            now: Timestamp::from_secs(secs),
            grace_s: GRACE,
        }
    }

    const DURING: i64 = 10_500;

    /// Every subject the rule knows, with what it should answer for a booked
    /// appointment now open: join, read chat, invite.
    #[allow(clippy::type_complexity)]
    fn table() -> Vec<(
        &'static str,
        Principal,
        Role,
        Option<AppointmentId>,
        [Result<Relation, Refusal>; 3],
    )> {
        use Refusal::*;
        use Relation as R;
        let g = |n| Principal::Guest(InviteId(n));
        let a = Principal::Account;
        vec![
            (
                "assigned doctor",
                a(DOCTOR),
                Role::Doctor,
                None,
                [Ok(R::Doctor), Ok(R::Doctor), Ok(R::Doctor)],
            ),
            (
                "other doctor",
                a(OTHER_DOCTOR),
                Role::Doctor,
                None,
                [Err(NotYours), Err(NotYours), Err(NotYours)],
            ),
            (
                "assigned patient",
                a(PATIENT),
                Role::Patient,
                None,
                [Ok(R::Patient), Ok(R::Patient), Err(NotYours)],
            ),
            (
                "other patient",
                a(OTHER_PATIENT),
                Role::Patient,
                None,
                [Err(NotYours), Err(NotYours), Err(NotYours)],
            ),
            (
                "invited guest",
                g(7),
                Role::Guest,
                Some(APPT),
                [Ok(R::Guest), Ok(R::Guest), Err(NotYours)],
            ),
            (
                "guest of another appointment",
                g(8),
                Role::Guest,
                Some(AppointmentId(11)),
                [Err(NotYours), Err(NotYours), Err(NotYours)],
            ),
            (
                "guest without scope",
                g(9),
                Role::Guest,
                None,
                [Err(NotYours), Err(NotYours), Err(NotYours)],
            ),
            (
                "staff",
                a(STAFF),
                Role::Staff,
                None,
                [Err(WrongRole), Err(NotYours), Ok(R::Staff)],
            ),
            (
                "admin",
                a(ADMIN),
                Role::Admin,
                None,
                [Err(WrongRole), Err(NotYours), Err(NotYours)],
            ),
            // A session whose principal does not match its role is nobody.
            (
                "guest principal with doctor role",
                g(7),
                Role::Doctor,
                Some(APPT),
                [Err(NotYours), Err(NotYours), Err(NotYours)],
            ),
            (
                "account with guest role",
                a(DOCTOR),
                Role::Guest,
                Some(APPT),
                [Err(NotYours), Err(NotYours), Err(NotYours)],
            ),
        ]
    }

    #[test]
    fn every_role_on_a_booked_open_appointment() {
        let a = appt(AppointmentStatus::Booked);
        for (name, p, role, scope, want) in table() {
            let s = who(&p, role, scope);
            let acts = [join_at(DURING), Act::ReadChat, Act::Invite];
            for (act, want) in acts.into_iter().zip(want) {
                assert_eq!(check(s, act, Some(&a)), want, "{name}: {act:?}");
            }
        }
    }

    #[test]
    fn an_unknown_appointment_looks_like_someone_elses() {
        for (name, p, role, scope, _) in table() {
            let s = who(&p, role, scope);
            for act in [join_at(DURING), Act::ReadChat, Act::Invite] {
                assert_eq!(check(s, act, None), Err(Refusal::NotYours), "{name}");
            }
        }
    }

    #[test]
    fn ended_and_cancelled_appointments_cannot_be_joined_or_invited_to() {
        for status in [AppointmentStatus::Ended, AppointmentStatus::Cancelled] {
            let a = appt(status);
            for (name, p, role, scope, want) in table() {
                let s = who(&p, role, scope);
                // Those without a relation get the same answer as before: an ended
                // appointment of someone else's reveals nothing either.
                let join = want[0].and(Err(Refusal::Ended));
                assert_eq!(check(s, join_at(DURING), Some(&a)), join, "{name}");
                let invite = want[2].and(Err(Refusal::Ended));
                assert_eq!(check(s, Act::Invite, Some(&a)), invite, "{name}");
                // The chat stays readable to its participants after the end.
                assert_eq!(check(s, Act::ReadChat, Some(&a)), want[1], "{name}");
            }
        }
    }

    #[test]
    fn joining_is_bounded_by_the_window_and_its_grace() {
        let a = appt(AppointmentStatus::Booked);
        let p = Principal::Account(PATIENT);
        let s = who(&p, Role::Patient, None);
        let start = 10_000;
        let end = start + 1800;
        for (at, ok) in [
            (start - GRACE - 1, false),
            (start - GRACE, true),
            (start, true),
            (end, true),
            (end + GRACE, true),
            (end + GRACE + 1, false),
        ] {
            let want = if ok {
                Ok(Relation::Patient)
            } else {
                Err(Refusal::OutsideWindow)
            };
            assert_eq!(check(s, join_at(at), Some(&a)), want, "at {at}");
        }
        // Someone else's appointment outside its window still says only "not yours".
        let o = Principal::Account(OTHER_PATIENT);
        let other = who(&o, Role::Patient, None);
        assert_eq!(
            check(other, join_at(start - GRACE - 1), Some(&a)),
            Err(Refusal::NotYours)
        );
    }

    #[test]
    fn an_appointment_without_a_patient_has_no_patient_to_match() {
        let mut a = appt(AppointmentStatus::Booked);
        a.patient = None;
        let p = Principal::Account(PATIENT);
        let s = who(&p, Role::Patient, None);
        assert_eq!(check(s, Act::ReadChat, Some(&a)), Err(Refusal::NotYours));
        let d = Principal::Account(DOCTOR);
        let s = who(&d, Role::Doctor, None);
        assert_eq!(check(s, Act::Invite, Some(&a)), Ok(Relation::Doctor));
    }

    mod booking {
        use super::super::*;
        use super::{ADMIN, DOCTOR, OTHER_DOCTOR, PATIENT, STAFF};
        use crate::model::InviteId;
        use BookingRefusal as B;

        fn acct(id: AccountId, role: Role) -> AccountFacts {
            AccountFacts {
                id,
                role,
                disabled: false,
            }
        }

        fn book(
            p: &Principal,
            role: Role,
            doctor: Option<&AccountFacts>,
            patient: Option<Option<&AccountFacts>>,
            already_treats: bool,
        ) -> Result<(), BookingRefusal> {
            let s = Subject {
                principal: p,
                role,
                scope: None,
            };
            check_booking(
                s,
                BookingRequest {
                    doctor,
                    patient,
                    already_treats,
                },
            )
        }

        #[test]
        fn staff_book_any_active_doctor_with_any_active_patient() {
            let st = Principal::Account(STAFF);
            let d = acct(DOCTOR, Role::Doctor);
            let p = acct(PATIENT, Role::Patient);
            assert_eq!(
                book(&st, Role::Staff, Some(&d), Some(Some(&p)), false),
                Ok(())
            );
            assert_eq!(book(&st, Role::Staff, Some(&d), None, false), Ok(()));
            let not_patient = acct(OTHER_DOCTOR, Role::Doctor);
            assert_eq!(
                book(&st, Role::Staff, Some(&d), Some(Some(&not_patient)), false),
                Err(B::Patient)
            );
            assert_eq!(
                book(&st, Role::Staff, Some(&d), Some(None), false),
                Err(B::Patient)
            );
            let gone = AccountFacts {
                disabled: true,
                ..p
            };
            assert_eq!(
                book(&st, Role::Staff, Some(&d), Some(Some(&gone)), false),
                Err(B::Patient)
            );
            assert_eq!(
                book(&st, Role::Staff, Some(&p), Some(Some(&p)), false),
                Err(B::Doctor)
            );
            assert_eq!(book(&st, Role::Staff, None, None, false), Err(B::Doctor));
        }

        #[test]
        fn a_doctor_books_only_for_themselves_and_patients_they_treat() {
            let me = Principal::Account(DOCTOR);
            let d = acct(DOCTOR, Role::Doctor);
            let other = acct(OTHER_DOCTOR, Role::Doctor);
            let p = acct(PATIENT, Role::Patient);
            assert_eq!(
                book(&me, Role::Doctor, Some(&d), Some(Some(&p)), true),
                Ok(())
            );
            assert_eq!(book(&me, Role::Doctor, Some(&d), None, false), Ok(()));
            assert_eq!(
                book(&me, Role::Doctor, Some(&d), Some(Some(&p)), false),
                Err(B::NoRelationship)
            );
            assert_eq!(
                book(&me, Role::Doctor, Some(&other), Some(Some(&p)), true),
                Err(B::NotSelf)
            );
            assert_eq!(
                book(&me, Role::Doctor, Some(&d), Some(None), false),
                Err(B::Patient)
            );
        }

        #[test]
        fn patients_guests_and_admins_do_not_book() {
            let d = acct(DOCTOR, Role::Doctor);
            let p = acct(PATIENT, Role::Patient);
            let g = Principal::Guest(InviteId(1));
            for (who, role) in [
                (Principal::Account(PATIENT), Role::Patient),
                (Principal::Account(ADMIN), Role::Admin),
                (g, Role::Guest),
            ] {
                assert_eq!(
                    book(&who, role, Some(&d), Some(Some(&p)), true),
                    Err(B::Role),
                    "{role:?}"
                );
            }
        }
    }

    mod changes {
        use super::super::*;
        use super::{ADMIN, APPT, DOCTOR, OTHER_DOCTOR, PATIENT, STAFF, appt};
        use crate::model::InviteId;
        use ChangeRefusal as C;

        const BEFORE: i64 = 9_000;

        fn at(secs: i64) -> Timestamp {
            Timestamp::from_secs(secs)
        }

        #[test]
        fn who_may_move_or_cancel_a_booked_appointment_before_it_starts() {
            let a = appt(AppointmentStatus::Booked);
            let g = Principal::Guest(InviteId(1));
            let cases = [
                (
                    "staff",
                    Principal::Account(STAFF),
                    Role::Staff,
                    None,
                    Ok(Relation::Staff),
                ),
                (
                    "its doctor",
                    Principal::Account(DOCTOR),
                    Role::Doctor,
                    None,
                    Ok(Relation::Doctor),
                ),
                (
                    "another doctor",
                    Principal::Account(OTHER_DOCTOR),
                    Role::Doctor,
                    None,
                    Err(C::NotYours),
                ),
                (
                    "its patient",
                    Principal::Account(PATIENT),
                    Role::Patient,
                    None,
                    Err(C::WrongRole),
                ),
                (
                    "admin",
                    Principal::Account(ADMIN),
                    Role::Admin,
                    None,
                    Err(C::WrongRole),
                ),
                ("its guest", g, Role::Guest, Some(APPT), Err(C::WrongRole)),
            ];
            for change in [Change::Move, Change::Cancel] {
                for (name, p, role, scope, want) in &cases {
                    let s = Subject {
                        principal: p,
                        role: *role,
                        scope: *scope,
                    };
                    assert_eq!(
                        check_change(s, change, Some(&a), at(BEFORE), false),
                        *want,
                        "{name} {change:?}"
                    );
                    // An unknown appointment looks like someone else's to those who may change some.
                    let unknown = check_change(s, change, None, at(BEFORE), false);
                    let want_unknown = if want.is_ok() {
                        Err(C::NotYours)
                    } else {
                        *want
                    };
                    assert_eq!(unknown, want_unknown, "{name} unknown");
                }
            }
        }

        #[test]
        fn ended_started_and_live_appointments_stay_as_they_are() {
            let st = Principal::Account(STAFF);
            let s = Subject {
                principal: &st,
                role: Role::Staff,
                scope: None,
            };
            for status in [AppointmentStatus::Ended, AppointmentStatus::Cancelled] {
                let a = appt(status);
                assert_eq!(
                    check_change(s, Change::Cancel, Some(&a), at(BEFORE), false),
                    Err(C::Ended)
                );
                assert_eq!(
                    check_change(s, Change::Move, Some(&a), at(BEFORE), false),
                    Err(C::Ended)
                );
            }
            let a = appt(AppointmentStatus::Booked);
            assert_eq!(
                check_change(s, Change::Move, Some(&a), at(10_000), false),
                Err(C::Started)
            );
            assert_eq!(
                check_change(s, Change::Cancel, Some(&a), at(20_000), false),
                Err(C::Started)
            );
            assert_eq!(
                check_change(s, Change::Cancel, Some(&a), at(BEFORE), true),
                Err(C::InProgress)
            );
            assert_eq!(
                check_change(s, Change::Cancel, Some(&a), at(9_999), false),
                Ok(Relation::Staff)
            );
            // Another doctor learns nothing about the state of someone else's appointment.
            let other = Principal::Account(OTHER_DOCTOR);
            let o = Subject {
                principal: &other,
                role: Role::Doctor,
                scope: None,
            };
            let ended = appt(AppointmentStatus::Ended);
            assert_eq!(
                check_change(o, Change::Cancel, Some(&ended), at(BEFORE), true),
                Err(C::NotYours)
            );
        }

        #[test]
        fn schedules_reasons_and_the_patient_register_by_role() {
            let a = appt(AppointmentStatus::Booked);
            let g = Principal::Guest(InviteId(1));
            let rows = [
                (
                    Principal::Account(STAFF),
                    Role::Staff,
                    Ok(ScheduleScope::Clinic),
                    Ok(()),
                    false,
                ),
                (
                    Principal::Account(ADMIN),
                    Role::Admin,
                    Ok(ScheduleScope::Clinic),
                    Ok(()),
                    false,
                ),
                (
                    Principal::Account(DOCTOR),
                    Role::Doctor,
                    Ok(ScheduleScope::Doctor(DOCTOR)),
                    Err(Refusal::WrongRole),
                    true,
                ),
                (
                    Principal::Account(OTHER_DOCTOR),
                    Role::Doctor,
                    Ok(ScheduleScope::Doctor(OTHER_DOCTOR)),
                    Err(Refusal::WrongRole),
                    false,
                ),
                (
                    Principal::Account(PATIENT),
                    Role::Patient,
                    Err(Refusal::WrongRole),
                    Err(Refusal::WrongRole),
                    false,
                ),
                (
                    g.clone(),
                    Role::Guest,
                    Err(Refusal::WrongRole),
                    Err(Refusal::WrongRole),
                    false,
                ),
                // A guest principal claiming a staff role is nobody.
                (
                    g,
                    Role::Staff,
                    Err(Refusal::WrongRole),
                    Err(Refusal::WrongRole),
                    false,
                ),
            ];
            for (p, role, scope, register, reason) in rows {
                let s = Subject {
                    principal: &p,
                    role,
                    scope: None,
                };
                assert_eq!(schedule_scope(s), scope, "{role:?}");
                assert_eq!(check_patient_register(s), register, "{role:?}");
                assert_eq!(sees_reason(s, &a), reason, "{role:?}");
            }
            assert!(in_scope(ScheduleScope::Clinic, &a));
            assert!(in_scope(ScheduleScope::Doctor(DOCTOR), &a));
            assert!(!in_scope(ScheduleScope::Doctor(OTHER_DOCTOR), &a));
        }
    }
}
