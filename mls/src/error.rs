//! The one error type of the crate.

use thiserror::Error;

/// Everything that can go wrong in `confide-mls`.
///
/// As in `confide-e2ee`, [`Error::is_from_peer`] separates input from the network or the
/// server (drop it, count it, warn the user when it is a security event) from misuse by
/// the calling code. Messages never contain key material.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Error {
    /// Bytes from the network do not parse (MLS framing, credential, directory answer).
    #[error("malformed input: {0}")]
    Malformed(String),
    /// A handshake message, Welcome or application message did not verify or does not
    /// belong to this group and epoch (MLS rejected it).
    #[error("refused MLS message: {0}")]
    Refused(String),
    /// A commit is valid MLS but breaks Confide's group policy (an Add or Remove not
    /// committed by the doctor who owns the group, an external join, a credential that
    /// is not a Confide device credential). The group state is unchanged.
    #[error("policy violation: {0}")]
    Policy(&'static str),
    /// A Welcome for another consultation, or from someone other than the expected owner.
    #[error("welcome for another group or from an unexpected member: {0}")]
    WrongGroup(&'static str),
    /// A key-transparency check failed: a checkpoint signature, an inclusion or a
    /// consistency proof, or a directory entry that does not match the key it vouches for.
    /// A failed consistency proof between two checkpoints means the log was forked.
    #[error("key transparency check failed: {0}")]
    Transparency(String),
    /// The caller asked for something this crate refuses (no pending commit to confirm,
    /// an empty member list, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// MLS library or storage failure that is not the peer's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// `true` for errors caused by bytes from the network or the server.
    #[must_use]
    pub fn is_from_peer(&self) -> bool {
        matches!(
            self,
            Self::Malformed(_)
                | Self::Refused(_)
                | Self::Policy(_)
                | Self::WrongGroup(_)
                | Self::Transparency(_)
        )
    }

    pub(crate) fn refused(e: impl std::fmt::Debug) -> Self {
        // Debug names the failed check; neither it nor Display carries key material.
        let mut s = format!("{e:?}");
        s.truncate(200);
        Self::Refused(s)
    }

    pub(crate) fn internal(e: impl std::fmt::Debug) -> Self {
        let mut s = format!("{e:?}");
        s.truncate(200);
        Self::Internal(s)
    }
}

/// Short alias used throughout the crate.
pub type Result<T> = std::result::Result<T, Error>;
