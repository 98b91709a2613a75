//! Authentication and scopes: `Authorization: Bearer <token>` → SHA-256 → the store's API key,
//! behind the store's [`KeyCache`] so the hot path does not read the database on every request.
//!
//! Tokens are 256 random bits, so a plain SHA-256 is as strong as a password hash and costs well
//! under a microsecond. Neither tokens nor the Authorization header are ever logged.
//!
//! A flood of bad tokens must not reach the store (DESIGN §5): a token with Coffer's prefix but
//! not its shape or checksum is refused from its text alone, a token the cache knows is answered
//! from it, and the rest are looked up on the store's own small pool for keys, within a per-client
//! allowance of failures ([`FailedAuths`]).

use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::extract::connect_info::ConnectInfo;
use coffer_ledger::Timestamp;
use coffer_store::{
    AdminChange, ApiKey, AuditContext, KeyCache, KeyDirectory, KeyId, NewApiKey, Scope, Store, StoreError,
    StoreResult, TokenHash, TokenKind, bearer_token, is_valid_token, issue_token,
};
use http::request::Parts;
use http::{Extensions, HeaderMap, header};
use uuid::Uuid;

use crate::audit::{Alarms, Origin};
use crate::auth_failures::{FailedAuths, Failure};
use crate::error::{ApiError, ErrorCode};
use crate::ratelimit::RateLimits;
use crate::state::AppState;

/// A new API token: `coffer_`, 256 random bits and a checksum, in hex (see
/// [`coffer_store::issue_token`]).
pub fn generate_token() -> String {
    issue_token()
}

/// The client address of a request, when the server provided it
/// (`Router::into_make_service_with_connect_info::<SocketAddr>()`): failed authentications are
/// limited per client address. Without it there is no per-address limit.
pub fn client_ip(extensions: &Extensions) -> Option<IpAddr> {
    extensions.get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip())
}

/// Shortest bootstrap token a server reachable beyond loopback accepts: an operator's own token
/// must be as hard to guess as one Coffer makes (it is compared, not checksummed).
pub const MIN_EXPOSED_BOOTSTRAP_TOKEN_LEN: usize = 32;

/// DESIGN §2 bootstrap: when the store holds no key at all, `token` (or a generated one) becomes
/// an admin key. Answers the token only when it generated it, for the binary to print once.
pub async fn bootstrap(store: &dyn Store, token: Option<&str>) -> StoreResult<Option<String>> {
    let (token, generated) = match token {
        Some(token) if !is_valid_token(token) || !TokenKind::of(token).may_exist() => {
            return Err(StoreError::unavailable(
                "the bootstrap token must be 1 to 512 visible ASCII characters, and one that starts \
                 with coffer_ must be a token Coffer issued",
            ));
        }
        Some(token) => (token.to_owned(), false),
        None => (generate_token(), true),
    };
    let key = NewApiKey {
        id: KeyId(Uuid::now_v7()),
        name: Some("bootstrap".into()),
        scopes: vec![Scope::Admin],
        rate_limit_per_second: None,
        expires_at: None,
        token_hash: TokenHash::of(&token),
        bare_token: TokenKind::of(&token) != TokenKind::Issued,
    };
    let hash = key.token_hash;
    let created =
        store.administer(AdminChange::BootstrapKey(key), &AuditContext::bootstrap()).await?.effect.applied();
    if !created && !generated {
        warn_if_ignored(store, hash).await?;
    }
    Ok((created && generated).then_some(token))
}

/// The store already had keys, so a configured bootstrap token made none. When it is the token
/// of a live admin key (the bootstrap key of an earlier start, say) nothing is wrong; otherwise
/// an operator who expects it to work would meet 401s with no clue, so this says why.
async fn warn_if_ignored(store: &dyn Store, hash: TokenHash) -> StoreResult<()> {
    let works = store
        .key_by_token(hash)
        .await?
        .is_some_and(|key| key.allows(Scope::Admin) && key.expires_at.is_none_or(|at| at > Timestamp::now()));
    if !works {
        tracing::warn!(
            "bootstrap_token (COFFER_BOOTSTRAP_TOKEN) is set but ignored: the store already has API keys \
             and this token is not an admin key here; use the admin token printed at the first start, \
             or make one with `coffer keys create --scope admin`, and unset bootstrap_token"
        );
    }
    Ok(())
}

