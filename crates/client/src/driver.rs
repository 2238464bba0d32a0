//! [`MediaLoop`]: one OS thread driving many participants' media sessions.
//!
//! Each participant ([`Slot`]) has its own UDP socket (the SFU tells peers apart by
//! address) but all of them share one thread and one `epoll` set, so one bench process
//! can drive hundreds of peers without a thread each. Per slot the loop owns the
//! sans-IO [`MediaClient`], the frame keys of the consultation's MLS group (a
//! [`GroupFrameEncryptor`] for our leaf and one [`GroupFrameDecryptor`] for every other
//! member, installed by the signaling side with [`MediaLoop::install_epoch`]), and a
//! synthetic traffic source. Until a slot has an epoch key it sends nothing: no frame
//! ever leaves unencrypted or under a key the group did not agree on.
//!
//! Synthetic frames carry, inside the encrypted part, a header with the publisher, a
//! sequence number and the send time (nanoseconds since a process-wide epoch), so every
//! receiver measures one-way latency through the SFU, loss and jitter. Nothing in a
//! frame is real media.
//!
//! Async callers (signaling tasks) talk to the loop with commands and `oneshot` replies.
//! Scratch buffers are allocated once per loop; per packet the loop allocates only what
//! str0m and the packetizer do.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::OnceLock;
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use confide_e2ee::{CipherSuite, EpochSecret, GroupFrameDecryptor, GroupFrameEncryptor};
use rustix::event::{Timespec, epoll};
use tokio::sync::oneshot;

use crate::e2ee::codec;
use crate::media::{ClientConfig, ClientError, ClientEvent, Kind, MediaClient};

/// The SFrame suite of every consultation (`docs/keys.md`).
pub const SUITE: CipherSuite = CipherSuite::ChaCha20Poly1305Sha256_128;
/// Most sealed frames a slot records when asked to ([`MediaLoop::record`]).
pub const MAX_RECORDED: usize = 20_000;

/// Marks a synthetic frame header ("CFB1").
const MAGIC: u32 = 0x4346_4231;
/// Synthetic header: magic, publisher, sequence number, send time.
pub const HEADER_LEN: usize = 4 + 8 + 8 + 8;
/// Longest sleep of the loop (commands are checked at least this often).
const MAX_WAIT: Duration = Duration::from_millis(5);
/// A sender this far behind its schedule skips ahead instead of bursting.
const MAX_LAG: Duration = Duration::from_millis(500);
/// Latency histogram resolution and range.
const LAT_STEP_US: u64 = 10;
const LAT_BUCKETS: usize = 100_000; // 10 us .. 1 s
const VP8_KEY_PREFIX: [u8; 10] = [0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01];
const VP8_DELTA_PREFIX: [u8; 3] = [0x31, 0x02, 0x00];
const OPUS_TOC: u8 = 0x78;

/// The process-wide epoch send times are measured from (sender and receiver of a
/// measurement live in one process).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn since_epoch_ns(t: Instant) -> u64 {
    t.saturating_duration_since(epoch()).as_nanos() as u64
}

