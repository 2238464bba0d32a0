//! The key layer against a malicious server, end to end: the native client talks to a
//! real `confide` server through a man-in-the-middle proxy ([`common::proxy`]) that
//! plays the server's worst: it forges directory answers, KeyPackages, commits and
//! Welcomes, and shows two people two different logs. Media goes through the real SFU;
//! each participant's slot records the sealed frames the SFU forwarded to it, and the
//! test, holding every key a ghost has, tries to open them all.
//!
//! Also: a changed key held back until the user accepts it (and the acceptance kept
//! across a restart), a removed member and a late joiner outside their epochs, and a
//! verified pair that stays verified in the next consultation.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use confide_client::driver::RecordedFrame;
use confide_client::signaling::Method;
use confide_client::{DeviceStore, Happening, KeyConfig, KeyWarning, Participant};
use confide_e2ee::{Codec, GroupFrameDecryptor, SframeHeader};
use confide_mls::pins::PinStatus;
use confide_mls::transparency::DirectoryAnswer;
use confide_mls::{ClaimedKeyPackage, Device, Principal, danger};
use confide_server::confide_signaling::model::Role;
use serde_json::{Value, json};

use common::fake_log::{FakeLog, b64, consistency_query};
use common::proxy::{Honest, Proxy, Tamper};
use common::*;

fn is_claim(method: &str, path: &str) -> bool {
    method == "POST" && path.starts_with("/api/directory/") && path.ends_with("/key_package")
}

/// The doctor's side of the ghost attack: the server lists a participant it invented
/// in the waiting room, the first KeyPackage claims for the real patient come back
/// forged, and the claim for the invented participant gets a KeyPackage of that ghost
/// device's own.
struct ForgeClaims {
    /// The invented participant's device (a fresh credential, never logged).
    invented: Device,
    /// The forger's own key (signs what it forges).
    forger: Device,
    forged: Mutex<usize>,
}

const GHOST_ID: u64 = 999_999;

fn ghost_info(name: &confide_mls::DeviceName) -> Value {
    json!({
        "id": GHOST_ID, "role": "patient", "label": "Patient",
        "principal": name.principal.to_string(),
        "device": name.device.to_string(),
    })
}

impl Tamper for ForgeClaims {
    fn to_client(&self, frame: String) -> Vec<String> {
        let mut v: Value = serde_json::from_str(&frame).unwrap();
        if v["type"] == "waiting_room"
            && let Some(w) = v["waiting"].as_array_mut()
            && !w.is_empty()
        {
            w.push(ghost_info(self.invented.name()));
            return vec![v.to_string()];
        }
        vec![frame]
    }

    fn rest(&self, method: &str, path: &str, status: u16, body: Vec<u8>) -> (u16, Vec<u8>) {
        if !is_claim(method, path) {
            return (status, body);
        }
        // The ghost participant's device: the server has no KeyPackage for it (it was
        // never registered), so it makes one with the ghost's own credential.
        if path.contains(&self.invented.name().device.to_string()) {
            let kp = self.invented.key_packages(1).unwrap().remove(0);
            let body = json!({"key_package": b64(&kp), "last_resort": false});
            return (200, body.to_string().into_bytes());
        }
        let mut forged = self.forged.lock().unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        let real = B64.decode(v["key_package"].as_str().unwrap()).unwrap();
        let real = ClaimedKeyPackage::parse(&self.forger, &real).unwrap();
        let kp = match *forged {
            // (a) A fresh credential of the ghost's own, as a new device of the
            // patient's account.
            0 => {
                let d = Device::generate(real.name().principal.clone()).unwrap();
                d.key_packages(1).unwrap().remove(0)
            }
            // (b) The patient's real credential and key, without the patient's secret.
            1 => danger::key_package_claiming(&self.forger, real.name(), &real.signature_key())
                .unwrap(),
            _ => return (status, body),
        };
        *forged += 1;
        let body = json!({"key_package": b64(&kp), "last_resort": false});
        (200, body.to_string().into_bytes())
    }
}

fn kid_epoch_bits(f: &RecordedFrame) -> Option<u64> {
    let codec = match f.kind {
        confide_client::Kind::Audio => Codec::Opus,
        confide_client::Kind::Video => Codec::Vp8,
    };
    let p = codec.clear_prefix_len(&f.sealed);
    let (h, _) = SframeHeader::decode(f.sealed.get(p..)?).ok()?;
    Some(h.kid & 0xf)
}

fn warnings_in(h: &[Vec<Happening>]) -> Vec<KeyWarning> {
    h.iter()
        .flatten()
        .filter_map(|h| match h {
            Happening::Warning(w) => Some(w.clone()),
            _ => None,
        })
        .collect()
}

