//! Simulated-time tests of `SfuCore` with native str0m clients (`confide-client`).
//!
//! No sockets and no sleeps: datagrams move between the core and the clients in memory,
//! and time jumps straight to the next deadline (str0m's tests/common.rs style).

mod common;

use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use common::{SECRET, Sim, contains, e2ee_keys, frames_for, open_all, seal_all};
use confide_client::{ClientEvent, Kind};
use confide_sfu::{DisconnectReason, DropReason, MediaKind, ParticipantId, SfuEvent, TapEvent};

/// A sim whose tap sends every forwarded payload to the returned receiver.
fn tapped(seed: u64) -> (Sim, mpsc::Receiver<(u64, MediaKind, Vec<u8>)>) {
    let (tx, rx) = mpsc::channel();
    let sim = Sim::with_config(seed, move |c| {
        c.tap = Some(Arc::new(move |ev: TapEvent<'_>| {
            let _ = tx.send((ev.from.0, ev.kind, ev.payload.to_vec()));
        }));
    });
    (sim, rx)
}

/// Joins the tap's RTP payloads of one publisher's video back into frames (VP8
/// descriptor byte stripped), to compare with what was sealed.
fn tap_frames(taps: &[(u64, MediaKind, Vec<u8>)], from: u64, kind: MediaKind) -> Vec<u8> {
    let mut all = Vec::new();
    for (f, k, p) in taps {
        if *f == from && *k == kind {
            all.extend_from_slice(if kind == MediaKind::Video { &p[1..] } else { p });
        }
    }
    all
}

#[test]
fn two_party_e2ee_frames_arrive_byte_identical_and_sfu_sees_only_ciphertext() {
    let (mut sim, tap) = tapped(1);
    let mut keys = e2ee_keys(2);
    let (a, b) = sim.pair();

    let (video, audio) = frames_for(1, 20);
    let (sv, sa) = seal_all(&mut keys[0].0, &video, &audio);
    sim.send_frames(a, &sv, &sa);
    sim.run_for(Duration::from_millis(500));

    // Byte-identical ciphertext at the receiver, which then decrypts it.
    let rv = sim.received(b, Kind::Video, "confide-1");
    let ra = sim.received(b, Kind::Audio, "confide-1");
    assert_eq!(rv, sv);
    assert_eq!(ra, sa);
    assert_eq!(
        open_all(&mut keys[1].1, "confide-1", Kind::Video, &rv),
        video
    );
    assert_eq!(
        open_all(&mut keys[1].1, "confide-1", Kind::Audio, &ra),
        audio
    );
    // A gets nothing of its own back.
    assert!(sim.received(a, Kind::Video, "confide-1").is_empty());

    // The tap saw exactly the sealed bytes, never the plaintext.
    let taps: Vec<_> = tap.try_iter().collect();
    assert!(!taps.is_empty());
    for (_, _, p) in &taps {
        assert!(!contains(p, SECRET), "plaintext reached the SFU");
    }
    assert_eq!(tap_frames(&taps, 1, MediaKind::Video), sv.concat());
    assert_eq!(tap_frames(&taps, 1, MediaKind::Audio), sa.concat());
    let s = *sim.core.stats();
    assert_eq!(s.audio_packets_in, audio.len() as u64);
    assert_eq!(s.audio_packets_out, audio.len() as u64);
    assert!(s.video_packets_out >= video.len() as u64);
}

