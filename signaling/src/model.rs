//! Domain types shared by the core, the store and the HTTP edge.

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
