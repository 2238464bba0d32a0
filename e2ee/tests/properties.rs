//! Property tests of the media layer: round trip, tamper rejection, replay, rotation.

use confide_e2ee::sframe::SframeKey;
use confide_e2ee::{
    CipherSuite, Codec, Error, FrameDecryptor, FrameEncryptor, SeededRng, SenderKey,
};
use proptest::prelude::*;

fn suite() -> impl Strategy<Value = CipherSuite> {
    proptest::sample::select(CipherSuite::ALL.to_vec())
}

fn codec() -> impl Strategy<Value = Codec> {
    proptest::sample::select(vec![Codec::Vp8, Codec::Opus, Codec::Other])
}

/// A sender with its key installed at a receiver.
fn pair(suite: CipherSuite, seed: [u8; 32]) -> (FrameEncryptor, FrameDecryptor) {
    let mut rng = SeededRng::from_seed(seed);
    let enc = FrameEncryptor::new(SenderKey::generate(suite, &mut rng)).expect("encryptor");
    let mut dec = FrameDecryptor::new();
    dec.install(received(&enc)).expect("install");
    (enc, dec)
}

/// The receiver's copy of a sender's current key.
fn received(enc: &FrameEncryptor) -> confide_e2ee::ReceivedSenderKey {
    enc.sender_key().to_received()
}

