//! Simulated network and clock for `SfuCore` + `MediaClient`s.
#![allow(dead_code)]

pub mod udp;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use confide_client::{ClientConfig, ClientEvent, FrameOpener, FrameSealer, Kind, MediaClient};
use confide_sfu::{CoreConfig, ParticipantId, RoomId, SfuCore, SfuEvent};

pub struct SimClient {
    pub id: ParticipantId,
    pub addr: SocketAddr,
    pub client: MediaClient,
    pub events: Vec<ClientEvent>,
    pub muted: bool,
    /// The SFU's SDP answer to the client's first offer.
    pub answer: String,
}

pub struct Sim {
    pub now: Instant,
    pub core: SfuCore,
    pub sfu_addr: SocketAddr,
    pub room: RoomId,
    pub clients: Vec<SimClient>,
    pub sfu_events: Vec<SfuEvent>,
    /// Fraction of RTP/RTCP datagrams dropped on the way into the SFU.
    pub loss_in: f64,
    pub dropped_in: u64,
    rng: u64,
}

impl Sim {
    pub fn new(seed: u64) -> Self {
        Self::with_config(seed, |_| {})
    }

    pub fn with_config(seed: u64, f: impl FnOnce(&mut CoreConfig)) -> Self {
        #[expect(
            clippy::disallowed_methods,
            reason = "the simulation's epoch; after it, time moves only by simulation"
        )]
        let now = Instant::now();
        let sfu_addr: SocketAddr = "127.0.0.1:3478".parse().unwrap();
        let mut cfg = CoreConfig::new(sfu_addr);
        f(&mut cfg);
        let mut core = SfuCore::new(cfg, now);
        let room = RoomId(7);
        core.open_room(room).unwrap();
        Sim {
            now,
            core,
            sfu_addr,
            room,
            clients: Vec::new(),
            sfu_events: Vec::new(),
            loss_in: 0.0,
            dropped_in: 0,
            rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    fn rand(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Adds a participant publishing audio and video; returns its index.
    /// The usual start: participants 1 and 2 joined, each seeing the other's two tracks.
    pub fn pair(&mut self) -> (usize, usize) {
        let a = self.join(ParticipantId(1));
        let b = self.join(ParticipantId(2));
        self.wait_tracks(a, 2);
        self.wait_tracks(b, 2);
        (a, b)
    }

    pub fn join(&mut self, id: ParticipantId) -> usize {
        let addr: SocketAddr = format!("127.0.0.1:{}", 40000 + id.0).parse().unwrap();
        let mut client = MediaClient::new(addr, ClientConfig::default(), self.now);
        let offer = client.create_offer().unwrap();
        let answer = self.core.offer(self.now, self.room, id, &offer).unwrap();
        client.handle_answer(self.now, &answer).unwrap();
        self.clients.push(SimClient {
            id,
            addr,
            client,
            events: Vec::new(),
            muted: false,
            answer,
        });
        let i = self.clients.len() - 1;
        self.run_until(Duration::from_secs(10), |s| {
            s.clients[i].client.is_connected()
        });
        i
    }

    pub fn mute(&mut self, i: usize) {
        self.clients[i].muted = true;
    }

    pub fn tracks(&self, i: usize) -> usize {
        self.clients[i]
            .events
            .iter()
            .filter(|e| matches!(e, ClientEvent::TrackAdded { .. }))
            .count()
    }

    pub fn wait_tracks(&mut self, i: usize, n: usize) {
        self.run_until(Duration::from_secs(10), |s| s.tracks(i) >= n);
        // Let the answers settle and the first keyframe requests go out.
        self.run_for(Duration::from_millis(100));
    }

    /// Moves every queued datagram and event once. Returns whether anything moved.
    pub fn pump(&mut self) -> bool {
        let mut moved = false;
        for i in 0..self.clients.len() {
            while let Some((dst, data)) = self.clients[i].client.poll_transmit() {
                moved = true;
                if self.clients[i].muted || dst != self.sfu_addr {
                    continue;
                }
                let media = matches!(data.first(), Some(128..=191));
                if media && self.loss_in > 0.0 && self.rand() < self.loss_in {
                    self.dropped_in += 1;
                    continue;
                }
                let src = self.clients[i].addr;
                self.core
                    .handle_receive(self.now, src, self.sfu_addr, &data);
            }
        }
        while let Some(t) = self.core.poll_transmit() {
            moved = true;
            if let Some(c) = self.clients.iter_mut().find(|c| c.addr == t.destination) {
                c.client
                    .handle_receive(self.now, self.sfu_addr, c.addr, &t.contents);
            }
        }
        for c in &mut self.clients {
            while let Some(e) = c.client.poll_event() {
                moved = true;
                c.events.push(e);
            }
        }
        while let Some(e) = self.core.poll_event() {
            moved = true;
            if let SfuEvent::Offer {
                room,
                participant,
                sdp,
            } = &e
            {
                // What signaling does: relay the offer, relay the answer back.
                if let Some(c) = self.clients.iter_mut().find(|c| c.id == *participant) {
                    let answer = c.client.handle_offer(self.now, sdp).unwrap();
                    self.core
                        .answer(self.now, *room, *participant, &answer)
                        .unwrap();
                }
            }
            self.sfu_events.push(e);
        }
        moved
    }

    fn next_deadline(&mut self) -> Instant {
        let mut t = self
            .core
            .poll_timeout()
            .unwrap_or(self.now + Duration::from_secs(1));
        for c in &self.clients {
            t = t.min(c.client.poll_timeout());
        }
        t
    }

    fn fire(&mut self) {
        let now = self.now;
        if self.core.poll_timeout().is_some_and(|t| t <= now) {
            self.core.handle_timeout(now);
        }
        for c in &mut self.clients {
            if c.client.poll_timeout() <= now {
                c.client.handle_timeout(now);
            }
        }
    }

    /// Runs the network and timers until `end`.
    pub fn run_to(&mut self, end: Instant) {
        let mut stuck = 0;
        let mut turns = 0u64;
        loop {
            turns += 1;
            assert!(turns < 1_000_000, "simulation does not make progress");
            let mut pumps = 0;
            while self.pump() {
                pumps += 1;
                assert!(pumps < 100_000, "datagram storm");
            }
            let next = self.next_deadline();
            if next > end {
                self.now = end;
                self.fire();
                while self.pump() {}
                return;
            }
            if next <= self.now {
                stuck += 1;
                if stuck > 1000 {
                    // Something keeps asking for "now": nudge time forward.
                    self.now += Duration::from_millis(1);
                    stuck = 0;
                }
            } else {
                self.now = next;
                stuck = 0;
            }
            self.fire();
        }
    }

    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        self.run_to(end);
    }

    /// Runs until `cond` holds, at most `limit` of simulated time.
    pub fn run_until(&mut self, limit: Duration, mut cond: impl FnMut(&Self) -> bool) {
        let end = self.now + limit;
        while !cond(self) {
            assert!(
                self.now < end,
                "condition not met within {limit:?} (simulated)"
            );
            self.run_for(Duration::from_millis(10));
        }
    }

    /// Sends the frames at 30 fps (video) and 50 fps (audio), running the network.
    pub fn send_frames(&mut self, i: usize, video: &[Vec<u8>], audio: &[Vec<u8>]) {
        self.send_frames_inner(i, video, audio, true);
    }

    /// Like `send_frames` but tolerates send errors (e.g. after removal).
    pub fn send_frames_unchecked(&mut self, i: usize, video: &[Vec<u8>], audio: &[Vec<u8>]) {
        self.send_frames_inner(i, video, audio, false);
    }

    fn send_frames_inner(&mut self, i: usize, video: &[Vec<u8>], audio: &[Vec<u8>], check: bool) {
        let n = video.len().max(audio.len());
        for k in 0..n {
            let now = self.now;
            if let Some(v) = video.get(k) {
                let r = self.clients[i].client.send_frame(now, Kind::Video, v);
                assert!(!check || r.is_ok(), "{r:?}");
            }
            if let Some(a) = audio.get(k) {
                let r = self.clients[i].client.send_frame(now, Kind::Audio, a);
                assert!(!check || r.is_ok(), "{r:?}");
            }
            self.run_for(Duration::from_millis(33));
        }
    }

    /// Frames client `i` received of `kind` from the stream `stream_id`, in RTP time order.
    pub fn received(&self, i: usize, kind: Kind, stream_id: &str) -> Vec<Vec<u8>> {
        frames_in(&self.clients[i].events, kind, stream_id)
    }
}

