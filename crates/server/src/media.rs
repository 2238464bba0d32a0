//! Choosing and wiring the media plane.
//!
//! This is the one place the server builds the `Arc<dyn MediaPlane>` that signaling
//! drives. By default that is the SFU (`confide-sfu`): every participant's media goes
//! browser -> SFU -> browsers, and the SFU forwards SFrame ciphertext it cannot read.
//! The peer-to-peer relay from signaling stays available (`--media p2p`) for
//! development on machines where the SFU's UDP port cannot be reached.
//!
//! Ids cross the boundary as plain counters: signaling's `MediaRoomId` and
//! `MediaParticipantId` map one-to-one onto the SFU's `RoomId` and `ParticipantId`, so
//! the SFU never sees an account id or a name.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use confide_sfu::{ParticipantId, RoomId, Sfu, SfuConfig, SfuError, SfuEvent, SfuHandle};
use confide_signaling::media::{
    MediaError, MediaEvent, MediaParticipantId, MediaPlane, MediaRoomId,
};
use confide_signaling::p2p::PeerRelay;
use tokio::sync::mpsc;

use crate::Config;

/// Bound of the media event channel (events are small and drained by one task).
const EVENT_QUEUE: usize = 1024;

// Signaling admits no more participants than an SFU room holds: otherwise the last one
// admitted would sit in the call without media.
const _: () = assert!(confide_signaling::room::MAX_ADMITTED == confide_sfu::MAX_PARTICIPANTS);

/// Which media plane the server runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MediaMode {
    /// All media through the built-in SFU (default).
    Sfu,
    /// Development only: SDP relayed between two browsers, media goes peer to peer.
    P2p,
}

/// Media plane settings (`confide serve --media-*`).
#[derive(Clone, Debug)]
pub struct MediaConfig {
    pub mode: MediaMode,
    /// Address the SFU's UDP sockets bind to.
    pub bind_ip: IpAddr,
    /// Address browsers reach the SFU at (its ICE host candidate). Needed when
    /// `bind_ip` is `0.0.0.0`.
    pub public_ip: Option<IpAddr>,
    /// UDP port of worker 0 (worker `i` uses `port + i`); 0 picks free ports.
    pub port: u16,
    /// Worker threads, one UDP socket each; 0 means one per core.
    pub workers: usize,
    /// A participant that sends nothing for this long is removed.
    pub peer_timeout: Duration,
    /// Bandwidth estimation (TWCC) and pacing on every SFU leg. Off trades keyframe
    /// smoothing toward constrained receivers for about a fifth less SFU CPU and video
    /// frames without the pacing delay (docs/benchmarks.md, "SFU forwarding").
    pub bwe: bool,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            mode: MediaMode::Sfu,
            bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            public_ip: None,
            port: 0,
            workers: 0,
            peer_timeout: Duration::from_secs(30),
            bwe: true,
        }
    }
}

/// What [`build`] hands the server.
pub struct MediaParts {
    pub plane: Arc<dyn MediaPlane>,
    pub events: mpsc::Receiver<MediaEvent>,
    /// The SFU, when it is the media plane (metrics and tests read it).
    pub sfu: Option<SfuHandle>,
}

