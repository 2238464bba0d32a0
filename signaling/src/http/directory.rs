//! The key directory: devices register their MLS signature key, upload KeyPackages,
//! and look each other up with proofs from the audit log (key transparency).
//! Documented in docs/protocol.md, "Key directory".
//!
//! Every registration and revocation is an entry of the RFC 6962 audit log, written
//! before the change takes effect (fail closed: no entry, no change), and covered by a
//! signed checkpoint before the response goes out, so the device is provable at once.
//! A lookup returns each device with its entries and their inclusion proofs against
//! the latest checkpoint; the client verifies them (`confide_mls::transparency`). The
//! server only parses the first bytes of a KeyPackage (its MLS framing).

use std::time::Duration;

use async_trait::async_trait;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState, Authed, invite_label, label_of, now};
use crate::audit::{AuditAction, AuditEvent, Outcome};
use crate::mls_frame::{self, WireFormat};
use crate::model::{DeviceId, Principal, Role};
use crate::proto::{decode_b64, encode_b64};
use crate::store::{
    AddKeyPackages, DeviceRecord, KeyPackageCount, LogCheckpoint, NewDevice, StoreError,
};

type ApiResult<T> = Result<T, ApiError>;

/// Active (not revoked) devices per principal.
pub const MAX_ACTIVE_DEVICES: u64 = 10;
/// One-time KeyPackages per upload.
pub const MAX_KEY_PACKAGES_PER_CALL: usize = 100;
/// One-time KeyPackages stored per device.
pub const MAX_KEY_PACKAGES_STORED: u64 = 200;
/// Decoded size of one KeyPackage.
pub const MAX_KEY_PACKAGE: usize = 16 * 1024;
/// Request body of an upload: 101 KeyPackages of the largest size in base64, and JSON.
pub const KEY_PACKAGE_BODY_MAX: usize = 2304 * 1024 + 64 * 1024;
/// How long a registration or lookup waits for the signer to cover an entry.
const CHECKPOINT_WAIT: Duration = Duration::from_secs(5);

/// The holder of the audit log key, as the key directory needs it: signaling appends
/// entries without the key, and asks the holder (the server's checkpoint signer task)
/// to sign what is pending.
#[async_trait]
pub trait CheckpointSigner: Send + Sync + 'static {
    /// Sign a checkpoint over every entry appended so far, if any is unsigned, and
    /// return once it is stored. Concurrent calls may share one checkpoint.
    async fn sign_pending(&self) -> Result<(), String>;
}

fn refused(status: StatusCode, code: &'static str, message: &'static str) -> ApiError {
    ApiError::Refused {
        status,
        code,
        message,
    }
}

fn log_unavailable() -> ApiError {
    refused(
        StatusCode::SERVICE_UNAVAILABLE,
        "log_unavailable",
        "the key transparency log has no signed checkpoint covering this yet; try again",
    )
}

/// The latest checkpoint, made to cover entry `seq` first when a signer is connected
/// (an error if it cannot be within [`CHECKPOINT_WAIT`]). Without a signer it is
/// whatever was signed last, which may not cover `seq` yet.
async fn checkpoint_covering(state: &AppState, seq: u64) -> ApiResult<Option<LogCheckpoint>> {
    let cp = state.store.log_checkpoint().await?;
    if cp.as_ref().is_some_and(|c| c.size > seq) {
        return Ok(cp);
    }
    let Some(signer) = state.checkpoint_signer() else {
        return Ok(cp);
    };
    match tokio::time::timeout(CHECKPOINT_WAIT, signer.sign_pending()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(error = %e, "signing a checkpoint for the key directory failed");
            return Err(log_unavailable());
        }
        Err(_) => {
            tracing::error!("the audit checkpoint signer did not answer in time");
            return Err(log_unavailable());
        }
    }
    let cp = state.store.log_checkpoint().await?;
    if cp.as_ref().is_some_and(|c| c.size > seq) {
        Ok(cp)
    } else {
        Err(log_unavailable())
    }
}

/// The audit event of a registration or revocation. These entries are served to other
/// participants through the directory, so they carry the principal, its role, the
/// device and its key, and nothing about the request (no source address, no request
/// id).
fn device_event(s: &Authed, action: AuditAction, device: &DeviceId, key: &[u8]) -> AuditEvent {
    AuditEvent::new(s.actor(), action, Outcome::Success, now())
        .role(s.session.role)
        .target(format!("device:{device}"))
        .detail(format!("ed25519:{}", encode_b64(key)))
}

