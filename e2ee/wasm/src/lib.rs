//! # confide-e2ee-wasm: the browser surface of `confide-e2ee`
//!
//! A thin wasm-bindgen layer: every type wraps the native one and every method forwards.
//! No cryptography lives here, so browser and native share one implementation and one set
//! of test vectors (`e2ee/tests/data/confide-frame-vectors.json`, checked by
//! `e2ee/wasm/tests/smoke.mjs`).
//!
//! ## Randomness
//!
//! wasm32-unknown-unknown has no OS RNG and the core never reaches for one: every call
//! that needs randomness takes `seed`, 32 bytes the caller fills with
//! `crypto.getRandomValues(new Uint8Array(32))`, fresh for each call.
//!
//! ## Errors
//!
//! Failing calls throw a JS `Error` whose message starts with `peer:` (the bytes came
//! from the network and were malformed, forged, replayed or for an unknown key: drop and
//! count) or `misuse:` (a bug in the calling code).
//!
//! ## Codecs and suites
//!
//! `codec` is a WebRTC codec name or MIME type: `"VP8"`/`"video/VP8"`, `"opus"`/
//! `"audio/opus"`; anything else encrypts the whole frame. `suite` is the SFrame suite id:
//! `suiteChaCha20Poly1305()` ([`suite_chacha20_poly1305`], 0xF001, default), 4 (AES-128-GCM), 5 (AES-256-GCM).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use confide_e2ee as core;
use confide_e2ee::{CipherSuite, Codec, Error, MessageKind, SeededRng};
use wasm_bindgen::prelude::*;

fn js_err(e: Error) -> JsError {
    let class = if e.is_from_peer() { "peer" } else { "misuse" };
    JsError::new(&format!("{class}: {e}"))
}

fn misuse(msg: &str) -> JsError {
    JsError::new(&format!("misuse: {msg}"))
}

fn rng(seed: &[u8]) -> Result<SeededRng, JsError> {
    let seed: [u8; 32] = seed
        .try_into()
        .map_err(|_| misuse("seed must be 32 bytes from crypto.getRandomValues"))?;
    if seed.iter().all(|&b| b == 0) {
        return Err(misuse(
            "seed is all zeros; fill it with crypto.getRandomValues",
        ));
    }
    Ok(SeededRng::from_seed(seed))
}

fn parse_kind(name: &str) -> Result<MessageKind, JsError> {
    match name {
        "chat" => Ok(MessageKind::Chat),
        "document" => Ok(MessageKind::Document),
        _ => Err(misuse("message kind must be \"chat\" or \"document\"")),
    }
}

fn kind_name(kind: MessageKind) -> String {
    match kind {
        MessageKind::Document => "document",
        _ => "chat",
    }
    .to_string()
}

/// The default SFrame suite id: ChaCha20-Poly1305 (private use 0xF001).
#[wasm_bindgen(js_name = suiteChaCha20Poly1305)]
#[must_use]
pub fn suite_chacha20_poly1305() -> u16 {
    CipherSuite::ChaCha20Poly1305Sha256_128.id()
}

/// This device's Ed25519 identity key pair.
#[wasm_bindgen]
pub struct Identity(core::IdentityKeyPair);

#[wasm_bindgen]
impl Identity {
    /// A new identity from 32 random bytes.
    pub fn generate(seed: &[u8]) -> Result<Identity, JsError> {
        Ok(Self(core::IdentityKeyPair::generate(&mut rng(seed)?)))
    }

    /// Restore from the 32-byte secret saved in IndexedDB.
    #[wasm_bindgen(js_name = fromSecret)]
    pub fn from_secret(secret: &[u8]) -> Result<Identity, JsError> {
        let secret: [u8; 32] = secret
            .try_into()
            .map_err(|_| misuse("identity secret must be 32 bytes"))?;
        Ok(Self(core::IdentityKeyPair::from_secret_bytes(&secret)))
    }

    /// The 32-byte secret, for this device's IndexedDB only. Never send it anywhere.
    #[wasm_bindgen(js_name = secretBytes)]
    #[must_use]
    pub fn secret_bytes(&self) -> Vec<u8> {
        self.0.secret_bytes().to_vec()
    }

