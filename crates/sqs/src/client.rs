//! The async SQS client: one queue, one set of credentials. An operation is
//! built for a wire protocol, signed, sent through the [`Transport`], and
//! retried as [`retry`](super::retry) decides. Which protocol an endpoint
//! speaks is found once and remembered; finding it never counts as an
//! attempt.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use url::Url;

use super::retry::{Attempts, Decision, RetryBudget, RetryClass, RetryPolicy};
use super::transport::{HttpReply, HttpRequest, HttpTransport, Transport};
use super::wire::{self, BatchAction, WireRequest};
use super::{signer, BatchOutcome, Message, Protocol, QueueRef, SqsError};
use crate::credentials::cache::CurrentCredentials;
use fetch_etl_core::settings;

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The protocol to speak; None: JSON, falling back to Query for
    /// endpoints that answer JSON requests the Query way.
    pub protocol: Option<Protocol>,
    /// Timeout of one request, not counting the long-poll wait.
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
    pub max_response_bytes: usize,
    /// Ask for the kept system attributes and the message attributes (the
    /// target has an `sqs_attributes` column).
    pub metadata: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            protocol: None,
            request_timeout: Duration::from_millis(settings::HTTP_TIMEOUT.default as u64),
            retry: RetryPolicy::default(),
            max_response_bytes: fetch_etl_core::budget::MAX_REPLY_BYTES,
            metadata: false,
        }
    }
}

/// One queue, one set of credentials, over transport `T`.
pub struct Client<T = HttpTransport> {
    transport: T,
    cfg: ClientConfig,
    creds: Arc<dyn CurrentCredentials>,
    region: String,
    queue: QueueRef,
    /// The protocol the endpoint is known to speak (None: not known yet).
    known: Mutex<Option<Protocol>>,
    /// One retry budget per kind of call, so that retries spent while
    /// receiving never starve the deletes after COMMIT.
    budgets: [RetryBudget; 4],
    rng: Mutex<fastrand::Rng>,
}

/// The kinds of call, each with its own retry budget.
#[derive(Debug, Clone, Copy)]
enum Op {
    Receive = 0,
    Delete = 1,
    Attributes = 2,
    Visibility = 3,
}

/// How one exchange ended.
enum Exchange<R> {
    Done(R),
    /// The reply shows the endpoint does not speak the JSON protocol.
    SpeaksQuery,
    Failed {
        error: SqsError,
        retry_after: Option<Duration>,
    },
}

impl<T: Transport> Client<T> {
    /// `known` is a protocol already detected for this endpoint (e.g. by an
    /// earlier call in the same backend); a configured protocol wins.
    pub fn new(
        transport: T,
        cfg: ClientConfig,
        creds: Arc<dyn CurrentCredentials>,
        region: String,
        queue: QueueRef,
        known: Option<Protocol>,
    ) -> Self {
        let known = cfg.protocol.or(known);
        Client {
            transport,
            cfg,
            creds,
            region,
            queue,
            known: Mutex::new(known),
            budgets: Default::default(),
            rng: Mutex::new(fastrand::Rng::new()),
        }
    }

    pub fn queue(&self) -> &QueueRef {
        &self.queue
    }

    /// The same queue, configuration and known protocol over another
    /// transport and credentials (with fresh retry budgets): for calls made
    /// from another thread's runtime.
    pub fn rebind<U: Transport>(
        &self,
        transport: U,
        creds: Arc<dyn CurrentCredentials>,
    ) -> Client<U> {
        Client::new(
            transport,
            self.cfg.clone(),
            creds,
            self.region.clone(),
            self.queue.clone(),
            self.protocol(),
        )
    }

    /// The credentials requests are signed with now (resolved or refreshed
    /// if needed).
    pub async fn credentials(&self) -> Result<super::Credentials, SqsError> {
        self.creds.current().await
    }

    /// The protocol in use, once known.
    pub fn protocol(&self) -> Option<Protocol> {
        *self.known.lock().expect("not poisoned")
    }

