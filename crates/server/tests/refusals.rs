//! Everyone who must not get in is refused with a clear error, and every refusal
//! (and acceptance) leaves its audit event.

mod common;

use std::time::Duration;

use common::*;
use confide_server::confide_signaling::audit::{AuditAction, Priority};
use confide_server::confide_signaling::auth::TotpSecret;
use confide_server::confide_signaling::http::now;
use confide_server::confide_signaling::model::{AppointmentId, Role};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_patient_staff_and_wrong_doctor_are_refused() {
    let ts = server().await;
    let appt = ts.appointment();

    let (p2, pw, _) = ts.add_account("pat2", Role::Patient).await;
    let t = ts.login("pat2", &pw, None).await;
    let mut ws = ts.ws_authed(&t).await;
    ws.join(appt).await;
    ws.expect_error("wrong_consultation").await;
    let r = ts
        .expect_audit(
            AuditAction::JoinRefused,
            &p2.to_string(),
            Some("wrong_consultation"),
        )
        .await;
    assert_eq!(r.event.target, Some(appt.to_string()));
    assert_eq!(r.event.role, Some(Role::Patient));
    // An unknown appointment looks exactly the same.
    ws.join(AppointmentId(999_999)).await;
    ws.expect_error("wrong_consultation").await;

    let staff = ts.login_demo(Role::Staff).await;
    let mut ws = ts.ws_authed(&staff).await;
    ws.join(appt).await;
    ws.expect_error("forbidden").await;
    let staff_id = ts.demo.account(Role::Staff).unwrap().id.to_string();
    ts.expect_audit(AuditAction::JoinRefused, &staff_id, Some("forbidden"))
        .await;

    let (d2, pw, secret) = ts.add_account("doc2", Role::Doctor).await;
    let t = ts.login("doc2", &pw, secret.as_deref()).await;
    let mut ws = ts.ws_authed(&t).await;
    ws.join(appt).await;
    ws.expect_error("wrong_consultation").await;
    ts.expect_audit(
        AuditAction::JoinRefused,
        &d2.to_string(),
        Some("wrong_consultation"),
    )
    .await;

    // Nor may the wrong doctor read its chat or book for someone else.
    let r = ts
        .req(
            "GET",
            &format!("/api/appointments/{}/chat", appt.0),
            Some(&t),
            None,
        )
        .await;
    assert_eq!(r.status, 403);
    let doctor = ts.demo.account(Role::Doctor).unwrap().id;
    let r = ts
        .req(
            "POST",
            "/api/appointments",
            Some(&t),
            Some(json!({"doctor": doctor.0, "start": now().secs(), "duration_min": 15})),
        )
        .await;
    assert_eq!(r.status, 403);
    ts.expect_audit(
        AuditAction::AppointmentBookRefused,
        &d2.to_string(),
        Some("not_self"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_refused_and_active_call_keeps_session_alive() {
    let ts = server_with(|c| c.settings.idle_timeout_s = 1).await;
    let patient_id = ts.demo.account(Role::Patient).unwrap().id.to_string();
    // The doctor sits in the consultation: that is activity, no automatic logoff.
    let doctor = ts.login_demo(Role::Doctor).await;
    let mut d = ts.ws_authed(&doctor).await;
    d.join(ts.appointment()).await;
    d.recv_type("joined").await;
    let patient = ts.login_demo(Role::Patient).await;

    tokio::time::sleep(Duration::from_millis(2600)).await;

    let mut ws = ts.ws().await;
    ws.send(json!({"type": "hello", "version": 1, "token": patient}))
        .await;
    ws.expect_error("session_expired").await;
    ts.expect_audit(AuditAction::SessionExpired, &patient_id, None)
        .await;
    ts.expect_audit(
        AuditAction::WsAuthFailed,
        "anonymous",
        Some("session_expired"),
    )
    .await;
    let r = ts.req("GET", "/api/me", Some(&patient), None).await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (401, Some("session_expired"))
    );

    d.send(json!({"type": "ping", "nonce": 1})).await;
    assert_eq!(d.recv_type("pong").await["nonce"], 1);
    let r = ts.req("GET", "/api/me", Some(&doctor), None).await;
    assert_eq!(r.status, 200, "in-call session stays alive: {:?}", r.body);
    // The principal the device's MLS credential and the key directory use.
    let principal = r.body["principal"].as_str().unwrap_or_default();
    assert!(principal.starts_with("account:"), "{principal}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_work_once_and_expire() {
    let ts = server().await;
    let appt = ts.appointment();
    let doctor = ts.login_demo(Role::Doctor).await;
    let terms = ts.demo.terms_version.clone();

    // Expired invite.
    let r = ts
        .req(
            "POST",
            &format!("/api/appointments/{}/invites", appt.0),
            Some(&doctor),
            Some(json!({"expires_in_s": 1, "label": "Interpreter"})),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let stale = r.body["invite_token"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = ts
        .req(
            "POST",
            "/api/invites/redeem",
            None,
            Some(json!({"invite_token": stale, "accept_terms_version": terms})),
        )
        .await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (404, Some("invite_invalid"))
    );
    let refused = ts.audit(AuditAction::InviteRefused).await;
    assert!(
        refused
            .iter()
            .any(|r| r.event.detail.as_deref() == Some("expired")),
        "{refused:#?}"
    );

    // Every invite names its guest.
    for body in [None, Some(json!({})), Some(json!({"label": " \u{7} "}))] {
        let r = ts
            .req(
                "POST",
                &format!("/api/appointments/{}/invites", appt.0),
                Some(&doctor),
                body,
            )
            .await;
        assert_eq!(r.status, 400, "{:?}", r.body);
    }

    // A good invite: consent first, then one redemption only.
    let r = ts
        .req(
            "POST",
            &format!("/api/appointments/{}/invites", appt.0),
            Some(&doctor),
            Some(json!({"label": "Interpreter"})),
        )
        .await;
    let invite = r.body["invite_token"].as_str().unwrap().to_string();
    let r = ts
        .req(
            "POST",
            "/api/invites/redeem",
            None,
            Some(json!({"invite_token": invite})),
        )
        .await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (400, Some("consent_required"))
    );
    let r = ts
        .req(
            "POST",
            "/api/invites/redeem",
            None,
            Some(json!({"invite_token": invite, "accept_terms_version": terms})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["role"], "guest");
    let guest = r.body["token"].as_str().unwrap().to_string();
    let again = ts
        .req(
            "POST",
            "/api/invites/redeem",
            None,
            Some(json!({"invite_token": invite, "accept_terms_version": terms})),
        )
        .await;
    assert_eq!(again.status, 404);
    let used = ts.audit(AuditAction::InviteRefused).await;
    assert!(
        used.iter()
            .any(|r| r.event.detail.as_deref() == Some("used"))
    );
    ts.audit_eventually(AuditAction::InviteRedeemed)
        .await
        .first()
        .expect("redeemed event");
    let consent = ts.audit_eventually(AuditAction::ConsentAccepted).await;
    assert!(consent.iter().any(|r| r.event.role == Some(Role::Guest)));

    // The guest waits; the doctor still admits.
    let mut g = ts.ws_authed(&guest).await;
    g.join(AppointmentId(appt.0 + 1000)).await;
    g.expect_error("wrong_consultation").await;
    g.join(appt).await;
    let w = g.recv_type("waiting").await;
    let gid = w["you"].as_u64().unwrap();
    let mut d = ts.ws_authed(&doctor).await;
    d.join(appt).await;
    let wr = d.recv_type("waiting_room").await;
    assert_eq!(wr["waiting"][0]["role"], "guest");
    // The doctor sees the name the invite was made under, not a generic "Guest".
    assert_eq!(wr["waiting"][0]["label"], "Interpreter");
    let me = ts.req("GET", "/api/me", Some(&guest), None).await;
    assert_eq!(me.body["label"], "Interpreter");
    d.send(json!({"type": "admit", "participant": gid})).await;
    g.recv_type("admitted").await;
    let adm = ts.audit_eventually(AuditAction::Admitted).await;
    assert!(adm[0].event.detail.as_deref().unwrap().ends_with("guest"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joiner_outside_the_window_is_refused() {
    let ts = server_with(|c| c.settings.join_grace_s = 300).await;
    let staff = ts.login_demo(Role::Staff).await;
    let doctor_id = ts.demo.account(Role::Doctor).unwrap().id;
    let patient_id = ts.demo.account(Role::Patient).unwrap().id;
    let r = ts
        .req(
            "POST",
            "/api/appointments",
            Some(&staff),
            Some(json!({"doctor": doctor_id.0, "patient": patient_id.0,
                        "start": now().secs() + 86_400, "duration_min": 20})),
        )
        .await;
    assert_eq!(r.status, 201);
    let tomorrow = AppointmentId(r.body["id"].as_i64().unwrap());
    let patient = ts.login_demo(Role::Patient).await;
    let mut ws = ts.ws_authed(&patient).await;
    ws.join(tomorrow).await;
    ws.expect_error("outside_window").await;
    let r = ts
        .expect_audit(
            AuditAction::JoinRefused,
            &patient_id.to_string(),
            Some("outside_window"),
        )
        .await;
    assert_eq!(r.event.target, Some(tomorrow.to_string()));
    // The same connection can still join today's consultation.
    ws.join(ts.appointment()).await;
    ws.recv_type("waiting").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_and_role_refusals() {
    let ts = server().await;
    let appt = ts.appointment();
    let patient_id = ts.demo.account(Role::Patient).unwrap().id.to_string();
    let doctor_id = ts.demo.account(Role::Doctor).unwrap().id.to_string();

    // Before auth, bad version, bad token.
    let mut ws = ts.ws().await;
    ws.join(appt).await;
    ws.expect_error("not_authenticated").await;
    ws.send(json!({"type": "hello", "version": 99, "token": "x"}))
        .await;
    ws.expect_error("unsupported_version").await;
    ws.send(json!({"type": "hello", "version": 1, "token": "not-a-token"}))
        .await;
    ws.expect_error("auth_failed").await;
    ts.expect_audit(AuditAction::WsAuthFailed, "anonymous", Some("auth_failed"))
        .await;

    let patient = ts.login_demo(Role::Patient).await;
    let doctor = ts.login_demo(Role::Doctor).await;
    let mut p = ts.ws_authed(&patient).await;
    p.send(json!({"type": "hello", "version": 1, "token": patient}))
        .await;
    p.expect_error("already_authenticated").await;
    p.send(json!({"type": "chat", "ciphertext": "AAAA"})).await;
    p.expect_error("not_in_consultation").await;
    p.join(appt).await;
    let pid = p.recv_type("waiting").await["you"].as_u64().unwrap();
    p.join(appt).await;
    p.expect_error("already_joined").await;
    ts.expect_audit(
        AuditAction::JoinRefused,
        &patient_id,
        Some("already_joined"),
    )
    .await;
    p.send(json!({"type": "chat", "ciphertext": "AAAA"})).await;
    p.expect_error("not_admitted").await;
    p.send(json!({"type": "media_offer", "sdp": "v=0"})).await;
    p.expect_error("not_admitted").await;
    p.send(json!({"type": "admit", "participant": pid})).await;
    p.expect_error("forbidden").await;
    ts.expect_audit(AuditAction::AdmitRefused, &patient_id, None)
        .await;
    p.send(json!({"type": "end"})).await;
    p.expect_error("forbidden").await;
    ts.expect_audit(AuditAction::EndRefused, &patient_id, Some("forbidden"))
        .await;
    let big = "A".repeat(40_000);
    p.send(json!({"type": "chat", "ciphertext": big})).await;
    p.expect_error("too_large").await;
    p.send_raw("{not json".into()).await;
    p.expect_error("bad_json").await;
    p.send(json!({"type": "teleport"})).await;
    p.expect_error("unknown_type").await;

    // The doctor denies: the patient is told and disconnected.
    let mut d = ts.ws_authed(&doctor).await;
    d.join(appt).await;
    d.recv_type("joined").await;
    d.recv_type("waiting_room").await;
    d.send(json!({"type": "admit", "participant": 424242}))
        .await;
    d.expect_error("unknown_participant").await;
    d.send(json!({"type": "deny", "participant": pid})).await;
    assert_eq!(p.recv_type("denied").await["consultation"], appt.0);
    assert_eq!(p.recv().await["type"], "closed");
    assert_eq!(d.recv_type("participant_denied").await["participant"], pid);
    let denied = ts.expect_audit(AuditAction::Denied, &doctor_id, None).await;
    assert_eq!(denied.event.target, Some(format!("participant:{pid}")));

    // Leaving is audited too.
    d.send(json!({"type": "leave"})).await;
    d.recv_type("left").await;
    ts.expect_audit(AuditAction::Left, &doctor_id, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_is_required_and_revocable() {
    let ts = server().await;
    let patient_id = ts.demo.account(Role::Patient).unwrap().id.to_string();
    let patient = ts.login_demo(Role::Patient).await;
    let terms = ts.req("GET", "/api/consent/terms", None, None).await;
    let version = terms.body["version"].as_str().unwrap().to_string();
    assert!(terms.body["text"].as_str().unwrap().len() > 50);
    let st = ts.req("GET", "/api/consent", Some(&patient), None).await;
    assert_eq!(st.body["accepted"], true, "the demo patient consented");

    let r = ts.req("DELETE", "/api/consent", Some(&patient), None).await;
    assert_eq!(r.status, 204);
    ts.expect_audit(AuditAction::ConsentRevoked, &patient_id, None)
        .await;
    let mut ws = ts.ws_authed(&patient).await;
    ws.join(ts.appointment()).await;
    ws.expect_error("consent_required").await;
    ts.expect_audit(
        AuditAction::JoinRefused,
        &patient_id,
        Some("consent_required"),
    )
    .await;

    let r = ts
        .req(
            "POST",
            "/api/consent",
            Some(&patient),
            Some(json!({"version": "old"})),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = ts
        .req(
            "POST",
            "/api/consent",
            Some(&patient),
            Some(json!({"version": version})),
        )
        .await;
    assert_eq!(r.status, 200);
    ts.expect_audit(
        AuditAction::ConsentAccepted,
        &patient_id,
        Some(version.as_str()),
    )
    .await;
    ws.join(ts.appointment()).await;
    ws.recv_type("waiting").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_errors_are_generic_throttled_and_audited() {
    let ts = server().await;
    let doctor_id = ts.demo.account(Role::Doctor).unwrap().id.to_string();
    let bad_pw = ts
        .req(
            "POST",
            "/api/login",
            None,
            Some(json!({"username": "patient", "password": "wrong-password"})),
        )
        .await;
    let unknown = ts
        .req(
            "POST",
            "/api/login",
            None,
            Some(json!({"username": "nobody", "password": "wrong-password"})),
        )
        .await;
    assert_eq!(bad_pw.status, 401);
    assert_eq!(
        (bad_pw.status, &bad_pw.body),
        (unknown.status, &unknown.body),
        "same answer either way"
    );
    let patient_id = ts.demo.account(Role::Patient).unwrap().id.to_string();
    ts.expect_audit(AuditAction::LoginFailed, &patient_id, None)
        .await;
    ts.expect_audit(AuditAction::LoginFailed, "anonymous", None)
        .await;

    // A clinician needs the second factor; a wrong one is a generic failure.
    let (u, p, _) = ts.demo_account(Role::Doctor);
    let r = ts
        .req(
            "POST",
            "/api/login",
            None,
            Some(json!({"username": u, "password": p})),
        )
        .await;
    assert_eq!(r.body["error"]["code"], "mfa_required");
    let r = ts
        .req(
            "POST",
            "/api/login",
            None,
            Some(json!({"username": u, "password": p, "totp": "000000"})),
        )
        .await;
    assert_eq!(r.body["error"]["code"], "invalid_credentials");
    ts.expect_audit(AuditAction::MfaFailed, &doctor_id, None)
        .await;

    // Growing delays after repeated failures, not a lock-out.
    let mut throttled = false;
    for _ in 0..6 {
        let r = ts
            .req(
                "POST",
                "/api/login",
                None,
                Some(json!({"username": "patient", "password": "nope-nope"})),
            )
            .await;
        if r.status == 429 {
            throttled = true;
            assert_eq!(r.body["error"]["code"], "too_many_attempts");
            break;
        }
    }
    assert!(throttled);
    ts.expect_audit(AuditAction::LoginThrottled, &patient_id, None)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totp_replay_is_rejected_and_logout_revokes() {
    let ts = server().await;
    let doctor_id = ts.demo.account(Role::Doctor).unwrap().id.to_string();
    let (u, p, s) = ts.demo_account(Role::Doctor);
    let c = code(s.as_deref().unwrap());
    let r = ts
        .req(
            "POST",
            "/api/login",
            None,
            Some(json!({"username": u, "password": p, "totp": c})),
        )
        .await;
    assert_eq!(r.status, 200);
    let token = r.body["token"].as_str().unwrap().to_string();
    assert_eq!(
        ts.req("GET", "/api/me", Some(&token), None).await.status,
        200
    );
    assert_eq!(
        ts.req("POST", "/api/logout", Some(&token), None)
            .await
            .status,
        204
    );
    let after = ts.req("GET", "/api/me", Some(&token), None).await;
    assert_eq!(after.status, 401);
    ts.expect_audit(AuditAction::Logout, &doctor_id, None).await;
    ts.expect_audit(AuditAction::TokenRevoked, &doctor_id, Some("logout"))
        .await;
    let mut ws = ts.ws().await;
    ws.send(json!({"type": "hello", "version": 1, "token": token}))
        .await;
    ws.expect_error("session_expired").await;

    let replay = ts
        .req(
            "POST",
            "/api/login",
            None,
            Some(json!({"username": u, "password": p, "totp": c})),
        )
        .await;
    assert_eq!(replay.status, 401, "a used code is refused");
    ts.expect_audit(
        AuditAction::MfaFailed,
        &doctor_id,
        Some("bad_second_factor"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clinicians_must_enrol_totp_and_recovery_codes_work_once() {
    let ts = server().await;
    let admin = ts.login_demo(Role::Admin).await;
    let r = ts
        .req(
            "POST",
            "/api/admin/accounts",
            Some(&admin),
            Some(json!({"username": "newdoc", "role": "doctor", "display_name": "Dr. New"})),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let admin_id = ts.demo.account(Role::Admin).unwrap().id.to_string();
    ts.expect_audit(AuditAction::AccountCreated, &admin_id, None)
        .await;
    // The doctor sets a password through the link, then leaves before enrolling: the
    // next login with that password still leads to enrolment, never further.
    let link = r.body["activation_token"].as_str().unwrap().to_string();
    let done = ts
        .req(
            "POST",
            "/api/activation/complete",
            None,
            Some(json!({"token": link, "new_password": "a long passphrase"})),
        )
        .await;
    assert_eq!(done.status, 200, "{:?}", done.body);
    assert_eq!(done.body["mfa_enrollment_required"], true);

    let r = ts
        .req(
            "POST",
            "/api/login",
            None,
            Some(json!({"username": "newdoc", "password": "a long passphrase"})),
        )
        .await;
    assert_eq!(r.body["mfa_enrollment_required"], true);
    assert!(r.body.get("token").is_none());
    let enrol = r.body["enrollment_token"].as_str().unwrap().to_string();
    assert_eq!(
        ts.req("GET", "/api/appointments", Some(&enrol), None)
            .await
            .status,
        403
    );
    let mut ws = ts.ws().await;
    ws.send(json!({"type": "hello", "version": 1, "token": enrol}))
        .await;
    ws.expect_error("auth_failed").await;

    let e = ts.req("POST", "/api/totp/enroll", Some(&enrol), None).await;
    let secret = e.body["secret"].as_str().unwrap().to_string();
    assert!(
        e.body["otpauth_url"]
            .as_str()
            .unwrap()
            .starts_with("otpauth://totp/")
    );
    let bad = ts
        .req(
            "POST",
            "/api/totp/confirm",
            Some(&enrol),
            Some(json!({"code": "123456"})),
        )
        .await;
    assert_eq!(bad.status, 401);
    let ok = ts
        .req(
            "POST",
            "/api/totp/confirm",
            Some(&enrol),
            Some(json!({"code": code(&secret)})),
        )
        .await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    let codes: Vec<String> = serde_json::from_value(ok.body["recovery_codes"].clone()).unwrap();
    assert_eq!(codes.len(), 10);
    let full = ok.body["token"].as_str().unwrap();
    assert_eq!(
        ts.req("GET", "/api/me", Some(full), None).await.body["mfa_enabled"],
        true
    );
    let newdoc = ts
        .store()
        .account_by_username("newdoc")
        .await
        .unwrap()
        .unwrap();
    ts.expect_audit(AuditAction::MfaEnrolled, &newdoc.id.to_string(), None)
        .await;
    let sealed = newdoc.totp_secret.unwrap();
    assert!(
        !sealed.windows(10).any(|w| secret.as_bytes().starts_with(w)),
        "secret stored sealed"
    );

    let login_rc = |rc: String| {
        ts.req(
            "POST",
            "/api/login",
            None,
            Some(
                json!({"username": "newdoc", "password": "a long passphrase", "recovery_code": rc}),
            ),
        )
    };
    assert_eq!(login_rc(codes[0].clone()).await.status, 200);
    assert_eq!(
        login_rc(codes[0].clone()).await.status,
        401,
        "recovery codes are single-use"
    );
    let rec = ts
        .expect_audit(AuditAction::MfaRecoveryUsed, &newdoc.id.to_string(), None)
        .await;
    assert_eq!(rec.event.priority, Priority::High);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_needs_reason_and_reauthentication_and_is_audited_high() {
    let ts = server().await;
    let (_, p, s) = ts.demo_account(Role::Admin);
    let secret = TotpSecret::from_base32(s.as_deref().unwrap()).unwrap();
    // The previous step's code for the login, so the current one is still fresh for
    // the re-authentication below.
    let admin = ts.login_demo_with_previous_code(Role::Admin).await;
    let admin_id = ts.demo.account(Role::Admin).unwrap().id.to_string();
    let patient = ts.demo.account(Role::Patient).unwrap().id;
    let appt = ts.appointment();
    let path = format!("/api/admin/break-glass/appointments/{}", appt.0);

    // Admins see no clinical content without a grant.
    assert_eq!(
        ts.req("GET", "/api/appointments", Some(&admin), None)
            .await
            .status,
        403
    );
    assert_eq!(ts.req("GET", &path, Some(&admin), None).await.status, 403);
    let no_grant = ts
        .expect_audit(
            AuditAction::BreakGlassAccess,
            &admin_id,
            Some("no_active_grant"),
        )
        .await;
    assert_eq!(no_grant.event.priority, Priority::High);

    let r = ts
        .req(
            "POST",
            "/api/admin/break-glass",
            Some(&admin),
            Some(json!({"patient": patient.0, "reason": "x", "password": p, "totp": "1"})),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = ts
        .req(
            "POST",
            "/api/admin/break-glass",
            Some(&admin),
            Some(json!({"patient": patient.0, "reason": "patient collapsed during call", "password": "wrong", "totp": secret.code_at(now().secs())})),
        )
        .await;
    assert_eq!(r.status, 401);
    let refused = ts
        .expect_audit(
            AuditAction::BreakGlassRefused,
            &admin_id,
            Some("reauthentication_failed"),
        )
        .await;
    assert_eq!(refused.event.priority, Priority::High);

    let r = ts
        .req(
            "POST",
            "/api/admin/break-glass",
            Some(&admin),
            Some(json!({"patient": patient.0, "reason": "patient collapsed during call", "password": p, "totp": secret.code_at(now().secs())})),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert!(r.body["expires_at"].as_i64().unwrap() > now().0);
    let granted = ts
        .expect_audit(
            AuditAction::BreakGlassGranted,
            &admin_id,
            Some("patient collapsed during call"),
        )
        .await;
    assert_eq!(granted.event.priority, Priority::High);

    let r = ts.req("GET", &path, Some(&admin), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["appointment"]["reason"], "Demo follow-up");
    assert_eq!(r.body["patient_contact"], "patient@demo.invalid");
    let access: Vec<_> = ts
        .audit_eventually(AuditAction::BreakGlassAccess)
        .await
        .into_iter()
        .filter(|r| r.event.outcome == confide_server::confide_signaling::audit::Outcome::Success)
        .collect();
    assert_eq!(access.len(), 1);
    assert_eq!(access[0].event.priority, Priority::High);
    assert_eq!(access[0].event.target, Some(appt.to_string()));

    // The grant is for that one patient: another patient's appointment stays shut.
    let (pat2, _, _) = ts.add_account("pat2", Role::Patient).await;
    let staff = ts.login_demo(Role::Staff).await;
    let doctor = ts.demo.account(Role::Doctor).unwrap().id;
    let r = ts
        .req(
            "POST",
            "/api/appointments",
            Some(&staff),
            Some(json!({"doctor": doctor.0, "patient": pat2.0, "start": now().secs(), "duration_min": 15})),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let other = format!("/api/admin/break-glass/appointments/{}", r.body["id"]);
    assert_eq!(ts.req("GET", &other, Some(&admin), None).await.status, 403);

    // Admin reads the audit log over REST; others may not.
    let r = ts
        .req(
            "GET",
            "/api/admin/audit?action=break_glass_granted",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.as_array().unwrap().len(), 1);
    ts.expect_audit(AuditAction::AuditRead, &admin_id, None)
        .await;
    assert_eq!(
        ts.req("GET", "/api/admin/audit", Some(&staff), None)
            .await
            .status,
        403
    );
    let staff_id = ts.demo.account(Role::Staff).unwrap().id.to_string();
    ts.expect_audit(AuditAction::AdminRefused, &staff_id, None)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_whose_session_row_is_gone_is_closed() {
    // A short idle timeout makes the session tick run every second.
    let ts = server_with(|c| c.settings.idle_timeout_s = 3).await;
    let patient = ts.login_demo(Role::Patient).await;
    let mut ws = ts.ws_authed(&patient).await;
    // Every session row goes, as when an operator deletes them or they are purged.
    let far = now().plus_secs(365 * 24 * 3600);
    assert!(ts.store().purge_sessions(far).await.unwrap() >= 1);
    ws.expect_error("session_expired").await;
    assert_eq!(ws.recv().await["type"], "closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_reauthentication_is_throttled() {
    let ts = server().await;
    let (_, p, s) = ts.demo_account(Role::Admin);
    let secret = TotpSecret::from_base32(s.as_deref().unwrap()).unwrap();
    let admin = ts.login_demo_with_previous_code(Role::Admin).await;
    let admin_id = ts.demo.account(Role::Admin).unwrap().id.to_string();
    let patient = ts.demo.account(Role::Patient).unwrap().id;
    let ask = |password: &str| {
        json!({"patient": patient.0, "reason": "patient collapsed during call",
               "password": password, "totp": secret.code_at(now().secs())})
    };
    // Three free failures, and the attempt that starts the delay, are verified; then
    // the delays double until one outlasts a round trip. Counting answers, not time:
    // the loop ends at a refusal whose wait (4 s or more) the next request surely
    // falls inside.
    let attempt = |password: String| {
        ts.http
            .post(ts.url("/api/admin/break-glass"))
            .bearer_auth(&admin)
            .json(&ask(&password))
            .send()
    };
    let mut verified = 0;
    loop {
        let r = attempt("wrong".into()).await.unwrap();
        match r.status().as_u16() {
            401 => verified += 1,
            429 => {
                let retry: i64 = r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                if retry >= 4 {
                    break;
                }
            }
            s => panic!("unexpected status {s}"),
        }
        assert!(verified <= 9, "never throttled after {verified} failures");
    }
    assert!(verified >= 4, "only {verified} verified before the delay");
    // Inside the delay even the right password waits, and the refusal is audited.
    let r = attempt(p.clone()).await.unwrap();
    assert_eq!(r.status().as_u16(), 429);
    let refused = ts
        .expect_audit(AuditAction::BreakGlassRefused, &admin_id, Some("throttled"))
        .await;
    assert_eq!(refused.event.priority, Priority::High);
}