/// Errors of the loop's API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    /// The loop thread is gone.
    #[error("media loop stopped")]
    Stopped,
    /// No such slot (removed, or never created).
    #[error("unknown slot")]
    UnknownSlot,
    /// The media session refused.
    #[error("media: {0}")]
    Client(#[from] ClientError),
    /// The frame keys refused an epoch secret (an older epoch than installed, or a leaf
    /// index the KID cannot carry).
    #[error("frame keys: {0}")]
    Keys(#[from] confide_e2ee::Error),
    /// Socket trouble.
    #[error("io: {0}")]
    Io(#[from] io::Error),
}

/// Synthetic traffic one participant publishes.
#[derive(Debug, Clone, Copy)]
pub struct Traffic {
    /// Publish video.
    pub video: bool,
    /// Publish audio.
    pub audio: bool,
    /// Average video bitrate, bits per second (keyframes included).
    pub video_bps: u64,
    /// Video frames per second.
    pub fps: u32,
    /// Time between keyframes.
    pub keyframe_interval: Duration,
    /// Keyframe size relative to a delta frame.
    pub keyframe_ratio: u32,
    /// Audio packets per second (one frame per packet).
    pub audio_pps: u32,
    /// Audio frame size, bytes (Opus at 32 kbit/s and 20 ms: 80).
    pub audio_bytes: usize,
}

impl Default for Traffic {
    /// 720p-like VP8 at 1.5 Mbit/s and 30 fps with a keyframe every 3 s, plus Opus-like
    /// audio at 50 packets/s.
    fn default() -> Self {
        Traffic {
            video: true,
            audio: true,
            video_bps: 1_500_000,
            fps: 30,
            keyframe_interval: Duration::from_secs(3),
            keyframe_ratio: 5,
            audio_pps: 50,
            audio_bytes: 80,
        }
    }
}

impl Traffic {
    /// Frames between keyframes (at least 1).
    fn gop(&self) -> u64 {
        (self.keyframe_interval.as_secs_f64() * self.fps as f64)
            .round()
            .max(1.0) as u64
    }

    /// Delta and key frame sizes that average to `video_bps`.
    pub fn frame_sizes(&self) -> (usize, usize) {
        let per_frame = self.video_bps as f64 / 8.0 / self.fps.max(1) as f64;
        let gop = self.gop() as f64;
        let r = self.keyframe_ratio.max(1) as f64;
        let delta = per_frame * gop / (gop - 1.0 + r);
        let delta = (delta as usize).max(HEADER_LEN + VP8_DELTA_PREFIX.len());
        (delta, delta * self.keyframe_ratio.max(1) as usize)
    }
}

/// A participant inside a [`MediaLoop`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SlotId(pub u32);

/// What a slot needs to start.
#[derive(Debug, Clone, Copy)]
pub struct SlotSpec {
    /// Our participant id in the consultation (from `joined`/`admitted`); it goes into
    /// the synthetic frame header so receivers can tell publishers apart.
    pub you: u64,
    /// What to publish.
    pub traffic: Traffic,
}

/// Counters and measurements of a loop since the last reset.
#[derive(Debug, Clone, Default)]
pub struct LoopStats {
    /// Frames sent, audio and video.
    pub audio_frames_sent: u64,
    /// Video frames sent.
    pub video_frames_sent: u64,
    /// Sealed bytes handed to the media sessions.
    pub bytes_sent: u64,
    /// Frames received and opened, audio.
    pub audio_frames_received: u64,
    /// Video frames received and opened.
    pub video_frames_received: u64,
    /// Sealed bytes received.
    pub bytes_received: u64,
    /// Frames expected from the sequence numbers seen (per stream, since the reset).
    pub frames_expected: u64,
    /// Audio frames expected (one packet each: this is packet loss).
    pub audio_expected: u64,
    /// Frames that arrived before the epoch key that opens them was installed (a commit
    /// still on its way through signaling), or after it was retired (not counted as
    /// loss).
    pub before_key: u64,
    /// Frames that failed to open (forged, wrong key): should stay 0.
    pub open_failures: u64,
    /// Frames the replay window refused: a copy delivered twice (a late retransmission)
    /// or far out of order. Not a forgery; counted apart.
    pub replayed: u64,
    /// Latency histogram, `LAT_STEP_US` buckets (all frames).
    latency: Vec<u32>,
    /// Audio-only latency histogram (one packet per frame).
    latency_audio: Vec<u32>,
    /// Mean RFC 3550 interarrival jitter over audio streams, microseconds.
    pub jitter_us: f64,
    /// Datagrams the loop failed to send (socket buffer full).
    pub send_errors: u64,
}

impl LoopStats {
    fn new_hist() -> Vec<u32> {
        vec![0; LAT_BUCKETS + 1]
    }

    /// Merges another loop's numbers.
    pub fn merge(&mut self, o: &LoopStats) {
        let j_weight = |s: &LoopStats| s.audio_frames_received.max(1) as f64;
        let total_w = j_weight(self) + j_weight(o);
        self.jitter_us = (self.jitter_us * j_weight(self) + o.jitter_us * j_weight(o)) / total_w;
        self.audio_frames_sent += o.audio_frames_sent;
        self.video_frames_sent += o.video_frames_sent;
        self.bytes_sent += o.bytes_sent;
        self.audio_frames_received += o.audio_frames_received;
        self.video_frames_received += o.video_frames_received;
        self.bytes_received += o.bytes_received;
        self.frames_expected += o.frames_expected;
        self.audio_expected += o.audio_expected;
        self.before_key += o.before_key;
        self.open_failures += o.open_failures;
        self.replayed += o.replayed;
        self.send_errors += o.send_errors;
        for (h, oh) in [
            (&mut self.latency, &o.latency),
            (&mut self.latency_audio, &o.latency_audio),
        ] {
            if h.is_empty() {
                *h = Self::new_hist();
            }
            for (a, b) in h.iter_mut().zip(oh.iter()) {
                *a += b;
            }
        }
    }

    /// Frames received.
    pub fn frames_received(&self) -> u64 {
        self.audio_frames_received + self.video_frames_received
    }

    /// Fraction of expected frames that never arrived (audio and video).
    pub fn frame_loss(&self) -> f64 {
        let got = self.frames_received();
        if self.frames_expected == 0 {
            return 0.0;
        }
        self.frames_expected.saturating_sub(got) as f64 / self.frames_expected as f64
    }

    /// Fraction of audio packets that never arrived.
    pub fn audio_loss(&self) -> f64 {
        if self.audio_expected == 0 {
            return 0.0;
        }
        self.audio_expected
            .saturating_sub(self.audio_frames_received) as f64
            / self.audio_expected as f64
    }

    /// Latency quantile over all frames, microseconds (`q` in 0..=1).
    pub fn latency_us(&self, q: f64) -> Option<u64> {
        quantile(&self.latency, q)
    }

    /// Latency quantile over audio packets, microseconds.
    pub fn audio_latency_us(&self, q: f64) -> Option<u64> {
        quantile(&self.latency_audio, q)
    }
}

fn quantile(h: &[u32], q: f64) -> Option<u64> {
    let total: u64 = h.iter().map(|&c| c as u64).sum();
    if total == 0 {
        return None;
    }
    let want = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut acc = 0u64;
    for (i, &c) in h.iter().enumerate() {
        acc += c as u64;
        if acc >= want {
            return Some((i as u64 + 1) * LAT_STEP_US);
        }
    }
    Some(h.len() as u64 * LAT_STEP_US)
}

fn record(h: &mut [u32], ns: u64) {
    let i = ((ns / 1000) / LAT_STEP_US) as usize;
    let i = i.min(h.len() - 1);
    h[i] = h[i].saturating_add(1);
}

/// State of one slot, for callers waiting on setup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotStatus {
    /// ICE and DTLS are up.
    pub connected: bool,
    /// Other members of the MLS group at the installed epoch (whose frames our keys
    /// open, and who open ours).
    pub keyed_peers: usize,
    /// Frames received and opened so far (since creation).
    pub frames_opened: u64,
    /// The session died.
    pub dead: bool,
    /// The MLS epoch our frames are sealed under, once keyed.
    pub epoch: Option<u64>,
    /// The KID our frames are sealed under now (our leaf and the epoch's low bits).
    pub sender_kid: Option<u64>,
    /// Sending is on (keyed, and not held back by a key warning).
    pub sending: bool,
    /// Keyframe requests (PLI) this slot sent because a video track's frames came
    /// under a new key (a new epoch, or a new sender).
    pub keyframes_requested: u64,
}

/// A sealed frame as this slot received it from the SFU (see [`MediaLoop::record`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedFrame {
    /// Audio or video.
    pub kind: Kind,
    /// The media stream id of the track (`confide-<participant>`).
    pub stream_id: String,
    /// The frame exactly as it arrived: clear prefix, SFrame header, ciphertext, tag.
    pub sealed: Vec<u8>,
}