/// Ghost recipients through a malicious server: (a) a participant it invents (listed
/// in the waiting room, then announced as admitted), and a KeyPackage with a fresh
/// credential of its own for the real patient; (b) a
/// KeyPackage with the patient's real credential but not the patient's secret; (c) an
/// Add commit the ghost signs itself, and a Welcome from an impostor of the doctor's
/// account. No client adds or accepts any of them, each shows a warning, the call
/// goes on between doctor and patient, and nothing the ghost holds opens a frame the
/// SFU forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ghosts_are_never_added_and_open_no_forwarded_frame() {
    let (_dir, server, _) = demo_server(true).await;
    let appt = server.demo.as_ref().unwrap().appointment_id.0;
    let patient_principal = Principal::new(&format!(
        "account:{}",
        server
            .demo
            .as_ref()
            .unwrap()
            .account(Role::Patient)
            .unwrap()
            .id
            .0
    ))
    .unwrap();
    let invented = Device::generate(patient_principal.clone()).unwrap();
    let ghost_name = invented.name().clone();
    let doctor_proxy = Proxy::start(
        server.addr,
        &server.cert_der,
        Arc::new(ForgeClaims {
            invented,
            forger: Device::generate(Principal::new("account:666").unwrap()).unwrap(),
            forged: Mutex::new(0),
        }),
    )
    .await;
    // The ghost that signs its own Add, later.
    let ghost = Device::generate(patient_principal).unwrap();
    let patient_proxy = Proxy::start(server.addr, &server.cert_der, Arc::new(Honest)).await;
    let (dep, pep) = (doctor_proxy.endpoint(), patient_proxy.endpoint());
    let dt = login(&dep, &server, Role::Doctor).await;
    let pt = login(&pep, &server, Role::Patient).await;
    let media = media("ghost-media");
    let (doctor, patient) =
        two_party(Side::new(&dep, &dt), Side::new(&pep, &pt), appt, &media).await;
    let (ds, ps) = (doctor.slot().unwrap(), patient.slot().unwrap());
    media.record(ds, true).await.unwrap();
    media.record(ps, true).await.unwrap();

    // (a) The invented participant, a "second device" of the patient with a credential
    // of the ghost's own, was in the waiting room the doctor admitted from; now the
    // server also says it was admitted (as a rejoin would be). The doctor's device
    // checks it like any joiner.
    doctor_proxy.inject(json!({
        "type": "participant_joined",
        "participant": ghost_info(&ghost_name),
    }));
    let (parts, seen) = serve_all(
        vec![doctor, patient],
        until_status(
            media.clone(),
            vec![ds, ps],
            "keyed despite forgeries",
            |s| s.iter().all(|s| s.epoch == Some(1) && s.frames_opened > 5),
        ),
    )
    .await;
    let [mut doctor, patient]: [Participant; 2] = parts.try_into().ok().unwrap();
    // Let the doctor's device finish its attempts on the invented participant.
    let _ = doctor.run_until(Duration::from_secs(3), |_| false).await;

    let dw = doctor.warnings().to_vec();
    let refused_for = |id: u64| {
        dw.iter()
            .filter(|w| matches!(w, KeyWarning::Refused { participant, .. } if *participant == id))
            .count()
    };
    // The admitted patient's forged KeyPackages (a) and (b) were refused, then the real
    // one added; the invented participant was refused on every attempt.
    assert!(refused_for(patient.you()) >= 2, "{dw:?}");
    assert!(refused_for(GHOST_ID) >= 2, "{dw:?}");
    assert!(!warnings_in(&seen).is_empty());
    assert_eq!(doctor.roster().len(), 2);
    assert_eq!(patient.roster().len(), 2);

    // (c) The ghost signs an Add itself: its own group under the real group id, adding
    // a device of its own, delivered to both members as if the server had ordered it.
    let gid = doctor.group_id().unwrap();
    let consultation = appt.to_string();
    let outsider = Device::generate(Principal::new("account:667").unwrap()).unwrap();
    let mut fake = danger::group_with_id(&ghost, &consultation, &gid).unwrap();
    let mut ghost_keys = vec![dec(&fake, &ghost)];
    // At the real group's epoch, so nothing but the missing keys gives it away.
    while fake.epoch() < doctor.epoch().unwrap() {
        let _ = fake.self_update(&ghost).unwrap();
        fake.confirm_commit(&ghost).unwrap();
        ghost_keys.push(dec(&fake, &ghost));
    }
    let kp = ClaimedKeyPackage::parse(&ghost, &outsider.key_packages(1).unwrap()[0]).unwrap();
    let forged = danger::commit_add_as_any_member(&mut fake, &ghost, &[kp]).unwrap();
    fake.confirm_commit(&ghost).unwrap();
    ghost_keys.push(dec(&fake, &ghost));
    let commit = json!({
        "type": "mls_commit", "from": doctor.you(), "epoch": 1,
        "commit": b64(&forged.commit),
    });
    doctor_proxy.inject(commit.clone());
    patient_proxy.inject(commit);
    // ... and a Welcome from an impostor of the doctor's account, into a group of its
    // own for this consultation, made with a KeyPackage of the patient's that the
    // server holds.
    let impostor = Device::generate(doctor.device().principal.clone()).unwrap();
    let claimed = dep
        .request(
            Method::POST,
            &format!(
                "/api/directory/{}/devices/{}/key_package",
                patient.device().principal,
                patient.device().device
            ),
            Some(&dt),
            Some(&json!({})),
        )
        .await
        .unwrap();
    let kp = B64
        .decode(claimed["key_package"].as_str().unwrap())
        .unwrap();
    let kp = ClaimedKeyPackage::parse(&impostor, &kp).unwrap();
    let mut fake2 = danger::group_with_id(
        &impostor,
        &consultation,
        format!("confide/c/{consultation}/feedface").as_bytes(),
    )
    .unwrap();
    let w = danger::commit_add_as_any_member(&mut fake2, &impostor, &[kp]).unwrap();
    fake2.confirm_commit(&impostor).unwrap();
    ghost_keys.push(dec(&fake2, &impostor));
    patient_proxy.inject(json!({
        "type": "mls_welcome", "from": doctor.you(),
        "welcome": b64(&w.welcome.unwrap()),
    }));

    // The call goes on: both keep opening each other's frames, on epoch 1.
    let opened = (
        media.status(ds).await.unwrap().frames_opened,
        media.status(ps).await.unwrap().frames_opened,
    );
    let (parts, seen) = serve_all(
        vec![doctor, patient],
        until_status(
            media.clone(),
            vec![ds, ps],
            "frames after the ghost's commit",
            move |s| s[0].frames_opened > opened.0 + 20 && s[1].frames_opened > opened.1 + 20,
        ),
    )
    .await;
    let [doctor, patient]: [Participant; 2] = parts.try_into().ok().unwrap();
    assert_eq!((doctor.epoch(), patient.epoch()), (Some(1), Some(1)));
    assert_eq!(doctor.roster().len(), 2);
    assert_eq!(patient.roster().len(), 2);
    let rejected = |ws: &[KeyWarning]| {
        ws.iter()
            .filter(|w| matches!(w, KeyWarning::RejectedMessage { .. }))
            .count()
    };
    assert!(rejected(doctor.warnings()) >= 1, "{:?}", doctor.warnings());
    // The patient refused the commit and the impostor's Welcome.
    assert!(
        rejected(patient.warnings()) >= 2,
        "{:?}",
        patient.warnings()
    );
    assert!(!warnings_in(&seen).is_empty());
    for s in [ds, ps] {
        let st = media.status(s).await.unwrap();
        assert!(
            st.sending && st.keyed_peers == 1 && st.epoch == Some(1),
            "{st:?}"
        );
    }

    // Every frame the SFU forwarded to either side, tried with every key the ghosts
    // hold: none opens. The real members' keys do open them.
    let at_doctor = media.recorded(ds).await.unwrap();
    let at_patient = media.recorded(ps).await.unwrap();
    assert!(at_doctor.len() > 20 && at_patient.len() > 20);
    for k in ghost_keys.iter_mut() {
        assert_eq!(opened_by(k, &at_doctor), 0, "a ghost opened a frame");
        assert_eq!(opened_by(k, &at_patient), 0, "a ghost opened a frame");
    }
    assert!(opened_by(&mut doctor.frame_decryptor().unwrap(), &at_doctor) > 20);
    assert!(opened_by(&mut patient.frame_decryptor().unwrap(), &at_patient) > 20);
    let stats = media.stats(false).await.unwrap();
    assert_eq!(stats.open_failures, 0);

    let ended = tokio::spawn(patient.wait_ended(Duration::from_secs(20)));
    doctor.end().await.unwrap();
    ended.await.unwrap().unwrap();
}

