//! Shared helpers of the client tests: a demo server in this process, its accounts,
//! light traffic, serving several participants' signaling at once, waiting on slot
//! statuses, and the man-in-the-middle proxy ([`proxy`]).
#![allow(dead_code)]

pub mod fake_log;
pub mod proxy;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use confide_client::driver::{RecordedFrame, SlotStatus};
use confide_client::signaling::Method;
use confide_client::{
    Credentials, Endpoint, Happening, KeyConfig, MediaLoop, Participant, SlotId, Traffic,
};
use confide_e2ee::{Codec, GroupFrameDecryptor};
use confide_server::confide_signaling::model::Role;
use confide_server::{Config, Running, start};
use serde_json::json;

/// A demo server (one SFU worker) in a temporary directory, and an endpoint to it. The
/// directory lives as long as the returned guard.
pub async fn demo_server(bwe: bool) -> (tempfile::TempDir, Running, Endpoint) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::new(dir.path().join("data"));
    cfg.bind = "127.0.0.1:0".parse().unwrap();
    cfg.demo = true;
    cfg.static_dir = Some(dir.path().join("no-static"));
    cfg.media.workers = 1;
    cfg.media.bwe = bwe;
    let server = start(cfg).await.unwrap();
    // The demo patient starts without consent; these tests join as one who has given it.
    let demo = server.demo.as_ref().unwrap();
    confide_server::confide_signaling::ops::consent_demo_patient(
        server.state.store.as_ref(),
        demo,
        confide_server::confide_signaling::http::now(),
    )
    .await
    .unwrap();
    let ep = Endpoint::new("localhost", server.addr, Some(&server.cert_der)).unwrap();
    (dir, server, ep)
}

/// The demo account of `role`.
pub fn creds(server: &Running, role: Role) -> Credentials {
    let a = server.demo.as_ref().unwrap().account(role).unwrap();
    Credentials {
        username: a.username.clone(),
        password: a.password.clone(),
        totp_secret: a.totp_secret.clone(),
    }
}

/// A session token of the demo account of `role`.
pub async fn login(ep: &Endpoint, server: &Running, role: Role) -> String {
    let c = creds(server, role);
    ep.login(&c.username, &c.password, c.totp_secret.as_deref())
        .await
        .unwrap()
}

/// Light synthetic traffic: enough frames to check, little CPU.
pub fn light_traffic(video_bps: u64) -> Traffic {
    Traffic {
        video_bps,
        fps: 10,
        audio_pps: 20,
        ..Traffic::default()
    }
}

/// A media loop for a test.
pub fn media(name: &str) -> Arc<MediaLoop> {
    Arc::new(MediaLoop::start(name, [127, 0, 0, 1].into()).unwrap())
}

/// A guest's session token: an invite made with the doctor's token, redeemed with the
/// current terms accepted.
pub async fn guest_token(ep: &Endpoint, doctor_token: &str, appt: i64) -> String {
    let inv = ep
        .request(
            Method::POST,
            &format!("/api/appointments/{appt}/invites"),
            Some(doctor_token),
            Some(&json!({"label": "Guest"})),
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
            Some(&json!({
                "invite_token": inv["invite_token"],
                "accept_terms_version": terms["version"],
            })),
        )
        .await
        .unwrap();
    redeemed["token"].as_str().unwrap().to_string()
}

/// A new appointment of the demo doctor and patient, booked with the demo staff
/// member's session `staff` (a TOTP code is good for one login: log in once), open now.
pub async fn book(ep: &Endpoint, server: &Running, staff: &str) -> i64 {
    let demo = server.demo.as_ref().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let v = ep
        .request(
            Method::POST,
            "/api/appointments",
            Some(staff),
            Some(&json!({
                "doctor": demo.account(Role::Doctor).unwrap().id.0,
                "patient": demo.account(Role::Patient).unwrap().id.0,
                "start": now,
                "duration_min": 60,
                "reason": "follow-up",
            })),
        )
        .await
        .unwrap();
    v["id"].as_i64().unwrap()
}

/// Serves every participant's signaling (SFU renegotiations, keys, joins) until `done`
/// resolves, and hands them back with what each saw.
pub async fn serve_all(
    mut parts: Vec<Participant>,
    done: impl Future<Output = ()>,
) -> (Vec<Participant>, Vec<Vec<Happening>>) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut last = parts.pop().unwrap();
    let tasks: Vec<_> = parts
        .into_iter()
        .map(|mut p| {
            let mut rx = stop_rx.clone();
            tokio::spawn(async move {
                let h = p
                    .serve_until(async move {
                        let _ = rx.wait_for(|stop| *stop).await;
                    })
                    .await
                    .unwrap();
                (p, h)
            })
        })
        .collect();
    let h_last = last.serve_until(done).await.unwrap();
    let _ = stop_tx.send(true);
    let mut out = Vec::new();
    let mut seen = Vec::new();
    for t in tasks {
        let (p, h) = t.await.unwrap();
        out.push(p);
        seen.push(h);
    }
    out.push(last);
    seen.push(h_last);
    (out, seen)
}

/// Resolves once `cond` holds for the slots' statuses (panics after 30 s).
pub async fn until_status(
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
    let mut st = Vec::new();
    for s in &slots {
        st.push(media.status(*s).await.unwrap());
    }
    panic!("{what}: {st:?}");
}

/// One person of a test consultation: how it reaches the server, its session, its
/// device.
pub struct Side<'a> {
    pub ep: &'a Endpoint,
    pub token: &'a str,
    pub keys: KeyConfig,
}

impl<'a> Side<'a> {
    pub fn new(ep: &'a Endpoint, token: &'a str) -> Self {
        Side {
            ep,
            token,
            keys: KeyConfig::default(),
        }
    }

    pub fn in_dir(ep: &'a Endpoint, token: &'a str, dir: &std::path::Path) -> Self {
        Side {
            ep,
            token,
            keys: KeyConfig::in_dir(dir),
        }
    }
}

/// A doctor and a patient in appointment `appt`, the doctor's media running, the
/// patient admitted and its media started.
pub async fn two_party(
    d: Side<'_>,
    p: Side<'_>,
    appt: i64,
    media: &Arc<MediaLoop>,
) -> (Participant, Participant) {
    let traffic = light_traffic(100_000);
    let mut doctor = Participant::join_with_keys(d.ep, d.token, appt, media.clone(), d.keys)
        .await
        .unwrap();
    doctor.start_media(traffic).await.unwrap();
    let mut patient = Participant::join_with_keys(p.ep, p.token, appt, media.clone(), p.keys)
        .await
        .unwrap();
    let (a, w) = tokio::join!(doctor.admit(1), patient.wait_admitted());
    a.unwrap();
    w.unwrap();
    patient.start_media(traffic).await.unwrap();
    (doctor, patient)
}

/// How many of `frames` open with `dec` (a fresh copy per call: replay state is not
/// shared between checks).
pub fn opened_by(dec: &mut GroupFrameDecryptor, frames: &[RecordedFrame]) -> usize {
    let mut out = Vec::new();
    frames
        .iter()
        .filter(|f| {
            let codec = match f.kind {
                confide_client::Kind::Audio => Codec::Opus,
                confide_client::Kind::Video => Codec::Vp8,
            };
            matches!(dec.decrypt(codec, &f.sealed, &mut out), Ok(Some(_)))
        })
        .count()
}
