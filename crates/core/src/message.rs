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
