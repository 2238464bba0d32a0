//! One ordered lane of media-plane work per consultation.
//!
//! Everything signaling asks of the media plane about one consultation goes through the
//! consultation's lane in the order it was decided: the room's own commands (open,
//! admitted, remove, close) and its participants' `media_offer`, `media_answer` and
//! `ice_candidate`. Both kinds are pushed while the room's lock is held, so the lane's
//! order is the room's order. One task per lane runs the work:
//!
//! - one participant's requests and its `Admitted`/`Remove` run one at a time, in
//!   order: a removal is never overtaken by an offer sent after it, an offer never by
//!   its own later candidate;
//! - different participants' requests run side by side (an offer may wait for another
//!   participant's answer: the peer-to-peer relay resolves offers that way);
//! - `Remove` cancels what the participant still has queued or running, so it never
//!   waits behind a slow request; `Close` cancels every participant's requests and runs
//!   once the commands before it are done; `Open` runs before anything after it.
//!
//! Cancelling drops the request's future. The SFU executes a control message it has
//! already queued and then the removal after it (its queue is FIFO), so order holds.
//!
//! Room commands are never refused or dropped (there are a few per member, and members
//! are capped); participants' requests are bounded per participant
//! ([`MAX_PENDING_PER_PARTICIPANT`]) and refused past it with a clear error. No task per
//! message: the lane's task polls the requests itself.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::future::{AbortHandle, Abortable, BoxFuture};
use futures_util::stream::FuturesUnordered;
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};

use super::ws::Outbound;
use crate::media::{MediaError, MediaParticipantId, MediaPlane, MediaRoomId};
use crate::proto::{ErrorCode, ServerMsg};
use crate::room::MediaCmd;

/// Requests of one participant waiting in its room's lane (or running) at most. Above
/// the largest burst the rate limits let through (`ICE_CANDIDATES_BURST`), so a burst
/// within them always queues; it bounds what one participant holds in memory (SDP up to
/// the message size limit each).
pub const MAX_PENDING_PER_PARTICIPANT: usize = 24;

/// A participant's media request.
#[derive(Debug)]
pub(crate) enum ClientMedia {
    Offer(String),
    Answer(String),
    Candidate(String),
}

enum Op {
    Room(MediaCmd),
    Client {
        who: MediaParticipantId,
        req: ClientMedia,
        reply: mpsc::Sender<Outbound>,
    },
}

impl Op {
    /// The participant whose sequence this belongs to; `None` for room-wide commands.
    fn participant(&self) -> Option<MediaParticipantId> {
        match self {
            Op::Client { who, .. } => Some(*who),
            Op::Room(MediaCmd::Admitted(_, p) | MediaCmd::Remove(_, p)) => Some(*p),
            Op::Room(MediaCmd::Open(_) | MediaCmd::Close(_)) => None,
        }
    }
}

/// Why a participant's request was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LaneRefused {
    #[error(
        "{MAX_PENDING_PER_PARTICIPANT} media requests are already waiting for the media plane; send the next after an answer"
    )]
    Busy,
    #[error("the consultation's media has closed")]
    Closed,
}

/// The lane of one consultation; cheap to clone.
#[derive(Clone)]
pub(crate) struct MediaLane(Arc<Shared>);

struct Shared {
    room: MediaRoomId,
    state: Mutex<State>,
    wake: Notify,
}

#[derive(Default)]
struct State {
    ops: VecDeque<Op>,
    pending: HashMap<MediaParticipantId, usize>,
    started: bool,
    /// A `Close` was queued: nothing after it is taken.
    closing: bool,
}

impl MediaLane {
    pub(crate) fn new(room: MediaRoomId) -> Self {
        MediaLane(Arc::new(Shared {
            room,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
        }))
    }

