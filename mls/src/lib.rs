//! # confide-mls: Confide's group key layer on MLS (RFC 9420)
//!
//! Media and chat keys come from one MLS group per consultation. The server is only the
//! MLS *delivery service* (it orders commits and fans out ciphertext) and the *key
//! directory* (it stores device credentials and KeyPackages, and logs every credential
//! in the RFC 6962 audit log so clients can check what it shows them). It cannot add
//! anyone to a group: an Add is a commit signed by a member, and only the doctor's device
//! commits Adds.
//!
//! * [`Device`]: this device's long-lived Ed25519 credential, bound to
//!   ([`Principal`], [`DeviceId`]), its KeyPackages, and the MLS state it persists.
//! * [`ConsultationGroup`]: create (doctor), join from a Welcome, add/remove (doctor),
//!   self-update, process commits and application messages, the roster from MLS state,
//!   and the SFrame base key of each epoch (`MLS-Exporter("SFrame 1.0 Base Key", "", 32)`,
//!   RFC 9605 section 5.2; frames themselves are `confide_e2ee::group_media`).
//! * [`safety`]: the per-pair safety code people compare aloud, from both device keys.
//! * [`transparency`]: checks of the directory's answers against signed checkpoints of
//!   the audit log (inclusion), of newer checkpoints against older ones (consistency),
//!   and of a peer's checkpoint against ours (a forked log shows here).
//! * [`admission`]: the checks before sharing keys with a device (directory log, pins).
//! * [`pins`]: what this device remembers about its peers' keys, and whether a pair has
//!   been verified.
//!
//! ## The loop
//!
//! Every state change is one call that takes bytes and returns bytes or an event;
//! nothing here sends, receives or sleeps. A commit made locally is *pending* until the
//! server answers: [`ConsultationGroup::confirm_commit`] on `mls_accepted`,
//! [`ConsultationGroup::discard_commit`] on `stale_commit`.
//!
//! ## What this crate does not do
//!
//! * No I/O: the application fetches directory answers and proofs, delivers messages,
//!   and persists [`Device::export_state`] and the [`pins::PinStore`].
//! * It does not decide *whom* to admit: the doctor does, and the application checks the
//!   KeyPackage's credential against the directory and the pin before calling
//!   [`ConsultationGroup::add`].
//! * Randomness: unlike `confide-e2ee`, MLS key generation draws from the platform RNG
//!   (`getrandom`; `crypto.getRandomValues` in the browser) through the MLS crypto
//!   provider (mls-rs with its RustCrypto provider).
//!
//! ## Errors
//!
//! One [`Error`]; [`Error::is_from_peer`] tells input from the network or the server
//! (drop it, and warn when it is a security event) from misuse. Parsers never panic.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod admission;
#[cfg(feature = "danger-test-hooks")]
pub mod danger;
mod device;
mod error;
pub mod fuzzing;
mod group;
mod identity;
pub mod pins;
mod policy;
pub mod safety;
mod storage;
pub mod transparency;

pub use device::{CIPHERSUITE, ClaimedKeyPackage, Device, MAX_KEY_PACKAGE_LEN};
pub use error::{Error, Result};
pub use group::{
    BASE_KEY_LEN, Commit, ConsultationGroup, Incoming, MAX_MESSAGE_LEN, group_id_prefix,
};
pub use identity::{DeviceId, DeviceName, MAX_PRINCIPAL_LEN, Member, Principal};
