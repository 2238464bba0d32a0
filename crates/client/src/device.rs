//! This device's lasting identity: the MLS credential (Ed25519 secret and device id),
//! the MLS state it exports, the pins of its peers' keys and the key-transparency log
//! key and head, kept in a state directory as the browser keeps them in IndexedDB.
//!
//! One device per principal: `<state dir>/<principal>/` holds
//!
//! | file | what |
//! |---|---|
//! | `device.json` | principal, device id, the 32-byte signature secret (base64) |
//! | `mls-state` | `Device::export_state` (KeyPackage private keys, group secrets) |
//! | `pins.json` | `PinStore::to_json` (peer keys seen, accepted, verified) |
//! | `log.json` | the pinned log verifier key and the newest accepted tree head |
//!
//! Every file is written whole to a temporary name with mode 0600 and renamed over the
//! old one, so a crash leaves the previous version; the directories are 0700. Without a
//! state directory the device is temporary: made fresh and kept in memory only (tests,
//! the load harness).
//!
//! Nothing here is ever logged: errors name the file, never its content.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use confide_mls::pins::{PinStatus, PinStore};
use confide_mls::{Device, DeviceId, DeviceName, Principal};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

const DEVICE_FILE: &str = "device.json";
const STATE_FILE: &str = "mls-state";
const PINS_FILE: &str = "pins.json";
const LOG_FILE: &str = "log.json";

/// Errors of the device store. They name a file or a step, never secret content.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Reading or writing a state file failed.
    #[error("device state {file}: {error}")]
    Io {
        /// The file (relative to the principal's directory).
        file: &'static str,
        /// The OS error.
        error: std::io::Error,
    },
    /// A state file does not parse, or belongs to another principal.
    #[error("device state {0} is corrupt")]
    Corrupt(&'static str),
    /// The MLS layer refused (device creation or restore).
    #[error("mls: {0}")]
    Mls(#[from] confide_mls::Error),
}

/// What to do when a peer's key is not the pinned one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinPolicy {
    /// Trust a principal seen for the first time (trust on first use) and pin its key.
    /// With `false`, first contact waits for [`crate::Participant::accept_key`] too.
    pub accept_first_contact: bool,
    /// Accept a new device or a changed key of a pinned principal without asking. Never
    /// for people; only for a harness that makes fresh devices on every run.
    pub accept_changes: bool,
}

impl Default for PinPolicy {
    /// Trust on first use; a new device or a changed key waits for the user.
    fn default() -> Self {
        PinPolicy {
            accept_first_contact: true,
            accept_changes: false,
        }
    }
}

impl PinPolicy {
    /// Whether keys may be shared with a device of this status without asking.
    pub fn allows(&self, status: PinStatus) -> bool {
        match status {
            PinStatus::Pinned { .. } => true,
            PinStatus::FirstContact => self.accept_first_contact,
            PinStatus::NewDevice | PinStatus::Changed => self.accept_changes,
        }
    }
}

/// Where and how a participant keeps its device.
#[derive(Debug, Clone, Default)]
pub struct KeyConfig {
    /// The state directory (one subdirectory per principal). `None`: a fresh temporary
    /// device, in memory only.
    pub state_dir: Option<PathBuf>,
    /// The pin policy.
    pub policy: PinPolicy,
}

impl KeyConfig {
    /// A lasting device in `dir`, default policy.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        KeyConfig {
            state_dir: Some(dir.into()),
            policy: PinPolicy::default(),
        }
    }
}

#[derive(Deserialize)]
struct DeviceFile {
    principal: String,
    device: String,
    secret: String,
}

impl Drop for DeviceFile {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.secret);
    }
}

#[derive(Serialize)]
struct DeviceFileOut<'a> {
    principal: &'a str,
    device: &'a str,
    secret: &'a str,
}

#[derive(Serialize, Deserialize, Default)]
struct LogFile {
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    head: String,
}

/// This device: its MLS identity and what it remembers, persisted when it has a
/// directory.
pub struct DeviceStore {
    dir: Option<PathBuf>,
    /// Made by this `open` (not loaded).
    new: bool,
    device: Device,
    pins: PinStore,
    log: LogFile,
}

impl std::fmt::Debug for DeviceStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceStore")
            .field("device", self.device.name())
            .field("persistent", &self.dir.is_some())
            .finish_non_exhaustive()
    }
}

/// The directory name of a principal (`account:17` -> `account-17`; principals are
/// validated to `kind:digits`, so this is safe as a path component).
fn principal_dir(principal: &Principal) -> String {
    principal.as_str().replace(':', "-")
}

