//! Consultations through a real server (TLS signaling, SFU media on loopback UDP) with
//! the native client. Two parties: both sides get each other's keys, agree on the
//! safety code, and open each other's frames; a forged key message is dropped without
//! ending the call. Three parties: an invited guest joins and leaves, the others'
//! sender keys ratchet and rotate, frames keep opening. Bounded in time and traffic; no
//! timing asserts.

use std::sync::Arc;
use std::time::Duration;

use confide_client::consultation::Happening;
use confide_client::driver::SlotStatus;
use confide_client::signaling::Method;
use confide_client::{Credentials, Endpoint, MediaLoop, Participant, SlotId, Traffic};
use confide_server::confide_signaling::model::Role;
use confide_server::{Config, Running, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_party_keys_safety_code_and_frames() {
    two_party(true).await;
}

/// The same consultation with `confide serve --media-bwe off`: no estimation or pacing
/// on the SFU legs, frames still arrive and open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_party_with_estimation_and_pacing_off() {
    two_party(false).await;
}

/// A demo server (one SFU worker) in a temporary directory, and an endpoint to it. The
/// directory lives as long as the returned guard.
async fn demo_server(bwe: bool) -> (tempfile::TempDir, Running, Endpoint) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::new(dir.path().join("data"));
    cfg.bind = "127.0.0.1:0".parse().unwrap();
    cfg.demo = true;
    cfg.static_dir = Some(dir.path().join("no-static"));
    cfg.media.workers = 1;
    cfg.media.bwe = bwe;
    let server = start(cfg).await.unwrap();
    let ep = Endpoint::new("localhost", server.addr, Some(&server.cert_der)).unwrap();
    (dir, server, ep)
}

/// The demo account of `role`.
fn creds(server: &Running, role: Role) -> Credentials {
    let a = server.demo.as_ref().unwrap().account(role).unwrap();
    Credentials {
        username: a.username.clone(),
        password: a.password.clone(),
        totp_secret: a.totp_secret.clone(),
    }
}

/// Light synthetic traffic: enough frames to check, little CPU.
fn light_traffic(video_bps: u64) -> Traffic {
    Traffic {
        video_bps,
        fps: 10,
        audio_pps: 20,
        ..Traffic::default()
    }
}