fn dec(g: &confide_mls::ConsultationGroup, d: &Device) -> GroupFrameDecryptor {
    let mut k = GroupFrameDecryptor::new(confide_client::driver::SUITE);
    k.install(g.epoch_secret(d).unwrap()).unwrap();
    k
}

/// A pinned account comes back with another key (a new device): the doctor's device
/// adds (and so admits) nobody and says so; the patient gets no key. The doctor
/// accepts (after comparing the code): the patient is added. The acceptance is kept in
/// the state directory: after a restart the same key is simply pinned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_key_is_held_until_accepted_and_the_acceptance_survives_a_restart() {
    let (_dir, server, ep) = demo_server(true).await;
    let media = media("key-change-media");
    let state = tempfile::tempdir().unwrap();
    let (d_dir, p_dir, p2_dir) = (
        state.path().join("doctor"),
        state.path().join("patient"),
        state.path().join("patient-new-phone"),
    );
    let dt = login(&ep, &server, Role::Doctor).await;
    let pt = login(&ep, &server, Role::Patient).await;
    let staff = login(&ep, &server, Role::Staff).await;

    // First consultation: first contact on both sides, keys pinned.
    let appt = server.demo.as_ref().unwrap().appointment_id.0;
    meet_without_warnings(
        Side::in_dir(&ep, &dt, &d_dir),
        Side::in_dir(&ep, &pt, &p_dir),
        appt,
        &media,
    )
    .await;

    // Second consultation: the patient's account comes with a new device. The
    // doctor's device admits nobody: the patient stays in the waiting room, with no
    // key.
    let appt2 = book(&ep, &server, &staff).await;
    let traffic = light_traffic(100_000);
    let mut doctor =
        Participant::join_with_keys(&ep, &dt, appt2, media.clone(), KeyConfig::in_dir(&d_dir))
            .await
            .unwrap();
    doctor.start_media(traffic).await.unwrap();
    let mut patient =
        Participant::join_with_keys(&ep, &pt, appt2, media.clone(), KeyConfig::in_dir(&p2_dir))
            .await
            .unwrap();
    let new_device = patient.device().clone();
    let new_key = patient.device_key();
    let patient_id = patient.you();
    assert_eq!(doctor.admit(1).await.unwrap(), Vec::<u64>::new());
    let held = KeyWarning::KeyChanged {
        participant: patient_id,
        device: new_device.clone(),
        status: PinStatus::NewDevice,
    };
    assert_eq!(doctor.warnings(), std::slice::from_ref(&held));
    let seen = doctor.step(Duration::from_millis(10)).await.unwrap();
    assert!(seen.contains(&Happening::Warning(held)), "{seen:?}");
    assert_eq!(doctor.roster().len(), 1);
    assert!(
        tokio::time::timeout(Duration::from_secs(2), patient.wait_admitted())
            .await
            .is_err(),
        "admitted without a key check"
    );
    assert_eq!(patient.epoch(), None);
    assert_eq!(
        media
            .status(doctor.slot().unwrap())
            .await
            .unwrap()
            .keyed_peers,
        0
    );

    // The doctor compares the code and accepts: the commit adds and admits the patient.
    let out = doctor.accept_key(patient_id).await.unwrap();
    assert!(
        out.contains(&Happening::Keyed { peer: patient_id }),
        "{out:?}"
    );
    patient.wait_admitted().await.unwrap();
    patient.start_media(traffic).await.unwrap();
    let (parts, _) = keyed(vec![doctor, patient], &media).await;
    let [doctor, patient]: [Participant; 2] = parts.try_into().ok().unwrap();
    assert_eq!(patient.roster().len(), 2);
    assert!(patient.warnings().is_empty(), "{:?}", patient.warnings());
    let ended = tokio::spawn(patient.wait_ended(Duration::from_secs(20)));
    doctor.end().await.unwrap();
    ended.await.unwrap().unwrap();

    // The acceptance is in the doctor's state directory...
    let doctor_principal = Principal::new(&format!(
        "account:{}",
        server
            .demo
            .as_ref()
            .unwrap()
            .account(Role::Doctor)
            .unwrap()
            .id
            .0
    ))
    .unwrap();
    let store = DeviceStore::open(Some(&d_dir), doctor_principal).unwrap();
    assert_eq!(
        store.pins().check(&new_device, &new_key),
        PinStatus::Pinned { verified: false }
    );
    drop(store);
    // ... and a restarted doctor's device adds the new device without asking.
    let appt3 = book(&ep, &server, &staff).await;
    meet_without_warnings(
        Side::in_dir(&ep, &dt, &d_dir),
        Side::in_dir(&ep, &pt, &p2_dir),
        appt3,
        &media,
    )
    .await;
}

