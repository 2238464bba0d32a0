//! Signaling as a browser does it: REST over HTTPS (login with TOTP, appointments) and
//! the `/ws` WebSocket over TLS with the typed messages of `confide_proto`.
//!
//! This is the async edge of the client (tokio, rustls); the media session stays
//! sans-IO in [`crate::media`] and is driven by [`crate::driver`].

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use confide_proto::{ClientMsg, PROTOCOL_VERSION, ServerMsg};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// HTTP methods for [`Endpoint::request`].
pub use reqwest::Method;

/// Errors of the signaling edge. Messages never include tokens, passwords or keys.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignalingError {
    /// TCP, TLS or HTTP failed.
    #[error("transport: {0}")]
    Transport(String),
    /// The server answered with an error status (`code` from its error body).
    #[error("server refused ({status}): {code}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The `error.code` of the body, or the body's start.
        code: String,
    },
    /// The server sent something we could not parse.
    #[error("unexpected reply: {0}")]
    Protocol(String),
    /// A WebSocket `error` frame.
    #[error("server error {0}")]
    Server(String),
    /// The WebSocket closed.
    #[error("connection closed")]
    Closed,
    /// Nothing arrived in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// Bad input from the caller (an invalid TOTP secret, a bad URL).
    #[error("invalid input: {0}")]
    Invalid(&'static str),
}

fn transport(e: impl std::fmt::Display) -> SignalingError {
    SignalingError::Transport(e.to_string())
}

/// How many times [`Endpoint::login`] comes back after a `429` with `Retry-After`.
const LOGIN_RETRIES: u32 = 5;
/// Longest `Retry-After` it waits for; a longer one is returned as the error.
const MAX_LOGIN_WAIT_S: u64 = 10;

/// Where the server is and how to trust it.
#[derive(Clone)]
pub struct Endpoint {
    host: String,
    addr: SocketAddr,
    source: Option<IpAddr>,
    tls: Arc<rustls::ClientConfig>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("host", &self.host)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// A server at `addr`, reached by the name `host` (for SNI and the certificate).
    /// With `pinned_cert_der`, only that certificate is trusted (a self-signed
    /// development server); without, the system's web PKI roots.
    pub fn new(
        host: &str,
        addr: SocketAddr,
        pinned_cert_der: Option<&[u8]>,
    ) -> Result<Self, SignalingError> {
        Self::with_source(host, addr, pinned_cert_der, None)
    }

