//! Entry points for the `cargo fuzz` targets in `mls/fuzz`, also run by the unit tests
//! so CI compiles and exercises them. Each takes arbitrary bytes and must never panic.
//!
//! A fixed two-member group is built once per process (key generation is the slow
//! part); every input is fed to a fresh clone of the receiving side's view through the
//! public API, so a fuzzer explores the decoders, not the setup.

use std::sync::OnceLock;

use crate::device::{ClaimedKeyPackage, Device};
use crate::group::ConsultationGroup;
use crate::identity::Principal;
use crate::transparency::{DirectoryAnswer, GroupPayload};

struct Fixture {
    patient: Device,
    welcome: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        // Fixed inputs; a failure here is a bug in the crate, not in the fuzz input.
        let doctor = Device::generate(Principal::new("account:1").expect("valid")).expect("device");
        let patient =
            Device::generate(Principal::new("account:2").expect("valid")).expect("device");
        let mut g = ConsultationGroup::create(&doctor, "1").expect("group");
        let kp = patient.key_packages(1).expect("kp").remove(0);
        let kp = ClaimedKeyPackage::parse(&doctor, &kp).expect("parse");
        let c = g.add(&doctor, &[kp]).expect("add");
        Fixture {
            patient,
            welcome: c.welcome.expect("welcome"),
        }
    })
}

/// Feed `data` to every handshake decoder: as a group message, as a Welcome, as a
/// KeyPackage, as a group payload and as a directory answer.
pub fn handshake(data: &[u8]) {
    let f = fixture();
    let owner = Principal::new("account:1").expect("valid");
    let _ = ConsultationGroup::join(&f.patient, "1", data, &owner);
    let _ = ClaimedKeyPackage::parse(&f.patient, data);
    let _ = GroupPayload::from_bytes(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = serde_json::from_str::<DirectoryAnswer>(text);
    }
}

/// Feed `data` as a message to a member of a real group; the epoch must not move.
pub fn group_message(data: &[u8]) {
    let f = fixture();
    let owner = Principal::new("account:1").expect("valid");
    // Each call joins from the same Welcome: a last-resort-free KeyPackage is consumed by
    // the first join, so restore a copy of the device state instead.
    let state = f.patient.export_state();
    let name = f.patient.name().clone();
    let Ok(device) = Device::restore(name.principal, name.device, &f.patient.secret_key(), &state)
    else {
        return;
    };
    let Ok(mut g) = ConsultationGroup::join(&device, "1", &f.welcome, &owner) else {
        return;
    };
    let before = g.epoch();
    let _ = g.handle_message(&device, data);
    assert_eq!(g.epoch(), before, "a fuzzer-made message moved the epoch");
}

#[cfg(test)]
mod tests {
    #[test]
    fn fuzz_entry_points_accept_arbitrary_bytes() {
        let mut x = 0x9e37_79b9_u32;
        for len in [0usize, 1, 2, 3, 4, 5, 8, 16, 40, 100, 300] {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            super::handshake(&data);
            super::group_message(&data);
            let mut framed = vec![0, 1, 0, 2];
            framed.extend_from_slice(&data);
            super::group_message(&framed);
            super::handshake(&framed);
        }
    }
}
