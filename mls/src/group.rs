//! One MLS group per consultation. The doctor's device creates it and is its *owner*:
//! only the owner's commits may add or remove members. Everyone else may only commit a
//! self-update. The server orders commits (first valid one per epoch wins) but cannot
//! add anyone: an Add is a commit signed by a member.

use mls_rs::error::MlsError;
use mls_rs::group::{CommitEffect, CommitMessageDescription, ContentType, ReceivedMessage};
use mls_rs::{Group, MlsMessage, MlsMessageDescription};

use confide_e2ee::group_media::{EpochSecret, MLS_EXPORTER_LABEL};

use crate::device::{
    ClaimedKeyPackage, Config, Device, decode_message, member_identity, to_member,
};
use crate::error::{Error, Result};
use crate::identity::{Member, Principal};
use crate::policy::{NOT_CONFIDE, OWNER_LEAF, PolicyError, membership_changes};

/// Largest handshake or application message we parse.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;
/// Bytes of the SFrame base key exported per epoch (the AEAD key size of the
/// ChaCha20-Poly1305 SFrame suite, `AEAD.Nk` of RFC 9605 section 5.2).
pub const BASE_KEY_LEN: usize = 32;

/// The prefix every consultation group id starts with; the server refuses commits for
/// group ids of other consultations, and clients refuse such Welcomes.
#[must_use]
pub fn group_id_prefix(consultation: &str) -> String {
    format!("confide/c/{consultation}/")
}

/// A commit to send to the server (`mls_commit`), and the Welcome for the people it adds.
/// Nothing changes locally until [`ConsultationGroup::confirm_commit`].
#[derive(Debug, Clone)]
#[must_use]
pub struct Commit {
    /// The MLS commit (a PrivateMessage).
    pub commit: Vec<u8>,
    /// The Welcome, when the commit adds members.
    pub welcome: Option<Vec<u8>>,
}

/// What a received group message did.
#[derive(Debug)]
#[non_exhaustive]
pub enum Incoming {
    /// A commit moved the group to a new epoch: install its key
    /// ([`ConsultationGroup::epoch_secret`]) and re-read the roster.
    NewEpoch {
        /// The new epoch.
        epoch: u64,
        /// Who committed.
        committer: Member,
        /// Members the commit added.
        added: Vec<Member>,
        /// Members the commit removed.
        removed: Vec<Member>,
    },
    /// This device was removed: the group is over for us.
    Removed,
    /// An application message (chat, or a key-transparency checkpoint) from a member.
    Application {
        /// The member who sent it (authenticated by MLS).
        sender: Member,
        /// The plaintext.
        payload: Vec<u8>,
    },
}

/// A consultation's MLS group as seen by one device.
///
/// Past epochs whose application messages (chat) still open after a commit: see
/// `storage::MAX_PAST_EPOCHS`.
pub struct ConsultationGroup {
    group: Group<Config>,
    consultation: String,
    owner: u32,
}

impl std::fmt::Debug for ConsultationGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsultationGroup")
            .field("consultation", &self.consultation)
            .field("epoch", &self.epoch())
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

fn serialize(m: &MlsMessage) -> Result<Vec<u8>> {
    m.to_bytes().map_err(Error::internal)
}

/// The policy's refusal if the library error carries one.
pub(crate) fn policy_error(e: &MlsError) -> Option<&'static str> {
    let any = match e {
        MlsError::MlsRulesError(any) | MlsError::IdentityProviderError(any) => any,
        _ => return None,
    };
    any.inner_dyn_error()
        .downcast_ref::<PolicyError>()
        .map(|p| p.0)
}

/// Map a library error on peer input: policy refusals to [`Error::Policy`], the rest to
/// [`Error::Refused`].
fn from_peer(e: MlsError) -> Error {
    match policy_error(&e) {
        Some(p) => Error::Policy(p),
        None => Error::refused(e),
    }
}

