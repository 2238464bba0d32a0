//! Credentials, second factor, session tokens and login throttling. No I/O: the
//! edge passes `now` and a CSPRNG in.

use std::collections::HashMap;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::model::{AppointmentId, Principal, Role, Timestamp};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("password hashing failed")]
    Hash,
}

/// OWASP's argon2id baseline: m = 19 MiB, t = 2, p = 1.
fn argon2() -> Argon2<'static> {
    // The parameters are constants inside argon2's accepted range.
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hash a password to a PHC string (`$argon2id$v=19$m=19456,t=2,p=1$...`).
pub fn hash_password(
    password: &str,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<String, AuthError> {
    let mut salt = [0u8; 16];
    rng.fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|_| AuthError::Hash)?;
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| AuthError::Hash)
}

pub fn verify_password(phc: &str, password: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => argon2().verify_password(password.as_bytes(), &h).is_ok(),
        Err(_) => false,
    }
}

/// A hash to verify against when the account does not exist, so that both paths
/// cost one argon2 run and timing does not tell whether an account exists.
pub const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Yt7cJ8K8yQ7N1d0bq7m1kB2r0m9cXJ9lX0m3kqfQz3A";

// ---------------------------------------------------------------- TOTP (RFC 6238)

pub const TOTP_STEP_S: i64 = 30;
pub const TOTP_DIGITS: usize = 6;

/// A TOTP shared secret (160 bits, as RFC 4226 recommends). Zeroed on drop.
pub struct TotpSecret(pub Zeroizing<Vec<u8>>);

impl TotpSecret {
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut b = vec![0u8; 20];
        rng.fill_bytes(&mut b);
        TotpSecret(Zeroizing::new(b))
    }
    pub fn from_bytes(b: Vec<u8>) -> Self {
        TotpSecret(Zeroizing::new(b))
    }
    pub fn base32(&self) -> String {
        totp_rs::Secret::Raw(self.0.to_vec())
            .to_encoded()
            .to_string()
    }
    pub fn from_base32(s: &str) -> Option<Self> {
        totp_rs::Secret::Encoded(s.to_string())
            .to_bytes()
            .ok()
            .map(Self::from_bytes)
    }

    fn totp(&self) -> totp_rs::TOTP {
        totp_rs::TOTP::new_unchecked(
            totp_rs::Algorithm::SHA1,
            TOTP_DIGITS,
            0,
            TOTP_STEP_S as u64,
            self.0.to_vec(),
        )
    }

    /// The code for the 30 s step that contains `unix_secs`.
    pub fn code_at(&self, unix_secs: i64) -> String {
        self.totp().generate(unix_secs.max(0) as u64)
    }

    /// `otpauth://` URL for authenticator apps.
    pub fn otpauth_url(&self, issuer: &str, account: &str) -> String {
        let enc = |s: &str| -> String {
            s.bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect()
        };
        format!(
            "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits={}&period={}",
            enc(issuer),
            enc(account),
            self.base32(),
            enc(issuer),
            TOTP_DIGITS,
            TOTP_STEP_S
        )
    }

    /// The [`TotpSecret::otpauth_url`] as a QR code for an authenticator's camera: an
    /// SVG document (black on white, with the quiet zone), or `None` if the URL does
    /// not fit in a QR code (an issuer or account name of hundreds of characters).
    pub fn qr_svg(&self, issuer: &str, account: &str) -> Option<String> {
        let url = self.otpauth_url(issuer, account);
        let code =
            qrcode::QrCode::with_error_correction_level(url.as_bytes(), qrcode::EcLevel::M).ok()?;
        Some(
            code.render::<qrcode::render::svg::Color<'_>>()
                .min_dimensions(240, 240)
                .quiet_zone(true)
                .build(),
        )
    }

    /// Check `code` at `now`. Accepts the current step and at most one step back
    /// (clock drift, a code typed just before it rolled over), and only steps after
    /// `last_used_step`, so a code that was already accepted is refused. Returns the
    /// step to record as used.
    pub fn verify(&self, code: &str, now: Timestamp, last_used_step: Option<i64>) -> Option<i64> {
        let code = code.trim();
        if code.len() != TOTP_DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let current = now.secs().div_euclid(TOTP_STEP_S);
        let mut matched = None;
        for step in [current, current - 1] {
            let expect = self.code_at(step * TOTP_STEP_S);
            // Check both steps so timing does not tell which one matched.
            if bool::from(expect.as_bytes().ct_eq(code.as_bytes())) && matched.is_none() {
                matched = Some(step);
            }
        }
        let step = matched?;
        match last_used_step {
            Some(last) if step <= last => None,
            _ => Some(step),
        }
    }
}

