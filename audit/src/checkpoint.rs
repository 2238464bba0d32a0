//! Signed checkpoints in the C2SP `tlog-checkpoint` / `signed-note` text format, with
//! an Ed25519 log key.
//!
//! A checkpoint note looks like this (the `time` line is Confide's extension line):
//!
//! ```text
//! clinic.example/audit
//! 1000
//! 2PNgN0RM5bmIJQjfLzAb3EDtQrnOWUjFkDJw5tVeLik=
//! time 2026-11-23T11:08:49.123Z
//!
//! — clinic.example/audit Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=
//! ```
//!
//! The signature covers every byte of the body (the lines before the blank line), and
//! the four bytes in front of it are the C2SP key hash, so generic signed-note tooling
//! can check our checkpoints given the verifier key from [`LogPublicKey::to_vkey`].

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::entry::Timestamp;
use crate::error::{Error, Finding};
use crate::hash::Hash;

/// Largest checkpoint note accepted; real ones are a few hundred bytes.
pub const MAX_NOTE_BYTES: usize = 16 * 1024;

/// C2SP signed-note algorithm byte for Ed25519.
const ALG_ED25519: u8 = 0x01;

pub(crate) const SIG_PREFIX: &str = "\u{2014} ";

pub(crate) fn check_name(name: &str) -> Result<(), Error> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '+') {
        return Err(Error::InvalidOrigin);
    }
    Ok(())
}

pub(crate) fn key_hash(name: &str, alg: u8, public: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([alg]);
    h.update(public);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// The log's Ed25519 signing key. Zeroized on drop; deliberately has no `Debug`,
/// `Display`, `Clone` or serde impls so it cannot end up in a log line or a package.
pub struct LogSigningKey {
    inner: SigningKey,
}

impl LogSigningKey {
    /// The key whose secret seed is `seed`; the caller draws it from the OS RNG.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self {
            inner: SigningKey::from_bytes(seed),
        }
    }

    /// The secret seed, for writing the key file. Handle with care.
    pub fn expose_seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.inner.to_bytes())
    }

    /// The matching public key.
    pub fn public_key(&self) -> LogPublicKey {
        LogPublicKey {
            inner: self.inner.verifying_key(),
        }
    }

    /// Signs a checkpoint for the log named `checkpoint.origin`.
    pub fn sign(&self, checkpoint: Checkpoint) -> SignedCheckpoint {
        let body = checkpoint.body();
        let signature = self.inner.sign(body.as_bytes()).to_bytes();
        SignedCheckpoint {
            checkpoint,
            signature,
        }
    }

    /// Key file text in the signed-note private key form
    /// `PRIVATE+KEY+<name>+<hash>+<base64(0x01 || seed)>`.
    pub fn to_skey(&self, name: &str) -> Result<Zeroizing<String>, Error> {
        check_name(name)?;
        let kh = key_hash(name, ALG_ED25519, self.public_key().inner.as_bytes());
        let mut raw = Zeroizing::new([0u8; 33]);
        raw[0] = ALG_ED25519;
        raw[1..].copy_from_slice(&self.inner.to_bytes());
        Ok(Zeroizing::new(format!(
            "PRIVATE+KEY+{name}+{}+{}",
            hex::encode(kh),
            B64.encode(&raw[..])
        )))
    }

    /// Parses [`LogSigningKey::to_skey`] output; returns the key and its name.
    pub fn from_skey(text: &str) -> Result<(String, Self), Error> {
        let bad = |d: &str| Error::malformed("log signing key", d);
        let rest = text
            .trim()
            .strip_prefix("PRIVATE+KEY+")
            .ok_or_else(|| bad("missing PRIVATE+KEY+ prefix"))?;
        let mut parts = rest.splitn(3, '+');
        let (Some(name), Some(kh), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected name+hash+key"));
        };
        check_name(name)?;
        let raw = Zeroizing::new(B64.decode(b64).map_err(|_| bad("key is not base64"))?);
        if raw.len() != 33 || raw[0] != ALG_ED25519 {
            return Err(bad("not an Ed25519 key"));
        }
        let mut seed = Zeroizing::new([0u8; 32]);
        seed.copy_from_slice(&raw[1..]);
        let key = Self::from_seed(&seed);
        if hex::encode(key_hash(
            name,
            ALG_ED25519,
            key.public_key().inner.as_bytes(),
        )) != kh
        {
            return Err(bad("key hash does not match"));
        }
        Ok((name.to_owned(), key))
    }
}

/// The log's Ed25519 public key, which auditors pin.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct LogPublicKey {
    inner: VerifyingKey,
}

impl fmt::Debug for LogPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LogPublicKey({})", hex::encode(self.inner.as_bytes()))
    }
}

impl LogPublicKey {
    /// From the 32-byte encoding; refuses bytes that are not a valid point.
    pub fn from_bytes(b: &[u8; 32]) -> Result<Self, Error> {
        VerifyingKey::from_bytes(b)
            .map(|inner| Self { inner })
            .map_err(|_| Error::malformed("log public key", "not a valid Ed25519 key"))
    }

