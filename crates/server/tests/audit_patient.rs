//! Entries carry the patient an action touched (issue: audit trail, item 4): listing
//! appointments records each appointment listed with its patient, so the per-patient
//! access report (`confide audit report`) shows a staff member who listed the
//! schedule, and booking, inviting and joining name the patient too.

mod common;

use common::*;
use confide_server::confide_signaling::audit::AuditAction;
use confide_server::confide_signaling::model::Role;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staff_listing_shows_in_each_listed_patients_access_report() {
    let s = server().await;
    let staff = s.login_demo(Role::Staff).await;
    let staff_id = s.principal(Role::Staff);
    let patient = s.principal(Role::Patient);
    let appt = s.appointment();

    let r = s.req("GET", "/api/appointments", Some(&staff), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let listed = s.audit(AuditAction::AppointmentsListed).await;
    let mine = listed
        .iter()
        .find(|e| e.event.actor == staff_id && e.event.target.as_deref() == Some(&appt.to_string()))
        .unwrap_or_else(|| panic!("no listing entry for {appt}: {listed:?}"));
    assert_eq!(mine.event.patient.as_deref(), Some(patient.as_str()));

    // The report, through the binary, as an auditor runs it.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_confide"))
        .args([
            "audit",
            "report",
            "--patient",
            &patient,
            "--from",
            "2000-01-01",
            "--to",
            "2200-01-01",
            "--json",
        ])
        .env("CONFIDE_DATA_DIR", &s.data_dir)
        .env_remove("CONFIDE_MASTER_KEY")
        .env_remove("CONFIDE_MASTER_KEY_FILE")
        .env_remove("CONFIDE_DATABASE_URL")
        .env_remove("CONFIDE_AUDIT_KEY_FILE")
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["actor"] == staff_id.as_str())
        .unwrap_or_else(|| panic!("the staff member is not in the report:\n{stdout}"));
    assert!(
        line["actions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "appointments_listed"),
        "{line}"
    );

    // An invite names the appointment's patient as well.
    let doctor = s.login_demo(Role::Doctor).await;
    let _ = s.guest(&doctor).await;
    let invites = s.audit(AuditAction::InviteCreated).await;
    assert!(
        invites
            .iter()
            .any(|e| e.event.patient.as_deref() == Some(patient.as_str())),
        "{invites:?}"
    );
}
