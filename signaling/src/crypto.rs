//! Encryption at rest for what the server must hold in clear for its own work
//! (names, contact details, appointment reasons, TOTP secrets).
//!
//! Envelope encryption: each value is sealed with XChaCha20-Poly1305 under a data
//! key; data keys are stored in the database only wrapped by the master key; the
//! master key comes from a file or the environment and is never written to the
//! database. A sealed value is `0x01 | key id (u32 BE) | nonce (24) | ciphertext`,
//! and the version, key id and a per-column context string are the AAD, so a value
//! cannot be moved to another column undetected.

use std::collections::BTreeMap;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use rand::{CryptoRng, RngCore};
use zeroize::Zeroizing;

const VERSION: u8 = 1;
const HEADER: usize = 1 + 4 + 24;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("master key must be 32 bytes, hex or base64 encoded")]
    BadMasterKey,
    #[error("the master key does not open this data key")]
    Unwrap,
    #[error("sealed value is malformed")]
    Malformed,
    #[error("no data key with id {0}")]
    UnknownKey(u32),
    #[error("sealed value failed authentication")]
    Open,
}

pub struct MasterKey(Zeroizing<[u8; 32]>);

impl MasterKey {
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut k[..]);
        MasterKey(k)
    }

    /// Parse 64 hex digits or base64 of 32 bytes (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<Self, CryptoError> {
        let t = text.trim();
        let bytes = Zeroizing::new(
            hex::decode(t)
                .ok()
                .or_else(|| {
                    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, t).ok()
                })
                .ok_or(CryptoError::BadMasterKey)?,
        );
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::BadMasterKey)?;
        Ok(MasterKey(Zeroizing::new(arr)))
    }

    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(&self.0[..]))
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(Key::from_slice(&self.0[..]))
    }

    fn aad(id: u32) -> Vec<u8> {
        let mut a = b"confide data key v1".to_vec();
        a.extend_from_slice(&id.to_be_bytes());
        a
    }

    pub fn wrap(&self, key: &DataKey, rng: &mut (impl RngCore + CryptoRng)) -> Vec<u8> {
        let mut nonce = [0u8; 24];
        rng.fill_bytes(&mut nonce);
        let aad = Self::aad(key.id);
        let ct = self
            .cipher()
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &key.key[..],
                    aad: &aad,
                },
            )
            // XChaCha20-Poly1305 encryption of 32 bytes cannot fail.
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        out
    }

    pub fn unwrap_key(&self, id: u32, wrapped: &[u8]) -> Result<DataKey, CryptoError> {
        if wrapped.len() != 24 + 32 + 16 {
            return Err(CryptoError::Unwrap);
        }
        let aad = Self::aad(id);
        let pt = Zeroizing::new(
            self.cipher()
                .decrypt(
                    XNonce::from_slice(&wrapped[..24]),
                    Payload {
                        msg: &wrapped[24..],
                        aad: &aad,
                    },
                )
                .map_err(|_| CryptoError::Unwrap)?,
        );
        let arr: [u8; 32] = pt.as_slice().try_into().map_err(|_| CryptoError::Unwrap)?;
        Ok(DataKey {
            id,
            key: Zeroizing::new(arr),
        })
    }
}

pub struct DataKey {
    pub id: u32,
    key: Zeroizing<[u8; 32]>,
}

impl DataKey {
    pub fn generate(id: u32, rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut k[..]);
        DataKey { id, key: k }
    }
}

/// The unwrapped data keys; one is active for sealing, all can open.
pub struct Keyring {
    active: u32,
    keys: BTreeMap<u32, DataKey>,
}

impl Keyring {
    pub fn new(active: DataKey) -> Self {
        let id = active.id;
        let mut keys = BTreeMap::new();
        keys.insert(id, active);
        Keyring { active: id, keys }
    }

    /// Add an older key that can still open values.
    pub fn add(&mut self, key: DataKey) {
        self.keys.insert(key.id, key);
    }

