//! Real UDP on 127.0.0.1: `Sfu::start` worker threads, `SfuHandle` API and events, and
//! native clients on their own sockets. Bounded in time and traffic; no timing asserts.

mod common;

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::udp::Rig;
use common::{SECRET, contains, e2ee_keys, frames_for, open_all, seal_all};
use confide_client::Kind;
use confide_sfu::{DropReason, ParticipantId, RoomId, SfuConfig, SfuError, SfuEvent, TapEvent};

fn config(workers: usize) -> SfuConfig {
    SfuConfig {
        workers,
        ..SfuConfig::default()
    }
}

#[test]
fn udp_two_party_e2ee_through_worker_threads() {
    let leaked = Arc::new(AtomicBool::new(false));
    let tapped = Arc::new(AtomicU64::new(0));
    let mut cfg = config(2);
    let (l, t) = (leaked.clone(), tapped.clone());
    cfg.tap = Some(Arc::new(move |ev: TapEvent<'_>| {
        t.fetch_add(1, Ordering::Relaxed);
        if contains(ev.payload, SECRET) {
            l.store(true, Ordering::Relaxed);
        }
    }));
    let mut rig = Rig::start(cfg, RoomId(41));
    let mut keys = e2ee_keys(2);
    let a = rig.join(ParticipantId(1));
    let b = rig.join(ParticipantId(2));
    rig.wait_tracks(a, 2);
    rig.wait_tracks(b, 2);

    let (video, audio) = frames_for(1, 15);
    let (sv, sa) = seal_all(&mut keys[0].0, &video, &audio);
    rig.send_frames(a, &sv, &sa, |_| {});
    rig.run_until(Duration::from_secs(5), |r| {
        r.received(b, Kind::Video, "confide-1").len() == sv.len()
    });
    let rv = rig.received(b, Kind::Video, "confide-1");
    assert_eq!(rv, sv);
    assert_eq!(
        open_all(&mut keys[1].1, "confide-1", Kind::Video, &rv),
        video
    );
    // Audio is not retransmitted; on loopback nothing is lost, but only require that
    // whatever arrived is intact.
    let ra = rig.received(b, Kind::Audio, "confide-1");
    assert!(!ra.is_empty());
    assert!(ra.iter().all(|f| sa.contains(f)));

    assert!(tapped.load(Ordering::Relaxed) > 0);
    assert!(!leaked.load(Ordering::Relaxed), "plaintext reached the SFU");
    let connected = rig
        .sfu_events
        .iter()
        .filter(|e| matches!(e, SfuEvent::Connected { .. }))
        .count();
    assert_eq!(connected, 2);
    let stats = rig.rt.block_on(rig.sfu.stats());
    assert_eq!(stats.workers.len(), 2);
    let total = stats.total();
    assert!(total.video_packets_out >= sv.len() as u64);
    assert_eq!(total.active_connections, 2);
    assert!(total.datagrams_out > 0);
}

/// Bound to every address with the advertised one given, as an SFU behind a 1:1 NAT or
/// on a host with several interfaces runs: clients reach it through the advertised
/// address, and its ICE checks are answered (the agent must be told the packet came to
/// the advertised candidate, not to the wildcard socket).
#[test]
fn udp_bound_to_every_address_answers_on_the_advertised_one() {
    let mut cfg = config(1);
    cfg.bind_ip = std::net::Ipv4Addr::UNSPECIFIED.into();
    cfg.public_ip = Some(std::net::Ipv4Addr::LOCALHOST.into());
    let mut rig = Rig::start(cfg, RoomId(43));
    let mut keys = e2ee_keys(2);
    let a = rig.join(ParticipantId(1));
    let b = rig.join(ParticipantId(2));
    rig.wait_tracks(a, 2);
    rig.wait_tracks(b, 2);
    let (video, audio) = frames_for(1, 6);
    let (sv, sa) = seal_all(&mut keys[0].0, &video, &audio);
    rig.send_frames(a, &sv, &sa, |_| {});
    rig.run_until(Duration::from_secs(5), |r| {
        r.received(b, Kind::Video, "confide-1").len() == sv.len()
    });
    let rv = rig.received(b, Kind::Video, "confide-1");
    assert_eq!(
        open_all(&mut keys[1].1, "confide-1", Kind::Video, &rv),
        video
    );
}

