//! TLS: the configured certificate, or a self-signed one made on first start.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use axum_server::tls_rustls::RustlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::Config;

pub struct Tls {
    pub config: RustlsConfig,
    pub cert_der: Vec<u8>,
    pub fingerprint: String,
}

pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn load_or_create(cfg: &Config) -> anyhow::Result<Tls> {
    let (cert_path, key_path) = match (&cfg.tls_cert, &cfg.tls_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        (None, None) => {
            let dir = cfg.data_dir.join("tls");
            let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
            if !c.exists() || !k.exists() {
                make_self_signed(&c, &k)?;
            }
            (c, k)
        }
        _ => anyhow::bail!("give both --tls-cert and --tls-key, or neither"),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .with_context(|| format!("reading {}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .context("parsing the certificate")?;
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .with_context(|| format!("reading {}", key_path.display()))?;
    let first = certs
        .first()
        .context("no certificate in the file")?
        .to_vec();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("certificate and key do not match")?;
    // HTTP/1.1 only: WebSocket upgrades over HTTP/2 need extended CONNECT, which
    // not every client speaks.
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Tls {
        config: RustlsConfig::from_config(Arc::new(server)),
        fingerprint: fingerprint(&first),
        cert_der: first,
    })
}

fn make_self_signed(cert: &PathBuf, key: &PathBuf) -> anyhow::Result<()> {
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let ck =
        rcgen::generate_simple_self_signed(names).context("making a self-signed certificate")?;
    let _ = std::fs::remove_file(key);
    crate::write_private(key, ck.key_pair.serialize_pem().as_bytes())?;
    std::fs::write(cert, ck.cert.pem())?;
    tracing::info!(path = %cert.display(), "created a self-signed certificate");
    Ok(())
}
