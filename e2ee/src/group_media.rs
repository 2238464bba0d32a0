//! Media frames under MLS epoch keys (RFC 9605 section 5.2): one `base_key` per MLS
//! epoch, exported by the group layer (`confide-mls`), and one KID per (sender leaf
//! index, epoch) so every member encrypts under its own `sframe_key`/`sframe_salt`.
//!
//! ```text
//!   KID = (context << (S + E)) + (sender_index << E) + (epoch % 2^E)
//!   E = EPOCH_BITS (4), S = INDEX_BITS (8), context = 0
//! ```
//!
//! E = 4 lets 16 epochs be told apart on the wire; receivers keep only
//! [`EPOCHS_KEPT`] of them, so an old epoch is always gone before its low bits come
//! back. S = 8 covers leaf indexes up to 255, far above the room limit of 8 people
//! (a leaf freed by a Remove is reused by the next Add).
//!
//! The frame layout, clear prefix and replay window are those of [`crate::FrameEncryptor`]:
//! only the key schedule differs. This module never sees MLS: it takes the exported
//! `base_key` bytes and the epoch number, so it stays free of I/O and builds for wasm.

use alloc::vec::Vec;
use core::fmt;

use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::media::{Codec, ReplayWindow, SealedFrame, prefix_to_seal, seal_into};
use crate::sframe::SframeKey;
use crate::suite::CipherSuite;

/// `E` of RFC 9605 section 5.2: low bits of the MLS epoch carried in the KID.
pub const EPOCH_BITS: u32 = 4;
/// `S` of RFC 9605 section 5.2: bits of the sender's MLS leaf index in the KID.
pub const INDEX_BITS: u32 = 8;
/// Largest leaf index a KID can carry.
pub const MAX_SENDER_INDEX: u32 = (1 << INDEX_BITS) - 1;
/// Epochs a receiver keeps at once: the current one and the one before it, for frames
/// still in flight when a commit lands.
pub const EPOCHS_KEPT: usize = 2;
/// The MLS exporter label for the SFrame base key (RFC 9605 section 5.2).
pub const MLS_EXPORTER_LABEL: &str = "SFrame 1.0 Base Key";

const EPOCH_MASK: u64 = (1 << EPOCH_BITS) - 1;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;

/// The KID of `sender_index` in `epoch` (context 0).
#[must_use]
pub const fn group_kid(epoch: u64, sender_index: u32) -> u64 {
    ((sender_index as u64 & INDEX_MASK) << EPOCH_BITS) | (epoch & EPOCH_MASK)
}

/// Split a KID into (sender leaf index, low epoch bits). The context bits must be 0.
pub fn split_group_kid(kid: u64) -> Result<(u32, u64)> {
    if kid >> (EPOCH_BITS + INDEX_BITS) != 0 {
        return Err(Error::Malformed("KID has context bits"));
    }
    // The mask bounds the index to 8 bits.
    Ok((((kid >> EPOCH_BITS) & INDEX_MASK) as u32, kid & EPOCH_MASK))
}

/// The exported secret of one MLS epoch: `MLS-Exporter("SFrame 1.0 Base Key", "", Nk)`.
/// Zeroized on drop; `Debug` shows the epoch only.
pub struct EpochSecret {
    epoch: u64,
    base_key: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for EpochSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EpochSecret")
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl EpochSecret {
    /// Wrap exporter output for `epoch`. Refuses an empty key.
    pub fn new(epoch: u64, base_key: Vec<u8>) -> Result<Self> {
        if base_key.is_empty() {
            return Err(Error::InvalidArgument("empty epoch base key"));
        }
        Ok(Self {
            epoch,
            base_key: Zeroizing::new(base_key),
        })
    }

    /// The MLS epoch.
    #[must_use]
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    fn sframe_key(&self, suite: CipherSuite, sender_index: u32) -> Result<SframeKey> {
        SframeKey::derive(suite, group_kid(self.epoch, sender_index), &self.base_key)
    }

    fn same_key(&self, other: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        self.base_key.len() == other.len() && bool::from(self.base_key.ct_eq(other))
    }
}

/// Encrypts our frames under our KID of the current epoch. Switch epochs with
/// [`GroupFrameEncryptor::set_epoch`] right after our group merges a commit.
pub struct GroupFrameEncryptor {
    suite: CipherSuite,
    epoch: u64,
    sframe: SframeKey,
    ctr: u64,
}

impl fmt::Debug for GroupFrameEncryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupFrameEncryptor")
            .field("suite", &self.suite)
            .field("kid", &self.sframe.kid())
            .field("ctr", &self.ctr)
            .finish()
    }
}

