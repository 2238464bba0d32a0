//! The MLS framing reader the delivery service runs on every commit, Welcome and
//! KeyPackage a client sends must never panic, and a message header it accepts must
//! describe bytes that are really there.
//! Run: `cargo +nightly fuzz run mls_frame` in signaling/fuzz (seeds: real mls-rs
//! commits, an application message, a Welcome and a KeyPackage in corpus/mls_frame).
#![no_main]

use confide_signaling::mls_frame::{WireFormat, check_welcome, parse_message, wire_format};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let wf = wire_format(data);
    if let Ok(h) = parse_message(data) {
        assert!(matches!(
            h.wire_format,
            WireFormat::PublicMessage | WireFormat::PrivateMessage
        ));
        assert_eq!(wf, Ok(h.wire_format));
        assert!(h.group_id.len() < data.len());
        assert_eq!(h.sender.is_some(), h.wire_format == WireFormat::PublicMessage);
    }
    if check_welcome(data).is_ok() {
        assert_eq!(wf, Ok(WireFormat::Welcome));
    }
});
