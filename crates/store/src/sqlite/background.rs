//! Work the store does by itself: expiring holds whose timeout passed, and forgetting old
//! Idempotency-Key answers.
//!
//! Expiry goes through the same sequencer as every client command, so it is ordered with them
//! and the core decides it like any other command: a hold posted or voided meanwhile is simply
//! refused, and that refusal is expected.

use std::sync::Arc;
use std::time::Duration;

use coffer_ledger::{Command, Outcome, Submission, Timestamp};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::batch::SharedWriter;
use super::idempotency;
use super::read::{self, ReadPool};
use crate::sequencer::Sequencer;

/// Holds expired per submission, at most.
const EXPIRY_CHUNK: usize = 1000;

/// How often old idempotency answers are purged.
const PURGE_INTERVAL: Duration = Duration::from_secs(60);

pub(crate) fn spawn_expiry(
    sequencer: Arc<Sequencer>,
    reads: Arc<ReadPool>,
    interval: Duration,
    batch_size_max: usize,
) -> JoinHandle<()> {
    let chunk = EXPIRY_CHUNK.min(batch_size_max);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if !sequencer.is_open() {
                return;
            }
            expire_due(&sequencer, &reads, chunk).await;
        }
    })
}

/// Expires every due hold, a chunk at a time, while chunks come back full and make progress.
async fn expire_due(sequencer: &Sequencer, reads: &Arc<ReadPool>, chunk: usize) {
    loop {
        let now = Timestamp::now().as_micros();
        let due = match reads.run(move |conn| read::due_pending(conn, now, chunk)).await {
            Ok(due) => due,
            Err(e) => return tracing::warn!(error = %e, "cannot look for expired holds"),
        };
        if due.is_empty() {
            return;
        }
        let full = due.len() == chunk;
        let submission =
            Submission { commands: due.into_iter().map(Command::ExpirePending).collect(), atomic: false };
        let outcomes = match sequencer.submit(submission).await {
            Ok(outcomes) => outcomes,
            // Overloaded or stopping: the holds stay due and the next tick tries again.
            Err(e) => return tracing::debug!(error = %e, "expiry deferred"),
        };
        let expired = outcomes.iter().filter(|o| matches!(o, Outcome::Created(_))).count();
        tracing::debug!(expired, "expired holds");
        // Stop when nothing moved, or a hold the core keeps refusing would be retried forever.
        if !full || expired == 0 {
            return;
        }
    }
}

pub(crate) fn spawn_purge(writer: SharedWriter, retention: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(PURGE_INTERVAL);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let before = Timestamp::from_micros(
                Timestamp::now()
                    .as_micros()
                    .saturating_sub(i64::try_from(retention.as_micros()).unwrap_or(i64::MAX)),
            );
            let writer = writer.clone();
            match tokio::task::spawn_blocking(move || idempotency::purge(&writer, before)).await {
                Ok(Ok(0)) => {}
                Ok(Ok(purged)) => tracing::debug!(purged, "purged old idempotency answers"),
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot purge idempotency answers"),
                Err(e) => tracing::warn!(error = %e, "idempotency purge failed"),
            }
        }
    })
}