impl ConsultationGroup {
    /// The doctor's device opens the consultation's group, alone in it, epoch 0.
    pub fn create(device: &Device, consultation: &str) -> Result<Self> {
        if consultation.is_empty() || consultation.contains('/') || consultation.len() > 64 {
            return Err(Error::InvalidArgument("consultation id"));
        }
        let nonce: [u8; 16] = crate::device::random()?;
        // A fresh suffix per group: a doctor who reloads the page starts a new group,
        // and nothing of the old one can be replayed into it.
        let id = format!("{}{}", group_id_prefix(consultation), hex::encode(nonce));
        Self::create_with_id(device, consultation, id.as_bytes())
    }

    pub(crate) fn create_with_id(device: &Device, consultation: &str, id: &[u8]) -> Result<Self> {
        let group = device
            .client
            .create_group_with_id(
                id.to_vec(),
                mls_rs::ExtensionList::new(),
                mls_rs::ExtensionList::new(),
                None,
            )
            .map_err(Error::internal)?;
        let mut g = Self {
            group,
            consultation: consultation.to_owned(),
            owner: OWNER_LEAF,
        };
        g.store()?;
        Ok(g)
    }

    /// Persist the group's state into the device's storage (what
    /// [`Device::export_state`] returns).
    fn store(&mut self) -> Result<()> {
        self.group.write_to_storage().map_err(Error::internal)
    }

    /// Join from a Welcome. Refused unless the group belongs to `consultation` and the
    /// Welcome was made by a device of `owner` (the consultation's doctor).
    pub fn join(
        device: &Device,
        consultation: &str,
        welcome: &[u8],
        owner: &Principal,
    ) -> Result<Self> {
        if welcome.len() > MAX_MESSAGE_LEN {
            return Err(Error::Malformed("welcome too large".into()));
        }
        let msg =
            decode_message(welcome).ok_or_else(|| Error::Malformed("welcome framing".into()))?;
        if !matches!(msg.description(), MlsMessageDescription::Welcome { .. }) {
            return Err(Error::Malformed("not a welcome".into()));
        }
        // Nothing is stored (and a one-time KeyPackage is not consumed) until the
        // checks below pass. The identity provider has already refused any member
        // without a Confide credential.
        let (group, info) =
            device
                .client
                .join_group(None, &msg, None)
                .map_err(|e| match policy_error(&e) {
                    Some(NOT_CONFIDE) => Error::Malformed(NOT_CONFIDE.into()),
                    Some(p) => Error::Policy(p),
                    None => Error::refused(e),
                })?;
        let prefix = group_id_prefix(consultation);
        if !group.group_id().starts_with(prefix.as_bytes()) {
            return Err(Error::WrongGroup(
                "the group belongs to another consultation",
            ));
        }
        // The owner is leaf 0: the creator, whom the policy never lets anyone remove,
        // and the only member allowed to add. So an honest Welcome is signed by leaf 0
        // (the GroupInfo's signer), and leaf 0 is a device of the consultation's doctor.
        if info.sender != OWNER_LEAF {
            return Err(Error::WrongGroup(
                "welcome not made by the consultation's doctor",
            ));
        }
        let sender = group.member_at_index(OWNER_LEAF).ok_or(Error::WrongGroup(
            "welcome not made by the consultation's doctor",
        ))?;
        let (sender_name, _) = member_identity(&sender.signing_identity)?;
        if &sender_name.principal != owner {
            return Err(Error::WrongGroup(
                "welcome not made by the consultation's doctor",
            ));
        }
        // Every member must carry a Confide credential; a group with anything else in it
        // was not built by a Confide client.
        for m in group.roster().members_iter() {
            to_member(&m)?;
        }
        let mut g = Self {
            group,
            consultation: consultation.to_owned(),
            owner: OWNER_LEAF,
        };
        g.store()?;
        Ok(g)
    }

    /// The consultation this group belongs to.
    #[must_use]
    pub fn consultation(&self) -> &str {
        &self.consultation
    }

    /// The group id bytes.
    #[must_use]
    pub fn group_id(&self) -> &[u8] {
        self.group.group_id()
    }

    /// The current epoch.
    #[must_use]
    pub fn epoch(&self) -> u64 {
        self.group.current_epoch()
    }

    /// Our leaf index (our SFrame sender index).
    #[must_use]
    pub fn own_leaf(&self) -> u32 {
        self.group.current_member_index()
    }

