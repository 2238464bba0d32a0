//! The account lifecycle over the REST API: an admin creates an account and passes on a
//! single-use activation link; its owner sets a password and enrols a second factor;
//! password changes, second-factor changes, recovery codes, admin resets and
//! re-enabling. Each route refuses the wrong role and other people's accounts, and
//! each action leaves its audit entry.

mod common;

use common::*;
use confide_audit::store::sqlx;
use confide_server::confide_signaling::audit::{AuditAction, Outcome, Priority};
use confide_server::confide_signaling::auth::hash_token;
use confide_server::confide_signaling::http::now;
use confide_server::confide_signaling::model::{AccountId, Role};
use serde_json::{Value, json};

/// An admin creates an account; returns its id and the activation token.
async fn create(ts: &TestServer, admin: &str, username: &str, role: &str) -> (AccountId, String) {
    let r = ts
        .req(
            "POST",
            "/api/admin/accounts",
            Some(admin),
            Some(json!({"username": username, "role": role,
                        "display_name": format!("Test {username}"), "contact": "x@clinic.example"})),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["purpose"], "activate");
    (
        AccountId(r.body["id"].as_i64().unwrap()),
        r.body["activation_token"].as_str().unwrap().to_string(),
    )
}

async fn complete(ts: &TestServer, body: Value) -> Resp {
    ts.req("POST", "/api/activation/complete", None, Some(body))
        .await
}

/// Starts and confirms TOTP enrolment with `session`; returns (secret, confirm body).
async fn enrol(ts: &TestServer, session: &str, password: Option<&str>) -> (String, Value) {
    let body = password.map(|p| json!({"password": p}));
    let e = ts
        .req("POST", "/api/totp/enroll", Some(session), body)
        .await;
    assert_eq!(e.status, 200, "{:?}", e.body);
    let svg = e.body["qr_svg"].as_str().unwrap();
    assert!(svg.contains("<svg") && svg.contains("<path"), "{svg}");
    let secret = e.body["secret"].as_str().unwrap().to_string();
    let c = ts
        .req(
            "POST",
            "/api/totp/confirm",
            Some(session),
            Some(json!({"code": previous_code(&secret)})),
        )
        .await;
    assert_eq!(c.status, 200, "{:?}", c.body);
    (secret, c.body)
}

