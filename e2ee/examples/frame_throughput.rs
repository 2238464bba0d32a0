//! Frame seal/open throughput measured two ways: wall clock, and this thread's on-CPU
//! time from `/proc/thread-self/schedstat` (Linux). On a shared, loaded machine the
//! second is the closer estimate of "one core": it excludes time the thread waited for a
//! CPU. Complements the criterion bench (`benches/frame.rs`), which reports wall clock.
//!
//! `cargo run --release -p confide-e2ee --example frame_throughput [seconds per case]`

use std::hint::black_box;
use std::time::{Duration, Instant};

use confide_e2ee::{CipherSuite, Codec, FrameDecryptor, FrameEncryptor, SeededRng, SenderKey};

/// Nanoseconds this thread has spent on a CPU, if the kernel tells us.
fn on_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

fn pair(suite: CipherSuite) -> (FrameEncryptor, FrameDecryptor) {
    let mut rng = SeededRng::from_seed([1; 32]);
    let enc = FrameEncryptor::new(SenderKey::generate(suite, &mut rng)).expect("encryptor");
    let mut dec = FrameDecryptor::new();
    dec.install(enc.sender_key().to_received())
        .expect("install");
    (enc, dec)
}

struct Sample {
    bytes: u64,
    wall: Duration,
    cpu_ns: Option<u64>,
}

impl Sample {
    fn mb_s(&self) -> (f64, Option<f64>) {
        let mb = self.bytes as f64 / 1e6;
        (
            mb / self.wall.as_secs_f64(),
            self.cpu_ns.map(|ns| mb / (ns as f64 / 1e9)),
        )
    }
}

#[allow(
    clippy::disallowed_methods,
    reason = "a measurement tool reads the clock; the library itself never does"
)]
fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.5);
    println!(
        "| suite | frame bytes | seal MB/s (wall) | seal MB/s (on-CPU) | open MB/s (wall) | open MB/s (on-CPU) |"
    );
    println!("|---|---|---|---|---|---|");
    for suite in [
        CipherSuite::ChaCha20Poly1305Sha256_128,
        CipherSuite::Aes128GcmSha256_128,
        CipherSuite::Aes256GcmSha512_128,
        CipherSuite::Aes128CtrHmacSha256_80,
    ] {
        for size in [1_200usize, 30_000] {
            let frame: Vec<u8> = (0..size).map(|i| (i * 31) as u8).collect();
            let (mut enc, mut dec) = pair(suite);
            let mut wire: Vec<Vec<u8>> = (0..64).map(|_| Vec::with_capacity(size + 64)).collect();
            let mut plain = Vec::with_capacity(size + 64);
            let mut seal = Sample {
                bytes: 0,
                wall: Duration::ZERO,
                cpu_ns: Some(0),
            };
            let mut open = Sample {
                bytes: 0,
                wall: Duration::ZERO,
                cpu_ns: Some(0),
            };
            let deadline = Instant::now() + Duration::from_secs_f64(secs * 2.0);
            while Instant::now() < deadline {
                let (t0, c0) = (Instant::now(), on_cpu_ns());
                for w in &mut wire {
                    enc.encrypt(Codec::Other, black_box(&frame), w)
                        .expect("encrypt");
                }
                let (t1, c1) = (Instant::now(), on_cpu_ns());
                for w in &wire {
                    dec.decrypt(Codec::Other, black_box(w), &mut plain)
                        .expect("decrypt");
                    black_box(&plain);
                }
                let (t2, c2) = (Instant::now(), on_cpu_ns());
                let n = (wire.len() * size) as u64;
                seal.bytes += n;
                open.bytes += n;
                seal.wall += t1 - t0;
                open.wall += t2 - t1;
                seal.cpu_ns = seal.cpu_ns.zip(c0.zip(c1)).map(|(s, (a, b))| s + (b - a));
                open.cpu_ns = open.cpu_ns.zip(c1.zip(c2)).map(|(s, (a, b))| s + (b - a));
            }
            let (sw, sc) = seal.mb_s();
            let (ow, oc) = open.mb_s();
            let f = |x: Option<f64>| x.map_or("n/a".to_string(), |v| format!("{v:.0}"));
            println!(
                "| {suite:?} | {size} | {sw:.0} | {} | {ow:.0} | {} |",
                f(sc),
                f(oc)
            );
        }
    }
}
