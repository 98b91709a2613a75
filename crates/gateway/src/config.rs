//! The gateway's typed configuration. The binary fills it (file, then `COFFER_GATEWAY_*`, then
//! flags) and calls [`GatewayConfig::validate`] once at start; nothing here reads the environment.
//!
//! Upstreams are parsed into [`UpstreamUrl`] when the configuration is read, so a typo in the
//! list stops the start instead of becoming a replica that is "down" forever.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::PathBuf;

use ipnet::IpNet;

use crate::admin::AdminToken;

use http::Uri;
use http::uri::{Authority, PathAndQuery, Scheme};
use serde::{Deserialize, Serialize};

/// A configuration the gateway refuses to start with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("upstream {url:?}: {reason}")]
    BadUpstream { url: String, reason: &'static str },
    #[error("gateway.upstreams must name at least one upstream")]
    NoUpstreams,
    #[error("upstream {0} is listed twice")]
    DuplicateUpstream(String),
    #[error("gateway.{field} {reason}")]
    OutOfRange { field: &'static str, reason: &'static str },
    #[error("gateway.trusted_proxies: {0:?} is neither an IP address nor a network (10.0.0.0/8)")]
    BadTrustedProxy(String),
    #[error("gateway.admin_token_file: {0}")]
    AdminTokenFile(String),
}

/// One upstream: `http://host:port` or `https://host:port`, no path, no query. The host may be a
/// DNS name: each address it resolves to becomes an upstream of its own (see `discovery`), which
/// still speaks to its replica by that name — in `Host` and, over https, in the certificate it
/// must present.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UpstreamUrl {
    tls: bool,
    /// Where connections go: the configured `host:port`, or one address the name resolved to.
    dial: Authority,
    /// The configured `host:port`, when `dial` is an address it resolved to.
    name: Option<Authority>,
}

impl UpstreamUrl {
    /// `host:port` as configured: the `Host` the replica is addressed by.
    pub fn authority(&self) -> &Authority {
        self.name.as_ref().unwrap_or(&self.dial)
    }

    /// Sets `Host` to the configured name when it differs from the address connected to (else
    /// the client fills it in from the URI).
    pub fn address_by_name(&self, headers: &mut http::HeaderMap) {
        if let Some(name) = &self.name {
            let host = http::HeaderValue::from_str(name.as_str()).expect("an authority is a header value");
            headers.insert(http::header::HOST, host);
        }
    }

    /// The host a TLS certificate of this upstream must name.
    pub fn tls_name(&self) -> &str {
        bare_host(self.authority())
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Whether this upstream is reached at `authority` (the `host:port` of a request's URI).
    pub fn dials(&self, authority: &Authority) -> bool {
        &self.dial == authority
    }

    /// The absolute URI of `path_and_query` on this upstream.
    pub fn join(&self, path_and_query: PathAndQuery) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(if self.tls { Scheme::HTTPS } else { Scheme::HTTP });
        parts.authority = Some(self.dial.clone());
        parts.path_and_query = Some(path_and_query);
        Uri::from_parts(parts).expect("a scheme, an authority and a path make a URI")
    }

    /// This upstream reached at `address`, one its name resolved to; `None` for the rare address
    /// that is no URL authority (an IPv6 address with a zone, `fe80::1%eth0`).
    pub fn at(&self, address: SocketAddr) -> Option<Self> {
        let dial = address.to_string().parse().ok()?;
        Some(Self { tls: self.tls, dial, name: Some(self.authority().clone()) })
    }
}

impl std::fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}", self.dial)
    }
}

impl From<UpstreamUrl> for String {
    fn from(url: UpstreamUrl) -> String {
        url.to_string()
    }
}

impl TryFrom<String> for UpstreamUrl {
    type Error = ConfigError;

