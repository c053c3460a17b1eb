//! SQS on the wire: request bodies and response parsing for both protocols.
//!
//! JSON protocol: `POST /`, `Content-Type: application/x-amz-json-1.0`,
//! `X-Amz-Target: AmazonSQS.<Action>`, JSON body and reply.
//! Query protocol: `POST <queue path>`, form-encoded `Action=<Action>&...`,
//! XML reply. Both carry the queue URL as `QueueUrl`.

use std::collections::HashMap;

use quick_xml::events::Event;
use serde::Deserialize;

use super::{BatchOutcome, Message, MessageAttribute, Protocol, QueueRef, SqsError};
use fetch_etl_core::budget;

pub const QUERY_API_VERSION: &str = "2012-11-05";
/// System attributes every drain asks for.
pub const WANTED_ATTRIBUTES: [&str; 2] = ["SentTimestamp", "ApproximateReceiveCount"];
pub use fetch_etl_core::message::KEPT_ATTRIBUTES;

/// What one ReceiveMessage call asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReceiveParams<'a> {
    /// 1..=10 messages.
    pub max: u32,
    pub wait_seconds: u32,
    pub visibility_timeout: Option<u32>,
    /// FIFO queues: the same for every attempt of one call, so that SQS
    /// answers a retry with the messages the lost reply carried.
    pub attempt_id: Option<&'a str>,
    /// The kept system attributes and every message attribute.
    pub metadata: bool,
    /// A FIFO queue: its group id and sequence number.
    pub fifo: bool,
}

impl ReceiveParams<'_> {
    /// The system attribute names to ask for.
    pub fn attribute_names(&self) -> Vec<&'static str> {
        let kept = if self.metadata {
            &KEPT_ATTRIBUTES[..]
        } else if self.fifo {
            &KEPT_ATTRIBUTES[..2]
        } else {
            &[]
        };
        WANTED_ATTRIBUTES.iter().chain(kept).copied().collect()
    }
}

/// A request ready to be signed and sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireRequest {
    /// Path on the endpoint (`/` for JSON, the queue's path for Query).
    pub path: String,
    pub content_type: &'static str,
    /// `X-Amz-Target` (JSON protocol only).
    pub target: Option<String>,
    pub body: Vec<u8>,
}

fn json_request(action: &str, body: serde_json::Value) -> WireRequest {
    WireRequest {
        path: "/".to_string(),
        content_type: "application/x-amz-json-1.0",
        target: Some(format!("AmazonSQS.{action}")),
        body: serde_json::to_vec(&body).expect("JSON values serialize"),
    }
}

fn query_request(queue: &QueueRef, action: &str, params: &[(String, String)]) -> WireRequest {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("Action", action);
    form.append_pair("Version", QUERY_API_VERSION);
    form.append_pair("QueueUrl", &queue.queue_url);
    for (k, v) in params {
        form.append_pair(k, v);
    }
    WireRequest {
        path: queue.path.clone(),
        content_type: "application/x-www-form-urlencoded; charset=utf-8",
        target: None,
        body: form.finish().into_bytes(),
    }
}

/// ReceiveMessage, as `p` says.
pub fn receive_request(protocol: Protocol, queue: &QueueRef, p: &ReceiveParams<'_>) -> WireRequest {
    let names = p.attribute_names();
    match protocol {
        Protocol::Json => {
            let mut body = serde_json::json!({
                "QueueUrl": queue.queue_url,
                "MaxNumberOfMessages": p.max,
                "WaitTimeSeconds": p.wait_seconds,
                // AttributeNames is the older name of MessageSystemAttributeNames; send both.
                "AttributeNames": names,
                "MessageSystemAttributeNames": names,
            });
            if let Some(v) = p.visibility_timeout {
                body["VisibilityTimeout"] = v.into();
            }
            if let Some(id) = p.attempt_id {
                body["ReceiveRequestAttemptId"] = id.into();
            }
            if p.metadata {
                body["MessageAttributeNames"] = serde_json::json!(["All"]);
            }
            json_request("ReceiveMessage", body)
        }
        Protocol::Query => {
            let mut params = vec![
                ("MaxNumberOfMessages".to_string(), p.max.to_string()),
                ("WaitTimeSeconds".to_string(), p.wait_seconds.to_string()),
            ];
            for (i, a) in names.iter().enumerate() {
                params.push((format!("AttributeName.{}", i + 1), a.to_string()));
            }
            if let Some(v) = p.visibility_timeout {
                params.push(("VisibilityTimeout".to_string(), v.to_string()));
            }
            if let Some(id) = p.attempt_id {
                params.push(("ReceiveRequestAttemptId".to_string(), id.to_string()));
            }
            if p.metadata {
                params.push(("MessageAttributeName.1".to_string(), "All".to_string()));
            }
            query_request(queue, "ReceiveMessage", &params)
        }
    }
}

/// A batch call on up to 10 received messages, by receipt handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchAction {
    /// DeleteMessageBatch.
    Delete,
    /// ChangeMessageVisibilityBatch: each message becomes visible again in
    /// this many seconds (0: at once), counted from when SQS gets the call.
    ChangeVisibility { seconds: u32 },
}

impl BatchAction {
    /// The action's name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            BatchAction::Delete => "DeleteMessageBatch",
            BatchAction::ChangeVisibility { .. } => "ChangeMessageVisibilityBatch",
        }
    }

    /// Query protocol: the request entries' prefix, and the reply's result
    /// element and success entry.
    fn query_names(self) -> (&'static str, &'static str, &'static str) {
        match self {
            BatchAction::Delete => (
                "DeleteMessageBatchRequestEntry",
                "DeleteMessageBatchResult",
                "DeleteMessageBatchResultEntry",
            ),
            BatchAction::ChangeVisibility { .. } => (
                "ChangeMessageVisibilityBatchRequestEntry",
                "ChangeMessageVisibilityBatchResult",
                "ChangeMessageVisibilityBatchResultEntry",
            ),
        }
    }

    fn seconds(self) -> Option<u32> {
        match self {
            BatchAction::Delete => None,
            BatchAction::ChangeVisibility { seconds } => Some(seconds),
        }
    }
}

