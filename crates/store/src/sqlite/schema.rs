//! Opening SQLite connections the one right way, and the versioned schema.
//!
//! Migrations are SQL scripts applied in order inside one `BEGIN IMMEDIATE` transaction that also
//! bumps `PRAGMA user_version`, so two processes migrating at once (a server and `coffer migrate`)
//! cannot both apply a step, and re-opening an up-to-date database changes nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use super::db_error;
use crate::{StoreError, StoreResult};

/// The database file inside a data directory.
pub(crate) fn db_path(dir: &Path) -> PathBuf {
    dir.join("coffer.db")
}

/// How long a connection waits for another one's lock (a key written by `coffer keys` while the
/// server runs, a checkpoint) before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Statements each connection keeps compiled; the batch path uses about a dozen.
const STATEMENT_CACHE: usize = 64;

/// Opens the read-write connection, creating the file and the directory, and migrates.
pub(crate) fn open_writer(dir: &Path) -> StoreResult<Connection> {
    std::fs::create_dir_all(dir)
        .map_err(|e| StoreError::unavailable(format!("cannot create data dir {}: {e}", dir.display())))?;
    let mut conn = Connection::open(db_path(dir)).map_err(db_error)?;
    configure(&conn).map_err(db_error)?;
    // WAL lets readers run beside the writer; it is a property of the file, kept once set.
    conn.pragma_update(None, "journal_mode", "WAL").map_err(db_error)?;
    // A batch is acknowledged only after its commit is on disk, even across a power loss.
    conn.pragma_update(None, "synchronous", "FULL").map_err(db_error)?;
    // 32 MiB of page cache holds the pages a batch of 8192 transfers dirties (so they are not
    // spilled mid-transaction) and the hot accounts and index pages. Not more: every commit walks
    // the cache's hash table, which a busy stream of small batches pays for.
    conn.pragma_update(None, "cache_size", -32768).map_err(db_error)?;
    // Multi-row statements keep a statement journal; in memory it costs a copy, on disk a write.
    conn.pragma_update(None, "temp_store", "MEMORY").map_err(db_error)?;
    migrate(&mut conn)?;
    Ok(conn)
}

/// Opens the connection that runs background checkpoints; it writes only the database file.
pub(crate) fn open_checkpointer(dir: &Path) -> StoreResult<Connection> {
    let conn =
        Connection::open_with_flags(db_path(dir), OpenFlags::SQLITE_OPEN_READ_WRITE).map_err(db_error)?;
    configure(&conn).map_err(db_error)?;
    conn.pragma_update(None, "synchronous", "FULL").map_err(db_error)?;
    Ok(conn)
}

/// Opens a read-only connection on an existing, migrated database.
pub(crate) fn open_reader(dir: &Path) -> StoreResult<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(db_path(dir), flags).map_err(db_error)?;
    configure(&conn).map_err(db_error)?;
    Ok(conn)
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(())
}

/// The schema, one script per version; version N is `MIGRATIONS[N - 1]`. Append only.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE ledgers (
    seq        INTEGER PRIMARY KEY,
    code       TEXT    NOT NULL UNIQUE,
    scale      INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE accounts (
    seq             INTEGER PRIMARY KEY,
    id              BLOB    NOT NULL UNIQUE,
    ledger          TEXT    NOT NULL,
    code            INTEGER NOT NULL,
    flags           INTEGER NOT NULL,
    external_ref    TEXT,
    metadata        TEXT,
    debits_pending  INTEGER NOT NULL,
    debits_posted   INTEGER NOT NULL,
    credits_pending INTEGER NOT NULL,
    credits_posted  INTEGER NOT NULL,
    created_at      INTEGER NOT NULL
);
CREATE INDEX accounts_by_ledger ON accounts (ledger, seq);
CREATE INDEX accounts_by_external_ref ON accounts (external_ref, seq) WHERE external_ref IS NOT NULL;

CREATE TABLE transfers (
    seq               INTEGER PRIMARY KEY,
    id                BLOB    NOT NULL UNIQUE,
    debit_account_id  BLOB    NOT NULL,
    credit_account_id BLOB    NOT NULL,
    amount            INTEGER NOT NULL,
    ledger            TEXT    NOT NULL,
    code              INTEGER NOT NULL,
    pending           INTEGER NOT NULL,
    status            TEXT    NOT NULL,
    pending_id        BLOB,
    timeout_at        INTEGER,
    external_ref      TEXT,
    metadata          TEXT,
    created_at        INTEGER NOT NULL
);
CREATE INDEX transfers_by_ledger ON transfers (ledger, seq);
CREATE INDEX transfers_to_expire ON transfers (timeout_at) WHERE status = 'pending';

