//! A small SQS client for the drain: both wire protocols (JSON and
//! Query/XML), SigV4 signing, retries with backoff, bounded responses.
//! The extension drives the async calls on its per-backend runtime and checks
//! for query cancellation between short polling slices.
//!
//! - `queue_url`: which queue, which endpoint, which region.
//! - `wire`: request bodies and reply parsing for both protocols.
//! - `signer`: SigV4 with the aws-sigv4 crate.
//! - `transport`: one HTTP exchange (reqwest, or a fake in tests).
//! - `retry`: named retry classes, backoff, Retry-After, the retry budget.
//! - `client`: an operation = protocol choice + retries over the transport.
//! - `pump`: concurrent ReceiveMessage calls feeding a bounded channel.

pub mod client;
pub mod pump;
pub mod queue_url;
pub mod retry;
mod signer;
pub mod transport;
mod wire;

use crate::error::{Classified, ErrorKind};

pub use client::{Client, ClientConfig};
pub use queue_url::QueueRef;

/// Which SQS wire protocol to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// `application/x-amz-json-1.0` with `X-Amz-Target` (what current AWS SDKs use).
    Json,
    /// Form-encoded `Action=...` with XML replies (LocalStack before 3.0, older SDKs).
    Query,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Json => "json",
            Protocol::Query => "query",
        }
    }
}

/// AWS credentials. `Debug` never prints the secret parts.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Credentials {
    /// Removes every secret from `text` (defence in depth for error messages).
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in std::iter::once(&self.secret_access_key).chain(self.session_token.iter()) {
            if secret.len() >= 4 {
                out = out.replace(secret.as_str(), "<redacted>");
            }
        }
        out
    }
}

/// One received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub message_id: String,
    pub receipt_handle: String,
    pub body: String,
    /// `SentTimestamp` attribute: milliseconds since the Unix epoch.
    pub sent_timestamp_ms: Option<i64>,
    /// `ApproximateReceiveCount` attribute.
    pub receive_count: Option<i32>,
}

/// Result of a DeleteMessageBatch call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteOutcome {
    pub deleted: usize,
    /// (entry id, error code) of entries SQS refused.
    pub failed: Vec<(String, String)>,
}

/// Errors of the SQS client. Messages never contain credentials.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SqsError {
    #[error("invalid queue URL {url:?}: {reason}")]
    InvalidQueueUrl { url: String, reason: String },
    #[error("invalid setting: {0}")]
    InvalidConfig(String),
    #[error("SQS rejected the credentials ({code}): {message}")]
    Auth { code: String, message: String },
    #[error("SQS denied access ({code}): {message}")]
    AccessDenied { code: String, message: String },
    #[error("queue does not exist ({code}): {message}")]
    NoSuchQueue { code: String, message: String },
    #[error("SQS error {code} (HTTP {status}): {message}")]
    Service {
        status: u16,
        code: String,
        message: String,
    },
    #[error("could not connect to {endpoint}: {detail}")]
    Connect { endpoint: String, detail: String },
    #[error("request to {endpoint} failed: {detail}")]
    Transport { endpoint: String, detail: String },
    #[error("request to {endpoint} timed out after {seconds} s")]
    Timeout { endpoint: String, seconds: u64 },
    #[error("SQS response larger than {limit} bytes")]
    ResponseTooLarge { limit: usize },
    #[error("malformed SQS response: {0}")]
    Malformed(String),
    #[error("could not sign the request: {0}")]
    Signing(String),
}

impl Classified for SqsError {
    fn kind(&self) -> ErrorKind {
        match self {
            SqsError::InvalidQueueUrl { .. } | SqsError::InvalidConfig(_) => {
                ErrorKind::InvalidParameter
            }
            SqsError::Auth { .. } => ErrorKind::InvalidAuthorization,
            SqsError::AccessDenied { .. } => ErrorKind::InsufficientPrivilege,
            SqsError::NoSuchQueue { .. } => ErrorKind::UndefinedObject,
            SqsError::Service { .. } => ErrorKind::External,
            SqsError::Connect { .. } => ErrorKind::ConnectionFailure,
            SqsError::Transport { .. } | SqsError::Timeout { .. } => ErrorKind::ConnectionLost,
            SqsError::ResponseTooLarge { .. } => ErrorKind::LimitExceeded,
            SqsError::Malformed(_) => ErrorKind::ProtocolViolation,
            SqsError::Signing(_) => ErrorKind::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_debug_and_redact_hide_secrets() {
        let c = Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG".into(),
            session_token: Some("FwoGZXIvYXdzEXAMPLETOKEN".into()),
        };
        let dbg = format!("{c:?}");
        assert!(dbg.contains("AKIDEXAMPLE"));
        assert!(!dbg.contains("wJalr") && !dbg.contains("FwoGZ"));
        let text = "failed: secret wJalrXUtnFEMI/K7MDENG token FwoGZXIvYXdzEXAMPLETOKEN";
        assert_eq!(c.redact(text), "failed: secret <redacted> token <redacted>");
    }
}
