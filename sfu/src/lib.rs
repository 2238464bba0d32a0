//! confide-sfu: the media plane of Confide.
//!
//! The SFU receives the RTP packets of each consultation participant and forwards them to
//! every other participant of the same consultation. Media is end-to-end encrypted by the
//! clients (SFrame inside the RTP payload), so the SFU only ever sees ciphertext: it
//! rewrites RTP headers per subscriber and never reads, changes or logs a payload.
//!
//! # Layers
//!
//! ```text
//!  SfuHandle (Clone, async verbs) ──bounded channel per worker──▶ worker thread (edge)
//!                                                                   │ owns UdpSocket, clock
//!                                                                   ▼
//!                                          SfuCore (sans-IO): rooms, one str0m Rtc per peer
//! ```
//!
//! - [`SfuCore`] does no I/O and never reads the clock. Every method takes `now`.
//! - [`edge`] runs one OS thread per worker, each owning one UDP socket, one `SfuCore`
//!   and every room pinned to it, so forwarding is a plain `&mut` call.
//! - [`SfuHandle`] is how the rest of the server talks to the workers.
//!
//! # The loop (str0m shape)
//!
//! One mutation, then drain the outputs until the core reports its next deadline:
//!
//! ```
//! # use std::time::Instant;
//! # use confide_sfu::{CoreConfig, SfuCore};
//! # let now = Instant::now();
//! # let mut core = SfuCore::new(CoreConfig::new("127.0.0.1:5000".parse().unwrap()), now);
//! # let (src, dst, buf) = ("127.0.0.1:6000".parse().unwrap(), "127.0.0.1:5000".parse().unwrap(), [0u8; 4]);
//! core.handle_receive(now, src, dst, &buf);
//! while let Some(t) = core.poll_transmit() {
//!     // socket.send_to(&t.contents, t.destination)
//! #   let _ = t;
//! }
//! while let Some(ev) = core.poll_event() {
//!     // hand the event to signaling
//! #   let _ = ev;
//! }
//! let _wake_at: Option<Instant> = core.poll_timeout();
//! // later: core.handle_timeout(deadline)
//! ```
//!
//! # What it does not do
//!
//! - It holds no media keys and does not depend on `confide-e2ee`.
//! - It never parses signaling JSON; SDP and candidates arrive as plain strings.
//! - It does not pick rooms for workers by load: the room id decides (`room % workers`).
//!
//! # Cargo features
//!
//! - `tap`: compiles in the forwarding tap (`TapEvent`, `SfuConfig::tap`), a hook that
//!   sees every forwarded payload. Tests enable it through the dev-dependency; it stays
//!   `None` unless set. Production builds leave the feature off.
//! - `_fuzzing`: exposes `fuzzing`, the entry points of the fuzz target. Not stable API.
//!
//! # Errors and panics
//!
//! Network input never causes a panic on purpose: bad datagrams are dropped and counted
//! ([`DropReason`]). str0m panics on its own internal bugs by design, so every call into
//! one participant's `Rtc` runs under `catch_unwind`; a panic drops that participant
//! (event [`SfuEvent::Disconnected`] with [`DisconnectReason::Internal`]) and the worker
//! carries on. API misuse returns [`SfuError`].
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod core;
mod demux;
pub mod edge;
mod rtc;
mod sdp;
mod stats;
#[cfg(feature = "tap")]
mod tap;

use std::fmt;

pub use crate::core::{
    CoreConfig, MAX_CANDIDATES_PER_PEER, MAX_PARTICIPANTS, MAX_SECTIONS_PER_MEMBER,
    MAX_TRACKS_PER_PEER, SfuCore, Transmit,
};
pub use crate::edge::{Sfu, SfuConfig, SfuHandle};
pub use crate::stats::{
    DropReason, FORWARD_LATENCY_BUCKETS_US, ForwardLatency, MediaKind, SfuStats, WorkerStats,
};
#[cfg(feature = "tap")]
pub use crate::tap::{Impair, Tap, TapEvent};

/// A consultation's media room. Assigned by signaling (a counter), never an account id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId(pub u64);

/// One participant of a media room. Assigned by signaling (a counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParticipantId(pub u64);

/// The name the signaling contract uses for [`RoomId`].
pub type MediaRoomId = RoomId;
/// The name the signaling contract uses for [`ParticipantId`].
pub type MediaParticipantId = ParticipantId;

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "room-{}", self.0)
    }
}

impl fmt::Display for ParticipantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p-{}", self.0)
    }
}

