//! # confide-e2ee: the end-to-end encryption core of Confide
//!
//! Everything a Confide client needs to keep media, chat and documents unreadable to the
//! server, in one crate that builds natively and for `wasm32-unknown-unknown`, so the
//! browser and the native client share one implementation and one set of test vectors.
//!
//! * **Identity**: [`IdentityKeyPair`] / [`IdentityPublicKey`] (Ed25519, one per device).
//! * **Key agreement**: a [`Session`] per consultation makes a signed ephemeral X25519
//!   [`KeyOffer`] bound to the [`ConsultationId`] and [`ParticipantId`];
//!   [`Session::accept`] verifies a peer's offer and derives [`PairwiseKeys`]
//!   (X25519 + HKDF-SHA256, salted with the hash of both offers in canonical order).
//! * **Sender keys**: each participant encrypts its media under a random [`SenderKey`]
//!   ([`FrameEncryptor::sender_key`]) and seals it to every peer with
//!   [`PairwiseKeys::seal_sender_key`]. On join the key is ratcheted
//!   ([`FrameEncryptor::ratchet`], RFC 9605 section 5.1); on leave a fresh one is made
//!   ([`FrameEncryptor::rotate`]).
//! * **Frames**: SFrame (RFC 9605) header and key schedule in [`sframe`]; media framing with
//!   a codec clear prefix in [`FrameEncryptor`] / [`FrameDecryptor`] (keyring of a few
//!   keys, replay window). Suites: [`CipherSuite`] (AES-GCM from the RFC, AES-CTR+HMAC
//!   from the RFC, and ChaCha20-Poly1305 under private-use id 0xF001, our default).
//! * **Safety code**: [`PairwiseKeys::safety_code`], 20 digits both people compare aloud.
//! * **Messages**: [`MessageKey::seal`] / [`MessageKey::open`] for chat and documents,
//!   padded to hide exact lengths.
//!
//! ## What this crate does not do
//!
//! * No I/O, no clock, no global or OS RNG: every function that needs randomness takes
//!   `&mut impl CryptoRng` ([`SeededRng`] turns 32 bytes from the host into one). Callers
//!   own timing (when to rotate, how long to keep old keys).
//! * It does not transport anything: offers, sealed keys and sealed messages are opaque
//!   bytes the caller sends through signaling.
//! * It does not decide whom to trust: it proves that a peer holds the identity key in its
//!   offer, and gives the safety code; comparing identity keys with the account's stored
//!   key and comparing the code aloud is the application's job.
//! * It does not packetize, reassemble or depacketize media, and does not hide metadata
//!   (frame sizes, timing, KIDs and counters are visible to the SFU).
//! * It does not persist state. A [`FrameEncryptor`] must not be recreated from a stored
//!   key (its counter would restart); make a new [`SenderKey`] instead.
//!
//! ## Errors
//!
//! One [`Error`] enum. [`Error::is_from_peer`] separates bytes from the network that were
//! malformed or forged (drop the input and count it) from API misuse (a bug in the
//! caller). Every decoder (`*::from_bytes`, `decrypt`, `open_*`) returns an error on bad
//! input and never panics; the fuzz targets in `e2ee/fuzz` check that.
//!
//! ## Example: a two-party exchange
//!
//! ```
//! use confide_e2ee::{
//!     CipherSuite, Codec, ConsultationId, FrameDecryptor, FrameEncryptor, IdentityKeyPair,
//!     KeyOffer, MessageKind, ParticipantId, SeededRng, SenderKey, Session,
//! };
//!
//! # fn main() -> Result<(), confide_e2ee::Error> {
//! // In real code seed from the OS (getrandom) or crypto.getRandomValues.
//! let mut rng = SeededRng::from_seed([42; 32]);
//! let consultation = ConsultationId::new("c-2026-0042")?;
//!
//! // Each device has an identity; each join makes a session with a signed offer.
//! let doctor_id = IdentityKeyPair::generate(&mut rng);
//! let patient_id = IdentityKeyPair::generate(&mut rng);
//! let doctor = Session::new(&doctor_id, consultation.clone(), ParticipantId(1), &mut rng);
//! let patient = Session::new(&patient_id, consultation, ParticipantId(2), &mut rng);
//!
//! // Offers travel through signaling as bytes.
//! let to_patient = doctor.offer().to_bytes();
//! let to_doctor = patient.offer().to_bytes();
//! let d2p = doctor.accept(&KeyOffer::from_bytes(&to_doctor)?)?;
//! let p2d = patient.accept(&KeyOffer::from_bytes(&to_patient)?)?;
//!
//! // Both read the same safety code aloud.
//! assert_eq!(d2p.safety_code(), p2d.safety_code());
//!
//! // The doctor's media key, sealed to the patient.
//! let mut video = FrameEncryptor::new(SenderKey::generate(CipherSuite::default(), &mut rng))?;
//! let sealed = d2p.seal_sender_key(video.sender_key(), &mut rng)?;
//! let mut from_doctor = FrameDecryptor::new();
//! from_doctor.install(p2d.open_sender_key(&sealed)?)?;
//!
//! // A VP8 keyframe (P bit 0): the first 10 bytes stay readable for the SFU.
//! let frame = [0x10u8, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01, 1, 2, 3, 4];
//! let (mut wire, mut plain) = (Vec::new(), Vec::new());
//! video.encrypt(Codec::Vp8, &frame, &mut wire)?;
//! assert_eq!(wire[..10], frame[..10]);
//! from_doctor.decrypt(Codec::Vp8, &wire, &mut plain)?;
//! assert_eq!(plain, frame);
//!
//! // A replayed frame is refused.
//! assert!(from_doctor.decrypt(Codec::Vp8, &wire, &mut plain).is_err());
//!
//! // A prescription only the patient can open.
//! let doc = d2p.message_key().seal(MessageKind::Document, b"Rx: rest", &mut rng)?;
//! assert_eq!(&*p2d.message_key().open(&doc)?.plaintext, b"Rx: rest");
//! # Ok(())
//! # }
//! ```
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