    pub fn active_id(&self) -> u32 {
        self.active
    }

    fn aad(key_id: u32, context: &str) -> Vec<u8> {
        let mut a = vec![VERSION];
        a.extend_from_slice(&key_id.to_be_bytes());
        a.extend_from_slice(context.as_bytes());
        a
    }

    pub fn seal(
        &self,
        context: &str,
        plain: &[u8],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Vec<u8> {
        let Some(key) = self.keys.get(&self.active) else {
            return Vec::new();
        };
        let mut nonce = [0u8; 24];
        rng.fill_bytes(&mut nonce);
        let aad = Self::aad(key.id, context);
        let cipher = XChaCha20Poly1305::new(Key::from_slice(&key.key[..]));
        let ct = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: &aad,
                },
            )
            .unwrap_or_default();
        let mut out = Vec::with_capacity(HEADER + ct.len());
        out.push(VERSION);
        out.extend_from_slice(&key.id.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    pub fn key_id_of(sealed: &[u8]) -> Result<u32, CryptoError> {
        if sealed.len() < HEADER + 16 || sealed[0] != VERSION {
            return Err(CryptoError::Malformed);
        }
        let mut id = [0u8; 4];
        id.copy_from_slice(&sealed[1..5]);
        Ok(u32::from_be_bytes(id))
    }

    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let id = Self::key_id_of(sealed)?;
        let key = self.keys.get(&id).ok_or(CryptoError::UnknownKey(id))?;
        let aad = Self::aad(id, context);
        let cipher = XChaCha20Poly1305::new(Key::from_slice(&key.key[..]));
        cipher
            .decrypt(
                XNonce::from_slice(&sealed[5..HEADER]),
                Payload {
                    msg: &sealed[HEADER..],
                    aad: &aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::Open)
    }

    pub fn open_string(&self, context: &str, sealed: &[u8]) -> Result<String, CryptoError> {
        let b = self.open(context, sealed)?;
        String::from_utf8(b.to_vec()).map_err(|_| CryptoError::Malformed)
    }

    /// The blind-index MAC of `term` ([`crate::blind_index`]) under the active data
    /// key's index key: what is stored for a record, with the key id it was made
    /// under.
    pub fn blind_index(&self, term: &[u8]) -> (u32, [u8; 32]) {
        let key = self.keys.get(&self.active);
        (
            self.active,
            key.map(|k| index_mac(k, term)).unwrap_or([0; 32]),
        )
    }

    /// The blind-index MAC of `term` under every data key held: what a search looks
    /// up, so that records indexed under an older key are still found while a data key
    /// rotation is re-indexing them.
    pub fn blind_index_all(&self, term: &[u8]) -> Vec<(u32, [u8; 32])> {
        self.keys
            .values()
            .map(|k| (k.id, index_mac(k, term)))
            .collect()
    }
}

/// HMAC-SHA256 of `term` under the index key of data key `k`: HKDF-SHA256 of the data
/// key with its own label, so the index key is never the sealing key and is never
/// stored anywhere. A data key rotation therefore changes every MAC, and the rotation
/// rebuilds the index (`store::keys::rotate_data_key`).
fn index_mac(k: &DataKey, term: &[u8]) -> [u8; 32] {
    use hmac::{Hmac, Mac};
    let mut index_key = Zeroizing::new([0u8; 32]);
    hkdf::Hkdf::<sha2::Sha256>::new(None, &k.key[..])
        .expand(b"confide/v1 patient blind index", &mut index_key[..])
        // 32 bytes is far below HKDF-SHA256's 8160-byte limit.
        .expect("a 32-byte HKDF output");
    // HMAC takes keys of any length.
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&index_key[..])
        .expect("HMAC accepts any key length");
    mac.update(term);
    mac.finalize().into_bytes().into()
}

