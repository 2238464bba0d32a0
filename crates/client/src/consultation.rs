//! One participant of a consultation, end to end, as a browser does it: log in (TOTP),
//! open `/ws`, join, wait to be admitted (or, as the doctor, admit), negotiate media
//! with the SFU, run the E2EE key exchange over `e2ee` blobs, and answer the SFU's
//! renegotiations until the consultation ends.
//!
//! The media session itself runs in a shared [`MediaLoop`]; this type is the signaling
//! side and holds only ids.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use confide_signaling::model::{AppointmentId, ParticipantId};
use confide_signaling::proto::{ClientMsg, ServerMsg};

use crate::driver::{DriverError, MediaLoop, SlotId, SlotSpec, Traffic};
use crate::signaling::{Endpoint, Signaling, SignalingError};

/// Errors of a participant's flow.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsultationError {
    /// Signaling failed.
    #[error("signaling: {0}")]
    Signaling(#[from] SignalingError),
    /// The media loop failed.
    #[error("media: {0}")]
    Driver(#[from] DriverError),
    /// The server turned us away.
    #[error("denied")]
    Denied,
    /// The consultation ended.
    #[error("consultation ended")]
    Ended,
    /// API misuse (e.g. media before joining).
    #[error("{0}")]
    Usage(&'static str),
}

/// Login credentials. `Debug` never prints the password or the secret.
#[derive(Clone)]
pub struct Credentials {
    /// Username.
    pub username: String,
    /// Password.
    pub password: String,
    /// Base32 TOTP secret, for accounts with a second factor.
    pub totp_secret: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Something worth telling the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Happening {
    /// A pairwise E2EE session with `peer` exists; compare `code` aloud.
    SafetyCode {
        /// The peer's participant id.
        peer: u64,
        /// 20 digits.
        code: String,
    },
    /// We installed `peer`'s media key.
    Keyed {
        /// The peer's participant id.
        peer: u64,
    },
    /// Someone was admitted.
    PeerJoined(u64),
    /// Someone left.
    PeerLeft(u64),
    /// Someone is waiting (doctor).
    Waiting(Vec<u64>),
}

/// One participant's signaling side.
pub struct Participant {
    sig: Signaling,
    consultation: AppointmentId,
    you: u64,
    admitted: bool,
    media: Arc<MediaLoop>,
    slot: Option<SlotId>,
    peers: BTreeSet<u64>,
    waiting: Vec<u64>,
    deferred: VecDeque<ServerMsg>,
    /// Safety codes by peer.
    pub safety: HashMap<u64, String>,
}

impl std::fmt::Debug for Participant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Participant")
            .field("you", &self.you)
            .field("admitted", &self.admitted)
            .field("peers", &self.peers)
            .finish_non_exhaustive()
    }
}

const STEP: Duration = Duration::from_secs(20);

impl Participant {
    /// Logs in, connects and joins `consultation`. Returns once the server said
    /// `joined` (the doctor) or `waiting` (everyone else).
    pub async fn join(
        endpoint: &Endpoint,
        creds: &Credentials,
        consultation: i64,
        media: Arc<MediaLoop>,
    ) -> Result<Self, ConsultationError> {
        let token = endpoint
            .login(
                &creds.username,
                &creds.password,
                creds.totp_secret.as_deref(),
            )
            .await?;
        Self::join_with_token(endpoint, &token, consultation, media).await
    }

    /// Like [`Participant::join`] with a session token (e.g. a guest's).
    pub async fn join_with_token(
        endpoint: &Endpoint,
        token: &str,
        consultation: i64,
        media: Arc<MediaLoop>,
    ) -> Result<Self, ConsultationError> {
        let mut sig = endpoint.connect(token).await?;
        let appt = AppointmentId(consultation);
        sig.send(&ClientMsg::Join {
            consultation: appt,
            device: None,
        })
        .await?;
        let (you, admitted, peers) = sig
            .wait_for(STEP, "joined or waiting", |m| match m {
                ServerMsg::Joined {
                    you, participants, ..
                } => Some((you.0, true, participants.iter().map(|p| p.id.0).collect())),
                ServerMsg::Waiting { you, .. } => Some((you.0, false, BTreeSet::new())),
                _ => None,
            })
            .await?;
        Ok(Participant {
            sig,
            consultation: appt,
            you,
            admitted,
            media,
            slot: None,
            peers,
            waiting: Vec::new(),
            deferred: VecDeque::new(),
            safety: HashMap::new(),
        })
    }

    /// Our participant id.
    pub fn you(&self) -> u64 {
        self.you
    }

    /// Our media slot, once media started.
    pub fn slot(&self) -> Option<SlotId> {
        self.slot
    }

    /// Admitted peers.
    pub fn peers(&self) -> impl Iterator<Item = u64> + '_ {
        self.peers.iter().copied()
    }

    /// Waits until the doctor admits us.
    pub async fn wait_admitted(&mut self) -> Result<(), ConsultationError> {
        if self.admitted {
            return Ok(());
        }
        let deferred = &mut self.deferred;
        let res = self
            .sig
            .wait_for(STEP, "admitted", |m| match m {
                ServerMsg::Admitted { participants, .. } => {
                    Some(Ok(participants.iter().map(|p| p.id.0).collect::<Vec<_>>()))
                }
                ServerMsg::Denied { .. } => Some(Err(ConsultationError::Denied)),
                ServerMsg::Ended { .. } => Some(Err(ConsultationError::Ended)),
                other => {
                    deferred.push_back(other.clone());
                    None
                }
            })
            .await??;
        self.peers.extend(res);
        self.admitted = true;
        Ok(())
    }

    /// Doctor: waits until `n` participants are waiting and admits them.
    pub async fn admit(&mut self, n: usize) -> Result<Vec<u64>, ConsultationError> {
        let mut admitted = Vec::new();
        loop {
            for id in std::mem::take(&mut self.waiting) {
                self.sig
                    .send(&ClientMsg::Admit {
                        participant: ParticipantId(id),
                    })
                    .await?;
                admitted.push(id);
            }
            if admitted.len() >= n {
                return Ok(admitted);
            }
            let m = self.sig.recv_timeout(STEP, "waiting room").await?;
            self.handle(m).await?;
        }
    }

    /// Creates our media session in the loop, offers it to the SFU and waits for the
    /// answer; then sends our key offer to everyone already admitted.
    pub async fn start_media(&mut self, traffic: Traffic) -> Result<SlotId, ConsultationError> {
        if !self.admitted {
            return Err(ConsultationError::Usage("media before admission"));
        }
        let (slot, offer, key_offer) = self
            .media
            .create(SlotSpec {
                consultation: self.consultation.0,
                you: self.you,
                traffic,
            })
            .await?;
        self.slot = Some(slot);
        self.sig.send(&ClientMsg::MediaOffer { sdp: offer }).await?;
        let deferred = &mut self.deferred;
        let answer = self
            .sig
            .wait_for(STEP, "media_answer", |m| match m {
                ServerMsg::MediaAnswer { sdp } => Some(sdp.clone()),
                ServerMsg::Error { .. } => None,
                other => {
                    deferred.push_back(other.clone());
                    None
                }
            })
            .await?;
        self.media.answer(slot, answer).await?;
        if !self.peers.is_empty() {
            self.sig
                .send(&ClientMsg::E2ee {
                    to: None,
                    blob: key_offer,
                })
                .await?;
        }
        // Whatever arrived meanwhile (keys, renegotiations, joins) is handled now.
        while let Some(m) = self.deferred.pop_front() {
            self.handle(m).await?;
        }
        Ok(slot)
    }

    /// Handles signaling for up to `limit`; returns what happened. Stops early at the
    /// first [`Happening`] batch or when `limit` passes.
    pub async fn step(&mut self, limit: Duration) -> Result<Vec<Happening>, ConsultationError> {
        if let Some(m) = self.deferred.pop_front() {
            return self.handle(m).await;
        }
        match tokio::time::timeout(limit, self.sig.recv()).await {
            Err(_) => Ok(Vec::new()),
            Ok(m) => self.handle(m?).await,
        }
    }

    /// Runs signaling until `done` holds for what happened so far, at most `limit`.
    pub async fn run_until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&[Happening]) -> bool,
    ) -> Result<Vec<Happening>, ConsultationError> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut all = Vec::new();
        while !done(&all) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(SignalingError::Timeout("consultation step").into());
            }
            all.extend(self.step(left).await?);
        }
        Ok(all)
    }

    /// Handles signaling (renegotiations, keys, joins) until `until` resolves; returns
    /// what happened. Call it while media runs, or the SFU's offers go unanswered.
    pub async fn serve_until(
        &mut self,
        until: impl std::future::Future<Output = ()>,
    ) -> Result<Vec<Happening>, ConsultationError> {
        let mut all = Vec::new();
        while let Some(m) = self.deferred.pop_front() {
            all.extend(self.handle(m).await?);
        }
        tokio::pin!(until);
        loop {
            // Only the receive is raced against `until`: a message being handled is
            // never cut off halfway.
            let m = tokio::select! {
                m = self.sig.recv() => m?,
                _ = &mut until => return Ok(all),
            };
            all.extend(self.handle(m).await?);
        }
    }

    async fn handle(&mut self, m: ServerMsg) -> Result<Vec<Happening>, ConsultationError> {
        let mut out = Vec::new();
        match m {
            ServerMsg::WaitingRoom { waiting } => {
                self.waiting = waiting.iter().map(|p| p.id.0).collect();
                out.push(Happening::Waiting(self.waiting.clone()));
            }
            ServerMsg::ParticipantJoined { participant } => {
                let id = participant.id.0;
                if id != self.you && self.peers.insert(id) {
                    out.push(Happening::PeerJoined(id));
                    if let Some(slot) = self.slot {
                        // Ratchet first, so the newcomer only ever gets the new key;
                        // the others get it too, as the browser does.
                        let ratcheted = self.media.peer_joined(slot, id).await?;
                        self.send_keys(ratcheted).await?;
                        // Our key offer to the newcomer (it answers with its sender key).
                        let offer = self.media.key_offer(slot).await?;
                        self.send_keys(vec![(id, offer)]).await?;
                    }
                }
            }
            ServerMsg::ParticipantLeft { participant, .. } => {
                self.peers.remove(&participant.0);
                if let Some(slot) = self.slot {
                    // A fresh sender key the leaver never had, to those who remain.
                    let rotated = self.media.peer_left(slot, participant.0).await?;
                    self.send_keys(rotated).await?;
                }
                out.push(Happening::PeerLeft(participant.0));
            }
            ServerMsg::MediaOffer { sdp } => {
                let slot = self
                    .slot
                    .ok_or(ConsultationError::Usage("offer before media"))?;
                let answer = self.media.offer(slot, sdp).await?;
                self.sig
                    .send(&ClientMsg::MediaAnswer { sdp: answer })
                    .await?;
            }
            ServerMsg::E2ee { from, blob, .. } => {
                let Some(slot) = self.slot else {
                    // Keys before our media exists: keep them for later.
                    self.deferred.push_back(ServerMsg::E2ee {
                        from,
                        to: None,
                        blob,
                    });
                    return Ok(out);
                };
                match self.media.e2ee(slot, from.0, blob).await {
                    Ok(reply) => {
                        self.send_keys(reply.send).await?;
                        if let Some((peer, code)) = reply.safety {
                            self.safety.insert(peer, code.clone());
                            out.push(Happening::SafetyCode { peer, code });
                        }
                        if let Some(peer) = reply.keyed {
                            out.push(Happening::Keyed { peer });
                        }
                    }
                    // A forged or garbled key message is dropped; the call goes on.
                    Err(DriverError::Keys(e)) => {
                        tracing::warn!(error = %e, "dropped an e2ee message");
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            ServerMsg::Ended { .. } | ServerMsg::Denied { .. } => {
                return Err(ConsultationError::Ended);
            }
            _ => {}
        }
        Ok(out)
    }

    /// Sends a ping and waits for the pong (a signaling round trip).
    pub async fn ping(&mut self) -> Result<(), ConsultationError> {
        self.sig.send(&ClientMsg::Ping { nonce: Some(1) }).await?;
        let deferred = &mut self.deferred;
        self.sig
            .wait_for(STEP, "pong", |m| match m {
                ServerMsg::Pong { .. } => Some(()),
                other => {
                    deferred.push_back(other.clone());
                    None
                }
            })
            .await?;
        Ok(())
    }

    /// Doctor: ends the consultation for everyone and waits for `ended`.
    pub async fn end(mut self) -> Result<(), ConsultationError> {
        self.sig.send(&ClientMsg::End).await?;
        let _ = self
            .sig
            .wait_for(STEP, "ended", |m| {
                matches!(m, ServerMsg::Ended { .. }).then_some(())
            })
            .await;
        self.finish();
        Ok(())
    }

    /// Leaves (the connection closes).
    pub async fn leave(mut self) {
        let _ = self.sig.send(&ClientMsg::Leave).await;
        self.finish();
        self.sig.close().await;
    }

    /// Waits until the server ends the consultation (the doctor ended it).
    pub async fn wait_ended(mut self, limit: Duration) -> Result<(), ConsultationError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.step(left).await {
                Err(ConsultationError::Ended)
                | Err(ConsultationError::Signaling(SignalingError::Closed)) => {
                    self.finish();
                    return Ok(());
                }
                Err(e) => return Err(e),
                Ok(_) if left.is_zero() => {
                    return Err(SignalingError::Timeout("ended").into());
                }
                Ok(_) => {}
            }
        }
    }

    /// Sends key-exchange blobs, each to its one recipient.
    async fn send_keys(&mut self, blobs: Vec<(u64, String)>) -> Result<(), ConsultationError> {
        for (to, blob) in blobs {
            self.sig
                .send(&ClientMsg::E2ee {
                    to: Some(ParticipantId(to)),
                    blob,
                })
                .await?;
        }
        Ok(())
    }

    fn finish(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.media.remove(slot);
        }
    }
}
