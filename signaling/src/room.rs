//! The consultation and its waiting room, as a sans-IO state machine.
//!
//! Loop shape: call one `handle_*` (each takes `now` where time matters), then drain
//! [`Consultation::poll_output`] until `None`. The edge turns [`RoomOutput::Send`]
//! into WebSocket frames, [`RoomOutput::Media`] into [`crate::media::MediaPlane`]
//! calls and [`RoomOutput::Close`] into closing a connection. Who may join at all
//! (assignment, consent, time window) is checked before `handle_join`; this machine
//! enforces what depends on the room's own state.

use std::collections::{BTreeMap, VecDeque};

use crate::media::{MediaParticipantId, MediaRoomId};
use crate::model::{AppointmentId, ChatId, ParticipantId, Principal, Role, Timestamp};
use crate::proto::{EndReason, ErrorCode, LeaveReason, ParticipantInfo, ServerMsg};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    Waiting,
    Admitted,
}

#[derive(Debug, Clone)]
struct Member {
    info: ParticipantInfo,
    principal: Principal,
    state: MemberState,
}

/// Someone the edge has already checked may join this consultation.
#[derive(Debug, Clone)]
pub struct Joiner {
    pub id: ParticipantId,
    pub principal: Principal,
    pub role: Role,
    pub label: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaCmd {
    Open(MediaRoomId),
    Admitted(MediaRoomId, MediaParticipantId),
    Remove(MediaRoomId, MediaParticipantId),
    Close(MediaRoomId),
}

#[must_use]
#[derive(Debug, Clone, PartialEq)]
pub enum RoomOutput {
    Send {
        to: ParticipantId,
        msg: ServerMsg,
    },
    Media(MediaCmd),
    /// Close this participant's connection (after the messages queued before it).
    Close {
        who: ParticipantId,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    #[error("the consultation has ended")]
    Ended,
    #[error("already in this consultation")]
    AlreadyJoined,
    #[error("only the doctor may do this")]
    NotDoctor,
    #[error("no such participant")]
    UnknownParticipant,
    #[error("not admitted yet")]
    NotAdmitted,
    #[error("not a member")]
    NotMember,
    #[error("the consultation is full")]
    Full,
}

impl RoomError {
    pub fn code(self) -> ErrorCode {
        match self {
            RoomError::Ended => ErrorCode::ConsultationEnded,
            RoomError::AlreadyJoined => ErrorCode::AlreadyJoined,
            RoomError::NotDoctor => ErrorCode::Forbidden,
            RoomError::UnknownParticipant => ErrorCode::UnknownParticipant,
            RoomError::NotAdmitted => ErrorCode::NotAdmitted,
            RoomError::NotMember => ErrorCode::NotInConsultation,
            RoomError::Full => ErrorCode::ConsultationFull,
        }
    }
}

/// What happened to a joiner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinOutcome {
    /// The doctor is in at once.
    Joined,
    /// Everyone else waits for the doctor.
    Waiting,
    /// An admitted participant whose connection dropped came back within
    /// [`REJOIN_GRACE_S`] and was admitted again without the doctor.
    Readmitted,
}

/// How long a participant whose connection dropped (not one who left, was denied or
/// whose consultation ended) may rejoin without waiting for the doctor again. A phone
/// moving between networks drops its WebSocket; sending the patient back to the
/// waiting room mid-consultation would make the doctor admit them again and again.
pub const REJOIN_GRACE_S: i64 = 60;

/// Admitted participants at most, the doctor included: the SFU's room size
/// (`confide_sfu::MAX_PARTICIPANTS`; the server checks at compile time that they agree).
/// One place is always the doctor's, so a full room never locks its own doctor out.
pub const MAX_ADMITTED: usize = 8;

#[derive(Debug)]
pub struct Consultation {
    appointment: AppointmentId,
    media_room: MediaRoomId,
    /// After this instant the consultation ends itself (window end plus grace).
    closes_at: Timestamp,
    // BTreeMap: ids come from our own counter and the order makes lists stable.
    members: BTreeMap<ParticipantId, Member>,
    /// Admitted principals whose connection dropped, with the end of their grace. At
    /// most one entry per principal, and principals come from the edge's checked
    /// joiners, so this stays as small as the room.
    rejoin: Vec<(Principal, Timestamp)>,
    ended: bool,
    media_open: bool,
    out: VecDeque<RoomOutput>,
}

impl Consultation {
    pub fn new(appointment: AppointmentId, media_room: MediaRoomId, closes_at: Timestamp) -> Self {
        Consultation {
            appointment,
            media_room,
            closes_at,
            members: BTreeMap::new(),
            rejoin: Vec::new(),
            ended: false,
            media_open: false,
            out: VecDeque::new(),
        }
    }

