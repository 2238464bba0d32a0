//! # confide-e2ee-wasm: the browser surface of `confide-mls` and `confide-e2ee`
//!
//! A thin wasm-bindgen layer: every type wraps the native one and every method forwards.
//! No cryptography and no policy live here, so the browser and the native client share
//! one implementation of the key layer (`docs/keys.md`) and one set of tests.
//!
//! | class | wraps |
//! |---|---|
//! | [`Device`] | `confide_mls::Device`: this device's credential, KeyPackages, state blob |
//! | [`KeyPackage`] | `confide_mls::ClaimedKeyPackage`: a directory KeyPackage, verified |
//! | [`Group`] | `confide_mls::ConsultationGroup`: one consultation's MLS group |
//! | [`EpochSecret`] | `confide_e2ee::group_media::EpochSecret`: one epoch's frame base key |
//! | [`GroupFrameEncryptor`], [`GroupFrameDecryptor`] | SFrame under MLS epoch keys |
//! | [`PinStore`] | `confide_mls::pins::PinStore` |
//! | [`LogView`], [`Directory`] | `confide_mls::transparency`: checkpoints, proofs, directory answers |
//!
//! Free functions: [`pair_code`] (the safety code), [`check_joiner`], [`check_owner`],
//! [`check_device`] (the admission checks), [`chat_payload`], [`checkpoint_payload`],
//! [`parse_payload`] (what members send inside the group).
//!
//! ## Conventions
//!
//! * Byte strings are `Uint8Array`; KeyPackages for the server are base64 strings.
//! * Epochs, leaf indexes, sizes and KIDs are plain `Number`s.
//! * Structured results (roster, members, commit outcomes, directory) are JSON strings.
//!   A member is `{"leaf", "principal", "device", "signatureKey"}` (key in base64).
//! * A pin status is one of `"first_contact"`, `"pinned"`, `"verified"`,
//!   `"new_device"`, `"changed"`; only the first three allow sharing keys.
//!
//! ## Randomness
//!
//! MLS key generation draws from `crypto.getRandomValues` through `getrandom`'s JS
//! backend (the features in Cargo.toml); nothing here takes a seed any more.
//!
//! ## Errors
//!
//! Failing calls throw a JS `Error` whose message starts with `peer:` (the bytes came
//! from the network or the server and were malformed, forged, for another group, or
//! failed a key-transparency check: drop them, count them, warn when it is a security
//! event) or `misuse:` (a bug in the calling code). The rest of the message names the
//! failed check and never contains key material.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use confide_e2ee::group_media as gm;
use confide_e2ee::{CipherSuite, Codec};
use confide_mls as mls;
use confide_mls::pins::PinStatus;
use confide_mls::transparency::{DirectoryAnswer, GroupPayload, LoggedDevice, TreeHead};
use serde_json::json;
use wasm_bindgen::prelude::*;

fn mls_err(e: mls::Error) -> JsError {
    let class = if e.is_from_peer() { "peer" } else { "misuse" };
    JsError::new(&format!("{class}: {e}"))
}

fn e2ee_err(e: confide_e2ee::Error) -> JsError {
    let class = if e.is_from_peer() { "peer" } else { "misuse" };
    JsError::new(&format!("{class}: {e}"))
}

fn misuse(msg: &str) -> JsError {
    JsError::new(&format!("misuse: {msg}"))
}

fn principal(text: &str) -> Result<mls::Principal, JsError> {
    mls::Principal::new(text).map_err(|_| misuse("principal must be \"account:N\" or \"guest:N\""))
}

fn device_name(principal_text: &str, device: &str) -> Result<mls::DeviceName, JsError> {
    Ok(mls::DeviceName {
        principal: principal(principal_text)?,
        device: mls::DeviceId::parse(device)
            .map_err(|_| misuse("device id must be 32 lowercase hex characters"))?,
    })
}

fn key32(key: &[u8]) -> Result<[u8; 32], JsError> {
    key.try_into()
        .map_err(|_| misuse("a signature key is 32 bytes"))
}

fn member_json(m: &mls::Member) -> serde_json::Value {
    json!({
        "leaf": m.leaf,
        "principal": m.name.principal.as_str(),
        "device": m.name.device.to_string(),
        "signatureKey": B64.encode(m.signature_key),
    })
}