    /// The owner's (doctor's) leaf index.
    #[must_use]
    pub fn owner(&self) -> u32 {
        self.owner
    }

    /// The owner's member entry (check it with [`crate::admission::check_owner`]).
    #[must_use]
    pub fn owner_member(&self) -> Option<Member> {
        self.member(self.owner)
    }

    /// `true` if we own the group (we may add and remove).
    #[must_use]
    pub fn is_owner(&self) -> bool {
        self.owner == self.own_leaf()
    }

    /// The members, from MLS state: the only roster a client shows.
    #[must_use]
    pub fn roster(&self) -> Vec<Member> {
        // Every member was checked to carry a Confide credential when it was added.
        self.group
            .roster()
            .members_iter()
            .filter_map(|m| to_member(&m).ok())
            .collect()
    }

    /// The member at `leaf`, if any.
    #[must_use]
    pub fn member(&self, leaf: u32) -> Option<Member> {
        self.group
            .member_at_index(leaf)
            .and_then(|m| to_member(&m).ok())
    }

    /// The SFrame base key of the current epoch (RFC 9605 section 5.2).
    pub fn epoch_secret(&self, device: &Device) -> Result<EpochSecret> {
        let _ = device;
        let key = self
            .group
            .export_secret(MLS_EXPORTER_LABEL.as_bytes(), &[], BASE_KEY_LEN)
            .map_err(Error::internal)?;
        EpochSecret::new(self.epoch(), key.as_bytes().to_vec())
            .map_err(|_| Error::Internal("empty exporter output".into()))
    }

    /// Owner only: add these devices. Check each [`ClaimedKeyPackage`] against the
    /// directory and the pins first.
    pub fn add(&mut self, device: &Device, key_packages: &[ClaimedKeyPackage]) -> Result<Commit> {
        if !self.is_owner() {
            return Err(Error::InvalidArgument(
                "only the doctor's device adds members",
            ));
        }
        self.add_unchecked(device, key_packages)
    }

    pub(crate) fn add_unchecked(
        &mut self,
        device: &Device,
        key_packages: &[ClaimedKeyPackage],
    ) -> Result<Commit> {
        let _ = device;
        if key_packages.is_empty() {
            return Err(Error::InvalidArgument("nothing to add"));
        }
        let mut b = self.group.commit_builder();
        for k in key_packages {
            b = b
                .add_member(k.key_package.clone())
                .map_err(Error::refused)?;
        }
        let out = b.build().map_err(Error::refused)?;
        self.store()?;
        let welcome = out
            .welcome_messages
            .first()
            .ok_or_else(|| Error::Internal("no welcome".into()))?;
        Ok(Commit {
            commit: serialize(&out.commit_message)?,
            welcome: Some(serialize(welcome)?),
        })
    }

    /// Owner only: remove the members at these leaves.
    pub fn remove(&mut self, device: &Device, leaves: &[u32]) -> Result<Commit> {
        let _ = device;
        if !self.is_owner() {
            return Err(Error::InvalidArgument(
                "only the doctor's device removes members",
            ));
        }
        if leaves.is_empty() || leaves.contains(&self.own_leaf()) {
            return Err(Error::InvalidArgument("leaves to remove"));
        }
        let mut b = self.group.commit_builder();
        for &l in leaves {
            b = b.remove_member(l).map_err(Error::refused)?;
        }
        let out = b.build().map_err(Error::refused)?;
        self.store()?;
        Ok(Commit {
            commit: serialize(&out.commit_message)?,
            welcome: None,
        })
    }

    /// Any member: a fresh leaf key (post-compromise security).
    pub fn self_update(&mut self, device: &Device) -> Result<Commit> {
        let _ = device;
        // A commit without proposals carries an UpdatePath: our new leaf.
        let out = self
            .group
            .commit_builder()
            .build()
            .map_err(Error::refused)?;
        self.store()?;
        Ok(Commit {
            commit: serialize(&out.commit_message)?,
            welcome: None,
        })
    }

