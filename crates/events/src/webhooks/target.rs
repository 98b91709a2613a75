//! Where Coffer may send a webhook: the guard against server-side request forgery.
//!
//! An endpoint URL is chosen by an API client, and the dispatcher posts to it from inside the
//! operator's network. Without a guard, `http://169.254.169.254/` (cloud metadata),
//! `http://127.0.0.1:5432/` or `http://10.0.0.7/admin` would make Coffer a proxy into places
//! the client cannot reach. So:
//! - [`validate_url`], a pure function, checks the text when an endpoint is registered (and
//!   again before every delivery): https (http only where the deployment allows it), no
//!   credentials, a host, and — unless private networks are allowed — no literal address in a
//!   special-purpose range ([`special_range`]) and no `localhost` name;
//! - [`GuardedResolver`] is the HTTP client's only DNS resolver: it resolves a host and refuses
//!   it when any address is in a special-purpose range. The client connects to the addresses
//!   it returned, so there is no second lookup between the check and the connection for a
//!   rebinding DNS server to answer differently.
//!
//! Which addresses are refused is one table per family ([`ranges`]), not code: every entry of
//! the IANA IPv4 and IPv6 special-purpose address registries, multicast, and on IPv6 all that
//! lies outside the global unicast space 2000::/3.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

use super::ranges::{SpecialRange, special_range};

/// Where webhooks may go, as the deployment configured it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TargetPolicy {
    /// Lets URLs and names reach special-purpose addresses (loopback, private, …): tests, and
    /// deployments whose receivers are all inside their own network.
    pub allow_private_networks: bool,
    /// Lets `http://` URLs through: without TLS a delivery, its signature and its payload can
    /// be read and its receiver impersonated on the way, so only tests and local setups want it.
    pub allow_insecure_http: bool,
}

/// What is wrong with an endpoint URL (a 422 with this text on `POST /v1/webhooks`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("the URL does not parse: {0}")]
    Unparsable(String),
    #[error("the URL's scheme is {0:?}; webhooks are https")]
    Scheme(String),
    #[error("the URL is plain http; webhooks are https unless the deployment allows insecure http")]
    InsecureHttp,
    #[error("the URL holds credentials; put them nowhere: deliveries are signed instead")]
    Credentials,
    #[error("the URL has no host")]
    NoHost,
    #[error(
        "the URL's host {host} is in a special-purpose range, {range}; webhooks go only to globally routable addresses"
    )]
    NotPublic { host: String, range: SpecialRange },
}

/// The range the `localhost` names stand for.
const LOOPBACK: SpecialRange = SpecialRange {
    network: IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 0)),
    prefix_len: 8,
    name: "loopback",
};

/// Checks an endpoint URL's text and answers it parsed. Unless the policy allows them, plain
/// http, a literal special-purpose address and the `localhost` names are refused too; other
/// names are checked when they are resolved, at delivery time.
pub fn validate_url(text: &str, policy: TargetPolicy) -> Result<Url, UrlError> {
    let url = Url::parse(text).map_err(|e| match e {
        url::ParseError::EmptyHost => UrlError::NoHost,
        other => UrlError::Unparsable(other.to_string()),
    })?;
    match url.scheme() {
        "https" => {}
        "http" if policy.allow_insecure_http => {}
        "http" => return Err(UrlError::InsecureHttp),
        other => return Err(UrlError::Scheme(other.to_owned())),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlError::Credentials);
    }
    let host = url.host().ok_or(UrlError::NoHost)?;
    if !policy.allow_private_networks {
        check_host(&host)?;
    }
    Ok(url)
}

/// Refuses a literal special-purpose address, and the names that always mean loopback
/// (RFC 6761 reserves `localhost` and everything under it).
fn check_host(host: &Host<&str>) -> Result<(), UrlError> {
    let refused = match host {
        Host::Ipv4(ip) => special_range(IpAddr::V4(*ip)).copied(),
        Host::Ipv6(ip) => special_range(IpAddr::V6(*ip)).copied(),
        Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            (name == "localhost" || name.ends_with(".localhost")).then_some(LOOPBACK)
        }
    };
    refused.map_or(Ok(()), |range| Err(UrlError::NotPublic { host: host.to_string(), range }))
}

