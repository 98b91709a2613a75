//! The headers a proxy must rewrite: hop-by-hop headers belong to one connection and are
//! dropped both ways (RFC 9110 §7.6.1); every request leaves with an `x-request-id` and a valid
//! W3C `traceparent` so one id follows it through the gateway, the api and the events; the
//! client's address is appended to `x-forwarded-for`.

use coffer_ledger::TraceParent;
use http::header::{
    CONNECTION, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderName, HeaderValue};
use rand::Rng;
use uuid::Uuid;

pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
pub static FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Headers that never cross a proxy, whatever `Connection` says.
static HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// Drops the hop-by-hop headers, including those a `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one look at the names present costs less than removing each
    // hop-by-hop name in turn, which hashes it every time.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The request's id: the client's when it is 1–128 visible ASCII characters, else a new UUIDv7.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    headers
        .get(&REQUEST_ID)
        .filter(|v| (1..=128).contains(&v.len()) && v.as_bytes().iter().all(u8::is_ascii_graphic))
        .cloned()
        .unwrap_or_else(|| {
            let id = Uuid::now_v7();
            HeaderValue::from_str(id.hyphenated().encode_lower(&mut Uuid::encode_buffer()))
                .expect("a UUID is a header value")
        })
}

/// A new sampled traceparent: random trace and parent ids.
pub fn new_traceparent() -> HeaderValue {
    let mut rng = rand::rng();
    let trace: u128 = rng.random_range(1..=u128::MAX);
    let parent: u64 = rng.random_range(1..=u64::MAX);
    let mut value = *b"00-00000000000000000000000000000000-0000000000000000-01";
    hex::encode_to_slice(trace.to_be_bytes(), &mut value[3..35]).expect("16 bytes are 32 hex digits");
    hex::encode_to_slice(parent.to_be_bytes(), &mut value[36..52]).expect("8 bytes are 16 hex digits");
    HeaderValue::from_bytes(&value).expect("hex is a header value")
}

/// Rewrites a client's request headers for the upstream: hop-by-hop gone, the request id and
/// traceparent set, `x-forwarded-for` as `client` worked it out, and the client's `Host` kept in
/// `x-forwarded-host` (the upstream's own authority becomes `Host`).
pub fn to_upstream(headers: &mut HeaderMap, request_id: &HeaderValue, forwarded_for: HeaderValue, tls: bool) {
    strip_hop_by_hop(headers);
    headers.insert(REQUEST_ID.clone(), request_id.clone());
    if !headers.get(&TRACEPARENT).is_some_and(|v| TraceParent::is_valid(v.as_bytes())) {
        headers.insert(TRACEPARENT.clone(), new_traceparent());
        headers.remove(&TRACESTATE);
    }
    headers.insert(FORWARDED_FOR.clone(), forwarded_for);
    if let Some(host) = headers.remove(HOST) {
        headers.insert(FORWARDED_HOST.clone(), host);
    }
    let proto = if tls { "https" } else { "http" };
    headers.insert(FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_including_the_ones_connection_names() {
        let mut headers = HeaderMap::new();
        headers.insert(CONNECTION, HeaderValue::from_static("keep-alive, x-secret-hop"));
        headers.insert("x-secret-hop", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        headers.insert("upgrade", HeaderValue::from_static("websocket"));
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("content-type"));
    }

    #[test]
    fn new_traceparents_are_valid_and_distinct() {
        let made: std::collections::HashSet<HeaderValue> = (0..100).map(|_| new_traceparent()).collect();
        assert_eq!(made.len(), 100);
        assert!(made.iter().all(|value| TraceParent::is_valid(value.as_bytes())));
    }

    #[test]
    fn the_upstream_gets_ids_and_the_client_address() {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", HeaderValue::from_static("garbage"));
        headers.insert("tracestate", HeaderValue::from_static("vendor=1"));
        headers.insert(HOST, HeaderValue::from_static("api.example"));
        let id = request_id(&headers);
        to_upstream(&mut headers, &id, HeaderValue::from_static("192.0.2.7"), false);
        assert_eq!(headers["x-forwarded-for"], "192.0.2.7");
        assert_eq!(headers["x-forwarded-host"], "api.example");
        assert!(!headers.contains_key(HOST));
        assert!(TraceParent::is_valid(headers["traceparent"].as_bytes()));
        assert!(!headers.contains_key("tracestate"), "tracestate of a replaced trace is meaningless");
        assert_eq!(headers[&REQUEST_ID], id);

        let mut given = HeaderMap::new();
        given.insert(&REQUEST_ID, HeaderValue::from_static("req-1"));
        assert_eq!(request_id(&given), "req-1");
        given.insert(&REQUEST_ID, HeaderValue::from_static("has space"));
        assert_ne!(request_id(&given), "has space");
    }
}