fn status_name(s: PinStatus) -> String {
    match s {
        PinStatus::FirstContact => "first_contact",
        PinStatus::Pinned { verified: false } => "pinned",
        PinStatus::Pinned { verified: true } => "verified",
        PinStatus::NewDevice => "new_device",
        PinStatus::Changed => "changed",
    }
    .to_string()
}

/// A tree head as JSON `{"size": n, "root": base64}` (what [`LogView::parse_checkpoint`]
/// returns and [`LogView::accept`] takes).
fn parse_head(head: &str) -> Result<TreeHead, JsError> {
    #[derive(serde::Deserialize)]
    struct Head {
        size: u64,
        root: String,
    }
    let h: Head =
        serde_json::from_str(head).map_err(|_| misuse("a tree head is {\"size\", \"root\"}"))?;
    GroupPayload::Checkpoint {
        size: h.size,
        root: h.root,
    }
    .head()
    .map_err(mls_err)?
    .ok_or_else(|| misuse("tree head"))
}

fn head_json(h: &TreeHead) -> String {
    json!({ "size": h.size, "root": h.root.to_base64() }).to_string()
}

/// The default SFrame suite id: ChaCha20-Poly1305 (private use 0xF001).
#[wasm_bindgen(js_name = suiteChaCha20Poly1305)]
#[must_use]
pub fn suite_chacha20_poly1305() -> u16 {
    CipherSuite::ChaCha20Poly1305Sha256_128.id()
}

fn suite(id: u16) -> Result<CipherSuite, JsError> {
    CipherSuite::from_id(id).map_err(|_| misuse("unknown cipher suite id"))
}

/// The prefix every group id of `consultation` starts with (`confide/c/<id>/`).
#[wasm_bindgen(js_name = groupIdPrefix)]
#[must_use]
pub fn group_id_prefix(consultation: &str) -> String {
    mls::group_id_prefix(consultation)
}

// ------------------------------------------------------------------------------ Device

/// This device's MLS identity: an Ed25519 credential bound to (principal, device id),
/// its KeyPackages, and the MLS state to persist after every change.
#[wasm_bindgen]
pub struct Device(mls::Device);

#[wasm_bindgen]
impl Device {
    /// A new device for `principal` (`"account:17"`, `"guest:5"`).
    pub fn generate(principal_text: &str) -> Result<Device, JsError> {
        Ok(Self(
            mls::Device::generate(principal(principal_text)?).map_err(mls_err)?,
        ))
    }

    /// Restore from what was saved: the 32-byte secret key and the exported state
    /// (empty for none).
    pub fn restore(
        principal_text: &str,
        device: &str,
        secret: &[u8],
        state: &[u8],
    ) -> Result<Device, JsError> {
        let name = device_name(principal_text, device)?;
        Ok(Self(
            mls::Device::restore(name.principal, name.device, secret, state).map_err(mls_err)?,
        ))
    }

    /// The principal this device belongs to.
    #[wasm_bindgen(getter)]
    #[must_use]
    pub fn principal(&self) -> String {
        self.0.name().principal.to_string()
    }

    /// The device id (32 hex characters).
    #[wasm_bindgen(getter, js_name = deviceId)]
    #[must_use]
    pub fn device_id(&self) -> String {
        self.0.name().device.to_string()
    }

    /// The Ed25519 public key the key directory registers (32 bytes).
    #[wasm_bindgen(getter, js_name = signatureKey)]
    #[must_use]
    pub fn signature_key(&self) -> Vec<u8> {
        self.0.signature_key().to_vec()
    }

    /// The 32-byte secret key, for this device's protected storage only.
    #[wasm_bindgen(js_name = secretKey)]
    #[must_use]
    pub fn secret_key(&self) -> Vec<u8> {
        self.0.secret_key().to_vec()
    }

    /// `n` one-time KeyPackages, base64, for `POST /api/devices/{device}/key_packages`.
    /// Save [`Device::export_state`] before uploading them.
    #[wasm_bindgen(js_name = keyPackages)]
    pub fn key_packages(&self, n: usize) -> Result<Vec<String>, JsError> {
        if n == 0 || n > 100 {
            return Err(misuse("between 1 and 100 key packages at a time"));
        }
        Ok(self
            .0
            .key_packages(n)
            .map_err(mls_err)?
            .iter()
            .map(|k| B64.encode(k))
            .collect())
    }