// ------------------------------------------------------------- tokens and codes

/// A fresh random 256-bit bearer token (base64url) and the hash that is stored.
pub fn new_token(rng: &mut (impl RngCore + CryptoRng)) -> (String, Vec<u8>) {
    let mut b = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(&mut b[..]);
    let token = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &b[..]);
    let hash = hash_token(&token);
    (token, hash)
}

/// Tokens carry 256 bits of entropy, so a fast hash is enough: there is nothing to
/// brute-force, and a stolen table of hashes cannot be replayed as tokens.
pub fn hash_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// The server's secret key for recovery code hashes, kept outside the database like
/// the master key: a copy of the database alone cannot confirm a guessed code (60
/// bits are many, but a fast unkeyed hash lets an attacker with the rows try them
/// offline).
pub struct RecoveryPepper(Zeroizing<[u8; 32]>);

impl RecoveryPepper {
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut k = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(k.as_mut());
        RecoveryPepper(k)
    }

    /// 64 hex digits (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Option<Self> {
        let bytes = Zeroizing::new(hex::decode(text.trim()).ok()?);
        let k: [u8; 32] = bytes.as_slice().try_into().ok()?;
        Some(RecoveryPepper(Zeroizing::new(k)))
    }

    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.0.as_ref()))
    }
}

impl std::fmt::Debug for RecoveryPepper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecoveryPepper(<secret>)")
    }
}

/// Ten single-use recovery codes like `k3q9-x7mv-2hfp`, and their hashes.
pub fn recovery_codes(
    pepper: &RecoveryPepper,
    rng: &mut (impl RngCore + CryptoRng),
) -> Vec<(String, Vec<u8>)> {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    (0..10)
        .map(|_| {
            let mut s = String::with_capacity(14);
            for i in 0..12 {
                if i > 0 && i % 4 == 0 {
                    s.push('-');
                }
                let idx = (rng.next_u32() as usize) % ALPHABET.len();
                s.push(ALPHABET[idx] as char);
            }
            let h = hash_recovery_code(pepper, &s);
            (s, h)
        })
        .collect()
}

/// HMAC-SHA256 under the pepper of the normalised code (case, dashes and spaces do
/// not matter).
pub fn hash_recovery_code(pepper: &RecoveryPepper, code: &str) -> Vec<u8> {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(pepper.0.as_ref())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(b"confide recovery code\0");
    mac.update(normalise_recovery_code(code).as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// The unkeyed hash recovery codes had before the pepper: still accepted for codes
/// made before the upgrade, until the user makes new ones.
pub fn legacy_recovery_hash(code: &str) -> Vec<u8> {
    hash_token(&format!("recovery:{}", normalise_recovery_code(code)))
}

fn normalise_recovery_code(code: &str) -> String {
    code.trim()
        .to_ascii_lowercase()
        .chars()
        .filter(|c| *c != '-' && *c != ' ')
        .collect()
}

// ------------------------------------------------------------ activation links

/// What a single-use activation link is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivationPurpose {
    /// A new account: its owner sets the first password (and enrols a second factor
    /// when the role needs one).
    Activate,
    /// An admin reset the password: the owner sets a new one (proving the second
    /// factor, when there is one).
    ResetPassword,
    /// An admin reset the second factor: the owner proves the password, then enrols a
    /// new one.
    ResetSecondFactor,
}

impl ActivationPurpose {
    pub fn as_str(self) -> &'static str {
        match self {
            ActivationPurpose::Activate => "activate",
            ActivationPurpose::ResetPassword => "reset_password",
            ActivationPurpose::ResetSecondFactor => "reset_second_factor",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "activate" => ActivationPurpose::Activate,
            "reset_password" => ActivationPurpose::ResetPassword,
            "reset_second_factor" => ActivationPurpose::ResetSecondFactor,
            _ => return None,
        })
    }
}