    /// The 32-byte encoding.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.inner.to_bytes()
    }

    /// SHA-256 of the key bytes, in hex: the fingerprint to compare out of band.
    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(self.inner.as_bytes()))
    }

    /// C2SP verifier key: `<name>+<hash>+<base64(0x01 || key)>`.
    pub fn to_vkey(&self, name: &str) -> Result<String, Error> {
        check_name(name)?;
        let mut raw = Vec::with_capacity(33);
        raw.push(ALG_ED25519);
        raw.extend_from_slice(self.inner.as_bytes());
        Ok(format!(
            "{name}+{}+{}",
            hex::encode(key_hash(name, ALG_ED25519, self.inner.as_bytes())),
            B64.encode(raw)
        ))
    }

    /// Parses a C2SP verifier key; returns its name and the key.
    pub fn from_vkey(text: &str) -> Result<(String, Self), Error> {
        let bad = |d: &str| Error::malformed("log verifier key", d);
        if text.len() > 1024 {
            return Err(bad("too long"));
        }
        let mut parts = text.trim().splitn(3, '+');
        let (Some(name), Some(kh), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected name+hash+key"));
        };
        check_name(name)?;
        let raw = B64.decode(b64).map_err(|_| bad("key is not base64"))?;
        if raw.len() != 33 || raw[0] != ALG_ED25519 {
            return Err(bad("not an Ed25519 key"));
        }
        let mut b = [0u8; 32];
        b.copy_from_slice(&raw[1..]);
        let key = Self::from_bytes(&b)?;
        if hex::encode(key_hash(name, ALG_ED25519, &b)) != kh {
            return Err(bad("key hash does not match"));
        }
        Ok((name.to_owned(), key))
    }
}

/// What a checkpoint commits to: the log named `origin` had `size` entries with root
/// `root` at `time`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Name of the log; also the signature's key name.
    pub origin: String,
    /// Number of entries.
    pub size: u64,
    /// RFC 6962 root of those entries.
    pub root: Hash,
    /// When the checkpoint was made.
    pub time: Timestamp,
}

impl Checkpoint {
    /// The signed body: origin, size, base64 root and `time` lines, each ending in `\n`.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\ntime {}\n",
            self.origin,
            self.size,
            self.root.to_base64(),
            self.time
        )
    }

    fn parse_body(body: &str) -> Result<Self, Error> {
        let bad = |d: &str| Error::malformed("checkpoint", d);
        let lines: Vec<&str> = body
            .strip_suffix('\n')
            .ok_or_else(|| bad("body must end with a newline"))?
            .split('\n')
            .collect();
        let [origin, size, root, time] = lines[..] else {
            return Err(bad("expected origin, size, root and time lines"));
        };
        check_name(origin)?;
        // One spelling per number: no sign, no leading zeros.
        if size.is_empty()
            || size.len() > 20
            || !size.bytes().all(|c| c.is_ascii_digit())
            || (size.len() > 1 && size.starts_with('0'))
        {
            return Err(bad("size is not a decimal number"));
        }
        let size: u64 = size.parse().map_err(|_| bad("size out of range"))?;
        let root = Hash::from_base64(root).ok_or_else(|| bad("root is not a base64 hash"))?;
        let time = time
            .strip_prefix("time ")
            .and_then(Timestamp::parse_rfc3339)
            .ok_or_else(|| bad("time line is not `time YYYY-MM-DDTHH:MM:SS.mmmZ`"))?;
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
            time,
        })
    }
}

/// A checkpoint with the log key's signature over its body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedCheckpoint {
    /// The signed statement.
    pub checkpoint: Checkpoint,
    /// Ed25519 signature over [`Checkpoint::body`].
    pub signature: [u8; 64],
}

impl SignedCheckpoint {
    /// The full signed note: body, blank line, signature line.
    pub fn to_note(&self, key: &LogPublicKey) -> String {
        let name = &self.checkpoint.origin;
        let mut sig = Vec::with_capacity(68);
        sig.extend_from_slice(&key_hash(name, ALG_ED25519, key.inner.as_bytes()));
        sig.extend_from_slice(&self.signature);
        format!(
            "{}\n{SIG_PREFIX}{name} {}\n",
            self.checkpoint.body(),
            B64.encode(sig)
        )
    }

    /// Checks the signature under `key`.
    pub fn verify(&self, key: &LogPublicKey) -> Result<(), Error> {
        let sig = Signature::from_bytes(&self.signature);
        key.inner
            .verify(self.checkpoint.body().as_bytes(), &sig)
            .map_err(|_| {
                Error::Tampered(Finding::BadCheckpointSignature {
                    size: self.checkpoint.size,
                })
            })
    }

