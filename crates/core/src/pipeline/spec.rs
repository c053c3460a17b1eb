//! What a pipeline's column list says, parsed: for each column, where its
//! value comes from, how it is checked, converted and masked. Nothing here
//! knows the target table; `plan.rs` holds these against its columns.

use std::fmt;

use super::path::JsonPath;

/// Where a column's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A path into the row (the event, or one element of the rows path).
    Path(JsonPath),
    /// A path into the whole event, whatever the rows path.
    EventPath(JsonPath),
    /// The whole event, as JSON.
    Event,
    /// A field of the SQS message.
    Message(MessageField),
    /// A message attribute's value (`StringValue`, or `BinaryValue` in base64).
    Attribute(String),
    /// A field of the envelope the event came in (SNS, EventBridge).
    Envelope(EnvelopeField),
    /// A constant.
    Constant(String),
}

/// The fields of an SQS message a column can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageField {
    MessageId,
    /// `SentTimestamp`, as an ISO 8601 UTC timestamp (NULL if SQS sent none).
    SentAt,
    /// The UTC date of `SentTimestamp`, or of the time the message was
    /// stored when SQS sent none.
    SentDate,
    ReceiveCount,
    GroupId,
    SequenceNumber,
    DeduplicationId,
    SenderId,
    /// The kept system attributes, the receive count, the envelopes' fields
    /// and the message attributes, as one JSON object.
    Attributes,
    /// The body as received.
    Body,
}

impl MessageField {
    pub const ALL: [(&'static str, MessageField); 10] = [
        ("message_id", MessageField::MessageId),
        ("sent_at", MessageField::SentAt),
        ("sent_date", MessageField::SentDate),
        ("receive_count", MessageField::ReceiveCount),
        ("group_id", MessageField::GroupId),
        ("sequence_number", MessageField::SequenceNumber),
        ("deduplication_id", MessageField::DeduplicationId),
        ("sender_id", MessageField::SenderId),
        ("attributes", MessageField::Attributes),
        ("body", MessageField::Body),
    ];

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, f)| *f == self)
            .map(|(n, _)| *n)
            .expect("every field is listed")
    }
}

/// The fields of an envelope a column can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvelopeField {
    /// SNS: the topic, the subject, the notification's id and time.
    TopicArn,
    Subject,
    SnsMessageId,
    SnsTimestamp,
    /// EventBridge: `source`, `detail-type`, `time`, `id`, `account`, `region`.
    Source,
    DetailType,
    Time,
    EventId,
    Account,
    Region,
}

impl EnvelopeField {
    pub const ALL: [(&'static str, EnvelopeField); 10] = [
        ("topic_arn", EnvelopeField::TopicArn),
        ("subject", EnvelopeField::Subject),
        ("sns_message_id", EnvelopeField::SnsMessageId),
        ("sns_timestamp", EnvelopeField::SnsTimestamp),
        ("source", EnvelopeField::Source),
        ("detail_type", EnvelopeField::DetailType),
        ("time", EnvelopeField::Time),
        ("event_id", EnvelopeField::EventId),
        ("account", EnvelopeField::Account),
        ("region", EnvelopeField::Region),
    ];

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, f)| *f == self)
            .map(|(n, _)| *n)
            .expect("every field is listed")
    }

    /// The key the envelope carries it under (SNS's and EventBridge's own
    /// spelling).
    pub fn wire_name(self) -> &'static str {
        match self {
            EnvelopeField::TopicArn => "TopicArn",
            EnvelopeField::Subject => "Subject",
            EnvelopeField::SnsMessageId => "MessageId",
            EnvelopeField::SnsTimestamp => "Timestamp",
            EnvelopeField::Source => "source",
            EnvelopeField::DetailType => "detail-type",
            EnvelopeField::Time => "time",
            EnvelopeField::EventId => "id",
            EnvelopeField::Account => "account",
            EnvelopeField::Region => "region",
        }
    }

    /// Whether SNS (else EventBridge) carries it.
    pub fn is_sns(self) -> bool {
        matches!(
            self,
            EnvelopeField::TopicArn
                | EnvelopeField::Subject
                | EnvelopeField::SnsMessageId
                | EnvelopeField::SnsTimestamp
        )
    }
}

/// The JSON type a path's value must have (or be null).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonType {
    String,
    Number,
    Boolean,
    Object,
    Array,
}

impl JsonType {
    /// Its keyword in a column list.
    pub fn keyword(self) -> &'static str {
        match self {
            JsonType::String => "STRING",
            JsonType::Number => "NUMBER",
            JsonType::Boolean => "BOOLEAN",
            JsonType::Object => "OBJECT",
            JsonType::Array => "ARRAY",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            JsonType::String => "a string",
            JsonType::Number => "a number",
            JsonType::Boolean => "a boolean",
            JsonType::Object => "an object",
            JsonType::Array => "an array",
        }
    }
}