    /// The 32-byte public key (the server stores it per account).
    #[wasm_bindgen(js_name = publicKey)]
    #[must_use]
    pub fn public_key(&self) -> Vec<u8> {
        self.0.public_key().to_bytes().to_vec()
    }
}

/// Public fields of a key offer, readable before accepting it.
#[wasm_bindgen]
pub struct OfferInfo(core::KeyOffer);

#[wasm_bindgen]
impl OfferInfo {
    /// Parse offer bytes and check the signature.
    pub fn parse(offer: &[u8]) -> Result<OfferInfo, JsError> {
        let o = core::KeyOffer::from_bytes(offer).map_err(js_err)?;
        o.verify().map_err(js_err)?;
        Ok(Self(o))
    }

    /// The offering device's identity public key (32 bytes).
    #[wasm_bindgen(getter, js_name = identityKey)]
    #[must_use]
    pub fn identity_key(&self) -> Vec<u8> {
        self.0.identity().to_bytes().to_vec()
    }

    /// The participant id the offer is bound to.
    #[wasm_bindgen(getter, js_name = participantId)]
    #[must_use]
    pub fn participant_id(&self) -> u64 {
        self.0.participant().0
    }

    /// The consultation id bytes the offer is bound to.
    #[wasm_bindgen(getter, js_name = consultationId)]
    #[must_use]
    pub fn consultation_id(&self) -> Vec<u8> {
        self.0.consultation().as_bytes().to_vec()
    }
}

/// Our key agreement for one consultation: the signed ephemeral key offer.
#[wasm_bindgen]
pub struct Session(core::Session);

#[wasm_bindgen]
impl Session {
    /// Make an ephemeral key and sign an offer bound to `consultationId` (UTF-8, 1-64
    /// bytes) and `participantId` (BigInt).
    #[wasm_bindgen(constructor)]
    pub fn new(
        identity: &Identity,
        consultation_id: &str,
        participant_id: u64,
        seed: &[u8],
    ) -> Result<Session, JsError> {
        let c = core::ConsultationId::new(consultation_id).map_err(js_err)?;
        Ok(Self(core::Session::new(
            &identity.0,
            c,
            core::ParticipantId(participant_id),
            &mut rng(seed)?,
        )))
    }

    /// Our offer bytes, to send to every peer through signaling.
    #[must_use]
    pub fn offer(&self) -> Vec<u8> {
        self.0.offer().to_bytes()
    }

    /// Verify a peer's offer and derive the keys shared with that peer.
    pub fn accept(&self, peer_offer: &[u8]) -> Result<Peer, JsError> {
        let offer = core::KeyOffer::from_bytes(peer_offer).map_err(js_err)?;
        Ok(Peer(self.0.accept(&offer).map_err(js_err)?))
    }
}

/// Keys shared with one peer.
#[wasm_bindgen]
pub struct Peer(core::PairwiseKeys);

#[wasm_bindgen]
impl Peer {
    /// The safety code both people compare aloud: `"12345 67890 12345 67890"`.
    #[wasm_bindgen(js_name = safetyCode)]
    #[must_use]
    pub fn safety_code(&self) -> String {
        self.0.safety_code().to_text()
    }

    /// The peer's identity public key (compare with the one the server claims).
    #[wasm_bindgen(getter, js_name = peerIdentity)]
    #[must_use]
    pub fn peer_identity(&self) -> Vec<u8> {
        self.0.peer_identity().to_bytes().to_vec()
    }

    /// The peer's participant id.
    #[wasm_bindgen(getter, js_name = peerParticipantId)]
    #[must_use]
    pub fn peer_participant_id(&self) -> u64 {
        self.0.peer_participant().0
    }

    /// SHA-256 of both offers (public).
    #[wasm_bindgen(getter, js_name = transcriptHash)]
    #[must_use]
    pub fn transcript_hash(&self) -> Vec<u8> {
        self.0.transcript_hash().to_vec()
    }

