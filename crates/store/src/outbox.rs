//! What a batch's events become in the outbox: one CloudEvents envelope row per event, the same
//! on every backend. `data` is the record's JSON, which is already its API form, so the relay
//! publishes it without re-encoding.

use std::ops::Range;

use coffer_ledger::{Emitted, Event, Timestamp, TraceParent};
use uuid::Uuid;

/// An event as the outbox holds it: a CloudEvents envelope and its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// Where the event is in the outbox: positions only grow, in the order the changes
    /// committed, and a smaller one never appears after a larger one was read (there may be
    /// gaps). The relay publishes by position and resumes after the last one it published.
    pub position: i64,
    pub id: Uuid,
    pub source: String,
    /// The CloudEvents `type`, e.g. `coffer.transfer.created`.
    pub kind: String,
    /// The account or transfer the event is about.
    pub subject: Uuid,
    pub time: Timestamp,
    /// The record's JSON, as the API shows it.
    pub data: String,
    /// The W3C trace context of the request that caused the event, when it came with one.
    pub traceparent: Option<TraceParent>,
}

/// The envelopes of one batch: every event's JSON in one buffer, each at its own range, beside
/// the events they were made from (which give `type`, `subject` and the trace).
pub(crate) struct Envelopes<'a> {
    events: &'a [Emitted],
    json: String,
    rows: Vec<(Uuid, Range<usize>)>,
}

/// One outbox row: the event's id, CloudEvents `type`, `subject`, `data` and `traceparent`.
pub(crate) struct Envelope<'a> {
    pub id: Uuid,
    pub kind: &'static str,
    pub subject: Uuid,
    pub data: &'a str,
    pub traceparent: Option<&'a str>,
}

impl<'a> Envelopes<'a> {
    pub fn encode(events: &'a [Emitted]) -> Self {
        let mut json = Vec::with_capacity(events.len() * 512);
        let mut rows = Vec::with_capacity(events.len());
        // One fresh v7 id per batch, counted up in its random bits for each event: ids stay
        // unique and time-ordered without a getrandom system call per event.
        let first = Uuid::now_v7().as_u128();
        for (i, emitted) in events.iter().enumerate() {
            let start = json.len();
            // Records are plain data with string keys: serializing them into memory cannot fail.
            match &emitted.event {
                Event::Account(_, account) => serde_json::to_writer(&mut json, account),
                Event::Transfer(_, transfer) => serde_json::to_writer(&mut json, transfer),
            }
            .expect("records always serialize");
            rows.push((event_id(first, i), start..json.len()));
        }
        let json = String::from_utf8(json).expect("serde_json writes UTF-8");
        Self { events, json, rows }
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = Envelope<'_>> {
        self.events.iter().zip(&self.rows).map(|(Emitted { event, trace }, (id, range))| Envelope {
            id: *id,
            kind: event.kind().cloud_event_type(),
            subject: event.subject(),
            data: &self.json[range.clone()],
            traceparent: trace.as_ref().map(TraceParent::as_str),
        })
    }
}

/// The `i`-th event id after `first`: its 62 low (random) bits counted up, wrapping inside them,
/// so the version and variant bits stay those of a v7 UUID.
fn event_id(first: u128, i: usize) -> Uuid {
    const RANDOM_B: u128 = (1 << 62) - 1;
    Uuid::from_u128((first & !RANDOM_B) | (first.wrapping_add(i as u128) & RANDOM_B))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_distinct_v7_uuids_in_order() {
        let first = Uuid::now_v7().as_u128();
        let ids: Vec<Uuid> = (0..1000).map(|i| event_id(first, i)).collect();
        assert!(ids.iter().all(|id| id.get_version_num() == 7 && id.get_variant() == uuid::Variant::RFC4122));
        let wrapped = event_id(first | ((1 << 62) - 1), 1);
        assert_eq!(wrapped.get_version_num(), 7);
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 1000);
    }
}