    /// A last-resort KeyPackage, base64. Save the state before uploading it.
    #[wasm_bindgen(js_name = lastResortKeyPackage)]
    pub fn last_resort_key_package(&self) -> Result<String, JsError> {
        Ok(B64.encode(self.0.last_resort_key_package().map_err(mls_err)?))
    }

    /// Everything MLS keeps for this device, to persist (wrapped) in IndexedDB.
    #[wasm_bindgen(js_name = exportState)]
    #[must_use]
    pub fn export_state(&self) -> Vec<u8> {
        self.0.export_state().to_vec()
    }

    /// The safety code of this device and another (30 digits in 6 groups).
    #[wasm_bindgen(js_name = safetyCode)]
    pub fn safety_code(
        &self,
        principal_text: &str,
        device: &str,
        key: &[u8],
    ) -> Result<String, JsError> {
        let them = device_name(principal_text, device)?;
        let key = key32(key)?;
        Ok(
            mls::safety::pair_code((self.0.name(), &self.0.signature_key()), (&them, &key))
                .to_string(),
        )
    }
}

/// The safety code of two devices (the same whichever order they are given in).
#[wasm_bindgen(js_name = pairCode)]
pub fn pair_code(
    principal_a: &str,
    device_a: &str,
    key_a: &[u8],
    principal_b: &str,
    device_b: &str,
    key_b: &[u8],
) -> Result<String, JsError> {
    let (a, ka) = (device_name(principal_a, device_a)?, key32(key_a)?);
    let (b, kb) = (device_name(principal_b, device_b)?, key32(key_b)?);
    Ok(mls::safety::pair_code((&a, &ka), (&b, &kb)).to_string())
}

// -------------------------------------------------------------------------- KeyPackage

/// A KeyPackage the directory handed out, parsed and verified (signature, suite,
/// lifetime). Check it with [`check_joiner`] before [`Group::add`].
#[wasm_bindgen]
pub struct KeyPackage(mls::ClaimedKeyPackage);

#[wasm_bindgen]
impl KeyPackage {
    /// Parse and verify KeyPackage bytes.
    pub fn parse(device: &Device, bytes: &[u8]) -> Result<KeyPackage, JsError> {
        Ok(Self(
            mls::ClaimedKeyPackage::parse(&device.0, bytes).map_err(mls_err)?,
        ))
    }

    /// The principal its credential names.
    #[wasm_bindgen(getter)]
    #[must_use]
    pub fn principal(&self) -> String {
        self.0.name().principal.to_string()
    }

    /// The device id its credential names.
    #[wasm_bindgen(getter, js_name = deviceId)]
    #[must_use]
    pub fn device_id(&self) -> String {
        self.0.name().device.to_string()
    }

    /// Its Ed25519 signature key (32 bytes).
    #[wasm_bindgen(getter, js_name = signatureKey)]
    #[must_use]
    pub fn signature_key(&self) -> Vec<u8> {
        self.0.signature_key().to_vec()
    }
}

// ------------------------------------------------------------------------------ Group

/// A commit to send (`mls_commit`) and, when it adds people, their Welcome.
#[wasm_bindgen(getter_with_clone)]
pub struct Commit {
    /// The MLS commit.
    #[wasm_bindgen(readonly)]
    pub commit: Vec<u8>,
    /// The Welcome, for commits that add members.
    #[wasm_bindgen(readonly)]
    pub welcome: Option<Vec<u8>>,
}

impl From<mls::Commit> for Commit {
    fn from(c: mls::Commit) -> Self {
        Self {
            commit: c.commit,
            welcome: c.welcome,
        }
    }
}

/// What a received group message did.
#[wasm_bindgen(getter_with_clone)]
pub struct Incoming {
    /// JSON: `{"kind": "new_epoch", "epoch", "committer", "added": [member],
    /// "removed": [member]}`, `{"kind": "removed"}` or
    /// `{"kind": "application", "sender": member}`.
    #[wasm_bindgen(readonly)]
    pub info: String,
    /// The plaintext of an application message (empty otherwise).
    #[wasm_bindgen(readonly)]
    pub payload: Vec<u8>,
}

