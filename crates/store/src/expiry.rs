//! Releasing holds whose timeout passed, on every backend.
//!
//! Expiry goes through the same sequencer as every client command, so it is ordered with them
//! and the core decides it like any other command: a hold posted or voided meanwhile is simply
//! refused, and that refusal is expected. With several processes on one database each expires
//! the same due holds; the first to lock a hold wins and the others are refused the same way.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use coffer_ledger::{Command, Outcome, Submission, Timestamp, TransferId};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::StoreResult;
use crate::sequencer::Sequencer;

/// Where a backend finds the holds that are due.
#[async_trait]
pub(crate) trait DueHolds: Send + Sync + 'static {
    /// Pending transfers whose timeout is at or before `now`, oldest first, at most `limit`.
    async fn due_holds(&self, now: Timestamp, limit: usize) -> StoreResult<Vec<TransferId>>;
}

/// Holds expired per submission, at most.
const EXPIRY_CHUNK: usize = 1000;

/// Expires due holds every `interval` until the sequencer closes.
pub(crate) fn spawn(
    sequencer: Arc<Sequencer>,
    holds: impl DueHolds,
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
            expire_due(&sequencer, &holds, chunk).await;
        }
    })
}

/// Expires every due hold, a chunk at a time, while chunks come back full and make progress.
async fn expire_due(sequencer: &Sequencer, holds: &impl DueHolds, chunk: usize) {
    loop {
        let due = match holds.due_holds(Timestamp::now(), chunk).await {
            Ok(due) => due,
            Err(e) => return tracing::warn!(error = %e, "cannot look for expired holds"),
        };
        if due.is_empty() {
            return;
        }
        let full = due.len() == chunk;
        let submission = Submission::new(due.into_iter().map(Command::ExpirePending).collect(), false);
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