    fn try_from(text: String) -> Result<Self, ConfigError> {
        let bad = |reason| ConfigError::BadUpstream { url: text.clone(), reason };
        let uri: Uri = text.trim().parse().map_err(|_| bad("is not a URL"))?;
        let (tls, default_port) = match uri.scheme_str() {
            Some("http") => (false, 80),
            Some("https") => (true, 443),
            _ => return Err(bad("must start with http:// or https://")),
        };
        let authority = uri.authority().ok_or_else(|| bad("has no host"))?.clone();
        if authority.host().is_empty() {
            return Err(bad("has no host"));
        }
        if authority.as_str().contains('@') {
            return Err(bad("must not carry credentials"));
        }
        if uri.path_and_query().is_some_and(|pq| pq.as_str() != "/") {
            return Err(bad("must not have a path or query"));
        }
        let dial = match authority.port_u16() {
            Some(0) => return Err(bad("has port 0")),
            Some(_) => authority,
            None if authority.as_str() == authority.host() => {
                format!("{}:{default_port}", authority.host()).parse().map_err(|_| bad("has a bad host"))?
            }
            None => return Err(bad("has a bad port")),
        };
        Ok(Self { tls, dial, name: None })
    }
}

/// An authority's host without the brackets an IPv6 address wears in a URL.
pub fn bare_host(authority: &Authority) -> &str {
    authority.host().trim_start_matches('[').trim_end_matches(']')
}

/// The upstream list: a TOML list, or one comma-separated string (`COFFER_GATEWAY_UPSTREAMS`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Upstreams(pub Vec<UpstreamUrl>);

impl<'de> Deserialize<'de> for Upstreams {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        list_setting(d)?
            .into_iter()
            .map(UpstreamUrl::try_from)
            .collect::<Result<_, _>>()
            .map(Upstreams)
            .map_err(serde::de::Error::custom)
    }
}

/// The items of a list setting given as a TOML list or as one comma-separated string (what an
/// environment variable can hold), blanks left out.
pub fn list_setting<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        List(Vec<String>),
        Text(String),
    }
    let items = match Raw::deserialize(d)? {
        Raw::List(items) => items,
        Raw::Text(text) => text.split(',').map(str::to_owned).collect(),
    };
    Ok(items.into_iter().filter(|item| !item.trim().is_empty()).collect())
}

/// The proxies in front of the gateway whose `x-forwarded-for` it believes: addresses or
/// networks, a TOML list or one comma-separated string (`COFFER_GATEWAY_TRUSTED_PROXIES`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<IpNet>);

impl TrustedProxies {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }
}

impl<'de> Deserialize<'de> for TrustedProxies {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let parse = |item: String| {
            let text = item.trim();
            text.parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| ConfigError::BadTrustedProxy(item.clone()))
        };
        list_setting(d)?
            .into_iter()
            .map(parse)
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
            .map_err(serde::de::Error::custom)
    }
}

impl Upstreams {
    /// At least one upstream, none twice.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.0.is_empty() {
            return Err(ConfigError::NoUpstreams);
        }
        for (i, url) in self.0.iter().enumerate() {
            if self.0[..i].contains(url) {
                return Err(ConfigError::DuplicateUpstream(url.to_string()));
            }
        }
        Ok(())
    }
}

