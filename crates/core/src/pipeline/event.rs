//! A message body as an event: checked for size, parsed as a JSON object
//! whose top-level keys are distinct, and unwrapped from SNS and EventBridge
//! envelopes (with `fetch_etl.envelopes = auto`).

use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};

use crate::contract::RejectReason;
use crate::envelope::{self, EnvelopeAttributes, EnvelopeFields, Envelopes, Kind, Opened};
use crate::reject::{json_kind, reject, truncate, Reject};
use crate::settings;

/// The top-level object, and the first key it had twice (serde_json's map
/// alone would silently keep the last value).
pub(crate) struct Fields {
    pub(crate) map: Map<String, Value>,
    duplicate: Option<String>,
}

impl<'de> serde::Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
                let mut out = Fields {
                    map: Map::new(),
                    duplicate: None,
                };
                // The map finds a repeated key as it inserts (no second index
                // of the keys: linear in their number, as 100,000 keys need).
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    if out.duplicate.is_none() && out.map.contains_key(&k) {
                        out.duplicate = Some(k);
                    } else {
                        out.map.insert(k, v);
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}

/// An event, and what its envelopes said about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The event object.
    pub value: Value,
    /// The envelopes unwrapped, outermost first (empty: a bare event).
    pub envelopes: Vec<Kind>,
    /// Their fields kept with the row (`sqs_attributes`: `TopicArn`, ...).
    pub attributes: EnvelopeAttributes,
    /// Their fields for `ENVELOPE` sources.
    pub fields: EnvelopeFields,
    /// With `envelopes = none`, a hint that the body was an envelope.
    pub hint: Option<String>,
}

/// `text` as a JSON object with distinct top-level keys, or why not.
pub(crate) fn parse_object(text: &str) -> Result<Fields, Reject> {
    let fields: Fields = match serde_json::from_str::<Fields>(text) {
        Ok(f) => f,
        Err(e) => {
            if e.to_string().contains("recursion limit exceeded") {
                return Err(too_deep());
            }
            return Err(match serde_json::from_str::<Value>(text) {
                Ok(v) => reject(
                    RejectReason::NotObject,
                    format!("body is a JSON {}, not an object", json_kind(&v)),
                ),
                Err(e2) if e2.to_string().contains("recursion limit exceeded") => too_deep(),
                Err(e2) => reject(RejectReason::NotJson, e2.to_string()),
            });
        }
    };
    if let Some(k) = &fields.duplicate {
        return Err(reject(
            RejectReason::DuplicateField,
            format!("field {:?} appears more than once", truncate(k, 40)),
        ));
    }
    Ok(fields)
}

fn too_deep() -> Reject {
    reject(RejectReason::TooDeep, "JSON nesting exceeds 128 levels")
}

/// Checks, parses and unwraps one message body.
pub fn open(body: &str, max_body_bytes: usize, envelopes: Envelopes) -> Result<Event, Reject> {
    if body.len() > max_body_bytes {
        return Err(reject(
            RejectReason::TooLarge,
            format!(
                "body is {} bytes; the limit ({}) is {}",
                body.len(),
                settings::MAX_BODY_BYTES.name_str(),
                max_body_bytes
            ),
        ));
    }
    let mut out = Event {
        value: Value::Null,
        envelopes: Vec::new(),
        attributes: Vec::new(),
        fields: Vec::new(),
        hint: None,
    };
    let fields = open_layers(body, envelopes, &mut out)?;
    out.value = Value::Object(fields.map);
    Ok(out)
}

/// The innermost object of `text`, unwrapping envelopes around it
/// (recording them in `out`).
fn open_layers(text: &str, envelopes: Envelopes, out: &mut Event) -> Result<Fields, Reject> {
    let fields = parse_object(text)?;
    if envelopes == Envelopes::Auto && out.envelopes.len() < envelope::MAX_LAYERS {
        match envelope::open(text, &fields.map) {
            Opened::Bare => {}
            Opened::Refused(r) => return Err(r),
            Opened::Inner {
                kind,
                inner,
                attributes,
                fields: f,
            } => {
                out.envelopes.push(kind);
                out.attributes.extend(attributes);
                out.fields.extend(f);
                return open_layers(&inner, envelopes, out).map_err(|r| envelope::inside(kind, r));
            }
        }
    }
    if envelopes == Envelopes::None {
        out.hint = envelope::not_unwrapped_hint(&fields.map);
    }
    Ok(fields)
}
