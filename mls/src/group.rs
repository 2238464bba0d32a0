//! One MLS group per consultation. The doctor's device creates it and is its *owner*:
//! only the owner's commits may add or remove members. Everyone else may only commit a
//! self-update. The server orders commits (first valid one per epoch wins) but cannot
//! add anyone: an Add is a commit signed by a member.

use openmls::prelude::*;
use tls_codec::{Deserialize as _, Serialize as _};

use confide_e2ee::group_media::{EpochSecret, MLS_EXPORTER_LABEL};

use crate::device::{ClaimedKeyPackage, Device, member_identity, to_member};
use crate::error::{Error, Result};
use crate::identity::{Member, Principal};

/// Largest handshake or application message we parse.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;
/// Bytes of the SFrame base key exported per epoch (the AEAD key size of the
/// ChaCha20-Poly1305 SFrame suite, `AEAD.Nk` of RFC 9605 section 5.2).
pub const BASE_KEY_LEN: usize = 32;
/// Past epochs whose application messages (chat) still open after a commit.
const MAX_PAST_EPOCHS: usize = 2;

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
pub struct ConsultationGroup {
    group: MlsGroup,
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

fn create_config() -> MlsGroupCreateConfig {
    MlsGroupCreateConfig::builder()
        .ciphersuite(crate::device::CIPHERSUITE)
        // The Welcome carries the tree: no separate tree delivery by the server.
        .use_ratchet_tree_extension(true)
        // Handshakes encrypted too: the server sees group id, epoch and content type
        // only (what it needs to order commits), not who adds whom.
        .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .build()
}

fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .build()
}

fn serialize(m: &MlsMessageOut) -> Result<Vec<u8>> {
    m.tls_serialize_detached().map_err(Error::internal)
}

impl ConsultationGroup {
    /// The doctor's device opens the consultation's group, alone in it, epoch 0.
    pub fn create(device: &Device, consultation: &str) -> Result<Self> {
        if consultation.is_empty() || consultation.contains('/') || consultation.len() > 64 {
            return Err(Error::InvalidArgument("consultation id"));
        }
        use openmls_traits::OpenMlsProvider as _;
        use openmls_traits::random::OpenMlsRand as _;
        let nonce: [u8; 16] = device
            .provider
            .rand()
            .random_array()
            .map_err(Error::internal)?;
        // A fresh suffix per group: a doctor who reloads the page starts a new group,
        // and nothing of the old one can be replayed into it.
        let id = format!("{}{}", group_id_prefix(consultation), hex::encode(nonce));
        Self::create_with_id(device, consultation, id.as_bytes())
    }

    pub(crate) fn create_with_id(device: &Device, consultation: &str, id: &[u8]) -> Result<Self> {
        let group = MlsGroup::new_with_group_id(
            &device.provider,
            &device.signer,
            &create_config(),
            GroupId::from_slice(id),
            device.credential.clone(),
        )
        .map_err(Error::internal)?;
        let owner = group.own_leaf_index().u32();
        Ok(Self {
            group,
            consultation: consultation.to_owned(),
            owner,
        })
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
        let msg = MlsMessageIn::tls_deserialize_exact(welcome)
            .map_err(|_| Error::Malformed("welcome framing".into()))?;
        let MlsMessageBodyIn::Welcome(welcome) = msg.extract() else {
            return Err(Error::Malformed("not a welcome".into()));
        };
        let staged =
            StagedWelcome::new_from_welcome(&device.provider, &join_config(), welcome, None)
                .map_err(Error::refused)?;
        let prefix = group_id_prefix(consultation);
        if !staged
            .group_context()
            .group_id()
            .as_slice()
            .starts_with(prefix.as_bytes())
        {
            return Err(Error::WrongGroup(
                "the group belongs to another consultation",
            ));
        }
        let sender = staged.welcome_sender().map_err(Error::internal)?;
        let (sender_name, _) =
            member_identity(sender.credential(), sender.signature_key().as_slice())?;
        if &sender_name.principal != owner {
            return Err(Error::WrongGroup(
                "welcome not made by the consultation's doctor",
            ));
        }
        let owner_leaf = staged.welcome_sender_index().u32();
        // Every member must carry a Confide credential; a group with anything else in it
        // was not built by a Confide client.
        for m in staged.members() {
            to_member(&m)?;
        }
        let group = staged
            .into_group(&device.provider)
            .map_err(Error::refused)?;
        Ok(Self {
            group,
            consultation: consultation.to_owned(),
            owner: owner_leaf,
        })
    }

