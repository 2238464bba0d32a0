//! The I/O edge: worker threads, their UDP sockets, the clock, and the handle.
//!
//! Each worker is one OS thread that owns one UDP socket (one port, ICE-lite host
//! candidate), one [`SfuCore`] and every room pinned to it (`room id % workers`), so
//! forwarding is a direct call with no lock or channel per packet. A turn of the loop:
//!
//! 1. handle control messages with `try_recv` (bounded channel, one per worker), at
//!    most [`MAX_CONTROL_PER_TURN`] of them and [`CONTROL_BUDGET`] of time: an SDP
//!    offer is parsed and every member of its room renegotiated here, on the thread
//!    that forwards every room of the worker, so a flood of them must not hold the
//!    forwarding back. The rest stay queued, in order, and the next control work waits
//!    three times as long as this turn's took ([`CONTROL_SPACING`]), so a backlog of
//!    offers gets at most a quarter of the worker's time;
//! 2. wait for the socket or the wake socket until the core's next deadline;
//! 3. receive what the socket has ready, a bounded number of `recvmmsg` batches
//!    (quinn-udp), into the core, then send what they produced with `sendmmsg`: every
//!    leg the turn touched is settled once, however many batches it spanned;
//! 4. fire due timers and send what they produced;
//! 5. hand events to the owner and publish counters.
//!
//! Control calls wake a sleeping worker through a loopback "wake" socket, so an idle
//! worker sleeps until its next timer instead of polling.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use quinn_udp::{RecvMeta, UdpSocketState};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::addr::SocketAddrArg;
use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny};
use tokio::sync::{mpsc, oneshot};

use crate::core::{CoreConfig, ParsedAnswer, ParsedOffer, SfuCore, Transmit};
use crate::stats::{ForwardLatency, SfuStats, SharedStats};
use crate::{ParticipantId, RoomId, SfuError, SfuEvent};

/// Datagrams per `recvmmsg`/`sendmmsg` call.
const BATCH: usize = quinn_udp::BATCH_SIZE;
/// Each receive slot is large enough for a GRO-coalesced burst.
const RECV_SLOT: usize = 64 * 1024;
/// Receive batches per loop turn, so timers and control messages are never starved.
const MAX_RECV_BATCHES_PER_TURN: usize = 16;
/// Longest sleep when nothing is scheduled (the core always has a sweep timer anyway).
const MAX_WAIT: Duration = Duration::from_millis(250);
/// Socket buffer sizes requested from the kernel (it may cap them).
const SOCKET_BUFFER: usize = 4 * 1024 * 1024;
/// Control messages handled per loop turn at most.
pub const MAX_CONTROL_PER_TURN: usize = 16;
/// Control work per loop turn: once a turn has spent this long on control messages, the
/// rest wait for the next turn (one message always runs, so the queue moves).
pub const CONTROL_BUDGET: Duration = Duration::from_millis(1);
/// After a turn spent `t` on control messages, the next control work waits `t` times
/// this (the worker forwards meanwhile): under a backlog of costly offers control work
/// takes at most a quarter of the worker's time. Cheap messages (microseconds) barely
/// wait.
pub const CONTROL_SPACING: u32 = 3;

