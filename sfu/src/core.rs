//! `SfuCore`: the sans-IO media plane of one worker.
//!
//! Methods, by direction (quinn-proto naming):
//! - app commands: [`SfuCore::open_room`], [`SfuCore::close_room`], [`SfuCore::offer`],
//!   [`SfuCore::answer`], [`SfuCore::candidate`], [`SfuCore::remove`];
//! - input: [`SfuCore::handle_receive`] (one datagram) and [`SfuCore::handle_timeout`];
//! - output: [`SfuCore::poll_transmit`], [`SfuCore::poll_event`], [`SfuCore::poll_timeout`].
//!
//! After any command or input, drain `poll_transmit` and `poll_event`, then wait until
//! `poll_timeout` (or the next datagram/command). Feed a whole receive batch to
//! `handle_receive` before polling: the work of a batch is settled once, not per datagram.
//!
//! Inside, each participant is a `Peer` in a slab addressed by a `PeerHandle`; each
//! `Rtc` is driven with str0m's own shape: mutations, then `poll_output` until
//! `Output::Timeout`. Forwarding a packet is a mutation of every subscriber's `Rtc`.
//!
//! The hot path defers that drain. `handle_receive` polls the publisher only until its
//! RTP packet comes out (str0m holds one received packet at a time) and writes it into
//! each subscriber's send queue; the publisher and the subscribers go on a work list.
//! The first output call (`poll_transmit`, `poll_event`, `poll_timeout`) or the next
//! timer or command settles the list, draining each peer to its `Timeout` once. A burst
//! of 32 packets from one publisher therefore costs two "poll to timeout" rounds, not 64:
//! those rounds (str0m recomputes every stream's deadlines) were a quarter of the
//! per-packet instructions.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::demux::{Class, classify, stun_local_ufrag};
use crate::rtc::{
    self, BweKind, Event, Forward, IceConnectionState, Input, KeyframeRequest, LegConfig, Mid,
    Output, Rtc, RtpPacket, SdpPendingOffer, guard,
};
use crate::sdp;
use crate::stats::{DropReason, MediaKind, WorkerStats};
use crate::{DisconnectReason, ParticipantId, ParticipantStats, RoomId, SfuError, SfuEvent};

/// Participants per room. The group consultations go up to 8.
pub const MAX_PARTICIPANTS: usize = 8;
/// Source addresses remembered per peer (ICE may move; an attacker may spray STUN).
const MAX_ADDRS_PER_PEER: usize = 4;
/// Tracks one participant may publish (a client sends audio and video; room for a
/// screen share and one spare). Each is forwarded to every other member, so the cap
/// bounds the renegotiation and forwarding work one participant can cause.
pub const MAX_TRACKS_PER_PEER: usize = 4;
/// Media sections per participant SDP, per room member: the client's own tracks plus
/// one receiving section per track of each other member, and the stopped sections that
/// pile up as people come and go (browsers keep them). 64 for a room of 8, which is
/// about what the 64 KiB SDP limit of signaling holds anyway.
pub const MAX_SECTIONS_PER_MEMBER: usize = 8;
/// Remote ICE candidates one participant may trickle per ICE session (a restart resets
/// the count). The SFU is ICE-lite and browsers put theirs in the SDP; this bounds the
/// candidate list str0m keeps.
pub const MAX_CANDIDATES_PER_PEER: usize = 32;
/// How often idle/connect timeouts and periodic stats are checked.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);
/// First outgoing sequence number per subscriber stream. Below 2^16 so the SRTP rollover
/// counter starts at 0 without out-of-band signalling.
const OUT_SEQ_START: u64 = 1000;

/// Settings for one worker's core.
#[derive(Clone)]
pub struct CoreConfig {
    /// The address advertised as our ICE host candidate (the worker socket's address,
    /// or its public address behind 1:1 NAT).
    pub candidate_addr: SocketAddr,
    /// Room capacity.
    pub max_participants: usize,
    /// A connected peer that sends nothing for this long is removed.
    pub peer_timeout: Duration,
    /// A peer that never connects within this long after its offer is removed.
    pub connect_timeout: Duration,
    /// Minimum time between keyframe requests sent to one publisher track.
    pub keyframe_throttle: Duration,
    /// Period of [`SfuEvent::Stats`]; `None` turns them off.
    pub stats_interval: Option<Duration>,
    /// Packets per second one peer may send before drops (`0`: unlimited). The bucket
    /// holds one second's worth.
    pub max_packets_per_sec: u32,
    /// Initial bandwidth estimate per leg, enabling TWCC-based estimation and pacing;
    /// `None` disables estimation (and the pacer).
    pub bwe_initial_bps: Option<u64>,
    /// Forwarding tap (see [`crate::TapEvent`]).
    #[cfg(feature = "tap")]
    pub tap: Option<crate::tap::Tap>,
    /// Network impairment for tests (see [`crate::Impair`]).
    #[cfg(feature = "tap")]
    pub impair: Option<crate::tap::Impair>,
}

impl CoreConfig {
    /// Defaults for a worker whose socket (and host candidate) is `candidate_addr`.
    pub fn new(candidate_addr: SocketAddr) -> Self {
        CoreConfig {
            candidate_addr,
            max_participants: MAX_PARTICIPANTS,
            peer_timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(30),
            keyframe_throttle: Duration::from_millis(500),
            stats_interval: Some(Duration::from_secs(5)),
            max_packets_per_sec: 5_000,
            bwe_initial_bps: Some(2_500_000),
            #[cfg(feature = "tap")]
            tap: None,
            #[cfg(feature = "tap")]
            impair: None,
        }
    }
}

impl std::fmt::Debug for CoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreConfig")
            .field("candidate_addr", &self.candidate_addr)
            .field("max_participants", &self.max_participants)
            .field("peer_timeout", &self.peer_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("keyframe_throttle", &self.keyframe_throttle)
            .field("stats_interval", &self.stats_interval)
            .field("max_packets_per_sec", &self.max_packets_per_sec)
            .field("bwe_initial_bps", &self.bwe_initial_bps)
            .finish_non_exhaustive()
    }
}

/// Refuses SDP with more media sections than a full room of `max_participants` needs.
fn check_shape(sdp: &str, max_participants: usize) -> Result<sdp::Shape, SfuError> {
    let shape = sdp::shape(sdp);
    let max = MAX_SECTIONS_PER_MEMBER * max_participants.max(1);
    if shape.sections > max {
        return Err(SfuError::TooManyMediaSections {
            found: shape.sections,
            max,
        });
    }
    Ok(shape)
}

/// A participant's SDP offer, checked against the caps and parsed (or the reason it was
/// refused, reported once the room and participant have been looked up, so errors come
/// in the same order whoever parsed). Parsing is most of an offer's cost and needs no
/// peer state, so the edge does it on the caller's thread, not on the media worker that
/// forwards every room on it.
pub(crate) struct ParsedOffer(Result<rtc::SdpOffer, SfuError>);

