//! Witness cosignatures in the C2SP `tlog-cosignature` format (`cosignature/v1`,
//! Ed25519), and the witness's one rule: cosign a checkpoint only if it extends the
//! last one it cosigned.
//!
//! A cosignature is one more signature line on the checkpoint note:
//!
//! ```text
//! — witness.example/w1 base64(key ID || u64 timestamp || Ed25519 signature)
//! ```
//!
//! The key ID is `SHA-256(name || "\n" || 0x04 || public key)[:4]`; the signed message
//! is `cosignature/v1\ntime <POSIX seconds>\n` followed by the whole checkpoint body.
//! A cosignature states that, at that time, this was the largest tree the witness had
//! seen of the log and that it was consistent with every earlier one: a log that shows
//! the witness a history and later rewrites it (a truncated tail, a fork) cannot get
//! the rewritten checkpoint cosigned.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use zeroize::Zeroizing;

use crate::checkpoint::{
    Checkpoint, LogPublicKey, MAX_NOTE_BYTES, SIG_PREFIX, SignedCheckpoint, check_name, key_hash,
};
use crate::error::{Error, Finding};
use crate::proof::verify_consistency;

/// Signature type byte of Ed25519 `cosignature/v1` keys (key IDs and verifier keys).
pub const COSIGNATURE_V1: u8 = 0x04;

const KEY_ID_LEN: usize = 4;
const PAYLOAD_LEN: usize = KEY_ID_LEN + 8 + 64;

fn message(checkpoint: &Checkpoint, timestamp: u64) -> String {
    format!("cosignature/v1\ntime {timestamp}\n{}", checkpoint.body())
}

/// A witness's Ed25519 key with its name. Zeroized on drop; no `Debug` or `Clone`.
pub struct WitnessSigningKey {
    name: String,
    inner: SigningKey,
}

impl WitnessSigningKey {
    /// The key named `name` whose secret seed is `seed` (drawn from the OS RNG).
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Self, Error> {
        check_name(name)?;
        Ok(Self {
            name: name.to_owned(),
            inner: SigningKey::from_bytes(seed),
        })
    }

    /// The witness's name (its signature lines' key name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The public half, to give to verifiers.
    pub fn public_key(&self) -> WitnessPublicKey {
        WitnessPublicKey {
            name: self.name.clone(),
            inner: self.inner.verifying_key(),
        }
    }

    /// Key file text: `PRIVATE+KEY+<name>+<key ID>+<base64(0x04 || seed)>`.
    pub fn to_skey(&self) -> Zeroizing<String> {
        let mut raw = Zeroizing::new([0u8; 33]);
        raw[0] = COSIGNATURE_V1;
        raw[1..].copy_from_slice(&self.inner.to_bytes());
        Zeroizing::new(format!(
            "PRIVATE+KEY+{}+{}+{}",
            self.name,
            hex::encode(self.public_key().key_id()),
            B64.encode(&raw[..])
        ))
    }

    /// Parses [`WitnessSigningKey::to_skey`] output.
    pub fn from_skey(text: &str) -> Result<Self, Error> {
        let bad = |d: &str| Error::malformed("witness signing key", d);
        let rest = text
            .trim()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or_else(|| bad("missing PRIVATE+KEY+ prefix"))?;
        let mut parts = rest.splitn(3, '+');
        let (Some(name), Some(id), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected name+id+key"));
        };
        let raw = Zeroizing::new(B64.decode(b64).map_err(|_| bad("key is not base64"))?);
        if raw.len() != 33 || raw[0] != COSIGNATURE_V1 {
            return Err(bad("not a cosignature/v1 Ed25519 key"));
        }
        let mut seed = Zeroizing::new([0u8; 32]);
        seed.copy_from_slice(&raw[1..]);
        let key = Self::from_seed(name, &seed)?;
        if hex::encode(key.public_key().key_id()) != id {
            return Err(bad("key ID does not match"));
        }
        Ok(key)
    }

    /// Cosigns `checkpoint` at `timestamp` (POSIX seconds). Call only after
    /// [`WitnessState::check`] accepted it.
    pub fn cosign(&self, checkpoint: &Checkpoint, timestamp: u64) -> Cosignature {
        let signature = self
            .inner
            .sign(message(checkpoint, timestamp).as_bytes())
            .to_bytes();
        Cosignature {
            name: self.name.clone(),
            key_id: self.public_key().key_id(),
            timestamp,
            signature,
        }
    }
}

