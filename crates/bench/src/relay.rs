//! The limit we hold the SFU to: a minimal UDP relay with the same per-packet AEAD work,
//! on the same machine, under the same load.
//!
//! - Relay: `workers` threads (`raw-relay-N`), one socket each, consultations pinned
//!   to a worker like the SFU pins rooms. Per datagram: `recvmmsg` (quinn-udp) ->
//!   AES-256-GCM open under the sender's key -> for every other participant of the
//!   consultation, AES-256-GCM seal under that receiver's key -> `sendmmsg`. That is the
//!   SRTP work of an SFU leg (str0m negotiates AEAD_AES_256_GCM) and nothing else: no
//!   RTP/RTCP state, no NACK buffers, no congestion control, no ICE/DTLS.
//! - Load: the same consultations, participants, packet sizes and rates as the SFU run
//!   (video frames sliced like the VP8 packetizer, audio at its packet rate), sent by
//!   `load` threads that seal each packet and open and time each one received.
//!
//! Packet: 24 clear bytes (sender, kind, sequence number, send time; the AAD, like an
//! RTP header) then the sealed payload and its 16-byte tag.

use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use confide_client::Traffic;
use quinn_udp::{RecvMeta, UdpSocketState};
use rustix::event::{PollFd, PollFlags, Timespec, epoll};
use rustix::net::addr::SocketAddrArg;
use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny};

use crate::report::{Hist, RunResult};
use crate::{Options, Progress, sys};

const HDR: usize = 24;
const TAG: usize = 16;
const SLICE: usize = 1100;
const BATCH: usize = quinn_udp::BATCH_SIZE;
const SLOT: usize = 2048;

fn key(seed: u64) -> LessSafeKey {
    let mut k = [0u8; 32];
    k[..8].copy_from_slice(&seed.to_be_bytes());
    k[8] = 0xC0;
    // Invariant: a 32-byte key is valid for AES-256-GCM.
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &k).expect("32-byte key"))
}

