//! The consultation's MLS group as one participant runs it (`docs/keys.md`): this
//! device's bootstrap (registration, KeyPackages, the pinned log key), the log view
//! every directory answer is checked against, the doctor's claimed and checked Adds
//! and its Removes, a joiner's Welcome and owner check, every member's commit and
//! application-message handling, the split-view check of members' log heads, and the
//! epoch keys handed to the media loop. Anything that fails a check is refused or held
//! back and becomes a [`KeyWarning`].

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use confide_mls::admission;
use confide_mls::pins::PinStatus;
use confide_mls::transparency::{GroupPayload, LogView, LoggedDevice, TreeHead};
use confide_mls::{
    ClaimedKeyPackage, ConsultationGroup, DeviceName, Incoming, Member, Principal, safety,
};
use confide_proto::model::{ParticipantId, Role};
use confide_proto::{ClientMsg, ServerMsg};

use super::{ConsultationError, Happening, Participant, STEP};
use crate::device::{DeviceStore, KeyConfig, PinPolicy};
use crate::directory::KeyDirectory;
use crate::driver::{EpochKeys, SUITE};
use crate::signaling::{Endpoint, SignalingError};

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

/// A key the user has to accept before it is shared with.
#[derive(Debug, Clone)]
pub(super) struct Held {
    pub(super) participant: u64,
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
pub(super) struct Keys {
    pub(super) store: DeviceStore,
    pub(super) policy: PinPolicy,
    pub(super) log_key: String,
    pub(super) log: LogView,
    pub(super) consultation: String,
    pub(super) group: Option<ConsultationGroup>,
    /// A group we were welcomed into whose owner waits for the user.
    pub(super) held_group: Option<ConsultationGroup>,
    /// Keys held back until the user accepts them.
    pub(super) held: Vec<Held>,
    /// Doctor: admitted participants not in the group yet.
    pub(super) to_add: BTreeSet<u64>,
    /// Doctor: participants our accepted commits added (and so admitted).
    pub(super) added: BTreeSet<u64>,
    /// (group id, epoch) the media slot holds.
    pub(super) installed: Option<(Vec<u8>, u64)>,
    /// Sending is held back (a member added by the doctor failed our check).
    pub(super) holding: bool,
    pub(super) warnings: Vec<KeyWarning>,
}

impl Keys {
    pub(super) fn device(&self) -> &confide_mls::Device {
        self.store.device()
    }

