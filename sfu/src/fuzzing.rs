//! Entry points for the fuzz target in `sfu/fuzz` and for the unit test that runs them
//! with pseudo-random input, so CI compiles and exercises them without a fuzzer.
//! Not a stable API (feature `_fuzzing`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::core::{CoreConfig, SfuCore};
pub use crate::demux::{Class, classify, stun_local_ufrag};
use crate::{ParticipantId, RoomId};

/// A core with one room and one participant whose address is known, so fuzz input
/// reaches both the unknown-source path and the peer's `Rtc` (STUN, DTLS, SRTP parsing).
pub struct DatagramFuzzer {
    core: SfuCore,
    now: Instant,
    sfu: SocketAddr,
    peer: SocketAddr,
    stranger: SocketAddr,
    last_event: Option<crate::SfuEvent>,
}

impl DatagramFuzzer {
    /// Sets up the core; `now` is the fuzzer's epoch.
    pub fn new(now: Instant) -> Self {
        let sfu: SocketAddr = "127.0.0.1:3478".parse().expect("literal address");
        let peer: SocketAddr = "127.0.0.1:40001".parse().expect("literal address");
        let stranger: SocketAddr = "127.0.0.1:40002".parse().expect("literal address");
        let mut config = CoreConfig::new(sfu);
        // Fuzz input moves time a lot; keep the peer so every input can reach it.
        config.connect_timeout = Duration::from_secs(1 << 30);
        config.peer_timeout = Duration::from_secs(1 << 30);
        config.max_packets_per_sec = 0;
        let mut core = SfuCore::new(config, now);
        let room = RoomId(1);
        core.open_room(room).expect("fresh core");
        let offer = crate::rtc::sample_offer(now, peer);
        core.offer(now, room, ParticipantId(1), &offer)
            .expect("str0m accepts its own offer");
        core.bind_addr_for_fuzzing(room, ParticipantId(1), peer);
        let mut f = DatagramFuzzer {
            core,
            now,
            sfu,
            peer,
            stranger,
            last_event: None,
        };
        f.drain();
        f
    }

    /// One input: byte 0 picks the source (bit 0: known peer or stranger) and how far
    /// time moves (bits 1..8, in ms); the rest is the datagram.
    pub fn feed(&mut self, data: &[u8]) {
        let Some((&ctl, datagram)) = data.split_first() else {
            return;
        };
        let src = if ctl & 1 == 0 {
            self.peer
        } else {
            self.stranger
        };
        self.now += Duration::from_millis(u64::from(ctl >> 1));
        self.core.handle_receive(self.now, src, self.sfu, datagram);
        if self.core.poll_timeout().is_some_and(|t| t <= self.now) {
            self.core.handle_timeout(self.now);
        }
        self.drain();
    }

    fn drain(&mut self) {
        while self.core.poll_transmit().is_some() {}
        while let Some(e) = self.core.poll_event() {
            self.last_event = Some(e);
        }
    }

    /// The last event the core emitted, for assertions.
    pub fn last_event(&self) -> Option<&crate::SfuEvent> {
        self.last_event.as_ref()
    }

    /// The core, for assertions.
    pub fn core(&self) -> &SfuCore {
        &self.core
    }
}
