//! API keys as stored: never the token itself, only its SHA-256; and where keys are looked up
//! ([`KeyDirectory`]), which the api replicas and the gateway share.

use async_trait::async_trait;
use coffer_ledger::Timestamp;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::StoreResult;

/// Longest token accepted; ours are 71 characters.
const MAX_TOKEN_LEN: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub Uuid);

/// What a key may do. `Admin` implies `Write`, which implies `Read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Read,
    Write,
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "read" => Self::Read,
            "write" => Self::Write,
            "admin" => Self::Admin,
            _ => return None,
        })
    }
}

/// SHA-256 of a token. Tokens are 256-bit random strings, so a fast hash is as safe as a slow one
/// and lets every request be authenticated without a password-hashing cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }
}

/// Whether `token` can be sent in an Authorization header: 1 to 512 visible ASCII characters.
pub fn is_valid_token(token: &str) -> bool {
    (1..=MAX_TOKEN_LEN).contains(&token.len()) && token.bytes().all(|b| b.is_ascii_graphic())
}

/// The token of an `Authorization: Bearer <token>` value (scheme in any case), if it is one.
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.split_once(' ').unwrap_or((authorization, ""));
    let token = token.trim_start_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && is_valid_token(token)).then_some(token)
}

/// Where API keys are looked up by token. Every [`Store`](crate::Store) is one; so is the key
/// table alone ([`crate::sqlite_key_directory`], [`crate::postgres_key_directory`]), which is
/// what the gateway opens to check tokens without running a store.
#[async_trait]
pub trait KeyDirectory: Send + Sync + 'static {
    /// The key (revoked or not) whose token hashes to `hash`.
    async fn key_by_token(&self, hash: TokenHash) -> StoreResult<Option<ApiKey>>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewApiKey {
    pub id: KeyId,
    pub name: Option<String>,
    pub scopes: Vec<Scope>,
    /// Requests per second this key may make; `None` takes the server's default.
    pub rate_limit_per_second: Option<u32>,
    pub token_hash: TokenHash,
}

impl NewApiKey {
    /// The key as stored at `created_at`, without its token hash.
    pub(crate) fn stored(self, created_at: Timestamp) -> ApiKey {
        ApiKey {
            id: self.id,
            name: self.name,
            scopes: self.scopes,
            rate_limit_per_second: self.rate_limit_per_second,
            created_at,
            revoked_at: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: KeyId,
    pub name: Option<String>,
    pub scopes: Vec<Scope>,
    pub rate_limit_per_second: Option<u32>,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

impl ApiKey {
    /// Whether this key may act with `needed`: an unrevoked key holding that scope or a wider one.
    pub fn allows(&self, needed: Scope) -> bool {
        self.revoked_at.is_none() && self.scopes.iter().any(|s| *s >= needed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_parsed_strictly() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        for bad in ["Bearer", "Bearer ", "Basic abc", "abc", "Bearer a b", "Bearer \u{e9}"] {
            assert_eq!(bearer_token(bad), None, "{bad}");
        }
        assert!(!is_valid_token(&"a".repeat(513)));
    }

    #[test]
    fn tokens_are_known_by_their_sha256() {
        assert_eq!(TokenHash::of("a"), TokenHash::of("a"));
        assert_ne!(TokenHash::of("a"), TokenHash::of("b"));
    }
}
