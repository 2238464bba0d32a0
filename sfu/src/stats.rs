//! Per-worker counters.
//!
//! The core bumps plain integers (it is single-threaded); the edge copies them into
//! atomics once per loop turn so the metrics endpoint can read them without touching the
//! worker. Counting stays off the per-packet lock path entirely.

use std::sync::atomic::{AtomicU64, Ordering};

const N_FIELDS: usize = 26;

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaKind {
    /// Opus.
    Audio,
    /// VP8.
    Video,
}

/// Why a datagram or packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// Not STUN, DTLS or RTP/RTCP, or too short to be any of them.
    Garbage,
    /// From an address we do not know, and not a STUN request naming one of our peers.
    UnknownSource,
    /// str0m refused it or consumed it without yielding media: bad SRTP auth, truncated
    /// or replayed RTP/RTCP, DTLS noise (padding-only bandwidth probes count here too).
    Rejected,
    /// Decrypted fine but belongs to no track we forward (unknown SSRC/mid).
    NoRoute,
    /// The peer exceeded its packet rate budget.
    RateLimited,
    /// The peer's `Rtc` panicked; the packet and the peer were dropped.
    Panic,
    /// A STUN binding request from an address not bound to the peer its username
    /// names, whose MESSAGE-INTEGRITY did not check out under that peer's ICE
    /// password: a forged request cannot move a peer to a new address.
    UnverifiedStun,
}

impl DropReason {
    /// Every reason, in a stable order (used for the metrics export).
    pub const ALL: [DropReason; 7] = [
        DropReason::Garbage,
        DropReason::UnknownSource,
        DropReason::Rejected,
        DropReason::NoRoute,
        DropReason::RateLimited,
        DropReason::Panic,
        DropReason::UnverifiedStun,
    ];

    /// A label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Garbage => "garbage",
            DropReason::UnknownSource => "unknown_source",
            DropReason::Rejected => "rejected",
            DropReason::NoRoute => "no_route",
            DropReason::RateLimited => "rate_limited",
            DropReason::Panic => "panic",
            DropReason::UnverifiedStun => "unverified_stun",
        }
    }

    fn index(self) -> usize {
        match self {
            DropReason::Garbage => 0,
            DropReason::UnknownSource => 1,
            DropReason::Rejected => 2,
            DropReason::NoRoute => 3,
            DropReason::RateLimited => 4,
            DropReason::Panic => 5,
            DropReason::UnverifiedStun => 6,
        }
    }
}

/// A snapshot of one worker's counters. All counts are totals since the worker started,
/// except the gauges `active_connections` and `rooms`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// UDP datagrams received.
    pub datagrams_in: u64,
    /// UDP datagrams sent.
    pub datagrams_out: u64,
    /// UDP bytes received.
    pub udp_bytes_in: u64,
    /// UDP bytes sent.
    pub udp_bytes_out: u64,
    /// RTP audio packets received from publishers.
    pub audio_packets_in: u64,
    /// RTP audio payload bytes received.
    pub audio_bytes_in: u64,
    /// RTP video packets received from publishers.
    pub video_packets_in: u64,
    /// RTP video payload bytes received.
    pub video_bytes_in: u64,
    /// RTP audio packets forwarded (one per subscriber).
    pub audio_packets_out: u64,
    /// RTP audio payload bytes forwarded.
    pub audio_bytes_out: u64,
    /// RTP video packets forwarded (one per subscriber).
    pub video_packets_out: u64,
    /// RTP video payload bytes forwarded.
    pub video_bytes_out: u64,
    /// Drops, indexed like [`DropReason::ALL`].
    pub drops: [u64; 7],
    /// NACKs received from subscribers (answered from the subscriber leg's buffer).
    pub nacks: u64,
    /// NACKs sent to publishers for packets lost on the way in.
    pub nacks_sent: u64,
    /// Keyframe requests (PLI/FIR) received from subscribers.
    pub keyframe_requests_in: u64,
    /// Keyframe requests sent to publishers after merging and throttling.
    pub keyframe_requests_out: u64,
    /// Peers whose `Rtc` panicked and was dropped.
    pub panics: u64,
    /// Participants currently held by this worker.
    pub active_connections: u64,
    /// Rooms currently held by this worker.
    pub rooms: u64,
}

