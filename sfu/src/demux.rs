//! First look at a datagram, before any peer state is touched.
//!
//! RFC 7983 tells the protocols apart by the first byte. For a source address we do not
//! know yet, the only thing worth reading is the USERNAME of a STUN binding request: its
//! first half is the ICE ufrag we handed out in our SDP answer, which names the peer.
//! Everything here is total over arbitrary bytes (fuzzed in `sfu/fuzz`).

/// What kind of datagram this is, going by RFC 7983.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// STUN (first byte 0..=3).
    Stun,
    /// DTLS (first byte 20..=63).
    Dtls,
    /// RTP or RTCP (first byte 128..=191).
    Rtp,
    /// None of the above, or too short to be anything.
    Garbage,
}

/// Smallest RTP header / STUN header / DTLS record header respectively.
const MIN_RTP: usize = 12;
const STUN_HEADER: usize = 20;
const MIN_DTLS: usize = 13;
const STUN_MAGIC: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const STUN_BINDING_REQUEST: u16 = 0x0001;
const ATTR_USERNAME: u16 = 0x0006;

/// Classifies a datagram by its first byte and minimum length.
pub fn classify(buf: &[u8]) -> Class {
    let Some(&b) = buf.first() else {
        return Class::Garbage;
    };
    match b {
        0..=3 if buf.len() >= STUN_HEADER && buf[4..8] == STUN_MAGIC => Class::Stun,
        20..=63 if buf.len() >= MIN_DTLS => Class::Dtls,
        128..=191 if buf.len() >= MIN_RTP => Class::Rtp,
        _ => Class::Garbage,
    }
}

/// For a STUN binding request, returns the local half of its USERNAME (`local:remote`),
/// which is the ufrag we put in our SDP. Returns `None` for anything else.
pub fn stun_local_ufrag(buf: &[u8]) -> Option<&[u8]> {
    if classify(buf) != Class::Stun {
        return None;
    }
    let msg_type = u16::from_be_bytes([buf[0], buf[1]]);
    if msg_type != STUN_BINDING_REQUEST {
        return None;
    }
    let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    let body = buf.get(STUN_HEADER..STUN_HEADER.checked_add(len)?)?;
    let mut rest = body;
    while rest.len() >= 4 {
        let attr = u16::from_be_bytes([rest[0], rest[1]]);
        let alen = u16::from_be_bytes([rest[2], rest[3]]) as usize;
        let value = rest.get(4..4 + alen)?;
        if attr == ATTR_USERNAME {
            let colon = value.iter().position(|&c| c == b':')?;
            let local = &value[..colon];
            return (!local.is_empty()).then_some(local);
        }
        // Attributes are padded to 4 bytes.
        let padded = (alen + 3) & !3;
        rest = rest.get(4 + padded..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stun_with_username(user: &[u8]) -> Vec<u8> {
        let mut attr = Vec::new();
        attr.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
        attr.extend_from_slice(&(user.len() as u16).to_be_bytes());
        attr.extend_from_slice(user);
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        let mut m = Vec::new();
        m.extend_from_slice(&STUN_BINDING_REQUEST.to_be_bytes());
        m.extend_from_slice(&(attr.len() as u16).to_be_bytes());
        m.extend_from_slice(&STUN_MAGIC);
        m.extend_from_slice(&[7u8; 12]);
        m.extend_from_slice(&attr);
        m
    }

    #[test]
    fn finds_local_ufrag() {
        let m = stun_with_username(b"abcd:wxyz");
        assert_eq!(classify(&m), Class::Stun);
        assert_eq!(stun_local_ufrag(&m), Some(&b"abcd"[..]));
    }

    #[test]
    fn rejects_truncated_and_odd_input() {
        let m = stun_with_username(b"abcd:wxyz");
        for cut in 0..m.len() {
            let _ = stun_local_ufrag(&m[..cut]);
        }
        assert_eq!(stun_local_ufrag(&stun_with_username(b"nocolon")), None);
        assert_eq!(stun_local_ufrag(&stun_with_username(b":x")), None);
        assert_eq!(classify(&[]), Class::Garbage);
        assert_eq!(classify(&[0x80; 11]), Class::Garbage);
        assert_eq!(classify(&[0x80; 12]), Class::Rtp);
        assert_eq!(classify(&[200; 40]), Class::Garbage);
    }

    #[test]
    fn random_bytes_never_panic() {
        // A small deterministic generator keeps this test free of extra dependencies.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut buf = [0u8; 64];
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 64) as usize;
            for (i, b) in buf.iter_mut().enumerate() {
                *b = (x >> (i % 8 * 8)) as u8 ^ i as u8;
            }
            buf[0] = (x >> 3) as u8 % 4;
            buf[4..8].copy_from_slice(&STUN_MAGIC);
            let _ = classify(&buf[..len]);
            let _ = stun_local_ufrag(&buf[..len]);
        }
    }
}