/// The frames among a client's `events` of `kind` from the stream `stream_id`, in RTP
/// time order.
pub fn frames_in(events: &[ClientEvent], kind: Kind, stream_id: &str) -> Vec<Vec<u8>> {
    let mut v: Vec<(u32, Vec<u8>)> = events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Frame {
                kind: k,
                stream_id: s,
                rtp_time,
                data,
                ..
            } if *k == kind && s == stream_id => Some((*rtp_time, data.clone())),
            _ => None,
        })
        .collect();
    v.sort_by_key(|(t, _)| *t);
    v.into_iter().map(|(_, d)| d).collect()
}

/// Marker inside every plaintext frame: it must never appear in what the SFU forwards.
pub const SECRET: &[u8] = b"PATIENT-SECRET";

/// Synthetic plaintext frames. Video: a VP8 keyframe every 10 frames (10-byte clear
/// prefix, P bit 0) else delta frames (3 bytes), 2-7 KB so each spans several packets.
/// Audio: an Opus TOC byte and ~100 bytes. Each frame is unique (tag, index) so
/// misrouting or reordering shows, and each carries [`SECRET`].
pub fn frames_for(tag: u8, n: usize) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let video = (0..n)
        .map(|k| {
            let len = 2000 + (k * 997) % 5000;
            let mut f = if k % 10 == 0 {
                vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01]
            } else {
                vec![0x31, 0x02, 0x00]
            };
            while f.len() < len {
                f.extend_from_slice(SECRET);
                f.extend_from_slice(format!("-{tag}-{k}-").as_bytes());
            }
            f
        })
        .collect();
    let audio = (0..n)
        .map(|k| {
            let mut f = vec![0x78];
            for _ in 0..4 + k % 3 {
                f.extend_from_slice(SECRET);
                f.extend_from_slice(format!("-a{tag}-{k}-").as_bytes());
            }
            f
        })
        .collect();
    (video, audio)
}

