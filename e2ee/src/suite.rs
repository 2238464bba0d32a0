//! Cipher suites: the RFC 9605 suites and our private ChaCha20-Poly1305 suite, plus the
//! AEAD and HKDF dispatch behind them.

use aes::Aes128;
use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes128Gcm, Aes256Gcm};
use chacha20poly1305::ChaCha20Poly1305;
use ctr::Ctr32BE;
use ctr::cipher::{KeyIvInit, StreamCipher};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::{Sha256, Sha512};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// AEAD nonce length (`AEAD.Nn`); 12 bytes for every suite we implement.
pub const NONCE_LEN: usize = 12;
/// Longest authentication tag of any suite (`AEAD.Nt`).
pub const MAX_TAG_LEN: usize = 16;

/// An SFrame cipher suite.
///
/// `ChaCha20Poly1305Sha256_128` is our default and uses the private-use id
/// [`CipherSuite::CONFIDE_CHACHA20_POLY1305_ID`] (0xF001); see `docs/security.md`.
/// Its constants follow the RFC pattern: HKDF-SHA256 (Nh 32), Nk 32, Nn 12, Nt 16.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CipherSuite {
    /// `AES_128_CTR_HMAC_SHA256_80` (0x0001).
    Aes128CtrHmacSha256_80,
    /// `AES_128_CTR_HMAC_SHA256_64` (0x0002).
    Aes128CtrHmacSha256_64,
    /// `AES_128_CTR_HMAC_SHA256_32` (0x0003).
    Aes128CtrHmacSha256_32,
    /// `AES_128_GCM_SHA256_128` (0x0004): the standard interop suite.
    Aes128GcmSha256_128,
    /// `AES_256_GCM_SHA512_128` (0x0005).
    Aes256GcmSha512_128,
    /// ChaCha20-Poly1305 with HKDF-SHA256 (private use 0xF001): our default, because
    /// it is fast in wasm where AES has no hardware support.
    #[default]
    ChaCha20Poly1305Sha256_128,
}

impl CipherSuite {
    /// The private-use suite id we assign to ChaCha20-Poly1305 (RFC 9605 reserves
    /// 0xF000-0xFFFF for private use).
    pub const CONFIDE_CHACHA20_POLY1305_ID: u16 = 0xF001;

    /// Every implemented suite, for tests and benches.
    pub const ALL: [CipherSuite; 6] = [
        Self::Aes128CtrHmacSha256_80,
        Self::Aes128CtrHmacSha256_64,
        Self::Aes128CtrHmacSha256_32,
        Self::Aes128GcmSha256_128,
        Self::Aes256GcmSha512_128,
        Self::ChaCha20Poly1305Sha256_128,
    ];

    /// The two-byte suite id used in key derivation labels and on the wire.
    #[must_use]
    pub const fn id(self) -> u16 {
        match self {
            Self::Aes128CtrHmacSha256_80 => 0x0001,
            Self::Aes128CtrHmacSha256_64 => 0x0002,
            Self::Aes128CtrHmacSha256_32 => 0x0003,
            Self::Aes128GcmSha256_128 => 0x0004,
            Self::Aes256GcmSha512_128 => 0x0005,
            Self::ChaCha20Poly1305Sha256_128 => Self::CONFIDE_CHACHA20_POLY1305_ID,
        }
    }

