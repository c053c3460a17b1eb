//! A message body as an event: checked for size, parsed as a JSON object
//! whose top-level keys are distinct, and unwrapped from SNS and EventBridge
//! envelopes (with `fetch_etl.envelopes = auto`).

use std::collections::HashSet;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};

use crate::contract::RejectReason;
use crate::envelope::{self, EnvelopeAttributes, EnvelopeFields, Envelopes, Kind, Opened};
use crate::reject::{json_kind, reject, truncate, Reject};
use crate::settings;

/// The top-level object as an ordered list of fields, so duplicate keys are
/// seen (serde_json's map would silently keep the last one).
pub(crate) struct Fields(pub(crate) Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    out.push((k, v));
                }
                Ok(Fields(out))
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
    /// Its top-level keys, in the order they came (for messages).
    pub keys: Vec<String>,
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
    // A hash set: linear in the number of keys (a list was quadratic: 100,000
    // keys took seconds, with no way to cancel).
    let mut seen: HashSet<&str> = HashSet::with_capacity(fields.0.len());
    for (k, _) in &fields.0 {
        if !seen.insert(k.as_str()) {
            return Err(reject(
                RejectReason::DuplicateField,
                format!("field {:?} appears more than once", truncate(k, 40)),
            ));
        }
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
        keys: Vec::new(),
        envelopes: Vec::new(),
        attributes: Vec::new(),
        fields: Vec::new(),
        hint: None,
    };
    let fields = open_layers(body, envelopes, &mut out)?;
    out.keys = fields.0.iter().map(|(k, _)| k.clone()).collect();
    out.value = Value::Object(fields.0.into_iter().collect::<Map<String, Value>>());
    Ok(out)
}

/// The innermost object of `text`, unwrapping envelopes around it
/// (recording them in `out`).
fn open_layers(text: &str, envelopes: Envelopes, out: &mut Event) -> Result<Fields, Reject> {
    let fields = parse_object(text)?;
    if envelopes == Envelopes::Auto && out.envelopes.len() < envelope::MAX_LAYERS {
        match envelope::open(text, &fields.0) {
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
        out.hint = envelope::not_unwrapped_hint(&fields.0);
    }
    Ok(fields)
}
