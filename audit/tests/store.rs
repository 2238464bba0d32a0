//! The SQL store on both backends: appends, checkpoints, proofs and exports from the
//! database, and tampering done directly in SQL by someone who can drop the
//! append-only triggers.
//!
//! PostgreSQL: `CONFIDE_TEST_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`; every test gets a fresh schema. These
//! tests fail, never skip, when the server cannot be reached.

use std::collections::BTreeSet;
use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use confide_audit::store::{AuditStore, AuditWriter, Backend};
use confide_audit::*;
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;

use crate::util::{ORIGIN, event, t};

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

struct Db {
    pool: AnyPool,
    backend: Backend,
    cleanup: Option<String>,
}

impl Db {
    async fn sqlite() -> Db {
        sqlx::any::install_default_drivers();
        let path = std::env::temp_dir().join(format!("{}.db", unique("confide_audit")));
        let _ = std::fs::remove_file(&path);
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .expect("open SQLite file");
        sqlx::query("PRAGMA journal_mode=WAL")
            .execute(&pool)
            .await
            .unwrap();
        Db {
            pool,
            backend: Backend::Sqlite,
            cleanup: Some(path.display().to_string()),
        }
    }

    async fn postgres() -> Db {
        sqlx::any::install_default_drivers();
        let url = std::env::var("CONFIDE_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let admin = AnyPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {url} is required for this test: {e}"));
        let schema = unique("audit_test");
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .execute(&admin)
            .await
            .unwrap();
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let set = format!("SET search_path TO {schema}");
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .after_connect(move |conn, _| {
                let set = set.clone();
                Box::pin(async move {
                    sqlx::query(&set).execute(conn).await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .unwrap();
        Db {
            pool,
            backend: Backend::Postgres,
            cleanup: Some(schema),
        }
    }

    async fn exec(&self, sql: &str) {
        sqlx::query(sql)
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// What someone with the database owner's rights does first.
    async fn drop_guards(&self) {
        match self.backend {
            Backend::Sqlite => {
                for t in ["audit_log", "audit_nodes", "audit_checkpoints"] {
                    self.exec(&format!("DROP TRIGGER {t}_no_update")).await;
                    self.exec(&format!("DROP TRIGGER {t}_no_delete")).await;
                }
            }
            Backend::Postgres => {
                for t in ["audit_log", "audit_nodes", "audit_checkpoints"] {
                    self.exec(&format!("DROP TRIGGER {t}_append_only ON {t}"))
                        .await;
                    self.exec(&format!("DROP TRIGGER {t}_no_truncate ON {t}"))
                        .await;
                }
            }
        }
    }

    async fn finish(self) {
        self.pool.close().await;
        match (self.backend, self.cleanup) {
            (Backend::Sqlite, Some(path)) => {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{path}{suffix}"));
                }
            }
            (Backend::Postgres, Some(schema)) => {
                let url = std::env::var("CONFIDE_TEST_DATABASE_URL")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
                if let Ok(admin) = AnyPoolOptions::new().max_connections(1).connect(&url).await {
                    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                        .execute(&admin)
                        .await;
                    admin.close().await;
                }
            }
            _ => {}
        }
    }
}

const N: u64 = 300;

/// A stored log of `N` entries with a checkpoint every 64 and one at the end.
async fn filled(db: &Db) -> AuditWriter {
    let store = AuditStore::open(db.pool.clone(), db.backend).await.unwrap();
    let policy = CheckpointPolicy {
        max_entries: 64,
        max_delay_ms: 3_600_000,
    };
    let w = AuditWriter::new(store, ORIGIN, LogSigningKey::from_seed(&[42; 32]), policy).unwrap();
    for i in 0..N {
        let out = w
            .append(t(1_800_000_000_000 + i as i64 * 1000), event(i))
            .await
            .unwrap();
        assert_eq!(out.seq, i);
        assert_eq!(out.checkpoint.is_some(), (i + 1) % 64 == 0);
    }
    assert!(
        w.checkpoint_now(t(1_800_000_400_000))
            .await
            .unwrap()
            .is_some()
    );
    w
}

async fn verify(w: &AuditWriter) -> Result<VerifyReport, Error> {
    w.store().verify(&w.public_key(), ORIGIN, None, &[]).await
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let db = super::Db::sqlite().await;
                    super::$name(&db).await;
                    db.finish().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let db = super::Db::postgres().await;
                    super::$name(&db).await;
                    db.finish().await;
                }
            )*
        }
    };
}