fn error_code(r: &Resp) -> &str {
    r.body["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_creates_a_doctor_who_activates_enrols_and_logs_in() {
    let ts = server().await;
    let admin = ts.login_demo(Role::Admin).await;
    let admin_id = ts.principal(Role::Admin);
    let (id, link) = create(&ts, &admin, "drnew", "doctor").await;

    // Only the token's SHA-256 is stored.
    let db_url = format!("sqlite://{}", ts.data_dir.join("confide.sqlite3").display());
    let pool = sqlx::AnyPool::connect(&db_url).await.unwrap();
    let rows: Vec<(Vec<u8>, String)> =
        sqlx::query_as("SELECT token_hash, purpose FROM activations WHERE account_id = $1")
            .bind(id.0)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows, vec![(hash_token(&link), "activate".to_string())]);

    // Waiting: listed as such, and cannot log in whatever it types.
    let list = ts
        .req("GET", "/api/admin/accounts", Some(&admin), None)
        .await;
    let me = list
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["username"] == "drnew")
        .unwrap()
        .clone();
    assert_eq!(
        (me["activation_pending"].clone(), me["mfa_enabled"].clone()),
        (json!(true), json!(false))
    );
    let r = ts
        .req(
            "POST",
            "/api/login",
            None,
            Some(json!({"username": "drnew", "password": "anything at all"})),
        )
        .await;
    assert_eq!((r.status, error_code(&r)), (403, "activation_pending"));
    ts.expect_audit(
        AuditAction::LoginFailed,
        &id.to_string(),
        Some("activation_pending"),
    )
    .await;
    let issued = ts
        .expect_audit(AuditAction::ActivationIssued, &admin_id, Some("activate"))
        .await;
    assert_eq!(issued.event.target, Some(id.to_string()));
    ts.expect_audit(AuditAction::AccountCreated, &admin_id, None)
        .await;

    // The page asks what the link is for; asking does not use it up.
    let i = ts
        .req(
            "POST",
            "/api/activation/inspect",
            None,
            Some(json!({"token": link})),
        )
        .await;
    assert_eq!(i.status, 200, "{:?}", i.body);
    assert_eq!(i.body["purpose"], "activate");
    assert_eq!(i.body["username"], "drnew");
    assert_eq!(i.body["password"], "new");
    assert_eq!(i.body["min_length"], 8);
    assert_eq!(i.body["enrol_second_factor"], true);
    assert_eq!(i.body["second_factor_code"], false);

    let r = complete(
        &ts,
        json!({"token": link, "new_password": "quiet harbour lantern"}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["mfa_enrollment_required"], true);
    assert!(r.body.get("token").is_none());
    let enrolment = r.body["enrollment_token"].as_str().unwrap().to_string();
    ts.expect_audit(
        AuditAction::AccountActivated,
        &id.to_string(),
        Some("activate"),
    )
    .await;
    // The enrolment session does nothing but enrol.
    let r = ts
        .req("GET", "/api/appointments", Some(&enrolment), None)
        .await;
    assert_eq!(r.status, 403);

    // Used once: the same link again is refused, and so is inspecting it.
    let again = complete(
        &ts,
        json!({"token": link, "new_password": "another fine passphrase"}),
    )
    .await;
    assert_eq!(
        (again.status, error_code(&again)),
        (404, "activation_invalid")
    );
    let refused = ts
        .expect_audit(
            AuditAction::ActivationRefused,
            &id.to_string(),
            Some("used"),
        )
        .await;
    assert_eq!(refused.event.outcome, Outcome::Denied);

    let (secret, confirmed) = enrol(&ts, &enrolment, None).await;
    let codes = confirmed["recovery_codes"].as_array().unwrap();
    assert_eq!(codes.len(), 10);
    let full = confirmed["token"].as_str().unwrap();
    let a = ts.req("GET", "/api/account", Some(full), None).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body["mfa_enabled"], true);
    assert_eq!(a.body["recovery_codes_remaining"], 10);
    ts.expect_audit(AuditAction::MfaEnrolled, &id.to_string(), Some("first"))
        .await;

    // From now on: password and a code from the authenticator.
    let t = ts
        .login("drnew", "quiet harbour lantern", Some(&secret))
        .await;
    let me = ts.req("GET", "/api/me", Some(&t), None).await;
    assert_eq!(me.body["role"], "doctor");
    let row = ts.store().account(id).await.unwrap().unwrap();
    assert!(!row.activation_pending && row.totp_enabled);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activation_links_refuse_weak_passwords_without_being_used_up_and_expire() {
    let ts = server().await;
    let admin = ts.login_demo(Role::Admin).await;
    let (id, link) = create(&ts, &admin, "pat.jones", "patient").await;

    // A patient's password is the only factor: 15 characters at least.
    let i = ts
        .req(
            "POST",
            "/api/activation/inspect",
            None,
            Some(json!({"token": link})),
        )
        .await;
    assert_eq!(
        (
            i.body["min_length"].clone(),
            i.body["enrol_second_factor"].clone()
        ),
        (json!(15), json!(false))
    );
    for (password, code) in [
        ("short but ok", "password_too_short"),
        ("1q2w3e4r5t6y7u8i9o0p", "password_common"),
        ("I am pat.jones, hello", "password_contains_username"),
        ("my Confide password!!", "password_contains_service_name"),
        ("tab\there is refused", "password_control_character"),
    ] {
        let r = complete(&ts, json!({"token": link, "new_password": password})).await;
        assert_eq!(
            (r.status, error_code(&r)),
            (400, code),
            "{password}: {:?}",
            r.body
        );
    }
    let r = complete(&ts, json!({"token": link})).await;
    assert_eq!(r.status, 400, "a new password is required");
    let r = complete(&ts, json!({"token": link, "new_password": "x", "bogus": 1})).await;
    assert_eq!(r.status, 422, "unknown fields are refused: {:?}", r.body);

    // None of that used the link: a good password still works, and a patient gets a
    // full session at once.
    let r = complete(
        &ts,
        json!({"token": link, "new_password": "a walk along the river"}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(r.body["token"].is_string());
    assert!(r.body.get("enrollment_token").is_none());
    ts.login("pat.jones", "a walk along the river", None).await;

    // Unknown and expired links: one answer, audited.
    for bad in ["", "not-a-real-token", &"x".repeat(600)] {
        let r = ts
            .req(
                "POST",
                "/api/activation/inspect",
                None,
                Some(json!({"token": bad})),
            )
            .await;
        assert_eq!((r.status, error_code(&r)), (404, "activation_invalid"));
    }
    ts.expect_audit(AuditAction::ActivationRefused, "anonymous", Some("unknown"))
        .await;
    let r = ts
        .req("POST", "/api/activation/inspect", None, Some(json!([1, 2])))
        .await;
    assert_eq!(r.status, 422, "malformed body: {:?}", r.body);

    let (id2, link2) = create(&ts, &admin, "pat.late", "patient").await;
    let db_url = format!("sqlite://{}", ts.data_dir.join("confide.sqlite3").display());
    let pool = sqlx::AnyPool::connect(&db_url).await.unwrap();
    sqlx::query("UPDATE activations SET expires_at = $1 WHERE account_id = $2")
        .bind(now().0 - 1)
        .bind(id2.0)
        .execute(&pool)
        .await
        .unwrap();
    let r = complete(
        &ts,
        json!({"token": link2, "new_password": "a walk along the river"}),
    )
    .await;
    assert_eq!((r.status, error_code(&r)), (404, "activation_invalid"));
    ts.expect_audit(
        AuditAction::ActivationRefused,
        &id2.to_string(),
        Some("expired"),
    )
    .await;
    assert!(
        ts.store()
            .account(id2)
            .await
            .unwrap()
            .unwrap()
            .activation_pending
    );
    assert!(
        !ts.store()
            .account(id)
            .await
            .unwrap()
            .unwrap()
            .activation_pending
    );
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_routes_refuse_the_wrong_role_and_other_accounts() {
    let ts = server().await;
    let admin = ts.login_demo(Role::Admin).await;
    let admin_id = ts.demo.account(Role::Admin).unwrap().id;
    let doctor_id = ts.demo.account(Role::Doctor).unwrap().id;
    let staff = ts.login_demo(Role::Staff).await;
    let doctor = ts.login_demo(Role::Doctor).await;
    let patient = ts.login_demo(Role::Patient).await;
    let (guest, guest_principal) = ts.guest(&doctor).await;

    // Admin routes: every other role is refused, and the refusal is audited.
    let reset = format!("/api/admin/accounts/{}/reset", doctor_id.0);
    let enable = format!("/api/admin/accounts/{}/enable", doctor_id.0);
    let create_body = json!({"username": "x", "role": "doctor", "display_name": "X"});
    for (who, token) in [
        (ts.principal(Role::Staff), &staff),
        (ts.principal(Role::Doctor), &doctor),
        (ts.principal(Role::Patient), &patient),
        (guest_principal, &guest),
    ] {
        for (path, body) in [
            ("/api/admin/accounts", Some(create_body.clone())),
            (reset.as_str(), Some(json!({"what": "password"}))),
            (enable.as_str(), None),
        ] {
            let r = ts.req("POST", path, Some(token), body).await;
            assert_eq!(r.status, 403, "{who} {path}: {:?}", r.body);
        }
        let refusals = ts.audit(AuditAction::AdminRefused).await;
        assert_eq!(
            refusals.iter().filter(|r| r.event.actor == who).count(),
            3,
            "{who}"
        );
    }
    assert!(ts.store().account_by_username("x").await.unwrap().is_none());
    let d = ts.store().account(doctor_id).await.unwrap().unwrap();
    assert!(d.has_password() && d.totp_enabled && !d.activation_pending);

    // An admin cannot reset their own account this way (it would skip the password
    // the account page asks for); unknown accounts are 404.
    let own = format!("/api/admin/accounts/{}/reset", admin_id.0);
    let r = ts
        .req(
            "POST",
            &own,
            Some(&admin),
            Some(json!({"what": "second_factor"})),
        )
        .await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    let own_refusal = ts
        .expect_audit(
            AuditAction::AdminRefused,
            &admin_id.to_string(),
            Some("own_account"),
        )
        .await;
    assert_eq!(own_refusal.event.target, Some(admin_id.to_string()));
    assert!(
        ts.store()
            .account(admin_id)
            .await
            .unwrap()
            .unwrap()
            .totp_enabled
    );
    for path in [
        "/api/admin/accounts/987654/reset",
        "/api/admin/accounts/987654/enable",
    ] {
        let r = ts
            .req(
                "POST",
                path,
                Some(&admin),
                Some(json!({"what": "password"})),
            )
            .await;
        assert_eq!(r.status, 404, "{path}: {:?}", r.body);
    }
    let r = ts
        .req(
            "POST",
            &reset,
            Some(&admin),
            Some(json!({"what": "everything"})),
        )
        .await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    let r = ts
        .req(
            "POST",
            "/api/admin/accounts",
            Some(&admin),
            Some(json!({"username": "g", "role": "guest", "display_name": "G"})),
        )
        .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    let r = ts
        .req("POST", "/api/admin/accounts", Some(&admin),
             Some(json!({"username": "pw", "role": "doctor", "display_name": "P", "password": "the admin never sets one"})))
        .await;
    assert_eq!(r.status, 422, "no password field: {:?}", r.body);

    // The caller's own account only: guests have none, an enrolment session may not
    // use it, and a change by one account leaves the others alone.
    for (method, path, body) in [
        ("GET", "/api/account", None),
        (
            "POST",
            "/api/account/password",
            Some(json!({"current_password": "x", "new_password": "y"})),
        ),
        (
            "POST",
            "/api/account/recovery-codes",
            Some(json!({"password": "x"})),
        ),
        ("POST", "/api/totp/enroll", Some(json!({"password": "x"}))),
    ] {
        let r = ts.req(method, path, Some(&guest), body).await;
        assert_eq!(r.status, 403, "guest {path}: {:?}", r.body);
    }
    let patient_before = ts
        .store()
        .account(ts.demo.account(Role::Patient).unwrap().id)
        .await
        .unwrap()
        .unwrap()
        .password_hash;
    let (_, p, _) = ts.demo_account(Role::Doctor);
    let r = ts
        .req(
            "POST",
            "/api/account/password",
            Some(&doctor),
            Some(json!({"current_password": p, "new_password": "ocean tide at midnight"})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let after = ts
        .store()
        .account(ts.demo.account(Role::Patient).unwrap().id)
        .await
        .unwrap()
        .unwrap()
        .password_hash;
    assert_eq!(
        after, patient_before,
        "only the caller's own password changed"
    );
    ts.expect_audit(AuditAction::PasswordChanged, &doctor_id.to_string(), None)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrolment_session_cannot_use_the_account_routes() {
    let ts = server().await;
    let admin = ts.login_demo(Role::Admin).await;
    let (_, link) = create(&ts, &admin, "drhalf", "doctor").await;
    let r = complete(
        &ts,
        json!({"token": link, "new_password": "granite moss and fern"}),
    )
    .await;
    let enrolment = r.body["enrollment_token"].as_str().unwrap().to_string();
    for (method, path, body) in [
        ("GET", "/api/account", None),
        (
            "POST",
            "/api/account/password",
            Some(
                json!({"current_password": "granite moss and fern", "new_password": "a new and long one"}),
            ),
        ),
        (
            "POST",
            "/api/account/recovery-codes",
            Some(json!({"password": "granite moss and fern"})),
        ),
    ] {
        let r = ts.req(method, path, Some(&enrolment), body).await;
        assert_eq!(r.status, 403, "{path}: {:?}", r.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_password_needs_the_current_one_and_ends_the_other_sessions() {
    let ts = server().await;
    let (id, pw, secret) = ts.add_account("drchange", Role::Doctor).await;
    let secret = secret.unwrap();
    // Two sessions: this browser and another one.
    let body = |code: String| json!({"username": "drchange", "password": pw, "totp": code});
    let r = ts
        .req(
            "POST",
            "/api/login",
            None,
            Some(body(previous_code(&secret))),
        )
        .await;
    let other = r.body["token"].as_str().unwrap().to_string();
    let here = ts.login("drchange", &pw, Some(&secret)).await;

    let r = ts
        .req(
            "POST",
            "/api/account/password",
            Some(&here),
            Some(json!({"current_password": "not my password", "new_password": "slow river, bright stones"})),
        )
        .await;
    assert_eq!((r.status, error_code(&r)), (401, "invalid_credentials"));
    let failed = ts
        .expect_audit(
            AuditAction::ReauthFailed,
            &id.to_string(),
            Some("bad_password"),
        )
        .await;
    assert_eq!(failed.event.outcome, Outcome::Failure);
    let r = ts
        .req(
            "POST",
            "/api/account/password",
            Some(&here),
            Some(json!({"current_password": pw, "new_password": "password1"})),
        )
        .await;
    assert_eq!((r.status, error_code(&r)), (400, "password_common"));
    // Typing the password again is throttled per account, so a stolen session cannot
    // guess it: after six wrong ones, even the right one must wait.
    let change = |current: &str| {
        ts.req(
            "POST",
            "/api/account/password",
            Some(&here),
            Some(json!({"current_password": current, "new_password": "slow river, bright stones"})),
        )
    };
    for _ in 0..6 {
        assert_eq!(change("guess").await.status, 401);
    }
    let r = change(&pw).await;
    assert_eq!((r.status, error_code(&r)), (429, "too_many_attempts"));
    ts.expect_audit(AuditAction::ReauthFailed, &id.to_string(), Some("throttle"))
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(
        ts.req("GET", "/api/me", Some(&other), None).await.status,
        200,
        "nothing changed yet"
    );

    let r = ts
        .req(
            "POST",
            "/api/account/password",
            Some(&here),
            Some(json!({"current_password": pw, "new_password": "slow river, bright stones"})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["revoked_sessions"], 1);
    let gone = ts.req("GET", "/api/me", Some(&other), None).await;
    assert_eq!((gone.status, error_code(&gone)), (401, "session_expired"));
    assert_eq!(
        ts.req("GET", "/api/me", Some(&here), None).await.status,
        200
    );
    ts.expect_audit(AuditAction::PasswordChanged, &id.to_string(), None)
        .await;
    ts.expect_audit(
        AuditAction::TokenRevoked,
        &id.to_string(),
        Some("1 sessions"),
    )
    .await;

    let old = ts
        .req(
            "POST",
            "/api/login",
            None,
            Some(json!({"username": "drchange", "password": pw, "totp": "000000"})),
        )
        .await;
    assert_eq!(old.status, 401, "the old password is gone");
    let row = ts.store().account(id).await.unwrap().unwrap();
    assert!(confide_server::confide_signaling::auth::verify_password(
        &row.password_hash,
        "slow river, bright stones"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_factor_changes_only_with_the_password_and_the_old_one_works_until_confirmed() {
    let ts = server().await;
    let (id, pw, old_secret) = ts.add_account("drphone", Role::Doctor).await;
    let old_secret = old_secret.unwrap();
    let login = |code: String| {
        ts.req(
            "POST",
            "/api/login",
            None,
            Some(json!({"username": "drphone", "password": pw, "totp": code})),
        )
    };
    let r = login(previous_code(&old_secret)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let full = r.body["token"].as_str().unwrap().to_string();

    // A full session alone is not enough to enrol or change a second factor.
    let r = ts.req("POST", "/api/totp/enroll", Some(&full), None).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    let r = ts
        .req(
            "POST",
            "/api/totp/enroll",
            Some(&full),
            Some(json!({"password": "wrong"})),
        )
        .await;
    assert_eq!(r.status, 401, "{:?}", r.body);
    ts.expect_audit(
        AuditAction::ReauthFailed,
        &id.to_string(),
        Some("bad_password"),
    )
    .await;
    assert!(
        ts.store()
            .account(id)
            .await
            .unwrap()
            .unwrap()
            .totp_pending
            .is_none()
    );

    let e = ts
        .req(
            "POST",
            "/api/totp/enroll",
            Some(&full),
            Some(json!({"password": pw})),
        )
        .await;
    assert_eq!(e.status, 200, "{:?}", e.body);
    let new_secret = e.body["secret"].as_str().unwrap().to_string();
    ts.expect_audit(
        AuditAction::MfaEnrollStarted,
        &id.to_string(),
        Some("change"),
    )
    .await;
    // Until the new one is confirmed the old one still logs in.
    let r = login(code(&old_secret)).await;
    assert_eq!(
        r.status, 200,
        "old factor before confirmation: {:?}",
        r.body
    );

    let c = ts
        .req(
            "POST",
            "/api/totp/confirm",
            Some(&full),
            Some(json!({"code": previous_code(&new_secret)})),
        )
        .await;
    assert_eq!(c.status, 200, "{:?}", c.body);
    assert_eq!(c.body["recovery_codes"].as_array().unwrap().len(), 10);
    assert!(c.body.get("token").is_none(), "the full session goes on");
    ts.expect_audit(AuditAction::MfaEnrolled, &id.to_string(), Some("change"))
        .await;
    let r = login(code(&old_secret)).await;
    assert_eq!(r.status, 401, "the old factor is gone");
    let r = login(code(&new_secret)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_resets_a_password_and_the_owner_proves_the_second_factor() {
    let ts = server().await;
    let admin = ts.login_demo(Role::Admin).await;
    let admin_id = ts.principal(Role::Admin);
    let (id, pw, secret) = ts.add_account("drforgot", Role::Doctor).await;
    let secret = secret.unwrap();
    let r = ts
        .req(
            "POST",
            "/api/login",
            None,
            Some(json!({"username": "drforgot", "password": pw, "totp": previous_code(&secret)})),
        )
        .await;
    let session = r.body["token"].as_str().unwrap().to_string();

    let r = ts
        .req(
            "POST",
            &format!("/api/admin/accounts/{}/reset", id.0),
            Some(&admin),
            Some(json!({"what": "password"})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["purpose"], "reset_password");
    let body = r.body.to_string();
    assert!(!body.contains(&secret) && !body.contains("password_hash"));
    let link = r.body["activation_token"].as_str().unwrap().to_string();
    let reset = ts
        .expect_audit(AuditAction::AccountReset, &admin_id, Some("password"))
        .await;
    assert_eq!(reset.event.priority, Priority::High);
    assert_eq!(reset.event.target, Some(id.to_string()));
    ts.expect_audit(
        AuditAction::ActivationIssued,
        &admin_id,
        Some("reset_password"),
    )
    .await;

    // Its sessions ended and its password is gone.
    let r = ts.req("GET", "/api/me", Some(&session), None).await;
    assert_eq!(r.status, 401);
    let r = ts
        .req(
            "POST",
            "/api/login",
            None,
            Some(json!({"username": "drforgot", "password": pw, "totp": code(&secret)})),
        )
        .await;
    assert_eq!((r.status, error_code(&r)), (403, "activation_pending"));

    let i = ts
        .req(
            "POST",
            "/api/activation/inspect",
            None,
            Some(json!({"token": link})),
        )
        .await;
    assert_eq!(i.body["second_factor_code"], true);
    assert_eq!(i.body["enrol_second_factor"], false);
    let r = complete(
        &ts,
        json!({"token": link, "new_password": "blue kettle on the stove"}),
    )
    .await;
    assert_eq!((r.status, error_code(&r)), (401, "mfa_required"));
    let r = complete(
        &ts,
        json!({"token": link, "new_password": "blue kettle on the stove", "totp": "123456"}),
    )
    .await;
    assert_eq!(r.status, 401, "{:?}", r.body);
    ts.expect_audit(AuditAction::MfaFailed, &id.to_string(), Some("activation"))
        .await;
    let r = complete(
        &ts,
        json!({"token": link, "new_password": "blue kettle on the stove", "totp": code(&secret)}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(r.body["token"].is_string(), "a full session: {:?}", r.body);
    ts.expect_audit(
        AuditAction::AccountActivated,
        &id.to_string(),
        Some("reset_password"),
    )
    .await;
    let a = ts.store().account(id).await.unwrap().unwrap();
    assert!(a.totp_enabled && !a.activation_pending);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_resets_a_second_factor_and_the_owner_proves_the_password_and_enrols() {
    let ts = server().await;
    let admin = ts.login_demo(Role::Admin).await;
    let admin_id = ts.principal(Role::Admin);
    let (id, pw, old_secret) = ts.add_account("drlost", Role::Doctor).await;
    let old_secret = old_secret.unwrap();

    let r = ts
        .req(
            "POST",
            &format!("/api/admin/accounts/{}/reset", id.0),
            Some(&admin),
            Some(json!({"what": "second_factor"})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["purpose"], "reset_second_factor");
    let link = r.body["activation_token"].as_str().unwrap().to_string();
    let reset = ts
        .expect_audit(AuditAction::AccountReset, &admin_id, Some("second_factor"))
        .await;
    assert_eq!(reset.event.priority, Priority::High);
    let a = ts.store().account(id).await.unwrap().unwrap();
    assert!(!a.totp_enabled && a.totp_secret.is_none() && a.activation_pending);

    // The right password alone does not log in: the link comes first.
    let r = ts
        .req(
            "POST",
            "/api/login",
            None,
            Some(json!({"username": "drlost", "password": pw})),
        )
        .await;
    assert_eq!((r.status, error_code(&r)), (403, "activation_pending"));
    let r = ts
        .req(
            "POST",
            "/api/login",
            None,
            Some(json!({"username": "drlost", "password": "a wrong guess"})),
        )
        .await;
    assert_eq!(
        (r.status, error_code(&r)),
        (401, "invalid_credentials"),
        "a wrong password is not told the account waits"
    );

    let i = ts
        .req(
            "POST",
            "/api/activation/inspect",
            None,
            Some(json!({"token": link})),
        )
        .await;
    assert_eq!(i.body["password"], "current");
    let r = complete(
        &ts,
        json!({"token": link, "current_password": "a wrong guess"}),
    )
    .await;
    assert_eq!(r.status, 401, "{:?}", r.body);
    ts.expect_audit(
        AuditAction::ReauthFailed,
        &id.to_string(),
        Some("bad_password"),
    )
    .await;
    // Holding the link does not allow guessing the password behind it: after six wrong
    // guesses the link must wait, even for the right one.
    for _ in 0..5 {
        let r = complete(
            &ts,
            json!({"token": link, "current_password": "another guess"}),
        )
        .await;
        assert_eq!(r.status, 401, "{:?}", r.body);
    }
    let r = complete(&ts, json!({"token": link, "current_password": pw})).await;
    assert_eq!((r.status, error_code(&r)), (429, "too_many_attempts"));
    ts.expect_audit(
        AuditAction::ActivationRefused,
        &id.to_string(),
        Some("throttle"),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let r = complete(&ts, json!({"token": link, "current_password": pw})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let enrolment = r.body["enrollment_token"].as_str().unwrap().to_string();
    let (new_secret, confirmed) = enrol(&ts, &enrolment, None).await;
    assert!(confirmed["token"].is_string());

    let login = |code: String| {
        ts.req(
            "POST",
            "/api/login",
            None,
            Some(json!({"username": "drlost", "password": pw, "totp": code})),
        )
    };
    assert_eq!(login(code(&old_secret)).await.status, 401, "the lost phone");
    assert_eq!(login(code(&new_secret)).await.status, 200);

    // Nothing to reset on an account without a password.
    let (fresh, _) = create(&ts, &admin, "drnopw", "doctor").await;
    let r = ts
        .req(
            "POST",
            &format!("/api/admin/accounts/{}/reset", fresh.0),
            Some(&admin),
            Some(json!({"what": "second_factor"})),
        )
        .await;
    assert_eq!(r.status, 409, "{:?}", r.body);
    // A password reset of a never-activated account is a new activation link.
    let r = ts
        .req(
            "POST",
            &format!("/api/admin/accounts/{}/reset", fresh.0),
            Some(&admin),
            Some(json!({"what": "password"})),
        )
        .await;
    assert_eq!(r.body["purpose"], "activate", "{:?}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_codes_work_once_count_down_and_renew_with_the_password() {
    let ts = server().await;
    let admin = ts.login_demo(Role::Admin).await;
    let (id, link) = create(&ts, &admin, "drcodes", "staff").await;
    let r = complete(
        &ts,
        json!({"token": link, "new_password": "paper lanterns glow"}),
    )
    .await;
    let enrolment = r.body["enrollment_token"].as_str().unwrap().to_string();
    let (_, confirmed) = enrol(&ts, &enrolment, None).await;
    let codes: Vec<String> = serde_json::from_value(confirmed["recovery_codes"].clone()).unwrap();
    let full = confirmed["token"].as_str().unwrap().to_string();

    let login_rc = |rc: &str| {
        ts.req(
            "POST",
            "/api/login",
            None,
            Some(json!({"username": "drcodes", "password": "paper lanterns glow", "recovery_code": rc})),
        )
    };
    let r = login_rc(&codes[3]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let rc_session = r.body["token"].as_str().unwrap().to_string();
    assert_eq!(r.body["recovery_codes_remaining"], 9);
    let used = ts
        .expect_audit(AuditAction::MfaRecoveryUsed, &id.to_string(), None)
        .await;
    assert_eq!(used.event.priority, Priority::High);
    assert_eq!(login_rc(&codes[3]).await.status, 401, "used once");
    let a = ts.req("GET", "/api/account", Some(&rc_session), None).await;
    assert_eq!(a.body["recovery_codes_remaining"], 9);

    let r = ts
        .req(
            "POST",
            "/api/account/recovery-codes",
            Some(&full),
            Some(json!({"password": "not it"})),
        )
        .await;
    assert_eq!(r.status, 401);
    let r = ts
        .req(
            "POST",
            "/api/account/recovery-codes",
            Some(&full),
            Some(json!({"password": "paper lanterns glow"})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let fresh: Vec<String> = serde_json::from_value(r.body["recovery_codes"].clone()).unwrap();
    assert_eq!(fresh.len(), 10);
    ts.expect_audit(AuditAction::RecoveryCodesRenewed, &id.to_string(), None)
        .await;
    assert_eq!(login_rc(&codes[4]).await.status, 401, "old codes are void");
    assert_eq!(login_rc(&fresh[0]).await.status, 200);
    let a = ts.req("GET", "/api/account", Some(&full), None).await;
    assert_eq!(a.body["recovery_codes_remaining"], 9);

    // A patient without a second factor has no codes to renew.
    let (_, ppw, _) = ts.add_account("pat.nocodes", Role::Patient).await;
    let p = ts.login("pat.nocodes", &ppw, None).await;
    let r = ts
        .req(
            "POST",
            "/api/account/recovery-codes",
            Some(&p),
            Some(json!({"password": ppw})),
        )
        .await;
    assert_eq!(r.status, 409, "{:?}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_account_is_enabled_again_by_an_admin() {
    let ts = server().await;
    let admin = ts.login_demo(Role::Admin).await;
    let admin_id = ts.principal(Role::Admin);
    let (id, pw, _) = ts.add_account("pat.back", Role::Patient).await;
    let r = ts
        .req(
            "POST",
            &format!("/api/admin/accounts/{}/disable", id.0),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, 204);
    let r = ts
        .req(
            "POST",
            "/api/login",
            None,
            Some(json!({"username": "pat.back", "password": pw})),
        )
        .await;
    assert_eq!(r.status, 401);
    let r = ts
        .req(
            "POST",
            &format!("/api/admin/accounts/{}/reset", id.0),
            Some(&admin),
            Some(json!({"what": "password"})),
        )
        .await;
    assert_eq!(r.status, 409, "enable it first: {:?}", r.body);
    let r = ts
        .req(
            "POST",
            &format!("/api/admin/accounts/{}/enable", id.0),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    let e = ts
        .expect_audit(AuditAction::AccountEnabled, &admin_id, None)
        .await;
    assert_eq!(e.event.target, Some(id.to_string()));
    ts.login("pat.back", &pw, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_policy_is_public() {
    let ts = server().await;
    let r = ts.req("GET", "/api/password/policy", None, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["min_length_single_factor"], 15);
    assert_eq!(r.body["min_length_with_second_factor"], 8);
    assert!(r.body["max_length"].as_u64().unwrap() >= 64);
    assert!(r.body["blocklist_size"].as_u64().unwrap() > 19_000);
    assert!(!r.body["rules"].as_array().unwrap().is_empty());
}

/// `confide admin create-account` without a password makes an account that waits for
/// activation and prints its link; a given password is held to the rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_creates_an_account_waiting_for_activation() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], password: Option<&str>| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_confide"));
        c.args(["admin", "create-account"])
            .args(args)
            .env("CONFIDE_DATA_DIR", dir.path())
            .env_remove("CONFIDE_MASTER_KEY")
            .env_remove("CONFIDE_MASTER_KEY_FILE")
            .env_remove("CONFIDE_DATABASE_URL")
            .env("RUST_LOG", "warn");
        match password {
            Some(p) => c.env("CONFIDE_NEW_PASSWORD", p),
            None => c.env_remove("CONFIDE_NEW_PASSWORD"),
        };
        c.output().unwrap()
    };
    let out = run(
        &[
            "--username",
            "drcli",
            "--role",
            "doctor",
            "--display-name",
            "Dr CLI",
            "--origin",
            "https://clinic.example/",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("waits for activation"), "{stdout}");
    let link = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("https://clinic.example/#/activate/"))
        .unwrap_or_else(|| panic!("no link in {stdout}"));
    assert_eq!(link.len(), 43, "256 bits, base64url");

    let out = run(
        &[
            "--username",
            "drweak",
            "--role",
            "doctor",
            "--display-name",
            "Dr Weak",
        ],
        Some("password1"),
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("too common"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(
        &[
            "--username",
            "drstrong",
            "--role",
            "doctor",
            "--display-name",
            "Dr Strong",
        ],
        Some("birch leaves in autumn"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The link works on the server that uses this data directory.
    let data = dir.path().to_path_buf();
    let ts = server_with(move |c| c.data_dir = data).await;
    let a = ts
        .store()
        .account_by_username("drcli")
        .await
        .unwrap()
        .unwrap();
    assert!(a.activation_pending && !a.has_password());
    let r = complete(
        &ts,
        json!({"token": link, "new_password": "tall grass by the lake"}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["mfa_enrollment_required"], true);
    let issued = ts
        .expect_audit(AuditAction::ActivationIssued, "cli", Some("activate"))
        .await;
    assert_eq!(issued.event.target, Some(a.id.to_string()));
}

/// The operator's notifier gets each committed link, with the token to deliver; the
/// link's `Debug` form never shows the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notifier_gets_each_link_to_deliver() {
    use confide_server::confide_signaling::http::activation::{ActivationLink, Notifier};
    use confide_server::confide_signaling::store::AccountRecord;
    use std::sync::{Arc, Mutex};

    /// One delivery: the account, its sealed contact, the link.
    type Sent = (AccountId, Option<Vec<u8>>, ActivationLink);
    #[derive(Default)]
    struct Outbox(Mutex<Vec<Sent>>);
    #[async_trait::async_trait]
    impl Notifier for Outbox {
        async fn notify_activation(&self, account: &AccountRecord, link: &ActivationLink) {
            self.0
                .lock()
                .unwrap()
                .push((account.id, account.contact.clone(), link.clone()));
        }
    }

    let ts = server().await;
    let outbox = Arc::new(Outbox::default());
    assert!(ts.running.state.set_notifier(outbox.clone()));
    let admin = ts.login_demo(Role::Admin).await;
    let (id, token) = create(&ts, &admin, "drmail", "doctor").await;
    let r = ts
        .req(
            "POST",
            &format!(
                "/api/admin/accounts/{}/reset",
                ts.demo.account(Role::Patient).unwrap().id.0
            ),
            Some(&admin),
            Some(json!({"what": "password"})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    let sent = outbox.0.lock().unwrap().clone();
    assert_eq!(sent.len(), 2);
    let (account, contact, link) = &sent[0];
    assert_eq!((*account, link.token.as_str()), (id, token.as_str()));
    assert_eq!(link.path(), format!("/#/activate/{token}"));
    // The contact details reach the notifier sealed, for it to open with the keyring.
    let contact = ts
        .running
        .state
        .keyring
        .open_string(
            confide_server::confide_signaling::crypto::ctx::CONTACT,
            contact.as_ref().unwrap(),
        )
        .unwrap();
    assert_eq!(contact, "x@clinic.example");
    assert_eq!(
        sent[1].2.token,
        r.body["activation_token"].as_str().unwrap(),
        "the reset's link"
    );
    assert!(
        !format!("{link:?}").contains(&token),
        "Debug hides the token"
    );
}