/// Append a device entry; fail closed: an entry that cannot be written is a 500 and
/// the caller undoes (or never makes) the change.
async fn log_device_event(state: &AppState, e: AuditEvent) -> ApiResult<u64> {
    let action = e.action;
    match state.store.record_audit_leaf(e).await {
        Ok((_, leaf)) => Ok(leaf),
        Err(err) => {
            super::audit_write_failed(action, super::AuditPolicy::Closed, &err);
            Err(ApiError::AuditUnavailable)
        }
    }
}

/// A device id of the caller's from the path; anything else is "not found".
fn own_device(text: &str) -> ApiResult<DeviceId> {
    DeviceId::parse(text).ok_or(ApiError::NotFound)
}

async fn active_own_device(state: &AppState, s: &Authed, device: &DeviceId) -> ApiResult<()> {
    match state.store.device(&s.actor(), device).await? {
        Some(d) if d.is_active() => Ok(()),
        _ => Err(ApiError::NotFound),
    }
}

// ------------------------------------------------------------- own devices

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterReq {
    /// Ed25519 public key, base64 (32 bytes).
    signature_key: String,
}

#[derive(Serialize)]
pub struct DeviceResp {
    device: DeviceId,
    /// Leaf index of the device's registration (or revocation) entry in the audit log.
    seq: u64,
}

pub async fn register_device(
    State(state): State<AppState>,
    s: Authed,
    Path(device): Path<String>,
    Json(req): Json<RegisterReq>,
) -> ApiResult<(StatusCode, Json<DeviceResp>)> {
    let device = DeviceId::parse(&device).ok_or(ApiError::BadRequest(
        "a device id is 32 lowercase hex characters",
    ))?;
    let key = decode_b64(&req.signature_key, 32, "signature_key")
        .ok()
        .filter(|k| k.len() == 32)
        .ok_or(ApiError::BadRequest(
            "signature_key must be a base64 Ed25519 public key (32 bytes)",
        ))?;
    let me = s.actor();
    let created = match state
        .store
        .add_pending_device(&me, &device, &key, now(), MAX_ACTIVE_DEVICES)
        .await?
    {
        NewDevice::TooMany => {
            return Err(refused(
                StatusCode::CONFLICT,
                "too_many_devices",
                "at most 10 active devices; revoke one first",
            ));
        }
        NewDevice::Exists(d) if d.signature_key != key => {
            return Err(refused(
                StatusCode::CONFLICT,
                "device_key_conflict",
                "this device id is registered with another key; a new key needs a new device id",
            ));
        }
        NewDevice::Exists(d) if d.revoked_at.is_some() => {
            return Err(refused(
                StatusCode::CONFLICT,
                "device_revoked",
                "this device id was revoked; register a new device id",
            ));
        }
        NewDevice::Exists(DeviceRecord {
            registered_seq: Some(seq),
            ..
        }) => {
            // The same registration again: nothing new to log.
            checkpoint_covering(&state, seq).await?;
            return Ok((StatusCode::OK, Json(DeviceResp { device, seq })));
        }
        // Pending: an earlier attempt stopped between the row and its entry; finish it.
        NewDevice::Exists(_) => false,
        NewDevice::Inserted => true,
    };
    let event = device_event(&s, AuditAction::DeviceRegistered, &device, &key);
    let seq = match log_device_event(&state, event).await {
        Ok(seq) => seq,
        Err(e) => {
            if created && let Err(err) = state.store.drop_pending_device(&me, &device).await {
                // Left pending: never served or usable; a retry finishes it.
                tracing::error!(error = %err, "could not remove an unlogged registration");
            }
            return Err(e);
        }
    };
    let seq = if state.store.confirm_device(&me, &device, seq).await? {
        seq
    } else {
        // A concurrent retry of the same registration confirmed first; its entry is
        // the one served (ours is a duplicate with the same key).
        state
            .store
            .device(&me, &device)
            .await?
            .and_then(|d| d.registered_seq)
            .ok_or(StoreError::Corrupt("registration vanished"))?
    };
    checkpoint_covering(&state, seq).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(DeviceResp { device, seq })))
}

