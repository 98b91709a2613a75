//! Who the client is: the connection's peer, unless that peer is one of `trusted_proxies` (a
//! load balancer in front of the gateway); then the rightmost `x-forwarded-for` entry that is
//! not a trusted proxy. Entries further left were written by that client or by proxies nobody
//! vouches for, so they are passed on but never believed.
//!
//! The `x-forwarded-for` sent upstream is the chain the trusted proxies built plus the peer, or,
//! from any other peer, the peer alone: what a client writes there itself is dropped, so an
//! upstream can read the header the gateway sends.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderValue};

use crate::config::TrustedProxies;
use crate::headers::FORWARDED_FOR;
use crate::limits::EdgeLimits;

/// What the gateway knows of a connection's peer, worked out once for all of its requests.
pub struct Peer {
    ip: IpAddr,
    trusted: bool,
    /// The peer's name among the rate limits.
    limit_name: String,
    /// The peer as `x-forwarded-for` lists it.
    forwarded: HeaderValue,
}

/// The client of one request.
pub struct Client<'a> {
    pub ip: IpAddr,
    /// The client's name among the rate limits.
    pub limit_name: Cow<'a, str>,
    /// The `x-forwarded-for` to send upstream.
    pub forwarded_for: HeaderValue,
}

impl Peer {
    pub fn new(ip: IpAddr, trusted: &TrustedProxies) -> Self {
        let forwarded = HeaderValue::from_str(&ip.to_string()).expect("an IP address is a header value");
        Self { ip, trusted: trusted.contains(ip), limit_name: EdgeLimits::ip_name(ip), forwarded }
    }

    /// The client of a request that came over this connection.
    pub fn client(&self, headers: &HeaderMap, trusted: &TrustedProxies) -> Client<'_> {
        let chain = self.trusted.then(|| forwarded_chain(headers)).flatten();
        let Some(chain) = chain else {
            return Client {
                ip: self.ip,
                limit_name: Cow::Borrowed(&self.limit_name),
                forwarded_for: self.forwarded.clone(),
            };
        };
        let ip = believed_client(&chain, trusted).unwrap_or(self.ip);
        let limit_name = if ip == self.ip {
            Cow::Borrowed(self.limit_name.as_str())
        } else {
            EdgeLimits::ip_name(ip).into()
        };
        let forwarded_for = HeaderValue::from_str(&format!("{chain}, {}", self.ip))
            .expect("the chain came from header values and an IP address was added");
        Client { ip, limit_name, forwarded_for }
    }
}

/// Every `x-forwarded-for` line of a request as one comma-separated chain, if there is one and
/// it is plain text.
fn forwarded_chain(headers: &HeaderMap) -> Option<String> {
    let lines: Option<Vec<&str>> = headers.get_all(&FORWARDED_FOR).iter().map(|v| v.to_str().ok()).collect();
    let chain = lines?.join(", ");
    (!chain.trim().is_empty()).then_some(chain)
}

/// Walking the chain from its right end past trusted proxies, the first address that is not
/// one; all of them trusted, the leftmost. An entry that is no address stops the walk at the
/// last address read (it cannot be the client's, and what is left of it is not believed).
fn believed_client(chain: &str, trusted: &TrustedProxies) -> Option<IpAddr> {
    let mut last = None;
    for entry in chain.rsplit(',') {
        let Some(ip) = parse_entry(entry.trim()) else { break };
        last = Some(ip);
        if !trusted.contains(ip) {
            break;
        }
    }
    last
}

