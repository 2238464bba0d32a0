#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| confide_e2ee::fuzzing::header(data));