    /// Seal our current media sender key for this peer.
    #[wasm_bindgen(js_name = sealSenderKey)]
    pub fn seal_sender_key(
        &self,
        encryptor: &FrameEncryptor,
        seed: &[u8],
    ) -> Result<Vec<u8>, JsError> {
        self.0
            .seal_sender_key(encryptor.inner.sender_key(), &mut rng(seed)?)
            .map_err(js_err)
    }

    /// Open a sender key this peer sealed for us.
    #[wasm_bindgen(js_name = openSenderKey)]
    pub fn open_sender_key(&self, sealed: &[u8]) -> Result<ReceivedKey, JsError> {
        Ok(ReceivedKey(self.0.open_sender_key(sealed).map_err(js_err)?))
    }

    /// Seal a message (`kind`: `"chat"` or `"document"`) only this peer can open.
    #[wasm_bindgen(js_name = sealMessage)]
    pub fn seal_message(
        &self,
        kind: &str,
        plaintext: &[u8],
        seed: &[u8],
    ) -> Result<Vec<u8>, JsError> {
        self.0
            .message_key()
            .seal(parse_kind(kind)?, plaintext, &mut rng(seed)?)
            .map_err(js_err)
    }

    /// Open a message this peer sealed with [`Peer::seal_message`].
    #[wasm_bindgen(js_name = openMessage)]
    pub fn open_message(&self, sealed: &[u8]) -> Result<OpenedMessage, JsError> {
        open(self.0.message_key(), sealed)
    }
}

fn open(key: &core::MessageKey, sealed: &[u8]) -> Result<OpenedMessage, JsError> {
    let m = key.open(sealed).map_err(js_err)?;
    Ok(OpenedMessage {
        kind: kind_name(m.kind),
        plaintext: m.plaintext.to_vec(),
    })
}

/// A peer's media sender key, opened from a sealed message. Install it in that peer's
/// [`FrameDecryptor`]; it also opens the peer's group chat messages.
#[wasm_bindgen]
pub struct ReceivedKey(core::ReceivedSenderKey);

#[wasm_bindgen]
impl ReceivedKey {
    /// The KID frames under this key carry.
    #[wasm_bindgen(getter)]
    #[must_use]
    pub fn kid(&self) -> u64 {
        self.0.kid()
    }

    /// The key generation.
    #[wasm_bindgen(getter)]
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.0.generation()
    }

    /// Open a group message the sender sealed with [`FrameEncryptor::seal_message`],
    /// under this key or a later ratchet step of it.
    #[wasm_bindgen(js_name = openMessage)]
    pub fn open_message(&self, sealed: &[u8]) -> Result<OpenedMessage, JsError> {
        let m = self.0.open_message(sealed).map_err(js_err)?;
        Ok(OpenedMessage {
            kind: kind_name(m.kind),
            plaintext: m.plaintext.to_vec(),
        })
    }
}

/// An opened message.
#[wasm_bindgen(getter_with_clone)]
pub struct OpenedMessage {
    /// `"chat"` or `"document"`.
    #[wasm_bindgen(readonly)]
    pub kind: String,
    /// The plaintext bytes.
    #[wasm_bindgen(readonly)]
    pub plaintext: Vec<u8>,
}

/// Encrypts our outgoing frames (one per local sender; owns the media key).
#[wasm_bindgen]
pub struct FrameEncryptor {
    inner: core::FrameEncryptor,
    out: Vec<u8>,
}

#[wasm_bindgen]
impl FrameEncryptor {
    /// A fresh random sender key for `suite` (see [`suite_chacha20_poly1305`]).
    #[wasm_bindgen(constructor)]
    pub fn new(suite: u16, seed: &[u8]) -> Result<FrameEncryptor, JsError> {
        let suite = CipherSuite::from_id(suite).map_err(|_| misuse("unknown cipher suite id"))?;
        let key = core::SenderKey::generate(suite, &mut rng(seed)?);
        Ok(Self {
            inner: core::FrameEncryptor::new(key).map_err(js_err)?,
            out: Vec::new(),
        })
    }

