//! RFC 9605 test vectors, read from the vector file published with the RFC
//! (`tests/data/rfc9605-test-vectors.json`).

use confide_e2ee::sframe::{SframeKey, derive_key_salt};
use confide_e2ee::{CipherSuite, SframeHeader};
use serde_json::Value;

fn vectors() -> Value {
    let text = include_str!("data/rfc9605-test-vectors.json");
    serde_json::from_str(text).expect("vector file is JSON")
}

fn hex_field(v: &Value, name: &str) -> Vec<u8> {
    hex::decode(v[name].as_str().unwrap_or_else(|| panic!("field {name}")))
        .unwrap_or_else(|_| panic!("hex in {name}"))
}

fn u64_field(v: &Value, name: &str) -> u64 {
    v[name].as_u64().unwrap_or_else(|| panic!("field {name}"))
}

#[test]
fn all_header_vectors_encode_and_decode() {
    let all = vectors();
    let list = all["header"].as_array().expect("header vectors");
    assert_eq!(list.len(), 289);
    for v in list {
        let kid = u64_field(v, "kid");
        let ctr = u64_field(v, "ctr");
        let encoded = hex_field(v, "encoded");
        let h = SframeHeader::new(kid, ctr);
        assert_eq!(h.to_vec(), encoded, "encode kid={kid} ctr={ctr}");
        assert_eq!(h.encoded_len(), encoded.len());
        let (d, n) = SframeHeader::decode(&encoded).expect("decode");
        assert_eq!((d, n), (h, encoded.len()), "decode kid={kid} ctr={ctr}");
        // Trailing payload bytes are not part of the header.
        let mut longer = encoded.clone();
        longer.extend_from_slice(&[0xaa, 0xbb]);
        assert_eq!(SframeHeader::decode(&longer).expect("decode"), (h, n));
        // Any truncation is an error, never a panic.
        for cut in 0..encoded.len() {
            assert!(SframeHeader::decode(&encoded[..cut]).is_err());
        }
    }
}

fn check_sframe_vector(v: &Value) -> CipherSuite {
    let suite = CipherSuite::from_id(u64_field(v, "cipher_suite") as u16).expect("suite");
    let kid = u64_field(v, "kid");
    let ctr = u64_field(v, "ctr");
    let base_key = hex_field(v, "base_key");
    let metadata = hex_field(v, "metadata");
    let pt = hex_field(v, "pt");
    let ct = hex_field(v, "ct");

    let d = derive_key_salt(suite, kid, &base_key);
    assert_eq!(
        *d.sframe_secret,
        hex_field(v, "sframe_secret"),
        "{suite:?} secret"
    );
    assert_eq!(*d.sframe_key, hex_field(v, "sframe_key"), "{suite:?} key");
    assert_eq!(
        d.sframe_salt.to_vec(),
        hex_field(v, "sframe_salt"),
        "{suite:?} salt"
    );

    // nonce = salt XOR CTR, and aad = header + metadata: checked through the output.
    let nonce = hex_field(v, "nonce");
    let mut expect_nonce = d.sframe_salt.to_vec();
    for (n, c) in expect_nonce[4..].iter_mut().zip(ctr.to_be_bytes()) {
        *n ^= c;
    }
    assert_eq!(expect_nonce, nonce, "{suite:?} nonce");
    let aad = hex_field(v, "aad");
    let header = SframeHeader::new(kid, ctr).to_vec();
    assert_eq!(
        [header.as_slice(), &metadata].concat(),
        aad,
        "{suite:?} aad"
    );

    let key = SframeKey::derive(suite, kid, &base_key).expect("key");
    let mut out = Vec::new();
    key.encrypt(ctr, &metadata, &pt, &mut out).expect("encrypt");
    assert_eq!(out, ct, "{suite:?} ciphertext");

    let mut back = Vec::new();
    let h = key.decrypt(&metadata, &ct, &mut back).expect("decrypt");
    assert_eq!((h.kid, h.ctr), (kid, ctr));
    assert_eq!(back, pt, "{suite:?} plaintext");

    // Wrong metadata or a flipped ciphertext bit fails.
    let mut bad = ct.clone();
    *bad.last_mut().expect("non-empty") ^= 1;
    assert!(key.decrypt(&metadata, &bad, &mut Vec::new()).is_err());
    assert!(key.decrypt(b"other", &ct, &mut Vec::new()).is_err());
    suite
}

#[test]
fn all_gcm_sframe_vectors_pass() {
    let all = vectors();
    let mut seen = Vec::new();
    for v in all["sframe"].as_array().expect("sframe vectors") {
        let id = u64_field(v, "cipher_suite");
        if id == 4 || id == 5 {
            seen.push(check_sframe_vector(v));
        }
    }
    assert_eq!(
        seen,
        [
            CipherSuite::Aes128GcmSha256_128,
            CipherSuite::Aes256GcmSha512_128
        ]
    );
}

#[test]
fn all_ctr_hmac_sframe_vectors_pass() {
    let all = vectors();
    let mut n = 0;
    for v in all["sframe"].as_array().expect("sframe vectors") {
        if (1..=3).contains(&u64_field(v, "cipher_suite")) {
            check_sframe_vector(v);
            n += 1;
        }
    }
    assert_eq!(n, 3);
}
