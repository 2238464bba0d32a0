//! Append throughput and proof sizes of the audit log core, up to 1,000,000 entries.
//!
//! A plain benchmark binary rather than Criterion: the point is one long run whose
//! rate must stay flat as the log grows (appending is O(log n)), reported per decade.
//!
//! Run: `cargo bench -p confide-audit --bench append [-- ENTRIES]`.
//! The figures in docs/benchmarks.md ("Audit log") come from this binary.

// A benchmark measures wall time; the core itself never reads the clock.
#![expect(clippy::disallowed_methods)]

use std::hint::black_box;
use std::time::Instant;

use confide_audit::*;

fn event(i: u64) -> AuditEvent {
    AuditEvent {
        actor: format!("account:{}", i % 5000),
        role: Some("doctor".into()),
        action: "join_ok".into(),
        target: Some(format!("consultation:{}", i / 4)),
        patient: Some(format!("account:{}", 10_000 + i % 20_000)),
        outcome: Outcome::Success,
        source: Some("203.0.113.17".into()),
        request_id: Some(format!("req-{i:016x}")),
        priority: Priority::Normal,
        detail: None,
    }
}

fn main() {
    let total: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let key = LogSigningKey::from_seed(&[0x5a; 32]);
    let public = key.public_key();
    let policy = CheckpointPolicy {
        max_entries: 1000,
        max_delay_ms: 60_000,
    };
    let mut log = AuditLog::new("bench.example/audit", key, policy).expect("valid origin");
    // The in-memory node store stands in for the database's node table, so proofs at
    // each size can be generated after the run.
    let mut tree = MemoryTree::new();
    let t0 = Timestamp::from_unix_millis(1_800_000_000_000).expect("in range");

    println!("## Append (AuditLog::append + node store, checkpoint every 1000)");
    println!();
    println!("| entries | cumulative entries/s | entries/s in this decade | frontier hashes |");
    println!("|---:|---:|---:|---:|");
    let start = Instant::now();
    let mut decade_start = Instant::now();
    let mut decade_from = 0u64;
    let mut next_mark = 1000u64;
    let mut checkpoints = 0u64;
    for i in 0..total {
        let now = t0.saturating_add_millis(i);
        let a = log.append(now, event(i));
        tree.push(a.leaf_hash);
        black_box(&a.entry);
        while let Some(cp) = log.poll_checkpoint() {
            black_box(&cp);
            checkpoints += 1;
        }
        if i + 1 == next_mark || i + 1 == total {
            let n = i + 1;
            let all = start.elapsed().as_secs_f64();
            let dec = decade_start.elapsed().as_secs_f64();
            println!(
                "| {n} | {:.0} | {:.0} | {} |",
                n as f64 / all,
                (n - decade_from) as f64 / dec,
                log.frontier().nodes().len()
            );
            decade_start = Instant::now();
            decade_from = n;
            next_mark = next_mark.saturating_mul(10);
        }
    }
    let elapsed = start.elapsed();
    println!();
    println!(
        "{total} entries in {:.2} s, {checkpoints} checkpoints signed.",
        elapsed.as_secs_f64()
    );

    // The core alone, without entry encoding: leaf hashing and frontier merges.
    let start = Instant::now();
    let mut cr = CompactRange::new();
    for i in 0..total {
        cr.push(leaf_hash(&i.to_be_bytes()));
    }
    black_box(cr.root());
    println!(
        "Frontier only (leaf hash + merge): {:.0} leaves/s.",
        total as f64 / start.elapsed().as_secs_f64()
    );
    println!();

    println!("## Proof sizes");
    println!();
    println!(
        "| tree size | inclusion proof hashes (max) | bytes | consistency proof n/2 -> n hashes | bytes | generate + verify inclusion |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    let mut size = 1000u64;
    while size <= total {
        let root = tree.subtree_hash(0, size).expect("size within tree");
        let mut max_len = 0;
        let reps = 200u64;
        let t = Instant::now();
        for r in 0..reps {
            let index = (r * 7919) % size;
            let p = inclusion_proof(&tree, index, size).expect("in range");
            let leaf = tree.leaf_hash(index).expect("in range");
            verify_inclusion(index, size, &leaf, &p.path, &root).expect("valid proof");
            max_len = max_len.max(p.path.len());
        }
        let per_proof = t.elapsed().as_secs_f64() / reps as f64;
        let old = size / 2;
        let c = consistency_proof(&tree, old, size).expect("in range");
        let old_root = tree.subtree_hash(0, old).expect("size within tree");
        verify_consistency(old, size, &old_root, &root, &c.path).expect("valid proof");
        println!(
            "| {size} | {max_len} | {} | {} | {} | {:.1} us |",
            max_len * HASH_LEN,
            c.path.len(),
            c.path.len() * HASH_LEN,
            per_proof * 1e6
        );
        size *= 10;
    }
    black_box(public);
}
