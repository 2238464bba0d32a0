//! Booking follows the care relationship: a doctor books only patients they already
//! treat, and every refusal gives the same answer, so a doctor cannot probe which
//! account ids are patients.

mod common;

use common::*;
use confide_server::confide_signaling::audit::AuditAction;
use confide_server::confide_signaling::http::now;
use confide_server::confide_signaling::model::Role;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_doctor_books_only_known_patients_and_refusals_look_alike() {
    let ts = server().await;
    let (doc2, pw, secret) = ts.add_account("doc2", Role::Doctor).await;
    let doctor = ts.login("doc2", &pw, secret.as_deref()).await;
    let (pat2, _, _) = ts.add_account("pat2", Role::Patient).await;
    let staff_member = ts.demo.account(Role::Staff).unwrap().id;
    let book = |patient: i64| json!({"doctor": doc2.0, "patient": patient, "start": now().secs(), "duration_min": 15});

    // A patient this doctor never saw, an account that is not a patient, an id that
    // names nobody: one status, one body.
    let mut answers = Vec::new();
    for (patient, detail) in [
        (pat2.0, "no_relationship"),
        (staff_member.0, "patient"),
        (987_654, "patient"),
    ] {
        let r = ts
            .req(
                "POST",
                "/api/appointments",
                Some(&doctor),
                Some(book(patient)),
            )
            .await;
        answers.push((r.status, r.body));
        ts.expect_audit(
            AuditAction::AppointmentBookRefused,
            &doc2.to_string(),
            Some(detail),
        )
        .await;
    }
    assert_eq!(answers[0].0, 403, "{:?}", answers[0].1);
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:#?}");

    // Staff start the relationship with a first visit; then the doctor books the next.
    let staff = ts.login_demo(Role::Staff).await;
    let r = ts
        .req(
            "POST",
            "/api/appointments",
            Some(&staff),
            Some(book(pat2.0)),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let r = ts
        .req(
            "POST",
            "/api/appointments",
            Some(&doctor),
            Some(book(pat2.0)),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);

    // The relationship is the doctor's own: another doctor still cannot book pat2.
    let demo_doctor = ts.login_demo(Role::Doctor).await;
    let demo_doctor_id = ts.demo.account(Role::Doctor).unwrap().id;
    let r = ts
        .req(
            "POST",
            "/api/appointments",
            Some(&demo_doctor),
            Some(json!({"doctor": demo_doctor_id.0, "patient": pat2.0,
                        "start": now().secs(), "duration_min": 15})),
        )
        .await;
    assert_eq!((r.status, &r.body), (answers[0].0, &answers[0].1));
}