impl GroupFrameEncryptor {
    /// Encrypt as leaf `sender_index` under `secret`.
    pub fn new(suite: CipherSuite, secret: &EpochSecret, sender_index: u32) -> Result<Self> {
        if sender_index > MAX_SENDER_INDEX {
            return Err(Error::InvalidArgument("leaf index does not fit the KID"));
        }
        Ok(Self {
            suite,
            epoch: secret.epoch,
            sframe: secret.sframe_key(suite, sender_index)?,
            ctr: 0,
        })
    }

    /// Move to a new epoch (our leaf index may have changed with it). The counter
    /// restarts: the key is new, so (key, nonce) pairs never repeat.
    pub fn set_epoch(&mut self, secret: &EpochSecret, sender_index: u32) -> Result<()> {
        *self = Self::new(self.suite, secret, sender_index)?;
        Ok(())
    }

    /// The KID frames are sent under.
    #[must_use]
    pub fn kid(&self) -> u64 {
        self.sframe.kid()
    }

    /// The epoch frames are sent under.
    #[must_use]
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Encrypt `frame` into `out` (cleared first). Same layout and rules as
    /// [`crate::FrameEncryptor::encrypt`]: empty frames stay empty.
    pub fn encrypt(&mut self, codec: Codec, frame: &[u8], out: &mut Vec<u8>) -> Result<()> {
        out.clear();
        if frame.is_empty() {
            return Ok(());
        }
        let p = prefix_to_seal(codec, frame)?;
        let ctr = self.ctr;
        self.ctr = ctr.checked_add(1).ok_or(Error::CounterExhausted)?;
        seal_into(&self.sframe, self.sframe.kid(), ctr, frame, p, out)
    }
}

struct SenderKeyState {
    kid: u64,
    sframe: SframeKey,
    replay: ReplayWindow,
    used: bool,
}

struct EpochKeys {
    secret: EpochSecret,
    /// Keys derived on first use, one per sender seen in this epoch.
    senders: Vec<SenderKeyState>,
}

/// What a successful [`GroupFrameDecryptor::decrypt`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupFrameInfo {
    /// The sender's MLS leaf index (from the KID; authenticated by the AEAD, since only
    /// that sender's key opens it and the KID is in the AAD).
    pub sender_index: u32,
    /// The full MLS epoch of the key that opened the frame.
    pub epoch: u64,
    /// `true` on the first frame under this (sender, epoch) key: ask for a keyframe.
    pub first_frame_of_key: bool,
}

/// Decrypts every other member's frames: one keyring for the whole group, holding the
/// newest [`EPOCHS_KEPT`] epochs. A member removed by a commit never gets the new
/// epoch's secret, so its frames (and anything it could forge) stop opening as soon as
/// the previous epoch is retired.
pub struct GroupFrameDecryptor {
    suite: CipherSuite,
    epochs: Vec<EpochKeys>,
    /// Epochs below this are refused even if offered again.
    floor: u64,
}

impl fmt::Debug for GroupFrameDecryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let epochs: Vec<u64> = self.epochs.iter().map(|e| e.secret.epoch).collect();
        f.debug_struct("GroupFrameDecryptor")
            .field("suite", &self.suite)
            .field("epochs", &epochs)
            .field("floor", &self.floor)
            .finish()
    }
}

impl GroupFrameDecryptor {
    /// An empty keyring for `suite`.
    #[must_use]
    pub fn new(suite: CipherSuite) -> Self {
        Self {
            suite,
            epochs: Vec::with_capacity(EPOCHS_KEPT + 1),
            floor: 0,
        }
    }

    /// Install the secret of a new epoch. The oldest epoch beyond [`EPOCHS_KEPT`] is
    /// dropped and refused from then on. Installing the same epoch with the same key is
    /// a no-op; with a different key it replaces the old one (a new group after the
    /// doctor rejoined restarts epochs).
    pub fn install(&mut self, secret: EpochSecret) -> Result<()> {
        if secret.epoch < self.floor {
            return Err(Error::StaleKey {
                generation: secret.epoch,
            });
        }
        if let Some(i) = self
            .epochs
            .iter()
            .position(|e| e.secret.epoch == secret.epoch)
        {
            if self.epochs[i].secret.same_key(&secret.base_key) {
                return Ok(());
            }
            self.epochs.remove(i);
        }
        self.epochs.push(EpochKeys {
            secret,
            senders: Vec::new(),
        });
        self.epochs.sort_by_key(|e| e.secret.epoch);
        while self.epochs.len() > EPOCHS_KEPT {
            let old = self.epochs.remove(0);
            self.floor = self.floor.max(old.secret.epoch + 1);
        }
        Ok(())
    }

