//! RFC 6962 section 2.1 hashing: domain-separated leaf and interior node hashes.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// Length in bytes of every hash in the log (SHA-256).
pub const HASH_LEN: usize = 32;

/// A SHA-256 value: a leaf hash, an interior node hash or a tree root.
///
/// Serialized as standard base64 with padding, the form C2SP checkpoints use, so a
/// root in a package and in a checkpoint body read the same.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hash(pub [u8; HASH_LEN]);

impl Hash {
    /// The bytes of the hash.
    pub fn as_bytes(&self) -> &[u8; HASH_LEN] {
        &self.0
    }

    /// Lower-case hex, the form used in reports and tests.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; HASH_LEN];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }

    /// Standard base64 with padding.
    pub fn to_base64(&self) -> String {
        B64.encode(self.0)
    }

    /// Parses standard base64 with padding; anything that is not exactly 32 bytes is refused.
    pub fn from_base64(s: &str) -> Option<Self> {
        // 32 bytes encode to 44 characters; refusing longer input first bounds the work
        // done on hostile package contents.
        if s.len() != 44 {
            return None;
        }
        let v = B64.decode(s).ok()?;
        let arr: [u8; HASH_LEN] = v.try_into().ok()?;
        Some(Self(arr))
    }

    /// Reads a hash from a byte slice of exactly 32 bytes (for example a database column).
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        let arr: [u8; HASH_LEN] = b.try_into().ok()?;
        Some(Self(arr))
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_hex())
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for Hash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Hash::from_base64(&s)
            .ok_or_else(|| serde::de::Error::custom("expected 32 bytes in standard base64"))
    }
}

/// Root of the empty tree: `SHA-256()` of no input (RFC 6962 section 2.1).
pub fn empty_root() -> Hash {
    Hash(Sha256::digest([]).into())
}

/// `SHA-256(0x00 || data)`: the hash of one log entry's canonical bytes.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(data);
    Hash(h.finalize().into())
}

/// `SHA-256(0x01 || left || right)`: the hash of an interior node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left.0);
    h.update(right.0);
    Hash(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip_and_length_checks() {
        let h = leaf_hash(b"x");
        assert_eq!(Hash::from_base64(&h.to_base64()), Some(h));
        assert_eq!(Hash::from_base64("AAAA"), None);
        assert_eq!(Hash::from_base64(&"A".repeat(44)), None);
        assert_eq!(Hash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(Hash::from_hex("00"), None);
        assert_eq!(Hash::from_slice(&[0u8; 31]), None);
    }
}
