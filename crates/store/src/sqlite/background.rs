//! Work the SQLite store does by itself: finding the holds whose timeout passed (for
//! [`crate::expiry`]) and forgetting old Idempotency-Key answers.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use coffer_ledger::{Timestamp, TransferId};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::batch::SharedWriter;
use super::idempotency;
use super::read::{self, ReadPool};
use crate::StoreResult;
use crate::expiry::DueHolds;

/// How often old idempotency answers are purged.
const PURGE_INTERVAL: Duration = Duration::from_secs(60);

#[async_trait]
impl DueHolds for Arc<ReadPool> {
    async fn due_holds(&self, now: Timestamp, limit: usize) -> StoreResult<Vec<TransferId>> {
        self.run(move |conn| read::due_pending(conn, now.as_micros(), limit)).await
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
