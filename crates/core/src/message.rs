//! One received SQS message, as the drain and the pipelines see it (the SQS
//! client in `fetch_etl_sqs` makes them from replies).

/// System attributes kept with a message ([`Message::attributes`]): asked
/// for when a pipeline reads them, and the first two always on a FIFO queue
/// (the drain keeps each group's order).
pub const KEPT_ATTRIBUTES: [&str; 4] = [
    "MessageGroupId",
    "SequenceNumber",
    "MessageDeduplicationId",
    "SenderId",
];

/// One received message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    pub message_id: String,
    pub receipt_handle: String,
    pub body: String,
    /// `SentTimestamp` attribute: milliseconds since the Unix epoch.
    pub sent_timestamp_ms: Option<i64>,
    /// `ApproximateReceiveCount` attribute.
    pub receive_count: Option<i32>,
    /// The system attributes of [`KEPT_ATTRIBUTES`] SQS sent, in that
    /// order (`MessageGroupId`, `SequenceNumber`, ...).
    pub attributes: Vec<(&'static str, String)>,
    /// The message attributes (asked for only when the target keeps them).
    pub message_attributes: Vec<MessageAttribute>,
}

impl Message {
    /// A system attribute SQS sent.
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The FIFO message group (None on a standard queue).
    pub fn group_id(&self) -> Option<&str> {
        self.attribute("MessageGroupId")
    }
}

/// One message attribute, as SQS sent it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MessageAttribute {
    pub name: String,
    /// `String`, `Number`, `Binary`, or one of those with a `.custom` suffix.
    pub data_type: String,
    pub string_value: Option<String>,
    /// Base64, as on the wire.
    pub binary_value: Option<String>,
}

/// The attributes a dead letter keeps so that a replay sees the message as
/// the drain did (a router by `ATTRIBUTE`, a column `FROM MESSAGE group_id`):
/// a JSON object `{"attributes": {name: value}, "message_attributes":
/// [{"name", "data_type", "string_value"?, "binary_value"?}]}`, or None when
/// the message has neither.
pub fn attributes_json(m: &Message) -> Option<String> {
    use serde_json::{Map, Value};
    if m.attributes.is_empty() && m.message_attributes.is_empty() {
        return None;
    }
    let system: Map<String, Value> = m
        .attributes
        .iter()
        .map(|(n, v)| ((*n).to_string(), Value::String(v.clone())))
        .collect();
    let message: Vec<Value> = m
        .message_attributes
        .iter()
        .map(|a| {
            let mut o = Map::new();
            o.insert("name".into(), Value::String(a.name.clone()));
            o.insert("data_type".into(), Value::String(a.data_type.clone()));
            if let Some(s) = &a.string_value {
                o.insert("string_value".into(), Value::String(s.clone()));
            }
            if let Some(b) = &a.binary_value {
                o.insert("binary_value".into(), Value::String(b.clone()));
            }
            Value::Object(o)
        })
        .collect();
    let mut out = Map::new();
    out.insert("attributes".into(), Value::Object(system));
    out.insert("message_attributes".into(), Value::Array(message));
    Some(Value::Object(out).to_string())
}

/// Puts back on `m` what [`attributes_json`] kept. System attributes other
/// than [`KEPT_ATTRIBUTES`] and entries of the wrong shape are ignored (the
/// column is the extension's own, but a superuser may have edited it).
pub fn restore_attributes(m: &mut Message, json: &str) {
    use serde_json::Value;
    let Ok(Value::Object(o)) = serde_json::from_str::<Value>(json) else {
        return;
    };
    if let Some(Value::Object(system)) = o.get("attributes") {
        m.attributes = KEPT_ATTRIBUTES
            .iter()
            .filter_map(|&name| match system.get(name) {
                Some(Value::String(v)) => Some((name, v.clone())),
                _ => None,
            })
            .collect();
    }
    if let Some(Value::Array(list)) = o.get("message_attributes") {
        let text = |a: &serde_json::Map<String, Value>, k: &str| match a.get(k) {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        m.message_attributes = list
            .iter()
            .filter_map(|a| match a {
                Value::Object(a) => Some(MessageAttribute {
                    name: text(a, "name")?,
                    data_type: text(a, "data_type")?,
                    string_value: text(a, "string_value"),
                    binary_value: text(a, "binary_value"),
                }),
                _ => None,
            })
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_a_dead_letter_keeps_come_back_as_they_were_sent() {
        let m = Message {
            message_id: "m".into(),
            attributes: vec![("MessageGroupId", "g1".into()), ("SenderId", "AIDA".into())],
            message_attributes: vec![
                MessageAttribute {
                    name: "kind".into(),
                    data_type: "String".into(),
                    string_value: Some("A\"\n".into()),
                    binary_value: None,
                },
                MessageAttribute {
                    name: "blob".into(),
                    data_type: "Binary".into(),
                    string_value: None,
                    binary_value: Some("AAE=".into()),
                },
            ],
            ..Message::default()
        };
        let json = attributes_json(&m).unwrap();
        let mut back = Message {
            message_id: "m".into(),
            ..Message::default()
        };
        restore_attributes(&mut back, &json);
        assert_eq!(back, m);
    }

    #[test]
    fn attributes_a_message_without_any_keeps_none() {
        assert_eq!(attributes_json(&Message::default()), None);
    }

    #[test]
    fn attributes_unknown_names_and_wrong_shapes_are_ignored() {
        let mut m = Message::default();
        restore_attributes(
            &mut m,
            r#"{"attributes": {"MessageGroupId": 7, "Other": "x", "SenderId": "s"},
                "message_attributes": [{"name": "a"}, 3, {"name": "b", "data_type": "Number", "string_value": "1"}]}"#,
        );
        assert_eq!(m.attributes, vec![("SenderId", "s".to_string())]);
        assert_eq!(m.message_attributes.len(), 1);
        assert_eq!(m.message_attributes[0].name, "b");
        restore_attributes(&mut m, "not json");
        assert_eq!(m.message_attributes.len(), 1);
    }
}
