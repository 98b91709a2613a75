//! Where Coffer may send a webhook: the guard against server-side request forgery.
//!
//! An endpoint URL is chosen by an API client, and the dispatcher posts to it from inside the
//! operator's network. Without a guard, `http://169.254.169.254/` (cloud metadata),
//! `http://127.0.0.1:5432/` or `http://10.0.0.7/admin` would make Coffer a proxy into places
//! the client cannot reach. So:
//! - [`validate_url`], a pure function, checks the text when an endpoint is registered (and
//!   again before every delivery): http or https, no credentials, a host, and — unless private
//!   networks are allowed — no literal address or `localhost` name that points inside;
//! - [`GuardedResolver`] is the HTTP client's only DNS resolver: it resolves a host and refuses
//!   it when any address is not public. The client connects to the addresses it returned, so
//!   there is no second lookup between the check and the connection for a rebinding DNS server
//!   to answer differently.
//!
//! Addresses refused: loopback, "this network" (0/8) and unspecified, RFC 1918 private,
//! link-local (incl. cloud metadata), CGNAT shared space (100.64/10), broadcast, multicast,
//! IPv6 unique-local and (deprecated) site-local, and any of these inside an IPv4-mapped
//! (`::ffff:a.b.c.d`) or NAT64 (`64:ff9b::a.b.c.d`) IPv6 address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

/// What is wrong with an endpoint URL (a 422 with this text on `POST /v1/webhooks`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("the URL does not parse: {0}")]
    Unparsable(String),
    #[error("the URL's scheme is {0:?}; webhooks are http or https")]
    Scheme(String),
    #[error("the URL holds credentials; put them nowhere: deliveries are signed instead")]
    Credentials,
    #[error("the URL has no host")]
    NoHost,
    #[error("the URL's host {host} is a {kind} address; only public addresses receive webhooks")]
    NotPublic { host: String, kind: AddressKind },
}

/// The kinds of address no webhook is sent to (unless private networks are allowed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressKind {
    Loopback,
    Unspecified,
    Private,
    LinkLocal,
    SharedCgnat,
    Broadcast,
    Multicast,
    UniqueLocal,
    SiteLocal,
}

impl std::fmt::Display for AddressKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Loopback => "loopback",
            Self::Unspecified => "unspecified",
            Self::Private => "private (RFC 1918)",
            Self::LinkLocal => "link-local",
            Self::SharedCgnat => "shared (CGNAT, 100.64/10)",
            Self::Broadcast => "broadcast",
            Self::Multicast => "multicast",
            Self::UniqueLocal => "unique-local (fc00::/7)",
            Self::SiteLocal => "site-local (fec0::/10)",
        })
    }
}

