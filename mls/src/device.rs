//! This device: its long-lived Ed25519 signature key (the MLS credential), the KeyPackages
//! it publishes, and the MLS state it keeps between sessions.

use mls_rs::client_builder::{
    BaseConfig, WithCryptoProvider, WithGroupStateStorage, WithIdentityProvider,
    WithKeyPackageRepo, WithMlsRules,
};
use mls_rs::crypto::{SignaturePublicKey, SignatureSecretKey};
use mls_rs::extension::MlsCodecExtension as _;
use mls_rs::extension::recommended::LastResortKeyPackageExt;
use mls_rs::external_client::ExternalClient;
use mls_rs::identity::SigningIdentity;
use mls_rs::identity::basic::BasicCredential;
use mls_rs::mls_rs_codec::MlsDecode as _;
use mls_rs::{CipherSuite, Client, CryptoProvider, ExtensionList, MlsMessage};
use mls_rs_crypto_rustcrypto::RustCryptoProvider;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::identity::{DeviceId, DeviceName, Member, Principal};
use crate::policy::{ConfideIdentity, ConfideRules};
use crate::storage::Store;

/// The one ciphersuite Confide uses: X25519, ChaCha20-Poly1305, SHA-256, Ed25519
/// (`MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519`, 0x0003).
pub const CIPHERSUITE: u16 = 0x0003;
pub(crate) const SUITE: CipherSuite = CipherSuite::CURVE25519_CHACHA;
/// Largest KeyPackage we parse (ours are about 300 bytes).
pub const MAX_KEY_PACKAGE_LEN: usize = 16 * 1024;

/// The MLS client configuration every Confide device uses.
pub(crate) type Config = WithMlsRules<
    ConfideRules,
    WithIdentityProvider<
        ConfideIdentity,
        WithCryptoProvider<
            RustCryptoProvider,
            WithGroupStateStorage<Store, WithKeyPackageRepo<Store, BaseConfig>>,
        >,
    >,
>;

/// One device's MLS identity and state.
///
/// The signature key is long-lived: it is what peers pin and what the key directory logs.
/// Everything else MLS needs (KeyPackage private keys, group secrets) is in the state
/// returned by [`Device::export_state`], which the application persists (IndexedDB in
/// the browser, a file in the native client) and passes back to [`Device::restore`]:
/// without it, a Welcome made for a KeyPackage published earlier cannot be opened.
pub struct Device {
    pub(crate) client: Client<Config>,
    pub(crate) store: Store,
    secret: Zeroizing<[u8; 32]>,
    public: [u8; 32],
    name: DeviceName,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// `N` bytes from the platform RNG (`crypto.getRandomValues` in the browser), through
/// the MLS crypto provider.
pub(crate) fn random<const N: usize>() -> Result<[u8; N]> {
    let cs = RustCryptoProvider::default()
        .cipher_suite_provider(SUITE)
        .ok_or_else(|| Error::Internal("ciphersuite unsupported".into()))?;
    let mut out = [0u8; N];
    cs.random_bytes(&mut out).map_err(Error::internal)?;
    Ok(out)
}

/// An MLS client for `name` with signature key `public`, signing with `secret` (the
/// 32-byte Ed25519 seed), storing into `store`. The test hooks use a `secret` that does
/// not match `public` to forge KeyPackages.
pub(crate) fn client(
    name: &DeviceName,
    public: &[u8; 32],
    secret: &[u8; 32],
    store: Store,
) -> Client<Config> {
    // The crypto provider takes Ed25519 secret keys as seed || public key.
    let signer_public = ed25519_public(secret);
    let mut keypair = Zeroizing::new(Vec::with_capacity(64));
    keypair.extend_from_slice(secret);
    keypair.extend_from_slice(&signer_public);
    let signer = SignatureSecretKey::new(keypair.to_vec());
    let identity = SigningIdentity::new(
        BasicCredential::new(name.credential_identity()).into_credential(),
        SignaturePublicKey::new(public.to_vec()),
    );
    Client::builder()
        .key_package_repo(store.clone())
        .group_state_storage(store)
        .crypto_provider(RustCryptoProvider::default())
        .identity_provider(ConfideIdentity)
        .mls_rules(ConfideRules)
        .extension_type(LastResortKeyPackageExt::extension_type())
        .signing_identity(identity, signer, SUITE)
        .build()
}

impl Device {
    /// A new device for `principal` with a fresh random device id and signature key.
    pub fn generate(principal: Principal) -> Result<Self> {
        let id: [u8; 16] = random()?;
        let secret = Zeroizing::new(random::<32>()?);
        Ok(Self::assemble(
            Store::default(),
            secret,
            principal,
            DeviceId::from_bytes(id),
        ))
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
        let store = if state.is_empty() {
            Store::default()
        } else {
            Store::import(state)?
        };
        Ok(Self::assemble(store, secret, principal, device))
    }

