//! The consultation group: creation, admission, the roster, media and chat keys, leave.

use confide_mls::transparency::GroupPayload;
use confide_mls::{ConsultationGroup, Error, Incoming};

use crate::common::*;

#[test]
fn doctor_admits_patient_and_both_derive_the_same_media_key() {
    let doctor = device("account:1");
    let patient = device("account:2");
    let mut dg = ConsultationGroup::create(&doctor, CONSULTATION).unwrap();
    assert!(dg.group_id().starts_with(b"confide/c/42/"));
    let pg = add(&doctor, &mut dg, &patient, &mut []);
    assert_eq!((dg.epoch(), pg.epoch()), (1, 1));
    assert_eq!(pg.owner(), dg.own_leaf());
    let roster: Vec<_> = pg.roster().into_iter().map(|m| m.name).collect();
    assert_eq!(roster, vec![doctor.name().clone(), patient.name().clone()]);

    let mut to_patient = encryptor(&doctor, &dg);
    let mut at_patient = decryptor(&patient, &pg);
    assert!(opens(&mut at_patient, &seal(&mut to_patient, 1)));
    let mut to_doctor = encryptor(&patient, &pg);
    let mut at_doctor = decryptor(&doctor, &dg);
    assert!(opens(&mut at_doctor, &seal(&mut to_doctor, 2)));
}

#[test]
fn chat_is_an_mls_application_message() {
    let doctor = device("account:1");
    let patient = device("account:2");
    let mut dg = ConsultationGroup::create(&doctor, CONSULTATION).unwrap();
    let mut pg = add(&doctor, &mut dg, &patient, &mut []);
    let line = GroupPayload::Chat {
        text: "How is the rash today?".into(),
    };
    let wire = dg.seal(&doctor, &line.to_bytes()).unwrap();
    assert!(!wire.windows(4).any(|w| w == b"rash"), "ciphertext only");
    match pg.handle_message(&patient, &wire).unwrap() {
        Incoming::Application { sender, payload } => {
            assert_eq!(&sender.name, doctor.name());
            assert_eq!(GroupPayload::from_bytes(&payload).unwrap(), line);
        }
        other => panic!("{other:?}"),
    }
    // The same message delivered twice is refused the second time (MLS generation).
    assert!(pg.handle_message(&patient, &wire).is_err());
}

#[test]
fn a_removed_member_cannot_open_frames_after_the_remove_commit() {
    let doctor = device("account:1");
    let patient = device("account:2");
    let guest = device("guest:9");
    let mut dg = ConsultationGroup::create(&doctor, CONSULTATION).unwrap();
    let mut pg = add(&doctor, &mut dg, &patient, &mut []);
    let mut gg = add(&doctor, &mut dg, &guest, &mut [(&patient, &mut pg)]);
    assert_eq!(dg.roster().len(), 3);
    let mut at_guest = decryptor(&guest, &gg);

    // The guest leaves: the doctor commits a Remove; the patient and the guest process it.
    let guest_leaf = gg.own_leaf();
    let c = dg.remove(&doctor, &[guest_leaf]).unwrap();
    dg.confirm_commit(&doctor).unwrap();
    match pg.handle_message(&patient, &c.commit).unwrap() {
        Incoming::NewEpoch { removed, .. } => assert_eq!(&removed[0].name, guest.name()),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        gg.handle_message(&guest, &c.commit).unwrap(),
        Incoming::Removed
    ));

    // Frames of the new epoch: the patient opens them, the removed guest never does,
    // not even with the old keys it kept.
    let mut to_all = encryptor(&doctor, &dg);
    let wire = seal(&mut to_all, 7);
    let mut at_patient = decryptor(&patient, &pg);
    assert!(opens(&mut at_patient, &wire));
    assert!(!opens(&mut at_guest, &wire));
    assert!(gg.epoch_secret(&guest).is_err() || gg.epoch() < dg.epoch());
}

#[test]
fn a_late_joiner_cannot_open_frames_of_earlier_epochs() {
    let doctor = device("account:1");
    let patient = device("account:2");
    let guest = device("guest:9");
    let mut dg = ConsultationGroup::create(&doctor, CONSULTATION).unwrap();
    let mut pg = add(&doctor, &mut dg, &patient, &mut []);
    let mut before = encryptor(&patient, &pg);
    let old_frames: Vec<_> = (0..5).map(|i| seal(&mut before, i)).collect();

    let gg = add(&doctor, &mut dg, &guest, &mut [(&patient, &mut pg)]);
    let mut at_guest = decryptor(&guest, &gg);
    for f in &old_frames {
        assert!(!opens(&mut at_guest, f), "an epoch before the guest joined");
    }
    let mut after = encryptor(&patient, &pg);
    assert!(opens(&mut at_guest, &seal(&mut after, 9)));
}

#[test]
fn two_commits_for_one_epoch_the_server_orders_them() {
    let doctor = device("account:1");
    let patient = device("account:2");
    let mut dg = ConsultationGroup::create(&doctor, CONSULTATION).unwrap();
    let mut pg = add(&doctor, &mut dg, &patient, &mut []);
    // Both update at once; the server accepts the doctor's and refuses the patient's.
    let d = dg.self_update(&doctor).unwrap();
    let _p = pg.self_update(&patient).unwrap();
    dg.confirm_commit(&doctor).unwrap();
    // The patient's pending commit is dropped when the winning one arrives.
    assert!(matches!(
        pg.handle_message(&patient, &d.commit).unwrap(),
        Incoming::NewEpoch { epoch: 2, .. }
    ));
    assert_eq!(
        dg.epoch_secret(&doctor).unwrap().epoch(),
        pg.epoch_secret(&patient).unwrap().epoch()
    );
    let mut e = encryptor(&patient, &pg);
    assert!(opens(&mut decryptor(&doctor, &dg), &seal(&mut e, 3)));
    // A commit the server refused is discarded explicitly too.
    let refused = pg.self_update(&patient).unwrap();
    drop(refused);
    pg.discard_commit(&patient).unwrap();
    assert!(matches!(
        pg.confirm_commit(&patient),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn device_state_survives_a_restart_and_opens_a_welcome_for_an_earlier_key_package() {
    let doctor = device("account:1");
    let patient = device("account:2");
    let kp = patient.last_resort_key_package().unwrap();
    let (name, secret, state) = (
        patient.name().clone(),
        patient.secret_key(),
        patient.export_state(),
    );
    drop(patient);
    let restored =
        confide_mls::Device::restore(name.principal.clone(), name.device, &secret, &state).unwrap();
    assert_eq!(restored.name(), &name);

    let mut dg = ConsultationGroup::create(&doctor, CONSULTATION).unwrap();
    let claimed = confide_mls::ClaimedKeyPackage::parse(&doctor, &kp).unwrap();
    assert_eq!(claimed.signature_key(), restored.signature_key());
    let c = dg.add(&doctor, &[claimed]).unwrap();
    dg.confirm_commit(&doctor).unwrap();
    let pg = ConsultationGroup::join(
        &restored,
        CONSULTATION,
        &c.welcome.unwrap(),
        &doctor_principal(),
    )
    .unwrap();
    assert_eq!(pg.epoch(), 1);
    assert!(
        confide_mls::Device::restore(
            name.principal,
            name.device,
            &secret,
            &state[..state.len() - 1]
        )
        .is_err()
    );
}