/// An authenticated caller: its key, and its token's hash to check the key again later.
pub struct Principal {
    pub key: Arc<ApiKey>,
    token: TokenHash,
}

/// Verifies tokens (through the key cache) and applies each key's rate limit.
pub struct Authenticator {
    keys: KeyCache,
    limits: RateLimits,
    failures: FailedAuths,
    /// Where an address running out of failed authentications is recorded, when anywhere.
    alarms: Option<Arc<Alarms>>,
}

impl Authenticator {
    pub fn new(
        keys: Arc<dyn KeyDirectory>,
        ttl: Duration,
        limits: RateLimits,
        failures: FailedAuths,
    ) -> Self {
        Self { keys: KeyCache::new(keys, ttl), limits, failures, alarms: None }
    }

    /// Records in the audit trail each address that runs out of failed authentications.
    pub fn with_alarms(self, alarms: Arc<Alarms>) -> Self {
        Self { alarms: Some(alarms), ..self }
    }

    /// Counts a failed authentication of `client`'s; the first that runs it out of allowance is
    /// a security event for the audit trail.
    fn failed(&self, client: Option<&str>, failure: Failure, headers: &HeaderMap) {
        if self.failures.record(client, failure)
            && let (Some(alarms), Some(client)) = (&self.alarms, client)
        {
            let request_id = headers.get(&crate::observe::REQUEST_ID).and_then(|v| v.to_str().ok());
            alarms.auth_failures(client, request_id.map(str::to_owned));
        }
    }

    /// The caller of a request from `client`, after its rate limit: 401 without a live key, 429
    /// when the key or the client's failed authentications are over their limit.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        client: Option<IpAddr>,
    ) -> Result<Arc<Principal>, ApiError> {
        let client = client.map(coffer_ratelimit::address_bucket);
        let client = client.as_deref();
        let token = bearer(headers).inspect_err(|_| self.failed(client, Failure::Missing, headers))?;
        if !self.keys.may_exist(token).await? {
            // Refused without a look-up, yet still a guess: an address out of allowance is
            // answered 429 whatever it presents, so guessing never pays.
            self.failures.check(client)?;
            if TokenKind::of(token) == TokenKind::Forged {
                self.failed(client, Failure::Malformed, headers);
                return Err(unauthorized(
                    "the API key is not a token Coffer issued (mistyped or cut short?)",
                ));
            }
            self.failed(client, Failure::Unknown, headers);
            return Err(unauthorized(INVALID_KEY));
        }
        let hash = TokenHash::of(token);
        let key = match self.keys.cached_key(&hash) {
            Some(known) => known,
            None => {
                // A token verified before is read again whatever its address did: the limit is
                // on guessing, and an honest client behind the guesser's NAT must go on.
                if !self.keys.was_valid(&hash) {
                    self.failures.check(client)?;
                }
                self.keys.find(hash).await?
            }
        };
        let Some(key) = key else {
            self.failed(client, Failure::Unknown, headers);
            return Err(unauthorized(INVALID_KEY));
        };
        self.limits.check(&key)?;
        Ok(Arc::new(Principal { key, token: hash }))
    }

    /// Whether the caller's key still works: the check an open event stream repeats, so that a
    /// revoked or expired key's stream ends within the cache's TTL. A store that cannot answer
    /// keeps the stream open (the key was valid, and an outage is no revocation).
    pub async fn still_valid(&self, principal: &Principal) -> bool {
        self.keys.find(principal.token).await.map_or(true, |key| key.is_some())
    }

    /// Forgets a revoked key at once, so this process refuses it from the next request on.
    pub fn evict(&self, id: KeyId) {
        self.keys.evict(id);
        self.limits.forget(id);
    }
}

const INVALID_KEY: &str = "the API key is not valid, was revoked or expired";