/// A built-in transform (`USING name`). No SQL: a pipeline never runs code
/// its creator chose (docs/pipelines.md, "Who runs what").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// The exercise's app version encoding: into an integer column,
    /// `major*10000 + minor*100 + patch`; into a text column, as is.
    Version,
    /// Seconds (or milliseconds) since the Unix epoch, to a timestamp.
    EpochSeconds,
    EpochMillis,
    Lower,
    Upper,
    Trim,
}

impl Transform {
    pub const ALL: [(&'static str, Transform); 6] = [
        ("version", Transform::Version),
        ("epoch_seconds", Transform::EpochSeconds),
        ("epoch_millis", Transform::EpochMillis),
        ("lower", Transform::Lower),
        ("upper", Transform::Upper),
        ("trim", Transform::Trim),
    ];

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, t)| *t == self)
            .map(|(n, _)| *n)
            .expect("every transform is listed")
    }
}

/// A keyed mask (`mask_pii`'s HMAC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mask {
    /// The raw value goes to the PII vault: `unmask` recovers it.
    Recoverable,
    /// Only the mask is kept.
    Unrecoverable,
}

/// One column of a pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnSpec {
    /// The target column's name (as PostgreSQL folds it).
    pub column: String,
    /// A type written after the name (checked against the column's).
    pub declared_type: Option<String>,
    pub source: Source,
    pub json_type: Option<JsonType>,
    /// Refused (`missing_field`) when missing, null or an empty string.
    pub required: bool,
    /// Used when the value is missing or null.
    pub default: Option<String>,
    pub transform: Option<Transform>,
    pub mask: Option<Mask>,
    /// Filled only if the target has the column.
    pub if_exists: bool,
}

impl ColumnSpec {
    pub fn new(column: &str, source: Source) -> ColumnSpec {
        ColumnSpec {
            column: column.to_string(),
            declared_type: None,
            source,
            json_type: None,
            required: false,
            default: None,
            transform: None,
            mask: None,
            if_exists: false,
        }
    }

    /// How the value is named in a dead letter's reason: the field of a
    /// path (`ip`, `s3.object.key`), else the column.
    pub fn field_name(&self) -> String {
        match &self.source {
            Source::Path(p) | Source::EventPath(p) => p.field_name(),
            _ => self.column.clone(),
        }
    }
}

/// `s` as a SQL string literal (`'it''s'`).
pub(crate) fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A column name as the column list writes it: bare when it reads back
/// the same (lower case, ASCII), else in double quotes.
pub(crate) fn column_name(name: &str) -> String {
    let bare = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'$');
    if bare {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// A column as the column list writes it (the form the catalog stores and
/// `fetch_etl.pipelines` shows): `name [type] source [options]`.
impl fmt::Display for ColumnSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&column_name(&self.column))?;
        if let Some(t) = &self.declared_type {
            write!(f, " {t}")?;
        }
        write!(f, " {}", self.source)?;
        if let Some(t) = self.json_type {
            write!(f, " {}", t.keyword())?;
        }
        if self.required {
            f.write_str(" REQUIRED")?;
        }
        if let Some(d) = &self.default {
            write!(f, " DEFAULT {}", literal(d))?;
        }
        if let Some(t) = self.transform {
            write!(f, " USING {}", t.name())?;
        }
        match self.mask {
            Some(Mask::Recoverable) => f.write_str(" MASKED")?,
            Some(Mask::Unrecoverable) => f.write_str(" MASKED UNRECOVERABLE")?,
            None => {}
        }
        if self.if_exists {
            f.write_str(" IF EXISTS")?;
        }
        Ok(())
    }
}

impl Source {
    /// Whether its value is one SQS sends only when a drain asks for every
    /// kept attribute (message attributes, the deduplication and sender ids).
    pub fn needs_message_attributes(&self) -> bool {
        matches!(
            self,
            Source::Attribute(_)
                | Source::Message(
                    MessageField::Attributes
                        | MessageField::DeduplicationId
                        | MessageField::SenderId
                )
        )
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Path(p) => write!(f, "PATH {}", literal(p.as_str())),
            Source::EventPath(p) => write!(f, "EVENT PATH {}", literal(p.as_str())),
            Source::Event => f.write_str("EVENT"),
            Source::Message(m) => write!(f, "MESSAGE {}", m.name()),
            Source::Attribute(a) => write!(f, "ATTRIBUTE {}", literal(a)),
            Source::Envelope(e) => write!(f, "ENVELOPE {}", e.name()),
            Source::Constant(c) => write!(f, "CONSTANT {}", literal(c)),
        }
    }
}
