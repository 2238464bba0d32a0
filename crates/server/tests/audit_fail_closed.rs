//! The audit trail fails closed: an action whose audit entry cannot be written does
//! not happen. Here the log is broken the way a hostile insider would break it (one
//! well-formed row inserted past the head), and the next login is refused instead of
//! succeeding unrecorded, the failure shows on `/metrics`, logout still works (it
//! fails open), and `confide audit verify` names the forged row.

mod common;

use std::process::Command;

use common::*;
use confide_audit::store::sqlx;
use confide_server::confide_signaling::model::Role;
use serde_json::json;

#[tokio::test]
async fn forged_row_past_the_head_refuses_the_next_login_and_verify_reports_it() {
    let s = server_with(|cfg| cfg.admin_bind = Some("127.0.0.1:0".parse().unwrap())).await;
    let (user, password, _) = s.demo_account(Role::Patient);
    let before = s.login(&user, &password, None).await;

    let db_url = format!("sqlite://{}", s.data_dir.join("confide.sqlite3").display());
    let head = forge_row_past_the_head(&db_url).await;

    // The next audited action is refused, with a clear error and no token.
    let r = s
        .req(
            "POST",
            "/api/login",
            None,
            Some(json!({"username": user, "password": password})),
        )
        .await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.body["error"]["code"], "audit_unavailable", "{:?}", r.body);
    assert!(r.body.get("token").is_none());
    // Reads that would be audited are refused too.
    let r = s.req("GET", "/api/appointments", Some(&before), None).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    // Ending access fails open: logging out still works.
    let r = s.req("POST", "/api/logout", Some(&before), None).await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    let r = s.req("GET", "/api/me", Some(&before), None).await;
    assert_eq!(r.status, 401, "{:?}", r.body);

    let admin = s.running.admin.as_ref().expect("admin listener").addr;
    let metrics = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let failures = |policy: &str| -> u64 {
        let series = format!("confide_audit_write_failures_total{{policy=\"{policy}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
    };
    assert!(failures("closed") >= 2, "{metrics}");
    assert!(failures("open") >= 1, "{metrics}");

    let out = Command::new(env!("CARGO_BIN_EXE_confide"))
        .args(["audit", "verify"])
        .env("CONFIDE_DATA_DIR", &s.data_dir)
        .env_remove("CONFIDE_MASTER_KEY")
        .env_remove("CONFIDE_MASTER_KEY_FILE")
        .env_remove("CONFIDE_DATABASE_URL")
        .env_remove("CONFIDE_AUDIT_KEY_FILE")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "verify answered OK: {stderr}");
    assert!(
        stderr.contains(&format!("beyond the stored log size {head}")),
        "{stderr}"
    );
}