/// The key of a new MLS epoch, for [`MediaLoop::install_epoch`].
#[derive(Debug)]
pub struct EpochKeys {
    /// The epoch's SFrame base key.
    pub secret: EpochSecret,
    /// Our leaf index in the group at this epoch.
    pub own_leaf: u32,
    /// Other members at this epoch.
    pub peers: usize,
    /// A new group replaces the old one (epochs start again): forget every old key.
    pub new_group: bool,
    /// Send under this epoch now (`false` while a key warning holds us back).
    pub send: bool,
}

type Reply<T> = oneshot::Sender<Result<T, DriverError>>;

enum Cmd {
    Create(SlotSpec, Reply<(SlotId, String)>),
    Answer(SlotId, String, Reply<()>),
    Offer(SlotId, String, Reply<String>),
    InstallEpoch(SlotId, EpochKeys, Reply<()>),
    Sending(SlotId, bool, Reply<()>),
    DropKeys(SlotId, Reply<()>),
    Record(SlotId, bool, Reply<()>),
    Recorded(SlotId, Reply<Vec<RecordedFrame>>),
    Status(SlotId, Reply<SlotStatus>),
    Remove(SlotId),
    Stats(bool, oneshot::Sender<LoopStats>),
}

impl Slot {
    fn install(&mut self, keys: EpochKeys) -> Result<(), DriverError> {
        if keys.new_group {
            self.opener.reset();
        }
        let enc = GroupFrameEncryptor::new(SUITE, &keys.secret, keys.own_leaf)?;
        self.opener.install(keys.secret)?;
        self.sealer = Some(enc);
        self.sending = keys.send;
        self.keyed = keys.peers;
        Ok(())
    }
}

/// Handle to a media loop thread. Dropping it stops the thread.
#[derive(Debug)]
pub struct MediaLoop {
    tx: std_mpsc::Sender<Cmd>,
    wake: UdpSocket,
    thread: Option<JoinHandle<()>>,
}

