//! No `Debug` output of any type holding secrets shows key material.

use confide_e2ee::{
    CipherSuite, Codec, FrameDecryptor, FrameEncryptor, IdentityKeyPair, SeededRng, SenderKey,
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
    let a_id = IdentityKeyPair::generate(&mut rng);
    let b_id = IdentityKeyPair::generate(&mut rng);
    let mut enc =
        FrameEncryptor::new(SenderKey::generate(CipherSuite::default(), &mut rng)).expect("enc");
    let received = enc.sender_key().to_received();
    let mut dec = FrameDecryptor::new();
    dec.install(received.clone()).expect("install");
    let mut wire = Vec::new();
    enc.encrypt(Codec::Opus, b"\x78secret audio", &mut wire)
        .expect("enc");
    dec.decrypt(Codec::Opus, &wire, &mut Vec::new())
        .expect("dec");
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
        ("FrameEncryptor", format!("{enc:?} {:?}", enc.sender_key())),
        ("FrameDecryptor", format!("{dec:?}")),
        ("ReceivedSenderKey", format!("{received:?}")),
        ("SframeKey", format!("{sframe:?}")),
        ("DerivedKeySalt", format!("{derived:?}")),
        ("SeededRng", format!("{rng:?}")),
    ];
    for (what, s) in &outputs {
        assert_no_key_material(what, s, &public);
        for h in &secret_hex {
            assert!(!s.contains(h.as_str()), "{what} shows an identity secret");
        }
        assert!(!s.contains("secret audio"), "{what} shows plaintext");
    }
    // The check itself works.
    let leaky = format!("{:?}", *a_id.secret_bytes());
    assert!(std::panic::catch_unwind(|| assert_no_key_material("self-test", &leaky, &[])).is_err());
}
