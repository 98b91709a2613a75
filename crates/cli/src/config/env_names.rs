//! Which `COFFER_*` environment variable sets which configuration key, by one rule:
//! `COFFER_<KEY>` for a top-level key and `COFFER_<SECTION>__<KEY>` for a key of a section
//! (`[store]`, `[api]`, `[events]`, `[gateway]`). The gateway's keys also answer to their older
//! one-underscore names (`COFFER_GATEWAY_LISTEN`), kept as aliases.
//!
//! A `COFFER_*` variable that is neither configuration nor one of the few that are Coffer's for
//! other reasons is refused, naming the closest known variable: a misspelt setting silently
//! ignored is a server running on a default its operator thinks they changed.

use serde::Deserialize;
use serde::de::{self, Visitor};

/// `COFFER_*` variables that are not configuration: the configuration file's path and the
/// client commands' server and token (clap reads those), the scripts' binary, the shipped NATS
/// server files' passwords (nats-server reads those), and the test suite's.
const NOT_CONFIGURATION: &[&str] = &[
    "COFFER_CONFIG",
    "COFFER_URL",
    "COFFER_TOKEN",
    "COFFER_BIN",
    "COFFER_NATS_RELAY_PASSWORD",
    "COFFER_NATS_WORKER_PASSWORD",
];
const NOT_CONFIGURATION_PREFIX: &str = "COFFER_TEST_";

/// The keys of the configuration: the top level's and each section's.
#[derive(Clone)]
pub struct Keys {
    pub top: &'static [&'static str],
    pub sections: Vec<(&'static str, &'static [&'static str])>,
}

impl Keys {
    /// Every variable name that sets a key, in the documented form.
    fn variables(&self) -> impl Iterator<Item = String> + '_ {
        let top =
            self.top.iter().filter(|k| !self.is_section(k)).map(|k| format!("COFFER_{}", k.to_uppercase()));
        let sections = self.sections.iter().flat_map(|(section, keys)| {
            keys.iter().map(move |k| format!("COFFER_{}__{}", section.to_uppercase(), k.to_uppercase()))
        });
        top.chain(sections)
    }

    fn is_section(&self, key: &str) -> bool {
        self.sections.iter().any(|(section, _)| *section == key)
    }

    fn section(&self, name: &str) -> Option<&'static [&'static str]> {
        self.sections.iter().find(|(section, _)| *section == name).map(|(_, keys)| *keys)
    }

    /// The configuration key `variable` sets (`store.batch_wait_us`), `Ok(None)` for a variable
    /// that is not configuration, or the reason it is refused.
    pub fn key_of(&self, variable: &str) -> Result<Option<String>, String> {
        let Some(rest) = variable.strip_prefix("COFFER_") else { return Ok(None) };
        if NOT_CONFIGURATION.contains(&variable) || variable.starts_with(NOT_CONFIGURATION_PREFIX) {
            return Ok(None);
        }
        let name = rest.to_ascii_lowercase();
        let known = match name.split_once("__") {
            Some((section, key)) => self.section(section).is_some_and(|keys| keys.contains(&key)),
            None => self.top.contains(&name.as_str()) && !self.is_section(&name),
        };
        if known {
            return Ok(Some(name.replacen("__", ".", 1)));
        }
        if let Some(key) = name.strip_prefix("gateway_")
            && self.section("gateway").is_some_and(|keys| keys.contains(&key))
        {
            return Ok(Some(format!("gateway.{key}")));
        }
        Err(self.unknown(variable))
    }

    fn unknown(&self, variable: &str) -> String {
        let closest = self
            .variables()
            .map(|known| (strsim::damerau_levenshtein(variable, &known), known))
            .min_by_key(|(distance, _)| *distance);
        match closest {
            // Close enough to be a slip of the keyboard or of the underscores, not another word.
            Some((distance, known)) if distance <= variable.len() / 3 => {
                format!("unknown environment variable {variable}: did you mean {known}?")
            }
            _ => format!(
                "unknown environment variable {variable}: settings are COFFER_<KEY>, or \
                 COFFER_<SECTION>__<KEY> for the store, api, events and gateway sections"
            ),
        }
    }
}

/// The field names of a configuration struct, as serde's derive knows them.
pub fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut names = FieldNames(&[]);
    let _ = T::deserialize(&mut names);
    names.0
}

/// A deserializer that only asks a struct for its field names, then stops.
struct FieldNames(&'static [&'static str]);

#[derive(Debug)]
struct Stop;

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("field names read")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Stop
    }
}

impl<'de> de::Deserializer<'de> for &mut FieldNames {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Stop> {
        self.0 = fields;
        Err(Stop)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys {
            top: &["listen", "log_level", "store", "gateway"],
            sections: vec![
                ("store", &["batch_wait_us", "queue_capacity"]),
                ("gateway", &["listen", "admin_listen"]),
            ],
        }
    }

    #[test]
    fn one_rule_for_every_section_and_the_gateways_old_names() {
        let keys = keys();
        assert_eq!(keys.key_of("COFFER_LISTEN"), Ok(Some("listen".into())));
        assert_eq!(keys.key_of("COFFER_STORE__BATCH_WAIT_US"), Ok(Some("store.batch_wait_us".into())));
        assert_eq!(keys.key_of("COFFER_GATEWAY__LISTEN"), Ok(Some("gateway.listen".into())));
        assert_eq!(keys.key_of("COFFER_GATEWAY_ADMIN_LISTEN"), Ok(Some("gateway.admin_listen".into())));
        assert_eq!(keys.key_of("COFFER_TEST_REQUIRE_SERVICES"), Ok(None));
        assert_eq!(keys.key_of("COFFER_URL"), Ok(None));
        assert_eq!(keys.key_of("PATH"), Ok(None));
    }

    #[test]
    fn a_misspelt_variable_is_refused_with_the_closest_name() {
        let keys = keys();
        let refused = keys.key_of("COFFER_STORE_BATCH_WAIT_US").unwrap_err();
        assert!(refused.contains("did you mean COFFER_STORE__BATCH_WAIT_US?"), "{refused}");
        let refused = keys.key_of("COFFER_LOG_LEVLE").unwrap_err();
        assert!(refused.contains("did you mean COFFER_LOG_LEVEL?"), "{refused}");
        // A section is not a setting, nor is a key of another section.
        assert!(keys.key_of("COFFER_STORE").is_err());
        assert!(keys.key_of("COFFER_STORE__LISTEN").is_err());
        let far = keys.key_of("COFFER_SOMETHING_ELSE_ENTIRELY").unwrap_err();
        assert!(far.contains("COFFER_<SECTION>__<KEY>") && !far.contains("did you mean"), "{far}");
    }

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Sample {
        first: u32,
        second: String,
    }

    #[test]
    fn field_names_come_from_the_derive() {
        assert_eq!(fields_of::<Sample>(), ["first", "second"]);
    }
}
