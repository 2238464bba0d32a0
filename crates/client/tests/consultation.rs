//! Consultations through a real server (TLS signaling, SFU media on loopback UDP) with
//! the native client on the MLS key layer. Two parties: the doctor's device adds the
//! patient's after checking it in the key directory's log, both compute the same
//! safety code from the two device keys, open each other's frames and exchange chat as
//! MLS application messages. Three parties: an invited guest is added (a new epoch
//! every member moves to), then leaves and is removed (another epoch), and frames keep
//! opening. Bounded in time and traffic; no timing asserts.

mod common;

use std::time::Duration;

use confide_client::signaling::Method;
use confide_client::{Happening, Participant};
use confide_server::confide_signaling::model::Role;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_party_keys_safety_code_and_frames() {
    two_party_flow(true).await;
}

/// The same consultation with `confide serve --media-bwe off`: no estimation or pacing
/// on the SFU legs, frames still arrive and open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_party_with_estimation_and_pacing_off() {
    two_party_flow(false).await;
}

async fn two_party_flow(bwe: bool) {
    let (_dir, server, ep) = demo_server(bwe).await;
    let demo = server.demo.clone().unwrap();
    // A wrong TOTP secret is refused like a wrong password.
    let mut bad = creds(&server, Role::Doctor);
    bad.totp_secret = Some("JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP".into());
    assert!(
        ep.login(&bad.username, &bad.password, bad.totp_secret.as_deref())
            .await
            .is_err()
    );

    let media = media("client-test-media");
    let traffic = light_traffic(150_000);
    let appt = demo.appointment_id.0;
    let mut doctor = Participant::join(&ep, &creds(&server, Role::Doctor), appt, media.clone())
        .await
        .unwrap();
    doctor.start_media(traffic).await.unwrap();
    let mut patient = Participant::join(&ep, &creds(&server, Role::Patient), appt, media.clone())
        .await
        .unwrap();
    let (a, w) = tokio::join!(doctor.admit(1), patient.wait_admitted());
    assert_eq!(a.unwrap(), vec![patient.you()]);
    w.unwrap();
    patient.start_media(traffic).await.unwrap();
    let keyed = |h: &[Happening]| h.iter().any(|h| matches!(h, Happening::Keyed { .. }));
    let (d, p) = tokio::join!(
        doctor.run_until(Duration::from_secs(30), keyed),
        patient.run_until(Duration::from_secs(30), keyed)
    );
    d.unwrap();
    p.unwrap();

    // One group, the same epoch, a roster of exactly the two devices on both sides.
    assert_eq!(doctor.epoch(), Some(1));
    assert_eq!(patient.epoch(), Some(1));
    for who in [&doctor, &patient] {
        let mut names: Vec<_> = who.roster().into_iter().map(|m| m.name).collect();
        names.sort();
        let mut want = vec![doctor.device().clone(), patient.device().clone()];
        want.sort();
        assert_eq!(names, want);
    }
    // Both computed the same 30-digit code from the two device keys.
    let dc = doctor.safety_code(patient.you()).unwrap();
    let pc = patient.safety_code(doctor.you()).unwrap();
    assert_eq!(dc, pc);
    assert_eq!(dc.chars().filter(char::is_ascii_digit).count(), 30);
    assert!(doctor.warnings().is_empty() && patient.warnings().is_empty());

    // Chat is an MLS application message, both ways.
    doctor.send_chat("How is the rash today?").await.unwrap();
    let chat = |h: &[Happening]| h.iter().any(|h| matches!(h, Happening::Chat { .. }));
    let got = patient
        .run_until(Duration::from_secs(20), chat)
        .await
        .unwrap();
    let line = "How is the rash today?";
    assert!(got.iter().any(|h| matches!(
        h,
        Happening::Chat { from, sender, text }
            if *from == doctor.you() && sender == doctor.device() && text == line
    )));
    patient.send_chat("Better, thank you.").await.unwrap();
    let got = doctor
        .run_until(Duration::from_secs(20), chat)
        .await
        .unwrap();
    assert!(
        got.iter()
            .any(|h| matches!(h, Happening::Chat { text, .. } if text == "Better, thank you."))
    );

    // Frames flow both ways and open; serve signaling meanwhile (SFU renegotiation).
    let (ds, ps) = (doctor.slot().unwrap(), patient.slot().unwrap());
    let (parts, _) = serve_all(
        vec![doctor, patient],
        until_status(media.clone(), vec![ds, ps], "frames both ways", |s| {
            s.iter().all(|s| s.frames_opened > 5 && s.keyed_peers == 1)
        }),
    )
    .await;
    let [doctor, patient]: [Participant; 2] = parts.try_into().ok().unwrap();
    let stats = media.stats(false).await.unwrap();
    assert!(stats.frames_received() > 10);
    assert_eq!(stats.open_failures, 0);
    // Both seal under epoch 1, each under its own leaf.
    let (sd, sp) = (
        media.status(ds).await.unwrap(),
        media.status(ps).await.unwrap(),
    );
    assert_eq!((sd.epoch, sp.epoch), (Some(1), Some(1)));
    assert_ne!(sd.sender_kid, sp.sender_kid);
    assert!(!sd.dead && !sp.dead);

    let ended = tokio::spawn(patient.wait_ended(Duration::from_secs(20)));
    doctor.end().await.unwrap();
    ended.await.unwrap().unwrap();
}

