//! A malicious server, as the tests play it: a TLS man-in-the-middle between one
//! client and the real `confide` server. It forwards every REST call and `/ws` frame,
//! lets a [`Tamper`] rewrite answers and frames on the way, and can inject frames into
//! the client's WebSocket. Media does not pass through it: the SDP it forwards names
//! the real SFU.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::ws::{Message as AxMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use confide_client::Endpoint;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as TMessage;

/// What the malicious server changes. Every method gets what the real server (or the
/// client) sent and returns what goes on instead.
pub trait Tamper: Send + Sync + 'static {
    /// A REST answer on its way to the client (`path` with its query).
    fn rest(&self, _method: &str, _path: &str, status: u16, body: Vec<u8>) -> (u16, Vec<u8>) {
        (status, body)
    }
    /// A `/ws` frame from the server to the client.
    fn to_client(&self, frame: String) -> Vec<String> {
        vec![frame]
    }
    /// A `/ws` frame from the client to the server.
    fn to_server(&self, frame: String) -> Vec<String> {
        vec![frame]
    }
}

/// Forwards everything unchanged.
pub struct Honest;
impl Tamper for Honest {}

struct ProxyState {
    upstream: SocketAddr,
    http: reqwest::Client,
    tls: Arc<rustls::ClientConfig>,
    tamper: Arc<dyn Tamper>,
    clients: Mutex<Vec<mpsc::UnboundedSender<String>>>,
}

/// A running proxy.
pub struct Proxy {
    pub addr: SocketAddr,
    pub cert_der: Vec<u8>,
    state: Arc<ProxyState>,
    handle: axum_server::Handle,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

impl Proxy {
    /// A proxy in front of the server at `upstream` (certificate `server_cert`).
    pub async fn start(upstream: SocketAddr, server_cert: &[u8], tamper: Arc<dyn Tamper>) -> Proxy {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert_der = ck.cert.der().to_vec();
        let key = rustls::pki_types::PrivateKeyDer::try_from(ck.key_pair.serialize_der()).unwrap();
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert_der.clone().into()], key)
            .unwrap();
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut roots = rustls::RootCertStore::empty();
        roots.add(server_cert.to_vec().into()).unwrap();
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_der(server_cert).unwrap())
            .tls_built_in_root_certs(false)
            .resolve("localhost", upstream)
            .build()
            .unwrap();
        let state = Arc::new(ProxyState {
            upstream,
            http,
            tls: Arc::new(tls),
            tamper,
            clients: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .route("/ws", get(ws))
            .fallback(rest)
            .with_state(state.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = axum_server::Handle::new();
        let server = axum_server::from_tcp_rustls(
            listener,
            axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(server)),
        )
        .handle(handle.clone());
        tokio::spawn(async move { server.serve(app.into_make_service()).await });
        Proxy {
            addr,
            cert_der,
            state,
            handle,
        }
    }

    /// An endpoint that reaches the server through this proxy.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::new("localhost", self.addr, Some(&self.cert_der)).unwrap()
    }

    /// Sends `frame` to every client connected through this proxy, as if the server had.
    pub fn inject(&self, frame: serde_json::Value) {
        let text = frame.to_string();
        for c in self.state.clients.lock().unwrap().iter() {
            let _ = c.send(text.clone());
        }
    }
}

async fn rest(State(st): State<Arc<ProxyState>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let headers: HeaderMap = req.headers().clone();
    let body: Bytes = match axum::body::to_bytes(req.into_body(), 1 << 20).await {
        Ok(b) => b,
        Err(_) => return StatusCode::PAYLOAD_TOO_LARGE.into_response(),
    };
    let url = format!("https://localhost:{}{path}", st.upstream.port());
    let m = reqwest::Method::from_bytes(method.as_str().as_bytes()).unwrap();
    let mut r = st.http.request(m, url).body(body.to_vec());
    for h in ["authorization", "content-type"] {
        if let Some(v) = headers.get(h) {
            r = r.header(h, v.as_bytes());
        }
    }
    let (status, ctype, body) = match r.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let ctype = resp
                .headers()
                .get("content-type")
                .map(|v| v.as_bytes().to_vec());
            (
                status,
                ctype,
                resp.bytes().await.unwrap_or_default().to_vec(),
            )
        }
        Err(_) => (502, None, Vec::new()),
    };
    let (status, body) = st.tamper.rest(method.as_str(), &path, status, body);
    let mut resp = (StatusCode::from_u16(status).unwrap(), body).into_response();
    if let Some(c) = ctype {
        resp.headers_mut()
            .insert("content-type", c.try_into().unwrap());
    }
    resp
}

async fn ws(State(st): State<Arc<ProxyState>>, up: WebSocketUpgrade) -> Response {
    up.on_upgrade(move |socket| pump(st, socket))
}

async fn pump(st: Arc<ProxyState>, client: WebSocket) {
    let tcp = match tokio::net::TcpStream::connect(st.upstream).await {
        Ok(t) => t,
        Err(_) => return,
    };
    let url = format!("wss://localhost:{}/ws", st.upstream.port());
    let Ok((server, _)) = tokio_tungstenite::client_async_tls_with_config(
        url,
        tcp,
        None,
        Some(tokio_tungstenite::Connector::Rustls(st.tls.clone())),
    )
    .await
    else {
        return;
    };
    let (inject_tx, mut inject_rx) = mpsc::unbounded_channel::<String>();
    st.clients.lock().unwrap().push(inject_tx);
    let (mut c_tx, mut c_rx) = client.split();
    let (mut s_tx, mut s_rx) = server.split();
    loop {
        tokio::select! {
            m = c_rx.next() => match m {
                Some(Ok(AxMessage::Text(t))) => {
                    for f in st.tamper.to_server(t.as_str().to_string()) {
                        if s_tx.send(TMessage::Text(f.into())).await.is_err() {
                            return;
                        }
                    }
                }
                Some(Ok(AxMessage::Close(_))) | None | Some(Err(_)) => {
                    let _ = s_tx.close().await;
                    return;
                }
                Some(Ok(_)) => {}
            },
            m = s_rx.next() => match m {
                Some(Ok(TMessage::Text(t))) => {
                    for f in st.tamper.to_client(t.as_str().to_string()) {
                        if c_tx.send(AxMessage::Text(f.into())).await.is_err() {
                            return;
                        }
                    }
                }
                Some(Ok(TMessage::Close(_))) | None | Some(Err(_)) => {
                    let _ = c_tx.close().await;
                    return;
                }
                Some(Ok(_)) => {}
            },
            Some(f) = inject_rx.recv() => {
                if c_tx.send(AxMessage::Text(f.into())).await.is_err() {
                    return;
                }
            }
        }
    }
}
