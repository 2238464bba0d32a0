//! Sealing of chat messages and documents: ChaCha20-Poly1305 under keys with their own
//! HKDF labels, random nonces, and length padding.

use alloc::vec::Vec;
use core::fmt;

use chacha20poly1305::ChaCha20Poly1305;
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use hkdf::Hkdf;
use rand_core::CryptoRng;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::suite::CipherSuite;

const VERSION: u8 = 1;
const HEADER_LEN: usize = 1 + 1 + 8 + 12;
const TAG_LEN: usize = 16;
const LEN_FIELD: usize = 4;
/// Largest plaintext [`MessageKey::seal`] accepts (documents included).
pub const MAX_MESSAGE_LEN: usize = 64 << 20;

/// What a sealed message is. Each kind has its own key (own HKDF label), so a chat
/// message can never be opened as a document or the other way round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MessageKind {
    /// A chat message.
    Chat,
    /// A document, file or prescription.
    Document,
}

impl MessageKind {
    fn code(self) -> u8 {
        match self {
            Self::Chat => 1,
            Self::Document => 2,
        }
    }

    fn from_code(b: u8) -> Result<Self> {
        match b {
            1 => Ok(Self::Chat),
            2 => Ok(Self::Document),
            _ => Err(Error::Malformed("unknown message kind")),
        }
    }

    fn label(self) -> &'static [u8] {
        match self {
            Self::Chat => b"confide-e2ee/v1 chat",
            Self::Document => b"confide-e2ee/v1 document",
        }
    }
}

/// Padded plaintext length for `n` bytes (length field included): at least 64 bytes,
/// then powers of two up to 4 KiB, then multiples of 1/16 of the size's power of two
/// (at most 6.25 % overhead). Short messages of similar length look the same.
#[must_use]
pub fn padded_len(n: usize) -> usize {
    if n <= 64 {
        64
    } else if n <= 4096 {
        n.next_power_of_two()
    } else {
        let exp = usize::BITS - 1 - n.leading_zeros();
        let step = 1usize << (exp - 4);
        n.div_ceil(step) * step
    }
}

/// A key for sealing messages. Obtained from [`crate::SenderKey::message_key`] /
/// [`crate::ReceivedSenderKey::message_key`] (group chat: everyone holding the sender's
/// key can read) or [`crate::PairwiseKeys::message_key`] (one peer only, e.g. a
/// prescription). Zeroized on drop; `Debug` shows only the key id.
pub struct MessageKey {
    key_id: u64,
    chat: Zeroizing<[u8; 32]>,
    document: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for MessageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// An opened message. `Debug` does not show the plaintext.
pub struct OpenedMessage {
    /// Chat or document.
    pub kind: MessageKind,
    /// The plaintext, zeroized on drop.
    pub plaintext: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for OpenedMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenedMessage")
            .field("kind", &self.kind)
            .field("len", &self.plaintext.len())
            .finish()
    }
}

impl MessageKey {
    fn from_prk(key_id: u64, kdf: &Hkdf<Sha256>, context: &[&[u8]]) -> Self {
        let mut chat = Zeroizing::new([0u8; 32]);
        let mut document = Zeroizing::new([0u8; 32]);
        let id = key_id.to_be_bytes();
        for (kind, out) in [
            (MessageKind::Chat, &mut *chat),
            (MessageKind::Document, &mut *document),
        ] {
            let mut info: Vec<&[u8]> = Vec::with_capacity(context.len() + 2);
            info.push(kind.label());
            info.extend_from_slice(context);
            info.push(&id);
            let ok = kdf.expand_multi_info(&info, out).is_ok();
            debug_assert!(ok, "32-byte HKDF output");
        }
        Self {
            key_id,
            chat,
            document,
        }
    }

    pub(crate) fn from_sender_base(suite: CipherSuite, kid: u64, base_key: &[u8]) -> Self {
        let kdf = Hkdf::<Sha256>::new(Some(b"confide-e2ee/v1 sender message key"), base_key);
        Self::from_prk(kid, &kdf, &[&suite.id().to_be_bytes()])
    }

    pub(crate) fn from_pairwise(kdf: &Hkdf<Sha256>) -> Self {
        Self::from_prk(0, kdf, &[b"pairwise"])
    }