/// `action` on up to 10 `(entry id, receipt handle)` pairs.
pub fn batch_request(
    protocol: Protocol,
    queue: &QueueRef,
    action: BatchAction,
    entries: &[(String, String)],
) -> WireRequest {
    let seconds = action.seconds();
    match protocol {
        Protocol::Json => {
            let entries: Vec<_> = entries
                .iter()
                .map(|(id, handle)| {
                    let mut e = serde_json::json!({"Id": id, "ReceiptHandle": handle});
                    if let Some(s) = seconds {
                        e["VisibilityTimeout"] = s.into();
                    }
                    e
                })
                .collect();
            json_request(
                action.name(),
                serde_json::json!({"QueueUrl": queue.queue_url, "Entries": entries}),
            )
        }
        Protocol::Query => {
            let (prefix, _, _) = action.query_names();
            let mut params = Vec::with_capacity(entries.len() * 3);
            for (i, (id, handle)) in entries.iter().enumerate() {
                let n = i + 1;
                params.push((format!("{prefix}.{n}.Id"), id.clone()));
                params.push((format!("{prefix}.{n}.ReceiptHandle"), handle.clone()));
                if let Some(s) = seconds {
                    params.push((format!("{prefix}.{n}.VisibilityTimeout"), s.to_string()));
                }
            }
            query_request(queue, action.name(), &params)
        }
    }
}

/// GetQueueAttributes for the named attributes.
pub fn get_attributes_request(protocol: Protocol, queue: &QueueRef, names: &[&str]) -> WireRequest {
    match protocol {
        Protocol::Json => json_request(
            "GetQueueAttributes",
            serde_json::json!({"QueueUrl": queue.queue_url, "AttributeNames": names}),
        ),
        Protocol::Query => {
            let params: Vec<_> = names
                .iter()
                .enumerate()
                .map(|(i, n)| (format!("AttributeName.{}", i + 1), n.to_string()))
                .collect();
            query_request(queue, "GetQueueAttributes", &params)
        }
    }
}

// ---------------------------------------------------------------- responses

#[derive(Deserialize)]
struct JsonReceive {
    #[serde(rename = "Messages", default)]
    messages: Vec<JsonMessage>,
}

#[derive(Deserialize)]
struct JsonMessage {
    #[serde(rename = "MessageId")]
    message_id: String,
    #[serde(rename = "ReceiptHandle")]
    receipt_handle: String,
    #[serde(rename = "Body", default)]
    body: String,
    #[serde(rename = "Attributes", default)]
    attributes: HashMap<String, String>,
    #[serde(rename = "MessageAttributes", default)]
    message_attributes: HashMap<String, JsonMessageAttribute>,
}

#[derive(Deserialize)]
struct JsonMessageAttribute {
    #[serde(rename = "DataType", default)]
    data_type: String,
    #[serde(rename = "StringValue")]
    string_value: Option<String>,
    #[serde(rename = "BinaryValue")]
    binary_value: Option<String>,
}

#[derive(Deserialize)]
struct JsonBatch {
    #[serde(rename = "Successful", default)]
    successful: Vec<JsonBatchOk>,
    #[serde(rename = "Failed", default)]
    failed: Vec<JsonBatchError>,
}

#[derive(Deserialize)]
struct JsonBatchOk {
    #[serde(rename = "Id", default)]
    id: String,
}

#[derive(Deserialize)]
struct JsonBatchError {
    #[serde(rename = "Id", default)]
    id: String,
    #[serde(rename = "Code", default)]
    code: String,
}

#[derive(Deserialize)]
struct JsonAttributes {
    #[serde(rename = "Attributes", default)]
    attributes: HashMap<String, String>,
}

/// A reply we cannot read. The text names what and where, never what the
/// reply said: an error message is no way to read an endpoint's answers.
fn malformed(what: &str, problem: impl std::fmt::Display) -> SqsError {
    SqsError::Malformed(format!("{what}: {problem}"))
}