impl Drop for MediaLoop {
    fn drop(&mut self) {
        // Closing the channel stops the loop at its next turn.
        let (tx, _) = std_mpsc::channel();
        drop(std::mem::replace(&mut self.tx, tx));
        let _ = self.wake.send(&[0]);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl MediaLoop {
    /// Starts a loop thread whose participants bind UDP sockets on `bind_ip`.
    pub fn start(name: &str, bind_ip: IpAddr) -> Result<Self, DriverError> {
        let (tx, rx) = std_mpsc::channel();
        let wake_rx = UdpSocket::bind((bind_ip, 0))?;
        wake_rx.set_nonblocking(true)?;
        let wake = UdpSocket::bind((bind_ip, 0))?;
        wake.connect(wake_rx.local_addr()?)?;
        wake.set_nonblocking(true)?;
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(io::Error::from)?;
        epoll::add(
            &ep,
            &wake_rx,
            epoll::EventData::new_u64(u64::MAX),
            epoll::EventFlags::IN,
        )
        .map_err(io::Error::from)?;
        let mut w = Worker {
            rx,
            wake: wake_rx,
            ep,
            bind_ip,
            slots: HashMap::new(),
            next_slot: 0,
            stats: LoopStats {
                latency: LoopStats::new_hist(),
                latency_audio: LoopStats::new_hist(),
                ..Default::default()
            },
            plain: Vec::with_capacity(256 * 1024),
            sealed: Vec::with_capacity(256 * 1024),
            opened: Vec::with_capacity(256 * 1024),
            recv_buf: vec![0u8; 2048],
            ids: Vec::with_capacity(1024),
            ready: Vec::with_capacity(256),
        };
        let _ = epoch();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || w.run())?;
        Ok(MediaLoop {
            tx,
            wake,
            thread: Some(thread),
        })
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Cmd) -> Result<T, DriverError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).map_err(|_| DriverError::Stopped)?;
        let _ = self.wake.send(&[0]);
        rx.await.map_err(|_| DriverError::Stopped)?
    }

    fn cast(&self, cmd: Cmd) {
        if self.tx.send(cmd).is_ok() {
            let _ = self.wake.send(&[0]);
        }
    }

    /// Creates a participant: binds its socket and makes its first SDP offer. Returns
    /// the slot and the offer. It sends no frame before [`MediaLoop::install_epoch`].
    pub async fn create(&self, spec: SlotSpec) -> Result<(SlotId, String), DriverError> {
        self.call(|r| Cmd::Create(spec, r)).await
    }

    /// The SFU's answer to our offer.
    pub async fn answer(&self, slot: SlotId, sdp: String) -> Result<(), DriverError> {
        self.call(|r| Cmd::Answer(slot, sdp, r)).await
    }

    /// An SFU renegotiation offer; returns our answer.
    pub async fn offer(&self, slot: SlotId, sdp: String) -> Result<String, DriverError> {
        self.call(|r| Cmd::Offer(slot, sdp, r)).await
    }

    /// The key of a new MLS epoch: our frames are sealed under it from now on, and the
    /// decryptor keeps it with the previous epoch (frames in flight).
    pub async fn install_epoch(&self, slot: SlotId, keys: EpochKeys) -> Result<(), DriverError> {
        self.call(|r| Cmd::InstallEpoch(slot, keys, r)).await
    }

    /// Holds our media back (`false`: a member's key waits for the user) or lets it go
    /// again (`true`). Receiving goes on.
    pub async fn set_sending(&self, slot: SlotId, on: bool) -> Result<(), DriverError> {
        self.call(|r| Cmd::Sending(slot, on, r)).await
    }

    /// We left the group (removed, or the consultation is over for us): forget every
    /// frame key; nothing is sent or opened from now on.
    pub async fn drop_keys(&self, slot: SlotId) -> Result<(), DriverError> {
        self.call(|r| Cmd::DropKeys(slot, r)).await
    }

    /// Starts (`true`) or stops recording the sealed frames this slot receives, up to
    /// [`MAX_RECORDED`]: what the SFU forwarded to this participant, ciphertext only.
    /// Tests use it to try every forwarded frame with keys a ghost holds.
    pub async fn record(&self, slot: SlotId, on: bool) -> Result<(), DriverError> {
        self.call(|r| Cmd::Record(slot, on, r)).await
    }

    /// Takes the frames recorded so far (recording goes on if it was on).
    pub async fn recorded(&self, slot: SlotId) -> Result<Vec<RecordedFrame>, DriverError> {
        self.call(|r| Cmd::Recorded(slot, r)).await
    }

    /// Where the slot stands.
    pub async fn status(&self, slot: SlotId) -> Result<SlotStatus, DriverError> {
        self.call(|r| Cmd::Status(slot, r)).await
    }

    /// Stops and drops a participant.
    pub fn remove(&self, slot: SlotId) {
        self.cast(Cmd::Remove(slot));
    }

    /// The loop's numbers; `reset` starts a new measurement window.
    pub async fn stats(&self, reset: bool) -> Result<LoopStats, DriverError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Stats(reset, tx))
            .map_err(|_| DriverError::Stopped)?;
        let _ = self.wake.send(&[0]);
        rx.await.map_err(|_| DriverError::Stopped)
    }
}

