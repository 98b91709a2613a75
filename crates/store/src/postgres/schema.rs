//! The PostgreSQL schema and its migrations.
//!
//! Migrations are SQL scripts applied in order, each in its own transaction together with the
//! row that records it in `coffer_schema`. A transaction-scoped advisory lock serialises
//! migrators, so several replicas starting at once (or `coffer migrate` beside them) apply each
//! step exactly once.

use deadpool_postgres::Client;

use super::pg_error;
use crate::{StoreError, StoreResult};

/// The schema, one script per version; version N is `MIGRATIONS[N - 1]`. Append only.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE ledgers (
    seq        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code       TEXT   NOT NULL UNIQUE,
    scale      BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE accounts (
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id              UUID   NOT NULL UNIQUE,
    ledger          TEXT   NOT NULL,
    code            BIGINT NOT NULL,
    flags           BIGINT NOT NULL,
    external_ref    TEXT,
    metadata        TEXT,
    debits_pending  BIGINT NOT NULL CHECK (debits_pending >= 0),
    debits_posted   BIGINT NOT NULL CHECK (debits_posted >= 0),
    credits_pending BIGINT NOT NULL CHECK (credits_pending >= 0),
    credits_posted  BIGINT NOT NULL CHECK (credits_posted >= 0),
    created_at      BIGINT NOT NULL
) WITH (fillfactor = 50);
-- Half-empty pages: a balance update then finds room beside its row and is a HOT update,
-- which touches no index. Accounts are few and updated often, so the space is well spent.
CREATE INDEX accounts_by_ledger ON accounts (ledger, seq);
CREATE INDEX accounts_by_external_ref ON accounts (external_ref, seq) WHERE external_ref IS NOT NULL;

-- `seq` is taken at insert, not at commit: it orders listings, never the outbox relay.
CREATE TABLE transfers (
    seq               BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                UUID    NOT NULL UNIQUE,
    debit_account_id  UUID    NOT NULL,
    credit_account_id UUID    NOT NULL,
    amount            BIGINT  NOT NULL CHECK (amount > 0),
    ledger            TEXT    NOT NULL,
    code              BIGINT  NOT NULL,
    pending           BOOLEAN NOT NULL,
    status            TEXT    NOT NULL,
    pending_id        UUID,
    timeout_at        BIGINT,
    external_ref      TEXT,
    metadata          TEXT,
    created_at        BIGINT  NOT NULL
);
CREATE INDEX transfers_by_ledger ON transfers (ledger, seq);
CREATE INDEX transfers_by_debit_account ON transfers (debit_account_id, seq);
CREATE INDEX transfers_by_credit_account ON transfers (credit_account_id, seq);
CREATE INDEX transfers_to_expire ON transfers (timeout_at) WHERE status = 'pending';

-- CloudEvents 1.0 envelopes, written in the transaction that made the change. `position`
-- comes from outbox_clock, whose one row every writing transaction updates last, after its
-- account locks, and holds until it commits: positions are therefore handed out in commit
-- order, so a reader that has seen position N will never later see a smaller one appear (a
-- transaction that rolls back leaves a gap, never a late row), and two transactions touching
-- the same account get positions in the order they changed it.
CREATE TABLE outbox (
    position        BIGINT PRIMARY KEY,
    id              UUID   NOT NULL,
    source          TEXT   NOT NULL DEFAULT 'coffer',
    type            TEXT   NOT NULL,
    subject         UUID   NOT NULL,
    time            BIGINT NOT NULL,
    datacontenttype TEXT   NOT NULL DEFAULT 'application/json',
    data            TEXT   NOT NULL
);
CREATE TABLE outbox_clock (
    single   BOOLEAN PRIMARY KEY DEFAULT true CHECK (single),
    position BIGINT  NOT NULL
);
INSERT INTO outbox_clock (position) VALUES (0);

CREATE TABLE api_keys (
    id                    UUID   PRIMARY KEY,
    name                  TEXT,
    scopes                TEXT   NOT NULL,
    rate_limit_per_second BIGINT,
    token_hash            BYTEA  NOT NULL UNIQUE,
    created_at            BIGINT NOT NULL,
    revoked_at            BIGINT
);

-- A row is a key in flight (status NULL, held until locked_until) or a stored answer. Shared by
-- every replica, so a retry that lands on another replica sees the same state.
CREATE TABLE idempotency (
    principal    UUID   NOT NULL,
    key          TEXT   NOT NULL,
    fingerprint  BYTEA  NOT NULL,
    status       INTEGER,
    content_type TEXT,
    body         BYTEA,
    locked_until BIGINT,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (principal, key)
);
CREATE INDEX idempotency_by_age ON idempotency (created_at);
"#,
    r#"
-- How far each relay has published the outbox.
CREATE TABLE relay_positions (
    name     TEXT   PRIMARY KEY,
    position BIGINT NOT NULL
);
"#,
];

/// The schema version this binary writes.
pub(crate) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Any number the other migrators agree on: the advisory lock that serialises them.
const MIGRATION_LOCK: i64 = 0x636f_6666_6572; // "coffer"

/// Brings the database to [`SCHEMA_VERSION`], answering the version it is at.
pub(crate) async fn migrate(client: &mut Client) -> StoreResult<i64> {
    let exists: bool = client
        .query_one("SELECT to_regclass('coffer_schema') IS NOT NULL", &[])
        .await
        .map_err(pg_error)?
        .get(0);
    if !exists {
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS coffer_schema \
                 (version BIGINT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
            )
            .await
            .or_else(|e| {
                // Two migrators creating the table at once: the loser's error is harmless.
                if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(pg_error)?;
    }
    loop {
        let tx = client.transaction().await.map_err(pg_error)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(pg_error)?;
        let current: i64 = tx
            .query_one("SELECT coalesce(max(version), 0) FROM coffer_schema", &[])
            .await
            .map_err(pg_error)?
            .get(0);
        if current > SCHEMA_VERSION {
            return Err(StoreError::Unavailable(format!(
                "the database is at schema version {current}, newer than this binary's {SCHEMA_VERSION}"
            )));
        }
        if current == SCHEMA_VERSION {
            tx.commit().await.map_err(pg_error)?;
            return Ok(SCHEMA_VERSION);
        }
        let next = current + 1;
        tx.batch_execute(MIGRATIONS[current as usize]).await.map_err(pg_error)?;
        tx.execute("INSERT INTO coffer_schema (version) VALUES ($1)", &[&next]).await.map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        tracing::info!(version = next, "migrated the database");
    }
}
