//! One reader of the outbox for every event stream of a process.
//!
//! Each open `GET /v1/events/stream` used to poll the outbox on its own, so idle streams cost
//! one query per stream and poll interval: 256 streams, 5,000 queries a second against the
//! database for nothing. Now one task reads the new events and hands each page to every stream
//! at once (a broadcast of shared pages). A stream reads the store itself only to catch up: from
//! where its client asked to start, after it fell more than the broadcast's buffer behind, or
//! when a page does not continue where it is.
//!
//! A page says which range of positions it covers, `(after, last]`, all of it (the outbox's
//! positions only grow in commit order, DESIGN §3). That is how a stream knows it missed
//! nothing: a page that starts after the stream's position leaves a gap, which the stream
//! fills from the store before it follows the pages again.
//!
//! The task runs while any stream listens and stops with the last one.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use coffer_store::{Outbox, OutboxEvent, StoreResult};
use tokio::sync::broadcast;

/// How often the reader looks for new events while it is caught up.
pub const POLL: Duration = Duration::from_millis(50);
/// Events read from the outbox per query.
pub const PAGE: usize = 500;
/// Pages kept for a stream that is slow to take them; one further behind catches up from the
/// store.
const BUFFERED_PAGES: usize = 64;

/// Every event with a position in `(after, last]`, in order.
#[derive(Debug)]
pub struct Page {
    pub after: i64,
    pub events: Vec<OutboxEvent>,
}

impl Page {
    pub fn last(&self) -> i64 {
        self.events.last().map_or(self.after, |event| event.position)
    }
}

pub struct OutboxTail {
    store: Arc<dyn Outbox>,
    pages: broadcast::Sender<Arc<Page>>,
    /// Whether the reading task runs; taken with the subscription, so that a stream that
    /// subscribes as the task sees no listener left either finds it running or starts it.
    running: Mutex<bool>,
}

impl OutboxTail {
    pub fn new(store: Arc<dyn Outbox>) -> Arc<Self> {
        Self::with_buffer(store, BUFFERED_PAGES)
    }

    /// The same, keeping `buffered` pages for slow streams.
    pub fn with_buffer(store: Arc<dyn Outbox>, buffered: usize) -> Arc<Self> {
        let (pages, _) = broadcast::channel(buffered);
        Arc::new(Self { store, pages, running: Mutex::new(false) })
    }

    /// The pages read from now on; starts the reader if it is not running.
    pub fn subscribe(self: &Arc<Self>) -> broadcast::Receiver<Arc<Page>> {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let receiver = self.pages.subscribe();
        if !*running {
            *running = true;
            tokio::spawn(self.clone().read());
        }
        receiver
    }

    #[cfg(test)]
    pub fn is_running(&self) -> bool {
        *self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether nobody listens any more; if so the reader is marked stopped.
    fn nobody_listens(&self) -> bool {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let idle = self.pages.receiver_count() == 0;
        if idle {
            *running = false;
        }
        idle
    }

    async fn read(self: Arc<Self>) {
        // From the end: a stream that starts earlier reads what lies before from the store.
        let mut position = None;
        while !self.nobody_listens() {
            match self.next_page(&mut position).await {
                Ok(Some(page)) => {
                    let full = page.events.len() == PAGE;
                    position = Some(page.last());
                    // No receiver left is checked at the top of the loop.
                    let _ = self.pages.send(Arc::new(page));
                    if !full {
                        tokio::time::sleep(POLL).await;
                    }
                }
                Ok(None) => tokio::time::sleep(POLL).await,
                Err(err) => {
                    tracing::warn!(error = %err, "event streams: the outbox could not be read; retrying");
                    tokio::time::sleep(POLL * 10).await;
                }
            }
        }
    }

    /// The events after `position` (the outbox's end, read first, when there is none yet).
    async fn next_page(&self, position: &mut Option<i64>) -> StoreResult<Option<Page>> {
        let after = match *position {
            Some(after) => after,
            None => *position.insert(self.store.last_event_position().await?),
        };
        let events = self.store.events_after(after, PAGE).await?;
        Ok((!events.is_empty()).then_some(Page { after, events }))
    }
}