/// Build the configured media plane. Must run inside the tokio runtime (the SFU's event
/// bridge is a task).
pub fn build(cfg: &Config) -> anyhow::Result<MediaParts> {
    match cfg.media.mode {
        MediaMode::P2p => {
            let (relay, events) = PeerRelay::new(EVENT_QUEUE);
            Ok(MediaParts {
                plane: relay,
                events,
                sfu: None,
            })
        }
        MediaMode::Sfu => {
            let m = &cfg.media;
            let defaults = SfuConfig::default();
            let sfu_cfg = SfuConfig {
                workers: if m.workers == 0 {
                    defaults.workers
                } else {
                    m.workers
                },
                bind_ip: m.bind_ip,
                public_ip: m.public_ip,
                port: m.port,
                peer_timeout: m.peer_timeout,
                bwe_initial_bps: if m.bwe {
                    defaults.bwe_initial_bps
                } else {
                    None
                },
                event_capacity: EVENT_QUEUE,
                #[cfg(feature = "tap")]
                tap: tap::from_env()?,
                #[cfg(feature = "tap")]
                impair: tap::impair_from_env(),
                ..defaults
            };
            let (sfu, sfu_events) = Sfu::start(sfu_cfg)?;
            for addr in sfu.worker_addrs() {
                tracing::info!(%addr, "SFU worker listening (UDP)");
            }
            let (tx, events) = mpsc::channel(EVENT_QUEUE);
            tokio::spawn(bridge_events(sfu_events, tx));
            Ok(MediaParts {
                plane: Arc::new(SfuPlane(sfu.clone())),
                events,
                sfu: Some(sfu),
            })
        }
    }
}

/// Translate SFU events into signaling's vocabulary. Stats events are for metrics and
/// are not forwarded to signaling.
async fn bridge_events(mut from: mpsc::Receiver<SfuEvent>, to: mpsc::Sender<MediaEvent>) {
    while let Some(ev) = from.recv().await {
        let out = match ev {
            SfuEvent::Connected { room, participant } => MediaEvent::Connected {
                room: MediaRoomId(room.0),
                participant: MediaParticipantId(participant.0),
            },
            SfuEvent::Disconnected {
                room,
                participant,
                reason,
            } => MediaEvent::Disconnected {
                room: MediaRoomId(room.0),
                participant: MediaParticipantId(participant.0),
                reason: format!("{reason:?}"),
            },
            SfuEvent::Offer {
                room,
                participant,
                sdp,
            } => MediaEvent::Offer {
                room: MediaRoomId(room.0),
                participant: MediaParticipantId(participant.0),
                sdp,
            },
            _ => continue,
        };
        if to.send(out).await.is_err() {
            return;
        }
    }
}

/// The SFU as signaling's media plane.
struct SfuPlane(SfuHandle);

fn media_error(e: SfuError) -> MediaError {
    match e {
        SfuError::UnknownRoom => MediaError::UnknownRoom,
        SfuError::UnknownParticipant => MediaError::UnknownParticipant,
        SfuError::WorkerGone => MediaError::Closed,
        // Opening a room twice (a reconnecting doctor) is not an error for signaling.
        other => MediaError::Rejected(other.to_string()),
    }
}

#[async_trait]
impl MediaPlane for SfuPlane {
    async fn open_room(&self, room: MediaRoomId) -> Result<(), MediaError> {
        match self.0.open_room(RoomId(room.0)).await {
            Ok(()) | Err(SfuError::RoomExists) => Ok(()),
            Err(e) => Err(media_error(e)),
        }
    }

    async fn close_room(&self, room: MediaRoomId) -> Result<(), MediaError> {
        match self.0.close_room(RoomId(room.0)).await {
            Ok(()) | Err(SfuError::UnknownRoom) => Ok(()),
            Err(e) => Err(media_error(e)),
        }
    }

    async fn offer(
        &self,
        room: MediaRoomId,
        who: MediaParticipantId,
        sdp: String,
    ) -> Result<String, MediaError> {
        let room = RoomId(room.0);
        // Signaling may admit someone before the doctor's first offer opened the room.
        match self.0.open_room(room).await {
            Ok(()) | Err(SfuError::RoomExists) => {}
            Err(e) => return Err(media_error(e)),
        }
        self.0
            .offer(room, ParticipantId(who.0), sdp)
            .await
            .map_err(media_error)
    }

    async fn answer(
        &self,
        room: MediaRoomId,
        who: MediaParticipantId,
        sdp: String,
    ) -> Result<(), MediaError> {
        self.0
            .answer(RoomId(room.0), ParticipantId(who.0), sdp)
            .await
            .map_err(media_error)
    }