/// Checks an endpoint URL's text and answers it parsed. With `allow_private_networks` false,
/// a literal address that is not public and the `localhost` names are refused too; other
/// names are checked when they are resolved, at delivery time.
pub fn validate_url(text: &str, allow_private_networks: bool) -> Result<Url, UrlError> {
    let url = Url::parse(text).map_err(|e| match e {
        url::ParseError::EmptyHost => UrlError::NoHost,
        other => UrlError::Unparsable(other.to_string()),
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(UrlError::Scheme(url.scheme().to_owned()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlError::Credentials);
    }
    let host = url.host().ok_or(UrlError::NoHost)?;
    if !allow_private_networks {
        check_host(&host)?;
    }
    Ok(url)
}

/// Refuses a literal address that is not public, and the names that always mean loopback
/// (RFC 6761 reserves `localhost` and everything under it).
fn check_host(host: &Host<&str>) -> Result<(), UrlError> {
    let not_public = |kind| UrlError::NotPublic { host: host.to_string(), kind };
    match host {
        Host::Ipv4(ip) => forbidden(IpAddr::V4(*ip)).map_or(Ok(()), |kind| Err(not_public(kind))),
        Host::Ipv6(ip) => forbidden(IpAddr::V6(*ip)).map_or(Ok(()), |kind| Err(not_public(kind))),
        Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            let local = name == "localhost" || name.ends_with(".localhost");
            if local { Err(not_public(AddressKind::Loopback)) } else { Ok(()) }
        }
    }
}

/// The kind of a non-public address, or `None` for a public one.
pub fn forbidden(ip: IpAddr) -> Option<AddressKind> {
    match ip {
        IpAddr::V4(ip) => forbidden_v4(ip),
        IpAddr::V6(ip) => forbidden_v6(ip),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<AddressKind> {
    let [a, b, ..] = ip.octets();
    Some(match () {
        _ if ip.is_loopback() => AddressKind::Loopback,
        _ if a == 0 => AddressKind::Unspecified,
        _ if ip.is_private() => AddressKind::Private,
        _ if ip.is_link_local() => AddressKind::LinkLocal,
        _ if a == 100 && (64..128).contains(&b) => AddressKind::SharedCgnat,
        _ if ip.is_broadcast() => AddressKind::Broadcast,
        _ if ip.is_multicast() => AddressKind::Multicast,
        _ => return None,
    })
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<AddressKind> {
    if let Some(v4) = embedded_v4(ip) {
        return forbidden_v4(v4);
    }
    let first = ip.segments()[0];
    Some(match () {
        _ if ip.is_loopback() => AddressKind::Loopback,
        _ if ip.is_unspecified() => AddressKind::Unspecified,
        _ if ip.is_multicast() => AddressKind::Multicast,
        _ if first & 0xfe00 == 0xfc00 => AddressKind::UniqueLocal,
        _ if first & 0xffc0 == 0xfe80 => AddressKind::LinkLocal,
        _ if first & 0xffc0 == 0xfec0 => AddressKind::SiteLocal,
        _ => return None,
    })
}

/// The IPv4 address an IPv6 one reaches: IPv4-mapped (`::ffff:0:0/96`), or translated by a
/// NAT64 gateway (the well-known prefix `64:ff9b::/96`).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = ip.segments();
    let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    nat64.then(|| Ipv4Addr::from((u32::from(s[6]) << 16) | u32::from(s[7])))
}

/// A host that resolved to an address webhooks may not reach.
#[derive(Debug, Clone, thiserror::Error)]
#[error("refused: {host} resolves to {addr}, a {kind} address")]
pub struct RefusedAddress {
    pub host: String,
    pub addr: IpAddr,
    pub kind: AddressKind,
}

/// The webhook client's DNS resolver: the system's resolver, and then the address check.
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    allow_private_networks: bool,
}

impl GuardedResolver {
    pub fn new(allow_private_networks: bool) -> Self {
        Self { allow_private_networks }
    }

    /// The addresses of `host`, refused as a whole when one of them is not public: a name that
    /// mixes public and private answers is an attack or a mistake, not an endpoint.
    pub async fn resolve_host(&self, host: &str) -> std::io::Result<Vec<SocketAddr>> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0)).await?.collect();
        if self.allow_private_networks {
            return Ok(addrs);
        }
        for addr in &addrs {
            if let Some(kind) = forbidden(addr.ip()) {
                let refused = RefusedAddress { host: host.to_owned(), addr: addr.ip(), kind };
                return Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, refused));
            }
        }
        Ok(addrs)
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let resolver = *self;
        Box::pin(async move {
            let addrs = resolver.resolve_host(name.as_str()).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(ip: &str) -> Option<AddressKind> {
        forbidden(ip.parse().unwrap())
    }

    #[test]
    fn every_inside_range_is_classified() {
        for (ip, expected) in [
            ("127.0.0.1", AddressKind::Loopback),
            ("127.255.0.9", AddressKind::Loopback),
            ("0.0.0.0", AddressKind::Unspecified),
            ("0.1.2.3", AddressKind::Unspecified),
            ("10.1.2.3", AddressKind::Private),
            ("172.16.0.1", AddressKind::Private),
            ("172.31.255.255", AddressKind::Private),
            ("192.168.1.1", AddressKind::Private),
            ("169.254.169.254", AddressKind::LinkLocal),
            ("100.64.0.1", AddressKind::SharedCgnat),
            ("100.127.255.255", AddressKind::SharedCgnat),
            ("255.255.255.255", AddressKind::Broadcast),
            ("224.0.0.1", AddressKind::Multicast),
            ("::1", AddressKind::Loopback),
            ("::", AddressKind::Unspecified),
            ("fc00::1", AddressKind::UniqueLocal),
            ("fd12:3456::1", AddressKind::UniqueLocal),
            ("fe80::1", AddressKind::LinkLocal),
            ("fec0::1", AddressKind::SiteLocal),
            ("ff02::1", AddressKind::Multicast),
            ("::ffff:127.0.0.1", AddressKind::Loopback),
            ("::ffff:10.0.0.1", AddressKind::Private),
            ("::ffff:169.254.169.254", AddressKind::LinkLocal),
            ("64:ff9b::192.168.0.1", AddressKind::Private),
        ] {
            assert_eq!(kind(ip), Some(expected), "{ip}");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for ip in
            ["8.8.8.8", "172.32.0.1", "100.128.0.1", "100.63.255.255", "2606:4700::1111", "::ffff:1.1.1.1"]
        {
            assert_eq!(kind(ip), None, "{ip}");
        }
    }

    #[tokio::test]
    async fn the_resolver_refuses_a_name_that_resolves_inside() {
        let refused = GuardedResolver::new(false).resolve_host("localhost").await.unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::PermissionDenied);
        assert!(refused.to_string().contains("loopback"), "{refused}");
        let allowed = GuardedResolver::new(true).resolve_host("localhost").await.unwrap();
        assert!(allowed.iter().all(|a| a.ip().is_loopback()), "{allowed:?}");
    }
}
