//! Idempotency-Key records: completed answers in SQLite, requests in flight in memory.
//!
//! Memory is enough for the in-flight marks because the data dir lock admits one process, and a
//! crash forgets them, which is right: a request that died with its process may be retried.
//! `begin` marks the key before it looks for a stored answer and `complete` stores the answer
//! before it clears the mark, so at every moment a retry sees either the mark or the answer:
//! among any number of concurrent `begin`s exactly one proceeds.
//!
//! Stored answers are written by a small group-commit task, so many keyed requests finishing at
//! once share one transaction and one fsync instead of paying one each.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coffer_ledger::Timestamp;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use super::batch::{SharedWriter, lock};
use super::db_error;
use super::read::ReadPool;
use crate::{Fingerprint, IdempotencyBegin, IdempotencyScope, StoreError, StoreResult, StoredResponse};

/// How long a request may hold its key before a retry may take it over. Longer than any request
/// may run; it frees a key whose request vanished without `complete` or `abandon`.
const IN_FLIGHT_TTL: Duration = Duration::from_secs(60);

/// Stored answers written per transaction, at most.
const WRITE_BATCH: usize = 1024;

/// A request holding its key.
struct Mark {
    fingerprint: Fingerprint,
    since: Instant,
    /// Tells this request's mark from a later one that took the key over.
    token: u64,
}

struct Completion {
    scope: IdempotencyScope,
    fingerprint: Fingerprint,
    response: StoredResponse,
    reply: oneshot::Sender<StoreResult<()>>,
}

pub(crate) struct Idempotency {
    in_flight: Mutex<HashMap<IdempotencyScope, Mark>>,
    next_token: std::sync::atomic::AtomicU64,
    completions: mpsc::Sender<Completion>,
}

impl Idempotency {
    /// Starts the task that stores answers through `writer`.
    pub fn start(writer: SharedWriter) -> (Self, tokio::task::JoinHandle<()>) {
        let (completions, queue) = mpsc::channel(WRITE_BATCH * 4);
        let task = tokio::spawn(store_answers(writer, queue));
        let this = Self { in_flight: Mutex::default(), next_token: 0.into(), completions };
        (this, task)
    }

    fn marks(&self) -> std::sync::MutexGuard<'_, HashMap<IdempotencyScope, Mark>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn begin(
        &self,
        reads: &Arc<ReadPool>,
        scope: &IdempotencyScope,
        fingerprint: Fingerprint,
    ) -> StoreResult<IdempotencyBegin> {
        // A key already answered is replayed without marking it, so a burst of retries after
        // the answer never sees another retry's passing mark as "in flight".
        if let Some(answered) = self.answered(reads, scope, fingerprint).await? {
            return Ok(answered);
        }
        let token = self.next_token.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mark = Mark { fingerprint, since: Instant::now(), token };
        match self.marks().entry(scope.clone()) {
            Entry::Occupied(held) if held.get().since.elapsed() < IN_FLIGHT_TTL => {
                let same = held.get().fingerprint == fingerprint;
                return Ok(if same { IdempotencyBegin::InFlight } else { IdempotencyBegin::Mismatch });
            }
            Entry::Occupied(mut stale) => {
                stale.insert(mark);
            }
            Entry::Vacant(free) => {
                free.insert(mark);
            }
        }
        // Look again now that the key is marked: the first request may have completed between
        // the first look and the mark.
        match self.answered(reads, scope, fingerprint).await {
            Ok(None) => Ok(IdempotencyBegin::Proceed),
            Ok(Some(answer)) => {
                self.release(scope, token);
                Ok(answer)
            }
            Err(e) => {
                self.release(scope, token);
                Err(e)
            }
        }
    }

    /// What to answer if the key already has a stored answer.
    async fn answered(
        &self,
        reads: &Arc<ReadPool>,
        scope: &IdempotencyScope,
        fingerprint: Fingerprint,
    ) -> StoreResult<Option<IdempotencyBegin>> {
        let lookup = scope.clone();
        let stored = reads.run(move |conn| stored(conn, &lookup)).await?;
        Ok(stored.map(|(stored, response)| {
            if stored == fingerprint {
                IdempotencyBegin::Replay(response)
            } else {
                IdempotencyBegin::Mismatch
            }
        }))
    }

    /// Stores the answer durably, then frees the key.
    pub async fn complete(&self, scope: &IdempotencyScope, response: StoredResponse) -> StoreResult<()> {
        let Some((fingerprint, token)) = self.marks().get(scope).map(|m| (m.fingerprint, m.token)) else {
            return Err(StoreError::unavailable("no request with this Idempotency-Key is in flight"));
        };
        let (reply, stored) = oneshot::channel();
        let completion = Completion { scope: scope.clone(), fingerprint, response, reply };
        let result = match self.completions.send(completion).await {
            Ok(()) => {
                stored.await.unwrap_or_else(|_| Err(StoreError::outcome_unknown("the answer writer stopped")))
            }
            Err(_) => Err(StoreError::unavailable("the store is shut down")),
        };
        // Stored or not, the request is over: a retry now replays the answer or proceeds afresh.
        self.release(scope, token);
        result
    }

    pub fn abandon(&self, scope: &IdempotencyScope) {
        self.marks().remove(scope);
    }

    fn release(&self, scope: &IdempotencyScope, token: u64) {
        let mut marks = self.marks();
        if marks.get(scope).is_some_and(|m| m.token == token) {
            marks.remove(scope);
        }
    }
}

