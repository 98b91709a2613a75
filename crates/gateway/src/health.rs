//! Active health checks: one task per upstream asks `GET /readyz` every `check_interval_ms`,
//! with a timeout. `/readyz` (not `/healthz`) because a replica that is alive but cannot reach
//! its store must not get traffic. Checks are the only way an ejected upstream comes back.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, header};
use tokio::task::JoinSet;

use crate::body::Held;
use crate::pool::UpstreamIndex;
use crate::proxy::Shared;

/// Starts the checks; they stop when the returned set is dropped.
pub fn spawn(shared: Arc<Shared>, interval: Duration, timeout: Duration) -> JoinSet<()> {
    let mut tasks = JoinSet::new();
    for index in 0..shared.pool.len() {
        tasks.spawn(check_forever(shared.clone(), index, interval, timeout));
    }
    tasks
}

async fn check_forever(shared: Arc<Shared>, index: UpstreamIndex, interval: Duration, timeout: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let passed = check(&shared, index, timeout).await;
        shared.pool.record_check(index, passed);
    }
}

async fn check(shared: &Shared, index: UpstreamIndex, timeout: Duration) -> bool {
    let url = &shared.pool.get(index).url;
    let Ok(uri) = url.join("/readyz") else { return false };
    let Ok(request) = Request::builder()
        .method(Method::GET)
        .uri(uri)
        .header(header::USER_AGENT, "coffer-gateway-health")
        .body(Held::Bytes(bytes::Bytes::new()).for_attempt())
    else {
        return false;
    };
    match tokio::time::timeout(timeout, shared.client.request(request)).await {
        // The body is dropped unread: a check only needs the status.
        Ok(Ok(response)) => response.status().is_success(),
        Ok(Err(err)) => {
            tracing::debug!(upstream = %url, error = %err, "health check failed");
            false
        }
        Err(_) => false,
    }
}
