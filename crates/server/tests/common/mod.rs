//! Test harness: a real server on 127.0.0.1:0 with TLS, REST and WSS clients that
//! trust its self-signed certificate, and direct access to the audit log.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use confide_audit::store::{AuditStore, Backend, sqlx};
use confide_audit::{AuditEntry, AuditEvent, Outcome, Priority, Timestamp};
use confide_server::confide_signaling::audit::{AuditAction, AuditFilter, AuditRecord};
use confide_server::confide_signaling::auth::{TotpSecret, hash_token};
use confide_server::confide_signaling::http::now;
use confide_server::confide_signaling::mls_frame::synth;
use confide_server::confide_signaling::model::{AccountId, AppointmentId, Role};
use confide_server::confide_signaling::ops::{self, DemoInfo};
use confide_server::confide_signaling::proto::encode_b64;
use confide_server::confide_signaling::store::Store;
use confide_server::{Config, Running, start};
use futures_util::{SinkExt, StreamExt};
use rand::RngCore as _;
use rand::rngs::OsRng;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub struct TestServer {
    pub running: Running,
    pub demo: DemoInfo,
    pub http: reqwest::Client,
    pub data_dir: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

pub async fn server() -> TestServer {
    server_with(|_| {}).await
}

pub async fn server_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::new(dir.path().join("data"));
    cfg.bind = "127.0.0.1:0".parse().unwrap();
    cfg.demo = true;
    cfg.static_dir = Some(dir.path().join("no-static"));
    // These tests drive signaling with made-up SDP, which only the peer-to-peer relay
    // passes through; the SFU path has its own tests.
    cfg.media.mode = confide_server::media::MediaMode::P2p;
    tweak(&mut cfg);
    let running = start(cfg).await.unwrap();
    let demo = running.demo.clone().unwrap();
    // The demo patient starts without consent (the browser demo shows that step); these
    // tests join as a patient who has given it.
    ops::consent_demo_patient(running.state.store.as_ref(), &demo, now())
        .await
        .unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_der(&running.cert_der).unwrap())
        .tls_built_in_root_certs(false)
        .resolve("localhost", running.addr)
        .build()
        .unwrap();
    TestServer {
        running,
        demo,
        http,
        data_dir: dir.path().join("data"),
        _dir: dir,
    }
}

pub fn code(secret_b32: &str) -> String {
    TotpSecret::from_base32(secret_b32)
        .unwrap()
        .code_at(now().secs())
}

/// The code of the TOTP step before the current one: still accepted, and it leaves the
/// current step free for the next use (a login, a re-authentication), so a test need
/// not wait 30 s between two.
pub fn previous_code(secret_b32: &str) -> String {
    TotpSecret::from_base32(secret_b32)
        .unwrap()
        .code_at(now().secs() - 30)
}

