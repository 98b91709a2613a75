//! What a batch's events become in the outbox: one CloudEvents envelope row per event, the same
//! on every backend, each linked into the outbox's hash chain (see [`crate::chain`]).
//!
//! `data` is the record's JSON in its canonical form (RFC 8785), which is also its API form, so
//! the relay publishes it without re-encoding and the chain hashes exactly what is published.
//! An event's chain bytes are its CloudEvent without `chainhash`, canonical; its `chainhash` is
//! the previous event's `chainhash` linked with them. A consumer checks continuity from the
//! events alone: drop `chainhash`, canonicalize, hash after the previous one.

use coffer_ledger::{Emitted, Timestamp, TraceParent};
use serde::Serialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::chain::{ChainHash, write_canonical_json};
use crate::record_json::{self, ChainBytes};

/// An event as the outbox holds it: a CloudEvents envelope, its position and its chain link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// Where the event is in the outbox: positions only grow, in the order the changes
    /// committed, and a smaller one never appears after a larger one was read. Positions are
    /// consecutive: a gap means a row was deleted (by retention, below the chain's anchor).
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
    /// The event's link in the outbox's hash chain (the `chainhash` extension); `None` for an
    /// event written before the chain existed, or a copy kept outside the outbox (a dead letter).
    pub hash: Option<ChainHash>,
}

/// The `sequence` extension value of a position: zero-padded to 19 digits, because the
/// extension requires a lexicographically ordered string and 19 digits hold every position.
pub fn sequence(position: i64) -> String {
    format!("{position:019}")
}

/// The CloudEvents JSON structured form of an event. Fields are declared in RFC 8785 key order
/// and every value but `data` is plain ASCII, so with canonical `data` this is canonical JSON.
#[derive(Serialize)]
struct CloudEvent<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    chainhash: Option<String>,
    data: &'a RawValue,
    datacontenttype: &'static str,
    id: Uuid,
    sequence: &'a str,
    source: &'a str,
    specversion: &'static str,
    subject: Uuid,
    time: &'a str,
    /// The W3C trace context (the CloudEvents distributed tracing extension), when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<&'a str>,
    #[serde(rename = "type")]
    kind: &'a str,
}

impl OutboxEvent {
    /// The CloudEvent the relay publishes, `chainhash` included. Fails only if `data` is not
    /// JSON, which the store never writes.
    pub fn cloud_event_json(&self) -> serde_json::Result<Vec<u8>> {
        let data: &RawValue = serde_json::from_str(&self.data)?;
        let mut out = Vec::with_capacity(self.data.len() + 400);
        self.envelope(data, self.hash.map(|h| h.to_hex()), &sequence(self.position), &self.time.to_rfc3339())
            .serialize(&mut serde_json::Serializer::new(&mut out))?;
        Ok(out)
    }

    /// The bytes the chain hashes for this event: its CloudEvent without `chainhash`, in
    /// canonical form whatever form the stored `data` is in.
    pub fn chain_bytes(&self) -> serde_json::Result<Vec<u8>> {
        let data: serde_json::Value = serde_json::from_str(&self.data)?;
        let data = RawValue::from_string(
            String::from_utf8(crate::chain::canonical_json(&data)?).expect("JSON is UTF-8"),
        )?;
        let mut out = Vec::with_capacity(self.data.len() + 400);
        write_canonical_json(
            &mut out,
            &self.envelope(&data, None, &sequence(self.position), &self.time.to_rfc3339()),
        )?;
        Ok(out)
    }

    /// Whether this event's hash is the link that follows `previous`.
    pub fn follows(&self, previous: &ChainHash) -> bool {
        self.hash.is_some_and(|hash| self.chain_bytes().is_ok_and(|bytes| previous.next(&bytes) == hash))
    }

    fn envelope<'a>(
        &'a self,
        data: &'a RawValue,
        chainhash: Option<String>,
        sequence: &'a str,
        time: &'a str,
    ) -> CloudEvent<'a> {
        CloudEvent {
            chainhash,
            data,
            datacontenttype: "application/json",
            id: self.id,
            sequence,
            source: &self.source,
            specversion: "1.0",
            subject: self.subject,
            time,
            traceparent: self.traceparent.as_ref().map(TraceParent::as_str),
            kind: &self.kind,
        }
    }
}

/// The envelopes of one batch: every event's canonical JSON in one buffer, beside the events
/// they were made from (which give `type`, `subject` and the trace).
pub(crate) struct Envelopes<'a> {
    events: &'a [Emitted],
    json: String,
    rows: Vec<Row>,
}

struct Row {
    id: Uuid,
    /// The event's chain bytes, less the 19 digits of its position, and its `data` within them.
    bytes: ChainBytes,
}

/// One outbox row: the event's id, CloudEvents `type`, `subject`, `data` and `traceparent`,
/// and its chain bytes around the place of its position.
pub(crate) struct Envelope<'a> {
    pub id: Uuid,
    pub kind: &'static str,
    pub subject: Uuid,
    pub data: &'a str,
    pub traceparent: Option<&'a str>,
    /// The chain bytes before the position's digits, and after them.
    pub chain: (&'a [u8], &'a [u8]),
}

impl Envelope<'_> {
    /// This event's link, at `position`, following `previous`.
    pub fn link(&self, previous: &ChainHash, position: i64) -> ChainHash {
        previous.next_parts(&[self.chain.0, sequence(position).as_bytes(), self.chain.1])
    }
}