    async fn candidate(
        &self,
        room: MediaRoomId,
        who: MediaParticipantId,
        candidate: String,
    ) -> Result<(), MediaError> {
        self.0
            .candidate(RoomId(room.0), ParticipantId(who.0), candidate)
            .await
            .map_err(media_error)
    }

    async fn remove(&self, room: MediaRoomId, who: MediaParticipantId) -> Result<(), MediaError> {
        match self.0.remove(RoomId(room.0), ParticipantId(who.0)).await {
            Ok(()) | Err(SfuError::UnknownParticipant) | Err(SfuError::UnknownRoom) => Ok(()),
            Err(e) => Err(media_error(e)),
        }
    }
}

/// Test-only hooks, built only with the `tap` feature, never into release packages.
///
/// Forwarding tap: with `CONFIDE_TAP_FILE` set, the server appends one JSON line
/// `{"room","from","to","kind","hex"}` per forwarded payload. The browser end-to-end
/// test reads it to prove the SFU only saw SFrame ciphertext.
///
/// Network impairment: with `CONFIDE_IMPAIR_FILE` set, the file holds a participant id
/// (or nothing); the SFU loses every datagram from and to that participant's media leg
/// while it does, as a broken network path would. The browser test cuts a browser's
/// media this way to watch it restart ICE and, failing that, rejoin.
#[cfg(feature = "tap")]
mod tap {
    use std::fs::File;
    use std::io::Write;
    use std::sync::Arc;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use confide_sfu::{Impair, MediaKind, Tap, TapEvent};

    /// How often the impairment file is read.
    const IMPAIR_POLL: Duration = Duration::from_millis(100);

    pub(super) fn impair_from_env() -> Option<Impair> {
        let path = std::env::var_os("CONFIDE_IMPAIR_FILE")?;
        tracing::warn!("network impairment hook ON (test mode): {path:?}");
        let target = Arc::new(AtomicU64::new(0));
        let watched = target.clone();
        // A reader thread, so the workers only load an atomic per datagram.
        let spawned = std::thread::Builder::new()
            .name("impair-file".into())
            .spawn(move || {
                loop {
                    let id = std::fs::read_to_string(&path)
                        .ok()
                        .and_then(|s| s.trim().parse::<u64>().ok())
                        .unwrap_or(0);
                    watched.store(id, Ordering::Relaxed);
                    std::thread::sleep(IMPAIR_POLL);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "impairment hook not started");
            return None;
        }
        Some(Arc::new(move |_room, who| {
            let id = target.load(Ordering::Relaxed);
            id != 0 && id == who.0
        }))
    }

    /// Bound on the records written, so a long manual session cannot fill the disk.
    const MAX_RECORDS: u64 = 500_000;

    pub(super) fn from_env() -> anyhow::Result<Option<Tap>> {
        let Some(path) = std::env::var_os("CONFIDE_TAP_FILE") else {
            return Ok(None);
        };
        let file = Mutex::new(File::create(&path)?);
        let written = AtomicU64::new(0);
        tracing::warn!(
            "forwarding tap ON: every forwarded payload is written to a file (test mode)"
        );
        Ok(Some(Arc::new(move |ev: TapEvent<'_>| {
            if written.fetch_add(1, Ordering::Relaxed) >= MAX_RECORDS {
                return;
            }
            let line = format!(
                "{{\"room\":{},\"from\":{},\"to\":{},\"kind\":\"{}\",\"hex\":\"{}\"}}\n",
                ev.room.0,
                ev.from.0,
                ev.to.0,
                match ev.kind {
                    MediaKind::Audio => "audio",
                    MediaKind::Video => "video",
                },
                hex::encode(ev.payload)
            );
            if let Ok(mut f) = file.lock() {
                let _ = f.write_all(line.as_bytes());
            }
        })))
    }
}