#[test]
fn three_party_everyone_gets_everyone_encrypted() {
    let (mut sim, tap) = tapped(2);
    let mut keys = e2ee_keys(3);
    let c: Vec<usize> = (1..=3).map(|id| sim.join(ParticipantId(id))).collect();
    for &i in &c {
        sim.wait_tracks(i, 4);
    }
    let mut sent = Vec::new();
    for (n, &i) in c.iter().enumerate() {
        let (v, a) = frames_for(n as u8 + 1, 10);
        let (sv, sa) = seal_all(&mut keys[n].0, &v, &a);
        sim.send_frames(i, &sv, &sa);
        sent.push((v, a, sv, sa));
    }
    sim.run_for(Duration::from_millis(500));
    for (n, &rx) in c.iter().enumerate() {
        for (m, (v, a, sv, sa)) in sent.iter().enumerate() {
            let stream = format!("confide-{}", m + 1);
            if n == m {
                assert!(sim.received(rx, Kind::Video, &stream).is_empty());
                continue;
            }
            let rv = sim.received(rx, Kind::Video, &stream);
            let ra = sim.received(rx, Kind::Audio, &stream);
            assert_eq!(&rv, sv, "{n} from {m}");
            assert_eq!(&ra, sa, "{n} from {m}");
            assert_eq!(&open_all(&mut keys[n].1, &stream, Kind::Video, &rv), v);
            assert_eq!(&open_all(&mut keys[n].1, &stream, Kind::Audio, &ra), a);
        }
    }
    for (_, _, p) in tap.try_iter() {
        assert!(!contains(&p, SECRET));
    }
}

#[test]
fn late_joiner_gets_tracks_and_a_keyframe_request_goes_out() {
    let mut sim = Sim::new(5);
    let (a, _b) = sim.pair();
    let before = sim.core.stats().keyframe_requests_out;
    let (v, au) = frames_for(1, 12);
    sim.send_frames(a, &v[..6], &au[..6]);
    // Past the throttle window, a third participant joins mid-stream.
    sim.run_for(Duration::from_secs(1));
    let c = sim.join(ParticipantId(3));
    sim.wait_tracks(c, 4);
    sim.wait_tracks(a, 4);
    assert!(sim.core.stats().keyframe_requests_out > before);
    assert!(
        sim.clients[a]
            .events
            .contains(&ClientEvent::KeyframeRequested)
    );
    sim.send_frames(a, &v[6..], &au[6..]);
    sim.run_for(Duration::from_millis(300));
    // The joiner decodes from the first complete frame it got onwards.
    let got = sim.received(c, Kind::Video, "confide-1");
    assert!(!got.is_empty());
    assert!(v[6..].iter().all(|f| got.contains(f)));
}

#[test]
fn keyframe_request_travels_subscriber_to_sfu_to_publisher_throttled() {
    let mut sim = Sim::new(6);
    let (a, b) = sim.pair();
    let (v, au) = frames_for(1, 3);
    sim.send_frames(a, &v, &au);
    sim.run_for(Duration::from_secs(1));
    let count = |sim: &Sim| {
        sim.clients[a]
            .events
            .iter()
            .filter(|e| **e == ClientEvent::KeyframeRequested)
            .count()
    };
    let before = count(&sim);
    let in_before = sim.core.stats().keyframe_requests_in;
    let video_mid = sim.clients[b]
        .events
        .iter()
        .find_map(|e| match e {
            ClientEvent::TrackAdded {
                mid,
                kind: Kind::Video,
                ..
            } => Some(mid.clone()),
            _ => None,
        })
        .unwrap();
    // Five PLIs within 100 ms from the subscriber...
    for _ in 0..5 {
        let now = sim.now;
        assert!(sim.clients[b].client.request_keyframe(now, &video_mid));
        sim.run_for(Duration::from_millis(20));
    }
    sim.run_for(Duration::from_millis(100));
    // ...reach the SFU, and are merged into one request to the publisher.
    assert!(sim.core.stats().keyframe_requests_in > in_before);
    assert_eq!(count(&sim), before + 1);
    assert!(sim.sfu_events.iter().any(|e| matches!(
        e,
        SfuEvent::KeyframeNeeded {
            participant: ParticipantId(1),
            ..
        }
    )));
    // After the throttle window, a new request goes through again.
    sim.run_for(Duration::from_millis(600));
    let now = sim.now;
    sim.clients[b].client.request_keyframe(now, &video_mid);
    sim.run_for(Duration::from_millis(100));
    assert_eq!(count(&sim), before + 2);
}

