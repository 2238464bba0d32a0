//! Ghost recipients: a malicious server (played by this test) tries to get key material
//! for a device it controls, in the three ways issue "Ghost-proof E2EE" names:
//! (a) a fresh credential of its own, (b) the real credential of an account whose secret
//! it does not hold, (c) an MLS Add it signs itself. No honest device gives it anything,
//! and the frames the honest members exchange afterwards never open with anything the
//! ghost holds.

use confide_mls::admission::{check_joiner, check_owner};
use confide_mls::pins::{PinStatus, PinStore};
use confide_mls::transparency::LoggedDevice;
use confide_mls::{ClaimedKeyPackage, ConsultationGroup, Error, danger};

use crate::common::*;

fn logged(d: &confide_mls::Device) -> LoggedDevice {
    LoggedDevice {
        name: d.name().clone(),
        signature_key: d.signature_key(),
        active: true,
        registered_seq: 0,
    }
}

#[test]
fn ghosts_get_no_key_material_and_cannot_open_frames() {
    let doctor = device("account:1");
    let patient = device("account:2");
    // The doctor's device met this patient before: the patient's key is pinned.
    let mut doctor_pins = PinStore::new();
    doctor_pins.pin(patient.name(), &patient.signature_key());
    // What the directory has logged (the ghost may log its own devices too: a server
    // can write to its log; it cannot make the doctor's pins or the patient's key agree).
    let ghost = device("account:2"); // a fresh device the server registers for the patient
    let outsider = device("account:66"); // a fresh account the server invents
    let log = vec![logged(&patient), logged(&ghost), logged(&outsider)];

    let mut dg = ConsultationGroup::create(&doctor, CONSULTATION).unwrap();

    // (a) A fresh credential of the ghost's own, offered when the doctor admits the
    // patient's participant: another principal is refused outright, another device of
    // the patient's account needs the user's acceptance first.
    let kp = ClaimedKeyPackage::parse(&doctor, &outsider.key_packages(1).unwrap()[0]).unwrap();
    assert!(matches!(
        check_joiner(&kp, patient.name(), &log, &doctor_pins),
        Err(Error::Policy(_))
    ));
    let kp = ClaimedKeyPackage::parse(&doctor, &ghost.key_packages(1).unwrap()[0]).unwrap();
    assert_eq!(
        check_joiner(&kp, ghost.name(), &log, &doctor_pins).unwrap(),
        PinStatus::NewDevice
    );
    assert!(!PinStatus::NewDevice.may_share());
    // The same fresh key under the patient's real device id: not the logged key.
    let forged_name = patient.name().clone();
    let kp_bytes =
        danger::key_package_claiming(&ghost, &forged_name, &ghost.signature_key()).unwrap();
    let kp = ClaimedKeyPackage::parse(&doctor, &kp_bytes).unwrap();
    assert!(matches!(
        check_joiner(&kp, patient.name(), &log, &doctor_pins),
        Err(Error::Transparency(_))
    ));

    // (b) The patient's real credential and key, without the patient's secret: the
    // KeyPackage's signature does not verify, so it never parses.
    let kp_bytes =
        danger::key_package_claiming(&ghost, patient.name(), &patient.signature_key()).unwrap();
    assert!(ClaimedKeyPackage::parse(&doctor, &kp_bytes).is_err());

    // The honest admission goes on.
    let kp = claim(&doctor, &patient);
    assert_eq!(
        check_joiner(&kp, patient.name(), &log, &doctor_pins).unwrap(),
        PinStatus::Pinned { verified: false }
    );
    let c = dg.add(&doctor, &[kp]).unwrap();
    dg.confirm_commit(&doctor).unwrap();
    let mut pg = ConsultationGroup::join(
        &patient,
        CONSULTATION,
        &c.welcome.unwrap(),
        &doctor_principal(),
    )
    .unwrap();

    // (c) The ghost signs an Add itself: a group of its own under the real group id,
    // committing itself in. The members refuse the commit; their epoch does not move.
    let mut fake = danger::group_with_id(&ghost, CONSULTATION, dg.group_id()).unwrap();
    let forged =
        danger::commit_add_as_any_member(&mut fake, &ghost, &[claim(&ghost, &outsider)]).unwrap();
    fake.confirm_commit(&ghost).unwrap();
    assert!(pg.handle_message(&patient, &forged.commit).is_err());
    assert!(dg.handle_message(&doctor, &forged.commit).is_err());
    assert_eq!((dg.epoch(), pg.epoch()), (1, 1));
    // Its Welcome, claiming the doctor's account with the ghost's own key, is refused by
    // the patient's owner check (the doctor's key is pinned on the patient's device).
    let mut patient_pins = PinStore::new();
    patient_pins.pin(doctor.name(), &doctor.signature_key());
    let impostor = device("account:1");
    let mut fake2 =
        danger::group_with_id(&impostor, CONSULTATION, b"confide/c/42/feedface").unwrap();
    let w = danger::commit_add_as_any_member(&mut fake2, &impostor, &[claim(&impostor, &patient)])
        .unwrap();
    fake2.confirm_commit(&impostor).unwrap();
    let joined = ConsultationGroup::join(
        &patient,
        CONSULTATION,
        &w.welcome.unwrap(),
        &doctor_principal(),
    )
    .unwrap();
    let owner = joined.owner_member().unwrap();
    let impostor_log = vec![logged(&doctor), logged(&impostor)];
    assert_eq!(
        check_owner(&owner, &impostor_log, &patient_pins).unwrap(),
        PinStatus::NewDevice
    );
    // A member of the wrong account is refused by the core itself.
    let mut fake3 =
        danger::group_with_id(&outsider, CONSULTATION, b"confide/c/42/0badc0de").unwrap();
    let w = danger::commit_add_as_any_member(&mut fake3, &outsider, &[claim(&outsider, &patient)])
        .unwrap();
    assert!(matches!(
        ConsultationGroup::join(
            &patient,
            CONSULTATION,
            &w.welcome.unwrap(),
            &doctor_principal()
        ),
        Err(Error::WrongGroup(_))
    ));

    // The call goes on between the real participants, and nothing the ghost holds opens
    // what they send: not its fake group's keys, not any epoch it made.
    let mut d_tx = encryptor(&doctor, &dg);
    let mut p_tx = encryptor(&patient, &pg);
    let tapped: Vec<Vec<u8>> = (0..20)
        .flat_map(|i| [seal(&mut d_tx, i), seal(&mut p_tx, i)])
        .collect();
    let mut p_rx = decryptor(&patient, &pg);
    let mut d_rx = decryptor(&doctor, &dg);
    assert!(opens(&mut p_rx, &tapped[0]) && opens(&mut d_rx, &tapped[1]));
    let mut ghost_keys = [decryptor(&ghost, &fake), decryptor(&impostor, &fake2)];
    for f in &tapped {
        for k in ghost_keys.iter_mut() {
            assert!(!opens(k, f), "a ghost opened a consultation frame");
        }
    }
    // And no roster shows anyone but the two.
    assert_eq!(pg.roster().len(), 2);
    assert_eq!(dg.roster().len(), 2);
}
