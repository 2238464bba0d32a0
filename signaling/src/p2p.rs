//! A stand-in [`MediaPlane`] that relays SDP and ICE between the two peers of a
//! room (peer-to-peer mode), for use until the SFU is wired in. Small on purpose.
//!
//! Rules: an offer goes to the other admitted peer as [`MediaEvent::Offer`] and the
//! offerer's `offer()` resolves with that peer's `answer()`. If no peer is there
//! yet, the offer waits and is delivered to the next participant admitted. If both
//! offer at once (glare), the later offerer gets [`MediaError::Rejected`] and
//! receives the earlier offer instead, which it answers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use crate::media::{MediaError, MediaEvent, MediaParticipantId, MediaPlane, MediaRoomId};

/// How long an offer waits for a peer to appear and answer.
const OFFER_WAIT: Duration = Duration::from_secs(300);

struct Pending {
    from: MediaParticipantId,
    sdp: String,
    /// The peer the offer was delivered to, if any yet.
    to: Option<MediaParticipantId>,
    reply: oneshot::Sender<Result<String, MediaError>>,
}

#[derive(Default)]
struct Room {
    members: Vec<MediaParticipantId>,
    pending: Option<Pending>,
}

pub struct PeerRelay {
    // Keys are our own counters, never peer-chosen.
    rooms: Mutex<HashMap<MediaRoomId, Room>>,
    events: mpsc::Sender<MediaEvent>,
}

impl PeerRelay {
    /// The relay and the receiving end of its event channel (bounded).
    pub fn new(capacity: usize) -> (Arc<Self>, mpsc::Receiver<MediaEvent>) {
        let (tx, rx) = mpsc::channel(capacity);
        (
            Arc::new(PeerRelay {
                rooms: Mutex::new(HashMap::new()),
                events: tx,
            }),
            rx,
        )
    }

    fn emit(&self, ev: MediaEvent) {
        // A full channel means signaling is not keeping up; dropping a renegotiation
        // is recoverable (the client re-offers), blocking the caller is not.
        if self.events.try_send(ev).is_err() {
            tracing::warn!("media event channel full; event dropped");
        }
    }

    fn deliver_pending(&self, room: MediaRoomId, r: &mut Room) {
        let Some(p) = r.pending.as_mut() else { return };
        if p.to.is_some() {
            return;
        }
        if let Some(peer) = r.members.iter().copied().find(|m| *m != p.from) {
            p.to = Some(peer);
            let sdp = p.sdp.clone();
            self.emit(MediaEvent::Offer {
                room,
                participant: peer,
                sdp,
            });
        }
    }
}

#[async_trait::async_trait]
impl MediaPlane for PeerRelay {
    async fn open_room(&self, room: MediaRoomId) -> Result<(), MediaError> {
        self.rooms.lock().entry(room).or_default();
        Ok(())
    }

    async fn close_room(&self, room: MediaRoomId) -> Result<(), MediaError> {
        if let Some(mut r) = self.rooms.lock().remove(&room)
            && let Some(p) = r.pending.take()
        {
            let _ = p.reply.send(Err(MediaError::Closed));
        }
        Ok(())
    }

    async fn admitted(&self, room: MediaRoomId, who: MediaParticipantId) -> Result<(), MediaError> {
        let mut rooms = self.rooms.lock();
        let r = rooms.entry(room).or_default();
        if !r.members.contains(&who) {
            r.members.push(who);
        }
        self.deliver_pending(room, r);
        Ok(())
    }

    async fn offer(
        &self,
        room: MediaRoomId,
        who: MediaParticipantId,
        sdp: String,
    ) -> Result<String, MediaError> {
        let rx = {
            let mut rooms = self.rooms.lock();
            let r = rooms.get_mut(&room).ok_or(MediaError::UnknownRoom)?;
            if !r.members.contains(&who) {
                return Err(MediaError::UnknownParticipant);
            }
            if let Some(p) = r.pending.as_mut()
                && p.from != who
            {
                if p.to.is_none() {
                    p.to = Some(who);
                    let sdp = p.sdp.clone();
                    self.emit(MediaEvent::Offer {
                        room,
                        participant: who,
                        sdp,
                    });
                }
                return Err(MediaError::Rejected(
                    "the peer offered first; answer its offer".into(),
                ));
            }
            let (tx, rx) = oneshot::channel();
            if let Some(old) = r.pending.replace(Pending {
                from: who,
                sdp,
                to: None,
                reply: tx,
            }) {
                let _ = old.reply.send(Err(MediaError::Rejected(
                    "superseded by a newer offer".into(),
                )));
            }
            self.deliver_pending(room, r);
            rx
        };
        match tokio::time::timeout(OFFER_WAIT, rx).await {
            Ok(Ok(res)) => res,
            Ok(Err(_)) => Err(MediaError::Closed),
            Err(_) => {
                let mut rooms = self.rooms.lock();
                if let Some(r) = rooms.get_mut(&room)
                    && r.pending.as_ref().is_some_and(|p| p.from == who)
                {
                    r.pending = None;
                }
                Err(MediaError::Timeout)
            }
        }
    }

