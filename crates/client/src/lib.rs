//! confide-client: the native Confide client (media part).
//!
//! - [`MediaClient`]: one participant's WebRTC session to the SFU on str0m, sans-IO. It
//!   owns no socket and reads no clock, so tests can drive it in simulated time and the
//!   bench can run many clients on one socket and one loop.
//! - [`packetize`]: VP8/Opus packetization that keeps each (E2EE-sealed) frame intact.
//! - [`e2ee`]: the codecs' clear prefixes, and plain SFrame frame wrappers.
//!
//! - [`signaling`]: REST login (with TOTP) and the `/ws` WebSocket over TLS, typed with
//!   `confide_proto`.
//! - [`device`]: this device's lasting MLS identity, pins and log head, in a state
//!   directory (or a temporary device in memory).
//! - [`directory`]: the key directory and audit-log REST calls.
//! - [`driver`]: [`MediaLoop`], one thread driving many participants (synthetic E2EE
//!   traffic under the MLS group's frame keys, latency/loss/jitter measurement) for
//!   examples, tests and the bench.
//! - [`consultation`]: one participant's whole flow (join, admit, the consultation's
//!   MLS group, media, chat, key warnings, end), as `docs/keys.md` describes it.
//!
//! What it does not do (yet): real codecs.
//!
//! Errors: SDP and API misuse return [`ClientError`]; bad network input is ignored,
//! never a panic.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod consultation;
pub mod device;
pub mod directory;
pub mod driver;
pub mod e2ee;
pub mod media;
pub mod packetize;
pub mod signaling;

pub use e2ee::{FrameError, FrameOpener, FrameSealer};
pub use media::{ClientConfig, ClientError, ClientEvent, Kind, MediaClient};

pub use consultation::{ConsultationError, Credentials, Happening, KeyWarning, Participant};
pub use device::{DeviceStore, KeyConfig, PinPolicy};
pub use driver::{LoopStats, MediaLoop, SlotId, Traffic};
pub use signaling::{Endpoint, Signaling, SignalingError};