both_backends!(
    round_trip_verify_proofs_and_export,
    application_cannot_update_or_delete,
    edited_row_is_named,
    deleted_row_is_named,
    reordered_rows_are_named,
    edited_row_with_rewritten_hash_names_the_range,
    deleted_tail_is_reported,
    forged_row_past_the_head_stops_appends_and_is_reported,
    forged_checkpoint_row_is_refused,
    time_based_checkpoint,
    concurrent_appends_stay_dense,
    per_patient_access_report,
    keyless_append_then_signer_tick,
    archived_prefix_verifies_from_kept_frontier,
    concurrent_opens_are_safe,
    periods_select_entries_and_a_streamed_export_is_the_same_package,
);

async fn round_trip_verify_proofs_and_export(db: &Db) {
    let w = filled(db).await;
    let key = w.public_key();
    let r = verify(&w).await.unwrap();
    assert_eq!((r.size, r.signed_size, r.unsigned_tail), (N, N, 0));
    let cps = w.store().checkpoints(&key).await.unwrap();
    assert_eq!(cps.len(), 5);
    assert_eq!(r.checkpoints_checked, 5);

    // Proofs served from the node table verify against the signed roots.
    let last = &cps[4].checkpoint;
    for seq in [0, 1, 63, 64, 150, 299] {
        let p = w.store().inclusion_proof(seq, last.size).await.unwrap();
        let entry = &w.store().entries(seq, 1).await.unwrap()[0];
        verify_inclusion(
            seq,
            last.size,
            &entry.entry.leaf_hash(),
            &p.path,
            &last.root,
        )
        .unwrap();
    }
    for a in &cps {
        for b in &cps {
            if a.checkpoint.size <= b.checkpoint.size {
                let (m, n) = (a.checkpoint.size, b.checkpoint.size);
                let p = w.store().consistency_proof(m, n).await.unwrap();
                verify_consistency(m, n, &a.checkpoint.root, &b.checkpoint.root, &p.path).unwrap();
            }
        }
    }

    // An exported package checks offline, and a tampered one does not.
    let mut pkg = Vec::new();
    let rep = w.store().export(&mut pkg, &key, 100, 250).await.unwrap();
    assert_eq!((rep.start_size, rep.end_size, rep.entries), (64, 256, 150));
    let checked = check_package(Cursor::new(&pkg), Some(&key)).unwrap();
    assert_eq!(checked, rep);
    let text = String::from_utf8(pkg).unwrap();
    let edited = text.replacen(
        "\"request_id\":\"req-200\"",
        "\"request_id\":\"req-201\"",
        1,
    );
    assert_ne!(edited, text);
    assert_eq!(
        check_package(Cursor::new(edited.as_bytes()), Some(&key))
            .unwrap_err()
            .finding(),
        Some(&Finding::InclusionFailed { seq: 200 })
    );
}

async fn application_cannot_update_or_delete(db: &Db) {
    let _w = filled(db).await;
    for sql in [
        "UPDATE audit_log SET actor = 'account:666' WHERE seq = 3",
        "DELETE FROM audit_log WHERE seq = 3",
        "UPDATE audit_nodes SET hash = 'x' WHERE level = 0 AND idx = 3",
        "DELETE FROM audit_checkpoints",
    ] {
        assert!(
            sqlx::query(sql).execute(&db.pool).await.is_err(),
            "{sql} was allowed"
        );
    }
}

async fn edited_row_is_named(db: &Db) {
    let w = filled(db).await;
    db.drop_guards().await;
    db.exec("UPDATE audit_log SET actor = 'account:666' WHERE seq = 137")
        .await;
    let err = verify(&w).await.unwrap_err();
    assert_eq!(err.finding(), Some(&Finding::Altered { seq: 137 }));
    assert!(err.to_string().contains("entry 137"), "{err}");
    // Exporting a range containing the row refuses too.
    let mut out = Vec::new();
    let err = w
        .store()
        .export(&mut out, &w.public_key(), 100, 200)
        .await
        .unwrap_err();
    assert_eq!(err.finding(), Some(&Finding::Altered { seq: 137 }));
}

async fn deleted_row_is_named(db: &Db) {
    let w = filled(db).await;
    db.drop_guards().await;
    db.exec("DELETE FROM audit_log WHERE seq = 42").await;
    assert_eq!(
        verify(&w).await.unwrap_err().finding(),
        Some(&Finding::Missing { seq: 42 })
    );
}

