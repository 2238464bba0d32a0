//! `MediaClient`: one participant's WebRTC session towards the SFU, sans-IO.
//!
//! Same loop shape as str0m and the SFU core: one input (`handle_receive`,
//! `handle_timeout`) or command (`send_frame`, SDP calls), then drain `poll_transmit`
//! and `poll_event`, then sleep until `poll_timeout`. The client owns no socket, so many
//! clients can share one socket and one event loop (demultiplex with
//! [`MediaClient::accepts`]).
//!
//! str0m runs in RTP mode: frames are packetized here ([`crate::packetize`]) so a sealed
//! E2EE frame goes out and comes back byte for byte.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpWrite, VideoOrientation};
use str0m::{Candidate, Event, Input, Output, Rtc};

use crate::packetize::{MAX_SLICE, Packet, Vp8Reassembler, packetize_vp8};

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Opus, 48 kHz.
    Audio,
    /// VP8, 90 kHz.
    Video,
}

impl Kind {
    fn clock_rate(self) -> u64 {
        match self {
            Kind::Audio => 48_000,
            Kind::Video => 90_000,
        }
    }

    fn of(k: MediaKind) -> Kind {
        if k.is_audio() {
            Kind::Audio
        } else {
            Kind::Video
        }
    }
}

/// Errors of the media client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The SFU sent SDP we could not use.
    #[error("bad SDP: {0}")]
    Sdp(String),
    /// API misuse: no offer of ours is waiting for an answer.
    #[error("no offer pending")]
    NoPendingOffer,
    /// API misuse: this client does not publish that kind of media.
    #[error("not publishing {0:?}")]
    NotPublishing(Kind),
    /// The session is not connected yet (or no longer).
    #[error("not connected")]
    NotConnected,
    /// An audio frame must fit in one packet.
    #[error("audio frame too large")]
    FrameTooLarge,
    /// str0m reported an error; the session is unusable.
    #[error("webrtc: {0}")]
    Rtc(String),
}

/// What to publish.
#[derive(Debug, Clone, Copy)]
pub struct ClientConfig {
    /// Publish an Opus track.
    pub audio: bool,
    /// Publish a VP8 track.
    pub video: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            audio: true,
            video: true,
        }
    }
}

/// Something that happened in the session.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// ICE and DTLS are up.
    Connected,
    /// The SFU added a track (someone else's) to this session.
    TrackAdded {
        /// Local mid of the track.
        mid: String,
        /// Audio or video.
        kind: Kind,
        /// The media stream id the SFU set (`confide-<participant>`).
        stream_id: String,
    },
    /// A complete frame arrived, exactly as its sender passed it to `send_frame`.
    Frame {
        /// Local mid of the track it arrived on.
        mid: String,
        /// Audio or video.
        kind: Kind,
        /// The media stream id (`confide-<participant>`) of the track.
        stream_id: String,
        /// RTP timestamp.
        rtp_time: u32,
        /// The frame.
        data: Vec<u8>,
    },
    /// The SFU asked for a keyframe on our video.
    KeyframeRequested,
    /// The session ended.
    Disconnected,
}

struct TxTrack {
    mid: Mid,
    kind: Kind,
    seq: u64,
}

struct RxTrack {
    kind: Kind,
    stream_id: String,
    mid_str: String,
    vp8: Vp8Reassembler,
}

/// One participant's media session (see the module docs).
pub struct MediaClient {
    rtc: Rtc,
    start: Instant,
    config: ClientConfig,
    tx: Vec<TxTrack>,
    rx: HashMap<Mid, RxTrack>,
    pending: Option<SdpPendingOffer>,
    transmits: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<ClientEvent>,
    next_timeout: Instant,
    connected: bool,
    failed: bool,
    /// CVO rotation bits (RFC 7742 / 3GPP TS 26.114) stamped on our video packets.
    video_orientation: Option<u8>,
    /// CVO rotation bits of the last video packet received.
    received_orientation: Option<u8>,
}

impl MediaClient {
    /// A client whose socket is `local` (its ICE host candidate).
    pub fn new(local: SocketAddr, config: ClientConfig, now: Instant) -> Self {
        let mut rtc = Rtc::builder()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .build(now);
        if let Ok(c) = Candidate::host(local, "udp") {
            rtc.add_local_candidate(c);
        }
        MediaClient {
            rtc,
            start: now,
            config,
            tx: Vec::new(),
            rx: HashMap::new(),
            pending: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            next_timeout: now,
            connected: false,
            failed: false,
            video_orientation: None,
            received_orientation: None,
        }
    }

    /// Stamps our video packets with a coordination-of-video-orientation value, as a
    /// phone held sideways does: the two rotation bits, 0 = upright, 1 = 90 degrees
    /// counter-clockwise, 2 = upside down, 3 = 90 degrees clockwise. `None` stops it.
    pub fn set_video_orientation(&mut self, rotation: Option<u8>) {
        self.video_orientation = rotation.map(|r| r & 3);
    }

