//! Active health checks: one task per upstream asks `GET /readyz` every `check_interval_ms`,
//! with a timeout. `/readyz` (not `/healthz`) because a replica that is alive but cannot reach
//! its store must not get traffic. After an open circuit's time, passed checks let the first trial request in.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::uri::PathAndQuery;
use http::{Method, Request, header};
use tokio::task::JoinSet;

use crate::body::Held;
use crate::pool::Upstream;
use crate::proxy::Shared;

/// Starts the checks; they stop when the returned task is aborted. Each round checks every
/// upstream in the list at that time, at once, and forgets removed upstreams that have drained.
pub fn spawn(shared: Arc<Shared>, interval: Duration, timeout: Duration) -> AbortOnDrop {
    AbortOnDrop::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let mut round = JoinSet::new();
            for upstream in shared.pool.list() {
                let shared = shared.clone();
                round.spawn(async move {
                    let passed = check(&shared, &upstream, timeout).await;
                    shared.pool.record_check(&upstream, passed);
                });
            }
            round.join_all().await;
            shared.pool.forget_drained();
        }
    })
}

/// A task that stops when its handle is dropped.
pub struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl AbortOnDrop {
    pub fn spawn(task: impl Future<Output = ()> + Send + 'static) -> Self {
        Self(tokio::spawn(task))
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn check(shared: &Shared, upstream: &Upstream, timeout: Duration) -> bool {
    let url = &upstream.url;
    let uri = url.join(PathAndQuery::from_static("/readyz"));
    let Ok(mut request) = Request::builder()
        .method(Method::GET)
        .uri(uri)
        .header(header::USER_AGENT, "coffer-gateway-health")
        .body(Held::empty().for_attempt())
    else {
        return false;
    };
    url.address_by_name(request.headers_mut());
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
