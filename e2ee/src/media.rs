//! Media framing on top of SFrame: a codec-aware clear prefix, the sending
//! [`FrameEncryptor`] and the receiving [`FrameDecryptor`] (keyring + replay window).
//!
//! Wire layout of one encrypted frame:
//!
//! ```text
//! +----------------------+---------------+-------------------+------+
//! | clear prefix (0-10)  | SFrame header | ciphertext        | tag  |
//! +----------------------+---------------+-------------------+------+
//!   read by SFU/browser     KID, CTR        encrypted payload
//!   AAD = SFrame header || clear prefix   (RFC 9605 "header + metadata")
//! ```
//!
//! The prefix stays first so that the SFU and the browser's packetizer still see a valid
//! VP8 payload descriptor / Opus TOC byte. Both sides compute the prefix length from the
//! same bytes (the prefix is unchanged by encryption), so the receiver needs only the
//! codec of the track.

use alloc::vec::Vec;
use core::fmt;

use rand_core::CryptoRng;

use crate::error::{Error, Result};
use crate::header::{MAX_HEADER_LEN, SframeHeader};
use crate::sender_key::{RATCHET_BITS, ReceivedSenderKey, SenderKey, split_kid};
use crate::sframe::{SframeKey, ratchet_base_key};
use crate::suite::MAX_TAG_LEN;

/// Longest clear prefix of any codec (VP8 keyframe).
pub const MAX_CLEAR_PREFIX: usize = 10;
/// How many keys (generations and ratchet steps) a [`FrameDecryptor`] keeps.
pub const KEYRING_CAPACITY: usize = 4;
/// How many ratchet steps a receiver follows on its own from a known key.
pub const MAX_RATCHET_AHEAD: u64 = 16;
/// Width of the replay window in frames (CTR values), per key.
pub const REPLAY_WINDOW: u64 = 128;

pub(crate) const MAX_AAD: usize = MAX_HEADER_LEN + MAX_CLEAR_PREFIX;

/// The media codec of a track: decides the clear prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Codec {
    /// VP8: 10 clear bytes on keyframes, 3 on delta frames. The keyframe bit is the P bit
    /// of the first byte (bit 0 == 0 means keyframe, RFC 6386 section 9.1), so no flag
    /// has to be passed in and the receiver derives the same length.
    Vp8,
    /// Opus: 1 clear byte (the TOC byte).
    Opus,
    /// Anything else: everything encrypted.
    Other,
}

impl Codec {
    /// Number of clear bytes this codec keeps at the start of `frame` (plaintext or
    /// ciphertext: the prefix is the same in both). Does not clamp to `frame.len()`.
    #[must_use]
    pub fn clear_prefix_len(self, frame: &[u8]) -> usize {
        match (self, frame.first()) {
            (_, None) | (Self::Other, _) => 0,
            (Self::Opus, Some(_)) => 1,
            (Self::Vp8, Some(b)) if b & 1 == 0 => 10,
            (Self::Vp8, Some(_)) => 3,
        }
    }

    /// Parse a codec name as used by WebRTC (`"VP8"`, `"video/VP8"`, `"opus"`,
    /// `"audio/opus"`); anything else is [`Codec::Other`].
    #[must_use]
    pub fn from_name(name: &str) -> Self {
        let base = name.rsplit('/').next().unwrap_or(name);
        if base.eq_ignore_ascii_case("vp8") {
            Self::Vp8
        } else if base.eq_ignore_ascii_case("opus") {
            Self::Opus
        } else {
            Self::Other
        }
    }
}

pub(crate) fn build_aad<'a>(buf: &'a mut [u8; MAX_AAD], header: &[u8], prefix: &[u8]) -> &'a [u8] {
    buf[..header.len()].copy_from_slice(header);
    buf[header.len()..header.len() + prefix.len()].copy_from_slice(prefix);
    &buf[..header.len() + prefix.len()]
}

/// The clear prefix length of a frame about to be sealed. A frame shorter than its
/// codec's prefix is the caller's mistake (not a valid frame of that codec).
pub(crate) fn prefix_to_seal(codec: Codec, frame: &[u8]) -> Result<usize> {
    let p = codec.clear_prefix_len(frame);
    if frame.len() < p {
        return Err(Error::InvalidArgument(
            "frame shorter than its codec's clear prefix",
        ));
    }
    Ok(p)
}

