//! What text a client may put in a record: no control characters.
//!
//! PostgreSQL cannot store U+0000 in any text column, and the other control characters
//! (Unicode category Cc: U+0000–U+001F, U+007F–U+009F) break the log lines, CSV exports and
//! terminals that references and labels end up in. The API refuses them when a request is parsed,
//! so they are a 400 naming the field, never a failed commit that takes other clients' commands
//! down with it (DESIGN §5, isolation).
//!
//! The check belongs to the API, not to the ledger's types: records stored before it existed
//! must still load, and events already published must still decode.

use coffer_ledger::{ExternalRef, Metadata};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

const NO_CONTROL: &str = "must not contain control characters (U+0000-U+001F, U+007F-U+009F)";

/// Whether `text` holds a control character (Unicode category Cc).
pub fn has_control_character(text: &str) -> bool {
    text.chars().any(char::is_control)
}

/// Refuses `text` when it holds a control character, with the message the field's error shows.
pub fn check(text: &str) -> Result<(), &'static str> {
    if has_control_character(text) { Err(NO_CONTROL) } else { Ok(()) }
}

/// `deserialize_with` for an optional `external_ref`.
pub fn external_ref<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ExternalRef>, D::Error> {
    let value = Option::<ExternalRef>::deserialize(d)?;
    if let Some(reference) = &value {
        check(reference.as_str()).map_err(|why| serde::de::Error::custom(format!("external_ref {why}")))?;
    }
    Ok(value)
}

/// `deserialize_with` for optional `metadata`: no control character in any key or string value,
/// however deep.
pub fn metadata<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Metadata>, D::Error> {
    let value = Option::<Metadata>::deserialize(d)?;
    if let Some(metadata) = &value {
        check_object(metadata.as_map()).map_err(serde::de::Error::custom)?;
    }
    Ok(value)
}

fn check_object(map: &serde_json::Map<String, Value>) -> Result<(), String> {
    for (key, value) in map {
        check(key).map_err(|why| format!("metadata keys {why}"))?;
        check_value(value)?;
    }
    Ok(())
}

fn check_value(value: &Value) -> Result<(), String> {
    match value {
        Value::String(text) => check(text).map_err(|why| format!("metadata string values {why}")),
        Value::Object(map) => check_object(map),
        Value::Array(items) => items.iter().try_for_each(check_value),
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Body {
        #[serde(default, deserialize_with = "external_ref")]
        external_ref: Option<ExternalRef>,
        #[serde(default, deserialize_with = "metadata")]
        metadata: Option<Metadata>,
    }

    fn parse(json: &str) -> Result<Body, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn control_characters_are_refused_anywhere_in_client_text() {
        for bad in [
            r#"{"external_ref":"a\u0000b"}"#,
            r#"{"external_ref":"line\nbreak"}"#,
            r#"{"external_ref":"\u007f"}"#,
            r#"{"external_ref":"\u0085"}"#,
            r#"{"metadata":{"k\u0000":1}}"#,
            r#"{"metadata":{"k":"\u0000"}}"#,
            r#"{"metadata":{"k":[1,{"deep":["\u001b[31m"]}]}}"#,
        ] {
            let err = parse(bad).expect_err(bad);
            assert!(err.contains("control characters"), "{bad}: {err}");
        }
    }

    #[test]
    fn ordinary_text_and_absent_fields_pass() {
        let body =
            parse(r#"{"external_ref":"ordre-é-✓-😀","metadata":{"note":"a b","n":[1,null,true]}}"#).unwrap();
        assert_eq!(body.external_ref.unwrap().as_str(), "ordre-é-✓-😀");
        assert!(body.metadata.is_some());
        let body = parse("{}").unwrap();
        assert!(body.external_ref.is_none() && body.metadata.is_none());
        assert!(parse(r#"{"external_ref":null}"#).unwrap().external_ref.is_none());
    }
}
