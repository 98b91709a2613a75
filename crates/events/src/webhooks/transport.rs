//! One POST of one delivery, and what it came to.
//!
//! The client is `reqwest` (HTTP/1.1 over rustls; already in the tree for the API's tests)
//! rather than hyper-util's bare client: it brings TLS with the platform's roots, whole-request
//! timeouts and connection pooling ready-made, and it takes a custom DNS resolver — the one
//! seam the SSRF guard needs. Every host goes through [`GuardedResolver`] and the connection
//! is made to the addresses it checked; a literal address never reaches a resolver, so the URL
//! is checked again here before each request ([`validate_url`]). Redirects are not followed (a
//! 3xx is a failed attempt: following one would leave the checked address) and proxies from
//! the environment are ignored.

use std::sync::Arc;
use std::time::Duration;

use coffer_ledger::TraceParent;
use coffer_store::Delivery;
use reqwest::Client;
use reqwest::header::{CONTENT_TYPE, HeaderValue};

use super::signature::{SigningSecret, sign_all};
use super::target::{GuardedResolver, Lookup, TargetPolicy, validate_url};

/// What an attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint answered 2xx.
    Delivered(u16),
    /// The endpoint answered something else.
    Rejected(u16),
    /// No answer: refused address, bad URL or secret, connection error, timeout.
    Failed(String),
}

/// The HTTP client every delivery goes through.
#[derive(Debug, Clone)]
pub struct Transport {
    client: Client,
    policy: TargetPolicy,
}

impl Transport {
    /// A client whose every name goes through `lookup` and then the address check.
    pub fn new(
        policy: TargetPolicy,
        request_timeout: Duration,
        lookup: Arc<dyn Lookup>,
    ) -> Result<Self, reqwest::Error> {
        let client = Client::builder()
            .dns_resolver(GuardedResolver::new(policy.allow_private_networks, lookup))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(request_timeout)
            .user_agent(concat!("Coffer-Webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { client, policy })
    }

    /// Posts `delivery` to `url`, signed at `timestamp` (unix seconds) with each of `secrets`.
    pub async fn post(
        &self,
        delivery: &Delivery,
        url: &str,
        secrets: &[SigningSecret],
        timestamp: i64,
    ) -> Outcome {
        let url = match validate_url(url, self.policy) {
            Ok(url) => url,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        let id = delivery.id.to_string();
        let signature = sign_all(secrets, &id, timestamp, delivery.payload.as_bytes());
        let mut request = self
            .client
            .post(url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature);
        if let Some(trace) = traceparent(&delivery.payload) {
            request = request.header("traceparent", trace.as_str());
        }
        let request = request.body(delivery.payload.clone());
        match request.send().await {
            Ok(response) if response.status().is_success() => Outcome::Delivered(response.status().as_u16()),
            Ok(response) => Outcome::Rejected(response.status().as_u16()),
            Err(e) => Outcome::Failed(describe(e)),
        }
    }
}

/// The event's `traceparent`, sent as a header too: a receiver's HTTP tracing then joins the
/// trace that made the change without reading the body. Only a valid one is sent.
fn traceparent(payload: &str) -> Option<TraceParent> {
    #[derive(serde::Deserialize)]
    struct Traced<'a> {
        #[serde(borrow)]
        traceparent: Option<std::borrow::Cow<'a, str>>,
    }
    let traced: Traced = serde_json::from_str(payload).ok()?;
    TraceParent::try_from(traced.traceparent?.as_ref()).ok()
}

/// The error and its causes on one line: reqwest's own text ("error sending request") hides
/// the cause that matters (refused address, connection refused, timed out). The URL is left
/// out: its query may hold a token of the endpoint's, and this text is logged.
fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = if error.is_timeout() { format!("timed out: {error}") } else { error.to_string() };
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::traceparent;

    #[test]
    fn only_a_valid_traceparent_of_the_event_becomes_a_header() {
        let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let sent = traceparent(&format!(r#"{{"id":"x","traceparent":"{trace}","data":{{"a":1}}}}"#));
        assert_eq!(sent.as_ref().map(|t| t.as_str()), Some(trace));
        for payload in
            [r#"{"id":"x","data":{}}"#, r#"{"traceparent":"00-nope"}"#, r#"{"traceparent":7}"#, "not json"]
        {
            assert!(traceparent(payload).is_none(), "{payload}");
        }
    }
}
