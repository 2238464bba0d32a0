#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| confide_mls::fuzzing::group_message(data));
