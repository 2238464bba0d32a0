//! Logins under load: password verification is bounded (a gate sized to the cores)
//! and the excess is shed with 429 and `Retry-After`; parallel guesses against one
//! account are counted before they are verified. Neither test depends on timing: the
//! first holds the gate's permits itself, the second counts answers.

mod common;

use std::net::{IpAddr, Ipv4Addr};

use common::*;
use confide_server::confide_signaling::http::now;
use confide_server::confide_signaling::model::Role;
use serde_json::json;

/// A client whose connections come from loopback address number `n` (127.0.1.2 and
/// on), so that each looks like another address to the server's per-address limits.
fn client_from(s: &TestServer, n: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_der(&s.running.cert_der).unwrap())
        .tls_built_in_root_certs(false)
        .resolve("localhost", s.running.addr)
        .local_address(IpAddr::V4(Ipv4Addr::new(
            127,
            (1 + n / 62_500) as u8,
            (n / 250 % 250) as u8,
            (2 + n % 250) as u8,
        )))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_beyond_the_hashing_bound_are_shed_with_retry_after() {
    let s = server().await;
    let gate = &s.running.state.hash_gate;
    let (running, queued) = gate.limits();
    // As if `running` verifications were in flight.
    let held = gate.occupy_running().await;

    // `queued` logins wait for a permit; every one beyond that is shed at once. Each
    // comes from its own address with its own unknown username, so no other limit
    // (per-address rate, throttle) applies.
    let extra = 20;
    let n = queued + extra;
    let url = s.url("/api/login");
    let mut tasks = Vec::new();
    for i in 0..n {
        let client = client_from(&s, i);
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .json(&json!({"username": format!("nobody-{i}"), "password": "wrong-password"}))
                .send()
                .await
                .unwrap();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            (r.status().as_u16(), retry)
        }));
    }
    // Every shed answer arrives while the permits are held; the queued ones cannot.
    let mut shed = 0;
    let mut pending = Vec::new();
    for t in tasks {
        if t.is_finished() {
            let (status, retry) = t.await.unwrap();
            assert_eq!(status, 429);
            assert!(retry.is_some_and(|r| r.parse::<u64>().unwrap() >= 1));
            shed += 1;
        } else {
            pending.push(t);
        }
    }
    // Wait until the shed ones are all in (they answer without waiting on the gate).
    let mut still = Vec::new();
    let mut rounds = 0;
    while shed < extra {
        rounds += 1;
        assert!(rounds < 3000, "only {shed} of {extra} logins were shed");
        for t in pending.drain(..) {
            if t.is_finished() {
                let (status, retry) = t.await.unwrap();
                assert_eq!(
                    status, 429,
                    "only shed logins answer while the gate is full"
                );
                assert!(retry.is_some_and(|r| r.parse::<u64>().unwrap() >= 1));
                shed += 1;
            } else {
                still.push(t);
            }
        }
        pending = std::mem::take(&mut still);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(pending.len(), queued, "exactly the queued logins wait");
    drop(held);
    for t in pending {
        let (status, _) = t.await.unwrap();
        assert_eq!(
            status, 401,
            "a queued login is verified once a permit is free"
        );
    }
    assert!(running >= 1);
    // Shed logins are audited as throttled, with the reason.
    s.expect_audit(
        confide_server::confide_signaling::audit::AuditAction::LoginThrottled,
        "anonymous",
        Some("overloaded"),
    )
    .await;
    // And the server still logs people in.
    s.login_demo(Role::Patient).await;
}

/// 100 guesses at one account's password, sent together from one address: the
/// account+address policy lets 3 failures through without delay and the fourth
/// attempt starts the delay, so at most 4 verifications happen (answer 401); every
/// other guess is refused before its hash
/// (429), whether by the throttle, the per-address rate or the hashing gate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guesses_against_one_account_get_no_more_verifications_than_the_policy() {
    let s = server().await;
    let (user, _, _) = s.demo_account(Role::Patient);
    let client = client_from(&s, 100_000);
    let url = s.url("/api/login");
    let mut tasks = Vec::new();
    for i in 0..100 {
        let client = client.clone();
        let url = url.clone();
        let user = user.clone();
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .json(&json!({"username": user, "password": format!("guess-{i}")}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut verified = 0;
    for t in tasks {
        match t.await.unwrap() {
            401 => verified += 1,
            429 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(
        (1..=4).contains(&verified),
        "{verified} guesses were verified; the policy allows 4"
    );
}

/// Another server process on the same data directory and database, with fresh memory:
/// what a restarted server or a second node sees. Returns it and a client that trusts
/// it, connecting from loopback address number `from`.
async fn second_node(s: &TestServer, from: usize) -> (confide_server::Running, reqwest::Client) {
    let mut cfg = confide_server::Config::new(s.data_dir.clone());
    cfg.bind = "127.0.0.1:0".parse().unwrap();
    cfg.static_dir = Some(s.data_dir.join("no-static"));
    cfg.media.mode = confide_server::media::MediaMode::P2p;
    let b = confide_server::start(cfg).await.unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_der(&b.cert_der).unwrap())
        .tls_built_in_root_certs(false)
        .resolve("localhost", b.addr)
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 9, 0, (2 + from) as u8)))
        .build()
        .unwrap();
    (b, client)
}