/// What a receiver tracks per incoming stream (publisher, kind).
struct RxStream {
    publisher: u64,
    kind: Kind,
    first: Option<u64>,
    max: u64,
    received: u64,
    /// RFC 3550 jitter state, nanoseconds.
    last_transit: Option<i64>,
    jitter_ns: f64,
}

struct Slot {
    socket: UdpSocket,
    local: SocketAddr,
    client: MediaClient,
    sealer: Option<GroupFrameEncryptor>,
    opener: GroupFrameDecryptor,
    sending: bool,
    recording: Option<Vec<RecordedFrame>>,
    you: u64,
    traffic: Traffic,
    next_video: Instant,
    next_audio: Instant,
    video_seq: u64,
    audio_seq: u64,
    rx: Vec<RxStream>,
    keyed: usize,
    opened: u64,
    /// Per incoming video track (mid): the (epoch, sender leaf) key its last opened
    /// frame came under. A frame under another key asks the sender for a keyframe: the
    /// receiver's decoder may have dropped the frames in between, and the sender's next
    /// keyframe may be seconds away.
    video_keys: HashMap<String, (u64, u32)>,
    /// Keyframe requests sent because a new key came into use on a video track.
    keyframes_requested: u64,
}

struct Worker {
    rx: std_mpsc::Receiver<Cmd>,
    wake: UdpSocket,
    ep: rustix::fd::OwnedFd,
    bind_ip: IpAddr,
    slots: HashMap<u32, Slot>,
    next_slot: u32,
    stats: LoopStats,
    plain: Vec<u8>,
    sealed: Vec<u8>,
    opened: Vec<u8>,
    recv_buf: Vec<u8>,
    ids: Vec<u32>,
    ready: Vec<u64>,
}

/// How many periodic sends (at `rate` per second) are due by `now`; advances `next`.
/// A sender far behind skips ahead instead of bursting.
fn due(next: &mut Instant, rate: u32, now: Instant) -> u32 {
    if rate == 0 {
        return 0;
    }
    let period = Duration::from_secs(1) / rate;
    if now.saturating_duration_since(*next) > MAX_LAG {
        *next = now;
    }
    let mut n = 0;
    while *next <= now {
        *next += period;
        n += 1;
    }
    n
}

impl Worker {
    fn run(&mut self) {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(256);
        loop {
            if !self.drain_commands() {
                return;
            }
            let now = Instant::now();
            let mut next = now + MAX_WAIT;
            // Scratch vectors are reused across turns (no allocation per turn).
            let mut ids = std::mem::take(&mut self.ids);
            ids.clear();
            ids.extend(self.slots.keys().copied());
            for id in &ids {
                if let Some(t) = self.service(*id, now) {
                    next = next.min(t);
                }
            }
            self.ids = ids;
            let wait = next.saturating_duration_since(Instant::now());
            let ts = Timespec {
                tv_sec: wait.as_secs() as _,
                tv_nsec: wait.subsec_nanos() as _,
            };
            events.clear();
            if epoll::wait(
                &self.ep,
                rustix::buffer::spare_capacity(&mut events),
                Some(&ts),
            )
            .is_err()
            {
                continue;
            }
            let mut ready = std::mem::take(&mut self.ready);
            ready.clear();
            ready.extend(events.iter().map(|e| e.data.u64()));
            for &key in &ready {
                if key == u64::MAX {
                    let mut b = [0u8; 16];
                    while self.wake.recv(&mut b).is_ok() {}
                    continue;
                }
                self.receive(key as u32);
            }
            self.ready = ready;
        }
    }

