//! Messages to rows: one message is opened, routed, and made into its
//! pipeline's rows (all of them, or a refusal with the reason), with the
//! (mask, raw value) pairs for the vault and the ledger key that makes it
//! load once. Pure: the extension turns the rows into SQL arrays and runs
//! the statements; PostgreSQL's input functions have the last word on
//! values the pipeline cannot check itself (timestamps, enums, domains),
//! and a row they refuse becomes a dead letter there.

use std::ops::Range;

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::event::{self, Event};
use super::plan::{ArrayKind, Idempotency, Plan, Planned, TypeKind};
use super::spec::{JsonType, Mask, MessageField, Source, Transform};
use super::transform;
use crate::budget::MAX_MESSAGE_ROWS_BYTES;
use crate::contract::RejectReason;
use crate::envelope::{EnvelopeAttributes, Envelopes};
use crate::mask::Masker;
use crate::message::Message;
use crate::reject::{json_kind, quoted, reject, truncate, Reject};
use crate::time::{iso_utc, utc_date};

/// What every message of a drain is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_pii_bytes: usize,
    pub envelopes: Envelopes,
}

/// One value of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    Null,
    Text(String),
    Int(i64),
}

/// A message made into its pipeline's rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub rows: Vec<Vec<Cell>>,
    /// (mask, raw value) pairs of its recoverable masked values.
    pub pairs: Vec<(String, String)>,
}

impl Loaded {
    /// What its rows and pairs take in memory (their cells and strings).
    pub fn bytes(&self) -> usize {
        let rows: usize = self.rows.iter().map(|r| row_bytes(r)).sum();
        let pairs: usize = self
            .pairs
            .iter()
            .map(|(a, b)| a.len() + b.len() + 2 * std::mem::size_of::<String>())
            .sum();
        rows + pairs
    }
}

/// Why a row was not made.
enum RowError {
    /// The message's rows reached MAX_MESSAGE_ROWS_BYTES.
    TooMuch,
    Refused(Reject),
}

impl From<Reject> for RowError {
    fn from(r: Reject) -> RowError {
        RowError::Refused(r)
    }
}

impl RowError {
    fn or_too_many_rows(self, rows: usize) -> Reject {
        match self {
            RowError::TooMuch => too_many_rows(rows),
            RowError::Refused(r) => r,
        }
    }
}

/// Adds `n` bytes to what a message's rows take; refuses past the limit.
fn spend(bytes: &mut usize, n: usize) -> Result<(), RowError> {
    *bytes = bytes.saturating_add(n + std::mem::size_of::<Cell>());
    if *bytes > MAX_MESSAGE_ROWS_BYTES {
        return Err(RowError::TooMuch);
    }
    Ok(())
}

/// What one row takes in memory: its cells and their strings.
fn row_bytes(row: &[Cell]) -> usize {
    row.iter()
        .map(|c| {
            std::mem::size_of::<Cell>()
                + match c {
                    Cell::Text(s) => s.len(),
                    _ => 0,
                }
        })
        .sum::<usize>()
        + std::mem::size_of::<Vec<Cell>>()
}

/// The refusal of a message whose rows would take more than
/// [`MAX_MESSAGE_ROWS_BYTES`]: a sender could otherwise make one body of
/// 1 MiB into gigabytes (a million `Records` elements, or `EVENT` in each
/// of many rows).
fn too_many_rows(rows: usize) -> Reject {
    reject(
        RejectReason::TooLarge,
        format!(
            "its rows take more than {} MiB (after {rows} rows); a message's rows may take at most that",
            MAX_MESSAGE_ROWS_BYTES >> 20
        ),
    )
}

/// Longest idempotency key kept as is in the ledger; longer ones are hashed
/// (a btree entry holds at most about 2,700 bytes).
const MAX_KEY_BYTES: usize = 512;

