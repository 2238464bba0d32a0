//! What this device remembers about its peers: the device keys it has seen per principal
//! (trust on first use, then pinned), the changes the user accepted, and the pairs the
//! user verified by comparing the safety code.
//!
//! The store is plain data; the application persists [`PinStore::to_json`] on the device
//! (IndexedDB in the browser, a file in the native client) and never sends it anywhere.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::identity::DeviceName;

/// What [`PinStore::check`] found for a device key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinStatus {
    /// Nothing is pinned for this principal yet: trust on first use ([`PinStore::pin`]).
    FirstContact,
    /// This exact key is pinned for this device.
    Pinned {
        /// The user compared the safety code with this key and marked it verified.
        verified: bool,
    },
    /// The principal has pinned devices, but not this one: a new device, or a server
    /// presenting a key of its own. Share no key with it until the user accepts.
    NewDevice,
    /// This device id is pinned with a *different* key. The directory never lets a
    /// device change its key, so this is a server lying or a restored backup gone wrong.
    Changed,
}

impl PinStatus {
    /// `true` if media and chat keys may be shared with this device without asking.
    #[must_use]
    pub fn may_share(self) -> bool {
        matches!(self, Self::FirstContact | Self::Pinned { .. })
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
struct Pin {
    key: String,
    #[serde(default)]
    verified: bool,
}

/// Pins of peer device keys, keyed by principal then device id.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PinStore {
    principals: BTreeMap<String, BTreeMap<String, Pin>>,
}

impl PinStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Load what [`Self::to_json`] saved (an empty string is an empty store).
    pub fn from_json(text: &str) -> Result<Self> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_json::from_str(text).map_err(|_| Error::InvalidArgument("pin store is corrupt"))
    }

    /// Serialize for the device's storage.
    #[must_use]
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }

    /// How `key` for `name` relates to what is pinned.
    #[must_use]
    pub fn check(&self, name: &DeviceName, key: &[u8; 32]) -> PinStatus {
        let Some(devices) = self.principals.get(name.principal.as_str()) else {
            return PinStatus::FirstContact;
        };
        match devices.get(&name.device.to_string()) {
            None if devices.is_empty() => PinStatus::FirstContact,
            None => PinStatus::NewDevice,
            Some(p) if p.key == hex::encode(key) => PinStatus::Pinned {
                verified: p.verified,
            },
            Some(_) => PinStatus::Changed,
        }
    }

    /// Pin `key` for `name`: on first contact, or when the user accepted a new or changed
    /// key (which clears any verification of the old one).
    pub fn pin(&mut self, name: &DeviceName, key: &[u8; 32]) {
        let devices = self
            .principals
            .entry(name.principal.as_str().to_owned())
            .or_default();
        let hex_key = hex::encode(key);
        let entry = devices.entry(name.device.to_string()).or_default();
        if entry.key != hex_key {
            *entry = Pin {
                key: hex_key,
                verified: false,
            };
        }
    }

    /// The user compared the safety code with this device and it matched. Pins the key
    /// if it was not pinned yet.
    pub fn mark_verified(&mut self, name: &DeviceName, key: &[u8; 32]) {
        self.pin(name, key);
        if let Some(p) = self
            .principals
            .get_mut(name.principal.as_str())
            .and_then(|d| d.get_mut(&name.device.to_string()))
        {
            p.verified = true;
        }
    }

    /// Whether this exact key was verified.
    #[must_use]
    pub fn is_verified(&self, name: &DeviceName, key: &[u8; 32]) -> bool {
        matches!(self.check(name, key), PinStatus::Pinned { verified: true })
    }

    /// Forget a device the directory reports revoked.
    pub fn forget(&mut self, name: &DeviceName) {
        if let Some(d) = self.principals.get_mut(name.principal.as_str()) {
            d.remove(&name.device.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{DeviceId, Principal};

    #[test]
    fn first_use_then_pinned_then_changes_are_flagged() {
        let dev = |d| DeviceName {
            principal: Principal::new("account:7").unwrap(),
            device: DeviceId::from_bytes([d; 16]),
        };
        let mut s = PinStore::new();
        assert_eq!(s.check(&dev(1), &[1; 32]), PinStatus::FirstContact);
        s.pin(&dev(1), &[1; 32]);
        assert_eq!(
            s.check(&dev(1), &[1; 32]),
            PinStatus::Pinned { verified: false }
        );
        assert_eq!(s.check(&dev(1), &[2; 32]), PinStatus::Changed);
        assert_eq!(s.check(&dev(2), &[2; 32]), PinStatus::NewDevice);
        assert!(!PinStatus::NewDevice.may_share() && !PinStatus::Changed.may_share());
        s.mark_verified(&dev(1), &[1; 32]);
        let s = PinStore::from_json(&s.to_json()).unwrap();
        assert!(s.is_verified(&dev(1), &[1; 32]));
        let mut s2 = s.clone();
        s2.pin(&dev(1), &[3; 32]);
        assert!(
            !s2.is_verified(&dev(1), &[3; 32]),
            "acceptance resets verification"
        );
        assert!(PinStore::from_json("{not json").is_err());
    }
}