/// Configuration of the whole media plane.
#[derive(Clone)]
pub struct SfuConfig {
    /// Number of worker threads (one socket each). Default: the number of cores.
    pub workers: usize,
    /// Address to bind the worker sockets to.
    pub bind_ip: IpAddr,
    /// Port of worker 0; worker `i` binds `port + i`. `0` picks ephemeral ports.
    pub port: u16,
    /// The address clients reach the workers at, advertised as the ICE host candidate.
    /// Required when `bind_ip` is unspecified (`0.0.0.0`).
    pub public_ip: Option<IpAddr>,
    /// Control messages queued per worker before callers wait (callers are never
    /// refused: a removal or a room closing waits for room, it is not dropped).
    pub control_capacity: usize,
    /// Events queued for the owner before workers hold them back.
    pub event_capacity: usize,
    /// Room capacity.
    pub max_participants: usize,
    /// A connected peer that sends nothing for this long is removed (event).
    pub peer_timeout: Duration,
    /// A peer that never connects within this long is removed (event).
    pub connect_timeout: Duration,
    /// Minimum time between keyframe requests to one publisher track.
    pub keyframe_throttle: Duration,
    /// Period of [`SfuEvent::Stats`]; `None` turns them off.
    pub stats_interval: Option<Duration>,
    /// Packet budget per peer per second (`0`: unlimited).
    pub max_packets_per_sec: u32,
    /// Initial bandwidth estimate per leg; `None` disables estimation and pacing.
    pub bwe_initial_bps: Option<u64>,
    /// Forwarding tap, for tests (feature `tap`).
    #[cfg(feature = "tap")]
    pub tap: Option<crate::tap::Tap>,
    /// Network impairment, for tests (feature `tap`).
    #[cfg(feature = "tap")]
    pub impair: Option<crate::tap::Impair>,
}

impl Default for SfuConfig {
    fn default() -> Self {
        let core = CoreConfig::new(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0));
        SfuConfig {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            bind_ip: Ipv4Addr::LOCALHOST.into(),
            port: 0,
            public_ip: None,
            control_capacity: 256,
            event_capacity: 4096,
            max_participants: core.max_participants,
            peer_timeout: core.peer_timeout,
            connect_timeout: core.connect_timeout,
            keyframe_throttle: core.keyframe_throttle,
            stats_interval: core.stats_interval,
            max_packets_per_sec: core.max_packets_per_sec,
            bwe_initial_bps: core.bwe_initial_bps,
            #[cfg(feature = "tap")]
            tap: None,
            #[cfg(feature = "tap")]
            impair: None,
        }
    }
}

impl std::fmt::Debug for SfuConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SfuConfig")
            .field("workers", &self.workers)
            .field("bind_ip", &self.bind_ip)
            .field("port", &self.port)
            .field("public_ip", &self.public_ip)
            .finish_non_exhaustive()
    }
}

impl SfuConfig {
    fn core_config(&self, candidate: SocketAddr) -> CoreConfig {
        let mut c = CoreConfig::new(candidate);
        c.max_participants = self.max_participants;
        c.peer_timeout = self.peer_timeout;
        c.connect_timeout = self.connect_timeout;
        c.keyframe_throttle = self.keyframe_throttle;
        c.stats_interval = self.stats_interval;
        c.max_packets_per_sec = self.max_packets_per_sec;
        c.bwe_initial_bps = self.bwe_initial_bps;
        #[cfg(feature = "tap")]
        {
            c.tap = self.tap.clone();
            c.impair = self.impair.clone();
        }
        c
    }
}

type Reply<T> = oneshot::Sender<Result<T, SfuError>>;

enum Control {
    OpenRoom(RoomId, Reply<()>),
    CloseRoom(RoomId, Reply<()>),
    Offer(RoomId, ParticipantId, ParsedOffer, Reply<String>),
    Answer(RoomId, ParticipantId, ParsedAnswer, Reply<()>),
    Candidate(RoomId, ParticipantId, String, Reply<()>),
    Remove(RoomId, ParticipantId, Reply<()>),
}

struct WorkerRef {
    control: mpsc::Sender<Control>,
    /// Connected to the worker's wake socket.
    wake: UdpSocket,
    stats: Arc<SharedStats>,
    addr: SocketAddr,
}

struct Inner {
    workers: Vec<WorkerRef>,
    /// Room capacity (the SDP caps scale with it).
    max_participants: usize,
    _threads: Vec<JoinHandle<()>>,
}

/// Talks to the SFU workers. Cheap to clone; dropping the last clone stops the workers.
#[derive(Clone)]
pub struct SfuHandle {
    inner: Arc<Inner>,
}

/// Entry point.
#[derive(Debug)]
pub struct Sfu;

