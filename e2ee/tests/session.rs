//! Key exchange, sender key sealing and message sealing between participants.

use confide_e2ee::{
    CipherSuite, Codec, ConsultationId, Error, FrameDecryptor, FrameEncryptor, IdentityKeyPair,
    MessageKind, PairwiseKeys, ParticipantId, SeededRng, SenderKey, Session,
};

fn sessions(n: u64) -> (Vec<Session>, SeededRng) {
    let mut rng = SeededRng::from_seed([77; 32]);
    let c = ConsultationId::new("group").expect("id");
    let s = (1..=n)
        .map(|pid| {
            let id = IdentityKeyPair::generate(&mut rng);
            Session::new(&id, c.clone(), ParticipantId(pid), &mut rng)
        })
        .collect();
    (s, rng)
}

fn link(a: &Session, b: &Session) -> (PairwiseKeys, PairwiseKeys) {
    (
        a.accept(b.offer()).expect("accept"),
        b.accept(a.offer()).expect("accept"),
    )
}

#[test]
fn sealed_sender_keys_open_only_for_the_intended_direction() {
    let (s, mut rng) = sessions(3);
    let (ab, ba) = link(&s[0], &s[1]);
    let (ac, _ca) = link(&s[0], &s[2]);
    let key = SenderKey::generate(CipherSuite::Aes256GcmSha512_128, &mut rng);
    let sealed = ab.seal_sender_key(&key, &mut rng).expect("seal");
    let got = ba.open_sender_key(&sealed).expect("b opens");
    assert_eq!(got.kid(), key.kid());
    assert_eq!(got.suite(), key.suite());
    // Reflected back to the sender, or shown to a third party: refused.
    assert_eq!(
        ab.open_sender_key(&sealed).unwrap_err(),
        Error::Authentication
    );
    assert_eq!(
        ac.open_sender_key(&sealed).unwrap_err(),
        Error::Authentication
    );
    for cut in 0..sealed.len() {
        assert!(ba.open_sender_key(&sealed[..cut]).is_err());
    }
}

#[test]
fn group_of_three_join_ratchet_and_leave_rotation() {
    let (s, mut rng) = sessions(3);
    let (ab, ba) = link(&s[0], &s[1]);
    let mut enc =
        FrameEncryptor::new(SenderKey::generate(CipherSuite::default(), &mut rng)).expect("enc");
    let mut at_b = FrameDecryptor::new();
    at_b.install(
        ba.open_sender_key(
            &ab.seal_sender_key(enc.sender_key(), &mut rng)
                .expect("seal"),
        )
        .expect("open"),
    )
    .expect("install");
    let mut wire = Vec::new();
    let mut out = Vec::new();
    enc.encrypt(Codec::Opus, b"\x78hi", &mut wire).expect("enc");
    at_b.decrypt(Codec::Opus, &wire, &mut out).expect("b reads");

    // C joins: A ratchets and seals the ratcheted key to C only; B follows by itself.
    let (ac, ca) = link(&s[0], &s[2]);
    enc.ratchet().expect("ratchet");
    let mut at_c = FrameDecryptor::new();
    at_c.install(
        ca.open_sender_key(
            &ac.seal_sender_key(enc.sender_key(), &mut rng)
                .expect("seal"),
        )
        .expect("open"),
    )
    .expect("install");
    enc.encrypt(Codec::Opus, b"\x78all", &mut wire)
        .expect("enc");
    at_b.decrypt(Codec::Opus, &wire, &mut out)
        .expect("b follows the ratchet");
    at_c.decrypt(Codec::Opus, &wire, &mut out).expect("c reads");
    assert_eq!(out, b"\x78all");

    // C leaves: A rotates and seals only to B; C's keyring cannot read new frames.
    enc.rotate(&mut rng).expect("rotate");
    at_b.install(
        ba.open_sender_key(
            &ab.seal_sender_key(enc.sender_key(), &mut rng)
                .expect("seal"),
        )
        .expect("open"),
    )
    .expect("install");
    enc.encrypt(Codec::Opus, b"\x78private", &mut wire)
        .expect("enc");
    at_b.decrypt(Codec::Opus, &wire, &mut out).expect("b reads");
    assert!(matches!(
        at_c.decrypt(Codec::Opus, &wire, &mut out),
        Err(Error::UnknownKey { .. })
    ));
}