/// An address as proxies write it: `192.0.2.1`, `2001:db8::1`, or with a port,
/// `192.0.2.1:4711` or `[2001:db8::1]:4711`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    entry.parse::<IpAddr>().ok().or_else(|| entry.parse::<SocketAddr>().ok().map(|addr| addr.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(list: &str) -> TrustedProxies {
        serde_json::from_value(serde_json::Value::String(list.into())).unwrap()
    }

    fn with_forwarded(lines: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(&FORWARDED_FOR, HeaderValue::from_str(line).unwrap());
        }
        headers
    }

    #[test]
    fn a_peer_nobody_trusts_is_the_client_and_its_forwarded_for_is_dropped() {
        let list = trusted("10.0.0.0/8");
        let peer = Peer::new("192.0.2.7".parse().unwrap(), &list);
        let client = peer.client(&with_forwarded(&["203.0.113.9"]), &list);
        assert_eq!(client.ip, "192.0.2.7".parse::<IpAddr>().unwrap());
        assert_eq!(client.limit_name, "ip:192.0.2.7");
        assert_eq!(client.forwarded_for, "192.0.2.7");
    }

    #[test]
    fn behind_trusted_proxies_the_client_is_the_rightmost_untrusted_entry() {
        let list = trusted("10.0.0.0/8, 2001:db8::1");
        let peer = Peer::new("10.0.0.5".parse().unwrap(), &list);
        let client = peer.client(&with_forwarded(&["198.51.100.1, 203.0.113.9", "10.1.2.3"]), &list);
        assert_eq!(
            client.ip,
            "203.0.113.9".parse::<IpAddr>().unwrap(),
            "the spoofable left entry is not believed"
        );
        assert_eq!(client.limit_name, "ip:203.0.113.9");
        assert_eq!(client.forwarded_for, "198.51.100.1, 203.0.113.9, 10.1.2.3, 10.0.0.5");

        let ports = peer.client(&with_forwarded(&["[2001:db8::9]:4711, 203.0.113.9:80"]), &list);
        assert_eq!(ports.ip, "203.0.113.9".parse::<IpAddr>().unwrap());
        let v6 = peer.client(&with_forwarded(&["[2001:db8::9]:4711, 2001:db8::1"]), &list);
        assert_eq!(v6.ip, "2001:db8::9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn odd_chains_fall_back_to_the_last_address_read() {
        let list = trusted("10.0.0.0/8");
        let peer = Peer::new("10.0.0.5".parse().unwrap(), &list);
        let all_trusted = peer.client(&with_forwarded(&["10.9.9.9, 10.1.1.1"]), &list);
        assert_eq!(all_trusted.ip, "10.9.9.9".parse::<IpAddr>().unwrap());
        let garbage = peer.client(&with_forwarded(&["203.0.113.9, unknown, 10.1.1.1"]), &list);
        assert_eq!(garbage.ip, "10.1.1.1".parse::<IpAddr>().unwrap());
        let none = peer.client(&HeaderMap::new(), &list);
        assert_eq!(none.ip, "10.0.0.5".parse::<IpAddr>().unwrap());
        assert_eq!(none.forwarded_for, "10.0.0.5");
        let unusable = peer.client(&with_forwarded(&["nonsense"]), &list);
        assert_eq!(unusable.ip, "10.0.0.5".parse::<IpAddr>().unwrap());
        assert_eq!(unusable.forwarded_for, "nonsense, 10.0.0.5");
    }

    #[test]
    fn the_trusted_list_takes_networks_and_addresses_and_refuses_the_rest() {
        let list = trusted("10.0.0.0/8, 192.0.2.1,2001:db8::/32");
        assert!(list.contains("10.255.0.1".parse().unwrap()));
        assert!(list.contains("192.0.2.1".parse().unwrap()));
        assert!(!list.contains("192.0.2.2".parse().unwrap()));
        assert!(list.contains("2001:db8::42".parse().unwrap()));
        let toml_list: TrustedProxies = serde_json::from_str(r#"["10.0.0.0/8", " 127.0.0.1 "]"#).unwrap();
        assert_eq!(toml_list.0.len(), 2);
        for bad in ["10.0.0.0/33", "example.com", "10.0.0"] {
            let err =
                serde_json::from_value::<TrustedProxies>(serde_json::Value::String(bad.into())).unwrap_err();
            assert!(err.to_string().contains("trusted_proxies"), "{bad}: {err}");
        }
    }
}