    pub fn appointment(&self) -> AppointmentId {
        self.appointment
    }
    pub fn media_room(&self) -> MediaRoomId {
        self.media_room
    }
    pub fn is_ended(&self) -> bool {
        self.ended
    }
    /// No one is connected: the edge may drop the room.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
    pub fn state_of(&self, who: ParticipantId) -> Option<MemberState> {
        self.members.get(&who).map(|m| m.state)
    }
    pub fn role_of(&self, who: ParticipantId) -> Option<Role> {
        self.members.get(&who).map(|m| m.info.role)
    }
    /// Members in `state` (metrics: waiting-room size, admitted participants).
    pub fn count(&self, state: MemberState) -> usize {
        self.members.values().filter(|m| m.state == state).count()
    }
    pub fn has_principal(&self, p: &Principal) -> bool {
        self.members.values().any(|m| &m.principal == p)
    }
    /// Admitted members other than `who`.
    pub fn admitted_peers(&self, who: ParticipantId) -> Vec<ParticipantId> {
        self.members
            .iter()
            .filter(|(id, m)| **id != who && m.state == MemberState::Admitted)
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn poll_output(&mut self) -> Option<RoomOutput> {
        self.out.pop_front()
    }

    fn send(&mut self, to: ParticipantId, msg: ServerMsg) {
        self.out.push_back(RoomOutput::Send { to, msg });
    }

    fn doctors(&self) -> Vec<ParticipantId> {
        self.members
            .iter()
            .filter(|(_, m)| m.info.role == Role::Doctor && m.state == MemberState::Admitted)
            .map(|(id, _)| *id)
            .collect()
    }

    fn list(&self, state: MemberState, except: Option<ParticipantId>) -> Vec<ParticipantInfo> {
        self.members
            .iter()
            .filter(|(id, m)| m.state == state && Some(**id) != except)
            .map(|(_, m)| m.info.clone())
            .collect()
    }

    fn push_waiting_room(&mut self) {
        let waiting = self.list(MemberState::Waiting, None);
        for d in self.doctors() {
            self.send(
                d,
                ServerMsg::WaitingRoom {
                    waiting: waiting.clone(),
                },
            );
        }
    }

    /// Whether one more participant other than the doctor may be admitted.
    fn has_room_for_another(&self) -> bool {
        let others = self
            .members
            .values()
            .filter(|m| m.state == MemberState::Admitted && m.info.role != Role::Doctor)
            .count();
        others < MAX_ADMITTED - 1
    }

    fn media_mid(&self, who: ParticipantId) -> MediaParticipantId {
        MediaParticipantId(who.0)
    }

    fn admit_member(&mut self, who: ParticipantId) {
        if !self.media_open {
            self.media_open = true;
            self.out
                .push_back(RoomOutput::Media(MediaCmd::Open(self.media_room)));
        }
        let Some(m) = self.members.get_mut(&who) else {
            return;
        };
        m.state = MemberState::Admitted;
        let info = m.info.clone();
        let mid = self.media_mid(who);
        self.out
            .push_back(RoomOutput::Media(MediaCmd::Admitted(self.media_room, mid)));
        for peer in self.admitted_peers(who) {
            self.send(
                peer,
                ServerMsg::ParticipantJoined {
                    participant: info.clone(),
                },
            );
        }
    }

    pub fn handle_join(
        &mut self,
        now: Timestamp,
        joiner: Joiner,
    ) -> Result<JoinOutcome, RoomError> {
        self.handle_timeout(now);
        if self.ended {
            return Err(RoomError::Ended);
        }
        if self.members.contains_key(&joiner.id) || self.has_principal(&joiner.principal) {
            return Err(RoomError::AlreadyJoined);
        }
        let id = joiner.id;
        let is_doctor = joiner.role == Role::Doctor;
        // Readmission without the doctor only while there is room; otherwise the
        // returning participant waits like anyone else.
        let readmit = match self
            .rejoin
            .iter()
            .position(|(p, until)| *p == joiner.principal && now <= *until)
        {
            Some(i) if self.has_room_for_another() => {
                self.rejoin.swap_remove(i);
                true
            }
            _ => false,
        };
        self.members.insert(
            id,
            Member {
                info: ParticipantInfo {
                    id,
                    role: joiner.role,
                    label: joiner.label,
                },
                principal: joiner.principal,
                state: MemberState::Waiting,
            },
        );
        if is_doctor {
            self.admit_member(id);
            let participants = self.list(MemberState::Admitted, Some(id));
            self.send(
                id,
                ServerMsg::Joined {
                    consultation: self.appointment,
                    you: id,
                    participants,
                },
            );
            let waiting = self.list(MemberState::Waiting, None);
            self.send(id, ServerMsg::WaitingRoom { waiting });
            Ok(JoinOutcome::Joined)
        } else if readmit {
            self.admit_waiting(id);
            Ok(JoinOutcome::Readmitted)
        } else {
            self.send(
                id,
                ServerMsg::Waiting {
                    consultation: self.appointment,
                    you: id,
                },
            );
            self.push_waiting_room();
            Ok(JoinOutcome::Waiting)
        }
    }

    fn require_doctor(&self, by: ParticipantId) -> Result<(), RoomError> {
        match self.members.get(&by) {
            None => Err(RoomError::NotMember),
            Some(m) if m.info.role == Role::Doctor && m.state == MemberState::Admitted => Ok(()),
            Some(_) => Err(RoomError::NotDoctor),
        }
    }

    fn require_waiting(&self, target: ParticipantId) -> Result<(), RoomError> {
        match self.members.get(&target) {
            Some(m) if m.state == MemberState::Waiting => Ok(()),
            _ => Err(RoomError::UnknownParticipant),
        }
    }

    /// The doctor `by` may decide on `target` now: the consultation runs, `by` is its
    /// doctor, and `target` is waiting.
    fn check_decision(
        &mut self,
        now: Timestamp,
        by: ParticipantId,
        target: ParticipantId,
    ) -> Result<(), RoomError> {
        self.handle_timeout(now);
        if self.ended {
            return Err(RoomError::Ended);
        }
        self.require_doctor(by)?;
        self.require_waiting(target)
    }

    pub fn handle_admit(
        &mut self,
        now: Timestamp,
        by: ParticipantId,
        target: ParticipantId,
    ) -> Result<Role, RoomError> {
        self.check_decision(now, by, target)?;
        if !self.has_room_for_another() {
            return Err(RoomError::Full);
        }
        self.admit_waiting(target);
        Ok(self.role_of(target).unwrap_or(Role::Guest))
    }

    /// Admit a waiting member and tell it, its peers and the doctor (by the doctor's
    /// `admit`, or by the rejoin grace).
    fn admit_waiting(&mut self, who: ParticipantId) {
        self.admit_member(who);
        let participants = self.list(MemberState::Admitted, Some(who));
        self.send(
            who,
            ServerMsg::Admitted {
                consultation: self.appointment,
                you: who,
                participants,
            },
        );
        self.push_waiting_room();
    }

    pub fn handle_deny(
        &mut self,
        now: Timestamp,
        by: ParticipantId,
        target: ParticipantId,
    ) -> Result<Role, RoomError> {
        self.check_decision(now, by, target)?;
        let role = self.role_of(target).unwrap_or(Role::Guest);
        self.members.remove(&target);
        self.send(
            target,
            ServerMsg::Denied {
                consultation: self.appointment,
            },
        );
        self.out.push_back(RoomOutput::Close { who: target });
        self.send(
            by,
            ServerMsg::ParticipantDenied {
                participant: target,
            },
        );
        self.push_waiting_room();
        Ok(role)
    }

    /// A participant left on purpose (`Left`) or its connection dropped.
    pub fn handle_leave(
        &mut self,
        now: Timestamp,
        who: ParticipantId,
        reason: LeaveReason,
    ) -> Result<(), RoomError> {
        let m = self.members.remove(&who).ok_or(RoomError::NotMember)?;
        if reason == LeaveReason::Disconnected
            && m.state == MemberState::Admitted
            && m.info.role != Role::Doctor
            && !self.ended
        {
            self.rejoin.retain(|(p, _)| *p != m.principal);
            self.rejoin
                .push((m.principal.clone(), now.plus_secs(REJOIN_GRACE_S)));
        }
        if reason == LeaveReason::Left {
            self.send(
                who,
                ServerMsg::Left {
                    consultation: self.appointment,
                },
            );
        }
        match m.state {
            MemberState::Admitted => {
                self.out.push_back(RoomOutput::Media(MediaCmd::Remove(
                    self.media_room,
                    self.media_mid(who),
                )));
                for peer in self.admitted_peers(who) {
                    self.send(
                        peer,
                        ServerMsg::ParticipantLeft {
                            participant: who,
                            reason,
                        },
                    );
                }
            }
            MemberState::Waiting => self.push_waiting_room(),
        }
        if self.members.is_empty() && self.media_open {
            self.media_open = false;
            self.out
                .push_back(RoomOutput::Media(MediaCmd::Close(self.media_room)));
        }
        Ok(())
    }

    /// Doctor ends the consultation: everyone is told and disconnected.
    pub fn handle_end(&mut self, by: ParticipantId) -> Result<(), RoomError> {
        if self.ended {
            return Err(RoomError::Ended);
        }
        self.require_doctor(by)?;
        self.end(EndReason::EndedByDoctor);
        Ok(())
    }

    /// Ends the consultation once its window (plus grace) has passed.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.rejoin.retain(|(_, until)| now <= *until);
        if !self.ended && now > self.closes_at {
            self.end(EndReason::TimeWindowClosed);
        }
    }