/// Doctor and patient meet in `appt` until both open each other's frames; the doctor
/// sees no key warning and then ends the consultation.
async fn meet_without_warnings(
    doctor: Side<'_>,
    patient: Side<'_>,
    appt: i64,
    media: &Arc<confide_client::MediaLoop>,
) {
    let (doctor, patient) = two_party(doctor, patient, appt, media).await;
    let (parts, _) = keyed(vec![doctor, patient], media).await;
    let [doctor, patient]: [Participant; 2] = parts.try_into().ok().unwrap();
    assert!(doctor.warnings().is_empty(), "{:?}", doctor.warnings());
    let ended = tokio::spawn(patient.wait_ended(Duration::from_secs(20)));
    doctor.end().await.unwrap();
    ended.await.unwrap().unwrap();
}

/// Serves both until each opens the other's frames under a shared epoch.
async fn keyed(
    parts: Vec<Participant>,
    media: &Arc<confide_client::MediaLoop>,
) -> (Vec<Participant>, Vec<Vec<Happening>>) {
    let slots: Vec<_> = parts.iter().map(|p| p.slot().unwrap()).collect();
    serve_all(
        parts,
        until_status(media.clone(), slots, "keyed and opening", |s| {
            s.iter()
                .all(|s| s.keyed_peers >= 1 && s.sending && s.frames_opened > 5)
        }),
    )
    .await
}