/// Doctor, patient and an invited guest (an interpreter, say). The guest's admission is
/// an Add commit: every member moves to a new epoch and the guest gets only that
/// epoch's key. When the guest leaves, the doctor's device commits its Remove: doctor
/// and patient move on to an epoch the guest never had and go on opening each other's
/// frames. The browser follows the same steps (`docs/keys.md`). At the end the doctor's
/// temporary device is revoked in the directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_party_guest_joins_and_leaves_keys_follow_the_group() {
    let (_dir, server, ep) = demo_server(true).await;
    let media = media("client-test-media3");
    let traffic = light_traffic(100_000);
    let appt = server.demo.as_ref().unwrap().appointment_id.0;

    // One login for the doctor: its token also creates the invite.
    let doctor_token = login(&ep, &server, Role::Doctor).await;
    let mut doctor = Participant::join_with_token(&ep, &doctor_token, appt, media.clone())
        .await
        .unwrap();
    doctor.start_media(traffic).await.unwrap();
    let mut patient = Participant::join(&ep, &creds(&server, Role::Patient), appt, media.clone())
        .await
        .unwrap();
    let (a, w) = tokio::join!(doctor.admit(1), patient.wait_admitted());
    a.unwrap();
    w.unwrap();
    patient.start_media(traffic).await.unwrap();
    let (ds, ps) = (doctor.slot().unwrap(), patient.slot().unwrap());
    let (parts, _) = serve_all(
        vec![doctor, patient],
        until_status(media.clone(), vec![ds, ps], "two-party frames", |s| {
            s.iter().all(|s| s.frames_opened > 5 && s.epoch == Some(1))
        }),
    )
    .await;
    let [mut doctor, patient]: [Participant; 2] = parts.try_into().ok().unwrap();

    let gt = guest_token(&ep, &doctor_token, appt).await;
    let mut guest = Participant::join_with_token(&ep, &gt, appt, media.clone())
        .await
        .unwrap();
    let (a, w) = tokio::join!(doctor.admit(1), guest.wait_admitted());
    assert_eq!(a.unwrap(), vec![guest.you()]);
    w.unwrap();
    guest.start_media(traffic).await.unwrap();
    let gs = guest.slot().unwrap();
    let (parts, _) = serve_all(
        vec![doctor, patient, guest],
        until_status(
            media.clone(),
            vec![ds, ps, gs],
            "three-party keys and frames",
            |s| {
                s.iter()
                    .all(|s| s.epoch == Some(2) && s.keyed_peers == 2 && s.sending)
                    && s[2].frames_opened > 10
            },
        ),
    )
    .await;
    let [doctor, patient, guest]: [Participant; 3] = parts.try_into().ok().unwrap();
    assert_eq!(patient.roster().len(), 3);
    for (name, who) in [("doctor", &doctor), ("patient", &patient)] {
        assert!(
            who.safety_code(guest.you()).is_some(),
            "{name} has no safety code with the guest"
        );
        assert!(who.warnings().is_empty(), "{name}: {:?}", who.warnings());
    }
    assert_eq!(
        guest.safety_code(doctor.you()),
        doctor.safety_code(guest.you())
    );

    // The guest leaves: the doctor's device removes its leaf; the others move to
    // epoch 3 and keep opening each other's frames.
    let guest_id = guest.you();
    guest.leave().await;
    let opened = (
        media.status(ds).await.unwrap().frames_opened,
        media.status(ps).await.unwrap().frames_opened,
    );
    let (parts, _) = serve_all(
        vec![doctor, patient],
        until_status(
            media.clone(),
            vec![ds, ps],
            "two-party frames after the remove",
            move |s| {
                s.iter().all(|s| s.epoch == Some(3) && s.keyed_peers == 1)
                    && s[1].frames_opened > opened.1 + 10
                    && s[0].frames_opened > opened.0 + 10
            },
        ),
    )
    .await;
    let [doctor, patient]: [Participant; 2] = parts.try_into().ok().unwrap();
    assert!(!doctor.peers().any(|p| p == guest_id));
    assert!(!patient.peers().any(|p| p == guest_id));
    assert_eq!(patient.roster().len(), 2);
    let stats = media.stats(false).await.unwrap();
    assert_eq!(stats.open_failures, 0);
    let device = doctor.device().clone();
    let ended = tokio::spawn(patient.wait_ended(Duration::from_secs(20)));
    doctor.end().await.unwrap();
    ended.await.unwrap().unwrap();

    // A temporary device is revoked when its consultation is over: the directory
    // still lists it, as revoked, and would never hand it out again.
    let answer = ep
        .request(
            Method::GET,
            &format!("/api/directory/{}", device.principal),
            Some(&doctor_token),
            None,
        )
        .await
        .unwrap();
    let listed = answer["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device"] == device.device.to_string())
        .unwrap();
    assert_eq!(listed["status"], "revoked", "{listed}");
}
