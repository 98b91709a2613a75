//! TLS for Coffer's HTTP hops: the server side of a listener (the gateway's, and a replica's
//! through `coffer serve`), and the client side of https upstreams.
//!
//! rustls with the ring provider everywhere, TLS 1.2 and 1.3. A listener offers h2 and
//! http/1.1 (ALPN); the gateway speaks HTTP/1.1 to its upstreams, plain or over TLS, through one
//! connector, so `http://` and `https://` upstreams can share a list.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use http::Uri;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::{GatewayConfig, bare_host};
use crate::health::AbortOnDrop;
use crate::pool::Pool;
use crate::server;

/// Why TLS could not be set up from the configured files.
#[derive(Debug, thiserror::Error)]
#[error("TLS: {0}")]
pub struct TlsError(String);

/// How the gateway connects to an upstream: TCP, then TLS for an `https://` one.
pub type Connector = HttpsConnector<HttpConnector>;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError(format!("cannot read the certificates in {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!("{} holds no certificate", path.display())));
    }
    Ok(certs)
}

/// A listener's certificate and key, read from their PEM files at start and again on
/// [`ServingCertificate::reload`], so that a renewed certificate is served without a restart.
/// Connections already open keep the certificate they shook hands with.
pub struct ServingCertificate {
    cert_path: PathBuf,
    key_path: PathBuf,
    acceptor: RwLock<TlsAcceptor>,
}

impl ServingCertificate {
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<Self>, TlsError> {
        let acceptor = RwLock::new(acceptor(cert_path, key_path)?);
        Ok(Arc::new(Self { cert_path: cert_path.to_owned(), key_path: key_path.to_owned(), acceptor }))
    }

    /// What the next handshake uses.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Reads the same files again. A pair that does not make a TLS server (a half-written
    /// renewal, a key that does not match) is refused and the current certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = acceptor(&self.cert_path, &self.key_path)?;
        *self.acceptor.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        tracing::info!(cert = %self.cert_path.display(), "TLS certificate reloaded");
        Ok(())
    }
}

/// Reads a PEM certificate chain and private key into an acceptor that offers HTTP/2 and
/// HTTP/1.1 (ALPN).
fn acceptor(cert_path: &Path, key_path: &Path) -> Result<TlsAcceptor, TlsError> {
    let certs = read_certificates(cert_path)?;
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| TlsError(format!("cannot read the private key {}: {e}", key_path.display())))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| TlsError(format!("the certificate and key do not make a TLS server: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The connector to the upstreams. An https upstream's certificate must chain to
/// `upstream_ca_path`'s authorities (else the system's roots) and name the upstream's host as
/// configured: for an address a name resolved to, the name (looked up in `pool` by the address
/// being dialled), not the address.
pub fn upstream_connector(config: &GatewayConfig, pool: Arc<Pool>) -> Result<Connector, TlsError> {
    let roots = match &config.upstream_ca_path {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certificates(path)? {
                roots
                    .add(cert)
                    .map_err(|e| TlsError(format!("{}: not a CA certificate: {e}", path.display())))?;
            }
            roots
        }
        None => system_roots(config)?,
    };
    let tls = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(format!("no TLS version to speak to upstreams: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_connect_timeout(Some(Duration::from_millis(config.connect_timeout_ms)));
    tcp.set_nodelay(true);
    let name_of = move |uri: &Uri| {
        let authority = uri.authority().ok_or("an upstream URI without host")?;
        let upstream = pool.list().into_iter().find(|u| u.url.dials(authority));
        let host = match &upstream {
            Some(upstream) => upstream.url.tls_name(),
            None => bare_host(authority),
        };
        ServerName::try_from(host.to_owned()).map_err(|e| format!("{host:?} is no TLS server name: {e}"))
    };
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .with_server_name_resolver(name_of)
        .enable_http1()
        .wrap_connector(tcp))
}

/// The system's trusted roots. A system without any is an error only when an https upstream is
/// configured at start; a list given later with one gets failed handshakes, logged.
fn system_roots(config: &GatewayConfig) -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 && config.upstreams.0.iter().any(|u| u.is_tls()) {
        return Err(TlsError(
            "an https upstream is configured, but the system has no trusted root certificates; \
             set gateway.upstream_ca_path"
                .to_owned(),
        ));
    }
    Ok(roots)
}

/// The TLS handshake of a client connection, within `timeout`; `None` (logged) when it fails
/// or takes longer.
pub async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    timeout: Duration,
) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(err)) => {
            tracing::debug!(%peer, error = %err, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// A TCP listener whose connections arrive with their TLS handshake done, for `axum::serve`.
/// Handshakes run on tasks of their own, each within `handshake_timeout`, so a client that
/// stalls its handshake holds up nobody else's connection.
pub struct TlsListener {
    local_addr: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    _accepting: AbortOnDrop,
}

impl TlsListener {
    pub fn new(
        tcp: TcpListener,
        certificate: Arc<ServingCertificate>,
        handshake_timeout: Duration,
    ) -> std::io::Result<Self> {
        let local_addr = tcp.local_addr()?;
        let (done, ready) = mpsc::channel(64);
        let accepting = AbortOnDrop::spawn(async move {
            loop {
                let (stream, peer) = server::accept(&tcp).await;
                let (acceptor, done) = (certificate.acceptor(), done.clone());
                tokio::spawn(async move {
                    if let Some(stream) = handshake(&acceptor, stream, peer, handshake_timeout).await {
                        let _ = done.send((stream, peer)).await;
                    }
                });
            }
        });
        Ok(Self { local_addr, ready, _accepting: accepting })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accepting task lives as long as the listener: it never closes the channel.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}
