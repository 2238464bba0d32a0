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

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use confide_mls::admission;
use confide_mls::pins::PinStatus;
use confide_mls::transparency::{GroupPayload, LogView, LoggedDevice, TreeHead};
use confide_mls::{
    ClaimedKeyPackage, ConsultationGroup, DeviceId, DeviceName, Incoming, Member, Principal, safety,
};
use confide_signaling::model::{AppointmentId, DeviceId as WireDeviceId, ParticipantId, Role};
use confide_signaling::proto::{ClientMsg, ParticipantInfo, ServerMsg};

use crate::device::{DeviceStore, KeyConfig, PinPolicy, StoreError};
use crate::directory::KeyDirectory;
use crate::driver::{DriverError, EpochKeys, MediaLoop, SUITE, SlotId, SlotSpec, Traffic};
use crate::signaling::{Endpoint, Signaling, SignalingError};

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

/// A key-layer event people must see. None of them carries key material.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyWarning {
    /// The directory offered a key it cannot back: a KeyPackage that does not verify,
    /// names another device than the one admitted, or a device or key missing from (or
    /// revoked in) the log. Nobody was added.
    Refused {
        /// The participant the key was offered for.
        participant: u64,
        /// What failed.
        reason: String,
    },
    /// "<name>'s security key changed. Compare the code before you continue.": a new
    /// device or a changed key of a pinned principal (or any first contact, under a
    /// strict policy). No key is shared with it until [`Participant::accept_key`].
    KeyChanged {
        /// The participant (0 when no participant in the room has this device).
        participant: u64,
        /// The device.
        device: DeviceName,
        /// How it relates to the pins.
        status: PinStatus,
    },
    /// A group message or Welcome that MLS or the group policy refused (a forged or
    /// replayed commit, an Add not signed by the doctor's device, a Welcome for another
    /// group). The group is unchanged.
    RejectedMessage {
        /// The participant the server says sent it.
        from: u64,
        /// What failed.
        reason: String,
    },
    /// The server showed us and this member different key histories (a forked log).
    SplitView {
        /// The participant whose checkpoint does not extend ours (or ours theirs).
        peer: u64,
        /// The member, as MLS authenticated it.
        device: DeviceName,
    },
    /// A checkpoint from the server does not extend the one this device accepted
    /// before: the server rewrote its log.
    LogForked {
        /// What failed.
        reason: String,
    },
}

