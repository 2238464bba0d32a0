//! Administrative operations shared by the REST API and the CLI: creating
//! accounts (with sealed personal data), seeding the demo clinic, and making the
//! load-test accounts `confide-bench` uses.

use rand::Rng as _;
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};

use crate::audit::AuditEvent;
use crate::auth::{TotpSecret, hash_password};
use crate::crypto::{Keyring, ctx};
use crate::model::{AccountId, AppointmentId, Role, Timestamp};
use crate::store::{AppointmentQuery, NewAccount, NewAppointment, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("{0}")]
    Invalid(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("password hashing failed")]
    Hash,
    #[error("sealed data could not be opened")]
    Crypto,
}

pub struct AccountSpec {
    pub username: String,
    pub role: Role,
    /// `None`: no password; the owner sets one through an activation link.
    pub password: Option<String>,
    pub display_name: String,
    pub contact: Option<String>,
}

/// Checks `spec`, hashes the password (if any) and seals the personal data: the row to
/// insert. A password given here only has to have 8 to 1024 characters (seeding, load
/// tests); the REST API and the command line hold new passwords to
/// [`crate::password`]'s rules first.
pub async fn prepare_account(keyring: &Keyring, spec: AccountSpec) -> Result<NewAccount, OpsError> {
    let u = spec.username.trim();
    if u.is_empty()
        || u.len() > 64
        || !u
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c))
    {
        return Err(OpsError::Invalid("username: 1-64 of a-z, 0-9, . _ - @"));
    }
    if let Some(p) = &spec.password
        && (p.chars().count() < 8 || p.len() > 1024)
    {
        return Err(OpsError::Invalid("password: 8 to 1024 characters"));
    }
    if spec.display_name.trim().is_empty() || spec.display_name.len() > 200 {
        return Err(OpsError::Invalid("display_name: 1-200 characters"));
    }
    if spec.contact.as_ref().is_some_and(|c| c.len() > 200) {
        return Err(OpsError::Invalid("contact: at most 200 characters"));
    }
    let phc = match spec.password {
        // An empty hash matches no password: the account cannot log in until activated.
        None => String::new(),
        Some(password) => tokio::task::spawn_blocking(move || hash_password(&password, &mut OsRng))
            .await
            .map_err(|_| OpsError::Hash)?
            .map_err(|_| OpsError::Hash)?,
    };
    Ok(NewAccount {
        username: u.to_string(),
        role: spec.role,
        password_hash: phc,
        display_name: keyring.seal(
            ctx::DISPLAY_NAME,
            spec.display_name.trim().as_bytes(),
            &mut OsRng,
        ),
        contact: spec
            .contact
            .map(|c| keyring.seal(ctx::CONTACT, c.as_bytes(), &mut OsRng)),
        created_at: crate::http::now(),
    })
}

pub async fn create_account(
    store: &dyn Store,
    keyring: &Keyring,
    spec: AccountSpec,
) -> Result<AccountId, OpsError> {
    let new = prepare_account(keyring, spec).await?;
    Ok(store.create_account(new).await?)
}

/// Creates the account and records `audit(id)` in the same transaction: if the entry
/// cannot be written the account is not created.
pub async fn create_account_audited(
    store: &dyn Store,
    keyring: &Keyring,
    spec: AccountSpec,
    audit: impl FnOnce(AccountId) -> AuditEvent,
) -> Result<AccountId, OpsError> {
    let new = prepare_account(keyring, spec).await?;
    let mut tx = store.begin().await?;
    let id = tx.create_account(new).await?;
    tx.record_audit(&[audit(id)]).await?;
    tx.commit().await?;
    Ok(id)
}

/// Give an account a TOTP secret and enable it at once (for seeding; real users
/// enrol through the API and confirm with a code).
pub async fn enable_totp_directly(
    store: &dyn Store,
    keyring: &Keyring,
    id: AccountId,
    secret: &TotpSecret,
) -> Result<(), OpsError> {
    store
        .set_totp_pending(id, keyring.seal(ctx::TOTP_SECRET, &secret.0, &mut OsRng))
        .await?;
    store.enable_totp(id, 0).await?;
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
pub struct DemoAccount {
    pub username: String,
    pub password: String,
    pub role: Role,
    pub display_name: String,
    pub id: AccountId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub totp_secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otpauth_url: Option<String>,
    /// The demo patient's date of birth (`YYYY-MM-DD`), for trying the front desk's
    /// search.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub date_of_birth: Option<String>,
}

/// The demo patient's date of birth.
pub const DEMO_PATIENT_DOB: &str = "1980-04-12";

/// Everything a person or a test needs to use the demo clinic. Demo only: it
/// contains passwords and TOTP secrets.
#[derive(Debug, Clone, Serialize)]
pub struct DemoInfo {
    pub accounts: Vec<DemoAccount>,
    pub appointment_id: AppointmentId,
    pub appointment_start: i64,
    pub terms_version: String,
}

impl DemoInfo {
    pub fn account(&self, role: Role) -> Option<&DemoAccount> {
        self.accounts.iter().find(|a| a.role == role)
    }
}

/// One load-test account: what a client needs to log in, and the account id a staff
/// member books appointments with. Contains a password and a TOTP secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchAccount {
    pub username: String,
    pub password: String,
    pub id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp_secret: Option<String>,
}

