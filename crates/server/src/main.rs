//! `confide`: serve a clinic, seed the demo, administer accounts and keys.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use confide_server::confide_signaling::audit::{AuditAction, AuditFilter};
use confide_server::confide_signaling::auth::ActivationPurpose;
use confide_server::confide_signaling::crypto::MasterKey;
use confide_server::confide_signaling::http::{activation, now};
use confide_server::confide_signaling::model::Role;
use confide_server::confide_signaling::ops::{self, DemoInfo};
use confide_server::confide_signaling::password;
use confide_server::confide_signaling::store::keys::{rotate_data_key, rotate_master_key};
use confide_server::confide_signaling::store::{AuditLog, Store};
use confide_server::{Config, open_store, start};
use rand::rngs::OsRng;

#[derive(Parser)]
#[command(
    name = "confide",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("CONFIDE_COMMIT"), ")"),
    about = "End-to-end encrypted telemedicine server"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Log lines as `text` (colour only on a terminal) or `json` (one object a line, for
    /// a log collector). Which lines: `RUST_LOG` filters (default `info`).
    #[arg(long, global = true, env = "CONFIDE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Logs go to standard error. Escape codes only when it is a terminal: a redirected
/// log file or a journal gets plain text.
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}

#[derive(Args, Clone)]
struct Common {
    /// Directory for the SQLite file, the TLS certificate and the master key file.
    #[arg(long, env = "CONFIDE_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// sqlite://FILE or postgres://USER@HOST/DB (default: SQLite in the data directory).
    #[arg(long, env = "CONFIDE_DATABASE_URL")]
    database_url: Option<String>,
    /// File holding the master key (64 hex digits); default DATA_DIR/master.key.
    /// CONFIDE_MASTER_KEY (the key itself) takes precedence.
    #[arg(long, env = "CONFIDE_MASTER_KEY_FILE")]
    master_key_file: Option<PathBuf>,
    /// File holding the recovery code pepper (64 hex digits); default
    /// DATA_DIR/recovery.pepper, created on first start.
    #[arg(long, env = "CONFIDE_RECOVERY_PEPPER_FILE")]
    recovery_pepper_file: Option<PathBuf>,
}

impl Common {
    fn config(&self) -> Config {
        let mut c = Config::new(self.data_dir.clone());
        c.database_url = self.database_url.clone();
        c.master_key_file = self.master_key_file.clone();
        c.recovery_pepper_file = self.recovery_pepper_file.clone();
        c.master_key = std::env::var("CONFIDE_MASTER_KEY")
            .ok()
            .filter(|k| !k.is_empty());
        c
    }
}

/// Media plane options of `serve`.
#[derive(clap::Args)]
struct MediaArgs {
    /// `sfu` (default): all media through the built-in SFU. `p2p`: development only.
    #[arg(
        long = "media",
        env = "CONFIDE_MEDIA",
        value_enum,
        default_value = "sfu"
    )]
    mode: confide_server::media::MediaMode,
    /// Address the SFU's UDP sockets bind to. Default: the address this host's default
    /// route leaves from (reachable by every browser on this host, Firefox included, and
    /// on its network), or 127.0.0.1 on a host without a route.
    #[arg(long, env = "CONFIDE_MEDIA_BIND")]
    media_bind: Option<std::net::IpAddr>,
    /// Address browsers reach the SFU at (required when binding 0.0.0.0).
    #[arg(long, env = "CONFIDE_MEDIA_PUBLIC_IP")]
    media_public_ip: Option<std::net::IpAddr>,
    /// UDP port of the first SFU worker (worker i uses port + i); 0 picks free ports.
    #[arg(long, env = "CONFIDE_MEDIA_PORT", default_value_t = 0)]
    media_port: u16,
    /// SFU worker threads (one UDP socket each); 0 means one per core.
    #[arg(long, env = "CONFIDE_MEDIA_WORKERS", default_value_t = 0)]
    media_workers: usize,
    /// Bandwidth estimation and pacing per SFU leg: `on` (default) or `off` (less CPU,
    /// keyframes not smoothed for slow receivers).
    #[arg(long, env = "CONFIDE_MEDIA_BWE", value_enum, default_value = "on")]
    media_bwe: OnOff,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

