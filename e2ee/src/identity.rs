//! Long-term Ed25519 identity keys (one per device).

use core::cmp::Ordering;
use core::fmt;

use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_core::CryptoRng;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// A device's identity key pair. The secret never leaves the device (the browser keeps
/// [`IdentityKeyPair::secret_bytes`] in IndexedDB). Zeroized on drop; `Debug` shows only
/// the public key.
pub struct IdentityKeyPair {
    signing: SigningKey,
}

impl fmt::Debug for IdentityKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityKeyPair")
            .field("public", &self.public_key())
            .finish_non_exhaustive()
    }
}

impl IdentityKeyPair {
    /// A new random identity.
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut *seed);
        Self::from_secret_bytes(&seed)
    }

    /// Restore from the 32-byte secret seed.
    #[must_use]
    pub fn from_secret_bytes(secret: &[u8; 32]) -> Self {
        Self {
            signing: SigningKey::from_bytes(secret),
        }
    }

    /// The 32-byte secret seed, for the device's own key store only.
    #[must_use]
    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing.to_bytes())
    }

    /// The public half, which the server stores per account.
    #[must_use]
    pub fn public_key(&self) -> IdentityPublicKey {
        IdentityPublicKey(self.signing.verifying_key())
    }
}

/// An Ed25519 identity public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdentityPublicKey(VerifyingKey);

impl fmt::Debug for IdentityPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityPublicKey(")?;
        for b in self.0.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

impl PartialOrd for IdentityPublicKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for IdentityPublicKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.as_bytes().cmp(other.0.as_bytes())
    }
}

impl IdentityPublicKey {
    /// Parse 32 bytes. Rejects non-canonical points and weak (small-order) keys.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let arr: &[u8; 32] = bytes
            .try_into()
            .map_err(|_| Error::Malformed("identity key length"))?;
        let key = VerifyingKey::from_bytes(arr).map_err(|_| Error::BadSignature)?;
        if key.is_weak() {
            return Err(Error::BadSignature);
        }
        Ok(Self(key))
    }

    /// The 32-byte encoding.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }
}