    /// The next instant at which [`Self::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        (!self.ended).then_some(self.closes_at)
    }

    fn end(&mut self, reason: EndReason) {
        self.ended = true;
        let ids: Vec<ParticipantId> = self.members.keys().copied().collect();
        for id in &ids {
            self.send(
                *id,
                ServerMsg::Ended {
                    consultation: self.appointment,
                    reason,
                },
            );
        }
        for id in ids {
            self.out.push_back(RoomOutput::Close { who: id });
        }
        self.members.clear();
        // Close even if no one had media yet: the plane may have seen an offer.
        self.media_open = false;
        self.out
            .push_back(RoomOutput::Media(MediaCmd::Close(self.media_room)));
    }

    fn require_admitted(&self, who: ParticipantId) -> Result<(), RoomError> {
        match self.members.get(&who) {
            None => Err(RoomError::NotMember),
            Some(m) if m.state == MemberState::Admitted => Ok(()),
            Some(_) => Err(RoomError::NotAdmitted),
        }
    }

    /// Check that `who` may use the media plane now.
    pub fn check_media(
        &self,
        who: ParticipantId,
    ) -> Result<(MediaRoomId, MediaParticipantId), RoomError> {
        if self.ended {
            return Err(RoomError::Ended);
        }
        self.require_admitted(who)?;
        Ok((self.media_room, self.media_mid(who)))
    }