/// The ledger key of a message for `plan`, or why the key is missing (the
/// message id is then its key, and the message a dead letter).
pub fn ledger_key(plan: &Plan, m: &Message, event: Option<&Event>) -> Result<String, Reject> {
    // Scoped by the pipeline's catalog id (never reused), and a hashed key
    // by a kind of its own, so no value can spell another's key.
    let scoped = |kind: &str, value: &str| {
        if value.len() > MAX_KEY_BYTES {
            format!(
                "{kind}h:{}:{}",
                plan.pipeline_id,
                hex::encode(Sha256::digest(value))
            )
        } else {
            format!("{kind}:{}:{value}", plan.pipeline_id)
        }
    };
    match &plan.idempotency {
        Idempotency::MessageId => Ok(m.message_id.clone()),
        Idempotency::Body => Ok(format!(
            "body:{}:{}",
            plan.pipeline_id,
            hex::encode(Sha256::digest(m.body.as_bytes()))
        )),
        Idempotency::Envelope(f) => {
            let value = event.and_then(|e| {
                e.fields
                    .iter()
                    .find(|(k, _)| k == f)
                    .map(|(_, v)| v.as_str())
            });
            match value {
                Some(v) if !v.is_empty() => Ok(scoped("envelope", v)),
                _ => Err(reject(
                    RejectReason::MissingField,
                    format!("the idempotency key ENVELOPE {} is missing", f.name()),
                )),
            }
        }
        Idempotency::Path(p) => {
            let missing = || {
                reject(
                    RejectReason::MissingField,
                    format!("the idempotency key {p} is missing"),
                )
            };
            let Some(event) = event else {
                return Err(missing());
            };
            match p.select_one(&event.value) {
                Ok(Some(Value::Null)) | Ok(None) => Err(missing()),
                Ok(Some(Value::String(s))) if s.is_empty() => Err(missing()),
                Ok(Some(Value::String(s))) => Ok(scoped("key", s)),
                Ok(Some(v)) => Ok(scoped("key", &v.to_string())),
                Err(n) => Err(reject(
                    RejectReason::WrongType,
                    format!("the idempotency key {p} selects {n} values"),
                )),
            }
        }
    }
}

/// What a source yields before conversion.
enum Raw<'a> {
    Missing,
    Json(&'a Value),
    Text(String),
    Int(i64),
}

/// Makes one message into `plan`'s rows. `event` is the opened body (the
/// caller opens it once, for routing and the key too); `now_ms` dates a
/// message SQS sent no timestamp for.
pub fn build(
    plan: &Plan,
    m: &Message,
    event: &Event,
    masker: &Masker,
    limits: &Limits,
    now_ms: i64,
) -> Result<Loaded, Reject> {
    let mut out = Loaded {
        rows: Vec::new(),
        pairs: Vec::new(),
    };
    // what the rows take so far (refused past MAX_MESSAGE_ROWS_BYTES)
    let mut bytes = 0usize;
    let Some(rows_path) = &plan.rows else {
        let row = build_row(
            plan,
            m,
            event,
            &event.value,
            masker,
            limits,
            now_ms,
            &mut out.pairs,
            &mut bytes,
        )
        .map_err(|r| r.or_too_many_rows(1))?;
        out.rows.push(row);
        return Ok(out);
    };
    let elements = rows_path.select(&event.value);
    if elements.is_empty() {
        return Err(reject(
            RejectReason::NoRows,
            format!("{rows_path} selects no element of the event"),
        ));
    }
    for (i, element) in elements.into_iter().enumerate() {
        let row = build_row(
            plan,
            m,
            event,
            element,
            masker,
            limits,
            now_ms,
            &mut out.pairs,
            &mut bytes,
        )
        .map_err(|r| match r {
            RowError::TooMuch => too_many_rows(i + 1),
            RowError::Refused(r) => reject(
                r.reason,
                format!("element {i} of {rows_path}: {}", r.detail),
            ),
        })?;
        out.rows.push(row);
    }
    Ok(out)
}

/// Opens a message's body (see [`event::open`]).
pub fn open(m: &Message, limits: &Limits) -> Result<Event, Reject> {
    event::open(&m.body, limits.max_body_bytes, limits.envelopes)
}

/// The reason an event with none of `plan`'s fields gets, with the detail
/// 0.4.0 gave the login event's.
fn unrecognized(plan: &Plan, keys: Vec<&str>, event: &Event) -> Reject {
    let mut names = keys;
    names.sort_unstable();
    let shown: Vec<String> = names.iter().take(10).map(|n| truncate(n, 40)).collect();
    let more = if names.len() > 10 {
        format!(" and {} more", names.len() - 10)
    } else {
        String::new()
    };
    let mut detail = if names.is_empty() {
        "the object has no fields".to_string()
    } else {
        format!(
            "no {} fields; has: {}{more}",
            plan.pipeline,
            shown.join(", ")
        )
    };
    if let Some(h) = &event.hint {
        detail.push_str(h);
    }
    reject(plan.unrecognized, detail)
}

