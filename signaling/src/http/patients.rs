//! The patient register at the front desk: find a patient by a word of their name
//! and/or their date of birth (`GET /api/patients`), and create a patient account
//! (`POST /api/patients`). Names and dates of birth stay sealed at rest; a search
//! looks up keyed blind-index MACs ([`crate::blind_index`]) and opens only the rows
//! that match. Who may: [`crate::policy::check_patient_register`]. Documented in
//! docs/protocol.md ("Front desk").

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use rand::Rng as _;
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};

use super::activation;
use super::{ApiError, ApiResult, AppState, Authed};
use crate::audit::{AuditAction, Outcome};
use crate::auth::ActivationPurpose;
use crate::blind_index::{self, DateOfBirth};
use crate::crypto::ctx;
use crate::model::{AccountId, Role, Timestamp};
use crate::policy;
use crate::store::keys::patient_index_macs;

/// Most patients one search returns.
pub const SEARCH_LIMIT: usize = 50;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    /// Words of the name (any case, with or without accents); all must match.
    #[serde(default)]
    name: Option<String>,
    /// `YYYY-MM-DD`.
    #[serde(default)]
    dob: Option<String>,
}

#[derive(Serialize)]
pub struct PatientView {
    id: AccountId,
    label: String,
    username: String,
    date_of_birth: Option<String>,
    disabled: bool,
}

/// Refuse `s` unless it may use the register; refusals are audited as `action`.
async fn register_open(state: &AppState, s: &Authed, action: AuditAction) -> ApiResult<()> {
    if let Err(refusal) = policy::check_patient_register(s.session.subject()) {
        state
            .audit(s.event(action, Outcome::Denied).detail(refusal.to_string()))
            .await?;
        return Err(ApiError::Forbidden);
    }
    Ok(())
}