    /// Queues a command of the room state machine. Never refused.
    pub(crate) fn room_cmd(&self, media: &Arc<dyn MediaPlane>, cmd: MediaCmd) {
        let mut st = self.0.state.lock();
        if st.closing {
            tracing::debug!(room = %self.0.room, ?cmd, "media command after close ignored");
            return;
        }
        if matches!(cmd, MediaCmd::Close(_)) {
            st.closing = true;
        }
        st.ops.push_back(Op::Room(cmd));
        self.start(&mut st, media);
    }

    /// Queues a participant's request; its answer or error goes to `reply`.
    pub(crate) fn client(
        &self,
        media: &Arc<dyn MediaPlane>,
        who: MediaParticipantId,
        req: ClientMedia,
        reply: mpsc::Sender<Outbound>,
    ) -> Result<(), LaneRefused> {
        let mut st = self.0.state.lock();
        if st.closing {
            return Err(LaneRefused::Closed);
        }
        let n = st.pending.entry(who).or_insert(0);
        if *n >= MAX_PENDING_PER_PARTICIPANT {
            return Err(LaneRefused::Busy);
        }
        *n += 1;
        st.ops.push_back(Op::Client { who, req, reply });
        self.start(&mut st, media);
        Ok(())
    }

    fn start(&self, st: &mut State, media: &Arc<dyn MediaPlane>) {
        if !st.started {
            st.started = true;
            tokio::spawn(run(self.0.clone(), media.clone()));
        }
        self.0.wake.notify_one();
    }
}

/// A finished request: whose it was, and what to tell the participant (client requests).
struct Done {
    who: Option<MediaParticipantId>,
    client: bool,
    close: bool,
    reply: Option<(mpsc::Sender<Outbound>, Option<ServerMsg>)>,
}

/// What runs now.
#[derive(Default)]
struct Running {
    /// Participants with a request or command in flight; client requests can be
    /// cancelled through their handle.
    busy: HashMap<MediaParticipantId, Option<AbortHandle>>,
    /// A room-wide command (`Open`, `Close`) is in flight.
    barrier: bool,
    futures: FuturesUnordered<BoxFuture<'static, Option<Done>>>,
}

async fn run(lane: Arc<Shared>, media: Arc<dyn MediaPlane>) {
    let mut waiting: VecDeque<Op> = VecDeque::new();
    let mut running = Running::default();
    loop {
        let taken: Vec<Op> = lane.state.lock().ops.drain(..).collect();
        for op in taken {
            match &op {
                Op::Room(MediaCmd::Remove(_, p)) => {
                    cancel(&lane, &mut waiting, &mut running, Some(*p))
                }
                Op::Room(MediaCmd::Close(_)) => cancel(&lane, &mut waiting, &mut running, None),
                _ => {}
            }
            waiting.push_back(op);
        }
        start_ready(&lane, &media, &mut waiting, &mut running);
        tokio::select! {
            _ = lane.wake.notified() => {}
            Some(done) = running.futures.next(), if !running.futures.is_empty() => {
                if finish(&lane, &mut running, done) {
                    return;
                }
            }
        }
    }
}

/// Cancels the client requests of `who` (every participant's with `None`): queued ones
/// are dropped, a running one is aborted. The participant hears why.
fn cancel(
    lane: &Shared,
    waiting: &mut VecDeque<Op>,
    running: &mut Running,
    who: Option<MediaParticipantId>,
) {
    let hits = |p: MediaParticipantId| who.is_none_or(|w| w == p);
    let mut kept = VecDeque::with_capacity(waiting.len());
    for op in waiting.drain(..) {
        match op {
            Op::Client { who: p, reply, .. } if hits(p) => {
                release(lane, p);
                let _ = reply.try_send(Outbound::Msg(media_error(&MediaError::Closed)));
            }
            other => kept.push_back(other),
        }
    }
    *waiting = kept;
    for (p, handle) in running.busy.iter() {
        if hits(*p)
            && let Some(h) = handle
        {
            h.abort();
        }
    }
}