#[test]
fn five_percent_loss_on_the_way_in_recovers_via_nack() {
    let mut sim = Sim::new(7);
    let mut keys = e2ee_keys(2);
    let (a, b) = sim.pair();
    sim.loss_in = 0.05;
    let (video, audio) = frames_for(3, 60);
    let (sv, sa) = seal_all(&mut keys[0].0, &video, &audio);
    sim.send_frames(a, &sv, &[]);
    sim.run_for(Duration::from_secs(2));
    assert!(sim.dropped_in > 0, "the test network dropped nothing");
    let rv = sim.received(b, Kind::Video, "confide-1");
    assert_eq!(rv, sv, "every video frame arrives despite loss");
    assert_eq!(
        open_all(&mut keys[1].1, "confide-1", Kind::Video, &rv),
        video
    );
    assert!(sim.core.stats().nacks_sent > 0);
    let _ = sa;
}

#[test]
fn removed_participant_stops_at_once() {
    let mut sim = Sim::new(3);
    let (a, _b) = sim.pair();
    let room = sim.room;
    sim.core.remove(sim.now, room, ParticipantId(1)).unwrap();
    let before = sim.core.stats().video_packets_out;
    let (v, a_frames) = frames_for(9, 5);
    // A keeps sending: the SFU no longer knows its address, so nothing is forwarded.
    sim.send_frames_unchecked(a, &v, &a_frames);
    sim.run_for(Duration::from_millis(300));
    assert_eq!(sim.core.stats().video_packets_out, before);
    assert!(sim.core.stats().drops(DropReason::UnknownSource) > 0);
    assert_eq!(sim.core.participants(room), vec![ParticipantId(2)]);
    // B's session is renegotiated without A's tracks.
    assert!(
        sim.sfu_events
            .iter()
            .filter(|e| matches!(
                e,
                SfuEvent::Offer {
                    participant: ParticipantId(2),
                    ..
                }
            ))
            .count()
            >= 2
    );
}

#[test]
fn silent_peer_times_out_with_event() {
    let mut sim = Sim::new(4);
    let a = sim.join(ParticipantId(1));
    let _b = sim.join(ParticipantId(2));
    sim.wait_tracks(a, 2);
    sim.mute(a);
    sim.run_for(Duration::from_secs(20));
    assert!(sim.sfu_events.iter().any(|e| matches!(
        e,
        SfuEvent::Disconnected {
            participant: ParticipantId(1),
            reason: DisconnectReason::Timeout,
            ..
        }
    )));
    assert_eq!(sim.core.participants(sim.room), vec![ParticipantId(2)]);
}

#[test]
fn close_room_stops_everything() {
    let mut sim = Sim::new(8);
    let (a, _b) = sim.pair();
    let room = sim.room;
    sim.core.close_room(sim.now, room).unwrap();
    assert_eq!(sim.core.stats().active_connections, 0);
    assert_eq!(sim.core.stats().rooms, 0);
    let (v, au) = frames_for(1, 3);
    sim.send_frames_unchecked(a, &v, &au);
    assert_eq!(sim.core.stats().video_packets_out, 0);
}

#[test]
fn ice_restart_by_client_renegotiates_and_asks_for_a_keyframe() {
    let mut sim = Sim::new(9);
    let (a, b) = sim.pair();
    let (v, au) = frames_for(1, 3);
    sim.send_frames(a, &v, &au);
    sim.run_for(Duration::from_secs(1));
    let out_before = sim.core.stats().keyframe_requests_out;
    // B restarts ICE: offer in, answer out, same participant.
    let offer = sim.clients[b].client.ice_restart().unwrap();
    let room = sim.room;
    let answer = sim
        .core
        .offer(sim.now, room, ParticipantId(2), &offer)
        .unwrap();
    let now = sim.now;
    sim.clients[b].client.handle_answer(now, &answer).unwrap();
    sim.run_for(Duration::from_secs(2));
    assert!(sim.core.stats().keyframe_requests_out > out_before);
    // Media still flows after the restart.
    let (v2, au2) = frames_for(2, 5);
    sim.send_frames(a, &v2, &au2);
    sim.run_for(Duration::from_millis(300));
    let got = sim.received(b, Kind::Video, "confide-1");
    assert!(v2.iter().all(|f| got.contains(f)));
}

