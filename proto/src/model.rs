//! Domain types shared by the protocol, the server's core, store and HTTP edge, and
//! clients.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident, $inner:ty, $prefix:literal) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub $inner);
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, ":{}"), self.0)
            }
        }
    };
}

id_type!(
    /// Row id of an account. Never sent to other participants.
    AccountId, i64, "account"
);
id_type!(
    /// Row id of an appointment; the consultation of that appointment shares it.
    AppointmentId, i64, "appointment"
);
id_type!(
    /// Row id of an invite.
    InviteId, i64, "invite"
);
id_type!(
    /// Row id of a stored chat ciphertext.
    ChatId, i64, "chat"
);
id_type!(
    /// Per-connection id inside a consultation, handed out by a counter. It is the
    /// only id other participants see, and doubles as the media participant id.
    ParticipantId, u64, "participant"
);

/// Milliseconds since the Unix epoch, UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn from_secs(s: i64) -> Self {
        Timestamp(s.saturating_mul(1000))
    }
    pub fn secs(self) -> i64 {
        self.0.div_euclid(1000)
    }
    pub fn plus_secs(self, s: i64) -> Self {
        Timestamp(self.0.saturating_add(s.saturating_mul(1000)))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Doctor,
    Patient,
    /// Scheduling only: sees the schedule, never clinical content.
    Staff,
    /// Accounts and audit; clinical content only through break-glass.
    Admin,
    /// Someone without an account who redeemed an invite for one appointment.
    Guest,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Doctor => "doctor",
            Role::Patient => "patient",
            Role::Staff => "staff",
            Role::Admin => "admin",
            Role::Guest => "guest",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "doctor" => Role::Doctor,
            "patient" => Role::Patient,
            "staff" => Role::Staff,
            "admin" => Role::Admin,
            "guest" => Role::Guest,
            _ => return None,
        })
    }

    /// Roles for which a second factor is mandatory.
    pub fn requires_mfa(self) -> bool {
        matches!(self, Role::Doctor | Role::Staff | Role::Admin)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who did something, in the pseudonymous form the audit log and consent records use.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Principal {
    Account(AccountId),
    Guest(InviteId),
}

impl Principal {
    /// The inverse of `Display`: `account:17` or `guest:5`, digits only after the kind,
    /// so a principal taken from a URL can never smuggle separators or signs.
    pub fn parse(s: &str) -> Option<Principal> {
        fn digits(d: &str) -> Option<i64> {
            if d.is_empty() || d.len() > 18 || !d.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            d.parse().ok()
        }
        if let Some(d) = s.strip_prefix("account:") {
            return digits(d).map(|n| Principal::Account(AccountId(n)));
        }
        s.strip_prefix("guest:")
            .and_then(digits)
            .map(|n| Principal::Guest(InviteId(n)))
    }
}

/// A device of a principal, as its key directory entry names it: 16 random bytes the
/// device chose at its first login, written as exactly 32 lowercase hex characters.
/// One text form only, so `device:<id>` in the audit log is the same string the
/// client verifies against.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceId(String);

impl DeviceId {
    pub const LEN: usize = 32;

    pub fn parse(s: &str) -> Option<DeviceId> {
        let ok = s.len() == Self::LEN
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ok.then(|| DeviceId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for DeviceId {
    type Error = &'static str;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        DeviceId::parse(&s).ok_or("a device id is 32 lowercase hex characters")
    }
}

impl From<DeviceId> for String {
    fn from(d: DeviceId) -> String {
        d.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Account(a) => write!(f, "{a}"),
            Principal::Guest(i) => write!(f, "guest:{}", i.0),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppointmentStatus {
    Booked,
    Ended,
    Cancelled,
}

impl AppointmentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AppointmentStatus::Booked => "booked",
            AppointmentStatus::Ended => "ended",
            AppointmentStatus::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "booked" => Self::Booked,
            "ended" => Self::Ended,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_parse_only_their_display_form() {
        for p in [
            Principal::Account(AccountId(17)),
            Principal::Guest(InviteId(5)),
        ] {
            assert_eq!(Principal::parse(&p.to_string()), Some(p));
        }
        for bad in [
            "17",
            "account:",
            "account:-1",
            "account:+1",
            "account:1 ",
            "guest:1/2",
            "Account:1",
            "account:99999999999999999999",
        ] {
            assert_eq!(Principal::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn device_ids_are_32_lowercase_hex() {
        let good = "0123456789abcdef0123456789abcdef";
        assert_eq!(DeviceId::parse(good).map(String::from), Some(good.into()));
        for bad in [
            "0123456789ABCDEF0123456789abcdef",
            "0123456789abcdef0123456789abcde",
            "0123456789abcdef0123456789abcdef0",
            "0123456789abcdef0123456789abcdeg",
            "",
        ] {
            assert!(DeviceId::parse(bad).is_none(), "{bad}");
        }
        assert!(serde_json::from_str::<DeviceId>("\"0123\"").is_err());
    }
}
