//! The whole consultation over real TLS: book, log in with TOTP, wait, admit,
//! relay media and chat, end.

mod common;

use common::*;
use confide_server::confide_signaling::audit::{AuditAction, Outcome};
use confide_server::confide_signaling::http::now;
use confide_server::confide_signaling::model::Role;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_flow_doctor_and_patient() {
    let ts = server().await;
    let (_, _, _) = ts.demo_account(Role::Doctor);
    let doctor_id = ts.demo.account(Role::Doctor).unwrap().id;
    let patient_id = ts.demo.account(Role::Patient).unwrap().id;

    // Staff books (TOTP login), then sees the schedule without clinical content.
    let staff = ts.login_demo(Role::Staff).await;
    let r = ts
        .req(
            "POST",
            "/api/appointments",
            Some(&staff),
            Some(
                json!({"doctor": doctor_id.0, "patient": patient_id.0, "start": now().secs(),
                        "duration_min": 30, "reason": "persistent cough"}),
            ),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let appt =
        confide_server::confide_signaling::model::AppointmentId(r.body["id"].as_i64().unwrap());
    let list = ts.req("GET", "/api/appointments", Some(&staff), None).await;
    let mine = list
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == appt.0)
        .unwrap();
    assert!(
        mine.get("reason").is_none(),
        "staff never sees the reason: {mine}"
    );

    let doctor = ts.login_demo(Role::Doctor).await;
    let patient = ts.login_demo(Role::Patient).await;
    let list = ts
        .req("GET", "/api/appointments", Some(&patient), None)
        .await;
    let mine = list
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == appt.0)
        .unwrap();
    assert_eq!(mine["reason"], "persistent cough");

    // Patient arrives first and waits.
    let mut p = ts.ws_authed(&patient).await;
    p.join(appt).await;
    let w = p.recv_type("waiting").await;
    let patient_pid = w["you"].as_u64().unwrap();

    // Doctor joins, sees the waiting room, admits.
    let mut d = ts.ws_authed(&doctor).await;
    d.join(appt).await;
    let j = d.recv_type("joined").await;
    let doctor_pid = j["you"].as_u64().unwrap();
    let wr = d.recv_type("waiting_room").await;
    assert_eq!(wr["waiting"][0]["id"], patient_pid);
    assert_eq!(wr["waiting"][0]["role"], "patient");
    assert_eq!(wr["waiting"][0]["label"], "Demo Patient");
    assert!(wr["waiting"][0].get("account").is_none());
    d.send(json!({"type": "admit", "participant": patient_pid}))
        .await;
    let a = p.recv_type("admitted").await;
    assert_eq!(a["participants"][0]["id"], doctor_pid);
    let pj = d.recv_type("participant_joined").await;
    assert_eq!(pj["participant"]["id"], patient_pid);

    // Media (peer-to-peer stand-in): doctor offers, patient answers.
    d.send(json!({"type": "media_offer", "sdp": "v=0 doctor-offer"}))
        .await;
    let o = p.recv_type("media_offer").await;
    assert_eq!(o["sdp"], "v=0 doctor-offer");
    p.send(json!({"type": "media_answer", "sdp": "v=0 patient-answer"}))
        .await;
    let ans = d.recv_type("media_answer").await;
    assert_eq!(ans["sdp"], "v=0 patient-answer");
    p.send(json!({"type": "ice_candidate", "candidate": "candidate:1 1 UDP 1 127.0.0.1 5000 typ host"}))
        .await;
    let c = d.recv_type("ice_candidate").await;
    assert!(c["candidate"].as_str().unwrap().starts_with("candidate:1"));

    // The pre-MLS key exchange message is gone: an admitted doctor sending it gets the
    // plain unknown-type error and nothing reaches the patient.
    d.send(json!({"type": "e2ee", "to": patient_pid, "blob": "a2V5LW9mZmVy"}))
        .await;
    let e = d.recv_type("error").await;
    assert_eq!(
        (e["code"].as_str(), e["message"].as_str()),
        (Some("unknown_type"), Some("unknown message type"))
    );

    // Opaque chat ciphertext.
    p.send(json!({"type": "chat", "ciphertext": "c2VhbGVkLWNoYXQ="}))
        .await;
    let c1 = d.recv_type("chat").await;
    let c2 = loop {
        let m = p.recv().await;
        assert_ne!(m["type"], "e2ee", "the retired message was relayed: {m}");
        if m["type"] == "chat" {
            break m;
        }
    };
    assert_eq!(c1["id"], c2["id"]);
    assert_eq!(c1["from"], patient_pid);
    assert_eq!(c1["ciphertext"], "c2VhbGVkLWNoYXQ=");
    let hist = ts
        .req(
            "GET",
            &format!("/api/appointments/{}/chat", appt.0),
            Some(&doctor),
            None,
        )
        .await;
    assert_eq!(hist.body[0]["ciphertext"], "c2VhbGVkLWNoYXQ=");
    let refused = ts
        .req(
            "GET",
            &format!("/api/appointments/{}/chat", appt.0),
            Some(&staff),
            None,
        )
        .await;
    assert_eq!(refused.status, 403);

    // Ping.
    p.send(json!({"type": "ping", "nonce": 7})).await;
    assert_eq!(p.recv_type("pong").await["nonce"], 7);

    // The doctor ends: both told, both disconnected, room gone, no rejoin.
    d.send(json!({"type": "end"})).await;
    assert_eq!(d.recv_type("ended").await["reason"], "ended_by_doctor");
    assert_eq!(p.recv_type("ended").await["consultation"], appt.0);
    assert_eq!(p.recv().await["type"], "closed");
    assert_eq!(d.recv().await["type"], "closed");
    assert_eq!(ts.running.state.live_rooms(), 0);
    let mut again = ts.ws_authed(&patient).await;
    again.join(appt).await;
    again.expect_error("consultation_ended").await;

    // Every step left its audit event.
    let doc = doctor_id.to_string();
    let pat = patient_id.to_string();
    let staff_id = ts.demo.account(Role::Staff).unwrap().id.to_string();
    let booked = ts
        .expect_audit(AuditAction::AppointmentBooked, &staff_id, None)
        .await;
    assert_eq!(
        booked.event.target.as_deref(),
        Some(appt.to_string().as_str())
    );
    let login = ts.expect_audit(AuditAction::LoginOk, &doc, None).await;
    assert_eq!(login.event.role, Some(Role::Doctor));
    assert_eq!(login.event.source.as_deref(), Some("127.0.0.1"));
    assert!(login.event.request_id.is_some());
    ts.expect_audit(AuditAction::WsAuthOk, &pat, None).await;
    ts.expect_audit(AuditAction::JoinWaiting, &pat, None).await;
    ts.expect_audit(AuditAction::JoinOk, &doc, None).await;
    let admitted = ts.expect_audit(AuditAction::Admitted, &doc, None).await;
    assert_eq!(
        admitted.event.target,
        Some(format!("participant:{patient_pid}"))
    );
    let ended = ts.expect_audit(AuditAction::Ended, &doc, None).await;
    assert_eq!(ended.event.outcome, Outcome::Success);
    ts.expect_audit(AuditAction::ChatHistoryRead, &doc, None)
        .await;
    ts.expect_audit(AuditAction::ChatHistoryRefused, &staff_id, None)
        .await;
    ts.expect_audit(AuditAction::JoinRefused, &pat, Some("consultation_ended"))
        .await;

    // The audit log never holds tokens, passwords, SDP, key material or chat.
    let dump = serde_json::to_string(&ts.all_audit().await).unwrap();
    for secret in [
        doctor.as_str(),
        patient.as_str(),
        staff.as_str(),
        "demo-doctor-password",
        "v=0",
        "a2V5LW9mZmVy",
        "c2VhbGVkLWNoYXQ=",
        "persistent cough",
        "Demo Patient",
    ] {
        assert!(!dump.contains(secret), "audit log contains {secret}");
    }
}

