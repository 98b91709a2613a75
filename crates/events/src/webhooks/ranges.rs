//! The addresses no webhook is sent to, as data: one table per address family.
//!
//! A webhook receiver is a public HTTP server, so a destination must be a globally routable
//! unicast address. The tables hold every entry of the IANA IPv4 and IPv6 Special-Purpose
//! Address Registries (RFC 6890 and its updates), multicast, the deprecated IPv6 ranges that
//! still reach inside (IPv4-compatible `::/96`, site-local `fec0::/10`), and on IPv6 everything
//! outside 2000::/3, the only space allocated for global unicast.
//!
//! A few registry entries are marked "globally reachable" (192.0.0.9/32, 192.0.0.10/32, the
//! AS112 and AMT blocks, 2001:1::1/128, 2001:3::/32, …). They are refused all the same: they
//! are anycast services (DNS sinks, relays, port control), never an HTTP receiver, and
//! refusing a whole block is simpler to check than a list of holes punched in it
//! (docs/DECISIONS.md, "Webhook hardening").
//!
//! IPv4-mapped, IPv4-compatible and NAT64 addresses are refused outright rather than judged by
//! the IPv4 address inside: a receiver has a native address to register instead, and a
//! translated one is a way around the IPv4 table.
//!
//! The first entry that contains an address names it, so more specific entries come first.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One refused range: a network, its prefix length and what it is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialRange {
    pub network: IpAddr,
    pub prefix_len: u8,
    pub name: &'static str,
}

impl SpecialRange {
    const fn v4(octets: [u8; 4], prefix_len: u8, name: &'static str) -> Self {
        let [a, b, c, d] = octets;
        Self { network: IpAddr::V4(Ipv4Addr::new(a, b, c, d)), prefix_len, name }
    }

    const fn v6(segments: [u16; 8], prefix_len: u8, name: &'static str) -> Self {
        let [a, b, c, d, e, f, g, h] = segments;
        Self { network: IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)), prefix_len, name }
    }

    /// Whether `ip` lies in this range (never across families).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => same_prefix(u32::from(net), u32::from(ip), self.prefix_len),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                same_prefix(u128::from(net), u128::from(ip), self.prefix_len)
            }
            _ => false,
        }
    }
}

/// Whether the first `len` bits of `a` and `b` agree.
fn same_prefix<T>(a: T, b: T, len: u8) -> bool
where
    T: std::ops::BitXor<Output = T> + std::ops::Shr<u32, Output = T> + PartialEq + From<u8>,
{
    let bits = u32::try_from(std::mem::size_of::<T>() * 8).expect("a small integer");
    // A shift by the whole width overflows; a /0 contains everything.
    len == 0 || (a ^ b) >> (bits - u32::from(len)) == T::from(0)
}

impl fmt::Display for SpecialRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}/{})", self.name, self.network, self.prefix_len)
    }
}

const RFC1918: &str = "private-use (RFC 1918)";
const NOT_GLOBAL_UNICAST: &str = "not global unicast (outside 2000::/3)";

/// IPv4: the special-purpose registry, multicast and broadcast.
const IPV4: &[SpecialRange] = &[
    SpecialRange::v4([0, 0, 0, 0], 8, "\"this network\""),
    SpecialRange::v4([10, 0, 0, 0], 8, RFC1918),
    SpecialRange::v4([100, 64, 0, 0], 10, "shared address space (CGNAT)"),
    SpecialRange::v4([127, 0, 0, 0], 8, "loopback"),
    SpecialRange::v4([169, 254, 0, 0], 16, "link-local (cloud metadata lives here)"),
    SpecialRange::v4([172, 16, 0, 0], 12, RFC1918),
    SpecialRange::v4([192, 0, 0, 0], 24, "IETF protocol assignments"),
    SpecialRange::v4([192, 0, 2, 0], 24, "documentation (TEST-NET-1)"),
    SpecialRange::v4([192, 31, 196, 0], 24, "AS112-v4"),
    SpecialRange::v4([192, 52, 193, 0], 24, "AMT"),
    SpecialRange::v4([192, 88, 99, 0], 24, "deprecated 6to4 relay anycast"),
    SpecialRange::v4([192, 168, 0, 0], 16, RFC1918),
    SpecialRange::v4([192, 175, 48, 0], 24, "direct delegation AS112 service"),
    SpecialRange::v4([198, 18, 0, 0], 15, "benchmarking"),
    SpecialRange::v4([198, 51, 100, 0], 24, "documentation (TEST-NET-2)"),
    SpecialRange::v4([203, 0, 113, 0], 24, "documentation (TEST-NET-3)"),
    SpecialRange::v4([224, 0, 0, 0], 4, "multicast"),
    SpecialRange::v4([255, 255, 255, 255], 32, "limited broadcast"),
    SpecialRange::v4([240, 0, 0, 0], 4, "reserved"),
];