    /// Forget every epoch (a new group replaces the old one, with epochs from 0 again).
    pub fn reset(&mut self) {
        self.epochs.clear();
        self.floor = 0;
    }

    /// Drop epochs below `epoch` now (for example once every member has moved on).
    pub fn retire_epochs_before(&mut self, epoch: u64) {
        self.floor = self.floor.max(epoch);
        let floor = self.floor;
        self.epochs.retain(|e| e.secret.epoch >= floor);
    }

    /// Epochs currently held (public values, for diagnostics).
    pub fn epochs(&self) -> impl Iterator<Item = u64> + '_ {
        self.epochs.iter().map(|e| e.secret.epoch)
    }

    /// Decrypt `frame` into `out` (cleared first). Errors are peer errors: drop the frame
    /// and count it. Never panics.
    pub fn decrypt(
        &mut self,
        codec: Codec,
        frame: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Option<GroupFrameInfo>> {
        out.clear();
        if frame.is_empty() {
            return Ok(None);
        }
        out.extend_from_slice(frame);
        match self.decrypt_in_place(codec, out) {
            Ok(info) => Ok(Some(info)),
            Err(e) => {
                out.clear();
                Err(e)
            }
        }
    }

    fn decrypt_in_place(&mut self, codec: Codec, frame: &mut Vec<u8>) -> Result<GroupFrameInfo> {
        let sealed = SealedFrame::parse(codec, frame)?;
        let header = sealed.header;
        let (sender_index, low) = split_group_kid(header.kid)?;
        let suite = self.suite;
        let epoch_keys = self
            .epochs
            .iter_mut()
            .rev()
            .find(|e| e.secret.epoch & EPOCH_MASK == low)
            .ok_or(Error::UnknownKey { kid: header.kid })?;
        let epoch = epoch_keys.secret.epoch;
        let slot = match epoch_keys.senders.iter().position(|s| s.kid == header.kid) {
            Some(i) => i,
            None => {
                // Derived on first use; bounded by the 256 possible indexes per epoch.
                let sframe = epoch_keys.secret.sframe_key(suite, sender_index)?;
                epoch_keys.senders.push(SenderKeyState {
                    kid: header.kid,
                    sframe,
                    replay: ReplayWindow::default(),
                    used: false,
                });
                epoch_keys.senders.len() - 1
            }
        };
        let state = &mut epoch_keys.senders[slot];
        let ct_end = sealed.open_in_place(&state.sframe, &state.replay, frame)?;
        state.replay.accept(header.ctr);
        let first_frame_of_key = !state.used;
        state.used = true;
        sealed.strip(frame, ct_end);
        Ok(GroupFrameInfo {
            sender_index,
            epoch,
            first_frame_of_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::{MAX_HEADER_LEN, SframeHeader};
    use alloc::vec;

    fn secret(epoch: u64, byte: u8) -> EpochSecret {
        EpochSecret::new(epoch, vec![byte; 32]).unwrap()
    }

    const SUITE: CipherSuite = CipherSuite::ChaCha20Poly1305Sha256_128;

    #[test]
    fn kid_layout_matches_rfc_9605_figure() {
        // The RFC's example uses E=4: epoch 14, index 3 -> 0x3e; epoch 16, index 2 -> 0x20.
        assert_eq!(group_kid(14, 3), 0x3e);
        assert_eq!(group_kid(15, 5), 0x5f);
        assert_eq!(group_kid(17, 33), 0x211);
        assert_eq!(split_group_kid(0x211).unwrap(), (33, 1));
        assert!(split_group_kid(1 << 12).is_err());
    }

    #[test]
    fn members_open_each_other_and_epochs_roll() {
        let mut alice = GroupFrameEncryptor::new(SUITE, &secret(1, 7), 0).unwrap();
        let mut bob_rx = GroupFrameDecryptor::new(SUITE);
        bob_rx.install(secret(1, 7)).unwrap();
        let frame = [0x10u8, 2, 0, 0x9d, 1, 0x2a, 0x80, 2, 0xe0, 1, 9, 9, 9];
        let (mut wire, mut plain) = (Vec::new(), Vec::new());
        alice.encrypt(Codec::Vp8, &frame, &mut wire).unwrap();
        let info = bob_rx
            .decrypt(Codec::Vp8, &wire, &mut plain)
            .unwrap()
            .unwrap();
        assert_eq!(
            (plain.as_slice(), info.sender_index, info.epoch),
            (&frame[..], 0, 1)
        );
        assert!(info.first_frame_of_key);
        assert!(matches!(
            bob_rx.decrypt(Codec::Vp8, &wire, &mut plain),
            Err(Error::Replay { .. })
        ));

        // Epoch 2 arrives; a frame of epoch 1 still in flight opens.
        let mut late = Vec::new();
        alice
            .encrypt(Codec::Opus, &[0xfc, 1, 2, 3], &mut late)
            .unwrap();
        bob_rx.install(secret(2, 8)).unwrap();
        alice.set_epoch(&secret(2, 8), 0).unwrap();
        alice.encrypt(Codec::Opus, &[0xfc, 4], &mut wire).unwrap();
        assert_eq!(
            bob_rx
                .decrypt(Codec::Opus, &wire, &mut plain)
                .unwrap()
                .unwrap()
                .epoch,
            2
        );
        assert_eq!(
            bob_rx
                .decrypt(Codec::Opus, &late, &mut plain)
                .unwrap()
                .unwrap()
                .epoch,
            1
        );

        // Epoch 3 pushes epoch 1 out for good.
        let mut older = Vec::new();
        let mut e1 = GroupFrameEncryptor::new(SUITE, &secret(1, 7), 0).unwrap();
        e1.encrypt(Codec::Opus, &[0xfc, 5, 5, 5, 5, 5], &mut older)
            .unwrap();
        bob_rx.install(secret(3, 9)).unwrap();
        assert!(bob_rx.decrypt(Codec::Opus, &older, &mut plain).is_err());
        assert!(matches!(
            bob_rx.install(secret(1, 7)),
            Err(Error::StaleKey { .. })
        ));
    }

    #[test]
    fn another_members_kid_does_not_open_with_a_forged_index() {
        // Carol (index 2) cannot pass her frame off as Alice's (index 0): the KID is in
        // the AAD and selects Alice's key.
        let mut carol = GroupFrameEncryptor::new(SUITE, &secret(4, 1), 2).unwrap();
        let mut rx = GroupFrameDecryptor::new(SUITE);
        rx.install(secret(4, 1)).unwrap();
        let mut wire = Vec::new();
        carol.encrypt(Codec::Other, b"hello", &mut wire).unwrap();
        let mut forged = wire.clone();
        // Header byte: KID 0x24 -> 0x04 (index 0). The SFrame header is 1 config byte
        // followed by the KID and CTR bytes for these small values.
        let (h, _) = SframeHeader::decode(&wire).unwrap();
        assert_eq!(h.kid, group_kid(4, 2));
        let mut hb = [0u8; MAX_HEADER_LEN];
        let n = SframeHeader::new(group_kid(4, 0), h.ctr).encode(&mut hb);
        let (_, old_len) = SframeHeader::decode(&wire).unwrap();
        forged.splice(..old_len, hb[..n].iter().copied());
        let mut plain = Vec::new();
        assert!(rx.decrypt(Codec::Other, &forged, &mut plain).is_err());
        assert_eq!(
            rx.decrypt(Codec::Other, &wire, &mut plain)
                .unwrap()
                .unwrap()
                .sender_index,
            2
        );
    }

    #[test]
    fn unknown_epoch_and_garbage_are_refused() {
        let mut rx = GroupFrameDecryptor::new(SUITE);
        let mut out = Vec::new();
        let mut tx = GroupFrameEncryptor::new(SUITE, &secret(5, 3), 1).unwrap();
        let mut wire = Vec::new();
        tx.encrypt(Codec::Other, b"x", &mut wire).unwrap();
        assert!(matches!(
            rx.decrypt(Codec::Other, &wire, &mut out),
            Err(Error::UnknownKey { .. })
        ));
        rx.install(secret(5, 4)).unwrap();
        assert_eq!(
            rx.decrypt(Codec::Other, &wire, &mut out),
            Err(Error::Authentication)
        );
        for len in 0..40 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37) as u8).collect();
            let _ = rx.decrypt(Codec::Vp8, &junk, &mut out);
        }
    }
}