/// A host that resolved to an address webhooks may not reach.
#[derive(Debug, Clone, thiserror::Error)]
#[error("refused: {host} resolves to {addr}, in a special-purpose range, {range}")]
pub struct RefusedAddress {
    pub host: String,
    pub addr: IpAddr,
    pub range: SpecialRange,
}

/// The answer of a [`Lookup`].
pub type LookupFuture = Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>>;

/// Turns a host name into addresses: the system's resolver ([`SystemLookup`]) in a server; a
/// table in tests, so that a name can resolve into any range without a DNS server.
pub trait Lookup: Send + Sync + 'static {
    fn lookup(&self, host: &str) -> LookupFuture;
}

/// The operating system's resolver (`getaddrinfo`, through tokio's blocking pool).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup(&self, host: &str) -> LookupFuture {
        let host = host.to_owned();
        Box::pin(async move { Ok(tokio::net::lookup_host((host, 0)).await?.map(|a| a.ip()).collect()) })
    }
}

/// The webhook client's DNS resolver: a [`Lookup`], and then the address check.
#[derive(Clone)]
pub struct GuardedResolver {
    allow_private_networks: bool,
    lookup: Arc<dyn Lookup>,
}

impl GuardedResolver {
    pub fn new(allow_private_networks: bool, lookup: Arc<dyn Lookup>) -> Self {
        Self { allow_private_networks, lookup }
    }

    /// The addresses of `host`, refused as a whole when one of them is in a special-purpose
    /// range: a name that mixes public and private answers is an attack or a mistake, not an
    /// endpoint. Nothing is connected to before this answers.
    pub async fn resolve_host(&self, host: &str) -> io::Result<Vec<SocketAddr>> {
        let addrs = self.lookup.lookup(host).await?;
        if !self.allow_private_networks {
            for &addr in &addrs {
                if let Some(range) = special_range(addr) {
                    let refused = RefusedAddress { host: host.to_owned(), addr, range: *range };
                    return Err(io::Error::new(io::ErrorKind::PermissionDenied, refused));
                }
            }
        }
        // Port 0: the client puts the URL's port in.
        Ok(addrs.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect())
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let resolver = self.clone();
        Box::pin(async move {
            let addrs = resolver.resolve_host(name.as_str()).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: TargetPolicy = TargetPolicy { allow_private_networks: false, allow_insecure_http: false };

    #[test]
    fn http_needs_the_insecure_http_setting_and_other_schemes_are_refused() {
        assert_eq!(validate_url("http://example.com/", STRICT), Err(UrlError::InsecureHttp));
        let insecure = TargetPolicy { allow_insecure_http: true, ..STRICT };
        assert!(validate_url("http://example.com/", insecure).is_ok());
        assert!(validate_url("https://example.com/", STRICT).is_ok());
        assert_eq!(validate_url("ws://example.com/", insecure), Err(UrlError::Scheme("ws".into())));
    }

    #[test]
    fn literal_special_addresses_and_localhost_names_are_refused() {
        for url in
            ["https://10.0.0.1/", "https://[2001:db8::1]/", "https://api.localhost./", "https://0x7f000001/"]
        {
            assert!(matches!(validate_url(url, STRICT), Err(UrlError::NotPublic { .. })), "{url}");
        }
        let open = TargetPolicy { allow_private_networks: true, ..STRICT };
        assert!(validate_url("https://10.0.0.1/", open).is_ok());
    }

    #[tokio::test]
    async fn the_resolver_refuses_a_name_that_resolves_inside() {
        let refused =
            GuardedResolver::new(false, Arc::new(SystemLookup)).resolve_host("localhost").await.unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::PermissionDenied);
        assert!(refused.to_string().contains("loopback"), "{refused}");
        let allowed =
            GuardedResolver::new(true, Arc::new(SystemLookup)).resolve_host("localhost").await.unwrap();
        assert!(allowed.iter().all(|a| a.ip().is_loopback()), "{allowed:?}");
    }
}
