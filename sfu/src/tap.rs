//! Test hooks: a forwarding tap that sees every forwarded payload, and a network
//! impairment that loses one participant's datagrams.
//!
//! Compiled only with the `tap` cargo feature (tests turn it on through a dev-dependency)
//! and off at run time unless a hook is set in the config. Tests use the tap to prove the
//! SFU only ever handles E2EE ciphertext, and the impairment to cut a browser's media
//! path (both directions) to watch it recover.

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

/// The hook type in [`crate::CoreConfig::impair`] and [`crate::SfuConfig::impair`]:
/// `true` loses every datagram from and to that participant's leg, as a broken network
/// path would (signaling is untouched).
pub type Impair = Arc<dyn Fn(RoomId, ParticipantId) -> bool + Send + Sync>;