/// Seal `frame` (its first `p` bytes stay clear) under `sframe` as KID `kid`, counter
/// `ctr`, appending clear prefix || SFrame header || ciphertext || tag to `out`.
pub(crate) fn seal_into(
    sframe: &SframeKey,
    kid: u64,
    ctr: u64,
    frame: &[u8],
    p: usize,
    out: &mut Vec<u8>,
) -> Result<()> {
    let mut hbuf = [0u8; MAX_HEADER_LEN];
    let hlen = SframeHeader::new(kid, ctr).encode(&mut hbuf);
    let mut abuf = [0u8; MAX_AAD];
    let aad = build_aad(&mut abuf, &hbuf[..hlen], &frame[..p]);
    let tag_len = sframe.tag_len();
    out.reserve(frame.len() + hlen + tag_len);
    out.extend_from_slice(&frame[..p]);
    out.extend_from_slice(&hbuf[..hlen]);
    let start = out.len();
    out.extend_from_slice(&frame[p..]);
    let mut tag = [0u8; MAX_TAG_LEN];
    sframe.seal_in_place(ctr, aad, &mut out[start..], &mut tag)?;
    out.extend_from_slice(&tag[..tag_len]);
    Ok(())
}

/// A received frame's layout: clear prefix `..p`, then the SFrame header (`hlen` bytes),
/// ciphertext and tag. Frames come from the network, so every error is a peer error.
pub(crate) struct SealedFrame {
    pub(crate) header: SframeHeader,
    p: usize,
    hlen: usize,
}

impl SealedFrame {
    pub(crate) fn parse(codec: Codec, frame: &[u8]) -> Result<Self> {
        let p = codec.clear_prefix_len(frame);
        if frame.len() < p {
            return Err(Error::Malformed(
                "frame shorter than its codec's clear prefix",
            ));
        }
        let (header, hlen) = SframeHeader::decode(&frame[p..])?;
        Ok(Self { header, p, hlen })
    }

    /// Open the ciphertext in place under `sframe`, refusing a counter `replay` has seen.
    /// The caller accepts the counter in its window once it commits its own state.
    /// Returns where the ciphertext ends (the tag starts), for [`Self::strip`].
    pub(crate) fn open_in_place(
        &self,
        sframe: &SframeKey,
        replay: &ReplayWindow,
        frame: &mut [u8],
    ) -> Result<usize> {
        let tag_len = sframe.tag_len();
        let body_start = self.p + self.hlen;
        let ct_end = frame
            .len()
            .checked_sub(tag_len)
            .filter(|&end| end >= body_start)
            .ok_or(Error::Malformed("frame shorter than its tag"))?;
        if !replay.check(self.header.ctr) {
            return Err(Error::Replay {
                kid: self.header.kid,
                ctr: self.header.ctr,
            });
        }
        let mut abuf = [0u8; MAX_AAD];
        let aad = build_aad(&mut abuf, &frame[self.p..body_start], &frame[..self.p]);
        let mut tag = [0u8; MAX_TAG_LEN];
        tag[..tag_len].copy_from_slice(&frame[ct_end..]);
        sframe.open_in_place(
            self.header.ctr,
            aad,
            &mut frame[body_start..ct_end],
            &tag[..tag_len],
        )?;
        Ok(ct_end)
    }

    /// Cut the header and tag out of an opened frame: clear prefix || plaintext remain.
    pub(crate) fn strip(&self, frame: &mut Vec<u8>, ct_end: usize) {
        frame.truncate(ct_end);
        frame.drain(self.p..self.p + self.hlen);
    }
}

/// Encrypts our outgoing frames. Owns our [`SenderKey`] and its frame counter, so a key
/// can never be used by two counters.
pub struct FrameEncryptor {
    key: SenderKey,
    sframe: SframeKey,
    ctr: u64,
}

impl fmt::Debug for FrameEncryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameEncryptor")
            .field("key", &self.key)
            .field("ctr", &self.ctr)
            .finish()
    }
}

impl FrameEncryptor {
    /// Start encrypting with `key`, counter 0.
    pub fn new(key: SenderKey) -> Result<Self> {
        let sframe = SframeKey::derive(key.suite(), key.kid(), key.base_key())?;
        Ok(Self {
            key,
            sframe,
            ctr: 0,
        })
    }