/// A serde_json error without the input it may quote ("invalid type:
/// string \"...\""): its category and position only.
fn json_problem(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Io => "unreadable JSON",
        Category::Syntax => "invalid JSON",
        Category::Data => "JSON of the wrong shape",
        Category::Eof => "JSON that ends early",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

/// 9999-12-31T23:59:59.999Z: a SentTimestamp beyond (or before 1970) is not
/// one SQS sends; it is treated as missing, so that no date computed from it
/// can fail in PostgreSQL.
const MAX_TIMESTAMP_MS: i64 = 253_402_300_799_999;

fn message_from(
    message_id: String,
    receipt_handle: String,
    body: String,
    attrs: &HashMap<String, String>,
    mut message_attributes: Vec<MessageAttribute>,
) -> Message {
    // In name order: the reply's order is a map's (JSON) or the server's.
    message_attributes.sort_by(|a, b| a.name.cmp(&b.name));
    Message {
        message_id,
        receipt_handle,
        body,
        sent_timestamp_ms: attrs
            .get("SentTimestamp")
            .and_then(|v| v.trim().parse().ok())
            .filter(|ms| (0..=MAX_TIMESTAMP_MS).contains(ms)),
        receive_count: attrs
            .get("ApproximateReceiveCount")
            .and_then(|v| v.trim().parse().ok()),
        attributes: KEPT_ATTRIBUTES
            .iter()
            .filter_map(|&n| Some((n, attrs.get(n)?.clone())))
            .collect(),
        message_attributes,
    }
}

/// Messages of a successful ReceiveMessage reply. Receipt handles and ids
/// longer than SQS makes them are refused (they are kept until COMMIT).
pub fn parse_receive(protocol: Protocol, body: &[u8]) -> Result<Vec<Message>, SqsError> {
    let msgs = parse_receive_unchecked(protocol, body)?;
    for m in &msgs {
        if m.receipt_handle.len() > budget::MAX_RECEIPT_HANDLE_BYTES
            || m.message_id.len() > budget::MAX_MESSAGE_ID_BYTES
        {
            return Err(malformed(
                "ReceiveMessage",
                "a message id or receipt handle longer than SQS makes them",
            ));
        }
    }
    Ok(msgs)
}

fn parse_receive_unchecked(protocol: Protocol, body: &[u8]) -> Result<Vec<Message>, SqsError> {
    match protocol {
        Protocol::Json => {
            let r: JsonReceive = serde_json::from_slice(body)
                .map_err(|e| malformed("ReceiveMessage", json_problem(&e)))?;
            Ok(r.messages
                .into_iter()
                .map(|m| {
                    let attributes = m
                        .message_attributes
                        .into_iter()
                        .map(|(name, a)| MessageAttribute {
                            name,
                            data_type: a.data_type,
                            string_value: a.string_value,
                            binary_value: a.binary_value,
                        })
                        .collect();
                    message_from(
                        m.message_id,
                        m.receipt_handle,
                        m.body,
                        &m.attributes,
                        attributes,
                    )
                })
                .collect())
        }
        Protocol::Query => {
            let root = XmlElement::parse(body)?;
            let result = root
                .child("ReceiveMessageResult")
                .ok_or_else(|| malformed("ReceiveMessage", "no ReceiveMessageResult"))?;
            result
                .children_named("Message")
                .map(|m| {
                    let field = |name: &str| {
                        m.child(name).map(|c| c.text.clone()).ok_or_else(|| {
                            malformed("ReceiveMessage", format!("message without {name}"))
                        })
                    };
                    let attrs: HashMap<String, String> = m
                        .children_named("Attribute")
                        .filter_map(|a| {
                            Some((
                                a.child("Name")?.text.clone(),
                                a.child("Value")?.text.clone(),
                            ))
                        })
                        .collect();
                    let message_attributes = m
                        .children_named("MessageAttribute")
                        .filter_map(|a| {
                            let value = a.child("Value")?;
                            let text = |n: &str| value.child(n).map(|c| c.text.clone());
                            Some(MessageAttribute {
                                name: a.child("Name")?.text.clone(),
                                data_type: text("DataType").unwrap_or_default(),
                                string_value: text("StringValue"),
                                binary_value: text("BinaryValue"),
                            })
                        })
                        .collect();
                    let body = m.child("Body").map(|b| b.text.clone()).unwrap_or_default();
                    Ok(message_from(
                        field("MessageId")?,
                        field("ReceiptHandle")?,
                        body,
                        &attrs,
                        message_attributes,
                    ))
                })
                .collect()
        }
    }
}

/// Outcome of a successful reply to a batch call.
pub fn parse_batch(
    action: BatchAction,
    protocol: Protocol,
    body: &[u8],
) -> Result<BatchOutcome, SqsError> {
    let what = action.name();
    match protocol {
        Protocol::Json => {
            let r: JsonBatch =
                serde_json::from_slice(body).map_err(|e| malformed(what, json_problem(&e)))?;
            Ok(BatchOutcome {
                succeeded: r.successful.into_iter().map(|s| s.id).collect(),
                failed: r.failed.into_iter().map(|f| (f.id, f.code)).collect(),
            })
        }
        Protocol::Query => {
            let (_, result_name, ok_name) = action.query_names();
            let root = XmlElement::parse(body)?;
            let result = root
                .child(result_name)
                .ok_or_else(|| malformed(what, format!("no {result_name}")))?;
            Ok(BatchOutcome {
                succeeded: result
                    .children_named(ok_name)
                    .map(|e| e.child("Id").map(|c| c.text.clone()).unwrap_or_default())
                    .collect(),
                failed: result
                    .children_named("BatchResultErrorEntry")
                    .map(|e| {
                        let text = |n: &str| e.child(n).map(|c| c.text.clone()).unwrap_or_default();
                        (text("Id"), text("Code"))
                    })
                    .collect(),
            })
        }
    }
}

/// Attributes of a successful GetQueueAttributes reply.
pub fn parse_attributes(
    protocol: Protocol,
    body: &[u8],
) -> Result<HashMap<String, String>, SqsError> {
    match protocol {
        Protocol::Json => {
            let r: JsonAttributes = serde_json::from_slice(body)
                .map_err(|e| malformed("GetQueueAttributes", json_problem(&e)))?;
            Ok(r.attributes)
        }
        Protocol::Query => {
            let root = XmlElement::parse(body)?;
            let result = root
                .child("GetQueueAttributesResult")
                .ok_or_else(|| malformed("GetQueueAttributes", "no GetQueueAttributesResult"))?;
            Ok(result
                .children_named("Attribute")
                .filter_map(|a| {
                    Some((
                        a.child("Name")?.text.clone(),
                        a.child("Value")?.text.clone(),
                    ))
                })
                .collect())
        }
    }
}

/// An error reply, whichever protocol it came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    pub code: String,
    pub message: String,
    /// True when the reply was a JSON-protocol error (`{"__type": ...}`):
    /// proof that the server speaks the JSON protocol.
    pub json_protocol: bool,
}

/// The longest error code and message shown.
const MAX_CODE: usize = 64;
const MAX_MESSAGE: usize = 256;

/// An AWS error code: only `[A-Za-z0-9._:-]`, at most 64 characters.
fn error_code(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()
        && s.len() <= MAX_CODE
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')))
    .then(|| s.to_string())
}

