//! Cursor pagination and list filters.

use std::fmt;
use std::str::FromStr;

use coffer_ledger::{AccountId, ExternalRef, LedgerCode};

/// An opaque position in a list: the store's sequence number of the last record returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor(pub i64);

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{:x}", self.0)
    }
}

impl FromStr for Cursor {
    type Err = coffer_ledger::InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.strip_prefix('c')
            .and_then(|hex| i64::from_str_radix(hex, 16).ok())
            .filter(|n| *n >= 0)
            .map(Cursor)
            .ok_or(coffer_ledger::InvalidValue("cursor is not one this API returned"))
    }
}

/// One page of a list request: at most `limit` records after `after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    limit: u32,
    pub after: Option<Cursor>,
}

impl PageRequest {
    pub const DEFAULT_LIMIT: u32 = 100;
    pub const MAX_LIMIT: u32 = 1000;

    pub fn new(limit: Option<u32>, after: Option<Cursor>) -> Result<Self, coffer_ledger::InvalidValue> {
        let limit = limit.unwrap_or(Self::DEFAULT_LIMIT);
        if !(1..=Self::MAX_LIMIT).contains(&limit) {
            return Err(coffer_ledger::InvalidValue("limit must be between 1 and 1000"));
        }
        Ok(Self { limit, after })
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }
}

impl Default for PageRequest {
    fn default() -> Self {
        Self { limit: Self::DEFAULT_LIMIT, after: None }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Set when more records may follow.
    pub next_cursor: Option<Cursor>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountFilter {
    pub ledger: Option<LedgerCode>,
    pub external_ref: Option<ExternalRef>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransferFilter {
    /// Transfers on either side of this account.
    pub account_id: Option<AccountId>,
    pub ledger: Option<LedgerCode>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let c = Cursor(12345);
        assert_eq!(c.to_string().parse::<Cursor>().unwrap(), c);
        for bad in ["", "c", "12", "c-1", "czz", "c8000000000000000"] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad}");
        }
    }

    #[test]
    fn limit_range() {
        assert!(PageRequest::new(Some(0), None).is_err());
        assert!(PageRequest::new(Some(1001), None).is_err());
        assert_eq!(PageRequest::new(None, None).unwrap().limit(), 100);
    }
}