async fn reordered_rows_are_named(db: &Db) {
    let w = filled(db).await;
    db.drop_guards().await;
    db.exec("UPDATE audit_log SET seq = -1 WHERE seq = 10")
        .await;
    db.exec("UPDATE audit_log SET seq = 10 WHERE seq = 20")
        .await;
    db.exec("UPDATE audit_log SET seq = 20 WHERE seq = -1")
        .await;
    assert_eq!(
        verify(&w).await.unwrap_err().finding(),
        Some(&Finding::Altered { seq: 10 })
    );
}

async fn edited_row_with_rewritten_hash_names_the_range(db: &Db) {
    let w = filled(db).await;
    db.drop_guards().await;
    // Recompute the leaf hash of the edited row the way a careful attacker would.
    let mut row = w.store().entries(137, 1).await.unwrap().remove(0);
    let mut ev = row.entry.event();
    ev.outcome = Outcome::Success;
    ev.detail = None;
    ev.actor = "account:5".into();
    row.entry = AuditEntry::new(137, row.entry.time(), ev);
    db.exec(&format!(
        "UPDATE audit_log SET actor = 'account:5', outcome = 'success', detail = NULL, leaf_hash = '{}' WHERE seq = 137",
        row.entry.leaf_hash().to_hex()
    ))
    .await;
    assert_eq!(
        verify(&w).await.unwrap_err().finding(),
        Some(&Finding::RangeAltered { from: 128, to: 192 })
    );
}

async fn deleted_tail_is_reported(db: &Db) {
    let w = filled(db).await;
    db.drop_guards().await;
    // Signed entries removed from the end.
    db.exec("DELETE FROM audit_log WHERE seq >= 290").await;
    assert_eq!(
        verify(&w).await.unwrap_err().finding(),
        Some(&Finding::Truncated {
            seq: 290,
            checkpoint_size: 300
        })
    );
    // Also removing the checkpoints that cover them still leaves the head's count,
    // and a checkpoint an auditor kept catches it even if the head is rewritten.
    let kept = w
        .store()
        .latest_checkpoint(&w.public_key())
        .await
        .unwrap()
        .unwrap();
    db.exec("DELETE FROM audit_checkpoints WHERE size > 256")
        .await;
    // No checkpoint covers entry 299 any more: the finding names the stored size, and
    // says so, rather than a checkpoint of that size.
    let err = verify(&w).await.unwrap_err();
    assert_eq!(
        err.finding(),
        Some(&Finding::HeadAhead {
            seq: 290,
            head_size: 300
        })
    );
    let text = err.to_string();
    assert!(
        text.contains("stored log size is 300") && !text.contains("checkpoint"),
        "{text}"
    );
    db.exec("UPDATE audit_head SET size = 290").await;
    let err = w
        .store()
        .verify(&w.public_key(), ORIGIN, None, &[kept])
        .await
        .unwrap_err();
    assert_eq!(
        err.finding(),
        Some(&Finding::Truncated {
            seq: 290,
            checkpoint_size: 300
        })
    );
}

