//! Behind a reverse proxy: `X-Forwarded-For` names the client only when the
//! connection comes from a listed proxy. And one address cannot hold more than a few
//! WebSocket connections open without signing in.

mod common;

use common::*;
use confide_server::confide_signaling::audit::AuditAction;
use confide_server::confide_signaling::http::client_addr::parse_trusted;
use confide_server::confide_signaling::model::Role;
use serde_json::json;

async fn failed_login_source(ts: &TestServer, forwarded: &str) -> Option<String> {
    let r = ts
        .http
        .post(ts.url("/api/login"))
        .header("x-forwarded-for", forwarded)
        .json(&json!({"username": "nobody-here", "password": "wrong-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    ts.expect_audit(AuditAction::LoginFailed, "anonymous", None)
        .await
        .event
        .source
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_counts_only_from_a_trusted_proxy() {
    // The test client connects from 127.0.0.1: listed as a proxy here.
    let ts =
        server_with(|c| c.settings.trusted_proxies = parse_trusted("127.0.0.1").unwrap()).await;
    assert_eq!(
        failed_login_source(&ts, "1.2.3.4, 198.51.100.7")
            .await
            .as_deref(),
        Some("198.51.100.7"),
        "the right-most hop the proxy saw is the client"
    );

    // No proxy listed (the default): the header is the client's own claim, ignored.
    let ts = server().await;
    assert_eq!(
        failed_login_source(&ts, "198.51.100.7").await.as_deref(),
        Some("127.0.0.1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_websockets_are_limited_per_address() {
    let ts = server_with(|c| c.settings.ws_unauth_per_addr = 3).await;
    let upgrade = || {
        ts.http
            .get(ts.url("/ws"))
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .send()
    };
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(ts.ws().await);
    }
    // The fourth is refused before the upgrade, with a clear error.
    let r = upgrade().await.unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_attempts");

    // Signing in gives the place back: another connection is accepted.
    let token = ts.login_demo(Role::Patient).await;
    open[0]
        .send(json!({"type": "hello", "version": 1, "token": token}))
        .await;
    assert_eq!(open[0].recv().await["type"], "welcome");
    open.push(ts.ws().await);
    let r = upgrade().await.unwrap();
    assert_eq!(r.status().as_u16(), 429, "three unauthenticated again");
}
