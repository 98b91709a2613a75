//! The CloudEvents 1.0 envelope, JSON structured mode, of an outbox row.
//!
//! The store writes the form (it hashes it into the outbox's chain); this module is where the
//! event pipeline encodes and decodes it. `data` is the record's JSON exactly as the outbox
//! holds it, embedded without being parsed and written again. The extensions: `sequence`, the
//! outbox position zero-padded to 19 digits (the extension requires a lexicographically ordered
//! string); `chainhash`, the event's link in the outbox's hash chain; `traceparent`.

use coffer_ledger::{Timestamp, TraceParent};
use coffer_store::OutboxEvent;
use coffer_store::chain::ChainHash;
use serde::Deserialize;
use serde_json::value::RawValue;

/// Every event type Coffer emits (DESIGN.md §3). A breaking change to one is a new type.
pub const EVENT_TYPES: [&str; 6] = [
    "coffer.account.created",
    "coffer.transfer.created",
    "coffer.transfer.posted",
    "coffer.transfer.voided",
    "coffer.transfer.expired",
    coffer_store::audit::AUDIT_EVENT_TYPE,
];

/// The fields [`decode`] reads back; others (a `tracestate`, say) are ignored.
#[derive(Deserialize)]
struct Received<'a> {
    id: uuid::Uuid,
    #[serde(borrow)]
    source: std::borrow::Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    subject: uuid::Uuid,
    time: Timestamp,
    #[serde(borrow)]
    sequence: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    traceparent: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(borrow, default)]
    chainhash: Option<std::borrow::Cow<'a, str>>,
}

pub use coffer_store::sequence;

/// The event's CloudEvents JSON, `chainhash` included (see [`coffer_store::OutboxEvent`]).
/// Fails only if the outbox holds data that is not JSON, which the store never writes.
pub fn encode(event: &OutboxEvent) -> Result<Vec<u8>, serde_json::Error> {
    event.cloud_event_json()
}

/// The outbox row a CloudEvent (as [`encode`] wrote it) came from: what consumers of the bus
/// get back.
pub fn decode(json: &[u8]) -> Result<OutboxEvent, serde_json::Error> {
    let event: Received = serde_json::from_slice(json)?;
    let invalid = |why: String| <serde_json::Error as serde::de::Error>::custom(why);
    let position = event
        .sequence
        .parse()
        .map_err(|_| invalid(format!("sequence {:?} is not a position", event.sequence)))?;
    let traceparent = event
        .traceparent
        .map(|text| {
            TraceParent::try_from(text.as_ref()).map_err(|e| invalid(format!("traceparent {text:?}: {e}")))
        })
        .transpose()?;
    let hash = event
        .chainhash
        .map(|text| {
            ChainHash::from_hex(&text)
                .ok_or_else(|| invalid(format!("chainhash {text:?} is not 64 hex digits")))
        })
        .transpose()?;
    Ok(OutboxEvent {
        position,
        id: event.id,
        source: event.source.into_owned(),
        kind: event.kind.into_owned(),
        subject: event.subject,
        time: event.time,
        data: event.data.get().to_owned(),
        traceparent,
        hash,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn an_outbox_row_becomes_a_structured_cloud_event() {
        let event = OutboxEvent {
            position: 42,
            id: uuid::Uuid::from_u128(1),
            source: "coffer".into(),
            kind: "coffer.transfer.created".into(),
            subject: uuid::Uuid::from_u128(2),
            time: Timestamp::from_micros(1_700_000_000_123_456),
            data: r#"{"id":"00000000-0000-0000-0000-000000000002","amount":5}"#.into(),
            traceparent: None,
            hash: None,
        };
        let json: Value = serde_json::from_slice(&encode(&event).unwrap()).unwrap();
        assert_eq!(
            json,
            json!({
                "specversion": "1.0",
                "id": "00000000-0000-0000-0000-000000000001",
                "source": "coffer",
                "type": "coffer.transfer.created",
                "subject": "00000000-0000-0000-0000-000000000002",
                "time": "2023-11-14T22:13:20.123456Z",
                "datacontenttype": "application/json",
                "sequence": "0000000000000000042",
                "data": {"id": "00000000-0000-0000-0000-000000000002", "amount": 5},
            })
        );
        assert_eq!(decode(&encode(&event).unwrap()).unwrap(), event, "decode reverses encode");

        let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let traced = OutboxEvent { traceparent: Some(TraceParent::try_from(trace).unwrap()), ..event };
        let json: Value = serde_json::from_slice(&encode(&traced).unwrap()).unwrap();
        assert_eq!(json["traceparent"], trace);
        assert_eq!(decode(&encode(&traced).unwrap()).unwrap(), traced, "decode keeps the traceparent");

        let chained = OutboxEvent { hash: Some(ChainHash::GENESIS.next(b"x")), ..traced };
        let json: Value = serde_json::from_slice(&encode(&chained).unwrap()).unwrap();
        assert_eq!(json["chainhash"], chained.hash.unwrap().to_hex());
        assert_eq!(decode(&encode(&chained).unwrap()).unwrap(), chained, "decode keeps the chainhash");
    }

    #[test]
    fn a_received_event_with_a_malformed_traceparent_is_refused() {
        let mut json: Value = json!({
            "specversion": "1.0", "id": "00000000-0000-0000-0000-000000000001", "source": "coffer",
            "type": "coffer.account.created", "subject": "00000000-0000-0000-0000-000000000002",
            "time": "2023-11-14T22:13:20Z", "sequence": "0000000000000000001", "data": {},
        });
        assert!(decode(&serde_json::to_vec(&json).unwrap()).unwrap().traceparent.is_none());
        json["traceparent"] = json!("00-xyz");
        let error = decode(&serde_json::to_vec(&json).unwrap()).unwrap_err();
        assert!(error.to_string().contains("traceparent"), "{error}");
    }

    #[test]
    fn sequences_sort_as_strings_like_positions_sort_as_numbers() {
        let positions = [1, 9, 10, 99, 100, 123_456_789, i64::MAX];
        let mut strings: Vec<String> = positions.iter().map(|p| sequence(*p)).collect();
        let sorted = strings.clone();
        strings.sort();
        assert_eq!(strings, sorted);
        assert!(strings.iter().all(|s| s.len() == 19));
    }
}
