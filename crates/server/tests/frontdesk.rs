//! The front desk over real HTTPS and WSS: the schedule with live presence, moving
//! and cancelling under the booking policy, the waiting rooms, and the patient
//! register with its keyed blind index. Each route refuses the wrong role and objects
//! outside the caller's assignment, and each action writes its audit entry.

mod common;

use common::*;
use confide_audit::store::sqlx;
use confide_server::confide_signaling::audit::AuditAction;
use confide_server::confide_signaling::http::now;
use confide_server::confide_signaling::model::Role;
use confide_server::confide_signaling::store::keys::{load_keyring, rotate_data_key};
use serde_json::{Value, json};

fn schedule_path(from: i64, to: i64) -> String {
    format!("/api/schedule?from={from}&to={to}")
}

/// Today's period around now, as the page asks for it.
fn around_now() -> (i64, i64) {
    let t = now().secs();
    (t - 3600, t + 86_400)
}

fn ids(list: &Value) -> Vec<i64> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_i64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_shows_the_clinic_to_staff_and_admins_and_a_doctor_their_own() {
    let ts = server().await;
    let staff = ts.login_demo(Role::Staff).await;
    let admin = ts.login_demo(Role::Admin).await;
    let patient = ts.login_demo(Role::Patient).await;
    let (doc2, pw, secret) = ts.add_account("doc2", Role::Doctor).await;
    let doc2_token = ts.login("doc2", &pw, secret.as_deref()).await;
    let (pat2, _, _) = ts.add_account("pat2", Role::Patient).await;
    let r = ts
        .req(
            "POST",
            "/api/appointments",
            Some(&staff),
            Some(
                json!({"doctor": doc2.0, "patient": pat2.0, "start": now().secs() + 7200,
                        "duration_min": 20, "reason": "knee pain"}),
            ),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let doc2_appt = r.body["id"].as_i64().unwrap();
    let demo_appt = ts.appointment().0;
    let (from, to) = around_now();

    // Staff and admins see the whole clinic, without reasons.
    for token in [&staff, &admin] {
        let r = ts
            .req("GET", &schedule_path(from, to), Some(token), None)
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let list = &r.body["appointments"];
        assert_eq!(ids(list), vec![demo_appt, doc2_appt], "{list}");
        for a in list.as_array().unwrap() {
            assert!(a.get("reason").is_none(), "{a}");
            assert_eq!(a["status"], "booked");
        }
        assert_eq!(list[1]["patient"]["label"], "Test pat2");
        assert_eq!(list[1]["duration_s"], 1200);
    }
    // A doctor sees their own, with the reason.
    let r = ts
        .req("GET", &schedule_path(from, to), Some(&doc2_token), None)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(ids(&r.body["appointments"]), vec![doc2_appt]);
    assert_eq!(r.body["appointments"][0]["reason"], "knee pain");
    // A period that does not reach the appointment leaves it out.
    let r = ts
        .req(
            "GET",
            &schedule_path(now().secs() + 9000, now().secs() + 20_000),
            Some(&staff),
            None,
        )
        .await;
    assert_eq!(ids(&r.body["appointments"]), Vec::<i64>::new());

    // Reading the schedule is audited per appointment shown, naming its patient.
    let staff_id = ts.principal(Role::Staff);
    let listed = ts.audit(AuditAction::AppointmentsListed).await;
    let seen = listed
        .iter()
        .find(|e| {
            e.event.actor == staff_id
                && e.event.target.as_deref() == Some(&format!("appointment:{doc2_appt}"))
        })
        .expect("the staff's schedule read names the appointment");
    assert_eq!(seen.event.patient.as_deref(), Some(&*pat2.to_string()));
    assert_eq!(seen.event.detail.as_deref(), Some("schedule"));

    // Patients and guests have no schedule; refusals are audited.
    let r = ts
        .req("GET", &schedule_path(from, to), Some(&patient), None)
        .await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    let refused = ts
        .expect_audit(
            AuditAction::AppointmentsListed,
            &ts.principal(Role::Patient),
            Some("not allowed for this role"),
        )
        .await;
    assert_eq!(
        refused.event.outcome,
        confide_server::confide_signaling::audit::Outcome::Denied
    );
    let doctor = ts.login_demo(Role::Doctor).await;
    let (guest, _) = ts.guest(&doctor).await;
    let r = ts
        .req("GET", &schedule_path(from, to), Some(&guest), None)
        .await;
    assert_eq!(r.status, 403);

    // Bad periods: missing, empty, reversed, longer than 31 days.
    for path in [
        "/api/schedule".to_owned(),
        schedule_path(to, from),
        schedule_path(from, from),
        schedule_path(from, from + 32 * 86_400),
        "/api/schedule?from=x&to=1".to_owned(),
    ] {
        let r = ts.req("GET", &path, Some(&staff), None).await;
        assert_eq!(r.status, 400, "{path}: {:?}", r.body);
        assert_eq!(r.body["error"]["code"], "bad_request");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_and_the_waiting_rooms_show_who_is_in_right_now() {
    let ts = server().await;
    let staff = ts.login_demo(Role::Staff).await;
    let patient = ts.login_demo(Role::Patient).await;
    let doctor = ts.login_demo(Role::Doctor).await;
    let (_, pw, secret) = ts.add_account("doc2", Role::Doctor).await;
    let doc2 = ts.login("doc2", &pw, secret.as_deref()).await;
    let appt = ts.appointment();
    let (from, to) = around_now();
    let staff_id = ts.principal(Role::Staff);

    // Nobody in yet.
    let r = ts
        .req("GET", "/api/waiting-rooms", Some(&staff), None)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body, json!([]));

    // The patient waits.
    let mut pws = ts.ws_authed(&patient).await;
    pws.join(appt).await;
    assert_eq!(pws.recv().await["type"], "waiting");
    let r = ts
        .req("GET", &schedule_path(from, to), Some(&staff), None)
        .await;
    let presence = &r.body["appointments"][0]["presence"];
    assert_eq!(presence["doctor_in"], false, "{presence}");
    assert_eq!(
        presence["waiting"][0]["label"], "Demo Patient",
        "{presence}"
    );
    assert_eq!(presence["waiting"][0]["role"], "patient");
    assert!(presence["waiting"][0]["since"].as_i64().unwrap() <= now().0);
    assert_eq!(presence["in_call"], json!([]));

    let before = ts.audit(AuditAction::WaitingRoomsViewed).await.len();
    let r = ts
        .req("GET", "/api/waiting-rooms", Some(&staff), None)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let rooms = r.body.as_array().unwrap();
    assert_eq!(rooms.len(), 1, "{rooms:?}");
    assert_eq!(rooms[0]["appointment"], appt.0);
    assert_eq!(rooms[0]["patient"]["label"], "Demo Patient");
    assert_eq!(rooms[0]["doctor_in"], false);
    assert_eq!(rooms[0]["waiting"][0]["label"], "Demo Patient");
    let viewed = ts.audit(AuditAction::WaitingRoomsViewed).await;
    assert_eq!(viewed.len(), before + 1, "one entry for the one room shown");
    let last = viewed.last().unwrap();
    assert_eq!(last.event.actor, staff_id);
    assert_eq!(last.event.target.as_deref(), Some(&*appt.to_string()));
    assert_eq!(
        last.event.patient.as_deref(),
        Some(&*ts.principal(Role::Patient))
    );
    // A page polling shows the same again: recorded once, not on every poll.
    for _ in 0..3 {
        ts.req("GET", "/api/waiting-rooms", Some(&staff), None)
            .await;
    }
    assert_eq!(
        ts.audit(AuditAction::WaitingRoomsViewed).await.len(),
        before + 1
    );

    // The doctor comes in: what is shown changed, so it is recorded again.
    let mut dws = ts.ws_authed(&doctor).await;
    dws.join(appt).await;
    assert_eq!(dws.recv_type("joined").await["type"], "joined");
    let r = ts
        .req("GET", "/api/waiting-rooms", Some(&staff), None)
        .await;
    assert_eq!(r.body[0]["doctor_in"], true, "{:?}", r.body);
    assert_eq!(r.body[0]["in_call"][0]["role"], "doctor");
    assert_eq!(
        ts.audit(AuditAction::WaitingRoomsViewed).await.len(),
        before + 2
    );

    // Another doctor's overview does not include this room; the appointment's own
    // doctor's does.
    let r = ts.req("GET", "/api/waiting-rooms", Some(&doc2), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, json!([]));
    let r = ts
        .req("GET", "/api/waiting-rooms", Some(&doctor), None)
        .await;
    assert_eq!(r.body.as_array().unwrap().len(), 1);
    // Patients have no overview.
    let r = ts
        .req("GET", "/api/waiting-rooms", Some(&patient), None)
        .await;
    assert_eq!(r.status, 403);
    ts.expect_audit(
        AuditAction::WaitingRoomsViewed,
        &ts.principal(Role::Patient),
        Some("not allowed for this role"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_and_cancelling_follow_the_booking_policy() {
    let ts = server().await;
    let staff = ts.login_demo(Role::Staff).await;
    let admin = ts.login_demo(Role::Admin).await;
    let doctor = ts.login_demo(Role::Doctor).await;
    let demo_doctor = ts.demo.account(Role::Doctor).unwrap().id;
    let (doc2, pw, secret) = ts.add_account("doc2", Role::Doctor).await;
    let doc2_token = ts.login("doc2", &pw, secret.as_deref()).await;
    let (pat2, ppw, _) = ts.add_account("pat2", Role::Patient).await;
    let pat2_token = ts.login("pat2", &ppw, None).await;
    let start = now().secs() + 7200;
    let r = ts
        .req(
            "POST",
            "/api/appointments",
            Some(&staff),
            Some(json!({"doctor": doc2.0, "patient": pat2.0, "start": start, "duration_min": 30})),
        )
        .await;
    let id = r.body["id"].as_i64().unwrap();
    let path = format!("/api/appointments/{id}");
    let later = json!({"start": start + 3600});

    // Not yours, wrong role: 403, audited with the reason.
    for (token, actor, why) in [
        (&doctor, demo_doctor.to_string(), "move:not_yours"),
        (&pat2_token, pat2.to_string(), "move:role"),
        (&admin, ts.principal(Role::Admin), "move:role"),
    ] {
        let r = ts
            .req("PATCH", &path, Some(token), Some(later.clone()))
            .await;
        assert_eq!(r.status, 403, "{actor}: {:?}", r.body);
        ts.expect_audit(AuditAction::AppointmentChangeRefused, &actor, Some(why))
            .await;
    }
    // An unknown appointment looks like someone else's.
    let r = ts
        .req(
            "PATCH",
            "/api/appointments/987654",
            Some(&staff),
            Some(later.clone()),
        )
        .await;
    assert_eq!(r.status, 403);

    // Its doctor moves it; the entry says from and to.
    let r = ts
        .req("PATCH", &path, Some(&doc2_token), Some(later.clone()))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["start"], start + 3600);
    let moved = ts
        .expect_audit(
            AuditAction::AppointmentMoved,
            &doc2.to_string(),
            Some(&format!("start:{start}->{}", start + 3600)),
        )
        .await;
    assert_eq!(moved.event.patient.as_deref(), Some(&*pat2.to_string()));
    // A doctor cannot hand the appointment to another doctor (the booking policy).
    let r = ts
        .req(
            "PATCH",
            &path,
            Some(&doc2_token),
            Some(json!({"doctor": demo_doctor.0})),
        )
        .await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    ts.expect_audit(
        AuditAction::AppointmentChangeRefused,
        &doc2.to_string(),
        Some("move:booking:not_self"),
    )
    .await;
    // Staff can, and can change the length; nor may it go to a non-doctor.
    let r = ts
        .req(
            "PATCH",
            &path,
            Some(&staff),
            Some(json!({"doctor": pat2.0})),
        )
        .await;
    assert_eq!(r.status, 403, "{:?}", r.body);
    let r = ts
        .req(
            "PATCH",
            &path,
            Some(&staff),
            Some(json!({"doctor": demo_doctor.0, "duration_min": 45})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["doctor"], demo_doctor.0);
    assert_eq!(r.body["duration_s"], 2700);
    // doc2 lost it, so it is no longer doc2's to move.
    let r = ts
        .req("PATCH", &path, Some(&doc2_token), Some(later.clone()))
        .await;
    assert_eq!(r.status, 403);

    // Bad changes.
    for (body, want) in [
        (json!({}), 400),
        (json!({"start": now().secs() - 60}), 400),
        (json!({"duration_min": 1000}), 400),
        (json!({"duration_min": 1}), 400),
        (json!({"room": 4}), 422),
    ] {
        let r = ts
            .req("PATCH", &path, Some(&staff), Some(body.clone()))
            .await;
        assert_eq!(r.status, want, "{body}: {:?}", r.body);
    }
    // One that has started stays as it was.
    let demo = format!("/api/appointments/{}", ts.appointment().0);
    let r = ts
        .req("PATCH", &demo, Some(&staff), Some(later.clone()))
        .await;
    assert_eq!(r.status, 409, "{:?}", r.body);
    let r = ts
        .req("POST", &format!("{demo}/cancel"), Some(&staff), None)
        .await;
    assert_eq!(r.status, 409, "{:?}", r.body);
    ts.expect_audit(
        AuditAction::AppointmentChangeRefused,
        &ts.principal(Role::Staff),
        Some("cancel:started"),
    )
    .await;

    // Cancelling: patients may not; staff may, once.
    let cancel = format!("{path}/cancel");
    let r = ts.req("POST", &cancel, Some(&pat2_token), None).await;
    assert_eq!(r.status, 403);
    let r = ts.req("POST", &cancel, Some(&staff), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["status"], "cancelled");
    let c = ts
        .expect_audit(
            AuditAction::AppointmentCancelled,
            &ts.principal(Role::Staff),
            None,
        )
        .await;
    assert_eq!(
        c.event.target.as_deref(),
        Some(&*format!("appointment:{id}"))
    );
    let r = ts.req("POST", &cancel, Some(&staff), None).await;
    assert_eq!(r.status, 409);
    let r = ts.req("PATCH", &path, Some(&staff), Some(later)).await;
    assert_eq!(r.status, 409);
    // The patient cannot join a cancelled consultation.
    let r = ts
        .req("GET", "/api/appointments", Some(&pat2_token), None)
        .await;
    assert_eq!(r.body[0]["status"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_appointment_with_someone_waiting_is_not_moved_or_cancelled() {
    let ts = server().await;
    let staff = ts.login_demo(Role::Staff).await;
    let (doc2, _, _) = ts.add_account("doc2", Role::Doctor).await;
    let (pat2, ppw, _) = ts.add_account("pat2", Role::Patient).await;
    let pat2_token = ts.login("pat2", &ppw, None).await;
    // Starts in ten minutes: inside the join grace, so the patient can wait already.
    let r = ts
        .req(
            "POST",
            "/api/appointments",
            Some(&staff),
            Some(json!({"doctor": doc2.0, "patient": pat2.0, "start": now().secs() + 600, "duration_min": 15})),
        )
        .await;
    let id = r.body["id"].as_i64().unwrap();
    let mut ws = ts.ws_authed(&pat2_token).await;
    ws.send(json!({"type": "join", "consultation": id})).await;
    assert_eq!(ws.recv().await["type"], "waiting");
    let r = ts
        .req(
            "POST",
            &format!("/api/appointments/{id}/cancel"),
            Some(&staff),
            None,
        )
        .await;
    assert_eq!(r.status, 409, "{:?}", r.body);
    ts.expect_audit(
        AuditAction::AppointmentChangeRefused,
        &ts.principal(Role::Staff),
        Some("cancel:in_progress"),
    )
    .await;
    // Once the patient has left, it can be moved.
    ws.send(json!({"type": "leave"})).await;
    ws.recv_type("left").await;
    let r = ts
        .req(
            "PATCH",
            &format!("/api/appointments/{id}"),
            Some(&staff),
            Some(json!({"start": now().secs() + 3600})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patients_are_found_by_name_or_birth_date_without_opening_the_table() {
    let ts = server().await;
    let staff = ts.login_demo(Role::Staff).await;
    let admin = ts.login_demo(Role::Admin).await;
    let doctor = ts.login_demo(Role::Doctor).await;
    let patient = ts.login_demo(Role::Patient).await;
    let staff_id = ts.principal(Role::Staff);

    let mut made = Vec::new();
    let mut links = Vec::new();
    for (name, dob) in [
        ("Zoë Müller-Lüdenscheidt", "1975-03-09"),
        ("Zoe Miller", "1975-03-09"),
        ("Anna Müller", "1990-01-01"),
    ] {
        let r = ts
            .req(
                "POST",
                "/api/patients",
                Some(&staff),
                Some(json!({"display_name": name, "date_of_birth": dob, "contact": "+1 555 0100"})),
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        assert!(r.body["username"].as_str().unwrap().starts_with("patient-"));
        made.push(r.body["id"].as_i64().unwrap());
        links.push(r.body["activation_token"].as_str().unwrap().to_owned());
        assert!(r.body["expires_at"].as_i64().unwrap() > now().0);
        let created = ts
            .expect_audit(AuditAction::PatientCreated, &staff_id, None)
            .await;
        assert_eq!(created.event.outcome.as_str(), "success");
    }
    // The new patient activates with the link: sets a password and is in.
    let r = ts
        .req(
            "POST",
            "/api/activation/complete",
            None,
            Some(json!({"token": links[0], "new_password": "a quiet harbour at dawn 47"})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let me = ts
        .req("GET", "/api/me", r.body["token"].as_str(), None)
        .await;
    assert_eq!(me.body["label"], "Zoë Müller-Lüdenscheidt", "{:?}", me.body);
    assert_eq!(me.body["role"], "patient");
    let issued = ts.audit(AuditAction::ActivationIssued).await;
    assert!(issued.iter().any(|e| e.event.actor == staff_id
        && e.event.target.as_deref() == Some(&*format!("account:{}", made[0]))));

    let search = |q: &str| format!("/api/patients?{q}");
    let found = |body: &Value| -> Vec<i64> {
        body.as_array()
            .unwrap_or_else(|| panic!("{body}"))
            .iter()
            .map(|p| p["id"].as_i64().unwrap())
            .collect()
    };
    for (q, want) in [
        ("name=zoe", vec![made[0], made[1]]),
        ("name=ZOË%20m%C3%BCller", vec![made[0]]),
        ("name=muller", vec![made[0], made[2]]),
        ("name=l%C3%BCdenscheidt", vec![made[0]]),
        ("dob=1975-03-09", vec![made[0], made[1]]),
        ("name=muller&dob=1990-01-01", vec![made[2]]),
        ("name=zoe&dob=1990-01-01", vec![]),
        ("name=m", vec![]),
        ("name=nobody", vec![]),
    ] {
        let r = ts.req("GET", &search(q), Some(&staff), None).await;
        assert_eq!(r.status, 200, "{q}: {:?}", r.body);
        assert_eq!(found(&r.body), want, "{q}");
    }
    let r = ts
        .req("GET", &search("name=anna"), Some(&admin), None)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body[0]["label"], "Anna Müller");
    assert_eq!(r.body[0]["date_of_birth"], "1990-01-01");
    // The demo patient has a date of birth too.
    let r = ts
        .req("GET", &search("dob=1980-04-12"), Some(&staff), None)
        .await;
    assert_eq!(r.body[0]["label"], "Demo Patient", "{:?}", r.body);

    // Each patient shown is an entry naming them; the words searched for are not
    // recorded anywhere in the log.
    let searched = ts.audit(AuditAction::PatientSearched).await;
    assert!(
        searched
            .iter()
            .any(|e| e.event.patient.as_deref() == Some(&*format!("account:{}", made[2])))
    );
    for e in &searched {
        let d = e.event.detail.as_deref().unwrap_or("");
        assert!(
            !d.contains("zoe") && !d.contains("1975") && !d.contains("muller"),
            "{d}"
        );
    }
    assert!(
        searched
            .iter()
            .any(|e| e.event.detail.as_deref() == Some("name:no_match"))
    );

    // Doctors, patients and guests do not use the register; refusals are audited.
    for (token, who) in [(&doctor, Role::Doctor), (&patient, Role::Patient)] {
        let r = ts.req("GET", &search("name=zoe"), Some(token), None).await;
        assert_eq!(r.status, 403, "{who:?}");
        let r = ts
            .req(
                "POST",
                "/api/patients",
                Some(token),
                Some(json!({"display_name": "X Y", "date_of_birth": "2000-01-01"})),
            )
            .await;
        assert_eq!(r.status, 403, "{who:?}");
        ts.expect_audit(
            AuditAction::PatientSearched,
            &ts.principal(who),
            Some("not allowed for this role"),
        )
        .await;
        ts.expect_audit(
            AuditAction::PatientCreated,
            &ts.principal(who),
            Some("not allowed for this role"),
        )
        .await;
    }
    // Bad input.
    for q in [
        "",
        "dob=1975-02-30",
        "dob=09.03.1975",
        "name=%20-%20",
        "what=zoe",
    ] {
        let r = ts.req("GET", &search(q), Some(&staff), None).await;
        assert_eq!(r.status, 400, "{q}: {:?}", r.body);
    }
    for body in [
        json!({"display_name": "A B", "date_of_birth": "1975-13-01"}),
        json!({"display_name": "", "date_of_birth": "1975-01-01"}),
        json!({"display_name": "A B", "date_of_birth": "1975-01-01", "username": "no spaces allowed"}),
    ] {
        let r = ts
            .req("POST", "/api/patients", Some(&staff), Some(body.clone()))
            .await;
        assert_eq!(r.status, 400, "{body}: {:?}", r.body);
    }
    let r = ts
        .req(
            "POST",
            "/api/patients",
            Some(&staff),
            Some(json!({"display_name": "A B", "date_of_birth": "1975-01-01", "username": "patient"})),
        )
        .await;
    assert_eq!(r.status, 409, "a taken username: {:?}", r.body);

    // At rest: no date of birth or name word in clear, in the accounts or the index.
    let db_url = format!("sqlite://{}", ts.data_dir.join("confide.sqlite3").display());
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&db_url).await.unwrap();
    let mut blobs: Vec<Vec<u8>> = Vec::new();
    for q in [
        "SELECT date_of_birth FROM accounts WHERE date_of_birth IS NOT NULL",
        "SELECT display_name FROM accounts",
        "SELECT mac FROM patient_index",
    ] {
        for v in sqlx::query_scalar::<_, Vec<u8>>(q)
            .fetch_all(&pool)
            .await
            .unwrap()
        {
            blobs.push(v);
        }
    }
    assert!(blobs.len() > 10);
    for needle in [
        &b"1975-03-09"[..],
        b"zoe",
        b"Zo\xc3\xab",
        b"muller",
        b"1990",
    ] {
        assert!(
            !blobs
                .iter()
                .any(|b| b.windows(needle.len()).any(|w| w == needle)),
            "{needle:?} in clear"
        );
    }
    pool.close().await;

    // A data key rotation rebuilds the index under the new key: the old rows are
    // gone and a keyring with only the new key finds the patients.
    let store = ts.store().clone();
    let master =
        confide_server::master_key(&confide_server::Config::new(ts.data_dir.clone())).unwrap();
    let new_id = rotate_data_key(store.as_ref(), &master, now())
        .await
        .unwrap();
    let ring = load_keyring(store.as_ref(), &master, now()).await.unwrap();
    assert_eq!(ring.active_id(), new_id);
    let term = confide_server::confide_signaling::blind_index::name_term("zoe");
    let (key, mac) = ring.blind_index(&term);
    let hits = store.search_patient_index(key, &[mac], 50).await.unwrap();
    assert_eq!(
        hits.iter().map(|a| a.0).collect::<Vec<_>>(),
        vec![made[0], made[1]]
    );
    let old = ts.running.state.keyring.blind_index(&term);
    assert_ne!(old.0, key);
    assert!(
        store
            .search_patient_index(old.0, &[old.1], 50)
            .await
            .unwrap()
            .is_empty(),
        "rows under the old key are dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_booking_form_lists_active_doctors_to_staff_and_admins_only() {
    let ts = server().await;
    let staff = ts.login_demo(Role::Staff).await;
    let admin = ts.login_demo(Role::Admin).await;
    let (doc2, _, _) = ts.add_account("doc2", Role::Doctor).await;
    let (gone, _, _) = ts.add_account("gone", Role::Doctor).await;
    ts.store().set_account_disabled(gone, true).await.unwrap();
    for token in [&staff, &admin] {
        let r = ts.req("GET", "/api/doctors", Some(token), None).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let ids: Vec<i64> = r
            .body
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_i64().unwrap())
            .collect();
        let demo = ts.demo.account(Role::Doctor).unwrap().id.0;
        assert!(ids.contains(&demo) && ids.contains(&doc2.0), "{ids:?}");
        assert!(!ids.contains(&gone.0), "a disabled doctor is not offered");
    }
    ts.expect_audit(AuditAction::DoctorsListed, &ts.principal(Role::Staff), None)
        .await;
    for role in [Role::Doctor, Role::Patient] {
        let t = ts.login_demo(role).await;
        let r = ts.req("GET", "/api/doctors", Some(&t), None).await;
        assert_eq!(r.status, 403, "{role:?}");
        ts.expect_audit(
            AuditAction::DoctorsListed,
            &ts.principal(role),
            Some("not allowed for this role"),
        )
        .await;
    }
}
