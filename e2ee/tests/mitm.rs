//! A relay (the signaling server) in the middle of the key exchange.
//!
//! It either tampers with the signed offers, which the signature check catches, or runs
//! two sessions of its own with valid identities, which yields different safety codes on
//! the two sides.

use confide_e2ee::{
    ConsultationId, Error, IdentityKeyPair, KeyOffer, ParticipantId, SeededRng, Session,
};

struct Party {
    identity: IdentityKeyPair,
    session: Session,
}

fn party(seed: u8, pid: u64, consultation: &str) -> Party {
    let mut rng = SeededRng::from_seed([seed; 32]);
    let identity = IdentityKeyPair::generate(&mut rng);
    let session = Session::new(
        &identity,
        ConsultationId::new(consultation).expect("id"),
        ParticipantId(pid),
        &mut rng,
    );
    Party { identity, session }
}

#[test]
fn honest_relay_gives_equal_codes() {
    let a = party(1, 1, "c1");
    let b = party(2, 2, "c1");
    let ab = a.session.accept(b.session.offer()).expect("a accepts");
    let ba = b.session.accept(a.session.offer()).expect("b accepts");
    assert_eq!(ab.safety_code(), ba.safety_code());
    assert_eq!(ab.transcript_hash(), ba.transcript_hash());
    assert_eq!(ab.peer_identity(), &b.identity.public_key());
    let code = ab.safety_code().to_text();
    assert_eq!(code.len(), 23, "{code}");
    assert!(
        code.split(' ')
            .all(|g| g.len() == 5 && g.bytes().all(|c| c.is_ascii_digit()))
    );
}

#[test]
fn relay_swapping_ephemeral_keys_is_caught_by_the_signature() {
    let a = party(1, 1, "c1");
    let b = party(2, 2, "c1");
    let m = party(3, 2, "c1");
    // The relay replaces B's ephemeral key with its own and forwards the rest.
    let mut forged = b.session.offer().to_bytes();
    forged[33..65].copy_from_slice(&m.session.offer().ephemeral_public());
    let forged = KeyOffer::from_bytes(&forged).expect("still parses");
    assert_eq!(forged.verify(), Err(Error::BadSignature));
    assert_eq!(a.session.accept(&forged).unwrap_err(), Error::BadSignature);

    // Any other field edited: identity, participant id, consultation, signature.
    let good = b.session.offer().to_bytes();
    for i in [1, 20, 66, 72, 74, good.len() - 1] {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        let res = KeyOffer::from_bytes(&bad).and_then(|o| a.session.accept(&o));
        assert!(res.is_err(), "edit at byte {i} accepted");
    }
}

#[test]
fn relay_with_valid_identities_yields_different_safety_codes() {
    let a = party(1, 1, "c1");
    let b = party(2, 2, "c1");
    // The relay presents its own identity to each side (a server that lies about the
    // account's identity key) and runs one session with each.
    let m_as_b = party(11, 2, "c1");
    let m_as_a = party(12, 1, "c1");

    let a_side = a
        .session
        .accept(m_as_b.session.offer())
        .expect("A accepts the relay");
    let m1 = m_as_b
        .session
        .accept(a.session.offer())
        .expect("relay accepts A");
    let b_side = b
        .session
        .accept(m_as_a.session.offer())
        .expect("B accepts the relay");
    let m2 = m_as_a
        .session
        .accept(b.session.offer())
        .expect("relay accepts B");

    // Each leg agrees with the relay, but the people comparing codes see a mismatch.
    assert_eq!(a_side.safety_code(), m1.safety_code());
    assert_eq!(b_side.safety_code(), m2.safety_code());
    assert_ne!(a_side.safety_code(), b_side.safety_code());

    // And a sender key sealed by A is not readable by B without the relay re-sealing it.
    let mut rng = SeededRng::from_seed([5; 32]);
    let key = confide_e2ee::SenderKey::generate(Default::default(), &mut rng);
    let sealed = a_side.seal_sender_key(&key, &mut rng).expect("seal");
    assert_eq!(
        b_side.open_sender_key(&sealed).unwrap_err(),
        Error::Authentication
    );
}

#[test]
fn relay_re_signing_an_honest_ephemeral_under_its_identity_changes_keys_and_code() {
    // Unknown key-share attempt: the relay copies A's ephemeral key into an offer signed
    // by its own (valid) identity and sends that to B. The signature checks out, and B
    // even shares A's X25519 secret, but the transcript hash differs, so B's keys and
    // code differ from A's and nothing A seals opens at B.
    use ed25519_dalek::Signer;
    let a = party(1, 1, "c1");
    let b = party(2, 2, "c1");
    let m = party(3, 1, "c1");
    let mut body = vec![1u8];
    body.extend_from_slice(&m.identity.public_key().to_bytes());
    body.extend_from_slice(&a.session.offer().ephemeral_public());
    body.extend_from_slice(&1u64.to_be_bytes());
    body.push(2);
    body.extend_from_slice(b"c1");
    let signer = ed25519_dalek::SigningKey::from_bytes(&m.identity.secret_bytes());
    let sig = signer.sign(&[b"confide-e2ee/v1 key offer\0".as_slice(), &body].concat());
    body.extend_from_slice(&sig.to_bytes());
    let forged = KeyOffer::from_bytes(&body).expect("parses");
    forged.verify().expect("validly signed by the relay");

    let b_side = b
        .session
        .accept(&forged)
        .expect("B accepts the relay's offer");
    let a_side = a.session.accept(b.session.offer()).expect("A accepts B");
    assert_eq!(b_side.peer_identity(), &m.identity.public_key());
    assert_ne!(a_side.safety_code(), b_side.safety_code());
    assert_ne!(a_side.transcript_hash(), b_side.transcript_hash());
    let mut rng = SeededRng::from_seed([5; 32]);
    let key = confide_e2ee::SenderKey::generate(Default::default(), &mut rng);
    let sealed = a_side.seal_sender_key(&key, &mut rng).expect("seal");
    assert_eq!(
        b_side.open_sender_key(&sealed).unwrap_err(),
        Error::Authentication
    );
}

#[test]
fn offers_are_bound_to_the_consultation_and_participant() {
    let a = party(1, 1, "c1");
    let other_consultation = party(2, 2, "c2");
    assert_eq!(
        a.session
            .accept(other_consultation.session.offer())
            .unwrap_err(),
        Error::WrongConsultation
    );
    // Our own offer reflected back to us.
    assert!(a.session.accept(a.session.offer()).is_err());
}

#[test]
fn any_swapped_identity_changes_the_code() {
    let a = party(1, 1, "c1");
    let b = party(2, 2, "c1");
    let c = party(3, 2, "c1");
    let t = a
        .session
        .accept(b.session.offer())
        .expect("accept")
        .transcript_hash();
    let base = confide_e2ee::safety_code(&a.identity.public_key(), &b.identity.public_key(), &t);
    let swapped = confide_e2ee::safety_code(&a.identity.public_key(), &c.identity.public_key(), &t);
    let order = confide_e2ee::safety_code(&b.identity.public_key(), &a.identity.public_key(), &t);
    let mut t2 = t;
    t2[0] ^= 1;
    let other_t =
        confide_e2ee::safety_code(&a.identity.public_key(), &b.identity.public_key(), &t2);
    assert_eq!(base, order, "argument order does not matter");
    assert_ne!(base, swapped);
    assert_ne!(base, other_t);
}