/// Writes and their entries commit in one transaction (issue: audit trail, item 1): with
/// the log unwritable, booking, inviting, redeeming an invite, creating an account and
/// accepting the terms are refused and leave nothing behind, not a row created before
/// the entry failed. So is starting TOTP enrolment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_whose_entry_cannot_be_written_leave_nothing_behind() {
    use confide_server::confide_signaling::auth::hash_token;
    use confide_server::confide_signaling::store::AppointmentQuery;

    let s = server().await;
    let staff = s.login_demo(Role::Staff).await;
    let doctor = s.login_demo(Role::Doctor).await;
    let admin = s.login_demo(Role::Admin).await;
    let patient = s.login_demo(Role::Patient).await;
    let appt = s.appointment();
    let (enroller_id, enroller_pw, _) = s.add_account("enroller", Role::Patient).await;
    let enroller = s.login("enroller", &enroller_pw, None).await;
    // An invite made while the log works, to be redeemed once it does not.
    let r = s
        .req(
            "POST",
            &format!("/api/appointments/{}/invites", appt.0),
            Some(&doctor),
            Some(json!({"label": "Interpreter"})),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let invite_token = r.body["invite_token"].as_str().unwrap().to_owned();
    let invite = s
        .store()
        .invite_by_hash(&hash_token(&invite_token))
        .await
        .unwrap()
        .unwrap();
    let patient_id = s.demo.account(Role::Patient).unwrap().id;
    let consent_before = s
        .store()
        .active_consent(&patient_id.to_string())
        .await
        .unwrap();
    let appointments_before = s
        .store()
        .list_appointments(AppointmentQuery::default())
        .await
        .unwrap()
        .len();

    let db_url = format!("sqlite://{}", s.data_dir.join("confide.sqlite3").display());
    forge_row_past_the_head(&db_url).await;
    let refused = |r: &Resp| {
        assert_eq!(r.status, 503, "{:?}", r.body);
        assert_eq!(r.body["error"]["code"], "audit_unavailable", "{:?}", r.body);
    };

    let doctor_id = s.demo.account(Role::Doctor).unwrap().id;
    let r = s
        .req(
            "POST",
            "/api/appointments",
            Some(&staff),
            Some(json!({"doctor": doctor_id.0, "patient": patient_id.0,
                        "start": 1_900_000_000, "duration_min": 30})),
        )
        .await;
    refused(&r);
    let appointments_after = s
        .store()
        .list_appointments(AppointmentQuery::default())
        .await
        .unwrap()
        .len();
    assert_eq!(
        appointments_after, appointments_before,
        "no appointment booked"
    );

    let r = s
        .req(
            "POST",
            &format!("/api/appointments/{}/invites", appt.0),
            Some(&doctor),
            Some(json!({"label": "Interpreter"})),
        )
        .await;
    refused(&r);
    let pool = sqlx::AnyPool::connect(&db_url).await.unwrap();
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        count("SELECT COUNT(*) FROM invites").await,
        1,
        "no new invite"
    );

    let r = s
        .req(
            "POST",
            "/api/invites/redeem",
            None,
            Some(json!({"invite_token": invite_token,
                        "accept_terms_version": s.demo.terms_version})),
        )
        .await;
    refused(&r);
    let again = s.store().invite(invite.id).await.unwrap().unwrap();
    assert!(again.used_at.is_none(), "the link is still unused");
    assert_eq!(
        count("SELECT COUNT(*) FROM sessions WHERE invite_id IS NOT NULL").await,
        0,
        "no guest session"
    );
    let guest = format!("guest:{}", invite.id.0);
    assert!(s.store().active_consent(&guest).await.unwrap().is_none());

    let r = s
        .req(
            "POST",
            "/api/admin/accounts",
            Some(&admin),
            Some(json!({"username": "unrecorded", "role": "doctor",
                        "display_name": "Dr. Unrecorded"})),
        )
        .await;
    refused(&r);
    assert!(
        s.store()
            .account_by_username("unrecorded")
            .await
            .unwrap()
            .is_none()
    );

    let r = s
        .req(
            "POST",
            "/api/consent",
            Some(&patient),
            Some(json!({"version": s.demo.terms_version})),
        )
        .await;
    refused(&r);
    assert_eq!(
        s.store()
            .active_consent(&patient_id.to_string())
            .await
            .unwrap(),
        consent_before,
        "the earlier consent still stands, not superseded"
    );

    let r = s
        .req(
            "POST",
            "/api/totp/enroll",
            Some(&enroller),
            Some(json!({"password": enroller_pw})),
        )
        .await;
    refused(&r);
    let a = s.store().account(enroller_id).await.unwrap().unwrap();
    assert!(a.totp_pending.is_none(), "no pending second factor stored");
    pool.close().await;
}

/// An admission is recorded before the room admits: with the log unwritable the doctor's
/// `admit` is refused and the patient stays in the waiting room, not admitted unrecorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admission_whose_entry_cannot_be_written_does_not_happen() {
    let s = server().await;
    let patient = s.login_demo(Role::Patient).await;
    let doctor = s.login_demo(Role::Doctor).await;
    let appt = s.appointment();
    let mut p = s.ws_authed(&patient).await;
    p.join(appt).await;
    let w = p.recv_type("waiting").await;
    let patient_pid = w["you"].as_u64().unwrap();
    let mut d = s.ws_authed(&doctor).await;
    d.join(appt).await;
    d.recv_type("joined").await;
    d.recv_type("waiting_room").await;

    let db_url = format!("sqlite://{}", s.data_dir.join("confide.sqlite3").display());
    forge_row_past_the_head(&db_url).await;
    d.send(json!({"type": "admit", "participant": patient_pid}))
        .await;
    d.expect_error("internal").await;
    let c = s.running.state.census();
    assert_eq!(
        (c.admitted, c.waiting),
        (1, 1),
        "the patient is still waiting"
    );
}