/// One consultation's MLS group as this device sees it.
#[wasm_bindgen]
pub struct Group(mls::ConsultationGroup);

#[wasm_bindgen]
impl Group {
    /// The doctor's device opens the consultation's group (epoch 0, alone).
    pub fn create(device: &Device, consultation: &str) -> Result<Group, JsError> {
        Ok(Self(
            mls::ConsultationGroup::create(&device.0, consultation).map_err(mls_err)?,
        ))
    }

    /// Join from a Welcome made by a device of `owner` (the doctor's principal) for a
    /// group of `consultation`. Check the owner with [`check_owner`] afterwards.
    pub fn join(
        device: &Device,
        consultation: &str,
        welcome: &[u8],
        owner: &str,
    ) -> Result<Group, JsError> {
        Ok(Self(
            mls::ConsultationGroup::join(&device.0, consultation, welcome, &principal(owner)?)
                .map_err(mls_err)?,
        ))
    }

    /// The group id bytes (public: the server reads them to order commits).
    #[wasm_bindgen(getter, js_name = groupId)]
    #[must_use]
    pub fn group_id(&self) -> Vec<u8> {
        self.0.group_id().to_vec()
    }

    /// The current epoch.
    #[wasm_bindgen(getter)]
    #[must_use]
    pub fn epoch(&self) -> f64 {
        self.0.epoch() as f64
    }

    /// Our leaf index (our SFrame sender index).
    #[wasm_bindgen(getter, js_name = ownLeaf)]
    #[must_use]
    pub fn own_leaf(&self) -> u32 {
        self.0.own_leaf()
    }

    /// The owner's (doctor's) leaf index.
    #[wasm_bindgen(getter)]
    #[must_use]
    pub fn owner(&self) -> u32 {
        self.0.owner()
    }

    /// `true` if this device owns the group (adds and removes).
    #[wasm_bindgen(getter, js_name = isOwner)]
    #[must_use]
    pub fn is_owner(&self) -> bool {
        self.0.is_owner()
    }

    /// The members from MLS state, JSON `[member]`: the only roster to show.
    #[must_use]
    pub fn roster(&self) -> String {
        serde_json::Value::Array(self.0.roster().iter().map(member_json).collect()).to_string()
    }

    /// The owner's member entry, JSON (or `undefined`).
    #[wasm_bindgen(js_name = ownerMember)]
    #[must_use]
    pub fn owner_member(&self) -> Option<String> {
        self.0.owner_member().map(|m| member_json(&m).to_string())
    }

    /// The SFrame base key of the current epoch.
    #[wasm_bindgen(js_name = epochSecret)]
    pub fn epoch_secret(&self, device: &Device) -> Result<EpochSecret, JsError> {
        Ok(EpochSecret(
            self.0.epoch_secret(&device.0).map_err(mls_err)?,
        ))
    }

    /// Owner only: add these checked KeyPackages (consumed). Pending until
    /// [`Group::confirm_commit`].
    pub fn add(
        &mut self,
        device: &Device,
        key_packages: Vec<KeyPackage>,
    ) -> Result<Commit, JsError> {
        let kps: Vec<mls::ClaimedKeyPackage> = key_packages.into_iter().map(|k| k.0).collect();
        Ok(self.0.add(&device.0, &kps).map_err(mls_err)?.into())
    }

    /// Owner only: remove the members at these leaves.
    pub fn remove(&mut self, device: &Device, leaves: Vec<u32>) -> Result<Commit, JsError> {
        Ok(self.0.remove(&device.0, &leaves).map_err(mls_err)?.into())
    }

    /// Any member: a fresh leaf key.
    #[wasm_bindgen(js_name = selfUpdate)]
    pub fn self_update(&mut self, device: &Device) -> Result<Commit, JsError> {
        Ok(self.0.self_update(&device.0).map_err(mls_err)?.into())
    }

    /// `mls_accepted`: apply our pending commit. Returns the new epoch.
    #[wasm_bindgen(js_name = confirmCommit)]
    pub fn confirm_commit(&mut self, device: &Device) -> Result<f64, JsError> {
        Ok(self.0.confirm_commit(&device.0).map_err(mls_err)? as f64)
    }

