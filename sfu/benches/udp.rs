//! Forwarding over real UDP loopback, against a raw relay doing the same SRTP work.
//!
//! Not a criterion bench: each mode runs once and prints packets per second of the
//! forwarding thread's own CPU time ("per core"), read from /proc, so the other
//! processes on the machine do not distort it.
//!
//! - `sfu`: one SFU worker (`Sfu::start`), a native publisher blasting pre-made SRTP
//!   audio packets (160-byte payload) from its socket, a subscriber socket counting.
//! - `raw`: one thread with one socket, `recvmmsg` (quinn-udp) -> AES-256-GCM open ->
//!   AES-256-GCM seal under another key -> `sendmmsg`, the AEAD work of an SRTP
//!   (AEAD_AES_256_GCM, what str0m negotiates between its own peers) decrypt+encrypt.
//!
//! Run: `cargo bench -p confide-sfu --bench udp`.

#[path = "../tests/common/mod.rs"]
mod common;

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
use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags};

/// Datagrams per blast; each mode blasts `ROUNDS` times and sums the rounds.
const PACKETS: usize = 150_000;
const ROUNDS: usize = 4;
const PAYLOAD: usize = 160;

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

/// Sends every datagram as fast as the socket takes them.
fn blast(socket: &UdpSocket, dst: SocketAddr, packets: &[Vec<u8>]) {
    for p in packets {
        while socket.send_to(p, dst).is_err() {
            std::thread::yield_now();
        }
    }
}

