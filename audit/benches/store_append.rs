//! Append throughput through the SQL store (one transaction per entry, as the server
//! records), on SQLite and PostgreSQL, and proof latency from the node table.
//!
//! A second table prices checkpoint signing: the same appends with the clock read for
//! each entry and checkpoints signed every entry, every 100 ms, every 2 s (the
//! default) or never, on the same store.
//!
//! Run: `cargo bench -p confide-audit --bench store_append [-- ENTRIES]`.
//! PostgreSQL from `CONFIDE_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`), in a scratch schema dropped afterwards.

// A benchmark measures wall time; the library itself never reads the clock.
#![expect(clippy::disallowed_methods)]

use std::time::Instant;

use confide_audit::store::{AuditStore, AuditWriter, Backend};
use confide_audit::*;
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;

fn event(i: u64) -> AuditEvent {
    AuditEvent {
        actor: format!("account:{}", i % 500),
        role: Some("doctor".into()),
        action: "join_ok".into(),
        target: Some(format!("consultation:{}", i / 4)),
        patient: Some(format!("account:{}", 1000 + i % 2000)),
        outcome: Outcome::Success,
        source: Some("203.0.113.17".into()),
        request_id: Some(format!("req-{i:016x}")),
        priority: Priority::Normal,
        detail: None,
    }
}

async fn run(name: &str, pool: AnyPool, backend: Backend, total: u64) {
    let store = AuditStore::open(pool, backend)
        .await
        .expect("create tables");
    let policy = CheckpointPolicy {
        max_entries: 1000,
        max_delay_ms: 60_000,
    };
    let w = AuditWriter::new(
        store,
        "bench.example/audit",
        LogSigningKey::from_seed(&[1; 32]),
        policy,
    )
    .expect("valid origin");
    let t0 = Timestamp::from_unix_millis(1_800_000_000_000).expect("in range");
    let start = Instant::now();
    for i in 0..total {
        let _ = w
            .append(t0.saturating_add_millis(i), event(i))
            .await
            .expect("append");
    }
    let secs = start.elapsed().as_secs_f64();
    let _ = w
        .checkpoint_now(t0.saturating_add_millis(total))
        .await
        .expect("sign");
    let start = Instant::now();
    let reps = 200u64;
    for r in 0..reps {
        let p = w
            .store()
            .inclusion_proof((r * 7919) % total, total)
            .await
            .expect("proof");
        std::hint::black_box(p);
    }
    let proof_us = start.elapsed().as_secs_f64() / reps as f64 * 1e6;
    let start = Instant::now();
    let report = w
        .store()
        .verify(&w.public_key(), "bench.example/audit", None, &[])
        .await
        .expect("verify");
    let verify_secs = start.elapsed().as_secs_f64();
    println!(
        "| {name} | {total} | {:.0} | {proof_us:.0} us | {:.0} entries/s |",
        total as f64 / secs,
        report.size as f64 / verify_secs
    );
}

fn wall() -> Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64;
    Timestamp::from_unix_millis(ms).expect("in range")
}

/// Appends/s with each signing policy, entries timed by the wall clock as the server's
/// are. The policies take turns in chunks of 100 appends (each chunk starts from a
/// fully signed log, untimed), so load from other processes falls on all of them alike.
async fn signing_cost(name: &str, pool: AnyPool, backend: Backend, total: u64) {
    let store = AuditStore::open(pool, backend)
        .await
        .expect("create tables");
    let policies = [
        (
            "never",
            CheckpointPolicy {
                max_entries: u64::MAX,
                max_delay_ms: u64::MAX / 4,
            },
        ),
        ("every 2 s (default)", CheckpointPolicy::default()),
        (
            "every 100 ms",
            CheckpointPolicy {
                max_entries: u64::MAX,
                max_delay_ms: 100,
            },
        ),
        (
            "every entry",
            CheckpointPolicy {
                max_entries: 1,
                max_delay_ms: 0,
            },
        ),
    ];
    let writers: Vec<AuditWriter> = policies
        .iter()
        .map(|(_, policy)| {
            AuditWriter::new(
                store.clone(),
                "bench.example/audit",
                LogSigningKey::from_seed(&[1; 32]),
                *policy,
            )
            .expect("valid origin")
        })
        .collect();
    let chunk = 100u64;
    let mut spent = vec![std::time::Duration::ZERO; policies.len()];
    let mut signed = vec![0usize; policies.len()];
    for round in 0..total.div_ceil(chunk) {
        for (i, w) in writers.iter().enumerate() {
            let _ = w.checkpoint_now(wall()).await.expect("sign");
            let start = Instant::now();
            for j in 0..chunk {
                let out = w
                    .append(wall(), event(round * chunk + j))
                    .await
                    .expect("append");
                signed[i] += usize::from(out.checkpoint.is_some());
            }
            spent[i] += start.elapsed();
        }
    }
    let n = total.div_ceil(chunk) * chunk;
    let base = n as f64 / spent[0].as_secs_f64();
    for (i, (label, _)) in policies.iter().enumerate() {
        let rate = n as f64 / spent[i].as_secs_f64();
        println!(
            "| {name} | {label} | {n} | {rate:.0} | {} | {:.2} |",
            signed[i],
            rate / base
        );
    }
}

fn main() {
    let total: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        sqlx::any::install_default_drivers();
        println!("| backend | entries | appends/s (1 transaction each) | inclusion proof from store | verify |");
        println!("|---|---:|---:|---:|---:|");

        let path = std::env::temp_dir().join(format!("confide_audit_bench_{}.db", std::process::id()));
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let pool = AnyPoolOptions::new().max_connections(1).connect(&url).await.expect("sqlite");
        sqlx::query("PRAGMA journal_mode=WAL").execute(&pool).await.expect("wal");
        run("SQLite (WAL, file)", pool.clone(), Backend::Sqlite, total).await;
        println!();
        println!("| backend | checkpoints signed | entries | appends/s | checkpoints | ratio to never |");
        println!("|---|---|---:|---:|---:|---:|");
        signing_cost("SQLite (WAL, file)", pool.clone(), Backend::Sqlite, total).await;
        pool.close().await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }

        let url = std::env::var("CONFIDE_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let schema = format!("audit_bench_{}", std::process::id());
        let Ok(admin) = AnyPoolOptions::new().max_connections(1).connect(&url).await else {
            println!("(PostgreSQL not reachable at {url}; skipped)");
            return;
        };
        sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&admin).await.expect("schema");
        let set = format!("SET search_path TO {schema}");
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .after_connect(move |conn, _| {
                let set = set.clone();
                Box::pin(async move {
                    sqlx::query(&set).execute(conn).await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .expect("postgres");
        run("PostgreSQL (local)", pool.clone(), Backend::Postgres, total).await;
        signing_cost("PostgreSQL (local)", pool.clone(), Backend::Postgres, total).await;
        pool.close().await;
        let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE")).execute(&admin).await;
    });
}