impl ParsedOffer {
    pub(crate) fn new(sdp: &str, max_participants: usize) -> Self {
        ParsedOffer((|| {
            let shape = check_shape(sdp, max_participants)?;
            if shape.sending > MAX_TRACKS_PER_PEER {
                return Err(SfuError::TooManyTracks {
                    found: shape.sending,
                    max: MAX_TRACKS_PER_PEER,
                });
            }
            rtc::parse_offer(sdp).map_err(SfuError::InvalidSdp)
        })())
    }
}

/// A participant's SDP answer, checked and parsed off the worker (see [`ParsedOffer`]).
pub(crate) struct ParsedAnswer(Result<rtc::SdpAnswer, SfuError>);

impl ParsedAnswer {
    pub(crate) fn new(sdp: &str, max_participants: usize) -> Self {
        ParsedAnswer(
            check_shape(sdp, max_participants)
                .and_then(|_| rtc::parse_answer(sdp).map_err(SfuError::InvalidSdp)),
        )
    }
}

/// A datagram to send.
#[must_use]
#[derive(Debug)]
pub struct Transmit {
    /// Where to.
    pub destination: SocketAddr,
    /// The bytes (already SRTP/DTLS/STUN encoded by str0m).
    pub contents: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PeerHandle(u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct RoomSlot(u32);

/// A track a participant sends to us.
struct Published {
    mid: Mid,
    kind: MediaKind,
    /// Main SSRC, learned from the first packet.
    ssrc: Option<u32>,
    /// Last keyframe request sent to the publisher for this track (throttle).
    last_keyframe_request: Option<Instant>,
}

/// A track we send to a participant: someone else's published track.
struct Sub {
    src: PeerHandle,
    src_gen: u32,
    src_mid: Mid,
    kind: MediaKind,
    local_mid: Mid,
    /// `(first incoming extended seq, first incoming timestamp)` once forwarding started.
    base: Option<(u64, u32)>,
    /// Outgoing timestamp for the first forwarded packet.
    ts_out_start: u32,
    /// Cache of the payload type mapping (publisher PT -> subscriber PT).
    pt_map: Option<(u8, u8)>,
    /// Set when the answer arrived; forwarding starts then.
    negotiated: bool,
}

struct Peer {
    generation: u32,
    room: RoomId,
    room_slot: RoomSlot,
    id: ParticipantId,
    rtc: Rtc,
    ufrag: String,
    /// Our ICE password for this leg: the key of the STUN integrity check that must
    /// pass before a new source address is bound to the peer.
    ice_pass: String,
    /// Remote candidates trickled in the current ICE session.
    candidates: usize,
    addrs: Vec<SocketAddr>,
    published: Vec<Published>,
    subs: Vec<Sub>,
    /// Local mids of subs whose source left, to stop at the next renegotiation.
    stopped: Vec<Mid>,
    pending: Option<(SdpPendingOffer, Vec<Mid>)>,
    need_renegotiation: bool,
    connected: bool,
    ice_was_connected: bool,
    ice_connected: bool,
    created: Instant,
    last_rx: Instant,
    next_timeout: Instant,
    /// The earliest deadline of this peer in the heap.
    scheduled: Option<Instant>,
    tokens: u32,
    tokens_at: Instant,
    stats: ParticipantStats,
    next_stats: Option<Instant>,
    queued: bool,
    /// RTP was written to this peer's send streams since its last drain.
    wrote: bool,
    dead: bool,
    /// Last cumulative NACK counts per mid: `(mid, egress, ingress)`.
    nacks_seen: Vec<(Mid, u64, u64)>,
}

impl Peer {
    fn nack_delta(&mut self, mid: Mid, total: u64, egress: bool) -> u64 {
        let i = match self.nacks_seen.iter().position(|(m, _, _)| *m == mid) {
            Some(i) => i,
            None => {
                self.nacks_seen.push((mid, 0, 0));
                self.nacks_seen.len() - 1
            }
        };
        let e = &mut self.nacks_seen[i];
        let last = if egress { &mut e.1 } else { &mut e.2 };
        let d = total.saturating_sub(*last);
        *last = total.max(*last);
        d
    }
}

struct Room {
    // Read only by the forwarding tap (feature `tap`), which names the room per packet.
    #[cfg_attr(not(feature = "tap"), expect(dead_code))]
    id: RoomId,
    members: Vec<PeerHandle>,
}

/// The sans-IO media core of one worker. See the module docs for the call order.
pub struct SfuCore {
    config: CoreConfig,
    leg: LegConfig,
    peers: Vec<Option<Peer>>,
    free_peers: Vec<u32>,
    next_gen: u32,
    rooms: Vec<Option<Room>>,
    free_rooms: Vec<u32>,
    /// Signaling assigns room ids; they are not attacker-chosen per packet, and this map
    /// is only used on the control path.
    room_index: HashMap<RoomId, RoomSlot>,
    /// Keys are chosen by the network (any source address), so this keeps std's
    /// DoS-resistant SipHash rather than a faster non-keyed hash.
    by_addr: HashMap<SocketAddr, PeerHandle>,
    /// Ufrags are ours (random, from str0m), but STUN usernames are attacker-supplied
    /// lookups, so the keyed hash again.
    by_ufrag: HashMap<Vec<u8>, PeerHandle>,
    /// Deadlines: `(when, peer index, generation)`. Stale entries are skipped.
    heap: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    next_sweep: Instant,
    transmits: VecDeque<Transmit>,
    events: VecDeque<SfuEvent>,
    /// Peers to drain after a mutation (scratch, reused).
    work: Vec<PeerHandle>,
    /// Peers to remove once the current turn finished (scratch, reused).
    doomed: Vec<(PeerHandle, Option<DisconnectReason>)>,
    /// STUN integrity (HMAC-SHA1) from str0m's crypto backend.
    stun_hmac: rtc::StunHmac,
    /// Publishers with new tracks, to offer to the rest of their room (scratch, reused).
    resync: Vec<PeerHandle>,
    /// Whether the datagram being handled produced an RTP packet (drop accounting).
    rtp_seen: bool,
    /// Due timer entries (scratch, reused).
    due: Vec<(Instant, u32, u32)>,
    /// Time of the latest input; `settle` uses it when an output call finds work left.
    now: Instant,
    stats: WorkerStats,
}

impl SfuCore {
    /// A core with no rooms.
    pub fn new(config: CoreConfig, now: Instant) -> Self {
        let leg = LegConfig {
            bwe_initial_bps: config.bwe_initial_bps,
        };
        SfuCore {
            config,
            leg,
            peers: Vec::new(),
            free_peers: Vec::new(),
            next_gen: 1,
            rooms: Vec::new(),
            free_rooms: Vec::new(),
            room_index: HashMap::new(),
            by_addr: HashMap::new(),
            by_ufrag: HashMap::new(),
            heap: BinaryHeap::new(),
            next_sweep: now + SWEEP_INTERVAL,
            transmits: VecDeque::with_capacity(256),
            events: VecDeque::new(),
            work: Vec::with_capacity(16),
            doomed: Vec::new(),
            stun_hmac: rtc::stun_hmac(),
            resync: Vec::new(),
            due: Vec::new(),
            now,
            rtp_seen: false,
            stats: WorkerStats::default(),
        }
    }

    /// The worker's counters.
    pub fn stats(&self) -> &WorkerStats {
        &self.stats
    }

    /// Counts datagrams the edge sent (the core does not see the socket).
    pub fn count_sent(&mut self, datagrams: u64, bytes: u64) {
        self.stats.datagrams_out += datagrams;
        self.stats.udp_bytes_out += bytes;
    }

    /// The configuration.
    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    // ------------------------------------------------------------------ commands

    /// Opens a room.
    pub fn open_room(&mut self, room: RoomId) -> Result<(), SfuError> {
        if self.room_index.contains_key(&room) {
            return Err(SfuError::RoomExists);
        }
        let r = Room {
            id: room,
            members: Vec::with_capacity(self.config.max_participants),
        };
        let slot = match self.free_rooms.pop() {
            Some(i) => {
                self.rooms[i as usize] = Some(r);
                i
            }
            None => {
                self.rooms.push(Some(r));
                (self.rooms.len() - 1) as u32
            }
        };
        self.room_index.insert(room, RoomSlot(slot));
        self.stats.rooms += 1;
        Ok(())
    }

    /// Closes a room: every participant's media stops at once. No `Disconnected` events
    /// are emitted for them (the owner asked).
    pub fn close_room(&mut self, now: Instant, room: RoomId) -> Result<(), SfuError> {
        let slot = *self.room_index.get(&room).ok_or(SfuError::UnknownRoom)?;
        let members = self.room(slot).members.clone();
        // Everyone goes: nobody is renegotiated on the way out.
        for h in &members {
            if let Some(p) = self.peers[h.0 as usize].as_mut() {
                p.dead = true;
            }
        }
        for h in members {
            self.remove_peer(now, h, None);
        }
        self.doomed.clear();
        self.room_index.remove(&room);
        self.rooms[slot.0 as usize] = None;
        self.free_rooms.push(slot.0);
        self.stats.rooms -= 1;
        Ok(())
    }

    /// A participant's SDP offer: first join, or a renegotiation/ICE restart by the
    /// client. Returns the SDP answer.
    pub fn offer(
        &mut self,
        now: Instant,
        room: RoomId,
        who: ParticipantId,
        sdp: &str,
    ) -> Result<String, SfuError> {
        self.room_index.get(&room).ok_or(SfuError::UnknownRoom)?;
        let parsed = ParsedOffer::new(sdp, self.config.max_participants);
        self.offer_parsed(now, room, who, parsed)
    }

    /// [`SfuCore::offer`] with the SDP already checked and parsed (on another thread).
    pub(crate) fn offer_parsed(
        &mut self,
        now: Instant,
        room: RoomId,
        who: ParticipantId,
        parsed: ParsedOffer,
    ) -> Result<String, SfuError> {
        let slot = *self.room_index.get(&room).ok_or(SfuError::UnknownRoom)?;
        let offer = parsed.0?;
        let h = match self.find(slot, who) {
            Some(h) => h,
            None => {
                if self.room(slot).members.len() >= self.config.max_participants {
                    return Err(SfuError::RoomFull);
                }
                self.new_peer(now, room, slot, who)?
            }
        };
        let peer = self.peer_mut(h);
        // The client's offer wins over ours (glare): ours is re-created afterwards.
        if let Some((_, mids)) = peer.pending.take() {
            peer.subs
                .retain(|s| s.negotiated || !mids.contains(&s.local_mid));
            peer.need_renegotiation = true;
        }
        let res = guard(|| rtc::accept_offer(&mut peer.rtc, offer));
        let answer = match res {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                self.drain(now, h);
                self.finish(now);
                return Err(SfuError::InvalidSdp(e));
            }
            Err(()) => {
                self.doom(h, Some(DisconnectReason::Internal));
                self.finish(now);
                return Err(SfuError::Internal("rtc panicked on offer"));
            }
        };
        let restarted = self.refresh_ufrag(h);
        self.drain(now, h);
        if restarted && self.live(h).is_some_and(|p| p.connected) {
            // ICE restart: whatever the client lost meanwhile, a keyframe repairs it.
            self.keyframes_for_subscriber(now, h);
        }
        // New published tracks must reach everyone else in the room.
        let members = self.room(slot).members.clone();
        for m in members {
            if m != h {
                self.sync_subscriptions(now, m);
            }
        }
        self.sync_subscriptions(now, h);
        self.finish(now);
        Ok(answer)
    }

    /// The participant's answer to an offer we sent ([`SfuEvent::Offer`]).
    pub fn answer(
        &mut self,
        now: Instant,
        room: RoomId,
        who: ParticipantId,
        sdp: &str,
    ) -> Result<(), SfuError> {
        let slot = *self.room_index.get(&room).ok_or(SfuError::UnknownRoom)?;
        self.find(slot, who).ok_or(SfuError::UnknownParticipant)?;
        let parsed = ParsedAnswer::new(sdp, self.config.max_participants);
        self.answer_parsed(now, room, who, parsed)
    }

    /// [`SfuCore::answer`] with the SDP already checked and parsed (on another thread).
    pub(crate) fn answer_parsed(
        &mut self,
        now: Instant,
        room: RoomId,
        who: ParticipantId,
        parsed: ParsedAnswer,
    ) -> Result<(), SfuError> {
        let slot = *self.room_index.get(&room).ok_or(SfuError::UnknownRoom)?;
        let h = self.find(slot, who).ok_or(SfuError::UnknownParticipant)?;
        let answer = parsed.0?;
        let peer = self.peer_mut(h);
        let (pending, mids) = peer.pending.take().ok_or(SfuError::NoPendingOffer)?;
        match guard(|| rtc::accept_answer(&mut peer.rtc, pending, answer)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                // The offer is gone either way; try again with a fresh one.
                peer.subs
                    .retain(|s| s.negotiated || !mids.contains(&s.local_mid));
                peer.need_renegotiation = true;
                self.drain(now, h);
                self.sync_subscriptions(now, h);
                self.finish(now);
                return Err(SfuError::InvalidSdp(e));
            }
            Err(()) => {
                self.doom(h, Some(DisconnectReason::Internal));
                self.finish(now);
                return Err(SfuError::Internal("rtc panicked on answer"));
            }
        }
        let mut new_sources = Vec::new();
        for s in peer.subs.iter_mut() {
            if mids.contains(&s.local_mid) {
                s.negotiated = true;
                if s.kind == MediaKind::Video {
                    new_sources.push((s.src, s.src_mid));
                }
            }
        }
        self.refresh_ufrag(h);
        self.drain(now, h);
        // A new subscriber needs a keyframe to start decoding.
        for (src, mid) in new_sources {
            self.request_keyframe(now, src, mid, false);
        }
        self.sync_subscriptions(now, h);
        self.finish(now);
        Ok(())
    }