#[test]
fn trickled_candidates_are_parsed_or_refused() {
    let mut sim = Sim::new(10);
    let _a = sim.join(ParticipantId(1));
    let room = sim.room;
    let now = sim.now;
    sim.core
        .candidate(
            now,
            room,
            ParticipantId(1),
            "a=candidate:1 1 udp 2130706431 127.0.0.1 40001 typ host",
        )
        .unwrap();
    sim.core.candidate(now, room, ParticipantId(1), "").unwrap();
    assert!(matches!(
        sim.core
            .candidate(now, room, ParticipantId(1), "candidate:garbage"),
        Err(confide_sfu::SfuError::InvalidCandidate)
    ));
}

/// RTP-shaped junk from a peer's own address (anyone on the path can send from it):
/// before SRTP authenticates a packet it spends none of the peer's packet budget, so the
/// real media that follows at once is forwarded whole. Before the fix the junk drained
/// the budget and the peer's next packets were dropped as rate-limited.
#[test]
fn garbage_rtp_from_a_peers_address_does_not_spend_its_budget() {
    let mut sim = Sim::with_config(12, |c| c.max_packets_per_sec = 200);
    let (a, b) = sim.pair();
    let (src, dst) = (sim.clients[a].addr, sim.sfu_addr);
    let mut junk = [0u8; 200];
    for i in 0..20_000u32 {
        junk[0] = 0x80;
        junk[1] = 111;
        junk[2..6].copy_from_slice(&i.to_be_bytes());
        let now = sim.now;
        sim.core.handle_receive(now, src, dst, &junk);
    }
    let s = *sim.core.stats();
    assert_eq!(s.drops(DropReason::RateLimited), 0);
    assert!(s.drops(DropReason::Rejected) >= 20_000);
    assert_eq!(s.panics, 0);
    // No pause for a refill: the publisher's real media flows straight away.
    let (v, au) = frames_for(5, 5);
    sim.send_frames(a, &v, &au);
    sim.run_for(Duration::from_millis(300));
    assert_eq!(sim.received(b, Kind::Video, "confide-1"), v);
    assert_eq!(sim.core.stats().drops(DropReason::RateLimited), 0);
}

/// The budget still holds for authenticated media: a publisher sending far more than
/// its packets per second gets the excess dropped, and the room carries on.
#[test]
fn authenticated_flood_from_a_peer_is_rate_limited() {
    let mut sim = Sim::with_config(13, |c| c.max_packets_per_sec = 40);
    let (a, b) = sim.pair();
    let (v, au) = frames_for(6, 30);
    sim.send_frames_unchecked(a, &v, &au);
    sim.run_for(Duration::from_millis(300));
    let s = *sim.core.stats();
    assert!(s.drops(DropReason::RateLimited) > 0, "{s:?}");
    assert_eq!(s.panics, 0);
    let got = sim.received(b, Kind::Video, "confide-1");
    assert!(!got.is_empty() && got.len() < v.len(), "{}", got.len());
}

/// Our ICE ufrag and password from an SDP answer.
fn ice_creds(sdp: &str) -> (String, String) {
    let find = |key: &str| {
        sdp.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .unwrap()
            .to_string()
    };
    (find("a=ice-ufrag:"), find("a=ice-pwd:"))
}

/// A STUN binding request with `user` as USERNAME, signed with `pass` if given.
fn stun_request(user: &str, pass: Option<&str>) -> Vec<u8> {
    use str0m::ice::{StunMessage, TransId};
    let hmac = str0m::crypto::from_feature_flags().sha1_hmac_provider;
    let msg = StunMessage::binding_request(user, TransId::new(), true, 7, 100, false);
    let mut buf = vec![0u8; 512];
    let n = msg
        .to_bytes(pass.map(str::as_bytes), &mut buf, |k, p| {
            hmac.sha1_hmac(k, p)
        })
        .unwrap();
    buf.truncate(n);
    buf
}

