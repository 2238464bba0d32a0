//! The MLS delivery service over a real WebSocket: commits are ordered (the first per
//! epoch wins), `add` admits and delivers the Welcome, malformed or unwanted MLS
//! messages get a clear error and leave the connection usable, and `join` names only
//! an active device of one's own (docs/protocol.md, "MLS delivery service").

mod common;

use common::*;
use confide_server::confide_signaling::audit::AuditAction;
use confide_server::confide_signaling::mls_frame::{ContentType, Sender, synth};
use confide_server::confide_signaling::model::{AppointmentId, Role};
use confide_server::confide_signaling::proto::encode_b64;
use serde_json::{Value, json};

fn group(appt: AppointmentId, tag: &str) -> Vec<u8> {
    format!("confide/c/{}/{tag}", appt.0).into_bytes()
}

fn commit(g: &[u8], epoch: u64, body: &[u8]) -> String {
    encode_b64(&synth::private_message(g, epoch, ContentType::Commit, body))
}

fn welcome() -> String {
    encode_b64(&synth::welcome(b"group secrets", b"encrypted group info"))
}

/// Doctor and patient in the consultation, the patient admitted by `admit`.
async fn admitted_pair(ts: &TestServer) -> (Ws, Ws, u64, u64) {
    let appt = ts.appointment();
    let doctor = ts.login_demo(Role::Doctor).await;
    let patient = ts.login_demo(Role::Patient).await;
    let mut d = ts.ws_authed(&doctor).await;
    d.join(appt).await;
    let did = d.recv_type("joined").await["you"].as_u64().unwrap();
    let mut p = ts.ws_authed(&patient).await;
    p.join(appt).await;
    let pid = p.recv_type("waiting").await["you"].as_u64().unwrap();
    d.send(json!({"type": "admit", "participant": pid})).await;
    p.recv_type("admitted").await;
    d.recv_type("participant_joined").await;
    (d, p, did, pid)
}