impl Sfu {
    /// Binds one socket per worker, starts the workers and returns the handle and the
    /// event stream. Events are delivered in order per worker.
    pub fn start(config: SfuConfig) -> io::Result<(SfuHandle, mpsc::Receiver<SfuEvent>)> {
        if config.workers == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "workers must be > 0",
            ));
        }
        if config.bind_ip.is_unspecified() && config.public_ip.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "public_ip is required when binding an unspecified address",
            ));
        }
        let (events_tx, events_rx) = mpsc::channel(config.event_capacity.max(1));
        let mut workers = Vec::with_capacity(config.workers);
        let mut threads = Vec::with_capacity(config.workers);
        for i in 0..config.workers {
            let port = if config.port == 0 {
                0
            } else {
                config.port.checked_add(i as u16).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidInput, "port range overflows")
                })?
            };
            let socket = UdpSocket::bind(SocketAddr::new(config.bind_ip, port))?;
            socket.set_nonblocking(true)?;
            let state = UdpSocketState::new((&socket).into())?;
            // Larger buffers absorb fan-out bursts; the kernel may cap them, that is fine.
            let _ = state.set_send_buffer_size((&socket).into(), SOCKET_BUFFER);
            let _ = state.set_recv_buffer_size((&socket).into(), SOCKET_BUFFER);
            let local = socket.local_addr()?;
            let candidate = SocketAddr::new(config.public_ip.unwrap_or(local.ip()), local.port());
            let wake_rx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
            wake_rx.set_nonblocking(true)?;
            let wake_tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
            wake_tx.connect(wake_rx.local_addr()?)?;
            wake_tx.set_nonblocking(true)?;
            let (control_tx, control_rx) = mpsc::channel(config.control_capacity.max(1));
            let stats = Arc::new(SharedStats::default());
            let worker = Worker {
                socket,
                state,
                candidate,
                wake: wake_rx,
                control: control_rx,
                events: events_tx.clone(),
                held_events: VecDeque::new(),
                stats: stats.clone(),
                latency: ForwardLatency::default(),
                control_at: now(),
                core: SfuCore::new(config.core_config(candidate), now()),
            };
            let t = std::thread::Builder::new()
                .name(format!("sfu-worker-{i}"))
                .spawn(move || worker.run())?;
            threads.push(t);
            workers.push(WorkerRef {
                control: control_tx,
                wake: wake_tx,
                stats,
                addr: candidate,
            });
        }
        let handle = SfuHandle {
            inner: Arc::new(Inner {
                workers,
                max_participants: config.max_participants,
                _threads: threads,
            }),
        };
        Ok((handle, events_rx))
    }
}

impl SfuHandle {
    fn worker(&self, room: RoomId) -> &WorkerRef {
        let n = self.inner.workers.len() as u64;
        &self.inner.workers[(room.0 % n) as usize]
    }

    async fn call<T>(
        &self,
        room: RoomId,
        make: impl FnOnce(Reply<T>) -> Control,
    ) -> Result<T, SfuError> {
        let w = self.worker(room);
        let (tx, rx) = oneshot::channel();
        w.control
            .send(make(tx))
            .await
            .map_err(|_| SfuError::WorkerGone)?;
        // A lost wake-up only delays the call until the worker's next timer.
        let _ = w.wake.send(&[0]);
        rx.await.map_err(|_| SfuError::WorkerGone)?
    }

    /// Opens a consultation's media room on its worker.
    pub async fn open_room(&self, room: RoomId) -> Result<(), SfuError> {
        self.call(room, |r| Control::OpenRoom(room, r)).await
    }

    /// Closes the room: every participant's media stops at once.
    pub async fn close_room(&self, room: RoomId) -> Result<(), SfuError> {
        self.call(room, |r| Control::CloseRoom(room, r)).await
    }

