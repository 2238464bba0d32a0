//! Test-only hooks that break the rules on purpose, to prove that *other* clients refuse
//! what a malicious member or server would send. Built only with the
//! `danger-test-hooks` feature, which no shipped binary enables.

use zeroize::Zeroizing;

use crate::device::{ClaimedKeyPackage, Device, client, key_package_message, random};
use crate::error::Result;
use crate::group::{Commit, ConsultationGroup};
use crate::identity::DeviceName;
use crate::storage::Store;

/// Commit an Add from any member, skipping the local owner check.
pub fn commit_add_as_any_member(
    group: &mut ConsultationGroup,
    device: &Device,
    key_packages: &[ClaimedKeyPackage],
) -> Result<Commit> {
    group.add_unchecked(device, key_packages)
}

/// A KeyPackage that *claims* `name` and `claimed_key` but is signed with `device`'s
/// key: what a server that does not hold a victim's secret key could forge.
pub fn key_package_claiming(
    device: &Device,
    name: &DeviceName,
    claimed_key: &[u8; 32],
) -> Result<Vec<u8>> {
    // A throwaway client with its own storage: the credential names `name` and
    // `claimed_key`, the signatures are made with `device`'s secret.
    let secret: Zeroizing<[u8; 32]> = Zeroizing::new(
        device
            .secret_key()
            .as_slice()
            .try_into()
            .map_err(|_| crate::Error::Internal("device secret is not 32 bytes".into()))?,
    );
    let forger = client(name, claimed_key, &secret, Store::default());
    key_package_message(&forger, false)
}

/// A group of the ghost's own under a chosen group id (to forge commits and Welcomes
/// that name a real consultation's group).
pub fn group_with_id(
    device: &Device,
    consultation: &str,
    group_id: &[u8],
) -> Result<ConsultationGroup> {
    ConsultationGroup::create_with_id(device, consultation, group_id)
}

/// A fresh Ed25519 secret key (a ghost's own key): 32 random bytes, the form
/// [`Device::restore`] takes.
pub fn fresh_signer() -> Result<Zeroizing<[u8; 32]>> {
    Ok(Zeroizing::new(random()?))
}