/// Counts datagrams arriving on `socket` until `stop`.
fn sink(
    socket: UdpSocket,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    socket.set_nonblocking(false).unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if socket.recv(&mut buf).is_ok() {
                count.fetch_add(1, Ordering::Relaxed);
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

fn sfu_mode() -> (u64, Duration, u64) {
    let cfg = SfuConfig {
        workers: 1,
        bwe_initial_bps: None,
        max_packets_per_sec: 0,
        stats_interval: None,
        ..SfuConfig::default()
    };
    let room = RoomId(1);
    let mut rig = Rig::start(cfg, room);
    let a = rig.join(ParticipantId(1));
    let b = rig.join(ParticipantId(2));
    rig.wait_tracks(a, 2);
    rig.wait_tracks(b, 2);
    let sfu = rig.sfu.room_addr(room);
    let payload = vec![0x5a_u8; PAYLOAD];
    let stop = Arc::new(AtomicBool::new(false));
    let got = Arc::new(AtomicU64::new(0));
    let t = sink(
        rig.clients[b].socket.try_clone().unwrap(),
        stop.clone(),
        got.clone(),
    );
    let out = |rig: &Rig| rig.sfu.stats_now().total().audio_packets_out;
    let (mut forwarded, mut cpu) = (0, Duration::ZERO);
    for _ in 0..ROUNDS {
        // Fresh packets every round: SRTP would reject replayed ones.
        let mut packets = Vec::with_capacity(PACKETS);
        while packets.len() < PACKETS {
            let c = &mut rig.clients[a].client;
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
        let (cpu0, out0) = (thread_cpu("sfu-worker"), out(&rig));
        blast(&rig.clients[a].socket, sfu, &packets);
        settle(|| out(&rig));
        let (cpu1, out1) = (thread_cpu("sfu-worker"), out(&rig));
        forwarded += out1 - out0;
        cpu += cpu1 - cpu0;
    }
    stop.store(true, Ordering::Relaxed);
    t.join().unwrap();
    let st = rig.sfu.stats_now().total();
    println!(
        "sfu worker counters: {} datagrams in, {} RTP in, {} RTP out, drops {:?}",
        st.datagrams_in,
        st.audio_packets_in + st.video_packets_in,
        st.audio_packets_out + st.video_packets_out,
        st.drops
    );
    (forwarded, cpu, got.load(Ordering::Relaxed))
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

fn raw_relay(socket: UdpSocket, dst: SocketAddr, stop: Arc<AtomicBool>, relayed: Arc<AtomicU64>) {
    const BATCH: usize = quinn_udp::BATCH_SIZE;
    let state = UdpSocketState::new((&socket).into()).unwrap();
    let (kin, kout) = (key(1), key(2));
    let mut storage = vec![0u8; BATCH * 2048];
    let mut metas = [RecvMeta::default(); BATCH];
    let mut lens = [0usize; BATCH];
    let dst_any = dst.as_any();
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
            let mut parts = iovs.iter().zip(controls.iter_mut());
            let mut msgs: [MMsgHdr<'_>; BATCH] = std::array::from_fn(|_| {
                let (iov, c) = parts.next().unwrap();
                MMsgHdr::new_with_addr(&dst_any, iov, c)
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

fn raw_mode() -> (u64, Duration, u64) {
    let relay = UdpSocket::bind("127.0.0.1:0").unwrap();
    relay.set_nonblocking(true).unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    sender.set_nonblocking(true).unwrap();
    let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
    let recv_addr = receiver.local_addr().unwrap();
    let k = key(1);
    let packets: Vec<Vec<u8>> = (0..PACKETS)
        .map(|i| {
            let mut p = vec![0x80, 111, (i >> 8) as u8, i as u8, 0, 0, 0, 0, 0, 0, 0, 7];
            let aad = Aad::from(<[u8; 12]>::try_from(&p[..12]).unwrap());
            let mut body = vec![0x5a_u8; PAYLOAD];
            k.seal_in_place_append_tag(nonce(&p), aad, &mut body)
                .unwrap();
            p.extend_from_slice(&body);
            p
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let relayed = Arc::new(AtomicU64::new(0));
    let got = Arc::new(AtomicU64::new(0));
    let r = {
        let (stop, relayed) = (stop.clone(), relayed.clone());
        std::thread::Builder::new()
            .name("raw-relay".into())
            .spawn(move || raw_relay(relay, recv_addr, stop, relayed))
            .unwrap()
    };
    let t = sink(receiver, stop.clone(), got.clone());
    let mut cpu = Duration::ZERO;
    for _ in 0..ROUNDS {
        let cpu0 = thread_cpu("raw-relay");
        blast(&sender, relay_addr, &packets);
        settle(|| relayed.load(Ordering::Relaxed));
        cpu += thread_cpu("raw-relay") - cpu0;
    }
    stop.store(true, Ordering::Relaxed);
    r.join().unwrap();
    t.join().unwrap();
    (
        relayed.load(Ordering::Relaxed),
        cpu,
        got.load(Ordering::Relaxed),
    )
}

fn main() {
    // `cargo test --benches` runs this binary with `--bench` absent: keep that quick.
    if !std::env::args().any(|a| a == "--bench") {
        println!("udp bench: run with `cargo bench -p confide-sfu --bench udp`");
        return;
    }
    #[expect(clippy::disallowed_methods, reason = "benchmark wall time")]
    let t0 = Instant::now();
    let (raw_n, raw_cpu, raw_got) = raw_mode();
    let (sfu_n, sfu_cpu, sfu_got) = sfu_mode();
    let rate = |n: u64, cpu: Duration| n as f64 / cpu.as_secs_f64().max(1e-9);
    let (raw_rate, sfu_rate) = (rate(raw_n, raw_cpu), rate(sfu_n, sfu_cpu));
    println!(
        "raw relay: {raw_n} packets relayed ({raw_got} received) in {raw_cpu:?} CPU: {raw_rate:.0} packets/s per core"
    );
    println!(
        "sfu worker: {sfu_n} packets forwarded ({sfu_got} received) in {sfu_cpu:?} CPU: {sfu_rate:.0} packets/s per core"
    );
    println!("sfu / raw = {:.0} %", 100.0 * sfu_rate / raw_rate);
    println!("(wall time {:?})", t0.elapsed());
}