    /// Returns `false` when the handle is gone.
    fn drain_commands(&mut self) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(cmd) => self.command(cmd),
                Err(std_mpsc::TryRecvError::Empty) => return true,
                Err(std_mpsc::TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn command(&mut self, cmd: Cmd) {
        let now = Instant::now();
        match cmd {
            Cmd::Create(spec, r) => {
                let _ = r.send(self.create(spec, now));
            }
            Cmd::Answer(id, sdp, r) => {
                let res = match self.slots.get_mut(&id.0) {
                    Some(s) => s.client.handle_answer(now, &sdp).map_err(DriverError::from),
                    None => Err(DriverError::UnknownSlot),
                };
                let _ = r.send(res);
                self.flush(id.0);
            }
            Cmd::Offer(id, sdp, r) => {
                let res = match self.slots.get_mut(&id.0) {
                    Some(s) => s.client.handle_offer(now, &sdp).map_err(DriverError::from),
                    None => Err(DriverError::UnknownSlot),
                };
                let _ = r.send(res);
                self.flush(id.0);
            }
            Cmd::InstallEpoch(id, keys, r) => {
                let res = match self.slots.get_mut(&id.0) {
                    Some(s) => s.install(keys),
                    None => Err(DriverError::UnknownSlot),
                };
                let _ = r.send(res);
            }
            Cmd::Sending(id, on, r) => {
                let res = match self.slots.get_mut(&id.0) {
                    Some(s) => {
                        s.sending = on && s.sealer.is_some();
                        Ok(())
                    }
                    None => Err(DriverError::UnknownSlot),
                };
                let _ = r.send(res);
            }
            Cmd::DropKeys(id, r) => {
                let res = match self.slots.get_mut(&id.0) {
                    Some(s) => {
                        s.sealer = None;
                        s.sending = false;
                        s.keyed = 0;
                        s.opener.reset();
                        Ok(())
                    }
                    None => Err(DriverError::UnknownSlot),
                };
                let _ = r.send(res);
            }
            Cmd::Record(id, on, r) => {
                let res = match self.slots.get_mut(&id.0) {
                    Some(s) => {
                        match (on, s.recording.is_some()) {
                            (true, false) => s.recording = Some(Vec::new()),
                            (false, _) => s.recording = None,
                            (true, true) => {}
                        }
                        Ok(())
                    }
                    None => Err(DriverError::UnknownSlot),
                };
                let _ = r.send(res);
            }
            Cmd::Recorded(id, r) => {
                let res = match self.slots.get_mut(&id.0) {
                    Some(s) => Ok(s.recording.as_mut().map(std::mem::take).unwrap_or_default()),
                    None => Err(DriverError::UnknownSlot),
                };
                let _ = r.send(res);
            }
            Cmd::Status(id, r) => {
                let res = self
                    .slots
                    .get(&id.0)
                    .map(|s| SlotStatus {
                        connected: s.client.is_connected(),
                        keyed_peers: s.keyed,
                        frames_opened: s.opened,
                        dead: !s.client.is_alive(),
                        epoch: s.sealer.as_ref().map(GroupFrameEncryptor::epoch),
                        sender_kid: s.sealer.as_ref().map(GroupFrameEncryptor::kid),
                        sending: s.sending,
                        keyframes_requested: s.keyframes_requested,
                    })
                    .ok_or(DriverError::UnknownSlot);
                let _ = r.send(res);
            }
            Cmd::Remove(id) => {
                if let Some(s) = self.slots.remove(&id.0) {
                    let _ = epoll::delete(&self.ep, &s.socket);
                }
            }
            Cmd::Stats(reset, r) => {
                let mut s = self.stats.clone();
                s.jitter_us = self.jitter_us();
                let _ = r.send(s);
                if reset {
                    self.reset_stats();
                }
            }
        }
    }

    fn jitter_us(&self) -> f64 {
        let (mut sum, mut n) = (0.0, 0u32);
        for s in self.slots.values() {
            for r in s.rx.iter().filter(|r| r.kind == Kind::Audio) {
                sum += r.jitter_ns / 1000.0;
                n += 1;
            }
        }
        if n == 0 { 0.0 } else { sum / n as f64 }
    }

    fn reset_stats(&mut self) {
        let mut fresh = LoopStats {
            latency: std::mem::take(&mut self.stats.latency),
            latency_audio: std::mem::take(&mut self.stats.latency_audio),
            ..Default::default()
        };
        fresh.latency.iter_mut().for_each(|c| *c = 0);
        fresh.latency_audio.iter_mut().for_each(|c| *c = 0);
        self.stats = fresh;
        for s in self.slots.values_mut() {
            for r in &mut s.rx {
                r.first = None;
                r.received = 0;
            }
        }
    }

    fn create(&mut self, spec: SlotSpec, now: Instant) -> Result<(SlotId, String), DriverError> {
        let socket = UdpSocket::bind((self.bind_ip, 0))?;
        socket.set_nonblocking(true)?;
        let local = socket.local_addr()?;
        let mut client = MediaClient::new(
            local,
            ClientConfig {
                audio: spec.traffic.audio,
                video: spec.traffic.video,
            },
            now,
        );
        let offer = client.create_offer()?;
        let id = self.next_slot;
        self.next_slot += 1;
        epoll::add(
            &self.ep,
            &socket,
            epoll::EventData::new_u64(id as u64),
            epoll::EventFlags::IN,
        )
        .map_err(io::Error::from)?;
        // Stagger senders so a loop's participants do not all send at the same instant.
        let phase = Duration::from_micros((id as u64 * 7_919) % 33_000);
        self.slots.insert(
            id,
            Slot {
                socket,
                local,
                client,
                sealer: None,
                opener: GroupFrameDecryptor::new(SUITE),
                sending: false,
                recording: None,
                you: spec.you,
                traffic: spec.traffic,
                next_video: now + phase,
                next_audio: now + phase,
                video_seq: 0,
                audio_seq: 0,
                rx: Vec::new(),
                video_keys: HashMap::new(),
                keyframes_requested: 0,
                keyed: 0,
                opened: 0,
            },
        );
        Ok((SlotId(id), offer))
    }

    /// Timers, sending, transmits and events of one slot. Returns its next deadline.
    fn service(&mut self, id: u32, now: Instant) -> Option<Instant> {
        let (n_audio, n_video) = {
            let s = self.slots.get_mut(&id)?;
            if s.client.poll_timeout() <= now {
                s.client.handle_timeout(now);
            }
            if s.client.is_connected() {
                let t = s.traffic;
                let a = if t.audio {
                    due(&mut s.next_audio, t.audio_pps, now)
                } else {
                    0
                };
                let v = if t.video {
                    due(&mut s.next_video, t.fps, now)
                } else {
                    0
                };
                (a, v)
            } else {
                (0, 0)
            }
        };
        for _ in 0..n_audio {
            self.send_frame(id, Kind::Audio, now);
        }
        for _ in 0..n_video {
            self.send_frame(id, Kind::Video, now);
        }
        self.flush(id);
        self.events(id);
        let s = self.slots.get(&id)?;
        let mut next = s.client.poll_timeout();
        if s.client.is_connected() {
            if s.traffic.audio && s.traffic.audio_pps > 0 {
                next = next.min(s.next_audio);
            }
            if s.traffic.video && s.traffic.fps > 0 {
                next = next.min(s.next_video);
            }
        }
        Some(next)
    }

    fn send_frame(&mut self, id: u32, kind: Kind, now: Instant) {
        let Some(s) = self.slots.get_mut(&id) else {
            return;
        };
        let plain = &mut self.plain;
        plain.clear();
        let seq = match kind {
            Kind::Audio => {
                s.audio_seq += 1;
                plain.push(OPUS_TOC);
                s.audio_seq
            }
            Kind::Video => {
                s.video_seq += 1;
                let key = (s.video_seq - 1) % s.traffic.gop() == 0;
                plain.extend_from_slice(if key {
                    &VP8_KEY_PREFIX
                } else {
                    &VP8_DELTA_PREFIX
                });
                s.video_seq
            }
        };
        plain.extend_from_slice(&MAGIC.to_be_bytes());
        plain.extend_from_slice(&s.you.to_be_bytes());
        plain.extend_from_slice(&seq.to_be_bytes());
        plain.extend_from_slice(&since_epoch_ns(now).to_be_bytes());
        let size = match kind {
            Kind::Audio => s.traffic.audio_bytes,
            Kind::Video => {
                let (delta, key) = s.traffic.frame_sizes();
                // A little variation, as an encoder makes.
                let base = if plain[0] & 1 == 0 { key } else { delta };
                base - base / 10 + (seq as usize * 7_919) % (base / 5).max(1)
            }
        };
        if plain.len() < size {
            plain.resize(size, 0x55);
        }
        let Some(sealer) = s.sealer.as_mut().filter(|_| s.sending) else {
            return;
        };
        if sealer
            .encrypt(codec(kind), plain, &mut self.sealed)
            .is_err()
        {
            return;
        }
        if s.client.send_frame(now, kind, &self.sealed).is_ok() {
            self.stats.bytes_sent += self.sealed.len() as u64;
            match kind {
                Kind::Audio => self.stats.audio_frames_sent += 1,
                Kind::Video => self.stats.video_frames_sent += 1,
            }
        }
    }

    fn flush(&mut self, id: u32) {
        let Some(s) = self.slots.get_mut(&id) else {
            return;
        };
        while let Some((dst, data)) = s.client.poll_transmit() {
            if s.socket.send_to(&data, dst).is_err() {
                self.stats.send_errors += 1;
            }
        }
    }

    fn receive(&mut self, id: u32) {
        loop {
            let Some(s) = self.slots.get_mut(&id) else {
                return;
            };
            let (n, src) = match s.socket.recv_from(&mut self.recv_buf) {
                Ok(x) => x,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            let now = Instant::now();
            s.client
                .handle_receive(now, src, s.local, &self.recv_buf[..n]);
            self.flush(id);
            self.events(id);
        }
    }

    fn events(&mut self, id: u32) {
        let Some(s) = self.slots.get_mut(&id) else {
            return;
        };
        while let Some(ev) = s.client.poll_event() {
            let ClientEvent::Frame {
                mid,
                kind,
                stream_id,
                data,
                ..
            } = ev
            else {
                continue;
            };
            let now_ns = since_epoch_ns(Instant::now());
            self.stats.bytes_received += data.len() as u64;
            if let Some(rec) = s.recording.as_mut()
                && rec.len() < MAX_RECORDED
            {
                rec.push(RecordedFrame {
                    kind,
                    stream_id: stream_id.clone(),
                    sealed: data.clone(),
                });
            }
            match s.opener.decrypt(codec(kind), &data, &mut self.opened) {
                Ok(Some(info)) => {
                    let key = (info.epoch, info.sender_index);
                    if matches!(kind, Kind::Video) && s.video_keys.get(&mid) != Some(&key) {
                        s.video_keys.insert(mid.clone(), key);
                        if s.client.request_keyframe(Instant::now(), &mid) {
                            s.keyframes_requested += 1;
                        }
                    }
                }
                // Empty frames carry nothing to measure.
                Ok(None) => continue,
                // No key for this epoch yet (media can beat the commit through
                // signaling), or an epoch already retired.
                Err(
                    confide_e2ee::Error::UnknownKey { .. } | confide_e2ee::Error::StaleKey { .. },
                ) => {
                    self.stats.before_key += 1;
                    continue;
                }
                Err(confide_e2ee::Error::Replay { .. }) => {
                    self.stats.replayed += 1;
                    continue;
                }
                Err(_) => {
                    self.stats.open_failures += 1;
                    continue;
                }
            }
            s.opened += 1;
            let off = codec(kind).clear_prefix_len(&self.opened);
            let Some(h) = self.opened.get(off..off + HEADER_LEN) else {
                continue;
            };
            let word = |r: std::ops::Range<usize>| {
                h.get(r)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or(0)
            };
            if h[..4] != MAGIC.to_be_bytes() {
                continue;
            }
            let (publisher, seq, sent_ns) = (word(4..12), word(12..20), word(20..28));
            let lat = now_ns.saturating_sub(sent_ns);
            record(&mut self.stats.latency, lat);
            match kind {
                Kind::Audio => {
                    self.stats.audio_frames_received += 1;
                    record(&mut self.stats.latency_audio, lat);
                }
                Kind::Video => self.stats.video_frames_received += 1,
            }
            let i = match s
                .rx
                .iter()
                .position(|r| r.publisher == publisher && r.kind == kind)
            {
                Some(i) => i,
                None => {
                    s.rx.push(RxStream {
                        publisher,
                        kind,
                        first: None,
                        max: 0,
                        received: 0,
                        last_transit: None,
                        jitter_ns: 0.0,
                    });
                    s.rx.len() - 1
                }
            };
            let r = &mut s.rx[i];
            let transit = now_ns as i64 - sent_ns as i64;
            if let Some(prev) = r.last_transit {
                let d = (transit - prev).abs() as f64;
                r.jitter_ns += (d - r.jitter_ns) / 16.0;
            }
            r.last_transit = Some(transit);
            let before = r.first.map(|f| r.max - f + 1).unwrap_or(0);
            match r.first {
                None => {
                    r.first = Some(seq);
                    r.max = seq;
                }
                Some(f) if seq < f => continue,
                Some(_) => r.max = r.max.max(seq),
            }
            r.received += 1;
            let after = r.first.map(|f| r.max - f + 1).unwrap_or(0);
            self.stats.frames_expected += after - before;
            if kind == Kind::Audio {
                self.stats.audio_expected += after - before;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_traffic_matches_the_performance_model() {
        let t = Traffic::default();
        let (delta, key) = t.frame_sizes();
        let gop = t.gop();
        assert_eq!(gop, 90);
        let per_sec = (delta as u64 * (gop - 1) + key as u64) * 8 * t.fps as u64 / gop;
        assert!((1_400_000..=1_600_000).contains(&per_sec), "{per_sec}");
    }

    #[test]
    fn quantiles_of_the_histogram() {
        let mut h = LoopStats::new_hist();
        for us in [10u64, 20, 30, 40, 1000] {
            record(&mut h, us * 1000);
        }
        assert_eq!(quantile(&h, 0.5), Some(40));
        assert_eq!(quantile(&h, 1.0), Some(1010));
        assert_eq!(quantile(&[0, 0], 0.5), None);
    }
}