/// An AWS error message: control characters made spaces, at most 256 characters.
fn error_message(s: &str) -> String {
    let clean: String = s
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if clean.chars().count() > MAX_MESSAGE {
        format!("{}...", clean.chars().take(MAX_MESSAGE).collect::<String>())
    } else {
        clean
    }
}

/// Reads an error reply: JSON (`__type`, `message`, or the `x-amzn-query-error`
/// header) or Query XML (`<ErrorResponse><Error><Code>`). Only a well-formed
/// AWS error gives a code and a message, both sanitised; anything else (an
/// HTML page from a proxy, a body from some other service) gives `HTTP<status>`
/// and no text at all.
pub fn parse_error(status: u16, query_error_header: Option<&str>, body: &[u8]) -> ErrorReply {
    let header_code = query_error_header
        .and_then(|h| h.split(';').next())
        .and_then(error_code);
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(t) = map.get("__type").and_then(|v| v.as_str()) {
            if let Some(code) = header_code
                .clone()
                .or_else(|| error_code(t.rsplit('#').next().unwrap_or(t)))
            {
                let message = ["message", "Message"]
                    .iter()
                    .find_map(|k| map.get(*k).and_then(|v| v.as_str()))
                    .map(error_message)
                    .unwrap_or_default();
                return ErrorReply {
                    code,
                    message,
                    json_protocol: true,
                };
            }
        }
    }
    if let Ok(root) = XmlElement::parse(body) {
        let err = if root.name == "Error" {
            Some(&root)
        } else {
            root.child("Error")
                .or_else(|| root.child("Errors").and_then(|e| e.child("Error")))
        };
        if let Some(err) = err {
            let text = |n: &str| err.child(n).map(|c| c.text.clone()).unwrap_or_default();
            if let Some(code) = error_code(&text("Code")) {
                return ErrorReply {
                    code,
                    message: error_message(&text("Message")),
                    json_protocol: false,
                };
            }
        }
    }
    ErrorReply {
        code: header_code.unwrap_or_else(|| format!("HTTP{status}")),
        message: String::new(),
        json_protocol: false,
    }
}

const AUTH_CODES: &[&str] = &[
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
    "UnrecognizedClient",
    "MissingAuthenticationToken",
    "MissingAuthenticationTokenException",
    "IncompleteSignature",
    "IncompleteSignatureException",
    "InvalidSignatureException",
    "InvalidSecurity",
    "ExpiredToken",
    "ExpiredTokenException",
    "AuthFailure",
    "InvalidAccessKeyId",
];
const ACCESS_DENIED_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "KMS.AccessDeniedException",
];
const NO_QUEUE_CODES: &[&str] = &[
    "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDoesNotExist",
    "NonExistentQueue",
];
const THROTTLING_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "RequestThrottled",
    "AWS.SimpleQueueService.RequestThrottled",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "KmsThrottled",
    "KMS.ThrottlingException",
    "SlowDown",
];

pub fn is_throttling_code(code: &str) -> bool {
    THROTTLING_CODES.contains(&code)
}

/// The client error for an error reply.
pub fn classify(status: u16, reply: &ErrorReply) -> SqsError {
    let code = reply.code.clone();
    let message = reply.message.clone();
    let c = code.as_str();
    if AUTH_CODES.contains(&c) {
        SqsError::Auth { code, message }
    } else if ACCESS_DENIED_CODES.contains(&c) {
        SqsError::AccessDenied { code, message }
    } else if NO_QUEUE_CODES.contains(&c) {
        SqsError::NoSuchQueue { code, message }
    } else {
        SqsError::Service {
            status,
            code,
            message,
        }
    }
}

// ---------------------------------------------------------------- XML tree

/// Deepest XML nesting accepted.
pub const MAX_XML_DEPTH: usize = 32;
/// Most elements accepted in one reply: 10 messages with generous attributes
/// need a few hundred.
pub const MAX_XML_ELEMENTS: usize = 10_000;

/// A minimal XML element tree: names without namespace prefixes, text
/// unescaped and kept exactly (message bodies must not be trimmed).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct XmlElement {
    pub name: String,
    pub text: String,
    pub children: Vec<XmlElement>,
}

