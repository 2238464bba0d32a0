//! The SFrame header (RFC 9605, section 4.3): a config byte and compact KID and CTR.

use crate::error::{Error, Result};

/// Longest possible encoded header: config byte + 8-byte KID + 8-byte CTR.
pub const MAX_HEADER_LEN: usize = 17;

/// A decoded SFrame header: the key id and the frame counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SframeHeader {
    /// Key id: selects the base key.
    pub kid: u64,
    /// Counter: makes the nonce unique under that key.
    pub ctr: u64,
}

/// Bytes needed to encode `v` big-endian without leading zeros (at least 1).
fn min_len(v: u64) -> usize {
    let bits = 64 - v.leading_zeros() as usize;
    bits.div_ceil(8).max(1)
}

impl SframeHeader {
    /// A header for `kid` and `ctr`.
    #[must_use]
    pub const fn new(kid: u64, ctr: u64) -> Self {
        Self { kid, ctr }
    }

    /// Length of the encoded header.
    #[must_use]
    pub fn encoded_len(&self) -> usize {
        let k = if self.kid < 8 { 0 } else { min_len(self.kid) };
        let c = if self.ctr < 8 { 0 } else { min_len(self.ctr) };
        1 + k + c
    }

    /// Encode into `out`, returning the number of bytes written. Always minimal, as the
    /// RFC requires.
    pub fn encode(&self, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
        let mut config = 0u8;
        let mut pos = 1;
        if self.kid < 8 {
            config |= (self.kid as u8) << 4;
        } else {
            let n = min_len(self.kid);
            config |= 0x80 | (((n - 1) as u8) << 4);
            out[pos..pos + n].copy_from_slice(&self.kid.to_be_bytes()[8 - n..]);
            pos += n;
        }
        if self.ctr < 8 {
            config |= self.ctr as u8;
        } else {
            let n = min_len(self.ctr);
            config |= 0x08 | ((n - 1) as u8);
            out[pos..pos + n].copy_from_slice(&self.ctr.to_be_bytes()[8 - n..]);
            pos += n;
        }
        out[0] = config;
        pos
    }

    /// Encode into a new vector.
    #[must_use]
    pub fn to_vec(&self) -> alloc::vec::Vec<u8> {
        let mut buf = [0u8; MAX_HEADER_LEN];
        let n = self.encode(&mut buf);
        buf[..n].to_vec()
    }

    /// Decode a header from the start of `buf`; returns the header and its length.
    ///
    /// Never panics. Rejects truncated input and non-minimal encodings (a value below 8
    /// in an extension field, or a leading zero byte), so that each (KID, CTR) has
    /// exactly one encoding.
    pub fn decode(buf: &[u8]) -> Result<(Self, usize)> {
        let (&config, rest) = buf
            .split_first()
            .ok_or(Error::Malformed("empty SFrame header"))?;
        let mut rest = rest;
        let kid = if config & 0x80 == 0 {
            u64::from((config >> 4) & 0x07)
        } else {
            let n = usize::from((config >> 4) & 0x07) + 1;
            let (v, r) = read_be(rest, n)?;
            rest = r;
            v
        };
        let ctr = if config & 0x08 == 0 {
            u64::from(config & 0x07)
        } else {
            let n = usize::from(config & 0x07) + 1;
            let (v, r) = read_be(rest, n)?;
            rest = r;
            v
        };
        let consumed = buf.len() - rest.len();
        Ok((Self { kid, ctr }, consumed))
    }
}

fn read_be(buf: &[u8], n: usize) -> Result<(u64, &[u8])> {
    if buf.len() < n {
        return Err(Error::Malformed("truncated SFrame header"));
    }
    let (bytes, rest) = buf.split_at(n);
    let v = bytes.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    if v < 8 || min_len(v) != n {
        return Err(Error::Malformed("non-minimal SFrame header"));
    }
    Ok((v, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_values_fit_in_the_config_byte() {
        assert_eq!(SframeHeader::new(3, 5).to_vec(), [0x35]);
    }

    #[test]
    fn non_minimal_encodings_are_rejected() {
        // CTR 5 written in an extension byte.
        assert!(SframeHeader::decode(&[0x08, 0x05]).is_err());
        // KID 0x0100 written in 3 bytes.
        assert!(SframeHeader::decode(&[0xa0, 0x00, 0x01, 0x00]).is_err());
        assert!(SframeHeader::decode(&[]).is_err());
        assert!(SframeHeader::decode(&[0xff]).is_err());
    }
}