    /// The current sender key (receivers install its [`SenderKey::to_received`]).
    #[must_use]
    pub fn sender_key(&self) -> &SenderKey {
        &self.key
    }

    /// The KID frames are currently sent under.
    #[must_use]
    pub fn kid(&self) -> u64 {
        self.key.kid()
    }

    /// Ratchet the key forward (someone joined). Give the joiner [`Self::sender_key`]
    /// afterwards; existing receivers follow the ratchet by themselves.
    pub fn ratchet(&mut self) -> Result<()> {
        self.key.ratchet()?;
        self.sframe = SframeKey::derive(self.key.suite(), self.key.kid(), self.key.base_key())?;
        self.ctr = 0;
        Ok(())
    }

    /// Switch to a fresh random key of the next generation (someone left). Give
    /// [`Self::sender_key`] to every remaining peer afterwards.
    pub fn rotate<R: CryptoRng + ?Sized>(&mut self, rng: &mut R) -> Result<()> {
        let next = self.key.next_generation(rng)?;
        self.sframe = SframeKey::derive(next.suite(), next.kid(), next.base_key())?;
        self.key = next;
        self.ctr = 0;
        Ok(())
    }

    fn next_ctr(&mut self) -> Result<u64> {
        let ctr = self.ctr;
        self.ctr = ctr.checked_add(1).ok_or(Error::CounterExhausted)?;
        Ok(ctr)
    }

    /// Encrypt `frame` into `out` (cleared first; reuse it across frames to avoid
    /// allocation). An empty frame gives an empty output: browsers send empty Opus
    /// frames and expect them back unchanged.
    ///
    /// Errors only on API misuse: a VP8 frame shorter than its clear prefix (not a valid
    /// VP8 frame), or an exhausted counter.
    pub fn encrypt(&mut self, codec: Codec, frame: &[u8], out: &mut Vec<u8>) -> Result<()> {
        out.clear();
        if frame.is_empty() {
            return Ok(());
        }
        let p = prefix_to_seal(codec, frame)?;
        let ctr = self.next_ctr()?;
        seal_into(&self.sframe, self.key.kid(), ctr, frame, p, out)
    }

    /// Encrypt `frame` in place (same rules as [`Self::encrypt`]). Inserting the header
    /// moves the payload once; use [`Self::encrypt`] with a reused buffer on hot paths.
    pub fn encrypt_in_place(&mut self, codec: Codec, frame: &mut Vec<u8>) -> Result<()> {
        if frame.is_empty() {
            return Ok(());
        }
        let p = prefix_to_seal(codec, frame)?;
        let ctr = self.next_ctr()?;
        let mut hbuf = [0u8; MAX_HEADER_LEN];
        let hlen = SframeHeader::new(self.key.kid(), ctr).encode(&mut hbuf);
        let mut abuf = [0u8; MAX_AAD];
        let aad = build_aad(&mut abuf, &hbuf[..hlen], &frame[..p]);
        let mut tag = [0u8; MAX_TAG_LEN];
        self.sframe
            .seal_in_place(ctr, aad, &mut frame[p..], &mut tag)?;
        frame.splice(p..p, hbuf[..hlen].iter().copied());
        frame.extend_from_slice(&tag[..self.sframe.tag_len()]);
        Ok(())
    }
}

/// What a successful [`FrameDecryptor::decrypt`] saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FrameInfo {
    /// The SFrame header, or `None` for an empty frame passed through.
    pub header: Option<SframeHeader>,
    /// `true` on the first frame that authenticated under this KID: a new key is in
    /// use, so a video receiver should request a keyframe.
    pub first_frame_of_key: bool,
}

/// Sliding replay window over CTR values (RFC 3711 3.3.2 style).
#[derive(Clone, Copy, Default)]
pub(crate) struct ReplayWindow {
    seen_any: bool,
    top: u64,
    /// Bit i set: `top - i` was accepted.
    bits: u128,
}

impl ReplayWindow {
    pub(crate) fn check(&self, ctr: u64) -> bool {
        if !self.seen_any || ctr > self.top {
            return true;
        }
        let d = self.top - ctr;
        d < REPLAY_WINDOW && self.bits & (1u128 << d) == 0
    }

