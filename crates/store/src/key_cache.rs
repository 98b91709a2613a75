//! A small cache in front of a [`KeyDirectory`], so that authenticating a request does not read
//! the database every time. The api replicas and the gateway both use it.
//!
//! Answers are kept for a TTL, valid or not: a flood of one bad token costs one lookup per TTL.
//! A revoked key is therefore refused within one TTL everywhere, and at once by the process that
//! revoked it ([`KeyCache::evict`]).
//!
//! A flood of *different* bad tokens would miss the cache every time, so a token is first judged
//! without its key ([`KeyCache::may_exist`]): a checksummed one by its checksum, any other against
//! the hashes of the few keys whose token has none ([`BareTokens`]).

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use coffer_ledger::Timestamp;
use subtle::ConstantTimeEq;

use crate::bare_tokens::BareTokens;
use crate::{ApiKey, KeyDirectory, KeyId, StoreResult, TokenHash, TokenKind};

/// Cached tokens (valid or not) before the cache is pruned.
const MAX_CACHED: usize = 10_000;

struct Entry {
    hash: TokenHash,
    /// `None`: no such key, or revoked.
    key: Option<Arc<ApiKey>>,
    fetched: Instant,
}

pub struct KeyCache {
    directory: Arc<dyn KeyDirectory>,
    ttl: Duration,
    /// Keyed by the first half of the token's hash; the whole hash is then compared in constant
    /// time, so the map's own lookup never compares secret-derived bytes in full.
    entries: RwLock<HashMap<[u8; 16], Entry>>,
    bare: BareTokens,
}

impl KeyCache {
    pub fn new(directory: Arc<dyn KeyDirectory>, ttl: Duration) -> Self {
        Self {
            directory: directory.clone(),
            ttl,
            entries: RwLock::new(HashMap::new()),
            bare: BareTokens::new(directory.clone(), ttl),
        }
    }

    /// Whether `token` may be a key's, so that its key is worth reading: a checksummed token when
    /// its checksum holds, any other when its hash is a bare token's ([`BareTokens`]). An error
    /// only when those hashes have never been read and cannot be now.
    pub async fn may_exist(&self, token: &str) -> StoreResult<bool> {
        match TokenKind::of(token) {
            TokenKind::Issued => Ok(true),
            TokenKind::Forged => Ok(false),
            TokenKind::Legacy | TokenKind::Custom => self.bare.contains(&TokenHash::of(token)).await,
        }
    }

    /// The live (unrevoked, unexpired) key whose token hashes to `hash`, or `None`.
    pub async fn find(&self, hash: TokenHash) -> StoreResult<Option<Arc<ApiKey>>> {
        let found = match self.cached(&hash) {
            Some(found) => found,
            None => self.fetch(hash).await?,
        };
        // Expiry is checked on every use, not when the key was read: a cached key stops at
        // its `expires_at` to the microsecond.
        Ok(found.filter(|key| key.is_live(Timestamp::now())))
    }

    /// The cached answer for `hash`, if one is fresh: `Some(None)` when the token is known to be
    /// no key's.
    pub fn cached_key(&self, hash: &TokenHash) -> Option<Option<Arc<ApiKey>>> {
        self.cached(hash).map(|found| found.filter(|key| key.is_live(Timestamp::now())))
    }

    /// Whether `hash` was a live key's when last read, however long ago (while the cache still
    /// holds it): such a token is worth reading again even from a client address that is out
    /// of failed authentications, since only a valid token can have got here.
    pub fn was_valid(&self, hash: &TokenHash) -> bool {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        entries.get(&prefix(hash)).is_some_and(|entry| {
            let same: bool = entry.hash.0.ct_eq(&hash.0).into();
            same && entry.key.is_some()
        })
    }

    async fn fetch(&self, hash: TokenHash) -> StoreResult<Option<Arc<ApiKey>>> {
        let key = self.directory.key_by_token(hash).await?;
        let key = key.filter(|k| k.revoked_at.is_none()).map(Arc::new);
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= MAX_CACHED {
            // Bounded against a flood of random tokens: drop what is stale, then everything.
            entries.retain(|_, e| e.fetched.elapsed() < self.ttl);
            if entries.len() >= MAX_CACHED {
                entries.clear();
            }
        }
        entries.insert(prefix(&hash), Entry { hash, key: key.clone(), fetched: Instant::now() });
        Ok(key)
    }

    fn cached(&self, hash: &TokenHash) -> Option<Option<Arc<ApiKey>>> {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        let entry = entries.get(&prefix(hash))?;
        let same: bool = entry.hash.0.ct_eq(&hash.0).into();
        (same && entry.fetched.elapsed() < self.ttl).then(|| entry.key.clone())
    }

    /// Forgets a revoked key at once, so this process refuses it from the next request on.
    pub fn evict(&self, id: KeyId) {
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        entries.retain(|_, e| e.key.as_ref().is_none_or(|k| k.id != id));
    }
}

pub(crate) fn prefix(hash: &TokenHash) -> [u8; 16] {
    let mut out = [0u8; 16];
    out.copy_from_slice(&hash.0[..16]);
    out
}