/// Everything `coffer gateway` needs. Durations and sizes carry their unit in their name.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// Where the gateway's own endpoints (`/gateway/upstreams`, `/gateway/metrics`,
    /// `/gateway/healthz`) are served; off unless set, so the edge does not show its topology.
    /// Every request there needs `admin_token` (see `admin`); a loopback address keeps it off
    /// the network as well.
    pub admin_listen: Option<SocketAddr>,
    /// The bearer token the admin endpoints require (at least 32 characters), given inline or
    /// as the first line of `admin_token_file` (a mounted secret); one of them, not both, is
    /// required with `admin_listen`.
    pub admin_token: Option<AdminToken>,
    pub admin_token_file: Option<PathBuf>,
    pub upstreams: Upstreams,
    /// Time allowed to open a TCP connection to an upstream.
    pub connect_timeout_ms: u64,
    /// Time allowed for an upstream to answer with its headers; past it the client gets a 504.
    pub upstream_timeout_ms: u64,
    /// How often upstream names are resolved again; each address a name resolves to is an
    /// upstream of its own (see `discovery`). Lookups time out after `check_timeout_ms`.
    pub dns_refresh_ms: u64,
    /// How often each upstream's `/readyz` is asked.
    pub check_interval_ms: u64,
    pub check_timeout_ms: u64,
    /// Failed checks in a row that mark an upstream unhealthy.
    pub unhealthy_after_checks: u32,
    /// Passed checks in a row that make an unhealthy upstream healthy again.
    pub healthy_after_checks: u32,
    /// Connection failures or 5xx answers to real requests, in a row, that eject an upstream.
    pub eject_after_failures: u32,
    /// The least time an ejected upstream stays out, whatever its checks say; doubled each time
    /// it fails again on probation (the circuit breaker), up to `eject_max_ms`.
    pub eject_ms: u64,
    pub eject_max_ms: u64,
    /// Request bodies up to this size are held so that the request can be sent again; a larger
    /// body is streamed through and its request is sent once.
    pub retry_body_limit_bytes: usize,
    /// Retries of one request, each on an upstream not yet tried.
    pub max_retries: u32,
    /// Base of the backoff before a retry (doubled per retry, with jitter).
    pub retry_backoff_ms: u64,
    /// Retries allowed as a share of requests (token bucket).
    pub retry_budget_percent: u32,
    /// Retries allowed per second even when traffic is light.
    pub retry_budget_min_per_second: u32,
    /// How long a shutdown waits for in-flight requests.
    pub drain_timeout_ms: u64,
    /// Requests per second one API key (bearer token) may send through the gateways.
    pub rate_limit_per_second: NonZeroU32,
    pub rate_limit_burst: NonZeroU32,
    /// Requests per second one client address may send through the gateways.
    pub ip_rate_limit_per_second: NonZeroU32,
    pub ip_rate_limit_burst: NonZeroU32,
    /// Proxies in front of the gateway (a load balancer): when one of them is the connection's
    /// peer, the client is the rightmost `x-forwarded-for` entry that is not one of them. The
    /// client address is what the address limit counts and what the access log records.
    /// Empty (the default): the peer is the client, and an `x-forwarded-for` it sends is
    /// replaced, not extended, since anyone can write one.
    pub trusted_proxies: TrustedProxies,
    /// How long a shared (Redis) limit check may take before the local limit answers instead.
    pub redis_timeout_ms: u64,
    /// Requests handled at once; more are shed with 503 and Retry-After before any work.
    pub max_concurrent_requests: usize,
    /// The largest request body, in bytes; a request declaring more, or sending more without a
    /// declared length (chunked, held whole for this check), is a 413 sent nowhere.
    pub max_body_bytes: u64,
    /// The most request-body bytes held in memory at once, over all requests (bodies held to
    /// be sent again, and chunked ones held whole). A request whose body does not fit in what
    /// is left is shed (503 `overloaded`, Retry-After) before anything is sent; with the
    /// default, 4,096 requests at once cannot make the gateway hold 32 GiB. At least
    /// `max_body_bytes`, so that any one body fits when the gateway is not busy.
    pub max_held_body_bytes: usize,
    /// The most header bytes (names and values) a request may carry; more is a 431.
    pub max_header_bytes: usize,
    /// How long a client may take to send a body the gateway holds (up to
    /// `retry_body_limit_bytes`, or a chunked one); a slower one gets 408 and nothing is sent
    /// upstream.
    pub body_read_timeout_ms: u64,
    /// How long a client may take to send a request's headers (the slowloris attack sends
    /// them a byte at a time); the connection is closed past it. A TLS handshake has as long.
    pub header_read_timeout_ms: u64,
    /// Check bearer tokens at the edge against the store's API keys (the binary opens the same
    /// store the replicas use, read-only). Off, the replicas alone check tokens.
    pub check_tokens: bool,
    /// How long the edge trusts a token lookup (valid or not).
    pub key_cache_ttl_ms: u64,
    /// TLS termination: a PEM certificate chain and its PEM private key. Both or neither.
    pub tls_cert_path: Option<PathBuf>,
    pub tls_key_path: Option<PathBuf>,
    /// The certificate authorities (PEM) an https upstream's certificate must chain to; unset,
    /// the system's trusted roots.
    pub upstream_ca_path: Option<PathBuf>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            admin_listen: None,
            admin_token: None,
            admin_token_file: None,
            upstreams: Upstreams::default(),
            connect_timeout_ms: 1_000,
            upstream_timeout_ms: 30_000,
            dns_refresh_ms: 5_000,
            check_interval_ms: 500,
            check_timeout_ms: 1_000,
            unhealthy_after_checks: 2,
            healthy_after_checks: 2,
            eject_after_failures: 3,
            eject_ms: 5_000,
            eject_max_ms: 60_000,
            retry_body_limit_bytes: 1024 * 1024,
            max_retries: 2,
            retry_backoff_ms: 10,
            retry_budget_percent: 20,
            retry_budget_min_per_second: 10,
            drain_timeout_ms: 30_000,
            rate_limit_per_second: per_second(1_000),
            rate_limit_burst: per_second(1_000),
            ip_rate_limit_per_second: per_second(2_000),
            ip_rate_limit_burst: per_second(2_000),
            trusted_proxies: TrustedProxies::default(),
            redis_timeout_ms: 50,
            max_concurrent_requests: 4096,
            max_body_bytes: 8 * 1024 * 1024,
            max_held_body_bytes: 256 * 1024 * 1024,
            body_read_timeout_ms: 10_000,
            max_header_bytes: 16 * 1024,
            header_read_timeout_ms: 10_000,
            check_tokens: true,
            key_cache_ttl_ms: 1_000,
            tls_cert_path: None,
            tls_key_path: None,
            upstream_ca_path: None,
        }
    }
}