#[test]
fn chat_and_documents_have_their_own_keys_and_padding() {
    let (s, mut rng) = sessions(2);
    let (ab, ba) = link(&s[0], &s[1]);
    let key = SenderKey::generate(CipherSuite::default(), &mut rng);
    let received = ba
        .open_sender_key(&ab.seal_sender_key(&key, &mut rng).expect("seal"))
        .expect("open");

    // Group chat under the sender key.
    let sealed = key
        .message_key()
        .seal(MessageKind::Chat, b"hello", &mut rng)
        .expect("seal");
    let opened = received.message_key().open(&sealed).expect("open");
    assert_eq!(opened.kind, MessageKind::Chat);
    assert_eq!(&*opened.plaintext, b"hello");

    // After the sender ratchets (joins), holders of the older key still read its chat; a
    // joiner holding only the newer key cannot read chat from before the join.
    let mut enc = FrameEncryptor::new(key).expect("enc");
    let before = enc
        .sender_key()
        .message_key()
        .seal(MessageKind::Chat, b"before", &mut rng)
        .expect("seal");
    for _ in 0..3 {
        enc.ratchet().expect("ratchet");
    }
    let after = enc
        .sender_key()
        .message_key()
        .seal(MessageKind::Chat, b"after", &mut rng)
        .expect("seal");
    assert_eq!(
        &*received
            .open_message(&after)
            .expect("follows the ratchet")
            .plaintext,
        b"after"
    );
    let joiner = ba
        .open_sender_key(
            &ab.seal_sender_key(enc.sender_key(), &mut rng)
                .expect("seal"),
        )
        .expect("open");
    assert_eq!(
        &*joiner.open_message(&after).expect("current").plaintext,
        b"after"
    );
    assert!(matches!(
        joiner.open_message(&before),
        Err(Error::Authentication)
    ));
    let key = enc;

    // Same length bucket for "ok" and a 50-byte message.
    let short = key
        .sender_key()
        .message_key()
        .seal(MessageKind::Chat, b"ok", &mut rng)
        .expect("seal");
    let longer = key
        .sender_key()
        .message_key()
        .seal(MessageKind::Chat, &[b'x'; 50], &mut rng)
        .expect("seal");
    assert_eq!(short.len(), longer.len());

    // Changing the kind byte (chat <-> document) fails: each kind has its own key.
    let mut as_doc = sealed.clone();
    as_doc[1] = 2;
    assert_eq!(
        received.message_key().open(&as_doc).unwrap_err(),
        Error::Authentication
    );

    // Pairwise documents.
    let doc = ab
        .message_key()
        .seal(MessageKind::Document, &[7u8; 10_000], &mut rng)
        .expect("seal");
    let opened = ba.message_key().open(&doc).expect("open");
    assert_eq!(opened.kind, MessageKind::Document);
    assert_eq!(opened.plaintext.len(), 10_000);
    for i in [0usize, 1, 5, 12, 30, doc.len() - 1] {
        let mut bad = doc.clone();
        bad[i] ^= 0x80;
        assert!(ba.message_key().open(&bad).is_err(), "flip at {i} accepted");
    }
    for cut in 0..40 {
        assert!(ba.message_key().open(&doc[..cut]).is_err());
    }
}

#[test]
fn identity_round_trips_through_its_secret_bytes() {
    let mut rng = SeededRng::from_seed([1; 32]);
    let id = IdentityKeyPair::generate(&mut rng);
    let again = IdentityKeyPair::from_secret_bytes(&id.secret_bytes());
    assert_eq!(id.public_key(), again.public_key());
    let pk =
        confide_e2ee::IdentityPublicKey::from_bytes(&id.public_key().to_bytes()).expect("parse");
    assert_eq!(pk, id.public_key());
    assert!(
        confide_e2ee::IdentityPublicKey::from_bytes(&[0u8; 32]).is_err(),
        "small-order key"
    );
    assert!(confide_e2ee::IdentityPublicKey::from_bytes(&[1u8; 31]).is_err());
}
