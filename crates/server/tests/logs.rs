//! The operator's log and version, from the real binary. Its standard error redirected
//! to a file (not a terminal) gets one line per request with the route template, status, duration,
//! request id and session id; refusals at `warn`; the request id is the one the client
//! gets in `x-request-id` and the audit entry carries; nothing the client typed
//! (username, password) and no escape codes in a redirected log; `--log-format json`
//! gives one JSON object a line.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const USERNAME: &str = "no-such-user-7f3a";
const PASSWORD: &str = "typed-secret-9c2e";

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start(data: &Path, log: &Path, format: Option<&str>) -> Server {
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_confide"));
    cmd.args(["serve", "--bind", &format!("127.0.0.1:{port}")])
        .args(["--media-bind", "127.0.0.1", "--admin-bind", "off"])
        .env("CONFIDE_DATA_DIR", data)
        .env_remove("RUST_LOG")
        .env_remove("CONFIDE_LOG_FORMAT")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    if let Some(f) = format {
        cmd.args(["--log-format", f]);
    }
    let server = Server {
        child: cmd.spawn().unwrap(),
        base: format!("https://127.0.0.1:{port}"),
    };
    let http = client();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = http.get(format!("{}/healthz", server.base)).send().await
            && r.status().is_success()
        {
            return server;
        }
        assert!(Instant::now() < deadline, "the server did not start");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn client() -> reqwest::Client {
    // The server's certificate is self-signed and made at start; what is tested here is
    // the log, not TLS.
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap()
}

/// A failed login and an unauthenticated `/api/me`; returns the login's request id.
async fn refused_requests(base: &str) -> String {
    let http = client();
    let r = http
        .post(format!("{base}/api/login"))
        .json(&serde_json::json!({ "username": USERNAME, "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let id = r
        .headers()
        .get("x-request-id")
        .expect("x-request-id on the response")
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(id.len(), 16);
    let r = http.get(format!("{base}/api/me")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(format!("{base}/api/password/policy"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    id
}

/// The log file's content once it holds `needle` (the subscriber writes as it goes).
async fn log_with(log: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "the log never showed {needle:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn json_log_one_line_per_request_with_the_audit_request_id_and_nothing_typed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let server = start(&data, &log, Some("json")).await;
    let id = refused_requests(&server.base).await;
    let text = log_with(&log, "/api/password/policy").await;
    drop(server);

    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let requests: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["target"] == "confide::http")
        .collect();
    let login = requests
        .iter()
        .find(|l| l["route"] == "/api/login")
        .expect("a line for the login");
    assert_eq!(login["level"], "WARN", "a refusal logs at warn: {login}");
    assert_eq!(login["method"], "POST");
    assert_eq!(login["status"], 401);
    assert_eq!(login["request_id"], id.as_str());
    assert_eq!(login["account"], "-");
    assert!(login["duration_ms"].as_f64().is_some());
    let me = requests
        .iter()
        .find(|l| l["route"] == "/api/me")
        .expect("a line for /api/me");
    assert_eq!(me["status"], 401);
    let policy = requests
        .iter()
        .find(|l| l["route"] == "/api/password/policy")
        .expect("a line for the password policy");
    assert_eq!(policy["level"], "INFO");
    assert_eq!(policy["status"], 200);
    // What the client typed is nowhere in the log, and the request lines carry no
    // source address.
    assert!(!text.contains(USERNAME) && !text.contains(PASSWORD));
    for r in &requests {
        let keys: Vec<&String> = r.as_object().unwrap().keys().collect();
        assert!(
            keys.iter()
                .all(|k| !["ip", "addr", "source", "remote"].contains(&k.as_str())),
            "{r}"
        );
    }

    // The audit entry of the failed login carries the same request id.
    let out = Command::new(env!("CARGO_BIN_EXE_confide"))
        .args(["admin", "audit", "--action", "login_failed"])
        .env("CONFIDE_DATA_DIR", &data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let entries = String::from_utf8(out.stdout).unwrap();
    assert!(
        entries.lines().any(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["request_id"] == id.as_str()
        }),
        "no login_failed entry with request id {id}: {entries}"
    );
}

#[tokio::test]
async fn a_redirected_text_log_has_no_escape_codes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("server.log");
    let server = start(&data, &log, None).await;
    refused_requests(&server.base).await;
    let text = log_with(&log, "/api/password/policy").await;
    drop(server);
    assert!(!text.contains('\u{1b}'), "escape codes in a file:\n{text}");
    let login = text
        .lines()
        .find(|l| l.contains("route=\"/api/login\""))
        .expect("a line for the login");
    assert!(
        login.contains("WARN") && login.contains("status=401"),
        "{login}"
    );
    assert!(!text.contains(USERNAME) && !text.contains(PASSWORD));
}

/// An operator reporting a problem names the build: the version and its commit.
#[test]
fn version_names_the_commit() {
    let out = Command::new(env!("CARGO_BIN_EXE_confide"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let expected = format!("confide {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(text.starts_with(&expected), "{text}");
    let commit = text
        .trim()
        .trim_start_matches(&expected)
        .trim_end_matches(')');
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{text}"
    );
}
