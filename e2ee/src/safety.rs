//! The safety code: a short number both people read aloud to detect a key swap.

use alloc::string::String;
use core::fmt;

use sha2::{Digest, Sha512};

use crate::identity::IdentityPublicKey;

/// Decimal digits in a safety code.
pub const SAFETY_CODE_DIGITS: usize = 20;
const GROUPS: usize = SAFETY_CODE_DIGITS / 5;
/// SHA-512 iterations: makes each guess of an attacker grinding for a colliding code
/// cost thousands of hashes on top of an X25519 and an Ed25519 operation.
pub const SAFETY_CODE_ITERATIONS: u32 = 4096;

/// A safety code: 20 digits shown as four groups of five, e.g. `"01234 56789 01234 56789"`.
///
/// Why 20 digits (about 66 bits): a relay that sits in the middle sees both honest key
/// offers and can grind its own keys looking for two sessions whose codes collide, which
/// is a birthday search: 2^33 tries here, each costing key generation, a signature and
/// [`SAFETY_CODE_ITERATIONS`] hashes, while the call is being set up. With 12 digits it
/// would be 2^20 tries, which takes seconds.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SafetyCode {
    groups: [u32; GROUPS],
}

impl fmt::Debug for SafetyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SafetyCode({self})")
    }
}

impl fmt::Display for SafetyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, g) in self.groups.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{g:05}")?;
        }
        Ok(())
    }
}

impl SafetyCode {
    /// The code as text, groups separated by single spaces.
    #[must_use]
    pub fn to_text(&self) -> String {
        alloc::format!("{self}")
    }
}

/// The safety code of a pairwise session: a function of both identity keys (in
/// canonical order) and the session transcript hash, so both sides compute the same
/// code and swapping any key changes it.
#[must_use]
pub fn safety_code(
    a: &IdentityPublicKey,
    b: &IdentityPublicKey,
    transcript_hash: &[u8; 32],
) -> SafetyCode {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut h = Sha512::new()
        .chain_update(b"confide-e2ee/v1 safety code")
        .chain_update(lo.to_bytes())
        .chain_update(hi.to_bytes())
        .chain_update(transcript_hash)
        .finalize();
    for _ in 1..SAFETY_CODE_ITERATIONS {
        h = Sha512::new()
            .chain_update(h)
            .chain_update(transcript_hash)
            .finalize();
    }
    let mut groups = [0u32; GROUPS];
    for (g, chunk) in groups.iter_mut().zip(h.chunks_exact(5)) {
        let v = chunk.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        // 2^40 mod 10^5 bias is below 10^-7: irrelevant for a comparison code.
        *g = (v % 100_000) as u32;
    }
    SafetyCode { groups }
}
