//! A two-party consultation through a real server (TLS signaling, SFU media on loopback
//! UDP) with the native client: both sides get each other's keys, agree on the safety
//! code, and open each other's frames; a forged key message is dropped without ending
//! the call. Bounded in time and traffic; no timing asserts.

use std::sync::Arc;
use std::time::Duration;

use confide_client::consultation::Happening;
use confide_client::{Credentials, Endpoint, MediaLoop, Participant, Traffic};
use confide_server::confide_signaling::model::Role;
use confide_server::{Config, start};

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

async fn two_party(bwe: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::new(dir.path().join("data"));
    cfg.bind = "127.0.0.1:0".parse().unwrap();
    cfg.demo = true;
    cfg.static_dir = Some(dir.path().join("no-static"));
    cfg.media.workers = 1;
    cfg.media.bwe = bwe;
    let server = start(cfg).await.unwrap();
    let demo = server.demo.clone().unwrap();
    let creds = |role| {
        let a = demo.account(role).unwrap();
        Credentials {
            username: a.username.clone(),
            password: a.password.clone(),
            totp_secret: a.totp_secret.clone(),
        }
    };
    let ep = Endpoint::new("localhost", server.addr, Some(&server.cert_der)).unwrap();
    // A wrong TOTP secret is refused like a wrong password.
    let mut bad = creds(Role::Doctor);
    bad.totp_secret = Some("JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP".into());
    assert!(
        ep.login(&bad.username, &bad.password, bad.totp_secret.as_deref())
            .await
            .is_err()
    );

    let media = Arc::new(MediaLoop::start("client-test-media", [127, 0, 0, 1].into()).unwrap());
    let traffic = Traffic {
        video_bps: 150_000,
        fps: 10,
        audio_pps: 20,
        ..Traffic::default()
    };
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