    /// Encrypt one encoded frame. Empty frames come back empty.
    pub fn encrypt(&mut self, codec: &str, frame: &[u8]) -> Result<Vec<u8>, JsError> {
        self.inner
            .encrypt(Codec::from_name(codec), frame, &mut self.out)
            .map_err(js_err)?;
        Ok(self.out.clone())
    }

    /// Ratchet the key (someone joined); then seal it to the joiner.
    pub fn ratchet(&mut self) -> Result<(), JsError> {
        self.inner.ratchet().map_err(js_err)
    }

    /// Fresh key (someone left); then seal it to every remaining peer.
    pub fn rotate(&mut self, seed: &[u8]) -> Result<(), JsError> {
        self.inner.rotate(&mut rng(seed)?).map_err(js_err)
    }

    /// The KID frames are sent under.
    #[wasm_bindgen(getter)]
    #[must_use]
    pub fn kid(&self) -> u64 {
        self.inner.kid()
    }

    /// Seal a group message (`kind`: `"chat"` or `"document"`) that every holder of our
    /// current sender key can open with [`ReceivedKey::open_message`].
    #[wasm_bindgen(js_name = sealMessage)]
    pub fn seal_message(
        &self,
        kind: &str,
        plaintext: &[u8],
        seed: &[u8],
    ) -> Result<Vec<u8>, JsError> {
        self.inner
            .sender_key()
            .message_key()
            .seal(parse_kind(kind)?, plaintext, &mut rng(seed)?)
            .map_err(js_err)
    }
}

/// Decrypts one remote sender's frames (keyring + replay window).
#[wasm_bindgen]
pub struct FrameDecryptor {
    inner: core::FrameDecryptor,
    out: Vec<u8>,
    new_key: bool,
}

impl Default for FrameDecryptor {
    fn default() -> Self {
        Self::new()
    }
}

#[wasm_bindgen]
impl FrameDecryptor {
    /// An empty keyring.
    #[wasm_bindgen(constructor)]
    #[must_use]
    pub fn new() -> FrameDecryptor {
        Self {
            inner: core::FrameDecryptor::new(),
            out: Vec::new(),
            new_key: false,
        }
    }

    /// Install a key opened with [`Peer::open_sender_key`].
    pub fn install(&mut self, key: &ReceivedKey) -> Result<(), JsError> {
        self.inner.install(key.0.clone()).map_err(js_err)
    }

    /// Decrypt one frame. Throws `peer: ...` for frames to drop (count them).
    pub fn decrypt(&mut self, codec: &str, frame: &[u8]) -> Result<Vec<u8>, JsError> {
        let info = self
            .inner
            .decrypt(Codec::from_name(codec), frame, &mut self.out)
            .map_err(js_err)?;
        self.new_key = info.first_frame_of_key;
        Ok(self.out.clone())
    }

    /// `true` if the last decrypted frame was the first under a new key: ask the sender
    /// for a keyframe (`sendKeyFrameRequest`).
    #[wasm_bindgen(getter, js_name = lastFrameStartedNewKey)]
    #[must_use]
    pub fn last_frame_started_new_key(&self) -> bool {
        self.new_key
    }

    /// Refuse keys of generations below `generation` from now on.
    #[wasm_bindgen(js_name = retireGenerationsBefore)]
    pub fn retire_generations_before(&mut self, generation: u64) {
        self.inner.retire_generations_before(generation);
    }
}

/// The safety code for two identity public keys and a transcript hash (same as
/// [`Peer::safety_code`]; for showing a code from stored values).
#[wasm_bindgen(js_name = safetyCode)]
pub fn safety_code(
    identity_a: &[u8],
    identity_b: &[u8],
    transcript_hash: &[u8],
) -> Result<String, JsError> {
    let a = core::IdentityPublicKey::from_bytes(identity_a).map_err(js_err)?;
    let b = core::IdentityPublicKey::from_bytes(identity_b).map_err(js_err)?;
    let t: [u8; 32] = transcript_hash
        .try_into()
        .map_err(|_| misuse("transcript hash must be 32 bytes"))?;
    Ok(core::safety_code(&a, &b, &t).to_text())
}
