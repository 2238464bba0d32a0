//! Malformed, replayed and misdirected handshake messages: refused with an error, never
//! a panic, and the group state is unchanged.

use confide_mls::{ClaimedKeyPackage, ConsultationGroup, Error, Incoming, Principal};
use proptest::prelude::*;

use crate::common::*;

fn pair() -> (
    confide_mls::Device,
    ConsultationGroup,
    confide_mls::Device,
    ConsultationGroup,
) {
    let doctor = device("account:1");
    let patient = device("account:2");
    let mut dg = ConsultationGroup::create(&doctor, CONSULTATION).unwrap();
    let pg = add(&doctor, &mut dg, &patient, &mut []);
    (doctor, dg, patient, pg)
}

#[test]
fn replayed_and_old_commits_are_refused() {
    let (doctor, mut dg, patient, mut pg) = pair();
    let c1 = dg.self_update(&doctor).unwrap();
    dg.confirm_commit(&doctor).unwrap();
    assert!(matches!(
        pg.handle_message(&patient, &c1.commit).unwrap(),
        Incoming::NewEpoch { epoch: 2, .. }
    ));
    // The same commit again: it is for epoch 1, the group is at 2.
    assert!(matches!(
        pg.handle_message(&patient, &c1.commit),
        Err(Error::Refused(_))
    ));
    assert_eq!(pg.epoch(), 2);
    let c2 = dg.self_update(&doctor).unwrap();
    dg.confirm_commit(&doctor).unwrap();
    assert!(pg.handle_message(&patient, &c2.commit).is_ok());
    assert_eq!(pg.epoch(), 3);
}

#[test]
fn welcomes_for_other_consultations_or_from_others_are_refused() {
    let doctor = device("account:1");
    let patient = device("account:2");
    let mut dg = ConsultationGroup::create(&doctor, "43").unwrap();
    let c = dg.add(&doctor, &[claim(&doctor, &patient)]).unwrap();
    let w = c.welcome.unwrap();
    assert!(matches!(
        ConsultationGroup::join(&patient, CONSULTATION, &w, &doctor_principal()),
        Err(Error::WrongGroup(_))
    ));

    let mut dg = ConsultationGroup::create(&doctor, CONSULTATION).unwrap();
    let c = dg.add(&doctor, &[claim(&doctor, &patient)]).unwrap();
    let other_doctor = Principal::new("account:5").unwrap();
    assert!(matches!(
        ConsultationGroup::join(&patient, CONSULTATION, &c.welcome.unwrap(), &other_doctor),
        Err(Error::WrongGroup(_))
    ));
    // A commit is not a Welcome, and a Welcome is not a commit.
    assert!(
        ConsultationGroup::join(&patient, CONSULTATION, &c.commit, &doctor_principal()).is_err()
    );
}

#[test]
fn a_patient_cannot_add_anyone() {
    let (doctor, mut dg, patient, mut pg) = pair();
    let guest = device("guest:3");
    assert!(matches!(
        pg.add(&patient, &[claim(&patient, &guest)]),
        Err(Error::InvalidArgument(_))
    ));
    let c = confide_mls::danger::commit_add_as_any_member(
        &mut pg,
        &patient,
        &[claim(&patient, &guest)],
    )
    .unwrap();
    assert!(matches!(
        dg.handle_message(&doctor, &c.commit),
        Err(Error::Policy(_))
    ));
    assert_eq!(dg.epoch(), 1);
}

#[test]
fn a_flipped_bit_anywhere_in_a_commit_is_refused_and_the_real_one_still_applies() {
    let (doctor, mut dg, patient, mut pg) = pair();
    let c = dg.self_update(&doctor).unwrap();
    dg.confirm_commit(&doctor).unwrap();
    for i in (0..c.commit.len()).step_by(7) {
        let mut bad = c.commit.clone();
        bad[i] ^= 0x01;
        assert!(pg.handle_message(&patient, &bad).is_err(), "byte {i}");
        assert_eq!(pg.epoch(), 1);
    }
    assert!(pg.handle_message(&patient, &c.commit).is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let (_doctor, _dg, patient, mut pg) = pair();
        let _ = pg.handle_message(&patient, &bytes);
        prop_assert_eq!(pg.epoch(), 1);
        let _ = ConsultationGroup::join(&patient, CONSULTATION, &bytes, &doctor_principal());
        let _ = ClaimedKeyPackage::parse(&patient, &bytes);
        let _ = confide_mls::transparency::GroupPayload::from_bytes(&bytes);
    }

    #[test]
    fn mls_framed_garbage_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..300), wf in 1u8..6) {
        let (_doctor, _dg, patient, mut pg) = pair();
        let mut bytes = vec![0, 1, 0, wf];
        bytes.extend(tail);
        let _ = pg.handle_message(&patient, &bytes);
        prop_assert_eq!(pg.epoch(), 1);
        let _ = ConsultationGroup::join(&patient, CONSULTATION, &bytes, &doctor_principal());
        let _ = ClaimedKeyPackage::parse(&patient, &bytes);
    }
}