    /// Public hint carried in sealed messages: the sender key's KID for group keys, 0 for
    /// pairwise keys.
    #[must_use]
    pub fn key_id(&self) -> u64 {
        self.key_id
    }

    fn cipher(&self, kind: MessageKind) -> ChaCha20Poly1305 {
        let key: &[u8; 32] = match kind {
            MessageKind::Chat => &self.chat,
            MessageKind::Document => &self.document,
        };
        ChaCha20Poly1305::new(&(*key).into())
    }

    /// Seal `plaintext`. Output: `version(1) || kind(1) || key_id(8) || nonce(12) ||
    /// ciphertext || tag(16)`, where the plaintext is `len(4) || data || zeros` padded
    /// by [`padded_len`]. The first 22 bytes are the AAD.
    pub fn seal<R: CryptoRng + ?Sized>(
        &self,
        kind: MessageKind,
        plaintext: &[u8],
        rng: &mut R,
    ) -> Result<Vec<u8>> {
        if plaintext.len() > MAX_MESSAGE_LEN {
            return Err(Error::InvalidArgument("message too long"));
        }
        let padded = padded_len(plaintext.len() + LEN_FIELD);
        let mut out = Vec::with_capacity(HEADER_LEN + padded + TAG_LEN);
        out.push(VERSION);
        out.push(kind.code());
        out.extend_from_slice(&self.key_id.to_be_bytes());
        let mut nonce = [0u8; 12];
        rng.fill_bytes(&mut nonce);
        out.extend_from_slice(&nonce);
        // MAX_MESSAGE_LEN fits in u32.
        out.extend_from_slice(&(plaintext.len() as u32).to_be_bytes());
        out.extend_from_slice(plaintext);
        out.resize(HEADER_LEN + padded, 0);
        let (aad, body) = out.split_at_mut(HEADER_LEN);
        let tag = self
            .cipher(kind)
            .encrypt_inout_detached(&nonce.into(), aad, body.into())
            .map_err(|_| Error::InvalidArgument("message too long"))?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Read the (public) key id of a sealed message without opening it.
    pub fn peek_key_id(sealed: &[u8]) -> Result<u64> {
        let id: [u8; 8] = sealed
            .get(2..10)
            .and_then(|b| b.try_into().ok())
            .ok_or(Error::Malformed("sealed message too short"))?;
        Ok(u64::from_be_bytes(id))
    }

    /// Open a sealed message. Never panics on any input.
    pub fn open(&self, sealed: &[u8]) -> Result<OpenedMessage> {
        if sealed.len() < HEADER_LEN + LEN_FIELD + TAG_LEN {
            return Err(Error::Malformed("sealed message too short"));
        }
        if sealed[0] != VERSION {
            return Err(Error::Malformed("unknown sealed message version"));
        }
        let kind = MessageKind::from_code(sealed[1])?;
        let mut id = [0u8; 8];
        id.copy_from_slice(&sealed[2..10]);
        let key_id = u64::from_be_bytes(id);
        if key_id != self.key_id {
            return Err(Error::UnknownKey { kid: key_id });
        }
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&sealed[10..HEADER_LEN]);
        let (aad, rest) = sealed.split_at(HEADER_LEN);
        let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
        let mut buf = Zeroizing::new(ct.to_vec());
        let tag = tag.try_into().map_err(|_| Error::Authentication)?;
        self.cipher(kind)
            .decrypt_inout_detached(&nonce.into(), aad, buf.as_mut_slice().into(), tag)
            .map_err(|_| Error::Authentication)?;
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len > buf.len() - LEN_FIELD {
            return Err(Error::Malformed("message length field"));
        }
        let plaintext = Zeroizing::new(buf[LEN_FIELD..LEN_FIELD + len].to_vec());
        Ok(OpenedMessage { kind, plaintext })
    }
}

#[cfg(test)]
mod tests {
    use super::padded_len;

    #[test]
    fn padding_buckets() {
        assert_eq!(padded_len(1), 64);
        assert_eq!(padded_len(64), 64);
        assert_eq!(padded_len(65), 128);
        assert_eq!(padded_len(4096), 4096);
        assert_eq!(padded_len(4097), 4352);
        for n in [1usize, 100, 5000, 1 << 20, (1 << 20) + 1, 64 << 20] {
            let p = padded_len(n);
            assert!(p >= n);
            assert!(n <= 64 || p - n <= n, "{n} -> {p}");
        }
    }
}