pub async fn search_patients(
    State(state): State<AppState>,
    s: Authed,
    q: Result<Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Vec<PatientView>>> {
    register_open(&state, &s, AuditAction::PatientSearched).await?;
    let Ok(Query(q)) = q else {
        return Err(ApiError::BadRequest("search by name and/or dob"));
    };
    let words = q
        .name
        .as_deref()
        .map(blind_index::name_words)
        .unwrap_or_default();
    let dob = match q.dob.as_deref().map(str::trim).filter(|d| !d.is_empty()) {
        Some(d) => {
            Some(DateOfBirth::parse(d).ok_or(ApiError::BadRequest("dob: a date as YYYY-MM-DD"))?)
        }
        None => None,
    };
    if words.is_empty() && dob.is_none() {
        return Err(ApiError::BadRequest(
            "give a word of the name, a date of birth, or both",
        ));
    }
    let mut terms: Vec<Vec<u8>> = words.iter().map(|w| blind_index::name_term(w)).collect();
    terms.extend(dob.map(blind_index::dob_term));
    // Look up under every data key held, so that patients still indexed under the
    // previous key are found while a rotation re-indexes them.
    let mut per_key: std::collections::BTreeMap<u32, Vec<[u8; 32]>> = Default::default();
    for t in &terms {
        for (key, mac) in state.keyring.blind_index_all(t) {
            per_key.entry(key).or_default().push(mac);
        }
    }
    let mut ids = BTreeSet::new();
    for (key, macs) in &per_key {
        ids.extend(
            state
                .store
                .search_patient_index(*key, macs, SEARCH_LIMIT as i64)
                .await?,
        );
    }
    // Only the matches are opened, and each is checked again against its opened
    // name and date, so a stale or colliding index row never shows a non-match.
    let mut out = Vec::new();
    for id in ids.into_iter().take(SEARCH_LIMIT) {
        let Some(a) = state.store.account(id).await? else {
            continue;
        };
        if a.role != Role::Patient {
            continue;
        }
        let Ok(name) = state
            .keyring
            .open_string(ctx::DISPLAY_NAME, &a.display_name)
        else {
            continue;
        };
        let born = match state.store.date_of_birth(id).await? {
            Some(sealed) => state
                .keyring
                .open_string(ctx::DATE_OF_BIRTH, &sealed)
                .ok()
                .and_then(|d| DateOfBirth::parse(&d)),
            None => None,
        };
        let have = blind_index::name_words(&name);
        if !words.iter().all(|w| have.contains(w)) || (dob.is_some() && born != dob) {
            continue;
        }
        out.push(PatientView {
            id,
            label: name,
            username: a.username,
            date_of_birth: born.map(|d| d.to_string()),
            disabled: a.disabled,
        });
    }
    // One entry per patient shown (so each appears in that patient's access report),
    // committed before anything is returned. The detail says what was searched by,
    // never the words or the date themselves.
    let by = match (words.is_empty(), dob.is_some()) {
        (false, true) => "name+dob",
        (false, false) => "name",
        _ => "dob",
    };
    let mut events: Vec<_> = out
        .iter()
        .map(|p| {
            s.event(AuditAction::PatientSearched, Outcome::Success)
                .target(p.id)
                .patient(p.id)
                .detail(by)
        })
        .collect();
    if events.is_empty() {
        events.push(
            s.event(AuditAction::PatientSearched, Outcome::Success)
                .detail(format!("{by}:no_match")),
        );
    }
    state
        .commit_audited(state.store.begin().await?, events)
        .await?;
    Ok(Json(out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatePatientReq {
    display_name: String,
    /// `YYYY-MM-DD`.
    date_of_birth: String,
    #[serde(default)]
    contact: Option<String>,
    /// Default: `patient-` and eight random characters (a username is stored in clear,
    /// so it is not made from the name).
    #[serde(default)]
    username: Option<String>,
}

/// The new patient and the single-use link they activate their account with (the
/// page shows `<origin>/#/activate/<token>` to copy and pass on).
#[derive(Serialize)]
pub struct CreatePatientResp {
    id: AccountId,
    username: String,
    activation_token: String,
    expires_at: Timestamp,
}

fn random_username() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
    let tail: String = (0..8)
        .map(|_| char::from(ALPHABET[OsRng.gen_range(0..ALPHABET.len())]))
        .collect();
    format!("patient-{tail}")
}

pub async fn create_patient(
    State(state): State<AppState>,
    s: Authed,
    Json(req): Json<CreatePatientReq>,
) -> ApiResult<(StatusCode, Json<CreatePatientResp>)> {
    register_open(&state, &s, AuditAction::PatientCreated).await?;
    let dob = DateOfBirth::parse(req.date_of_birth.trim())
        .ok_or(ApiError::BadRequest("date_of_birth: a date as YYYY-MM-DD"))?;
    let display_name = req.display_name.trim().to_owned();
    if display_name.chars().any(char::is_control) {
        return Err(ApiError::BadRequest("display_name: no control characters"));
    }
    if req
        .contact
        .as_deref()
        .is_some_and(|c| c.len() > 200 || c.chars().any(char::is_control))
    {
        return Err(ApiError::BadRequest("contact: at most 200 characters"));
    }
    let username = req
        .username
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(random_username);
    // No password: the patient sets one through the activation link.
    let new = crate::ops::prepare_account(
        &state.keyring,
        crate::ops::AccountSpec {
            username,
            role: Role::Patient,
            password: None,
            display_name: display_name.clone(),
            contact: req.contact.filter(|c| !c.trim().is_empty()),
        },
    )
    .await
    .map_err(|e| match e {
        crate::ops::OpsError::Invalid(m) => ApiError::BadRequest(m),
        crate::ops::OpsError::Store(e) => e.into(),
        _ => ApiError::Internal,
    })?;
    let username = new.username.clone();
    let sealed_dob = state
        .keyring
        .seal(ctx::DATE_OF_BIRTH, dob.to_string().as_bytes(), &mut OsRng);
    let (key_id, macs) = patient_index_macs(&state.keyring, &display_name, Some(dob));
    // The account, its date of birth, its index rows, its activation link and their
    // entries commit together, or none of it happens.
    let mut tx = state.store.begin().await?;
    let id = tx.create_account(new).await?;
    tx.set_date_of_birth(id, sealed_dob).await?;
    tx.replace_patient_index(id, key_id, macs).await?;
    let link = activation::issue(&state, &mut tx, id, ActivationPurpose::Activate, &s).await?;
    state
        .commit_audited(
            tx,
            vec![
                s.event(AuditAction::PatientCreated, Outcome::Success)
                    .target(id)
                    .patient(id),
            ],
        )
        .await?;
    activation::notify(&state, &link).await;
    Ok((
        StatusCode::CREATED,
        Json(CreatePatientResp {
            id,
            username,
            activation_token: link.token.clone(),
            expires_at: link.expires_at,
        }),
    ))
}
