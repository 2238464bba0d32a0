//! Forwarding over real UDP loopback, against a raw relay doing the same SRTP work.
//!
//! Not a criterion bench: it prints packets per second of the forwarding thread's own
//! CPU time ("per core"), read from /proc, so the other processes on the machine do not
//! distort it. The two modes alternate round by round (raw, sfu, raw, sfu, ...) so a
//! change in the machine's load hits both alike; each round's ratio is printed, then
//! the median.
//!
//! - `sfu`: one SFU worker (`Sfu::start`); in each room a native publisher blasts
//!   pre-made SRTP audio packets (160-byte payload) from its socket and a subscriber
//!   socket counts what arrives.
//! - `raw`: one thread with one socket, `recvmmsg` (quinn-udp) -> AES-256-GCM open ->
//!   AES-256-GCM seal under another key -> `sendmmsg` to the sender's own receiver: the
//!   AEAD work of an SRTP (AEAD_AES_256_GCM, what str0m negotiates between its own
//!   peers) decrypt+encrypt, and nothing else.
//!
//! Shapes: one publisher far above the per-peer packet budget (the worst case for str0m,
//! whose TWCC receive register grows with the backlog), and 32 consultations whose
//! publishers each stay within the budget, as concurrent consultations do.
//!
//! Run: `cargo bench -p confide-sfu --bench udp` (`-- --shape 32` runs one shape).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use common::udp::{Rig, now};
use confide_client::Kind;
use confide_sfu::{ParticipantId, RoomId, SfuConfig};
use quinn_udp::{RecvMeta, UdpSocketState};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::net::addr::SocketAddrArg;
use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny};

/// Datagrams per blast; each mode blasts `ROUNDS` times.
const PACKETS: usize = 150_000;
const ROUNDS: usize = 5;
const PAYLOAD: usize = 160;
/// Traffic shapes (see the module docs): name and number of rooms.
const SHAPES: [(&str, usize); 2] = [("one publisher", 1), ("32 consultations", 32)];

