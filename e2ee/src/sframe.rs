//! The RFC 9605 layer: key schedule (`sframe_key`, `sframe_salt`), nonce formation,
//! encrypt/decrypt of one SFrame ciphertext with the header (and metadata) as AAD, and
//! the sender-key ratchet.
//!
//! This is the interop layer checked against the RFC test vectors. Media code uses
//! [`crate::FrameEncryptor`] / [`crate::FrameDecryptor`], which add the codec clear
//! prefix, the keyring and the replay window on top.

use alloc::vec::Vec;
use core::fmt;

use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::header::{MAX_HEADER_LEN, SframeHeader};
use crate::suite::{CipherSuite, FrameAead, Kdf, MAX_TAG_LEN, NONCE_LEN};

const KEY_LABEL: &[u8] = b"SFrame 1.0 Secret key ";
const SALT_LABEL: &[u8] = b"SFrame 1.0 Secret salt ";
const RATCHET_LABEL: &[u8] = b"SFrame 1.0 Ratchet";

/// The output of the RFC 9605 key derivation for one KID, exposed for test vectors and
/// interop checks. `Debug` shows no key bytes.
pub struct DerivedKeySalt {
    /// `sframe_secret = HKDF-Extract("", base_key)`.
    pub sframe_secret: Zeroizing<Vec<u8>>,
    /// `sframe_key`, `AEAD.Nk` bytes.
    pub sframe_key: Zeroizing<Vec<u8>>,
    /// `sframe_salt`, `AEAD.Nn` bytes.
    pub sframe_salt: Zeroizing<[u8; NONCE_LEN]>,
}

impl fmt::Debug for DerivedKeySalt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DerivedKeySalt { .. }")
    }
}

/// `derive_key_salt(KID, base_key)` from RFC 9605 section 4.4.2.
#[must_use]
pub fn derive_key_salt(suite: CipherSuite, kid: u64, base_key: &[u8]) -> DerivedKeySalt {
    let (kdf, sframe_secret) = Kdf::extract(suite, &[], base_key);
    let kid_bytes = kid.to_be_bytes();
    let suite_bytes = suite.id().to_be_bytes();
    let mut sframe_key = Zeroizing::new(alloc::vec![0u8; suite.key_len()]);
    kdf.expand(&[KEY_LABEL, &kid_bytes, &suite_bytes], &mut sframe_key);
    let mut sframe_salt = Zeroizing::new([0u8; NONCE_LEN]);
    kdf.expand(&[SALT_LABEL, &kid_bytes, &suite_bytes], &mut *sframe_salt);
    DerivedKeySalt {
        sframe_secret,
        sframe_key,
        sframe_salt,
    }
}

/// One ratchet step of the sender-key scheme (RFC 9605 section 5.1):
/// `HKDF-Expand(HKDF-Extract("", base_key), "SFrame 1.0 Ratchet", Nh)`.
#[must_use]
pub fn ratchet_base_key(suite: CipherSuite, base_key: &[u8]) -> Zeroizing<Vec<u8>> {
    let (kdf, _prk) = Kdf::extract(suite, &[], base_key);
    let mut next = Zeroizing::new(alloc::vec![0u8; suite.hash_len()]);
    kdf.expand(&[RATCHET_LABEL], &mut next);
    next
}

/// A keyed SFrame context for one KID: the AEAD with `sframe_key` and the salt.
pub struct SframeKey {
    suite: CipherSuite,
    kid: u64,
    aead: FrameAead,
    salt: Zeroizing<[u8; NONCE_LEN]>,
}

