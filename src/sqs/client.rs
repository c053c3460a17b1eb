//! The async SQS client: signing, timeouts, retries with backoff and jitter,
//! bounded response size, and automatic choice of the wire protocol.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use super::wire::{self, WireRequest};
use super::{signer, Credentials, DeleteOutcome, Message, Protocol, QueueRef, SqsError};

/// Which protocol to use; `Auto` tries JSON and falls back to Query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolChoice {
    Auto,
    Json,
    Query,
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub protocol: ProtocolChoice,
    /// Timeout of one request, not counting the long-poll wait.
    pub request_timeout: Duration,
    /// Attempts per call (1 = no retry).
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub max_response_bytes: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            protocol: ProtocolChoice::Auto,
            request_timeout: Duration::from_secs(10),
            max_attempts: 5,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            max_response_bytes: 32 * 1024 * 1024,
        }
    }
}

/// A reqwest client suited to talking to SQS from a database backend.
pub fn http_client(connect_timeout: Duration) -> Result<reqwest::Client, SqsError> {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(50))
        .pool_max_idle_per_host(32)
        .user_agent(concat!("fetch_etl/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| SqsError::InvalidConfig(format!("HTTP client: {}", error_chain(&e))))
}

/// One queue, one set of credentials.
pub struct Client {
    http: reqwest::Client,
    cfg: ClientConfig,
    creds: Credentials,
    region: String,
    queue: QueueRef,
    /// The protocol the endpoint is known to speak (None: not known yet).
    known: Mutex<Option<Protocol>>,
}

impl Client {
    /// `known` is a protocol already detected for this endpoint (e.g. by an
    /// earlier call in the same backend).
    pub fn new(
        http: reqwest::Client,
        cfg: ClientConfig,
        creds: Credentials,
        region: String,
        queue: QueueRef,
        known: Option<Protocol>,
    ) -> Self {
        let known = match cfg.protocol {
            ProtocolChoice::Json => Some(Protocol::Json),
            ProtocolChoice::Query => Some(Protocol::Query),
            ProtocolChoice::Auto => known,
        };
        Client {
            http,
            cfg,
            creds,
            region,
            queue,
            known: Mutex::new(known),
        }
    }

    pub fn queue(&self) -> &QueueRef {
        &self.queue
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// The protocol in use, once known.
    pub fn protocol(&self) -> Option<Protocol> {
        *self.known.lock().expect("not poisoned")
    }

    pub fn redact(&self, text: &str) -> String {
        self.creds.redact(text)
    }

    /// ReceiveMessage (max 1..=10, wait 0..=20 s).
    pub async fn receive(
        &self,
        max: u32,
        wait_seconds: u32,
        visibility_timeout: Option<u32>,
    ) -> Result<Vec<Message>, SqsError> {
        let q = &self.queue;
        self.call(
            |p| wire::receive_request(p, q, max, wait_seconds, visibility_timeout),
            wire::parse_receive,
            Duration::from_secs(wait_seconds as u64),
        )
        .await
    }

    /// DeleteMessageBatch of up to 10 `(id, receipt handle)` pairs.
    pub async fn delete_batch(
        &self,
        entries: &[(String, String)],
    ) -> Result<DeleteOutcome, SqsError> {
        let q = &self.queue;
        self.call(
            |p| wire::delete_batch_request(p, q, entries),
            wire::parse_delete_batch,
            Duration::ZERO,
        )
        .await
    }

    /// GetQueueAttributes.
    pub async fn queue_attributes(
        &self,
        names: &[&str],
    ) -> Result<HashMap<String, String>, SqsError> {
        let q = &self.queue;
        self.call(
            |p| wire::get_attributes_request(p, q, names),
            wire::parse_attributes,
            Duration::ZERO,
        )
        .await
    }

    async fn call<T>(
        &self,
        build: impl Fn(Protocol) -> WireRequest,
        parse: impl Fn(Protocol, &[u8]) -> Result<T, SqsError>,
        extra_timeout: Duration,
    ) -> Result<T, SqsError> {
        let timeout = self.cfg.request_timeout + extra_timeout;
        let mut attempt = 0u32;
        let mut fell_back = false;
        loop {
            let known = self.protocol();
            let protocol = known.unwrap_or(if fell_back {
                Protocol::Query
            } else {
                Protocol::Json
            });
            let probing = known.is_none() && protocol == Protocol::Json;
            attempt += 1;
            let outcome: Result<T, SqsError> = match self.send(build(protocol), timeout).await {
                Ok((status, _, body)) if (200..300).contains(&status) => {
                    match parse(protocol, &body) {
                        Ok(v) => {
                            if known.is_none() {
                                *self.known.lock().expect("not poisoned") = Some(protocol);
                            }
                            return Ok(v);
                        }
                        // An endpoint that answers a JSON request with XML speaks Query.
                        Err(_) if probing && body.first() == Some(&b'<') => {
                            fell_back = true;
                            attempt -= 1;
                            continue;
                        }
                        Err(e) => Err(e),
                    }
                }
                Ok((status, query_error, body)) => {
                    let reply = wire::parse_error(status, query_error.as_deref(), &body);
                    // A non-JSON error to a JSON request, from an endpoint not yet known
                    // to speak JSON: try the Query protocol once (LocalStack < 3.0).
                    if probing && !reply.json_protocol && !fell_back {
                        fell_back = true;
                        attempt -= 1;
                        continue;
                    }
                    Err(wire::classify(status, &reply))
                }
                Err(e) => Err(e),
            };
            let err = outcome.err().expect("success returned above");
            if !err.is_retryable() || attempt >= self.cfg.max_attempts {
                return Err(err);
            }
            tokio::time::sleep(self.backoff(attempt)).await;
        }
    }

    /// Full-jitter exponential backoff for retry number `attempt` (1-based).
    fn backoff(&self, attempt: u32) -> Duration {
        let cap = self
            .cfg
            .backoff_base
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.cfg.backoff_max);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(7);
        let mut x = (nanos as u64) ^ ((attempt as u64) << 32) ^ 0x9E37_79B9_7F4A_7C15;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let frac = (x % 1000) as f64 / 1000.0;
        cap.mul_f64(frac.max(0.1))
    }

    /// One signed POST; returns status, `x-amzn-query-error`, and the body.
    async fn send(
        &self,
        req: WireRequest,
        timeout: Duration,
    ) -> Result<(u16, Option<String>, Vec<u8>), SqsError> {
        let endpoint = self.queue.endpoint.as_str().to_string();
        let url = self
            .queue
            .endpoint
            .join(&req.path)
            .map_err(|e| SqsError::InvalidConfig(format!("request path {}: {e}", req.path)))?;
        let mut headers: Vec<(&str, &str)> = vec![("content-type", req.content_type)];
        if let Some(t) = &req.target {
            headers.push(("x-amz-target", t));
        }
        let signed = signer::sign_headers(
            "POST",
            url.as_str(),
            &headers,
            &req.body,
            &self.creds,
            &self.region,
            "sqs",
            SystemTime::now(),
        )?;
        let mut rb = self.http.post(url).timeout(timeout);
        for (k, v) in headers {
            rb = rb.header(k, v);
        }
        for (k, v) in &signed {
            rb = rb.header(k.as_str(), v.as_str());
        }
        let transport = |e: reqwest::Error| -> SqsError {
            let detail = self.creds.redact(&error_chain(&e));
            if e.is_timeout() {
                SqsError::Timeout {
                    endpoint: endpoint.clone(),
                    seconds: timeout.as_secs().max(1),
                }
            } else if e.is_connect() {
                SqsError::Connect {
                    endpoint: endpoint.clone(),
                    detail,
                }
            } else {
                SqsError::Transport {
                    endpoint: endpoint.clone(),
                    detail,
                }
            }
        };
        let mut resp = rb.body(req.body).send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let query_error = resp
            .headers()
            .get("x-amzn-query-error")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let limit = self.cfg.max_response_bytes;
        if resp.content_length().is_some_and(|n| n as usize > limit) {
            return Err(SqsError::ResponseTooLarge { limit });
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > limit {
                return Err(SqsError::ResponseTooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, query_error, body))
    }
}

/// An error and all its causes, `: `-separated (reqwest's Display hides them).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = c.source();
    }
    parts.join(": ")
}