    pub(crate) fn accept(&mut self, ctr: u64) {
        if !self.seen_any {
            *self = Self {
                seen_any: true,
                top: ctr,
                bits: 1,
            };
        } else if ctr > self.top {
            let shift = ctr - self.top;
            self.bits = if shift >= REPLAY_WINDOW {
                0
            } else {
                self.bits << shift
            };
            self.bits |= 1;
            self.top = ctr;
        } else {
            self.bits |= 1u128 << (self.top - ctr);
        }
    }
}

struct KeyEntry {
    received: ReceivedSenderKey,
    sframe: SframeKey,
    replay: ReplayWindow,
    used: bool,
    /// Insertion order, for eviction.
    seq: u64,
}

impl KeyEntry {
    fn new(received: ReceivedSenderKey, seq: u64) -> Result<Self> {
        let sframe = SframeKey::derive(received.suite, received.kid, &received.base_key)?;
        Ok(Self {
            received,
            sframe,
            replay: ReplayWindow::default(),
            used: false,
            seq,
        })
    }

    fn generation(&self) -> u64 {
        split_kid(self.received.kid).0
    }
}

/// Decrypts one remote sender's frames. Keep one per remote participant per session.
///
/// Holds up to [`KEYRING_CAPACITY`] keys (generations and ratchet steps), follows the
/// sender's ratchet by itself (at most [`MAX_RATCHET_AHEAD`] steps, and only once a frame
/// authenticates under the new step), and rejects replays per key.
///
/// Once a frame authenticates under generation `g`, all keys of older generations are
/// dropped and can never be installed again ([`Error::StaleKey`]): after a sender rotates
/// because someone left, frames made with the old key are rejected even if the one who
/// left still has it.
pub struct FrameDecryptor {
    entries: Vec<KeyEntry>,
    /// Generations below this are retired.
    floor: u64,
    seq: u64,
}

impl fmt::Debug for FrameDecryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kids: Vec<u64> = self.entries.iter().map(|e| e.received.kid).collect();
        f.debug_struct("FrameDecryptor")
            .field("kids", &kids)
            .field("retired_below_generation", &self.floor)
            .finish()
    }
}

impl Default for FrameDecryptor {
    fn default() -> Self {
        Self::new()
    }
}

enum Slot {
    Existing(usize),
    // Boxed: a keyed AEAD is large and the ratchet path is rare.
    Ratcheted(alloc::boxed::Box<KeyEntry>),
}

impl FrameDecryptor {
    /// An empty keyring.
    #[must_use]
    pub fn new() -> Self {
        Self {
            entries: Vec::with_capacity(KEYRING_CAPACITY + 1),
            floor: 0,
            seq: 0,
        }
    }

    /// Install a key received from the sender. Installing the same key again is a no-op
    /// (it must not reset the replay window). A key of a retired generation is refused.
    pub fn install(&mut self, key: ReceivedSenderKey) -> Result<()> {
        let generation = key.generation();
        if generation < self.floor {
            return Err(Error::StaleKey { generation });
        }
        if let Some(i) = self.entries.iter().position(|e| e.received.kid == key.kid) {
            if self.entries[i].received.same_key(key.suite, &key.base_key) {
                return Ok(());
            }
            self.entries.remove(i);
        }
        let entry = KeyEntry::new(key, self.next_seq())?;
        self.insert(entry);
        Ok(())
    }

    /// Drop every key of a generation below `generation` and refuse them from now on.
    pub fn retire_generations_before(&mut self, generation: u64) {
        self.floor = self.floor.max(generation);
        let floor = self.floor;
        self.entries.retain(|e| e.generation() >= floor);
    }

