//! A whole two-party consultation on loopback: a `confide` server in this process (demo
//! clinic, SFU media plane), a doctor and a patient as native clients doing what their
//! browsers would do: log in with password and TOTP, join, wait, admit, negotiate media
//! with the SFU, run the consultation's MLS group (device registration, the doctor's Add
//! checked against the key directory, the patient's Welcome), send sealed frames both
//! ways. Each side prints the safety code it computed from both device keys; the two
//! must match, which is what people compare aloud.
//!
//! Run: `cargo run -p confide-client --example two_party`

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use confide_client::consultation::Happening;
use confide_client::{Credentials, Endpoint, MediaLoop, Participant, Traffic};
use confide_server::confide_signaling::model::Role;
use confide_server::{Config, start};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cfg = Config::new(dir.path().join("data"));
    cfg.bind = "127.0.0.1:0".parse()?;
    cfg.demo = true;
    cfg.static_dir = Some(dir.path().join("no-static"));
    cfg.media.workers = 1;
    let server = start(cfg).await?;
    let demo = server.demo.clone().context("demo clinic")?;
    // The demo patient starts without consent; give it, as the patient would in the
    // browser's consent step.
    confide_server::confide_signaling::ops::consent_demo_patient(
        server.state.store.as_ref(),
        &demo,
        confide_server::confide_signaling::http::now(),
    )
    .await?;
    println!("server on https://{}", server.addr);

    let creds = |role| -> anyhow::Result<Credentials> {
        let a = demo.account(role).context("demo account")?;
        Ok(Credentials {
            username: a.username.clone(),
            password: a.password.clone(),
            totp_secret: a.totp_secret.clone(),
        })
    };
    // The self-signed development certificate is pinned, as a browser would be told to.
    let ep = Endpoint::new("localhost", server.addr, Some(&server.cert_der))?;
    let media = Arc::new(MediaLoop::start("two-party-media", [127, 0, 0, 1].into())?);
    let appt = demo.appointment_id.0;
    let traffic = Traffic {
        video_bps: 300_000,
        fps: 15,
        ..Traffic::default()
    };

    let mut doctor = Participant::join(&ep, &creds(Role::Doctor)?, appt, media.clone()).await?;
    doctor.start_media(traffic).await?;
    println!("doctor joined as participant {}", doctor.you());
    let mut patient = Participant::join(&ep, &creds(Role::Patient)?, appt, media.clone()).await?;
    println!("patient {} is in the waiting room", patient.you());
    let (admitted, waited) = tokio::join!(doctor.admit(1), patient.wait_admitted());
    admitted?;
    waited?;
    patient.start_media(traffic).await?;
    println!("patient admitted; media negotiated with the SFU");

    let keyed = |h: &[Happening]| h.iter().any(|h| matches!(h, Happening::Keyed { .. }));
    let (d, p) = tokio::join!(
        doctor.run_until(Duration::from_secs(20), keyed),
        patient.run_until(Duration::from_secs(20), keyed)
    );
    d?;
    p?;

    // Let sealed frames flow both ways for two seconds, answering the SFU meanwhile.
    let (d, p) = tokio::join!(
        doctor.serve_until(tokio::time::sleep(Duration::from_secs(2))),
        patient.serve_until(tokio::time::sleep(Duration::from_secs(2)))
    );
    d?;
    p?;
    let stats = media.stats(false).await?;
    println!(
        "frames sent {} / received and opened {} (open failures {}), one-way p50 {:.2} ms",
        stats.audio_frames_sent + stats.video_frames_sent,
        stats.frames_received(),
        stats.open_failures,
        stats.latency_us(0.5).unwrap_or(0) as f64 / 1000.0
    );

    let dc = doctor.safety_code(patient.you()).unwrap_or_default();
    let pc = patient.safety_code(doctor.you()).unwrap_or_default();
    println!("doctor sees safety code:  {dc}");
    println!("patient sees safety code: {pc}");
    anyhow::ensure!(!dc.is_empty() && dc == pc, "safety codes differ");
    println!("codes match: nobody in the middle swapped keys");

    let ended = tokio::spawn(patient.wait_ended(Duration::from_secs(10)));
    doctor.end().await?;
    ended.await??;
    println!("consultation ended");
    Ok(())
}