    /// The server refused our pending commit: drop it.
    #[wasm_bindgen(js_name = discardCommit)]
    pub fn discard_commit(&mut self, device: &Device) -> Result<(), JsError> {
        self.0.discard_commit(&device.0).map_err(mls_err)
    }

    /// Seal an application message (see [`chat_payload`], [`checkpoint_payload`]).
    pub fn seal(&mut self, device: &Device, payload: &[u8]) -> Result<Vec<u8>, JsError> {
        self.0.seal(&device.0, payload).map_err(mls_err)
    }

    /// Process a delivered group message (`mls_commit` or `chat`). On an error the group
    /// is unchanged.
    #[wasm_bindgen(js_name = handleMessage)]
    pub fn handle_message(&mut self, device: &Device, bytes: &[u8]) -> Result<Incoming, JsError> {
        let incoming = self.0.handle_message(&device.0, bytes).map_err(mls_err)?;
        Ok(match incoming {
            mls::Incoming::NewEpoch {
                epoch,
                committer,
                added,
                removed,
            } => Incoming {
                info: json!({
                    "kind": "new_epoch",
                    "epoch": epoch,
                    "committer": member_json(&committer),
                    "added": added.iter().map(member_json).collect::<Vec<_>>(),
                    "removed": removed.iter().map(member_json).collect::<Vec<_>>(),
                })
                .to_string(),
                payload: Vec::new(),
            },
            mls::Incoming::Removed => Incoming {
                info: json!({ "kind": "removed" }).to_string(),
                payload: Vec::new(),
            },
            mls::Incoming::Application { sender, payload } => Incoming {
                info: json!({ "kind": "application", "sender": member_json(&sender) }).to_string(),
                payload,
            },
            _ => return Err(misuse("an outcome this build does not know")),
        })
    }

    /// Forget the group and delete its state from the device (export the state after).
    pub fn delete(self, device: &Device) -> Result<(), JsError> {
        self.0.delete(&device.0).map_err(mls_err)
    }
}

// ------------------------------------------------------------------------------ frames

/// The exported frame base key of one epoch. Opaque.
#[wasm_bindgen]
pub struct EpochSecret(gm::EpochSecret);

#[wasm_bindgen]
impl EpochSecret {
    /// The epoch.
    #[wasm_bindgen(getter)]
    #[must_use]
    pub fn epoch(&self) -> f64 {
        self.0.epoch() as f64
    }
}

/// Encrypts our frames under our KID of the current epoch.
#[wasm_bindgen]
pub struct GroupFrameEncryptor {
    inner: gm::GroupFrameEncryptor,
    out: Vec<u8>,
}

#[wasm_bindgen]
impl GroupFrameEncryptor {
    /// Encrypt as leaf `leaf` under `secret`, in `suite` (see [`suite_chacha20_poly1305`]).
    #[wasm_bindgen(constructor)]
    pub fn new(
        suite_id: u16,
        secret: &EpochSecret,
        leaf: u32,
    ) -> Result<GroupFrameEncryptor, JsError> {
        Ok(Self {
            inner: gm::GroupFrameEncryptor::new(suite(suite_id)?, &secret.0, leaf)
                .map_err(e2ee_err)?,
            out: Vec::new(),
        })
    }

    /// Move to a new epoch right after the group merged a commit.
    #[wasm_bindgen(js_name = setEpoch)]
    pub fn set_epoch(&mut self, secret: &EpochSecret, leaf: u32) -> Result<(), JsError> {
        self.inner.set_epoch(&secret.0, leaf).map_err(e2ee_err)
    }

    /// Encrypt one encoded frame (`codec`: `"VP8"`/`"video/VP8"`, `"opus"`, other).
    /// Empty frames come back empty.
    pub fn encrypt(&mut self, codec: &str, frame: &[u8]) -> Result<Vec<u8>, JsError> {
        self.inner
            .encrypt(Codec::from_name(codec), frame, &mut self.out)
            .map_err(e2ee_err)?;
        Ok(self.out.clone())
    }

    /// The KID frames are sent under: `(leaf << 4) | (epoch & 15)`.
    #[wasm_bindgen(getter)]
    #[must_use]
    pub fn kid(&self) -> f64 {
        self.inner.kid() as f64
    }

