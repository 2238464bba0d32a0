//! `confide-bench --target`: the harness against a server it did not start, with the
//! accounts `confide admin bench-accounts` makes (`ops::create_bench_pairs`, which that
//! command calls) and the server's self-signed certificate, over real TLS and UDP.

use std::path::Path;
use std::process::{Command, Output};

use confide_server::confide_signaling::model::Role;
use confide_server::confide_signaling::ops;
use confide_server::{Config, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_runs_against_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::new(dir.path().join("data"));
    cfg.bind = "127.0.0.1:0".parse().unwrap();
    cfg.static_dir = Some(dir.path().join("no-static"));
    let terms = cfg.settings.terms_version.clone();
    let running = start(cfg).await.unwrap();
    let state = running.state.clone();

    let staff = ops::create_bench_account(
        state.store.as_ref(),
        &state.keyring,
        "load-staff".into(),
        Role::Staff,
        &terms,
    )
    .await
    .unwrap();
    let pairs = ops::create_bench_pairs(state.store.as_ref(), &state.keyring, "load", 0, 2, &terms)
        .await
        .unwrap();
    assert!(staff.totp_secret.is_some() && pairs[0].doctor.totp_secret.is_some());
    assert!(pairs[0].patient.totp_secret.is_none());
    let people = dir.path().join("people.json");
    std::fs::write(
        &people,
        serde_json::to_vec(&ops::BenchPeople { staff, pairs }).unwrap(),
    )
    .unwrap();
    assert!(
        dir.path().join("data/tls/cert.pem").exists(),
        "the server wrote no self-signed certificate"
    );
    let url = format!("https://localhost:{}", running.addr.port());

    // More consultations than the people file has pairs: a clear refusal.
    let out = run_bench(bench(&url, dir.path(), 3)).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--pairs 3"), "stderr: {err}");

    let out = run_bench(bench(&url, dir.path(), 2)).await;
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let run = &report["runs"][0];
    assert_eq!(run["system"], "sfu");
    assert_eq!(run["consultations"], 2);
    assert_eq!(run["failed_setups"], 0);
    assert!(run["pps_out"].as_f64().unwrap() > 50.0, "{run}");
    assert!(run["loss"].as_f64().unwrap() < 0.05, "{run}");
    assert_eq!(run["open_failures"], 0, "{run}");
    // The media really went through this server's SFU.
    let fwd = running.sfu.as_ref().unwrap().stats_now().total();
    assert!(fwd.audio_packets_out + fwd.video_packets_out > 100);
}

/// `confide-bench --target url` with the people file and certificate under `dir`.
fn bench(url: &str, dir: &Path, consultations: usize) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_confide-bench"));
    c.args(["--target", url, "--people"])
        .arg(dir.join("people.json"))
        .arg("--target-cert")
        .arg(dir.join("data/tls/cert.pem"))
        .args(["--consultations", &consultations.to_string()])
        .args(["--duration", "3s", "--warmup", "1s", "--json"])
        .env("RUST_LOG", "error");
    c
}

async fn run_bench(mut c: Command) -> Output {
    tokio::task::spawn_blocking(move || c.output())
        .await
        .expect("bench thread")
        .expect("confide-bench runs")
}
