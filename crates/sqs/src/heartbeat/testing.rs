//! A fake SQS endpoint and helpers for the heartbeat's tests.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Heartbeat, HoldRules};
use crate::transport::{HttpReply, HttpRequest, Transport};
use crate::{Client, ClientConfig, Credentials, Message, Protocol, QueueRef, SqsError};

/// An SQS endpoint that answers every batch call with success for every
/// entry (or with `refuse`), and GetQueueAttributes with a visibility
/// timeout of `visibility_timeout` (1 s unless set; an error while
/// `no_attributes`). With `panic_next`, its next call panics.
#[derive(Clone)]
pub(super) struct Fake {
    seen: Arc<Mutex<Vec<serde_json::Value>>>,
    pub(super) refuse: Arc<Mutex<Option<(u16, &'static str)>>>,
    pub(super) no_attributes: Arc<AtomicBool>,
    pub(super) visibility_timeout: Arc<Mutex<String>>,
    pub(super) panic_next: Arc<AtomicBool>,
}

impl Default for Fake {
    fn default() -> Self {
        Fake {
            seen: Arc::default(),
            refuse: Arc::default(),
            no_attributes: Arc::default(),
            visibility_timeout: Arc::new(Mutex::new("1".into())),
            panic_next: Arc::default(),
        }
    }
}

impl Fake {
    pub(super) fn requests(&self) -> Vec<serde_json::Value> {
        self.seen.lock().unwrap().clone()
    }

    pub(super) fn count(&self, action: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r["action"] == action)
            .count()
    }
}

impl Transport for Fake {
    fn send(&self, req: HttpRequest) -> impl Future<Output = Result<HttpReply, SqsError>> + Send {
        if self.panic_next.swap(false, Ordering::SeqCst) {
            panic!("a transport that panics");
        }
        let action = req
            .headers
            .iter()
            .find(|(k, _)| k == "x-amz-target")
            .map(|(_, v)| v.trim_start_matches("AmazonSQS.").to_string())
            .unwrap_or_default();
        let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
        let error = |status: u16, code: &str| HttpReply {
            status,
            body: format!(r#"{{"__type":"com.amazonaws.sqs#{code}","message":"m"}}"#).into_bytes(),
            ..HttpReply::default()
        };
        let ok = |v: serde_json::Value| HttpReply {
            status: 200,
            body: serde_json::to_vec(&v).unwrap(),
            ..HttpReply::default()
        };
        let reply = match action.as_str() {
            "GetQueueAttributes" if self.no_attributes.load(Ordering::SeqCst) => {
                error(403, "AccessDenied")
            }
            "GetQueueAttributes" => {
                let t = self.visibility_timeout.lock().unwrap().clone();
                ok(serde_json::json!({"Attributes": {"VisibilityTimeout": t}}))
            }
            _ => match *self.refuse.lock().unwrap() {
                Some((status, code)) => error(status, code),
                None => {
                    let ids: Vec<_> = body["Entries"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|e| serde_json::json!({"Id": e["Id"]}))
                        .collect();
                    ok(serde_json::json!({"Successful": ids}))
                }
            },
        };
        self.seen
            .lock()
            .unwrap()
            .push(serde_json::json!({"action": action, "body": body}));
        async move { Ok(reply) }
    }
}

pub(super) fn client(fake: &Fake) -> Client<Fake> {
    Client::new(
        fake.clone(),
        ClientConfig {
            protocol: Some(Protocol::Json),
            retry: crate::retry::RetryPolicy {
                max_attempts: 1,
                ..Default::default()
            },
            ..ClientConfig::default()
        },
        Arc::new(creds()),
        "us-east-1".into(),
        QueueRef::parse("http://127.0.0.1:9/000000000000/q", None).unwrap(),
        None,
    )
}

pub(super) fn creds() -> Credentials {
    Credentials {
        access_key_id: "AKID".into(),
        secret_access_key: "secret".into(),
        session_token: None,
    }
}

pub(super) fn messages(n: usize) -> Vec<Message> {
    (0..n)
        .map(|i| Message {
            message_id: format!("m{i}"),
            receipt_handle: format!("h{i}"),
            ..Message::default()
        })
        .collect()
}

pub(super) const RULES: HoldRules = HoldRules {
    limit: Duration::from_secs(3600),
    on_rollback: None,
    floor: Duration::ZERO,
};

pub(super) fn started(fake: &Fake) -> Heartbeat<Fake> {
    let f = fake.clone();
    Heartbeat::start(move || Ok(f)).unwrap()
}