    /// The suite for a two-byte id.
    pub fn from_id(id: u16) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|s| s.id() == id)
            .ok_or(Error::UnsupportedSuite(id))
    }

    /// `AEAD.Nk`: key length in bytes (for CTR+HMAC suites: AES key + HMAC key).
    #[must_use]
    pub const fn key_len(self) -> usize {
        match self {
            Self::Aes128CtrHmacSha256_80
            | Self::Aes128CtrHmacSha256_64
            | Self::Aes128CtrHmacSha256_32 => 48,
            Self::Aes128GcmSha256_128 => 16,
            Self::Aes256GcmSha512_128 | Self::ChaCha20Poly1305Sha256_128 => 32,
        }
    }

    /// `AEAD.Nt`: tag length in bytes.
    #[must_use]
    pub const fn tag_len(self) -> usize {
        match self {
            Self::Aes128CtrHmacSha256_80 => 10,
            Self::Aes128CtrHmacSha256_64 => 8,
            Self::Aes128CtrHmacSha256_32 => 4,
            _ => 16,
        }
    }

    /// `Hash.Nh`: output length of the suite's hash, also the length of a ratcheted
    /// base key.
    #[must_use]
    pub const fn hash_len(self) -> usize {
        match self {
            Self::Aes256GcmSha512_128 => 64,
            _ => 32,
        }
    }
}

/// HKDF with the suite's hash function.
pub(crate) enum Kdf {
    Sha256(Hkdf<Sha256>),
    Sha512(Hkdf<Sha512>),
}

impl Kdf {
    /// `HKDF-Extract(salt, ikm)`; also returns the PRK so that tests can compare it to
    /// the RFC's intermediate values.
    pub(crate) fn extract(
        suite: CipherSuite,
        salt: &[u8],
        ikm: &[u8],
    ) -> (Self, Zeroizing<alloc::vec::Vec<u8>>) {
        match suite.hash_len() {
            64 => {
                let (prk, h) = Hkdf::<Sha512>::extract(Some(salt), ikm);
                (Self::Sha512(h), Zeroizing::new(prk.to_vec()))
            }
            _ => {
                let (prk, h) = Hkdf::<Sha256>::extract(Some(salt), ikm);
                (Self::Sha256(h), Zeroizing::new(prk.to_vec()))
            }
        }
    }

    /// `HKDF-Expand(prk, info_1 || info_2 || ..., out.len())`.
    pub(crate) fn expand(&self, info: &[&[u8]], out: &mut [u8]) {
        // Lengths are compile-time constants far below 255 * Nh, so this cannot fail.
        let ok = match self {
            Self::Sha256(h) => h.expand_multi_info(info, out).is_ok(),
            Self::Sha512(h) => h.expand_multi_info(info, out).is_ok(),
        };
        debug_assert!(ok, "HKDF output length within limits");
    }
}

/// The AEAD of a suite, keyed. Key schedules are expanded once per key, not per frame.
pub(crate) enum FrameAead {
    CtrHmac {
        enc: Zeroizing<[u8; 16]>,
        auth: Zeroizing<[u8; 32]>,
        tag_len: usize,
    },
    Gcm128(Aes128Gcm),
    Gcm256(Aes256Gcm),
    ChaCha(ChaCha20Poly1305),
}

impl FrameAead {
    /// Key the AEAD. `key` must be `suite.key_len()` bytes (checked by the callers,
    /// which derive it themselves).
    pub(crate) fn new(suite: CipherSuite, key: &[u8]) -> Result<Self> {
        if key.len() != suite.key_len() {
            return Err(Error::InvalidArgument("AEAD key length"));
        }
        let bad = |_| Error::InvalidArgument("AEAD key length");
        Ok(match suite {
            CipherSuite::Aes128CtrHmacSha256_80
            | CipherSuite::Aes128CtrHmacSha256_64
            | CipherSuite::Aes128CtrHmacSha256_32 => {
                let mut enc = Zeroizing::new([0u8; 16]);
                let mut auth = Zeroizing::new([0u8; 32]);
                enc.copy_from_slice(&key[..16]);
                auth.copy_from_slice(&key[16..]);
                Self::CtrHmac {
                    enc,
                    auth,
                    tag_len: suite.tag_len(),
                }
            }
            CipherSuite::Aes128GcmSha256_128 => {
                Self::Gcm128(Aes128Gcm::new_from_slice(key).map_err(bad)?)
            }
            CipherSuite::Aes256GcmSha512_128 => {
                Self::Gcm256(Aes256Gcm::new_from_slice(key).map_err(bad)?)
            }
            CipherSuite::ChaCha20Poly1305Sha256_128 => {
                Self::ChaCha(ChaCha20Poly1305::new_from_slice(key).map_err(bad)?)
            }
        })
    }

