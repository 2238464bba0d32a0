//! A key-transparency log the malicious server keeps for one victim: an RFC 6962 tree
//! signed with a key of its own, into which it writes the devices the real directory
//! answers with. Two of them made from the same seed but with different first entries
//! are a forked log: each is consistent on its own; together they are a split view.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use confide_mls::danger::TestLog;
use confide_mls::transparency::DirectoryAnswer;

const ORIGIN: &str = "confide.test/forked";

pub struct FakeLog {
    log: TestLog,
    /// (principal, device, key) -> seq of its registration here.
    devices: Vec<(String, String, String, u64)>,
}

impl FakeLog {
    /// A log whose history starts with `first` (the fork point: two logs with the same
    /// seed and different `first` disagree from entry 0 on).
    pub fn new(seed: u8, first: &str) -> Self {
        let mut l = FakeLog {
            log: TestLog::new(ORIGIN, seed),
            devices: Vec::new(),
        };
        l.log.append(
            "account:999",
            None,
            first,
            Some("appointment:1".into()),
            None,
        );
        let _ = l.log.checkpoint();
        l
    }

    /// The verifier key line the proxy serves at `/api/audit/key`.
    pub fn vkey(&self) -> String {
        self.log.vkey()
    }

    /// The real directory's answer, re-proven against this log: every device the real
    /// server listed is registered here (once) and served with this log's proof.
    pub fn rewrite(&mut self, real: &DirectoryAnswer) -> DirectoryAnswer {
        let mut out = real.clone();
        for d in &real.devices {
            let known = self.devices.iter().any(|(p, dev, k, _)| {
                p == &real.principal && dev == &d.device && k == &d.signature_key
            });
            if !known {
                let seq = self.log.append(
                    &real.principal,
                    None,
                    "device_registered",
                    Some(format!("device:{}", d.device)),
                    Some(format!("ed25519:{}", d.signature_key)),
                );
                self.devices.push((
                    real.principal.clone(),
                    d.device.clone(),
                    d.signature_key.clone(),
                    seq,
                ));
            }
        }
        let _ = self.log.checkpoint();
        out.checkpoint = self.log.note().to_string();
        for d in &mut out.devices {
            let seq = self
                .devices
                .iter()
                .find(|(p, dev, k, _)| {
                    p == &real.principal && dev == &d.device && k == &d.signature_key
                })
                .map(|x| x.3)
                .unwrap();
            d.status = "active".into();
            d.entries = vec![self.log.proven(seq)];
        }
        out
    }

    /// A consistency proof between two sizes of this log, if both exist.
    pub fn consistency(&self, from: u64, to: u64) -> Option<Vec<String>> {
        self.log.consistency(from, to)
    }
}

/// `from` and `to` of a `/api/audit/consistency?from=&to=` path.
pub fn consistency_query(path: &str) -> Option<(u64, u64)> {
    let q = path.split_once('?')?.1;
    let mut from = None;
    let mut to = None;
    for kv in q.split('&') {
        match kv.split_once('=') {
            Some(("from", v)) => from = v.parse().ok(),
            Some(("to", v)) => to = v.parse().ok(),
            _ => {}
        }
    }
    Some((from?, to?))
}

/// Base64 of `b` (shared by the tests' forgeries).
pub fn b64(b: &[u8]) -> String {
    B64.encode(b)
}