impl WorkerStats {
    /// Drops for one reason.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()]
    }

    pub(crate) fn drop_one(&mut self, reason: DropReason) {
        self.drops[reason.index()] += 1;
    }

    pub(crate) fn count_in(&mut self, kind: MediaKind, bytes: usize) {
        match kind {
            MediaKind::Audio => {
                self.audio_packets_in += 1;
                self.audio_bytes_in += bytes as u64;
            }
            MediaKind::Video => {
                self.video_packets_in += 1;
                self.video_bytes_in += bytes as u64;
            }
        }
    }

    pub(crate) fn count_out(&mut self, kind: MediaKind, bytes: usize) {
        match kind {
            MediaKind::Audio => {
                self.audio_packets_out += 1;
                self.audio_bytes_out += bytes as u64;
            }
            MediaKind::Video => {
                self.video_packets_out += 1;
                self.video_bytes_out += bytes as u64;
            }
        }
    }

    fn fields(&self) -> [u64; N_FIELDS] {
        let d = self.drops;
        [
            self.datagrams_in,
            self.datagrams_out,
            self.udp_bytes_in,
            self.udp_bytes_out,
            self.audio_packets_in,
            self.audio_bytes_in,
            self.video_packets_in,
            self.video_bytes_in,
            self.audio_packets_out,
            self.audio_bytes_out,
            self.video_packets_out,
            self.video_bytes_out,
            d[0],
            d[1],
            d[2],
            d[3],
            d[4],
            d[5],
            self.nacks,
            self.keyframe_requests_in,
            self.keyframe_requests_out,
            self.panics,
            self.active_connections,
            self.rooms,
            self.nacks_sent,
            d[6],
        ]
    }

    fn from_fields(f: &[u64; N_FIELDS]) -> Self {
        WorkerStats {
            datagrams_in: f[0],
            datagrams_out: f[1],
            udp_bytes_in: f[2],
            udp_bytes_out: f[3],
            audio_packets_in: f[4],
            audio_bytes_in: f[5],
            video_packets_in: f[6],
            video_bytes_in: f[7],
            audio_packets_out: f[8],
            audio_bytes_out: f[9],
            video_packets_out: f[10],
            video_bytes_out: f[11],
            drops: [f[12], f[13], f[14], f[15], f[16], f[17], f[25]],
            nacks: f[18],
            keyframe_requests_in: f[19],
            keyframe_requests_out: f[20],
            panics: f[21],
            active_connections: f[22],
            rooms: f[23],
            nacks_sent: f[24],
        }
    }
}

/// Upper bounds, in microseconds, of the forwarding-latency buckets (the last bucket,
/// `+Inf`, is implicit).
pub const FORWARD_LATENCY_BUCKETS_US: [u64; 11] = [
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000,
];
const N_LAT: usize = FORWARD_LATENCY_BUCKETS_US.len() + 1;

/// Time from a receive batch leaving `recvmmsg` to the `sendmmsg` that carried the
/// packets it produced, one sample per forwarded packet. Measured per batch (one clock
/// read per batch, not per packet), so it is the SFU's own share of the one-way latency:
/// SRTP decrypt, routing, SRTP encrypt and the send syscall. Kernel queueing before the
/// receive is not included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwardLatency {
    /// Samples per bucket (non-cumulative); index `i` counts samples
    /// `<= FORWARD_LATENCY_BUCKETS_US[i]`, the last index the rest.
    pub buckets: [u64; N_LAT],
    /// Sum of all samples, nanoseconds.
    pub sum_ns: u64,
    /// Number of samples.
    pub count: u64,
}

impl ForwardLatency {
    /// Records `packets` samples of `latency_ns` each.
    pub(crate) fn record(&mut self, latency_ns: u64, packets: u64) {
        if packets == 0 {
            return;
        }
        let us = latency_ns / 1_000;
        let i = FORWARD_LATENCY_BUCKETS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(N_LAT - 1);
        self.buckets[i] += packets;
        self.sum_ns += latency_ns.saturating_mul(packets);
        self.count += packets;
    }

    fn add(&mut self, o: &ForwardLatency) {
        for (a, b) in self.buckets.iter_mut().zip(o.buckets) {
            *a += b;
        }
        self.sum_ns += o.sum_ns;
        self.count += o.count;
    }
}

/// Snapshot of every worker, as the server's metrics endpoint exports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SfuStats {
    /// One entry per worker, in worker order.
    pub workers: Vec<WorkerStats>,
    /// Forwarding latency inside the SFU, summed over workers.
    pub forward_latency: ForwardLatency,
}

impl SfuStats {
    /// Sum over all workers.
    pub fn total(&self) -> WorkerStats {
        let mut acc = [0u64; N_FIELDS];
        for w in &self.workers {
            for (a, v) in acc.iter_mut().zip(w.fields()) {
                *a += v;
            }
        }
        WorkerStats::from_fields(&acc)
    }
}

/// The atomics a worker publishes to. One writer (the worker), many readers.
#[derive(Debug, Default)]
pub(crate) struct SharedStats {
    fields: [AtomicU64; N_FIELDS],
    latency: [AtomicU64; N_LAT + 2],
}

impl SharedStats {
    pub(crate) fn publish(&self, s: &WorkerStats) {
        for (a, v) in self.fields.iter().zip(s.fields()) {
            // Readers only need eventually consistent per-field values.
            a.store(v, Ordering::Relaxed);
        }
    }

    pub(crate) fn publish_latency(&self, l: &ForwardLatency) {
        let vals = l.buckets.iter().copied().chain([l.sum_ns, l.count]);
        for (a, v) in self.latency.iter().zip(vals) {
            a.store(v, Ordering::Relaxed);
        }
    }

    pub(crate) fn read_latency(&self, into: &mut ForwardLatency) {
        let mut l = ForwardLatency::default();
        for (o, a) in l.buckets.iter_mut().zip(self.latency.iter()) {
            *o = a.load(Ordering::Relaxed);
        }
        l.sum_ns = self.latency[N_LAT].load(Ordering::Relaxed);
        l.count = self.latency[N_LAT + 1].load(Ordering::Relaxed);
        into.add(&l);
    }

    pub(crate) fn read(&self) -> WorkerStats {
        let mut f = [0u64; N_FIELDS];
        for (o, a) in f.iter_mut().zip(self.fields.iter()) {
            *o = a.load(Ordering::Relaxed);
        }
        WorkerStats::from_fields(&f)
    }
}