    /// Like [`Endpoint::new`], connecting from `source` (a local address; the load
    /// harness gives each simulated person its own loopback address, as real people
    /// have their own, so per-address login limits apply per person).
    pub fn with_source(
        host: &str,
        addr: SocketAddr,
        pinned_cert_der: Option<&[u8]>,
        source: Option<IpAddr>,
    ) -> Result<Self, SignalingError> {
        let mut roots = rustls::RootCertStore::empty();
        let mut http = reqwest::Client::builder()
            .resolve(host, addr)
            .local_address(source)
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(4);
        if let Some(der) = pinned_cert_der {
            roots
                .add(rustls::pki_types::CertificateDer::from(der.to_vec()))
                .map_err(transport)?;
            http = http
                .add_root_certificate(reqwest::Certificate::from_der(der).map_err(transport)?)
                .tls_built_in_root_certs(false);
        } else {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(transport)?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Endpoint {
            host: host.to_string(),
            addr,
            source,
            tls: Arc::new(tls),
            http: http.build().map_err(transport)?,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}:{}{}", self.host, self.addr.port(), path)
    }

    /// One JSON request; returns the body (or `null` for an empty one).
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Value, SignalingError> {
        self.request_with_retry_after(method, path, token, body)
            .await
            .map_err(|(e, _)| e)
    }

    /// [`Endpoint::request`], with the `Retry-After` seconds of a refusal.
    async fn request_with_retry_after(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Value, (SignalingError, Option<u64>)> {
        let transport = |e| (transport(e), None);
        let mut r = self.http.request(method, self.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(b);
        }
        let resp = r.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let text = resp.text().await.map_err(transport)?;
        let v: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if !(200..300).contains(&status) {
            let code = v["error"]["code"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("{v:.64}"));
            return Err((SignalingError::Refused { status, code }, retry_after));
        }
        Ok(v)
    }

    /// `POST /api/login` with the password and, when the account has one, a TOTP code
    /// computed from `totp_secret_b32` for the current time. Returns the session token.
    /// A `429` with `Retry-After` (the server sheds logins beyond what it can hash at
    /// once) is waited out and retried a few times.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        totp_secret_b32: Option<&str>,
    ) -> Result<String, SignalingError> {
        let mut body = json!({"username": username, "password": password});
        let mut attempts = 0;
        let v = loop {
            if let Some(s) = totp_secret_b32 {
                body["totp"] = json!(totp_now(s)?);
            }
            match self
                .request_with_retry_after(reqwest::Method::POST, "/api/login", None, Some(&body))
                .await
            {
                Ok(v) => break v,
                // The server is busy hashing passwords (or throttling): it says when to
                // come back. A shed login was never checked, so its code is unused.
                Err((SignalingError::Refused { status: 429, .. }, Some(wait)))
                    if attempts < LOGIN_RETRIES =>
                {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_secs(wait.clamp(1, MAX_LOGIN_WAIT_S))).await;
                }
                Err((e, _)) => return Err(e),
            }
        };
        v["token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| SignalingError::Protocol("login without a token".into()))
    }

    /// Opens `/ws`, says `hello` with `token` and waits for `welcome`.
    pub async fn connect(&self, token: &str) -> Result<Signaling, SignalingError> {
        let socket = if self.addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .map_err(transport)?;
        if let Some(ip) = self.source {
            socket.bind(SocketAddr::new(ip, 0)).map_err(transport)?;
        }
        let tcp = socket.connect(self.addr).await.map_err(transport)?;
        let _ = tcp.set_nodelay(true);
        let url = format!("wss://{}:{}/ws", self.host, self.addr.port());
        let (stream, _) = tokio_tungstenite::client_async_tls_with_config(
            url,
            tcp,
            None,
            Some(tokio_tungstenite::Connector::Rustls(self.tls.clone())),
        )
        .await
        .map_err(transport)?;
        let mut s = Signaling { stream };
        s.send(&ClientMsg::Hello {
            version: PROTOCOL_VERSION,
            token: token.to_string(),
        })
        .await?;
        match s.recv_timeout(Duration::from_secs(10), "welcome").await? {
            ServerMsg::Welcome { .. } => Ok(s),
            ServerMsg::Error { code, .. } => Err(SignalingError::Server(code.as_str().into())),
            _ => Err(SignalingError::Protocol("expected welcome".into())),
        }
    }
}

/// The current TOTP code (RFC 6238, the server's parameters) for a base32 secret.
pub fn totp_now(secret_b32: &str) -> Result<String, SignalingError> {
    let secret = totp_rs::Secret::Encoded(secret_b32.to_string())
        .to_bytes()
        .map_err(|_| SignalingError::Invalid("TOTP secret"))?;
    // The server's parameters: SHA-1, 6 digits, 30 s steps (the RFC 6238 defaults that
    // authenticator apps use).
    let totp = totp_rs::TOTP::new_unchecked(totp_rs::Algorithm::SHA1, 6, 0, 30, secret);
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(totp.generate(secs))
}

/// One authenticated `/ws` connection.
pub struct Signaling {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl std::fmt::Debug for Signaling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signaling").finish_non_exhaustive()
    }
}

impl Signaling {
    /// Sends one message.
    pub async fn send(&mut self, msg: &ClientMsg) -> Result<(), SignalingError> {
        let text =
            serde_json::to_string(msg).map_err(|e| SignalingError::Protocol(e.to_string()))?;
        self.stream
            .send(Message::Text(text.into()))
            .await
            .map_err(transport)
    }

    /// The next server message; [`SignalingError::Closed`] when the server closed.
    /// Frames that do not parse are skipped (a newer server may add types).
    pub async fn recv(&mut self) -> Result<ServerMsg, SignalingError> {
        loop {
            match self.stream.next().await {
                Some(Ok(Message::Text(t))) => match serde_json::from_str::<ServerMsg>(t.as_str()) {
                    Ok(m) => return Ok(m),
                    Err(_) => {
                        tracing::debug!("skipping an unknown signaling frame");
                        continue;
                    }
                },
                Some(Ok(Message::Close(_))) | None => return Err(SignalingError::Closed),
                Some(Err(e)) => return Err(transport(e)),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// [`Signaling::recv`] with a deadline; `what` names the awaited message in errors.
    pub async fn recv_timeout(
        &mut self,
        limit: Duration,
        what: &'static str,
    ) -> Result<ServerMsg, SignalingError> {
        tokio::time::timeout(limit, self.recv())
            .await
            .map_err(|_| SignalingError::Timeout(what))?
    }

    /// Waits for the first message `pick` accepts, skipping others; an `error` frame
    /// fails the wait.
    pub async fn wait_for<T>(
        &mut self,
        limit: Duration,
        what: &'static str,
        mut pick: impl FnMut(&ServerMsg) -> Option<T>,
    ) -> Result<T, SignalingError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let m = self.recv_timeout(left, what).await?;
            if let Some(t) = pick(&m) {
                return Ok(t);
            }
            if let ServerMsg::Error { code, .. } = m {
                return Err(SignalingError::Server(code.as_str().into()));
            }
        }
    }

    /// Closes the connection politely.
    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }
}