/// The next frame must be `pong`: nothing else was queued for this connection.
async fn nothing_pending(ws: &mut Ws) {
    ws.send(json!({"type": "ping", "nonce": 9})).await;
    let v = ws.recv().await;
    assert_eq!(v["type"], "pong", "unexpected frame {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mls_commits_are_ordered_and_the_first_of_an_epoch_wins() {
    let ts = server().await;
    let appt = ts.appointment();
    let (mut d, mut p, did, pid) = admitted_pair(&ts).await;
    let g = group(appt, "a");

    // The doctor starts the group.
    let c0 = commit(&g, 0, b"doctor creates");
    d.send(json!({"type": "mls_commit", "commit": c0})).await;
    assert_eq!(
        d.recv_type("mls_accepted").await,
        json!({"type": "mls_accepted", "epoch": 1})
    );
    assert_eq!(
        p.recv_type("mls_commit").await,
        json!({"type": "mls_commit", "from": did, "epoch": 1, "commit": c0})
    );

    // Patient and doctor both commit for epoch 1; the patient's arrives first.
    let cp = commit(&g, 1, b"patient updates");
    p.send(json!({"type": "mls_commit", "commit": cp})).await;
    assert_eq!(p.recv_type("mls_accepted").await["epoch"], 2);
    d.send(json!({"type": "mls_commit", "commit": commit(&g, 1, b"doctor updates")}))
        .await;
    let mut saw_commit = false;
    let err = loop {
        let v = d.recv().await;
        match v["type"].as_str() {
            Some("mls_commit") => {
                assert_eq!(v["commit"], cp.as_str());
                assert_eq!(
                    (v["from"].as_u64(), v["epoch"].as_u64()),
                    (Some(pid), Some(2))
                );
                saw_commit = true;
            }
            Some("error") => break v,
            _ => panic!("unexpected {v}"),
        }
    };
    assert_eq!(err["code"], "stale_commit", "{err}");
    let msg = err["message"].as_str().unwrap();
    assert!(msg.contains("epoch 2") && msg.contains("epoch 1"), "{msg}");
    if !saw_commit {
        d.recv_type("mls_commit").await;
    }
    // The loser's commit went to nobody.
    nothing_pending(&mut p).await;

    // An old epoch, a future one, and another consultation's group are refused too.
    for (c, code) in [
        (commit(&g, 0, b"old"), "stale_commit"),
        (commit(&g, 5, b"future"), "stale_commit"),
        (
            commit(&group(AppointmentId(appt.0 + 1), "a"), 2, b"x"),
            "wrong_group",
        ),
        (commit(&group(appt, "mine"), 0, b"x"), "wrong_group"),
    ] {
        p.send(json!({"type": "mls_commit", "commit": c})).await;
        p.expect_error(code).await;
    }
    nothing_pending(&mut d).await;

    // The doctor may restart the group (its device lost state); the room follows.
    let restart = commit(&group(appt, "b"), 0, b"new group");
    d.send(json!({"type": "mls_commit", "commit": restart}))
        .await;
    assert_eq!(d.recv_type("mls_accepted").await["epoch"], 1);
    assert_eq!(p.recv_type("mls_commit").await["commit"], restart.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_admits_the_joiner_then_delivers_its_welcome() {
    let ts = server().await;
    let appt = ts.appointment();
    let doctor = ts.login_demo(Role::Doctor).await;
    let patient = ts.login_demo(Role::Patient).await;
    let dd = ts.new_device(&doctor).await;
    let pd = ts.new_device(&patient).await;

    let mut d = ts.ws_authed(&doctor).await;
    d.send(json!({"type": "join", "consultation": appt.0, "device": dd.id}))
        .await;
    let did = d.recv_type("joined").await["you"].as_u64().unwrap();
    let mut p = ts.ws_authed(&patient).await;
    p.send(json!({"type": "join", "consultation": appt.0, "device": pd.id}))
        .await;
    let pid = p.recv_type("waiting").await["you"].as_u64().unwrap();
    // The doctor's client learns whose KeyPackage to fetch.
    let room = loop {
        let v = d.recv_type("waiting_room").await;
        if !v["waiting"].as_array().unwrap().is_empty() {
            break v;
        }
    };
    assert_eq!(
        room["waiting"][0],
        json!({"id": pid, "role": "patient", "label": "Demo Patient",
               "principal": ts.principal(Role::Patient), "device": pd.id})
    );

    // Only the doctor adds.
    let w = welcome();
    p.send(
        json!({"type": "mls_commit", "commit": commit(&group(appt, "a"), 0, b"x"),
                  "welcome": w, "add": [did]}),
    )
    .await;
    p.expect_error("not_admitted").await;

    let c = commit(&group(appt, "a"), 0, b"add the patient");
    d.send(json!({"type": "mls_commit", "commit": c, "welcome": w, "add": [pid]}))
        .await;
    assert_eq!(d.recv_type("mls_accepted").await["epoch"], 1);
    let joined = d.recv_type("participant_joined").await;
    assert_eq!(joined["participant"]["device"], pd.id.as_str());
    // Admitted first (with the doctor's principal and device), then the Welcome.
    let admitted = p.recv().await;
    assert_eq!(admitted["type"], "admitted", "{admitted}");
    assert_eq!(
        admitted["participants"][0],
        json!({"id": did, "role": "doctor", "label": "Dr. Demo Doctor",
               "principal": ts.principal(Role::Doctor), "device": dd.id})
    );
    assert_eq!(
        p.recv().await,
        json!({"type": "mls_welcome", "from": did, "welcome": w})
    );
    nothing_pending(&mut p).await;
    let r = ts
        .expect_audit(AuditAction::Admitted, &ts.principal(Role::Doctor), None)
        .await;
    assert_eq!(r.event.target, Some(format!("participant:{pid}")));
    assert!(r.event.detail.unwrap().ends_with("mls"));

    // Now admitted, the patient may commit but not add.
    p.send(
        json!({"type": "mls_commit", "commit": commit(&group(appt, "a"), 1, b"x"),
                  "welcome": w, "add": [did]}),
    )
    .await;
    p.expect_error("forbidden").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_commits_get_a_clear_error_and_the_connection_stays_usable() {
    let ts = server().await;
    let appt = ts.appointment();
    let (mut d, mut p, did, _) = admitted_pair(&ts).await;
    let g = group(appt, "a");
    d.send(json!({"type": "mls_commit", "commit": commit(&g, 0, b"start")}))
        .await;
    d.recv_type("mls_accepted").await;
    p.recv_type("mls_commit").await;

    let good = synth::private_message(&g, 1, ContentType::Commit, b"sealed");
    let frames: Vec<(Value, &str, &str)> = vec![
        (json!("!!not base64!!"), "invalid_message", "base64"),
        (json!(""), "invalid_message", "empty"),
        (
            json!(encode_b64(b"garbage bytes, not MLS")),
            "invalid_message",
            "commit",
        ),
        (
            json!(encode_b64(&good[..good.len() - 3])),
            "invalid_message",
            "ends early",
        ),
        (
            json!(encode_b64(&good[..3])),
            "invalid_message",
            "ends early",
        ),
        (
            json!(encode_b64(&[good.clone(), vec![0]].concat())),
            "invalid_message",
            "left after",
        ),
        (
            json!(encode_b64(&synth::welcome(b"s", b"i"))),
            "invalid_message",
            "wire format is 3",
        ),
        (
            json!(encode_b64(&synth::key_package(b"kp"))),
            "invalid_message",
            "wire format is 5",
        ),
        (
            json!(encode_b64(&{
                let mut v = good.clone();
                v[1] = 2;
                v
            })),
            "invalid_message",
            "not mls10",
        ),
        (
            json!(encode_b64(&synth::public_message(
                &g,
                1,
                Sender::NewMemberCommit,
                ContentType::Commit,
                b"x"
            ))),
            "invalid_message",
            "external",
        ),
        (
            json!(encode_b64(&synth::public_message(
                &g,
                1,
                Sender::External(0),
                ContentType::Commit,
                b"x"
            ))),
            "invalid_message",
            "external",
        ),
        (
            json!(encode_b64(&synth::private_message(
                &g,
                1,
                ContentType::Application,
                b"x"
            ))),
            "invalid_message",
            "not a commit",
        ),
        (
            json!(encode_b64(&synth::private_message(
                &g,
                1,
                ContentType::Proposal,
                b"x"
            ))),
            "invalid_message",
            "not a commit",
        ),
        (
            json!(encode_b64(&vec![0u8; 64 * 1024 + 1])),
            "too_large",
            "commit",
        ),
        (json!(7), "invalid_message", "mls_commit"),
    ];
    for (c, code, needle) in frames {
        d.send(json!({"type": "mls_commit", "commit": c})).await;
        let e = d.expect_error(code).await;
        let msg = e["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{code} {needle}: {msg}");
    }
    // add and welcome must come together, and a welcome must be one.
    let c = encode_b64(&good);
    for (extra, needle) in [
        (json!({"add": [did]}), ""),
        (json!({"welcome": welcome()}), "add"),
        (
            json!({"welcome": encode_b64(&good), "add": [did]}),
            "welcome",
        ),
        (json!({"welcome": welcome(), "add": [12345]}), ""),
        (json!({"welcome": welcome(), "add": [did, did]}), "twice"),
    ] {
        let mut m = json!({"type": "mls_commit", "commit": c});
        for (k, v) in extra.as_object().unwrap() {
            m[k] = v.clone();
        }
        d.send(m).await;
        let e = d.recv_type("error").await;
        assert!(e["message"].as_str().unwrap().contains(needle), "{e}");
    }
    // None of it reached the peer or moved the epoch; the connection still works.
    nothing_pending(&mut p).await;
    nothing_pending(&mut d).await;
    d.send(json!({"type": "mls_commit", "commit": c})).await;
    assert_eq!(d.recv_type("mls_accepted").await["epoch"], 2);
    assert_eq!(p.recv_type("mls_commit").await["commit"], c.as_str());

    // Outside a consultation, or still waiting: the usual refusals.
    let staff = ts.login_demo(Role::Staff).await;
    let mut s = ts.ws_authed(&staff).await;
    s.send(json!({"type": "mls_commit", "commit": c})).await;
    s.expect_error("not_in_consultation").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_names_only_an_active_device_of_ones_own() {
    let ts = server().await;
    let appt = ts.appointment();
    let doctor = ts.login_demo(Role::Doctor).await;
    let patient = ts.login_demo(Role::Patient).await;
    let doctors_device = ts.new_device(&doctor).await;
    let revoked = ts.new_device(&patient).await;
    let path = format!("/api/devices/{}", revoked.id);
    assert_eq!(
        ts.req("DELETE", &path, Some(&patient), None).await.status,
        200
    );
    let mine = ts.new_device(&patient).await;

    let mut p = ts.ws_authed(&patient).await;
    for d in [&Device::random(), &doctors_device, &revoked] {
        p.send(json!({"type": "join", "consultation": appt.0, "device": d.id}))
            .await;
        p.expect_error("unknown_device").await;
    }
    ts.expect_audit(
        AuditAction::JoinRefused,
        &ts.principal(Role::Patient),
        Some("unknown_device"),
    )
    .await;
    p.send(json!({"type": "join", "consultation": appt.0, "device": "NOT-HEX"}))
        .await;
    p.expect_error("invalid_message").await;
    p.send(json!({"type": "join", "consultation": appt.0, "device": mine.id}))
        .await;
    p.recv_type("waiting").await;
}
