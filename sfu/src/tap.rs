//! Forwarding tap: a hook that sees every forwarded payload.
//!
//! Compiled only with the `tap` cargo feature (tests turn it on through a dev-dependency)
//! and off at run time unless a hook is set in the config. Tests use it to prove the SFU
//! only ever handles E2EE ciphertext.

use std::sync::Arc;

use crate::{MediaKind, ParticipantId, RoomId};

/// One forwarded packet as the SFU saw it.
#[derive(Debug, Clone, Copy)]
pub struct TapEvent<'a> {
    /// The room.
    pub room: RoomId,
    /// Who published the packet.
    pub from: ParticipantId,
    /// Who it is being forwarded to.
    pub to: ParticipantId,
    /// Audio or video.
    pub kind: MediaKind,
    /// The RTP payload, exactly as forwarded.
    pub payload: &'a [u8],
}

/// The hook type in [`crate::CoreConfig::tap`] and [`crate::SfuConfig::tap`].
pub type Tap = Arc<dyn Fn(TapEvent<'_>) + Send + Sync>;