/// A witness's public key and name, as verifiers pin it.
#[derive(Clone, PartialEq, Eq)]
pub struct WitnessPublicKey {
    name: String,
    inner: VerifyingKey,
}

impl fmt::Debug for WitnessPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WitnessPublicKey({})", self.to_vkey())
    }
}

impl WitnessPublicKey {
    /// The witness's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `SHA-256(name || "\n" || 0x04 || key)[:4]`.
    pub fn key_id(&self) -> [u8; 4] {
        key_hash(&self.name, COSIGNATURE_V1, self.inner.as_bytes())
    }

    /// Verifier key text: `<name>+<key ID>+<base64(0x04 || key)>`.
    pub fn to_vkey(&self) -> String {
        let mut raw = Vec::with_capacity(33);
        raw.push(COSIGNATURE_V1);
        raw.extend_from_slice(self.inner.as_bytes());
        format!(
            "{}+{}+{}",
            self.name,
            hex::encode(self.key_id()),
            B64.encode(raw)
        )
    }

    /// Parses a verifier key with signature type 0x04.
    pub fn from_vkey(text: &str) -> Result<Self, Error> {
        let bad = |d: &str| Error::malformed("witness verifier key", d);
        if text.len() > 1024 {
            return Err(bad("too long"));
        }
        let mut parts = text.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected name+id+key"));
        };
        check_name(name)?;
        let raw = B64.decode(b64).map_err(|_| bad("key is not base64"))?;
        if raw.len() != 33 || raw[0] != COSIGNATURE_V1 {
            return Err(bad("not a cosignature/v1 Ed25519 key"));
        }
        let mut b = [0u8; 32];
        b.copy_from_slice(&raw[1..]);
        let inner = VerifyingKey::from_bytes(&b).map_err(|_| bad("not a valid Ed25519 key"))?;
        let key = Self {
            name: name.to_owned(),
            inner,
        };
        if hex::encode(key.key_id()) != id {
            return Err(bad("key ID does not match"));
        }
        Ok(key)
    }

    /// Checks `cosig` on `checkpoint` under this key.
    pub fn verify(&self, checkpoint: &Checkpoint, cosig: &Cosignature) -> Result<(), Error> {
        let bad = || {
            Error::Tampered(Finding::BadCosignature {
                size: checkpoint.size,
            })
        };
        if cosig.name != self.name || cosig.key_id != self.key_id() {
            return Err(bad());
        }
        let sig = Signature::from_bytes(&cosig.signature);
        self.inner
            .verify(message(checkpoint, cosig.timestamp).as_bytes(), &sig)
            .map_err(|_| bad())
    }
}

/// One witness's cosignature on a checkpoint: a signed-note signature line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cosignature {
    /// The witness's name.
    pub name: String,
    /// The witness key's ID.
    pub key_id: [u8; 4],
    /// When the witness signed, POSIX seconds.
    pub timestamp: u64,
    signature: [u8; 64],
}

impl Cosignature {
    /// The signature line, ending in `\n`, to append to the checkpoint note.
    pub fn to_line(&self) -> String {
        let mut raw = Vec::with_capacity(PAYLOAD_LEN);
        raw.extend_from_slice(&self.key_id);
        raw.extend_from_slice(&self.timestamp.to_be_bytes());
        raw.extend_from_slice(&self.signature);
        format!("{SIG_PREFIX}{} {}\n", self.name, B64.encode(raw))
    }

