//! `confide audit` through the binary: verify, export, check and the per-patient report
//! on a real data directory, then a row edited directly in the database and a package
//! edited as text, each named by the command that checks it.

use std::path::Path;
use std::process::{Command, Output};

use confide_audit::store::sqlx;

fn confide(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_confide"))
        .args(args)
        .env("CONFIDE_DATA_DIR", data_dir)
        .env("CONFIDE_NEW_PASSWORD", "a-long-enough-test-password-1")
        .env_remove("CONFIDE_MASTER_KEY")
        .env_remove("CONFIDE_MASTER_KEY_FILE")
        .env_remove("CONFIDE_DATABASE_URL")
        .env_remove("CONFIDE_AUDIT_KEY_FILE")
        .env("RUST_LOG", "warn")
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn fails(out: &Output) -> String {
    assert!(!out.status.success(), "unexpectedly succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn verify_export_check_report_and_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Each account creation records an audit event, which signaling appends to the log.
    for i in 0..5 {
        let name = format!("doc{i}");
        ok(&confide(
            d,
            &[
                "admin",
                "create-account",
                "--username",
                &name,
                "--role",
                "doctor",
                "--display-name",
                "Dr Test",
            ],
        ));
    }
    let note = ok(&confide(d, &["audit", "checkpoint"]));
    assert!(note.contains("\n5\n"), "{note}");
    let verified = ok(&confide(d, &["audit", "verify"]));
    assert!(verified.starts_with("OK: 5 entries"), "{verified}");

    let key = ok(&confide(d, &["audit", "key"]));
    let pkg = d.join("audit.jsonl");
    ok(&confide(
        d,
        &[
            "audit",
            "export",
            "--from",
            "1",
            "--out",
            pkg.to_str().unwrap(),
        ],
    ));
    let checked = ok(&confide(
        d,
        &["audit", "check", pkg.to_str().unwrap(), "--key", key.trim()],
    ));
    assert!(checked.starts_with("OK: entries 1..5"), "{checked}");

    let report = ok(&confide(
        d,
        &[
            "audit",
            "report",
            "--patient",
            "account:1",
            "--from",
            "2020-01-01",
            "--to",
            "2100-01-01",
        ],
    ));
    assert!(report.contains("Accesses to account:1"), "{report}");

    // An auditee edits the package with a text editor.
    let text = std::fs::read_to_string(&pkg).unwrap();
    let edited = text.replacen(
        "\"action\":\"account_created\"",
        "\"action\":\"account_disabled\"",
        3,
    );
    let bad = d.join("edited.jsonl");
    std::fs::write(&bad, edited).unwrap();
    let err = fails(&confide(d, &["audit", "check", bad.to_str().unwrap()]));
    assert!(err.contains("entry 1 "), "{err}");

    // Someone with database access drops the trigger and edits entry 2.
    let url = format!("sqlite://{}", d.join("confide.sqlite3").display());
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    sqlx::query("DROP TRIGGER audit_log_no_update")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 2")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let err = fails(&confide(d, &["audit", "verify"]));
    assert!(err.contains("entry 2 no longer matches"), "{err}");
}

/// `confide admin bench-accounts`: load-test accounts as the JSON `confide-bench
/// --people` reads (the bench's own test runs it against a server), each creation
/// audited, and a second run with the same prefix refused instead of half-done.
#[tokio::test]
async fn bench_accounts_are_printed_for_the_harness_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = ok(&confide(
        d,
        &["admin", "bench-accounts", "--pairs", "2", "--prefix", "lt"],
    ));
    let people: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(people["staff"]["username"], "lt-staff");
    assert!(people["staff"]["totp_secret"].is_string());
    let pairs = people["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), 2);
    let mut passwords = std::collections::HashSet::new();
    for (i, p) in pairs.iter().enumerate() {
        assert_eq!(p["doctor"]["username"], format!("lt-doctor-{i}"));
        assert!(
            p["doctor"]["totp_secret"].is_string(),
            "doctors log in with TOTP"
        );
        assert!(p["patient"]["totp_secret"].is_null());
        for who in ["doctor", "patient"] {
            let pw = p[who]["password"].as_str().unwrap();
            assert_eq!(pw.len(), 24);
            assert!(passwords.insert(pw.to_string()), "a password repeats");
            assert!(p[who]["id"].as_i64().unwrap() > 0);
        }
    }
    let events = ok(&confide(
        d,
        &["admin", "audit", "--action", "account_created"],
    ));
    assert_eq!(events.lines().count(), 5, "{events}");

    let err = fails(&confide(
        d,
        &["admin", "bench-accounts", "--pairs", "1", "--prefix", "lt"],
    ));
    assert!(err.contains("--prefix"), "{err}");
    let err = fails(&confide(d, &["admin", "bench-accounts", "--pairs", "0"]));
    assert!(err.contains("--pairs"), "{err}");
}