    /// The consultation this group belongs to.
    #[must_use]
    pub fn consultation(&self) -> &str {
        &self.consultation
    }

    /// The group id bytes.
    #[must_use]
    pub fn group_id(&self) -> &[u8] {
        self.group.group_id().as_slice()
    }

    /// The current epoch.
    #[must_use]
    pub fn epoch(&self) -> u64 {
        self.group.epoch().as_u64()
    }

    /// Our leaf index (our SFrame sender index).
    #[must_use]
    pub fn own_leaf(&self) -> u32 {
        self.group.own_leaf_index().u32()
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
            .members()
            .filter_map(|m| to_member(&m).ok())
            .collect()
    }

    /// The member at `leaf`, if any.
    #[must_use]
    pub fn member(&self, leaf: u32) -> Option<Member> {
        self.roster().into_iter().find(|m| m.leaf == leaf)
    }

    /// The SFrame base key of the current epoch (RFC 9605 section 5.2).
    pub fn epoch_secret(&self, device: &Device) -> Result<EpochSecret> {
        use openmls_traits::OpenMlsProvider as _;
        let key = self
            .group
            .export_secret(
                device.provider.crypto(),
                MLS_EXPORTER_LABEL,
                &[],
                BASE_KEY_LEN,
            )
            .map_err(Error::internal)?;
        EpochSecret::new(self.epoch(), key)
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
        if key_packages.is_empty() {
            return Err(Error::InvalidArgument("nothing to add"));
        }
        let kps: Vec<KeyPackage> = key_packages.iter().map(|k| k.key_package.clone()).collect();
        let (commit, welcome, _) = self
            .group
            .add_members(&device.provider, &device.signer, &kps)
            .map_err(Error::refused)?;
        Ok(Commit {
            commit: serialize(&commit)?,
            welcome: Some(serialize(&welcome)?),
        })
    }

    /// Owner only: remove the members at these leaves.
    pub fn remove(&mut self, device: &Device, leaves: &[u32]) -> Result<Commit> {
        if !self.is_owner() {
            return Err(Error::InvalidArgument(
                "only the doctor's device removes members",
            ));
        }
        if leaves.is_empty() || leaves.contains(&self.own_leaf()) {
            return Err(Error::InvalidArgument("leaves to remove"));
        }
        let idx: Vec<LeafNodeIndex> = leaves.iter().map(|&l| LeafNodeIndex::new(l)).collect();
        let (commit, _, _) = self
            .group
            .remove_members(&device.provider, &device.signer, &idx)
            .map_err(Error::refused)?;
        Ok(Commit {
            commit: serialize(&commit)?,
            welcome: None,
        })
    }

    /// Any member: a fresh leaf key (post-compromise security).
    pub fn self_update(&mut self, device: &Device) -> Result<Commit> {
        let bundle = self
            .group
            .self_update(
                &device.provider,
                &device.signer,
                LeafNodeParameters::default(),
            )
            .map_err(Error::refused)?;
        Ok(Commit {
            commit: serialize(bundle.commit())?,
            welcome: None,
        })
    }

    /// The server accepted our pending commit: apply it. Returns the new epoch.
    pub fn confirm_commit(&mut self, device: &Device) -> Result<u64> {
        if self.group.pending_commit().is_none() {
            return Err(Error::InvalidArgument("no pending commit"));
        }
        self.group
            .merge_pending_commit(&device.provider)
            .map_err(Error::internal)?;
        Ok(self.epoch())
    }

    /// The server refused our pending commit (another one won the epoch): drop it.
    pub fn discard_commit(&mut self, device: &Device) -> Result<()> {
        self.group
            .clear_pending_commit(device.storage())
            .map_err(Error::internal)
    }

    /// Seal an application message for the group.
    pub fn seal(&mut self, device: &Device, payload: &[u8]) -> Result<Vec<u8>> {
        let m = self
            .group
            .create_message(&device.provider, &device.signer, payload)
            .map_err(Error::refused)?;
        serialize(&m)
    }