    /// The rotation bits of the last video packet received (see
    /// [`MediaClient::set_video_orientation`]).
    pub fn received_video_orientation(&self) -> Option<u8> {
        self.received_orientation
    }

    /// The first offer: send-only audio and/or video, per [`ClientConfig`].
    pub fn create_offer(&mut self) -> Result<String, ClientError> {
        let mut api = self.rtc.sdp_api();
        let mut added = Vec::new();
        if self.config.audio {
            added.push((
                api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None),
                Kind::Audio,
            ));
        }
        if self.config.video {
            added.push((
                api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None),
                Kind::Video,
            ));
        }
        let (offer, pending) = api
            .apply()
            .ok_or(ClientError::Sdp("nothing to offer".into()))?;
        for (mid, kind) in added {
            self.tx.push(TxTrack { mid, kind, seq: 1 });
        }
        self.pending = Some(pending);
        Ok(offer.to_sdp_string())
    }

    /// Restarts ICE (e.g. after a network change): returns a new offer for the SFU.
    pub fn ice_restart(&mut self) -> Result<String, ClientError> {
        let mut api = self.rtc.sdp_api();
        api.ice_restart(true);
        let (offer, pending) = api
            .apply()
            .ok_or(ClientError::Sdp("nothing to offer".into()))?;
        self.pending = Some(pending);
        Ok(offer.to_sdp_string())
    }

    /// The SFU's answer to our offer.
    pub fn handle_answer(&mut self, now: Instant, sdp: &str) -> Result<(), ClientError> {
        let answer =
            SdpAnswer::from_sdp_string(sdp).map_err(|e| ClientError::Sdp(e.to_string()))?;
        let pending = self.pending.take().ok_or(ClientError::NoPendingOffer)?;
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| ClientError::Sdp(e.to_string()))?;
        self.drain(now);
        Ok(())
    }

    /// An SFU-initiated offer (tracks added or removed); returns our answer.
    pub fn handle_offer(&mut self, now: Instant, sdp: &str) -> Result<String, ClientError> {
        let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| ClientError::Sdp(e.to_string()))?;
        let answer = self
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| ClientError::Sdp(e.to_string()))?;
        self.drain(now);
        Ok(answer.to_sdp_string())
    }

    /// Sends one frame (for E2EE: the sealed frame). Video frames are split over as
    /// many packets as needed; an audio frame must fit in one.
    pub fn send_frame(
        &mut self,
        now: Instant,
        kind: Kind,
        frame: &[u8],
    ) -> Result<(), ClientError> {
        if !self.connected {
            return Err(ClientError::NotConnected);
        }
        let Some(i) = self.tx.iter().position(|t| t.kind == kind) else {
            return Err(ClientError::NotPublishing(kind));
        };
        if kind == Kind::Audio && frame.len() > MAX_SLICE {
            return Err(ClientError::FrameTooLarge);
        }
        // str0m only learns the time from inputs; bring it up to `now` before writing so
        // the packets are stamped and released at the right time.
        if now >= self.next_timeout {
            self.handle_timeout(now);
        }
        let codec = match kind {
            Kind::Audio => Codec::Opus,
            Kind::Video => Codec::Vp8,
        };
        let pt: Pt = self
            .rtc
            .codec_config()
            .find(|p| p.spec().codec == codec)
            .map(|p| p.pt())
            .ok_or(ClientError::Sdp("codec not negotiated".into()))?;
        let elapsed = now.saturating_duration_since(self.start);
        let ts = (elapsed.as_micros() as u64 * kind.clock_rate() / 1_000_000) as u32;
        let mid = self.tx[i].mid;
        let payloads: Vec<Vec<u8>> = match kind {
            Kind::Audio => vec![frame.to_vec()],
            Kind::Video => packetize_vp8(frame).collect(),
        };
        let n = payloads.len();
        let ext = ExtensionValues {
            video_orientation: match kind {
                Kind::Video => self.video_orientation.map(VideoOrientation::from),
                Kind::Audio => None,
            },
            ..Default::default()
        };
        let mut api = self.rtc.direct_api();
        let stream = api
            .stream_tx_by_mid(mid, None)
            .ok_or(ClientError::NotConnected)?;
        for (j, p) in payloads.into_iter().enumerate() {
            let seq = self.tx[i].seq;
            self.tx[i].seq += 1;
            stream.write_rtp(
                RtpWrite::new(pt, seq.into(), ts, now, p)
                    .marker(j + 1 == n)
                    .ext_vals(ext.clone())
                    .nackable(kind == Kind::Video),
            );
        }
        self.drain(now);
        Ok(())
    }

    /// Asks the sender of an incoming video track for a keyframe (PLI).
    pub fn request_keyframe(&mut self, now: Instant, mid: &str) -> bool {
        let mid: Mid = mid.into();
        let ok = match self.rtc.direct_api().stream_rx_by_mid(mid, None) {
            Some(rx) => {
                rx.request_keyframe(KeyframeRequestKind::Pli);
                true
            }
            None => false,
        };
        self.drain(now);
        ok
    }

    /// Whether a datagram belongs to this client (for many clients on one socket).
    pub fn accepts(&self, src: SocketAddr, dst: SocketAddr, buf: &[u8]) -> bool {
        match Receive::new(Protocol::Udp, src, dst, buf) {
            Ok(r) => self.rtc.accepts(&Input::Receive(self.start, r)),
            Err(_) => false,
        }
    }

    /// A datagram from the network.
    pub fn handle_receive(&mut self, now: Instant, src: SocketAddr, dst: SocketAddr, buf: &[u8]) {
        let Ok(r) = Receive::new(Protocol::Udp, src, dst, buf) else {
            return;
        };
        // A datagram str0m refuses (e.g. SRTP replay) is not fatal for the session.
        let _ = self.rtc.handle_input(Input::Receive(now, r));
        self.drain(now);
    }

    /// Time passed; call at [`MediaClient::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.rtc.handle_input(Input::Timeout(now)).is_err() {
            self.fail();
        }
        self.drain(now);
    }

    /// Next datagram to send: `(destination, bytes)`.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.transmits.pop_front()
    }

    /// Next event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// When to call [`MediaClient::handle_timeout`].
    pub fn poll_timeout(&self) -> Instant {
        self.next_timeout
    }

    /// ICE and DTLS are up.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// The session is alive.
    pub fn is_alive(&self) -> bool {
        !self.failed && self.rtc.is_alive()
    }

    fn fail(&mut self) {
        if !self.failed {
            self.failed = true;
            self.events.push_back(ClientEvent::Disconnected);
        }
    }

    fn drain(&mut self, now: Instant) {
        let _ = now;
        loop {
            if self.failed {
                return;
            }
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.next_timeout = t;
                    return;
                }
                Ok(Output::Transmit(t)) => {
                    self.transmits.push_back((t.destination, t.contents.into()));
                }
                Ok(Output::Event(e)) => self.handle_event(e),
                Err(_) => self.fail(),
            }
        }
    }

    fn handle_event(&mut self, e: Event) {
        match e {
            Event::Connected => {
                self.connected = true;
                self.events.push_back(ClientEvent::Connected);
            }
            Event::MediaAdded(m) if m.direction.is_receiving() => {
                let stream_id = self
                    .rtc
                    .media(m.mid)
                    .map(|md| md.stream_id().to_string())
                    .unwrap_or_default();
                let kind = Kind::of(m.kind);
                self.rx.insert(
                    m.mid,
                    RxTrack {
                        kind,
                        stream_id: stream_id.clone(),
                        mid_str: m.mid.to_string(),
                        vp8: Vp8Reassembler::default(),
                    },
                );
                self.events.push_back(ClientEvent::TrackAdded {
                    mid: m.mid.to_string(),
                    kind,
                    stream_id,
                });
            }
            Event::RtpPacket(pkt) => {
                let mid = self
                    .rtc
                    .direct_api()
                    .stream_rx(&pkt.header.ssrc)
                    .map(|rx| rx.mid())
                    .or(pkt.header.ext_vals.mid);
                let Some(track) = mid.and_then(|m| self.rx.get_mut(&m)) else {
                    return;
                };
                if track.kind == Kind::Video
                    && let Some(v) = pkt.header.ext_vals.video_orientation
                {
                    self.received_orientation = Some(v as u8);
                }
                let frame = match track.kind {
                    Kind::Audio => Some((pkt.header.timestamp, pkt.payload.to_vec())),
                    Kind::Video => track
                        .vp8
                        .push(Packet {
                            seq: *pkt.seq_no,
                            ts: pkt.header.timestamp,
                            marker: pkt.header.marker,
                            payload: pkt.payload.clone(),
                        })
                        .map(|f| (f.ts, f.data)),
                };
                if let Some((rtp_time, data)) = frame {
                    self.events.push_back(ClientEvent::Frame {
                        mid: track.mid_str.clone(),
                        kind: track.kind,
                        stream_id: track.stream_id.clone(),
                        rtp_time,
                        data,
                    });
                }
            }
            Event::KeyframeRequest(_) => self.events.push_back(ClientEvent::KeyframeRequested),
            Event::Closed => self.fail(),
            _ => {}
        }
    }
}

impl std::fmt::Debug for MediaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaClient")
            .field("connected", &self.connected)
            .field("tx_tracks", &self.tx.len())
            .field("rx_tracks", &self.rx.len())
            .finish_non_exhaustive()
    }
}
