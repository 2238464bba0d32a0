//! Real UDP on 127.0.0.1: the SFU's worker threads plus native clients, each client on
//! its own socket, driven from the test thread. Everything is bounded in time.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use confide_client::{ClientConfig, ClientEvent, Kind, MediaClient};
use confide_sfu::{ParticipantId, RoomId, Sfu, SfuConfig, SfuEvent, SfuHandle};
use tokio::sync::mpsc;

#[expect(
    clippy::disallowed_methods,
    reason = "real-UDP tests run on the wall clock"
)]
pub fn now() -> Instant {
    Instant::now()
}

pub struct UdpClient {
    pub id: ParticipantId,
    pub socket: UdpSocket,
    pub addr: SocketAddr,
    pub client: MediaClient,
    pub events: Vec<ClientEvent>,
}

pub struct Rig {
    pub rt: tokio::runtime::Runtime,
    pub sfu: SfuHandle,
    pub events: mpsc::Receiver<SfuEvent>,
    pub room: RoomId,
    pub clients: Vec<UdpClient>,
    pub sfu_events: Vec<SfuEvent>,
}

impl Rig {
    pub fn start(config: SfuConfig, room: RoomId) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (sfu, events) = Sfu::start(config).unwrap();
        rt.block_on(sfu.open_room(room)).unwrap();
        Rig {
            rt,
            sfu,
            events,
            room,
            clients: Vec::new(),
            sfu_events: Vec::new(),
        }
    }

    pub fn join(&mut self, id: ParticipantId) -> usize {
        self.join_room(self.room, id)
    }

    /// Opens another room on the same SFU (participant ids must stay unique in the rig).
    pub fn open_room(&mut self, room: RoomId) {
        self.rt.block_on(self.sfu.open_room(room)).unwrap();
    }

    pub fn join_room(&mut self, room: RoomId, id: ParticipantId) -> usize {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let addr = socket.local_addr().unwrap();
        let mut client = MediaClient::new(addr, ClientConfig::default(), now());
        let offer = client.create_offer().unwrap();
        let answer = self.rt.block_on(self.sfu.offer(room, id, offer)).unwrap();
        client.handle_answer(now(), &answer).unwrap();
        self.clients.push(UdpClient {
            id,
            socket,
            addr,
            client,
            events: Vec::new(),
        });
        let i = self.clients.len() - 1;
        self.run_until(Duration::from_secs(10), |r| {
            r.clients[i].client.is_connected()
        });
        i
    }

    pub fn tracks(&self, i: usize) -> usize {
        self.clients[i]
            .events
            .iter()
            .filter(|e| matches!(e, ClientEvent::TrackAdded { .. }))
            .count()
    }

    pub fn wait_tracks(&mut self, i: usize, n: usize) {
        self.run_until(Duration::from_secs(10), |r| r.tracks(i) >= n);
        self.run_for(Duration::from_millis(100));
    }

    /// One pass over every socket, timer and event queue.
    pub fn step(&mut self) {
        let mut buf = vec![0u8; 2048];
        for c in &mut self.clients {
            while let Some((dst, data)) = c.client.poll_transmit() {
                let _ = c.socket.send_to(&data, dst);
            }
            while let Ok((n, src)) = c.socket.recv_from(&mut buf) {
                c.client.handle_receive(now(), src, c.addr, &buf[..n]);
            }
            let t = now();
            if c.client.poll_timeout() <= t {
                c.client.handle_timeout(t);
            }
            while let Some((dst, data)) = c.client.poll_transmit() {
                let _ = c.socket.send_to(&data, dst);
            }
            while let Some(e) = c.client.poll_event() {
                c.events.push(e);
            }
        }
        while let Ok(e) = self.events.try_recv() {
            if let SfuEvent::Offer {
                room,
                participant,
                sdp,
            } = &e
                && let Some(c) = self.clients.iter_mut().find(|c| c.id == *participant)
            {
                // What signaling does: relay the offer, relay the answer back.
                let answer = c.client.handle_offer(now(), sdp).unwrap();
                self.rt
                    .block_on(self.sfu.answer(*room, *participant, answer))
                    .unwrap();
            }
            self.sfu_events.push(e);
        }
    }

    pub fn run_for(&mut self, d: Duration) {
        let end = now() + d;
        while now() < end {
            self.step();
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    pub fn run_until(&mut self, limit: Duration, mut cond: impl FnMut(&Self) -> bool) {
        let end = now() + limit;
        while !cond(self) {
            assert!(now() < end, "condition not met within {limit:?}");
            self.step();
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    /// Sends frames at ~30 fps, calling `between` after each so a test can add load.
    pub fn send_frames(
        &mut self,
        i: usize,
        video: &[Vec<u8>],
        audio: &[Vec<u8>],
        mut between: impl FnMut(&mut Self),
    ) {
        for k in 0..video.len().max(audio.len()) {
            if let Some(v) = video.get(k) {
                self.clients[i]
                    .client
                    .send_frame(now(), Kind::Video, v)
                    .unwrap();
            }
            if let Some(a) = audio.get(k) {
                self.clients[i]
                    .client
                    .send_frame(now(), Kind::Audio, a)
                    .unwrap();
            }
            let end = now() + Duration::from_millis(33);
            while now() < end {
                self.step();
                between(self);
                std::thread::sleep(Duration::from_micros(500));
            }
        }
    }

    pub fn received(&self, i: usize, kind: Kind, stream_id: &str) -> Vec<Vec<u8>> {
        super::frames_in(&self.clients[i].events, kind, stream_id)
    }
}
