//! The consultation and its waiting room, as a sans-IO state machine.
//!
//! Loop shape: call one `handle_*` (each takes `now` where time matters), then drain
//! [`Consultation::poll_output`] until `None`. The edge turns [`RoomOutput::Send`]
//! into WebSocket frames, [`RoomOutput::Media`] into [`crate::media::MediaPlane`]
//! calls and [`RoomOutput::Close`] into closing a connection. Who may join at all
//! (assignment, consent, time window) is checked before `handle_join`; this machine
//! enforces what depends on the room's own state.
//!
//! It is also the consultation's MLS *delivery service*: it orders the commits of the
//! consultation's group (one per epoch, the first valid one wins) from their public
//! framing alone ([`crate::mls_frame`]), relays them and delivers Welcomes. It never
//! holds a key and cannot add anyone to a group: only a member's signed commit does.

use std::collections::{BTreeMap, VecDeque};

use crate::media::{MediaParticipantId, MediaRoomId};
use crate::mls_frame::{self, ContentType, FrameError, Sender};
use crate::model::{AppointmentId, ChatId, DeviceId, ParticipantId, Principal, Role, Timestamp};
use crate::proto::{EndReason, ErrorCode, LeaveReason, ParticipantInfo, ServerMsg, encode_b64};

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
    /// When this connection joined (entered the waiting room, or the call for the
    /// doctor).
    since: Timestamp,
}

/// Who is in a consultation right now, for the front desk's overview: no ids beyond
/// the principal, no device, nothing about keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub principal: Principal,
    pub role: Role,
    pub label: String,
    pub state: MemberState,
    pub since: Timestamp,
}

/// Someone the edge has already checked may join this consultation.
#[derive(Debug, Clone)]
pub struct Joiner {
    pub id: ParticipantId,
    pub principal: Principal,
    pub role: Role,
    pub label: String,
    /// The key-directory device it joins as (already checked active by the edge).
    pub device: Option<DeviceId>,
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
    #[error("stale commit: the group is at epoch {room}, the commit is for epoch {got}")]
    StaleCommit { room: u64, got: u64 },
    #[error("{0}")]
    WrongGroup(&'static str),
    /// An MLS message that does not parse.
    #[error("{what}: {error}")]
    BadMls {
        what: &'static str,
        error: FrameError,
    },
    /// An MLS message that parses but is not what this message must carry.
    #[error("{0}")]
    InvalidMls(&'static str),
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
            RoomError::StaleCommit { .. } => ErrorCode::StaleCommit,
            RoomError::WrongGroup(_) => ErrorCode::WrongGroup,
            RoomError::BadMls { .. } | RoomError::InvalidMls(_) => ErrorCode::InvalidMessage,
        }
    }

    /// The text sent with [`Self::code`]: the code's default text, or for the MLS
    /// refusals one that says what was wrong (epochs, the framing fault), so a client
    /// developer can tell a stale commit from a broken one.
    pub fn message(self) -> String {
        match self {
            RoomError::StaleCommit { .. }
            | RoomError::WrongGroup(_)
            | RoomError::BadMls { .. }
            | RoomError::InvalidMls(_) => self.to_string(),
            _ => self.code().default_message().to_owned(),
        }
    }
}

/// The consultation's MLS group as the delivery service tracks it: its id and the
/// epoch the next commit must be for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MlsGroup {
    pub group_id: Vec<u8>,
    pub epoch: u64,
}

/// Every group id of consultation `appointment` starts with these bytes; commits for
/// other group ids are refused (`wrong_group`), so a group can never be carried from
/// one consultation into another.
pub fn group_id_prefix(appointment: AppointmentId) -> String {
    format!("confide/c/{}/", appointment.0)
}

/// An `mls_commit` after base64 decoding.
#[derive(Debug, Clone)]
pub struct MlsCommit {
    pub commit: Vec<u8>,
    pub welcome: Option<Vec<u8>>,
    /// Participants (waiting or admitted) the commit adds; doctor only.
    pub add: Vec<ParticipantId>,
}

