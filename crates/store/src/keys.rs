//! API keys as stored: never the token itself, only its SHA-256.

use coffer_ledger::Timestamp;
use uuid::Uuid;

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