    /// A participant's SDP offer (join, renegotiation, ICE restart). Returns the answer.
    pub async fn offer(
        &self,
        room: RoomId,
        participant: ParticipantId,
        sdp: String,
    ) -> Result<String, SfuError> {
        // Parsed here, on the caller's thread: the media worker only applies it.
        let parsed = ParsedOffer::new(&sdp, self.inner.max_participants);
        self.call(room, |r| Control::Offer(room, participant, parsed, r))
            .await
    }

    /// The participant's answer to an [`SfuEvent::Offer`].
    pub async fn answer(
        &self,
        room: RoomId,
        participant: ParticipantId,
        sdp: String,
    ) -> Result<(), SfuError> {
        let parsed = ParsedAnswer::new(&sdp, self.inner.max_participants);
        self.call(room, |r| Control::Answer(room, participant, parsed, r))
            .await
    }

    /// A trickled ICE candidate (`candidate:...`, with or without `a=`).
    pub async fn candidate(
        &self,
        room: RoomId,
        participant: ParticipantId,
        candidate: String,
    ) -> Result<(), SfuError> {
        self.call(room, |r| {
            Control::Candidate(room, participant, candidate, r)
        })
        .await
    }

    /// Removes a participant; its streams stop at once.
    pub async fn remove(&self, room: RoomId, participant: ParticipantId) -> Result<(), SfuError> {
        self.call(room, |r| Control::Remove(room, participant, r))
            .await
    }

    /// Counters of every worker.
    pub async fn stats(&self) -> SfuStats {
        self.stats_now()
    }

    /// Counters of every worker, without awaiting (they are published atomics).
    pub fn stats_now(&self) -> SfuStats {
        let mut forward_latency = ForwardLatency::default();
        for w in &self.inner.workers {
            w.stats.read_latency(&mut forward_latency);
        }
        SfuStats {
            workers: self.inner.workers.iter().map(|w| w.stats.read()).collect(),
            forward_latency,
        }
    }

    /// The address (ICE host candidate) of each worker.
    pub fn worker_addrs(&self) -> Vec<SocketAddr> {
        self.inner.workers.iter().map(|w| w.addr).collect()
    }

    /// The address (ICE host candidate) of the worker that owns `room`.
    pub fn room_addr(&self, room: RoomId) -> SocketAddr {
        self.worker(room).addr
    }
}

impl std::fmt::Debug for SfuHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SfuHandle")
            .field("workers", &self.inner.workers.len())
            .finish()
    }
}

#[expect(
    clippy::disallowed_methods,
    reason = "the edge is where the clock is read; the core gets `now` passed in"
)]
fn now() -> Instant {
    Instant::now()
}

struct Worker {
    socket: UdpSocket,
    state: UdpSocketState,
    /// The address the ICE agent knows as its host candidate (the advertised one), given
    /// as every packet's destination: the agent answers only checks sent to one of its
    /// candidates, and a socket bound to the wildcard or behind a 1:1 NAT has another
    /// address of its own.
    candidate: SocketAddr,
    wake: UdpSocket,
    control: mpsc::Receiver<Control>,
    events: mpsc::Sender<SfuEvent>,
    /// Events the owner's queue had no room for yet; delivered in order later.
    held_events: VecDeque<SfuEvent>,
    stats: Arc<SharedStats>,
    /// Receive-to-send time of forwarded packets (one clock read per batch).
    latency: ForwardLatency,
    /// Control messages are not taken before this (see [`CONTROL_SPACING`]).
    control_at: Instant,
    core: SfuCore,
}

