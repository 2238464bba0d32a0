//! `confide audit ...` (verify, export, check, report, checkpoints, key, checkpoint)
//! and the checkpoint signer task that `serve` runs.
//!
//! The log itself is `confide-audit`; signaling appends to it on every
//! `record_audit`. This module owns the log key: `audit-log.key` in the data directory
//! (or `CONFIDE_AUDIT_KEY_FILE`), created on first start, in the signed-note private key
//! form whose name is the log's origin (`CONFIDE_AUDIT_ORIGIN` when the key is created,
//! default `confide.local/audit`).

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use confide_audit::store::{AuditStore, AuditWriter};
use confide_audit::{
    CheckpointPolicy, LogPublicKey, LogSigningKey, SignedCheckpoint, Timestamp, WitnessPublicKey,
    check_package, open_cosigned,
};
use confide_signaling::http::{
    AuditDesk, BadEntry, CheckpointSigner, DeskError, PackageDownload, VerifyOutcome,
};
use confide_signaling::model::AccountId;
use confide_signaling::ops;
use confide_signaling::store::Store;
use rand::RngCore as _;
use rand::rngs::OsRng;
use tokio::sync::{mpsc, oneshot};
use zeroize::Zeroizing;

use crate::{Config, open_store, write_private};

const DEFAULT_ORIGIN: &str = "confide.local/audit";