    /// Parses one signature line (with or without its final newline); `None` if it is
    /// a well-formed line of another kind (for example the log's own signature).
    pub fn parse_line(line: &str) -> Result<Option<Self>, Error> {
        let bad = |d: &str| Error::malformed("cosignature line", d);
        let line = line.strip_suffix('\n').unwrap_or(line);
        if line.len() > 1024 {
            return Err(bad("too long"));
        }
        let rest = line
            .strip_prefix(SIG_PREFIX)
            .ok_or_else(|| bad("must start with an em dash"))?;
        let (name, b64) = rest
            .split_once(' ')
            .ok_or_else(|| bad("needs a name and a signature"))?;
        check_name(name)?;
        let raw = B64
            .decode(b64)
            .map_err(|_| bad("signature is not base64"))?;
        if raw.len() != PAYLOAD_LEN {
            return Ok(None);
        }
        let mut key_id = [0u8; KEY_ID_LEN];
        key_id.copy_from_slice(&raw[..KEY_ID_LEN]);
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&raw[KEY_ID_LEN..KEY_ID_LEN + 8]);
        let timestamp = u64::from_be_bytes(ts);
        if timestamp > i64::MAX as u64 {
            return Err(bad("timestamp out of range"));
        }
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&raw[KEY_ID_LEN + 8..]);
        Ok(Some(Self {
            name: name.to_owned(),
            key_id,
            timestamp,
            signature,
        }))
    }
}

/// Parses a checkpoint note that carries cosignatures, checks the log's signature
/// under `log_key`, and requires a valid cosignature by each of `witnesses`.
/// Signature lines by keys nobody asked about are ignored, as signed notes require.
pub fn open_cosigned(
    note: &str,
    log_key: &LogPublicKey,
    witnesses: &[WitnessPublicKey],
) -> Result<(SignedCheckpoint, Vec<Cosignature>), Error> {
    if note.len() > MAX_NOTE_BYTES {
        return Err(Error::malformed("checkpoint note", "too long"));
    }
    let signed = SignedCheckpoint::from_note(note, log_key)?;
    let sigs = note
        .find("\n\n")
        .map(|i| &note[i + 2..])
        .unwrap_or_default();
    let mut found = Vec::with_capacity(witnesses.len());
    for w in witnesses {
        let mine = sigs
            .lines()
            .filter_map(|l| Cosignature::parse_line(l).ok().flatten())
            .find(|c| c.name == w.name && c.key_id == w.key_id());
        let Some(c) = mine else {
            return Err(Error::Unwitnessed {
                size: signed.checkpoint.size,
                witness: w.name.clone(),
            });
        };
        w.verify(&signed.checkpoint, &c)?;
        found.push(c);
    }
    Ok((signed, found))
}

/// What a witness remembers of a log: the latest checkpoint it cosigned. It never
/// cosigns one that does not extend it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WitnessState {
    /// The latest checkpoint cosigned, if any.
    pub last: Option<Checkpoint>,
}