impl Worker {
    fn run(mut self) {
        let mut recv_buf = vec![0u8; BATCH * RECV_SLOT];
        let mut metas = [RecvMeta::default(); BATCH];
        let mut out: Vec<Transmit> = Vec::with_capacity(BATCH * 4);
        let mut backlog = false;
        loop {
            let start = now();
            if start >= self.control_at {
                backlog = match self.drain_control() {
                    Some(backlog) => backlog,
                    None => return,
                };
                let spent = now().saturating_duration_since(start);
                self.control_at = now() + spent * CONTROL_SPACING;
            }
            self.flush(&mut out);
            let deadline = match self.core.poll_timeout() {
                // Control messages are waiting: come back for them when their time is.
                Some(t) if backlog => t.min(self.control_at),
                None if backlog => self.control_at,
                Some(t) => t,
                None => start + MAX_WAIT,
            };
            let wait = deadline.saturating_duration_since(now()).min(MAX_WAIT);
            if !wait.is_zero() && self.wait_readable(wait) {
                self.drain_wake();
                // A wake-up with nothing queued before means new control work.
                backlog = true;
            }
            // Every batch read before the next flush shares one settle of each peer it
            // touched (str0m's timeout pass and output polling cost per peer, not per
            // packet). Under light load the socket empties after one batch and the flush
            // follows at once; under heavy load the packets would have waited in the
            // socket buffer anyway.
            let first = now();
            let forwarded_before = self.forwarded();
            for _ in 0..MAX_RECV_BATCHES_PER_TURN {
                let n = {
                    let mut chunks = recv_buf.chunks_mut(RECV_SLOT);
                    let mut iovs: [IoSliceMut<'_>; BATCH] = std::array::from_fn(|_| {
                        // Invariant: recv_buf holds exactly BATCH slots.
                        IoSliceMut::new(chunks.next().expect("BATCH slots"))
                    });
                    match self
                        .state
                        .recv((&self.socket).into(), &mut iovs, &mut metas)
                    {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            tracing::debug!(error = %e, "recv failed");
                            break;
                        }
                    }
                };
                let t = now();
                for (i, meta) in metas.iter().enumerate().take(n) {
                    let slot = &recv_buf[i * RECV_SLOT..i * RECV_SLOT + meta.len];
                    let stride = meta.stride.max(1);
                    for seg in slot.chunks(stride) {
                        self.core.handle_receive(t, meta.addr, self.candidate, seg);
                    }
                }
                if n < BATCH {
                    break;
                }
            }
            self.flush(&mut out);
            let forwarded = self.forwarded() - forwarded_before;
            if forwarded > 0 {
                let dt = now().saturating_duration_since(first).as_nanos() as u64;
                self.latency.record(dt, forwarded);
            }
            let t = now();
            if self.core.poll_timeout().is_some_and(|d| d <= t) {
                self.core.handle_timeout(t);
            }
            self.flush(&mut out);
            self.stats.publish(self.core.stats());
            self.stats.publish_latency(&self.latency);
        }
    }

    /// RTP packets forwarded so far (for the latency weights).
    fn forwarded(&self) -> u64 {
        let s = self.core.stats();
        s.audio_packets_out + s.video_packets_out
    }

    /// Handles queued control messages, in order, within the turn's budget. Returns
    /// whether some are left for the next turn, or `None` when every handle is gone
    /// (shut down).
    fn drain_control(&mut self) -> Option<bool> {
        let start = now();
        let mut handled = 0;
        loop {
            if handled >= MAX_CONTROL_PER_TURN
                || (handled > 0 && now().saturating_duration_since(start) >= CONTROL_BUDGET)
            {
                return Some(!self.control.is_empty());
            }
            let msg = match self.control.try_recv() {
                Ok(m) => m,
                Err(mpsc::error::TryRecvError::Empty) => return Some(false),
                Err(mpsc::error::TryRecvError::Disconnected) => return None,
            };
            handled += 1;
            let t = now();
            let c = &mut self.core;
            // The caller may have given up waiting; a dropped reply is fine.
            match msg {
                Control::OpenRoom(room, r) => {
                    let _ = r.send(c.open_room(room));
                }
                Control::CloseRoom(room, r) => {
                    let _ = r.send(c.close_room(t, room));
                }
                Control::Offer(room, who, sdp, r) => {
                    let _ = r.send(c.offer_parsed(t, room, who, sdp));
                }
                Control::Answer(room, who, sdp, r) => {
                    let _ = r.send(c.answer_parsed(t, room, who, sdp));
                }
                Control::Candidate(room, who, cand, r) => {
                    let _ = r.send(c.candidate(t, room, who, &cand));
                }
                Control::Remove(room, who, r) => {
                    let _ = r.send(c.remove(t, room, who));
                }
            }
        }
    }

    fn wait_readable(&self, wait: Duration) -> bool {
        let ts = Timespec {
            tv_sec: wait.as_secs() as _,
            tv_nsec: wait.subsec_nanos() as _,
        };
        let mut fds = [
            PollFd::new(&self.socket, PollFlags::IN),
            PollFd::new(&self.wake, PollFlags::IN),
        ];
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(_) => !fds[1].revents().is_empty(),
            Err(_) => false,
        }
    }

    fn drain_wake(&self) {
        let mut b = [0u8; 16];
        while self.wake.recv(&mut b).is_ok() {}
    }

    /// Sends queued datagrams and hands events to the owner.
    fn flush(&mut self, out: &mut Vec<Transmit>) {
        while let Some(t) = self.core.poll_transmit() {
            out.push(t);
        }
        let mut sent = 0;
        while sent < out.len() {
            let end = (sent + BATCH).min(out.len());
            match send_batch(&self.socket, &out[sent..end]) {
                Ok(n) => {
                    let bytes: usize = out[sent..sent + n].iter().map(|t| t.contents.len()).sum();
                    self.core.count_sent(n as u64, bytes as u64);
                    sent += n.max(1);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Socket buffer full: wait briefly for room, then retry once.
                    let mut fds = [PollFd::new(&self.socket, PollFlags::OUT)];
                    let ts = Timespec {
                        tv_sec: 0,
                        tv_nsec: 5_000_000,
                    };
                    let _ = rustix::event::poll(&mut fds, Some(&ts));
                    match send_batch(&self.socket, &out[sent..end]) {
                        Ok(n) => sent += n.max(1),
                        // Drop the batch; RTP recovers via NACK/PLI.
                        Err(_) => sent = end,
                    }
                }
                // One bad destination (e.g. unreachable) must not block the others.
                Err(_) => sent += 1,
            }
        }
        out.clear();
        while let Some(ev) = self.core.poll_event() {
            self.held_events.push_back(ev);
        }
        while let Some(ev) = self.held_events.pop_front() {
            match self.events.try_send(ev) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(ev)) => {
                    self.held_events.push_front(ev);
                    break;
                }
                // Nobody listens any more; events are moot.
                Err(mpsc::error::TrySendError::Closed(_)) => self.held_events.clear(),
            }
        }
    }
}

