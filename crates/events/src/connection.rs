//! How a process reaches NATS: the servers, who it is, and TLS.
//!
//! One set of credentials per process. The shipped server configurations
//! (`deploy/nats/`) have a relay user, the only one that may publish events, and a worker user
//! that may read them and keep the dead letters; an operator runs the relay and the
//! worker (with the api) as separate processes, each with its own user. A process that runs
//! both roles needs a user allowed both.

use std::path::PathBuf;
use std::sync::Arc;

use async_nats::ConnectOptions;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::BusError;

/// A password that `Debug` does not show, so a configuration printed for a diagnosis does not
/// leak it.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Everything needed to open a NATS connection.
#[derive(Debug, Clone, Default)]
pub struct NatsConnection {
    /// `nats://host:4222`, or several comma-separated (a cluster; the client fails over).
    pub url: String,
    /// User name and password (`user` in the server's `accounts`); none: anonymous.
    pub user: Option<(String, Secret)>,
    /// Certificate authorities (PEM) the server's certificate must chain to. The server's name
    /// in the URL is checked against its certificate.
    pub tls_ca_path: Option<PathBuf>,
    /// A client certificate and its key (PEM), for a server that verifies clients (mutual TLS).
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// Refuse a server that does not offer TLS, rather than speak in the clear to it.
    pub require_tls: bool,
}

impl NatsConnection {
    /// Anonymous and without TLS settings: what a bare URL says.
    pub fn to(url: &str) -> Self {
        Self { url: url.to_owned(), ..Self::default() }
    }

    /// The client's options: TLS and the user (a caller may add its own, e.g. an event callback).
    pub fn options(&self) -> Result<ConnectOptions, BusError> {
        let mut options =
            ConnectOptions::new().require_tls(self.require_tls).tls_client_config(self.tls_config()?);
        if let Some((user, password)) = &self.user {
            options = options.user_and_password(user.clone(), password.expose().to_owned());
        }
        Ok(options)
    }

    /// The TLS settings for any server that offers TLS, made here with the ring provider:
    /// left to the client, they would need a process-wide default provider, which a binary
    /// with more than one linked in does not have.
    fn tls_config(&self) -> Result<ClientConfig, BusError> {
        let bad =
            |what: &str, e: &dyn std::fmt::Display| BusError::Unavailable(format!("NATS TLS: {what}: {e}"));
        let mut roots = RootCertStore::empty();
        match &self.tls_ca_path {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| bad(&format!("cannot read {}", path.display()), &e))?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(bad(&path.display().to_string(), &"holds no usable certificate"));
                }
            }
            None => {
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            }
        }
        let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("protocol versions", &e))?
            .with_root_certificates(roots);
        match &self.tls_client {
            Some((cert_path, key_path)) => {
                let certs = CertificateDer::pem_file_iter(cert_path)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| bad(&format!("cannot read {}", cert_path.display()), &e))?;
                let key = PrivateKeyDer::from_pem_file(key_path)
                    .map_err(|e| bad(&format!("cannot read {}", key_path.display()), &e))?;
                builder.with_client_auth_cert(certs, key).map_err(|e| bad("client certificate", &e))
            }
            None => Ok(builder.with_no_client_auth()),
        }
    }

    /// Connects. The error names the servers' hosts and ports, never the URL's user or
    /// password: a URL may hold credentials.
    pub async fn connect(&self) -> Result<async_nats::Client, BusError> {
        let servers: Vec<&str> = self.url.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
        let at = servers.iter().map(|server| host_and_port(server)).collect::<Vec<_>>().join(",");
        self.options()?.connect(servers).await.map_err(|e| {
            let mut said = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(inner) = cause {
                let inner_said = inner.to_string();
                if !said.contains(&inner_said) {
                    said = format!("{said}: {inner_said}");
                }
                cause = inner.source();
            }
            BusError::Unavailable(format!("cannot connect to NATS at {at}: {said}"))
        })
    }
}

/// `host:port` of a NATS server URL (`nats://user:password@host:4222`), without its scheme and
/// credentials; the port is NATS's default when the URL names none.
fn host_and_port(server: &str) -> String {
    let rest = server.split_once("://").map_or(server, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let has_port = match authority.rsplit_once(':') {
        // An IPv6 literal without a port ends in `]`.
        Some((_, port)) => !port.ends_with(']') && !authority.ends_with(']'),
        None => false,
    };
    match has_port {
        true => authority.to_owned(),
        false => format!("{authority}:4222"),
    }
}

#[cfg(test)]
mod address_tests {
    use super::host_and_port;

    #[test]
    fn server_addresses_are_shown_without_credentials() {
        assert_eq!(host_and_port("nats://relay:s3cret@10.0.0.1:4222"), "10.0.0.1:4222");
        assert_eq!(host_and_port("tls://nats.example"), "nats.example:4222");
        assert_eq!(host_and_port("127.0.0.1:4999"), "127.0.0.1:4999");
        assert_eq!(host_and_port("nats://[::1]"), "[::1]:4222");
        assert_eq!(host_and_port("nats://[::1]:5000"), "[::1]:5000");
    }
}