impl std::fmt::Display for ActivationPurpose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// -------------------------------------------------------------------- sessions

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionKind {
    /// A full login.
    Full,
    /// Password was right, but a mandatory second factor is not enrolled yet: this
    /// session may only enrol TOTP.
    Enroll,
}

impl SessionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionKind::Full => "full",
            SessionKind::Enroll => "enroll",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "full" => Some(SessionKind::Full),
            "enroll" => Some(SessionKind::Enroll),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Session {
    pub token_hash: Vec<u8>,
    pub principal: Principal,
    pub role: Role,
    pub kind: SessionKind,
    /// Guest sessions are good for one appointment only.
    pub scope: Option<AppointmentId>,
    pub created_at: Timestamp,
    pub last_seen: Timestamp,
    pub expires_at: Timestamp,
    pub revoked: bool,
}

impl Session {
    /// Who this session is, for [`crate::policy`].
    pub fn subject(&self) -> crate::policy::Subject<'_> {
        crate::policy::Subject {
            principal: &self.principal,
            role: self.role,
            scope: self.scope,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionProblem {
    #[error("revoked")]
    Revoked,
    #[error("absolute lifetime over")]
    Expired,
    #[error("idle timeout")]
    Idle,
}

impl Session {
    pub fn check(&self, now: Timestamp, idle_timeout_s: i64) -> Result<(), SessionProblem> {
        if self.revoked {
            Err(SessionProblem::Revoked)
        } else if now >= self.expires_at {
            Err(SessionProblem::Expired)
        } else if now > self.last_seen.plus_secs(idle_timeout_s) {
            Err(SessionProblem::Idle)
        } else {
            Ok(())
        }
    }
}

// -------------------------------------------------------------------- throttle

/// Growing delays after failed logins (NIST SP 800-63B 5.2.2), never a hard lock.
///
/// Keys are chosen by the edge: account+address (strict), address (many accounts
/// from one place) and account alone (distributed guessing, with a low cap so an
/// attacker cannot keep a clinician out for longer than `cap_s`).
#[derive(Debug)]
pub struct Throttle {
    // Keys are attacker-influenced strings; std's HashMap is DoS-resistant (SipHash).
    entries: HashMap<String, ThrottleEntry>,
    max_entries: usize,
}

#[derive(Debug, Clone, Copy)]
struct ThrottleEntry {
    failures: u32,
    next_allowed: Timestamp,
    last: Timestamp,
}

#[derive(Debug, Clone, Copy)]
pub struct ThrottlePolicy {
    /// Failures allowed without any delay.
    pub free: u32,
    /// Upper bound of the delay.
    pub cap_s: i64,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::with_capacity(100_000)
    }
}

impl Throttle {
    /// A table that keeps at most `max_entries` keys; beyond that the least recently
    /// used ones are forgotten (see [`Throttle::handle_attempt`]).
    pub fn with_capacity(max_entries: usize) -> Self {
        Throttle {
            entries: HashMap::new(),
            max_entries: max_entries.max(1),
        }
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `Err(retry_after_s)` while the key must wait.
    pub fn check(&self, key: &str, now: Timestamp) -> Result<(), i64> {
        match self.entries.get(key) {
            Some(e) if now < e.next_allowed => Err((e.next_allowed.0 - now.0 + 999) / 1000),
            _ => Ok(()),
        }
    }

    /// An attempt on `keys`, counted before the password is verified: `Err(retry_after_s)`
    /// if any key must still wait (nothing is counted then), otherwise each key is
    /// charged one failure at once, in the same step as the check. So parallel
    /// guesses cannot all pass the check before the first one is counted: with
    /// `free` failures allowed, at most `free + 1` verifications start before the
    /// delay applies (the last of them starts it). An attempt that turns out not to be a failure gives its charge back
    /// ([`Throttle::refund`], [`Throttle::handle_success`]).
    pub fn handle_attempt(
        &mut self,
        keys: &[(String, ThrottlePolicy)],
        now: Timestamp,
    ) -> Result<(), i64> {
        if let Some(wait) = keys
            .iter()
            .filter_map(|(k, _)| self.check(k, now).err())
            .max()
        {
            return Err(wait);
        }
        for (k, p) in keys {
            self.handle_failure(k, *p, now);
        }
        Ok(())
    }

    /// Gives back the charge of one attempt that was not a failure (a correct password
    /// still waiting for its second factor, a success on a shared address).
    pub fn refund(&mut self, key: &str, policy: ThrottlePolicy) {
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        e.failures = e.failures.saturating_sub(1);
        if e.failures == 0 {
            self.entries.remove(key);
        } else {
            e.next_allowed = e.last.plus_secs(policy.delay_s(e.failures));
        }
    }

    pub fn handle_failure(&mut self, key: &str, policy: ThrottlePolicy, now: Timestamp) {
        if !self.entries.contains_key(key) && self.entries.len() >= self.max_entries {
            self.evict(now);
        }
        let e = self
            .entries
            .entry(key.to_string())
            .or_insert(ThrottleEntry {
                failures: 0,
                next_allowed: now,
                last: now,
            });
        e.failures = e.failures.saturating_add(1);
        e.last = now;
        e.next_allowed = now.plus_secs(policy.delay_s(e.failures));
    }

    /// Makes room for new keys: forgets keys idle for an hour and out of their delay,
    /// then, if still full, the least recently used tenth (an entry still serving a
    /// delay counts as used until the delay ends). A flood of fresh usernames
    /// therefore pushes out other stale keys, never the one under attack, and never
    /// the whole table.
    fn evict(&mut self, now: Timestamp) {
        self.prune(now);
        if self.entries.len() < self.max_entries {
            return;
        }
        let mut recency: Vec<i64> = self
            .entries
            .values()
            .map(|e| e.last.0.max(e.next_allowed.0))
            .collect();
        let cut = (self.max_entries / 10).max(1).min(recency.len() - 1);
        let (_, nth, _) = recency.select_nth_unstable(cut);
        let threshold = *nth;
        let mut to_drop = cut;
        self.entries.retain(|_, e| {
            if to_drop > 0 && e.last.0.max(e.next_allowed.0) < threshold {
                to_drop -= 1;
                false
            } else {
                true
            }
        });
        // Ties at the threshold: drop among them until enough room is made.
        if self.entries.len() >= self.max_entries {
            let mut over = self.entries.len() + 1 - self.max_entries;
            self.entries.retain(|_, e| {
                if over > 0 && e.last.0.max(e.next_allowed.0) <= threshold {
                    over -= 1;
                    false
                } else {
                    true
                }
            });
        }
    }

    pub fn handle_success(&mut self, key: &str) {
        self.entries.remove(key);
    }

    /// Forgets keys idle for an hour whose delay is over (the server does this every
    /// minute, and whenever the table is full).
    pub fn prune(&mut self, now: Timestamp) {
        self.entries
            .retain(|_, e| now.0 - e.last.0 < 3_600_000 || now < e.next_allowed);
    }
}

impl ThrottlePolicy {
    /// The next state of a persisted counter (`failures`, next attempt at `next_at`)
    /// when an attempt comes at `now`: charged before verifying, as
    /// [`Throttle::handle_attempt`] does; `Err(retry_after_s)` while it must wait.
    pub fn charge(
        self,
        failures: u32,
        next_at: Timestamp,
        now: Timestamp,
    ) -> Result<(u32, Timestamp), i64> {
        if now < next_at {
            return Err((next_at.0 - now.0 + 999) / 1000);
        }
        let f = failures.saturating_add(1);
        Ok((f, now.plus_secs(self.delay_s(f))))
    }