#[allow(clippy::too_many_arguments)]
fn build_row(
    plan: &Plan,
    m: &Message,
    event: &Event,
    row: &Value,
    masker: &Masker,
    limits: &Limits,
    now_ms: i64,
    pairs: &mut Vec<(String, String)>,
    bytes: &mut usize,
) -> Result<Vec<Cell>, RowError> {
    if !plan.fields.is_empty() {
        match row {
            Value::Object(o) => {
                if !plan.fields.iter().any(|f| o.contains_key(f)) {
                    let keys: Vec<&str> = o.keys().map(String::as_str).collect();
                    return Err(unrecognized(plan, keys, event).into());
                }
            }
            other => {
                return Err(reject(
                    RejectReason::NotObject,
                    format!("the row is a JSON {}, not an object", json_kind(other)),
                )
                .into())
            }
        }
    }
    // 1. what each source yields, checked for its JSON type (0.4.0's order:
    //    every field's type first, then what is required, then lengths)
    let mut raws: Vec<Raw<'_>> = Vec::with_capacity(plan.columns.len());
    for c in &plan.columns {
        let raw = extract(c, m, event, row, now_ms)?;
        if let Raw::Text(s) = &raw {
            spend(bytes, s.len())?;
        }
        if let (Some(want), Raw::Json(v)) = (c.spec.json_type, &raw) {
            if !v.is_null() && !json_type_is(v, want) {
                return Err(RowError::Refused(reject(
                    RejectReason::WrongType,
                    format!(
                        "{} must be {} or null, got {}",
                        c.field,
                        want.name(),
                        json_kind(v)
                    ),
                )));
            }
        }
        if let Raw::Json(Value::String(s)) = &raw {
            if s.contains('\0') {
                return Err(nul(&c.field).into());
            }
        }
        raws.push(raw);
    }
    // 2. required values and defaults
    for (c, raw) in plan.columns.iter().zip(raws.iter_mut()) {
        let absent = match raw {
            Raw::Missing | Raw::Json(Value::Null) => true,
            Raw::Json(Value::String(s)) => s.is_empty() && c.spec.required,
            Raw::Text(s) => s.is_empty() && c.spec.required,
            _ => false,
        };
        if absent {
            if c.spec.required {
                return Err(reject(
                    RejectReason::MissingField,
                    format!("{} is required", c.field),
                )
                .into());
            }
            if let Some(d) = &c.spec.default {
                *raw = Raw::Text(d.clone());
            }
        }
    }
    // 3. conversion: masks, transforms, lengths
    let mut cells = Vec::with_capacity(plan.columns.len());
    // (every cell counts, NULLs too, and each vaulted raw value with its mask)
    spend(bytes, std::mem::size_of::<Vec<Cell>>())?;
    for (c, raw) in plan.columns.iter().zip(raws) {
        let vaulted = pairs.len();
        let cell = convert(c, raw, masker, limits, pairs)?;
        let pair_bytes: usize = pairs[vaulted..]
            .iter()
            .map(|(m, v)| m.len() + v.len() + 2 * std::mem::size_of::<String>())
            .sum();
        let text = match &cell {
            Cell::Text(s) => s.len(),
            _ => 0,
        };
        spend(bytes, text + pair_bytes)?;
        cells.push(cell);
    }
    Ok(cells)
}

fn nul(field: &str) -> Reject {
    reject(
        RejectReason::NulCharacter,
        format!("{field} contains a NUL character (\\u0000), which PostgreSQL text cannot store"),
    )
}

fn json_type_is(v: &Value, t: JsonType) -> bool {
    matches!(
        (t, v),
        (JsonType::String, Value::String(_))
            | (JsonType::Number, Value::Number(_))
            | (JsonType::Boolean, Value::Bool(_))
            | (JsonType::Object, Value::Object(_))
            | (JsonType::Array, Value::Array(_))
    )
}