/// What the SFU tells its owner (the signaling server).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SfuEvent {
    /// ICE and DTLS are up: media can flow for this participant.
    Connected {
        /// Room of the participant.
        room: RoomId,
        /// The participant.
        participant: ParticipantId,
    },
    /// The participant's media session ended without the owner asking for it.
    Disconnected {
        /// Room of the participant.
        room: RoomId,
        /// The participant.
        participant: ParticipantId,
        /// Why.
        reason: DisconnectReason,
    },
    /// The SFU renegotiates this participant's session (tracks of others were added or
    /// removed). Forward the offer to the client and pass its answer to
    /// [`SfuHandle::answer`].
    Offer {
        /// Room of the participant.
        room: RoomId,
        /// The participant whose session changes.
        participant: ParticipantId,
        /// SDP offer.
        sdp: String,
    },
    /// Someone receiving this participant's video needs a keyframe. The SFU already sent
    /// the participant a PLI/FIR (merged and throttled); signaling may also relay it to
    /// clients whose encoder sits behind an E2EE transform.
    KeyframeNeeded {
        /// Room of the participant.
        room: RoomId,
        /// The publisher that should send a keyframe.
        participant: ParticipantId,
    },
    /// Periodic per-participant statistics.
    Stats {
        /// Room of the participant.
        room: RoomId,
        /// The participant.
        participant: ParticipantId,
        /// The numbers.
        stats: ParticipantStats,
    },
}

/// Why a participant's session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// Nothing was received from the peer for longer than the configured timeout.
    Timeout,
    /// ICE never connected within the connect timeout.
    ConnectTimeout,
    /// The peer closed DTLS or its session died.
    Closed,
    /// An internal bug (a panic inside str0m or the SFU) while handling this peer; only
    /// this peer was dropped.
    Internal,
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DisconnectReason::Timeout => "timeout",
            DisconnectReason::ConnectTimeout => "connect timeout",
            DisconnectReason::Closed => "closed",
            DisconnectReason::Internal => "internal error",
        })
    }
}

/// Per-participant numbers reported in [`SfuEvent::Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ParticipantStats {
    /// RTP packets received from the participant.
    pub packets_in: u64,
    /// RTP packets forwarded to the participant.
    pub packets_out: u64,
    /// RTP payload bytes received from the participant.
    pub bytes_in: u64,
    /// RTP payload bytes forwarded to the participant.
    pub bytes_out: u64,
    /// Latest egress bandwidth estimate towards the participant, bits per second.
    pub egress_bitrate_estimate: Option<u64>,
    /// Round-trip time, milliseconds, when known.
    pub rtt_ms: Option<u64>,
}

/// Errors returned to the caller of the SFU API. Network input never produces these:
/// it is dropped and counted instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SfuError {
    /// API misuse: the room does not exist on this SFU.
    #[error("unknown room")]
    UnknownRoom,
    /// API misuse: the room already exists.
    #[error("room already open")]
    RoomExists,
    /// API misuse: no such participant in the room.
    #[error("unknown participant")]
    UnknownParticipant,
    /// The room already holds the maximum number of participants.
    #[error("room is full")]
    RoomFull,
    /// The peer (via signaling) sent SDP that could not be parsed or applied.
    #[error("invalid SDP: {0}")]
    InvalidSdp(String),
    /// The peer (via signaling) sent an ICE candidate that could not be parsed.
    #[error("invalid ICE candidate")]
    InvalidCandidate,
    /// The peer's SDP has more media sections than the SFU negotiates for one peer.
    #[error("SDP has {found} media sections; at most {max} are accepted per participant")]
    TooManyMediaSections {
        /// Sections in the SDP.
        found: usize,
        /// The cap.
        max: usize,
    },
    /// The peer's offer publishes more tracks than one participant may send.
    #[error("offer publishes {found} tracks; at most {max} are accepted per participant")]
    TooManyTracks {
        /// Sending sections in the offer.
        found: usize,
        /// The cap.
        max: usize,
    },
    /// The peer trickled more ICE candidates than one ICE session takes.
    #[error("too many ICE candidates; at most {max} per ICE session")]
    TooManyCandidates {
        /// The cap.
        max: usize,
    },
    /// API misuse: `answer` was called while no SFU offer was outstanding.
    #[error("no offer pending for this participant")]
    NoPendingOffer,
    /// The worker that owns the room has stopped or its control queue is closed.
    #[error("SFU worker unavailable")]
    WorkerGone,
    /// An internal bug; the affected participant was dropped.
    #[error("internal error: {0}")]
    Internal(&'static str),
}

#[cfg(feature = "_fuzzing")]
pub mod fuzzing;