pub async fn revoke_device(
    State(state): State<AppState>,
    s: Authed,
    Path(device): Path<String>,
) -> ApiResult<Json<DeviceResp>> {
    let device = own_device(&device)?;
    let me = s.actor();
    let rec = state
        .store
        .device(&me, &device)
        .await?
        .filter(|d| d.registered_seq.is_some())
        .ok_or(ApiError::NotFound)?;
    if let Some(seq) = rec.revoked_seq {
        checkpoint_covering(&state, seq).await?;
        return Ok(Json(DeviceResp { device, seq }));
    }
    let event = device_event(&s, AuditAction::DeviceRevoked, &device, &rec.signature_key);
    let seq = log_device_event(&state, event).await?;
    let seq = if state.store.revoke_device(&me, &device, now(), seq).await? {
        seq
    } else {
        // Revoked concurrently: that revocation is the one served.
        state
            .store
            .device(&me, &device)
            .await?
            .and_then(|d| d.revoked_seq)
            .ok_or(StoreError::Corrupt("revocation vanished"))?
    };
    checkpoint_covering(&state, seq).await?;
    Ok(Json(DeviceResp { device, seq }))
}

// ------------------------------------------------------------ KeyPackages

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadReq {
    #[serde(default)]
    key_packages: Vec<String>,
    #[serde(default)]
    last_resort: Option<String>,
}

#[derive(Serialize)]
pub struct CountResp {
    available: u64,
    last_resort: bool,
}

impl From<KeyPackageCount> for CountResp {
    fn from(c: KeyPackageCount) -> Self {
        CountResp {
            available: c.available,
            last_resort: c.last_resort,
        }
    }
}

/// A KeyPackage from an upload: base64, at most [`MAX_KEY_PACKAGE`] bytes, and framed
/// as an MLS KeyPackage (`00 01 00 05`). Its contents are the clients' to check.
fn key_package(b64: &str) -> ApiResult<Vec<u8>> {
    let bytes = decode_b64(b64, MAX_KEY_PACKAGE, "key package").map_err(|_| {
        ApiError::BadRequest("each KeyPackage must be non-empty base64 of at most 16 KiB")
    })?;
    match mls_frame::wire_format(&bytes) {
        Ok(WireFormat::KeyPackage) => Ok(bytes),
        _ => Err(ApiError::BadRequest(
            "not an MLS KeyPackage (version mls10, wire format mls_key_package)",
        )),
    }
}

pub async fn upload_key_packages(
    State(state): State<AppState>,
    s: Authed,
    Path(device): Path<String>,
    Json(req): Json<UploadReq>,
) -> ApiResult<Json<CountResp>> {
    let device = own_device(&device)?;
    if req.key_packages.len() > MAX_KEY_PACKAGES_PER_CALL {
        return Err(ApiError::BadRequest("at most 100 KeyPackages per upload"));
    }
    let one_time = req
        .key_packages
        .iter()
        .map(|k| key_package(k))
        .collect::<ApiResult<Vec<_>>>()?;
    let last_resort = req.last_resort.as_deref().map(key_package).transpose()?;
    match state
        .store
        .add_key_packages(
            &s.actor(),
            &device,
            one_time,
            last_resort,
            MAX_KEY_PACKAGES_STORED,
        )
        .await?
    {
        AddKeyPackages::Stored(c) => Ok(Json(c.into())),
        AddKeyPackages::NoDevice => Err(ApiError::NotFound),
        AddKeyPackages::TooMany => Err(refused(
            StatusCode::CONFLICT,
            "too_many_key_packages",
            "at most 200 unclaimed one-time KeyPackages are kept per device",
        )),
    }
}

pub async fn key_package_count(
    State(state): State<AppState>,
    s: Authed,
    Path(device): Path<String>,
) -> ApiResult<Json<CountResp>> {
    let device = own_device(&device)?;
    active_own_device(&state, &s, &device).await?;
    let c = state.store.key_package_count(&s.actor(), &device).await?;
    Ok(Json(c.into()))
}

// ------------------------------------------------------------- directory

/// The principal named in the path, if the caller may look it up: itself, or someone
/// it shares an appointment with. Everything else (unknown, malformed, not related)
/// is the same 404, so the directory cannot be used to probe who exists.
async fn visible_principal(state: &AppState, s: &Authed, text: &str) -> ApiResult<Principal> {
    let target = Principal::parse(text).ok_or(ApiError::NotFound)?;
    let me = &s.session.principal;
    if *me == target || state.store.share_appointment(me, &target).await? {
        Ok(target)
    } else {
        Err(ApiError::NotFound)
    }
}