impl WitnessState {
    /// Whether `next` may be cosigned: same origin, no smaller than the last one, and
    /// proven to extend it by `proof` (the RFC 6962 consistency proof from the last
    /// size to `next`'s). On success the state moves to `next`.
    ///
    /// A smaller size is [`Finding::RolledBack`]; the same size with another root, or
    /// a proof that does not verify, is [`Finding::InconsistentCheckpoints`]: both
    /// mean the log rewrote history the witness has seen, and the caller must refuse
    /// and raise the alarm.
    pub fn check(&mut self, next: &Checkpoint, proof: &[crate::Hash]) -> Result<(), Error> {
        if let Some(last) = &self.last {
            if next.origin != last.origin {
                return Err(Error::malformed(
                    "checkpoint",
                    format!(
                        "origin {} is not the witnessed log {}",
                        next.origin, last.origin
                    ),
                ));
            }
            if next.size < last.size {
                return Err(Error::Tampered(Finding::RolledBack {
                    seen: last.size,
                    offered: next.size,
                }));
            }
            verify_consistency(last.size, next.size, &last.root, &next.root, proof).map_err(
                |_| {
                    Error::Tampered(Finding::InconsistentCheckpoints {
                        old_size: last.size,
                        new_size: next.size,
                    })
                },
            )?;
        }
        self.last = Some(next.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::LogSigningKey;
    use crate::entry::Timestamp;
    use crate::hash::leaf_hash;
    use crate::proof::consistency_proof;
    use crate::tree::MemoryTree;

    fn cp(size: u64, root: crate::Hash) -> Checkpoint {
        Checkpoint {
            origin: "clinic.example/audit".into(),
            size,
            root,
            time: Timestamp::from_unix_millis(1_800_000_000_000).unwrap(),
        }
    }

    #[test]
    fn cosignature_spec_example_parses() {
        // The witness line of the example in the tlog-cosignature specification.
        let line = "\u{2014} witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==";
        let c = Cosignature::parse_line(line).unwrap().unwrap();
        assert_eq!(c.name, "witness.example.com/w1");
        assert_eq!(c.timestamp, 1_679_315_147);
        assert_eq!(c.to_line().trim_end(), line);
    }

    #[test]
    fn cosign_round_trip_and_refusals() {
        let log = LogSigningKey::from_seed(&[1; 32]);
        let w = WitnessSigningKey::from_seed("witness.example/w1", &[2; 32]).unwrap();
        let (back, vk) = (
            WitnessSigningKey::from_skey(&w.to_skey()).unwrap(),
            WitnessPublicKey::from_vkey(&w.public_key().to_vkey()).unwrap(),
        );
        assert_eq!(
            (back.public_key(), vk.clone()),
            (w.public_key(), w.public_key())
        );

        let signed = log.sign(cp(5, leaf_hash(b"x")));
        let note = signed.to_note(&log.public_key());
        let cosig = w.cosign(&signed.checkpoint, 1_800_000_000);
        let cosigned = format!("{note}{}", cosig.to_line());
        let (got, cs) =
            open_cosigned(&cosigned, &log.public_key(), std::slice::from_ref(&vk)).unwrap();
        assert_eq!((got, cs), (signed.clone(), vec![cosig.clone()]));
        // Not cosigned, cosigned by someone else, or a cosignature moved to another
        // checkpoint: all refused.
        assert!(matches!(
            open_cosigned(&note, &log.public_key(), std::slice::from_ref(&vk)),
            Err(Error::Unwitnessed { size: 5, .. })
        ));
        let other = WitnessSigningKey::from_seed("witness.example/w1", &[3; 32]).unwrap();
        let forged = format!("{note}{}", other.cosign(&signed.checkpoint, 1).to_line());
        assert!(open_cosigned(&forged, &log.public_key(), std::slice::from_ref(&vk)).is_err());
        let signed6 = log.sign(cp(6, leaf_hash(b"y")));
        let moved = format!("{}{}", signed6.to_note(&log.public_key()), cosig.to_line());
        assert!(matches!(
            open_cosigned(&moved, &log.public_key(), &[vk]),
            Err(Error::Tampered(Finding::BadCosignature { size: 6 }))
        ));
    }

    #[test]
    fn witness_refuses_rollback_and_fork() {
        let leaves: Vec<crate::Hash> = (0..10u8).map(|i| leaf_hash(&[i])).collect();
        let mut tree = MemoryTree::new();
        for l in &leaves {
            tree.push(*l);
        }
        let root = |ls: &[crate::Hash], n: usize| {
            let mut cr = crate::tree::CompactRange::new();
            for l in &ls[..n] {
                cr.push(*l);
            }
            cr.root()
        };
        let mut st = WitnessState::default();
        st.check(&cp(4, root(&leaves, 4)), &[]).unwrap();
        let p = consistency_proof(&tree, 4, 10).unwrap().path;
        st.check(&cp(10, root(&leaves, 10)), &p).unwrap();
        // The same checkpoint again is fine; a smaller one is a rollback.
        st.check(&cp(10, root(&leaves, 10)), &[]).unwrap();
        assert!(matches!(
            st.check(&cp(7, root(&leaves, 7)), &[]),
            Err(Error::Tampered(Finding::RolledBack {
                seen: 10,
                offered: 7
            }))
        ));
        // A fork: entries 7.. replaced, then grown past the witnessed size.
        let forked: Vec<crate::Hash> = (0..12u8)
            .map(|i| leaf_hash(&[if i < 7 { i } else { i + 100 }]))
            .collect();
        let mut fork = MemoryTree::new();
        for l in &forked {
            fork.push(*l);
        }
        let fp = consistency_proof(&fork, 10, 12).unwrap().path;
        assert!(matches!(
            st.check(&cp(12, root(&forked, 12)), &fp),
            Err(Error::Tampered(Finding::InconsistentCheckpoints {
                old_size: 10,
                new_size: 12
            }))
        ));
        assert_eq!(st.last.as_ref().map(|c| c.size), Some(10));
    }
}
