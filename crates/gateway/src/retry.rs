//! When a request may be sent again, and how many retries the cluster can afford.
//!
//! A retry is only safe when it cannot apply a write twice. Two cases qualify:
//! - nothing reached the upstream (the connection was refused or failed before the request went
//!   out) — safe for every request;
//! - the request says it is safe to repeat: an idempotent method, an `Idempotency-Key`, or a
//!   client-chosen top-level `"id"` in its JSON body (Coffer's creates are idempotent by id).
//!   Such a request may also be retried after a broken exchange or a 502/503/504.
//!
//! Retries are paid from a token bucket: every request deposits `budget_percent / 100` of a
//! token, a floor of `min_per_second` tokens arrives each second, and each retry takes one. When
//! a whole cluster fails, retries stop at about a fifth of the traffic instead of tripling it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::{HeaderMap, Method, StatusCode};
use rand::Rng;
use serde::Deserialize;
use serde::de::IgnoredAny;

/// One retry, in the bucket's unit (thousandths of a retry, so shares add up exactly).
const RETRY_COST: u64 = 1000;
/// The most the bucket holds: 100 retries in one burst.
const BUDGET_CAP: u64 = 100 * RETRY_COST;
/// The longest pause before a retry.
const BACKOFF_CAP: Duration = Duration::from_millis(200);

/// Whether a request may be repeated once it reached an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// Repeating it cannot apply it twice.
    Safe,
    /// It may only be sent again if it certainly never left.
    OnlyIfUnsent,
}

/// Decides from the method, the headers and (when held) the body.
pub fn classify(method: &Method, headers: &HeaderMap, body: Option<&[u8]>) -> Replay {
    let idempotent_method =
        matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE);
    if idempotent_method || headers.contains_key("idempotency-key") || body.is_some_and(has_client_id) {
        Replay::Safe
    } else {
        Replay::OnlyIfUnsent
    }
}

/// Whether `body` is a JSON object with a non-null top-level `"id"`. Everything else in the body
/// is skipped unparsed (`"id": null` reads as `None`).
fn has_client_id(body: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct WithId {
        id: Option<IgnoredAny>,
    }
    // A derived struct also reads from a JSON array; only an object counts.
    let object = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    object && serde_json::from_slice::<WithId>(body).is_ok_and(|parsed| parsed.id.is_some())
}

/// An upstream answer that asks to be tried elsewhere.
pub fn is_retryable_status(status: StatusCode) -> bool {
    matches!(status, StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT)
}

/// The pause before retry number `retry` (1-based): `base × 2^(retry-1)`, jittered down to
/// between half and all of it, at most [`BACKOFF_CAP`].
pub fn backoff(base: Duration, retry: u32) -> Duration {
    let full = base.saturating_mul(1 << retry.saturating_sub(1).min(10)).min(BACKOFF_CAP);
    full.mul_f64(rand::rng().random_range(0.5..=1.0))
}

/// The retry budget, a token bucket shared by every request of the gateway.
#[derive(Debug)]
pub struct Budget {
    /// Thousandths of a retry each request earns.
    per_request: u64,
    /// Retries that arrive each second whatever the traffic.
    per_second: u64,
    /// Thousandths of a retry in the bucket, and when time last refilled it.
    state: Mutex<(u64, Instant)>,
}

impl Budget {
    pub fn new(percent: u32, min_per_second: u32) -> Self {
        Self {
            per_request: u64::from(percent) * RETRY_COST / 100,
            per_second: u64::from(min_per_second),
            state: Mutex::new((BUDGET_CAP, Instant::now())),
        }
    }

    /// A request arrived: it earns its share of a retry.
    pub fn deposit(&self) {
        let mut state = self.lock();
        state.0 = (state.0 + self.per_request).min(BUDGET_CAP);
    }

    /// Takes a token for one retry, or refuses.
    pub fn withdraw(&self) -> bool {
        let mut state = self.lock();
        let now = Instant::now();
        let elapsed_ms = now.duration_since(state.1).as_millis() as u64;
        // Time only moves the refill mark forward when it adds something, so that frequent
        // calls do not round every refill down to nothing.
        let refill = elapsed_ms.saturating_mul(self.per_second);
        if refill > 0 {
            *state = ((state.0 + refill).min(BUDGET_CAP), now);
        }
        if state.0 < RETRY_COST {
            return false;
        }
        state.0 -= RETRY_COST;
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, Instant)> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (http::HeaderName::from_static(k), http::HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn only_requests_that_cannot_apply_twice_are_safe() {
        let none = HeaderMap::new();
        for method in [Method::GET, Method::HEAD, Method::OPTIONS, Method::PUT, Method::DELETE] {
            assert_eq!(classify(&method, &none, None), Replay::Safe, "{method}");
        }
        assert_eq!(classify(&Method::POST, &none, None), Replay::OnlyIfUnsent);
        assert_eq!(classify(&Method::PATCH, &none, Some(b"{}")), Replay::OnlyIfUnsent);
        let key = headers(&[("idempotency-key", "k1")]);
        assert_eq!(classify(&Method::POST, &key, None), Replay::Safe);
        let with_id = br#"{"amount": 5, "id": "0190f7e2-0000-7000-8000-000000000001", "x": [1, {"id": 2}]}"#;
        assert_eq!(classify(&Method::POST, &none, Some(with_id)), Replay::Safe);
        for without in [
            &br#"{"amount": 5, "nested": {"id": "x"}}"#[..],
            br#"{"id": null}"#,
            br#"[{"id": "x"}]"#,
            br#"{"id": "x""#,
            b"id=x",
            b"",
        ] {
            assert_eq!(
                classify(&Method::POST, &none, Some(without)),
                Replay::OnlyIfUnsent,
                "{}",
                String::from_utf8_lossy(without)
            );
        }
    }

    #[test]
    fn the_budget_pays_a_share_of_requests_and_no_more() {
        let budget = Budget::new(20, 0);
        let mut paid = 0;
        while budget.withdraw() {
            paid += 1;
        }
        assert_eq!(paid, 100, "the bucket starts full");
        for _ in 0..1000 {
            budget.deposit();
        }
        let mut paid = 0;
        while budget.withdraw() {
            paid += 1;
        }
        assert_eq!(paid, 100, "1,000 requests at 20 % pay 200 retries, capped at the bucket");
        for _ in 0..50 {
            budget.deposit();
        }
        let mut paid = 0;
        while budget.withdraw() {
            paid += 1;
        }
        assert_eq!(paid, 10, "50 requests pay 10 retries");
    }

    #[test]
    fn the_backoff_grows_with_jitter_and_a_cap() {
        let base = Duration::from_millis(10);
        for _ in 0..100 {
            let first = backoff(base, 1);
            assert!(first >= Duration::from_millis(5) && first <= base);
            let second = backoff(base, 2);
            assert!(second >= Duration::from_millis(10) && second <= Duration::from_millis(20));
            assert!(backoff(base, 30) <= BACKOFF_CAP);
        }
    }
}
