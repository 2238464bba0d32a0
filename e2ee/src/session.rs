//! Authenticated key agreement between two participants of a consultation: signed
//! ephemeral X25519 key offers, pairwise keys from X25519 + HKDF-SHA256 over the
//! transcript, and sealing of sender keys under those pairwise keys.

use alloc::vec::Vec;
use core::fmt;

use chacha20poly1305::ChaCha20Poly1305;
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use hkdf::Hkdf;
use rand_core::CryptoRng;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::identity::{IdentityKeyPair, IdentityPublicKey};
use crate::message::MessageKey;
use crate::safety::{SafetyCode, safety_code};
use crate::sender_key::{ReceivedSenderKey, SenderKey};

const OFFER_VERSION: u8 = 1;
const OFFER_SIG_CONTEXT: &[u8] = b"confide-e2ee/v1 key offer\0";
const SEALED_KEY_VERSION: u8 = 1;
const SEALED_KEY_AAD: &[u8] = b"confide-e2ee/v1 sealed sender key";
/// Longest consultation id a key offer carries.
pub const MAX_CONSULTATION_ID_LEN: usize = 64;
const SIG_LEN: usize = 64;
const FIXED_LEN: usize = 1 + 32 + 32 + 8 + 1;

/// The consultation a key offer is bound to (the id signaling uses, as bytes; 1 to 64
/// bytes). An offer made for one consultation is refused in every other.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ConsultationId(Vec<u8>);

impl fmt::Debug for ConsultationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match core::str::from_utf8(&self.0) {
            Ok(s) => write!(f, "ConsultationId({s:?})"),
            Err(_) => write!(f, "ConsultationId({:?})", self.0),
        }
    }
}

impl ConsultationId {
    /// Wrap an id; must be 1 to [`MAX_CONSULTATION_ID_LEN`] bytes.
    pub fn new(id: impl AsRef<[u8]>) -> Result<Self> {
        let id = id.as_ref();
        if id.is_empty() || id.len() > MAX_CONSULTATION_ID_LEN {
            return Err(Error::InvalidArgument(
                "consultation id must be 1 to 64 bytes",
            ));
        }
        Ok(Self(id.to_vec()))
    }

    /// The raw bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A participant's id within a consultation, assigned by signaling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParticipantId(pub u64);

/// A signed ephemeral X25519 public key, bound to an identity, a consultation and a
/// participant id. Sent to every other participant through signaling.
///
/// Wire format (all integers big-endian):
/// `version(1)=1 || identity(32) || ephemeral(32) || participant(8) || len(1) ||
/// consultation(len) || signature(64)`; the signature is Ed25519 over
/// `"confide-e2ee/v1 key offer\0" || everything before the signature`.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyOffer {
    identity: IdentityPublicKey,
    ephemeral: [u8; 32],
    participant: ParticipantId,
    consultation: ConsultationId,
    signature: [u8; SIG_LEN],
}

impl fmt::Debug for KeyOffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyOffer")
            .field("identity", &self.identity)
            .field("participant", &self.participant)
            .field("consultation", &self.consultation)
            .finish_non_exhaustive()
    }
}

impl KeyOffer {
    fn signed_part(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED_LEN + self.consultation.0.len());
        out.push(OFFER_VERSION);
        out.extend_from_slice(&self.identity.to_bytes());
        out.extend_from_slice(&self.ephemeral);
        out.extend_from_slice(&self.participant.0.to_be_bytes());
        // ConsultationId::new bounds the length to 64.
        out.push(self.consultation.0.len() as u8);
        out.extend_from_slice(&self.consultation.0);
        out
    }

    fn signing_input(signed: &[u8]) -> Vec<u8> {
        let mut msg = Vec::with_capacity(OFFER_SIG_CONTEXT.len() + signed.len());
        msg.extend_from_slice(OFFER_SIG_CONTEXT);
        msg.extend_from_slice(signed);
        msg
    }

    /// The wire encoding.
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.signed_part();
        out.extend_from_slice(&self.signature);
        out
    }

    /// Parse the wire encoding. Does not check the signature: [`KeyOffer::verify`] (and
    /// [`Session::accept`], which calls it) does. Never panics.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < FIXED_LEN + 1 + SIG_LEN {
            return Err(Error::Malformed("key offer too short"));
        }
        if bytes[0] != OFFER_VERSION {
            return Err(Error::Malformed("unknown key offer version"));
        }
        let identity = IdentityPublicKey::from_bytes(&bytes[1..33])?;
        let mut ephemeral = [0u8; 32];
        ephemeral.copy_from_slice(&bytes[33..65]);
        let mut pid = [0u8; 8];
        pid.copy_from_slice(&bytes[65..73]);
        let len = usize::from(bytes[73]);
        if bytes.len() != FIXED_LEN + len + SIG_LEN {
            return Err(Error::Malformed("key offer length"));
        }
        let consultation = ConsultationId::new(&bytes[FIXED_LEN..FIXED_LEN + len])
            .map_err(|_| Error::Malformed("consultation id length"))?;
        let mut signature = [0u8; SIG_LEN];
        signature.copy_from_slice(&bytes[FIXED_LEN + len..]);
        Ok(Self {
            identity,
            ephemeral,
            participant: ParticipantId(u64::from_be_bytes(pid)),
            consultation,
            signature,
        })
    }

    /// Check the signature against the identity key inside the offer.
    pub fn verify(&self) -> Result<()> {
        let msg = Self::signing_input(&self.signed_part());
        self.identity.verify(&msg, &self.signature)
    }

    /// The offering device's identity key. Compare with the key signaling claims for
    /// that account; the safety code catches a signaling server that lies.
    #[must_use]
    pub fn identity(&self) -> &IdentityPublicKey {
        &self.identity
    }

    /// The ephemeral X25519 public key.
    #[must_use]
    pub fn ephemeral_public(&self) -> [u8; 32] {
        self.ephemeral
    }

    /// The participant id the offer is bound to.
    #[must_use]
    pub fn participant(&self) -> ParticipantId {
        self.participant
    }

    /// The consultation the offer is bound to.
    #[must_use]
    pub fn consultation(&self) -> &ConsultationId {
        &self.consultation
    }
}

