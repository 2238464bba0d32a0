//! confide-client: the native Confide client (media part).
//!
//! - [`MediaClient`]: one participant's WebRTC session to the SFU on str0m, sans-IO. It
//!   owns no socket and reads no clock, so tests can drive it in simulated time and the
//!   bench can run many clients on one socket and one loop.
//! - [`packetize`]: VP8/Opus packetization that keeps each (E2EE-sealed) frame intact.
//! - [`e2ee`]: seals outgoing frames and opens incoming ones with `confide-e2ee`.
//!
//! - [`signaling`]: REST login (with TOTP) and the `/ws` WebSocket over TLS, typed with
//!   `confide_signaling::proto`.
//! - [`keys`]: the E2EE key exchange over `e2ee` blobs, compatible with the browser,
//!   with its join ratchet and leave rotation of our sender key.
//! - [`driver`]: [`MediaLoop`], one thread driving many participants (synthetic E2EE
//!   traffic, latency/loss/jitter measurement) for examples, tests and the bench.
//! - [`consultation`]: one participant's whole flow (join, admit, media, keys, end).
//!
//! What it does not do (yet): real codecs.
//!
//! Errors: SDP and API misuse return [`ClientError`]; bad network input is ignored,
//! never a panic.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod consultation;
pub mod driver;
pub mod e2ee;
pub mod keys;
pub mod media;
pub mod packetize;
pub mod signaling;

pub use e2ee::{FrameError, FrameOpener, FrameSealer};
pub use media::{ClientConfig, ClientError, ClientEvent, Kind, MediaClient};

pub use consultation::{ConsultationError, Credentials, Participant};
pub use driver::{LoopStats, MediaLoop, SlotId, Traffic};
pub use signaling::{Endpoint, Signaling, SignalingError};