    /// Process a message the server delivered (`mls_commit` or `chat`). On any error the
    /// group state is unchanged.
    pub fn handle_message(&mut self, device: &Device, bytes: &[u8]) -> Result<Incoming> {
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(Error::Malformed("message too large".into()));
        }
        let msg = MlsMessageIn::tls_deserialize_exact(bytes)
            .map_err(|_| Error::Malformed("MLS framing".into()))?;
        let protocol = msg
            .try_into_protocol_message()
            .map_err(|_| Error::Malformed("not a group message".into()))?;
        if protocol.group_id() != self.group.group_id() {
            return Err(Error::WrongGroup("message for another group"));
        }
        if protocol.content_type() == ContentType::Commit && self.group.pending_commit().is_some() {
            // Someone else's commit won this epoch; ours will be refused by the server.
            self.discard_commit(device)?;
        }
        let processed = self
            .group
            .process_message(&device.provider, protocol)
            .map_err(Error::refused)?;
        let Sender::Member(sender_leaf) = *processed.sender() else {
            return Err(Error::Policy("message from outside the group"));
        };
        let sender = self
            .group
            .members()
            .find(|m| m.index == sender_leaf)
            .map(|m| to_member(&m))
            .transpose()?
            .ok_or(Error::Policy("sender is not a member"))?;
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(m) => Ok(Incoming::Application {
                sender,
                payload: m.into_bytes(),
            }),
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                self.apply_commit(device, sender, *staged)
            }
            // Confide never sends proposals by reference; a lone proposal is dropped so
            // it can never ride along in someone else's commit.
            ProcessedMessageContent::ProposalMessage(_)
            | ProcessedMessageContent::ExternalJoinProposalMessage(_) => {
                Err(Error::Policy("stand-alone proposals are not accepted"))
            }
            // The server echoes our own messages; there is nothing to learn from them.
            ProcessedMessageContent::OwnPendingCommit
            | ProcessedMessageContent::OwnPrivateMessage => {
                Err(Error::Refused("our own message".into()))
            }
        }
    }

    fn apply_commit(
        &mut self,
        device: &Device,
        committer: Member,
        staged: StagedCommit,
    ) -> Result<Incoming> {
        let changes_membership =
            staged.add_proposals().next().is_some() || staged.remove_proposals().next().is_some();
        if changes_membership && committer.leaf != self.owner {
            return Err(Error::Policy(
                "only the doctor's device may add or remove members",
            ));
        }
        if staged.psk_proposals().next().is_some() {
            return Err(Error::Policy(
                "pre-shared keys are not used in consultations",
            ));
        }
        let mut added = Vec::new();
        for add in staged.add_proposals() {
            let leaf = add.add_proposal().key_package().leaf_node();
            let (name, signature_key) =
                member_identity(leaf.credential(), leaf.signature_key().as_slice())?;
            added.push((name, signature_key));
        }
        let roster_before = self.roster();
        let mut removed = Vec::new();
        for r in staged.remove_proposals() {
            let leaf = r.remove_proposal().removed().u32();
            if leaf == self.owner {
                return Err(Error::Policy("the doctor's device cannot be removed"));
            }
            if let Some(m) = roster_before.iter().find(|m| m.leaf == leaf) {
                removed.push(m.clone());
            }
        }
        if staged.self_removed() {
            self.group
                .merge_staged_commit(&device.provider, staged)
                .map_err(Error::internal)?;
            return Ok(Incoming::Removed);
        }
        self.group
            .merge_staged_commit(&device.provider, staged)
            .map_err(Error::internal)?;
        let roster = self.roster();
        let added = roster
            .into_iter()
            .filter(|m| {
                added
                    .iter()
                    .any(|(n, k)| &m.name == n && &m.signature_key == k)
                    && !roster_before.iter().any(|b| b.leaf == m.leaf)
            })
            .collect();
        Ok(Incoming::NewEpoch {
            epoch: self.epoch(),
            committer,
            added,
            removed,
        })
    }

    /// Forget the group and delete its state from the device.
    pub fn delete(mut self, device: &Device) -> Result<()> {
        self.group.delete(device.storage()).map_err(Error::internal)
    }
}