    /// The epoch frames are sent under.
    #[wasm_bindgen(getter)]
    #[must_use]
    pub fn epoch(&self) -> f64 {
        self.inner.epoch() as f64
    }
}

/// Decrypts every member's frames: one keyring for the group, two epochs deep.
#[wasm_bindgen]
pub struct GroupFrameDecryptor {
    inner: gm::GroupFrameDecryptor,
    out: Vec<u8>,
    last: Option<gm::GroupFrameInfo>,
}

#[wasm_bindgen]
impl GroupFrameDecryptor {
    /// An empty keyring for `suite`.
    #[wasm_bindgen(constructor)]
    pub fn new(suite_id: u16) -> Result<GroupFrameDecryptor, JsError> {
        Ok(Self {
            inner: gm::GroupFrameDecryptor::new(suite(suite_id)?),
            out: Vec::new(),
            last: None,
        })
    }

    /// Install an epoch's secret (consumed). The oldest beyond two is dropped.
    pub fn install(&mut self, secret: EpochSecret) -> Result<(), JsError> {
        self.inner.install(secret.0).map_err(e2ee_err)
    }

    /// Forget every epoch (a new group replaces the old one).
    pub fn reset(&mut self) {
        self.inner.reset();
    }

    /// Refuse epochs below `epoch` from now on.
    #[wasm_bindgen(js_name = retireEpochsBefore)]
    pub fn retire_epochs_before(&mut self, epoch: f64) {
        self.inner.retire_epochs_before(epoch as u64);
    }

    /// The epochs held (public values).
    #[must_use]
    pub fn epochs(&self) -> Vec<f64> {
        self.inner.epochs().map(|e| e as f64).collect()
    }

    /// Decrypt one frame. Throws `peer: ...` for frames to drop (count them).
    pub fn decrypt(&mut self, codec: &str, frame: &[u8]) -> Result<Vec<u8>, JsError> {
        self.last = self
            .inner
            .decrypt(Codec::from_name(codec), frame, &mut self.out)
            .map_err(e2ee_err)?;
        Ok(self.out.clone())
    }

    /// The leaf index of the last decrypted frame's sender (-1 before any).
    #[wasm_bindgen(getter, js_name = lastSender)]
    #[must_use]
    pub fn last_sender(&self) -> i32 {
        self.last.map_or(-1, |i| i.sender_index as i32)
    }

    /// The epoch of the last decrypted frame (-1 before any).
    #[wasm_bindgen(getter, js_name = lastEpoch)]
    #[must_use]
    pub fn last_epoch(&self) -> f64 {
        self.last.map_or(-1.0, |i| i.epoch as f64)
    }

    /// `true` if the last frame was the first under its (sender, epoch) key: ask the
    /// sender for a keyframe.
    #[wasm_bindgen(getter, js_name = lastFrameStartedNewKey)]
    #[must_use]
    pub fn last_frame_started_new_key(&self) -> bool {
        self.last.is_some_and(|i| i.first_frame_of_key)
    }
}

// ------------------------------------------------------------------------------- pins

/// The device keys this device has seen per peer principal, and the verified pairs.
#[wasm_bindgen]
pub struct PinStore(mls::pins::PinStore);

impl Default for PinStore {
    fn default() -> Self {
        Self::new()
    }
}

#[wasm_bindgen]
impl PinStore {
    /// An empty store.
    #[wasm_bindgen(constructor)]
    #[must_use]
    pub fn new() -> PinStore {
        Self(mls::pins::PinStore::new())
    }

    /// Load what [`PinStore::to_json`] saved (empty: an empty store).
    #[wasm_bindgen(js_name = fromJson)]
    pub fn from_json(text: &str) -> Result<PinStore, JsError> {
        Ok(Self(mls::pins::PinStore::from_json(text).map_err(mls_err)?))
    }

    /// Serialize for IndexedDB.
    #[wasm_bindgen(js_name = toJson)]
    #[must_use]
    pub fn to_json(&self) -> String {
        self.0.to_json()
    }

    /// How `key` for this device relates to what is pinned (a status name).
    pub fn check(&self, principal_text: &str, device: &str, key: &[u8]) -> Result<String, JsError> {
        Ok(status_name(self.0.check(
            &device_name(principal_text, device)?,
            &key32(key)?,
        )))
    }