fn unauthorized(detail: &'static str) -> ApiError {
    ApiError::new(ErrorCode::Unauthorized, detail)
}

fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("send an API key as Authorization: Bearer <token>"))?;
    let value = value.to_str().map_err(|_| unauthorized("the Authorization header is malformed"))?;
    bearer_token(value).ok_or_else(|| unauthorized("send an API key as Authorization: Bearer <token>"))
}

/// The scope a route needs, as a type so the extractor can check it before the body is read.
pub trait Needs: Send + Sync + 'static {
    const SCOPE: Scope;
}

/// Reads.
pub struct ReadScope;
/// Creating accounts and transfers.
pub struct WriteScope;
/// Ledgers and keys.
pub struct AdminScope;
/// Reading the audit trail.
pub struct AuditScope;

impl Needs for ReadScope {
    const SCOPE: Scope = Scope::Read;
}
impl Needs for WriteScope {
    const SCOPE: Scope = Scope::Write;
}
impl Needs for AdminScope {
    const SCOPE: Scope = Scope::Admin;
}
impl Needs for AuditScope {
    const SCOPE: Scope = Scope::Audit;
}

/// Proof that the caller is authenticated and holds scope `S` (401, 429 or 403 otherwise).
pub struct Caller<S: Needs>(pub Arc<Principal>, pub PhantomData<S>);