/// What an accepted commit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MlsAccepted {
    /// The group's new epoch.
    pub epoch: u64,
    /// Waiting participants the commit admitted, with their roles (for the audit log).
    pub admitted: Vec<(ParticipantId, Role)>,
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
    /// `None` until the first accepted commit, and again once everyone has left.
    mls: Option<MlsGroup>,
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
            mls: None,
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
    /// The MLS group commits are ordered in, if one has started.
    pub fn mls(&self) -> Option<&MlsGroup> {
        self.mls.as_ref()
    }
    /// Everyone connected, waiting or admitted, in joining order.
    pub fn presence(&self) -> Vec<Presence> {
        let mut out: Vec<Presence> = self
            .members
            .values()
            .map(|m| Presence {
                principal: m.principal.clone(),
                role: m.info.role,
                label: m.info.label.clone(),
                state: m.state,
                since: m.since,
            })
            .collect();
        out.sort_by_key(|p| p.since);
        out
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

    /// Tells everyone waiting whether the doctor is in the consultation now (after the
    /// doctor joined or left), so the waiting room can say so.
    fn push_doctor_presence(&mut self) {
        let online = !self.doctors().is_empty();
        let waiting: Vec<ParticipantId> = self
            .members
            .iter()
            .filter(|(_, m)| m.state == MemberState::Waiting)
            .map(|(id, _)| *id)
            .collect();
        for id in waiting {
            self.send(id, ServerMsg::DoctorPresence { online });
        }
    }

    /// Whether one more participant other than the doctor may be admitted.
    fn has_room_for_another(&self) -> bool {
        self.has_room_for(1)
    }

    /// Whether `n` more participants other than the doctor may be admitted.
    fn has_room_for(&self, n: usize) -> bool {
        let others = self
            .members
            .values()
            .filter(|m| m.state == MemberState::Admitted && m.info.role != Role::Doctor)
            .count();
        others + n < MAX_ADMITTED
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
                    principal: joiner.principal.to_string(),
                    device: joiner.device,
                },
                principal: joiner.principal,
                state: MemberState::Waiting,
                since: now,
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
            self.push_doctor_presence();
            Ok(JoinOutcome::Joined)
        } else if readmit {
            self.admit_waiting(id);
            Ok(JoinOutcome::Readmitted)
        } else {
            let doctor_online = !self.doctors().is_empty();
            self.send(
                id,
                ServerMsg::Waiting {
                    consultation: self.appointment,
                    you: id,
                    doctor_online,
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
                if m.info.role == Role::Doctor {
                    self.push_doctor_presence();
                }
            }
            MemberState::Waiting => self.push_waiting_room(),
        }
        if self.members.is_empty() {
            // Nobody holds the group's state any more: the next doctor starts afresh.
            self.mls = None;
            if self.media_open {
                self.media_open = false;
                self.out
                    .push_back(RoomOutput::Media(MediaCmd::Close(self.media_room)));
            }
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
        self.mls = None;
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

    /// An MLS commit from `from`, ordered against the consultation's group.
    ///
    /// Accepted when it is a member's commit (PublicMessage from a member, or
    /// PrivateMessage) for this consultation's group at its current epoch, or the
    /// doctor's commit at epoch 0 of a new group (the doctor's device restarted: the
    /// room follows the new group). With `add`, the doctor's commit also admits the
    /// waiting participants it lists and delivers the Welcome to every one it lists.
    /// Every check runs before anything changes: a refused commit is neither relayed
    /// nor counted, and the epoch stays.
    ///
    /// Outputs on success: `mls_accepted` to the sender; `mls_commit` to every other
    /// admitted participant not in `add`; for each waiting participant in `add` what
    /// `admit` sends; then `mls_welcome` to each participant in `add`.
    pub fn handle_mls_commit(
        &mut self,
        now: Timestamp,
        from: ParticipantId,
        c: MlsCommit,
    ) -> Result<MlsAccepted, RoomError> {
        self.handle_timeout(now);
        if self.ended {
            return Err(RoomError::Ended);
        }
        self.require_admitted(from)?;
        let is_doctor = self.role_of(from) == Some(Role::Doctor);
        let h = mls_frame::parse_message(&c.commit).map_err(|error| RoomError::BadMls {
            what: "commit",
            error,
        })?;
        if h.content_type != ContentType::Commit {
            return Err(RoomError::InvalidMls("the message is not a commit"));
        }
        // Nobody joins except by the doctor's Add: an external commit (a joiner adding
        // itself from a GroupInfo) or an external sender's proposal-commit is refused.
        if h.sender.is_some_and(|s| !matches!(s, Sender::Member(_))) {
            return Err(RoomError::InvalidMls(
                "only members commit: external commits are refused",
            ));
        }
        if !h
            .group_id
            .starts_with(group_id_prefix(self.appointment).as_bytes())
        {
            return Err(RoomError::WrongGroup(
                "the group id does not belong to this consultation",
            ));
        }
        let joining = self.check_mls_add(from, is_doctor, &c)?;
        if !self.has_room_for(joining) {
            return Err(RoomError::Full);
        }
        let epoch = match &self.mls {
            Some(g) if g.group_id == h.group_id => {
                if h.epoch != g.epoch {
                    return Err(RoomError::StaleCommit {
                        room: g.epoch,
                        got: h.epoch,
                    });
                }
                g.epoch.checked_add(1).ok_or(RoomError::StaleCommit {
                    room: g.epoch,
                    got: h.epoch,
                })?
            }
            // A new group: the doctor's device lost its state (restart, new device).
            _ if h.epoch == 0 && is_doctor => 1,
            Some(_) => {
                return Err(RoomError::WrongGroup(
                    "the commit is for another group than the consultation's current one",
                ));
            }
            None => {
                return Err(RoomError::WrongGroup(
                    "the consultation has no group yet; the doctor's device starts one at epoch 0",
                ));
            }
        };
        self.mls = Some(MlsGroup {
            group_id: h.group_id.to_vec(),
            epoch,
        });

        self.send(from, ServerMsg::MlsAccepted { epoch });
        let commit = encode_b64(&c.commit);
        for peer in self.admitted_peers(from) {
            if !c.add.contains(&peer) {
                self.send(
                    peer,
                    ServerMsg::MlsCommit {
                        from,
                        epoch,
                        commit: commit.clone(),
                    },
                );
            }
        }
        let mut admitted = Vec::new();
        for &p in &c.add {
            if self.state_of(p) == Some(MemberState::Waiting) {
                self.admit_waiting(p);
                admitted.push((p, self.role_of(p).unwrap_or(Role::Guest)));
            }
        }
        if let Some(w) = &c.welcome {
            let welcome = encode_b64(w);
            for &p in &c.add {
                self.send(
                    p,
                    ServerMsg::MlsWelcome {
                        from,
                        welcome: welcome.clone(),
                    },
                );
            }
        }
        Ok(MlsAccepted { epoch, admitted })
    }

    /// The checks of an `mls_commit`'s `add` and `welcome`; returns how many waiting
    /// participants it would admit.
    fn check_mls_add(
        &self,
        from: ParticipantId,
        is_doctor: bool,
        c: &MlsCommit,
    ) -> Result<usize, RoomError> {
        if c.add.is_empty() {
            return match c.welcome {
                Some(_) => Err(RoomError::InvalidMls(
                    "a welcome needs the participants it adds (add)",
                )),
                None => Ok(0),
            };
        }
        if !is_doctor {
            return Err(RoomError::NotDoctor);
        }
        let Some(welcome) = &c.welcome else {
            return Err(RoomError::InvalidMls("add needs a welcome"));
        };
        mls_frame::check_welcome(welcome).map_err(|error| RoomError::BadMls {
            what: "welcome",
            error,
        })?;
        let mut joining = 0;
        for &p in &c.add {
            match self.state_of(p) {
                _ if p == from => return Err(RoomError::UnknownParticipant),
                Some(MemberState::Waiting) => joining += 1,
                Some(MemberState::Admitted) => {}
                None => return Err(RoomError::UnknownParticipant),
            }
        }
        Ok(joining)
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
            device: None,
        }
    }

    fn drain(r: &mut Consultation) -> Vec<RoomOutput> {
        std::iter::from_fn(|| r.poll_output()).collect()
    }

    /// The doctor heard that `who` joined, and the media plane was told to admit it.
    fn assert_joined_and_media_admits(out: &[RoomOutput], doctor: u64, who: u64) {
        assert!(
            sent_to(out, doctor)
                .iter()
                .any(|m| matches!(m, ServerMsg::ParticipantJoined { .. }))
        );
        assert!(out.contains(&RoomOutput::Media(MediaCmd::Admitted(
            MediaRoomId(1),
            MediaParticipantId(who)
        ))));
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
        assert_joined_and_media_admits(&out, 1, 2);
    }

    #[test]
    fn the_waiting_room_hears_whether_the_doctor_is_in() {
        let presence = |out: &[RoomOutput], who: u64| -> Vec<bool> {
            sent_to(out, who)
                .iter()
                .filter_map(|m| match m {
                    ServerMsg::DoctorPresence { online } => Some(*online),
                    _ => None,
                })
                .collect()
        };
        let mut r = room();
        // Before the doctor: waiting, and told the doctor is not in yet.
        r.handle_join(T0, joiner(2, Role::Patient)).unwrap();
        let out = drain(&mut r);
        assert!(matches!(
            sent_to(&out, 2)[0],
            ServerMsg::Waiting {
                doctor_online: false,
                ..
            }
        ));
        // The doctor comes in: everyone waiting hears it, once.
        r.handle_join(T0, joiner(1, Role::Doctor)).unwrap();
        let out = drain(&mut r);
        assert_eq!(presence(&out, 2), [true]);
        assert!(presence(&out, 1).is_empty(), "the doctor is not told");
        // Someone arriving now learns it from `waiting` itself.
        r.handle_join(T0, joiner(3, Role::Guest)).unwrap();
        let out = drain(&mut r);
        assert!(matches!(
            sent_to(&out, 3)[0],
            ServerMsg::Waiting {
                doctor_online: true,
                ..
            }
        ));
        // The patient is admitted; the doctor's connection drops: only the guest, still
        // waiting, hears that the doctor is gone.
        r.handle_admit(T0, ParticipantId(1), ParticipantId(2))
            .unwrap();
        drain(&mut r);
        r.handle_leave(T0, ParticipantId(1), LeaveReason::Disconnected)
            .unwrap();
        let out = drain(&mut r);
        assert_eq!(presence(&out, 3), [false]);
        assert!(
            presence(&out, 2).is_empty(),
            "admitted: not a waiting-room message"
        );
        // A waiting participant leaving says nothing about the doctor.
        r.handle_join(T0, joiner(1, Role::Doctor)).unwrap();
        drain(&mut r);
        r.handle_leave(T0, ParticipantId(3), LeaveReason::Left)
            .unwrap();
        let out = drain(&mut r);
        assert!(presence(&out, 3).is_empty());
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
            r.handle_mls_commit(T0, ParticipantId(2), commit(&group("a"), 0)),
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
        r.handle_mls_commit(T0, ParticipantId(1), commit(&group("a"), 0))
            .unwrap();
        let out = drain(&mut r);
        assert!(
            matches!(sent_to(&out, 2)[..], [ServerMsg::MlsCommit { .. }]),
            "{out:?}"
        );
        assert!(
            sent_to(&out, 3).is_empty(),
            "the waiting guest hears nothing"
        );
        r.handle_chat(ParticipantId(2), ChatId(5), T0, "AQ==".into())
            .unwrap();
        let out = drain(&mut r);
        assert_eq!(sent_to(&out, 1).len(), 1);
        assert_eq!(sent_to(&out, 2).len(), 1, "sender gets the echo with id");
        assert!(sent_to(&out, 3).is_empty());
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
            device: None,
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
            device: None,
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

    // ------------------------------------------------------------------ MLS

    use crate::mls_frame::synth;

    fn group(tag: &str) -> Vec<u8> {
        format!("{}{tag}", group_id_prefix(AppointmentId(7))).into_bytes()
    }

    fn commit(g: &[u8], epoch: u64) -> MlsCommit {
        MlsCommit {
            commit: synth::private_message(g, epoch, ContentType::Commit, b"sealed"),
            welcome: None,
            add: vec![],
        }
    }

    fn adding(g: &[u8], epoch: u64, add: &[u64]) -> MlsCommit {
        MlsCommit {
            welcome: Some(synth::welcome(b"secrets", b"group info")),
            add: add.iter().map(|p| ParticipantId(*p)).collect(),
            ..commit(g, epoch)
        }
    }

    fn mls_msgs(out: &[RoomOutput]) -> Vec<(u64, ServerMsg)> {
        out.iter()
            .filter_map(|o| match o {
                RoomOutput::Send { to, msg }
                    if matches!(
                        msg,
                        ServerMsg::MlsAccepted { .. }
                            | ServerMsg::MlsCommit { .. }
                            | ServerMsg::MlsWelcome { .. }
                    ) =>
                {
                    Some((to.0, msg.clone()))
                }
                _ => None,
            })
            .collect()
    }

    /// Doctor 1, patient 2 and guest 3 admitted, the group started by the doctor and
    /// at epoch 1.
    fn group_of_three() -> Consultation {
        let mut r = admitted_pair();
        r.handle_join(T0, joiner(3, Role::Guest)).unwrap();
        r.handle_admit(T0, ParticipantId(1), ParticipantId(3))
            .unwrap();
        r.handle_mls_commit(T0, ParticipantId(1), commit(&group("a"), 0))
            .unwrap();
        drain(&mut r);
        r
    }

    #[test]
    fn the_first_commit_of_an_epoch_wins_and_the_second_is_stale() {
        let mut r = group_of_three();
        let g = group("a");
        assert_eq!(
            r.handle_mls_commit(T0, ParticipantId(2), commit(&g, 1)),
            Ok(MlsAccepted {
                epoch: 2,
                admitted: vec![]
            })
        );
        let out = drain(&mut r);
        assert_eq!(
            mls_msgs(&out),
            vec![
                (2, ServerMsg::MlsAccepted { epoch: 2 }),
                (
                    1,
                    ServerMsg::MlsCommit {
                        from: ParticipantId(2),
                        epoch: 2,
                        commit: encode_b64(&commit(&g, 1).commit)
                    }
                ),
                (
                    3,
                    ServerMsg::MlsCommit {
                        from: ParticipantId(2),
                        epoch: 2,
                        commit: encode_b64(&commit(&g, 1).commit)
                    }
                ),
            ]
        );
        // The guest committed for epoch 1 at the same time: it lost the race.
        let e = r
            .handle_mls_commit(T0, ParticipantId(3), commit(&g, 1))
            .unwrap_err();
        assert_eq!(e, RoomError::StaleCommit { room: 2, got: 1 });
        assert_eq!(e.code(), ErrorCode::StaleCommit);
        assert!(e.message().contains("epoch 2") && e.message().contains("epoch 1"));
        assert!(drain(&mut r).is_empty(), "a refused commit is not relayed");
        assert_eq!(r.mls().map(|m| m.epoch), Some(2));
    }

    #[test]
    fn old_and_future_epochs_are_refused() {
        let mut r = group_of_three();
        let g = group("a");
        for epoch in [0, 2, u64::MAX] {
            assert_eq!(
                r.handle_mls_commit(T0, ParticipantId(2), commit(&g, epoch)),
                Err(RoomError::StaleCommit {
                    room: 1,
                    got: epoch
                })
            );
        }
        assert!(drain(&mut r).is_empty());
        assert_eq!(r.mls().map(|m| m.epoch), Some(1));
    }

    #[test]
    fn commits_for_another_group_are_refused() {
        let mut r = group_of_three();
        // Another consultation's group, even at the right epoch.
        let other = b"confide/c/8/a".to_vec();
        assert!(matches!(
            r.handle_mls_commit(T0, ParticipantId(1), commit(&other, 1)),
            Err(RoomError::WrongGroup(_))
        ));
        // A prefix that only looks alike.
        assert!(matches!(
            r.handle_mls_commit(T0, ParticipantId(1), commit(b"confide/c/77/a", 1)),
            Err(RoomError::WrongGroup(_))
        ));
        // A second group of this consultation, from someone other than the doctor.
        assert!(matches!(
            r.handle_mls_commit(T0, ParticipantId(2), commit(&group("b"), 1)),
            Err(RoomError::WrongGroup(_))
        ));
        assert!(drain(&mut r).is_empty());
        assert_eq!(r.mls().map(|m| m.group_id.clone()), Some(group("a")));
    }

    #[test]
    fn the_doctor_may_start_a_new_group_and_a_patient_may_not() {
        let mut r = group_of_three();
        // The patient cannot take the consultation over with a group of its own.
        assert!(matches!(
            r.handle_mls_commit(T0, ParticipantId(2), commit(&group("p"), 0)),
            Err(RoomError::WrongGroup(_))
        ));
        // The doctor's device restarted and made a new group: the room follows it.
        assert_eq!(
            r.handle_mls_commit(T0, ParticipantId(1), commit(&group("b"), 0))
                .map(|a| a.epoch),
            Ok(1)
        );
        drain(&mut r);
        assert_eq!(
            r.mls(),
            Some(&MlsGroup {
                group_id: group("b"),
                epoch: 1
            })
        );
        // Commits of the old group are now for the wrong group.
        assert!(matches!(
            r.handle_mls_commit(T0, ParticipantId(2), commit(&group("a"), 1)),
            Err(RoomError::WrongGroup(_))
        ));
        // A new group must start at epoch 0, also for the doctor.
        assert!(matches!(
            r.handle_mls_commit(T0, ParticipantId(1), commit(&group("c"), 3)),
            Err(RoomError::WrongGroup(_))
        ));
    }

    #[test]
    fn before_any_group_only_the_doctor_starts_one() {
        let mut r = admitted_pair();
        assert!(matches!(
            r.handle_mls_commit(T0, ParticipantId(2), commit(&group("p"), 0)),
            Err(RoomError::WrongGroup(_))
        ));
        assert!(matches!(
            r.handle_mls_commit(T0, ParticipantId(1), commit(&group("a"), 4)),
            Err(RoomError::WrongGroup(_))
        ));
        assert!(r.mls().is_none());
        assert!(
            r.handle_mls_commit(T0, ParticipantId(1), commit(&group("a"), 0))
                .is_ok()
        );
    }

    #[test]
    fn add_admits_and_delivers_the_welcome_after_admitted() {
        let mut r = room();
        r.handle_join(T0, joiner(1, Role::Doctor)).unwrap();
        r.handle_join(T0, joiner(2, Role::Patient)).unwrap();
        drain(&mut r);
        let c = adding(&group("a"), 0, &[2]);
        let welcome = encode_b64(c.welcome.as_deref().unwrap());
        assert_eq!(
            r.handle_mls_commit(T0, ParticipantId(1), c),
            Ok(MlsAccepted {
                epoch: 1,
                admitted: vec![(ParticipantId(2), Role::Patient)]
            })
        );
        assert_eq!(r.state_of(ParticipantId(2)), Some(MemberState::Admitted));
        let out = drain(&mut r);
        let to_patient = sent_to(&out, 2);
        assert!(
            matches!(to_patient[0], ServerMsg::Admitted { .. }),
            "{to_patient:?}"
        );
        assert_eq!(
            to_patient[1],
            ServerMsg::MlsWelcome {
                from: ParticipantId(1),
                welcome
            }
        );
        assert_eq!(to_patient.len(), 2, "the added member gets no mls_commit");
        let to_doctor = sent_to(&out, 1);
        assert_eq!(to_doctor[0], ServerMsg::MlsAccepted { epoch: 1 });
        assert_joined_and_media_admits(&out, 1, 2);
    }

    #[test]
    fn add_of_an_admitted_member_only_delivers_the_welcome() {
        // The doctor rejoined with a new group and adds everyone already in.
        let mut r = group_of_three();
        assert_eq!(
            r.handle_mls_commit(T0, ParticipantId(1), adding(&group("b"), 0, &[2, 3]))
                .map(|a| a.admitted),
            Ok(vec![])
        );
        let out = drain(&mut r);
        for who in [2, 3] {
            let m = sent_to(&out, who);
            assert_eq!(m.len(), 1, "{m:?}");
            assert!(matches!(m[0], ServerMsg::MlsWelcome { .. }));
        }
    }

    #[test]
    fn add_is_checked_before_anything_changes() {
        let mut r = room();
        r.handle_join(T0, joiner(1, Role::Doctor)).unwrap();
        r.handle_join(T0, joiner(2, Role::Patient)).unwrap();
        r.handle_join(T0, joiner(3, Role::Guest)).unwrap();
        r.handle_admit(T0, ParticipantId(1), ParticipantId(3))
            .unwrap();
        drain(&mut r);
        let g = group("a");
        // Only the doctor adds.
        assert_eq!(
            r.handle_mls_commit(T0, ParticipantId(3), adding(&g, 0, &[2])),
            Err(RoomError::NotDoctor)
        );
        // Nobody by that id, or the doctor itself.
        for who in [9, 1] {
            assert_eq!(
                r.handle_mls_commit(T0, ParticipantId(1), adding(&g, 0, &[2, who])),
                Err(RoomError::UnknownParticipant)
            );
        }
        // add without a welcome, a welcome without add, a welcome that is not one.
        let mut c = adding(&g, 0, &[2]);
        c.welcome = None;
        assert!(matches!(
            r.handle_mls_commit(T0, ParticipantId(1), c),
            Err(RoomError::InvalidMls(_))
        ));
        let mut c = adding(&g, 0, &[]);
        c.add.clear();
        assert!(matches!(
            r.handle_mls_commit(T0, ParticipantId(1), c),
            Err(RoomError::InvalidMls(_))
        ));
        let mut c = adding(&g, 0, &[2]);
        c.welcome = Some(synth::key_package(b"kp"));
        assert!(matches!(
            r.handle_mls_commit(T0, ParticipantId(1), c),
            Err(RoomError::BadMls {
                what: "welcome",
                ..
            })
        ));
        assert!(drain(&mut r).is_empty());
        assert!(r.mls().is_none());
        assert_eq!(r.state_of(ParticipantId(2)), Some(MemberState::Waiting));
    }

    #[test]
    fn a_full_room_refuses_add_without_advancing_the_epoch() {
        let mut r = full_room();
        r.handle_mls_commit(T0, ParticipantId(1), commit(&group("a"), 0))
            .unwrap();
        r.handle_join(T0, joiner(30, Role::Guest)).unwrap();
        drain(&mut r);
        assert_eq!(
            r.handle_mls_commit(T0, ParticipantId(1), adding(&group("a"), 1, &[30])),
            Err(RoomError::Full)
        );
        assert!(drain(&mut r).is_empty());
        assert_eq!(r.mls().map(|m| m.epoch), Some(1), "the epoch did not move");
        assert_eq!(r.state_of(ParticipantId(30)), Some(MemberState::Waiting));
        // The same commit without the add is fine.
        assert!(
            r.handle_mls_commit(T0, ParticipantId(1), commit(&group("a"), 1))
                .is_ok()
        );
    }

    #[test]
    fn malformed_or_unwanted_messages_are_refused() {
        let mut r = group_of_three();
        let g = group("a");
        let refuse = |r: &mut Consultation, bytes: Vec<u8>| {
            r.handle_mls_commit(
                T0,
                ParticipantId(2),
                MlsCommit {
                    commit: bytes,
                    welcome: None,
                    add: vec![],
                },
            )
            .unwrap_err()
        };
        let good = commit(&g, 1).commit;
        assert!(matches!(
            refuse(&mut r, b"garbage".to_vec()),
            RoomError::BadMls { .. }
        ));
        assert!(matches!(
            refuse(&mut r, good[..good.len() - 1].to_vec()),
            RoomError::BadMls { .. }
        ));
        assert!(matches!(
            refuse(&mut r, synth::welcome(b"s", b"i")),
            RoomError::BadMls { .. }
        ));
        // Application messages and proposals are not commits.
        for ct in [ContentType::Application, ContentType::Proposal] {
            assert!(matches!(
                refuse(&mut r, synth::private_message(&g, 1, ct, b"x")),
                RoomError::InvalidMls(_)
            ));
        }
        // External commits: nobody joins except by the doctor's Add.
        for sender in [
            Sender::NewMemberCommit,
            Sender::External(0),
            Sender::NewMemberProposal,
        ] {
            let e = refuse(
                &mut r,
                synth::public_message(&g, 1, sender, ContentType::Commit, b"x"),
            );
            assert!(matches!(e, RoomError::InvalidMls(_)), "{sender:?}");
            assert_eq!(e.code(), ErrorCode::InvalidMessage);
        }
        // A member's PublicMessage commit is fine.
        assert!(
            r.handle_mls_commit(
                T0,
                ParticipantId(2),
                MlsCommit {
                    commit: synth::public_message(
                        &g,
                        1,
                        Sender::Member(1),
                        ContentType::Commit,
                        b"x"
                    ),
                    welcome: None,
                    add: vec![]
                }
            )
            .is_ok()
        );
    }

    #[test]
    fn waiting_participants_cannot_commit() {
        let mut r = room();
        r.handle_join(T0, joiner(1, Role::Doctor)).unwrap();
        r.handle_join(T0, joiner(2, Role::Patient)).unwrap();
        assert_eq!(
            r.handle_mls_commit(T0, ParticipantId(2), commit(&group("a"), 0)),
            Err(RoomError::NotAdmitted)
        );
        assert_eq!(
            r.handle_mls_commit(T0, ParticipantId(9), commit(&group("a"), 0)),
            Err(RoomError::NotMember)
        );
    }

    #[test]
    fn the_group_resets_when_everyone_has_left() {
        let mut r = group_of_three();
        for p in [1, 2] {
            r.handle_leave(T0, ParticipantId(p), LeaveReason::Left)
                .unwrap();
        }
        assert!(r.mls().is_some(), "the guest still holds the group");
        r.handle_leave(T0, ParticipantId(3), LeaveReason::Disconnected)
            .unwrap();
        assert!(r.mls().is_none());
    }

    #[test]
    fn participants_carry_principal_and_device() {
        let mut r = room();
        let mut d = joiner(1, Role::Doctor);
        d.device = DeviceId::parse("00112233445566778899aabbccddeeff");
        r.handle_join(T0, d).unwrap();
        r.handle_join(T0, joiner(2, Role::Patient)).unwrap();
        let out = drain(&mut r);
        let waiting = sent_to(&out, 1)
            .into_iter()
            .find_map(|m| match m {
                ServerMsg::WaitingRoom { waiting } if !waiting.is_empty() => Some(waiting),
                _ => None,
            })
            .unwrap();
        assert_eq!(waiting[0].principal, "account:102");
        assert_eq!(waiting[0].device, None);
        r.handle_admit(T0, ParticipantId(1), ParticipantId(2))
            .unwrap();
        let out = drain(&mut r);
        match &sent_to(&out, 2)[0] {
            ServerMsg::Admitted { participants, .. } => {
                assert_eq!(participants[0].principal, "account:101");
                assert_eq!(
                    participants[0].device.as_ref().map(DeviceId::as_str),
                    Some("00112233445566778899aabbccddeeff")
                );
            }
            m => panic!("{m:?}"),
        }
    }
}
