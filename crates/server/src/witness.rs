//! `confide audit witness`: a separate process, on another host in production, that
//! fetches the log's checkpoints over HTTPS, checks that each extends the last one it
//! cosigned (an RFC 6962 consistency proof from the server), cosigns it in the C2SP
//! `tlog-cosignature` format and posts the cosignature back.
//!
//! Its data directory holds its own key (`witness.key`), the log's verifier key it
//! pinned on first run (`log.vkey`) and the last checkpoint it cosigned
//! (`witnessed.note`). When the log offers a checkpoint that does not extend that one
//! (history shrank, or forked), the witness refuses, logs an error, writes both notes
//! to `ALARM-<time>.txt` and exits with status [`EXIT_REWRITTEN`]; it keeps refusing
//! on every later start, since its state is unchanged.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use confide_audit::{Error, Hash, LogPublicKey, SignedCheckpoint, WitnessSigningKey, WitnessState};
use rand::RngCore as _;
use rand::rngs::OsRng;
use zeroize::Zeroizing;

use crate::write_private;

/// Exit status when the log rewrote history the witness had cosigned.
pub const EXIT_REWRITTEN: i32 = 3;

/// Default witness name (its signature lines' key name).
pub const DEFAULT_NAME: &str = "confide-witness.local/w1";

/// Options of one witness run.
pub struct WitnessOpts {
    /// The witness's own data directory.
    pub dir: PathBuf,
    /// Base URL of the server (`https://clinic.example:8443`).
    pub server: String,
    /// The log's verifier key, required on first run and checked on later ones.
    pub log_key: Option<String>,
    /// Name given to a key created on first run.
    pub name: String,
    /// PEM file of a certificate (or CA) to trust instead of the system roots.
    pub ca_cert: Option<PathBuf>,
    /// Seconds between checks.
    pub interval: Duration,
    /// Check once and exit.
    pub once: bool,
}

/// Loads the witness key from `dir`, creating it (named `name`) on first use.
pub fn witness_key(dir: &Path, name: &str) -> anyhow::Result<WitnessSigningKey> {
    let path = dir.join("witness.key");
    if path.exists() {
        let text = Zeroizing::new(
            std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?,
        );
        return WitnessSigningKey::from_skey(&text).context("witness key file");
    }
    let mut seed = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(&mut seed[..]);
    let key = WitnessSigningKey::from_seed(name, &seed).context("witness name")?;
    write_private(&path, key.to_skey().as_bytes())?;
    tracing::warn!(path = %path.display(), "created a new witness key");
    Ok(key)
}