#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Recompute the Merkle log, check every checkpoint; name the first entry that no longer matches.
    Verify {
        /// Entries below this checkpoint size were archived (docs/operations.md).
        #[arg(long)]
        archived_below: Option<u64>,
        /// A checkpoint note kept outside the database (repeatable).
        #[arg(long = "checkpoint")]
        checkpoints: Vec<PathBuf>,
        /// A witness's verifier key (`name+id+base64`, repeatable): require a checkpoint
        /// of the verified log that carries a valid cosignature by each.
        #[arg(long = "witness-key")]
        witness_keys: Vec<String>,
    },
    /// Write an auditor package (JSON lines) for entries FROM..TO.
    Export {
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Default: the latest checkpoint's size (a checkpoint is signed first if needed).
        #[arg(long)]
        to: Option<u64>,
        /// Default: standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check an auditor package offline; needs no database.
    Check {
        package: PathBuf,
        /// The log's verifier key (`name+hash+base64`) to pin; without it the package's
        /// own key is used and its fingerprint printed for comparison.
        #[arg(long)]
        key: Option<String>,
    },
    /// Every account that touched a patient's appointments in a period.
    Report {
        /// `account:N` or a username.
        #[arg(long)]
        patient: String,
        /// Start, RFC 3339 (`2026-01-01T00:00:00.000Z`) or a date (`2026-01-01`).
        #[arg(long)]
        from: String,
        /// End (exclusive), same forms.
        #[arg(long)]
        to: String,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the stored checkpoints (signed notes).
    Checkpoints {
        #[arg(long)]
        latest: bool,
    },
    /// Print the log's verifier key; its SHA-256 fingerprint goes to standard error.
    Key,
    /// Sign a checkpoint now if any entry is unsigned.
    Checkpoint,
    /// Run a witness (its own data directory, normally on another host): fetch each
    /// checkpoint from SERVER, check it extends the last one cosigned, cosign it and
    /// post the cosignature back. Exits with status 3 if the log rewrote history.
    Witness {
        /// Base URL of the server, `https://host:port`.
        #[arg(long)]
        server: Option<String>,
        /// The log's verifier key (`confide audit key` on the server); pinned on first run.
        #[arg(long)]
        log_key: Option<String>,
        /// Name of the witness key created on first run.
        #[arg(long, default_value = crate::witness::DEFAULT_NAME)]
        name: String,
        /// PEM certificate to trust for SERVER instead of the system roots.
        #[arg(long)]
        ca_cert: Option<PathBuf>,
        /// Seconds between checks.
        #[arg(long, default_value_t = 5)]
        interval: u64,
        /// Check once and exit.
        #[arg(long)]
        once: bool,
        /// Print this witness's verifier key (for the server's witness list) and exit.
        #[arg(long)]
        print_key: bool,
    },
}

pub(crate) fn now() -> Timestamp {
    let t = confide_signaling::http::now();
    // The wall clock is after 1970 and before 10000 on any machine that runs this.
    Timestamp::from_unix_millis(t.0)
        .unwrap_or_else(|| Timestamp::from_unix_millis(0).expect("zero is in range"))
}

fn key_path(cfg: &Config) -> PathBuf {
    std::env::var_os("CONFIDE_AUDIT_KEY_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| cfg.data_dir.join("audit-log.key"))
}

/// Loads the log key, creating it on first use. Returns the origin and the key.
pub fn log_key(cfg: &Config) -> anyhow::Result<(String, LogSigningKey)> {
    let path = key_path(cfg);
    if path.exists() {
        let text = Zeroizing::new(
            std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?,
        );
        return LogSigningKey::from_skey(&text).context("audit log key file");
    }
    let origin = std::env::var("CONFIDE_AUDIT_ORIGIN").unwrap_or_else(|_| DEFAULT_ORIGIN.into());
    let mut seed = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(&mut seed[..]);
    let key = LogSigningKey::from_seed(&seed);
    let text = key.to_skey(&origin).context("audit log origin")?;
    write_private(&path, text.as_bytes())?;
    tracing::warn!(
        path = %path.display(),
        "created a new audit log key; back it up apart from the database (see docs/operations.md)"
    );
    Ok((origin, key))
}

fn policy() -> CheckpointPolicy {
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let d = CheckpointPolicy::default();
    CheckpointPolicy {
        max_entries: env("CONFIDE_AUDIT_CHECKPOINT_ENTRIES").unwrap_or(d.max_entries),
        max_delay_ms: env("CONFIDE_AUDIT_CHECKPOINT_SECONDS")
            .map(|s| s.saturating_mul(1000))
            .unwrap_or(d.max_delay_ms),
    }
}

async fn writer(cfg: &Config) -> anyhow::Result<AuditWriter> {
    let (origin, key) = log_key(cfg)?;
    let store = AuditStore::connect(&cfg.database_url())
        .await
        .context("opening the audit log")?;
    Ok(AuditWriter::new(store, &origin, key, policy())?)
}

/// A request to sign what is pending now, answered once the checkpoint is stored.
type SignRequest = oneshot::Sender<Result<(), String>>;

/// The way into the signer task for signaling's key directory: a registration must be
/// provable when its response goes out, so the directory asks for a checkpoint at once
/// instead of waiting for the policy (N entries or T seconds).
#[derive(Clone)]
pub struct SignerHandle {
    requests: mpsc::Sender<SignRequest>,
}

#[async_trait::async_trait]
impl CheckpointSigner for SignerHandle {
    async fn sign_pending(&self) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(tx)
            .await
            .map_err(|_| "the checkpoint signer has stopped".to_owned())?;
        rx.await
            .map_err(|_| "the checkpoint signer has stopped".to_owned())?
    }
}

/// Starts the task that signs a checkpoint every N entries or T seconds, and at once
/// when asked through the returned handle.
pub async fn spawn_signer(cfg: &Config) -> anyhow::Result<SignerHandle> {
    let w = writer(cfg).await?;
    // Bounded: a burst of registrations waits here rather than growing a queue.
    let (requests, mut rx) = mpsc::channel::<SignRequest>(256);
    tokio::spawn(async move {
        // Once a second is well inside T and catches N entries promptly; each tick
        // is one small transaction.
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = every.tick() => {
                    if let Err(e) = w.tick(now()).await {
                        tracing::warn!(error = %e, "signing an audit checkpoint failed");
                    }
                }
                first = rx.recv() => {
                    let Some(first) = first else { break };
                    // Everyone who asked before this signing shares its checkpoint:
                    // each asked after its entry was appended, so the checkpoint covers
                    // it. Those who ask during the signing wait for the next one.
                    let mut waiting = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        waiting.push(more);
                    }
                    let res = w
                        .checkpoint_now(now())
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string());
                    if let Err(e) = &res {
                        tracing::warn!(error = %e, "signing an audit checkpoint on request failed");
                    }
                    for tx in waiting {
                        let _ = tx.send(res.clone());
                    }
                }
            }
        }
    });
    Ok(SignerHandle { requests })
}