/// The malicious server's split view: each victim gets a log of its own (same key,
/// forked history), consistent on its own.
struct SplitLog {
    log: Mutex<FakeLog>,
}

impl Tamper for SplitLog {
    fn rest(&self, method: &str, path: &str, status: u16, body: Vec<u8>) -> (u16, Vec<u8>) {
        let mut log = self.log.lock().unwrap();
        if method == "GET" && path.starts_with("/api/audit/key") {
            return (200, format!("{}\n", log.vkey()).into_bytes());
        }
        if method == "GET" && path.starts_with("/api/audit/consistency") {
            return match consistency_query(path).and_then(|(f, t)| log.consistency(f, t)) {
                Some(p) => (200, json!({ "proof": p }).to_string().into_bytes()),
                None => (
                    400,
                    json!({"error": {"code": "bad_request"}})
                        .to_string()
                        .into_bytes(),
                ),
            };
        }
        if method == "GET" && path.starts_with("/api/directory/") && status == 200 {
            let real: DirectoryAnswer = serde_json::from_slice(&body).unwrap();
            return (200, serde_json::to_vec(&log.rewrite(&real)).unwrap());
        }
        (status, body)
    }
}

/// Two people shown two different key histories: each accepts its own log, and the
/// fork shows when they carry their heads into the group: both are warned, naming
/// the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_view_is_detected_when_members_exchange_checkpoints() {
    let (_dir, server, _ep) = demo_server(true).await;
    let appt = server.demo.as_ref().unwrap().appointment_id.0;
    let proxy = |first: &str| {
        Arc::new(SplitLog {
            log: Mutex::new(FakeLog::new(7, first)),
        })
    };
    let dp = Proxy::start(server.addr, &server.cert_der, proxy("login_ok")).await;
    let pp = Proxy::start(server.addr, &server.cert_der, proxy("login_failed")).await;
    let (dep, pep) = (dp.endpoint(), pp.endpoint());
    let dt = login(&dep, &server, Role::Doctor).await;
    let pt = login(&pep, &server, Role::Patient).await;
    let media = media("split-media");
    let (doctor, patient) =
        two_party(Side::new(&dep, &dt), Side::new(&pep, &pt), appt, &media).await;
    let (did, pid) = (doctor.you(), patient.you());
    let (dn, pn) = (doctor.device().clone(), patient.device().clone());
    let split =
        |w: &KeyWarning, who: u64| matches!(w, KeyWarning::SplitView { peer, .. } if *peer == who);
    let (parts, _) = serve_all(vec![doctor, patient], async {
        tokio::time::sleep(Duration::from_secs(1)).await;
    })
    .await;
    let [mut doctor, mut patient]: [Participant; 2] = parts.try_into().ok().unwrap();
    for _ in 0..100 {
        if doctor.warnings().iter().any(|w| split(w, pid))
            && patient.warnings().iter().any(|w| split(w, did))
        {
            break;
        }
        let _ = tokio::join!(
            doctor.step(Duration::from_millis(100)),
            patient.step(Duration::from_millis(100))
        );
    }
    // The keys themselves were logged (in each victim's own log): the group formed.
    assert_eq!(doctor.roster().len(), 2);
    assert!(
        doctor.warnings().contains(&KeyWarning::SplitView {
            peer: pid,
            device: pn
        }),
        "{:?}",
        doctor.warnings()
    );
    assert!(
        patient.warnings().contains(&KeyWarning::SplitView {
            peer: did,
            device: dn
        }),
        "{:?}",
        patient.warnings()
    );
    let ended = tokio::spawn(patient.wait_ended(Duration::from_secs(20)));
    doctor.end().await.unwrap();
    ended.await.unwrap().unwrap();
}

