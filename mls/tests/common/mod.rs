//! A small clinic: devices, the delivery of commits, and frame helpers.

use confide_e2ee::{CipherSuite, Codec, GroupFrameDecryptor, GroupFrameEncryptor};
use confide_mls::{ClaimedKeyPackage, Commit, ConsultationGroup, Device, Incoming, Principal};

pub const CONSULTATION: &str = "42";
pub const SUITE: CipherSuite = CipherSuite::ChaCha20Poly1305Sha256_128;

pub fn device(principal: &str) -> Device {
    Device::generate(Principal::new(principal).unwrap()).unwrap()
}

pub fn doctor_principal() -> Principal {
    Principal::new("account:1").unwrap()
}

/// A KeyPackage as the directory would hand it out, parsed by the adding device.
pub fn claim(adder: &Device, joiner: &Device) -> ClaimedKeyPackage {
    let kp = joiner.key_packages(1).unwrap().remove(0);
    ClaimedKeyPackage::parse(adder, &kp).unwrap()
}

/// Doctor adds `joiner`; the server accepts; existing members process the commit.
pub fn add(
    doctor: &Device,
    dgroup: &mut ConsultationGroup,
    joiner: &Device,
    others: &mut [(&Device, &mut ConsultationGroup)],
) -> ConsultationGroup {
    let Commit { commit, welcome } = dgroup.add(doctor, &[claim(doctor, joiner)]).unwrap();
    dgroup.confirm_commit(doctor).unwrap();
    for (d, g) in others.iter_mut() {
        assert!(matches!(
            g.handle_message(d, &commit).unwrap(),
            Incoming::NewEpoch { .. }
        ));
    }
    ConsultationGroup::join(joiner, CONSULTATION, &welcome.unwrap(), &doctor_principal()).unwrap()
}

pub fn encryptor(device: &Device, g: &ConsultationGroup) -> GroupFrameEncryptor {
    GroupFrameEncryptor::new(SUITE, &g.epoch_secret(device).unwrap(), g.own_leaf()).unwrap()
}

pub fn decryptor(device: &Device, g: &ConsultationGroup) -> GroupFrameDecryptor {
    let mut d = GroupFrameDecryptor::new(SUITE);
    d.install(g.epoch_secret(device).unwrap()).unwrap();
    d
}

/// An Opus-shaped frame (TOC byte kept clear) with a recognisable body.
pub fn frame(tag: u8) -> Vec<u8> {
    let mut f = vec![0xfc];
    f.extend(std::iter::repeat_n(tag, 60));
    f
}

pub fn seal(enc: &mut GroupFrameEncryptor, tag: u8) -> Vec<u8> {
    let mut out = Vec::new();
    enc.encrypt(Codec::Opus, &frame(tag), &mut out).unwrap();
    out
}

pub fn opens(dec: &mut GroupFrameDecryptor, wire: &[u8]) -> bool {
    let mut out = Vec::new();
    dec.decrypt(Codec::Opus, wire, &mut out).is_ok()
}