    /// Pin (first contact, or a change the user accepted; clears verification).
    pub fn pin(&mut self, principal_text: &str, device: &str, key: &[u8]) -> Result<(), JsError> {
        self.0
            .pin(&device_name(principal_text, device)?, &key32(key)?);
        Ok(())
    }

    /// The user compared the safety code with this device and it matched.
    #[wasm_bindgen(js_name = markVerified)]
    pub fn mark_verified(
        &mut self,
        principal_text: &str,
        device: &str,
        key: &[u8],
    ) -> Result<(), JsError> {
        self.0
            .mark_verified(&device_name(principal_text, device)?, &key32(key)?);
        Ok(())
    }

    /// Whether this exact key was verified.
    #[wasm_bindgen(js_name = isVerified)]
    pub fn is_verified(
        &self,
        principal_text: &str,
        device: &str,
        key: &[u8],
    ) -> Result<bool, JsError> {
        Ok(self
            .0
            .is_verified(&device_name(principal_text, device)?, &key32(key)?))
    }

    /// Forget a device the directory reports revoked.
    pub fn forget(&mut self, principal_text: &str, device: &str) -> Result<(), JsError> {
        self.0.forget(&device_name(principal_text, device)?);
        Ok(())
    }
}

// ------------------------------------------------------------------------ transparency

/// This device's view of the audit log: the pinned verifier key and the newest head it
/// accepted.
#[wasm_bindgen]
pub struct LogView(mls::transparency::LogView);

#[wasm_bindgen]
impl LogView {
    /// From the log's verifier key (`GET /api/audit/key`, pinned on first use) and the
    /// saved head ([`LogView::save`]; empty or `undefined` for none).
    #[wasm_bindgen(constructor)]
    pub fn new(verifier_key: &str, saved: Option<String>) -> Result<LogView, JsError> {
        Ok(Self(
            mls::transparency::LogView::new(verifier_key, saved.as_deref()).map_err(mls_err)?,
        ))
    }

    /// The newest head accepted, to persist.
    #[must_use]
    pub fn save(&self) -> String {
        self.0.save()
    }

    /// The newest head accepted, JSON `{"size", "root"}` (or `undefined`).
    #[must_use]
    pub fn latest(&self) -> Option<String> {
        self.0.latest().map(|h| head_json(&h))
    }

    /// Verify a checkpoint note; returns its head as JSON.
    #[wasm_bindgen(js_name = parseCheckpoint)]
    pub fn parse_checkpoint(&self, note: &str) -> Result<String, JsError> {
        Ok(head_json(&self.0.parse_checkpoint(note).map_err(mls_err)?))
    }

    /// The consistency proof needed before `head` can be accepted, `[from, to]`, or
    /// `undefined` when none is needed.
    #[wasm_bindgen(js_name = proofNeeded)]
    pub fn proof_needed(&self, head: &str) -> Result<Option<Vec<f64>>, JsError> {
        Ok(self
            .0
            .proof_needed(&parse_head(head)?)
            .map(|(a, b)| vec![a as f64, b as f64]))
    }

    /// Accept `head` given the consistency proof (base64 hashes) with our latest.
    pub fn accept(&mut self, head: &str, proof: Vec<String>) -> Result<(), JsError> {
        self.0.accept(parse_head(head)?, &proof).map_err(mls_err)
    }

    /// Check a head another member sent in the group against ours (split view).
    #[wasm_bindgen(js_name = checkPeerHead)]
    pub fn check_peer_head(&self, head: &str, proof: Vec<String>) -> Result<(), JsError> {
        self.0
            .check_peer_head(&parse_head(head)?, &proof)
            .map_err(mls_err)
    }

    /// Verify a directory answer (the JSON of `GET /api/directory/{principal}`) whose
    /// checkpoint was accepted.
    #[wasm_bindgen(js_name = verifyDirectory)]
    pub fn verify_directory(&self, answer: &str) -> Result<Directory, JsError> {
        let a: DirectoryAnswer = serde_json::from_str(answer)
            .map_err(|_| JsError::new("peer: malformed input: directory answer"))?;
        let (devices, errors) = self.0.verify_directory(&a).map_err(mls_err)?;
        Ok(Directory {
            principal: a.principal,
            role: a.role,
            label: a.label,
            devices,
            errors,
        })
    }
}

