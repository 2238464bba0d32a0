//! Frame <-> RTP payloads, keeping each E2EE-sealed frame byte-identical.
//!
//! The SFU forwards RTP payloads untouched, so a sealed frame only has to survive
//! packetization on the sender and reassembly on the receiver:
//!
//! - VP8 (RFC 7741): each packet starts with the one-byte payload descriptor (`S` set on
//!   the first packet of a frame, partition 0, no extensions), then a slice of the frame.
//!   The marker bit ends a frame. The sealed frame keeps its clear VP8 prefix in front,
//!   so a browser's depacketizer sees a normal VP8 stream.
//! - Opus: one frame per packet, no descriptor.

use std::collections::BTreeMap;
use std::sync::Arc;

/// Largest frame slice per RTP packet: leaves room for RTP/SRTP headers, extensions and
/// an RTX header under a 1200-byte MTU.
pub const MAX_SLICE: usize = 1100;
/// VP8 payload descriptor: `S` bit, partition 0, no extension byte.
const VP8_START: u8 = 0x10;
const VP8_CONT: u8 = 0x00;
/// Packets kept per incoming track while frames are incomplete.
const MAX_PENDING_PACKETS: usize = 2048;
/// Incomplete frames are given up once this far (in packets) behind the newest.
const GIVE_UP_DISTANCE: u64 = 1024;

/// Splits a VP8 frame into RTP payloads (descriptor + slice).
pub fn packetize_vp8(frame: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    let chunks = frame.chunks(MAX_SLICE.max(1));
    // An empty frame still needs one packet to carry the marker bit.
    let empty = frame.is_empty().then(|| vec![VP8_START]);
    empty.into_iter().chain(chunks.enumerate().map(|(i, c)| {
        let mut p = Vec::with_capacity(c.len() + 1);
        p.push(if i == 0 { VP8_START } else { VP8_CONT });
        p.extend_from_slice(c);
        p
    }))
}

/// One received packet, as the reassembler needs it.
#[derive(Debug, Clone)]
pub struct Packet {
    /// Extended sequence number (no wrap).
    pub seq: u64,
    /// RTP timestamp.
    pub ts: u32,
    /// Marker bit.
    pub marker: bool,
    /// RTP payload.
    pub payload: Arc<[u8]>,
}

/// A frame put back together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// RTP timestamp of the frame.
    pub ts: u32,
    /// Sequence number of its first packet.
    pub first_seq: u64,
    /// The frame bytes, exactly as the sender passed them in.
    pub data: Vec<u8>,
}

/// Reassembles VP8 frames of one track. Tolerates loss (frames complete when NACKed
/// packets arrive later), reordering and duplicates.
#[derive(Debug, Default)]
pub struct Vp8Reassembler {
    packets: BTreeMap<u64, Packet>,
    /// Sequence numbers of first packets of frames already delivered (dedupe).
    delivered: BTreeMap<u64, ()>,
    newest: u64,
}

impl Vp8Reassembler {
    /// Adds a packet; returns a completed frame if this packet finished one.
    pub fn push(&mut self, p: Packet) -> Option<Frame> {
        if p.payload.is_empty() || self.packets.contains_key(&p.seq) {
            return None;
        }
        self.newest = self.newest.max(p.seq);
        let seq = p.seq;
        self.packets.insert(seq, p);
        self.evict();
        self.try_complete(seq)
    }

    fn evict(&mut self) {
        let floor = self.newest.saturating_sub(GIVE_UP_DISTANCE);
        while let Some((&s, _)) = self.packets.first_key_value() {
            if s < floor || self.packets.len() > MAX_PENDING_PACKETS {
                self.packets.pop_first();
            } else {
                break;
            }
        }
        while let Some((&s, _)) = self.delivered.first_key_value() {
            if s < floor {
                self.delivered.pop_first();
            } else {
                break;
            }
        }
    }

    fn try_complete(&mut self, seq: u64) -> Option<Frame> {
        let ts = self.packets.get(&seq)?.ts;
        // Walk back to the start packet of this frame.
        let mut start = seq;
        loop {
            let p = self.packets.get(&start)?;
            if p.ts != ts {
                return None;
            }
            if p.payload[0] & VP8_START != 0 {
                break;
            }
            start = start.checked_sub(1)?;
        }
        // Walk forward to the marker.
        let mut end = seq;
        loop {
            let p = self.packets.get(&end)?;
            if p.ts != ts {
                return None;
            }
            if p.marker {
                break;
            }
            end += 1;
        }
        if self.delivered.contains_key(&start) {
            return None;
        }
        let mut data = Vec::new();
        for s in start..=end {
            // Invariant: both walks above found every packet in start..=end.
            let p = self.packets.remove(&s).expect("walked packets are present");
            data.extend_from_slice(&p.payload[1..]);
        }
        self.delivered.insert(start, ());
        Some(Frame {
            ts,
            first_seq: start,
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packets(frame: &[u8], seq0: u64, ts: u32) -> Vec<Packet> {
        let payloads: Vec<_> = packetize_vp8(frame).collect();
        let n = payloads.len();
        payloads
            .into_iter()
            .enumerate()
            .map(|(i, p)| Packet {
                seq: seq0 + i as u64,
                ts,
                marker: i + 1 == n,
                payload: p.into(),
            })
            .collect()
    }

    #[test]
    fn roundtrip_in_order_and_reversed() {
        let frame: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let mut r = Vp8Reassembler::default();
        let ps = packets(&frame, 10, 90);
        let mut got = None;
        for p in ps.iter().cloned() {
            if let Some(f) = r.push(p) {
                got = Some(f);
            }
        }
        assert_eq!(got.unwrap().data, frame);

        let mut r = Vp8Reassembler::default();
        let mut got = None;
        for p in ps.into_iter().rev() {
            if let Some(f) = r.push(p) {
                got = Some(f);
            }
        }
        assert_eq!(got.unwrap().data, frame);
    }

    #[test]
    fn duplicates_and_small_frames() {
        let mut r = Vp8Reassembler::default();
        let ps = packets(b"abc", 1, 5);
        assert_eq!(r.push(ps[0].clone()).unwrap().data, b"abc");
        assert!(r.push(ps[0].clone()).is_none());
        let ps = packets(b"", 2, 6);
        assert_eq!(r.push(ps[0].clone()).unwrap().data, b"");
    }
}