/// A doctor and a patient (who has consented) for one load-test consultation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchPair {
    pub doctor: BenchAccount,
    pub patient: BenchAccount,
}

/// What `confide admin bench-accounts` prints and `confide-bench --people` reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchPeople {
    /// Books the appointments.
    pub staff: BenchAccount,
    pub pairs: Vec<BenchPair>,
}

/// Creates one load-test account with a random password; roles that need a second
/// factor get a TOTP secret at once, patients a consent to `terms_version`.
pub async fn create_bench_account(
    store: &dyn Store,
    keyring: &Keyring,
    username: String,
    role: Role,
    terms_version: &str,
) -> Result<BenchAccount, OpsError> {
    let password: String = OsRng
        .sample_iter(rand::distributions::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    let id = create_account(
        store,
        keyring,
        AccountSpec {
            display_name: format!("Load test {}", role.as_str()),
            username: username.clone(),
            role,
            password: Some(password.clone()),
            contact: None,
        },
    )
    .await?;
    let totp_secret = if role.requires_mfa() {
        let s = TotpSecret::generate(&mut OsRng);
        enable_totp_directly(store, keyring, id, &s).await?;
        Some(s.base32())
    } else {
        store
            .record_consent(&id.to_string(), terms_version, crate::http::now())
            .await?;
        None
    };
    Ok(BenchAccount {
        username,
        password,
        id: id.0,
        totp_secret,
    })
}

/// `n` doctor/patient pairs named `{prefix}-doctor-{i}` and `{prefix}-patient-{i}` for
/// `i` in `first..first + n`.
pub async fn create_bench_pairs(
    store: &dyn Store,
    keyring: &Keyring,
    prefix: &str,
    first: usize,
    n: usize,
    terms_version: &str,
) -> Result<Vec<BenchPair>, OpsError> {
    let mut out = Vec::with_capacity(n);
    for i in first..first + n {
        let make = |role: Role| {
            create_bench_account(
                store,
                keyring,
                format!("{prefix}-{}-{i}", role.as_str()),
                role,
                terms_version,
            )
        };
        let doctor = make(Role::Doctor).await?;
        let patient = make(Role::Patient).await?;
        out.push(BenchPair { doctor, patient });
    }
    Ok(out)
}

/// Seed (or re-use) the demo accounts and book a fresh appointment that starts now.
/// Passwords are fixed; TOTP secrets are made once and read back on later runs.
///
/// The demo patient is given no consent: the first consultation shows the consent step
/// a real patient goes through. A consent the patient gave (in the browser) stands on
/// later runs, as it would for a real patient.
pub async fn seed_demo(
    store: &dyn Store,
    keyring: &Keyring,
    terms_version: &str,
    now: Timestamp,
) -> Result<DemoInfo, OpsError> {
    let specs = [
        (
            "doctor",
            "demo-doctor-password",
            Role::Doctor,
            "Dr. Demo Doctor",
            "doctor@demo.invalid",
        ),
        (
            "patient",
            "demo-patient-password",
            Role::Patient,
            "Demo Patient",
            "patient@demo.invalid",
        ),
        (
            "staff",
            "demo-staff-password",
            Role::Staff,
            "Demo Staff",
            "staff@demo.invalid",
        ),
        (
            "admin",
            "demo-admin-password",
            Role::Admin,
            "Demo Admin",
            "admin@demo.invalid",
        ),
    ];
    let mut accounts = Vec::new();
    for (username, password, role, name, contact) in specs {
        let id = match store.account_by_username(username).await? {
            Some(a) => a.id,
            None => {
                create_account(
                    store,
                    keyring,
                    AccountSpec {
                        username: username.into(),
                        role,
                        password: Some(password.into()),
                        display_name: name.into(),
                        contact: Some(contact.into()),
                    },
                )
                .await?
            }
        };
        let account = store
            .account(id)
            .await?
            .ok_or(OpsError::Invalid("demo account vanished"))?;
        let secret = if role.requires_mfa() {
            match (&account.totp_secret, account.totp_enabled) {
                (Some(sealed), true) => {
                    let b = keyring
                        .open(ctx::TOTP_SECRET, sealed)
                        .map_err(|_| OpsError::Crypto)?;
                    Some(TotpSecret::from_bytes(b.to_vec()))
                }
                _ => {
                    let s = TotpSecret::generate(&mut OsRng);
                    enable_totp_directly(store, keyring, id, &s).await?;
                    Some(s)
                }
            }
        } else {
            None
        };
        let date_of_birth = if role == Role::Patient {
            if store.date_of_birth(id).await?.is_none() {
                let dob = crate::blind_index::DateOfBirth::parse(DEMO_PATIENT_DOB)
                    .ok_or(OpsError::Invalid("demo date of birth"))?;
                let (key, macs) = crate::store::keys::patient_index_macs(keyring, name, Some(dob));
                let mut tx = store.begin().await?;
                tx.set_date_of_birth(
                    id,
                    keyring.seal(ctx::DATE_OF_BIRTH, dob.to_string().as_bytes(), &mut OsRng),
                )
                .await?;
                tx.replace_patient_index(id, key, macs).await?;
                tx.commit().await?;
            }
            Some(DEMO_PATIENT_DOB.to_owned())
        } else {
            None
        };
        accounts.push(DemoAccount {
            username: username.into(),
            password: password.into(),
            role,
            display_name: name.into(),
            id,
            otpauth_url: secret
                .as_ref()
                .map(|s| s.otpauth_url("Confide demo", username)),
            totp_secret: secret.as_ref().map(|s| s.base32()),
            date_of_birth,
        });
    }
    let doctor = accounts[0].id;
    let patient = accounts[1].id;
    let staff = accounts[2].id;
    let appointment_id = store
        .create_appointment(NewAppointment {
            doctor,
            patient: Some(patient),
            start: now,
            duration_s: 3600,
            reason: Some(keyring.seal(ctx::REASON, b"Demo follow-up", &mut OsRng)),
            created_by: staff,
            created_at: now,
        })
        .await?;
    Ok(DemoInfo {
        accounts,
        appointment_id,
        appointment_start: now.secs(),
        terms_version: terms_version.into(),
    })
}

/// Records the demo patient's consent to the demo's terms, as the patient does in the
/// browser's consent step: for tests and tools that drive the demo clinic without a
/// browser (the demo itself starts without it, see [`seed_demo`]).
pub async fn consent_demo_patient(
    store: &dyn Store,
    info: &DemoInfo,
    now: Timestamp,
) -> Result<(), OpsError> {
    let patient = info
        .account(Role::Patient)
        .ok_or(OpsError::Invalid("the demo has no patient"))?;
    let principal = patient.id.to_string();
    if store.active_consent(&principal).await?.is_none() {
        store
            .record_consent(&principal, &info.terms_version, now)
            .await?;
    }
    Ok(())
}

/// The per-patient access report: every account whose entries touched patient
/// `patient`'s records (entries naming the patient with an appointment or
/// consultation target, or targeting one of the patient's appointments or the
/// patient's account itself: found at the front desk, created, the trail read) in
/// `[from, to)`. Returns how many appointments the patient has on
/// record, and the report. `confide audit report` and the administration page
/// (`GET /api/admin/audit/report`) both make it here.
pub async fn patient_access_report(
    store: &dyn Store,
    patient: AccountId,
    from: Timestamp,
    to: Timestamp,
) -> Result<(usize, Vec<confide_audit::AccessRecord>), StoreError> {
    let appointments = store
        .list_appointments(AppointmentQuery {
            patient: Some(patient),
            ..Default::default()
        })
        .await?;
    let mut targets: std::collections::BTreeSet<String> =
        appointments.iter().map(|a| a.id.to_string()).collect();
    targets.insert(patient.to_string());
    let rows = store
        .access_report(&patient.to_string(), &targets, from, to)
        .await?;
    Ok((appointments.len(), rows))
}

/// One line of the access report as JSON (`confide audit report --json` prints these;
/// the administration page receives a list of them).
pub fn access_record_json(r: &confide_audit::AccessRecord) -> serde_json::Value {
    serde_json::json!({
        "actor": r.actor, "role": r.role, "first": r.first.to_string(),
        "last": r.last.to_string(), "count": r.count, "refused": r.refused,
        "actions": r.actions, "targets": r.targets, "seqs": r.seqs,
    })
}
