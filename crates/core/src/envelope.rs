//! Envelopes around a login event: what SNS and EventBridge wrap an event in
//! on its way to an SQS queue, recognised and unwrapped so that the inner
//! event is validated as if it had been sent bare.
//!
//! - An **SNS notification** (a topic's SQS subscription with raw message
//!   delivery off): `{"Type": "Notification", "MessageId", "TopicArn",
//!   "Message": "<the event as a JSON string>", "Timestamp", ...}`. The event
//!   is the `Message` string.
//! - An **EventBridge event** (a rule with an SQS target): `{"version": "0",
//!   "id", "detail-type", "source", "account", "time", "region",
//!   "resources", "detail": {...}}`. The event is the `detail` object, read as
//!   the text it was sent as (so a duplicate key in it is still seen).
//!
//! An EventBridge event published to an SNS topic arrives in both: at most
//! [`MAX_LAYERS`] envelopes are unwrapped. SNS signatures are not verified
//! (that needs the signing certificate from the network): what may write to
//! the queue is the queue's access policy's business (docs/reference.md).

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::contract::RejectReason;
use crate::pipeline::spec::EnvelopeField;
use crate::reject::{reject, truncate, Reject};

/// Envelopes unwrapped around one event, at most.
pub const MAX_LAYERS: usize = 2;

/// `fetch_etl.envelopes` ([`crate::settings::ENVELOPES`]): whether envelopes are unwrapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Envelopes {
    /// SNS notifications and EventBridge events are unwrapped.
    #[default]
    Auto,
    /// Every body is the event itself (an envelope is then not a login event).
    None,
}

/// What kind of envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sns,
    EventBridge,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Sns => "SNS notification",
            Kind::EventBridge => "EventBridge event",
        })
    }
}

/// The envelope fields kept with the row (`sqs_attributes`), by name.
pub type EnvelopeAttributes = Vec<(&'static str, String)>;

/// The envelope fields a pipeline's `ENVELOPE` source can take, as sent.
pub type EnvelopeFields = Vec<(EnvelopeField, String)>;

/// What [`open`] found in an object's fields.
pub(crate) enum Opened<'a> {
    /// Not an envelope: the object is the event.
    Bare,
    /// An envelope: `inner` is the text to validate in its place.
    Inner {
        kind: Kind,
        inner: Cow<'a, str>,
        attributes: EnvelopeAttributes,
        fields: EnvelopeFields,
    },
    /// Looks like an envelope but is not one that carries an event.
    Refused(Reject),
}

fn field<'a>(fields: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    fields.get(name)
}

fn string<'a>(fields: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    field(fields, name).and_then(|v| v.as_str())
}

/// How an envelope is told from an event.
pub(crate) fn kind_of(fields: &Map<String, Value>) -> Option<Kind> {
    if string(fields, "Type").is_some() && field(fields, "TopicArn").is_some() {
        Some(Kind::Sns)
    } else if field(fields, "detail-type").is_some() && field(fields, "source").is_some() {
        Some(Kind::EventBridge)
    } else {
        None
    }
}

/// Recognises an envelope in the fields of the object `text`.
pub(crate) fn open<'a>(text: &'a str, fields: &'a Map<String, Value>) -> Opened<'a> {
    let malformed =
        |detail: String| Opened::Refused(reject(RejectReason::MalformedEnvelope, detail));
    match kind_of(fields) {
        None => Opened::Bare,
        Some(Kind::Sns) => {
            let ty = string(fields, "Type").unwrap_or_default();
            if ty != "Notification" {
                // SubscriptionConfirmation, UnsubscribeConfirmation: SNS's own
                // messages (a cross-account subscription sends one to confirm).
                return Opened::Refused(reject(
                    RejectReason::UnrecognizedEvent,
                    format!(
                        "an SNS {} message, not a notification; confirm or remove the subscription in SNS",
                        truncate(ty, 40)
                    ),
                ));
            }
            let Some(topic) = string(fields, "TopicArn") else {
                return malformed("SNS notification whose TopicArn is not a string".into());
            };
            match field(fields, "Message") {
                Some(Value::String(m)) => Opened::Inner {
                    kind: Kind::Sns,
                    inner: Cow::Borrowed(m.as_str()),
                    attributes: vec![("TopicArn", topic.to_string())],
                    fields: envelope_fields(fields, true),
                },
                None => malformed("SNS notification without a Message".into()),
                Some(_) => malformed("SNS notification whose Message is not a string".into()),
            }
        }
        Some(Kind::EventBridge) => {
            if !matches!(field(fields, "detail"), Some(Value::Object(_))) {
                return malformed(match field(fields, "detail") {
                    None => "EventBridge event without a detail".into(),
                    Some(_) => "EventBridge event whose detail is not an object".into(),
                });
            }
            #[derive(Deserialize)]
            struct Detail<'a> {
                #[serde(borrow)]
                detail: &'a RawValue,
            }
            // The object parsed once already: this cannot fail, but never panic.
            let Ok(d) = serde_json::from_str::<Detail<'a>>(text) else {
                return malformed("EventBridge event whose detail cannot be read".into());
            };
            let mut attributes = Vec::new();
            for (from, to) in [("source", "EventSource"), ("detail-type", "DetailType")] {
                if let Some(v) = string(fields, from) {
                    attributes.push((to, v.to_string()));
                }
            }
            Opened::Inner {
                kind: Kind::EventBridge,
                inner: Cow::Borrowed(d.detail.get()),
                attributes,
                fields: envelope_fields(fields, false),
            }
        }
    }
}

/// The string fields of an SNS (or EventBridge) envelope that ENVELOPE
/// sources name.
fn envelope_fields(fields: &Map<String, Value>, sns: bool) -> EnvelopeFields {
    EnvelopeField::ALL
        .iter()
        .filter(|(_, f)| f.is_sns() == sns)
        .filter_map(|(_, f)| string(fields, f.wire_name()).map(|v| (*f, v.to_string())))
        .collect()
}

/// A reject found inside an envelope, saying where.
pub fn inside(kind: Kind, r: Reject) -> Reject {
    let what = match kind {
        Kind::Sns => "in the SNS notification's Message",
        Kind::EventBridge => "in the EventBridge event's detail",
    };
    Reject {
        reason: r.reason,
        detail: format!("{what}: {}", r.detail),
    }
}

/// A hint for a body that was an envelope but was not unwrapped.
pub(crate) fn not_unwrapped_hint(fields: &Map<String, Value>) -> Option<String> {
    kind_of(fields).map(|k| {
        format!(
            " (an {k}: {} is none)",
            crate::settings::ENVELOPES.name_str()
        )
    })
}

// Tested through the engine: batch/tests.rs (envelopes_are_unwrapped_...).