/// Starts every waiting item whose turn it is.
fn start_ready(
    lane: &Arc<Shared>,
    media: &Arc<dyn MediaPlane>,
    waiting: &mut VecDeque<Op>,
    running: &mut Running,
) {
    let mut blocked: HashSet<MediaParticipantId> = HashSet::new();
    let mut i = 0;
    while i < waiting.len() {
        if running.barrier {
            break;
        }
        match waiting[i].participant() {
            None => {
                // A room-wide command waits for everything before it, and everything
                // after it waits for it.
                if i == 0 && running.futures.is_empty() {
                    let Some(op) = waiting.pop_front() else { break };
                    running.barrier = true;
                    launch(lane, media, running, op);
                }
                break;
            }
            Some(p) if blocked.contains(&p) || running.busy.contains_key(&p) => {
                blocked.insert(p);
                i += 1;
            }
            Some(p) => {
                blocked.insert(p);
                let Some(op) = waiting.remove(i) else { break };
                launch(lane, media, running, op);
            }
        }
    }
}

fn launch(lane: &Arc<Shared>, media: &Arc<dyn MediaPlane>, running: &mut Running, op: Op) {
    let media = media.clone();
    let room = lane.room;
    match op {
        Op::Room(cmd) => {
            let who = Op::Room(cmd.clone()).participant();
            if let Some(p) = who {
                running.busy.insert(p, None);
            }
            running.futures.push(Box::pin(async move {
                let close = matches!(cmd, MediaCmd::Close(_));
                let res = match cmd {
                    MediaCmd::Open(r) => media.open_room(r).await,
                    MediaCmd::Admitted(r, p) => media.admitted(r, p).await,
                    MediaCmd::Remove(r, p) => media.remove(r, p).await,
                    MediaCmd::Close(r) => media.close_room(r).await,
                };
                if let Err(e) = res {
                    tracing::warn!(error = %e, %room, "media command failed");
                }
                Some(Done {
                    who,
                    client: false,
                    close,
                    reply: None,
                })
            }));
        }
        Op::Client { who, req, reply } => {
            let (handle, registration) = AbortHandle::new_pair();
            running.busy.insert(who, Some(handle));
            let work = async move {
                match req {
                    ClientMedia::Offer(sdp) => Some(match media.offer(room, who, sdp).await {
                        Ok(answer) => ServerMsg::MediaAnswer { sdp: answer },
                        Err(e) => media_error(&e),
                    }),
                    ClientMedia::Answer(sdp) => media
                        .answer(room, who, sdp)
                        .await
                        .err()
                        .map(|e| media_error(&e)),
                    ClientMedia::Candidate(c) => media
                        .candidate(room, who, c)
                        .await
                        .err()
                        .map(|e| media_error(&e)),
                }
            };
            let work = Abortable::new(work, registration);
            running.futures.push(Box::pin(async move {
                let msg = match work.await {
                    Ok(msg) => msg,
                    Err(_aborted) => Some(media_error(&MediaError::Closed)),
                };
                Some(Done {
                    who: Some(who),
                    client: true,
                    close: false,
                    reply: Some((reply, msg)),
                })
            }));
        }
    }
}

/// Books a finished item. Returns true once the lane is finished (its `Close` ran).
fn finish(lane: &Shared, running: &mut Running, done: Option<Done>) -> bool {
    let Some(done) = done else { return false };
    match done.who {
        Some(p) => {
            running.busy.remove(&p);
        }
        None => running.barrier = false,
    }
    if done.client
        && let Some(p) = done.who
    {
        release(lane, p);
    }
    if let Some((reply, Some(msg))) = done.reply {
        // Never wait on one participant's socket: that would hold the room's lane.
        if reply.try_send(Outbound::Msg(msg)).is_err() {
            tracing::debug!("media reply to a slow or gone connection dropped");
        }
    }
    done.close
}

/// One of `who`'s requests left the lane.
fn release(lane: &Shared, who: MediaParticipantId) {
    let mut st = lane.state.lock();
    if let Some(n) = st.pending.get_mut(&who) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            st.pending.remove(&who);
        }
    }
}