    /// `text` without any of this client's secrets.
    pub fn redact(&self, text: &str) -> String {
        self.creds.redact(text)
    }

    /// ReceiveMessage (max 1..=10, wait 0..=20 s). A reply with more than
    /// `max` messages is cut to the first `max`: the others are neither
    /// stored nor deleted, so they come back after their visibility timeout.
    /// On a FIFO queue every attempt of one call carries the same
    /// ReceiveRequestAttemptId: SQS answers a retry after a lost reply with
    /// the same messages instead of hiding them for the visibility timeout.
    pub async fn receive(
        &self,
        max: u32,
        wait_seconds: u32,
        visibility_timeout: Option<u32>,
    ) -> Result<Vec<Message>, SqsError> {
        let q = &self.queue;
        let fifo = q.is_fifo();
        let attempt_id = fifo.then(|| self.attempt_id());
        let params = wire::ReceiveParams {
            max,
            wait_seconds,
            visibility_timeout,
            attempt_id: attempt_id.as_deref(),
            metadata: self.cfg.metadata,
            fifo,
        };
        let mut msgs = self
            .call(
                Op::Receive,
                |p| wire::receive_request(p, q, &params),
                wire::parse_receive,
                Duration::from_secs(wait_seconds as u64),
            )
            .await?;
        msgs.truncate(max as usize);
        Ok(msgs)
    }

    /// A fresh ReceiveRequestAttemptId: 32 letters and digits (SQS allows 128).
    fn attempt_id(&self) -> String {
        let mut rng = self.rng.lock().expect("not poisoned");
        (0..32).map(|_| rng.alphanumeric()).collect()
    }

    /// DeleteMessageBatch of up to 10 `(id, receipt handle)` pairs (see
    /// [`Client::batch`]).
    pub async fn delete_batch(
        &self,
        entries: &[(String, String)],
    ) -> Result<BatchOutcome, SqsError> {
        self.batch(BatchAction::Delete, entries).await
    }

    /// `action` on up to 10 `(id, receipt handle)` pairs. An entry the reply
    /// neither confirms nor refuses counts as failed (`NotAcknowledged`); ids
    /// it names that were not sent are ignored.
    pub async fn batch(
        &self,
        action: BatchAction,
        entries: &[(String, String)],
    ) -> Result<BatchOutcome, SqsError> {
        let q = &self.queue;
        let op = match action {
            BatchAction::Delete => Op::Delete,
            BatchAction::ChangeVisibility { .. } => Op::Visibility,
        };
        let reply = self
            .call(
                op,
                |p| wire::batch_request(p, q, action, entries),
                |p, body| wire::parse_batch(action, p, body),
                Duration::ZERO,
            )
            .await?;
        Ok(account_batch(entries, reply))
    }

    /// GetQueueAttributes.
    pub async fn queue_attributes(
        &self,
        names: &[&str],
    ) -> Result<HashMap<String, String>, SqsError> {
        let q = &self.queue;
        self.call(
            Op::Attributes,
            |p| wire::get_attributes_request(p, q, names),
            wire::parse_attributes,
            Duration::ZERO,
        )
        .await
    }

