//! Who a device is: a principal (an account id, or a guest invite) and a device id, bound
//! into the MLS credential that every group member sees.

use std::fmt;

use crate::error::{Error, Result};

/// Prefix of every Confide credential identity, so a credential minted for another
/// application (or another version of this one) never parses as ours.
const CREDENTIAL_PREFIX: &str = "confide/v1 ";
/// Longest principal text we accept (`guest:` plus a 64-bit number fits easily).
pub const MAX_PRINCIPAL_LEN: usize = 40;

/// A principal as the server names it: an account (`"account:17"`) or a guest
/// (`"guest:5"`). Only digits after the kind, so it can never smuggle separators.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Principal(String);

impl Principal {
    /// Parse and validate.
    pub fn new(text: &str) -> Result<Self> {
        let digits = text
            .strip_prefix("guest:")
            .or_else(|| text.strip_prefix("account:"))
            .unwrap_or("");
        if text.len() > MAX_PRINCIPAL_LEN
            || digits.is_empty()
            || !digits.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(Error::Malformed("principal".into()));
        }
        Ok(Self(text.to_owned()))
    }

    /// The text form.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Principal({})", self.0)
    }
}

/// A device id: 16 random bytes chosen by the device at its first login, shown as 32
/// lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId([u8; 16]);

impl DeviceId {
    /// From 16 random bytes.
    #[must_use]
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// Parse 32 lowercase hex characters.
    pub fn parse(text: &str) -> Result<Self> {
        if text.len() != 32 || text.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(Error::Malformed("device id".into()));
        }
        let mut out = [0u8; 16];
        hex::decode_to_slice(text, &mut out).map_err(|_| Error::Malformed("device id".into()))?;
        Ok(Self(out))
    }

    /// The raw bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({self})")
    }
}

/// (principal, device): what an MLS credential names. The signature key that goes with
/// it lives in the leaf node, next to the credential.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct DeviceName {
    /// Whose device.
    pub principal: Principal,
    /// Which device.
    pub device: DeviceId,
}

impl DeviceName {
    /// The BasicCredential identity bytes: `"confide/v1 <principal> <device hex>"`.
    #[must_use]
    pub fn credential_identity(&self) -> Vec<u8> {
        format!("{CREDENTIAL_PREFIX}{} {}", self.principal, self.device).into_bytes()
    }

    /// Parse BasicCredential identity bytes made by [`Self::credential_identity`].
    pub fn from_credential_identity(bytes: &[u8]) -> Result<Self> {
        let text = std::str::from_utf8(bytes).map_err(|_| Error::Malformed("credential".into()))?;
        let rest = text
            .strip_prefix(CREDENTIAL_PREFIX)
            .ok_or_else(|| Error::Malformed("not a Confide credential".into()))?;
        let (principal, device) = rest
            .split_once(' ')
            .ok_or_else(|| Error::Malformed("credential".into()))?;
        Ok(Self {
            principal: Principal::new(principal)?,
            device: DeviceId::parse(device)?,
        })
    }
}

impl fmt::Display for DeviceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.principal, self.device)
    }
}

/// A member as the group shows it: MLS leaf index, device name, Ed25519 signature key.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Member {
    /// The leaf index (also the SFrame sender index of this member's media).
    pub leaf: u32,
    /// The device named in the credential.
    pub name: DeviceName,
    /// The 32-byte Ed25519 signature public key of the leaf.
    pub signature_key: [u8; 32],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_identity_round_trips_and_rejects_lookalikes() {
        let n = DeviceName {
            principal: Principal::new("guest:12").unwrap(),
            device: DeviceId::from_bytes([0xab; 16]),
        };
        let bytes = n.credential_identity();
        assert_eq!(DeviceName::from_credential_identity(&bytes).unwrap(), n);
        for bad in [
            &b"confide/v1 account:17"[..],
            b"confide/v2 account:17 abababababababababababababababab",
            b"confide/v1 account:17  abababababababababababababababab",
            b"confide/v1 account:1 7 abababababababababababababababab",
            b"confide/v1 account:17 ABABABABABABABABABABABABABABABAB",
            b"confide/v1 17 abababababababababababababababab",
            b"\xff\xfe",
        ] {
            assert!(
                DeviceName::from_credential_identity(bad).is_err(),
                "{bad:?}"
            );
        }
    }
}