impl XmlElement {
    /// Parses a document into its root element: at most [`MAX_XML_DEPTH`]
    /// levels and [`MAX_XML_ELEMENTS`] elements.
    pub fn parse(xml: &[u8]) -> Result<XmlElement, SqsError> {
        let mut reader = quick_xml::Reader::from_reader(xml);
        reader.config_mut().trim_text(false);
        // Where, not what: quick-xml's messages quote the document.
        let bad = |reader: &quick_xml::Reader<&[u8]>| {
            SqsError::Malformed(format!(
                "malformed XML near byte {}",
                reader.buffer_position()
            ))
        };
        let mut stack: Vec<XmlElement> = Vec::new();
        let mut buf = Vec::new();
        let mut elements = 0usize;
        loop {
            let ev = match reader.read_event_into(&mut buf) {
                Ok(ev) => ev,
                Err(_) => return Err(bad(&reader)),
            };
            if matches!(ev, Event::Start(_) | Event::Empty(_)) {
                elements += 1;
                if elements > MAX_XML_ELEMENTS {
                    return Err(SqsError::Malformed(format!(
                        "XML reply has more than {MAX_XML_ELEMENTS} elements"
                    )));
                }
            }
            match ev {
                Event::Start(s) => {
                    if stack.len() >= MAX_XML_DEPTH {
                        return Err(SqsError::Malformed("XML nested too deeply".into()));
                    }
                    stack.push(XmlElement {
                        name: local_name(s.name().as_ref()),
                        ..Default::default()
                    });
                }
                Event::Empty(s) => {
                    let el = XmlElement {
                        name: local_name(s.name().as_ref()),
                        ..Default::default()
                    };
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(el),
                        None => return Ok(el),
                    }
                }
                Event::End(_) => {
                    let el = stack.pop().ok_or_else(|| bad(&reader))?;
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(el),
                        None => return Ok(el),
                    }
                }
                Event::Text(t) => {
                    if let Some(cur) = stack.last_mut() {
                        let raw = std::str::from_utf8(t.as_ref()).map_err(|_| bad(&reader))?;
                        let s = quick_xml::escape::unescape(raw).map_err(|_| bad(&reader))?;
                        cur.text.push_str(&s);
                    }
                }
                Event::GeneralRef(r) => {
                    if let Some(cur) = stack.last_mut() {
                        let name = std::str::from_utf8(r.as_ref()).map_err(|_| bad(&reader))?;
                        let entity = format!("&{name};");
                        let s = quick_xml::escape::unescape(&entity).map_err(|_| bad(&reader))?;
                        cur.text.push_str(&s);
                    }
                }
                Event::CData(c) => {
                    if let Some(cur) = stack.last_mut() {
                        let text = std::str::from_utf8(c.as_ref()).map_err(|_| bad(&reader))?;
                        cur.text.push_str(text);
                    }
                }
                Event::Eof => return Err(SqsError::Malformed("XML document ended early".into())),
                _ => {}
            }
            buf.clear();
        }
    }

    pub fn child(&self, name: &str) -> Option<&XmlElement> {
        self.children.iter().find(|c| c.name == name)
    }

    pub fn children_named<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = &'a XmlElement> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }
}

