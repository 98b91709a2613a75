//! The hashes of the keys whose token carries no checksum: an operator's own bootstrap token, or
//! a token issued before tokens had one. Only these can match a token the checksum cannot vouch
//! for, so a server holds them in memory and refuses any other such token without a look-up.
//!
//! They are read again once per TTL, by one request while the others wait for its answer, so a
//! flood of random tokens costs one read per TTL however many addresses it comes from. A key
//! bootstrapped meanwhile on another server is therefore known here within one TTL.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;

use crate::key_cache::prefix;
use crate::{KeyDirectory, StoreResult, TokenHash};

/// Keyed like the key cache, by the first half of each hash, the whole hash then compared in
/// constant time.
type Known = HashMap<[u8; 16], TokenHash>;

pub(crate) struct BareTokens {
    directory: Arc<dyn KeyDirectory>,
    ttl: Duration,
    /// The hashes, and when they were read.
    known: RwLock<Option<(Arc<Known>, Instant)>>,
    /// Held while the hashes are read again, so that concurrent requests wait for one read.
    reading: tokio::sync::Mutex<()>,
}

impl BareTokens {
    pub(crate) fn new(directory: Arc<dyn KeyDirectory>, ttl: Duration) -> Self {
        Self { directory, ttl, known: RwLock::new(None), reading: tokio::sync::Mutex::new(()) }
    }

    /// Whether `hash` is an unrevoked bare token's.
    pub(crate) async fn contains(&self, hash: &TokenHash) -> StoreResult<bool> {
        let known = self.known().await?;
        Ok(known.get(&prefix(hash)).is_some_and(|h| h.0.ct_eq(&hash.0).into()))
    }

    /// The hashes, read again when older than the TTL. A failed read keeps the previous ones for
    /// another TTL: an outage neither locks the bootstrap key out nor lets a flood retry the read
    /// on every request.
    async fn known(&self) -> StoreResult<Arc<Known>> {
        if let Some(fresh) = self.fresh() {
            return Ok(fresh);
        }
        let _one_reader = self.reading.lock().await;
        if let Some(fresh) = self.fresh() {
            return Ok(fresh);
        }
        let read = self.directory.bare_token_hashes().await;
        let mut known = self.known.write().unwrap_or_else(PoisonError::into_inner);
        match read {
            Ok(hashes) => {
                let hashes: Arc<Known> = Arc::new(hashes.into_iter().map(|h| (prefix(&h), h)).collect());
                *known = Some((hashes.clone(), Instant::now()));
                Ok(hashes)
            }
            Err(err) => {
                let (hashes, read_at) = known.as_mut().ok_or(err)?;
                *read_at = Instant::now();
                Ok(hashes.clone())
            }
        }
    }

    fn fresh(&self) -> Option<Arc<Known>> {
        let known = self.known.read().unwrap_or_else(PoisonError::into_inner);
        known.as_ref().filter(|(_, read_at)| read_at.elapsed() < self.ttl).map(|(hashes, _)| hashes.clone())
    }
}