-- The per-account index of transfers: per account, runs of the sequence numbers of the
-- transfers on either side of it, delta-encoded, written in bulk (see postings.rs). It holds
-- every transfer up to postings_through; a listing scans the transfers after that.
CREATE TABLE postings (
    account_seq       INTEGER NOT NULL,
    last_transfer_seq INTEGER NOT NULL,
    transfer_seqs     BLOB    NOT NULL,
    PRIMARY KEY (account_seq, last_transfer_seq)
) WITHOUT ROWID;
CREATE TABLE postings_through (transfer_seq INTEGER NOT NULL);
INSERT INTO postings_through VALUES (0);

-- CloudEvents 1.0 envelopes, written in the transaction that made the change; `seq` is the
-- event's `sequence` extension. AUTOINCREMENT so a position is never reused after a purge.
CREATE TABLE outbox (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              BLOB    NOT NULL,
    source          TEXT    NOT NULL DEFAULT 'coffer',
    type            TEXT    NOT NULL,
    subject         BLOB    NOT NULL,
    time            INTEGER NOT NULL,
    datacontenttype TEXT    NOT NULL DEFAULT 'application/json',
    data            TEXT    NOT NULL
);

CREATE TABLE api_keys (
    id                    BLOB    PRIMARY KEY,
    name                  TEXT,
    scopes                TEXT    NOT NULL,
    rate_limit_per_second INTEGER,
    token_hash            BLOB    NOT NULL UNIQUE,
    created_at            INTEGER NOT NULL,
    revoked_at            INTEGER
);

CREATE TABLE idempotency (
    principal    BLOB    NOT NULL,
    key          TEXT    NOT NULL,
    fingerprint  BLOB    NOT NULL,
    status       INTEGER NOT NULL,
    content_type TEXT    NOT NULL,
    body         BLOB    NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (principal, key)
);
CREATE INDEX idempotency_by_age ON idempotency (created_at);
"#,
    r#"
-- How far each relay has published the outbox.
CREATE TABLE relay_positions (
    name     TEXT    PRIMARY KEY,
    position INTEGER NOT NULL
);
"#,
    r#"
-- The event pipeline's state (see pipeline/). Times are INTEGER microseconds, ids 16-byte BLOBs.

-- One row per lease name, kept after a release so the next token is still larger than all before.
CREATE TABLE leases (
    name       TEXT    PRIMARY KEY,
    holder     TEXT    NOT NULL,
    token      INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);

-- The events each at-least-once consumer has applied, written with their effect.
CREATE TABLE processed_events (
    consumer TEXT NOT NULL,
    event_id BLOB NOT NULL,
    PRIMARY KEY (consumer, event_id)
) WITHOUT ROWID;

-- The volume projection. `volume` is the exact u128 sum as decimal TEXT: it outgrows INTEGER.
CREATE TABLE ledger_volumes (
    ledger TEXT    NOT NULL,
    day    INTEGER NOT NULL,
    code   INTEGER NOT NULL,
    count  INTEGER NOT NULL,
    volume TEXT    NOT NULL,
    PRIMARY KEY (ledger, day, code)
) WITHOUT ROWID;

CREATE TABLE dead_letters (
    id               BLOB    PRIMARY KEY,
    consumer         TEXT    NOT NULL,
    position         INTEGER NOT NULL,
    event_id         BLOB    NOT NULL,
    source           TEXT    NOT NULL,
    type             TEXT    NOT NULL,
    subject          BLOB    NOT NULL,
    time             INTEGER NOT NULL,
    data             TEXT    NOT NULL,
    error            TEXT    NOT NULL,
    attempts         INTEGER NOT NULL,
    failed_at        INTEGER NOT NULL,
    replay_requested INTEGER NOT NULL,
    UNIQUE (consumer, event_id)
);
CREATE INDEX dead_letters_by_consumer ON dead_letters (consumer, id);

