//! The store's stop after a fatal error (a damaged row, a broken invariant): a latch that the
//! sequencer, the reads and whoever else meets such an error trip, and that never opens again.
//!
//! Once tripped, every waiting and later submission is answered with the cause, `ping` fails
//! with it, and the process that owns the store (`coffer serve`) sees it and exits for its
//! supervisor to restart: carrying on would mean writing money on top of something known wrong.

use std::sync::Arc;

use tokio::sync::watch;

use crate::{StoreError, StoreResult};

/// Cheap to clone; every clone is the same latch.
#[derive(Debug, Clone)]
pub struct Halt(Arc<watch::Sender<Option<StoreError>>>);

impl Default for Halt {
    fn default() -> Self {
        Self(Arc::new(watch::Sender::new(None)))
    }
}

impl Halt {
    /// Stops the store for good with `cause`, which should be fatal ([`StoreError::is_fatal`]).
    /// The first cause is kept; answers whether this call was the one that stopped it.
    pub fn trip(&self, cause: StoreError) -> bool {
        debug_assert!(cause.is_fatal(), "the store stops only on a fatal error: {cause}");
        self.0.send_if_modified(|slot| match slot {
            Some(_) => false,
            None => {
                *slot = Some(cause);
                true
            }
        })
    }

    /// What stopped the store, once something has.
    pub fn cause(&self) -> Option<StoreError> {
        self.0.borrow().clone()
    }

    /// Completes with the cause once the store is stopped (at once if it is).
    pub async fn tripped(&self) -> StoreError {
        let mut watching = self.0.subscribe();
        if let Ok(slot) = watching.wait_for(Option::is_some).await
            && let Some(cause) = slot.as_ref()
        {
            return cause.clone();
        }
        // The sender lives as long as `self`: it cannot close while this waits.
        std::future::pending().await
    }

    /// `result`, having stopped the store first if it is a fatal error.
    pub(crate) fn watch<T>(&self, result: StoreResult<T>) -> StoreResult<T> {
        if let Err(e) = &result
            && e.is_fatal()
        {
            self.trip(e.clone());
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_fatal_error_stops_it_for_good() {
        let halt = Halt::default();
        assert!(halt.cause().is_none());
        assert!(halt.watch::<()>(Err(StoreError::unavailable("a retryable error"))).is_err());
        assert!(halt.cause().is_none(), "only a fatal error stops the store");

        let waiter = tokio::spawn({
            let halt = halt.clone();
            async move { halt.tripped().await }
        });
        assert!(halt.watch::<()>(Err(StoreError::corrupt("first"))).is_err());
        assert!(!halt.trip(StoreError::corrupt("second")), "already stopped");
        assert_eq!(waiter.await.unwrap().context(), "first");
        assert_eq!(halt.cause().unwrap().context(), "first");
        assert_eq!(halt.tripped().await.context(), "first", "at once once stopped");
    }
}
