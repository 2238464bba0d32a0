//! The E2EE key exchange over signaling's opaque `e2ee` blobs, byte-compatible with the
//! browser client (`crates/web/static/js/e2ee-worker.js`).
//!
//! A blob is base64 of one type byte and a payload:
//!
//! - `1` ([`BLOB_OFFER`]): our signed key offer (`confide_e2ee::KeyOffer`), sent to every
//!   admitted peer when we are admitted, and to each newcomer.
//! - `2` ([`BLOB_SENDER_KEY`]): our media sender key sealed to one peer under the
//!   pairwise keys, sent in reply to that peer's offer.
//!
//! An offer must be bound to the participant id the server says sent it, so a relayed
//! or replayed offer from someone else is refused. Pure: no I/O, randomness passed in.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use confide_e2ee::{
    ConsultationId, IdentityKeyPair, KeyOffer, PairwiseKeys, ParticipantId, SeededRng, Session,
};

use crate::e2ee::{FrameError, FrameOpener, FrameSealer};

/// Type byte of a key offer blob.
pub const BLOB_OFFER: u8 = 1;
/// Type byte of a sealed sender key blob.
pub const BLOB_SENDER_KEY: u8 = 2;

/// Errors of the key exchange. None of them carries key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Not base64, empty, or an unknown type byte.
    #[error("malformed e2ee blob")]
    Malformed,
    /// The offer names another participant than its sender.
    #[error("key offer is bound to another participant")]
    WrongParticipant,
    /// A sender key from a peer whose offer we have not accepted.
    #[error("sender key before key offer")]
    NoSession,
    /// The e2ee layer refused (bad signature, wrong consultation, forged seal).
    #[error("e2ee: {0}")]
    E2ee(#[from] confide_e2ee::Error),
    /// Installing the key failed.
    #[error("frame keys: {0}")]
    Frame(#[from] FrameError),
}

/// What handling one blob produced.
#[derive(Debug, Default)]
pub struct KeyReply {
    /// Blobs to send: `(to, blob)`.
    pub send: Vec<(u64, String)>,
    /// A pairwise session was made with this peer: `(peer, safety code text)`.
    pub safety: Option<(u64, String)>,
    /// We installed this peer's sender key.
    pub keyed: Option<u64>,
}

/// One participant's side of the exchange in one consultation.
pub struct KeyAgreement {
    session: Session,
    peers: HashMap<u64, PairwiseKeys>,
    rng: SeededRng,
}

impl std::fmt::Debug for KeyAgreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAgreement")
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

fn envelope(kind: u8, payload: &[u8]) -> String {
    let mut b = Vec::with_capacity(payload.len() + 1);
    b.push(kind);
    b.extend_from_slice(payload);
    B64.encode(b)
}

/// The media stream id the SFU gives a participant's tracks.
pub fn stream_id(participant: u64) -> String {
    format!("confide-{participant}")
}

impl KeyAgreement {
    /// A session for `you` in the consultation of appointment `consultation` (the
    /// browser binds offers to the appointment id as a decimal string).
    pub fn new(
        identity: &IdentityKeyPair,
        consultation: i64,
        you: u64,
        mut rng: SeededRng,
    ) -> Result<Self, KeyError> {
        let cid = ConsultationId::new(consultation.to_string())?;
        let session = Session::new(identity, cid, ParticipantId(you), &mut rng);
        Ok(KeyAgreement {
            session,
            peers: HashMap::new(),
            rng,
        })
    }

    /// Our key offer blob.
    pub fn offer_blob(&self) -> String {
        envelope(BLOB_OFFER, &self.session.offer().to_bytes())
    }

    /// Safety code with `peer`, once the pairwise session exists.
    pub fn safety_code(&self, peer: u64) -> Option<String> {
        self.peers.get(&peer).map(|p| p.safety_code().to_text())
    }

    /// Someone new was admitted: ratchet our key so they cannot read what was sent
    /// before, and return it sealed to every peer we already have a session with (they
    /// would follow the ratchet by themselves; the browser sends it all the same). The
    /// newcomer's copy goes out when its offer arrives. Nothing to do while alone.
    pub fn peer_joined(
        &mut self,
        peer: u64,
        sealer: &mut FrameSealer,
    ) -> Result<Vec<(u64, String)>, KeyError> {
        if self.peers.is_empty() || self.peers.contains_key(&peer) {
            return Ok(Vec::new());
        }
        sealer.ratchet()?;
        self.seal_to_all(sealer)
    }

    /// A peer left: forget its pairwise keys and switch to a fresh sender key it never
    /// had; returns that key sealed to every remaining peer.
    pub fn peer_left(
        &mut self,
        peer: u64,
        sealer: &mut FrameSealer,
    ) -> Result<Vec<(u64, String)>, KeyError> {
        self.peers.remove(&peer);
        sealer.rotate(&mut self.rng)?;
        self.seal_to_all(sealer)
    }

    fn seal_to_all(&mut self, sealer: &FrameSealer) -> Result<Vec<(u64, String)>, KeyError> {
        let mut send = Vec::with_capacity(self.peers.len());
        for (&to, pair) in &self.peers {
            let sealed = pair.seal_sender_key(sealer.sender_key(), &mut self.rng)?;
            send.push((to, envelope(BLOB_SENDER_KEY, &sealed)));
        }
        Ok(send)
    }

    /// Handles a blob `from` a peer: answers an offer with our sealed sender key, or
    /// installs the peer's sender key into `opener`.
    pub fn receive(
        &mut self,
        from: u64,
        blob: &str,
        sealer: &FrameSealer,
        opener: &mut FrameOpener,
    ) -> Result<KeyReply, KeyError> {
        let bytes = B64.decode(blob).map_err(|_| KeyError::Malformed)?;
        let (&kind, payload) = bytes.split_first().ok_or(KeyError::Malformed)?;
        if payload.is_empty() {
            return Err(KeyError::Malformed);
        }
        match kind {
            BLOB_OFFER => {
                let offer = KeyOffer::from_bytes(payload)?;
                if offer.participant() != ParticipantId(from) {
                    return Err(KeyError::WrongParticipant);
                }
                let pair = self.session.accept(&offer)?;
                let code = pair.safety_code().to_text();
                let sealed = pair.seal_sender_key(sealer.sender_key(), &mut self.rng)?;
                self.peers.insert(from, pair);
                Ok(KeyReply {
                    send: vec![(from, envelope(BLOB_SENDER_KEY, &sealed))],
                    safety: Some((from, code)),
                    keyed: None,
                })
            }
            BLOB_SENDER_KEY => {
                let pair = self.peers.get(&from).ok_or(KeyError::NoSession)?;
                let key = pair.open_sender_key(payload)?;
                opener.install(&stream_id(from), key)?;
                Ok(KeyReply {
                    keyed: Some(from),
                    ..Default::default()
                })
            }
            _ => Err(KeyError::Malformed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use confide_e2ee::{CipherSuite, SenderKey};

    fn party(seed: u8, you: u64) -> (KeyAgreement, FrameSealer, FrameOpener) {
        let mut rng = SeededRng::from_seed([seed; 32]);
        let id = IdentityKeyPair::generate(&mut rng);
        let sealer =
            FrameSealer::new(SenderKey::generate(CipherSuite::default(), &mut rng)).unwrap();
        let ka = KeyAgreement::new(&id, 42, you, rng).unwrap();
        (ka, sealer, FrameOpener::new())
    }

    #[test]
    fn two_parties_exchange_keys_and_agree_on_the_safety_code() {
        let (mut a, sa, mut oa) = party(1, 3);
        let (mut b, sb, mut ob) = party(2, 7);
        // a's offer reaches b: b answers with its sealed key.
        let rb = b.receive(3, &a.offer_blob(), &sb, &mut ob).unwrap();
        let (to, blob) = &rb.send[0];
        assert_eq!(*to, 3);
        // a must accept b's offer before it can open b's key.
        assert!(matches!(
            a.receive(7, blob, &sa, &mut oa),
            Err(KeyError::NoSession)
        ));
        let ra = a.receive(7, &b.offer_blob(), &sa, &mut oa).unwrap();
        assert_eq!(ra.safety.as_ref().unwrap().1, rb.safety.as_ref().unwrap().1);
        assert_eq!(a.receive(7, blob, &sa, &mut oa).unwrap().keyed, Some(7));
        assert_eq!(
            b.receive(3, &ra.send[0].1, &sb, &mut ob).unwrap().keyed,
            Some(3)
        );
    }

    /// `a` and `b` hold each other's keys.
    fn keyed_pair(
        a: &mut (KeyAgreement, FrameSealer, FrameOpener),
        ida: u64,
        b: &mut (KeyAgreement, FrameSealer, FrameOpener),
        idb: u64,
    ) {
        let rb = b.0.receive(ida, &a.0.offer_blob(), &b.1, &mut b.2).unwrap();
        let ra = a.0.receive(idb, &b.0.offer_blob(), &a.1, &mut a.2).unwrap();
        a.0.receive(idb, &rb.send[0].1, &a.1, &mut a.2).unwrap();
        b.0.receive(ida, &ra.send[0].1, &b.1, &mut b.2).unwrap();
    }

    fn seal(s: &mut FrameSealer, frame: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        s.seal(crate::Kind::Audio, frame, &mut out).unwrap();
        out
    }

    fn opens(o: &mut FrameOpener, from: u64, sealed: &[u8]) -> bool {
        let mut out = Vec::new();
        o.open(&stream_id(from), crate::Kind::Audio, sealed, &mut out)
            .is_ok()
    }

    #[test]
    fn join_ratchets_and_leave_rotates_the_sender_key() {
        let mut a = party(1, 3);
        let mut b = party(2, 7);
        let mut c = party(3, 9);
        // Alone: a joiner changes nothing yet.
        assert!(a.0.peer_joined(7, &mut a.1).unwrap().is_empty());
        keyed_pair(&mut a, 3, &mut b, 7);
        // c is admitted: a ratchets and re-seals to b only (c's copy follows its offer).
        let kid0 = a.1.kid();
        let send = a.0.peer_joined(9, &mut a.1).unwrap();
        assert_eq!(send.iter().map(|(to, _)| *to).collect::<Vec<_>>(), vec![7]);
        assert_ne!(a.1.kid(), kid0);
        b.0.receive(3, &send[0].1, &b.1, &mut b.2).unwrap();
        keyed_pair(&mut a, 3, &mut c, 9);
        let after_join = seal(&mut a.1, b"after the join");
        assert!(opens(&mut b.2, 3, &after_join));
        assert!(opens(&mut c.2, 3, &after_join));
        // c leaves: a rotates and seals the new key to b only; c cannot open what follows.
        let send = a.0.peer_left(9, &mut a.1).unwrap();
        assert_eq!(send.iter().map(|(to, _)| *to).collect::<Vec<_>>(), vec![7]);
        assert!(a.0.safety_code(9).is_none());
        b.0.receive(3, &send[0].1, &b.1, &mut b.2).unwrap();
        let after_leave = seal(&mut a.1, b"after the leave");
        assert!(opens(&mut b.2, 3, &after_leave));
        assert!(!opens(&mut c.2, 3, &after_leave));
    }

    #[test]
    fn offers_bound_to_someone_else_and_garbage_are_refused() {
        let (a, _, _) = party(1, 3);
        let (mut b, sb, mut ob) = party(2, 7);
        assert!(matches!(
            b.receive(4, &a.offer_blob(), &sb, &mut ob),
            Err(KeyError::WrongParticipant)
        ));
        for junk in ["", "!!", "AQ==", "CQEC"] {
            assert!(b.receive(3, junk, &sb, &mut ob).is_err(), "{junk}");
        }
    }
}