    /// Decode a base64 group message the server relayed (`what` names it in the error)
    /// and process it in our group; `None` while we have no group.
    fn handle_b64(
        &mut self,
        b64: &str,
        what: &str,
    ) -> Option<Result<Incoming, confide_mls::Error>> {
        let group = self.group.as_mut()?;
        Some(
            B64.decode(b64)
                .map_err(|_| confide_mls::Error::Malformed(format!("{what} is not base64")))
                .and_then(|b| group.handle_message(self.store.device(), &b)),
        )
    }
}

fn peer_error(e: &confide_mls::Error) -> String {
    let mut s = e.to_string();
    s.truncate(160);
    s
}

/// This device for the session `token`: loaded from (or made in) the state directory
/// of our principal, registered (idempotently), its KeyPackages topped up, and the log
/// key pinned on first use. Returns the device, the log key and our log view.
pub(super) async fn open_device(
    endpoint: &Endpoint,
    token: &str,
    config: &KeyConfig,
) -> Result<(DeviceStore, String, LogView), ConsultationError> {
    let dir = KeyDirectory::new(endpoint, token);
    let principal = dir.me().await?;
    let mut store = DeviceStore::open(config.state_dir.as_deref(), principal)?;
    let device_id = store.name().device;
    // The log key does not depend on the registration: both requests at once.
    let pinned = store.log_key().map(str::to_string);
    let (registered, log_key) = tokio::join!(dir.register(store.device()), async {
        match &pinned {
            Some(k) => Ok(k.clone()),
            None => dir.log_key().await,
        }
    });
    registered?;
    let log_key = log_key?;
    if pinned.is_none() {
        store.save_log(&log_key, String::new())?;
    }
    // A device made just now has nothing on the directory yet: no need to ask.
    let count = if store.is_new() {
        None
    } else {
        Some(dir.key_packages(&device_id).await?)
    };
    if count.is_none_or(|c| c.available < MIN_KEY_PACKAGES || !c.last_resort) {
        // A temporary device lives for one consultation: one KeyPackage (and the
        // last-resort one, should a forged claim waste it) is all it can use.
        let batch = if store.is_persistent() {
            KEY_PACKAGE_BATCH
        } else {
            1
        };
        let one_time = store.device().key_packages(batch)?;
        let last_resort = store.device().last_resort_key_package()?;
        // Saved before upload: a Welcome for one of them must find its private key.
        store.save_state()?;
        dir.upload_key_packages(&device_id, &one_time, Some(&last_resort))
            .await?;
    }
    let log = LogView::new(&log_key, Some(store.log_head()))?;
    Ok((store, log_key, log))
}

impl Keys {
    /// The key layer of a participant of `consultation` (the appointment id as text).
    pub(super) fn new(
        store: DeviceStore,
        policy: PinPolicy,
        log_key: String,
        log: LogView,
        consultation: String,
    ) -> Self {
        Keys {
            store,
            policy,
            log_key,
            log,
            consultation,
            group: None,
            held_group: None,
            held: Vec::new(),
            to_add: BTreeSet::new(),
            added: BTreeSet::new(),
            installed: None,
            holding: false,
            warnings: Vec::new(),
        }
    }
}

impl Participant {
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

    /// This device's Ed25519 key (what peers pin).
    pub fn device_key(&self) -> [u8; 32] {
        self.keys.device().signature_key()
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

    pub(super) fn is_owner(&self) -> bool {
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
    pub(super) async fn add_pending(&mut self) -> Result<Vec<Happening>, ConsultationError> {
        let mut out = Vec::new();
        if !self.is_owner() || self.keys.to_add.is_empty() {
            return Ok(out);
        }
        // Someone who came back with the same device while its old leaf is still in
        // the group (its leave not seen, or our Remove refused): that leaf goes first,
        // or the device would be in the group twice.
        let coming: Vec<DeviceName> = self
            .keys
            .to_add
            .iter()
            .filter_map(|id| self.people.get(id).and_then(|p| p.name.clone()))
            .collect();
        let keys = &mut self.keys;
        if let Some(group) = keys.group.as_mut() {
            let own = group.own_leaf();
            let stale: Vec<u32> = group
                .roster()
                .iter()
                .filter(|m| m.leaf != own && coming.contains(&m.name))
                .map(|m| m.leaf)
                .collect();
            if !stale.is_empty() {
                let commit = group.remove(keys.store.device(), &stale)?;
                if !self.send_commit(&commit.commit, None, Vec::new()).await? {
                    return Ok(out);
                }
                out.extend(self.after_epoch().await?);
            }
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
        self.keys.added.extend(ids);
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
    pub(super) async fn remove_member(
        &mut self,
        id: u64,
    ) -> Result<Vec<Happening>, ConsultationError> {
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
    pub(super) async fn sync_media(&mut self) -> Result<(), ConsultationError> {
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
    pub(super) async fn on_welcome(
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
    pub(super) async fn on_commit(
        &mut self,
        from: u64,
        commit: &str,
    ) -> Result<Vec<Happening>, ConsultationError> {
        let mut out = Vec::new();
        let Some(processed) = self.keys.handle_b64(commit, "commit") else {
            return Ok(out);
        };
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
    pub(super) async fn on_chat(
        &mut self,
        from: u64,
        ciphertext: &str,
    ) -> Result<Vec<Happening>, ConsultationError> {
        let mut out = Vec::new();
        let Some(processed) = self.keys.handle_b64(ciphertext, "chat") else {
            return Ok(out);
        };
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
}
