//! One participant of a consultation, end to end, as a browser does it: log in (TOTP),
//! register this device in the key directory, open `/ws`, join, wait to be admitted
//! (or, as the doctor, admit), negotiate media with the SFU, run the consultation's MLS
//! group (`docs/keys.md`), and answer the SFU's renegotiations until the consultation
//! ends.
//!
//! Keys: the doctor's device creates the group and is the only one that adds and
//! removes; everyone else joins from a Welcome. Before a key is shared with a device
//! the device is checked against the key directory's log and this device's pins
//! ([`confide_mls::admission`]); anything that fails is refused or held back and shows
//! as a [`Happening::Warning`]. Frame keys come from the group's epoch secret and go to
//! the [`MediaLoop`]; chat and key-transparency checkpoints are MLS application
//! messages in `chat`.
//!
//! The media session itself runs in a shared [`MediaLoop`]; this type is the signaling
//! side and holds the group state.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use confide_mls::{ConsultationGroup, DeviceId, DeviceName, Principal};
use confide_proto::model::{AppointmentId, DeviceId as WireDeviceId, Role};
use confide_proto::{ClientMsg, ParticipantInfo, ServerMsg};

use crate::device::{KeyConfig, StoreError};
use crate::directory::KeyDirectory;
use crate::driver::{DriverError, MediaLoop, SlotId, SlotSpec, Traffic};
use crate::signaling::{Endpoint, Signaling, SignalingError};

mod group;

pub use group::KeyWarning;
use group::Keys;