/// On-CPU time of the threads whose name starts with `prefix`, in nanoseconds from
/// the scheduler's own accounting (`/proc/.../schedstat`), not 10 ms ticks.
fn thread_cpu(prefix: &str) -> Duration {
    let mut total = 0u64;
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    for t in dir.flatten() {
        let p = t.path();
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(p.join("schedstat")).unwrap_or_default();
        total += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Duration::from_nanos(total)
}

/// Sends every datagram from its publisher's socket as fast as the sockets take them.
fn blast(sockets: &[&UdpSocket], dst: &[SocketAddr], packets: &[(usize, Vec<u8>)]) {
    for (i, p) in packets {
        while sockets[*i].send_to(p, dst[*i]).is_err() {
            std::thread::yield_now();
        }
    }
}

/// Counts datagrams arriving on any of `sockets` until `stop`.
fn sink(
    sockets: Vec<UdpSocket>,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            let mut fds: Vec<PollFd<'_>> = sockets
                .iter()
                .map(|s| PollFd::new(s, PollFlags::IN))
                .collect();
            let ts = Timespec {
                tv_sec: 0,
                tv_nsec: 20_000_000,
            };
            let _ = rustix::event::poll(&mut fds, Some(&ts));
            for s in &sockets {
                while s.recv(&mut buf).is_ok() {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    })
}

/// Waits until `f` stops growing for 300 ms (or 20 s).
fn settle(f: impl Fn() -> u64) {
    let end = now() + Duration::from_secs(20);
    let mut last = f();
    while now() < end {
        std::thread::sleep(Duration::from_millis(300));
        let v = f();
        if v == last {
            return;
        }
        last = v;
    }
}

/// Round-robin over the publishers, as concurrent consultations interleave on the wire.
fn interleave(per_publisher: Vec<Vec<Vec<u8>>>) -> Vec<(usize, Vec<u8>)> {
    let mut iters: Vec<_> = per_publisher.into_iter().map(Vec::into_iter).collect();
    let mut out = Vec::with_capacity(PACKETS);
    loop {
        let before = out.len();
        for (i, it) in iters.iter_mut().enumerate() {
            if let Some(p) = it.next() {
                out.push((i, p));
            }
        }
        if out.len() == before {
            return out;
        }
    }
}

/// `rooms` two-party consultations on one worker; each room's first participant blasts
/// audio, the second only receives.
struct SfuSetup {
    rig: Rig,
    pairs: Vec<(usize, usize)>,
    stop: Arc<AtomicBool>,
    got: Arc<AtomicU64>,
    sink: Option<std::thread::JoinHandle<()>>,
}

impl SfuSetup {
    fn new(rooms: usize) -> Self {
        let cfg = SfuConfig {
            workers: 1,
            bwe_initial_bps: None,
            max_packets_per_sec: 0,
            stats_interval: None,
            ..SfuConfig::default()
        };
        let mut rig = Rig::start(cfg, RoomId(1));
        let mut pairs = Vec::with_capacity(rooms);
        for r in 1..=rooms as u64 {
            if r > 1 {
                rig.open_room(RoomId(r));
            }
            let a = rig.join_room(RoomId(r), ParticipantId(2 * r - 1));
            let b = rig.join_room(RoomId(r), ParticipantId(2 * r));
            pairs.push((a, b));
        }
        for &(a, b) in &pairs {
            rig.wait_tracks(a, 2);
            rig.wait_tracks(b, 2);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let got = Arc::new(AtomicU64::new(0));
        let sink = sink(
            pairs
                .iter()
                .map(|&(_, b)| rig.clients[b].socket.try_clone().unwrap())
                .collect(),
            stop.clone(),
            got.clone(),
        );
        SfuSetup {
            rig,
            pairs,
            stop,
            got,
            sink: Some(sink),
        }
    }

    fn forwarded(&self) -> u64 {
        self.rig.sfu.stats_now().total().audio_packets_out
    }

    /// One blast: packets forwarded and the worker's CPU time.
    fn round(&mut self) -> (u64, Duration) {
        let sfu = self.rig.sfu.room_addr(RoomId(1));
        let payload = vec![0x5a_u8; PAYLOAD];
        let per = PACKETS / self.pairs.len();
        // Fresh packets every round: SRTP would reject replayed ones.
        let mut per_publisher = Vec::with_capacity(self.pairs.len());
        for &(a, _) in &self.pairs {
            let mut packets = Vec::with_capacity(per);
            while packets.len() < per {
                let c = &mut self.rig.clients[a].client;
                c.send_frame(now(), Kind::Audio, &payload).unwrap();
                while let Some((dst, d)) = c.poll_transmit() {
                    if dst == sfu
                        && matches!(d.first(), Some(128..=191))
                        && !(192..=223).contains(&d[1])
                    {
                        packets.push(d);
                    }
                }
            }
            per_publisher.push(packets);
        }
        let packets = interleave(per_publisher);
        let sockets: Vec<&UdpSocket> = self
            .pairs
            .iter()
            .map(|&(a, _)| &self.rig.clients[a].socket)
            .collect();
        let dst = vec![sfu; self.pairs.len()];
        let (cpu0, out0) = (thread_cpu("sfu-worker"), self.forwarded());
        blast(&sockets, &dst, &packets);
        settle(|| self.forwarded());
        let (cpu1, out1) = (thread_cpu("sfu-worker"), self.forwarded());
        // Let the publishers' RTCP and the SFU's feedback catch up between rounds.
        self.rig.run_for(Duration::from_millis(200));
        (out1 - out0, cpu1.saturating_sub(cpu0))
    }

    /// Stops the sink; returns what the subscribers received.
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.sink.take() {
            t.join().unwrap();
        }
        let st = self.rig.sfu.stats_now().total();
        println!(
            "  sfu worker counters: {} datagrams in, {} RTP in, {} RTP out, drops {:?}",
            st.datagrams_in,
            st.audio_packets_in + st.video_packets_in,
            st.audio_packets_out + st.video_packets_out,
            st.drops
        );
        let got = self.got.load(Ordering::Relaxed);
        drop(self.rig);
        // The worker stops at its next loop turn; keep its last CPU out of the next shape.
        std::thread::sleep(Duration::from_millis(500));
        got
    }
}

fn key(b: u8) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[b; 32]).unwrap())
}

/// RFC 7714 style nonce: salt XOR (ssrc, seq) from the RTP header.
fn nonce(header: &[u8]) -> Nonce {
    let mut n = [0x42u8; 12];
    for (i, b) in header[8..12].iter().enumerate() {
        n[2 + i] ^= b;
    }
    n[10] ^= header[2];
    n[11] ^= header[3];
    Nonce::assume_unique_for_key(n)
}