    /// KIDs currently installed (public values, for diagnostics).
    pub fn kids(&self) -> impl Iterator<Item = u64> + '_ {
        self.entries.iter().map(|e| e.received.kid)
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn insert(&mut self, entry: KeyEntry) {
        if self.entries.len() >= KEYRING_CAPACITY
            && let Some(oldest) = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.seq)
                .map(|(i, _)| i)
        {
            self.entries.remove(oldest);
        }
        self.entries.push(entry);
    }

    fn find(&mut self, kid: u64) -> Result<Slot> {
        if let Some(i) = self.entries.iter().position(|e| e.received.kid == kid) {
            return Ok(Slot::Existing(i));
        }
        let (generation, target) = split_kid(kid);
        if generation < self.floor {
            return Err(Error::StaleKey { generation });
        }
        let modulus = 1u64 << RATCHET_BITS;
        // Ratchet from the closest known step of the same generation, if close enough.
        let base = self
            .entries
            .iter()
            .filter(|e| e.generation() == generation)
            .map(|e| {
                let (_, step) = split_kid(e.received.kid);
                ((target + modulus - step) % modulus, e)
            })
            .filter(|(d, _)| (1..=MAX_RATCHET_AHEAD).contains(d))
            .min_by_key(|(d, _)| *d);
        let Some((steps, from)) = base else {
            return Err(Error::UnknownKey { kid });
        };
        let suite = from.received.suite;
        let mut base_key = ratchet_base_key(suite, &from.received.base_key);
        for _ in 1..steps {
            base_key = ratchet_base_key(suite, &base_key);
        }
        let received = ReceivedSenderKey {
            suite,
            kid,
            base_key,
        };
        Ok(Slot::Ratcheted(alloc::boxed::Box::new(KeyEntry::new(
            received, 0,
        )?)))
    }

    /// Decrypt `frame` into `out` (cleared first). An empty frame gives an empty output.
    ///
    /// Errors are all peer errors: drop the frame and count it. Never panics.
    pub fn decrypt(&mut self, codec: Codec, frame: &[u8], out: &mut Vec<u8>) -> Result<FrameInfo> {
        out.clear();
        out.extend_from_slice(frame);
        let res = self.decrypt_in_place(codec, out);
        if res.is_err() {
            out.clear();
        }
        res
    }

    /// Decrypt `frame` in place: on success it holds the plaintext frame; on error its
    /// contents are unspecified and must be discarded.
    pub fn decrypt_in_place(&mut self, codec: Codec, frame: &mut Vec<u8>) -> Result<FrameInfo> {
        if frame.is_empty() {
            return Ok(FrameInfo {
                header: None,
                first_frame_of_key: false,
            });
        }
        let sealed = SealedFrame::parse(codec, frame)?;
        let header = sealed.header;
        let slot = self.find(header.kid)?;
        let entry = match &slot {
            Slot::Existing(i) => &self.entries[*i],
            Slot::Ratcheted(e) => e,
        };
        let ct_end = sealed.open_in_place(&entry.sframe, &entry.replay, frame)?;

        // Authenticated: commit state.
        let idx = match slot {
            Slot::Existing(i) => i,
            Slot::Ratcheted(mut e) => {
                e.seq = self.next_seq();
                self.insert(*e);
                self.entries.len() - 1
            }
        };
        let entry = &mut self.entries[idx];
        entry.replay.accept(header.ctr);
        let first_frame_of_key = !entry.used;
        entry.used = true;
        let generation = entry.generation();
        if generation > self.floor {
            self.retire_generations_before(generation);
        }
        sealed.strip(frame, ct_end);
        Ok(FrameInfo {
            header: Some(header),
            first_frame_of_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_window_accepts_reordering_and_rejects_repeats() {
        let mut w = ReplayWindow::default();
        for ctr in [5u64, 3, 7, 6] {
            assert!(w.check(ctr));
            w.accept(ctr);
        }
        assert!(!w.check(5));
        assert!(!w.check(7));
        assert!(w.check(4));
        w.accept(7 + 200);
        assert!(!w.check(7), "far behind the window is rejected");
        assert!(w.check(7 + 199));
    }

    #[test]
    fn vp8_prefix_follows_the_p_bit() {
        assert_eq!(Codec::Vp8.clear_prefix_len(&[0x10]), 10);
        assert_eq!(Codec::Vp8.clear_prefix_len(&[0x11]), 3);
        assert_eq!(Codec::Opus.clear_prefix_len(&[0xff]), 1);
        assert_eq!(Codec::Other.clear_prefix_len(&[0x00]), 0);
        assert_eq!(Codec::Vp8.clear_prefix_len(&[]), 0);
        assert_eq!(Codec::from_name("video/VP8"), Codec::Vp8);
        assert_eq!(Codec::from_name("opus"), Codec::Opus);
        assert_eq!(Codec::from_name("H264"), Codec::Other);
    }
}