/// Frame keys for `n` participants (ids 1..=n): each gets a sealer for its own media
/// and an opener holding every other participant's sender key, keyed by the SFU's
/// stream id `confide-<id>`. The keys go over directly: these tests are about the
/// forwarding path, which never sees a key (consultations derive theirs from MLS).
pub fn e2ee_keys(n: usize) -> Vec<(FrameSealer, FrameOpener)> {
    use confide_e2ee::{CipherSuite, SeededRng, SenderKey};
    let mut rng = SeededRng::from_seed([7; 32]);
    let sealers: Vec<FrameSealer> = (0..n)
        .map(|_| {
            FrameSealer::new(SenderKey::generate(
                CipherSuite::ChaCha20Poly1305Sha256_128,
                &mut rng,
            ))
            .unwrap()
        })
        .collect();
    let mut openers: Vec<FrameOpener> = (0..n).map(|_| FrameOpener::new()).collect();
    for (j, opener) in openers.iter_mut().enumerate() {
        for (i, sealer) in sealers.iter().enumerate() {
            if i != j {
                opener
                    .install(
                        &format!("confide-{}", i + 1),
                        sealer.sender_key().to_received(),
                    )
                    .unwrap();
            }
        }
    }
    sealers.into_iter().zip(openers).collect()
}

/// Seals frames in order (audio and video interleaved as they are sent).
pub fn seal_all(
    sealer: &mut FrameSealer,
    video: &[Vec<u8>],
    audio: &[Vec<u8>],
) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut sv = Vec::new();
    let mut sa = Vec::new();
    for k in 0..video.len().max(audio.len()) {
        if let Some(v) = video.get(k) {
            let mut out = Vec::new();
            sealer.seal(Kind::Video, v, &mut out).unwrap();
            sv.push(out);
        }
        if let Some(a) = audio.get(k) {
            let mut out = Vec::new();
            sealer.seal(Kind::Audio, a, &mut out).unwrap();
            sa.push(out);
        }
    }
    (sv, sa)
}

/// Opens received frames; panics on any failure.
pub fn open_all(
    opener: &mut FrameOpener,
    stream: &str,
    kind: Kind,
    frames: &[Vec<u8>],
) -> Vec<Vec<u8>> {
    frames
        .iter()
        .map(|f| {
            let mut out = Vec::new();
            opener.open(stream, kind, f, &mut out).unwrap();
            out
        })
        .collect()
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
