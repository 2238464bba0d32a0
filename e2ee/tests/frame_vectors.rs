//! Fixed vectors for our own formats: media frames (ChaCha20-Poly1305 suite and
//! AES-128-GCM, with the VP8/Opus clear prefixes), key offers, the safety code, a sealed
//! sender key and a sealed message. The wasm build checks the same file in its Node smoke
//! test, which proves browser and native produce identical bytes.
//!
//! Everything is derived from fixed seeds through the public API. To regenerate after
//! an intentional format change: `CONFIDE_WRITE_VECTORS=1 cargo test -p confide-e2ee
//! --test frame_vectors` (and say why in the commit).

use confide_e2ee::{
    CipherSuite, Codec, ConsultationId, FrameDecryptor, FrameEncryptor, IdentityKeyPair,
    MessageKind, ParticipantId, SeededRng, SenderKey, Session,
};
use serde_json::{Value, json};

const PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/confide-frame-vectors.json"
);

fn codec(name: &str) -> Codec {
    match name {
        "vp8" => Codec::Vp8,
        "opus" => Codec::Opus,
        _ => Codec::Other,
    }
}

struct FrameCase {
    name: &'static str,
    suite: CipherSuite,
    seed: u8,
    ratchets: usize,
    skip: usize,
    codec: &'static str,
    plaintext: Vec<u8>,
}

fn frame_cases() -> Vec<FrameCase> {
    let vp8_key: Vec<u8> = [0x50, 0x42, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01]
        .into_iter()
        .chain((0u8..40).map(|i| i.wrapping_mul(37)))
        .collect();
    let vp8_delta: Vec<u8> = [0x31, 0x05, 0x00].into_iter().chain(0u8..30).collect();
    let opus: Vec<u8> = [0x78]
        .into_iter()
        .chain((0u8..60).map(|i| i ^ 0x5a))
        .collect();
    let c = CipherSuite::ChaCha20Poly1305Sha256_128;
    vec![
        FrameCase {
            name: "chacha vp8 keyframe (10 clear bytes)",
            suite: c,
            seed: 1,
            ratchets: 0,
            skip: 0,
            codec: "vp8",
            plaintext: vp8_key.clone(),
        },
        FrameCase {
            name: "chacha vp8 delta frame (3 clear bytes), ctr 9",
            suite: c,
            seed: 1,
            ratchets: 0,
            skip: 9,
            codec: "vp8",
            plaintext: vp8_delta,
        },
        FrameCase {
            name: "chacha opus (1 clear byte), ctr 300",
            suite: c,
            seed: 2,
            ratchets: 0,
            skip: 300,
            codec: "opus",
            plaintext: opus.clone(),
        },
        FrameCase {
            name: "chacha other codec (0 clear bytes), ratchet step 2",
            suite: c,
            seed: 3,
            ratchets: 2,
            skip: 0,
            codec: "other",
            plaintext: b"any codec payload".to_vec(),
        },
        FrameCase {
            name: "chacha empty opus frame passes through",
            suite: c,
            seed: 2,
            ratchets: 0,
            skip: 0,
            codec: "opus",
            plaintext: vec![],
        },
        FrameCase {
            name: "aes-128-gcm vp8 keyframe",
            suite: CipherSuite::Aes128GcmSha256_128,
            seed: 4,
            ratchets: 0,
            skip: 0,
            codec: "vp8",
            plaintext: vp8_key,
        },
        FrameCase {
            name: "aes-256-gcm opus",
            suite: CipherSuite::Aes256GcmSha512_128,
            seed: 5,
            ratchets: 1,
            skip: 3,
            codec: "opus",
            plaintext: opus,
        },
    ]
}

fn encryptor(
    suite: CipherSuite,
    seed: u8,
    ratchets: usize,
    skip: usize,
    codec: Codec,
) -> FrameEncryptor {
    let mut rng = SeededRng::from_seed([seed; 32]);
    let mut enc = FrameEncryptor::new(SenderKey::generate(suite, &mut rng)).expect("encryptor");
    for _ in 0..ratchets {
        enc.ratchet().expect("ratchet");
    }
    let filler = vec![0x11u8; 12];
    for _ in 0..skip {
        enc.encrypt(codec, &filler, &mut Vec::new())
            .expect("filler");
    }
    enc
}

