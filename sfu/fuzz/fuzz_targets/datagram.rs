//! Any datagram at a worker core: demux, STUN username lookup, and the peer's str0m
//! input path. Must never panic.
#![no_main]

use std::cell::RefCell;
use std::time::Instant;

use confide_sfu::fuzzing::DatagramFuzzer;
use libfuzzer_sys::fuzz_target;

thread_local! {
    // Building the core (DTLS certificate, SDP) is slow: one per fuzzing thread.
    static FUZZER: RefCell<DatagramFuzzer> = RefCell::new(DatagramFuzzer::new(Instant::now()));
}

fuzz_target!(|data: &[u8]| {
    FUZZER.with(|f| f.borrow_mut().feed(data));
});
