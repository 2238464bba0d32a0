//! Frame seal/open throughput per suite, for a 1,200-byte (audio/small video) and a
//! 30,000-byte (video keyframe-ish) frame. Results go to docs/benchmarks.md.
//!
//! `cargo bench -p confide-e2ee --bench frame -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::time::{Duration, Instant};

use confide_e2ee::{CipherSuite, Codec, FrameDecryptor, FrameEncryptor, SeededRng, SenderKey};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const SIZES: [usize; 2] = [1_200, 30_000];
/// Frames encrypted ahead of each timed open batch (the replay window forbids reusing
/// one ciphertext, and pre-encrypting everything would need gigabytes).
const BATCH: u64 = 64;

fn suite_name(s: CipherSuite) -> &'static str {
    match s {
        CipherSuite::Aes128CtrHmacSha256_80 => "aes128-ctr-hmac-80",
        CipherSuite::Aes128CtrHmacSha256_64 => "aes128-ctr-hmac-64",
        CipherSuite::Aes128CtrHmacSha256_32 => "aes128-ctr-hmac-32",
        CipherSuite::Aes128GcmSha256_128 => "aes128-gcm",
        CipherSuite::Aes256GcmSha512_128 => "aes256-gcm",
        _ => "chacha20-poly1305",
    }
}

fn pair(suite: CipherSuite) -> (FrameEncryptor, FrameDecryptor) {
    let mut rng = SeededRng::from_seed([1; 32]);
    let enc = FrameEncryptor::new(SenderKey::generate(suite, &mut rng)).expect("encryptor");
    let mut dec = FrameDecryptor::new();
    dec.install(enc.sender_key().to_received())
        .expect("install");
    (enc, dec)
}

#[allow(
    clippy::disallowed_methods,
    reason = "a bench measures time; the library itself never reads the clock"
)]
fn frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("e2ee_frame");
    for suite in CipherSuite::ALL {
        for size in SIZES {
            let frame: Vec<u8> = (0..size).map(|i| (i * 31) as u8).collect();
            group.throughput(Throughput::Bytes(size as u64));

            let (mut enc, _) = pair(suite);
            let mut out = Vec::with_capacity(size + 64);
            group.bench_with_input(
                BenchmarkId::new(format!("seal/{}", suite_name(suite)), size),
                &frame,
                |b, f| {
                    b.iter(|| {
                        enc.encrypt(Codec::Other, black_box(f), &mut out)
                            .expect("encrypt");
                        black_box(&out);
                    });
                },
            );

            let (mut enc, mut dec) = pair(suite);
            let mut plain = Vec::with_capacity(size + 64);
            let mut wire: Vec<Vec<u8>> =
                (0..BATCH).map(|_| Vec::with_capacity(size + 64)).collect();
            group.bench_with_input(
                BenchmarkId::new(format!("open/{}", suite_name(suite)), size),
                &frame,
                |b, f| {
                    b.iter_custom(|iters| {
                        let mut timed = Duration::ZERO;
                        let mut left = iters;
                        while left > 0 {
                            let n = left.min(BATCH) as usize;
                            for w in &mut wire[..n] {
                                enc.encrypt(Codec::Other, f, w).expect("encrypt");
                            }
                            let start = Instant::now();
                            for w in &wire[..n] {
                                dec.decrypt(Codec::Other, black_box(w), &mut plain)
                                    .expect("decrypt");
                                black_box(&plain);
                            }
                            timed += start.elapsed();
                            left -= n as u64;
                        }
                        timed
                    });
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, frames);
criterion_main!(benches);