#[test]
fn udp_three_party() {
    let mut rig = Rig::start(config(1), RoomId(3));
    let mut keys = e2ee_keys(3);
    let c: Vec<usize> = (1..=3).map(|id| rig.join(ParticipantId(id))).collect();
    for &i in &c {
        rig.wait_tracks(i, 4);
    }
    let mut sent = Vec::new();
    for (n, &i) in c.iter().enumerate() {
        let (v, a) = frames_for(n as u8 + 1, 6);
        let (sv, _sa) = seal_all(&mut keys[n].0, &v, &a);
        rig.send_frames(i, &sv, &[], |_| {});
        sent.push((v, sv));
    }
    rig.run_until(Duration::from_secs(5), |r| {
        c.iter().all(|&rx| {
            (0..3).filter(|m| *m != rx).all(|m| {
                r.received(rx, Kind::Video, &format!("confide-{}", m + 1))
                    .len()
                    == 6
            })
        })
    });
    for (n, &rx) in c.iter().enumerate() {
        for (m, (v, sv)) in sent.iter().enumerate() {
            if n == m {
                continue;
            }
            let stream = format!("confide-{}", m + 1);
            let rv = rig.received(rx, Kind::Video, &stream);
            assert_eq!(&rv, sv);
            assert_eq!(&open_all(&mut keys[n].1, &stream, Kind::Video, &rv), v);
        }
    }
}

#[test]
fn udp_api_errors_are_typed() {
    let rig = Rig::start(config(1), RoomId(5));
    let h = rig.sfu.clone();
    rig.rt.block_on(async {
        assert!(matches!(
            h.open_room(RoomId(5)).await,
            Err(SfuError::RoomExists)
        ));
        assert!(matches!(
            h.offer(RoomId(6), ParticipantId(1), "v=0".into()).await,
            Err(SfuError::UnknownRoom)
        ));
        assert!(matches!(
            h.answer(RoomId(5), ParticipantId(1), "v=0".into()).await,
            Err(SfuError::UnknownParticipant)
        ));
        assert!(matches!(
            h.candidate(RoomId(5), ParticipantId(1), "candidate:x".into())
                .await,
            Err(SfuError::UnknownParticipant)
        ));
        assert!(matches!(
            h.remove(RoomId(5), ParticipantId(1)).await,
            Err(SfuError::UnknownParticipant)
        ));
        h.close_room(RoomId(5)).await.unwrap();
        assert!(matches!(
            h.close_room(RoomId(5)).await,
            Err(SfuError::UnknownRoom)
        ));
    });
}

/// 100,000 random datagrams at a live worker while a consultation runs: every video
/// frame still arrives (NACK repairs anything the kernel dropped under the flood), the
/// garbage is counted, and the worker survives.
#[test]
fn udp_random_datagram_flood_does_not_stop_the_consultation() {
    const FLOOD: u64 = 100_000;
    let mut rig = Rig::start(config(1), RoomId(9));
    let mut keys = e2ee_keys(2);
    let a = rig.join(ParticipantId(1));
    let b = rig.join(ParticipantId(2));
    rig.wait_tracks(a, 2);
    rig.wait_tracks(b, 2);
    let target = rig.sfu.room_addr(RoomId(9));
    let flood = UdpSocket::bind("127.0.0.1:0").unwrap();
    flood.set_nonblocking(true).unwrap();
    let mut rng: u64 = 0x2545_F491_4F6C_DD1D;
    let mut sent: u64 = 0;
    let mut buf = [0u8; 1200];
    let mut blast = |n: u64, sent: &mut u64| {
        for _ in 0..n {
            if *sent >= FLOOD {
                return;
            }
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let len = (rng % 1200) as usize;
            for (i, b) in buf[..len].iter_mut().enumerate() {
                *b = (rng >> ((i % 8) * 8)) as u8 ^ (i as u8).wrapping_mul(17);
            }
            // Make a share of them look like STUN, DTLS or RTP so they get past the
            // first-byte check and into the deeper paths.
            if len > 20 {
                match rng % 4 {
                    0 => {
                        buf[0] = 0x00;
                        buf[1] = 0x01;
                        buf[4..8].copy_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
                    }
                    1 => buf[0] = 22,
                    2 => buf[0] = 0x80,
                    _ => {}
                }
            }
            // A full send buffer only means the flood goes slower.
            while flood.send_to(&buf[..len], target).is_err() {
                std::thread::sleep(Duration::from_micros(200));
            }
            *sent += 1;
        }
    };
    let (video, audio) = frames_for(4, 45);
    let (sv, _sa) = seal_all(&mut keys[0].0, &video, &audio);
    rig.send_frames(a, &sv, &[], |_| blast(400, &mut sent));
    while sent < FLOOD {
        blast(2_000, &mut sent);
        rig.step();
    }
    rig.run_until(Duration::from_secs(10), |r| {
        r.received(b, Kind::Video, "confide-1").len() == sv.len()
    });
    let rv = rig.received(b, Kind::Video, "confide-1");
    assert_eq!(rv, sv);
    assert_eq!(
        open_all(&mut keys[1].1, "confide-1", Kind::Video, &rv),
        video
    );
    // The worker is alive and counted the garbage (some may have been dropped by the
    // kernel before it was read, so no exact count).
    rig.run_for(Duration::from_millis(300));
    let s = rig.sfu.stats_now().total();
    let dropped = s.drops(DropReason::Garbage) + s.drops(DropReason::UnknownSource);
    assert!(dropped > FLOOD / 10, "dropped {dropped}");
    assert_eq!(s.panics, 0);
    assert_eq!(s.active_connections, 2);
}