/// Role and display label of a principal that exists.
async fn describe(state: &AppState, p: &Principal) -> ApiResult<(Role, String)> {
    match p {
        Principal::Account(id) => {
            let a = state.store.account(*id).await?.ok_or(ApiError::NotFound)?;
            Ok((a.role, label_of(state, &a)))
        }
        Principal::Guest(id) => match state.store.invite(*id).await? {
            Some(i) if i.used_at.is_some() => Ok((Role::Guest, invite_label(state, &i))),
            _ => Err(ApiError::NotFound),
        },
    }
}

#[derive(Serialize)]
pub struct DirectoryAnswer {
    principal: String,
    role: Role,
    label: String,
    /// The signed checkpoint (C2SP note) every proof below leads to.
    checkpoint: String,
    /// Its tree size.
    size: u64,
    devices: Vec<DirectoryDevice>,
}

#[derive(Serialize)]
pub struct DirectoryDevice {
    device: DeviceId,
    signature_key: String,
    /// `active` or `revoked`.
    status: &'static str,
    entries: Vec<ProvenEntry>,
}

#[derive(Serialize)]
pub struct ProvenEntry {
    seq: u64,
    /// `AuditEntry::to_json` of the stored entry.
    entry: String,
    /// RFC 6962 inclusion path, base64 hashes, bottom up.
    proof: Vec<String>,
}

async fn proven(state: &AppState, seq: u64, size: u64) -> ApiResult<ProvenEntry> {
    let entry = state
        .store
        .log_entry(seq)
        .await?
        .ok_or(StoreError::Corrupt("a device's audit entry is missing"))?;
    let proof = state.store.log_inclusion_proof(seq, size).await?;
    Ok(ProvenEntry {
        seq,
        entry: entry.to_json(),
        proof: proof.iter().map(|h| h.to_base64()).collect(),
    })
}

pub async fn lookup(
    State(state): State<AppState>,
    s: Authed,
    Path(principal): Path<String>,
) -> ApiResult<Json<DirectoryAnswer>> {
    let target = visible_principal(&state, &s, &principal).await?;
    let (role, label) = describe(&state, &target).await?;
    let name = target.to_string();
    let devices = state.store.devices(&name).await?;
    let newest = devices
        .iter()
        .flat_map(|d| [d.registered_seq, d.revoked_seq])
        .flatten()
        .max()
        .unwrap_or(0);
    let cp = checkpoint_covering(&state, newest)
        .await?
        .ok_or_else(log_unavailable)?;
    let mut out = Vec::with_capacity(devices.len());
    for d in devices {
        // Only what the checkpoint covers can be proven (everything, once a signer is
        // connected; see `checkpoint_covering`).
        let Some(reg) = d.registered_seq.filter(|s| *s < cp.size) else {
            continue;
        };
        let mut entries = vec![proven(&state, reg, cp.size).await?];
        if let Some(rev) = d.revoked_seq.filter(|s| *s < cp.size) {
            entries.push(proven(&state, rev, cp.size).await?);
        }
        out.push(DirectoryDevice {
            device: d.device,
            signature_key: encode_b64(&d.signature_key),
            status: if d.revoked_at.is_some() {
                "revoked"
            } else {
                "active"
            },
            entries,
        });
    }
    Ok(Json(DirectoryAnswer {
        principal: name,
        role,
        label,
        checkpoint: cp.note,
        size: cp.size,
        devices: out,
    }))
}

#[derive(Serialize)]
pub struct ClaimResp {
    key_package: String,
    last_resort: bool,
}

pub async fn claim_key_package(
    State(state): State<AppState>,
    s: Authed,
    Path((principal, device)): Path<(String, String)>,
) -> ApiResult<Json<ClaimResp>> {
    let target = visible_principal(&state, &s, &principal).await?;
    let device = DeviceId::parse(&device).ok_or(ApiError::NotFound)?;
    let name = target.to_string();
    match state.store.device(&name, &device).await? {
        Some(d) if d.is_active() => {}
        _ => return Err(ApiError::NotFound),
    }
    let kp = state
        .store
        .claim_key_package(&name, &device)
        .await?
        .ok_or_else(|| {
            refused(
                StatusCode::NOT_FOUND,
                "no_key_package",
                "this device has no KeyPackage left",
            )
        })?;
    Ok(Json(ClaimResp {
        key_package: encode_b64(&kp.data),
        last_resort: kp.last_resort,
    }))
}