/// Errors of a participant's flow.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsultationError {
    /// Signaling failed.
    #[error("signaling: {0}")]
    Signaling(#[from] SignalingError),
    /// The media loop failed.
    #[error("media: {0}")]
    Driver(#[from] DriverError),
    /// This device's stored state could not be read or written.
    #[error("device: {0}")]
    Device(#[from] StoreError),
    /// The MLS layer failed on our own input (not a peer's): a bug or a corrupt state.
    #[error("keys: {0}")]
    Keys(#[from] confide_mls::Error),
    /// The server turned us away.
    #[error("denied")]
    Denied,
    /// The consultation ended.
    #[error("consultation ended")]
    Ended,
    /// API misuse (e.g. media before joining).
    #[error("{0}")]
    Usage(&'static str),
}

/// Login credentials. `Debug` never prints the password or the secret.
#[derive(Clone)]
pub struct Credentials {
    /// Username.
    pub username: String,
    /// Password.
    pub password: String,
    /// Base32 TOTP secret, for accounts with a second factor.
    pub totp_secret: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Something worth telling the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Happening {
    /// We share the group's current epoch with `peer`: its frames open with our keys
    /// and ours with its keys.
    Keyed {
        /// The peer's participant id.
        peer: u64,
    },
    /// The group moved to a new epoch (its key is installed).
    Epoch(u64),
    /// Someone was admitted.
    PeerJoined(u64),
    /// Someone left.
    PeerLeft(u64),
    /// Someone is waiting (doctor).
    Waiting(Vec<u64>),
    /// A chat line from a member.
    Chat {
        /// The participant id the server reported.
        from: u64,
        /// The member who sent it, as MLS authenticated it.
        sender: DeviceName,
        /// The text.
        text: String,
    },
    /// A key-layer warning.
    Warning(KeyWarning),
    /// The doctor's device removed us from the group.
    Removed,
}

/// What the room tells about a participant.
#[derive(Debug, Clone)]
struct Person {
    role: Role,
    /// The device it joined with (principal and device id from the server).
    name: Option<DeviceName>,
}

/// One participant's signaling side.
pub struct Participant {
    sig: Signaling,
    ep: Endpoint,
    token: String,
    you: u64,
    admitted: bool,
    media: Arc<MediaLoop>,
    slot: Option<SlotId>,
    peers: BTreeSet<u64>,
    people: HashMap<u64, Person>,
    waiting: Vec<u64>,
    deferred: VecDeque<ServerMsg>,
    /// Happenings produced while a call waited for something else; returned first by
    /// the next step.
    backlog: Vec<Happening>,
    keys: Keys,
}

impl std::fmt::Debug for Participant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Participant")
            .field("you", &self.you)
            .field("admitted", &self.admitted)
            .field("peers", &self.peers)
            .field("device", self.keys.store.name())
            .finish_non_exhaustive()
    }
}

const STEP: Duration = Duration::from_secs(20);

fn person(p: &ParticipantInfo) -> (u64, Person) {
    let name = p.device.as_ref().and_then(|d| {
        let principal = Principal::new(&p.principal).ok()?;
        let device = DeviceId::parse(d.as_str()).ok()?;
        Some(DeviceName { principal, device })
    });
    (p.id.0, Person { role: p.role, name })
}

impl Participant {
    /// Logs in, connects and joins `consultation` with a fresh temporary device.
    /// Returns once the server said `joined` (the doctor) or `waiting` (everyone else).
    pub async fn join(
        endpoint: &Endpoint,
        creds: &Credentials,
        consultation: i64,
        media: Arc<MediaLoop>,
    ) -> Result<Self, ConsultationError> {
        let token = endpoint
            .login(
                &creds.username,
                &creds.password,
                creds.totp_secret.as_deref(),
            )
            .await?;
        Self::join_with_keys(endpoint, &token, consultation, media, KeyConfig::default()).await
    }

    /// Like [`Participant::join`] with a session token (e.g. a guest's).
    pub async fn join_with_token(
        endpoint: &Endpoint,
        token: &str,
        consultation: i64,
        media: Arc<MediaLoop>,
    ) -> Result<Self, ConsultationError> {
        Self::join_with_keys(endpoint, token, consultation, media, KeyConfig::default()).await
    }

    /// Joins with the device `keys` names: loads (or makes) this principal's device,
    /// registers it, tops up its KeyPackages, pins the log key on first use, then joins.
    pub async fn join_with_keys(
        endpoint: &Endpoint,
        token: &str,
        consultation: i64,
        media: Arc<MediaLoop>,
        keys: KeyConfig,
    ) -> Result<Self, ConsultationError> {
        let (store, log_key, log) = group::open_device(endpoint, token, &keys).await?;
        let device_id = store.name().device;

        let mut sig = endpoint.connect(token).await?;
        let appt = AppointmentId(consultation);
        sig.send(&ClientMsg::Join {
            consultation: appt,
            device: WireDeviceId::parse(&device_id.to_string()),
        })
        .await?;
        // `joined`: the doctor; `waiting`: everyone else; `admitted` at once: someone
        // whose connection dropped, back within the server's rejoin grace.
        let (you, doctor, admitted, people) = sig
            .wait_for(STEP, "joined or waiting", |m| match m {
                ServerMsg::Joined {
                    you, participants, ..
                } => Some((you.0, true, true, participants.iter().map(person).collect())),
                ServerMsg::Admitted {
                    you, participants, ..
                } => Some((
                    you.0,
                    false,
                    true,
                    participants.iter().map(person).collect(),
                )),
                ServerMsg::Waiting { you, .. } => Some((you.0, false, false, HashMap::new())),
                _ => None,
            })
            .await?;
        let people: HashMap<u64, Person> = people;
        let mut keys = Keys::new(store, keys.policy, log_key, log, consultation.to_string());
        let peers: BTreeSet<u64> = people.keys().copied().filter(|&p| p != you).collect();
        if doctor {
            // The doctor: a new group for this visit; whoever is already admitted (we
            // rejoined) is added in one commit.
            keys.group = Some(ConsultationGroup::create(
                keys.device(),
                &keys.consultation,
            )?);
            keys.to_add = peers.clone();
        }
        let mut p = Participant {
            sig,
            ep: endpoint.clone(),
            token: token.to_string(),
            you,
            admitted,
            media,
            slot: None,
            peers,
            people,
            waiting: Vec::new(),
            deferred: VecDeque::new(),
            backlog: Vec::new(),
            keys,
        };
        let out = p.add_pending().await?;
        p.backlog.extend(out);
        Ok(p)
    }

    /// Our participant id.
    pub fn you(&self) -> u64 {
        self.you
    }

    /// Our media slot, once media started.
    pub fn slot(&self) -> Option<SlotId> {
        self.slot
    }

    /// Admitted peers.
    pub fn peers(&self) -> impl Iterator<Item = u64> + '_ {
        self.peers.iter().copied()
    }

    /// This device.
    pub fn device(&self) -> &DeviceName {
        self.keys.store.name()
    }

    /// Waits until the doctor admits us.
    pub async fn wait_admitted(&mut self) -> Result<(), ConsultationError> {
        if self.admitted {
            return Ok(());
        }
        let deferred = &mut self.deferred;
        let res = self
            .sig
            .wait_for(STEP, "admitted", |m| match m {
                ServerMsg::Admitted { participants, .. } => {
                    Some(Ok(participants.iter().map(person).collect::<Vec<_>>()))
                }
                ServerMsg::Denied { .. } => Some(Err(ConsultationError::Denied)),
                ServerMsg::Ended { .. } => Some(Err(ConsultationError::Ended)),
                other => {
                    deferred.push_back(other.clone());
                    None
                }
            })
            .await??;
        for (id, p) in res {
            if id != self.you {
                self.peers.insert(id);
            }
            self.people.insert(id, p);
        }
        self.admitted = true;
        Ok(())
    }

    /// Doctor: waits until `n` participants are waiting and admits them through the
    /// key layer: each one's KeyPackage is claimed and checked, and those that pass
    /// are added to the group in one commit, which is what admits them. Returns the
    /// participants admitted; one that fails a check (a warning says why) stays in
    /// the waiting room, and counts towards `n` all the same.
    pub async fn admit(&mut self, n: usize) -> Result<Vec<u64>, ConsultationError> {
        let mut admitted = Vec::new();
        let mut tried = BTreeSet::new();
        loop {
            let fresh: Vec<u64> = self
                .waiting
                .iter()
                .copied()
                .filter(|id| !tried.contains(id))
                .collect();
            if !fresh.is_empty() {
                tried.extend(fresh.iter().copied());
                self.keys.to_add.extend(fresh.iter().copied());
                let out = self.add_pending().await?;
                admitted.extend(fresh.into_iter().filter(|id| self.keys.added.contains(id)));
                self.backlog.extend(out);
            }
            if tried.len() >= n {
                return Ok(admitted);
            }
            let m = self.sig.recv_timeout(STEP, "waiting room").await?;
            let out = self.handle(m).await?;
            self.backlog.extend(out);
        }
    }

    /// Creates our media session in the loop, offers it to the SFU and waits for the
    /// answer; installs the group's key if we have one.
    pub async fn start_media(&mut self, traffic: Traffic) -> Result<SlotId, ConsultationError> {
        if !self.admitted {
            return Err(ConsultationError::Usage("media before admission"));
        }
        let (slot, offer) = self
            .media
            .create(SlotSpec {
                you: self.you,
                traffic,
            })
            .await?;
        self.slot = Some(slot);
        self.sig.send(&ClientMsg::MediaOffer { sdp: offer }).await?;
        let deferred = &mut self.deferred;
        let answer = self
            .sig
            .wait_for(STEP, "media_answer", |m| match m {
                ServerMsg::MediaAnswer { sdp } => Some(sdp.clone()),
                ServerMsg::Error { .. } => None,
                other => {
                    deferred.push_back(other.clone());
                    None
                }
            })
            .await?;
        self.media.answer(slot, answer).await?;
        self.sync_media().await?;
        // Whatever arrived meanwhile (Welcome, commits, renegotiations, joins) is
        // handled now; what it produced is returned by the next step.
        while let Some(m) = self.deferred.pop_front() {
            let out = self.handle(m).await?;
            self.backlog.extend(out);
        }
        Ok(slot)
    }

    /// Handles signaling for up to `limit`; returns what happened. Stops early at the
    /// first [`Happening`] batch or when `limit` passes.
    pub async fn step(&mut self, limit: Duration) -> Result<Vec<Happening>, ConsultationError> {
        if !self.backlog.is_empty() {
            return Ok(std::mem::take(&mut self.backlog));
        }
        if let Some(m) = self.deferred.pop_front() {
            return self.handle(m).await;
        }
        match tokio::time::timeout(limit, self.sig.recv()).await {
            Err(_) => Ok(Vec::new()),
            Ok(m) => self.handle(m?).await,
        }
    }

    /// Runs signaling until `done` holds for what happened so far, at most `limit`.
    pub async fn run_until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&[Happening]) -> bool,
    ) -> Result<Vec<Happening>, ConsultationError> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut all = Vec::new();
        while !done(&all) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(SignalingError::Timeout("consultation step").into());
            }
            all.extend(self.step(left).await?);
        }
        Ok(all)
    }

    /// Handles signaling (renegotiations, keys, joins) until `until` resolves; returns
    /// what happened. Call it while media runs, or the SFU's offers go unanswered.
    pub async fn serve_until(
        &mut self,
        until: impl std::future::Future<Output = ()>,
    ) -> Result<Vec<Happening>, ConsultationError> {
        let mut all = std::mem::take(&mut self.backlog);
        while let Some(m) = self.deferred.pop_front() {
            all.extend(self.handle(m).await?);
        }
        tokio::pin!(until);
        loop {
            // Only the receive is raced against `until`: a message being handled is
            // never cut off halfway.
            let m = tokio::select! {
                m = self.sig.recv() => m?,
                _ = &mut until => return Ok(all),
            };
            all.extend(self.handle(m).await?);
        }
    }

    async fn handle(&mut self, m: ServerMsg) -> Result<Vec<Happening>, ConsultationError> {
        let mut out = Vec::new();
        match m {
            ServerMsg::WaitingRoom { waiting } => {
                self.waiting = waiting.iter().map(|p| p.id.0).collect();
                for p in &waiting {
                    let (id, p) = person(p);
                    self.people.insert(id, p);
                }
                out.push(Happening::Waiting(self.waiting.clone()));
            }
            ServerMsg::ParticipantJoined { participant } => {
                let (id, p) = person(&participant);
                self.people.insert(id, p);
                if id != self.you && self.peers.insert(id) {
                    out.push(Happening::PeerJoined(id));
                    // Admitted without our commit (the server's rejoin grace): the
                    // doctor's device adds it after the same checks as any joiner.
                    if self.is_owner() && !self.keys.added.contains(&id) {
                        self.keys.to_add.insert(id);
                        out.extend(self.add_pending().await?);
                    }
                }
            }
            ServerMsg::ParticipantLeft { participant, .. } => {
                let id = participant.0;
                self.peers.remove(&id);
                self.keys.to_add.remove(&id);
                self.keys.added.remove(&id);
                self.keys.held.retain(|h| h.participant != id);
                out.push(Happening::PeerLeft(id));
                if self.is_owner() {
                    out.extend(self.remove_member(id).await?);
                }
            }
            ServerMsg::MediaOffer { sdp } => {
                let slot = self
                    .slot
                    .ok_or(ConsultationError::Usage("offer before media"))?;
                let answer = self.media.offer(slot, sdp).await?;
                self.sig
                    .send(&ClientMsg::MediaAnswer { sdp: answer })
                    .await?;
            }
            ServerMsg::MlsWelcome { from, welcome } => {
                out.extend(self.on_welcome(from.0, &welcome).await?);
            }
            ServerMsg::MlsCommit { from, commit, .. } => {
                out.extend(self.on_commit(from.0, &commit).await?);
            }
            // The server echoes our own messages; MLS cannot open them anyway.
            ServerMsg::Chat {
                from, ciphertext, ..
            } if from.0 != self.you => {
                out.extend(self.on_chat(from.0, &ciphertext).await?);
            }
            ServerMsg::Ended { .. } | ServerMsg::Denied { .. } => {
                return Err(ConsultationError::Ended);
            }
            _ => {}
        }
        Ok(out)
    }

    /// Sends a ping and waits for the pong (a signaling round trip).
    pub async fn ping(&mut self) -> Result<(), ConsultationError> {
        self.sig.send(&ClientMsg::Ping { nonce: Some(1) }).await?;
        let deferred = &mut self.deferred;
        self.sig
            .wait_for(STEP, "pong", |m| match m {
                ServerMsg::Pong { .. } => Some(()),
                other => {
                    deferred.push_back(other.clone());
                    None
                }
            })
            .await?;
        Ok(())
    }

    /// Doctor: ends the consultation for everyone and waits for `ended`.
    pub async fn end(mut self) -> Result<(), ConsultationError> {
        self.sig.send(&ClientMsg::End).await?;
        let _ = self
            .sig
            .wait_for(STEP, "ended", |m| {
                matches!(m, ServerMsg::Ended { .. }).then_some(())
            })
            .await;
        self.finish().await;
        Ok(())
    }

    /// Leaves (the connection closes).
    pub async fn leave(mut self) {
        let _ = self.sig.send(&ClientMsg::Leave).await;
        self.finish().await;
        self.sig.close().await;
    }

    /// Waits until the server ends the consultation (the doctor ended it).
    pub async fn wait_ended(mut self, limit: Duration) -> Result<(), ConsultationError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.step(left).await {
                Err(ConsultationError::Ended)
                | Err(ConsultationError::Signaling(SignalingError::Closed)) => {
                    self.finish().await;
                    return Ok(());
                }
                Err(e) => return Err(e),
                Ok(_) if left.is_zero() => {
                    return Err(SignalingError::Timeout("ended").into());
                }
                Ok(_) => {}
            }
        }
    }

    /// The consultation is over for us: media stops, the group's secrets are deleted
    /// from the device state, and a temporary device is revoked (it is never used
    /// again, so it must not stay listed, and served, in the directory).
    async fn finish(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.media.remove(slot);
        }
        for g in [self.keys.group.take(), self.keys.held_group.take()]
            .into_iter()
            .flatten()
        {
            let _ = g.delete(self.keys.store.device());
        }
        if let Err(e) = self.keys.store.save_state() {
            tracing::warn!(error = %e, "device state not saved");
        }
        if !self.keys.store.is_persistent() {
            let device = self.keys.store.name().device;
            if let Err(e) = KeyDirectory::new(&self.ep, &self.token)
                .revoke(&device)
                .await
            {
                tracing::warn!(error = %e, "temporary device not revoked");
            }
        }
    }
}