    /// A trickled ICE candidate from the participant.
    pub fn candidate(
        &mut self,
        now: Instant,
        room: RoomId,
        who: ParticipantId,
        candidate: &str,
    ) -> Result<(), SfuError> {
        let slot = *self.room_index.get(&room).ok_or(SfuError::UnknownRoom)?;
        let h = self.find(slot, who).ok_or(SfuError::UnknownParticipant)?;
        // An empty candidate is the end-of-candidates marker.
        if candidate.trim().is_empty() {
            return Ok(());
        }
        let c = rtc::parse_candidate(candidate).ok_or(SfuError::InvalidCandidate)?;
        let peer = self.peer_mut(h);
        if peer.candidates >= MAX_CANDIDATES_PER_PEER {
            return Err(SfuError::TooManyCandidates {
                max: MAX_CANDIDATES_PER_PEER,
            });
        }
        peer.candidates += 1;
        if guard(|| peer.rtc.add_remote_candidate(c)).is_err() {
            self.doom(h, Some(DisconnectReason::Internal));
        } else {
            self.drain(now, h);
        }
        self.finish(now);
        Ok(())
    }

    /// Removes a participant: its streams stop at once and the others renegotiate.
    pub fn remove(
        &mut self,
        now: Instant,
        room: RoomId,
        who: ParticipantId,
    ) -> Result<(), SfuError> {
        let slot = *self.room_index.get(&room).ok_or(SfuError::UnknownRoom)?;
        let h = self.find(slot, who).ok_or(SfuError::UnknownParticipant)?;
        self.remove_peer(now, h, None);
        self.finish(now);
        Ok(())
    }

