//! Runs the fuzz target's entry point (`sfu/fuzz`, target `datagram`) on pseudo-random
//! and structured input, so CI exercises it without a fuzzer.

use std::time::Instant;

use confide_sfu::fuzzing::{Class, DatagramFuzzer, classify, stun_local_ufrag};

#[test]
fn fuzz_entry_survives_random_and_structured_datagrams() {
    #[expect(clippy::disallowed_methods, reason = "the fuzzer's epoch")]
    let now = Instant::now();
    let mut f = DatagramFuzzer::new(now);
    let mut x: u64 = 0x853C_49E6_748F_EA9B;
    let mut buf = vec![0u8; 1500];
    for i in 0..20_000u32 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = (x % 1400) as usize + 1;
        for (j, b) in buf[..len].iter_mut().enumerate() {
            *b = (x >> ((j % 8) * 8)) as u8 ^ j as u8;
        }
        // Steer a share of inputs into each protocol's parser.
        if len > 22 {
            match i % 5 {
                0 => {
                    buf[1] = 0x00;
                    buf[2] = 0x01;
                    buf[5..9].copy_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
                }
                1 => buf[1] = 22,
                2 => buf[1] = 0x80 | (buf[1] & 0x3f),
                3 => {
                    buf[1] = 0x80;
                    buf[2] = 200 + (i % 8) as u8;
                }
                _ => {}
            }
        }
        let d = &buf[..len];
        f.feed(d);
        let class = classify(&d[1..]);
        if class != Class::Stun {
            assert_eq!(stun_local_ufrag(&d[1..]), None);
        }
    }
    assert_eq!(f.core().stats().panics, 0);
    assert_eq!(
        f.core().stats().active_connections,
        1,
        "{:?}",
        f.last_event()
    );
}
