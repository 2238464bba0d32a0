//! Witnessing (issue: audit trail, item 3): `confide audit witness` runs as its own
//! process with its own data directory and key, fetches checkpoints from a running
//! server over HTTPS, checks each extends the last one it cosigned, and posts a C2SP
//! cosignature back; the server serves the cosigned checkpoint and
//! `confide audit verify --witness-key` requires it. A server that then truncates the
//! log and lowers the stored size, or forks it, is refused: exit status 3, a loud log
//! line, an alarm file, and no cosignature.

mod common;

use std::path::Path;
use std::process::Output;

use tokio::process::Command;

use common::*;
use confide_audit::store::{AuditStore, Backend, sqlx};
use confide_audit::{LogPublicKey, WitnessPublicKey, open_cosigned};
use confide_server::audit_cmd::{self, AuditCmd};
use confide_server::confide_signaling::model::Role;

/// Runs the binary without blocking the runtime the in-process server is served on.
async fn confide(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_confide"))
        .args(args)
        .env("CONFIDE_DATA_DIR", data_dir)
        .env_remove("CONFIDE_MASTER_KEY")
        .env_remove("CONFIDE_MASTER_KEY_FILE")
        .env_remove("CONFIDE_DATABASE_URL")
        .env_remove("CONFIDE_AUDIT_KEY_FILE")
        .env_remove("CONFIDE_AUDIT_WITNESSES_FILE")
        .env("RUST_LOG", "info")
        .env("RUST_BACKTRACE", "0")
        .output()
        .await
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Signs a checkpoint of everything recorded so far, as the server's signer would
/// within its period.
async fn sign_now(s: &TestServer) {
    let cfg = confide_server::Config::new(s.data_dir.clone());
    audit_cmd::run(cfg, AuditCmd::Checkpoint).await.unwrap();
}

/// What a database owner would do to drop entries the witness has seen: delete them,
/// their tree nodes, checkpoints and cosignatures, and lower the stored size so that
/// appends go on from `keep` without a gap, all in one transaction.
async fn truncate_to(db_url: &str, keep: u64) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(db_url).await.unwrap();
    let store = AuditStore::attach(pool.clone(), Backend::Sqlite);
    let frontier = store.frontier_at(keep).await.unwrap();
    let frontier_hex: String = frontier.nodes().iter().map(|h| h.to_hex()).collect();
    let mut tx = pool.begin().await.unwrap();
    for t in [
        "audit_log_no_delete",
        "audit_nodes_no_delete",
        "audit_checkpoints_no_delete",
        "audit_cosignatures_no_delete",
    ] {
        sqlx::query(&format!("DROP TRIGGER {t}"))
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    let k = keep as i64;
    for q in [
        "DELETE FROM audit_log WHERE seq >= $1",
        "DELETE FROM audit_nodes WHERE (idx + 1) * (1 << level) > $1",
        "DELETE FROM audit_checkpoints WHERE size > $1",
        "DELETE FROM audit_cosignatures WHERE size > $1",
    ] {
        sqlx::query(q).bind(k).execute(&mut *tx).await.unwrap();
    }
    sqlx::query(
        "UPDATE audit_head SET size = $1, frontier = $2, signed_size = $1, unsigned_since = NULL",
    )
    .bind(k)
    .bind(frontier_hex)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    pool.close().await;
}

#[tokio::test]
async fn witness_cosigns_a_growing_log_and_refuses_a_rewritten_one() {
    let s = server_with(|cfg| cfg.admin_bind = Some("127.0.0.1:0".parse().unwrap())).await;
    let wdir = tempfile::tempdir().unwrap();
    let wd = wdir.path().join("witness");
    let cert = wdir.path().join("server.pem");
    std::fs::write(
        &cert,
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64_lines(&s.running.cert_der)
        ),
    )
    .unwrap();

    // The witness makes its key in its own directory; the clinic lists it.
    let out = confide(
        &wd,
        &[
            "audit",
            "witness",
            "--print-key",
            "--name",
            "witness.test/w1",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let wkey_text = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let wkey = WitnessPublicKey::from_vkey(&wkey_text).unwrap();
    std::fs::write(
        s.data_dir.join("audit-witnesses"),
        format!("# test witness\n{wkey_text}\n"),
    )
    .unwrap();
    let log_vkey = s.req("GET", "/api/audit/key", None, None).await;
    let log_vkey = log_vkey.body.as_str().unwrap().trim().to_owned();
    let (_, log_key) = LogPublicKey::from_vkey(&log_vkey).unwrap();

    let server_url = s.url("");
    let cert_path = cert.to_str().unwrap().to_owned();
    let witness = |extra: Vec<String>| {
        let mut args: Vec<String> = ["audit", "witness", "--once", "--server"]
            .map(String::from)
            .to_vec();
        args.extend([server_url.clone(), "--ca-cert".into(), cert_path.clone()]);
        args.extend(extra);
        let wd = wd.clone();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            confide(&wd, &args).await
        }
    };

    let _ = s.login_demo(Role::Patient).await;
    sign_now(&s).await;

    // Before any witness has cosigned, verify --witness-key refuses.
    let out = confide(
        &s.data_dir,
        &["audit", "verify", "--witness-key", &wkey_text],
    )
    .await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("no checkpoint carries a valid cosignature by witness.test/w1"),
        "{}",
        text(&out)
    );

    // A witness never runs in the server's own data directory.
    let out = confide(
        &s.data_dir,
        &[
            "audit",
            "witness",
            "--once",
            "--server",
            &server_url,
            "--log-key",
            &log_vkey,
        ],
    )
    .await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("a server's data directory"),
        "{}",
        text(&out)
    );

    // First run pins the log key and cosigns the latest checkpoint.
    let out = witness(vec!["--log-key".into(), log_vkey.clone()]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Cosigned("), "{}", text(&out));

    // The server serves the checkpoint with the cosignature, which verifies.
    let note = s.req("GET", "/api/audit/checkpoint", None, None).await;
    let note = note.body.as_str().unwrap().to_owned();
    let (cp1, cosigs) = open_cosigned(&note, &log_key, std::slice::from_ref(&wkey))
        .unwrap_or_else(|e| panic!("{e}: {note}"));
    assert_eq!(cosigs.len(), 1);
    let out = confide(
        &s.data_dir,
        &["audit", "verify", "--witness-key", &wkey_text],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "witnessed by witness.test/w1 up to size {}",
            cp1.checkpoint.size
        )),
        "{}",
        text(&out)
    );

    // The server stores only cosignatures by listed witnesses on checkpoints it signed.
    let stranger =
        confide_audit::WitnessSigningKey::from_seed("stranger.test/w", &[9; 32]).unwrap();
    let plain = confide_audit::SignedCheckpoint::from_note(&note, &log_key).unwrap();
    let forged_body = format!(
        "{}{}",
        plain.to_note(&log_key),
        stranger.cosign(&plain.checkpoint, 1_800_000_000).to_line()
    );
    for body in [forged_body.as_str(), "not a note", ""] {
        let r = s
            .http
            .post(s.url("/api/audit/cosignature"))
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{body}");
    }
    let note_again = s.req("GET", "/api/audit/checkpoint", None, None).await;
    assert!(
        !note_again
            .body
            .as_str()
            .unwrap()
            .contains("stranger.test/w")
    );

    // Operators see how far each witness got.
    let admin = s.running.admin.as_ref().expect("admin listener").addr;
    let metrics = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!(
            "confide_audit_witnessed_size{{witness=\"witness.test/w1\"}} {}",
            cp1.checkpoint.size
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("confide_audit_witnessed_timestamp_seconds{witness=\"witness.test/w1\"}"),
        "{metrics}"
    );

    // The log grows; the witness checks the consistency proof and cosigns again.
    for _ in 0..3 {
        let _ = s.login_demo(Role::Patient).await;
    }
    sign_now(&s).await;
    let out = witness(vec![]).await;
    assert!(out.status.success(), "{}", text(&out));
    let seen = std::fs::read_to_string(wd.join("witnessed.note")).unwrap();
    let cp2 = confide_audit::SignedCheckpoint::from_note(&seen, &log_key).unwrap();
    assert!(cp2.checkpoint.size > cp1.checkpoint.size);
    // A round with nothing new changes nothing.
    let out = witness(vec![]).await;
    assert!(text(&out).contains("Unchanged("), "{}", text(&out));

    // The database owner drops what the witness saw past the first checkpoint and
    // lowers the stored size; new entries follow. The server's own verify cannot tell.
    let db_url = format!("sqlite://{}", s.data_dir.join("confide.sqlite3").display());
    truncate_to(&db_url, cp1.checkpoint.size).await;
    let _ = s.login_demo(Role::Patient).await;
    sign_now(&s).await;
    let out = confide(&s.data_dir, &["audit", "verify"]).await;
    assert!(out.status.success(), "{}", text(&out));

    // The witness refuses: smaller than what it cosigned.
    let out = witness(vec![]).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("AUDIT LOG REWRITTEN"), "{}", text(&out));
    assert!(text(&out).contains("shrank"), "{}", text(&out));
    let alarms = std::fs::read_dir(&wd)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("ALARM-")
        })
        .count();
    assert_eq!(alarms, 1);

    // Grown past the witnessed size on the rewritten history (a fork): still refused,
    // and the forked checkpoint carries no cosignature.
    while log_size(&db_url).await <= cp2.checkpoint.size {
        let _ = s.login_demo(Role::Patient).await;
    }
    sign_now(&s).await;
    let out = witness(vec![]).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("not consistent"), "{}", text(&out));
    let note = s.req("GET", "/api/audit/checkpoint", None, None).await;
    let note = note.body.as_str().unwrap().to_owned();
    assert!(open_cosigned(&note, &log_key, std::slice::from_ref(&wkey)).is_err());

    // The witness's own note proves the truncation to anyone who runs verify with it.
    let out = confide(
        &s.data_dir,
        &[
            "audit",
            "verify",
            "--checkpoint",
            wd.join("witnessed.note").to_str().unwrap(),
        ],
    )
    .await;
    assert!(!out.status.success(), "{}", text(&out));
}

async fn log_size(db_url: &str) -> u64 {
    let pool = sqlx::AnyPool::connect(db_url).await.unwrap();
    let n = AuditStore::attach(pool.clone(), Backend::Sqlite)
        .size()
        .await
        .unwrap();
    pool.close().await;
    n
}

fn base64_lines(der: &[u8]) -> String {
    use base64::Engine as _;
    let b = base64::engine::general_purpose::STANDARD.encode(der);
    b.as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}
