//! Throws well over 1,000 generated bad messages at a live server, checks each one
//! gets an `error` frame, then runs a normal consultation on the same server.

mod common;

use common::*;
use confide_server::confide_signaling::model::Role;
use futures_util::SinkExt;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

// The message types the server knows, from the protocol crate itself, so a new type is
// never fuzzed as "unknown".
use confide_server::confide_signaling::proto::CLIENT_TYPES as KNOWN;

fn junk_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[^\"]{0,40}".prop_map(Value::from),
        Just(Value::Null),
        Just(json!([1, "x", null])),
        Just(json!({"nested": {"deeper": true}})),
        any::<bool>().prop_map(Value::from),
    ]
}

/// One frame that a waiting, authenticated patient may not send successfully.
fn bad_frame() -> impl Strategy<Value = String> {
    let not_json = "[^{\\s][^\\x00]{0,200}".prop_map(|s| s);
    let unknown_type = ("[a-z_]{1,24}", junk_value())
        .prop_filter("not a known type", |(t, _)| !KNOWN.contains(&t.as_str()))
        .prop_map(|(t, v)| json!({"type": t, "data": v}).to_string());
    let no_type = prop::collection::btree_map("[a-su-z]{1,8}", junk_value(), 0..5)
        .prop_map(|m| serde_json::to_string(&m).unwrap_or_default());
    let type_not_string = junk_value()
        .prop_filter("not a string", |v| !v.is_string())
        .prop_map(|v| json!({"type": v}).to_string());
    // Known types whose fields have the wrong type, are missing, or are extra.
    let wrong_fields = (
        prop::sample::select(vec![
            "hello",
            "join",
            "admit",
            "deny",
            "media_offer",
            "media_answer",
            "ice_candidate",
            "chat",
            "mls_commit",
        ]),
        junk_value(),
    )
        .prop_map(|(t, v)| {
            let field = match t {
                "hello" => "token",
                "join" => "consultation",
                "admit" | "deny" => "participant",
                "media_offer" | "media_answer" => "sdp",
                "ice_candidate" => "candidate",
                "mls_commit" => "commit",
                _ => "ciphertext",
            };
            let v = match (&v, field) {
                // Strings and integers are acceptable in some fields; nest them so
                // the frame is always wrong in shape.
                (Value::String(_), _) | (Value::Number(_), _) => json!([v]),
                _ => v,
            };
            json!({"type": t, field: v, "unexpected_field": 1}).to_string()
        });
    // Well-formed but refused for a waiting patient, or over a size limit.
    let refused = prop_oneof![
        any::<u64>().prop_map(|p| json!({"type": "admit", "participant": p}).to_string()),
        any::<u64>().prop_map(|p| json!({"type": "deny", "participant": p}).to_string()),
        Just(json!({"type": "end"}).to_string()),
        any::<i64>().prop_map(|c| json!({"type": "join", "consultation": c}).to_string()),
        "[ -~]{1,100}".prop_map(|s| json!({"type": "media_offer", "sdp": s}).to_string()),
        "[ -~]{1,100}".prop_map(|s| json!({"type": "ice_candidate", "candidate": s}).to_string()),
        "[!*#]{1,20}".prop_map(|s| json!({"type": "chat", "ciphertext": s}).to_string()),
        "[A-Za-z0-9+/]{4,40}".prop_map(|s| {
            let s = &s[..s.len() / 4 * 4];
            json!({"type": "mls_commit", "commit": s}).to_string()
        }),
        Just(json!({"type": "hello", "version": 1, "token": "again"}).to_string()),
        (65_537usize..70_000)
            .prop_map(|n| json!({"type": "media_offer", "sdp": "v".repeat(n)}).to_string()),
        (16_400usize..17_000).prop_map(|n| {
            json!({"type": "chat", "ciphertext": "QUFB".repeat(n / 3 + 1)}).to_string()
        }),
        (196_609usize..200_000)
            .prop_map(|n| format!("{{\"type\":\"ping\",\"pad\":\"{}\"}}", "x".repeat(n))),
        (200usize..5000).prop_map(|d| format!("{}{}", "[".repeat(d), "]".repeat(d))),
        (200usize..2000).prop_map(|d| format!(
            "{{\"type\":\"chat\",\"ciphertext\":{}{}}}",
            "[".repeat(d),
            "]".repeat(d)
        )),
    ];
    prop_oneof![
        2 => not_json,
        2 => unknown_type,
        1 => no_type,
        1 => type_not_string,
        3 => wrong_fields,
        3 => refused,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_bad_messages_then_a_normal_consultation() {
    let ts = server_with(|c| c.settings.ws_msgs_per_s = 1_000_000).await;
    let appt = ts.appointment();
    let patient = ts.login_demo(Role::Patient).await;
    let mut p = ts.ws_authed(&patient).await;
    p.join(appt).await;
    let pid = p.recv_type("waiting").await["you"].as_u64().unwrap();

    let mut runner = TestRunner::deterministic();
    let strategy = bad_frame();
    let mut codes = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..1200 {
        let frame = strategy.new_tree(&mut runner).unwrap().current();
        p.send_raw(frame.clone()).await;
        let reply = p.recv().await;
        let shown: String = frame.chars().take(120).collect();
        assert_eq!(reply["type"], "error", "frame #{i} {shown:?} got {reply}");
        assert!(reply["message"].as_str().unwrap().len() <= 200, "{reply}");
        *codes
            .entry(reply["code"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    // Binary frames are refused too.
    for i in 0..20u8 {
        p.stream
            .send(Message::Binary(vec![i; 10].into()))
            .await
            .unwrap();
        p.expect_error("invalid_message").await;
    }
    // The mix must have exercised the main error classes.
    for code in [
        "bad_json",
        "unknown_type",
        "invalid_message",
        "too_large",
        "forbidden",
        "not_admitted",
    ] {
        assert!(
            codes.get(code).copied().unwrap_or(0) > 0,
            "no {code} in {codes:?}"
        );
    }

    // Before authentication, everything but hello is refused.
    let mut anon = ts.ws().await;
    for i in 0..100 {
        let frame = strategy.new_tree(&mut runner).unwrap().current();
        anon.send_raw(frame).await;
        let reply = anon.recv().await;
        assert_eq!(reply["type"], "error", "anonymous frame #{i}: {reply}");
    }

    // The same server, and the same patient connection, still work normally.
    let doctor = ts.login_demo(Role::Doctor).await;
    let mut d = ts.ws_authed(&doctor).await;
    d.join(appt).await;
    d.recv_type("joined").await;
    d.send(json!({"type": "admit", "participant": pid})).await;
    p.recv_type("admitted").await;
    d.send(json!({"type": "media_offer", "sdp": "v=0 d"})).await;
    assert_eq!(p.recv_type("media_offer").await["sdp"], "v=0 d");
    p.send(json!({"type": "media_answer", "sdp": "v=0 p"}))
        .await;
    assert_eq!(d.recv_type("media_answer").await["sdp"], "v=0 p");
    d.send(json!({"type": "chat", "ciphertext": "AQID"})).await;
    assert_eq!(p.recv_type("chat").await["ciphertext"], "AQID");
    d.send(json!({"type": "end"})).await;
    p.recv_type("ended").await;
    d.recv_type("ended").await;
    let h = ts.http.get(ts.url("/healthz")).send().await.unwrap();
    assert_eq!(h.status(), 200);
}
