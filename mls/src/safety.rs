//! The safety code two people compare aloud: six groups of five digits, the same on both
//! screens, that changes if either device key is swapped.
//!
//! ## Why it cannot be ground
//!
//! The code is two halves, each a function of **one** device alone (its principal,
//! device id and Ed25519 key), shown in a canonical order, as Signal's safety numbers are.
//! A machine in the middle that shows Alice its key `M1` instead of Bob's and Bob its key
//! `M2` instead of Alice's must make `half(M1) == half(Bob)` *and*
//! `half(M2) == half(Alice)`: two second-preimage searches on fixed targets, not a
//! birthday search in which it picks both sides. Each half has 15 decimal digits (about
//! 50 bits) behind [`ITERATIONS`] SHA-512 rounds, so one target costs about 2^64 hashes,
//! and a code does not depend on the session, so the search cannot be hidden in call
//! setup time either: the keys are long-lived and logged in the key directory before
//! any call.
//!
//! Because the code depends on the two device keys only, a pair that compared it once
//! can stay *Verified* in every later consultation while neither key changes
//! ([`crate::pins::PinStore::mark_verified`]).

use std::fmt;

use sha2::{Digest, Sha512};

use crate::identity::DeviceName;

/// SHA-512 rounds per half. About 5 ms natively, tens of ms in wasm: paid once per peer.
pub const ITERATIONS: u32 = 16_384;
/// Decimal digits per half.
pub const HALF_DIGITS: usize = 15;

/// A pair's safety code.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SafetyCode {
    groups: [u32; 6],
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

impl fmt::Debug for SafetyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SafetyCode({self})")
    }
}

/// One device's half: three groups of five digits.
#[must_use]
pub fn fingerprint(name: &DeviceName, signature_key: &[u8; 32]) -> [u32; 3] {
    let identity = name.credential_identity();
    let mut h = Sha512::new()
        .chain_update(b"confide/v1 safety fingerprint\0")
        .chain_update((identity.len() as u16).to_be_bytes())
        .chain_update(&identity)
        .chain_update(signature_key)
        .finalize();
    for _ in 1..ITERATIONS {
        h = Sha512::new()
            .chain_update(h)
            .chain_update(signature_key)
            .finalize();
    }
    let mut groups = [0u32; 3];
    for (g, chunk) in groups.iter_mut().zip(h.chunks_exact(5)) {
        let v = chunk.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        // 2^40 mod 10^5 bias is below 10^-7: irrelevant for a comparison code.
        *g = (v % 100_000) as u32;
    }
    groups
}

/// The code for the pair (a, b); `pair_code(a, b) == pair_code(b, a)`.
#[must_use]
pub fn pair_code(a: (&DeviceName, &[u8; 32]), b: (&DeviceName, &[u8; 32])) -> SafetyCode {
    let (lo, hi) = if (a.1, a.0) <= (b.1, b.0) {
        (a, b)
    } else {
        (b, a)
    };
    let (x, y) = (fingerprint(lo.0, lo.1), fingerprint(hi.0, hi.1));
    SafetyCode {
        groups: [x[0], x[1], x[2], y[0], y[1], y[2]],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{DeviceId, Principal};

    fn name(p: &str, d: u8) -> DeviceName {
        DeviceName {
            principal: Principal::new(&format!("account:{p}")).unwrap(),
            device: DeviceId::from_bytes([d; 16]),
        }
    }

    #[test]
    fn code_is_symmetric_and_changes_with_either_key() {
        let (a, b) = (name("1", 1), name("2", 2));
        let (ka, kb) = ([1u8; 32], [2u8; 32]);
        let c = pair_code((&a, &ka), (&b, &kb));
        assert_eq!(c, pair_code((&b, &kb), (&a, &ka)));
        assert_eq!(c.to_string().len(), 6 * 5 + 5);
        assert_ne!(c, pair_code((&a, &[3u8; 32]), (&b, &kb)));
        assert_ne!(c, pair_code((&a, &ka), (&b, &[3u8; 32])));
        // The same key claimed by another device id or account is another half.
        assert_ne!(c, pair_code((&name("3", 1), &ka), (&b, &kb)));
        assert_ne!(c, pair_code((&name("1", 9), &ka), (&b, &kb)));
    }

    #[test]
    fn each_half_depends_on_one_device_only() {
        let (a, b, m) = (name("1", 1), name("2", 2), name("2", 7));
        let (ka, kb, km) = ([1u8; 32], [2u8; 32], [9u8; 32]);
        let with_b = pair_code((&a, &ka), (&b, &kb)).to_string();
        let with_m = pair_code((&a, &ka), (&m, &km)).to_string();
        let fa = fingerprint(&a, &ka).map(|g| format!("{g:05}")).join(" ");
        assert!(with_b.contains(&fa) && with_m.contains(&fa));
    }
}
