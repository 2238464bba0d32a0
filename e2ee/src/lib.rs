//! # confide-e2ee: the frame encryption core of Confide
//!
//! SFrame (RFC 9605) media protection for Confide clients, in one crate that builds
//! natively and for `wasm32-unknown-unknown`, so the browser and the native client share
//! one implementation and one set of test vectors. Keys come from the consultation's MLS
//! group (`confide-mls`); this crate never exchanges keys itself.
//!
//! * **Frames under MLS epoch keys**: [`group_media`] ([`GroupFrameEncryptor`] /
//!   [`GroupFrameDecryptor`]), RFC 9605 section 5.2: one [`EpochSecret`] per MLS epoch
//!   from the MLS exporter, per-sender keys, KID = sender leaf index and epoch bits.
//! * **Frames under a plain sender key**: [`FrameEncryptor`] / [`FrameDecryptor`] over a
//!   [`SenderKey`] (RFC 9605 section 5.1: key generation and ratchet step in the KID;
//!   keyring of a few keys, replay window), for callers that carry the key themselves.
//! * **SFrame**: header and key schedule in [`sframe`]; media framing with a codec clear
//!   prefix ([`Codec`]). Suites: [`CipherSuite`] (AES-GCM from the RFC, AES-CTR+HMAC from
//!   the RFC, and ChaCha20-Poly1305 under private-use id 0xF001, our default).
//! * **Identity**: [`IdentityKeyPair`] / [`IdentityPublicKey`] (Ed25519 key bytes; the
//!   MLS layer uses it to derive a device credential's public key).
//!
//! ## What this crate does not do
//!
//! * No I/O, no clock, no global or OS RNG: every function that needs randomness takes
//!   `&mut impl CryptoRng` ([`SeededRng`] turns 32 bytes from the host into one). Callers
//!   own timing (when to rotate, how long to keep old keys).
//! * It does not exchange or transport keys: group keys come from MLS, and a plain
//!   [`SenderKey`] reaches its receivers ([`SenderKey::to_received`]) by the caller's means.
//! * It does not packetize, reassemble or depacketize media, and does not hide metadata
//!   (frame sizes, timing, KIDs and counters are visible to the SFU).
//! * It does not persist state. A [`FrameEncryptor`] must not be recreated from a stored
//!   key (its counter would restart); make a new [`SenderKey`] instead.
//!
//! ## Errors
//!
//! One [`Error`] enum. [`Error::is_from_peer`] separates bytes from the network that were
//! malformed or forged (drop the input and count it) from API misuse (a bug in the
//! caller). Every decoder (`*::from_bytes`, `decrypt`) returns an error on bad input and
//! never panics; the fuzz targets in `e2ee/fuzz` check that.
//!
//! ## Example: frames under a sender key
//!
//! ```
//! use confide_e2ee::{CipherSuite, Codec, FrameDecryptor, FrameEncryptor, SeededRng, SenderKey};
//!
//! # fn main() -> Result<(), confide_e2ee::Error> {
//! // In real code seed from the OS (getrandom) or crypto.getRandomValues.
//! let mut rng = SeededRng::from_seed([42; 32]);
//!
//! // The doctor's media key; the patient installs its decrypt-only copy.
//! let mut video = FrameEncryptor::new(SenderKey::generate(CipherSuite::default(), &mut rng))?;
//! let mut from_doctor = FrameDecryptor::new();
//! from_doctor.install(video.sender_key().to_received())?;
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
mod rng;
mod sender_key;
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
pub use rand_core::CryptoRng;
pub use rng::SeededRng;
pub use sender_key::{MAX_GENERATION, RATCHET_BITS, ReceivedSenderKey, SenderKey, split_kid};
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
        }
        fuzzing::header(&[0xff; 17]);
        fuzzing::frame_decrypt(&[0, 0]);
    }
}
