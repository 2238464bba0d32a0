//! The one error type of the crate.

use thiserror::Error;

/// Everything that can go wrong in `confide-e2ee`.
///
/// Variants fall in two groups, and [`Error::is_from_peer`] tells them apart:
///
/// * **Peer or network input** (`Malformed`, `UnknownKey`, `Authentication`, `Replay`,
///   `BadSignature`, `UnsupportedSuite`, `StaleKey`): bytes that came
///   from the network were wrong or forged. Drop the input, count it, carry on. These are
///   never a bug in the calling code, and a relay can cause them at will.
/// * **API misuse** (`InvalidArgument`, `CounterExhausted`): the caller asked for
///   something this crate refuses to do. Fix the caller.
///
/// Messages never contain key material; they may contain public values (KID, CTR).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Error {
    /// Input bytes do not parse (truncated, bad length, unknown version, non-minimal
    /// SFrame header encoding, ...). The payload names what was wrong.
    #[error("malformed input: {0}")]
    Malformed(&'static str),
    /// The frame names a KID for which no key is installed (yet). The key may still be
    /// on its way through signaling.
    #[error("no key installed for KID {kid}")]
    UnknownKey {
        /// The KID named in the SFrame header.
        kid: u64,
    },
    /// The AEAD tag did not verify: the ciphertext, header, clear prefix or key is wrong.
    #[error("authentication failed")]
    Authentication,
    /// The (KID, CTR) pair was already accepted, or is older than the replay window.
    #[error("replayed or too old frame (KID {kid}, CTR {ctr})")]
    Replay {
        /// KID of the rejected frame.
        kid: u64,
        /// CTR of the rejected frame.
        ctr: u64,
    },
    /// An Ed25519 public key is not a canonical point, or is weak (small order).
    #[error("signature check failed")]
    BadSignature,
    /// A cipher suite id we do not implement.
    #[error("unsupported cipher suite 0x{0:04x}")]
    UnsupportedSuite(u16),
    /// A sender key of a generation that has already been superseded was installed
    /// again (for example a replayed key delivery after the sender rotated).
    #[error("sender key generation {generation} is superseded")]
    StaleKey {
        /// The superseded generation.
        generation: u64,
    },
    /// The caller passed an argument this crate refuses (a frame too short for its
    /// codec's clear prefix, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// The frame counter of a sender key is used up; rotate the key. Unreachable in
    /// practice (2^64 frames) but never silently wrapped.
    #[error("frame counter exhausted; rotate the sender key")]
    CounterExhausted,
}

impl Error {
    /// `true` if the error was caused by bytes from the network (drop and count), `false`
    /// if it is API misuse (a bug in the caller).
    #[must_use]
    pub fn is_from_peer(&self) -> bool {
        !matches!(self, Self::InvalidArgument(_) | Self::CounterExhausted)
    }
}

/// Short alias used throughout the crate.
pub type Result<T> = core::result::Result<T, Error>;