    pub(crate) fn tag_len(&self) -> usize {
        match self {
            Self::CtrHmac { tag_len, .. } => *tag_len,
            _ => 16,
        }
    }

    /// Encrypt `buf` in place; writes the tag to `tag[..self.tag_len()]`.
    pub(crate) fn seal(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &mut [u8; MAX_TAG_LEN],
    ) -> Result<()> {
        let n = (*nonce).into();
        let t = match self {
            Self::CtrHmac { enc, auth, tag_len } => {
                ctr_apply(enc, nonce, buf);
                let full = ctr_hmac_tag(auth, *tag_len, nonce, aad, buf);
                tag[..*tag_len].copy_from_slice(&full[..*tag_len]);
                return Ok(());
            }
            Self::Gcm128(c) => c.encrypt_inout_detached(&n, aad, buf.into()),
            Self::Gcm256(c) => c.encrypt_inout_detached(&n, aad, buf.into()),
            Self::ChaCha(c) => {
                return c
                    .encrypt_inout_detached(&n, aad, buf.into())
                    .map(|t| tag.copy_from_slice(&t))
                    .map_err(|_| Error::InvalidArgument("frame too long for the AEAD"));
            }
        };
        let t = t.map_err(|_| Error::InvalidArgument("frame too long for the AEAD"))?;
        tag.copy_from_slice(&t);
        Ok(())
    }

    /// Verify `tag` and decrypt `buf` in place. On failure `buf` is left unspecified
    /// (the caller discards it).
    pub(crate) fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8],
    ) -> Result<()> {
        if tag.len() != self.tag_len() {
            return Err(Error::Malformed("tag length"));
        }
        let n = (*nonce).into();
        let ok = match self {
            Self::CtrHmac { enc, auth, tag_len } => {
                let full = ctr_hmac_tag(auth, *tag_len, nonce, aad, buf);
                if !bool::from(full[..*tag_len].ct_eq(tag)) {
                    return Err(Error::Authentication);
                }
                ctr_apply(enc, nonce, buf);
                true
            }
            Self::Gcm128(c) => c
                .decrypt_inout_detached(
                    &n,
                    aad,
                    buf.into(),
                    tag.try_into().map_err(|_| Error::Authentication)?,
                )
                .is_ok(),
            Self::Gcm256(c) => c
                .decrypt_inout_detached(
                    &n,
                    aad,
                    buf.into(),
                    tag.try_into().map_err(|_| Error::Authentication)?,
                )
                .is_ok(),
            Self::ChaCha(c) => c
                .decrypt_inout_detached(
                    &n,
                    aad,
                    buf.into(),
                    tag.try_into().map_err(|_| Error::Authentication)?,
                )
                .is_ok(),
        };
        if ok {
            Ok(())
        } else {
            Err(Error::Authentication)
        }
    }
}

fn ctr_apply(enc: &[u8; 16], nonce: &[u8; NONCE_LEN], buf: &mut [u8]) {
    // RFC 9605 4.5.1: initial_counter = nonce + four zero bytes.
    let mut iv = [0u8; 16];
    iv[..NONCE_LEN].copy_from_slice(nonce);
    let mut cipher = Ctr32BE::<Aes128>::new(&(*enc).into(), &iv.into());
    cipher.apply_keystream(buf);
}

fn ctr_hmac_tag(
    auth: &[u8; 32],
    tag_len: usize,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    ct: &[u8],
) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(auth)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(&(aad.len() as u64).to_be_bytes());
    mac.update(&(ct.len() as u64).to_be_bytes());
    mac.update(&(tag_len as u64).to_be_bytes());
    mac.update(nonce);
    mac.update(aad);
    mac.update(ct);
    mac.finalize().into_bytes().into()
}