/// Our side of the key agreement for one consultation: an ephemeral X25519 key pair and
/// the signed offer for it. One `Session` serves all peers of the consultation.
pub struct Session {
    ephemeral: StaticSecret,
    offer: KeyOffer,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("offer", &self.offer)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Make an ephemeral key pair and sign an offer for it with `identity`.
    pub fn new<R: CryptoRng + ?Sized>(
        identity: &IdentityKeyPair,
        consultation: ConsultationId,
        participant: ParticipantId,
        rng: &mut R,
    ) -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut *seed);
        let ephemeral = StaticSecret::from(*seed);
        let public = PublicKey::from(&ephemeral);
        let mut offer = KeyOffer {
            identity: identity.public_key(),
            ephemeral: public.to_bytes(),
            participant,
            consultation,
            signature: [0u8; SIG_LEN],
        };
        offer.signature = identity.sign(&KeyOffer::signing_input(&offer.signed_part()));
        Self { ephemeral, offer }
    }

    /// Our offer, to send to every peer.
    #[must_use]
    pub fn offer(&self) -> &KeyOffer {
        &self.offer
    }

    /// Accept a peer's offer: verify its signature and binding, then derive the pairwise
    /// keys. Both sides get the same keys and the same safety code.
    ///
    /// Key schedule: `transcript = SHA-256("confide-e2ee/v1 transcript" || len ||
    /// offer_lo || len || offer_hi)` over the signed parts of both offers in byte order;
    /// `prk = HKDF-Extract(salt = transcript, X25519(our_eph, peer_eph))`; seal keys per
    /// direction `HKDF-Expand(prk, "confide-e2ee/v1 sender-key seal" || from || to, 32)`.
    pub fn accept(&self, peer: &KeyOffer) -> Result<PairwiseKeys> {
        peer.verify()?;
        if peer.consultation != self.offer.consultation {
            return Err(Error::WrongConsultation);
        }
        if peer.participant == self.offer.participant {
            return Err(Error::Malformed("peer offer carries our participant id"));
        }
        let shared = self
            .ephemeral
            .diffie_hellman(&PublicKey::from(peer.ephemeral));
        if !shared.was_contributory() {
            return Err(Error::Malformed("low-order X25519 key"));
        }
        let ours = self.offer.signed_part();
        let theirs = peer.signed_part();
        let (lo, hi) = if ours <= theirs {
            (&ours, &theirs)
        } else {
            (&theirs, &ours)
        };
        let transcript: [u8; 32] = Sha256::new()
            .chain_update(b"confide-e2ee/v1 transcript")
            .chain_update((lo.len() as u16).to_be_bytes())
            .chain_update(lo)
            .chain_update((hi.len() as u16).to_be_bytes())
            .chain_update(hi)
            .finalize()
            .into();
        let kdf = Hkdf::<Sha256>::new(Some(&transcript), shared.as_bytes());
        let me = self.offer.participant.0.to_be_bytes();
        let them = peer.participant.0.to_be_bytes();
        let mut send = Zeroizing::new([0u8; 32]);
        let mut recv = Zeroizing::new([0u8; 32]);
        let label: &[u8] = b"confide-e2ee/v1 sender-key seal";
        let ok = kdf
            .expand_multi_info(&[label, &me, &them], &mut *send)
            .is_ok()
            && kdf
                .expand_multi_info(&[label, &them, &me], &mut *recv)
                .is_ok();
        debug_assert!(ok, "32-byte HKDF outputs");
        Ok(PairwiseKeys {
            send,
            recv,
            message: MessageKey::from_pairwise(&kdf),
            transcript,
            own_identity: self.offer.identity,
            peer_identity: peer.identity,
            peer_participant: peer.participant,
        })
    }
}

