//! Sender keys (RFC 9605 section 5.1): one random base key per media sender, with a KID
//! made of a key generation and a ratchet step.

use alloc::vec::Vec;
use core::fmt;

use rand_core::CryptoRng;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::sframe::ratchet_base_key;
use crate::suite::CipherSuite;

/// `R` of RFC 9605 section 5.1: the number of low KID bits that carry the ratchet step.
/// A receiver follows at most [`crate::MAX_RATCHET_AHEAD`] steps at once; the rest of
/// the KID is the key generation.
pub const RATCHET_BITS: u32 = 8;
const RATCHET_MASK: u64 = (1 << RATCHET_BITS) - 1;
/// Largest key generation that fits in a KID.
pub const MAX_GENERATION: u64 = u64::MAX >> RATCHET_BITS;

/// Split a KID into (generation, ratchet step modulo 2^R).
#[must_use]
pub const fn split_kid(kid: u64) -> (u64, u64) {
    (kid >> RATCHET_BITS, kid & RATCHET_MASK)
}

/// Our own media key: the sending side. Deliberately not `Clone`: a second copy would
/// start a second frame counter under the same key and reuse nonces.
///
/// Zeroized on drop; `Debug` shows only public values.
pub struct SenderKey {
    suite: CipherSuite,
    generation: u64,
    step: u64,
    base_key: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for SenderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SenderKey")
            .field("suite", &self.suite)
            .field("kid", &self.kid())
            .finish_non_exhaustive()
    }
}

impl SenderKey {
    /// A fresh random base key (`Nh` bytes) at generation 0, ratchet step 0.
    pub fn generate<R: CryptoRng + ?Sized>(suite: CipherSuite, rng: &mut R) -> Self {
        Self::generate_at(suite, 0, rng)
    }

    fn generate_at<R: CryptoRng + ?Sized>(
        suite: CipherSuite,
        generation: u64,
        rng: &mut R,
    ) -> Self {
        let mut base_key = Zeroizing::new(alloc::vec![0u8; suite.hash_len()]);
        rng.fill_bytes(&mut base_key);
        Self {
            suite,
            generation,
            step: 0,
            base_key,
        }
    }

    /// The key that replaces this one when a participant leaves: fresh random bytes,
    /// generation + 1. Nobody can derive it from the old key.
    pub fn next_generation<R: CryptoRng + ?Sized>(&self, rng: &mut R) -> Result<Self> {
        if self.generation >= MAX_GENERATION {
            return Err(Error::CounterExhausted);
        }
        Ok(Self::generate_at(self.suite, self.generation + 1, rng))
    }

    /// Ratchet forward one step (on join): the joiner gets the new key and cannot derive
    /// earlier ones. Fails after 2^R - 1 steps in one generation; rotate then.
    pub fn ratchet(&mut self) -> Result<()> {
        if (self.step + 1) & RATCHET_MASK == 0 {
            return Err(Error::CounterExhausted);
        }
        self.base_key = ratchet_base_key(self.suite, &self.base_key);
        self.step += 1;
        Ok(())
    }

    /// The suite.
    #[must_use]
    pub fn suite(&self) -> CipherSuite {
        self.suite
    }

    /// `KID = (generation << R) + (ratchet_step mod 2^R)`.
    #[must_use]
    pub fn kid(&self) -> u64 {
        (self.generation << RATCHET_BITS) | (self.step & RATCHET_MASK)
    }

    /// The key generation (increments on [`SenderKey::next_generation`]).
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The ratchet step within the generation.
    #[must_use]
    pub fn ratchet_step(&self) -> u64 {
        self.step
    }

    pub(crate) fn base_key(&self) -> &[u8] {
        &self.base_key
    }

    /// The decrypt-only copy of this key that receivers install. This crate does not
    /// carry it to them: deliver it over an end-to-end channel of your own (Confide's
    /// consultations derive their frame keys from MLS instead, see
    /// [`crate::group_media`]).
    #[must_use]
    pub fn to_received(&self) -> ReceivedSenderKey {
        ReceivedSenderKey {
            suite: self.suite,
            kid: self.kid(),
            base_key: self.base_key.clone(),
        }
    }
}

/// A peer's sender key as received: decrypt-only (RFC 9605: a key is used for encryption
/// or decryption, never both). Install it in that peer's [`crate::FrameDecryptor`].
///
/// Zeroized on drop; `Debug` shows only public values.
#[derive(Clone)]
pub struct ReceivedSenderKey {
    pub(crate) suite: CipherSuite,
    pub(crate) kid: u64,
    pub(crate) base_key: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for ReceivedSenderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceivedSenderKey")
            .field("suite", &self.suite)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl ReceivedSenderKey {
    /// The suite.
    #[must_use]
    pub fn suite(&self) -> CipherSuite {
        self.suite
    }

    /// The KID the sender uses with this key.
    #[must_use]
    pub fn kid(&self) -> u64 {
        self.kid
    }

    /// The key generation.
    #[must_use]
    pub fn generation(&self) -> u64 {
        split_kid(self.kid).0
    }

    pub(crate) fn same_key(&self, suite: CipherSuite, base_key: &[u8]) -> bool {
        self.suite == suite && bool::from(self.base_key.as_slice().ct_eq(base_key))
    }
}
