//! Sender keys across joins and leaves (ratchet, rotation), and identity key encoding.

use confide_e2ee::{
    CipherSuite, Codec, Error, FrameDecryptor, FrameEncryptor, IdentityKeyPair, SeededRng,
    SenderKey,
};

#[test]
fn group_of_three_join_ratchet_and_leave_rotation() {
    let mut rng = SeededRng::from_seed([77; 32]);
    let mut enc =
        FrameEncryptor::new(SenderKey::generate(CipherSuite::default(), &mut rng)).expect("enc");
    let mut at_b = FrameDecryptor::new();
    at_b.install(enc.sender_key().to_received())
        .expect("install");
    let mut wire = Vec::new();
    let mut out = Vec::new();
    enc.encrypt(Codec::Opus, b"\x78hi", &mut wire).expect("enc");
    at_b.decrypt(Codec::Opus, &wire, &mut out).expect("b reads");

    // C joins: A ratchets and hands the ratcheted key to C only; B follows by itself.
    enc.ratchet().expect("ratchet");
    let mut at_c = FrameDecryptor::new();
    at_c.install(enc.sender_key().to_received())
        .expect("install");
    enc.encrypt(Codec::Opus, b"\x78all", &mut wire)
        .expect("enc");
    at_b.decrypt(Codec::Opus, &wire, &mut out)
        .expect("b follows the ratchet");
    at_c.decrypt(Codec::Opus, &wire, &mut out).expect("c reads");
    assert_eq!(out, b"\x78all");

    // C leaves: A rotates and hands the new key to B only; C's keyring cannot read new frames.
    enc.rotate(&mut rng).expect("rotate");
    at_b.install(enc.sender_key().to_received())
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
