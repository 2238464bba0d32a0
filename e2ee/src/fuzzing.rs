//! Entry points for the `cargo fuzz` targets in `e2ee/fuzz`. Unit tests call them too,
//! so CI compiles and exercises them without a fuzzer. Each must never panic on any
//! input; the assertions inside check round-trip invariants.

use alloc::vec::Vec;

use crate::header::SframeHeader;
use crate::media::{Codec, FrameDecryptor};
use crate::sender_key::ReceivedSenderKey;
use crate::suite::CipherSuite;

/// Parse `data` as an SFrame header; a parsed header must re-encode to the same bytes.
pub fn header(data: &[u8]) {
    if let Ok((h, n)) = SframeHeader::decode(data) {
        assert_eq!(
            h.to_vec(),
            data[..n],
            "header re-encodes to the parsed bytes"
        );
        assert_eq!(h.encoded_len(), n);
    }
}

/// Decrypt `data[2..]` as a media frame with a fixed key: `data[0]` picks the codec,
/// `data[1]` the suite. Must never panic; a successful decrypt of fuzzer-made bytes
/// would mean forging a tag, so it is reported.
pub fn frame_decrypt(data: &[u8]) {
    let (Some(&c), Some(&s)) = (data.first(), data.get(1)) else {
        return;
    };
    let codec = [Codec::Vp8, Codec::Opus, Codec::Other][usize::from(c % 3)];
    let suite = CipherSuite::ALL[usize::from(s) % CipherSuite::ALL.len()];
    let mut dec = FrameDecryptor::new();
    let key = ReceivedSenderKey {
        suite,
        kid: 0x0100,
        base_key: zeroize::Zeroizing::new(alloc::vec![7u8; 32]),
    };
    if dec.install(key).is_err() {
        return;
    }
    let mut out = Vec::new();
    let frame = &data[2..];
    if let Ok(info) = dec.decrypt(codec, frame, &mut out) {
        // Only the empty frame passes without a key; short-tag suites can be forged by
        // luck (2^-32), which a fuzzer will not find in practice.
        assert!(
            info.header.is_none() || suite.tag_len() < 16,
            "fuzzer forged a 128-bit tag"
        );
    }
}