async fn guess(client: &reqwest::Client, addr: std::net::SocketAddr, user: &str) -> (u16, i64) {
    let r = client
        .post(format!("https://localhost:{}/api/login", addr.port()))
        .json(&json!({"username": user, "password": "wrong-password"}))
        .send()
        .await
        .unwrap();
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    (r.status().as_u16(), retry)
}

/// The per-account failure count lives in the database: failures made before a
/// restart (or on another node) still count after it, and a delay the count started
/// holds on the new process. Without it, a restart would give an attacker a fresh
/// allowance. No timing: the delay checked is set to 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_before_a_restart_still_count_after_it() {
    let s = server().await;
    let (user, password, _) = s.demo_account(Role::Patient);
    let id = s.demo.account(Role::Patient).unwrap().id;
    // Ten failures, one per address, so only the account's own count grows.
    for n in 0..10 {
        let (status, _) = guess(&client_from(&s, n), s.running.addr, &user).await;
        assert_eq!(status, 401);
    }
    assert_eq!(s.store().login_throttle(id).await.unwrap().unwrap().0, 10);

    let (b, client) = second_node(&s, 0).await;
    // The new process continues the count rather than starting at zero.
    let (status, _) = guess(&client, b.addr, &user).await;
    assert_eq!(status, 401);
    let store = &b.state.store;
    let (f, _) = store.login_throttle(id).await.unwrap().unwrap();
    assert_eq!(f, 11, "the eleventh failure counts on top of the first ten");

    // A delay the stored count imposes holds on the new process, for every address
    // and even for the right password.
    assert!(
        store
            .set_login_throttle(id, f, 15, now().plus_secs(30))
            .await
            .unwrap()
    );
    let (b2, fresh) = second_node(&s, 1).await;
    let (status, retry) = guess(&fresh, b2.addr, &user).await;
    assert_eq!(status, 429);
    assert!((20..=30).contains(&retry), "Retry-After {retry}");
    let r = fresh
        .post(format!("https://localhost:{}/api/login", b2.addr.port()))
        .json(&json!({"username": user, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(store.login_throttle(id).await.unwrap().unwrap().0, 15);
}

/// 100 guesses at one account from 100 addresses, sent together to two server
/// processes sharing one database: the account policy allows 10 free failures and the
/// attempt that starts the delay, so at most 11 verifications happen in total, not 11
/// per process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guesses_across_two_nodes_share_one_account_allowance() {
    let s = server().await;
    let (user, _, _) = s.demo_account(Role::Patient);
    let (b, _) = second_node(&s, 0).await;
    let b_cert = b.cert_der.clone();
    let mut tasks = Vec::new();
    for n in 0..100 {
        let (addr, client) = if n % 2 == 0 {
            (s.running.addr, client_from(&s, 1000 + n))
        } else {
            let c = reqwest::Client::builder()
                .add_root_certificate(reqwest::Certificate::from_der(&b_cert).unwrap())
                .tls_built_in_root_certs(false)
                .resolve("localhost", b.addr)
                .local_address(IpAddr::V4(Ipv4Addr::new(
                    127,
                    10,
                    (n / 250) as u8,
                    (2 + n % 250) as u8,
                )))
                .build()
                .unwrap();
            (b.addr, c)
        };
        let user = user.clone();
        tasks.push(tokio::spawn(
            async move { guess(&client, addr, &user).await.0 },
        ));
    }
    let mut verified = 0;
    for t in tasks {
        match t.await.unwrap() {
            401 => verified += 1,
            429 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(
        (1..=11).contains(&verified),
        "{verified} guesses were verified; the policy allows 11 across all nodes"
    );
}