impl<S: Needs> FromRequestParts<AppState> for Caller<S> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // The idempotency layer authenticates (and rate-limits) keyed requests before it stores
        // anything; it leaves the principal here so that is done once.
        let principal = match parts.extensions.get::<Arc<Principal>>() {
            Some(principal) => principal.clone(),
            None => state.auth.authenticate(&parts.headers, client_ip(&parts.extensions)).await?,
        };
        if !principal.key.allows(S::SCOPE) {
            let detail = match S::SCOPE {
                Scope::Read => "this API key lacks the read scope",
                Scope::Write => "this API key lacks the write scope",
                Scope::Admin => "this API key lacks the admin scope",
                Scope::Audit => "this API key lacks the audit scope",
            };
            if matches!(S::SCOPE, Scope::Admin | Scope::Audit) {
                let route = crate::observe::route_label(parts.extensions.get::<axum::extract::MatchedPath>());
                let method = parts.method.as_str();
                state.alarms.denied(
                    &principal,
                    &Origin::of(parts),
                    method,
                    route,
                    parts.uri.path(),
                    S::SCOPE,
                );
            }
            return Err(ApiError::new(ErrorCode::Forbidden, detail));
        }
        // The key's id (never its token) goes on the request's span.
        tracing::Span::current().record("key_id", tracing::field::display(principal.key.id.0));
        Ok(Self(principal, PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_ledger::Timestamp;
    use http::HeaderValue;
    use std::num::NonZeroU32;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Two keys (one with an issued token, one with an operator's own), and counts of what
    /// reached the "store": look-ups of other tokens, reads of the operator-chosen hashes.
    struct CountingKeys {
        token: String,
        custom: String,
        lookups: AtomicUsize,
        bare_reads: AtomicUsize,
    }

    impl CountingKeys {
        fn new() -> Self {
            Self {
                token: generate_token(),
                custom: "an-operators-own-bootstrap-token-of-40-chars".into(),
                lookups: AtomicUsize::new(0),
                bare_reads: AtomicUsize::new(0),
            }
        }
    }

    #[async_trait::async_trait]
    impl KeyDirectory for CountingKeys {
        async fn bare_token_hashes(&self) -> StoreResult<Vec<TokenHash>> {
            self.bare_reads.fetch_add(1, Ordering::SeqCst);
            Ok(vec![TokenHash::of(&self.custom)])
        }

        async fn key_by_token(&self, hash: TokenHash) -> StoreResult<Option<ApiKey>> {
            let known = hash == TokenHash::of(&self.token) || hash == TokenHash::of(&self.custom);
            if !known {
                self.lookups.fetch_add(1, Ordering::SeqCst);
            }
            Ok(known.then(|| ApiKey {
                id: KeyId(Uuid::nil()),
                name: None,
                scopes: vec![Scope::Read],
                rate_limit_per_second: None,
                created_at: Timestamp::from_micros(0),
                revoked_at: None,
                expires_at: None,
            }))
        }
    }

    fn bearing(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
        headers
    }

    #[tokio::test]
    async fn junk_never_reaches_the_store_and_a_guessing_address_is_cut_off() {
        let keys = Arc::new(CountingKeys::new());
        let n = |n| NonZeroU32::new(n).unwrap();
        let auth = Authenticator::new(
            keys.clone(),
            Duration::from_millis(50),
            RateLimits::new(n(1000), n(1000)),
            FailedAuths::new(n(1), n(3)),
        );
        let attacker = Some("192.0.2.66".parse().unwrap());
        let guesser = Some("192.0.2.99".parse().unwrap());
        let honest = Some("192.0.2.1".parse().unwrap());
        assert!(auth.authenticate(&bearing(&keys.token), attacker).await.is_ok());

        // Tokens with Coffer's prefix and a wrong checksum or shape: refused from their text.
        let mut forged = generate_token();
        forged.replace_range(10..11, if &forged[10..11] == "0" { "1" } else { "0" });
        for token in [forged.as_str(), "coffer_", "coffer_zz", &format!("{}0", keys.token)] {
            let err = auth.authenticate(&bearing(token), attacker).await.err().expect(token);
            assert_eq!(err.code, ErrorCode::Unauthorized);
        }
        assert_eq!(keys.lookups.load(Ordering::SeqCst), 0, "a forged token was looked up");

        // Tokens without a checksum, with or without the prefix: compared with the bare tokens'
        // hashes, read once per TTL.
        let legacy = |i: u8| format!("coffer_{}", format!("{i:02x}").repeat(32));
        assert_eq!(TokenKind::of(&legacy(1)), TokenKind::Legacy);
        for i in 0..50 {
            let token = if i % 2 == 0 { format!("guess-{i}") } else { legacy(i) };
            let err = auth.authenticate(&bearing(&token), guesser).await.err().unwrap();
            let expected = if i < 4 { ErrorCode::Unauthorized } else { ErrorCode::RateLimited };
            assert_eq!(err.code, expected, "guess {i}");
        }
        assert_eq!(keys.lookups.load(Ordering::SeqCst), 0, "a guess without a checksum was looked up");
        assert_eq!(keys.bare_reads.load(Ordering::SeqCst), 1);
        assert!(auth.authenticate(&bearing(&keys.custom), honest).await.is_ok());

        // Checksummed tokens of no key are looked up until the address runs out of failures;
        // the forged ones above used up the attacker's allowance.
        let err = auth.authenticate(&bearing(&generate_token()), attacker).await.err().unwrap();
        assert_eq!(err.code, ErrorCode::RateLimited);
        assert_eq!(keys.lookups.load(Ordering::SeqCst), 0);
        // The verified key still works from there, even once its cache entry is stale, and other
        // addresses may still look up.
        assert!(auth.authenticate(&bearing(&keys.token), attacker).await.is_ok());
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(auth.authenticate(&bearing(&keys.token), attacker).await.is_ok());
        let err = auth.authenticate(&bearing(&generate_token()), honest).await.err().unwrap();
        assert_eq!(err.code, ErrorCode::Unauthorized);
        assert_eq!(keys.lookups.load(Ordering::SeqCst), 1);
        // Once stale, the bare tokens' hashes are read again, once.
        for i in 0..5 {
            let _ = auth.authenticate(&bearing(&format!("late-guess-{i}")), guesser).await;
        }
        assert_eq!(keys.bare_reads.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn the_header_must_hold_a_bearer_token() {
        let mut headers = HeaderMap::new();
        assert!(bearer(&headers).is_err());
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert!(bearer(&headers).is_err());
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(bearer(&headers).unwrap(), "abc");
    }

    #[test]
    fn tokens_are_long_random_checksummed_and_url_safe() {
        let (a, b) = (generate_token(), generate_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), "coffer_".len() + 64 + 8);
        assert_eq!(TokenKind::of(&a), TokenKind::Issued);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'));
    }
}