/// A guest is added (epoch 2) and leaves (the doctor's Remove: epoch 3). With the keys
/// it held, the guest opens none of the forwarded frames of epoch 1 (before it came)
/// or of epoch 3 (after it left); the frames of epoch 2 it does open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_and_a_late_joiner_open_no_frames_outside_their_epochs() {
    let (_dir, server, ep) = demo_server(true).await;
    let appt = server.demo.as_ref().unwrap().appointment_id.0;
    let media = media("epochs-media");
    let dt = login(&ep, &server, Role::Doctor).await;
    let pt = login(&ep, &server, Role::Patient).await;
    let (doctor, patient) = two_party(Side::new(&ep, &dt), Side::new(&ep, &pt), appt, &media).await;
    let (ds, ps) = (doctor.slot().unwrap(), patient.slot().unwrap());
    media.record(ps, true).await.unwrap();
    let (parts, _) = keyed(vec![doctor, patient], &media).await;
    let [mut doctor, patient]: [Participant; 2] = parts.try_into().ok().unwrap();
    let epoch1 = media.recorded(ps).await.unwrap();

    let gt = guest_token(&ep, &dt, appt).await;
    let mut guest = Participant::join_with_token(&ep, &gt, appt, media.clone())
        .await
        .unwrap();
    let (a, w) = tokio::join!(doctor.admit(1), guest.wait_admitted());
    a.unwrap();
    w.unwrap();
    guest.start_media(light_traffic(100_000)).await.unwrap();
    let gs = guest.slot().unwrap();
    let (parts, _) = serve_all(
        vec![doctor, patient, guest],
        until_status(media.clone(), vec![ds, ps, gs], "epoch 2", |s| {
            s.iter().all(|s| s.epoch == Some(2) && s.keyed_peers == 2) && s[1].frames_opened > 10
        }),
    )
    .await;
    let [doctor, patient, guest]: [Participant; 3] = parts.try_into().ok().unwrap();
    let mut guest_keys = guest.frame_decryptor().unwrap();
    guest.leave().await;
    let epoch2 = media.recorded(ps).await.unwrap();
    let opened = media.status(ps).await.unwrap().frames_opened;
    let (parts, _) = serve_all(
        vec![doctor, patient],
        until_status(media.clone(), vec![ds, ps], "epoch 3", move |s| {
            s.iter().all(|s| s.epoch == Some(3)) && s[1].frames_opened > opened + 30
        }),
    )
    .await;
    let [doctor, patient]: [Participant; 2] = parts.try_into().ok().unwrap();
    let epoch3: Vec<_> = media
        .recorded(ps)
        .await
        .unwrap()
        .into_iter()
        .filter(|f| kid_epoch_bits(f) == Some(3))
        .collect();
    let epoch1: Vec<_> = epoch1
        .into_iter()
        .filter(|f| kid_epoch_bits(f) == Some(1))
        .collect();
    let epoch2: Vec<_> = epoch2
        .into_iter()
        .filter(|f| kid_epoch_bits(f) == Some(2))
        .collect();
    assert!(epoch1.len() > 5 && epoch2.len() > 5 && epoch3.len() > 20);
    assert_eq!(
        opened_by(&mut guest_keys, &epoch1),
        0,
        "the late joiner opened an earlier epoch"
    );
    assert_eq!(
        opened_by(&mut guest_keys, &epoch3),
        0,
        "the removed member opened a later epoch"
    );
    assert!(opened_by(&mut guest_keys, &epoch2) > 0);
    assert!(opened_by(&mut patient.frame_decryptor().unwrap(), &epoch3) > 20);
    assert_eq!(patient.roster().len(), 2);
    let ended = tokio::spawn(patient.wait_ended(Duration::from_secs(20)));
    doctor.end().await.unwrap();
    ended.await.unwrap().unwrap();
}

/// Doctor and patient compare the code and mark each other verified; in the next
/// consultation, with the same devices (state directories), the pair is still verified
/// on both sides and the code is the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_pair_stays_verified_in_the_next_consultation() {
    let (_dir, server, ep) = demo_server(true).await;
    let media = media("verified-media");
    let state = tempfile::tempdir().unwrap();
    let (d_dir, p_dir) = (state.path().join("d"), state.path().join("p"));
    let dt = login(&ep, &server, Role::Doctor).await;
    let pt = login(&ep, &server, Role::Patient).await;
    let staff = login(&ep, &server, Role::Staff).await;
    let mut codes = Vec::new();
    let appt2 = book(&ep, &server, &staff).await;
    for (round, appt) in [server.demo.as_ref().unwrap().appointment_id.0, appt2]
        .into_iter()
        .enumerate()
    {
        let (doctor, patient) = two_party(
            Side::in_dir(&ep, &dt, &d_dir),
            Side::in_dir(&ep, &pt, &p_dir),
            appt,
            &media,
        )
        .await;
        let (parts, _) = keyed(vec![doctor, patient], &media).await;
        let [mut doctor, mut patient]: [Participant; 2] = parts.try_into().ok().unwrap();
        let (did, pid) = (doctor.you(), patient.you());
        let code = doctor.safety_code(pid).unwrap();
        assert_eq!(Some(&code), patient.safety_code(did).as_ref());
        if round == 0 {
            assert!(!doctor.is_verified(pid) && !patient.is_verified(did));
            assert!(doctor.mark_verified(pid).unwrap());
            assert!(patient.mark_verified(did).unwrap());
        } else {
            assert!(doctor.is_verified(pid), "doctor forgot the verification");
            assert!(patient.is_verified(did), "patient forgot the verification");
            assert!(doctor.warnings().is_empty() && patient.warnings().is_empty());
        }
        codes.push(code);
        let ended = tokio::spawn(patient.wait_ended(Duration::from_secs(20)));
        doctor.end().await.unwrap();
        ended.await.unwrap().unwrap();
    }
    assert_eq!(codes[0], codes[1], "same devices, same code");
}

