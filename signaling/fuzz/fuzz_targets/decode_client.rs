//! The one decoder every WebSocket frame goes through must never panic, and every
//! frame it accepts must re-encode to something it accepts again.
//! Run: `cargo +nightly fuzz run decode_client` in signaling/fuzz.
#![no_main]

use confide_signaling::proto::{Limits, decode_client};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let limits = Limits::default();
    if let Ok(msg) = decode_client(text, &limits)
        && let Ok(again) = serde_json::to_string(&msg)
    {
        assert_eq!(decode_client(&again, &limits).ok(), Some(msg));
    }
});