// no_std + alloc keeps the crate honest about touching no OS facility; tests use std.
extern crate alloc;
#[cfg(test)]
extern crate std;

mod error;
pub mod fuzzing;
pub mod group_media;
mod header;
mod identity;
mod media;
mod message;
mod rng;
mod safety;
mod sender_key;
mod session;
pub mod sframe;
mod suite;

pub use error::{Error, Result};
pub use group_media::{
    EpochSecret, GroupFrameDecryptor, GroupFrameEncryptor, GroupFrameInfo, group_kid,
};
pub use header::{MAX_HEADER_LEN, SframeHeader};
pub use identity::{IdentityKeyPair, IdentityPublicKey};
pub use media::{
    Codec, FrameDecryptor, FrameEncryptor, FrameInfo, KEYRING_CAPACITY, MAX_CLEAR_PREFIX,
    MAX_RATCHET_AHEAD, REPLAY_WINDOW,
};
pub use message::{MAX_MESSAGE_LEN, MessageKey, MessageKind, OpenedMessage, padded_len};
pub use rand_core::CryptoRng;
pub use rng::SeededRng;
pub use safety::{SAFETY_CODE_DIGITS, SAFETY_CODE_ITERATIONS, SafetyCode, safety_code};
pub use sender_key::{MAX_GENERATION, RATCHET_BITS, ReceivedSenderKey, SenderKey, split_kid};
pub use session::{
    ConsultationId, KeyOffer, MAX_CONSULTATION_ID_LEN, PairwiseKeys, ParticipantId, Session,
};
pub use suite::{CipherSuite, MAX_TAG_LEN, NONCE_LEN};

#[cfg(test)]
mod fuzz_entry_points {
    //! Keep the fuzz entry points compiled and exercised in ordinary test runs.
    use super::fuzzing;
    use alloc::vec::Vec;

    #[test]
    fn fuzz_entry_points_accept_arbitrary_bytes() {
        let mut x = 0x1234_5678_u32;
        for len in 0..300usize {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            fuzzing::header(&data);
            fuzzing::frame_decrypt(&data);
            fuzzing::key_offer(&data);
        }
        fuzzing::header(&[0xff; 17]);
        fuzzing::frame_decrypt(&[0, 0]);
    }
}