fn valid_frame(codec: Codec, mut frame: Vec<u8>) -> Vec<u8> {
    // VP8 frames are at least as long as their clear prefix (3 or 10 bytes).
    let need = codec.clear_prefix_len(&frame);
    if frame.len() < need {
        frame.resize(need, 0x5a);
    }
    frame
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// SFrame layer: any KID, any CTR, any plaintext and metadata round-trip.
    #[test]
    fn sframe_round_trip_any_kid_ctr(
        suite in suite(),
        kid in any::<u64>(),
        ctr in any::<u64>(),
        base_key in proptest::collection::vec(any::<u8>(), 16..64),
        metadata in proptest::collection::vec(any::<u8>(), 0..12),
        pt in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        let key = SframeKey::derive(suite, kid, &base_key).expect("key");
        let mut ct = Vec::new();
        key.encrypt(ctr, &metadata, &pt, &mut ct).expect("encrypt");
        prop_assert_eq!(ct.len(), pt.len() + suite.tag_len() + confide_e2ee::SframeHeader::new(kid, ctr).encoded_len());
        let mut back = Vec::new();
        let h = key.decrypt(&metadata, &ct, &mut back).expect("decrypt");
        prop_assert_eq!((h.kid, h.ctr), (kid, ctr));
        prop_assert_eq!(back, pt);
    }

    /// Media layer: any frame, any key, after any number of earlier frames and ratchet
    /// steps, round-trips; the clear prefix is left as is.
    #[test]
    fn frame_round_trip(
        suite in suite(),
        codec in codec(),
        seed in any::<[u8; 32]>(),
        earlier in 0usize..40,
        ratchets in 0usize..4,
        frame in proptest::collection::vec(any::<u8>(), 0..2000),
    ) {
        let frame = valid_frame(codec, frame);
        let (mut enc, mut dec) = pair(suite, seed);
        let mut wire = Vec::new();
        let mut out = Vec::new();
        for _ in 0..ratchets {
            enc.ratchet().expect("ratchet");
        }
        for _ in 0..earlier {
            enc.encrypt(codec, b"\x01earlier", &mut wire).expect("encrypt");
        }
        enc.encrypt(codec, &frame, &mut wire).expect("encrypt");
        let p = codec.clear_prefix_len(&frame);
        prop_assert_eq!(&wire[..p], &frame[..p]);
        let info = dec.decrypt(codec, &wire, &mut out).expect("decrypt");
        prop_assert_eq!(&out, &frame);
        prop_assert_eq!(info.header.is_some(), !frame.is_empty());

        // The in-place variants produce the same bytes.
        let (mut enc2, mut dec2) = pair(suite, seed);
        for _ in 0..ratchets {
            enc2.ratchet().expect("ratchet");
        }
        for _ in 0..earlier {
            enc2.encrypt(codec, b"\x01earlier", &mut Vec::new()).expect("encrypt");
        }
        let mut buf = frame.clone();
        enc2.encrypt_in_place(codec, &mut buf).expect("encrypt in place");
        prop_assert_eq!(&buf, &wire);
        dec2.decrypt_in_place(codec, &mut buf).expect("decrypt in place");
        prop_assert_eq!(buf, frame);
    }

    /// Any single flipped bit, in the clear prefix, the SFrame header, the ciphertext or
    /// the tag, is rejected.
    #[test]
    fn any_flipped_bit_is_rejected(
        suite in suite(),
        codec in codec(),
        seed in any::<[u8; 32]>(),
        frame in proptest::collection::vec(any::<u8>(), 1..300),
        bit in any::<prop::sample::Index>(),
    ) {
        let frame = valid_frame(codec, frame);
        let (mut enc, mut dec) = pair(suite, seed);
        let mut wire = Vec::new();
        enc.encrypt(codec, &frame, &mut wire).expect("encrypt");
        let i = bit.index(wire.len() * 8);
        wire[i / 8] ^= 1 << (i % 8);
        let res = dec.decrypt(codec, &wire, &mut Vec::new());
        prop_assert!(res.is_err(), "flipped bit {} of {} accepted", i, wire.len() * 8);
        prop_assert!(res.unwrap_err().is_from_peer());
    }

    /// A frame accepted once is refused the second time, in any order of arrival.
    #[test]
    fn replayed_frame_is_rejected(
        suite in suite(),
        seed in any::<[u8; 32]>(),
        n in 1usize..60,
        replay in any::<prop::sample::Index>(),
    ) {
        let (mut enc, mut dec) = pair(suite, seed);
        let mut frames = Vec::new();
        for i in 0..n {
            let mut wire = Vec::new();
            enc.encrypt(Codec::Opus, &[0x78, i as u8, 1, 2, 3], &mut wire).expect("encrypt");
            frames.push(wire);
        }
        // Deliver in reverse order (reordering inside the window is fine).
        for f in frames.iter().rev() {
            dec.decrypt(Codec::Opus, f, &mut Vec::new()).expect("first delivery");
        }
        let again = &frames[replay.index(n)];
        let res = dec.decrypt(Codec::Opus, again, &mut Vec::new());
        prop_assert!(matches!(res, Err(Error::Replay { .. })), "{:?}", res);
    }

    /// After a sender rotates (someone left) and the new key is in use, frames made with
    /// the old key, which the one who left still has, are rejected.
    #[test]
    fn removed_senders_old_key_is_rejected_after_rotation(
        suite in suite(),
        seed in any::<[u8; 32]>(),
        frame in proptest::collection::vec(any::<u8>(), 1..200),
    ) {
        let (mut enc, mut dec) = pair(suite, seed);
        // The leaver keeps a copy of the old generation's key material: model it as an
        // encryptor holding the same key at a counter never used by the sender.
        let (mut leaver, _) = pair(suite, seed);
        for _ in 0..10 {
            leaver.encrypt(Codec::Other, b"x", &mut Vec::new()).expect("advance");
        }
        let mut wire = Vec::new();
        enc.encrypt(Codec::Other, &frame, &mut wire).expect("encrypt");
        dec.decrypt(Codec::Other, &wire, &mut Vec::new()).expect("old key works before");

        let mut rng = SeededRng::from_seed([7; 32]);
        enc.rotate(&mut rng).expect("rotate");
        dec.install(received(&enc)).expect("install new generation");
        enc.encrypt(Codec::Other, &frame, &mut wire).expect("encrypt");
        dec.decrypt(Codec::Other, &wire, &mut Vec::new()).expect("new key works");

        let mut forged = Vec::new();
        leaver.encrypt(Codec::Other, &frame, &mut forged).expect("encrypt");
        let res = dec.decrypt(Codec::Other, &forged, &mut Vec::new());
        prop_assert!(matches!(res, Err(Error::StaleKey { .. })), "{:?}", res);
        // Nor can the old key be installed again (a replayed sealed-key message).
        let (old, _) = pair(suite, seed);
        let res = dec.install(received(&old));
        prop_assert!(matches!(res, Err(Error::StaleKey { .. })), "{:?}", res);
    }

    /// Decoders never panic on arbitrary bytes.
    #[test]
    fn decrypt_never_panics(
        suite in suite(),
        codec in codec(),
        data in proptest::collection::vec(any::<u8>(), 0..100),
    ) {
        let (_enc, mut dec) = pair(suite, [1; 32]);
        let _ = dec.decrypt(codec, &data, &mut Vec::new());
        let _ = confide_e2ee::SframeHeader::decode(&data);
    }
}

