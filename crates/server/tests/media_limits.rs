//! Media signaling under abuse: `media_offer`, `media_answer` and `ice_candidate` have
//! their own low rates per connection, far under the generic message rate, and each
//! refusal says which limit it hit.

mod common;

use common::*;
use confide_server::confide_signaling::http::{
    ICE_CANDIDATES_BURST, ICE_CANDIDATES_PER_S, MEDIA_SDP_BURST,
};
use confide_server::confide_signaling::model::Role;
use serde_json::{Value, json};

/// Reads frames until the pong for `nonce`, returning everything before it.
async fn until_pong(ws: &mut Ws, nonce: u64) -> Vec<Value> {
    ws.send(json!({"type": "ping", "nonce": nonce})).await;
    let mut seen = Vec::new();
    loop {
        let v = ws.recv().await;
        assert_ne!(v["type"], "closed");
        if v["type"] == "pong" && v["nonce"] == nonce {
            return seen;
        }
        seen.push(v);
    }
}

fn rate_errors(frames: &[Value], what: &str) -> usize {
    frames
        .iter()
        .filter(|v| {
            v["type"] == "error"
                && v["code"] == "rate_limited"
                && v["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(&format!("too many {what}")))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_messages_have_their_own_low_rate() {
    let ts = server().await;
    let doctor = ts.login_demo(Role::Doctor).await;
    let mut d = ts.ws_authed(&doctor).await;
    d.join(ts.appointment()).await;
    d.recv_type("joined").await;

    // A burst of candidates well under the generic 200 messages/s: the first
    // ICE_CANDIDATES_BURST pass, the rest are refused, naming the limit.
    let sent = ICE_CANDIDATES_BURST as usize + 15;
    for i in 0..sent {
        d.send(json!({"type": "ice_candidate",
                      "candidate": format!("candidate:1 1 UDP 1 127.0.0.1 {} typ host", 5000 + i)}))
            .await;
    }
    let frames = until_pong(&mut d, 1).await;
    let refused = rate_errors(&frames, "ice_candidate");
    // The bucket refills while the burst is in flight (a few per second at most).
    assert!(
        refused >= sent - ICE_CANDIDATES_BURST as usize - 2 * ICE_CANDIDATES_PER_S as usize,
        "{refused} of {sent} refused: {frames:?}"
    );
    assert!(
        refused <= sent - ICE_CANDIDATES_BURST as usize,
        "{frames:?}"
    );
    let message = frames
        .iter()
        .find(|v| v["code"] == "rate_limited")
        .and_then(|v| v["message"].as_str())
        .unwrap();
    assert!(message.contains("per second"), "{message}");

    // Offers have a limit of their own (candidates spent nothing of it).
    let sent = MEDIA_SDP_BURST as usize + 10;
    for _ in 0..sent {
        d.send(json!({"type": "media_offer", "sdp": "v=0 flood"}))
            .await;
    }
    let frames = until_pong(&mut d, 2).await;
    assert!(
        rate_errors(&frames, "media_offer and media_answer") >= 5,
        "{frames:?}"
    );
    // Ordinary messages still go through.
    until_pong(&mut d, 3).await;
}
