//! The `confide` server: configuration, TLS, wiring signaling to the media plane.
//!
//! [`start`] brings up one HTTPS port (axum over rustls) serving the REST API, the
//! `/ws` signaling endpoint, the static browser client and health checks. With no
//! configuration it uses an embedded default: a SQLite file and a self-signed
//! certificate in the data directory, and a master key file beside them.

pub mod audit_cmd;
pub mod host_addr;
pub mod media;
pub mod metrics;
pub mod terminal_qr;
pub mod tls;
pub mod witness;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use confide_signaling::auth::RecoveryPepper;
use confide_signaling::crypto::{Keyring, MasterKey};
use confide_signaling::http::{AppState, now, router_with, run_media};
use confide_signaling::ops::DemoInfo;
use confide_signaling::settings::Settings;
use confide_signaling::store::keys::{index_patients, load_keyring};
use confide_signaling::store::{SqlStore, Store};
use rand::rngs::OsRng;

pub use confide_signaling;

#[derive(Clone, Debug)]
pub struct Config {
    pub bind: SocketAddr,
    pub data_dir: PathBuf,
    /// `sqlite://...` or `postgres://...`; default: a SQLite file in `data_dir`.
    pub database_url: Option<String>,
    /// Master key text (hex or base64); takes precedence over the key file.
    pub master_key: Option<String>,
    /// Default: `<data_dir>/master.key`, created on first start.
    pub master_key_file: Option<PathBuf>,
    /// The recovery code pepper (64 hex digits). Default: `<data_dir>/recovery.pepper`,
    /// created on first start.
    pub recovery_pepper_file: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Browser client directory; default `crates/web/static` if it exists.
    pub static_dir: Option<PathBuf>,
    pub settings: Settings,
    pub demo: bool,
    /// Media plane (SFU by default); see media.rs.
    pub media: media::MediaConfig,
    /// Admin listener (plain HTTP `/metrics`); `None`: not started. See metrics.rs.
    pub admin_bind: Option<SocketAddr>,
}

impl Config {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            bind: SocketAddr::from(([127, 0, 0, 1], 8443)),
            data_dir: data_dir.into(),
            database_url: None,
            master_key: None,
            master_key_file: None,
            recovery_pepper_file: None,
            tls_cert: None,
            tls_key: None,
            static_dir: None,
            settings: Settings::default(),
            demo: false,
            media: media::MediaConfig::default(),
            admin_bind: None,
        }
    }

    pub fn database_url(&self) -> String {
        self.database_url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}",
                self.data_dir.join("confide.sqlite3").display()
            )
        })
    }
}

/// A running server.
pub struct Running {
    pub addr: SocketAddr,
    /// DER of the serving certificate (clients of a self-signed setup pin it).
    pub cert_der: Vec<u8>,
    /// SHA-256 of the certificate, colon-separated hex.
    pub fingerprint: String,
    pub state: AppState,
    pub demo: Option<DemoInfo>,
    /// The SFU, when it is the media plane (metrics and tests read its counters).
    pub sfu: Option<confide_sfu::SfuHandle>,
    /// The admin listener serving `/metrics`, when configured.
    pub admin: Option<metrics::Admin>,
    pub handle: axum_server::Handle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Wait until the server stops.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("server task")?.context("server")?;
        Ok(())
    }

    pub fn shutdown(&self) {
        self.handle.shutdown();
    }
}

/// Open the store and the keyring as configured (shared by `serve`, `demo`, `admin`).
pub async fn open_store(cfg: &Config) -> anyhow::Result<(Arc<SqlStore>, MasterKey, Keyring)> {
    create_private_dir(&cfg.data_dir)?;
    let store = Arc::new(
        SqlStore::connect(&cfg.database_url())
            .await
            .context("opening the database")?,
    );
    let master = master_key(cfg)?;
    let keyring = load_keyring(store.as_ref(), &master, now())
        .await
        .context("opening the data keys (is this the right master key?)")?;
    Ok((store, master, keyring))
}