/// A default rate (never zero).
fn per_second(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

impl GatewayConfig {
    /// Refuses a configuration the gateway cannot run with.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.upstreams.validate()?;
        let positive = [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("upstream_timeout_ms", self.upstream_timeout_ms),
            ("dns_refresh_ms", self.dns_refresh_ms),
            ("check_interval_ms", self.check_interval_ms),
            ("check_timeout_ms", self.check_timeout_ms),
            ("unhealthy_after_checks", u64::from(self.unhealthy_after_checks)),
            ("healthy_after_checks", u64::from(self.healthy_after_checks)),
            ("eject_after_failures", u64::from(self.eject_after_failures)),
            ("drain_timeout_ms", self.drain_timeout_ms),
            ("redis_timeout_ms", self.redis_timeout_ms),
            ("max_concurrent_requests", self.max_concurrent_requests as u64),
            ("max_body_bytes", self.max_body_bytes),
            ("body_read_timeout_ms", self.body_read_timeout_ms),
            ("max_header_bytes", self.max_header_bytes as u64),
            ("header_read_timeout_ms", self.header_read_timeout_ms),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(ConfigError::OutOfRange { field, reason: "must be at least 1" });
        }
        if self.tls_cert_path.is_some() != self.tls_key_path.is_some() {
            return Err(ConfigError::OutOfRange {
                field: "tls_cert_path",
                reason: "and gateway.tls_key_path must be set together",
            });
        }
        if self.admin_listen.is_some() && self.admin_token.is_none() && self.admin_token_file.is_none() {
            return Err(ConfigError::OutOfRange {
                field: "admin_listen",
                reason: "needs gateway.admin_token or gateway.admin_token_file: the admin endpoints are never open",
            });
        }
        if self.admin_token.is_some() && self.admin_token_file.is_some() {
            return Err(ConfigError::OutOfRange {
                field: "admin_token",
                reason: "and gateway.admin_token_file must not both be set",
            });
        }
        if self.eject_max_ms < self.eject_ms {
            return Err(ConfigError::OutOfRange {
                field: "eject_max_ms",
                reason: "must be at least eject_ms",
            });
        }
        if self.max_retries > 5 {
            return Err(ConfigError::OutOfRange { field: "max_retries", reason: "must be at most 5" });
        }
        let held = self.max_held_body_bytes as u64;
        if held < self.max_body_bytes || held < self.retry_body_limit_bytes as u64 {
            return Err(ConfigError::OutOfRange {
                field: "max_held_body_bytes",
                reason: "must be at least max_body_bytes and retry_body_limit_bytes (one body must fit)",
            });
        }
        if self.max_held_body_bytes > tokio::sync::Semaphore::MAX_PERMITS {
            return Err(ConfigError::OutOfRange { field: "max_held_body_bytes", reason: "is too large" });
        }
        if self.retry_budget_percent > 100 {
            return Err(ConfigError::OutOfRange {
                field: "retry_budget_percent",
                reason: "must be at most 100",
            });
        }
        if self.retry_body_limit_bytes > 64 * 1024 * 1024 {
            return Err(ConfigError::OutOfRange {
                field: "retry_body_limit_bytes",
                reason: "must be at most 64 MiB",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<UpstreamUrl, ConfigError> {
        UpstreamUrl::try_from(text.to_owned())
    }

    #[test]
    fn upstream_urls_are_parsed_strictly() {
        assert_eq!(parse("http://127.0.0.1:8081").unwrap().to_string(), "http://127.0.0.1:8081");
        assert_eq!(parse("http://api.internal/").unwrap().to_string(), "http://api.internal:80");
        let secure = parse("https://api.internal").unwrap();
        assert_eq!(secure.to_string(), "https://api.internal:443");
        assert_eq!(secure.join(PathAndQuery::from_static("/v1")).to_string(), "https://api.internal:443/v1");
        for bad in [
            "",
            "127.0.0.1:8081",
            "ftp://x:1",
            "https://user@x:1",
            "http://x:1/v1",
            "http://x:1/?a=b",
            "http://user:pw@x:1",
            "http://:80",
            "http://x:99999",
            "http://x:0",
            "not a url",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn an_address_a_name_resolved_to_is_dialled_but_addressed_by_the_name() {
        let named = parse("https://api.internal:8443").unwrap();
        let at = named.at("[2001:db8::5]:8443".parse().unwrap()).unwrap();
        assert_eq!(at.to_string(), "https://[2001:db8::5]:8443");
        assert_eq!(
            at.join(PathAndQuery::from_static("/readyz")).to_string(),
            "https://[2001:db8::5]:8443/readyz"
        );
        assert_eq!(at.authority().as_str(), "api.internal:8443");
        let mut headers = http::HeaderMap::new();
        at.address_by_name(&mut headers);
        assert_eq!(headers[http::header::HOST], "api.internal:8443");
        assert_eq!(at.tls_name(), "api.internal");
        assert!(at.dials(&"[2001:db8::5]:8443".parse().unwrap()));
        assert_ne!(at, parse("https://[2001:db8::5]:8443").unwrap(), "the name is part of the upstream");
        let literal = parse("https://[2001:db8::5]:8443").unwrap();
        literal.address_by_name(&mut headers);
        assert_eq!(literal.tls_name(), "2001:db8::5");
        assert_eq!(headers[http::header::HOST], "api.internal:8443", "a literal address sets no Host");
    }

    #[test]
    fn the_list_reads_from_a_comma_string_or_a_list() {
        let from_text: Upstreams = serde_json::from_str("\"http://a:1, http://b:2,\"").unwrap();
        assert_eq!(from_text.0.len(), 2);
        let from_list: Upstreams = serde_json::from_str("[\"http://a:1\"]").unwrap();
        assert_eq!(from_list.0.len(), 1);
        assert!(serde_json::from_str::<Upstreams>("\"http://a:1,ftp://b:2\"").is_err());
    }

    #[test]
    fn validation_refuses_what_cannot_run() {
        let one: Upstreams = serde_json::from_str("\"http://a:1\"").unwrap();
        let config = GatewayConfig { upstreams: one.clone(), ..GatewayConfig::default() };
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(GatewayConfig::default().validate(), Err(ConfigError::NoUpstreams));
        let twice = Upstreams(vec![one.0[0].clone(), one.0[0].clone()]);
        let config = GatewayConfig { upstreams: twice, ..GatewayConfig::default() };
        assert!(matches!(config.validate(), Err(ConfigError::DuplicateUpstream(_))));
        let config =
            GatewayConfig { upstreams: one.clone(), check_interval_ms: 0, ..GatewayConfig::default() };
        assert!(matches!(config.validate(), Err(ConfigError::OutOfRange { field: "check_interval_ms", .. })));
        let config =
            GatewayConfig { upstreams: one.clone(), retry_budget_percent: 101, ..GatewayConfig::default() };
        assert!(config.validate().is_err());
        let small = |held: usize| GatewayConfig {
            upstreams: one.clone(),
            max_body_bytes: 10_000,
            retry_body_limit_bytes: 5_000,
            max_held_body_bytes: held,
            ..GatewayConfig::default()
        };
        assert_eq!(small(10_000).validate(), Ok(()));
        let refused = small(9_999).validate();
        assert!(matches!(refused, Err(ConfigError::OutOfRange { field: "max_held_body_bytes", .. })));
        assert!(small(usize::MAX).validate().is_err(), "more than a semaphore counts");
    }
}
