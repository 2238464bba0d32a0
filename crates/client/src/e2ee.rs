//! Frame protection for the media session, using `confide-e2ee` (SFrame).
//!
//! The transport ([`crate::MediaClient`]) moves opaque frames. A consultation's frames
//! are sealed under the keys of its MLS group: [`crate::driver::MediaLoop`] holds a
//! `confide_e2ee::GroupFrameEncryptor` and `GroupFrameDecryptor` per participant, keyed
//! per epoch by [`crate::consultation`]. This module maps our media kinds to the codecs
//! whose clear prefix SFrame keeps, and keeps [`FrameSealer`] / [`FrameOpener`]: frame
//! wrappers over a plain SFrame sender key, with no key exchange of their own, which
//! the SFU's tests use to push sealed frames through the forwarding path.
//!
//! One sealer per sender covers audio and video: a single SFrame counter per key is what
//! keeps nonces unique (two counters under one key would repeat them).

use std::collections::HashMap;

use confide_e2ee::{Codec, FrameDecryptor, FrameEncryptor, ReceivedSenderKey, SenderKey};

use crate::Kind;

/// Errors from sealing or opening frames.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The e2ee layer refused (forged, replayed, unknown key, or API misuse on sealing).
    #[error("e2ee: {0}")]
    E2ee(#[from] confide_e2ee::Error),
    /// No key installed for this sender yet.
    #[error("no key for this sender")]
    NoKey,
}

/// The codec whose clear prefix a frame of `kind` keeps.
pub(crate) fn codec(kind: Kind) -> Codec {
    match kind {
        Kind::Audio => Codec::Opus,
        Kind::Video => Codec::Vp8,
    }
}

/// Seals our outgoing frames.
#[derive(Debug)]
pub struct FrameSealer {
    enc: FrameEncryptor,
}

impl FrameSealer {
    /// A sealer for our media under `key`.
    pub fn new(key: SenderKey) -> Result<Self, FrameError> {
        Ok(FrameSealer {
            enc: FrameEncryptor::new(key)?,
        })
    }

    /// Our sender key.
    pub fn sender_key(&self) -> &SenderKey {
        self.enc.sender_key()
    }

    /// Seals one frame into `out` (cleared first; reuse it to avoid allocation).
    pub fn seal(&mut self, kind: Kind, frame: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
        Ok(self.enc.encrypt(codec(kind), frame, out)?)
    }

    /// The KID frames are sealed under now.
    pub fn kid(&self) -> u64 {
        self.enc.kid()
    }
}

/// Opens frames from each sender, keyed by the sender's media stream id.
#[derive(Debug, Default)]
pub struct FrameOpener {
    senders: HashMap<String, FrameDecryptor>,
}

impl FrameOpener {
    /// An opener with no keys.
    pub fn new() -> Self {
        Self::default()
    }

    /// Installs a sender's key for its stream id.
    pub fn install(&mut self, stream_id: &str, key: ReceivedSenderKey) -> Result<(), FrameError> {
        self.senders
            .entry(stream_id.to_string())
            .or_default()
            .install(key)?;
        Ok(())
    }

    /// Opens one frame from `stream_id` into `out`. Returns `true` when the frame is the
    /// first under a new key (a video receiver should then ask for a keyframe).
    pub fn open(
        &mut self,
        stream_id: &str,
        kind: Kind,
        sealed: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<bool, FrameError> {
        let dec = self.senders.get_mut(stream_id).ok_or(FrameError::NoKey)?;
        Ok(dec.decrypt(codec(kind), sealed, out)?.first_frame_of_key)
    }
}