impl MediaArgs {
    fn into_config(self) -> confide_server::media::MediaConfig {
        confide_server::media::MediaConfig {
            mode: self.mode,
            bind_ip: self.media_bind.unwrap_or_else(|| {
                use confide_server::host_addr::MediaAddress;
                let picked = MediaAddress::detect();
                match picked {
                    MediaAddress::DefaultRoute(ip) => tracing::info!(
                        %ip,
                        "media: SFU on the default route's address (set --media-bind to choose)"
                    ),
                    MediaAddress::LoopbackOnly => tracing::warn!(
                        "media: no default route, SFU on 127.0.0.1; Firefox gathers no \
                         loopback candidates and will get no media (set --media-bind)"
                    ),
                }
                picked.ip()
            }),
            public_ip: self.media_public_ip,
            port: self.media_port,
            workers: self.media_workers,
            bwe: matches!(self.media_bwe, OnOff::On),
            ..Default::default()
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve HTTPS (REST, /ws, static client) on one port.
    Serve {
        #[command(flatten)]
        common: Common,
        #[arg(long, env = "CONFIDE_BIND", default_value = "127.0.0.1:8443")]
        bind: SocketAddr,
        /// Seed the demo clinic (accounts and an appointment starting now) first.
        #[arg(long)]
        demo: bool,
        #[arg(long, env = "CONFIDE_TLS_CERT", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        #[arg(long, env = "CONFIDE_TLS_KEY", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Directory of the browser client (default: crates/web/static if present).
        #[arg(long, env = "CONFIDE_STATIC_DIR")]
        static_dir: Option<PathBuf>,
        /// Automatic logoff after this many idle seconds.
        #[arg(long, env = "CONFIDE_IDLE_TIMEOUT_S", default_value_t = 900)]
        idle_timeout_s: i64,
        /// Consultations open this many seconds before the start and close this many after the end.
        #[arg(long, env = "CONFIDE_JOIN_GRACE_S", default_value_t = 900)]
        join_grace_s: i64,
        /// Activation links (new accounts, admin resets) work for this many hours.
        #[arg(long, env = "CONFIDE_ACTIVATION_TTL_H", default_value_t = 72)]
        activation_ttl_h: i64,
        #[command(flatten)]
        media: MediaArgs,
        /// Admin listener (plain HTTP, `/metrics` for Prometheus); `off` disables it.
        #[arg(long, env = "CONFIDE_ADMIN_BIND", default_value = "127.0.0.1:9443")]
        admin_bind: String,
        /// Test builds only (feature `tap`): let the browser client's end-to-end test
        /// hooks run (`?test=1`, plaintext frame samples read inside the page). A
        /// production build refuses it.
        #[arg(long, hide = true)]
        test_hooks: bool,
        /// Reverse proxies (addresses or CIDR networks, comma-separated) whose
        /// `X-Forwarded-For` names the client; from any other peer it is ignored.
        #[arg(long, env = "CONFIDE_TRUSTED_PROXIES", default_value = "")]
        trusted_proxies: String,
        /// WebSocket connections one address (IPv6: one /64) may hold before signing
        /// in; more are refused with 429.
        #[arg(long, env = "CONFIDE_WS_UNAUTH_PER_ADDR", default_value_t = 32)]
        ws_unauth_per_addr: usize,
    },
    /// Seed the demo clinic and print its credentials (demo only).
    Demo {
        #[command(flatten)]
        common: Common,
        /// Print machine-readable JSON (accounts, passwords, TOTP secrets, appointment id).
        #[arg(long)]
        json: bool,
    },
    /// Tamper-evident audit log: verify, export, check, per-patient report.
    Audit {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        cmd: confide_server::audit_cmd::AuditCmd,
    },
    /// Administration: accounts, keys, audit.
    Admin {
        #[command(flatten)]
        common: Common,
        #[command(subcommand)]
        cmd: AdminCmd,
    },
}

#[derive(Subcommand)]
enum AdminCmd {
    /// Create an account. With CONFIDE_NEW_PASSWORD set, that is its password (held to
    /// the password rules); without it, the account waits for activation and a
    /// single-use activation link is printed for its owner.
    CreateAccount {
        #[arg(long)]
        username: String,
        #[arg(long, value_parser = parse_role)]
        role: Role,
        #[arg(long)]
        display_name: String,
        #[arg(long)]
        contact: Option<String>,
        /// Origin the activation link is printed on (default: https://<bind address>).
        #[arg(long, env = "CONFIDE_PUBLIC_ORIGIN")]
        origin: Option<String>,
        /// The activation link works for this many hours.
        #[arg(long, env = "CONFIDE_ACTIVATION_TTL_H", default_value_t = 72)]
        activation_ttl_h: i64,
    },
    /// Disable an account and revoke its sessions.
    DisableAccount {
        #[arg(long)]
        username: String,
    },
    /// Print a fresh random master key (hex).
    GenMasterKey,
    /// Re-wrap the data keys under a new master key read from FILE.
    RotateMasterKey {
        #[arg(long)]
        new_key_file: PathBuf,
    },
    /// Make a new data key and re-seal every sealed value under it.
    RotateDataKey,
    /// Make load-test accounts for `confide-bench --target` and print them as JSON (for
    /// `--people`): one staff member who books, and doctor/patient pairs (doctors with
    /// TOTP, patients with consent). For staging servers only: the output holds their
    /// passwords and TOTP secrets; disable the accounts after the test.
    BenchAccounts {
        /// Doctor/patient pairs, one per consultation the bench runs at once.
        #[arg(long)]
        pairs: usize,
        /// Usernames are `<prefix>-staff`, `<prefix>-doctor-<i>`, `<prefix>-patient-<i>`.
        #[arg(long, default_value = "bench")]
        prefix: String,
    },
    /// Print recent audit events as JSON lines.
    Audit {
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[arg(long)]
        action: Option<String>,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    match Role::parse(s) {
        Some(Role::Guest) | None => Err("role: doctor, patient, staff or admin".into()),
        Some(r) => Ok(r),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.cmd {
        Cmd::Serve {
            common,
            bind,
            demo,
            tls_cert,
            tls_key,
            static_dir,
            idle_timeout_s,
            join_grace_s,
            activation_ttl_h,
            media,
            admin_bind,
            test_hooks,
            trusted_proxies,
            ws_unauth_per_addr,
        } => {
            if test_hooks && !cfg!(feature = "tap") {
                anyhow::bail!("--test-hooks is for test builds (feature `tap`) only");
            }
            let mut cfg = common.config();
            cfg.bind = bind;
            cfg.demo = demo;
            cfg.tls_cert = tls_cert;
            cfg.tls_key = tls_key;
            cfg.static_dir = static_dir;
            cfg.settings.idle_timeout_s = idle_timeout_s.max(60);
            cfg.settings.join_grace_s = join_grace_s.max(0);
            cfg.settings.activation_ttl_s = activation_ttl_h.clamp(1, 24 * 30) * 3600;
            cfg.settings.client_test_hooks = test_hooks;
            cfg.settings.trusted_proxies =
                confide_server::confide_signaling::http::client_addr::parse_trusted(
                    &trusted_proxies,
                )
                .map_err(|e| anyhow::anyhow!("--trusted-proxies: {e}"))?;
            cfg.settings.ws_unauth_per_addr = ws_unauth_per_addr.max(1);
            cfg.media = media.into_config();
            cfg.admin_bind = match admin_bind.as_str() {
                "off" | "" => None,
                a => Some(
                    a.parse()
                        .context("--admin-bind: an address like 127.0.0.1:9443")?,
                ),
            };
            let running = start(cfg).await?;
            println!("Confide listening on https://{}", running.addr);
            println!(
                "TLS certificate SHA-256 fingerprint: {}",
                running.fingerprint
            );
            if let Some(admin) = &running.admin {
                println!("Metrics on http://{}/metrics", admin.addr);
            }
            if let Some(demo) = &running.demo {
                // `--demo` is for a person trying the clinic: always show the QR codes.
                print_demo(demo, running.addr, true);
            }
            let handle = running.handle.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                handle.graceful_shutdown(Some(std::time::Duration::from_secs(5)));
            });
            running.wait().await
        }
        Cmd::Demo { common, json } => {
            let cfg = common.config();
            let (store, _, keyring) = open_store(&cfg).await?;
            let info = ops::seed_demo(store.as_ref(), &keyring, &cfg.settings.terms_version, now())
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                // QR codes only for a person at a terminal; never into the JSON.
                print_demo(&info, cfg.bind, std::io::stdout().is_terminal());
            }
            Ok(())
        }
        Cmd::Admin { common, cmd } => admin(common.config(), cmd).await,
        Cmd::Audit { common, cmd } => {
            match confide_server::audit_cmd::run(common.config(), cmd).await {
                Err(e) if e.is::<confide_server::witness::Rewritten>() => {
                    // A distinct status, so a supervisor or cron job can page on it.
                    eprintln!("Error: {e:#}");
                    std::process::exit(confide_server::witness::EXIT_REWRITTEN);
                }
                r => r,
            }
        }
    }
}

/// The demo's logins. With `qr`, each clinician's TOTP enrolment is also drawn as a QR
/// code to scan with an authenticator app (coloured when standard output is a terminal).
fn print_demo(info: &DemoInfo, addr: SocketAddr, qr: bool) {
    println!();
    println!("Demo clinic (demo credentials; never use them for real patients):");
    for a in &info.accounts {
        print!(
            "  {:<8} username {:<8} password {}",
            a.role.as_str(),
            a.username,
            a.password
        );
        if let Some(s) = &a.totp_secret {
            print!("  TOTP secret {s}");
        }
        println!();
    }
    println!(
        "  appointment {} starts now; open https://{addr}/ and log in.",
        info.appointment_id.0
    );
    println!("  The patient is asked for consent before the first consultation.");
    println!("  TOTP codes: add the otpauth URL to an authenticator, e.g.");
    for a in info.accounts.iter().filter(|a| a.otpauth_url.is_some()) {
        if let Some(u) = &a.otpauth_url {
            println!("    {u}");
        }
    }
    if qr {
        let ansi = std::io::stdout().is_terminal();
        for a in &info.accounts {
            let Some(url) = &a.otpauth_url else { continue };
            match confide_server::terminal_qr::render(url, ansi) {
                Ok(code) => {
                    println!();
                    println!(
                        "  {} ({}): scan with an authenticator app",
                        a.username,
                        a.role.as_str()
                    );
                    println!("{code}");
                }
                // The URL above still works; a code too long for a QR code is no reason
                // to stop the demo.
                Err(e) => eprintln!("no QR code for {}: {e}", a.username),
            }
        }
    }
    println!("  Machine-readable: confide demo --json");
}

async fn admin(cfg: Config, cmd: AdminCmd) -> anyhow::Result<()> {
    if let AdminCmd::GenMasterKey = cmd {
        println!("{}", MasterKey::generate(&mut OsRng).to_hex().as_str());
        return Ok(());
    }
    let (store, master, keyring) = open_store(&cfg).await?;
    let t = now();
    let cli_event = |action: AuditAction, target: String| {
        confide_server::confide_signaling::audit::AuditEvent::new(
            "cli",
            action,
            confide_server::confide_signaling::audit::Outcome::Success,
            t,
        )
        .role(Role::Admin)
        .target(target)
    };
    match cmd {
        AdminCmd::GenMasterKey => {}
        AdminCmd::CreateAccount {
            username,
            role,
            display_name,
            contact,
            origin,
            activation_ttl_h,
        } => {
            let ttl_s = activation_ttl_h.clamp(1, 24 * 30) * 3600;
            let password = std::env::var("CONFIDE_NEW_PASSWORD")
                .ok()
                .filter(|p| !p.is_empty());
            if let Some(p) = &password {
                let names = ["Confide", cfg.settings.issuer.as_str()];
                password::check(
                    p,
                    password::PasswordContext {
                        username: &username,
                        service_names: &names,
                        second_factor: role.requires_mfa(),
                    },
                )
                .map_err(|e| anyhow::anyhow!("CONFIDE_NEW_PASSWORD: {}", e.message()))?;
            }
            let activate = password.is_none();
            let spec = ops::AccountSpec {
                username,
                role,
                password,
                display_name,
                contact,
            };
            // The account, its link and their entries commit together, or none of it.
            let new = ops::prepare_account(&keyring, spec).await?;
            let mut tx = store.begin().await?;
            let id = tx.create_account(new).await?;
            let mut events = vec![cli_event(AuditAction::AccountCreated, id.to_string())];
            let link = if activate {
                let link = activation::new_link(
                    tx.as_mut(),
                    id,
                    ActivationPurpose::Activate,
                    None,
                    ttl_s,
                    t,
                )
                .await?;
                events.push(
                    cli_event(AuditAction::ActivationIssued, id.to_string())
                        .detail(ActivationPurpose::Activate.as_str()),
                );
                Some(link)
            } else {
                None
            };
            tx.record_audit(&events).await?;
            tx.commit().await?;
            match link {
                None => println!("created {id}; the user enrols TOTP at first login"),
                Some(link) => {
                    let origin = origin.unwrap_or_else(|| format!("https://{}", cfg.bind));
                    println!("created {id}; it waits for activation.");
                    println!(
                        "Give its owner this single-use link; it works for {} hours:",
                        ttl_s / 3600
                    );
                    println!("  {}{}", origin.trim_end_matches('/'), link.path());
                }
            }
        }
        AdminCmd::DisableAccount { username } => {
            let a = store
                .account_by_username(&username)
                .await?
                .context("no such account")?;
            store.set_account_disabled(a.id, true).await?;
            let n = store.revoke_account_sessions(a.id).await?;
            store
                .record_audit(cli_event(AuditAction::AccountDisabled, a.id.to_string()))
                .await?;
            println!("disabled {}; revoked {n} sessions", a.id);
        }
        AdminCmd::RotateMasterKey { new_key_file } => {
            let text = std::fs::read_to_string(&new_key_file).context("reading the new key")?;
            let new = MasterKey::parse(&text)?;
            let n = rotate_master_key(store.as_ref(), &master, &new, t).await?;
            store
                .record_audit(cli_event(AuditAction::KeyRotated, "master-key".into()))
                .await?;
            println!("re-wrapped {n} data keys; now point CONFIDE_MASTER_KEY_FILE at the new key");
        }
        AdminCmd::RotateDataKey => {
            let id = rotate_data_key(store.as_ref(), &master, t).await?;
            store
                .record_audit(cli_event(AuditAction::KeyRotated, format!("data-key:{id}")))
                .await?;
            println!("data key {id} is active; every sealed value was re-sealed");
        }
        AdminCmd::BenchAccounts { pairs, prefix } => {
            anyhow::ensure!((1..=10_000).contains(&pairs), "--pairs: 1 to 10000");
            let terms = &cfg.settings.terms_version;
            let staff = ops::create_bench_account(
                store.as_ref(),
                &keyring,
                format!("{prefix}-staff"),
                Role::Staff,
                terms,
            )
            .await
            .context("creating the staff account (is --prefix already used?)")?;
            let pairs = ops::create_bench_pairs(store.as_ref(), &keyring, &prefix, 0, pairs, terms)
                .await
                .context("creating the doctor/patient pairs")?;
            let ids = std::iter::once(staff.id)
                .chain(pairs.iter().flat_map(|p| [p.doctor.id, p.patient.id]));
            for id in ids {
                store
                    .record_audit(cli_event(
                        AuditAction::AccountCreated,
                        format!("account:{id}"),
                    ))
                    .await?;
            }
            let people = ops::BenchPeople { staff, pairs };
            println!("{}", serde_json::to_string_pretty(&people)?);
        }
        AdminCmd::Audit { limit, action } => {
            let action = match action {
                Some(a) => Some(AuditAction::parse(&a).context("unknown action")?),
                None => None,
            };
            let all = store
                .audit_events(AuditFilter {
                    action,
                    ..Default::default()
                })
                .await?;
            let skip = all.len().saturating_sub(limit.max(0) as usize);
            for r in &all[skip..] {
                println!("{}", serde_json::to_string(r)?);
            }
        }
    }
    Ok(())
}
