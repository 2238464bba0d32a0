//! This device: its long-lived Ed25519 signature key (the MLS credential), the KeyPackages
//! it publishes, and the MLS state it keeps between sessions.

use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::OpenMlsProvider;
use openmls_traits::random::OpenMlsRand;
use tls_codec::{Deserialize as _, Serialize as _};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::identity::{DeviceId, DeviceName, Member, Principal};

/// The one ciphersuite Confide uses: X25519, ChaCha20-Poly1305, SHA-256, Ed25519 (0x0003).
pub const CIPHERSUITE: Ciphersuite =
    Ciphersuite::MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519;
/// Largest KeyPackage we parse (ours are about 300 bytes).
pub const MAX_KEY_PACKAGE_LEN: usize = 16 * 1024;
const STATE_VERSION: u8 = 1;

/// One device's MLS identity and state.
///
/// The signature key is long-lived: it is what peers pin and what the key directory logs.
/// Everything else MLS needs (KeyPackage private keys, group secrets) is in the state
/// returned by [`Device::export_state`], which the application persists (IndexedDB in
/// the browser, a file in the native client) and passes back to [`Device::restore`]:
/// without it, a Welcome made for a KeyPackage published earlier cannot be opened.
pub struct Device {
    pub(crate) provider: OpenMlsRustCrypto,
    pub(crate) signer: SignatureKeyPair,
    secret: Zeroizing<[u8; 32]>,
    name: DeviceName,
    pub(crate) credential: CredentialWithKey,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Device {
    /// A new device for `principal` with a fresh random device id and signature key.
    pub fn generate(principal: Principal) -> Result<Self> {
        let provider = OpenMlsRustCrypto::default();
        let id: [u8; 16] = provider.rand().random_array().map_err(Error::internal)?;
        let secret = Zeroizing::new(
            provider
                .rand()
                .random_array::<32>()
                .map_err(Error::internal)?,
        );
        Self::assemble(provider, secret, principal, DeviceId::from_bytes(id))
    }

    /// Restore a device from its secret signature key and the state it exported.
    pub fn restore(
        principal: Principal,
        device: DeviceId,
        secret_key: &[u8],
        state: &[u8],
    ) -> Result<Self> {
        let secret: Zeroizing<[u8; 32]> = Zeroizing::new(
            secret_key
                .try_into()
                .map_err(|_| Error::InvalidArgument("device secret must be 32 bytes"))?,
        );
        let provider = OpenMlsRustCrypto::default();
        if !state.is_empty() {
            import_state(&provider, state)?;
        }
        Self::assemble(provider, secret, principal, device)
    }

    fn assemble(
        provider: OpenMlsRustCrypto,
        secret: Zeroizing<[u8; 32]>,
        principal: Principal,
        device: DeviceId,
    ) -> Result<Self> {
        let public = ed25519_public(&secret);
        let signer =
            SignatureKeyPair::from_raw(SignatureScheme::ED25519, secret.to_vec(), public.to_vec());
        let name = DeviceName { principal, device };
        let credential = CredentialWithKey {
            credential: BasicCredential::new(name.credential_identity()).into(),
            signature_key: signer.to_public_vec().into(),
        };
        Ok(Self {
            provider,
            signer,
            secret,
            name,
            credential,
        })
    }

    /// Who this device is.
    #[must_use]
    pub fn name(&self) -> &DeviceName {
        &self.name
    }

    /// The Ed25519 public key (what the key directory registers).
    #[must_use]
    pub fn signature_key(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.signer.public());
        out
    }

    /// The 32-byte secret signature key, for this device's own protected storage only.
    #[must_use]
    pub fn secret_key(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.secret.to_vec())
    }

    /// `n` one-time KeyPackages to upload to the directory. Their private keys go into
    /// the state: export it after calling this.
    pub fn key_packages(&self, n: usize) -> Result<Vec<Vec<u8>>> {
        (0..n).map(|_| self.key_package(false)).collect()
    }

    /// A last-resort KeyPackage (used when the one-time ones run out; may be used twice).
    pub fn last_resort_key_package(&self) -> Result<Vec<u8>> {
        self.key_package(true)
    }

    fn key_package(&self, last_resort: bool) -> Result<Vec<u8>> {
        // The last-resort extension must be listed in the leaf's capabilities, or the
        // KeyPackage fails validation (RFC 9420 section 10.1).
        let capabilities =
            Capabilities::new(None, None, Some(&[ExtensionType::LastResort]), None, None);
        let mut b = KeyPackage::builder().leaf_node_capabilities(capabilities);
        if last_resort {
            b = b.mark_as_last_resort();
        }
        let bundle = b
            .build(
                CIPHERSUITE,
                &self.provider,
                &self.signer,
                self.credential.clone(),
            )
            .map_err(Error::internal)?;
        MlsMessageOut::from(bundle.key_package().clone())
            .tls_serialize_detached()
            .map_err(Error::internal)
    }

    /// Everything MLS keeps for this device (KeyPackage private keys, group state), to
    /// persist under the device's protection. Contains secrets: never send it anywhere.
    #[must_use]
    pub fn export_state(&self) -> Zeroizing<Vec<u8>> {
        let values = match self.provider.storage().values.read() {
            Ok(v) => v,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut entries: Vec<_> = values.iter().collect();
        // Sorted so two exports of the same state are byte-identical.
        entries.sort();
        let mut out = Zeroizing::new(Vec::new());
        out.push(STATE_VERSION);
        out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
        for (k, v) in entries {
            out.extend_from_slice(&(k.len() as u32).to_be_bytes());
            out.extend_from_slice(k);
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(v);
        }
        out
    }

    pub(crate) fn storage(&self) -> &openmls_rust_crypto::MemoryStorage {
        self.provider.storage()
    }
}