/// The appointment of `appt` in the list `token`'s account gets, if it is there.
async fn listed(ts: &TestServer, token: &str, appt: i64) -> Option<serde_json::Value> {
    let r = ts.req("GET", "/api/appointments", Some(token), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == appt)
        .cloned()
}

/// The doctor's appointment list says who waits (a `waiting` count, from the live
/// room), and the waiting room says whether the doctor is in (`doctor_online`, then
/// `doctor_presence` on each change). Nobody but the appointment's doctor sees the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_doctor_sees_who_waits_and_the_waiting_room_sees_the_doctor() {
    let ts = server().await;
    let appt = ts.appointment();
    let doctor = ts.login_demo(Role::Doctor).await;
    let patient = ts.login_demo(Role::Patient).await;
    let staff = ts.login_demo(Role::Staff).await;
    let (_, pw, secret) = ts.add_account("other-doctor", Role::Doctor).await;
    let other_doctor = ts.login("other-doctor", &pw, secret.as_deref()).await;

    let mine = listed(&ts, &doctor, appt.0).await.unwrap();
    assert_eq!(mine["waiting"], 0, "nobody connected yet: {mine}");

    // The patient arrives first: waiting, and told the doctor is not in.
    let mut p = ts.ws_authed(&patient).await;
    p.join(appt).await;
    let w = p.recv_type("waiting").await;
    assert_eq!(w["doctor_online"], false, "{w}");
    assert_eq!(listed(&ts, &doctor, appt.0).await.unwrap()["waiting"], 1);
    // A guest invited by the doctor waits too.
    let (guest, _) = ts.guest(&doctor).await;
    let mut g = ts.ws_authed(&guest).await;
    g.join(appt).await;
    g.recv_type("waiting").await;
    assert_eq!(listed(&ts, &doctor, appt.0).await.unwrap()["waiting"], 2);

    // The count is the doctor's alone: not in the patient's list, not in the staff
    // schedule, and another doctor does not see the appointment at all.
    let theirs = listed(&ts, &patient, appt.0).await.unwrap();
    assert!(theirs.get("waiting").is_none(), "patient: {theirs}");
    let schedule = listed(&ts, &staff, appt.0).await.unwrap();
    assert!(schedule.get("waiting").is_none(), "staff: {schedule}");
    assert!(listed(&ts, &other_doctor, appt.0).await.is_none());
    // Listing stays audited, per appointment shown.
    let doc = ts.principal(Role::Doctor);
    let entry = ts
        .expect_audit(AuditAction::AppointmentsListed, &doc, None)
        .await;
    assert_eq!(entry.event.outcome, Outcome::Success);

    // The doctor comes in: both waiting participants hear it.
    let mut d = ts.ws_authed(&doctor).await;
    d.join(appt).await;
    d.recv_type("joined").await;
    for x in [&mut p, &mut g] {
        assert_eq!(x.recv_type("doctor_presence").await["online"], true);
    }
    // The doctor's connection drops: they hear that too, and still wait.
    drop(d);
    for x in [&mut p, &mut g] {
        assert_eq!(x.recv_type("doctor_presence").await["online"], false);
    }
    assert_eq!(listed(&ts, &doctor, appt.0).await.unwrap()["waiting"], 2);

    // Both leave: the count goes back to 0 (the room is gone).
    for x in [&mut p, &mut g] {
        x.send(json!({"type": "leave"})).await;
        x.recv_type("left").await;
    }
    let mut left = 2;
    for _ in 0..40 {
        left = listed(&ts, &doctor, appt.0).await.unwrap()["waiting"]
            .as_u64()
            .unwrap();
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(left, 0);
}