/// Drops `participant_left` frames on their way to the client while armed: the doctor's
/// device never hears that the patient's connection dropped.
struct HideLeaves {
    armed: std::sync::atomic::AtomicBool,
}

impl Tamper for HideLeaves {
    fn to_client(&self, frame: String) -> Vec<String> {
        if self.armed.load(std::sync::atomic::Ordering::Relaxed)
            && frame.contains("\"participant_left\"")
        {
            return Vec::new();
        }
        vec![frame]
    }
}

/// The patient's connection drops and it comes back with the same device within the
/// server's rejoin grace (admitted again without the doctor). The doctor's device never
/// heard of the drop, so the patient's old leaf is still in the group: it removes that
/// leaf, adds the device again, and the patient (a new participant id, a new Welcome)
/// opens the doctor's frames again. The group never holds the device twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_who_comes_back_is_added_again_and_its_old_leaf_removed() {
    let (_dir, server, ep) = demo_server(true).await;
    let appt = server.demo.as_ref().unwrap().appointment_id.0;
    let hide = Arc::new(HideLeaves {
        armed: std::sync::atomic::AtomicBool::new(false),
    });
    let dp = Proxy::start(server.addr, &server.cert_der, hide.clone()).await;
    let dep = dp.endpoint();
    let dt = login(&dep, &server, Role::Doctor).await;
    let pt = login(&ep, &server, Role::Patient).await;
    let state = tempfile::tempdir().unwrap();
    let media = media("rejoin-media");
    let (doctor, patient) = two_party(
        Side::new(&dep, &dt),
        Side::in_dir(&ep, &pt, state.path()),
        appt,
        &media,
    )
    .await;
    let (parts, _) = keyed(vec![doctor, patient], &media).await;
    let [mut doctor, patient]: [Participant; 2] = parts.try_into().ok().unwrap();
    let (old_id, device) = (patient.you(), patient.device().clone());

    // The connection drops (no `leave`): the server keeps the patient's place.
    hide.armed.store(true, std::sync::atomic::Ordering::Relaxed);
    let old_slot = patient.slot().unwrap();
    drop(patient);
    media.remove(old_slot);
    let _ = doctor.run_until(Duration::from_secs(1), |_| false).await;
    assert_eq!(doctor.roster().len(), 2, "the doctor saw no leave");

    let mut patient = Participant::join_with_keys(
        &ep,
        &pt,
        appt,
        media.clone(),
        KeyConfig::in_dir(state.path()),
    )
    .await
    .unwrap();
    assert_ne!(patient.you(), old_id);
    assert_eq!(patient.device(), &device, "the same device came back");
    patient.wait_admitted().await.unwrap();
    patient.start_media(light_traffic(100_000)).await.unwrap();
    let ps = patient.slot().unwrap();
    let ds = doctor.slot().unwrap();
    let (parts, _) = serve_all(
        vec![doctor, patient],
        until_status(media.clone(), vec![ds, ps], "keyed again", |s| {
            s[1].keyed_peers == 1 && s[1].frames_opened > 5 && s[0].keyed_peers == 1
        }),
    )
    .await;
    let [doctor, patient]: [Participant; 2] = parts.try_into().ok().unwrap();
    let roster = doctor.roster();
    assert_eq!(roster.len(), 2, "{roster:?}");
    assert_eq!(roster.iter().filter(|m| m.name == device).count(), 1);
    // Remove, then Add: two epochs after the first.
    assert_eq!(doctor.epoch(), Some(3));
    assert_eq!(patient.epoch(), Some(3));
    assert!(doctor.warnings().is_empty(), "{:?}", doctor.warnings());
    hide.armed
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let ended = tokio::spawn(patient.wait_ended(Duration::from_secs(20)));
    doctor.end().await.unwrap();
    ended.await.unwrap().unwrap();
}