fn raw_relay(
    socket: UdpSocket,
    routes: HashMap<SocketAddr, SocketAddr>,
    stop: Arc<AtomicBool>,
    relayed: Arc<AtomicU64>,
) {
    const BATCH: usize = quinn_udp::BATCH_SIZE;
    let state = UdpSocketState::new((&socket).into()).unwrap();
    // The same socket buffers as the SFU's workers.
    let _ = state.set_send_buffer_size((&socket).into(), 4 << 20);
    let _ = state.set_recv_buffer_size((&socket).into(), 4 << 20);
    let (kin, kout) = (key(1), key(2));
    let mut storage = vec![0u8; BATCH * 2048];
    let mut metas = [RecvMeta::default(); BATCH];
    let mut lens = [0usize; BATCH];
    let mut dsts: [SocketAddrAny; BATCH] = std::array::from_fn(|_| {
        // Placeholder until a datagram fills the slot.
        SocketAddr::from(([127, 0, 0, 1], 9)).as_any()
    });
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(&socket, PollFlags::IN)];
        let ts = Timespec {
            tv_sec: 0,
            tv_nsec: 20_000_000,
        };
        let _ = rustix::event::poll(&mut fds, Some(&ts));
        loop {
            let n = {
                let mut chunks = storage.chunks_mut(2048);
                let mut iovs: [IoSliceMut<'_>; BATCH] =
                    std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap()));
                match state.recv((&socket).into(), &mut iovs, &mut metas) {
                    Ok(n) => n,
                    Err(_) => break,
                }
            };
            for (i, len) in lens.iter_mut().enumerate().take(n) {
                let buf = &mut storage[i * 2048..i * 2048 + 2048];
                let m = metas[i].len;
                let Some(dst) = routes.get(&metas[i].addr) else {
                    *len = 0;
                    continue;
                };
                dsts[i] = dst.as_any();
                let (header, body) = buf.split_at_mut(12);
                let hdr = <[u8; 12]>::try_from(&header[..12]).unwrap();
                let Ok(plain) =
                    kin.open_in_place(nonce(header), Aad::from(hdr), &mut body[..m - 12])
                else {
                    *len = 0;
                    continue;
                };
                let pl = plain.len();
                let tag = kout
                    .seal_in_place_separate_tag(nonce(header), Aad::from(hdr), &mut body[..pl])
                    .unwrap();
                body[pl..pl + 16].copy_from_slice(tag.as_ref());
                *len = 12 + pl + 16;
            }
            let iovs: [[IoSlice<'_>; 1]; BATCH] =
                std::array::from_fn(|i| [IoSlice::new(&storage[i * 2048..i * 2048 + lens[i]])]);
            let mut controls: [SendAncillaryBuffer<'_, '_, '_>; BATCH] =
                std::array::from_fn(|_| SendAncillaryBuffer::default());
            let mut parts = dsts.iter().zip(iovs.iter()).zip(controls.iter_mut());
            let mut msgs: [MMsgHdr<'_>; BATCH] = std::array::from_fn(|_| {
                let ((dst, iov), c) = parts.next().unwrap();
                MMsgHdr::new_with_addr(dst, iov, c)
            });
            let mut sent = 0;
            while sent < n {
                match rustix::net::sendmmsg(&socket, &mut msgs[sent..n], SendFlags::empty()) {
                    Ok(k) => sent += k.max(1),
                    Err(_) => std::thread::yield_now(),
                }
            }
            relayed.fetch_add(n as u64, Ordering::Relaxed);
            if n < BATCH {
                break;
            }
        }
    }
}

