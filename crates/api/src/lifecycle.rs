//! The process's shutdown as the API sees it: once it begins, `/readyz` answers 503 (a load
//! balancer stops sending new work) and every open event stream gets a last `shutdown` event and
//! ends, so that its client reconnects to another replica instead of holding this one's drain.

use std::sync::Arc;

use tokio::sync::watch;

/// Whether this process is shutting down; cheap to clone, shared by whoever needs to know.
#[derive(Clone, Debug)]
pub struct Shutdown(Arc<watch::Sender<bool>>);

impl Default for Shutdown {
    fn default() -> Self {
        Self(Arc::new(watch::Sender::new(false)))
    }
}

impl Shutdown {
    /// Begins the shutdown; later calls change nothing.
    pub fn begin(&self) {
        self.0.send_replace(true);
    }

    /// Whether the shutdown has begun.
    pub fn has_begun(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes once the shutdown has begun (at once if it has).
    pub async fn begun(&self) {
        let mut watching = self.0.subscribe();
        // The sender lives as long as `self`: this cannot fail while it waits.
        let _ = watching.wait_for(|begun| *begun).await;
    }
}
