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
//! - `heartbeat`: a thread that extends the visibility of held messages.
//! - `credentials`: the AWS credential chain (aws-config's providers) and
//!   the backend's cache of what it resolved.
//!
//! A crate of its own, apart from `fetch_etl_core`: the domain (events,
//! pipelines, masking, the public contracts, settings) builds and tests
//! without tokio, reqwest or aws-config. Written on reqwest and aws-sigv4
//! rather than the AWS SDK's SQS crate: the drain needs bounded replies (a
//! size cap per reply, read incrementally), both wire protocols (LocalStack
//! before 3.0 speaks only Query), request ids and retry classes it can name
//! in SQL errors, and polling in short slices so that a cancel takes effect
//! within 0.1 s; the SDK's client offers none of these knobs and would add
//! its own runtime and HTTP stack to every backend.

pub mod client;
pub mod credentials;
pub mod endpoint;
pub mod heartbeat;
pub mod pump;
pub mod queue_url;
pub mod retry;
mod signer;
pub mod transport;
pub mod wire;

use fetch_etl_core::error::{Classified, ErrorKind};

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

/// Substrings of a secret this long or longer are redacted wherever they
/// appear: a message that quotes part of a session token leaks it as surely
/// as one that quotes it whole.
const REDACT_MIN: usize = 12;

impl Credentials {
    /// Removes every secret from `text`, and every run of [`REDACT_MIN`] or
    /// more characters of one (defence in depth for error messages).
    pub fn redact(&self, text: &str) -> String {
        let secrets = std::iter::once(&self.secret_access_key).chain(self.session_token.iter());
        let mut out = text.to_string();
        for secret in secrets {
            out = redact_runs(&out, secret);
        }
        out
    }
}

/// `text` with each of its runs of `REDACT_MIN`+ bytes found in `secret`
/// replaced by `<redacted>` (whole secrets shorter than that too).
fn redact_runs(text: &str, secret: &str) -> String {
    if secret.len() < 4 {
        return text.to_string();
    }
    if secret.len() < REDACT_MIN || !secret.is_ascii() {
        return text.replace(secret, "<redacted>");
    }
    // Mark every byte of text covered by some REDACT_MIN-byte window of the secret.
    let t = text.as_bytes();
    let mut covered = vec![false; t.len()];
    let windows: std::collections::HashSet<&[u8]> = secret.as_bytes().windows(REDACT_MIN).collect();
    for i in 0..t.len().saturating_sub(REDACT_MIN - 1) {
        if windows.contains(&t[i..i + REDACT_MIN]) {
            covered[i..i + REDACT_MIN]
                .iter_mut()
                .for_each(|c| *c = true);
        }
    }
    if !covered.contains(&true) {
        return text.to_string();
    }
    // Secrets here are ASCII, so covered runs start and end on char boundaries.
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < t.len() {
        if covered[i] {
            out.push_str("<redacted>");
            while i < t.len() && covered[i] {
                i += 1;
            }
        } else {
            let start = i;
            while i < t.len() && !covered[i] {
                i += 1;
            }
            out.push_str(&text[start..i]);
        }
    }
    out
}

pub use fetch_etl_core::message::{Message, MessageAttribute, KEPT_ATTRIBUTES};

/// Result of a batch call (DeleteMessageBatch, ChangeMessageVisibilityBatch).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Entry ids SQS confirmed.
    pub succeeded: Vec<String>,
    /// (entry id, error code) of entries SQS refused, or did not mention
    /// (code `NotAcknowledged`).
    pub failed: Vec<(String, String)>,
}

/// Errors of the SQS client. Messages never contain credentials.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SqsError {
    #[error("invalid queue URL {url:?}: {reason}")]
    InvalidQueueUrl { url: String, reason: String },
    #[error("invalid setting: {0}")]
    InvalidConfig(String),
    #[error("SQS rejected the credentials ({code}){}", message_suffix(message))]
    Auth { code: String, message: String },
    #[error("SQS denied access ({code}){}", message_suffix(message))]
    AccessDenied { code: String, message: String },
    #[error("queue does not exist ({code}){}", message_suffix(message))]
    NoSuchQueue { code: String, message: String },
    #[error("SQS error {code} (HTTP {status}){}", message_suffix(message))]
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
    /// No usable credentials (the message is a [`CredentialsError`](crate::credentials::CredentialsError)'s).
    #[error("{0}")]
    Credentials(String),
}

/// `": message"`, or nothing when the reply carried no message.
fn message_suffix(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

impl Classified for SqsError {
    fn kind(&self) -> ErrorKind {
        match self {
            SqsError::InvalidQueueUrl { .. } | SqsError::InvalidConfig(_) => {
                ErrorKind::InvalidParameter
            }
            SqsError::Auth { .. } | SqsError::Credentials(_) => ErrorKind::InvalidAuthorization,
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

    #[test]
    fn error_echo_partial_session_token_is_redacted() {
        let token = "IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQDexampletoken0123456789abcdefghij";
        let c = Credentials {
            access_key_id: "AKID".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: Some(token.into()),
        };
        // a server quoting 20 characters from the middle of the token
        let part = &token[30..50];
        let text = format!(
            "rejected token ...{part}... and key {}",
            &c.secret_access_key[5..25]
        );
        let out = c.redact(&text);
        assert!(!out.contains(part), "{out}");
        assert!(!out.contains(&c.secret_access_key[5..25]), "{out}");
        assert_eq!(out, "rejected token ...<redacted>... and key <redacted>");
        // short coincidences are left alone, and non-secret text is untouched
        assert_eq!(c.redact("IQoJb3 is fine"), "IQoJb3 is fine");
        assert_eq!(c.redact("Zürich 東京"), "Zürich 東京");
    }
}