impl KeyWarning {
    /// A short name of the warning, without whom it is about (for logs and counters).
    pub fn kind(&self) -> &'static str {
        match self {
            KeyWarning::Refused { .. } => "refused",
            KeyWarning::KeyChanged { .. } => "key_changed",
            KeyWarning::RejectedMessage { .. } => "rejected_message",
            KeyWarning::SplitView { .. } => "split_view",
            KeyWarning::LogForked { .. } => "log_forked",
        }
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

/// A key the user has to accept before it is shared with.
#[derive(Debug, Clone)]
struct Held {
    participant: u64,
    name: DeviceName,
    key: [u8; 32],
}

/// How many times the doctor's device asks the directory for a KeyPackage of one
/// joiner before it gives up until the next admission.
const CLAIM_ATTEMPTS: usize = 3;
/// How long it waits between attempts.
const CLAIM_RETRY: Duration = Duration::from_millis(200);
/// When the doctor's device has fewer one-time KeyPackages than this on the
/// directory, it uploads a new batch.
const MIN_KEY_PACKAGES: u64 = 5;
/// The batch.
const KEY_PACKAGE_BATCH: usize = 10;

/// The key layer of one participant: device, log view, group.
struct Keys {
    store: DeviceStore,
    policy: PinPolicy,
    log_key: String,
    log: LogView,
    consultation: String,
    group: Option<ConsultationGroup>,
    /// A group we were welcomed into whose owner waits for the user.
    held_group: Option<ConsultationGroup>,
    /// Keys held back until the user accepts them.
    held: Vec<Held>,
    /// Doctor: admitted participants not in the group yet.
    to_add: BTreeSet<u64>,
    /// (group id, epoch) the media slot holds.
    installed: Option<(Vec<u8>, u64)>,
    /// Sending is held back (a member added by the doctor failed our check).
    holding: bool,
    warnings: Vec<KeyWarning>,
}

impl Keys {
    fn device(&self) -> &confide_mls::Device {
        self.store.device()
    }
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

fn peer_error(e: &confide_mls::Error) -> String {
    let mut s = e.to_string();
    s.truncate(160);
    s
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
        let dir = KeyDirectory::new(endpoint, token);
        let principal = dir.me().await?;
        let mut store = DeviceStore::open(keys.state_dir.as_deref(), principal)?;
        dir.register(store.device()).await?;
        let device_id = store.name().device;
        let count = dir.key_packages(&device_id).await?;
        if count.available < MIN_KEY_PACKAGES || !count.last_resort {
            let one_time = store.device().key_packages(KEY_PACKAGE_BATCH)?;
            let last_resort = store.device().last_resort_key_package()?;
            // Saved before upload: a Welcome for one of them must find its private key.
            store.save_state()?;
            dir.upload_key_packages(&device_id, &one_time, Some(&last_resort))
                .await?;
        }
        let log_key = match store.log_key() {
            Some(k) => k.to_string(),
            None => {
                let k = dir.log_key().await?;
                store.save_log(&k, String::new())?;
                k
            }
        };
        let log = LogView::new(&log_key, Some(store.log_head()))?;

        let mut sig = endpoint.connect(token).await?;
        let appt = AppointmentId(consultation);
        sig.send(&ClientMsg::Join {
            consultation: appt,
            device: WireDeviceId::parse(&device_id.to_string()),
        })
        .await?;
        let (you, admitted, people) = sig
            .wait_for(STEP, "joined or waiting", |m| match m {
                ServerMsg::Joined {
                    you, participants, ..
                } => Some((you.0, true, participants.iter().map(person).collect())),
                ServerMsg::Waiting { you, .. } => Some((you.0, false, HashMap::new())),
                _ => None,
            })
            .await?;
        let people: HashMap<u64, Person> = people;
        let mut keys = Keys {
            store,
            policy: keys.policy,
            log_key,
            log,
            consultation: consultation.to_string(),
            group: None,
            held_group: None,
            held: Vec::new(),
            to_add: BTreeSet::new(),
            installed: None,
            holding: false,
            warnings: Vec::new(),
        };
        let peers: BTreeSet<u64> = people.keys().copied().filter(|&p| p != you).collect();
        if admitted {
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

    /// This device's Ed25519 key (what peers pin).
    pub fn device_key(&self) -> [u8; 32] {
        self.keys.device().signature_key()
    }

    /// The group's members, from MLS state (the roster people see).
    pub fn roster(&self) -> Vec<Member> {
        self.keys
            .group
            .as_ref()
            .map(ConsultationGroup::roster)
            .unwrap_or_default()
    }

    /// The group's id (public: the server sees it on every group message).
    pub fn group_id(&self) -> Option<Vec<u8>> {
        self.keys.group.as_ref().map(|g| g.group_id().to_vec())
    }

    /// The group's current epoch.
    pub fn epoch(&self) -> Option<u64> {
        self.keys.group.as_ref().map(ConsultationGroup::epoch)
    }

    /// Every key warning so far.
    pub fn warnings(&self) -> &[KeyWarning] {
        &self.keys.warnings
    }

    /// The newest log head this device accepted.
    pub fn log_head(&self) -> Option<TreeHead> {
        self.keys.log.latest()
    }

    /// A frame decryptor holding the group's current epoch key, as this device's media
    /// keys are now. For tests that check what a member can and cannot open; it holds
    /// key material: keep it in memory, never log it.
    pub fn frame_decryptor(&self) -> Option<confide_e2ee::GroupFrameDecryptor> {
        let g = self.keys.group.as_ref()?;
        let mut d = confide_e2ee::GroupFrameDecryptor::new(SUITE);
        d.install(g.epoch_secret(self.keys.device()).ok()?).ok()?;
        Some(d)
    }

    fn member_of(&self, peer: u64) -> Option<Member> {
        let name = self.people.get(&peer)?.name.as_ref()?;
        self.roster().into_iter().find(|m| &m.name == name)
    }

    fn participant_of(&self, name: &DeviceName) -> u64 {
        self.people
            .iter()
            .find(|(_, p)| p.name.as_ref() == Some(name))
            .map_or(0, |(id, _)| *id)
    }

    /// The safety code with `peer` (30 digits to compare aloud), once both are members
    /// of the group.
    pub fn safety_code(&self, peer: u64) -> Option<String> {
        let them = self.member_of(peer)?;
        let me = self.keys.store.name();
        let key = self.keys.device().signature_key();
        Some(safety::pair_code((me, &key), (&them.name, &them.signature_key)).to_string())
    }

    /// The user compared the safety code with `peer` and it matched: marks the pair
    /// verified on this device (it stays verified while neither key changes).
    pub fn mark_verified(&mut self, peer: u64) -> Result<bool, ConsultationError> {
        let Some(them) = self.member_of(peer) else {
            return Ok(false);
        };
        self.keys
            .store
            .update_pins(|p| p.mark_verified(&them.name, &them.signature_key))?;
        Ok(true)
    }

    /// Whether this device marked `peer`'s current key verified.
    pub fn is_verified(&self, peer: u64) -> bool {
        self.member_of(peer).is_some_and(|m| {
            self.keys
                .store
                .pins()
                .is_verified(&m.name, &m.signature_key)
        })
    }

    /// The user accepted the new or changed key of `peer` (after comparing the code):
    /// it is pinned, and what it held back goes on (the doctor's device adds the
    /// participant, a member installs the group or sends again). Returns what happened.
    pub async fn accept_key(&mut self, peer: u64) -> Result<Vec<Happening>, ConsultationError> {
        let (accepted, rest): (Vec<Held>, Vec<Held>) = std::mem::take(&mut self.keys.held)
            .into_iter()
            .partition(|h| h.participant == peer);
        self.keys.held = rest;
        if accepted.is_empty() {
            return Ok(Vec::new());
        }
        for h in &accepted {
            self.keys.store.update_pins(|p| p.pin(&h.name, &h.key))?;
        }
        let mut out = Vec::new();
        if self.is_owner() {
            self.keys.to_add.insert(peer);
            out.extend(self.add_pending().await?);
        } else if let Some(g) = self.keys.held_group.take() {
            out.extend(self.enter_group(g).await?);
        } else if self.keys.holding && self.keys.held.is_empty() {
            self.keys.holding = false;
            if let Some(slot) = self.slot {
                self.media.set_sending(slot, true).await?;
            }
        }
        Ok(out)
    }

    fn is_owner(&self) -> bool {
        self.keys
            .group
            .as_ref()
            .is_some_and(ConsultationGroup::is_owner)
    }

    /// Sends a chat line to the group.
    pub async fn send_chat(&mut self, text: &str) -> Result<(), ConsultationError> {
        let payload = GroupPayload::Chat { text: text.into() };
        self.send_group(&payload).await
    }

    async fn send_group(&mut self, payload: &GroupPayload) -> Result<(), ConsultationError> {
        let keys = &mut self.keys;
        let Some(group) = keys.group.as_mut() else {
            return Err(ConsultationError::Usage("no group yet"));
        };
        let sealed = group.seal(keys.store.device(), &payload.to_bytes())?;
        self.sig
            .send(&ClientMsg::Chat {
                ciphertext: B64.encode(sealed),
            })
            .await?;
        Ok(())
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
                admitted.extend(fresh.into_iter().filter(|&id| self.in_group(id)));
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

    /// Whether participant `id`'s device is a member of our group.
    fn in_group(&self, id: u64) -> bool {
        self.member_of(id).is_some()
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
                    if self.is_owner() && !self.in_group(id) {
                        self.keys.to_add.insert(id);
                        out.extend(self.add_pending().await?);
                    }
                }
            }
            ServerMsg::ParticipantLeft { participant, .. } => {
                let id = participant.0;
                self.peers.remove(&id);
                self.keys.to_add.remove(&id);
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

    fn warn(&mut self, w: KeyWarning, out: &mut Vec<Happening>) {
        // The kind only: the warning names people's devices.
        tracing::warn!(warning = w.kind(), "key layer");
        self.keys.warnings.push(w.clone());
        out.push(Happening::Warning(w));
    }

    /// The logged devices of `principal`: the directory's answer, its checkpoint
    /// accepted into our log view (with a consistency proof when it is not the head we
    /// hold) and every device's inclusion proof checked.
    async fn logged(
        &mut self,
        principal: &Principal,
    ) -> Result<Result<Vec<LoggedDevice>, confide_mls::Error>, ConsultationError> {
        let dir = KeyDirectory::new(&self.ep, &self.token);
        let answer = dir.directory(principal).await?;
        let head = match self.keys.log.parse_checkpoint(&answer.checkpoint) {
            Ok(h) => h,
            Err(e) => return Ok(Err(e)),
        };
        let proof = match self.keys.log.proof_needed(&head) {
            Some((from, to)) => dir.consistency(from, to).await?,
            None => Vec::new(),
        };
        if let Err(e) = self.keys.log.accept(head, &proof) {
            return Ok(Err(e));
        }
        let saved = self.keys.log.save();
        let key = self.keys.log_key.clone();
        self.keys.store.save_log(&key, saved)?;
        Ok(self.keys.log.verify_directory(&answer).map(|(ok, _)| ok))
    }

    /// Doctor: claims, checks and adds every admitted participant not in the group yet,
    /// in one commit.
    async fn add_pending(&mut self) -> Result<Vec<Happening>, ConsultationError> {
        let mut out = Vec::new();
        if !self.is_owner() || self.keys.to_add.is_empty() {
            return Ok(out);
        }
        let mut kps = Vec::new();
        let mut ids = Vec::new();
        for id in std::mem::take(&mut self.keys.to_add) {
            if let Some(kp) = self.claim_checked(id, &mut out).await? {
                kps.push(kp);
                ids.push(id);
            }
        }
        if kps.is_empty() {
            return Ok(out);
        }
        let keys = &mut self.keys;
        let Some(group) = keys.group.as_mut() else {
            return Ok(out);
        };
        let commit = group.add(keys.store.device(), &kps)?;
        let accepted = self
            .send_commit(
                &commit.commit,
                commit.welcome.as_deref(),
                ids.iter().map(|&i| ParticipantId(i)).collect(),
            )
            .await?;
        if !accepted {
            // Another commit won the epoch (or the server refused): try again later
            // from the new state.
            self.keys.to_add.extend(ids);
            return Ok(out);
        }
        self.keys.store.save_state()?;
        out.extend(self.after_epoch().await?);
        Ok(out)
    }

    /// Doctor: one joiner's KeyPackage, claimed and checked; `None` when it failed or
    /// waits for the user (a warning says which).
    async fn claim_checked(
        &mut self,
        id: u64,
        out: &mut Vec<Happening>,
    ) -> Result<Option<ClaimedKeyPackage>, ConsultationError> {
        let Some(expected) = self.people.get(&id).and_then(|p| p.name.clone()) else {
            self.warn(
                KeyWarning::Refused {
                    participant: id,
                    reason: "the server named no device for this participant".into(),
                },
                out,
            );
            return Ok(None);
        };
        for attempt in 0..CLAIM_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(CLAIM_RETRY).await;
            }
            let logged = match self.logged(&expected.principal).await? {
                Ok(l) => l,
                Err(e) => {
                    self.warn_refused(id, &e, out);
                    continue;
                }
            };
            let dir = KeyDirectory::new(&self.ep, &self.token);
            let claimed = match dir.claim(&expected.principal, &expected.device).await {
                Ok(c) => c,
                Err(SignalingError::Refused { code, .. }) => {
                    self.warn(
                        KeyWarning::Refused {
                            participant: id,
                            reason: format!("no key package: {code}"),
                        },
                        out,
                    );
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let kp = match ClaimedKeyPackage::parse(self.keys.device(), &claimed.key_package) {
                Ok(kp) => kp,
                Err(e) => {
                    self.warn_refused(id, &e, out);
                    continue;
                }
            };
            let status =
                match admission::check_joiner(&kp, &expected, &logged, self.keys.store.pins()) {
                    Ok(s) => s,
                    Err(e) => {
                        self.warn_refused(id, &e, out);
                        continue;
                    }
                };
            if !self.keys.policy.allows(status) {
                self.hold(id, expected, kp.signature_key(), status, out);
                return Ok(None);
            }
            if !matches!(status, PinStatus::Pinned { .. }) {
                let key = kp.signature_key();
                self.keys.store.update_pins(|p| p.pin(&expected, &key))?;
            }
            return Ok(Some(kp));
        }
        Ok(None)
    }

    fn warn_refused(&mut self, id: u64, e: &confide_mls::Error, out: &mut Vec<Happening>) {
        let w = match e {
            confide_mls::Error::Transparency(r) if r.contains("split view") => {
                KeyWarning::LogForked { reason: r.clone() }
            }
            _ => KeyWarning::Refused {
                participant: id,
                reason: peer_error(e),
            },
        };
        self.warn(w, out);
    }

    fn hold(
        &mut self,
        participant: u64,
        name: DeviceName,
        key: [u8; 32],
        status: PinStatus,
        out: &mut Vec<Happening>,
    ) {
        self.warn(
            KeyWarning::KeyChanged {
                participant,
                device: name.clone(),
                status,
            },
            out,
        );
        self.keys.held.push(Held {
            participant,
            name,
            key,
        });
    }

    /// Sends our pending commit and waits for the server's verdict: `true` if it was
    /// accepted (and merged), `false` if refused (and discarded). Other messages that
    /// arrive meanwhile are kept for later.
    async fn send_commit(
        &mut self,
        commit: &[u8],
        welcome: Option<&[u8]>,
        add: Vec<ParticipantId>,
    ) -> Result<bool, ConsultationError> {
        self.sig
            .send(&ClientMsg::MlsCommit {
                commit: B64.encode(commit),
                welcome: welcome.map(|w| B64.encode(w)),
                add,
            })
            .await?;
        let deferred = &mut self.deferred;
        let verdict = self
            .sig
            .wait_for(STEP, "mls_accepted", |m| match m {
                ServerMsg::MlsAccepted { .. } => Some(true),
                // `stale_commit`, `wrong_group`, `consultation_full`, ...: refused. One
                // commit is pending at a time, so the error is about it.
                ServerMsg::Error { .. } => Some(false),
                other => {
                    deferred.push_back(other.clone());
                    None
                }
            })
            .await;
        let keys = &mut self.keys;
        let Some(group) = keys.group.as_mut() else {
            return Ok(false);
        };
        match verdict {
            Ok(true) => {
                group.confirm_commit(keys.store.device())?;
                Ok(true)
            }
            Ok(false) => {
                group.discard_commit(keys.store.device())?;
                Ok(false)
            }
            Err(e) => {
                let _ = group.discard_commit(keys.store.device());
                Err(e.into())
            }
        }
    }

    /// Doctor: a participant left; its leaf goes in a Remove commit.
    async fn remove_member(&mut self, id: u64) -> Result<Vec<Happening>, ConsultationError> {
        let Some(name) = self.people.get(&id).and_then(|p| p.name.clone()) else {
            return Ok(Vec::new());
        };
        let keys = &mut self.keys;
        let Some(group) = keys.group.as_mut() else {
            return Ok(Vec::new());
        };
        let leaves: Vec<u32> = group
            .roster()
            .iter()
            .filter(|m| m.name == name && m.leaf != group.own_leaf())
            .map(|m| m.leaf)
            .collect();
        if leaves.is_empty() {
            return Ok(Vec::new());
        }
        let commit = group.remove(keys.store.device(), &leaves)?;
        if !self.send_commit(&commit.commit, None, Vec::new()).await? {
            return Ok(Vec::new());
        }
        self.after_epoch().await
    }

    /// After our group moved to a new epoch (or we entered a group): install its key,
    /// tell who is keyed, and carry our log head into the group.
    async fn after_epoch(&mut self) -> Result<Vec<Happening>, ConsultationError> {
        let mut out = Vec::new();
        let Some(group) = self.keys.group.as_ref() else {
            return Ok(out);
        };
        let epoch = group.epoch();
        let own = group.own_leaf();
        let keyed: Vec<u64> = group
            .roster()
            .iter()
            .filter(|m| m.leaf != own)
            .map(|m| self.participant_of(&m.name))
            .filter(|&p| p != 0)
            .collect();
        self.sync_media().await?;
        out.push(Happening::Epoch(epoch));
        out.extend(keyed.into_iter().map(|peer| Happening::Keyed { peer }));
        if let Some(head) = self.keys.log.latest() {
            let payload = GroupPayload::Checkpoint {
                size: head.size,
                root: head.root.to_base64(),
            };
            self.send_group(&payload).await?;
        }
        Ok(out)
    }

    /// Gives the media slot the group's current epoch key, if it does not hold it.
    async fn sync_media(&mut self) -> Result<(), ConsultationError> {
        let (Some(slot), Some(group)) = (self.slot, self.keys.group.as_ref()) else {
            return Ok(());
        };
        let now = (group.group_id().to_vec(), group.epoch());
        if self.keys.installed.as_ref() == Some(&now) {
            return Ok(());
        }
        let new_group = self
            .keys
            .installed
            .as_ref()
            .is_none_or(|(g, _)| *g != now.0);
        let keys = EpochKeys {
            secret: group.epoch_secret(self.keys.device())?,
            own_leaf: group.own_leaf(),
            peers: group.roster().len().saturating_sub(1),
            new_group,
            send: !self.keys.holding,
        };
        self.media.install_epoch(slot, keys).await?;
        self.keys.installed = Some(now);
        Ok(())
    }

    /// A Welcome: join the group if it belongs to this consultation and was made by a
    /// device of its doctor, then check that device against the log and the pins.
    async fn on_welcome(
        &mut self,
        from: u64,
        welcome: &str,
    ) -> Result<Vec<Happening>, ConsultationError> {
        let mut out = Vec::new();
        let doctor = self
            .people
            .values()
            .find(|p| p.role == Role::Doctor)
            .and_then(|p| p.name.as_ref())
            .map(|n| n.principal.clone());
        let (Some(doctor), Ok(bytes)) = (doctor, B64.decode(welcome)) else {
            self.warn(
                KeyWarning::RejectedMessage {
                    from,
                    reason: "welcome without a known doctor, or not base64".into(),
                },
                &mut out,
            );
            return Ok(out);
        };
        let group = match ConsultationGroup::join(
            self.keys.device(),
            &self.keys.consultation,
            &bytes,
            &doctor,
        ) {
            Ok(g) => g,
            Err(e) => {
                self.warn(
                    KeyWarning::RejectedMessage {
                        from,
                        reason: peer_error(&e),
                    },
                    &mut out,
                );
                return Ok(out);
            }
        };
        let Some(owner) = group.owner_member() else {
            return Ok(out);
        };
        let logged = match self.logged(&owner.name.principal).await? {
            Ok(l) => l,
            Err(e) => {
                let id = self.participant_of(&owner.name);
                self.warn_refused(id, &e, &mut out);
                return Ok(out);
            }
        };
        let status = match admission::check_owner(&owner, &logged, self.keys.store.pins()) {
            Ok(s) => s,
            Err(e) => {
                self.warn(
                    KeyWarning::RejectedMessage {
                        from,
                        reason: peer_error(&e),
                    },
                    &mut out,
                );
                return Ok(out);
            }
        };
        if !self.keys.policy.allows(status) {
            let id = self.participant_of(&owner.name);
            self.hold(
                id,
                owner.name.clone(),
                owner.signature_key,
                status,
                &mut out,
            );
            if let Some(old) = self.keys.held_group.replace(group) {
                let _ = old.delete(self.keys.device());
            }
            return Ok(out);
        }
        if !matches!(status, PinStatus::Pinned { .. }) {
            self.keys
                .store
                .update_pins(|p| p.pin(&owner.name, &owner.signature_key))?;
        }
        out.extend(self.enter_group(group).await?);
        Ok(out)
    }

    /// Makes `group` the consultation's group (a doctor who rejoined makes a new one).
    async fn enter_group(
        &mut self,
        group: ConsultationGroup,
    ) -> Result<Vec<Happening>, ConsultationError> {
        if let Some(old) = self.keys.group.replace(group) {
            let _ = old.delete(self.keys.device());
        }
        self.keys.store.save_state()?;
        self.after_epoch().await
    }

    /// A commit the server ordered: process it; check the devices it added.
    async fn on_commit(
        &mut self,
        from: u64,
        commit: &str,
    ) -> Result<Vec<Happening>, ConsultationError> {
        let mut out = Vec::new();
        let keys = &mut self.keys;
        let Some(group) = keys.group.as_mut() else {
            return Ok(out);
        };
        let processed = B64
            .decode(commit)
            .map_err(|_| confide_mls::Error::Malformed("commit is not base64".into()))
            .and_then(|b| group.handle_message(keys.store.device(), &b));
        match processed {
            Ok(Incoming::NewEpoch { added, .. }) => {
                for m in added {
                    self.check_added(&m, &mut out).await?;
                }
                if self.keys.holding
                    && let Some(slot) = self.slot
                {
                    self.media.set_sending(slot, false).await?;
                }
                out.extend(self.after_epoch().await?);
            }
            Ok(Incoming::Removed) => {
                if let Some(g) = self.keys.group.take() {
                    let _ = g.delete(self.keys.device());
                }
                self.keys.installed = None;
                if let Some(slot) = self.slot {
                    self.media.drop_keys(slot).await?;
                }
                out.push(Happening::Removed);
            }
            Ok(Incoming::Application { .. }) | Ok(_) => {}
            Err(e) => {
                self.warn(
                    KeyWarning::RejectedMessage {
                        from,
                        reason: peer_error(&e),
                    },
                    &mut out,
                );
            }
        }
        Ok(out)
    }

    /// A member the doctor's device added: check it against the log and our pins; one
    /// that fails holds our media back until the user accepts it.
    async fn check_added(
        &mut self,
        m: &Member,
        out: &mut Vec<Happening>,
    ) -> Result<(), ConsultationError> {
        if &m.name == self.keys.store.name() {
            return Ok(());
        }
        let id = self.participant_of(&m.name);
        let checked = match self.logged(&m.name.principal).await? {
            Ok(logged) => {
                admission::check_device(&m.name, &m.signature_key, &logged, self.keys.store.pins())
            }
            Err(e) => Err(e),
        };
        match checked {
            Ok(status) if self.keys.policy.allows(status) => {
                if !matches!(status, PinStatus::Pinned { .. }) {
                    self.keys
                        .store
                        .update_pins(|p| p.pin(&m.name, &m.signature_key))?;
                }
            }
            Ok(status) => {
                self.keys.holding = true;
                self.hold(id, m.name.clone(), m.signature_key, status, out);
            }
            Err(e) => {
                self.keys.holding = true;
                self.warn_refused(id, &e, out);
            }
        }
        Ok(())
    }

    /// A group application message: chat, or a member's log head.
    async fn on_chat(
        &mut self,
        from: u64,
        ciphertext: &str,
    ) -> Result<Vec<Happening>, ConsultationError> {
        let mut out = Vec::new();
        let keys = &mut self.keys;
        let Some(group) = keys.group.as_mut() else {
            return Ok(out);
        };
        let processed = B64
            .decode(ciphertext)
            .map_err(|_| confide_mls::Error::Malformed("chat is not base64".into()))
            .and_then(|b| group.handle_message(keys.store.device(), &b));
        let (sender, payload) = match processed {
            Ok(Incoming::Application { sender, payload }) => (sender, payload),
            Ok(_) => return Ok(out),
            Err(e) => {
                self.warn(
                    KeyWarning::RejectedMessage {
                        from,
                        reason: peer_error(&e),
                    },
                    &mut out,
                );
                return Ok(out);
            }
        };
        match GroupPayload::from_bytes(&payload) {
            Ok(GroupPayload::Chat { text }) => out.push(Happening::Chat {
                from,
                sender: sender.name,
                text,
            }),
            Ok(cp @ GroupPayload::Checkpoint { .. }) => {
                let Ok(Some(head)) = cp.head() else {
                    return Ok(out);
                };
                if !self.peer_head_consistent(&head).await? {
                    let peer = self.participant_of(&sender.name);
                    self.warn(
                        KeyWarning::SplitView {
                            peer,
                            device: sender.name,
                        },
                        &mut out,
                    );
                }
            }
            Err(_) => {}
        }
        Ok(out)
    }

    /// Whether a member's log head and ours are one history (split-view check).
    async fn peer_head_consistent(&mut self, head: &TreeHead) -> Result<bool, ConsultationError> {
        let Some(ours) = self.keys.log.latest() else {
            return Ok(true);
        };
        let proof = if ours.size == head.size {
            Vec::new()
        } else {
            let (from, to) = (ours.size.min(head.size), ours.size.max(head.size));
            let dir = KeyDirectory::new(&self.ep, &self.token);
            match dir.consistency(from, to).await {
                Ok(p) => p,
                // A server that cannot prove the two heads are one history has shown
                // us different logs.
                Err(SignalingError::Refused { .. } | SignalingError::Protocol(_)) => {
                    return Ok(false);
                }
                Err(e) => return Err(e.into()),
            }
        };
        Ok(self.keys.log.check_peer_head(head, &proof).is_ok())
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
        self.finish();
        Ok(())
    }

    /// Leaves (the connection closes).
    pub async fn leave(mut self) {
        let _ = self.sig.send(&ClientMsg::Leave).await;
        self.finish();
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
                    self.finish();
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
    /// from the device state.
    fn finish(&mut self) {
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
    }
}