/// The doctor's connection drops and its device comes back (a new participant id). It
/// starts a new group and adds the patient and the guest, still admitted, in one
/// commit: both move to the new group's first epoch, the patient asks for a keyframe
/// on each video track whose frames come under a new key, frames keep flowing, the frames
/// the patient receives from then on open under the new group's keys and not under the
/// old group's, and every roster holds exactly the three real devices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_doctor_who_comes_back_adds_everyone_again_in_one_commit() {
    let (_dir, server, ep) = demo_server(true).await;
    let appt = server.demo.as_ref().unwrap().appointment_id.0;
    let media = media("doctor-rejoin-media");
    let state = tempfile::tempdir().unwrap();
    let dt = login(&ep, &server, Role::Doctor).await;
    let pt = login(&ep, &server, Role::Patient).await;
    let (doctor, patient) = two_party(
        Side::in_dir(&ep, &dt, state.path()),
        Side::new(&ep, &pt),
        appt,
        &media,
    )
    .await;
    let (parts, _) = keyed(vec![doctor, patient], &media).await;
    let [mut doctor, patient]: [Participant; 2] = parts.try_into().ok().unwrap();
    let gt = guest_token(&ep, &dt, appt).await;
    let mut guest = Participant::join_with_token(&ep, &gt, appt, media.clone())
        .await
        .unwrap();
    let (a, w) = tokio::join!(doctor.admit(1), guest.wait_admitted());
    a.unwrap();
    w.unwrap();
    guest.start_media(light_traffic(100_000)).await.unwrap();
    let (ds, ps, gs) = (
        doctor.slot().unwrap(),
        patient.slot().unwrap(),
        guest.slot().unwrap(),
    );
    let (parts, _) = serve_all(
        vec![doctor, patient, guest],
        until_status(media.clone(), vec![ds, ps, gs], "three at epoch 2", |s| {
            s.iter().all(|s| s.epoch == Some(2) && s.keyed_peers == 2)
        }),
    )
    .await;
    let [doctor, patient, guest]: [Participant; 3] = parts.try_into().ok().unwrap();
    let old_group = patient.group_id().unwrap();
    let mut old_keys = patient.frame_decryptor().unwrap();
    let old_id = doctor.you();

    // The doctor's connection drops (no `leave`) and its device joins again.
    drop(doctor);
    media.remove(ds);
    let mut doctor = Participant::join_with_keys(
        &ep,
        &dt,
        appt,
        media.clone(),
        KeyConfig::in_dir(state.path()),
    )
    .await
    .unwrap();
    assert_ne!(doctor.you(), old_id);
    doctor.start_media(light_traffic(100_000)).await.unwrap();
    let ds = doctor.slot().unwrap();
    media.record(ps, true).await.unwrap();
    let before = media.status(ps).await.unwrap();
    let opened = before.frames_opened;
    let (parts, _) = serve_all(
        vec![doctor, patient, guest],
        until_status(media.clone(), vec![ds, ps, gs], "the new group", move |s| {
            s.iter().all(|s| s.epoch == Some(1) && s.keyed_peers == 2)
                && s[1].frames_opened > opened + 30
        }),
    )
    .await;
    let [doctor, patient, guest]: [Participant; 3] = parts.try_into().ok().unwrap();
    // The doctor's and the guest's video came under new keys: the patient asked each
    // for a keyframe.
    let asked = media.status(ps).await.unwrap().keyframes_requested;
    assert!(
        asked >= before.keyframes_requested + 2,
        "keyframe requests {} -> {asked}",
        before.keyframes_requested
    );
    let new_group = doctor.group_id().unwrap();
    assert_ne!(new_group, old_group);
    for p in [&doctor, &patient, &guest] {
        // Created at epoch 0, everyone added by the one commit that made epoch 1.
        assert_eq!(p.group_id().as_ref(), Some(&new_group));
        assert_eq!(p.epoch(), Some(1));
        let roster = p.roster();
        assert_eq!(roster.len(), 3, "{roster:?}");
        assert!(p.warnings().is_empty(), "{:?}", p.warnings());
    }
    let names: Vec<_> = patient.roster().into_iter().map(|m| m.name).collect();
    for real in [doctor.device(), patient.device(), guest.device()] {
        assert_eq!(names.iter().filter(|n| *n == real).count(), 1, "{names:?}");
    }
    let frames: Vec<_> = media
        .recorded(ps)
        .await
        .unwrap()
        .into_iter()
        .filter(|f| kid_epoch_bits(f) == Some(1))
        .collect();
    assert!(
        frames.len() > 20,
        "{} frames of the new group",
        frames.len()
    );
    assert_eq!(
        opened_by(&mut old_keys, &frames),
        0,
        "the old group's keys opened a frame of the new group"
    );
    assert_eq!(
        opened_by(&mut patient.frame_decryptor().unwrap(), &frames),
        frames.len(),
        "a frame of the new group did not open under its keys"
    );
    let ended = tokio::spawn(patient.wait_ended(Duration::from_secs(20)));
    let guest_ended = tokio::spawn(guest.wait_ended(Duration::from_secs(20)));
    doctor.end().await.unwrap();
    ended.await.unwrap().unwrap();
    guest_ended.await.unwrap().unwrap();
}