fn pinned_log_key(dir: &Path, given: Option<&str>) -> anyhow::Result<(String, LogPublicKey)> {
    let path = dir.join("log.vkey");
    let stored = match std::fs::read_to_string(&path) {
        Ok(t) => Some(t.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let text = match (stored, given) {
        (Some(s), Some(g)) if s != g.trim() => anyhow::bail!(
            "--log-key differs from the key this witness pinned ({}): a witness follows one log",
            path.display()
        ),
        (Some(s), _) => s,
        (None, Some(g)) => {
            LogPublicKey::from_vkey(g).context("--log-key")?;
            write_private(&path, format!("{}\n", g.trim()).as_bytes())?;
            g.trim().to_owned()
        }
        (None, None) => anyhow::bail!(
            "first run: give --log-key (the output of `confide audit key` on the server, compared out of band)"
        ),
    };
    LogPublicKey::from_vkey(&text).context("pinned log key")
}

fn load_state(dir: &Path, key: &LogPublicKey) -> anyhow::Result<(WitnessState, Option<String>)> {
    let path = dir.join("witnessed.note");
    match std::fs::read_to_string(&path) {
        Ok(note) => {
            let cp = SignedCheckpoint::from_note(&note, key)
                .with_context(|| format!("{} no longer verifies", path.display()))?;
            Ok((
                WitnessState {
                    last: Some(cp.checkpoint),
                },
                Some(note),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((WitnessState::default(), None)),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn save_state(dir: &Path, note: &str) -> anyhow::Result<()> {
    // Written before the cosignature leaves, and atomically: a crash can lose a
    // cosignature but never make the witness forget what it vouched for.
    let tmp = dir.join("witnessed.note.tmp");
    let _ = std::fs::remove_file(&tmp);
    write_private(&tmp, note.as_bytes())?;
    std::fs::rename(&tmp, dir.join("witnessed.note")).context("saving the witnessed checkpoint")
}

fn client(ca: Option<&Path>) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .user_agent("confide-witness");
    if let Some(path) = ca {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        b = b
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).context("--ca-cert")?)
            .tls_built_in_root_certs(false);
    }
    b.build().context("HTTPS client")
}

#[derive(serde::Deserialize)]
struct ConsistencyResp {
    proof: Vec<String>,
}

/// What one round did.
#[derive(Debug, PartialEq, Eq)]
pub enum Round {
    /// No checkpoint has been signed yet.
    Nothing,
    /// The latest checkpoint was cosigned already.
    Unchanged(u64),
    /// A checkpoint of this size was cosigned and posted.
    Cosigned(u64),
}

struct Witness {
    http: reqwest::Client,
    base: String,
    dir: PathBuf,
    log_key: LogPublicKey,
    origin: String,
    key: WitnessSigningKey,
    state: WitnessState,
    last_note: Option<String>,
}

/// The log rewrote history the witness had cosigned.
#[derive(Debug)]
pub struct Rewritten(pub Error);

impl std::fmt::Display for Rewritten {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the audit log rewrote history this witness cosigned: {}",
            self.0
        )
    }
}

impl std::error::Error for Rewritten {}

impl Witness {
    async fn get_text(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        let status = r.status().as_u16();
        let text = r.text().await.with_context(|| format!("GET {path}"))?;
        Ok((status, text))
    }

    async fn round(&mut self, now_secs: u64) -> anyhow::Result<Round> {
        let (status, note) = self.get_text("/api/audit/checkpoint").await?;
        if status == 404 {
            return Ok(Round::Nothing);
        }
        anyhow::ensure!(status == 200, "GET /api/audit/checkpoint answered {status}");
        let next = SignedCheckpoint::from_note(&note, &self.log_key)
            .context("the served checkpoint is not signed by the pinned log key")?;
        anyhow::ensure!(
            next.checkpoint.origin == self.origin,
            "the served checkpoint is for log {}, not {}",
            next.checkpoint.origin,
            self.origin
        );
        let size = next.checkpoint.size;
        let proof: Vec<Hash> = match &self.state.last {
            Some(last) if size > last.size => {
                let (st, body) = self
                    .get_text(&format!(
                        "/api/audit/consistency?from={}&to={size}",
                        last.size
                    ))
                    .await?;
                anyhow::ensure!(
                    st == 200,
                    "GET /api/audit/consistency answered {st}: {body}"
                );
                let resp: ConsistencyResp =
                    serde_json::from_str(&body).context("consistency proof")?;
                resp.proof
                    .iter()
                    .map(|h| Hash::from_base64(h).context("consistency proof hash"))
                    .collect::<anyhow::Result<_>>()?
            }
            _ => Vec::new(),
        };
        let unchanged = self.state.last.as_ref() == Some(&next.checkpoint);
        if let Err(e) = self.state.check(&next.checkpoint, &proof) {
            if e.finding().is_some() {
                self.alarm(&note, &e);
                return Err(Rewritten(e).into());
            }
            return Err(e).context("checking the served checkpoint");
        }
        if unchanged {
            return Ok(Round::Unchanged(size));
        }
        // The log's own note, without any other lines, is what this witness vouches for.
        let own = next.to_note(&self.log_key);
        save_state(&self.dir, &own)?;
        self.last_note = Some(own.clone());
        let cosig = self.key.cosign(&next.checkpoint, now_secs);
        let body = format!("{own}{}", cosig.to_line());
        let r = self
            .http
            .post(format!("{}/api/audit/cosignature", self.base))
            .header("content-type", "text/plain; charset=utf-8")
            .body(body)
            .send()
            .await
            .context("POST /api/audit/cosignature")?;
        let st = r.status();
        anyhow::ensure!(
            st.is_success(),
            "the server refused the cosignature ({st}): {}",
            r.text().await.unwrap_or_default()
        );
        tracing::info!(size, "cosigned the audit checkpoint");
        Ok(Round::Cosigned(size))
    }

    fn alarm(&self, offered: &str, e: &Error) {
        tracing::error!(
            error = %e,
            "AUDIT LOG REWRITTEN: the server offered a checkpoint that does not extend the one this witness cosigned; refusing to cosign"
        );
        let path = self.dir.join(format!(
            "ALARM-{}.txt",
            crate::audit_cmd::now().unix_millis()
        ));
        let text = format!(
            "{e}\n\n# cosigned earlier by this witness\n{}\n# offered now\n{offered}",
            self.last_note.as_deref().unwrap_or("(none)\n")
        );
        if let Err(err) = std::fs::write(&path, text) {
            tracing::error!(error = %err, path = %path.display(), "could not write the alarm file");
        }
    }
}

fn unix_secs() -> u64 {
    u64::try_from(crate::audit_cmd::now().unix_millis() / 1000).unwrap_or(0)
}

/// Runs the witness until an error that is not transient (the log rewrote history:
/// [`Rewritten`]), or after one round with `once`.
pub async fn run(opts: WitnessOpts) -> anyhow::Result<()> {
    std::fs::create_dir_all(&opts.dir)
        .with_context(|| format!("creating {}", opts.dir.display()))?;
    // A witness beside the log's own key and database vouches for nothing: whoever can
    // rewrite the log could rewrite the witness's memory too.
    anyhow::ensure!(
        !opts.dir.join("audit-log.key").exists() && !opts.dir.join("confide.sqlite3").exists(),
        "{} is a server's data directory; give the witness its own (CONFIDE_DATA_DIR)",
        opts.dir.display()
    );
    let key = witness_key(&opts.dir, &opts.name)?;
    let (origin, log_key) = pinned_log_key(&opts.dir, opts.log_key.as_deref())?;
    let (state, last_note) = load_state(&opts.dir, &log_key)?;
    let mut w = Witness {
        http: client(opts.ca_cert.as_deref())?,
        base: opts.server.trim_end_matches('/').to_owned(),
        dir: opts.dir.clone(),
        log_key,
        origin,
        key,
        state,
        last_note,
    };
    tracing::info!(
        witness = %w.key.public_key().to_vkey(),
        log = %w.origin,
        server = %w.base,
        "audit witness running"
    );
    loop {
        match w.round(unix_secs()).await {
            Ok(r) => {
                if opts.once {
                    println!("{r:?}");
                    return Ok(());
                }
            }
            Err(e) if e.is::<Rewritten>() => return Err(e),
            Err(e) if opts.once => return Err(e),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "audit witness round failed"),
        }
        tokio::time::sleep(opts.interval).await;
    }
}