pub struct Resp {
    pub status: u16,
    pub body: Value,
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{}", self.running.addr.port(), path)
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.running.state.store
    }

    pub async fn req(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut r = self.http.request(m, self.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Resp { status, body }
    }

    pub fn demo_account(&self, role: Role) -> (String, String, Option<String>) {
        let a = self.demo.account(role).unwrap();
        (
            a.username.clone(),
            a.password.clone(),
            a.totp_secret.clone(),
        )
    }

    /// Log a demo account in (with a TOTP code when it has a secret).
    pub async fn login_demo(&self, role: Role) -> String {
        let (u, p, s) = self.demo_account(role);
        self.login(&u, &p, s.as_deref()).await
    }

    /// [`Self::login_demo`] of a clinician with the previous step's code, keeping the
    /// current one unused for what the test does next.
    pub async fn login_demo_with_previous_code(&self, role: Role) -> String {
        let (u, p, s) = self.demo_account(role);
        let prev = previous_code(s.as_deref().expect("a clinician has a second factor"));
        let r = self
            .req(
                "POST",
                "/api/login",
                None,
                Some(json!({"username": u, "password": p, "totp": prev})),
            )
            .await;
        assert_eq!(r.status, 200, "login {u}: {:?}", r.body);
        r.body["token"].as_str().unwrap().to_string()
    }

    pub async fn login(&self, username: &str, password: &str, totp_secret: Option<&str>) -> String {
        let mut body = json!({"username": username, "password": password});
        if let Some(s) = totp_secret {
            body["totp"] = json!(code(s));
        }
        let r = self.req("POST", "/api/login", None, Some(body)).await;
        assert_eq!(r.status, 200, "login {username}: {:?}", r.body);
        r.body["token"].as_str().unwrap().to_string()
    }

    /// Create an extra account with the given role (TOTP enabled for clinicians);
    /// returns (id, password, TOTP secret).
    pub async fn add_account(
        &self,
        username: &str,
        role: Role,
    ) -> (AccountId, String, Option<String>) {
        let password = format!("{username}-password");
        let id = ops::create_account(
            self.store().as_ref(),
            &self.running.state.keyring,
            ops::AccountSpec {
                username: username.into(),
                role,
                password: Some(password.clone()),
                display_name: format!("Test {username}"),
                contact: None,
            },
        )
        .await
        .unwrap();
        let secret = if role.requires_mfa() {
            let s = TotpSecret::generate(&mut OsRng);
            ops::enable_totp_directly(self.store().as_ref(), &self.running.state.keyring, id, &s)
                .await
                .unwrap();
            Some(s.base32())
        } else {
            None
        };
        if role == Role::Patient {
            self.store()
                .record_consent(&id.to_string(), &self.demo.terms_version, now())
                .await
                .unwrap();
        }
        (id, password, secret)
    }

    pub async fn audit(&self, action: AuditAction) -> Vec<AuditRecord> {
        self.store()
            .audit_events(AuditFilter {
                action: Some(action),
                ..Default::default()
            })
            .await
            .unwrap()
    }

    pub async fn all_audit(&self) -> Vec<AuditRecord> {
        self.store()
            .audit_events(AuditFilter::default())
            .await
            .unwrap()
    }

    /// Audit events of `action`, waiting up to 2 s for at least one: a WebSocket peer
    /// can see the effect of an action a moment before its event is written.
    pub async fn audit_eventually(&self, action: AuditAction) -> Vec<AuditRecord> {
        for _ in 0..40 {
            let all = self.audit(action).await;
            if !all.is_empty() {
                return all;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Vec::new()
    }

    /// Assert that an audit event with `action`, `actor` and `detail` exists (waiting
    /// up to 2 s for it).
    pub async fn expect_audit(
        &self,
        action: AuditAction,
        actor: &str,
        detail: Option<&str>,
    ) -> AuditRecord {
        let matches = |r: &AuditRecord| {
            r.event.actor == actor && (detail.is_none() || r.event.detail.as_deref() == detail)
        };
        let mut all = Vec::new();
        for _ in 0..40 {
            all = self.audit(action).await;
            if let Some(r) = all.iter().find(|r| matches(r)) {
                return r.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no {action:?} by {actor} with {detail:?}; have {all:#?}")
    }

    pub fn appointment(&self) -> AppointmentId {
        self.demo.appointment_id
    }

    /// The principal text (`account:N`) of a demo account.
    pub fn principal(&self, role: Role) -> String {
        self.demo.account(role).unwrap().id.to_string()
    }

    /// A guest of the demo appointment: the doctor invites, the guest redeems.
    /// Returns (guest token, principal `guest:N`).
    pub async fn guest(&self, doctor_token: &str) -> (String, String) {
        let r = self
            .req(
                "POST",
                &format!("/api/appointments/{}/invites", self.appointment().0),
                Some(doctor_token),
                Some(json!({"label": "Guest"})),
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        let invite = r.body["invite_token"].as_str().unwrap().to_owned();
        let r = self
            .req(
                "POST",
                "/api/invites/redeem",
                None,
                Some(json!({"invite_token": invite, "accept_terms_version": self.demo.terms_version})),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let token = r.body["token"].as_str().unwrap().to_owned();
        let me = self
            .store()
            .session(&hash_token(&token))
            .await
            .unwrap()
            .unwrap();
        (token, me.principal.to_string())
    }

    /// Register a fresh device (random id and key) for `token`'s principal.
    pub async fn new_device(&self, token: &str) -> Device {
        let d = Device::random();
        let r = self.register(token, &d).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        d
    }

    pub async fn register(&self, token: &str, d: &Device) -> Resp {
        self.req(
            "PUT",
            &format!("/api/devices/{}", d.id),
            Some(token),
            Some(json!({"signature_key": d.key_b64()})),
        )
        .await
    }

    /// Upload `n` one-time KeyPackages (and a last-resort one if asked); returns them.
    pub async fn upload_key_packages(
        &self,
        token: &str,
        d: &Device,
        n: usize,
        last_resort: bool,
    ) -> (Vec<String>, Option<String>) {
        let kps: Vec<String> = (0..n).map(|_| key_package()).collect();
        let lr = last_resort.then(key_package);
        let mut body = json!({"key_packages": kps});
        if let Some(l) = &lr {
            body["last_resort"] = json!(l);
        }
        let r = self
            .req(
                "POST",
                &format!("/api/devices/{}/key_packages", d.id),
                Some(token),
                Some(body),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        (kps, lr)
    }

    /// Sign a checkpoint now, as `confide audit checkpoint` does.
    pub async fn sign_checkpoint(&self) {
        let cfg = confide_server::Config::new(self.data_dir.clone());
        confide_server::audit_cmd::run(cfg, confide_server::audit_cmd::AuditCmd::Checkpoint)
            .await
            .unwrap();
    }

    pub async fn ws(&self) -> Ws {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(
                self.running.cert_der.clone(),
            ))
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = TcpStream::connect(self.running.addr).await.unwrap();
        let url = format!("wss://localhost:{}/ws", self.running.addr.port());
        let (stream, _) = tokio_tungstenite::client_async_tls_with_config(
            url,
            tcp,
            None,
            Some(tokio_tungstenite::Connector::Rustls(Arc::new(config))),
        )
        .await
        .unwrap();
        Ws { stream }
    }

    /// A WebSocket that said hello with `token` and got `welcome`.
    pub async fn ws_authed(&self, token: &str) -> Ws {
        let mut ws = self.ws().await;
        ws.send(json!({"type": "hello", "version": 1, "token": token}))
            .await;
        let w = ws.recv().await;
        assert_eq!(w["type"], "welcome", "{w}");
        ws
    }
}

/// A device as the key directory knows it: a 32-hex id and a (made-up) Ed25519 key.
#[derive(Clone, Debug)]
pub struct Device {
    pub id: String,
    pub key: [u8; 32],
}

impl Device {
    pub fn random() -> Self {
        let mut id = [0u8; 16];
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut id);
        OsRng.fill_bytes(&mut key);
        Device {
            id: hex::encode(id),
            key,
        }
    }

    pub fn key_b64(&self) -> String {
        encode_b64(&self.key)
    }
}

/// A KeyPackage as far as the server looks: the MLS framing, then random bytes.
pub fn key_package() -> String {
    let mut rest = [0u8; 64];
    OsRng.fill_bytes(&mut rest);
    encode_b64(&synth::key_package(&rest))
}

pub struct Ws {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Ws {
    pub async fn send(&mut self, v: Value) {
        self.stream
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn send_raw(&mut self, s: String) {
        self.stream.send(Message::Text(s.into())).await.unwrap();
    }

    /// Next JSON frame (5 s timeout); `{"type":"closed"}` when the server closed.
    pub async fn recv(&mut self) -> Value {
        loop {
            let next = tokio::time::timeout(Duration::from_secs(5), self.stream.next())
                .await
                .expect("timed out waiting for a frame");
            match next {
                Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    return json!({"type": "closed"});
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Skip frames until one of `ty` arrives.
    pub async fn recv_type(&mut self, ty: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == ty {
                return v;
            }
            assert_ne!(v["type"], "closed", "closed while waiting for {ty}");
        }
    }

    /// Expect the next frame to be `error` with `code`.
    pub async fn expect_error(&mut self, code: &str) -> Value {
        let v = self.recv().await;
        assert_eq!(v["type"], "error", "expected error {code}, got {v}");
        assert_eq!(v["code"], code, "{v}");
        v
    }

    pub async fn join(&mut self, appt: AppointmentId) {
        self.send(json!({"type": "join", "consultation": appt.0}))
            .await;
    }
}

/// Inserts, outside the log, a row at the head's size with a correctly computed leaf
/// hash: no key is needed for that.
pub async fn forge_row_past_the_head(db_url: &str) -> u64 {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(db_url).await.unwrap();
    let size = AuditStore::attach(pool.clone(), Backend::Sqlite)
        .size()
        .await
        .unwrap();
    let entry = AuditEntry::new(
        size,
        Timestamp::from_unix_millis(1_800_000_000_000).unwrap(),
        AuditEvent {
            actor: "account:1".into(),
            role: None,
            action: "login_ok".into(),
            target: None,
            patient: None,
            outcome: Outcome::Success,
            source: None,
            request_id: None,
            priority: Priority::Normal,
            detail: None,
        },
    );
    sqlx::query(
        "INSERT INTO audit_log (seq, at, actor, role, action, target, patient, outcome, \
         source, request_id, priority, detail, leaf_hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(size as i64)
    .bind(entry.time().unix_millis())
    .bind(entry.actor())
    .bind(entry.role())
    .bind(entry.action())
    .bind(entry.target())
    .bind(entry.patient())
    .bind(entry.outcome().as_str())
    .bind(entry.source())
    .bind(entry.request_id())
    .bind(entry.priority().as_str())
    .bind(entry.detail())
    .bind(entry.leaf_hash().to_hex())
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    size
}
