//! One HTTP exchange: a signed POST out, status, the headers we use and a
//! size-capped body back. [`HttpTransport`] is reqwest; tests of the client
//! plug in a scripted fake through the [`Transport`] trait.

use std::future::Future;
use std::time::Duration;

use url::Url;

use super::{retry, SqsError};

/// A request, signed and ready to send.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub url: Url,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// For the whole exchange, reply body included.
    pub timeout: Duration,
    /// A longer reply is an error ([`SqsError::ResponseTooLarge`]).
    pub max_reply_bytes: usize,
}

/// What came back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpReply {
    pub status: u16,
    /// `x-amzn-query-error`: the Query-protocol error code of a JSON reply.
    pub query_error: Option<String>,
    /// `Retry-After`, in seconds.
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
}

/// Sends one request. Errors are network errors (connect, broken, timeout)
/// or an over-long reply; any HTTP status is a reply.
pub trait Transport: Send + Sync {
    fn send(&self, req: HttpRequest) -> impl Future<Output = Result<HttpReply, SqsError>> + Send;
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

/// The real transport: reqwest (rustls, connection pool).
#[derive(Clone)]
pub struct HttpTransport {
    http: reqwest::Client,
}

impl HttpTransport {
    pub fn new(http: reqwest::Client) -> Self {
        HttpTransport { http }
    }
}

/// `scheme://host[:port]/` of a URL, for messages.
fn endpoint_of(url: &Url) -> String {
    let mut u = url.clone();
    u.set_path("/");
    u.set_query(None);
    u.to_string()
}

impl Transport for HttpTransport {
    fn send(&self, req: HttpRequest) -> impl Future<Output = Result<HttpReply, SqsError>> + Send {
        let http = self.http.clone();
        async move {
            let endpoint = endpoint_of(&req.url);
            let timeout = req.timeout;
            let transport = |e: reqwest::Error| -> SqsError {
                if e.is_timeout() {
                    SqsError::Timeout {
                        endpoint: endpoint.clone(),
                        seconds: timeout.as_secs().max(1),
                    }
                } else if e.is_connect() {
                    SqsError::Connect {
                        endpoint: endpoint.clone(),
                        detail: error_chain(&e),
                    }
                } else {
                    SqsError::Transport {
                        endpoint: endpoint.clone(),
                        detail: error_chain(&e),
                    }
                }
            };
            let mut rb = http.post(req.url).timeout(timeout);
            for (k, v) in &req.headers {
                rb = rb.header(k.as_str(), v.as_str());
            }
            let mut resp = rb.body(req.body).send().await.map_err(transport)?;
            let header = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let query_error = header("x-amzn-query-error");
            let retry_after = header("retry-after").and_then(|v| retry::parse_retry_after(&v));
            let status = resp.status().as_u16();
            let limit = req.max_reply_bytes;
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
            Ok(HttpReply {
                status,
                query_error,
                retry_after,
                body,
            })
        }
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
