//! Test-only hooks that break the rules on purpose, to prove that *other* clients refuse
//! what a malicious member or server would send. Built only with the
//! `danger-test-hooks` feature, which no shipped binary enables.

use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use tls_codec::Serialize as _;

use crate::device::{CIPHERSUITE, ClaimedKeyPackage, Device};
use crate::error::{Error, Result};
use crate::group::{Commit, ConsultationGroup};
use crate::identity::DeviceName;

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
    let credential = CredentialWithKey {
        credential: BasicCredential::new(name.credential_identity()).into(),
        signature_key: claimed_key.to_vec().into(),
    };
    let bundle = KeyPackage::builder()
        .build(CIPHERSUITE, &device.provider, &device.signer, credential)
        .map_err(Error::internal)?;
    MlsMessageOut::from(bundle.key_package().clone())
        .tls_serialize_detached()
        .map_err(Error::internal)
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

/// A fresh Ed25519 signer (a ghost's own key).
pub fn fresh_signer() -> Result<SignatureKeyPair> {
    SignatureKeyPair::new(SignatureScheme::ED25519).map_err(Error::internal)
}
