//! The Signaling <-> media plane contract (docs/architecture.md).
//!
//! Signaling decides who is in a consultation; the media plane moves packets. The
//! server builds one `Arc<dyn MediaPlane>` and hands it to the HTTP edge; events come
//! back on one bounded channel of [`MediaEvent`]s. Ids are counters assigned by
//! signaling, so the media plane never sees account ids or names.

use std::fmt;

/// A consultation as the media plane knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MediaRoomId(pub u64);

/// A participant as the media plane knows it. Equal to the protocol's participant id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MediaParticipantId(pub u64);

impl fmt::Display for MediaRoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "media-room:{}", self.0)
    }
}

impl fmt::Display for MediaParticipantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "media-participant:{}", self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    #[error("unknown media room")]
    UnknownRoom,
    #[error("unknown media participant")]
    UnknownParticipant,
    #[error("the media plane rejected the request: {0}")]
    Rejected(String),
    #[error("the media plane did not answer in time")]
    Timeout,
    #[error("the media plane is shutting down or the room closed")]
    Closed,
}

/// Sent from the media plane to signaling, each about one participant of one room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    Connected {
        room: MediaRoomId,
        participant: MediaParticipantId,
    },
    Disconnected {
        room: MediaRoomId,
        participant: MediaParticipantId,
        reason: String,
    },
    /// The media plane renegotiates (a track was added or removed): forward to the
    /// participant as `media_offer`; its `media_answer` comes back through
    /// [`MediaPlane::answer`].
    Offer {
        room: MediaRoomId,
        participant: MediaParticipantId,
        sdp: String,
    },
    /// A trickled ICE candidate for the participant. The SFU is ICE-lite and puts its
    /// candidate in the SDP, so only the peer-to-peer stand-in emits this.
    Candidate {
        room: MediaRoomId,
        participant: MediaParticipantId,
        candidate: String,
    },
}

#[async_trait::async_trait]
pub trait MediaPlane: Send + Sync + 'static {
    /// A consultation opened for media.
    async fn open_room(&self, room: MediaRoomId) -> Result<(), MediaError>;
    /// The consultation ended: every participant's media stops at once.
    async fn close_room(&self, room: MediaRoomId) -> Result<(), MediaError>;
    /// Participant sent an SDP offer (first join or renegotiation); returns the answer.
    async fn offer(
        &self,
        room: MediaRoomId,
        who: MediaParticipantId,
        sdp: String,
    ) -> Result<String, MediaError>;
    /// Participant answered an offer from the media plane (see [`MediaEvent::Offer`]).
    async fn answer(
        &self,
        room: MediaRoomId,
        who: MediaParticipantId,
        sdp: String,
    ) -> Result<(), MediaError>;
    /// Trickled ICE candidate from the participant.
    async fn candidate(
        &self,
        room: MediaRoomId,
        who: MediaParticipantId,
        candidate: String,
    ) -> Result<(), MediaError>;
    /// Participant left or was removed.
    async fn remove(&self, room: MediaRoomId, who: MediaParticipantId) -> Result<(), MediaError>;
    /// The doctor admitted the participant. An SFU needs nothing here (it learns of a
    /// participant from its first offer); the peer-to-peer stand-in uses it to know
    /// whom to send a waiting offer to.
    async fn admitted(&self, room: MediaRoomId, who: MediaParticipantId) -> Result<(), MediaError> {
        let _ = (room, who);
        Ok(())
    }
}