async fn two_party(bwe: bool) {
    let (_dir, server, ep) = demo_server(bwe).await;
    let demo = server.demo.clone().unwrap();
    let creds = |role| creds(&server, role);
    // A wrong TOTP secret is refused like a wrong password.
    let mut bad = creds(Role::Doctor);
    bad.totp_secret = Some("JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP".into());
    assert!(
        ep.login(&bad.username, &bad.password, bad.totp_secret.as_deref())
            .await
            .is_err()
    );

    let media = Arc::new(MediaLoop::start("client-test-media", [127, 0, 0, 1].into()).unwrap());
    let traffic = light_traffic(150_000);
    let appt = demo.appointment_id.0;
    let mut doctor = Participant::join(&ep, &creds(Role::Doctor), appt, media.clone())
        .await
        .unwrap();
    doctor.start_media(traffic).await.unwrap();
    let mut patient = Participant::join(&ep, &creds(Role::Patient), appt, media.clone())
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

    // Both computed the same 20-digit code from their own view of the keys.
    let dc = doctor.safety[&patient.you()].clone();
    let pc = patient.safety[&doctor.you()].clone();
    assert_eq!(dc, pc);
    assert_eq!(dc.chars().filter(char::is_ascii_digit).count(), 20);

    // Frames flow both ways and open; serve signaling meanwhile (SFU renegotiation).
    let (ds, ps) = (doctor.slot().unwrap(), patient.slot().unwrap());
    let m = media.clone();
    let flowing = async move {
        for _ in 0..3000 {
            let (a, b) = (m.status(ds).await.unwrap(), m.status(ps).await.unwrap());
            if a.frames_opened > 5 && b.frames_opened > 5 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("frames did not flow");
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serve = tokio::spawn(async move {
        patient
            .serve_until(async {
                let _ = stop_rx.await;
            })
            .await
            .unwrap();
        patient
    });
    doctor.serve_until(flowing).await.unwrap();
    let _ = stop_tx.send(());
    let patient = serve.await.unwrap();
    let stats = media.stats(false).await.unwrap();
    assert!(stats.frames_received() > 10);
    assert_eq!(stats.open_failures, 0);

    // A garbled key message from the peer is dropped: the loop refuses it, the call
    // goes on.
    assert!(
        media
            .e2ee(ds, patient.you(), "AgAAAA==".into())
            .await
            .is_err()
    );
    assert!(!media.status(ds).await.unwrap().dead);

    let ended = tokio::spawn(patient.wait_ended(Duration::from_secs(20)));
    doctor.end().await.unwrap();
    ended.await.unwrap().unwrap();
}

/// Serves every participant's signaling (SFU renegotiations, keys, joins) until `done`
/// resolves, and hands them back.
async fn serve_all(
    mut parts: Vec<Participant>,
    done: impl std::future::Future<Output = ()>,
) -> Vec<Participant> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut last = parts.pop().unwrap();
    let tasks: Vec<_> = parts
        .into_iter()
        .map(|mut p| {
            let mut rx = stop_rx.clone();
            tokio::spawn(async move {
                p.serve_until(async move {
                    let _ = rx.wait_for(|stop| *stop).await;
                })
                .await
                .unwrap();
                p
            })
        })
        .collect();
    last.serve_until(done).await.unwrap();
    let _ = stop_tx.send(true);
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out.push(last);
    out
}

/// Resolves once `cond` holds for the slots' statuses (panics after 30 s).
async fn until_status(
    media: Arc<MediaLoop>,
    slots: Vec<SlotId>,
    what: &'static str,
    cond: impl Fn(&[SlotStatus]) -> bool,
) {
    for _ in 0..3000 {
        let mut st = Vec::new();
        for s in &slots {
            st.push(media.status(*s).await.unwrap());
        }
        if cond(&st) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}");
}

/// Doctor, patient and an invited guest (an interpreter, say). The guest's admission
/// ratchets the others' sender keys (so it cannot read what was sent before it came);
/// everyone opens everyone's frames; when the guest leaves, doctor and patient rotate
/// to keys of a new generation the guest never had and go on opening each other's
/// frames. The browser does the same (`e2ee-worker.js` `peerJoined`/`peerLeft`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_party_guest_joins_and_leaves_keys_ratchet_and_rotate() {
    let (_dir, server, ep) = demo_server(true).await;
    let media = Arc::new(MediaLoop::start("client-test-media3", [127, 0, 0, 1].into()).unwrap());
    let traffic = light_traffic(100_000);
    let appt = server.demo.as_ref().unwrap().appointment_id.0;

    // One login for the doctor: its token also creates the invite.
    let d = creds(&server, Role::Doctor);
    let doctor_token = ep
        .login(&d.username, &d.password, d.totp_secret.as_deref())
        .await
        .unwrap();
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
    let parts = serve_all(
        vec![doctor, patient],
        until_status(media.clone(), vec![ds, ps], "two-party frames", |s| {
            s.iter().all(|s| s.frames_opened > 5)
        }),
    )
    .await;
    let [mut doctor, patient]: [Participant; 2] = parts.try_into().ok().unwrap();
    let kids = |media: Arc<MediaLoop>| async move {
        (
            media.status(ds).await.unwrap().sender_kid,
            media.status(ps).await.unwrap().sender_kid,
        )
    };
    let kids_two = kids(media.clone()).await;

    // The guest: an invite from the doctor, redeemed with the current terms accepted.
    let inv = ep
        .request(
            Method::POST,
            &format!("/api/appointments/{appt}/invites"),
            Some(&doctor_token),
            Some(&serde_json::json!({})),
        )
        .await
        .unwrap();
    let terms = ep
        .request(Method::GET, "/api/consent/terms", None, None)
        .await
        .unwrap();
    let redeemed = ep
        .request(
            Method::POST,
            "/api/invites/redeem",
            None,
            Some(&serde_json::json!({
                "invite_token": inv["invite_token"],
                "accept_terms_version": terms["version"],
            })),
        )
        .await
        .unwrap();
    let guest_token = redeemed["token"].as_str().unwrap().to_string();
    let mut guest = Participant::join_with_token(&ep, &guest_token, appt, media.clone())
        .await
        .unwrap();
    let (a, w) = tokio::join!(doctor.admit(1), guest.wait_admitted());
    assert_eq!(a.unwrap(), vec![guest.you()]);
    w.unwrap();
    guest.start_media(traffic).await.unwrap();
    let gs = guest.slot().unwrap();
    let opened_before = media.status(gs).await.unwrap().frames_opened;
    let parts = serve_all(
        vec![doctor, patient, guest],
        until_status(
            media.clone(),
            vec![ds, ps, gs],
            "three-party keys and frames",
            move |s| {
                // The guest holds the doctor's and the patient's keys, and opens frames.
                s[2].keyed_peers >= 2 && s[2].frames_opened > opened_before + 10
            },
        ),
    )
    .await;
    let [doctor, patient, guest]: [Participant; 3] = parts.try_into().ok().unwrap();
    let kids_three = kids(media.clone()).await;
    // Both ratcheted: the same generation (KID >> 8), a later step.
    for (two, three) in [(kids_two.0, kids_three.0), (kids_two.1, kids_three.1)] {
        assert_eq!(three >> 8, two >> 8, "a join must ratchet, not rotate");
        assert_ne!(three, two, "no ratchet when the guest came");
    }
    for (name, who) in [("doctor", &doctor), ("patient", &patient)] {
        assert!(
            who.safety.contains_key(&guest.you()),
            "{name} has no safety code with the guest"
        );
    }

    // The guest leaves: the others rotate and keep opening each other's frames.
    let guest_id = guest.you();
    guest.leave().await;
    let opened = (
        media.status(ds).await.unwrap().frames_opened,
        media.status(ps).await.unwrap().frames_opened,
    );
    let parts = serve_all(
        vec![doctor, patient],
        until_status(
            media.clone(),
            vec![ds, ps],
            "two-party frames after the rotation",
            move |s| {
                // Both on a new generation, both opening again.
                s[0].sender_kid >> 8 > kids_three.0 >> 8
                    && s[1].sender_kid >> 8 > kids_three.1 >> 8
                    && s[1].frames_opened > opened.1 + 10
                    && s[0].frames_opened > opened.0 + 10
            },
        ),
    )
    .await;
    let [doctor, patient]: [Participant; 2] = parts.try_into().ok().unwrap();
    assert!(!doctor.peers().any(|p| p == guest_id));
    assert!(!patient.peers().any(|p| p == guest_id));
    let stats = media.stats(false).await.unwrap();
    assert_eq!(stats.open_failures, 0);
    let ended = tokio::spawn(patient.wait_ended(Duration::from_secs(20)));
    doctor.end().await.unwrap();
    ended.await.unwrap().unwrap();
}
