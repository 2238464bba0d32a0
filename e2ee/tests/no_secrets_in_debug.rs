//! No `Debug` output of any type holding secrets shows key material.

use confide_e2ee::{
    CipherSuite, Codec, ConsultationId, FrameDecryptor, FrameEncryptor, IdentityKeyPair,
    MessageKind, ParticipantId, SeededRng, SenderKey, Session,
};

/// Fails if `s` contains a long hex run or a long list of numbers (a byte array), after
/// removing the allowed public hex strings.
fn assert_no_key_material(what: &str, s: &str, public_hex: &[String]) {
    let mut s = s.to_string();
    for p in public_hex {
        s = s.replace(p.as_str(), "<public>");
    }
    let mut run = 0;
    for c in s.chars() {
        run = if c.is_ascii_hexdigit() { run + 1 } else { 0 };
        assert!(run < 16, "{what}: hex run in Debug output: {s}");
    }
    let numbers_in_a_row = s
        .split(|c: char| !(c.is_ascii_digit() || c == ',' || c == ' '))
        .map(|chunk| chunk.split(',').filter(|x| !x.trim().is_empty()).count())
        .max()
        .unwrap_or(0);
    assert!(
        numbers_in_a_row < 8,
        "{what}: byte list in Debug output: {s}"
    );
}

#[test]
fn debug_output_contains_no_secrets() {
    let mut rng = SeededRng::from_seed([13; 32]);
    let c = ConsultationId::new("dbg").expect("id");
    let a_id = IdentityKeyPair::generate(&mut rng);
    let b_id = IdentityKeyPair::generate(&mut rng);
    let a = Session::new(&a_id, c.clone(), ParticipantId(1), &mut rng);
    let b = Session::new(&b_id, c, ParticipantId(2), &mut rng);
    let ab = a.accept(b.offer()).expect("accept");
    let ba = b.accept(a.offer()).expect("accept");
    let mut enc =
        FrameEncryptor::new(SenderKey::generate(CipherSuite::default(), &mut rng)).expect("enc");
    let received = ba
        .open_sender_key(
            &ab.seal_sender_key(enc.sender_key(), &mut rng)
                .expect("seal"),
        )
        .expect("open");
    let mut dec = FrameDecryptor::new();
    dec.install(received.clone()).expect("install");
    let mut wire = Vec::new();
    enc.encrypt(Codec::Opus, b"\x78secret audio", &mut wire)
        .expect("enc");
    dec.decrypt(Codec::Opus, &wire, &mut Vec::new())
        .expect("dec");
    let sealed = enc
        .sender_key()
        .message_key()
        .seal(MessageKind::Chat, b"secret chat", &mut rng)
        .expect("seal");
    let opened = received.message_key().open(&sealed).expect("open");
    let sframe =
        confide_e2ee::sframe::SframeKey::derive(CipherSuite::default(), 1, &[5; 32]).expect("key");
    let derived = confide_e2ee::sframe::derive_key_salt(CipherSuite::default(), 1, &[5; 32]);

    let public: Vec<String> = [a_id.public_key(), b_id.public_key()]
        .iter()
        .map(|k| hex::encode(k.to_bytes()))
        .collect();
    let secret_hex = [
        hex::encode(*a_id.secret_bytes()),
        hex::encode(*b_id.secret_bytes()),
    ];
    let outputs = [
        ("IdentityKeyPair", format!("{a_id:?} {a_id:#?}")),
        ("Session", format!("{a:?} {b:#?}")),
        ("PairwiseKeys", format!("{ab:?} {ba:#?}")),
        ("FrameEncryptor", format!("{enc:?} {:?}", enc.sender_key())),
        ("FrameDecryptor", format!("{dec:?}")),
        ("ReceivedSenderKey", format!("{received:?}")),
        (
            "MessageKey",
            format!("{:?} {:?}", ab.message_key(), received.message_key()),
        ),
        ("OpenedMessage", format!("{opened:?}")),
        ("SframeKey", format!("{sframe:?}")),
        ("DerivedKeySalt", format!("{derived:?}")),
        ("SeededRng", format!("{rng:?}")),
    ];
    for (what, s) in &outputs {
        assert_no_key_material(what, s, &public);
        for h in &secret_hex {
            assert!(!s.contains(h.as_str()), "{what} shows an identity secret");
        }
        assert!(
            !s.contains("secret chat") && !s.contains("secret audio"),
            "{what} shows plaintext"
        );
    }
    // The check itself works.
    let leaky = format!("{:?}", *a_id.secret_bytes());
    assert!(std::panic::catch_unwind(|| assert_no_key_material("self-test", &leaky, &[])).is_err());
}