/// IPv6: the special-purpose registry, the deprecated ranges, multicast, and what lies outside
/// the global unicast space.
const IPV6: &[SpecialRange] = &[
    SpecialRange::v6([0, 0, 0, 0, 0, 0, 0, 0], 128, "unspecified"),
    SpecialRange::v6([0, 0, 0, 0, 0, 0, 0, 1], 128, "loopback"),
    SpecialRange::v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96, "IPv4-mapped"),
    SpecialRange::v6([0, 0, 0, 0, 0, 0, 0, 0], 96, "IPv4-compatible (deprecated)"),
    SpecialRange::v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96, "NAT64 well-known prefix"),
    SpecialRange::v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48, "NAT64 local-use prefix"),
    SpecialRange::v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64, "discard-only"),
    SpecialRange::v6([0x100, 0, 0, 1, 0, 0, 0, 0], 64, "dummy prefix"),
    SpecialRange::v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32, "Teredo"),
    SpecialRange::v6([0x2001, 2, 0, 0, 0, 0, 0, 0], 48, "benchmarking"),
    SpecialRange::v6([0x2001, 3, 0, 0, 0, 0, 0, 0], 32, "AMT"),
    SpecialRange::v6([0x2001, 4, 0x112, 0, 0, 0, 0, 0], 48, "AS112-v6"),
    SpecialRange::v6([0x2001, 0x10, 0, 0, 0, 0, 0, 0], 28, "deprecated ORCHID"),
    SpecialRange::v6([0x2001, 0x20, 0, 0, 0, 0, 0, 0], 28, "ORCHIDv2"),
    SpecialRange::v6([0x2001, 0x30, 0, 0, 0, 0, 0, 0], 28, "drone remote ID tags"),
    SpecialRange::v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23, "IETF protocol assignments"),
    SpecialRange::v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32, "documentation"),
    SpecialRange::v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16, "6to4"),
    SpecialRange::v6([0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0], 48, "direct delegation AS112 service"),
    SpecialRange::v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, "documentation"),
    SpecialRange::v6([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16, "segment routing (SRv6) SIDs"),
    SpecialRange::v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, "unique-local"),
    SpecialRange::v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, "link-local"),
    SpecialRange::v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, "site-local (deprecated)"),
    SpecialRange::v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, "multicast"),
    SpecialRange::v6([0, 0, 0, 0, 0, 0, 0, 0], 3, NOT_GLOBAL_UNICAST),
    SpecialRange::v6([0x4000, 0, 0, 0, 0, 0, 0, 0], 2, NOT_GLOBAL_UNICAST),
    SpecialRange::v6([0x8000, 0, 0, 0, 0, 0, 0, 0], 1, NOT_GLOBAL_UNICAST),
];

/// Every refused range: the IPv4 table, then the IPv6 one.
pub fn ranges() -> impl Iterator<Item = &'static SpecialRange> {
    IPV4.iter().chain(IPV6)
}