fn io(file: &'static str) -> impl FnOnce(std::io::Error) -> StoreError {
    move |error| StoreError::Io { file, error }
}

fn read_optional(dir: &Path, file: &'static str) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
    match fs::read(dir.join(file)) {
        Ok(b) => Ok(Some(Zeroizing::new(b))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(file)(e)),
    }
}

/// Writes `bytes` to `dir/file` atomically with mode 0600.
fn write_private(dir: &Path, file: &'static str, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = dir.join(format!("{file}.tmp"));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(file))?;
    f.write_all(bytes).map_err(io(file))?;
    f.sync_all().map_err(io(file))?;
    drop(f);
    fs::rename(&tmp, dir.join(file)).map_err(io(file))
}

impl DeviceStore {
    /// Loads the device of `principal` from `state_dir`, or makes one and saves it. With
    /// no directory, makes a temporary device.
    pub fn open(state_dir: Option<&Path>, principal: Principal) -> Result<Self, StoreError> {
        let Some(root) = state_dir else {
            return Ok(DeviceStore {
                dir: None,
                new: true,
                device: Device::generate(principal)?,
                pins: PinStore::new(),
                log: LogFile::default(),
            });
        };
        let dir = root.join(principal_dir(&principal));
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io("."))?;
        let pins = match read_optional(&dir, PINS_FILE)? {
            Some(b) => PinStore::from_json(
                std::str::from_utf8(&b).map_err(|_| StoreError::Corrupt(PINS_FILE))?,
            )
            .map_err(|_| StoreError::Corrupt(PINS_FILE))?,
            None => PinStore::new(),
        };
        let log = match read_optional(&dir, LOG_FILE)? {
            Some(b) => serde_json::from_slice(&b).map_err(|_| StoreError::Corrupt(LOG_FILE))?,
            None => LogFile::default(),
        };
        let new;
        let device = match read_optional(&dir, DEVICE_FILE)? {
            Some(b) => {
                let f: DeviceFile =
                    serde_json::from_slice(&b).map_err(|_| StoreError::Corrupt(DEVICE_FILE))?;
                if f.principal != principal.as_str() {
                    return Err(StoreError::Corrupt(DEVICE_FILE));
                }
                let id =
                    DeviceId::parse(&f.device).map_err(|_| StoreError::Corrupt(DEVICE_FILE))?;
                let secret = Zeroizing::new(
                    B64.decode(f.secret.as_bytes())
                        .map_err(|_| StoreError::Corrupt(DEVICE_FILE))?,
                );
                let state = read_optional(&dir, STATE_FILE)?.unwrap_or_default();
                new = false;
                Device::restore(principal, id, &secret, &state)?
            }
            None => {
                let device = Device::generate(principal)?;
                let secret = Zeroizing::new(B64.encode(&*device.secret_key()));
                let id = device.name().device.to_string();
                let text = Zeroizing::new(
                    serde_json::to_vec(&DeviceFileOut {
                        principal: device.name().principal.as_str(),
                        device: &id,
                        secret: &secret,
                    })
                    .map_err(|_| StoreError::Corrupt(DEVICE_FILE))?,
                );
                write_private(&dir, DEVICE_FILE, &text)?;
                write_private(&dir, STATE_FILE, &device.export_state())?;
                new = true;
                device
            }
        };
        Ok(DeviceStore {
            dir: Some(dir),
            new,
            device,
            pins,
            log,
        })
    }

    /// The MLS device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Who this device is.
    pub fn name(&self) -> &DeviceName {
        self.device.name()
    }

    /// `true` when the device was made by this `open` (temporary, or first use of the
    /// state directory for this principal).
    pub fn is_new(&self) -> bool {
        self.new
    }

    /// `true` when the device lives in a state directory.
    pub fn is_persistent(&self) -> bool {
        self.dir.is_some()
    }

    /// The pins.
    pub fn pins(&self) -> &PinStore {
        &self.pins
    }

    /// Changes the pins and saves them.
    pub fn update_pins(&mut self, f: impl FnOnce(&mut PinStore)) -> Result<(), StoreError> {
        f(&mut self.pins);
        match &self.dir {
            Some(dir) => write_private(dir, PINS_FILE, self.pins.to_json().as_bytes()),
            None => Ok(()),
        }
    }

    /// Saves the MLS state (after KeyPackages were made, a group joined or deleted).
    pub fn save_state(&self) -> Result<(), StoreError> {
        match &self.dir {
            Some(dir) => write_private(dir, STATE_FILE, &self.device.export_state()),
            None => Ok(()),
        }
    }

    /// The pinned log verifier key, if any.
    pub fn log_key(&self) -> Option<&str> {
        self.log.key.as_deref()
    }

    /// The newest accepted log head (`LogView::save`), or an empty string.
    pub fn log_head(&self) -> &str {
        &self.log.head
    }

    /// Pins the log key and saves the head.
    pub fn save_log(&mut self, key: &str, head: String) -> Result<(), StoreError> {
        self.log.key = Some(key.to_string());
        self.log.head = head;
        match &self.dir {
            Some(dir) => write_private(
                dir,
                LOG_FILE,
                &serde_json::to_vec(&self.log).map_err(|_| StoreError::Corrupt(LOG_FILE))?,
            ),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn principal() -> Principal {
        Principal::new("account:17").unwrap()
    }

    #[test]
    fn a_device_in_a_directory_survives_a_restart_with_private_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = DeviceStore::open(Some(dir.path()), principal()).unwrap();
        assert!(a.is_new());
        let name = a.name().clone();
        let key = a.device().signature_key();
        let kp = a.device().last_resort_key_package().unwrap();
        a.save_state().unwrap();
        let peer = DeviceName {
            principal: Principal::new("account:2").unwrap(),
            device: DeviceId::from_bytes([2; 16]),
        };
        a.update_pins(|p| p.mark_verified(&peer, &[9; 32])).unwrap();
        a.save_log("vkey", "{}".into()).unwrap();
        drop(a);

        let b = DeviceStore::open(Some(dir.path()), principal()).unwrap();
        assert!(!b.is_new());
        assert_eq!(b.name(), &name);
        assert_eq!(b.device().signature_key(), key);
        assert!(b.pins().is_verified(&peer, &[9; 32]));
        assert_eq!((b.log_key(), b.log_head()), (Some("vkey"), "{}"));
        // The KeyPackage made before the restart still has its private key.
        let other = Device::generate(Principal::new("account:1").unwrap()).unwrap();
        let claimed = confide_mls::ClaimedKeyPackage::parse(&other, &kp).unwrap();
        let mut g = confide_mls::ConsultationGroup::create(&other, "7").unwrap();
        let c = g.add(&other, &[claimed]).unwrap();
        g.confirm_commit(&other).unwrap();
        confide_mls::ConsultationGroup::join(
            b.device(),
            "7",
            &c.welcome.unwrap(),
            &other.name().principal,
        )
        .unwrap();

        let sub = dir.path().join("account-17");
        assert_eq!(
            fs::metadata(&sub).unwrap().permissions().mode() & 0o777,
            0o700
        );
        for f in [DEVICE_FILE, STATE_FILE, PINS_FILE, LOG_FILE] {
            let mode = fs::metadata(sub.join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
        // Another principal gets another device; a temporary one is never written.
        let c = DeviceStore::open(Some(dir.path()), Principal::new("guest:3").unwrap()).unwrap();
        assert_ne!(c.name().device, name.device);
        let t = DeviceStore::open(None, principal()).unwrap();
        assert!(!t.is_persistent());
        assert_ne!(t.name().device, name.device);
    }

    #[test]
    fn corrupt_or_foreign_state_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(DeviceStore::open(Some(dir.path()), principal()).unwrap());
        let sub = dir.path().join("account-17");
        let text = fs::read_to_string(sub.join(DEVICE_FILE)).unwrap();
        fs::write(
            sub.join(DEVICE_FILE),
            text.replace("account:17", "account:18"),
        )
        .unwrap();
        assert!(matches!(
            DeviceStore::open(Some(dir.path()), principal()),
            Err(StoreError::Corrupt(DEVICE_FILE))
        ));
        fs::write(sub.join(DEVICE_FILE), text).unwrap();
        fs::write(sub.join(PINS_FILE), "{not json").unwrap();
        assert!(matches!(
            DeviceStore::open(Some(dir.path()), principal()),
            Err(StoreError::Corrupt(PINS_FILE))
        ));
    }

    #[test]
    fn the_policy_asks_for_changes_and_optionally_for_first_contact() {
        let p = PinPolicy::default();
        assert!(p.allows(PinStatus::FirstContact));
        assert!(p.allows(PinStatus::Pinned { verified: false }));
        assert!(!p.allows(PinStatus::NewDevice) && !p.allows(PinStatus::Changed));
        let strict = PinPolicy {
            accept_first_contact: false,
            ..p
        };
        assert!(!strict.allows(PinStatus::FirstContact));
    }
}