/// Keys shared with one peer. Zeroized on drop; `Debug` shows only public values.
pub struct PairwiseKeys {
    send: Zeroizing<[u8; 32]>,
    recv: Zeroizing<[u8; 32]>,
    message: MessageKey,
    transcript: [u8; 32],
    own_identity: IdentityPublicKey,
    peer_identity: IdentityPublicKey,
    peer_participant: ParticipantId,
}

impl fmt::Debug for PairwiseKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PairwiseKeys")
            .field("peer_identity", &self.peer_identity)
            .field("peer_participant", &self.peer_participant)
            .finish_non_exhaustive()
    }
}

impl PairwiseKeys {
    /// Seal our sender key for this peer. Output: `version(1) || nonce(12) ||
    /// ChaCha20-Poly1305(suite(2) || kid(8) || len(1) || base_key) || tag(16)`.
    pub fn seal_sender_key<R: CryptoRng + ?Sized>(
        &self,
        key: &SenderKey,
        rng: &mut R,
    ) -> Result<Vec<u8>> {
        let mut nonce = [0u8; 12];
        rng.fill_bytes(&mut nonce);
        let mut body = Zeroizing::new(Vec::with_capacity(11 + 64));
        key.to_received().encode(&mut body);
        let mut out = Vec::with_capacity(13 + body.len() + 16);
        out.push(SEALED_KEY_VERSION);
        out.extend_from_slice(&nonce);
        let start = out.len();
        out.extend_from_slice(&body);
        let cipher = ChaCha20Poly1305::new(&(*self.send).into());
        let aad = sealed_key_aad();
        // Only messages beyond the AEAD's length limit (2^38 bytes) fail; ours is 75.
        let tag = cipher
            .encrypt_inout_detached(&nonce.into(), &aad, (&mut out[start..]).into())
            .map_err(|_| Error::InvalidArgument("sender key too long to seal"))?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Open a sender key this peer sealed for us. Never panics on any input.
    pub fn open_sender_key(&self, sealed: &[u8]) -> Result<ReceivedSenderKey> {
        if sealed.len() < 13 + 16 {
            return Err(Error::Malformed("sealed sender key too short"));
        }
        if sealed[0] != SEALED_KEY_VERSION {
            return Err(Error::Malformed("unknown sealed sender key version"));
        }
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&sealed[1..13]);
        let (ct, tag) = sealed[13..].split_at(sealed.len() - 13 - 16);
        let mut body = Zeroizing::new(ct.to_vec());
        let cipher = ChaCha20Poly1305::new(&(*self.recv).into());
        let tag = tag.try_into().map_err(|_| Error::Authentication)?;
        cipher
            .decrypt_inout_detached(
                &nonce.into(),
                &sealed_key_aad(),
                body.as_mut_slice().into(),
                tag,
            )
            .map_err(|_| Error::Authentication)?;
        ReceivedSenderKey::decode(&body)
    }

    /// The safety code for this pair; the peer computes the same one.
    #[must_use]
    pub fn safety_code(&self) -> SafetyCode {
        safety_code(&self.own_identity, &self.peer_identity, &self.transcript)
    }

    /// The peer's identity key (as signed in its offer).
    #[must_use]
    pub fn peer_identity(&self) -> &IdentityPublicKey {
        &self.peer_identity
    }

    /// The peer's participant id.
    #[must_use]
    pub fn peer_participant(&self) -> ParticipantId {
        self.peer_participant
    }

    /// SHA-256 of both offers in canonical order (public; both sides have it).
    #[must_use]
    pub fn transcript_hash(&self) -> [u8; 32] {
        self.transcript
    }

    /// A message key only this peer and we hold (documents, prescriptions).
    #[must_use]
    pub fn message_key(&self) -> &MessageKey {
        &self.message
    }
}

fn sealed_key_aad() -> [u8; 34] {
    let mut aad = [0u8; 34];
    aad[..SEALED_KEY_AAD.len()].copy_from_slice(SEALED_KEY_AAD);
    aad[SEALED_KEY_AAD.len()] = SEALED_KEY_VERSION;
    aad
}