/// The range that refuses `ip`, or `None` for an address webhooks may reach.
pub fn special_range(ip: IpAddr) -> Option<&'static SpecialRange> {
    let table = if ip.is_ipv4() { IPV4 } else { IPV6 };
    table.iter().find(|range| range.contains(ip))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn range_of(ip: &str) -> Option<String> {
        special_range(ip.parse().unwrap()).map(|r| format!("{}/{}", r.network, r.prefix_len))
    }

    /// One address inside each range, with the range that must name it. Together they cover
    /// the whole table, so a range dropped from it (or shadowed by a wider one put first)
    /// fails here.
    const REPRESENTATIVES: &[(&str, &str)] = &[
        ("0.1.2.3", "0.0.0.0/8"),
        ("10.200.3.4", "10.0.0.0/8"),
        ("100.64.0.1", "100.64.0.0/10"),
        ("100.127.255.255", "100.64.0.0/10"),
        ("127.0.0.1", "127.0.0.0/8"),
        ("127.255.0.9", "127.0.0.0/8"),
        ("169.254.169.254", "169.254.0.0/16"),
        ("172.16.0.1", "172.16.0.0/12"),
        ("172.31.255.255", "172.16.0.0/12"),
        ("192.0.0.9", "192.0.0.0/24"),
        ("192.0.0.170", "192.0.0.0/24"),
        ("192.0.2.10", "192.0.2.0/24"),
        ("192.31.196.1", "192.31.196.0/24"),
        ("192.52.193.1", "192.52.193.0/24"),
        ("192.88.99.1", "192.88.99.0/24"),
        ("192.168.1.1", "192.168.0.0/16"),
        ("192.175.48.6", "192.175.48.0/24"),
        ("198.19.255.1", "198.18.0.0/15"),
        ("198.51.100.7", "198.51.100.0/24"),
        ("203.0.113.200", "203.0.113.0/24"),
        ("224.0.0.251", "224.0.0.0/4"),
        ("239.255.255.250", "224.0.0.0/4"),
        ("240.0.0.1", "240.0.0.0/4"),
        ("255.255.255.255", "255.255.255.255/32"),
        ("::", "::/128"),
        ("::1", "::1/128"),
        ("::ffff:1.1.1.1", "::ffff:0.0.0.0/96"),
        ("::ffff:127.0.0.1", "::ffff:0.0.0.0/96"),
        ("::8.8.8.8", "::/96"),
        ("64:ff9b::8.8.8.8", "64:ff9b::/96"),
        ("64:ff9b:1::a00:1", "64:ff9b:1::/48"),
        ("100::1", "100::/64"),
        ("100:0:0:1::1", "100:0:0:1::/64"),
        ("2001:0:4136:e378::1", "2001::/32"),
        ("2001:1::1", "2001::/23"),
        ("2001:2::1", "2001:2::/48"),
        ("2001:3::1", "2001:3::/32"),
        ("2001:4:112::1", "2001:4:112::/48"),
        ("2001:10::1", "2001:10::/28"),
        ("2001:20::1", "2001:20::/28"),
        ("2001:30::1", "2001:30::/28"),
        ("2001:1ff::1", "2001::/23"),
        ("2001:db8::1", "2001:db8::/32"),
        ("2002:c000:204::1", "2002::/16"),
        ("2620:4f:8000::1", "2620:4f:8000::/48"),
        ("3fff:abc::1", "3fff::/20"),
        ("5f00:1::1", "5f00::/16"),
        ("fc00::1", "fc00::/7"),
        ("fd12:3456::1", "fc00::/7"),
        ("fe80::1", "fe80::/10"),
        ("fec0::1", "fec0::/10"),
        ("ff02::1", "ff00::/8"),
        ("1000::1", "::/3"),
        ("4000::1", "4000::/2"),
        ("6000::1", "4000::/2"),
        ("8000::1", "8000::/1"),
        ("e000::1", "8000::/1"),
    ];

    #[test]
    fn an_address_in_each_range_is_refused_by_that_range() {
        for (ip, range) in REPRESENTATIVES {
            assert_eq!(range_of(ip).as_deref(), Some(*range), "{ip}");
        }
        let covered: BTreeSet<&str> = REPRESENTATIVES.iter().map(|(_, range)| *range).collect();
        let table: BTreeSet<String> = ranges().map(|r| format!("{}/{}", r.network, r.prefix_len)).collect();
        let table: BTreeSet<&str> = table.iter().map(String::as_str).collect();
        assert_eq!(covered, table, "every range has a representative, and only ranges in the table do");
    }

    #[test]
    fn globally_routable_unicast_addresses_pass() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "9.255.255.255",
            "11.0.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "126.255.255.255",
            "128.0.0.1",
            "169.253.255.255",
            "172.15.255.255",
            "172.32.0.1",
            "192.0.1.1",
            "192.0.3.1",
            "192.88.98.1",
            "192.167.255.255",
            "192.169.0.1",
            "198.17.255.255",
            "198.20.0.1",
            "203.0.112.1",
            "223.255.255.254",
            "2001:200::1",
            "2001:4860:4860::8888",
            "2606:4700:4700::1111",
            "2a00:1450:4001::1",
            "2001:db7::1",
            "2003::1",
            "3ffe:ffff::1",
        ] {
            assert_eq!(range_of(ip), None, "{ip} is public");
        }
    }

    #[test]
    fn the_refusal_text_names_the_range() {
        let range = special_range("169.254.169.254".parse().unwrap()).unwrap();
        assert_eq!(range.to_string(), "link-local (cloud metadata lives here) (169.254.0.0/16)");
    }
}