fn nonce(sender: u32, seq: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&sender.to_be_bytes());
    n[4..].copy_from_slice(&seq.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn header(p: &[u8]) -> Option<(u32, u8, u64, u64)> {
    let h = p.get(..HDR)?;
    let sender = u32::from_be_bytes(h[0..4].try_into().ok()?);
    let seq = u64::from_be_bytes(h[8..16].try_into().ok()?);
    let sent = u64::from_be_bytes(h[16..24].try_into().ok()?);
    Some((sender, h[4], seq, sent))
}

/// A participant of the load: its socket, keys and schedule.
struct Peer {
    id: u32,
    socket: UdpSocket,
    relay: SocketAddr,
    up: LessSafeKey,
    down: LessSafeKey,
    seq: u64,
    next_audio: Instant,
    next_video: Instant,
    frame: u64,
    /// Per sender: (first seq, max seq, received) since the last reset.
    rx: HashMap<u32, (u64, u64, u64)>,
}

struct Route {
    sender: u32,
    up: LessSafeKey,
    to: Vec<(SocketAddr, LessSafeKey)>,
}

#[derive(Default)]
struct Counters {
    pkts_in: AtomicU64,
    pkts_out: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

fn relay_worker(
    socket: UdpSocket,
    routes: HashMap<SocketAddr, Route>,
    stop: Arc<AtomicBool>,
    c: Arc<Counters>,
) {
    let Ok(state) = UdpSocketState::new((&socket).into()) else {
        return;
    };
    let _ = state.set_recv_buffer_size((&socket).into(), 4 << 20);
    let _ = state.set_send_buffer_size((&socket).into(), 4 << 20);
    let mut recv_buf = vec![0u8; BATCH * SLOT];
    let mut metas = [RecvMeta::default(); BATCH];
    let mut out_buf = vec![0u8; BATCH * SLOT];
    let mut out: Vec<(SocketAddr, usize)> = Vec::with_capacity(BATCH);
    let (mut pin, mut pout, mut bin, mut bout) = (0u64, 0u64, 0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [PollFd::new(&socket, PollFlags::IN)];
        let ts = Timespec {
            tv_sec: 0,
            tv_nsec: 50_000_000,
        };
        let _ = rustix::event::poll(&mut fds, Some(&ts));
        loop {
            let n = {
                let mut chunks = recv_buf.chunks_mut(SLOT);
                let mut iovs: [IoSliceMut<'_>; BATCH] =
                    std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
                match state.recv((&socket).into(), &mut iovs, &mut metas) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            };
            for (i, meta) in metas.iter().enumerate().take(n) {
                let buf = &mut recv_buf[i * SLOT..i * SLOT + meta.len.min(SLOT)];
                pin += 1;
                bin += buf.len() as u64;
                let Some(route) = routes.get(&meta.addr) else {
                    continue;
                };
                let Some((sender, _, seq, _)) = header(buf) else {
                    continue;
                };
                if sender != route.sender || buf.len() < HDR + TAG {
                    continue;
                }
                let (hdr, body) = buf.split_at_mut(HDR);
                let Ok(plain) = route
                    .up
                    .open_in_place(nonce(sender, seq), Aad::from(&*hdr), body)
                else {
                    continue;
                };
                let plain_len = plain.len();
                for (dst, k) in &route.to {
                    if out.len() == BATCH {
                        send_all(&socket, &out_buf, &mut out, &mut pout, &mut bout);
                    }
                    let j = out.len();
                    let slot = &mut out_buf[j * SLOT..(j + 1) * SLOT];
                    slot[..HDR].copy_from_slice(hdr);
                    slot[HDR..HDR + plain_len].copy_from_slice(&body[..plain_len]);
                    let (h2, rest) = slot.split_at_mut(HDR);
                    let Ok(tag) = k.seal_in_place_separate_tag(
                        nonce(sender, seq),
                        Aad::from(&*h2),
                        &mut rest[..plain_len],
                    ) else {
                        continue;
                    };
                    rest[plain_len..plain_len + TAG].copy_from_slice(tag.as_ref());
                    out.push((*dst, HDR + plain_len + TAG));
                }
            }
            send_all(&socket, &out_buf, &mut out, &mut pout, &mut bout);
            if n < BATCH {
                break;
            }
        }
        c.pkts_in.store(pin, Ordering::Relaxed);
        c.pkts_out.store(pout, Ordering::Relaxed);
        c.bytes_in.store(bin, Ordering::Relaxed);
        c.bytes_out.store(bout, Ordering::Relaxed);
    }
}

/// One `sendmmsg` for the queued datagrams (retrying briefly when the buffer is full).
fn send_all(
    socket: &UdpSocket,
    buf: &[u8],
    out: &mut Vec<(SocketAddr, usize)>,
    pkts: &mut u64,
    bytes: &mut u64,
) {
    let mut sent = 0;
    let mut tries = 0;
    while sent < out.len() && tries < 100 {
        let batch = &out[sent..];
        let n = batch.len().min(BATCH);
        // Fixed arrays: no allocation per batch (as in the SFU edge).
        let addrs: [SocketAddrAny; BATCH] =
            std::array::from_fn(|i| batch.get(i).unwrap_or(&batch[0]).0.as_any());
        let iovs: [[IoSlice<'_>; 1]; BATCH] = std::array::from_fn(|i| {
            let j = sent + i.min(n - 1);
            [IoSlice::new(&buf[j * SLOT..j * SLOT + out[j].1])]
        });
        let mut controls: [SendAncillaryBuffer<'_, '_, '_>; BATCH] =
            std::array::from_fn(|_| SendAncillaryBuffer::default());
        let mut parts = addrs.iter().zip(iovs.iter()).zip(controls.iter_mut());
        let mut msgs: [MMsgHdr<'_>; BATCH] = std::array::from_fn(|_| {
            // Invariant: the three arrays have BATCH entries each.
            let ((a, iov), c) = parts.next().expect("BATCH entries");
            MMsgHdr::new_with_addr(a, iov, c)
        });
        match rustix::net::sendmmsg(socket, &mut msgs[..n], SendFlags::empty()) {
            Ok(k) => {
                for (_, len) in &batch[..k] {
                    *bytes += *len as u64;
                }
                *pkts += k as u64;
                sent += k.max(1);
            }
            Err(rustix::io::Errno::AGAIN) => {
                tries += 1;
                let mut fds = [PollFd::new(socket, PollFlags::OUT)];
                let ts = Timespec {
                    tv_sec: 0,
                    tv_nsec: 1_000_000,
                };
                let _ = rustix::event::poll(&mut fds, Some(&ts));
            }
            Err(_) => sent += 1,
        }
    }
    out.clear();
}

/// What the load threads measured.
#[derive(Default)]
struct LoadStats {
    hist: Hist,
    sent: u64,
    received: u64,
    expected: u64,
    jitter_sum_us: f64,
    jitter_n: u64,
}

#[allow(clippy::too_many_arguments)]
fn load_worker(
    mut peers: Vec<Peer>,
    traffic: Traffic,
    epoch: Instant,
    stop: Arc<AtomicBool>,
    reset: Arc<AtomicU64>,
    out: std::sync::mpsc::Sender<LoadStats>,
    send_errors: Arc<AtomicU64>,
) {
    let Ok(ep) = epoll::create(epoll::CreateFlags::CLOEXEC) else {
        return;
    };
    for (i, p) in peers.iter().enumerate() {
        let _ = epoll::add(
            &ep,
            &p.socket,
            epoll::EventData::new_u64(i as u64),
            epoll::EventFlags::IN,
        );
    }
    let (delta, key_size) = traffic.frame_sizes();
    let gop = (traffic.keyframe_interval.as_secs_f64() * traffic.fps as f64)
        .round()
        .max(1.0) as u64;
    let mut st = LoadStats::default();
    let mut seen_reset = 0;
    let mut buf = vec![0u8; SLOT];
    let mut events: Vec<epoll::Event> = Vec::with_capacity(256);
    // Jitter state per (receiver, sender): last transit, jitter (ns).
    let mut jit: HashMap<(u32, u32), (i64, f64)> = HashMap::new();
    // Frame sizes vary by up to +10 % around their nominal size.
    let payload = vec![0x55u8; 2 * key_size.max(delta).max(traffic.audio_bytes) + SLICE];
    while !stop.load(Ordering::Relaxed) {
        let r = reset.load(Ordering::Relaxed);
        if r != seen_reset {
            seen_reset = r;
            st = LoadStats::default();
            for p in &mut peers {
                p.rx.clear();
            }
            jit.clear();
        }
        let now = Instant::now();
        let mut next = now + Duration::from_millis(5);
        for p in &mut peers {
            // Audio.
            if traffic.audio && traffic.audio_pps > 0 {
                let period = Duration::from_secs(1) / traffic.audio_pps;
                if now.saturating_duration_since(p.next_audio) > Duration::from_millis(500) {
                    p.next_audio = now;
                }
                while p.next_audio <= now {
                    p.next_audio += period;
                    send_packet(
                        p,
                        0,
                        &payload[..traffic.audio_bytes],
                        epoch,
                        &mut st,
                        &send_errors,
                    );
                }
                next = next.min(p.next_audio);
            }
            if traffic.video && traffic.fps > 0 {
                let period = Duration::from_secs(1) / traffic.fps;
                if now.saturating_duration_since(p.next_video) > Duration::from_millis(500) {
                    p.next_video = now;
                }
                while p.next_video <= now {
                    p.next_video += period;
                    let size = if p.frame % gop == 0 { key_size } else { delta };
                    p.frame += 1;
                    let base = size - size / 10 + (p.frame as usize * 7_919) % (size / 5).max(1);
                    for chunk in payload[..base].chunks(SLICE) {
                        send_packet(p, 1, chunk, epoch, &mut st, &send_errors);
                    }
                }
                next = next.min(p.next_video);
            }
        }
        let wait = next.saturating_duration_since(Instant::now());
        let ts = Timespec {
            tv_sec: 0,
            tv_nsec: wait.subsec_nanos() as _,
        };
        events.clear();
        if epoll::wait(&ep, rustix::buffer::spare_capacity(&mut events), Some(&ts)).is_err() {
            continue;
        }
        for e in &events {
            let i = e.data.u64() as usize;
            let Some(p) = peers.get_mut(i) else { continue };
            while let Ok((n, _)) = p.socket.recv_from(&mut buf) {
                let now_ns = epoch.elapsed().as_nanos() as u64;
                let Some((sender, _, seq, sent)) = header(&buf[..n]) else {
                    continue;
                };
                if n < HDR + TAG {
                    continue;
                }
                let (hdr, body) = buf[..n].split_at_mut(HDR);
                if p.down
                    .open_in_place(nonce(sender, seq), Aad::from(&*hdr), body)
                    .is_err()
                {
                    continue;
                }
                st.received += 1;
                st.hist.record_ns(now_ns.saturating_sub(sent));
                let e = p.rx.entry(sender).or_insert((seq, seq, 0));
                let before = e.1 - e.0 + 1;
                if seq < e.0 {
                    continue;
                }
                e.1 = e.1.max(seq);
                e.2 += 1;
                let after = e.1 - e.0 + 1;
                st.expected += after - before + u64::from(e.2 == 1);
                let transit = now_ns as i64 - sent as i64;
                let j = jit.entry((p.id, sender)).or_insert((transit, 0.0));
                let d = (transit - j.0).abs() as f64;
                j.1 += (d - j.1) / 16.0;
                j.0 = transit;
            }
        }
    }
    for j in jit.values() {
        st.jitter_sum_us += j.1 / 1000.0;
        st.jitter_n += 1;
    }
    let _ = out.send(st);
}

fn send_packet(
    p: &mut Peer,
    kind: u8,
    payload: &[u8],
    epoch: Instant,
    st: &mut LoadStats,
    errors: &AtomicU64,
) {
    p.seq += 1;
    let mut pkt = [0u8; SLOT];
    pkt[0..4].copy_from_slice(&p.id.to_be_bytes());
    pkt[4] = kind;
    pkt[8..16].copy_from_slice(&p.seq.to_be_bytes());
    pkt[16..24].copy_from_slice(&(epoch.elapsed().as_nanos() as u64).to_be_bytes());
    let len = payload.len().min(SLOT - HDR - TAG);
    pkt[HDR..HDR + len].copy_from_slice(&payload[..len]);
    let (h, rest) = pkt.split_at_mut(HDR);
    let Ok(tag) =
        p.up.seal_in_place_separate_tag(nonce(p.id, p.seq), Aad::from(&*h), &mut rest[..len])
    else {
        return;
    };
    rest[len..len + TAG].copy_from_slice(tag.as_ref());
    if p.socket.send_to(&pkt[..HDR + len + TAG], p.relay).is_err() {
        errors.fetch_add(1, Ordering::Relaxed);
    }
    st.sent += 1;
}

/// Runs the raw relay under `n` consultations of the same traffic and measures.
pub fn run(
    opts: &Options,
    n: usize,
    duration: Duration,
    workers: usize,
    progress: &Progress,
) -> anyhow::Result<RunResult> {
    let per = 2 + opts.extra_participants;
    let ip: IpAddr = [127, 0, 0, 1].into();
    let relays: Vec<UdpSocket> = (0..workers.max(1))
        .map(|_| UdpSocket::bind((ip, 0)))
        .collect::<Result<_, _>>()?;
    let relay_addrs: Vec<SocketAddr> = relays
        .iter()
        .map(|s| s.local_addr())
        .collect::<Result<_, _>>()?;
    let epoch = Instant::now();
    let mut peers = Vec::new();
    let mut routes: Vec<HashMap<SocketAddr, Route>> =
        (0..relays.len()).map(|_| HashMap::new()).collect();
    for c in 0..n {
        let w = c % relays.len();
        let ids: Vec<u32> = (0..per).map(|k| (c * per + k) as u32 + 1).collect();
        let mut addrs = Vec::new();
        for (k, &id) in ids.iter().enumerate() {
            let s = UdpSocket::bind((ip, 0))?;
            s.set_nonblocking(true)?;
            addrs.push(s.local_addr()?);
            let phase = Duration::from_micros((id as u64 * 7_919) % 33_000);
            let start = Instant::now() + phase;
            peers.push(Peer {
                id,
                socket: s,
                relay: relay_addrs[w],
                up: key(id as u64),
                down: key(1 << 40 | id as u64),
                seq: 0,
                next_audio: start,
                next_video: start,
                frame: k as u64,
                rx: HashMap::new(),
            });
        }
        for (k, &id) in ids.iter().enumerate() {
            let to = ids
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != k)
                .map(|(j, &rid)| (addrs[j], key(1 << 40 | rid as u64)))
                .collect();
            routes[w].insert(
                addrs[k],
                Route {
                    sender: id,
                    up: key(id as u64),
                    to,
                },
            );
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let counters: Vec<Arc<Counters>> = relays
        .iter()
        .map(|_| Arc::new(Counters::default()))
        .collect();
    let mut threads = Vec::new();
    for (i, (sock, r)) in relays.into_iter().zip(routes).enumerate() {
        sock.set_nonblocking(true)?;
        let (stop, c) = (stop.clone(), counters[i].clone());
        threads.push(
            std::thread::Builder::new()
                .name(format!("raw-relay-{i}"))
                .spawn(move || relay_worker(sock, r, stop, c))?,
        );
    }
    let loads = opts.client_threads.max(1);
    let mut groups: Vec<Vec<Peer>> = (0..loads).map(|_| Vec::new()).collect();
    for (i, p) in peers.into_iter().enumerate() {
        // Keep a consultation's participants on one load thread, like the SFU run.
        groups[(i / per) % loads].push(p);
    }
    let reset = Arc::new(AtomicU64::new(0));
    let send_errors = Arc::new(AtomicU64::new(0));
    let (tx, rx) = std::sync::mpsc::channel();
    let traffic = opts.traffic();
    for (i, g) in groups.into_iter().enumerate() {
        let (stop, reset, tx, errs) =
            (stop.clone(), reset.clone(), tx.clone(), send_errors.clone());
        threads.push(
            std::thread::Builder::new()
                .name(format!("relay-load-{i}"))
                .spawn(move || load_worker(g, traffic, epoch, stop, reset, tx, errs))?,
        );
    }
    drop(tx);
    let total = |f: fn(&Counters) -> &AtomicU64| -> u64 {
        counters.iter().map(|c| f(c).load(Ordering::Relaxed)).sum()
    };
    std::thread::sleep(opts.warmup + Duration::from_millis(500));
    reset.fetch_add(1, Ordering::Relaxed);
    let (in0, out0, bin0, bout0) = (
        total(|c| &c.pkts_in),
        total(|c| &c.pkts_out),
        total(|c| &c.bytes_in),
        total(|c| &c.bytes_out),
    );
    let cpu0 = sys::thread_cpu("raw-relay");
    let proc0 = sys::process_cpu();
    let cores0 = sys::CoreTimes::now();
    let t0 = Instant::now();
    while t0.elapsed() < duration {
        std::thread::sleep(Duration::from_millis(250));
        let fwd = (total(|c| &c.pkts_out) - out0) as f64 / t0.elapsed().as_secs_f64();
        progress.measure("raw-relay", n, t0.elapsed(), duration, fwd);
    }
    let wall = t0.elapsed().as_secs_f64();
    let d = |a: u64, b: u64| (a - b) as f64 / wall;
    let pps_in = d(total(|c| &c.pkts_in), in0);
    let pps_out = d(total(|c| &c.pkts_out), out0);
    let mbps_in = d(total(|c| &c.bytes_in), bin0) * 8.0 / 1e6;
    let mbps_out = d(total(|c| &c.bytes_out), bout0) * 8.0 / 1e6;
    let cpu = (sys::thread_cpu("raw-relay") - cpu0).as_secs_f64() / wall;
    let proc_cpu = (sys::process_cpu() - proc0).as_secs_f64() / wall;
    let machine = sys::CoreTimes::now().busy_since(&cores0);
    stop.store(true, Ordering::Relaxed);
    let mut hist = Hist::default();
    let (mut received, mut expected, mut jsum, mut jn) = (0u64, 0u64, 0.0, 0u64);
    let mut reports = 0;
    for st in rx.iter() {
        reports += 1;
        hist.merge(&st.hist);
        received += st.received;
        expected += st.expected;
        jsum += st.jitter_sum_us;
        jn += st.jitter_n;
    }
    for t in threads {
        let _ = t.join();
    }
    anyhow::ensure!(reports == loads, "a relay load thread failed");
    let loss = if expected == 0 {
        0.0
    } else {
        expected.saturating_sub(received) as f64 / expected as f64
    };
    let latency = hist.quantiles();
    Ok(RunResult {
        system: "raw-relay".into(),
        consultations: n,
        participants_per_consultation: per,
        publishers: n * per,
        subscriptions: n * per * (per - 1),
        duration_s: wall,
        pps_in,
        pps_out,
        mbps_in,
        mbps_out,
        latency_ms: latency,
        loss,
        jitter_ms: if jn == 0 {
            0.0
        } else {
            jsum / jn as f64 / 1000.0
        },
        forwarder_cpu_cores: cpu,
        pps_out_per_core: if cpu > 0.0 { pps_out / cpu } else { 0.0 },
        process_cpu_cores: proc_cpu,
        machine_cpu_per_core: machine,
        rss_mb: sys::rss_bytes() as f64 / 1e6,
        healthy: loss <= 0.01 && latency.p99 <= 50.0,
        ..Default::default()
    })
}