fn extract<'a>(
    c: &Planned,
    m: &Message,
    event: &'a Event,
    row: &'a Value,
    now_ms: i64,
) -> Result<Raw<'a>, Reject> {
    let select = |p: &super::path::JsonPath, root: &'a Value| match p.select_one(root) {
        Ok(Some(v)) => Ok(Raw::Json(v)),
        Ok(None) => Ok(Raw::Missing),
        Err(n) => Err(reject(
            RejectReason::WrongType,
            format!("{} selects {n} values; a column takes one", c.field),
        )),
    };
    let text = |s: Option<&str>| s.map_or(Raw::Missing, |s| Raw::Text(s.to_string()));
    Ok(match &c.spec.source {
        Source::Path(p) => select(p, row)?,
        Source::EventPath(p) => select(p, &event.value)?,
        Source::Event => Raw::Json(&event.value),
        Source::Constant(v) => Raw::Text(v.clone()),
        Source::Attribute(name) => text(
            m.message_attributes
                .iter()
                .find(|a| a.name == *name)
                .and_then(|a| a.string_value.as_deref().or(a.binary_value.as_deref())),
        ),
        Source::Envelope(f) => text(
            event
                .fields
                .iter()
                .find(|(k, _)| k == f)
                .map(|(_, v)| v.as_str()),
        ),
        Source::Message(f) => match f {
            MessageField::MessageId => Raw::Text(m.message_id.clone()),
            MessageField::SentAt => m
                .sent_timestamp_ms
                .map_or(Raw::Missing, |ms| Raw::Text(iso_utc(ms))),
            MessageField::SentDate => Raw::Text(utc_date(m.sent_timestamp_ms.unwrap_or(now_ms))),
            MessageField::ReceiveCount => {
                m.receive_count.map_or(Raw::Missing, |n| Raw::Int(n.into()))
            }
            MessageField::GroupId => text(m.attribute("MessageGroupId")),
            MessageField::SequenceNumber => text(m.attribute("SequenceNumber")),
            MessageField::DeduplicationId => text(m.attribute("MessageDeduplicationId")),
            MessageField::SenderId => text(m.attribute("SenderId")),
            MessageField::Attributes => Raw::Text(attributes_json(m, &event.attributes)),
            MessageField::Body => Raw::Text(m.body.replace('\0', "\u{FFFD}")),
        },
    })
}

/// A JSON value as the text a column gets: a string as it is, anything
/// else as JSON.
fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A JSON array as a PostgreSQL array literal (`{"a","b"}`, `{1,2}`).
fn array_literal(v: &Value) -> String {
    fn element(v: &Value, out: &mut String) {
        match v {
            Value::Null => out.push_str("NULL"),
            Value::Array(a) => {
                out.push('{');
                for (i, e) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    element(e, out);
                }
                out.push('}');
            }
            other => {
                out.push('"');
                for ch in as_text(other).chars() {
                    if ch == '"' || ch == '\\' {
                        out.push('\\');
                    }
                    out.push(ch);
                }
                out.push('"');
            }
        }
    }
    let mut out = String::new();
    element(v, &mut out);
    out
}

fn convert(
    c: &Planned,
    raw: Raw<'_>,
    masker: &Masker,
    limits: &Limits,
    pairs: &mut Vec<(String, String)>,
) -> Result<Cell, Reject> {
    let field = || c.field.as_str();
    let value: Option<String> = match raw {
        Raw::Missing | Raw::Json(Value::Null) => return Ok(Cell::Null),
        Raw::Int(n) if c.array == ArrayKind::Int8 => return Ok(Cell::Int(n)),
        Raw::Int(n) => Some(n.to_string()),
        Raw::Text(s) => Some(s),
        Raw::Json(v) => {
            if let Some(Transform::Version) = c.spec.transform {
                // the version of a number is refused by its STRING check, if
                // any; otherwise it is its text
                Some(as_text(v))
            } else {
                match c.target.kind {
                    TypeKind::Json | TypeKind::Jsonb => Some(v.to_string()),
                    TypeKind::Array if v.is_array() => Some(array_literal(v)),
                    _ => Some(as_text(v)),
                }
            }
        }
    };
    let Some(value) = value else {
        return Ok(Cell::Null);
    };
    if let Some(mask) = c.spec.mask {
        if value.len() > limits.max_pii_bytes {
            return Err(reject(
                RejectReason::TooLong,
                format!(
                    "{} has {} bytes; values that are masked may have {} ({})",
                    field(),
                    value.len(),
                    limits.max_pii_bytes,
                    crate::settings::MAX_PII_BYTES.name_str()
                ),
            ));
        }
        let masked = masker.mask(value.as_bytes());
        if mask == Mask::Recoverable {
            pairs.push((masked.clone(), value));
        }
        return Ok(Cell::Text(masked));
    }
    let value = match c.spec.transform {
        None => value,
        Some(Transform::Version) => match c.target.kind {
            TypeKind::Int { min, max } => {
                let n = transform::encode_version(&value).map_err(|why| {
                    reject(RejectReason::BadAppVersion, why.describe(field(), &value))
                })?;
                if n < min || n > max {
                    return Err(reject(
                        RejectReason::BadAppVersion,
                        format!(
                            "{} {} encodes to {n}, outside the column's range {min}..{max}",
                            field(),
                            quoted(&value)
                        ),
                    ));
                }
                return Ok(Cell::Int(n));
            }
            _ => value,
        },
        Some(t) => transform::apply(t, &value).map_err(|why| {
            reject(
                RejectReason::BadValue,
                format!("column {} ({}): {why}", c.target.name, c.spec.source),
            )
        })?,
    };
    if value.contains('\0') {
        return Err(nul(field()));
    }
    if let TypeKind::Text {
        max_chars: Some(max),
    } = c.target.kind
    {
        let n = value.chars().count();
        if n > max {
            return Err(reject(
                RejectReason::TooLong,
                format!("{} has {n} characters; the column allows {max}", field()),
            ));
        }
    }
    Ok(Cell::Text(value))
}

