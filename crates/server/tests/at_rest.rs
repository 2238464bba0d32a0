//! Encryption at rest: a copied database alone reveals no names, contacts, reasons
//! or TOTP secrets; keys rotate through the CLI.

mod common;

use std::process::Command;

use common::*;
use confide_server::confide_signaling::auth::TotpSecret;
use confide_server::confide_signaling::crypto::MasterKey;
use confide_server::confide_signaling::http::now;
use confide_server::confide_signaling::model::Role;
use confide_server::confide_signaling::store::SqlStore;
use confide_server::confide_signaling::store::keys::load_keyring;
use rand::rngs::OsRng;

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_database_reveals_no_sealed_data() {
    let ts = server().await;
    let data_dir = ts.data_dir.clone();
    let copy = tempfile::tempdir().unwrap();
    let mut bytes = Vec::new();
    for f in [
        "confide.sqlite3",
        "confide.sqlite3-wal",
        "confide.sqlite3-shm",
    ] {
        let src = data_dir.join(f);
        if src.exists() {
            std::fs::copy(&src, copy.path().join(f)).unwrap();
            bytes.extend(std::fs::read(&src).unwrap());
        }
    }
    assert!(bytes.len() > 10_000);
    let mut secrets: Vec<Vec<u8>> = vec![
        b"Dr. Demo Doctor".to_vec(),
        b"Demo Patient".to_vec(),
        b"patient@demo.invalid".to_vec(),
        b"Demo follow-up".to_vec(),
        b"demo-doctor-password".to_vec(),
    ];
    for a in &ts.demo.accounts {
        if let Some(s) = &a.totp_secret {
            secrets.push(s.as_bytes().to_vec());
            secrets.push(TotpSecret::from_base32(s).unwrap().0.to_vec());
        }
    }
    let master = std::fs::read_to_string(data_dir.join("master.key")).unwrap();
    secrets.push(master.trim().as_bytes().to_vec());
    secrets.push(hex::decode(master.trim()).unwrap());
    for s in &secrets {
        assert!(
            !contains(&bytes, s),
            "database holds {:?}",
            String::from_utf8_lossy(s)
        );
    }
    // Sanity: a value stored in clear would have been found.
    assert!(contains(&bytes, b"doctor"), "usernames are stored in clear");

    // The copy opens, but not its data keys, without the master key.
    let url = format!("sqlite://{}", copy.path().join("confide.sqlite3").display());
    let store = SqlStore::connect(&url).await.unwrap();
    let wrong = MasterKey::generate(&mut OsRng);
    assert!(load_keyring(&store, &wrong, now()).await.is_err());
    let right = MasterKey::parse(&master).unwrap();
    let ring = load_keyring(&store, &right, now()).await.unwrap();
    let doc =
        confide_server::confide_signaling::store::Store::account_by_username(&store, "doctor")
            .await
            .unwrap()
            .unwrap();
    assert_eq!(
        ring.open_string(
            confide_server::confide_signaling::crypto::ctx::DISPLAY_NAME,
            &doc.display_name
        )
        .unwrap(),
        ts.demo.account(Role::Doctor).unwrap().display_name
    );
}

fn confide(
    data_dir: &std::path::Path,
    key_file: &std::path::Path,
    args: &[&str],
) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_confide"))
        .args(args)
        .env("CONFIDE_DATA_DIR", data_dir)
        .env("CONFIDE_MASTER_KEY_FILE", key_file)
        .env_remove("CONFIDE_MASTER_KEY")
        .env_remove("CONFIDE_DATABASE_URL")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

#[test]
fn master_and_data_key_rotation_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let old_key = dir.path().join("old.key");
    let new_key = dir.path().join("new.key");

    let out = confide(&data, &old_key, &["demo", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let secret = first["accounts"][0]["totp_secret"]
        .as_str()
        .unwrap()
        .to_string();

    let out = confide(&data, &old_key, &["admin", "gen-master-key"]);
    assert!(out.status.success());
    std::fs::write(&new_key, &out.stdout).unwrap();
    let out = confide(
        &data,
        &old_key,
        &[
            "admin",
            "rotate-master-key",
            "--new-key-file",
            new_key.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The old key no longer opens anything; the new one does.
    let out = confide(&data, &old_key, &["demo", "--json"]);
    assert!(
        !out.status.success(),
        "old master key must fail after rotation"
    );
    let out = confide(&data, &new_key, &["admin", "rotate-data-key"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = confide(&data, &new_key, &["demo", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        again["accounts"][0]["totp_secret"],
        secret.as_str(),
        "re-sealed values still open"
    );

    let out = confide(
        &data,
        &new_key,
        &["admin", "audit", "--action", "key_rotated"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 2, "{text}");
}