/// Column contexts, bound into each sealed value's AAD.
pub mod ctx {
    pub const DISPLAY_NAME: &str = "accounts.display_name";
    pub const CONTACT: &str = "accounts.contact";
    pub const TOTP_SECRET: &str = "accounts.totp_secret";
    pub const REASON: &str = "appointments.reason";
    pub const INVITE_LABEL: &str = "invites.label";
    pub const DATE_OF_BIRTH: &str = "accounts.date_of_birth";
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;

    #[test]
    fn seal_open_and_context_binding() {
        let ring = Keyring::new(DataKey::generate(1, &mut OsRng));
        let s = ring.seal(ctx::REASON, b"chest pain", &mut OsRng);
        assert!(!s.windows(10).any(|w| w == b"chest pain"));
        assert_eq!(&ring.open(ctx::REASON, &s).unwrap()[..], b"chest pain");
        assert_eq!(ring.open(ctx::CONTACT, &s), Err(CryptoError::Open));
        let mut t = s.clone();
        let last = t.len() - 1;
        t[last] ^= 1;
        assert_eq!(ring.open(ctx::REASON, &t), Err(CryptoError::Open));
        assert_eq!(ring.open(ctx::REASON, &[1, 2]), Err(CryptoError::Malformed));
    }

    #[test]
    fn wrap_unwrap_and_wrong_master() {
        let m = MasterKey::generate(&mut OsRng);
        let dk = DataKey::generate(3, &mut OsRng);
        let w = m.wrap(&dk, &mut OsRng);
        let back = m.unwrap_key(3, &w).unwrap();
        let ring = Keyring::new(back);
        let sealed = Keyring::new(dk).seal("c", b"x", &mut OsRng);
        assert_eq!(&ring.open("c", &sealed).unwrap()[..], b"x");
        let other = MasterKey::generate(&mut OsRng);
        assert!(other.unwrap_key(3, &w).is_err());
        assert!(m.unwrap_key(4, &w).is_err(), "id is bound");
        let hex = m.to_hex();
        assert!(MasterKey::parse(&hex).is_ok());
        assert!(MasterKey::parse("abcd").is_err());
    }

    #[test]
    fn blind_index_is_keyed_deterministic_and_per_key() {
        let one = DataKey::generate(1, &mut OsRng);
        let same = DataKey {
            id: 1,
            key: one.key.clone(),
        };
        let ring = Keyring::new(one);
        let (id, a) = ring.blind_index(b"name\0zoe");
        assert_eq!(id, 1);
        // Deterministic under one key (that is what makes it searchable) ...
        assert_eq!(Keyring::new(same).blind_index(b"name\0zoe").1, a);
        assert_ne!(ring.blind_index(b"name\0zoey").1, a);
        // ... but another key gives another MAC, and neither is the plain hash.
        let mut rotated = Keyring::new(DataKey::generate(2, &mut OsRng));
        let (id2, b) = rotated.blind_index(b"name\0zoe");
        assert_eq!(id2, 2);
        assert_ne!(a, b);
        use sha2::Digest;
        let plain: [u8; 32] = sha2::Sha256::digest(b"name\0zoe").into();
        assert_ne!(a, plain);
        // A keyring mid-rotation looks up under both keys.
        rotated.add(DataKey::generate(1, &mut OsRng));
        assert_eq!(rotated.blind_index_all(b"name\0zoe").len(), 2);
    }

    #[test]
    fn rotation_keeps_old_values_readable() {
        let old = DataKey::generate(1, &mut OsRng);
        let sealed_old = Keyring::new(DataKey {
            id: 1,
            key: old.key.clone(),
        })
        .seal("c", b"v", &mut OsRng);
        let mut ring = Keyring::new(DataKey::generate(2, &mut OsRng));
        ring.add(old);
        assert_eq!(ring.active_id(), 2);
        assert_eq!(&ring.open("c", &sealed_old).unwrap()[..], b"v");
        let fresh = ring.seal("c", b"v", &mut OsRng);
        assert_eq!(Keyring::key_id_of(&fresh), Ok(2));
    }
}