    /// A persisted counter after giving back one charge (the attempt was not a failure).
    pub fn uncharge(self, failures: u32, now: Timestamp) -> (u32, Timestamp) {
        let f = failures.saturating_sub(1);
        (f, now.plus_secs(self.delay_s(f)))
    }

    /// Delay after `failures` failures: none for the free ones, then 2^n s up to the cap.
    fn delay_s(self, failures: u32) -> i64 {
        let over = failures.saturating_sub(self.free);
        if over == 0 {
            0
        } else {
            (1i64 << over.min(20)).min(self.cap_s)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;

    #[test]
    fn password_hash_is_argon2id_phc_with_owasp_params() {
        let h = hash_password("correct horse", &mut OsRng).unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify_password(&h, "correct horse"));
        assert!(!verify_password(&h, "wrong"));
        assert!(!verify_password("garbage", "x"));
        assert!(!verify_password(DUMMY_HASH, "x"));
    }

    #[test]
    fn the_enrolment_qr_code_is_a_self_contained_svg() {
        let s = TotpSecret::generate(&mut OsRng);
        let svg = s.qr_svg("Confide", "drsmith").unwrap();
        assert!(svg.starts_with("<?xml") && svg.ends_with("</svg>"), "{svg}");
        // Nothing to fetch: no links, no scripts, no external references.
        assert!(!svg.contains("href") && !svg.contains("<script"));
        assert!(svg.contains("<path fill=\"#000\" d=\"M"));
        // A URL too long for any QR code is refused, not truncated.
        assert!(s.qr_svg(&"x".repeat(5000), "drsmith").is_none());
    }

    #[test]
    fn totp_matches_rfc6238_sha1_vector() {
        // RFC 6238 Appendix B, SHA1 secret "12345678901234567890", T = 59 -> 94287082
        // (8 digits); with 6 digits the code is the last six.
        let s = TotpSecret::from_bytes(b"12345678901234567890".to_vec());
        assert_eq!(s.code_at(59), "287082");
        assert_eq!(s.code_at(1111111109), "081804");
    }

    #[test]
    fn totp_window_and_replay() {
        let s = TotpSecret::generate(&mut OsRng);
        let now = Timestamp::from_secs(1_800_000_015);
        let cur = s.code_at(now.secs());
        let prev = s.code_at(now.secs() - 30);
        let older = s.code_at(now.secs() - 60);
        let next = s.code_at(now.secs() + 30);
        let step = s.verify(&cur, now, None).expect("current step");
        assert_eq!(s.verify(&cur, now, Some(step)), None, "replay refused");
        assert_eq!(s.verify(&prev, now, None), Some(step - 1));
        assert_eq!(
            s.verify(&prev, now, Some(step)),
            None,
            "older than last used"
        );
        assert_eq!(s.verify(&older, now, None), None, "two steps back refused");
        assert_eq!(s.verify(&next, now, None), None, "future step refused");
        assert_eq!(s.verify("12345", now, None), None);
        let b32 = s.base32();
        assert_eq!(
            TotpSecret::from_base32(&b32).unwrap().code_at(0),
            s.code_at(0)
        );
        assert!(s.otpauth_url("Confide", "dr x").contains("dr%20x"));
    }

    #[test]
    fn tokens_and_recovery_codes() {
        let (t, h) = new_token(&mut OsRng);
        assert_eq!(t.len(), 43);
        assert_eq!(hash_token(&t), h);
        let pepper = RecoveryPepper::generate(&mut OsRng);
        let codes = recovery_codes(&pepper, &mut OsRng);
        assert_eq!(codes.len(), 10);
        let (c, h) = &codes[0];
        assert_eq!(&hash_recovery_code(&pepper, &c.to_uppercase()), h);
        assert_eq!(
            &hash_recovery_code(&pepper, &format!(" {} ", c.replace('-', ""))),
            h
        );
    }

    #[test]
    fn recovery_code_hashes_need_the_pepper() {
        let pepper = RecoveryPepper::generate(&mut OsRng);
        let other = RecoveryPepper::generate(&mut OsRng);
        let code = "k3q9-x7mv-2hfp";
        let h = hash_recovery_code(&pepper, code);
        // Without the pepper, neither another key nor the old unkeyed hash matches,
        // so a copied table cannot be checked against guesses offline.
        assert_ne!(hash_recovery_code(&other, code), h);
        assert_ne!(legacy_recovery_hash(code), h);
        assert_ne!(hash_token(code), h);
        // The pepper survives its text form; its Debug never shows it.
        let again = RecoveryPepper::parse(&pepper.to_hex()).unwrap();
        assert_eq!(hash_recovery_code(&again, code), h);
        assert!(!format!("{pepper:?}").contains(&pepper.to_hex()[..8]));
        assert!(RecoveryPepper::parse("abcd").is_none());
    }

    #[test]
    fn session_checks() {
        let t0 = Timestamp::from_secs(1000);
        let s = Session {
            token_hash: vec![],
            principal: Principal::Guest(crate::model::InviteId(1)),
            role: Role::Guest,
            kind: SessionKind::Full,
            scope: None,
            created_at: t0,
            last_seen: t0,
            expires_at: t0.plus_secs(100),
            revoked: false,
        };
        assert_eq!(s.check(t0.plus_secs(10), 15), Ok(()));
        assert_eq!(s.check(t0.plus_secs(16), 15), Err(SessionProblem::Idle));
        assert_eq!(
            s.check(t0.plus_secs(100), 1000),
            Err(SessionProblem::Expired)
        );
        let r = Session { revoked: true, ..s };
        assert_eq!(r.check(t0, 15), Err(SessionProblem::Revoked));
    }

    #[test]
    fn throttle_grows_and_resets() {
        let mut th = Throttle::default();
        let p = ThrottlePolicy { free: 2, cap_s: 8 };
        let t = Timestamp::from_secs(0);
        th.handle_failure("k", p, t);
        th.handle_failure("k", p, t);
        assert_eq!(th.check("k", t), Ok(()));
        th.handle_failure("k", p, t);
        assert_eq!(th.check("k", t), Err(2));
        for _ in 0..10 {
            th.handle_failure("k", p, t);
        }
        assert_eq!(th.check("k", t), Err(8), "capped");
        assert_eq!(th.check("k", t.plus_secs(8)), Ok(()), "never a hard lock");
        th.handle_success("k");
        assert_eq!(th.check("k", t), Ok(()));
    }

    /// 100 guesses arriving together: the check and the count are one step, so no
    /// more attempts go on to verification than the policy lets through.
    #[test]
    fn attempts_are_counted_before_verifying() {
        let mut th = Throttle::default();
        let keys = [
            (
                "ua:x|1".to_string(),
                ThrottlePolicy {
                    free: 3,
                    cap_s: 300,
                },
            ),
            (
                "u:x".to_string(),
                ThrottlePolicy {
                    free: 10,
                    cap_s: 30,
                },
            ),
        ];
        let t = Timestamp::from_secs(100);
        let passed = (0..100)
            .filter(|_| th.handle_attempt(&keys, t).is_ok())
            .count();
        // Three free failures, and the fourth attempt is the one that starts the delay.
        assert_eq!(passed, 4);
        // A refunded attempt (correct password awaiting its second factor) costs nothing.
        let mut th = Throttle::default();
        th.handle_attempt(&keys, t).unwrap();
        th.refund(&keys[0].0, keys[0].1);
        th.refund(&keys[1].0, keys[1].1);
        assert!(th.is_empty());
    }

    /// Filling the table with fresh keys evicts the least recently used ones only: the
    /// key under attack and its delay survive, and the table never grows past its
    /// bound nor is it cleared whole.
    #[test]
    fn a_full_table_evicts_least_recently_used_keys_only() {
        let p = ThrottlePolicy {
            free: 0,
            cap_s: 300,
        };
        let mut th = Throttle::with_capacity(1000);
        let t0 = Timestamp::from_secs(1_000);
        for i in 0..10_000 {
            let t = t0.plus_secs(1 + i / 100);
            th.handle_failure(&format!("u:fresh-{i}"), p, t);
            if i % 100 == 0 {
                // The account under attack keeps being guessed at.
                th.handle_failure("u:victim", p, t);
            }
            assert!(th.len() <= 1000);
        }
        assert!(th.len() > 800, "cleared instead of evicted: {}", th.len());
        // 100 failures counted without a reset: the delay is at its cap.
        let t = t0.plus_secs(100);
        assert_eq!(
            th.check("u:victim", t),
            Err(300),
            "the victim's count was lost"
        );
        // The most recent fresh keys are still there, the oldest are gone.
        assert!(th.check("u:fresh-9999", t).is_err());
        assert_eq!(th.check("u:fresh-0", t), Ok(()));
    }

    #[test]
    fn a_persisted_counter_charges_before_verifying_and_waits_out_its_delay() {
        let p = ThrottlePolicy { free: 2, cap_s: 8 };
        let t = Timestamp(1_000_000);
        let (f, next) = p.charge(0, Timestamp(0), t).unwrap();
        assert_eq!((f, next), (1, t));
        let (f, next) = p.charge(f, next, t).unwrap();
        assert_eq!((f, next), (2, t));
        // The third failure starts the delay; the next attempt must wait it out.
        let (f, next) = p.charge(f, next, t).unwrap();
        assert_eq!((f, next), (3, t.plus_secs(2)));
        assert_eq!(p.charge(f, next, t), Err(2));
        assert_eq!(p.charge(f, next, Timestamp(t.0 + 1)), Err(2));
        let later = t.plus_secs(2);
        let (f, next) = p.charge(f, next, later).unwrap();
        assert_eq!((f, next), (4, later.plus_secs(4)));
        // Capped.
        let (_, next) = p.charge(20, Timestamp(0), t).unwrap();
        assert_eq!(next, t.plus_secs(8));
        // A charge given back lowers the count and its delay.
        assert_eq!(p.uncharge(4, later), (3, later.plus_secs(2)));
        assert_eq!(p.uncharge(1, later), (0, later));
        assert_eq!(p.uncharge(0, later), (0, later));
    }

    #[test]
    fn prune_forgets_idle_keys_but_not_running_delays() {
        let mut th = Throttle::default();
        let p = ThrottlePolicy {
            free: 0,
            cap_s: 300,
        };
        let t0 = Timestamp::from_secs(10_000);
        th.handle_failure("idle", p, t0);
        for _ in 0..20 {
            th.handle_failure("delayed", p, t0.plus_secs(3_500));
        }
        th.prune(t0.plus_secs(3_601));
        assert_eq!(th.len(), 1);
        assert!(th.check("delayed", t0.plus_secs(3_601)).is_err());
        th.prune(t0.plus_secs(3_500 + 3_601));
        assert!(th.is_empty());
    }
}