fn stored(
    conn: &Connection,
    scope: &IdempotencyScope,
) -> rusqlite::Result<Option<(Fingerprint, StoredResponse)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT fingerprint, status, content_type, body FROM idempotency WHERE principal = ?1 AND key = ?2",
    )?;
    stmt.query_row(params![scope.principal.0.as_bytes(), scope.key], |row| {
        let response = StoredResponse { status: row.get(1)?, content_type: row.get(2)?, body: row.get(3)? };
        Ok((Fingerprint(row.get(0)?), response))
    })
    .optional()
}

/// Writes answers as they come, all those waiting in one transaction.
async fn store_answers(writer: SharedWriter, mut queue: mpsc::Receiver<Completion>) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    while queue.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        let (rows, replies): (Vec<_>, Vec<_>) =
            batch.drain(..).map(|c| ((c.scope, c.fingerprint, c.response), c.reply)).unzip();
        let writer = writer.clone();
        let now = Timestamp::now();
        let result = tokio::task::spawn_blocking(move || insert_answers(&mut lock(&writer).conn, &rows, now))
            .await
            .unwrap_or_else(|e| Err(StoreError::unavailable("answer writer failed").because(e)));
        for reply in replies {
            let _ = reply.send(result.clone());
        }
    }
}

type Answer = (IdempotencyScope, Fingerprint, StoredResponse);

fn insert_answers(conn: &mut Connection, rows: &[Answer], now: Timestamp) -> StoreResult<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db_error)?;
    {
        // The first answer wins; a later one for the same key is dropped, never overwrites.
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO idempotency (principal, key, fingerprint, status, content_type, body, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
            )
            .map_err(db_error)?;
        for (scope, fingerprint, response) in rows {
            insert
                .execute(params![
                    scope.principal.0.as_bytes(),
                    scope.key,
                    fingerprint.0,
                    response.status,
                    response.content_type,
                    response.body,
                    now.as_micros(),
                ])
                .map_err(db_error)?;
        }
    }
    tx.commit().map_err(|e| StoreError::outcome_unknown("commit failed").because(e))
}

/// Deletes answers stored before `before`, a bounded number per transaction so the writer is
/// never held long. Answers how many it deleted.
pub(crate) fn purge(writer: &SharedWriter, before: Timestamp) -> StoreResult<usize> {
    const CHUNK: usize = 1000;
    let mut total = 0;
    loop {
        let deleted = lock(writer)
            .conn
            .execute(
                "DELETE FROM idempotency WHERE rowid IN \
                 (SELECT rowid FROM idempotency WHERE created_at < ?1 LIMIT ?2)",
                params![before.as_micros(), CHUNK as i64],
            )
            .map_err(db_error)?;
        total += deleted;
        if deleted < CHUNK {
            return Ok(total);
        }
    }
}
