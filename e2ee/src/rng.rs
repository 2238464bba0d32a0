//! A CSPRNG seeded by the caller, for hosts that hand randomness over as bytes.

use core::convert::Infallible;
use core::fmt;

use chacha20::ChaCha20Rng;
use rand_core::{Rng, SeedableRng, TryCryptoRng, TryRng};

/// ChaCha20 keystream generator seeded with 32 caller-supplied random bytes.
///
/// For hosts where this crate cannot reach the OS RNG itself: the wasm build takes
/// 32 bytes from `crypto.getRandomValues` per call. The seed must come from a
/// cryptographically secure source and must be used for one generator only. Zeroized on
/// drop; `Debug` shows nothing.
pub struct SeededRng(ChaCha20Rng);

impl fmt::Debug for SeededRng {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SeededRng { .. }")
    }
}

impl SeededRng {
    /// A generator from a 32-byte secret seed.
    #[must_use]
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(ChaCha20Rng::from_seed(seed))
    }
}

impl TryRng for SeededRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok(self.0.next_u32())
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(self.0.next_u64())
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.0.fill_bytes(dst);
        Ok(())
    }
}

impl TryCryptoRng for SeededRng {}