    /// Relay opaque E2EE material, to one admitted peer or to all.
    pub fn handle_e2ee(
        &mut self,
        from: ParticipantId,
        to: Option<ParticipantId>,
        blob: String,
    ) -> Result<(), RoomError> {
        self.require_admitted(from)?;
        let targets = match to {
            Some(t) if t != from && self.state_of(t) == Some(MemberState::Admitted) => vec![t],
            Some(_) => return Err(RoomError::UnknownParticipant),
            None => self.admitted_peers(from),
        };
        for t in targets {
            self.send(
                t,
                ServerMsg::E2ee {
                    from,
                    to,
                    blob: blob.clone(),
                },
            );
        }
        Ok(())
    }

    /// Check before the edge stores a chat ciphertext.
    pub fn check_chat(&self, from: ParticipantId) -> Result<(), RoomError> {
        self.require_admitted(from)
    }

    /// Relay a chat ciphertext the edge has stored as `id`, echoing it to the sender
    /// so it learns the id and time.
    pub fn handle_chat(
        &mut self,
        from: ParticipantId,
        id: ChatId,
        time: Timestamp,
        ciphertext: String,
    ) -> Result<(), RoomError> {
        self.require_admitted(from)?;
        let mut targets = self.admitted_peers(from);
        targets.push(from);
        for t in targets {
            self.send(
                t,
                ServerMsg::Chat {
                    id,
                    from,
                    time,
                    ciphertext: ciphertext.clone(),
                },
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AccountId, InviteId};

    const T0: Timestamp = Timestamp(1_000_000);

    fn room() -> Consultation {
        Consultation::new(AppointmentId(7), MediaRoomId(1), T0.plus_secs(3600))
    }

    fn joiner(id: u64, role: Role) -> Joiner {
        Joiner {
            id: ParticipantId(id),
            principal: Principal::Account(AccountId(id as i64 + 100)),
            role,
            label: format!("{role}"),
        }
    }

    fn drain(r: &mut Consultation) -> Vec<RoomOutput> {
        std::iter::from_fn(|| r.poll_output()).collect()
    }

    fn sent_to(out: &[RoomOutput], who: u64) -> Vec<ServerMsg> {
        out.iter()
            .filter_map(|o| match o {
                RoomOutput::Send { to, msg } if to.0 == who => Some(msg.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn patient_waits_doctor_admits_and_both_are_told() {
        let mut r = room();
        assert_eq!(
            r.handle_join(T0, joiner(2, Role::Patient)),
            Ok(JoinOutcome::Waiting)
        );
        let out = drain(&mut r);
        assert!(matches!(sent_to(&out, 2)[0], ServerMsg::Waiting { .. }));

        assert_eq!(
            r.handle_join(T0, joiner(1, Role::Doctor)),
            Ok(JoinOutcome::Joined)
        );
        let out = drain(&mut r);
        let to_doc = sent_to(&out, 1);
        assert!(matches!(to_doc[0], ServerMsg::Joined { .. }));
        match &to_doc[1] {
            ServerMsg::WaitingRoom { waiting } => assert_eq!(waiting[0].id, ParticipantId(2)),
            m => panic!("{m:?}"),
        }
        assert!(out.contains(&RoomOutput::Media(MediaCmd::Open(MediaRoomId(1)))));

        assert_eq!(
            r.handle_admit(T0, ParticipantId(1), ParticipantId(2)),
            Ok(Role::Patient)
        );
        let out = drain(&mut r);
        assert!(matches!(sent_to(&out, 2)[0], ServerMsg::Admitted { .. }));
        assert!(
            sent_to(&out, 1)
                .iter()
                .any(|m| matches!(m, ServerMsg::ParticipantJoined { .. }))
        );
        assert!(out.contains(&RoomOutput::Media(MediaCmd::Admitted(
            MediaRoomId(1),
            MediaParticipantId(2)
        ))));
    }

    #[test]
    fn only_the_doctor_admits_denies_and_ends() {
        let mut r = room();
        r.handle_join(T0, joiner(1, Role::Doctor)).unwrap();
        r.handle_join(T0, joiner(2, Role::Patient)).unwrap();
        r.handle_join(T0, joiner(3, Role::Guest)).unwrap();
        drain(&mut r);
        assert_eq!(
            r.handle_admit(T0, ParticipantId(2), ParticipantId(3)),
            Err(RoomError::NotDoctor)
        );
        assert_eq!(r.handle_end(ParticipantId(3)), Err(RoomError::NotDoctor));
        assert_eq!(
            r.handle_admit(T0, ParticipantId(1), ParticipantId(9)),
            Err(RoomError::UnknownParticipant)
        );
        assert_eq!(
            r.handle_deny(T0, ParticipantId(1), ParticipantId(3)),
            Ok(Role::Guest)
        );
        let out = drain(&mut r);
        assert!(matches!(sent_to(&out, 3)[0], ServerMsg::Denied { .. }));
        assert!(out.contains(&RoomOutput::Close {
            who: ParticipantId(3)
        }));
        assert!(
            sent_to(&out, 1)
                .iter()
                .any(|m| matches!(m, ServerMsg::ParticipantDenied { .. }))
        );
    }

    #[test]
    fn waiting_participants_cannot_relay() {
        let mut r = room();
        r.handle_join(T0, joiner(1, Role::Doctor)).unwrap();
        r.handle_join(T0, joiner(2, Role::Patient)).unwrap();
        drain(&mut r);
        assert_eq!(
            r.handle_e2ee(ParticipantId(2), None, "AA==".into()),
            Err(RoomError::NotAdmitted)
        );
        assert_eq!(r.check_chat(ParticipantId(2)), Err(RoomError::NotAdmitted));
        assert!(r.check_media(ParticipantId(2)).is_err());
        assert!(r.check_media(ParticipantId(1)).is_ok());
    }

    #[test]
    fn relay_reaches_admitted_peers_only() {
        let mut r = room();
        r.handle_join(T0, joiner(1, Role::Doctor)).unwrap();
        r.handle_join(T0, joiner(2, Role::Patient)).unwrap();
        r.handle_join(T0, joiner(3, Role::Guest)).unwrap();
        r.handle_admit(T0, ParticipantId(1), ParticipantId(2))
            .unwrap();
        drain(&mut r);
        r.handle_e2ee(ParticipantId(1), None, "AQ==".into())
            .unwrap();
        let out = drain(&mut r);
        assert_eq!(sent_to(&out, 2).len(), 1);
        assert!(sent_to(&out, 3).is_empty());
        assert_eq!(
            r.handle_e2ee(ParticipantId(1), Some(ParticipantId(3)), "AQ==".into()),
            Err(RoomError::UnknownParticipant)
        );
        r.handle_chat(ParticipantId(2), ChatId(5), T0, "AQ==".into())
            .unwrap();
        let out = drain(&mut r);
        assert_eq!(sent_to(&out, 1).len(), 1);
        assert_eq!(sent_to(&out, 2).len(), 1, "sender gets the echo with id");
    }

    #[test]
    fn end_disconnects_everyone_and_closes_media() {
        let mut r = room();
        r.handle_join(T0, joiner(1, Role::Doctor)).unwrap();
        r.handle_join(T0, joiner(2, Role::Patient)).unwrap();
        r.handle_admit(T0, ParticipantId(1), ParticipantId(2))
            .unwrap();
        drain(&mut r);
        r.handle_end(ParticipantId(1)).unwrap();
        let out = drain(&mut r);
        for who in [1, 2] {
            assert!(matches!(sent_to(&out, who)[0], ServerMsg::Ended { .. }));
            assert!(out.contains(&RoomOutput::Close {
                who: ParticipantId(who)
            }));
        }
        assert!(out.contains(&RoomOutput::Media(MediaCmd::Close(MediaRoomId(1)))));
        assert!(r.is_empty() && r.is_ended());
        assert_eq!(
            r.handle_join(T0, joiner(4, Role::Patient)),
            Err(RoomError::Ended)
        );
    }

    #[test]
    fn replayed_join_is_refused() {
        let mut r = room();
        r.handle_join(T0, joiner(2, Role::Patient)).unwrap();
        assert_eq!(
            r.handle_join(T0, joiner(2, Role::Patient)),
            Err(RoomError::AlreadyJoined)
        );
        let mut same_person = joiner(5, Role::Patient);
        same_person.principal = Principal::Account(AccountId(102));
        assert_eq!(
            r.handle_join(T0, same_person),
            Err(RoomError::AlreadyJoined)
        );
        let guest = Joiner {
            id: ParticipantId(6),
            principal: Principal::Guest(InviteId(1)),
            role: Role::Guest,
            label: "Guest".into(),
        };
        assert!(r.handle_join(T0, guest).is_ok());
    }

    #[test]
    fn window_close_ends_the_consultation() {
        let mut r = room();
        r.handle_join(T0, joiner(1, Role::Doctor)).unwrap();
        drain(&mut r);
        assert_eq!(r.poll_timeout(), Some(T0.plus_secs(3600)));
        r.handle_timeout(T0.plus_secs(3601));
        let out = drain(&mut r);
        assert!(matches!(
            sent_to(&out, 1)[0],
            ServerMsg::Ended {
                reason: EndReason::TimeWindowClosed,
                ..
            }
        ));
        assert_eq!(r.poll_timeout(), None);
    }

    #[test]
    fn leave_tells_peers_and_last_one_out_closes_media() {
        let mut r = room();
        r.handle_join(T0, joiner(1, Role::Doctor)).unwrap();
        r.handle_join(T0, joiner(2, Role::Patient)).unwrap();
        r.handle_admit(T0, ParticipantId(1), ParticipantId(2))
            .unwrap();
        drain(&mut r);
        r.handle_leave(T0, ParticipantId(2), LeaveReason::Left)
            .unwrap();
        let out = drain(&mut r);
        assert!(matches!(sent_to(&out, 2)[0], ServerMsg::Left { .. }));
        assert!(matches!(
            sent_to(&out, 1)[0],
            ServerMsg::ParticipantLeft { .. }
        ));
        r.handle_leave(T0, ParticipantId(1), LeaveReason::Disconnected)
            .unwrap();
        let out = drain(&mut r);
        assert!(out.contains(&RoomOutput::Media(MediaCmd::Close(MediaRoomId(1)))));
        assert!(r.is_empty());
        assert_eq!(
            r.handle_leave(T0, ParticipantId(1), LeaveReason::Left),
            Err(RoomError::NotMember)
        );
    }

    /// A patient with the same account on a new connection (new participant id).
    fn rejoiner(id: u64, account_of: u64) -> Joiner {
        Joiner {
            id: ParticipantId(id),
            principal: Principal::Account(AccountId(account_of as i64 + 100)),
            role: Role::Patient,
            label: "patient".into(),
        }
    }

    fn admitted_pair() -> Consultation {
        let mut r = room();
        r.handle_join(T0, joiner(1, Role::Doctor)).unwrap();
        r.handle_join(T0, joiner(2, Role::Patient)).unwrap();
        r.handle_admit(T0, ParticipantId(1), ParticipantId(2))
            .unwrap();
        drain(&mut r);
        r
    }

    #[test]
    fn dropped_patient_is_readmitted_within_the_grace() {
        let mut r = admitted_pair();
        r.handle_leave(T0, ParticipantId(2), LeaveReason::Disconnected)
            .unwrap();
        drain(&mut r);
        let back = T0.plus_secs(REJOIN_GRACE_S);
        assert_eq!(
            r.handle_join(back, rejoiner(3, 2)),
            Ok(JoinOutcome::Readmitted)
        );
        let out = drain(&mut r);
        assert!(matches!(sent_to(&out, 3)[0], ServerMsg::Admitted { .. }));
        assert!(
            sent_to(&out, 1)
                .iter()
                .any(|m| matches!(m, ServerMsg::ParticipantJoined { .. })),
            "the doctor is told the patient is back"
        );
        assert_eq!(r.state_of(ParticipantId(3)), Some(MemberState::Admitted));
        // The grace is used up: a second drop and return needs a fresh grace entry,
        // which the second drop makes; a join by someone else's account gets none.
        assert_eq!(
            r.handle_join(back, rejoiner(4, 9)),
            Ok(JoinOutcome::Waiting)
        );
    }

    #[test]
    fn no_readmission_after_the_grace_or_after_leaving_or_denial() {
        // Too late.
        let mut r = admitted_pair();
        r.handle_leave(T0, ParticipantId(2), LeaveReason::Disconnected)
            .unwrap();
        let late = T0.plus_secs(REJOIN_GRACE_S + 1);
        assert_eq!(
            r.handle_join(late, rejoiner(3, 2)),
            Ok(JoinOutcome::Waiting)
        );

        // Left on purpose.
        let mut r = admitted_pair();
        r.handle_leave(T0, ParticipantId(2), LeaveReason::Left)
            .unwrap();
        assert_eq!(r.handle_join(T0, rejoiner(3, 2)), Ok(JoinOutcome::Waiting));

        // Dropped while still waiting: never admitted, so waits again.
        let mut r = room();
        r.handle_join(T0, joiner(1, Role::Doctor)).unwrap();
        r.handle_join(T0, joiner(2, Role::Patient)).unwrap();
        r.handle_leave(T0, ParticipantId(2), LeaveReason::Disconnected)
            .unwrap();
        assert_eq!(r.handle_join(T0, rejoiner(3, 2)), Ok(JoinOutcome::Waiting));

        // Denied.
        let mut r = room();
        r.handle_join(T0, joiner(1, Role::Doctor)).unwrap();
        r.handle_join(T0, joiner(2, Role::Patient)).unwrap();
        r.handle_deny(T0, ParticipantId(1), ParticipantId(2))
            .unwrap();
        assert_eq!(r.handle_join(T0, rejoiner(3, 2)), Ok(JoinOutcome::Waiting));

        // Ended by the doctor: nobody comes back.
        let mut r = admitted_pair();
        r.handle_leave(T0, ParticipantId(2), LeaveReason::Disconnected)
            .unwrap();
        r.handle_end(ParticipantId(1)).unwrap();
        assert_eq!(r.handle_join(T0, rejoiner(3, 2)), Err(RoomError::Ended));
    }

    /// Doctor, patient and guests 10.. admitted until the room holds `MAX_ADMITTED`.
    fn full_room() -> Consultation {
        let mut r = admitted_pair();
        for g in 10..10 + (MAX_ADMITTED as u64 - 2) {
            r.handle_join(T0, joiner(g, Role::Guest)).unwrap();
            r.handle_admit(T0, ParticipantId(1), ParticipantId(g))
                .unwrap();
        }
        drain(&mut r);
        assert_eq!(r.count(MemberState::Admitted), MAX_ADMITTED);
        r
    }

    #[test]
    fn a_full_consultation_refuses_another_admission_until_someone_leaves() {
        let mut r = full_room();
        r.handle_join(T0, joiner(30, Role::Guest)).unwrap();
        drain(&mut r);
        assert_eq!(
            r.handle_admit(T0, ParticipantId(1), ParticipantId(30)),
            Err(RoomError::Full)
        );
        assert_eq!(RoomError::Full.code(), ErrorCode::ConsultationFull);
        // Refused, not lost: still waiting, nothing went to the media plane.
        assert_eq!(r.state_of(ParticipantId(30)), Some(MemberState::Waiting));
        assert!(drain(&mut r).is_empty());

        r.handle_leave(T0, ParticipantId(10), LeaveReason::Left)
            .unwrap();
        drain(&mut r);
        assert_eq!(
            r.handle_admit(T0, ParticipantId(1), ParticipantId(30)),
            Ok(Role::Guest)
        );
        assert_eq!(r.count(MemberState::Admitted), MAX_ADMITTED);
    }

    #[test]
    fn a_full_consultation_keeps_the_doctors_place_and_sends_rejoiners_to_wait() {
        let mut r = full_room();
        // The patient's connection drops and a guest takes the place.
        r.handle_leave(T0, ParticipantId(2), LeaveReason::Disconnected)
            .unwrap();
        r.handle_join(T0, joiner(30, Role::Guest)).unwrap();
        r.handle_admit(T0, ParticipantId(1), ParticipantId(30))
            .unwrap();
        drain(&mut r);
        // Within the grace, but the room is full: the patient waits for the doctor.
        assert_eq!(r.handle_join(T0, rejoiner(3, 2)), Ok(JoinOutcome::Waiting));
        // The doctor's connection drops; the doctor always gets back in.
        r.handle_leave(T0, ParticipantId(1), LeaveReason::Disconnected)
            .unwrap();
        drain(&mut r);
        assert_eq!(
            r.handle_join(T0, joiner(4, Role::Doctor)),
            Ok(JoinOutcome::Joined)
        );
        assert_eq!(r.count(MemberState::Admitted), MAX_ADMITTED);
    }
}