impl fmt::Debug for SframeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SframeKey")
            .field("suite", &self.suite)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SframeKey {
    /// Derive the key and salt for `kid` from `base_key`.
    pub fn derive(suite: CipherSuite, kid: u64, base_key: &[u8]) -> Result<Self> {
        if base_key.is_empty() {
            return Err(Error::InvalidArgument("empty base key"));
        }
        let d = derive_key_salt(suite, kid, base_key);
        Ok(Self {
            suite,
            kid,
            aead: FrameAead::new(suite, &d.sframe_key)?,
            salt: d.sframe_salt,
        })
    }

    /// The suite.
    #[must_use]
    pub fn suite(&self) -> CipherSuite {
        self.suite
    }

    /// The KID this key is bound to.
    #[must_use]
    pub fn kid(&self) -> u64 {
        self.kid
    }

    /// Tag length in bytes.
    #[must_use]
    pub fn tag_len(&self) -> usize {
        self.aead.tag_len()
    }

    /// `nonce = sframe_salt XOR encode_big_endian(CTR, Nn)`.
    pub(crate) fn nonce(&self, ctr: u64) -> [u8; NONCE_LEN] {
        let mut nonce = *self.salt;
        for (n, c) in nonce[NONCE_LEN - 8..].iter_mut().zip(ctr.to_be_bytes()) {
            *n ^= c;
        }
        nonce
    }

    /// Encrypt one plaintext with counter `ctr`, appending `header || ciphertext || tag`
    /// to `out`. `metadata` is authenticated after the header (`aad = header + metadata`).
    ///
    /// The caller guarantees that `ctr` is never reused under this key.
    pub fn encrypt(
        &self,
        ctr: u64,
        metadata: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let header = SframeHeader::new(self.kid, ctr);
        let mut hbuf = [0u8; MAX_HEADER_LEN];
        let hlen = header.encode(&mut hbuf);
        let mut aad = Vec::with_capacity(hlen + metadata.len());
        aad.extend_from_slice(&hbuf[..hlen]);
        aad.extend_from_slice(metadata);
        out.extend_from_slice(&hbuf[..hlen]);
        let start = out.len();
        out.extend_from_slice(plaintext);
        let mut tag = [0u8; MAX_TAG_LEN];
        self.aead
            .seal(&self.nonce(ctr), &aad, &mut out[start..], &mut tag)?;
        out.extend_from_slice(&tag[..self.tag_len()]);
        Ok(())
    }

    /// Decrypt one SFrame ciphertext (`header || ciphertext || tag`), appending the
    /// plaintext to `out`. Fails if the header names another KID.
    pub fn decrypt(
        &self,
        metadata: &[u8],
        sframe_ciphertext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<SframeHeader> {
        let (header, hlen) = SframeHeader::decode(sframe_ciphertext)?;
        if header.kid != self.kid {
            return Err(Error::UnknownKey { kid: header.kid });
        }
        let body = &sframe_ciphertext[hlen..];
        let ct_len = body
            .len()
            .checked_sub(self.tag_len())
            .ok_or(Error::Malformed("SFrame ciphertext shorter than its tag"))?;
        let mut aad = Vec::with_capacity(hlen + metadata.len());
        aad.extend_from_slice(&sframe_ciphertext[..hlen]);
        aad.extend_from_slice(metadata);
        let start = out.len();
        out.extend_from_slice(&body[..ct_len]);
        let res = self.aead.open(
            &self.nonce(header.ctr),
            &aad,
            &mut out[start..],
            &body[ct_len..],
        );
        if res.is_err() {
            out.truncate(start);
        }
        res.map(|()| header)
    }

    /// In-place primitive for the media layer: encrypt `buf` with `aad`, return the tag.
    pub(crate) fn seal_in_place(
        &self,
        ctr: u64,
        aad: &[u8],
        buf: &mut [u8],
        tag: &mut [u8; MAX_TAG_LEN],
    ) -> Result<()> {
        self.aead.seal(&self.nonce(ctr), aad, buf, tag)
    }

    /// In-place primitive for the media layer: verify and decrypt `buf`.
    pub(crate) fn open_in_place(
        &self,
        ctr: u64,
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8],
    ) -> Result<()> {
        self.aead.open(&self.nonce(ctr), aad, buf, tag)
    }
}