/// One `sendmmsg` over up to [`BATCH`] datagrams with their own destinations: fan-out
/// goes to many peers, so this (not GSO, which needs one destination) is the batching
/// that helps.
fn send_batch(socket: &UdpSocket, batch: &[Transmit]) -> io::Result<usize> {
    let n = batch.len().min(BATCH);
    let addrs: [SocketAddrAny; BATCH] = std::array::from_fn(|i| {
        let t = batch.get(i).unwrap_or(&batch[0]);
        t.destination.as_any()
    });
    let iovs: [[IoSlice<'_>; 1]; BATCH] = std::array::from_fn(|i| {
        let t = batch.get(i).unwrap_or(&batch[0]);
        [IoSlice::new(&t.contents)]
    });
    let mut controls: [SendAncillaryBuffer<'_, '_, '_>; BATCH] =
        std::array::from_fn(|_| SendAncillaryBuffer::default());
    let mut parts = addrs.iter().zip(iovs.iter()).zip(controls.iter_mut());
    let mut msgs: [MMsgHdr<'_>; BATCH] = std::array::from_fn(|_| {
        // Invariant: the three arrays have BATCH entries each.
        let ((addr, iov), control) = parts.next().expect("BATCH entries");
        MMsgHdr::new_with_addr(addr, iov, control)
    });
    Ok(rustix::net::sendmmsg(
        socket,
        &mut msgs[..n],
        SendFlags::empty(),
    )?)
}