/// The `MESSAGE attributes` value of a message: its kept system attributes
/// (`MessageGroupId`, `SequenceNumber`, `MessageDeduplicationId`,
/// `SenderId`), `ApproximateReceiveCount`, what its envelopes said
/// (`TopicArn`; `EventSource`, `DetailType`), and `MessageAttributes` in
/// the SQS API's shape (`{"name": {"DataType", "StringValue" |
/// "BinaryValue"}}`). Every value a string, as SQS sends them.
pub fn attributes_json(m: &Message, envelope: &EnvelopeAttributes) -> String {
    use serde_json::Map;
    // PostgreSQL's jsonb cannot hold \u0000 (SQS does not send it either).
    let text = |s: &str| Value::String(s.replace('\0', "\u{FFFD}"));
    let mut out = Map::new();
    for (name, value) in &m.attributes {
        out.insert((*name).to_string(), text(value));
    }
    if let Some(n) = m.receive_count {
        out.insert("ApproximateReceiveCount".into(), text(&n.to_string()));
    }
    for (name, value) in envelope {
        out.insert((*name).to_string(), text(value));
    }
    if !m.message_attributes.is_empty() {
        let mut attrs = Map::new();
        for a in &m.message_attributes {
            let mut v = Map::new();
            v.insert("DataType".into(), text(&a.data_type));
            if let Some(s) = &a.string_value {
                v.insert("StringValue".into(), text(s));
            }
            if let Some(b) = &a.binary_value {
                v.insert("BinaryValue".into(), text(b));
            }
            attrs.insert(a.name.replace('\0', "\u{FFFD}"), Value::Object(v));
        }
        out.insert("MessageAttributes".into(), Value::Object(attrs));
    }
    Value::Object(out).to_string()
}

/// A batch's rows for one target, as the INSERT's column arrays, with the
/// rows of each message (a message's rows go in, or are refused, together).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    pub text: Vec<Vec<Option<String>>>,
    pub int8: Vec<Vec<Option<i64>>>,
    /// For each planned column: (is int8, index into `text` or `int8`).
    pub slots: Vec<(bool, usize)>,
    /// Each message's rows (its index in the batch, the rows' range).
    pub messages: Vec<(usize, Range<usize>)>,
}

impl Columns {
    pub fn new(plan: &Plan) -> Columns {
        let mut out = Columns {
            text: Vec::new(),
            int8: Vec::new(),
            slots: Vec::new(),
            messages: Vec::new(),
        };
        for c in &plan.columns {
            match c.array {
                ArrayKind::Text => {
                    out.slots.push((false, out.text.len()));
                    out.text.push(Vec::new());
                }
                ArrayKind::Int8 => {
                    out.slots.push((true, out.int8.len()));
                    out.int8.push(Vec::new());
                }
            }
        }
        out
    }

    pub fn rows(&self) -> usize {
        self.messages.last().map_or(0, |(_, r)| r.end)
    }

    /// Appends message `index`'s rows.
    pub fn push(&mut self, index: usize, rows: Vec<Vec<Cell>>) {
        let start = self.rows();
        let n = rows.len();
        for row in rows {
            for (&(is_int, slot), cell) in self.slots.iter().zip(row) {
                match (is_int, cell) {
                    (true, Cell::Int(v)) => self.int8[slot].push(Some(v)),
                    (true, _) => self.int8[slot].push(None),
                    (false, Cell::Text(s)) => self.text[slot].push(Some(s)),
                    (false, Cell::Int(v)) => self.text[slot].push(Some(v.to_string())),
                    (false, Cell::Null) => self.text[slot].push(None),
                }
            }
        }
        self.messages.push((index, start..start + n));
    }
}