pub(crate) fn media_error(e: &MediaError) -> ServerMsg {
    ServerMsg::Error {
        code: ErrorCode::MediaError,
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Records every call in order; `offer` waits on a gate so tests can hold the lane.
    struct Recorder {
        calls: Mutex<Vec<String>>,
        gate: tokio::sync::Semaphore,
    }

    #[async_trait::async_trait]
    impl MediaPlane for Recorder {
        async fn open_room(&self, room: MediaRoomId) -> Result<(), MediaError> {
            self.calls.lock().push(format!("open {}", room.0));
            Ok(())
        }
        async fn close_room(&self, room: MediaRoomId) -> Result<(), MediaError> {
            self.calls.lock().push(format!("close {}", room.0));
            Ok(())
        }
        async fn offer(
            &self,
            _: MediaRoomId,
            who: MediaParticipantId,
            sdp: String,
        ) -> Result<String, MediaError> {
            let _permit = self.gate.acquire().await;
            self.calls.lock().push(format!("offer {} {sdp}", who.0));
            Ok(format!("answer to {sdp}"))
        }
        async fn answer(
            &self,
            _: MediaRoomId,
            who: MediaParticipantId,
            _: String,
        ) -> Result<(), MediaError> {
            self.calls.lock().push(format!("answer {}", who.0));
            Err(MediaError::UnknownParticipant)
        }
        async fn candidate(
            &self,
            _: MediaRoomId,
            who: MediaParticipantId,
            c: String,
        ) -> Result<(), MediaError> {
            self.calls.lock().push(format!("candidate {} {c}", who.0));
            Ok(())
        }
        async fn remove(&self, _: MediaRoomId, who: MediaParticipantId) -> Result<(), MediaError> {
            self.calls.lock().push(format!("remove {}", who.0));
            Ok(())
        }
    }

    fn recorder(open: bool) -> (Arc<Recorder>, Arc<dyn MediaPlane>) {
        let r = Arc::new(Recorder {
            calls: Mutex::new(Vec::new()),
            gate: tokio::sync::Semaphore::new(if open { 1 << 20 } else { 0 }),
        });
        (r.clone(), r)
    }

    async fn until(r: &Recorder, n: usize) -> Vec<String> {
        for _ in 0..500 {
            if r.calls.lock().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        r.calls.lock().clone()
    }

    const R: MediaRoomId = MediaRoomId(1);
    const P: MediaParticipantId = MediaParticipantId(7);

    /// A participant leaves while its offer waits on a slow media plane, rejoins and
    /// offers again: the removal cancels the first offer (the participant hears so) and
    /// runs before the second, never after it (which would tear down the new session);
    /// nothing is dropped and the candidate keeps its place after its offer.
    #[tokio::test]
    async fn removal_is_not_overtaken_by_a_later_offer() {
        let (rec, media) = recorder(false);
        let lane = MediaLane::new(R);
        let (tx, mut rx) = mpsc::channel(16);
        lane.room_cmd(&media, MediaCmd::Open(R));
        lane.room_cmd(&media, MediaCmd::Admitted(R, P));
        lane.client(&media, P, ClientMedia::Offer("first".into()), tx.clone())
            .unwrap();
        let _ = until(&rec, 1).await;
        lane.room_cmd(&media, MediaCmd::Remove(R, P));
        lane.room_cmd(&media, MediaCmd::Admitted(R, P));
        lane.client(&media, P, ClientMedia::Offer("second".into()), tx.clone())
            .unwrap();
        lane.client(&media, P, ClientMedia::Candidate("c".into()), tx)
            .unwrap();
        let _ = until(&rec, 2).await;
        rec.gate.add_permits(1);
        let _ = until(&rec, 4).await;
        lane.room_cmd(&media, MediaCmd::Close(R));
        let calls = until(&rec, 5).await;
        assert_eq!(
            calls,
            [
                "open 1",
                "remove 7",
                "offer 7 second",
                "candidate 7 c",
                "close 1"
            ]
        );
        let mut replies = Vec::new();
        for _ in 0..2 {
            match rx.recv().await {
                Some(Outbound::Msg(m)) => replies.push(m),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(replies[0], media_error(&MediaError::Closed));
        assert_eq!(
            replies[1],
            ServerMsg::MediaAnswer {
                sdp: "answer to second".into()
            }
        );
    }

    /// Requests past the per-participant bound are refused with a clear error while the
    /// room's own commands still queue (not dropped) and run in order; another
    /// participant is not held up by the first one's backlog, and neither the removal
    /// nor the close waits behind it: they cancel it.
    #[tokio::test]
    async fn participant_backlog_is_bounded_but_room_commands_never_are() {
        let (rec, media) = recorder(false);
        let lane = MediaLane::new(R);
        let (tx, mut rx) = mpsc::channel(64);
        for i in 0..MAX_PENDING_PER_PARTICIPANT {
            lane.client(&media, P, ClientMedia::Offer(format!("o{i}")), tx.clone())
                .unwrap();
        }
        let refused = lane
            .client(
                &media,
                P,
                ClientMedia::Offer("one too many".into()),
                tx.clone(),
            )
            .unwrap_err();
        assert_eq!(refused, LaneRefused::Busy);
        assert!(refused.to_string().contains("already waiting"));
        let other = MediaParticipantId(8);
        lane.client(
            &media,
            other,
            ClientMedia::Candidate("x".into()),
            tx.clone(),
        )
        .unwrap();
        assert_eq!(until(&rec, 1).await, ["candidate 8 x"]);
        for _ in 0..100 {
            lane.room_cmd(&media, MediaCmd::Admitted(R, other));
        }
        lane.room_cmd(&media, MediaCmd::Remove(R, P));
        lane.room_cmd(&media, MediaCmd::Close(R));
        assert_eq!(
            lane.client(&media, P, ClientMedia::Candidate("late".into()), tx)
                .unwrap_err(),
            LaneRefused::Closed
        );
        // The gate stays shut: nothing waits for P's offers.
        let calls = until(&rec, 3).await;
        assert_eq!(calls, ["candidate 8 x", "remove 7", "close 1"]);
        for _ in 0..MAX_PENDING_PER_PARTICIPANT {
            match rx.recv().await {
                Some(Outbound::Msg(m)) => assert_eq!(m, media_error(&MediaError::Closed)),
                other => panic!("{other:?}"),
            }
        }
    }

    /// One participant's offer waiting for another participant's answer (how the
    /// peer-to-peer relay resolves offers) does not hold that answer back.
    #[tokio::test]
    async fn a_waiting_offer_does_not_block_another_participants_answer() {
        let (rec, media) = recorder(false);
        let lane = MediaLane::new(R);
        let (tx, _rx) = mpsc::channel(16);
        lane.client(&media, P, ClientMedia::Offer("waits".into()), tx.clone())
            .unwrap();
        lane.client(
            &media,
            MediaParticipantId(8),
            ClientMedia::Answer("a".into()),
            tx,
        )
        .unwrap();
        assert_eq!(until(&rec, 1).await, ["answer 8"]);
    }

    /// A failed request answers the participant with a `media_error` naming the cause.
    #[tokio::test]
    async fn media_plane_errors_reach_the_participant() {
        let (_rec, media) = recorder(true);
        let lane = MediaLane::new(R);
        let (tx, mut rx) = mpsc::channel(4);
        lane.client(&media, P, ClientMedia::Answer("a".into()), tx)
            .unwrap();
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some(Outbound::Msg(ServerMsg::Error { code, message }))) => {
                assert_eq!(code, ErrorCode::MediaError);
                assert_eq!(message, MediaError::UnknownParticipant.to_string());
            }
            other => panic!("{other:?}"),
        }
    }
}