/// The ufrag of a STUN USERNAME travels in clear (and sits in the SDP), so it proves
/// nothing. Binding requests naming a peer from new addresses, unsigned or signed with
/// a wrong password, bind no address and evict none of the peer's real ones: its
/// media keeps flowing and the forged source stays unknown. Before the fix each one
/// bound its address to the peer and, past four, pushed the real address out.
#[test]
fn forged_stun_cannot_bind_a_new_address_or_evict_the_real_one() {
    let mut sim = Sim::new(31);
    let (a, b) = sim.pair();
    let (ufrag, pass) = ice_creds(&sim.clients[a].answer);
    let user = format!("{ufrag}:attacker");
    let dst = sim.sfu_addr;
    for i in 0..6u16 {
        let src: std::net::SocketAddr = format!("10.9.9.9:{}", 5000 + i).parse().unwrap();
        let now = sim.now;
        sim.core
            .handle_receive(now, src, dst, &stun_request(&user, None));
        sim.core.handle_receive(
            now,
            src,
            dst,
            &stun_request(&user, Some("not-the-password")),
        );
    }
    let s = *sim.core.stats();
    assert_eq!(s.drops(DropReason::UnverifiedStun), 12);
    // Nothing from a forged source reaches the peer.
    let forged: std::net::SocketAddr = "10.9.9.9:5000".parse().unwrap();
    let unknown = s.drops(DropReason::UnknownSource);
    let now = sim.now;
    sim.core.handle_receive(now, forged, dst, &[0x80; 100]);
    assert_eq!(
        sim.core.stats().drops(DropReason::UnknownSource),
        unknown + 1
    );
    // The real address is still bound: media flows at once, with no STUN round first.
    let (v, au) = frames_for(3, 4);
    sim.send_frames(a, &v, &au);
    sim.run_for(Duration::from_millis(300));
    assert_eq!(sim.received(b, Kind::Video, "confide-1"), v);

    // A request signed with the peer's ICE password does move it (NAT rebinding): what
    // arrives from the new address reaches the peer (and str0m rejects this junk).
    let moved: std::net::SocketAddr = "10.9.9.10:6000".parse().unwrap();
    let now = sim.now;
    sim.core
        .handle_receive(now, moved, dst, &stun_request(&user, Some(&pass)));
    let before = *sim.core.stats();
    sim.core.handle_receive(now, moved, dst, &[0x80; 100]);
    let after = *sim.core.stats();
    assert_eq!(after.drops(DropReason::UnverifiedStun), 12);
    assert_eq!(
        after.drops(DropReason::UnknownSource),
        before.drops(DropReason::UnknownSource)
    );
    assert_eq!(
        after.drops(DropReason::Rejected),
        before.drops(DropReason::Rejected) + 1
    );
}

/// Copies the last media section of `sdp` `extra` times with fresh mids.
fn with_extra_sections(sdp: &str, extra: usize, direction: &str) -> String {
    let at = sdp.rfind("m=").unwrap();
    let (head, last) = sdp.split_at(at);
    let mut out = format!("{head}{last}");
    for k in 0..extra {
        let mut sec = String::new();
        for line in last.lines() {
            if line.starts_with("a=mid:") {
                sec.push_str(&format!("a=mid:x{k}\r\n"));
            } else if matches!(
                line,
                "a=sendrecv" | "a=sendonly" | "a=recvonly" | "a=inactive"
            ) {
                sec.push_str(&format!("{direction}\r\n"));
            } else {
                sec.push_str(line);
                sec.push_str("\r\n");
            }
        }
        out.push_str(&sec);
    }
    out
}

