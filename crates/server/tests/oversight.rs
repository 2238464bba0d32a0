//! Administration over real HTTPS: the audit trail's filters, verify from the page
//! (also against a log broken by a forged row), the auditor's package that the
//! offline check accepts, the per-patient access report, a person's sessions, the
//! break-glass grants for review, and the settings. Admins only; each action is
//! audited.

mod common;

use common::*;
use confide_server::confide_signaling::audit::{AuditAction, Outcome};
use confide_server::confide_signaling::http::now;
use confide_server::confide_signaling::model::Role;
use serde_json::{Value, json};

/// Every new admin route, for the role checks.
fn admin_routes() -> Vec<(&'static str, String)> {
    let t = now().0;
    vec![
        ("POST", "/api/admin/audit/verify".into()),
        (
            "GET",
            format!("/api/admin/audit/package?from={}&to={}", t - 60_000, t),
        ),
        (
            "GET",
            format!(
                "/api/admin/audit/report?patient=account:2&from={}&to={}",
                t - 60_000,
                t
            ),
        ),
        ("GET", "/api/admin/accounts/1/sessions".into()),
        ("DELETE", "/api/admin/accounts/1/sessions".into()),
        (
            "DELETE",
            "/api/admin/accounts/1/sessions/0011223344556677".into(),
        ),
        ("GET", "/api/admin/break-glass".into()),
        ("GET", "/api/admin/settings".into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_new_admin_route_refuses_other_roles_and_records_it() {
    let ts = server().await;
    let doctor = ts.login_demo(Role::Doctor).await;
    let staff = ts.login_demo(Role::Staff).await;
    let patient = ts.login_demo(Role::Patient).await;
    let (guest, guest_id) = ts.guest(&doctor).await;
    for (token, who) in [
        (&doctor, ts.principal(Role::Doctor)),
        (&staff, ts.principal(Role::Staff)),
        (&patient, ts.principal(Role::Patient)),
        (&guest, guest_id),
    ] {
        let before = ts
            .audit(AuditAction::AdminRefused)
            .await
            .iter()
            .filter(|e| e.event.actor == who)
            .count();
        for (method, path) in admin_routes() {
            let r = ts.req(method, &path, Some(token), None).await;
            assert_eq!(r.status, 403, "{who} {method} {path}: {:?}", r.body);
        }
        let after = ts
            .audit(AuditAction::AdminRefused)
            .await
            .iter()
            .filter(|e| e.event.actor == who)
            .count();
        assert_eq!(after - before, admin_routes().len(), "{who}");
    }
    // No session at all: 401.
    for (method, path) in admin_routes() {
        assert_eq!(ts.req(method, &path, None, None).await.status, 401);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_filters_verifies_exports_and_reports_from_the_page() {
    let ts = server().await;
    let admin = ts.login_demo(Role::Admin).await;
    let staff = ts.login_demo(Role::Staff).await;
    let admin_id = ts.principal(Role::Admin);
    let patient = ts.principal(Role::Patient);
    let t0 = now().0 - 1000;
    // Staff read the schedule: entries naming the demo patient.
    let r = ts.req("GET", "/api/appointments", Some(&staff), None).await;
    assert_eq!(r.status, 200);

    // Filters: by patient, action, actor and time.
    let q = |s: &str| format!("/api/admin/audit?{s}");
    let r = ts
        .req("GET", &q(&format!("patient={patient}")), Some(&admin), None)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let list = r.body.as_array().unwrap();
    assert!(!list.is_empty());
    assert!(list.iter().all(|e| e["patient"] == patient), "{list:?}");
    assert!(
        list.iter().any(
            |e| e["action"] == "appointments_listed" && e["actor"] == ts.principal(Role::Staff)
        )
    );
    let r = ts
        .req(
            "GET",
            &q(&format!(
                "action=appointments_listed&actor={}&from={t0}&to={}",
                ts.principal(Role::Staff),
                now().0 + 1000
            )),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.body.as_array().unwrap().len(), 1, "{:?}", r.body);
    // A period before anything happened is empty.
    let r = ts
        .req("GET", &q("from=0&to=1000"), Some(&admin), None)
        .await;
    assert_eq!(r.body, json!([]));
    for bad in ["patient=nobody", "action=made_up"] {
        let r = ts.req("GET", &q(bad), Some(&admin), None).await;
        assert_eq!(r.status, 400, "{bad}");
    }
    // Reading a patient's trail shows in that patient's access report.
    let read = ts
        .expect_audit(AuditAction::AuditRead, &admin_id, None)
        .await;
    assert!(read.event.detail.as_deref().unwrap().ends_with("entries"));

    // Verify from the page: OK.
    let r = ts
        .req("POST", "/api/admin/audit/verify", Some(&admin), None)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["ok"], true, "{:?}", r.body);
    assert!(r.body["size"].as_u64().unwrap() > 5);
    assert_eq!(r.body["first_bad"], Value::Null);
    ts.expect_audit(AuditAction::AuditVerified, &admin_id, None)
        .await;

    // The auditor's package for the period: the offline check accepts it.
    let path = format!("/api/admin/audit/package?from={t0}&to={}", now().0 + 60_000);
    let resp = ts
        .http
        .get(ts.url(&path))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/x-ndjson"
    );
    assert!(
        resp.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment; filename=\"confide-audit-")
    );
    let bytes = resp.bytes().await.unwrap();
    let report = confide_audit::check_package(&bytes[..], None).expect("the package checks");
    assert!(report.to > report.from, "{report:?}");
    let exported = ts
        .expect_audit(AuditAction::AuditExported, &admin_id, None)
        .await;
    assert_eq!(
        exported.event.detail.as_deref(),
        Some(&*format!("entries {}..{}", report.from, report.to))
    );
    // The same package file, written out, passes `confide audit check` too.
    let file = ts.data_dir.join("package.jsonl");
    std::fs::write(&file, &bytes).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_confide"))
        .args(["audit", "check"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("OK: entries"));
    // An empty period has no package; a reversed one is refused.
    let r = ts
        .req(
            "GET",
            "/api/admin/audit/package?from=0&to=1000",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, 404, "{:?}", r.body);
    let r = ts
        .req(
            "GET",
            "/api/admin/audit/package?from=5&to=1",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, 400);

    // The per-patient access report lists the staff member who read the schedule.
    let r = ts
        .req(
            "GET",
            &format!(
                "/api/admin/audit/report?patient={patient}&from={t0}&to={}",
                now().0 + 1000
            ),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["appointments"], 1);
    let rows = r.body["rows"].as_array().unwrap();
    let staff_row = rows
        .iter()
        .find(|row| row["actor"] == ts.principal(Role::Staff))
        .unwrap_or_else(|| panic!("{rows:?}"));
    assert!(staff_row["count"].as_u64().unwrap() >= 1);
    assert!(
        staff_row["actions"]
            .as_array()
            .unwrap()
            .contains(&json!("appointments_listed"))
    );
    let read = ts
        .expect_audit(AuditAction::AuditReportRead, &admin_id, None)
        .await;
    assert_eq!(read.event.patient.as_deref(), Some(&*patient));
    // Only patients have a report; another account is the same 404 as none.
    for who in [ts.principal(Role::Doctor), "account:98765".into()] {
        let r = ts
            .req(
                "GET",
                &format!(
                    "/api/admin/audit/report?patient={who}&from=0&to={}",
                    now().0
                ),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(r.status, 404, "{who}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_a_row_forged_past_the_head() {
    let ts = server().await;
    let admin = ts.login_demo(Role::Admin).await;
    let db_url = format!("sqlite://{}", ts.data_dir.join("confide.sqlite3").display());
    let head = forge_row_past_the_head(&db_url).await;
    // Nothing can be appended now; verify still answers (its own entry fails open).
    let r = ts
        .req("POST", "/api/admin/audit/verify", Some(&admin), None)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["ok"], false, "{:?}", r.body);
    let message = r.body["first_bad"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("beyond the stored log size {head}")),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_lists_and_revokes_a_persons_sessions() {
    let ts = server().await;
    let admin = ts.login_demo(Role::Admin).await;
    let admin_id = ts.principal(Role::Admin);
    let staff_id = ts.demo.account(Role::Staff).unwrap().id;
    // Two sessions of the staff member: the first with the previous step's code, so
    // the current one is still unused for the second (a TOTP code works once).
    let (u, p, secret) = ts.demo_account(Role::Staff);
    let first = ts.login_demo_with_previous_code(Role::Staff).await;
    let second = ts.login(&u, &p, secret.as_deref()).await;
    let path = format!("/api/admin/accounts/{}/sessions", staff_id.0);
    let r = ts.req("GET", &path, Some(&admin), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let list = r.body.as_array().unwrap().clone();
    assert_eq!(list.len(), 2, "{list:?}");
    for s in &list {
        assert_eq!(s["kind"], "full");
        assert_eq!(s["id"].as_str().unwrap().len(), 16);
        assert!(s["expires_at"].as_i64().unwrap() > now().0);
    }
    ts.expect_audit(AuditAction::SessionsListed, &admin_id, Some("2 sessions"))
        .await;

    // Revoke one: the other keeps working. Which one is which: revoke the first id and
    // see which token died.
    let id0 = list[0]["id"].as_str().unwrap();
    let r = ts
        .req("DELETE", &format!("{path}/{id0}"), Some(&admin), None)
        .await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    let tsr = &ts;
    let alive =
        move |t: String| async move { tsr.req("GET", "/api/me", Some(&t), None).await.status };
    let a = alive(first.clone()).await;
    let b = alive(second.clone()).await;
    assert_eq!(
        [a, b].iter().filter(|s| **s == 200).count(),
        1,
        "exactly one session ended: {a} {b}"
    );
    let revoked = ts
        .expect_audit(
            AuditAction::TokenRevoked,
            &admin_id,
            Some(&format!("session {id0}")),
        )
        .await;
    assert_eq!(
        revoked.event.target.as_deref(),
        Some(&*staff_id.to_string())
    );
    // A session id of another account is not found; nor is one already revoked.
    let admin_sessions = ts
        .req(
            "GET",
            &format!(
                "/api/admin/accounts/{}/sessions",
                ts.demo.account(Role::Admin).unwrap().id.0
            ),
            Some(&admin),
            None,
        )
        .await;
    let mine = admin_sessions.body[0]["id"].as_str().unwrap().to_owned();
    for sid in [mine.as_str(), id0, "zz"] {
        let r = ts
            .req("DELETE", &format!("{path}/{sid}"), Some(&admin), None)
            .await;
        assert_eq!(r.status, 404, "{sid}");
    }
    // Revoke all: nothing of the staff member's works any more.
    let r = ts.req("DELETE", &path, Some(&admin), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["revoked"], 1);
    assert_eq!(alive(first).await, 401);
    assert_eq!(alive(second).await, 401);
    let r = ts.req("GET", &path, Some(&admin), None).await;
    assert_eq!(r.body, json!([]));
    // An unknown account: 404, audited as refused.
    let r = ts
        .req(
            "GET",
            "/api/admin/accounts/98765/sessions",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, 404);
    let e = ts
        .expect_audit(
            AuditAction::SessionsListed,
            &admin_id,
            Some("unknown_account"),
        )
        .await;
    assert_eq!(e.event.outcome, Outcome::Denied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_grants_are_listed_for_review_and_settings_are_shown_without_secrets() {
    let ts = server().await;
    let admin = ts.login_demo(Role::Admin).await;
    let admin_id = ts.demo.account(Role::Admin).unwrap().id;
    let patient = ts.demo.account(Role::Patient).unwrap().id;
    let t = now();
    // Newest first in the list: the expired one was made before.
    let expired = ts
        .store()
        .create_break_glass(
            admin_id,
            patient,
            "an older emergency, long over",
            t.plus_secs(-7200),
            t.plus_secs(-3600),
        )
        .await
        .unwrap();
    let active = ts
        .store()
        .create_break_glass(
            admin_id,
            patient,
            "patient collapsed during the call",
            t,
            t.plus_secs(3600),
        )
        .await
        .unwrap();
    let r = ts
        .req("GET", "/api/admin/break-glass", Some(&admin), None)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let list = r.body.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["grant"], active);
    assert_eq!(list[0]["active"], true);
    assert_eq!(list[0]["patient"]["label"], "Demo Patient");
    assert_eq!(list[0]["admin"]["label"], "Demo Admin");
    assert_eq!(list[0]["reason"], "patient collapsed during the call");
    assert_eq!(list[0]["expires_at"], t.plus_secs(3600).0);
    assert_eq!(list[1]["grant"], expired);
    assert_eq!(list[1]["active"], false);
    let reviewed = ts.audit(AuditAction::BreakGlassReviewed).await;
    assert_eq!(reviewed.len(), 2, "one entry per grant shown");
    assert!(
        reviewed
            .iter()
            .all(|e| e.event.patient.as_deref() == Some(&*patient.to_string()))
    );

    let r = ts
        .req("GET", "/api/admin/settings", Some(&admin), None)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["idle_timeout_s"], 900);
    assert_eq!(r.body["session_lifetime_s"], 43_200);
    assert_eq!(r.body["join_grace_s"], 900);
    assert_eq!(r.body["break_glass_ttl_s"], 3600);
    assert_eq!(r.body["booking"]["duration_max_minutes"], 480);
    assert_eq!(r.body["max_participants"], 8);
    let text = r.body.to_string().to_lowercase();
    for secret in ["master", "pepper", "password", "secret", ".key"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    ts.expect_audit(AuditAction::SettingsRead, &admin_id.to_string(), None)
        .await;
}
