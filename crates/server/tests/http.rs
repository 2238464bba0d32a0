//! The HTTPS front: security headers, static files with the right MIME types,
//! health checks, and no plaintext.

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_static_files_and_health() {
    let static_dir = tempfile::tempdir().unwrap();
    std::fs::write(
        static_dir.path().join("index.html"),
        "<!doctype html><title>client</title>",
    )
    .unwrap();
    std::fs::create_dir(static_dir.path().join("pkg")).unwrap();
    std::fs::write(
        static_dir.path().join("pkg/e2ee_bg.wasm"),
        b"\0asm\x01\0\0\0",
    )
    .unwrap();
    std::fs::write(static_dir.path().join("app.js"), "export {}").unwrap();
    let dir = static_dir.path().to_path_buf();
    let ts = server_with(move |c| c.static_dir = Some(dir)).await;

    let r = ts.http.get(ts.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("'wasm-unsafe-eval'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(!csp.contains("'unsafe-eval'") || csp.contains("'wasm-unsafe-eval'"));
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(h.contains_key("strict-transport-security"));
    assert!(r.text().await.unwrap().contains("client"));

    // The public audit log routes get the same security headers as everything else.
    for path in ["/api/audit/key", "/api/audit/consistency?from=0&to=0"] {
        let r = ts.http.get(ts.url(path)).send().await.unwrap();
        let h = r.headers();
        assert_eq!(
            h["content-security-policy"],
            confide_server::confide_signaling::http::CSP,
            "{path}"
        );
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert!(h.contains_key("strict-transport-security"), "{path}");
    }

    let wasm = ts
        .http
        .get(ts.url("/pkg/e2ee_bg.wasm"))
        .send()
        .await
        .unwrap();
    assert_eq!(wasm.headers()["content-type"], "application/wasm");
    let js = ts.http.get(ts.url("/app.js")).send().await.unwrap();
    assert!(
        js.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("javascript")
    );

    assert_eq!(
        ts.http
            .get(ts.url("/healthz"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "ok"
    );
    assert_eq!(
        ts.http
            .get(ts.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let api = ts.http.get(ts.url("/api/nope")).send().await.unwrap();
    assert_eq!(api.status(), 404);
    assert_eq!(api.headers()["cache-control"], "no-store");

    // Plain HTTP on the port gets no HTTP answer: there is only TLS.
    let mut tcp = tokio::net::TcpStream::connect(ts.running.addr)
        .await
        .unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .map(|r| r.unwrap_or(0))
        .unwrap_or(0);
    assert!(!String::from_utf8_lossy(&buf[..n]).contains("200 OK"));
}

/// The browser client's test hooks (`?test=1` reads plaintext frame samples inside the
/// page) run only where the server allows them: a server as configured by default says
/// no, and a build without the test feature refuses `--test-hooks` outright.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_test_hooks_are_off_unless_a_test_build_turns_them_on() {
    let ts = server().await;
    let r = ts
        .http
        .get(ts.url("/api/client-config"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body, serde_json::json!({ "test_hooks": false }));

    let allowed = server_with(|c| c.settings.client_test_hooks = true).await;
    let body: serde_json::Value = allowed
        .http
        .get(allowed.url("/api/client-config"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["test_hooks"], true);

    if !cfg!(feature = "tap") {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_confide"))
            .args(["serve", "--test-hooks", "--bind", "127.0.0.1:0"])
            .args(["--media-bind", "127.0.0.1", "--admin-bind", "off"])
            .env("CONFIDE_DATA_DIR", dir.path())
            .env_remove("CONFIDE_DATABASE_URL")
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--test-hooks is for test builds"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