    fn assemble(
        store: Store,
        secret: Zeroizing<[u8; 32]>,
        principal: Principal,
        device: DeviceId,
    ) -> Self {
        let public = ed25519_public(&secret);
        let name = DeviceName { principal, device };
        let client = client(&name, &public, &secret, store.clone());
        Self {
            client,
            store,
            secret,
            public,
            name,
        }
    }

    /// Who this device is.
    #[must_use]
    pub fn name(&self) -> &DeviceName {
        &self.name
    }

    /// The Ed25519 public key (what the key directory registers).
    #[must_use]
    pub fn signature_key(&self) -> [u8; 32] {
        self.public
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
        key_package_message(&self.client, last_resort)
    }

    /// Everything MLS keeps for this device (KeyPackage private keys, group state), to
    /// persist under the device's protection. Contains secrets: never send it anywhere.
    #[must_use]
    pub fn export_state(&self) -> Zeroizing<Vec<u8>> {
        self.store.export()
    }
}

/// A KeyPackage message of `client`. Its private keys go to the client's KeyPackage
/// storage. A last-resort one carries the last_resort extension (RFC 9420 section
/// 17.3): joining from it keeps its private keys, so it opens any number of Welcomes;
/// a one-time one is deleted from the storage when a join from it is stored.
pub(crate) fn key_package_message(client: &Client<Config>, last_resort: bool) -> Result<Vec<u8>> {
    let mut extensions = ExtensionList::new();
    if last_resort {
        extensions
            .set_from(LastResortKeyPackageExt)
            .map_err(Error::internal)?;
    }
    client
        .generate_key_package_message(extensions, ExtensionList::new(), None)
        .map_err(Error::internal)?
        .to_bytes()
        .map_err(Error::internal)
}

fn ed25519_public(secret: &[u8; 32]) -> [u8; 32] {
    // Done through confide-e2ee's identity type so the public key this crate publishes
    // is the one confide-e2ee computes; the MLS provider checks the pair when signing.
    confide_e2ee::IdentityKeyPair::from_secret_bytes(secret)
        .public_key()
        .to_bytes()
}

/// Decode exactly one MLSMessage (no trailing bytes).
pub(crate) fn decode_message(bytes: &[u8]) -> Option<MlsMessage> {
    let mut r = bytes;
    let m = MlsMessage::mls_decode(&mut r).ok()?;
    r.is_empty().then_some(m)
}

/// A KeyPackage fetched from the directory, verified (signature, ciphersuite, lifetime)
/// and with its Confide credential parsed. Compare [`ClaimedKeyPackage::name`] and
/// [`ClaimedKeyPackage::signature_key`] with the directory entry and the pin before
/// adding it.
#[derive(Debug)]
pub struct ClaimedKeyPackage {
    pub(crate) key_package: MlsMessage,
    name: DeviceName,
    signature_key: [u8; 32],
}

impl ClaimedKeyPackage {
    /// Parse and verify a KeyPackage (an MLSMessage of type key_package).
    pub fn parse(device: &Device, bytes: &[u8]) -> Result<Self> {
        let _ = device;
        if bytes.len() > MAX_KEY_PACKAGE_LEN {
            return Err(Error::Malformed("key package too large".into()));
        }
        let msg =
            decode_message(bytes).ok_or_else(|| Error::Malformed("key package framing".into()))?;
        let Some(kp) = msg.as_key_package() else {
            return Err(Error::Malformed("not a key package".into()));
        };
        if kp.cipher_suite() != SUITE {
            return Err(Error::Refused("key package ciphersuite".into()));
        }
        // Signatures (KeyPackage and leaf node), lifetime, capabilities, the init key,
        // and the credential through the identity provider.
        let validator = ExternalClient::builder()
            .crypto_provider(RustCryptoProvider::default())
            .identity_provider(ConfideIdentity)
            .build();
        let key_package = msg.clone();
        let kp =
            validator.validate_key_package(msg, None).map_err(
                |e| match crate::group::policy_error(&e) {
                    Some(_) => Error::Malformed(crate::policy::NOT_CONFIDE.into()),
                    None => Error::refused(e),
                },
            )?;
        let (name, signature_key) = member_identity(kp.signing_identity())?;
        Ok(Self {
            key_package,
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

/// Parse a signing identity (credential and signature key) into a Confide device name
/// and a 32-byte key.
pub(crate) fn member_identity(identity: &SigningIdentity) -> Result<(DeviceName, [u8; 32])> {
    let basic = identity
        .credential
        .as_basic()
        .ok_or_else(|| Error::Malformed("not a basic credential".into()))?;
    let name = DeviceName::from_credential_identity(&basic.identifier)?;
    let key: [u8; 32] = identity
        .signature_key
        .as_bytes()
        .try_into()
        .map_err(|_| Error::Malformed("signature key is not Ed25519".into()))?;
    Ok((name, key))
}

pub(crate) fn to_member(m: &mls_rs::group::Member) -> Result<Member> {
    let (name, signature_key) = member_identity(&m.signing_identity)?;
    Ok(Member {
        leaf: m.index,
        name,
        signature_key,
    })
}