impl<'a> Envelopes<'a> {
    /// Encodes a batch's events, all at time `now` and from source `coffer`.
    pub fn encode(events: &'a [Emitted], now: Timestamp) -> Self {
        let mut json = Vec::with_capacity(events.len() * 1024);
        let mut rows = Vec::with_capacity(events.len());
        let time = now.to_rfc3339();
        // One fresh v7 id per batch, counted up in its random bits for each event: ids stay
        // unique and time-ordered without a getrandom system call per event.
        let first = Uuid::now_v7().as_u128();
        for (i, emitted) in events.iter().enumerate() {
            let id = event_id(first, i);
            let attributes = record_json::Attributes {
                id,
                kind: emitted.event.kind().cloud_event_type(),
                subject: emitted.event.subject(),
                time: &time,
                traceparent: emitted.trace.as_ref().map(TraceParent::as_str),
            };
            // Records are plain data with string keys: serializing them into memory cannot fail.
            let bytes = record_json::write_chain_bytes(
                &mut json,
                |out| record_json::write_record(out, &emitted.event),
                &attributes,
            )
            .expect("records always serialize");
            rows.push(Row { id, bytes });
        }
        let json = String::from_utf8(json).expect("serde_json writes UTF-8");
        Self { events, json, rows }
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = Envelope<'_>> {
        let bytes = self.json.as_bytes();
        self.events.iter().zip(&self.rows).map(move |(Emitted { event, trace }, row)| Envelope {
            id: row.id,
            kind: event.kind().cloud_event_type(),
            subject: event.subject(),
            data: &self.json[row.bytes.data.clone()],
            traceparent: trace.as_ref().map(TraceParent::as_str),
            chain: (&bytes[row.bytes.all.start..row.bytes.split], &bytes[row.bytes.split..row.bytes.all.end]),
        })
    }
}

/// An event written on its own rather than by a batch (an audit record's): its canonical data
/// and its chain bytes around the place of its position.
pub(crate) struct LoneEvent {
    pub data: String,
    chain: Vec<u8>,
    split: usize,
}

impl LoneEvent {
    /// Fails only when `data` is not JSON.
    pub fn new(id: Uuid, kind: &str, subject: Uuid, time: Timestamp, data: &str) -> serde_json::Result<Self> {
        let value: serde_json::Value = serde_json::from_str(data)?;
        let data = String::from_utf8(crate::chain::canonical_json(&value)?).expect("JSON is UTF-8");
        let mut chain = Vec::with_capacity(data.len() + 300);
        let time = time.to_rfc3339();
        let attributes = record_json::Attributes { id, kind, subject, time: &time, traceparent: None };
        let write_data = |out: &mut Vec<u8>| {
            out.extend_from_slice(data.as_bytes());
            Ok(())
        };
        let split = record_json::write_chain_bytes(&mut chain, write_data, &attributes)?.split;
        Ok(LoneEvent { data, chain, split })
    }

    /// The chain bytes before the position's digits, and after them.
    pub fn chain(&self) -> (&[u8], &[u8]) {
        self.chain.split_at(self.split)
    }

    /// This event's link, at `position`, following `previous`.
    pub fn link(&self, previous: &ChainHash, position: i64) -> ChainHash {
        let (head, tail) = self.chain();
        previous.next_parts(&[head, sequence(position).as_bytes(), tail])
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
    use coffer_ledger::{Account, Event};

    use super::*;

    /// The link a writer makes from the encoded batch is the one a reader recomputes from the
    /// stored row, and the published CloudEvent is canonical JSON.
    #[test]
    fn writers_and_readers_agree_on_every_link() {
        let account: Account = serde_json::from_value(serde_json::json!({
            "id": "00000000-0000-0000-0000-00000000000a", "ledger": "USD", "code": 7,
            "flags": {"debits_must_not_exceed_credits": true, "credits_must_not_exceed_debits": false},
            "external_ref": "ref \"quoted\" \u{1}", "metadata": {"zeta": 1.50, "é": [1, "two"], "a": {"b": null}},
            "balance": {"debits_pending": 0, "debits_posted": 0, "credits_pending": 0, "credits_posted": 9_223_372_036_854_775_807_u64},
            "created_at": "2026-12-05T10:00:00.000001Z"
        }))
        .unwrap();
        let trace = TraceParent::try_from("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let events = [
            Emitted {
                event: Event::Account(coffer_ledger::EventKind::AccountCreated, account.clone()),
                trace: None,
            },
            Emitted {
                event: Event::Account(coffer_ledger::EventKind::AccountCreated, account),
                trace: Some(trace),
            },
        ];
        let now = Timestamp::from_micros(1_780_000_000_000_001);
        let envelopes = Envelopes::encode(&events, now);
        let mut previous = ChainHash::GENESIS.next(b"earlier");
        for (i, envelope) in envelopes.iter().enumerate() {
            let position = 41 + i as i64;
            let hash = envelope.link(&previous, position);
            let stored = OutboxEvent {
                position,
                id: envelope.id,
                source: "coffer".into(),
                kind: envelope.kind.into(),
                subject: envelope.subject,
                time: now,
                data: envelope.data.into(),
                traceparent: envelope.traceparent.map(|t| TraceParent::try_from(t).unwrap()),
                hash: Some(hash),
            };
            let written = [envelope.chain.0, sequence(position).as_bytes(), envelope.chain.1].concat();
            assert_eq!(stored.chain_bytes().unwrap(), written);
            assert!(stored.follows(&previous), "event {i}");
            assert!(!stored.follows(&hash), "a link follows only its predecessor");
            let published = stored.cloud_event_json().unwrap();
            let value: serde_json::Value = serde_json::from_slice(&published).unwrap();
            assert_eq!(crate::chain::canonical_json(&value).unwrap(), published, "published canonical");
            let mut edited = stored.clone();
            edited.data = edited.data.replace("9223372036854775807", "9223372036854775806");
            assert!(!edited.follows(&previous), "an edit one unit beyond 2^53 shows");
            previous = hash;
        }
    }

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