/// An offer is refused before str0m parses it when it has more media sections than a
/// full room needs, or publishes more tracks than a participant may send; trickled
/// candidates are capped per ICE session. Each refusal names the cap.
#[test]
fn offers_and_candidates_past_the_caps_are_refused_with_clear_errors() {
    use confide_sfu::{
        MAX_CANDIDATES_PER_PEER, MAX_PARTICIPANTS, MAX_SECTIONS_PER_MEMBER, MAX_TRACKS_PER_PEER,
        SfuError,
    };
    let mut sim = Sim::new(14);
    let room = sim.room;
    let now = sim.now;
    let mut probe = confide_client::MediaClient::new(
        "127.0.0.1:41999".parse().unwrap(),
        confide_client::ClientConfig::default(),
        now,
    );
    let offer = probe.create_offer().unwrap();

    let big = with_extra_sections(
        &offer,
        MAX_SECTIONS_PER_MEMBER * MAX_PARTICIPANTS,
        "a=recvonly",
    );
    let e = sim
        .core
        .offer(now, room, ParticipantId(9), &big)
        .unwrap_err();
    assert!(
        matches!(e, SfuError::TooManyMediaSections { max, .. } if max == MAX_SECTIONS_PER_MEMBER * MAX_PARTICIPANTS),
        "{e}"
    );
    assert!(e.to_string().contains("at most"), "{e}");

    let publishing = with_extra_sections(&offer, MAX_TRACKS_PER_PEER - 1, "a=sendonly");
    let e = sim
        .core
        .offer(now, room, ParticipantId(9), &publishing)
        .unwrap_err();
    assert!(
        matches!(e, SfuError::TooManyTracks { found, max } if found == MAX_TRACKS_PER_PEER + 1 && max == MAX_TRACKS_PER_PEER),
        "{e}"
    );
    assert!(sim.core.participants(room).is_empty());

    // The same offer within the caps is fine.
    sim.core.offer(now, room, ParticipantId(9), &offer).unwrap();
    for i in 0..MAX_CANDIDATES_PER_PEER {
        let c = format!(
            "candidate:1 1 udp 2130706431 127.0.0.1 {} typ host",
            42000 + i
        );
        sim.core.candidate(now, room, ParticipantId(9), &c).unwrap();
    }
    let e = sim
        .core
        .candidate(
            now,
            room,
            ParticipantId(9),
            "candidate:1 1 udp 2130706431 127.0.0.1 43000 typ host",
        )
        .unwrap_err();
    assert!(matches!(e, SfuError::TooManyCandidates { .. }), "{e}");
}

/// The hot path sends in the same turn: a publisher's RTP packet goes out to the
/// subscriber from the `poll_transmit` right after `handle_receive`, with no timer in
/// between (str0m's direct-API writes do not wake its pacer by themselves; the core
/// runs it once per drained subscriber). Default config: pacer and estimation on.
#[test]
fn forwarded_packets_leave_in_the_same_turn() {
    let mut sim = Sim::new(23);
    let (a, b) = sim.pair();
    let (src, dst, to) = (sim.clients[a].addr, sim.sfu_addr, sim.clients[b].addr);
    let mut rtp = Vec::new();
    for _ in 0..20 {
        sim.now += Duration::from_millis(20);
        let now = sim.now;
        sim.clients[a]
            .client
            .send_frame(now, Kind::Audio, &[0x42; 120])
            .unwrap();
        while let Some((d, data)) = sim.clients[a].client.poll_transmit() {
            let rtcp = data.get(1).is_some_and(|b| (192..=223).contains(b));
            if d == dst && matches!(data.first(), Some(128..=191)) && !rtcp {
                rtp.push(data);
            }
        }
    }
    // The client's own pacer may still hold the last one.
    assert!(
        rtp.len() >= 15,
        "the publisher made {} RTP packets",
        rtp.len()
    );
    // One packet per turn, 20 ms apart, as audio arrives: each must leave at once.
    let mut same_turn = 0;
    for p in &rtp {
        sim.now += Duration::from_millis(20);
        sim.core.handle_receive(sim.now, src, dst, p);
        let mut sent = false;
        while let Some(t) = sim.core.poll_transmit() {
            sent |= t.destination == to && t.contents.len() > 120;
        }
        same_turn += usize::from(sent);
    }
    assert_eq!(same_turn, rtp.len(), "every packet left in its own turn");
}

/// A phone held sideways stamps its video with a rotation (CVO); the SFU forwards it so
/// the receiver can turn the picture upright.
#[test]
fn video_orientation_reaches_the_subscriber() {
    let mut sim = Sim::new(29);
    let (a, b) = sim.pair();
    let (video, audio) = frames_for(7, 6);
    sim.send_frames(a, &video, &audio);
    sim.run_for(Duration::from_millis(200));
    assert_eq!(sim.clients[b].client.received_video_orientation(), None);

    sim.clients[a].client.set_video_orientation(Some(3));
    let (video, audio) = frames_for(8, 6);
    sim.send_frames(a, &video, &audio);
    sim.run_for(Duration::from_millis(200));
    assert_eq!(
        sim.clients[b].client.received_video_orientation(),
        Some(3),
        "90 degrees clockwise, as sent"
    );
}