    /// Participants currently in a room.
    pub fn participants(&self, room: RoomId) -> Vec<ParticipantId> {
        let Some(slot) = self.room_index.get(&room) else {
            return Vec::new();
        };
        self.room(*slot)
            .members
            .iter()
            .map(|h| self.peer(*h).id)
            .collect()
    }

    /// Lets fuzz input from `addr` reach the participant without a STUN exchange first.
    #[cfg(feature = "_fuzzing")]
    pub(crate) fn bind_addr_for_fuzzing(
        &mut self,
        room: RoomId,
        who: ParticipantId,
        addr: SocketAddr,
    ) {
        if let Some(slot) = self.room_index.get(&room).copied()
            && let Some(h) = self.find(slot, who)
        {
            self.remember_addr(h, addr);
        }
    }

    // ------------------------------------------------------------------ input

    /// One datagram from the socket. Never fails: anything bad is dropped and counted.
    pub fn handle_receive(&mut self, now: Instant, src: SocketAddr, dst: SocketAddr, buf: &[u8]) {
        self.now = now;
        self.stats.datagrams_in += 1;
        self.stats.udp_bytes_in += buf.len() as u64;
        let class = classify(buf);
        if class == Class::Garbage {
            self.stats.drop_one(DropReason::Garbage);
            return;
        }
        let h = match self.by_addr.get(&src) {
            Some(h) => *h,
            None => match self.peer_by_stun(buf) {
                Ok(h) => {
                    self.remember_addr(h, src);
                    h
                }
                Err(reason) => {
                    self.stats.drop_one(reason);
                    return;
                }
            },
        };
        #[cfg(feature = "tap")]
        if self.impaired(h) {
            return;
        }
        // No rate budget is spent here: anyone who knows the peer's address can send
        // from it, and garbage must not use up the real peer's budget. Forwarded RTP
        // spends it once SRTP authenticated the packet (`forward`).
        let Some(input) = rtc::receive(src, dst, buf) else {
            self.stats.drop_one(DropReason::Rejected);
            return;
        };
        // str0m drops bad SRTP, truncated or replayed RTP silently; an RTP datagram that
        // yields no packet is counted as rejected (padding-only probes land here too).
        let is_rtp = class == Class::Rtp && !(192..=223).contains(&buf[1]);
        self.rtp_seen = false;
        let peer = self.peer_mut(h);
        peer.last_rx = now;
        match guard(|| peer.rtc.handle_input(Input::Receive(now, input))) {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                self.stats.drop_one(DropReason::Rejected);
                self.rtp_seen = true;
            }
            Err(()) => {
                self.stats.drop_one(DropReason::Panic);
                self.doom(h, Some(DisconnectReason::Internal));
                self.finish(now);
                return;
            }
        }
        self.drain_to_packet(now, h);
        if is_rtp && !self.rtp_seen {
            self.stats.drop_one(DropReason::Rejected);
        }
        // Failed peers and new tracks end the turn at once (settle then finishes it);
        // everything else waits for the batch's settle.
        if !self.doomed.is_empty() || !self.resync.is_empty() {
            self.settle(now);
        }
    }

    /// Time passed. Call at (or after) [`SfuCore::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        self.settle(now);
        // Take the due entries first: a peer that asks for `now` again is served on the
        // next call, so one call always terminates.
        let mut due = std::mem::take(&mut self.due);
        while let Some(Reverse((at, idx, generation))) = self.heap.peek().copied() {
            if at > now {
                break;
            }
            self.heap.pop();
            due.push((at, idx, generation));
        }
        for &(at, idx, generation) in &due {
            let h = PeerHandle(idx);
            let Some(peer) = self.peers.get_mut(idx as usize).and_then(|p| p.as_mut()) else {
                continue;
            };
            if peer.generation != generation || peer.scheduled != Some(at) || peer.dead {
                continue;
            }
            peer.scheduled = None;
            if peer.next_timeout <= now {
                self.feed_timeout(now, h);
                self.drain(now, h);
            } else {
                let t = peer.next_timeout;
                self.schedule(h, t);
            }
        }
        due.clear();
        self.due = due;
        if now >= self.next_sweep {
            self.next_sweep = now + SWEEP_INTERVAL;
            self.sweep(now);
        }
        self.finish(now);
    }

    // ------------------------------------------------------------------ output

    /// Next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if self.transmits.is_empty() && !self.work.is_empty() {
            self.settle(self.now);
        }
        self.transmits.pop_front()
    }

    /// Next event for the owner.
    pub fn poll_event(&mut self) -> Option<SfuEvent> {
        if !self.work.is_empty() {
            self.settle(self.now);
        }
        self.events.pop_front()
    }

    /// When [`SfuCore::handle_timeout`] should be called next.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        if !self.work.is_empty() {
            self.settle(self.now);
        }
        let heap = self.heap.peek().map(|Reverse((t, _, _))| *t);
        Some(match heap {
            Some(t) => t.min(self.next_sweep),
            None => self.next_sweep,
        })
    }

    // ------------------------------------------------------------------ internals

    fn room(&self, slot: RoomSlot) -> &Room {
        // Invariant: a RoomSlot is only held while the room is open; close_room removes
        // every member before freeing the slot.
        self.rooms[slot.0 as usize]
            .as_ref()
            .expect("room slot held by a live room")
    }

    fn room_mut(&mut self, slot: RoomSlot) -> &mut Room {
        // Invariant: see `room`.
        self.rooms[slot.0 as usize]
            .as_mut()
            .expect("room slot held by a live room")
    }

    fn peer(&self, h: PeerHandle) -> &Peer {
        // Invariant: handles are removed from rooms, maps and work lists in
        // `remove_peer` before the slot is freed.
        self.peers[h.0 as usize]
            .as_ref()
            .expect("peer handle points at a live peer")
    }

    fn peer_mut(&mut self, h: PeerHandle) -> &mut Peer {
        // Invariant: see `peer`.
        self.peers[h.0 as usize]
            .as_mut()
            .expect("peer handle points at a live peer")
    }

    fn live(&self, h: PeerHandle) -> Option<&Peer> {
        self.peers
            .get(h.0 as usize)
            .and_then(|p| p.as_ref())
            .filter(|p| !p.dead)
    }

    fn find(&self, slot: RoomSlot, who: ParticipantId) -> Option<PeerHandle> {
        self.room(slot)
            .members
            .iter()
            .copied()
            .find(|h| self.peer(*h).id == who)
    }

    fn new_peer(
        &mut self,
        now: Instant,
        room: RoomId,
        slot: RoomSlot,
        who: ParticipantId,
    ) -> Result<PeerHandle, SfuError> {
        let candidate = self.config.candidate_addr;
        let leg = &self.leg;
        let built = guard(|| {
            let mut rtc = rtc::new_leg(now, leg);
            let ok = rtc::add_host_candidate(&mut rtc, candidate);
            let creds = rtc::local_creds(&mut rtc);
            (rtc, ok, creds)
        });
        let (rtc, ok, (ufrag, ice_pass)) =
            built.map_err(|()| SfuError::Internal("rtc panicked on build"))?;
        if !ok {
            return Err(SfuError::Internal("host candidate rejected"));
        }
        let generation = self.next_gen;
        self.next_gen = self.next_gen.wrapping_add(1);
        let peer = Peer {
            generation,
            room,
            room_slot: slot,
            id: who,
            rtc,
            ufrag: ufrag.clone(),
            ice_pass,
            candidates: 0,
            addrs: Vec::with_capacity(MAX_ADDRS_PER_PEER),
            published: Vec::new(),
            subs: Vec::new(),
            stopped: Vec::new(),
            pending: None,
            need_renegotiation: false,
            connected: false,
            ice_was_connected: false,
            ice_connected: false,
            created: now,
            last_rx: now,
            next_timeout: now,
            scheduled: None,
            tokens: self.config.max_packets_per_sec,
            tokens_at: now,
            stats: ParticipantStats::default(),
            next_stats: self.config.stats_interval.map(|d| now + d),
            queued: false,
            wrote: false,
            dead: false,
            nacks_seen: Vec::new(),
        };
        let idx = match self.free_peers.pop() {
            Some(i) => {
                self.peers[i as usize] = Some(peer);
                i
            }
            None => {
                self.peers.push(Some(peer));
                (self.peers.len() - 1) as u32
            }
        };
        let h = PeerHandle(idx);
        self.by_ufrag.insert(ufrag.into_bytes(), h);
        self.room_mut(slot).members.push(h);
        self.stats.active_connections += 1;
        Ok(h)
    }

    /// ICE restarts change our ufrag; keep the STUN lookup in step. Returns whether it
    /// changed (an ICE restart happened).
    fn refresh_ufrag(&mut self, h: PeerHandle) -> bool {
        let Some(peer) = self.peers[h.0 as usize].as_mut() else {
            return false;
        };
        if peer.dead {
            return false;
        }
        let Ok((ufrag, pass)) = guard(|| rtc::local_creds(&mut peer.rtc)) else {
            return false;
        };
        if ufrag == peer.ufrag {
            return false;
        }
        peer.ice_pass = pass;
        peer.candidates = 0;
        let old = std::mem::replace(&mut peer.ufrag, ufrag.clone());
        self.by_ufrag.remove(old.as_bytes());
        self.by_ufrag.insert(ufrag.into_bytes(), h);
        true
    }

    /// Asks every publisher feeding `h` for a keyframe (throttled per track).
    fn keyframes_for_subscriber(&mut self, now: Instant, h: PeerHandle) {
        let Some(peer) = self.live(h) else { return };
        let srcs: Vec<_> = peer
            .subs
            .iter()
            .filter(|s| s.negotiated && s.kind == MediaKind::Video)
            .map(|s| (s.src, s.src_mid))
            .collect();
        for (src, mid) in srcs {
            self.request_keyframe(now, src, mid, false);
        }
    }

    /// The peer a STUN binding request from a new address names, once its
    /// MESSAGE-INTEGRITY verifies under that peer's ICE password. The username alone is
    /// no proof: it travels in clear and sits in the SDP, so anyone who saw it could
    /// otherwise bind their address to the peer (and evict its real ones).
    fn peer_by_stun(&self, buf: &[u8]) -> Result<PeerHandle, DropReason> {
        let peer = stun_local_ufrag(buf)
            .and_then(|ufrag| self.by_ufrag.get(ufrag).copied())
            .and_then(|h| Some((h, self.live(h)?)));
        let Some((h, peer)) = peer else {
            return Err(DropReason::UnknownSource);
        };
        if rtc::stun_request_verifies(buf, &peer.ice_pass, self.stun_hmac) {
            Ok(h)
        } else {
            Err(DropReason::UnverifiedStun)
        }
    }

    fn remember_addr(&mut self, h: PeerHandle, addr: SocketAddr) {
        let peer = self.peer_mut(h);
        if peer.addrs.len() >= MAX_ADDRS_PER_PEER {
            let old = peer.addrs.remove(0);
            self.by_addr.remove(&old);
        }
        let peer = self.peer_mut(h);
        peer.addrs.push(addr);
        // A previous owner of this address (a NATed client that rejoined) loses it.
        if let Some(prev) = self.by_addr.insert(addr, h)
            && prev != h
            && let Some(p) = self.peers[prev.0 as usize].as_mut()
        {
            p.addrs.retain(|a| *a != addr);
        }
    }

    fn take_token(&mut self, h: PeerHandle, now: Instant) -> bool {
        let rate = self.config.max_packets_per_sec;
        if rate == 0 {
            return true;
        }
        let peer = self.peer_mut(h);
        let elapsed = now.saturating_duration_since(peer.tokens_at);
        let refill = (elapsed.as_micros() as u64).saturating_mul(rate as u64) / 1_000_000;
        if refill > 0 {
            peer.tokens = (peer.tokens as u64 + refill).min(rate as u64) as u32;
            peer.tokens_at = now;
        }
        if peer.tokens == 0 {
            return false;
        }
        peer.tokens -= 1;
        true
    }

    fn schedule(&mut self, h: PeerHandle, at: Instant) {
        let peer = self.peer_mut(h);
        peer.next_timeout = at;
        // Only push when earlier than what the heap already holds for this peer; a later
        // deadline is picked up when the earlier entry fires.
        if peer.scheduled.is_none_or(|s| at < s) {
            peer.scheduled = Some(at);
            let generation = peer.generation;
            self.heap.push(Reverse((at, h.0, generation)));
        }
    }

    fn enqueue(&mut self, h: PeerHandle) {
        if let Some(p) = self.peers[h.0 as usize].as_mut()
            && !p.queued
            && !p.dead
        {
            p.queued = true;
            self.work.push(h);
        }
    }

    /// Drains `h`, then every peer that got mutated on the way.
    fn drain(&mut self, now: Instant, h: PeerHandle) {
        self.enqueue(h);
        self.settle(now);
    }

    /// Drains every peer on the work list to its `Timeout`, including peers that get
    /// mutated on the way, then ends the turn.
    fn settle(&mut self, now: Instant) {
        while let Some(h) = self.work.pop() {
            if let Some(p) = self.peers[h.0 as usize].as_mut() {
                p.queued = false;
            }
            self.drain_one(now, h);
        }
        if !self.doomed.is_empty() || !self.resync.is_empty() {
            self.finish(now);
        }
    }

    /// Polls `h` until its received RTP packet has been forwarded (or it has nothing
    /// more), and leaves the rest of its output for [`SfuCore::settle`].
    fn drain_to_packet(&mut self, now: Instant, h: PeerHandle) {
        self.poll_peer(now, h, true);
    }

    fn drain_one(&mut self, now: Instant, h: PeerHandle) {
        // A packet written through str0m's direct API does not wake its output pipeline:
        // the pacer snapshots send queues only in `handle_timeout`, and `poll_output`
        // would return the old deadline. One timeout input per drain (not per packet:
        // a batch of writes to this peer shares it) sends what was written this turn.
        let wrote = self.peers[h.0 as usize]
            .as_mut()
            .is_some_and(|p| std::mem::take(&mut p.wrote));
        if wrote && !self.feed_timeout(now, h) {
            return;
        }
        self.poll_peer(now, h, false);
    }

    /// Polls `h` until its `Timeout` (scheduled) or, with `until_packet`, until its RTP
    /// packet has been forwarded (it then stays on the work list).
    fn poll_peer(&mut self, now: Instant, h: PeerHandle, until_packet: bool) {
        loop {
            let Some(peer) = self.peers[h.0 as usize].as_mut() else {
                return;
            };
            if peer.dead {
                return;
            }
            let out = match guard(|| peer.rtc.poll_output()) {
                Ok(Ok(o)) => o,
                Ok(Err(_)) => {
                    self.doom(h, Some(DisconnectReason::Closed));
                    return;
                }
                Err(()) => {
                    self.doom(h, Some(DisconnectReason::Internal));
                    return;
                }
            };
            match out {
                Output::Timeout(t) => {
                    self.schedule(h, t);
                    return;
                }
                Output::Transmit(t) => {
                    #[cfg(feature = "tap")]
                    if self.impaired(h) {
                        continue;
                    }
                    self.transmits.push_back(Transmit {
                        destination: t.destination,
                        contents: t.contents.into(),
                    });
                }
                Output::Event(Event::RtpPacket(pkt)) if until_packet => {
                    self.forward(h, pkt);
                    self.enqueue(h);
                    return;
                }
                Output::Event(e) => self.handle_event(now, h, e),
            }
        }
    }

    /// Whether the test impairment loses `h`'s datagrams now.
    #[cfg(feature = "tap")]
    fn impaired(&self, h: PeerHandle) -> bool {
        match (&self.config.impair, self.live(h)) {
            (Some(impair), Some(p)) => impair(p.room, p.id),
            _ => false,
        }
    }

    /// Feeds a timeout input to `h`'s `Rtc`; `false` (and the peer doomed) if it failed.
    fn feed_timeout(&mut self, now: Instant, h: PeerHandle) -> bool {
        let Some(peer) = self.peers[h.0 as usize].as_mut().filter(|p| !p.dead) else {
            return false;
        };
        match guard(|| peer.rtc.handle_input(Input::Timeout(now))) {
            Ok(Ok(())) => true,
            Ok(Err(_)) => {
                self.doom(h, Some(DisconnectReason::Closed));
                false
            }
            Err(()) => {
                self.doom(h, Some(DisconnectReason::Internal));
                false
            }
        }
    }

    fn handle_event(&mut self, now: Instant, h: PeerHandle, e: Event) {
        match e {
            Event::RtpPacket(pkt) => self.forward(h, pkt),
            Event::Connected => {
                let peer = self.peer_mut(h);
                if !peer.connected {
                    peer.connected = true;
                    let ev = SfuEvent::Connected {
                        room: peer.room,
                        participant: peer.id,
                    };
                    self.events.push_back(ev);
                    self.sync_subscriptions(now, h);
                }
            }
            Event::IceConnectionStateChange(state) => {
                tracing::trace!(?state, "ice state");
                let up = matches!(
                    state,
                    IceConnectionState::Connected | IceConnectionState::Completed
                );
                let peer = self.peer_mut(h);
                let restored = up && !peer.ice_connected && peer.ice_was_connected;
                peer.ice_connected = up;
                if up {
                    peer.ice_was_connected = true;
                }
                if state == IceConnectionState::Disconnected {
                    // Not removed yet: the idle timeout decides, ICE may come back.
                    tracing::debug!(room = %peer.room, participant = %peer.id, "ice disconnected");
                }
                if restored {
                    // ICE came back: the decoder state is unknown, send fresh keyframes.
                    self.keyframes_for_subscriber(now, h);
                }
            }
            Event::MediaAdded(m) if rtc::is_receiving(m.direction) => {
                {
                    let peer = self.peer_mut(h);
                    // The offer check counts live sections; a client that stops tracks
                    // and adds new ones in later offers stops here.
                    if peer.published.len() >= MAX_TRACKS_PER_PEER {
                        tracing::debug!(room = %peer.room, participant = %peer.id, "track cap reached, track not forwarded");
                    } else if !peer.published.iter().any(|p| p.mid == m.mid) {
                        // The others learn about it at the end of this turn.
                        self.resync.push(h);
                        let peer = self.peer_mut(h);
                        peer.published.push(Published {
                            mid: m.mid,
                            kind: rtc::kind_of(m.kind),
                            ssrc: None,
                            last_keyframe_request: None,
                        });
                    }
                }
            }
            Event::KeyframeRequest(req) => self.on_keyframe_request(now, h, req),
            Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                self.peer_mut(h).stats.egress_bitrate_estimate = Some(rtc::bitrate_bps(estimate));
            }
            Event::PeerStats(s) => {
                if let Some(rtt) = s.rtt {
                    self.peer_mut(h).stats.rtt_ms = Some(rtt.as_millis() as u64);
                }
            }
            // str0m reports cumulative NACK counts per mid; the worker total grows by the
            // difference to the last report.
            Event::MediaEgressStats(s) => {
                let d = self.peer_mut(h).nack_delta(s.mid, s.nacks, true);
                self.stats.nacks += d;
            }
            Event::MediaIngressStats(s) => {
                let d = self.peer_mut(h).nack_delta(s.mid, s.nacks, false);
                self.stats.nacks_sent += d;
            }
            Event::Closed => self.doom(h, Some(DisconnectReason::Closed)),
            _ => {}
        }
    }

    /// The hot path: one incoming packet to every subscriber in the room.
    fn forward(&mut self, from: PeerHandle, pkt: RtpPacket) {
        self.rtp_seen = true;
        if !self.take_token(from, self.now) {
            self.stats.drop_one(DropReason::RateLimited);
            return;
        }
        let (slot, kind, src_mid, src_gen) = {
            let p = self.peer_mut(from);
            let ssrc = *pkt.header.ssrc;
            let mut found = p.published.iter().position(|t| t.ssrc == Some(ssrc));
            if found.is_none() {
                // First packet of this SSRC: learn its mid once, then match by SSRC.
                let mid = rtc::mid_of_ssrc(&mut p.rtc, pkt.header.ssrc).or(pkt.header.ext_vals.mid);
                found = mid.and_then(|mid| p.published.iter().position(|t| t.mid == mid));
                if let Some(i) = found {
                    p.published[i].ssrc = Some(ssrc);
                }
            }
            let Some(t) = found.map(|i| &p.published[i]) else {
                self.stats.drop_one(DropReason::NoRoute);
                return;
            };
            p.stats.packets_in += 1;
            p.stats.bytes_in += pkt.payload.len() as u64;
            (p.room_slot, t.kind, t.mid, p.generation)
        };
        self.stats.count_in(kind, pkt.payload.len());
        let Some(room) = self.rooms[slot.0 as usize].as_ref() else {
            return;
        };
        let mut fwd = Forward {
            pt: pkt.header.payload_type,
            seq: 0,
            ts: 0,
            marker: pkt.header.marker,
            wallclock: pkt.timestamp,
            // Audio is not worth retransmitting; video is (NACK answered from the
            // subscriber leg's own send buffer).
            nackable: kind == MediaKind::Video,
            audio_level: pkt.header.ext_vals.audio_level,
            voice_activity: pkt.header.ext_vals.voice_activity,
            video_orientation: pkt.header.ext_vals.video_orientation,
        };
        let in_seq: u64 = *pkt.seq_no;
        let in_ts = pkt.header.timestamp;
        let in_pt = *pkt.header.payload_type;
        for &s in room.members.iter() {
            if s == from {
                continue;
            }
            let Ok([Some(src), Some(sub_peer)]) =
                self.peers.get_disjoint_mut([from.0 as usize, s.0 as usize])
            else {
                continue;
            };
            if sub_peer.dead || !sub_peer.connected {
                continue;
            }
            let Some(sub) = sub_peer
                .subs
                .iter_mut()
                .find(|x| x.src == from && x.src_gen == src_gen && x.src_mid == src_mid)
            else {
                continue;
            };
            if !sub.negotiated {
                continue;
            }
            let (seq_base, ts_base) = *sub.base.get_or_insert((in_seq, in_ts));
            if in_seq < seq_base {
                // Reordered packet from before this subscriber's first one.
                continue;
            }
            fwd.seq = OUT_SEQ_START + (in_seq - seq_base);
            fwd.ts = sub.ts_out_start.wrapping_add(in_ts.wrapping_sub(ts_base));
            fwd.pt = match sub.pt_map {
                Some((i, o)) if i == in_pt => o.into(),
                _ => match rtc::map_pt(&src.rtc, &sub_peer.rtc, pkt.header.payload_type) {
                    Some(o) => {
                        sub.pt_map = Some((in_pt, *o));
                        o
                    }
                    None => continue,
                },
            };
            let local_mid = sub.local_mid;
            let to = sub_peer.id;
            match guard(|| rtc::write_forward(&mut sub_peer.rtc, local_mid, &fwd, &pkt.payload)) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(()) => {
                    sub_peer.dead = true;
                    self.doomed.push((s, Some(DisconnectReason::Internal)));
                    continue;
                }
            }
            sub_peer.stats.packets_out += 1;
            sub_peer.stats.bytes_out += pkt.payload.len() as u64;
            self.stats.count_out(kind, pkt.payload.len());
            #[cfg(feature = "tap")]
            if let Some(tap) = &self.config.tap {
                tap(crate::tap::TapEvent {
                    room: room.id,
                    from: src.id,
                    to,
                    kind,
                    payload: &pkt.payload,
                });
            }
            let _ = to;
            sub_peer.wrote = true;
            if !sub_peer.queued {
                sub_peer.queued = true;
                self.work.push(s);
            }
        }
    }

    fn on_keyframe_request(&mut self, now: Instant, h: PeerHandle, req: KeyframeRequest) {
        self.stats.keyframe_requests_in += 1;
        let peer = self.peer(h);
        let Some(sub) = peer.subs.iter().find(|s| s.local_mid == req.mid) else {
            return;
        };
        let (src, mid) = (sub.src, sub.src_mid);
        self.request_keyframe(now, src, mid, rtc::is_fir(req.kind));
    }

    /// Merges and throttles keyframe requests per publisher track.
    fn request_keyframe(&mut self, now: Instant, src: PeerHandle, mid: Mid, fir: bool) {
        let throttle = self.config.keyframe_throttle;
        let Some(p) = self.peers.get_mut(src.0 as usize).and_then(|p| p.as_mut()) else {
            return;
        };
        if p.dead || !p.connected {
            return;
        }
        let Some(t) = p.published.iter_mut().find(|t| t.mid == mid) else {
            return;
        };
        if t.kind != MediaKind::Video {
            return;
        }
        if t.last_keyframe_request
            .is_some_and(|last| now.saturating_duration_since(last) < throttle)
        {
            return;
        }
        t.last_keyframe_request = Some(now);
        match guard(|| rtc::request_keyframe(&mut p.rtc, mid, fir)) {
            Ok(true) => {
                self.stats.keyframe_requests_out += 1;
                let ev = SfuEvent::KeyframeNeeded {
                    room: p.room,
                    participant: p.id,
                };
                self.events.push_back(ev);
                self.enqueue(src);
            }
            Ok(false) => {}
            Err(()) => self.doom(src, Some(DisconnectReason::Internal)),
        }
    }

    /// Makes `h`'s outgoing tracks match the other participants' published tracks, by
    /// sending an SDP offer when something changed. Deferred while `h` is not connected
    /// yet (its answer may still be in flight) or while an offer is outstanding.
    fn sync_subscriptions(&mut self, now: Instant, h: PeerHandle) {
        let Some(peer) = self.live(h) else {
            return;
        };
        let slot = peer.room_slot;
        let mut add: Vec<(PeerHandle, u32, Mid, MediaKind, ParticipantId)> = Vec::new();
        for &m in &self.room(slot).members {
            if m == h {
                continue;
            }
            let Some(src) = self.live(m) else { continue };
            for t in &src.published {
                if !peer
                    .subs
                    .iter()
                    .any(|s| s.src == m && s.src_gen == src.generation && s.src_mid == t.mid)
                {
                    add.push((m, src.generation, t.mid, t.kind, src.id));
                }
            }
        }
        let peer = self.peer_mut(h);
        if add.is_empty() && peer.stopped.is_empty() {
            return;
        }
        if !peer.connected || peer.pending.is_some() {
            peer.need_renegotiation = true;
            return;
        }
        peer.need_renegotiation = false;
        let adds: Vec<(MediaKind, String)> = add
            .iter()
            .map(|(_, _, _, kind, id)| (*kind, format!("confide-{}", id.0)))
            .collect();
        let stopped = std::mem::take(&mut peer.stopped);
        let mut new_mids = Vec::with_capacity(add.len());
        let res =
            guard(|| rtc::renegotiate(&mut peer.rtc, &adds, &stopped, |_, mid| new_mids.push(mid)));
        match res {
            Ok(Some((sdp, pending))) => {
                for ((src, src_gen, src_mid, kind, _), local_mid) in add.into_iter().zip(&new_mids)
                {
                    peer.subs.push(Sub {
                        src,
                        src_gen,
                        src_mid,
                        kind,
                        local_mid: *local_mid,
                        base: None,
                        ts_out_start: 0,
                        pt_map: None,
                        negotiated: false,
                    });
                }
                peer.pending = Some((pending, new_mids));
                let ev = SfuEvent::Offer {
                    room: peer.room,
                    participant: peer.id,
                    sdp,
                };
                self.events.push_back(ev);
                self.drain(now, h);
            }
            Ok(None) => {}
            Err(()) => self.doom(h, Some(DisconnectReason::Internal)),
        }
    }

    fn sweep(&mut self, now: Instant) {
        let peer_timeout = self.config.peer_timeout;
        let connect_timeout = self.config.connect_timeout;
        let interval = self.config.stats_interval;
        for idx in 0..self.peers.len() {
            let Some(p) = self.peers[idx].as_mut() else {
                continue;
            };
            if p.dead {
                continue;
            }
            let h = PeerHandle(idx as u32);
            if !p.connected && now.saturating_duration_since(p.created) > connect_timeout {
                self.doom(h, Some(DisconnectReason::ConnectTimeout));
                continue;
            }
            if p.connected && now.saturating_duration_since(p.last_rx) > peer_timeout {
                self.doom(h, Some(DisconnectReason::Timeout));
                continue;
            }
            if !p.rtc.is_alive() {
                self.doom(h, Some(DisconnectReason::Closed));
                continue;
            }
            if let (Some(next), Some(d)) = (p.next_stats, interval)
                && now >= next
            {
                p.next_stats = Some(now + d);
                let ev = SfuEvent::Stats {
                    room: p.room,
                    participant: p.id,
                    stats: p.stats,
                };
                self.events.push_back(ev);
            }
        }
    }

    fn doom(&mut self, h: PeerHandle, reason: Option<DisconnectReason>) {
        if let Some(p) = self.peers.get_mut(h.0 as usize).and_then(|p| p.as_mut())
            && !p.dead
        {
            p.dead = true;
            self.doomed.push((h, reason));
        }
    }

    /// Ends a turn: offers new tracks to the others, removes peers that failed.
    fn finish(&mut self, now: Instant) {
        while let Some(h) = self.resync.pop() {
            let Some(p) = self.live(h) else { continue };
            let members = self.room(p.room_slot).members.clone();
            for m in members {
                if m != h {
                    self.sync_subscriptions(now, m);
                }
            }
        }
        while let Some((h, reason)) = self.doomed.pop() {
            if reason == Some(DisconnectReason::Internal) {
                self.stats.panics += 1;
            }
            self.remove_peer(now, h, reason);
        }
    }

    fn remove_peer(&mut self, now: Instant, h: PeerHandle, reason: Option<DisconnectReason>) {
        let Some(mut peer) = self.peers[h.0 as usize].take() else {
            return;
        };
        self.free_peers.push(h.0);
        self.stats.active_connections -= 1;
        for a in &peer.addrs {
            if self.by_addr.get(a) == Some(&h) {
                self.by_addr.remove(a);
            }
        }
        if self.by_ufrag.get(peer.ufrag.as_bytes()) == Some(&h) {
            self.by_ufrag.remove(peer.ufrag.as_bytes());
        }
        // Best effort: tell the client (DTLS close). A panic here changes nothing.
        let _ = guard(|| {
            peer.rtc.disconnect();
            while let Ok(Output::Transmit(t)) = peer.rtc.poll_output() {
                self.transmits.push_back(Transmit {
                    destination: t.destination,
                    contents: t.contents.into(),
                });
            }
        });
        self.work.retain(|w| *w != h);
        let slot = peer.room_slot;
        let members = match self.rooms[slot.0 as usize].as_mut() {
            Some(room) => {
                room.members.retain(|m| *m != h);
                room.members.clone()
            }
            None => Vec::new(),
        };
        // Stop forwarding its streams at once; the SDP catches up by renegotiation.
        for m in &members {
            if let Some(p) = self.peers[m.0 as usize].as_mut() {
                let stopped: Vec<Mid> = p
                    .subs
                    .iter()
                    .filter(|s| s.src == h && s.src_gen == peer.generation)
                    .map(|s| s.local_mid)
                    .collect();
                if !stopped.is_empty() {
                    p.subs
                        .retain(|s| !(s.src == h && s.src_gen == peer.generation));
                    p.stopped.extend(stopped);
                }
            }
        }
        if let Some(reason) = reason {
            self.events.push_back(SfuEvent::Disconnected {
                room: peer.room,
                participant: peer.id,
                reason,
            });
        }
        for m in members {
            self.sync_subscriptions(now, m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core() -> (SfuCore, Instant) {
        #[expect(
            clippy::disallowed_methods,
            reason = "test epoch; the core never reads it"
        )]
        let now = Instant::now();
        (
            SfuCore::new(CoreConfig::new("127.0.0.1:4000".parse().unwrap()), now),
            now,
        )
    }

    #[test]
    fn room_lifecycle_errors() {
        let (mut c, now) = core();
        assert!(c.open_room(RoomId(1)).is_ok());
        assert!(matches!(c.open_room(RoomId(1)), Err(SfuError::RoomExists)));
        assert!(matches!(
            c.offer(now, RoomId(2), ParticipantId(1), "v=0"),
            Err(SfuError::UnknownRoom)
        ));
        assert!(matches!(
            c.offer(now, RoomId(1), ParticipantId(1), "not sdp"),
            Err(SfuError::InvalidSdp(_))
        ));
        assert!(matches!(
            c.remove(now, RoomId(1), ParticipantId(1)),
            Err(SfuError::UnknownParticipant)
        ));
        assert!(c.close_room(now, RoomId(1)).is_ok());
        assert_eq!(c.stats().rooms, 0);
    }

    #[test]
    fn garbage_is_counted_not_fatal() {
        let (mut c, now) = core();
        let src = "127.0.0.1:9".parse().unwrap();
        let dst = c.config().candidate_addr;
        c.handle_receive(now, src, dst, &[]);
        c.handle_receive(now, src, dst, &[0xff; 40]);
        c.handle_receive(now, src, dst, &[0x80; 40]);
        assert_eq!(c.stats().drops(DropReason::Garbage), 2);
        assert_eq!(c.stats().drops(DropReason::UnknownSource), 1);
        assert!(c.poll_transmit().is_none());
    }
}
