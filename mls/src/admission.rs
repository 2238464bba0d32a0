//! The checks a device makes before it shares keys with another device: the doctor's
//! before committing an Add, everyone's before trusting the owner of a group they were
//! welcomed into. One implementation for the browser and the native client.

use crate::device::ClaimedKeyPackage;
use crate::error::{Error, Result};
use crate::identity::{DeviceName, Member};
use crate::pins::{PinStatus, PinStore};
use crate::transparency::LoggedDevice;

/// Check that `key` is the logged, active key of `name`, and how it relates to the pins.
///
/// * `Err(Transparency)` if the directory (as verified against the log) has no active
///   device `name` with exactly this key: a server presenting a key it did not log, or a
///   revoked device. Never share keys.
/// * `Ok(status)`: the key is logged; share keys only if [`PinStatus::may_share`], or
///   after the user accepted the change (then [`PinStore::pin`] it).
pub fn check_device(
    name: &DeviceName,
    key: &[u8; 32],
    logged: &[LoggedDevice],
    pins: &PinStore,
) -> Result<PinStatus> {
    let found = logged
        .iter()
        .find(|d| &d.name == name)
        .ok_or_else(|| Error::Transparency(format!("{name} is not in the key directory's log")))?;
    if !found.active {
        return Err(Error::Transparency(format!("{name} is revoked")));
    }
    if &found.signature_key != key {
        return Err(Error::Transparency(format!(
            "{name} presents a key that differs from the logged one"
        )));
    }
    Ok(pins.check(name, key))
}

/// The doctor's check of a KeyPackage claimed for the participant it admits: the
/// KeyPackage must name exactly the device that joined (principal and device id the
/// server reported for that participant), and pass [`check_device`].
pub fn check_joiner(
    key_package: &ClaimedKeyPackage,
    expected: &DeviceName,
    logged: &[LoggedDevice],
    pins: &PinStore,
) -> Result<PinStatus> {
    if key_package.name() != expected {
        return Err(Error::Policy(
            "the key package names another device than the one admitted",
        ));
    }
    check_device(expected, &key_package.signature_key(), logged, pins)
}

/// A member's check of the group owner after a Welcome: the owner must be a logged
/// device of the consultation's doctor.
pub fn check_owner(owner: &Member, logged: &[LoggedDevice], pins: &PinStore) -> Result<PinStatus> {
    check_device(&owner.name, &owner.signature_key, logged, pins)
}