CREATE TABLE webhooks (
    id          BLOB    PRIMARY KEY,
    url         TEXT    NOT NULL,
    event_types TEXT    NOT NULL,
    secret      TEXT    NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE webhook_deliveries (
    id               BLOB    PRIMARY KEY,
    webhook_id       BLOB    NOT NULL,
    event_id         BLOB    NOT NULL,
    event_type       TEXT    NOT NULL,
    payload          TEXT    NOT NULL,
    status           TEXT    NOT NULL,
    attempts         INTEGER NOT NULL,
    next_attempt_at  INTEGER,
    last_status_code INTEGER,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    UNIQUE (webhook_id, event_id)
);
-- What the dispatcher claims: pending ones by due time (id breaks ties without a sort).
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at, id);
-- An endpoint's deliveries, newest first.
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
ALTER TABLE api_keys ADD COLUMN expires_at INTEGER;
"#,
    r#"
-- Webhook secret rotation (issue 13): the secret before the last rotation signs deliveries
-- too until it expires. Secrets themselves are sealed by the webhook engine (AEAD); rows
-- written before that hold them in clear and are sealed when a server starts.
ALTER TABLE webhooks ADD COLUMN previous_secret TEXT;
ALTER TABLE webhooks ADD COLUMN previous_secret_expires_at INTEGER;
"#,
    r#"
-- Keys whose token carries no checksum (issue 13): an operator's own bootstrap token, or one
-- issued before tokens had a checksum. Servers keep these few hashes in memory and refuse any
-- other token the checksum cannot vouch for without a look-up. Any key made before this column
-- may have such a token.
ALTER TABLE api_keys ADD COLUMN bare_token INTEGER NOT NULL DEFAULT 0;
UPDATE api_keys SET bare_token = 1;
"#,
    r#"
-- The outbox's hash chain (issue 15, DESIGN §5): each event's `hash` links it to the one before.
-- `outbox_head` is the chain's last link, updated by every writing transaction; `outbox_anchor`
-- is the link just before the oldest event the outbox still holds: retention moves it up as it
-- deletes. Events from before this version have no hash: the chain starts after them.
ALTER TABLE outbox ADD COLUMN hash BLOB;
CREATE TABLE outbox_head (
    single   INTEGER PRIMARY KEY CHECK (single = 1),
    position INTEGER NOT NULL,
    hash     BLOB    NOT NULL
);
INSERT INTO outbox_head
    SELECT 1, coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0), zeroblob(32);
CREATE TABLE outbox_anchor (
    single   INTEGER PRIMARY KEY CHECK (single = 1),
    position INTEGER NOT NULL,
    hash     BLOB    NOT NULL
);
INSERT INTO outbox_anchor SELECT 1, position, hash FROM outbox_head;
"#,
    r#"
-- The audit trail (issue 15): every administrative and security action, numbered 1, 2, 3… in
-- commit order, each row's hash linking it to the one before (see coffer_store::audit). The
-- head row holds the last position and hash; every append moves it in the same transaction, so
-- a deleted last row still breaks the chain. Rows are never changed or deleted: the triggers
-- refuse it (whoever can drop them can also forge, which is what the chain is there to show).
CREATE TABLE audit_log (
    position       INTEGER PRIMARY KEY,
    id             BLOB    NOT NULL UNIQUE,
    time           INTEGER NOT NULL,
    actor          TEXT    NOT NULL,
    action         TEXT    NOT NULL,
    target         TEXT    NOT NULL,
    client_address TEXT,
    request_id     TEXT,
    outcome        TEXT    NOT NULL,
    details        TEXT    NOT NULL,
    hash           BLOB    NOT NULL
);
CREATE INDEX audit_log_by_actor ON audit_log (actor, position);
CREATE INDEX audit_log_by_target ON audit_log (target, position);
CREATE INDEX audit_log_by_action ON audit_log (action, position);
CREATE TABLE audit_head (
    single   INTEGER PRIMARY KEY CHECK (single = 1),
    position INTEGER NOT NULL,
    hash     BLOB    NOT NULL
);
INSERT INTO audit_head (single, position, hash) VALUES (1, 0, zeroblob(32));
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"#,
];

/// The schema version this binary writes.
pub(crate) const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Brings the database to [`SCHEMA_VERSION`], answering the version it is at.
pub(crate) fn migrate(conn: &mut Connection) -> StoreResult<u32> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db_error)?;
    let current: u32 = tx.pragma_query_value(None, "user_version", |row| row.get(0)).map_err(db_error)?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::unavailable(format!(
            "the database is at schema version {current}, newer than this binary's {SCHEMA_VERSION}"
        )));
    }
    for (version, script) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.execute_batch(script).map_err(db_error)?;
        tracing::info!(version = version + 1, "migrated the database");
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(db_error)?;
    tx.commit().map_err(db_error)?;
    Ok(SCHEMA_VERSION)
}