/// Someone inserts a well-formed row where the next entry would go, with its leaf hash
/// computed correctly (the leaf hash is an unkeyed hash of a documented encoding). The
/// head still says 300: every later append collides with the row, and `verify` names
/// it instead of answering OK.
async fn forged_row_past_the_head_stops_appends_and_is_reported(db: &Db) {
    let w = filled(db).await;
    assert_eq!(verify(&w).await.unwrap().size, N);
    let forged = AuditEntry::new(N, t(1_800_000_500_000), event(7));
    // Plain INSERT: the triggers guard UPDATE and DELETE only.
    sqlx::query(
        "INSERT INTO audit_log (seq, at, actor, role, action, target, patient, outcome, \
         source, request_id, priority, detail, leaf_hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(N as i64)
    .bind(forged.time().unix_millis())
    .bind(forged.actor())
    .bind(forged.role())
    .bind(forged.action())
    .bind(forged.target())
    .bind(forged.patient())
    .bind(forged.outcome().as_str())
    .bind(forged.source())
    .bind(forged.request_id())
    .bind(forged.priority().as_str())
    .bind(forged.detail())
    .bind(forged.leaf_hash().to_hex())
    .execute(&db.pool)
    .await
    .unwrap();
    assert_eq!(w.store().size().await.unwrap(), N);
    assert!(
        w.store()
            .append(t(1_800_000_600_000), event(8))
            .await
            .is_err(),
        "an append over the forged row must fail, not renumber"
    );
    let err = verify(&w).await.unwrap_err();
    assert_eq!(
        err.finding(),
        Some(&Finding::BeyondHead {
            seq: N,
            rows: N + 1
        }),
        "{err}"
    );
    assert!(
        err.to_string().contains("beyond the stored log size 300"),
        "{err}"
    );
}

async fn forged_checkpoint_row_is_refused(db: &Db) {
    let w = filled(db).await;
    db.drop_guards().await;
    db.exec(
        "UPDATE audit_checkpoints SET note = replace(note, 'time 20', 'time 19') WHERE size = 64",
    )
    .await;
    assert_eq!(
        verify(&w).await.unwrap_err().finding(),
        Some(&Finding::BadCheckpointSignature { size: 64 })
    );
}

async fn time_based_checkpoint(db: &Db) {
    let store = AuditStore::open(db.pool.clone(), db.backend).await.unwrap();
    let policy = CheckpointPolicy {
        max_entries: 1000,
        max_delay_ms: 10_000,
    };
    let w = AuditWriter::new(store, ORIGIN, LogSigningKey::from_seed(&[7; 32]), policy).unwrap();
    assert_eq!(w.next_deadline().await.unwrap(), None);
    let out = w.append(t(1_000_000), event(0)).await.unwrap();
    assert!(out.checkpoint.is_none());
    let _ = w.append(t(1_005_000), event(1)).await.unwrap();
    assert_eq!(w.next_deadline().await.unwrap(), Some(t(1_010_000)));
    assert!(w.tick(t(1_009_999)).await.unwrap().is_none());
    let cp = w.tick(t(1_010_000)).await.unwrap().unwrap();
    assert_eq!((cp.checkpoint.size, cp.checkpoint.time), (2, t(1_010_000)));
    assert_eq!(w.next_deadline().await.unwrap(), None);
    assert!(w.tick(t(2_000_000)).await.unwrap().is_none());
    let r = verify(&w).await.unwrap();
    assert_eq!((r.size, r.signed_size), (2, 2));
}

async fn concurrent_appends_stay_dense(db: &Db) {
    let store = AuditStore::open(db.pool.clone(), db.backend).await.unwrap();
    let policy = CheckpointPolicy {
        max_entries: 10,
        max_delay_ms: 60_000,
    };
    let w = Arc::new(
        AuditWriter::new(store, ORIGIN, LogSigningKey::from_seed(&[9; 32]), policy).unwrap(),
    );
    let mut tasks = Vec::new();
    for task in 0..4u64 {
        let w = w.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..15u64 {
                let _ = w
                    .append(t(5_000_000 + i as i64), event(task * 100 + i))
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let r = verify(&w).await.unwrap();
    assert_eq!((r.size, r.signed_size), (60, 60));
}

async fn per_patient_access_report(db: &Db) {
    let w = filled(db).await;
    // event(i) has patient account:(100 + i % 3) and target consultation:(i % 5).
    let targets: BTreeSet<String> = BTreeSet::new();
    let from = t(1_800_000_000_000);
    let to = t(1_800_000_000_000 + 150 * 1000);
    let report = w
        .store()
        .access_report("account:101", &targets, from, to)
        .await
        .unwrap();
    let total: u64 = report.iter().map(|r| r.count).sum();
    assert_eq!(total, (0..150u64).filter(|i| i % 3 == 1).count() as u64);
    assert!(report.iter().all(|r| r.actor.starts_with("account:")));
    // Entries found through the target list even without a patient id.
    let targets: BTreeSet<String> = ["consultation:4".to_string()].into();
    let report = w
        .store()
        .access_report("account:999", &targets, from, to)
        .await
        .unwrap();
    let total: u64 = report.iter().map(|r| r.count).sum();
    assert_eq!(total, 30);
}

async fn keyless_append_then_signer_tick(db: &Db) {
    // Signaling records through the keyless append; the server's signer task holds the
    // key and signs on its tick once N entries are waiting.
    let store = AuditStore::open(db.pool.clone(), db.backend).await.unwrap();
    let recorder = AuditStore::attach(db.pool.clone(), db.backend);
    let policy = CheckpointPolicy {
        max_entries: 5,
        max_delay_ms: 60_000,
    };
    let signer =
        AuditWriter::new(store, ORIGIN, LogSigningKey::from_seed(&[11; 32]), policy).unwrap();
    for i in 0..4 {
        assert_eq!(
            recorder
                .append(t(1_000 + i), event(i as u64))
                .await
                .unwrap(),
            i as u64
        );
    }
    assert!(signer.tick(t(1_010)).await.unwrap().is_none());
    assert_eq!(recorder.append(t(1_020), event(4)).await.unwrap(), 4);
    let cp = signer.tick(t(1_030)).await.unwrap().unwrap();
    assert_eq!(cp.checkpoint.size, 5);
    let r = verify(&signer).await.unwrap();
    assert_eq!((r.size, r.signed_size), (5, 5));
}

async fn archived_prefix_verifies_from_kept_frontier(db: &Db) {
    let w = filled(db).await;
    // The operator's archiving procedure (docs/operations.md): export the range, keep
    // the frontier at a checkpoint size, then remove the archived rows.
    let mut pkg = Vec::new();
    w.store()
        .export(&mut pkg, &w.public_key(), 0, 128)
        .await
        .unwrap();
    check_package(Cursor::new(&pkg), Some(&w.public_key())).unwrap();
    let frontier = w.store().frontier_at(128).await.unwrap();
    db.drop_guards().await;
    db.exec("DELETE FROM audit_log WHERE seq < 128").await;
    let r = w
        .store()
        .verify(&w.public_key(), ORIGIN, Some(&frontier), &[])
        .await
        .unwrap();
    assert_eq!((r.entries, r.size, r.signed_size), (172, 300, 300));
    // Without the archive frontier the gap is reported as what it is.
    assert_eq!(
        verify(&w).await.unwrap_err().finding(),
        Some(&Finding::Missing { seq: 0 })
    );
    // Proofs for the remaining entries still come from the node table.
    let last = w
        .store()
        .latest_checkpoint(&w.public_key())
        .await
        .unwrap()
        .unwrap();
    let p = w.store().inclusion_proof(200, 300).await.unwrap();
    let e = &w.store().entries(200, 1).await.unwrap()[0];
    verify_inclusion(
        200,
        300,
        &e.entry.leaf_hash(),
        &p.path,
        &last.checkpoint.root,
    )
    .unwrap();
}

async fn concurrent_opens_are_safe(db: &Db) {
    // Several servers (or CLI commands) starting at once on one database.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (pool, backend) = (db.pool.clone(), db.backend);
        tasks.push(tokio::spawn(async move {
            AuditStore::open(pool, backend).await.map(|_| ())
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let store = AuditStore::open(db.pool.clone(), db.backend).await.unwrap();
    assert_eq!(store.size().await.unwrap(), 0);
}

/// The administration page's reads: entries by time, the run of entries recorded in a
/// period, and an export handed out in pieces that add up to the same package.
async fn periods_select_entries_and_a_streamed_export_is_the_same_package(db: &Db) {
    let w = filled(db).await;
    let key = w.public_key();
    // Entry i was recorded at 1_800_000_000_000 + i s.
    let at = |i: i64| t(1_800_000_000_000 + i * 1000);
    let got = w
        .store()
        .query(&store::EntryFilter {
            since: Some(at(10)),
            until: Some(at(20)),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        got.iter().map(|e| e.entry.seq()).collect::<Vec<_>>(),
        (10..20).collect::<Vec<_>>()
    );
    assert_eq!(
        w.store().seq_range_between(at(10), at(20)).await.unwrap(),
        Some((10, 20))
    );
    // Half-seconds between entries: the run still starts and ends on whole entries.
    assert_eq!(
        w.store()
            .seq_range_between(t(1_800_000_010_500), t(1_800_000_012_500))
            .await
            .unwrap(),
        Some((11, 13))
    );
    assert_eq!(
        w.store().seq_range_between(t(0), t(1000)).await.unwrap(),
        None
    );

    let mut whole = Vec::new();
    w.store().export(&mut whole, &key, 10, 250).await.unwrap();
    let mut pieces: Vec<Vec<u8>> = Vec::new();
    let mut buf = Vec::new();
    w.store()
        .export_with(&mut buf, &key, 10, 250, |b: &mut Vec<u8>| {
            pieces.push(std::mem::take(b));
            std::future::ready(Ok(()))
        })
        .await
        .unwrap();
    pieces.push(buf);
    // The header alone first, then one piece per batch of entries.
    assert!(pieces.len() >= 2, "{}", pieces.len());
    assert_eq!(pieces[0].iter().filter(|b| **b == b'\n').count(), 1);
    assert_eq!(pieces.concat(), whole);
    check_package(Cursor::new(&whole), Some(&key)).unwrap();
}