fn generate() -> Value {
    let consultation = "c-2026-vectors";
    let a_secret = [0xa1u8; 32];
    let b_secret = [0xb2u8; 32];
    let a_id = IdentityKeyPair::from_secret_bytes(&a_secret);
    let b_id = IdentityKeyPair::from_secret_bytes(&b_secret);
    let cid = ConsultationId::new(consultation).expect("id");
    let a = Session::new(
        &a_id,
        cid.clone(),
        ParticipantId(1),
        &mut SeededRng::from_seed([0xa3; 32]),
    );
    let b = Session::new(
        &b_id,
        cid,
        ParticipantId(2),
        &mut SeededRng::from_seed([0xb4; 32]),
    );
    let ab = a.accept(b.offer()).expect("accept");

    let frames: Vec<Value> = frame_cases()
        .iter()
        .map(|c| {
            let mut enc = encryptor(c.suite, c.seed, c.ratchets, c.skip, codec(c.codec));
            let sealed = ab
                .seal_sender_key(enc.sender_key(), &mut SeededRng::from_seed([0x5e; 32]))
                .expect("seal");
            let mut ct = Vec::new();
            enc.encrypt(codec(c.codec), &c.plaintext, &mut ct)
                .expect("encrypt");
            json!({
                "name": c.name,
                "suite": c.suite.id(),
                "sender_seed": hex::encode([c.seed; 32]),
                "ratchets": c.ratchets,
                "skip": c.skip,
                "filler": hex::encode([0x11u8; 12]),
                "codec": c.codec,
                "kid": enc.kid(),
                "sealed_sender_key_a_to_b": hex::encode(sealed),
                "seal_seed": hex::encode([0x5eu8; 32]),
                "plaintext": hex::encode(&c.plaintext),
                "ciphertext": hex::encode(ct),
            })
        })
        .collect();

    let chat = ab
        .message_key()
        .seal(
            MessageKind::Chat,
            b"Please take 2 tablets daily.",
            &mut SeededRng::from_seed([0xc0; 32]),
        )
        .expect("seal");

    json!({
        "description": "Confide E2EE vectors: frames = clear prefix || SFrame header || ciphertext || tag. Generated by e2ee/tests/frame_vectors.rs from fixed seeds via SeededRng (ChaCha20Rng).",
        "exchange": {
            "consultation": consultation,
            "a": { "identity_secret": hex::encode(a_secret), "session_seed": hex::encode([0xa3u8; 32]), "participant": 1, "identity_public": hex::encode(a_id.public_key().to_bytes()), "offer": hex::encode(a.offer().to_bytes()) },
            "b": { "identity_secret": hex::encode(b_secret), "session_seed": hex::encode([0xb4u8; 32]), "participant": 2, "identity_public": hex::encode(b_id.public_key().to_bytes()), "offer": hex::encode(b.offer().to_bytes()) },
            "transcript_hash": hex::encode(ab.transcript_hash()),
            "safety_code": ab.safety_code().to_text(),
        },
        "pairwise_chat_a_to_b": {
            "seed": hex::encode([0xc0u8; 32]),
            "plaintext": hex::encode(b"Please take 2 tablets daily."),
            "sealed": hex::encode(chat),
        },
        "frames": frames,
    })
}

#[test]
fn our_formats_match_the_fixed_vectors() {
    let generated = generate();
    if std::env::var_os("CONFIDE_WRITE_VECTORS").is_some() {
        let text = serde_json::to_string_pretty(&generated).expect("json") + "\n";
        std::fs::write(PATH, text).expect("write vectors");
    }
    let stored: Value =
        serde_json::from_str(&std::fs::read_to_string(PATH).expect("vector file")).expect("json");
    assert_eq!(stored, generated, "formats changed; see the module docs");
}

#[test]
fn fixed_vectors_decrypt_through_the_receiver() {
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(PATH).expect("vector file")).expect("json");
    let h = |x: &Value| hex::decode(x.as_str().expect("hex string")).expect("hex");
    let ex = &v["exchange"];
    let secret = |p: &str| -> [u8; 32] { h(&ex[p]["identity_secret"]).try_into().expect("32") };
    let seed = |p: &str| -> [u8; 32] { h(&ex[p]["session_seed"]).try_into().expect("32") };
    let cid = ConsultationId::new(ex["consultation"].as_str().expect("str")).expect("id");
    let b = Session::new(
        &IdentityKeyPair::from_secret_bytes(&secret("b")),
        cid,
        ParticipantId(2),
        &mut SeededRng::from_seed(seed("b")),
    );
    let a_offer = confide_e2ee::KeyOffer::from_bytes(&h(&ex["a"]["offer"])).expect("offer");
    let ba = b.accept(&a_offer).expect("accept");
    assert_eq!(
        ba.safety_code().to_text(),
        ex["safety_code"].as_str().expect("str")
    );
    let chat = ba
        .message_key()
        .open(&h(&v["pairwise_chat_a_to_b"]["sealed"]))
        .expect("open");
    assert_eq!(*chat.plaintext, h(&v["pairwise_chat_a_to_b"]["plaintext"]));
    for f in v["frames"].as_array().expect("frames") {
        let mut dec = FrameDecryptor::new();
        dec.install(
            ba.open_sender_key(&h(&f["sealed_sender_key_a_to_b"]))
                .expect("open key"),
        )
        .expect("install");
        let mut out = Vec::new();
        dec.decrypt(
            codec(f["codec"].as_str().expect("codec")),
            &h(&f["ciphertext"]),
            &mut out,
        )
        .unwrap_or_else(|e| panic!("{}: {e}", f["name"]));
        assert_eq!(out, h(&f["plaintext"]), "{}", f["name"]);
    }
}