/// A directory answer after verification: the devices whose registration is proven in
/// the log, and what failed.
#[wasm_bindgen]
pub struct Directory {
    principal: String,
    role: String,
    label: String,
    devices: Vec<LoggedDevice>,
    errors: Vec<String>,
}

#[wasm_bindgen]
impl Directory {
    /// JSON `{"principal", "role", "label", "devices": [{"principal", "device",
    /// "signatureKey", "active", "registeredSeq"}], "errors": [text]}`.
    #[must_use]
    pub fn json(&self) -> String {
        json!({
            "principal": self.principal,
            "role": self.role,
            "label": self.label,
            "devices": self.devices.iter().map(|d| json!({
                "principal": d.name.principal.as_str(),
                "device": d.name.device.to_string(),
                "signatureKey": B64.encode(d.signature_key),
                "active": d.active,
                "registeredSeq": d.registered_seq,
            })).collect::<Vec<_>>(),
            "errors": self.errors,
        })
        .to_string()
    }
}

// --------------------------------------------------------------------------- admission

/// The doctor's check of a KeyPackage for the participant it admits (who joined as
/// `principal` with `device`): a pin status, or a thrown `peer:` error (never add).
#[wasm_bindgen(js_name = checkJoiner)]
pub fn check_joiner(
    key_package: &KeyPackage,
    principal_text: &str,
    device: &str,
    logged: &Directory,
    pins: &PinStore,
) -> Result<String, JsError> {
    let expected = device_name(principal_text, device)?;
    mls::admission::check_joiner(&key_package.0, &expected, &logged.devices, &pins.0)
        .map(status_name)
        .map_err(mls_err)
}

/// A member's check of the group's owner after a Welcome, against the doctor's
/// directory answer.
#[wasm_bindgen(js_name = checkOwner)]
pub fn check_owner(group: &Group, logged: &Directory, pins: &PinStore) -> Result<String, JsError> {
    let owner = group
        .0
        .owner_member()
        .ok_or_else(|| JsError::new("peer: malformed input: the group has no owner"))?;
    mls::admission::check_owner(&owner, &logged.devices, &pins.0)
        .map(status_name)
        .map_err(mls_err)
}

/// Any member's check of a device (an added member, from a roster) against its
/// principal's directory answer.
#[wasm_bindgen(js_name = checkDevice)]
pub fn check_device(
    principal_text: &str,
    device: &str,
    key: &[u8],
    logged: &Directory,
    pins: &PinStore,
) -> Result<String, JsError> {
    mls::admission::check_device(
        &device_name(principal_text, device)?,
        &key32(key)?,
        &logged.devices,
        &pins.0,
    )
    .map(status_name)
    .map_err(mls_err)
}

// ---------------------------------------------------------------------- group payloads

/// The application-message payload of a chat line.
#[wasm_bindgen(js_name = chatPayload)]
#[must_use]
pub fn chat_payload(text: &str) -> Vec<u8> {
    GroupPayload::Chat { text: text.into() }.to_bytes()
}

/// The application-message payload carrying a tree head (JSON `{"size", "root"}`).
#[wasm_bindgen(js_name = checkpointPayload)]
pub fn checkpoint_payload(head: &str) -> Result<Vec<u8>, JsError> {
    let h = parse_head(head)?;
    Ok(GroupPayload::Checkpoint {
        size: h.size,
        root: h.root.to_base64(),
    }
    .to_bytes())
}

/// Decode an application-message payload: JSON `{"type": "chat", "text"}` or
/// `{"type": "checkpoint", "size", "root"}`. Unknown payloads throw `peer:`.
#[wasm_bindgen(js_name = parsePayload)]
pub fn parse_payload(bytes: &[u8]) -> Result<String, JsError> {
    let p = GroupPayload::from_bytes(bytes).map_err(mls_err)?;
    if let GroupPayload::Checkpoint { .. } = p {
        p.head().map_err(mls_err)?;
    }
    serde_json::to_string(&p).map_err(|_| misuse("payload"))
}
