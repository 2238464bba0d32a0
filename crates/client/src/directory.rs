//! The key directory and the audit log over REST, as `docs/protocol.md` gives them: this
//! device's registration and KeyPackages, other principals' logged devices, KeyPackage
//! claims, the log's verifier key and consistency proofs.
//!
//! Answers are parsed here and checked by `confide_mls` (signatures, inclusion and
//! consistency proofs) by the caller; nothing the server says is trusted on its own.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use confide_mls::transparency::DirectoryAnswer;
use confide_mls::{Device, DeviceId, Principal};
use reqwest::Method;
use serde_json::{Value, json};

use crate::signaling::{Endpoint, SignalingError};

fn protocol(what: &str) -> SignalingError {
    SignalingError::Protocol(format!("directory: {what}"))
}

/// KeyPackages the directory holds for one of our devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPackageCount {
    /// One-time KeyPackages left.
    pub available: u64,
    /// A last-resort KeyPackage is stored.
    pub last_resort: bool,
}

/// A KeyPackage claimed from the directory (still to be verified).
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The MLS KeyPackage bytes.
    pub key_package: Vec<u8>,
    /// The directory handed out the last-resort one (the one-time ones ran out).
    pub last_resort: bool,
}

/// The REST calls of the key layer, with one session token.
#[derive(Debug, Clone, Copy)]
pub struct KeyDirectory<'a> {
    ep: &'a Endpoint,
    token: &'a str,
}

impl<'a> KeyDirectory<'a> {
    /// Calls on `ep` with the session `token`.
    pub fn new(ep: &'a Endpoint, token: &'a str) -> Self {
        KeyDirectory { ep, token }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, SignalingError> {
        self.ep.request(method, path, Some(self.token), body).await
    }

    /// Our principal (`GET /api/me`).
    pub async fn me(&self) -> Result<Principal, SignalingError> {
        let v = self.call(Method::GET, "/api/me", None).await?;
        let p = v["principal"]
            .as_str()
            .ok_or_else(|| protocol("/api/me has no principal"))?;
        Principal::new(p).map_err(|_| protocol("/api/me principal"))
    }

    /// Registers (idempotently) our device's signature key.
    pub async fn register(&self, device: &Device) -> Result<(), SignalingError> {
        let body = json!({"signature_key": B64.encode(device.signature_key())});
        let path = format!("/api/devices/{}", device.name().device);
        self.call(Method::PUT, &path, Some(&body)).await?;
        Ok(())
    }

    /// Revokes one of our devices (logged as a revocation: it is never served again).
    pub async fn revoke(&self, device: &DeviceId) -> Result<(), SignalingError> {
        self.call(Method::DELETE, &format!("/api/devices/{device}"), None)
            .await?;
        Ok(())
    }

    /// How many KeyPackages of ours the directory still holds.
    pub async fn key_packages(&self, device: &DeviceId) -> Result<KeyPackageCount, SignalingError> {
        let v = self
            .call(
                Method::GET,
                &format!("/api/devices/{device}/key_packages"),
                None,
            )
            .await?;
        count(&v)
    }

    /// Uploads one-time KeyPackages and a last-resort one.
    pub async fn upload_key_packages(
        &self,
        device: &DeviceId,
        one_time: &[Vec<u8>],
        last_resort: Option<&[u8]>,
    ) -> Result<KeyPackageCount, SignalingError> {
        let mut body = json!({
            "key_packages": one_time.iter().map(|k| B64.encode(k)).collect::<Vec<_>>(),
        });
        if let Some(lr) = last_resort {
            body["last_resort"] = json!(B64.encode(lr));
        }
        let v = self
            .call(
                Method::POST,
                &format!("/api/devices/{device}/key_packages"),
                Some(&body),
            )
            .await?;
        count(&v)
    }

    /// The directory's answer for `principal`: its devices with log entries and proofs.
    pub async fn directory(
        &self,
        principal: &Principal,
    ) -> Result<DirectoryAnswer, SignalingError> {
        let v = self
            .call(Method::GET, &format!("/api/directory/{principal}"), None)
            .await?;
        serde_json::from_value(v).map_err(|_| protocol("directory answer"))
    }

    /// Claims one KeyPackage of `principal`'s `device`.
    pub async fn claim(
        &self,
        principal: &Principal,
        device: &DeviceId,
    ) -> Result<Claimed, SignalingError> {
        let v = self
            .call(
                Method::POST,
                &format!("/api/directory/{principal}/devices/{device}/key_package"),
                Some(&json!({})),
            )
            .await?;
        let kp = v["key_package"]
            .as_str()
            .and_then(|s| B64.decode(s).ok())
            .ok_or_else(|| protocol("claimed key package"))?;
        Ok(Claimed {
            key_package: kp,
            last_resort: v["last_resort"].as_bool().unwrap_or(false),
        })
    }

    /// The audit log's verifier key (pinned by the caller on first use).
    pub async fn log_key(&self) -> Result<String, SignalingError> {
        let v = self.call(Method::GET, "/api/audit/key", None).await?;
        // A verifier key line (text), or a JSON object carrying one.
        v.as_str()
            .or_else(|| v["key"].as_str())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| protocol("log key"))
    }

    /// A consistency proof between tree sizes `from` and `to` (base64 hashes).
    pub async fn consistency(&self, from: u64, to: u64) -> Result<Vec<String>, SignalingError> {
        let v = self
            .call(
                Method::GET,
                &format!("/api/audit/consistency?from={from}&to={to}"),
                None,
            )
            .await?;
        serde_json::from_value(v["proof"].clone()).map_err(|_| protocol("consistency proof"))
    }
}

fn count(v: &Value) -> Result<KeyPackageCount, SignalingError> {
    Ok(KeyPackageCount {
        available: v["available"]
            .as_u64()
            .ok_or_else(|| protocol("key package count"))?,
        last_resort: v["last_resort"].as_bool().unwrap_or(false),
    })
}