    /// Parses a signed note and verifies the signature made by `key` under the note's
    /// origin. Signature lines by other keys (for example witnesses) are ignored.
    pub fn from_note(text: &str, key: &LogPublicKey) -> Result<Self, Error> {
        let bad = |d: &str| Error::malformed("checkpoint note", d);
        if text.len() > MAX_NOTE_BYTES {
            return Err(bad("too long"));
        }
        let split = text
            .find("\n\n")
            .ok_or_else(|| bad("missing blank line before signatures"))?;
        let (body, sigs) = (&text[..split + 1], &text[split + 2..]);
        let checkpoint = Checkpoint::parse_body(body)?;
        let want_hash = key_hash(&checkpoint.origin, ALG_ED25519, key.inner.as_bytes());
        let sigs = sigs
            .strip_suffix('\n')
            .ok_or_else(|| bad("signatures must end with a newline"))?;
        let mut found = None;
        for line in sigs.split('\n') {
            let rest = line
                .strip_prefix(SIG_PREFIX)
                .ok_or_else(|| bad("signature line must start with an em dash"))?;
            let (name, b64) = rest
                .split_once(' ')
                .ok_or_else(|| bad("signature line needs a name and a signature"))?;
            if name != checkpoint.origin {
                continue;
            }
            let raw = B64
                .decode(b64)
                .map_err(|_| bad("signature is not base64"))?;
            if raw.len() == 68 && raw[..4] == want_hash {
                let mut s = [0u8; 64];
                s.copy_from_slice(&raw[4..]);
                found = Some(s);
                break;
            }
        }
        let signature = found.ok_or(Error::Tampered(Finding::BadCheckpointSignature {
            size: checkpoint.size,
        }))?;
        let signed = Self {
            checkpoint,
            signature,
        };
        signed.verify(key)?;
        Ok(signed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::leaf_hash;

    fn cp() -> Checkpoint {
        Checkpoint {
            origin: "clinic.example/audit".into(),
            size: 1000,
            root: leaf_hash(b"r"),
            time: Timestamp::parse_rfc3339("2026-11-23T11:08:49.123Z").unwrap(),
        }
    }

    #[test]
    fn note_round_trip_and_tamper() {
        let key = LogSigningKey::from_seed(&[7u8; 32]);
        let public = key.public_key();
        let signed = key.sign(cp());
        let note = signed.to_note(&public);
        assert_eq!(SignedCheckpoint::from_note(&note, &public).unwrap(), signed);

        let edited = note.replace("\n1000\n", "\n1001\n");
        assert!(matches!(
            SignedCheckpoint::from_note(&edited, &public),
            Err(Error::Tampered(Finding::BadCheckpointSignature {
                size: 1001
            }))
        ));
        let other = LogSigningKey::from_seed(&[8u8; 32]).public_key();
        assert!(SignedCheckpoint::from_note(&note, &other).is_err());
        // A witness line by another key is ignored.
        let witnessed = format!("{note}\u{2014} witness.example AAAA\n");
        assert!(SignedCheckpoint::from_note(&witnessed, &public).is_ok());
        for garbage in ["", "\n\n", "a\n1\nx\n\n", &note.replace("time ", "tim ")] {
            assert!(SignedCheckpoint::from_note(garbage, &public).is_err());
        }
        let leading_zero = note.replace("\n1000\n", "\n01000\n");
        assert!(SignedCheckpoint::from_note(&leading_zero, &public).is_err());
    }

    #[test]
    fn key_text_forms_round_trip() {
        let key = LogSigningKey::from_seed(&[9u8; 32]);
        let skey = key.to_skey("clinic.example/audit").unwrap();
        let (name, back) = LogSigningKey::from_skey(&skey).unwrap();
        assert_eq!(name, "clinic.example/audit");
        assert_eq!(back.public_key(), key.public_key());
        let vkey = key.public_key().to_vkey(&name).unwrap();
        let (n2, pk) = LogPublicKey::from_vkey(&vkey).unwrap();
        assert_eq!((n2.as_str(), pk), (name.as_str(), key.public_key()));
        assert!(LogPublicKey::from_vkey(&vkey.replace(&name, "other")).is_err());
        assert!(key.to_skey("has space").is_err());
    }

    #[test]
    fn signed_note_interop_vector() {
        // The example key pair and note published with the reference signed-note
        // implementation (golang.org/x/mod/sumdb/note, note_test.go). Ed25519 is
        // deterministic, so our key hash, key encodings and signature line must
        // reproduce it byte for byte.
        let vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
        let skey = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
        let text = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n";
        let sig_line = "\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

        let (name, key) = LogSigningKey::from_skey(skey).unwrap();
        assert_eq!(name, "PeterNeumann");
        assert_eq!(key.public_key().to_vkey(&name).unwrap(), vkey);
        assert_eq!(*key.to_skey(&name).unwrap(), skey);
        let (_, public) = LogPublicKey::from_vkey(vkey).unwrap();
        assert_eq!(public, key.public_key());

        let mut blob = key_hash(&name, ALG_ED25519, &public.to_bytes()).to_vec();
        blob.extend_from_slice(&key.inner.sign(text.as_bytes()).to_bytes());
        assert_eq!(
            format!("{SIG_PREFIX}{name} {}\n", B64.encode(blob)),
            sig_line
        );
    }
}
