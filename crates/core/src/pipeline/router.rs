//! Routers: one queue, many event types. A router reads one value of each
//! message (its discriminator: a path into the event, a message attribute,
//! an envelope field...) and sends the message to the pipeline that value
//! names; a message no route matches is a dead letter `no_route`, unless
//! the router has an `otherwise` pipeline.

use serde_json::Value;

use super::event::Event;
use super::spec::{MessageField, Source};
use crate::contract::RejectReason;
use crate::message::Message;
use crate::reject::{quoted, reject, Reject};
use crate::time::{iso_utc, utc_date};

/// A router, with its routes resolved to indexes of the pipelines it uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Router {
    pub name: String,
    pub discriminator: Source,
    /// (value, pipeline index), in the order given.
    pub routes: Vec<(String, usize)>,
    pub otherwise: Option<usize>,
}

/// The discriminator's value for a message, as text (None: it has none).
pub fn value_of(source: &Source, m: &Message, event: &Event) -> Option<String> {
    let json = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    };
    match source {
        Source::Path(p) | Source::EventPath(p) => {
            p.select_one(&event.value).ok().flatten().and_then(json)
        }
        Source::Event => Some(event.value.to_string()),
        Source::Constant(c) => Some(c.clone()),
        Source::Attribute(name) => m
            .message_attributes
            .iter()
            .find(|a| a.name == *name)
            .and_then(|a| a.string_value.clone().or_else(|| a.binary_value.clone())),
        Source::Envelope(f) => event
            .fields
            .iter()
            .find(|(k, _)| k == f)
            .map(|(_, v)| v.clone()),
        Source::Message(f) => match f {
            MessageField::MessageId => Some(m.message_id.clone()),
            MessageField::SentAt => m.sent_timestamp_ms.map(iso_utc),
            MessageField::SentDate => m.sent_timestamp_ms.map(utc_date),
            MessageField::ReceiveCount => m.receive_count.map(|n| n.to_string()),
            MessageField::GroupId => m.attribute("MessageGroupId").map(str::to_string),
            MessageField::SequenceNumber => m.attribute("SequenceNumber").map(str::to_string),
            MessageField::DeduplicationId => {
                m.attribute("MessageDeduplicationId").map(str::to_string)
            }
            MessageField::SenderId => m.attribute("SenderId").map(str::to_string),
            MessageField::Attributes | MessageField::Body => None,
        },
    }
}

impl Router {
    /// The pipeline (index) a message goes to, or why none.
    pub fn route(&self, m: &Message, event: &Event) -> Result<usize, Reject> {
        let value = value_of(&self.discriminator, m, event);
        if let Some(v) = &value {
            if let Some((_, i)) = self.routes.iter().find(|(r, _)| r == v) {
                return Ok(*i);
            }
        }
        self.otherwise.ok_or_else(|| {
            reject(
                RejectReason::NoRoute,
                match value {
                    Some(v) => format!(
                        "router {} has no route for {} = {}",
                        self.name,
                        self.discriminator,
                        quoted(&v)
                    ),
                    None => format!(
                        "router {}: the message has no {}",
                        self.name, self.discriminator
                    ),
                },
            )
        })
    }
}