    /// Runs one operation: attempts, with waits between them, until one
    /// succeeds or the retry policy gives up.
    async fn call<R>(
        &self,
        op: Op,
        build: impl Fn(Protocol) -> WireRequest,
        parse: impl Fn(Protocol, &[u8]) -> Result<R, SqsError>,
        extra_timeout: Duration,
    ) -> Result<R, SqsError> {
        let timeout = self.cfg.request_timeout + extra_timeout;
        let mut attempts = Attempts::new(&self.cfg.retry, &self.budgets[op as usize]);
        // Set once this call has seen the endpoint answer JSON the Query way.
        let mut speaks_query = false;
        loop {
            let known = self.protocol();
            let protocol = known.unwrap_or(if speaks_query {
                Protocol::Query
            } else {
                Protocol::Json
            });
            let probing = known.is_none() && protocol == Protocol::Json;
            match self
                .exchange(protocol, probing, &build, &parse, timeout)
                .await
            {
                Exchange::Done(v) => {
                    if known.is_none() {
                        *self.known.lock().expect("not poisoned") = Some(protocol);
                    }
                    attempts.succeeded();
                    return Ok(v);
                }
                // Only while probing, so at most once per call: not an attempt.
                Exchange::SpeaksQuery => speaks_query = true,
                Exchange::Failed { error, retry_after } => {
                    let class = RetryClass::of(&error);
                    let decision = {
                        let mut rng = self.rng.lock().expect("not poisoned");
                        attempts.after_failure(class, retry_after, &mut rng)
                    };
                    match decision {
                        Decision::RetryAfter(wait) => tokio::time::sleep(wait).await,
                        Decision::GiveUp(_) => return Err(error),
                    }
                }
            }
        }
    }

    /// One request and its reply. While `probing` (the endpoint's protocol is
    /// not known and this is JSON), a success reply in XML, or an error reply
    /// that is not a JSON-protocol error (LocalStack before 3.0), means the
    /// endpoint speaks Query.
    async fn exchange<R>(
        &self,
        protocol: Protocol,
        probing: bool,
        build: &impl Fn(Protocol) -> WireRequest,
        parse: &impl Fn(Protocol, &[u8]) -> Result<R, SqsError>,
        timeout: Duration,
    ) -> Exchange<R> {
        let reply = match self.send(build(protocol), timeout).await {
            Ok(r) => r,
            Err(error) => {
                return Exchange::Failed {
                    error,
                    retry_after: None,
                }
            }
        };
        if (200..300).contains(&reply.status) {
            return match parse(protocol, &reply.body) {
                Ok(v) => Exchange::Done(v),
                Err(_) if probing && reply.body.first() == Some(&b'<') => Exchange::SpeaksQuery,
                Err(error) => Exchange::Failed {
                    error,
                    retry_after: None,
                },
            };
        }
        let err = wire::parse_error(reply.status, reply.query_error.as_deref(), &reply.body);
        if probing && !err.json_protocol {
            return Exchange::SpeaksQuery;
        }
        let error = wire::classify(reply.status, &err);
        if matches!(error, SqsError::Auth { .. }) {
            // Expired or revoked: the next drain resolves credentials anew.
            self.creds.refused();
        }
        Exchange::Failed {
            error,
            retry_after: reply.retry_after,
        }
    }

    /// Signs and sends `req`.
    async fn send(&self, req: WireRequest, timeout: Duration) -> Result<HttpReply, SqsError> {
        let url = request_url(&self.queue.endpoint, &req.path)?;
        let mut headers: Vec<(&str, &str)> = vec![("content-type", req.content_type)];
        if let Some(t) = &req.target {
            headers.push(("x-amz-target", t));
        }
        let creds = self.creds.current().await?;
        let signed = signer::sign_headers(
            "POST",
            url.as_str(),
            &headers,
            &req.body,
            &creds,
            &self.region,
            "sqs",
            SystemTime::now(),
        )?;
        let headers = headers
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain(signed)
            .collect();
        let request = HttpRequest {
            url,
            headers,
            body: req.body,
            timeout,
            max_reply_bytes: self.cfg.max_response_bytes,
        };
        self.transport
            .send(request)
            .await
            .map_err(|e| self.redact_error(e))
    }

    /// Network error details come from the HTTP stack: never let a secret through.
    fn redact_error(&self, e: SqsError) -> SqsError {
        match e {
            SqsError::Connect { endpoint, detail } => SqsError::Connect {
                endpoint,
                detail: self.redact(&detail),
            },
            SqsError::Transport { endpoint, detail } => SqsError::Transport {
                endpoint,
                detail: self.redact(&detail),
            },
            other => other,
        }
    }
}