    /// The server accepted our pending commit: apply it. Returns the new epoch.
    pub fn confirm_commit(&mut self, device: &Device) -> Result<u64> {
        let _ = device;
        if !self.group.has_pending_commit() {
            return Err(Error::InvalidArgument("no pending commit"));
        }
        self.group.apply_pending_commit().map_err(Error::internal)?;
        self.store()?;
        Ok(self.epoch())
    }

    /// The server refused our pending commit (another one won the epoch): drop it.
    pub fn discard_commit(&mut self, device: &Device) -> Result<()> {
        let _ = device;
        self.group.clear_pending_commit();
        self.store()
    }

    /// Seal an application message for the group.
    pub fn seal(&mut self, device: &Device, payload: &[u8]) -> Result<Vec<u8>> {
        let _ = device;
        let m = self
            .group
            .encrypt_application_message(payload, Vec::new())
            .map_err(Error::refused)?;
        // The sending ratchet moved: persist it, or a restored device would reuse keys.
        self.store()?;
        serialize(&m)
    }

    /// Process a message the server delivered (`mls_commit` or `chat`). On any error the
    /// group state is unchanged.
    pub fn handle_message(&mut self, device: &Device, bytes: &[u8]) -> Result<Incoming> {
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(Error::Malformed("message too large".into()));
        }
        let msg = decode_message(bytes).ok_or_else(|| Error::Malformed("MLS framing".into()))?;
        let (group_id, content_type, encrypted) = match msg.description() {
            MlsMessageDescription::PrivateProtocolMessage {
                group_id,
                content_type,
                ..
            } => (group_id, content_type, true),
            MlsMessageDescription::PublicProtocolMessage {
                group_id,
                content_type,
                ..
            } => (group_id, content_type, false),
            _ => return Err(Error::Malformed("not a group message".into())),
        };
        if group_id != self.group.group_id() {
            return Err(Error::WrongGroup("message for another group"));
        }
        // Everything in a consultation group is a PrivateMessage.
        if !encrypted {
            return Err(Error::Refused("unencrypted group message".into()));
        }
        // Stand-alone proposals: Confide never sends proposals by reference, and the
        // library is built without them, so a proposal message does not even decode
        // (see `policy::ConfideRules`).
        if content_type == ContentType::Commit && self.group.has_pending_commit() {
            // Someone else's commit won this epoch; ours will be refused by the server.
            self.discard_commit(device)?;
        }
        let roster_before = self.roster();
        // The library may advance ratchets before it refuses a message: work on a copy
        // and keep it only on success.
        let mut work = self.group.clone();
        let received = work.process_incoming_message(msg).map_err(from_peer)?;
        let out = match received {
            ReceivedMessage::ApplicationMessage(m) => {
                let sender = roster_before
                    .iter()
                    .find(|r| r.leaf == m.sender_index)
                    .cloned()
                    .ok_or(Error::Policy("sender is not a member"))?;
                Incoming::Application {
                    sender,
                    payload: m.data().to_vec(),
                }
            }
            ReceivedMessage::Commit(c) => {
                let committer = roster_before
                    .iter()
                    .find(|r| r.leaf == c.committer)
                    .cloned()
                    .ok_or(Error::Policy("message from outside the group"))?;
                self.group = work;
                let incoming = self.describe_commit(committer, &roster_before, c);
                self.store()?;
                return Ok(incoming);
            }
            _ => return Err(Error::Malformed("not a group message".into())),
        };
        self.group = work;
        self.store()?;
        Ok(out)
    }

    fn describe_commit(
        &self,
        committer: Member,
        roster_before: &[Member],
        c: CommitMessageDescription,
    ) -> Incoming {
        let new_epoch = match c.effect {
            CommitEffect::NewEpoch(e) => e,
            CommitEffect::Removed { .. } => return Incoming::Removed,
            // ReInit proposals are committed by no Confide client; the group moved on
            // anyway, so report the epoch.
            CommitEffect::ReInit(_) => {
                return Incoming::NewEpoch {
                    epoch: self.epoch(),
                    committer,
                    added: Vec::new(),
                    removed: Vec::new(),
                };
            }
        };
        let (added_ids, removed_leaves) =
            membership_changes(new_epoch.applied_proposals().iter().map(|p| &p.proposal));
        let removed = roster_before
            .iter()
            .filter(|m| removed_leaves.contains(&m.leaf))
            .cloned()
            .collect();
        let added_names: Vec<_> = added_ids
            .into_iter()
            .filter_map(|id| member_identity(id).ok())
            .collect();
        let added = self
            .roster()
            .into_iter()
            .filter(|m| {
                added_names
                    .iter()
                    .any(|(n, k)| &m.name == n && &m.signature_key == k)
                    && !roster_before
                        .iter()
                        .any(|b| b.leaf == m.leaf && b.name == m.name)
            })
            .collect();
        Incoming::NewEpoch {
            epoch: self.epoch(),
            committer,
            added,
            removed,
        }
    }

    /// Forget the group and delete its state from the device.
    pub fn delete(self, device: &Device) -> Result<()> {
        device.store.delete_group(self.group.group_id());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Principal;

    fn device(p: &str) -> Device {
        Device::generate(Principal::new(p).unwrap()).unwrap()
    }

    fn is_private(bytes: &[u8]) -> bool {
        matches!(
            decode_message(bytes).unwrap().description(),
            MlsMessageDescription::PrivateProtocolMessage { .. }
        )
    }

    #[test]
    fn handshakes_and_chat_are_private_messages_and_the_welcome_carries_the_tree() {
        let doctor = device("account:1");
        let patient = device("account:2");
        let mut dg = ConsultationGroup::create(&doctor, "7").unwrap();
        let kp = patient.key_packages(1).unwrap().remove(0);
        let c = dg
            .add(&doctor, &[ClaimedKeyPackage::parse(&doctor, &kp).unwrap()])
            .unwrap();
        assert!(is_private(&c.commit));
        dg.confirm_commit(&doctor).unwrap();
        // Joining needs nothing but the Welcome: the tree is in it.
        let owner = Principal::new("account:1").unwrap();
        let pg = ConsultationGroup::join(&patient, "7", &c.welcome.unwrap(), &owner).unwrap();
        assert_eq!(pg.owner(), 0);
        assert!(is_private(&dg.self_update(&doctor).unwrap().commit));
        dg.discard_commit(&doctor).unwrap();
        assert!(is_private(&dg.seal(&doctor, b"hi").unwrap()));
    }

    #[test]
    fn a_last_resort_key_package_opens_many_welcomes_a_one_time_one_opens_one() {
        let doctor = device("account:1");
        let patient = device("account:2");
        let owner = Principal::new("account:1").unwrap();
        let last = patient.last_resort_key_package().unwrap();
        let once = patient.key_packages(1).unwrap().remove(0);
        let welcome = |kp: &[u8]| {
            let mut g = ConsultationGroup::create(&doctor, "7").unwrap();
            let c = g
                .add(&doctor, &[ClaimedKeyPackage::parse(&doctor, kp).unwrap()])
                .unwrap();
            c.welcome.unwrap()
        };
        for _ in 0..2 {
            ConsultationGroup::join(&patient, "7", &welcome(&last), &owner).unwrap();
        }
        ConsultationGroup::join(&patient, "7", &welcome(&once), &owner).unwrap();
        assert!(ConsultationGroup::join(&patient, "7", &welcome(&once), &owner).is_err());
    }

    #[test]
    fn exported_state_holds_key_packages_and_groups_and_round_trips() {
        let doctor = device("account:1");
        let mut dg = ConsultationGroup::create(&doctor, "7").unwrap();
        doctor.key_packages(2).unwrap();
        let before = doctor.export_state();
        let name = doctor.name().clone();
        let restored =
            Device::restore(name.principal, name.device, &doctor.secret_key(), &before).unwrap();
        assert_eq!(restored.export_state(), before);
        // The group's state is in the blob, and leaves it when the group is deleted.
        let loaded = restored.client.load_group(dg.group_id()).unwrap();
        assert_eq!(loaded.current_epoch(), dg.epoch());
        let _ = dg.self_update(&doctor).unwrap();
        dg.confirm_commit(&doctor).unwrap();
        assert_ne!(doctor.export_state(), before);
        let id = dg.group_id().to_vec();
        dg.delete(&doctor).unwrap();
        assert!(doctor.client.load_group(&id).is_err());
    }
}