/// The administration page's way to the checks that need the log key
/// ([`AuditDesk`]): verify the log and export a package, with the same store calls as
/// `confide audit verify` and `confide audit export`.
pub struct Desk {
    writer: AuditWriter,
}

/// Opens the log with its key for the administration page.
pub async fn desk(cfg: &Config) -> anyhow::Result<Desk> {
    Ok(Desk {
        writer: writer(cfg).await?,
    })
}

fn log_time(t: confide_signaling::model::Timestamp) -> Timestamp {
    // Clamped into the log's range (1970 to 9999), so always representable.
    Timestamp::from_unix_millis(t.0.clamp(0, 253_402_300_799_999))
        .expect("a time clamped into the log's range")
}

#[async_trait::async_trait]
impl AuditDesk for Desk {
    async fn verify(&self) -> Result<VerifyOutcome, DeskError> {
        let key = self.writer.public_key();
        let store = self.writer.store();
        match store.verify(&key, self.writer.origin(), None, &[]).await {
            Ok(r) => Ok(VerifyOutcome {
                ok: true,
                size: r.size,
                signed_size: r.signed_size,
                checkpoints: r.checkpoints_checked as u64,
                unsigned_tail: r.unsigned_tail,
                first_bad: None,
            }),
            // A database that cannot be read is an error; anything else is the log
            // failing its check, which the page reports as such.
            Err(confide_audit::Error::Source(e)) => Err(DeskError::Failed(e.to_string())),
            Err(e) => {
                tracing::error!(error = %e, "AUDIT LOG VERIFY FAILED (run from the administration page)");
                Ok(VerifyOutcome {
                    ok: false,
                    size: store.size().await.unwrap_or(0),
                    signed_size: 0,
                    checkpoints: 0,
                    unsigned_tail: 0,
                    first_bad: Some(BadEntry {
                        seq: e.finding().and_then(|f| f.seq()),
                        message: e.to_string(),
                    }),
                })
            }
        }
    }

    async fn package(
        &self,
        since: confide_signaling::model::Timestamp,
        until: confide_signaling::model::Timestamp,
    ) -> Result<PackageDownload, DeskError> {
        let failed = |e: confide_audit::Error| DeskError::Failed(e.to_string());
        // As `confide audit export`: sign what is pending, so the package can cover
        // everything recorded up to now.
        self.writer.checkpoint_now(now()).await.map_err(failed)?;
        let store = self.writer.store().clone();
        let key = self.writer.public_key();
        let signed = store
            .latest_checkpoint(&key)
            .await
            .map_err(failed)?
            .map_or(0, |c| c.checkpoint.size);
        let (from, to) = store
            .seq_range_between(log_time(since), log_time(until))
            .await
            .map_err(failed)?
            .ok_or(DeskError::Empty)?;
        // Entries appended since the checkpoint above wait for the next package.
        let to = to.min(signed);
        if from >= to {
            return Err(DeskError::Empty);
        }
        // A few pieces in flight: a slow download holds the export back instead of
        // the server buffering the whole package.
        let (tx, chunks) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let sent = store
                .export_with(&mut buf, &key, from, to, |b: &mut Vec<u8>| {
                    let chunk = std::mem::take(b);
                    let tx = tx.clone();
                    async move {
                        if chunk.is_empty() {
                            return Ok(());
                        }
                        tx.send(Ok(chunk)).await.map_err(|_| {
                            confide_audit::Error::Source("the download was abandoned".into())
                        })
                    }
                })
                .await;
            match sent {
                Ok(_) if !buf.is_empty() => {
                    let _ = tx.send(Ok(buf)).await;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "exporting an audit package");
                    let _ = tx.send(Err(e.to_string())).await;
                }
            }
        });
        Ok(PackageDownload { from, to, chunks })
    }
}

