//! TLS to PostgreSQL, asked for in the database URL as libpq asks for it: `sslmode` and
//! `sslrootcert`. tokio-postgres knows neither `verify-ca`/`verify-full` nor `sslrootcert`, so
//! they are taken out of the URL here and turn into the rustls connector the pool uses:
//!
//! | `sslmode` | the connection |
//! |---|---|
//! | absent, `disable` | plain, as before TLS was supported |
//! | `prefer` | TLS when the server offers it, unverified; plain otherwise |
//! | `require` | TLS, the certificate unverified (it stops eavesdroppers, not impostors) — unless `sslrootcert` is given, then as `verify-ca`, as libpq does |
//! | `verify-ca` | TLS, the certificate signed by `sslrootcert` |
//! | `verify-full` | TLS, signed by `sslrootcert` and naming the host connected to |
//!
//! `sslrootcert` is a PEM file of authorities, or `system` for the system's trusted roots (the
//! default of the verifying modes). rustls with the ring provider, as everywhere in Coffer.

use std::sync::Arc;

use percent_encoding::percent_decode_str;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_postgres::config::SslMode;

use crate::{StoreError, StoreResult};

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verify {
    Nothing,
    Chain,
    ChainAndName,
}

/// What the URL asks for: the URL tokio-postgres parses (without our keys), the mode it is
/// given, and the connector, if any.
pub struct Tls {
    pub url: String,
    pub mode: Option<SslMode>,
    pub connector: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

fn invalid(why: String) -> StoreError {
    StoreError::unavailable(format!("invalid database URL: {why}"))
}

/// Takes `sslmode` and `sslrootcert` out of `url` and makes the connector they ask for.
pub fn from_url(url: &str) -> StoreResult<Tls> {
    let (url, sslmode, root) = take_tls_keys(url)?;
    let (mode, verify) = match (sslmode.as_deref(), root.is_some()) {
        // tokio-postgres's own default (prefer) without a connector: plain, as before.
        (None, _) => return Ok(Tls { url, mode: None, connector: None }),
        (Some("disable"), _) => return Ok(Tls { url, mode: Some(SslMode::Disable), connector: None }),
        (Some("prefer"), _) => (SslMode::Prefer, Verify::Nothing),
        (Some("require"), false) => (SslMode::Require, Verify::Nothing),
        (Some("require" | "verify-ca"), _) => (SslMode::Require, Verify::Chain),
        (Some("verify-full"), _) => (SslMode::Require, Verify::ChainAndName),
        (Some(other), _) => {
            return Err(invalid(format!(
                "sslmode {other:?} is none of disable, prefer, require, verify-ca, verify-full"
            )));
        }
    };
    let config = client_config(verify, root.as_deref())?;
    Ok(Tls { url, mode: Some(mode), connector: Some(tokio_postgres_rustls::MakeRustlsConnect::new(config)) })
}

/// The URL without `sslmode` and `sslrootcert`, and their (percent-decoded) values.
fn take_tls_keys(url: &str) -> StoreResult<(String, Option<String>, Option<String>)> {
    let Some((base, query)) = url.split_once('?') else { return Ok((url.to_owned(), None, None)) };
    let (mut sslmode, mut root, mut kept) = (None, None, Vec::new());
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decoded = || {
            percent_decode_str(value)
                .decode_utf8()
                .map(|v| v.into_owned())
                .map_err(|_| invalid(format!("{key} is not UTF-8")))
        };
        match key {
            "sslmode" => sslmode = Some(decoded()?),
            "sslrootcert" => root = Some(decoded()?),
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
    Ok((url, sslmode, root))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The authorities in `root` (a PEM file), or the system's for `system` and by default.
fn roots(root: Option<&str>) -> StoreResult<RootCertStore> {
    let mut roots = RootCertStore::empty();
    match root {
        None | Some("system") => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| invalid(format!("sslrootcert {path}: {e}")))?;
            roots.add_parsable_certificates(certs);
        }
    }
    if roots.is_empty() {
        return Err(invalid(format!(
            "sslrootcert {}: no certificate authority found",
            root.unwrap_or("system")
        )));
    }
    Ok(roots)
}

fn client_config(verify: Verify, root: Option<&str>) -> StoreResult<ClientConfig> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match verify {
        Verify::Nothing => Arc::new(Unverified(provider.signature_verification_algorithms)),
        Verify::Chain | Verify::ChainAndName => {
            let chain = WebPkiServerVerifier::builder_with_provider(Arc::new(roots(root)?), provider.clone())
                .build()
                .map_err(|e| invalid(format!("sslrootcert: {e}")))?;
            match verify {
                Verify::Chain => Arc::new(AnyName(chain)),
                _ => chain,
            }
        }
    };
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("TLS versions: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// `sslmode=require` (and `prefer`): any certificate, as libpq takes it. The handshake's
/// signatures are still checked, so the key exchange is the certificate holder's.
#[derive(Debug)]
struct Unverified(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// `sslmode=verify-ca`: the chain must lead to a trusted authority; the name is not checked.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The chain is checked before the name: a name error means the chain was good.
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_keys_leave_the_url_and_the_rest_stays() {
        let (url, mode, root) = take_tls_keys(
            "postgres://u@a:5432,b:5432/db?target_session_attrs=read-write&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(url, "postgres://u@a:5432,b:5432/db?target_session_attrs=read-write");
        assert_eq!((mode.as_deref(), root.as_deref()), (Some("verify-full"), Some("/etc/ca.pem")));
        let (url, mode, _) = take_tls_keys("postgres://u@h/db?sslmode=require").unwrap();
        assert_eq!((url.as_str(), mode.as_deref()), ("postgres://u@h/db", Some("require")));
        assert_eq!(take_tls_keys("postgres://u@h/db").unwrap().0, "postgres://u@h/db");
    }

    #[test]
    fn modes_map_as_libpq_has_them() {
        let plain = from_url("postgres://u@h/db").unwrap();
        assert!(plain.connector.is_none(), "no sslmode: plain, as before");
        assert!(from_url("postgres://u@h/db?sslmode=disable").unwrap().connector.is_none());
        let require = from_url("postgres://u@h/db?sslmode=require").unwrap();
        assert_eq!((require.mode, require.connector.is_some()), (Some(SslMode::Require), true));
        assert!(from_url("postgres://u@h/db?sslmode=verify-any").is_err());
        let missing = from_url("postgres://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem");
        assert!(missing.is_err(), "a root file that cannot be read stops the start");
    }
}