pub fn master_key(cfg: &Config) -> anyhow::Result<MasterKey> {
    if let Some(text) = &cfg.master_key {
        return MasterKey::parse(text).context("master key");
    }
    let path = cfg
        .master_key_file
        .clone()
        .unwrap_or_else(|| cfg.data_dir.join("master.key"));
    if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        return MasterKey::parse(&text).context("master key file");
    }
    let key = MasterKey::generate(&mut OsRng);
    write_private(&path, key.to_hex().as_bytes())?;
    tracing::warn!(
        path = %path.display(),
        "created a new master key; keep it apart from database backups (see docs/operations.md)"
    );
    Ok(key)
}

/// The recovery code pepper: read from its file, or made on first start (0600), as
/// the master key is. Like the master key it stays out of the database and its
/// backups; losing it only invalidates recovery codes (users make new ones).
pub fn recovery_pepper(cfg: &Config) -> anyhow::Result<RecoveryPepper> {
    let path = cfg
        .recovery_pepper_file
        .clone()
        .unwrap_or_else(|| cfg.data_dir.join("recovery.pepper"));
    if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        return RecoveryPepper::parse(&text)
            .with_context(|| format!("{}: expected 64 hex digits", path.display()));
    }
    let pepper = RecoveryPepper::generate(&mut OsRng);
    write_private(&path, pepper.to_hex().as_bytes())?;
    tracing::info!(path = %path.display(), "created the recovery code pepper");
    Ok(pepper)
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    Ok(())
}

pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        create_private_dir(parent)?;
    }
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        f.write_all(bytes)?;
    }
    #[cfg(not(unix))]
    std::fs::write(path, bytes)?;
    Ok(())
}

/// Start serving; returns once the port is bound.
pub async fn start(cfg: Config) -> anyhow::Result<Running> {
    let (store, _master, keyring) = open_store(&cfg).await?;
    let signer = audit_cmd::spawn_signer(&cfg).await?;
    let store: Arc<dyn Store> = store;
    let tls = tls::load_or_create(&cfg)?;

    // The one place the media plane is chosen (see media.rs).
    let media::MediaParts { plane, events, sfu } = media::build(&cfg)?;

    let static_dir = cfg.static_dir.clone().or_else(|| {
        let d = PathBuf::from("crates/web/static");
        d.is_dir().then_some(d)
    });
    let state = AppState::new(
        store.clone(),
        Arc::new(keyring),
        cfg.settings.clone(),
        plane,
        static_dir,
        recovery_pepper(&cfg)?,
    );
    state.set_checkpoint_signer(Arc::new(signer));
    state.set_audit_desk(Arc::new(audit_cmd::desk(&cfg).await?));
    tokio::spawn(run_media(state.clone(), events));
    tokio::spawn(confide_signaling::http::run_housekeeping(state.clone()));

    let demo = if cfg.demo {
        Some(
            confide_signaling::ops::seed_demo(
                store.as_ref(),
                &state.keyring,
                &cfg.settings.terms_version,
                now(),
            )
            .await
            .context("seeding the demo clinic")?,
        )
    } else {
        None
    };

    // Patients from before the search index existed (or made by the demo or the CLI)
    // get their index rows under the current data key.
    let indexed = index_patients(store.as_ref(), &state.keyring)
        .await
        .context("building the patient search index")?;
    if indexed > 0 {
        tracing::info!(patients = indexed, "indexed patients for search");
    }

    let admin = match cfg.admin_bind {
        Some(bind) => Some(metrics::serve_admin(bind, state.clone(), sfu.clone()).await?),
        None => None,
    };

    let listener =
        std::net::TcpListener::bind(cfg.bind).with_context(|| format!("binding {}", cfg.bind))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let handle = axum_server::Handle::new();
    // The audit routes sit inside the same security-header layers as the rest.
    let app = router_with(state.clone(), audit_cmd::routes(&cfg).await?)
        .into_make_service_with_connect_info::<SocketAddr>();
    let server = axum_server::from_tcp_rustls(listener, tls.config.clone()).handle(handle.clone());
    let task = tokio::spawn(async move { server.serve(app).await });
    Ok(Running {
        addr,
        cert_der: tls.cert_der,
        fingerprint: tls.fingerprint,
        state,
        demo,
        sfu,
        admin,
        handle,
        task,
    })
}
