//! The per-packet forward step, in memory: one SRTP packet from a publisher goes into
//! `SfuCore::handle_receive` (SRTP decrypt, route, header rewrite, SRTP encrypt for the
//! subscriber) and the resulting datagram comes out of `poll_transmit`. No sockets.
//!
//! Packets are made by a real native client (`confide-client`) beforehand, outside the
//! timed section. The pacer and bandwidth estimation are off so every packet leaves in
//! the same call (see docs/benchmarks.md, "SFU forwarding").
//!
//! Two shapes per size: `batch1` polls the transmits after every datagram (one packet
//! in flight, the worst case); `batch32` feeds 32 datagrams, then polls, which is what a
//! worker does with one full `recvmmsg` batch.

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use common::Sim;
use confide_client::Kind;
use confide_sfu::ParticipantId;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// Packets made (outside the timed section) per round.
const CHUNK: usize = 1024;

/// A connected 1:1 room whose participant 1 publishes; returns the sim and A's index.
fn setup() -> (Sim, usize) {
    let mut sim = Sim::with_config(11, |c| {
        c.bwe_initial_bps = None;
        c.max_packets_per_sec = 0;
        c.stats_interval = None;
    });
    let a = sim.join(ParticipantId(1));
    let b = sim.join(ParticipantId(2));
    sim.wait_tracks(a, 2);
    sim.wait_tracks(b, 2);
    (sim, a)
}

/// Makes `n` SRTP datagrams from the publisher, each one RTP packet of `kind`.
fn make_packets(sim: &mut Sim, a: usize, kind: Kind, payload: &[u8], n: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(n);
    let sfu = sim.sfu_addr;
    let mut tries = 0;
    while out.len() < n {
        tries += 1;
        assert!(
            tries < 10 * n + 100,
            "the publisher stopped producing packets"
        );
        sim.now += Duration::from_micros(500);
        let now = sim.now;
        sim.clients[a]
            .client
            .send_frame(now, kind, payload)
            .unwrap();
        while let Some((dst, d)) = sim.clients[a].client.poll_transmit() {
            // RTP only (RFC 5761: RTCP packet types sit at 192..=223 in byte 1).
            if dst == sfu
                && matches!(d.first(), Some(128..=191))
                && d.get(1).is_some_and(|b| !(192..=223).contains(b))
            {
                out.push(d);
            }
        }
    }
    out.truncate(n);
    out
}

fn forward(c: &mut Criterion) {
    let mut g = c.benchmark_group("sfu_forward_step");
    g.throughput(Throughput::Elements(1));
    for (name, kind, size, batch) in [
        ("audio_160B/batch1", Kind::Audio, 160usize, 1usize),
        ("audio_160B/batch32", Kind::Audio, 160, 32),
        ("video_1000B/batch1", Kind::Video, 1000, 1),
        ("video_1000B/batch32", Kind::Video, 1000, 32),
    ] {
        let (mut sim, a) = setup();
        let payload = vec![0x5a_u8; size];
        let (src, dst) = (sim.clients[a].addr, sim.sfu_addr);
        let b_idx = 1 - a;
        let to = sim.clients[b_idx].addr;
        g.bench_function(name, |bch| {
            bch.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters as usize;
                let mut out = Vec::with_capacity(CHUNK);
                while left > 0 {
                    let chunk = left.min(CHUNK);
                    let pkts = make_packets(&mut sim, a, kind, &payload, chunk);
                    let now = sim.now;
                    #[expect(clippy::disallowed_methods, reason = "benchmark timing")]
                    let t0 = Instant::now();
                    for b in pkts.chunks(batch) {
                        for p in b {
                            sim.core.handle_receive(now, src, dst, p);
                        }
                        // What a worker does with its transmit queue before `sendmmsg`.
                        while let Some(t) = sim.core.poll_transmit() {
                            out.push(black_box(t));
                        }
                    }
                    total += t0.elapsed();
                    // The step is only measured whole if every packet left for the
                    // subscriber inside the timed section (SRTP re-encryption included).
                    let forwarded = out.iter().filter(|t| t.destination == to).count();
                    assert!(
                        forwarded >= pkts.len(),
                        "{forwarded} of {} packets reached the subscriber in the timed section",
                        pkts.len()
                    );
                    // Outside the timed section: deliver, and let both clients and the
                    // SFU run their timers (RTCP keeps the subscriber alive).
                    for t in out.drain(..) {
                        if t.destination == to {
                            sim.clients[b_idx]
                                .client
                                .handle_receive(now, dst, to, &t.contents);
                        }
                    }
                    sim.run_for(Duration::from_millis(20));
                    left -= chunk;
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = forward
}
criterion_main!(benches);