/// What a batch call's reply means for the entries sent.
fn account_batch(entries: &[(String, String)], reply: BatchOutcome) -> BatchOutcome {
    let sent: std::collections::HashSet<&str> = entries.iter().map(|(id, _)| id.as_str()).collect();
    let mut seen = std::collections::HashSet::new();
    let mut out = BatchOutcome::default();
    for id in reply.succeeded {
        if sent.contains(id.as_str()) && seen.insert(id.clone()) {
            out.succeeded.push(id);
        }
    }
    for (id, code) in reply.failed {
        if sent.contains(id.as_str()) && seen.insert(id.clone()) {
            out.failed.push((id, code));
        }
    }
    for (id, _) in entries {
        if !seen.contains(id) {
            out.failed.push((id.clone(), "NotAcknowledged".into()));
        }
    }
    out
}

/// Where a request for `path` goes: `endpoint` (the origin the allowlist
/// checked) with that path. Setting the path, unlike joining it, cannot
/// change the host (a join reads `//169.254.169.254/x` as a new host); the
/// origin is compared all the same, so no path can send a request elsewhere.
pub fn request_url(endpoint: &Url, path: &str) -> Result<Url, SqsError> {
    let mut url = endpoint.clone();
    url.set_path(path);
    url.set_query(None);
    if url.origin() != endpoint.origin() {
        return Err(SqsError::InvalidConfig(
            "a request path would leave the queue's endpoint".into(),
        ));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Credentials;
    use std::collections::VecDeque;
    use std::future::Future;
    use std::sync::Arc;

    /// A scripted endpoint: each request takes the next answer and is recorded.
    #[derive(Clone, Default)]
    struct Fake {
        answers: Arc<Mutex<VecDeque<Result<HttpReply, SqsError>>>>,
        seen: Arc<Mutex<Vec<HttpRequest>>>,
    }

    impl Fake {
        fn new(answers: Vec<Result<HttpReply, SqsError>>) -> Self {
            Fake {
                answers: Arc::new(Mutex::new(answers.into())),
                seen: Arc::default(),
            }
        }

        fn requests(&self) -> Vec<HttpRequest> {
            self.seen.lock().unwrap().clone()
        }

        /// "json:ReceiveMessage" / "query:ReceiveMessage" per request.
        fn actions(&self) -> Vec<String> {
            self.requests()
                .iter()
                .map(
                    |r| match r.headers.iter().find(|(k, _)| k == "x-amz-target") {
                        Some((_, t)) => format!("json:{}", t.trim_start_matches("AmazonSQS.")),
                        None => {
                            let form: HashMap<String, String> =
                                form_urlencoded::parse(&r.body).into_owned().collect();
                            format!("query:{}", form["Action"])
                        }
                    },
                )
                .collect()
        }
    }

    impl Transport for Fake {
        fn send(
            &self,
            req: HttpRequest,
        ) -> impl Future<Output = Result<HttpReply, SqsError>> + Send {
            self.seen.lock().unwrap().push(req);
            let answer = self
                .answers
                .lock()
                .unwrap()
                .pop_front()
                .expect("a scripted answer for every request");
            async move { answer }
        }
    }

    fn reply(status: u16, body: &str) -> Result<HttpReply, SqsError> {
        Ok(HttpReply {
            status,
            body: body.as_bytes().to_vec(),
            ..HttpReply::default()
        })
    }

    const EMPTY_JSON: &str = "{}";
    const ONE_JSON: &str = r#"{"Messages":[{"MessageId":"m1","ReceiptHandle":"r1","Body":"{}"}]}"#;
    const EMPTY_XML: &str =
        "<ReceiveMessageResponse><ReceiveMessageResult/></ReceiveMessageResponse>";
    const UNAVAILABLE: &str = r#"{"__type":"com.amazonaws.sqs#ServiceUnavailable","message":"x"}"#;
    const THROTTLED: &str =
        r#"{"__type":"com.amazonaws.sqs#ThrottlingException","message":"Rate exceeded"}"#;
    const BAD_PARAM: &str =
        r#"{"__type":"com.amazonaws.sqs#InvalidParameterValue","message":"no"}"#;
    const LOCALSTACK2: &str = "<ErrorResponse><Error><Code>InvalidAction</Code><Message>The action  is not valid</Message></Error></ErrorResponse>";

    fn client(fake: &Fake, protocol: Option<Protocol>, max_attempts: u32) -> Client<Fake> {
        client_of(
            fake,
            protocol,
            max_attempts,
            "http://localhost:4566/000000000000/q",
        )
    }

    fn client_of(
        fake: &Fake,
        protocol: Option<Protocol>,
        max_attempts: u32,
        queue_url: &str,
    ) -> Client<Fake> {
        Client::new(
            fake.clone(),
            ClientConfig {
                protocol,
                retry: RetryPolicy {
                    max_attempts,
                    ..RetryPolicy::default()
                },
                ..ClientConfig::default()
            },
            Arc::new(Credentials {
                access_key_id: "AKID".into(),
                secret_access_key: "secret-key-0123456789".into(),
                session_token: None,
            }),
            "us-east-1".into(),
            QueueRef::parse(queue_url, None).unwrap(),
            None,
        )
    }

    fn run<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn server_errors_are_retried_until_success() {
        let internal = r#"{"__type":"com.amazonaws.sqs#InternalError","message":"x"}"#;
        let fake = Fake::new(vec![
            reply(503, UNAVAILABLE),
            reply(500, internal),
            reply(200, ONE_JSON),
        ]);
        let c = client(&fake, None, 5);
        let msgs = run(c.receive(10, 0, None)).unwrap();
        assert_eq!(msgs.len(), 1);
        assert_eq!(fake.actions(), vec!["json:ReceiveMessage"; 3]);
        assert_eq!(c.protocol(), Some(Protocol::Json));
        // every attempt is signed afresh
        assert!(fake
            .requests()
            .iter()
            .all(|r| r.headers.iter().any(|(k, _)| k == "authorization")));
    }

    #[test]
    fn lost_fifo_reply_retries_carry_the_same_receive_request_attempt_id() {
        let fake = Fake::new(vec![
            Err(SqsError::Timeout {
                endpoint: "http://localhost:4566/".into(),
                seconds: 10,
            }),
            reply(503, UNAVAILABLE),
            reply(200, ONE_JSON),
            reply(200, EMPTY_JSON),
        ]);
        let mut c = client(&fake, Some(Protocol::Json), 5);
        c.queue = QueueRef::parse("http://localhost:4566/000000000000/q.fifo", None).unwrap();
        run(c.receive(10, 0, None)).unwrap();
        run(c.receive(10, 0, None)).unwrap();
        let ids: Vec<String> = fake
            .requests()
            .iter()
            .map(|r| {
                let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                v["ReceiveRequestAttemptId"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(ids.len(), 4);
        // one id for the three attempts of the first call, a new one for the next call
        assert_eq!(ids[0], ids[1]);
        assert_eq!(ids[1], ids[2]);
        assert_ne!(ids[2], ids[3]);
        assert!(ids
            .iter()
            .all(|i| i.len() == 32 && i.bytes().all(|b| b.is_ascii_alphanumeric())));
        // FIFO receives ask for the group id and sequence number
        let v: serde_json::Value = serde_json::from_slice(&fake.requests()[0].body).unwrap();
        assert_eq!(
            v["MessageSystemAttributeNames"],
            serde_json::json!([
                "SentTimestamp",
                "ApproximateReceiveCount",
                "MessageGroupId",
                "SequenceNumber"
            ])
        );
        // a standard queue's receives carry no attempt id
        let fake = Fake::new(vec![reply(200, EMPTY_JSON)]);
        let c = client(&fake, Some(Protocol::Json), 5);
        run(c.receive(10, 0, None)).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&fake.requests()[0].body).unwrap();
        assert!(v.get("ReceiveRequestAttemptId").is_none());
        assert!(v.get("MessageAttributeNames").is_none());
    }

    #[test]
    fn client_errors_are_not_retried() {
        let fake = Fake::new(vec![reply(400, BAD_PARAM)]);
        let c = client(&fake, Some(Protocol::Json), 5);
        let e = run(c.receive(10, 0, None)).unwrap_err();
        assert!(
            matches!(e, SqsError::Service { status: 400, ref code, .. } if code == "InvalidParameterValue")
        );
        assert_eq!(fake.requests().len(), 1);
    }

    #[test]
    fn gives_up_after_max_attempts_with_the_last_error() {
        let fake = Fake::new(vec![reply(503, UNAVAILABLE); 3]);
        let c = client(&fake, Some(Protocol::Json), 3);
        let e = run(c.receive(10, 0, None)).unwrap_err();
        assert!(matches!(e, SqsError::Service { status: 503, .. }));
        assert_eq!(fake.requests().len(), 3);
    }

    #[test]
    fn network_errors_are_retried_and_their_details_redacted() {
        let fake = Fake::new(vec![
            Err(SqsError::Connect {
                endpoint: "http://localhost:4566/".into(),
                detail: "refused (secret-key-0123456789)".into(),
            }),
            Err(SqsError::Connect {
                endpoint: "http://localhost:4566/".into(),
                detail: "refused (secret-key-0123456789)".into(),
            }),
        ]);
        let c = client(&fake, Some(Protocol::Json), 2);
        let e = run(c.receive(10, 0, None)).unwrap_err().to_string();
        assert!(!e.contains("secret-key-0123456789"), "{e}");
        assert!(e.contains("<redacted>"), "{e}");
        assert_eq!(fake.requests().len(), 2);
    }

    /// How long one receive waits when the first reply is `status` with
    /// `Retry-After: retry_after` and the second succeeds.
    fn wait_after(status: u16, retry_after: Duration, body: &str) -> Duration {
        let failed = Ok(HttpReply {
            status,
            retry_after: Some(retry_after),
            body: body.as_bytes().to_vec(),
            ..HttpReply::default()
        });
        let fake = Fake::new(vec![failed, reply(200, EMPTY_JSON)]);
        let c = client(&fake, Some(Protocol::Json), 5);
        run(async {
            let start = tokio::time::Instant::now();
            c.receive(10, 0, None).await.unwrap();
            start.elapsed()
        })
    }

    #[test]
    fn retry_after_is_honoured() {
        let waited = wait_after(429, Duration::from_secs(4), THROTTLED);
        assert!(waited >= Duration::from_secs(4), "{waited:?}");
        assert!(waited < Duration::from_secs(6), "{waited:?}");
    }

    #[test]
    fn retry_after_never_waits_longer_than_the_backoff_cap() {
        let waited = wait_after(503, Duration::from_secs(3600), UNAVAILABLE);
        assert!(waited <= RetryPolicy::default().backoff_max, "{waited:?}");
    }

    #[test]
    fn concurrent_calls_share_one_budget_and_deletes_have_their_own() {
        // 60 failing receives in flight, 5 attempts each: without a budget 240
        // retries; the shared 500-token budget allows 100.
        let fake = Fake::new(vec![reply(503, UNAVAILABLE); 400]);
        let c = client(&fake, Some(Protocol::Json), 5);
        run(futures_util::future::join_all(
            (0..60).map(|_| c.receive(10, 0, None)),
        ));
        assert_eq!(fake.requests().len(), 60 + 100);
        // the deletes after COMMIT still get their retries
        let before = fake.requests().len();
        fake.answers.lock().unwrap().clear();
        fake.answers.lock().unwrap().extend([
            reply(503, UNAVAILABLE),
            reply(200, r#"{"Successful":[{"Id":"0"}],"Failed":[]}"#),
        ]);
        let out = run(c.delete_batch(&[("0".into(), "h".into())])).unwrap();
        assert_eq!(out.succeeded.len(), 1);
        assert_eq!(fake.requests().len(), before + 2);
    }

    #[test]
    fn truncated_success_replies_are_retried_like_network_errors() {
        let fake = Fake::new(vec![reply(200, r#"{"Messages": [{"#), reply(200, ONE_JSON)]);
        let c = client(&fake, Some(Protocol::Json), 5);
        assert_eq!(run(c.receive(10, 0, None)).unwrap().len(), 1);
        assert_eq!(fake.requests().len(), 2);
        let fake = Fake::new(vec![reply(200, "<html>"); 2]);
        let c = client(&fake, Some(Protocol::Json), 2);
        let e = run(c.receive(10, 0, None)).unwrap_err();
        assert!(matches!(e, SqsError::Malformed(_)), "{e:?}");
        assert_eq!(fake.requests().len(), 2);
    }

    #[test]
    fn memory_reply_with_more_messages_than_asked_is_cut() {
        let three = r#"{"Messages":[{"MessageId":"a","ReceiptHandle":"ra","Body":"{}"},{"MessageId":"b","ReceiptHandle":"rb","Body":"{}"},{"MessageId":"c","ReceiptHandle":"rc","Body":"{}"}]}"#;
        let fake = Fake::new(vec![reply(200, three)]);
        let c = client(&fake, Some(Protocol::Json), 1);
        let msgs = run(c.receive(2, 0, None)).unwrap();
        assert_eq!(
            msgs.iter()
                .map(|m| m.message_id.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
    }

    #[test]
    fn a_delete_entry_neither_confirmed_nor_refused_is_a_failure() {
        let body = r#"{"Successful":[{"Id":"0"},{"Id":"9"}],"Failed":[{"Id":"1","Code":"ReceiptHandleIsInvalid"}]}"#;
        let fake = Fake::new(vec![reply(200, body)]);
        let c = client(&fake, Some(Protocol::Json), 1);
        let entries: Vec<(String, String)> =
            (0..3).map(|i| (i.to_string(), format!("h{i}"))).collect();
        let out = run(c.delete_batch(&entries)).unwrap();
        assert_eq!(out.succeeded, vec!["0".to_string()], "9 was never sent");
        assert_eq!(
            out.failed,
            vec![
                ("1".to_string(), "ReceiptHandleIsInvalid".to_string()),
                ("2".to_string(), "NotAcknowledged".to_string())
            ]
        );
    }

    #[test]
    fn an_xml_error_to_json_switches_to_query_without_using_an_attempt() {
        let fake = Fake::new(vec![reply(400, LOCALSTACK2), reply(200, EMPTY_XML)]);
        let c = client(&fake, None, 1);
        assert!(run(c.receive(10, 0, None)).unwrap().is_empty());
        assert_eq!(
            fake.actions(),
            vec!["json:ReceiveMessage", "query:ReceiveMessage"]
        );
        assert_eq!(c.protocol(), Some(Protocol::Query));
        // remembered: the next call sends no JSON
        let fake2 = fake.clone();
        fake2
            .answers
            .lock()
            .unwrap()
            .push_back(reply(200, EMPTY_XML));
        run(c.receive(10, 0, None)).unwrap();
        assert_eq!(fake.actions().last().unwrap(), "query:ReceiveMessage");
        assert_eq!(fake.requests().len(), 3);
    }

    #[test]
    fn an_xml_success_to_json_switches_to_query() {
        let fake = Fake::new(vec![reply(200, EMPTY_XML), reply(200, EMPTY_XML)]);
        let c = client(&fake, None, 5);
        run(c.receive(10, 0, None)).unwrap();
        assert_eq!(c.protocol(), Some(Protocol::Query));
    }

    #[test]
    fn the_switch_holds_across_retries_of_one_call() {
        let fake = Fake::new(vec![
            reply(400, LOCALSTACK2),
            reply(
                503,
                "<ErrorResponse><Error><Code>ServiceUnavailable</Code></Error></ErrorResponse>",
            ),
            reply(200, EMPTY_XML),
        ]);
        let c = client(&fake, None, 5);
        run(c.receive(10, 0, None)).unwrap();
        assert_eq!(
            fake.actions(),
            vec![
                "json:ReceiveMessage",
                "query:ReceiveMessage",
                "query:ReceiveMessage"
            ]
        );
    }

    #[test]
    fn a_known_json_endpoint_never_falls_back() {
        let fake = Fake::new(vec![reply(400, LOCALSTACK2)]);
        let c = client(&fake, Some(Protocol::Json), 5);
        let e = run(c.receive(10, 0, None)).unwrap_err();
        assert!(matches!(e, SqsError::Service { ref code, .. } if code == "InvalidAction"));
        assert_eq!(fake.requests().len(), 1);
    }

    #[test]
    fn requests_carry_the_timeout_and_reply_cap() {
        let fake = Fake::new(vec![reply(200, EMPTY_JSON)]);
        let c = client(&fake, Some(Protocol::Json), 1);
        run(c.receive(10, 20, None)).unwrap();
        let r = &fake.requests()[0];
        assert_eq!(
            r.timeout,
            ClientConfig::default().request_timeout + Duration::from_secs(20)
        );
        assert_eq!(r.max_reply_bytes, fetch_etl_core::budget::MAX_REPLY_BYTES);
        assert_eq!(r.url.as_str(), "http://localhost:4566/");
    }
    /// SSRF: the allowlist checks the queue URL's host, so every request must
    /// go to that host. `//2852039166/q` is a valid queue path (account
    /// 2852039166) but, joined onto the endpoint as the Query protocol's path
    /// once was, it named the host 169.254.169.254 (the instance metadata
    /// service), and `//0/q` this machine.
    #[test]
    fn a_doubled_slash_in_the_queue_url_cannot_send_a_request_to_another_host() {
        for (queue_url, host) in [
            (
                "https://sqs.us-east-1.amazonaws.com//2852039166/q",
                "sqs.us-east-1.amazonaws.com",
            ),
            ("http://localhost:4566//0/q", "localhost"),
            ("http://localhost:4566//2130706433//q/", "localhost"),
        ] {
            for protocol in [Protocol::Query, Protocol::Json] {
                let fake = Fake::new(vec![reply(
                    200,
                    if protocol == Protocol::Query {
                        EMPTY_XML
                    } else {
                        EMPTY_JSON
                    },
                )]);
                let c = client_of(&fake, Some(protocol), 1, queue_url);
                run(c.receive(10, 0, None)).unwrap();
                let url = &fake.requests()[0].url;
                assert_eq!(
                    url.host_str(),
                    Some(host),
                    "{queue_url} {protocol:?}: {url}"
                );
                if protocol == Protocol::Query {
                    let account = queue_url
                        .split("//")
                        .nth(2)
                        .unwrap()
                        .split('/')
                        .next()
                        .unwrap();
                    assert_eq!(url.path(), format!("/{account}/q"), "{queue_url}");
                }
            }
        }
    }

    #[test]
    fn request_urls_keep_the_endpoint_origin_whatever_the_path() {
        let endpoint = Url::parse("https://sqs.us-east-1.amazonaws.com/").unwrap();
        for path in [
            "/1/q",
            "//169.254.169.254/x",
            "///x",
            "/a?b#c",
            "//[::1]:9/x",
            "http://evil/",
        ] {
            let url = request_url(&endpoint, path).unwrap();
            assert_eq!(url.origin(), endpoint.origin(), "{path}: {url}");
            assert_eq!(url.query(), None, "{path}: {url}");
        }
    }
}