fn ed25519_public(secret: &[u8; 32]) -> [u8; 32] {
    // The same computation openmls_basic_credential does on generation; done through
    // confide-e2ee's identity type so only one Ed25519 implementation is trusted here.
    confide_e2ee::IdentityKeyPair::from_secret_bytes(secret)
        .public_key()
        .to_bytes()
}

fn import_state(provider: &OpenMlsRustCrypto, state: &[u8]) -> Result<()> {
    let bad = || Error::InvalidArgument("device state is corrupt");
    let mut r = state;
    let mut take = |n: usize| -> Result<&[u8]> {
        if r.len() < n {
            return Err(bad());
        }
        let (a, b) = r.split_at(n);
        r = b;
        Ok(a)
    };
    if take(1)?[0] != STATE_VERSION {
        return Err(bad());
    }
    let u32_at = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let count = u32_at(take(4)?);
    let mut values = match provider.storage().values.write() {
        Ok(v) => v,
        Err(poisoned) => poisoned.into_inner(),
    };
    for _ in 0..count {
        let kl = u32_at(take(4)?);
        let k = take(kl)?.to_vec();
        let vl = u32_at(take(4)?);
        let v = take(vl)?.to_vec();
        values.insert(k, v);
    }
    Ok(())
}

/// A KeyPackage fetched from the directory, verified (signature, ciphersuite, lifetime)
/// and with its Confide credential parsed. Compare [`ClaimedKeyPackage::name`] and
/// [`ClaimedKeyPackage::signature_key`] with the directory entry and the pin before
/// adding it.
#[derive(Debug)]
pub struct ClaimedKeyPackage {
    pub(crate) key_package: KeyPackage,
    name: DeviceName,
    signature_key: [u8; 32],
}

impl ClaimedKeyPackage {
    /// Parse and verify a KeyPackage (an MLSMessage of type key_package).
    pub fn parse(device: &Device, bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_KEY_PACKAGE_LEN {
            return Err(Error::Malformed("key package too large".into()));
        }
        let msg = MlsMessageIn::tls_deserialize_exact(bytes)
            .map_err(|_| Error::Malformed("key package framing".into()))?;
        let MlsMessageBodyIn::KeyPackage(kp) = msg.extract() else {
            return Err(Error::Malformed("not a key package".into()));
        };
        let kp = kp
            .validate(device.provider.crypto(), ProtocolVersion::Mls10)
            .map_err(Error::refused)?;
        if kp.ciphersuite() != CIPHERSUITE {
            return Err(Error::Refused("key package ciphersuite".into()));
        }
        let leaf = kp.leaf_node();
        let (name, signature_key) =
            member_identity(leaf.credential(), leaf.signature_key().as_slice())?;
        Ok(Self {
            key_package: kp,
            name,
            signature_key,
        })
    }

    /// The device named in the KeyPackage's credential.
    #[must_use]
    pub fn name(&self) -> &DeviceName {
        &self.name
    }

    /// The KeyPackage's Ed25519 signature key.
    #[must_use]
    pub fn signature_key(&self) -> [u8; 32] {
        self.signature_key
    }
}

/// Parse a credential and signature key into a Confide device name and a 32-byte key.
pub(crate) fn member_identity(
    credential: &Credential,
    key: &[u8],
) -> Result<(DeviceName, [u8; 32])> {
    let basic = BasicCredential::try_from(credential.clone())
        .map_err(|_| Error::Malformed("not a basic credential".into()))?;
    let name = DeviceName::from_credential_identity(basic.identity())?;
    let key: [u8; 32] = key
        .try_into()
        .map_err(|_| Error::Malformed("signature key is not Ed25519".into()))?;
    Ok((name, key))
}

pub(crate) fn to_member(m: &openmls::group::Member) -> Result<Member> {
    let (name, signature_key) = member_identity(&m.credential, &m.signature_key)?;
    Ok(Member {
        leaf: m.index.u32(),
        name,
        signature_key,
    })
}