#[test]
fn receiver_follows_the_senders_ratchet() {
    let (mut enc, mut dec) = pair(CipherSuite::default(), [3; 32]);
    let mut wire = Vec::new();
    let mut out = Vec::new();
    enc.encrypt(Codec::Opus, b"\x78a", &mut wire)
        .expect("encrypt");
    assert!(
        dec.decrypt(Codec::Opus, &wire, &mut out)
            .expect("decrypt")
            .first_frame_of_key
    );
    for _ in 0..3 {
        enc.ratchet().expect("ratchet");
    }
    enc.encrypt(Codec::Opus, b"\x78b", &mut wire)
        .expect("encrypt");
    let info = dec
        .decrypt(Codec::Opus, &wire, &mut out)
        .expect("follows 3 steps");
    assert!(info.first_frame_of_key);
    assert_eq!(out, b"\x78b");
}

#[test]
fn a_joiner_cannot_read_frames_from_before_the_ratchet() {
    let (mut enc, _) = pair(CipherSuite::default(), [4; 32]);
    let mut before = Vec::new();
    enc.encrypt(Codec::Other, b"before join", &mut before)
        .expect("encrypt");
    enc.ratchet().expect("ratchet on join");
    let mut joiner = FrameDecryptor::new();
    joiner.install(received(&enc)).expect("install");
    let res = joiner.decrypt(Codec::Other, &before, &mut Vec::new());
    assert!(matches!(res, Err(Error::UnknownKey { .. })), "{res:?}");
}

#[test]
fn empty_frames_pass_through_and_short_vp8_is_misuse() {
    let (mut enc, mut dec) = pair(CipherSuite::default(), [5; 32]);
    let mut wire = vec![1, 2, 3];
    enc.encrypt(Codec::Opus, &[], &mut wire).expect("empty");
    assert!(wire.is_empty());
    let info = dec.decrypt(Codec::Opus, &[], &mut wire).expect("empty");
    assert_eq!(info.header, None);
    let err = enc
        .encrypt(Codec::Vp8, &[0x10, 1, 2], &mut wire)
        .expect_err("short keyframe");
    assert!(!err.is_from_peer());
}

#[test]
fn too_far_ahead_or_unknown_kids_are_refused_without_changing_state() {
    let (mut enc, mut dec) = pair(CipherSuite::default(), [6; 32]);
    for _ in 0..20 {
        enc.ratchet().expect("ratchet");
    }
    let mut wire = Vec::new();
    enc.encrypt(Codec::Other, b"far", &mut wire)
        .expect("encrypt");
    assert!(matches!(
        dec.decrypt(Codec::Other, &wire, &mut Vec::new()),
        Err(Error::UnknownKey { .. })
    ));
    assert_eq!(dec.kids().count(), 1);
}
