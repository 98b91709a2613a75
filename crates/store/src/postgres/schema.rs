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
    r#"
-- The event pipeline's state.

-- Which relay is the active one. `token` only grows: every take-over (another holder, or a
-- lease taken again after it expired) adds one, so a position saved with an older token is
-- refused. A released lease keeps its row (holder NULL) so the next token is still larger.
CREATE TABLE leases (
    name       TEXT   PRIMARY KEY,
    holder     TEXT,
    token      BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

-- The events each at-least-once consumer has applied, written with their effect.
CREATE TABLE processed_events (
    consumer TEXT NOT NULL,
    event_id UUID NOT NULL,
    PRIMARY KEY (consumer, event_id)
);

-- Posted transfers per ledger, day (since 1970-01-01 UTC) and code. A volume is a sum of u64
-- amounts, so it may outgrow BIGINT: NUMERIC holds any u128.
CREATE TABLE ledger_volumes (
    ledger TEXT          NOT NULL,
    day    INTEGER       NOT NULL,
    code   INTEGER       NOT NULL,
    count  BIGINT        NOT NULL,
    volume NUMERIC(39,0) NOT NULL,
    PRIMARY KEY (ledger, day, code)
);

-- Events the in-process bus gave up on, one per consumer and event.
CREATE TABLE dead_letters (
    id               UUID    PRIMARY KEY,
    consumer         TEXT    NOT NULL,
    position         BIGINT  NOT NULL,
    event_id         UUID    NOT NULL,
    source           TEXT    NOT NULL,
    type             TEXT    NOT NULL,
    subject          UUID    NOT NULL,
    time             BIGINT  NOT NULL,
    data             TEXT    NOT NULL,
    error            TEXT    NOT NULL,
    attempts         BIGINT  NOT NULL,
    failed_at        BIGINT  NOT NULL,
    replay_requested BOOLEAN NOT NULL,
    UNIQUE (consumer, event_id)
);
CREATE INDEX dead_letters_to_replay ON dead_letters (consumer, id) WHERE replay_requested;

CREATE TABLE webhooks (
    id          UUID   PRIMARY KEY,
    url         TEXT   NOT NULL,
    event_types TEXT[] NOT NULL CHECK (cardinality(event_types) > 0),
    secret      TEXT   NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE webhook_deliveries (
    id               UUID    PRIMARY KEY,
    webhook_id       UUID    NOT NULL REFERENCES webhooks ON DELETE CASCADE,
    event_id         UUID    NOT NULL,
    event_type       TEXT    NOT NULL,
    payload          TEXT    NOT NULL,
    status           TEXT    NOT NULL CHECK (status IN ('pending', 'succeeded', 'dead')),
    attempts         BIGINT  NOT NULL,
    next_attempt_at  BIGINT,
    last_status_code INTEGER,
    last_error       TEXT,
    created_at       BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL,
    UNIQUE (webhook_id, event_id)
);
-- What the dispatchers claim from: only pending rows, oldest due first.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_by_webhook ON webhook_deliveries (webhook_id, id);
"#,
    r#"
-- The W3C trace context of the request that caused an event (DESIGN §3), when it had one.
ALTER TABLE outbox ADD COLUMN traceparent TEXT;
ALTER TABLE dead_letters ADD COLUMN traceparent TEXT;
"#,
    r#"
-- When a key stops working by itself (DESIGN §5): set when it is made, or by a rotation, which
-- leaves the old token valid for an overlap.
ALTER TABLE api_keys ADD COLUMN expires_at BIGINT;
"#,
    r#"
-- Webhook secret rotation (issue 13): the secret before the last rotation signs deliveries
-- too until it expires. Secrets themselves are sealed by the webhook engine (AEAD); rows
-- written before that hold them in clear and are sealed when a server starts.
ALTER TABLE webhooks ADD COLUMN previous_secret TEXT;
ALTER TABLE webhooks ADD COLUMN previous_secret_expires_at BIGINT;
"#,
    r#"
-- Keys whose token carries no checksum (issue 13): an operator's own bootstrap token, or one
-- issued before tokens had a checksum. Servers keep these few hashes in memory and refuse any
-- other token the checksum cannot vouch for without a look-up. Any key made before this column
-- may have such a token.
ALTER TABLE api_keys ADD COLUMN bare_token BOOLEAN NOT NULL DEFAULT false;
UPDATE api_keys SET bare_token = true;
"#,
    r#"
-- The outbox's hash chain (issue 15, DESIGN §5): each event's `hash` links it to the one before.
-- The clock row, which every writing transaction already locks last to number its events, holds
-- the chain's last link; `outbox_anchor` is the link just before the oldest event the outbox
-- still holds: retention moves it up as it deletes. Events from before this version have no
-- hash: the chain starts after them.
ALTER TABLE outbox ADD COLUMN hash BYTEA;
ALTER TABLE outbox_clock ADD COLUMN head BYTEA NOT NULL DEFAULT decode(repeat('00', 32), 'hex');
CREATE TABLE outbox_anchor (
    single   BOOLEAN PRIMARY KEY DEFAULT true CHECK (single),
    position BIGINT  NOT NULL,
    hash     BYTEA   NOT NULL
);
INSERT INTO outbox_anchor (position, hash) SELECT position, head FROM outbox_clock;

-- Appends a batch's events: takes the clock, numbers the events after it, links each one
-- (SHA-256 of the previous link and the event's canonical CloudEvent, whose `sequence` digits
-- are known only here, between the `heads` and `tails` the writer sent), and moves the clock.
-- One statement, so a batch's writes and its COMMIT still go out in one round trip.
CREATE FUNCTION coffer_append_events(
    ids uuid[], types text[], subjects uuid[], at bigint, data text[], traces text[],
    heads bytea[], tails bytea[]
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    last_position bigint;
    link bytea;
    links bytea[] := '{}';
BEGIN
    SELECT c.position, c.head INTO last_position, link FROM outbox_clock c WHERE c.single FOR UPDATE;
    FOR i IN 1 .. cardinality(ids) LOOP
        link := sha256(link || heads[i] || convert_to(lpad((last_position + i)::text, 19, '0'), 'UTF8') || tails[i]);
        links[i] := link;
    END LOOP;
    UPDATE outbox_clock SET position = last_position + cardinality(ids), head = link WHERE single;
    INSERT INTO outbox (position, id, type, subject, time, data, traceparent, hash)
    SELECT last_position + u.n, u.id, u.type, u.subject, at, u.data, u.trace, u.hash
    FROM unnest(ids, types, subjects, data, traces, links) WITH ORDINALITY AS u(id, type, subject, data, trace, hash, n);
END
$$;
"#,
    r#"
-- The audit trail (issue 15): every administrative and security action, numbered 1, 2, 3… in
-- commit order, each row's hash linking it to the one before (see coffer_store::audit). The
-- head row holds the last position and hash; every append locks it (FOR UPDATE, after the
-- change's own locks) and moves it in the same transaction, so appends from many replicas take
-- turns, positions have no gaps, and a deleted last row still breaks the chain. Rows are never
-- changed or deleted: the trigger refuses it.
CREATE TABLE audit_log (
    position       BIGINT PRIMARY KEY,
    id             UUID   NOT NULL UNIQUE,
    time           BIGINT NOT NULL,
    actor          TEXT   NOT NULL,
    action         TEXT   NOT NULL,
    target         TEXT   NOT NULL,
    client_address TEXT,
    request_id     TEXT,
    outcome        TEXT   NOT NULL,
    details        TEXT   NOT NULL,
    hash           BYTEA  NOT NULL
);
CREATE INDEX audit_log_by_actor ON audit_log (actor, position);
CREATE INDEX audit_log_by_target ON audit_log (target, position);
CREATE INDEX audit_log_by_action ON audit_log (action, position);
CREATE TABLE audit_head (
    single   BOOLEAN PRIMARY KEY DEFAULT true CHECK (single),
    position BIGINT  NOT NULL,
    hash     BYTEA   NOT NULL
);
INSERT INTO audit_head (position, hash) VALUES (0, decode(repeat('00', 32), 'hex'));
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END $$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
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
            return Err(StoreError::unavailable(format!(
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
