//! Confide's group policy, as the MLS library's hooks: the identity provider (only
//! Confide device credentials) and the rules every received commit passes before it is
//! applied (only the owner adds and removes, the owner is never removed, no external
//! commits). Both run inside the library before any state changes, so a refused commit
//! leaves the group as it was.

use mls_rs::client_builder::PaddingMode;
use mls_rs::group::proposal::Proposal;
use mls_rs::group::{GroupContext, Roster};
use mls_rs::identity::{CredentialType, SigningIdentity};
use mls_rs::mls_rules::{
    CommitDirection, CommitOptions, CommitSource, EncryptionOptions, ProposalBundle,
};
use mls_rs::{ExtensionList, IdentityProvider, MlsRules};
use mls_rs_core::identity::MemberValidationContext;
use mls_rs_core::time::MlsTime;

use crate::device::member_identity;

/// The owner's (the doctor's) leaf. The creator of a group is always at leaf 0, and the
/// rules below never let anyone remove it, so leaf 0 is the owner for the whole life of
/// the group, on every member's device alike.
pub(crate) const OWNER_LEAF: u32 = 0;

/// A refusal by the policy, carried through the library's error type and turned back
/// into [`crate::Error::Policy`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct PolicyError(pub(crate) &'static str);

impl mls_rs::error::IntoAnyError for PolicyError {
    fn into_dyn_error(self) -> std::result::Result<Box<dyn std::error::Error + Send + Sync>, Self> {
        Ok(Box::new(self))
    }
}

/// Accepts only Confide basic credentials (`DeviceName::from_credential_identity`) with
/// a 32-byte Ed25519 signature key.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ConfideIdentity;

pub(crate) const NOT_CONFIDE: &str = "a credential is not a Confide device credential";

impl ConfideIdentity {
    fn check(signing_identity: &SigningIdentity) -> Result<Vec<u8>, PolicyError> {
        let (name, _) = member_identity(signing_identity).map_err(|_| PolicyError(NOT_CONFIDE))?;
        Ok(name.credential_identity())
    }
}

impl IdentityProvider for ConfideIdentity {
    type Error = PolicyError;

    fn validate_member(
        &self,
        signing_identity: &SigningIdentity,
        _timestamp: Option<MlsTime>,
        _context: MemberValidationContext<'_>,
    ) -> Result<(), Self::Error> {
        Self::check(signing_identity).map(|_| ())
    }

    fn validate_external_sender(
        &self,
        _signing_identity: &SigningIdentity,
        _timestamp: Option<MlsTime>,
        _extensions: Option<&ExtensionList>,
    ) -> Result<(), Self::Error> {
        Err(PolicyError("external senders are not accepted"))
    }

    fn identity(
        &self,
        signing_identity: &SigningIdentity,
        _extensions: &ExtensionList,
    ) -> Result<Vec<u8>, Self::Error> {
        Self::check(signing_identity)
    }

    fn valid_successor(
        &self,
        predecessor: &SigningIdentity,
        successor: &SigningIdentity,
        _extensions: &ExtensionList,
    ) -> Result<bool, Self::Error> {
        Ok(Self::check(predecessor)? == Self::check(successor)?)
    }

    fn supported_types(&self) -> Vec<CredentialType> {
        vec![CredentialType::BASIC]
    }
}

/// The commit rules.
///
/// PSK proposals and proposals by reference are not even compiled in (the `psk` and
/// `by_ref_proposal` features of the library are off): a commit carrying one does not
/// decode, and a stand-alone proposal is refused before processing.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ConfideRules;

impl MlsRules for ConfideRules {
    type Error = PolicyError;

    fn filter_proposals(
        &self,
        direction: CommitDirection,
        source: CommitSource,
        _current_roster: &Roster,
        _current_context: &GroupContext,
        proposals: ProposalBundle,
    ) -> Result<ProposalBundle, Self::Error> {
        // Our own commits are checked by the calling code (`add` and `remove` refuse a
        // non-owner with InvalidArgument); the test hooks rely on being able to break
        // the rules on the sending side.
        if direction == CommitDirection::Send {
            return Ok(proposals);
        }
        let committer = match source {
            CommitSource::ExistingMember(m) => m.index,
            CommitSource::NewMember(_) => {
                return Err(PolicyError("external commits are not accepted"));
            }
        };
        if !proposals.external_init_proposals().is_empty() {
            return Err(PolicyError("external commits are not accepted"));
        }
        let changes_membership =
            !proposals.add_proposals().is_empty() || !proposals.remove_proposals().is_empty();
        if changes_membership && committer != OWNER_LEAF {
            return Err(PolicyError(
                "only the doctor's device may add or remove members",
            ));
        }
        if proposals
            .remove_proposals()
            .iter()
            .any(|r| r.proposal.to_remove() == OWNER_LEAF)
        {
            return Err(PolicyError("the doctor's device cannot be removed"));
        }
        for add in proposals.add_proposals() {
            ConfideIdentity::check(add.proposal.key_package().signing_identity())?;
        }
        Ok(proposals)
    }

    fn commit_options(
        &self,
        _new_roster: &Roster,
        _new_context: &GroupContext,
        _proposals: &ProposalBundle,
    ) -> Result<CommitOptions, Self::Error> {
        Ok(CommitOptions::new()
            // Every commit carries an UpdatePath (post-compromise security on adds too).
            .with_path_required(true)
            // The Welcome carries the tree: no separate tree delivery by the server.
            .with_ratchet_tree_extension(true)
            .with_single_welcome_message(true)
            .with_allow_external_commit(false))
    }

    fn encryption_options(
        &self,
        _current_roster: &Roster,
        _current_context: &GroupContext,
    ) -> Result<EncryptionOptions, Self::Error> {
        // Handshakes encrypted too: the server sees group id, epoch and content type
        // only (what it needs to order commits), not who adds whom.
        Ok(EncryptionOptions::new(true, PaddingMode::None))
    }
}

/// The add proposals' signing identities and the removed leaves of an applied commit.
pub(crate) fn membership_changes<'a>(
    proposals: impl Iterator<Item = &'a Proposal>,
) -> (Vec<&'a SigningIdentity>, Vec<u32>) {
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    for p in proposals {
        match p {
            Proposal::Add(a) => added.push(a.key_package().signing_identity()),
            Proposal::Remove(r) => removed.push(r.to_remove()),
            _ => {}
        }
    }
    (added, removed)
}