fn local_name(qname: &[u8]) -> String {
    let s = String::from_utf8_lossy(qname);
    s.rsplit(':').next().unwrap_or(&s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::RetryClass;

    fn queue() -> QueueRef {
        QueueRef::parse("http://localhost:4566/000000000000/login-queue", None).unwrap()
    }

    #[test]
    fn json_receive_request() {
        let r = receive_request(
            Protocol::Json,
            &queue(),
            &ReceiveParams {
                max: 10,
                visibility_timeout: Some(30),
                ..ReceiveParams::default()
            },
        );
        assert_eq!(r.path, "/");
        assert_eq!(r.target.as_deref(), Some("AmazonSQS.ReceiveMessage"));
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            v["QueueUrl"],
            "http://localhost:4566/000000000000/login-queue"
        );
        assert_eq!(v["MaxNumberOfMessages"], 10);
        assert_eq!(v["VisibilityTimeout"], 30);
        assert_eq!(v["MessageSystemAttributeNames"][0], "SentTimestamp");
    }

    #[test]
    fn query_receive_request() {
        let r = receive_request(
            Protocol::Query,
            &queue(),
            &ReceiveParams {
                max: 7,
                wait_seconds: 20,
                ..ReceiveParams::default()
            },
        );
        assert_eq!(r.path, "/000000000000/login-queue");
        assert!(r.target.is_none());
        let pairs: HashMap<String, String> = form_urlencoded::parse(&r.body).into_owned().collect();
        assert_eq!(pairs["Action"], "ReceiveMessage");
        assert_eq!(pairs["Version"], "2012-11-05");
        assert_eq!(pairs["MaxNumberOfMessages"], "7");
        assert_eq!(pairs["WaitTimeSeconds"], "20");
        assert_eq!(pairs["AttributeName.1"], "SentTimestamp");
        assert!(!pairs.contains_key("VisibilityTimeout"));
    }

    #[test]
    fn delete_batch_requests() {
        let entries = vec![
            ("0".to_string(), "h+0/=&".to_string()),
            ("1".to_string(), "h1".to_string()),
        ];
        let v: serde_json::Value = serde_json::from_slice(
            &batch_request(Protocol::Json, &queue(), BatchAction::Delete, &entries).body,
        )
        .unwrap();
        assert_eq!(v["Entries"][0]["ReceiptHandle"], "h+0/=&");
        let q = batch_request(Protocol::Query, &queue(), BatchAction::Delete, &entries);
        let pairs: HashMap<String, String> = form_urlencoded::parse(&q.body).into_owned().collect();
        assert_eq!(pairs["Action"], "DeleteMessageBatch");
        assert_eq!(
            pairs["DeleteMessageBatchRequestEntry.1.ReceiptHandle"],
            "h+0/=&"
        );
        assert_eq!(pairs["DeleteMessageBatchRequestEntry.2.Id"], "1");
    }

    #[test]
    fn json_receive_reply() {
        let body = br#"{"Messages":[{"MessageId":"m1","ReceiptHandle":"r1","MD5OfBody":"x",
            "Body":"{\"user_id\": \"u\"}","Attributes":{"SentTimestamp":"1670000000123","ApproximateReceiveCount":"2"}}]}"#;
        let m = parse_receive(Protocol::Json, body).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].body, r#"{"user_id": "u"}"#);
        assert_eq!(m[0].sent_timestamp_ms, Some(1_670_000_000_123));
        assert_eq!(m[0].receive_count, Some(2));
        assert!(
            parse_receive(Protocol::Json, b"{}").unwrap().is_empty(),
            "moto's empty reply"
        );
        assert!(matches!(
            parse_receive(Protocol::Json, b"<xml/>"),
            Err(SqsError::Malformed(_))
        ));
    }

    #[test]
    fn metadata_is_asked_for_and_read_in_both_protocols() {
        let p = ReceiveParams {
            max: 10,
            metadata: true,
            attempt_id: Some("abc"),
            ..ReceiveParams::default()
        };
        let j: serde_json::Value =
            serde_json::from_slice(&receive_request(Protocol::Json, &queue(), &p).body).unwrap();
        assert_eq!(j["MessageAttributeNames"], serde_json::json!(["All"]));
        assert_eq!(j["ReceiveRequestAttemptId"], "abc");
        assert_eq!(
            j["MessageSystemAttributeNames"].as_array().unwrap().len(),
            6
        );
        let q = receive_request(Protocol::Query, &queue(), &p);
        let pairs: HashMap<String, String> = form_urlencoded::parse(&q.body).into_owned().collect();
        assert_eq!(pairs["MessageAttributeName.1"], "All");
        assert_eq!(pairs["AttributeName.6"], "SenderId");
        assert_eq!(pairs["ReceiveRequestAttemptId"], "abc");

        let body = br#"{"Messages":[{"MessageId":"m1","ReceiptHandle":"r1","Body":"{}",
            "Attributes":{"SentTimestamp":"1670000000123","MessageGroupId":"g1","SequenceNumber":"18849","SenderId":"AIDAEXAMPLE","Other":"x"},
            "MessageAttributes":{"z":{"DataType":"Number","StringValue":"7"},"a":{"DataType":"Binary","BinaryValue":"AAE="}}}]}"#;
        let m = &parse_receive(Protocol::Json, body).unwrap()[0];
        assert_eq!(
            m.attributes,
            vec![
                ("MessageGroupId", "g1".to_string()),
                ("SequenceNumber", "18849".to_string()),
                ("SenderId", "AIDAEXAMPLE".to_string())
            ]
        );
        assert_eq!(m.group_id(), Some("g1"));
        let names: Vec<&str> = m
            .message_attributes
            .iter()
            .map(|a| a.name.as_str())
            .collect();
        assert_eq!(names, ["a", "z"]);
        assert_eq!(
            m.message_attributes[0].binary_value.as_deref(),
            Some("AAE=")
        );
        assert_eq!(m.message_attributes[1].string_value.as_deref(), Some("7"));

        let xml = br#"<ReceiveMessageResponse><ReceiveMessageResult><Message>
            <MessageId>m</MessageId><ReceiptHandle>r</ReceiptHandle><Body>{}</Body>
            <Attribute><Name>MessageGroupId</Name><Value>g2</Value></Attribute>
            <MessageAttribute><Name>tenant</Name><Value><StringValue>acme</StringValue><DataType>String</DataType></Value></MessageAttribute>
            </Message></ReceiveMessageResult></ReceiveMessageResponse>"#;
        let m = &parse_receive(Protocol::Query, xml).unwrap()[0];
        assert_eq!(m.group_id(), Some("g2"));
        assert_eq!(m.message_attributes.len(), 1);
        assert_eq!(m.message_attributes[0].name, "tenant");
        assert_eq!(m.message_attributes[0].data_type, "String");
        assert_eq!(
            m.message_attributes[0].string_value.as_deref(),
            Some("acme")
        );
    }

    #[test]
    fn poison_an_impossible_sent_timestamp_is_treated_as_missing() {
        for (ts, want) in [
            ("1670000000123", Some(1_670_000_000_123)),
            ("0", Some(0)),
            ("253402300799999", Some(253_402_300_799_999)),
            ("253402300800000", None),
            ("99999999999999999", None),
            ("-5", None),
            ("soon", None),
        ] {
            let body = format!(
                r#"{{"Messages":[{{"MessageId":"m","ReceiptHandle":"r","Body":"{{}}","Attributes":{{"SentTimestamp":"{ts}"}}}}]}}"#
            );
            let m = parse_receive(Protocol::Json, body.as_bytes()).unwrap();
            assert_eq!(m[0].sent_timestamp_ms, want, "{ts}");
        }
    }

    #[test]
    fn query_receive_reply_keeps_bodies_exact() {
        let body = br#"<?xml version="1.0"?>
<ReceiveMessageResponse xmlns="http://queue.amazonaws.com/doc/2012-11-05/">
  <ReceiveMessageResult>
    <Message>
      <MessageId>5fea7756-0ea4-451a-a703-a558b933e274</MessageId>
      <ReceiptHandle>MbZj6wDWli+JvwwJaBV+3dcjk2YW2vA3+STFFljT</ReceiptHandle>
      <MD5OfBody>fafb00f5732ab283681e124bf8747ed1</MD5OfBody>
      <Body>  {&quot;ip&quot;: &quot;1.2.3.4&quot;, &quot;a&quot;: &quot;&lt;&amp;&gt;&#xD;&quot;}
</Body>
      <Attribute><Name>SentTimestamp</Name><Value>1238099229000</Value></Attribute>
      <Attribute><Name>ApproximateReceiveCount</Name><Value>5</Value></Attribute>
    </Message>
    <Message><MessageId>b</MessageId><ReceiptHandle>rb</ReceiptHandle><Body><![CDATA[<raw> & text]]></Body></Message>
    <Message><MessageId>c</MessageId><ReceiptHandle>rc</ReceiptHandle><Body/></Message>
  </ReceiveMessageResult>
  <ResponseMetadata><RequestId>b6633655-283d-45b4-aee4-4e84e0ae6afa</RequestId></ResponseMetadata>
</ReceiveMessageResponse>"#;
        let m = parse_receive(Protocol::Query, body).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].message_id, "5fea7756-0ea4-451a-a703-a558b933e274");
        assert_eq!(m[0].body, "  {\"ip\": \"1.2.3.4\", \"a\": \"<&>\r\"}\n");
        assert_eq!(m[0].sent_timestamp_ms, Some(1_238_099_229_000));
        assert_eq!(m[0].receive_count, Some(5));
        assert_eq!(m[1].body, "<raw> & text");
        assert_eq!(m[1].sent_timestamp_ms, None);
        assert_eq!(m[2].body, "");
        let empty = br#"<ReceiveMessageResponse><ReceiveMessageResult/><ResponseMetadata/></ReceiveMessageResponse>"#;
        assert!(parse_receive(Protocol::Query, empty).unwrap().is_empty());
    }

    #[test]
    fn delete_batch_replies() {
        let j = br#"{"Successful":[{"Id":"0"}],"Failed":[{"Id":"1","SenderFault":true,"Code":"ReceiptHandleIsInvalid","Message":"x"}]}"#;
        let o = parse_batch(BatchAction::Delete, Protocol::Json, j).unwrap();
        assert_eq!(o.succeeded, vec!["0".to_string()]);
        assert_eq!(
            o.failed,
            vec![("1".to_string(), "ReceiptHandleIsInvalid".to_string())]
        );
        let x = br#"<DeleteMessageBatchResponse><DeleteMessageBatchResult>
            <DeleteMessageBatchResultEntry><Id>0</Id></DeleteMessageBatchResultEntry>
            <DeleteMessageBatchResultEntry><Id>2</Id></DeleteMessageBatchResultEntry>
            <BatchResultErrorEntry><Id>1</Id><Code>ReceiptHandleIsInvalid</Code><Message>m</Message><SenderFault>true</SenderFault></BatchResultErrorEntry>
            </DeleteMessageBatchResult></DeleteMessageBatchResponse>"#;
        let o = parse_batch(BatchAction::Delete, Protocol::Query, x).unwrap();
        assert_eq!(o.succeeded, vec!["0".to_string(), "2".to_string()]);
        assert_eq!(o.failed.len(), 1);
    }

    #[test]
    fn visibility_batch_requests_and_replies_in_both_protocols() {
        let entries = vec![("7".to_string(), "h+7/=&".to_string())];
        let action = BatchAction::ChangeVisibility { seconds: 45 };
        let j = batch_request(Protocol::Json, &queue(), action, &entries);
        assert_eq!(
            j.target.as_deref(),
            Some("AmazonSQS.ChangeMessageVisibilityBatch")
        );
        let v: serde_json::Value = serde_json::from_slice(&j.body).unwrap();
        assert_eq!(v["Entries"][0]["Id"], "7");
        assert_eq!(v["Entries"][0]["ReceiptHandle"], "h+7/=&");
        assert_eq!(v["Entries"][0]["VisibilityTimeout"], 45);
        // deletes carry no timeout
        let d = batch_request(Protocol::Json, &queue(), BatchAction::Delete, &entries);
        let v: serde_json::Value = serde_json::from_slice(&d.body).unwrap();
        assert!(v["Entries"][0].get("VisibilityTimeout").is_none());

        let q = batch_request(Protocol::Query, &queue(), action, &entries);
        let pairs: HashMap<String, String> = form_urlencoded::parse(&q.body).into_owned().collect();
        assert_eq!(pairs["Action"], "ChangeMessageVisibilityBatch");
        assert_eq!(
            pairs["ChangeMessageVisibilityBatchRequestEntry.1.ReceiptHandle"],
            "h+7/=&"
        );
        assert_eq!(
            pairs["ChangeMessageVisibilityBatchRequestEntry.1.VisibilityTimeout"],
            "45"
        );

        let reply =
            br#"{"Successful":[{"Id":"7"}],"Failed":[{"Id":"8","Code":"MessageNotInflight"}]}"#;
        let o = parse_batch(action, Protocol::Json, reply).unwrap();
        assert_eq!(o.succeeded, vec!["7".to_string()]);
        assert_eq!(o.failed, vec![("8".into(), "MessageNotInflight".into())]);
        let x = br#"<ChangeMessageVisibilityBatchResponse><ChangeMessageVisibilityBatchResult>
            <ChangeMessageVisibilityBatchResultEntry><Id>7</Id></ChangeMessageVisibilityBatchResultEntry>
            <BatchResultErrorEntry><Id>8</Id><Code>ReceiptHandleIsInvalid</Code></BatchResultErrorEntry>
            </ChangeMessageVisibilityBatchResult></ChangeMessageVisibilityBatchResponse>"#;
        let o = parse_batch(action, Protocol::Query, x).unwrap();
        assert_eq!(o.succeeded, vec!["7".to_string()]);
        assert_eq!(
            o.failed,
            vec![("8".into(), "ReceiptHandleIsInvalid".into())]
        );
        // a delete reply is not a visibility reply
        let wrong = br#"<DeleteMessageBatchResponse><DeleteMessageBatchResult/></DeleteMessageBatchResponse>"#;
        assert!(parse_batch(action, Protocol::Query, wrong).is_err());
    }

    #[test]
    fn attribute_replies() {
        let j = br#"{"Attributes":{"ApproximateNumberOfMessages":"42"}}"#;
        assert_eq!(
            parse_attributes(Protocol::Json, j).unwrap()["ApproximateNumberOfMessages"],
            "42"
        );
        let x = br#"<GetQueueAttributesResponse><GetQueueAttributesResult><Attribute><Name>ApproximateNumberOfMessages</Name><Value>7</Value></Attribute></GetQueueAttributesResult></GetQueueAttributesResponse>"#;
        assert_eq!(
            parse_attributes(Protocol::Query, x).unwrap()["ApproximateNumberOfMessages"],
            "7"
        );
    }

    #[test]
    fn error_replies() {
        let j = parse_error(
            400,
            Some("AWS.SimpleQueueService.NonExistentQueue;Sender"),
            br#"{"__type":"com.amazonaws.sqs#QueueDoesNotExist","message":"The specified queue does not exist."}"#,
        );
        assert!(j.json_protocol);
        assert_eq!(j.code, "AWS.SimpleQueueService.NonExistentQueue");
        assert!(matches!(classify(400, &j), SqsError::NoSuchQueue { .. }));

        let j2 = parse_error(
            400,
            None,
            br#"{"__type":"com.amazonaws.sqs#InvalidAddress","message":"bad"}"#,
        );
        assert_eq!(j2.code, "InvalidAddress");

        // moto answers auth failures in XML even to JSON requests
        let x = parse_error(
            403,
            None,
            br#"<?xml version="1.0"?><ErrorResponse><Error><Type>Sender</Type><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match</Message></Error><RequestId>r</RequestId></ErrorResponse>"#,
        );
        assert!(!x.json_protocol);
        assert!(matches!(classify(403, &x), SqsError::Auth { .. }));
        let x2 = parse_error(403, None, br#"<Response><Errors><Error><Code>InvalidClientTokenId</Code><Message>m</Message></Error></Errors></Response>"#);
        assert_eq!(x2.code, "InvalidClientTokenId");
        assert!(matches!(classify(403, &x2), SqsError::Auth { .. }));

        let other = parse_error(502, None, b"<html>Bad gateway</html>");
        assert_eq!(other.code, "HTTP502");
        assert!(!other.json_protocol);
        assert!(RetryClass::of(&classify(502, &other)).is_retryable());
        let throttled = parse_error(
            400,
            None,
            br#"{"__type":"com.amazonaws.sqs#ThrottlingException","message":"Rate exceeded"}"#,
        );
        assert!(RetryClass::of(&classify(400, &throttled)).is_retryable());
    }

    #[test]
    fn error_echo_a_body_that_is_not_an_aws_error_is_never_shown() {
        // e.g. an internal admin page reached through a misdirected request
        for body in [
            &b"root:x:0:0:root:/root:/bin/bash"[..],
            b"<html><title>Internal dashboard</title> token=abc123</html>",
            br#"{"error": "internal", "secret": "s3cr3t"}"#,
            br#"{"__type": "<img src=x onerror=alert(1)>", "message": "s3cr3t"}"#,
        ] {
            let r = parse_error(500, None, body);
            assert_eq!(r.code, "HTTP500");
            assert_eq!(r.message, "");
            let shown = classify(500, &r).to_string();
            assert_eq!(shown, "SQS error HTTP500 (HTTP 500)");
        }
        // a header code that is not a code is ignored too
        let r = parse_error(403, Some("root:x:0:0 /bin/bash;Sender"), b"nope");
        assert_eq!(r.code, "HTTP403");
    }

    #[test]
    fn error_echo_codes_and_messages_are_sanitised_and_capped() {
        let long = "x".repeat(5000);
        let body = format!(
            r#"{{"__type":"com.amazonaws.sqs#InvalidParameterValue","message":"line1\nline2 {long}"}}"#
        );
        let r = parse_error(400, None, body.as_bytes());
        assert_eq!(r.code, "InvalidParameterValue");
        assert!(r.message.starts_with("line1 line2 xxx"), "{}", r.message);
        assert_eq!(r.message.chars().count(), 256 + 3);
        let code = "A".repeat(65);
        let body = format!(
            r#"<ErrorResponse><Error><Code>{code}</Code><Message>m</Message></Error></ErrorResponse>"#
        );
        let r = parse_error(400, None, body.as_bytes());
        assert_eq!((r.code.as_str(), r.message.as_str()), ("HTTP400", ""));
    }

    #[test]
    fn error_echo_unreadable_replies_quote_nothing_of_them() {
        let e = parse_receive(Protocol::Json, br#"{"Messages": "s3cr3t-internal-value"}"#)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("s3cr3t"), "{e}");
        assert_eq!(
            e,
            "malformed SQS response: ReceiveMessage: JSON of the wrong shape at line 1 column 36"
        );
        let e = parse_receive(Protocol::Query, b"<ReceiveMessageResponse><s3cr3t></other>")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("s3cr3t") && !e.contains("other"), "{e}");
        let e = parse_batch(
            BatchAction::Delete,
            Protocol::Json,
            b"{\"Successful\": 7s3cr3t",
        )
        .unwrap_err()
        .to_string();
        assert!(!e.contains("s3cr3t"), "{e}");
    }

    #[test]
    fn memory_receipt_handles_longer_than_sqs_makes_them_are_refused() {
        let long = "h".repeat(1025);
        let body = format!(
            r#"{{"Messages":[{{"MessageId":"m","ReceiptHandle":"{long}","Body":"{{}}"}}]}}"#
        );
        assert!(matches!(
            parse_receive(Protocol::Json, body.as_bytes()),
            Err(SqsError::Malformed(_))
        ));
        let ok = format!(
            r#"{{"Messages":[{{"MessageId":"m","ReceiptHandle":"{}","Body":"{{}}"}}]}}"#,
            "h".repeat(1024)
        );
        assert_eq!(
            parse_receive(Protocol::Json, ok.as_bytes()).unwrap().len(),
            1
        );
    }

    #[test]
    fn memory_xml_element_count_is_capped() {
        let many = format!(
            "<ReceiveMessageResponse><ReceiveMessageResult>{}</ReceiveMessageResult></ReceiveMessageResponse>",
            "<x/>".repeat(MAX_XML_ELEMENTS + 1)
        );
        let e = parse_receive(Protocol::Query, many.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("more than 10000 elements"), "{e}");
        let fine = format!(
            "<ReceiveMessageResponse><ReceiveMessageResult>{}</ReceiveMessageResult></ReceiveMessageResponse>",
            "<x/>".repeat(MAX_XML_ELEMENTS - 10)
        );
        assert!(parse_receive(Protocol::Query, fine.as_bytes())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn xml_limits() {
        let deep = "<a>".repeat(100) + &"</a>".repeat(100);
        assert!(matches!(
            XmlElement::parse(deep.as_bytes()),
            Err(SqsError::Malformed(_))
        ));
        assert!(XmlElement::parse(b"<a><b></a>").is_err());
        assert!(XmlElement::parse(b"").is_err());
    }
}