/// The same traffic shape as [`SfuSetup`]: `sources` senders, each relayed to its own
/// receiver.
struct RawSetup {
    senders: Vec<UdpSocket>,
    relay_addr: SocketAddr,
    packets: Vec<(usize, Vec<u8>)>,
    stop: Arc<AtomicBool>,
    relayed: Arc<AtomicU64>,
    got: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl RawSetup {
    fn new(sources: usize) -> Self {
        let relay = UdpSocket::bind("127.0.0.1:0").unwrap();
        relay.set_nonblocking(true).unwrap();
        let relay_addr = relay.local_addr().unwrap();
        let bind = || {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_nonblocking(true).unwrap();
            s
        };
        let senders: Vec<UdpSocket> = (0..sources).map(|_| bind()).collect();
        let receivers: Vec<UdpSocket> = (0..sources).map(|_| bind()).collect();
        let routes: HashMap<SocketAddr, SocketAddr> = senders
            .iter()
            .zip(&receivers)
            .map(|(s, r)| (s.local_addr().unwrap(), r.local_addr().unwrap()))
            .collect();
        let k = key(1);
        let per_source = |src: usize| -> Vec<Vec<u8>> {
            (0..PACKETS / sources)
                .map(|i| {
                    let mut p = vec![
                        0x80,
                        111,
                        (i >> 8) as u8,
                        i as u8,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        src as u8,
                    ];
                    let aad = Aad::from(<[u8; 12]>::try_from(&p[..12]).unwrap());
                    let mut body = vec![0x5a_u8; PAYLOAD];
                    k.seal_in_place_append_tag(nonce(&p), aad, &mut body)
                        .unwrap();
                    p.extend_from_slice(&body);
                    p
                })
                .collect()
        };
        let packets = interleave((0..sources).map(per_source).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let relayed = Arc::new(AtomicU64::new(0));
        let got = Arc::new(AtomicU64::new(0));
        let relay_thread = {
            let (stop, relayed) = (stop.clone(), relayed.clone());
            std::thread::Builder::new()
                .name("raw-relay".into())
                .spawn(move || raw_relay(relay, routes, stop, relayed))
                .unwrap()
        };
        let sink = sink(receivers, stop.clone(), got.clone());
        RawSetup {
            senders,
            relay_addr,
            packets,
            stop,
            relayed,
            got,
            threads: vec![relay_thread, sink],
        }
    }

    /// One blast (the relay does not check replays, so the packets are reused).
    fn round(&mut self) -> (u64, Duration) {
        let sockets: Vec<&UdpSocket> = self.senders.iter().collect();
        let dst = vec![self.relay_addr; self.senders.len()];
        let (cpu0, n0) = (
            thread_cpu("raw-relay"),
            self.relayed.load(Ordering::Relaxed),
        );
        blast(&sockets, &dst, &self.packets);
        settle(|| self.relayed.load(Ordering::Relaxed));
        let (cpu1, n1) = (
            thread_cpu("raw-relay"),
            self.relayed.load(Ordering::Relaxed),
        );
        (n1 - n0, cpu1.saturating_sub(cpu0))
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        self.got.load(Ordering::Relaxed)
    }
}

fn main() {
    // `cargo test --benches` runs this binary with `--bench` absent: keep that quick.
    if !std::env::args().any(|a| a == "--bench") {
        println!("udp bench: run with `cargo bench -p confide-sfu --bench udp`");
        return;
    }
    #[expect(clippy::disallowed_methods, reason = "benchmark wall time")]
    let t0 = Instant::now();
    let rate = |n: u64, cpu: Duration| n as f64 / cpu.as_secs_f64().max(1e-9);
    // `--shape N` runs only the shape with N rooms (for profiling one of them).
    let only: Option<usize> = std::env::args()
        .skip_while(|a| a != "--shape")
        .nth(1)
        .and_then(|v| v.parse().ok());
    for (name, rooms) in SHAPES {
        if only.is_some_and(|n| n != rooms) {
            continue;
        }
        println!("{name}:");
        let mut raw = RawSetup::new(rooms);
        let mut sfu = SfuSetup::new(rooms);
        let (mut raw_n, mut raw_cpu, mut sfu_n, mut sfu_cpu) =
            (0, Duration::ZERO, 0, Duration::ZERO);
        let mut ratios = Vec::with_capacity(ROUNDS);
        for r in 0..ROUNDS {
            let (rn, rc) = raw.round();
            let (sn, sc) = sfu.round();
            let ratio = 100.0 * rate(sn, sc) / rate(rn, rc);
            println!(
                "  round {r}: raw {:.0} pps/core ({rn} packets), sfu {:.0} pps/core ({sn} packets), sfu / raw = {ratio:.0} %",
                rate(rn, rc),
                rate(sn, sc)
            );
            ratios.push(ratio);
            (raw_n, raw_cpu, sfu_n, sfu_cpu) = (raw_n + rn, raw_cpu + rc, sfu_n + sn, sfu_cpu + sc);
        }
        let raw_got = raw.finish();
        let sfu_got = sfu.finish();
        ratios.sort_by(f64::total_cmp);
        println!(
            "  raw relay: {raw_n} packets relayed ({raw_got} received) in {raw_cpu:?} CPU: {:.0} packets/s per core",
            rate(raw_n, raw_cpu)
        );
        println!(
            "  sfu worker: {sfu_n} packets forwarded ({sfu_got} received) in {sfu_cpu:?} CPU: {:.0} packets/s per core",
            rate(sfu_n, sfu_cpu)
        );
        println!(
            "  sfu / raw = {:.0} % overall, median round {:.0} %",
            100.0 * rate(sfu_n, sfu_cpu) / rate(raw_n, raw_cpu),
            ratios[ratios.len() / 2]
        );
    }
    println!("(wall time {:?})", t0.elapsed());
}