fn parse_time(s: &str) -> anyhow::Result<Timestamp> {
    if let Some(t) = Timestamp::parse_rfc3339(s) {
        return Ok(t);
    }
    Timestamp::parse_rfc3339(&format!("{s}T00:00:00.000Z"))
        .with_context(|| format!("{s}: expected YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS.mmmZ"))
}

fn read_note(path: &Path, key: &LogPublicKey) -> anyhow::Result<SignedCheckpoint> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(SignedCheckpoint::from_note(&text, key)?)
}

/// Runs one `confide audit` command.
pub async fn run(cfg: Config, cmd: AuditCmd) -> anyhow::Result<()> {
    match cmd {
        AuditCmd::Check { package, key } => {
            let pinned = key
                .map(|k| LogPublicKey::from_vkey(&k).map(|(_, k)| k))
                .transpose()
                .context("--key")?;
            let file =
                File::open(&package).with_context(|| format!("opening {}", package.display()))?;
            let r = check_package(BufReader::new(file), pinned.as_ref())?;
            println!(
                "OK: entries {}..{} of log {} are included in its checkpoint of size {} ({})",
                r.from, r.to, r.origin, r.end_size, r.end_time
            );
            if r.start_size > 0 {
                println!(
                    "which is consistent with (extends) its checkpoint of size {}",
                    r.start_size
                );
            }
            println!(
                "log key fingerprint (compare with the clinic's): {}",
                r.key_fingerprint
            );
            Ok(())
        }
        AuditCmd::Key => {
            let (origin, key) = log_key(&cfg)?;
            let public = key.public_key();
            println!("{}", public.to_vkey(&origin)?);
            eprintln!("fingerprint {}", public.fingerprint());
            Ok(())
        }
        AuditCmd::Checkpoint => {
            let w = writer(&cfg).await?;
            match w.checkpoint_now(now()).await? {
                Some(cp) => print!("{}", cp.to_note(&w.public_key())),
                None => eprintln!("every entry is already covered by a checkpoint"),
            }
            Ok(())
        }
        AuditCmd::Checkpoints { latest } => {
            let w = writer(&cfg).await?;
            let key = w.public_key();
            let cps = w.store().checkpoints(&key).await?;
            let shown = if latest {
                cps.last().into_iter().collect::<Vec<_>>()
            } else {
                cps.iter().collect()
            };
            for cp in shown {
                print!("{}", cp.to_note(&key));
                if !latest {
                    println!();
                }
            }
            Ok(())
        }
        AuditCmd::Witness {
            server,
            log_key,
            name,
            ca_cert,
            interval,
            once,
            print_key,
        } => {
            if print_key {
                let key = crate::witness::witness_key(&cfg.data_dir, &name)?;
                println!("{}", key.public_key().to_vkey());
                return Ok(());
            }
            crate::witness::run(crate::witness::WitnessOpts {
                dir: cfg.data_dir.clone(),
                server: server.context("--server is required")?,
                log_key,
                name,
                ca_cert,
                interval: Duration::from_secs(interval.max(1)),
                once,
            })
            .await
        }
        AuditCmd::Verify {
            archived_below,
            checkpoints,
            witness_keys,
        } => {
            let witnesses = witness_keys
                .iter()
                .map(|k| WitnessPublicKey::from_vkey(k))
                .collect::<Result<Vec<_>, _>>()
                .context("--witness-key")?;
            let w = writer(&cfg).await?;
            let key = w.public_key();
            let extra = checkpoints
                .iter()
                .map(|p| read_note(p, &key))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let archived = match archived_below {
                Some(k) => Some(w.store().frontier_at(k).await?),
                None => None,
            };
            let r = w
                .store()
                .verify(&key, w.origin(), archived.as_ref(), &extra)
                .await?;
            println!(
                "OK: {} entries, root {}, {} checkpoints verified, signed up to {}",
                r.size,
                r.root.to_base64(),
                r.checkpoints_checked,
                r.signed_size
            );
            if r.unsigned_tail > 0 {
                println!(
                    "{} newest entries are not yet covered by a checkpoint",
                    r.unsigned_tail
                );
            }
            if !witnesses.is_empty() {
                let names = || {
                    witnesses
                        .iter()
                        .map(|w| w.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let (cp, _) = w
                    .store()
                    .latest_witnessed(&key, &witnesses)
                    .await?
                    .with_context(|| {
                        format!("no checkpoint carries a valid cosignature by {}", names())
                    })?;
                println!(
                    "witnessed by {} up to size {}; {} newer entries not yet witnessed",
                    names(),
                    cp.checkpoint.size,
                    r.size.saturating_sub(cp.checkpoint.size)
                );
            }
            Ok(())
        }
        AuditCmd::Export { from, to, out } => {
            let w = writer(&cfg).await?;
            let key = w.public_key();
            // An export should cover everything recorded so far, so sign what is pending.
            let _ = w.checkpoint_now(now()).await?;
            let latest = w
                .store()
                .latest_checkpoint(&key)
                .await?
                .map(|c| c.checkpoint.size)
                .context("the audit log is empty: nothing to export")?;
            let to = to.unwrap_or(latest);
            let report = match &out {
                Some(path) => {
                    let file = File::create(path)
                        .with_context(|| format!("creating {}", path.display()))?;
                    let mut f = BufWriter::new(file);
                    let r = w.store().export(&mut f, &key, from, to).await?;
                    f.flush()?;
                    r
                }
                None => {
                    let stdout = std::io::stdout();
                    let mut lock = stdout.lock();
                    w.store().export(&mut lock, &key, from, to).await?
                }
            };
            eprintln!(
                "exported entries {}..{} with checkpoints {} -> {}; key fingerprint {}",
                report.from, report.to, report.start_size, report.end_size, report.key_fingerprint
            );
            Ok(())
        }
        AuditCmd::Report {
            patient,
            from,
            to,
            json,
        } => {
            let (from, to) = (parse_time(&from)?, parse_time(&to)?);
            let (store, _, _) = open_store(&cfg).await?;
            let id = match patient
                .strip_prefix("account:")
                .and_then(|n| n.parse().ok())
            {
                Some(n) => AccountId(n),
                None => {
                    store
                        .account_by_username(&patient)
                        .await?
                        .context("no such patient")?
                        .id
                }
            };
            let ms = |t: Timestamp| confide_signaling::model::Timestamp(t.unix_millis());
            let (on_record, rows) =
                ops::patient_access_report(store.as_ref(), id, ms(from), ms(to)).await?;
            if json {
                for r in &rows {
                    println!("{}", ops::access_record_json(r));
                }
            } else {
                println!(
                    "Accesses to {id}'s appointments ({on_record} on record) from {from} to {to}:"
                );
                println!(
                    "{:<16} {:<8} {:>6} {:>7}  {:<24} {:<24} actions",
                    "account", "role", "count", "refused", "first", "last"
                );
                for r in &rows {
                    println!(
                        "{:<16} {:<8} {:>6} {:>7}  {:<24} {:<24} {}",
                        r.actor,
                        r.role.as_deref().unwrap_or("-"),
                        r.count,
                        r.refused,
                        r.first.to_string(),
                        r.last.to_string(),
                        r.actions.iter().cloned().collect::<Vec<_>>().join(",")
                    );
                }
                println!(
                    "Each line lists entry numbers (--json) that `confide audit export` can prove."
                );
            }
            Ok(())
        }
    }
}

/// HTTPS routes that publish the log's state, as Certificate Transparency logs do:
/// `GET /api/audit/checkpoint[?size=N]` (the latest signed checkpoint, or the one of
/// size N, as a signed note followed by the witnesses' cosignature lines),
/// `GET /api/audit/key` (the log's public key, as a verifier key line),
/// `GET /api/audit/consistency?from=A&to=B` (the RFC 6962 proof that the tree of A
/// entries is a prefix of the tree of B entries), and
/// `POST /api/audit/cosignature`, where a witness listed in the witness file posts a
/// checkpoint note carrying its cosignature.
///
/// They are public on purpose. A checkpoint reveals only the number of entries, a root
/// hash and a time, never an entry; anyone who keeps the checkpoints they fetched can
/// later demand a consistency proof, so a server that rewrote its history would have
/// to show two different trees to two parties, and comparing notes exposes that. A
/// consistency proof is made of interior node hashes: it reveals no entry either. A
/// posted cosignature is stored only if it verifies under a listed witness key and
/// signs a checkpoint the log really signed.
/// Entries and their inclusion proofs are served only by the key directory, to those
/// entitled to the entries (they can be about patients).
pub async fn routes(cfg: &Config) -> anyhow::Result<axum::Router> {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::get;
    use std::sync::Arc;

    let (origin, key) = log_key(cfg)?;
    let public = key.public_key();
    drop(key);
    let vkey: Arc<str> = public.to_vkey(&origin)?.into();
    let store = AuditStore::connect(&cfg.database_url())
        .await
        .context("opening the audit log")?;
    let proofs = store.clone();
    let state = Arc::new((store, public));
    let cosign_state = state.clone();
    let witnesses_file = witnesses_path(cfg);
    let text = |body: String| ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body);
    Ok(axum::Router::new()
        .route(
            "/api/audit/key",
            get(move || {
                let vkey = vkey.clone();
                async move { text(format!("{vkey}\n")) }
            }),
        )
        .route(
            "/api/audit/checkpoint",
            get(move |q: axum::extract::Query<CheckpointQuery>| {
                let state = state.clone();
                async move {
                    let (store, public) = &*state;
                    match store.cosigned_note(public, q.0.size).await {
                        Ok(Some(note)) => text(note).into_response(),
                        Ok(None) => (
                            StatusCode::NOT_FOUND,
                            text("no such checkpoint has been signed\n".into()),
                        )
                            .into_response(),
                        Err(e) => {
                            // A checkpoint that fails its own signature check is
                            // tampering; say so to the operator, not to the caller.
                            tracing::error!(error = %e, "reading the latest audit checkpoint");
                            (
                                StatusCode::INTERNAL_SERVER_ERROR,
                                text("the audit log could not be read\n".into()),
                            )
                                .into_response()
                        }
                    }
                }
            }),
        )
        .route(
            "/api/audit/consistency",
            get(move |q: axum::extract::Query<ConsistencyQuery>| {
                let store = proofs.clone();
                async move { consistency(&store, q.0).await }
            }),
        )
        .route(
            "/api/audit/cosignature",
            axum::routing::post(move |body: String| {
                let state = cosign_state.clone();
                let file = witnesses_file.clone();
                async move {
                    let (store, public) = &*state;
                    accept_cosignature(store, public, &file, &body).await
                }
            })
            // A cosigned note is a few hundred bytes.
            .layer(axum::extract::DefaultBodyLimit::max(
                confide_audit::MAX_NOTE_BYTES,
            )),
        ))
}

#[derive(serde::Deserialize)]
pub struct CheckpointQuery {
    size: Option<u64>,
}

/// The file listing the witnesses whose cosignatures the server accepts, one verifier
/// key per line (`#` starts a comment): `CONFIDE_AUDIT_WITNESSES_FILE`, default
/// `audit-witnesses` in the data directory. Read at each post, so adding a witness
/// needs no restart.
pub fn witnesses_path(cfg: &Config) -> PathBuf {
    std::env::var_os("CONFIDE_AUDIT_WITNESSES_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| cfg.data_dir.join("audit-witnesses"))
}

/// Parses the witness file; a missing file lists nobody.
pub fn read_witnesses(path: &Path) -> anyhow::Result<Vec<WitnessPublicKey>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| WitnessPublicKey::from_vkey(l).with_context(|| format!("{}: {l}", path.display())))
        .collect()
}