    async fn answer(
        &self,
        room: MediaRoomId,
        who: MediaParticipantId,
        sdp: String,
    ) -> Result<(), MediaError> {
        let mut rooms = self.rooms.lock();
        let r = rooms.get_mut(&room).ok_or(MediaError::UnknownRoom)?;
        match r.pending.take() {
            Some(p) if p.to == Some(who) => {
                let _ = p.reply.send(Ok(sdp));
                Ok(())
            }
            other => {
                r.pending = other;
                Err(MediaError::Rejected(
                    "no offer is waiting for your answer".into(),
                ))
            }
        }
    }

    async fn candidate(
        &self,
        room: MediaRoomId,
        who: MediaParticipantId,
        candidate: String,
    ) -> Result<(), MediaError> {
        let rooms = self.rooms.lock();
        let r = rooms.get(&room).ok_or(MediaError::UnknownRoom)?;
        if !r.members.contains(&who) {
            return Err(MediaError::UnknownParticipant);
        }
        for peer in r.members.iter().copied().filter(|m| *m != who) {
            self.emit(MediaEvent::Candidate {
                room,
                participant: peer,
                candidate: candidate.clone(),
            });
        }
        Ok(())
    }

    async fn remove(&self, room: MediaRoomId, who: MediaParticipantId) -> Result<(), MediaError> {
        let mut rooms = self.rooms.lock();
        let Some(r) = rooms.get_mut(&room) else {
            return Ok(());
        };
        r.members.retain(|m| *m != who);
        if let Some(p) = r.pending.take() {
            if p.from == who {
                let _ = p.reply.send(Err(MediaError::Closed));
            } else if p.to == Some(who) {
                // The answerer left: keep the offer for the next peer.
                r.pending = Some(Pending { to: None, ..p });
                self.deliver_pending(room, r);
            } else {
                r.pending = Some(p);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: MediaRoomId = MediaRoomId(1);
    const A: MediaParticipantId = MediaParticipantId(1);
    const B: MediaParticipantId = MediaParticipantId(2);

    #[tokio::test]
    async fn offer_waits_for_peer_then_gets_its_answer() {
        let (relay, mut ev) = PeerRelay::new(16);
        relay.open_room(R).await.unwrap();
        relay.admitted(R, A).await.unwrap();
        let r2 = relay.clone();
        let offer = tokio::spawn(async move { r2.offer(R, A, "sdp-a".into()).await });
        tokio::task::yield_now().await;
        relay.admitted(R, B).await.unwrap();
        let e = ev.recv().await.unwrap();
        assert_eq!(
            e,
            MediaEvent::Offer {
                room: R,
                participant: B,
                sdp: "sdp-a".into()
            }
        );
        // Glare: B's own offer is refused, it must answer A's.
        assert!(matches!(
            relay.offer(R, B, "sdp-b".into()).await,
            Err(MediaError::Rejected(_))
        ));
        relay.answer(R, B, "ans-b".into()).await.unwrap();
        assert_eq!(offer.await.unwrap(), Ok("ans-b".into()));
        relay.candidate(R, A, "cand".into()).await.unwrap();
        assert!(matches!(
            ev.recv().await.unwrap(),
            MediaEvent::Candidate { participant: B, .. }
        ));
        assert!(relay.answer(R, A, "x".into()).await.is_err());
        relay.close_room(R).await.unwrap();
        assert_eq!(
            relay.offer(R, A, "x".into()).await,
            Err(MediaError::UnknownRoom)
        );
    }
}