/// `POST /api/audit/cosignature`: stores the cosignatures in `body` (a checkpoint note
/// with cosignature lines) made by listed witnesses over a checkpoint the log signed.
async fn accept_cosignature(
    store: &AuditStore,
    public: &LogPublicKey,
    witnesses_file: &Path,
    body: &str,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use confide_signaling::http::ApiError;

    let witnesses = match read_witnesses(witnesses_file) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "reading the audit witness list");
            return ApiError::Internal.into_response();
        }
    };
    let Ok(offered) = SignedCheckpoint::from_note(body, public) else {
        return ApiError::BadRequest("not a checkpoint signed by this log").into_response();
    };
    let size = offered.checkpoint.size;
    match store.checkpoint_at(public, size).await {
        Ok(Some(ours)) if ours == offered => {}
        Ok(_) => {
            return ApiError::BadRequest("not a checkpoint this log stores").into_response();
        }
        Err(e) => {
            tracing::error!(error = %e, "reading an audit checkpoint");
            return ApiError::Internal.into_response();
        }
    }
    let mut good = Vec::new();
    for w in &witnesses {
        if let Ok((_, mut c)) = open_cosigned(body, public, std::slice::from_ref(w)) {
            good.append(&mut c);
        }
    }
    if good.is_empty() {
        return ApiError::BadRequest("no valid cosignature by a listed witness").into_response();
    }
    if let Err(e) = store.add_cosignatures(size, &good, now()).await {
        tracing::error!(error = %e, "storing audit cosignatures");
        return ApiError::Internal.into_response();
    }
    let at = now().unix_millis() as f64 / 1000.0;
    for c in &good {
        let witness = c.name.clone();
        metrics::gauge!(crate::metrics::AUDIT_WITNESSED_SIZE, "witness" => witness.clone())
            .set(size as f64);
        metrics::gauge!(crate::metrics::AUDIT_WITNESSED_AT, "witness" => witness).set(at);
    }
    tracing::info!(size, witnesses = good.len(), "audit checkpoint cosigned");
    axum::http::StatusCode::NO_CONTENT.into_response()
}

#[derive(serde::Deserialize)]
pub struct ConsistencyQuery {
    from: u64,
    to: u64,
}

#[derive(serde::Serialize)]
struct ConsistencyResp {
    from: u64,
    to: u64,
    /// RFC 6962 PROOF node hashes, base64.
    proof: Vec<String>,
}

/// `GET /api/audit/consistency?from=A&to=B`: 400 unless `A <= B <= size`.
async fn consistency(store: &AuditStore, q: ConsistencyQuery) -> axum::response::Response {
    use axum::response::IntoResponse;
    use confide_signaling::http::ApiError;

    let size = match store.size().await {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(error = %e, "reading the audit log size");
            return ApiError::Internal.into_response();
        }
    };
    if q.from > q.to || q.to > size {
        return ApiError::BadRequest("need from <= to <= the log's size").into_response();
    }
    match store.consistency_proof(q.from, q.to).await {
        Ok(p) => axum::Json(ConsistencyResp {
            from: q.from,
            to: q.to,
            proof: p.path.iter().map(|h| h.to_base64()).collect(),
        })
        .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "making an audit consistency proof");
            ApiError::Internal.into_response()
        }
    }
}
