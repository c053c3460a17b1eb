//! One HTTP exchange: a signed POST out, status, the headers we use and a
//! size-capped body back. [`HttpTransport`] is reqwest; tests of the client
//! plug in a scripted fake through the [`Transport`] trait.
//!
//! The reqwest client never follows redirects (a 3xx is a reply like any
//! other error) and resolves names through [`Guard`], which only hands out
//! addresses the endpoint allowlist (`endpoint.rs`) allows for that host.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use url::Url;

use super::endpoint::{self, Reach};
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

/// The hosts requests may go to, with where each may resolve: filled by the
/// endpoint check before a drain sends anything, read by the resolver at
/// every connect.
#[derive(Debug, Default)]
pub struct Guard {
    hosts: Mutex<HashMap<String, Reach>>,
}

impl Guard {
    /// `host` passed the allowlist with `reach`.
    pub fn allow(&self, host: &str, reach: Reach) {
        self.hosts
            .lock()
            .expect("not poisoned")
            .insert(normal(host), reach);
    }

    fn reach(&self, host: &str) -> Option<Reach> {
        self.hosts
            .lock()
            .expect("not poisoned")
            .get(&normal(host))
            .copied()
    }
}

/// A host name as the guard keys it: lowercase, no trailing dot.
fn normal(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Name resolution that only returns addresses the guard allows.
struct GuardedResolver(Arc<Guard>);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        let reach = self.0.reach(&host);
        Box::pin(async move {
            let reach = reach.ok_or_else(|| {
                format!("{host} was not checked against fetch_etl.allowed_endpoints")
            })?;
            let ok = resolve_allowed(&host, reach).await?;
            Ok(Box::new(ok.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The addresses of `host` that `reach` allows (an error if none).
async fn resolve_allowed(
    host: &str,
    reach: Reach,
) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
    let all: Vec<SocketAddr> = tokio::net::lookup_host((host, 0)).await?.collect();
    let ok: Vec<SocketAddr> = all
        .iter()
        .copied()
        .filter(|a| endpoint::reachable(a.ip(), reach))
        .collect();
    if ok.is_empty() {
        return Err(format!("no address of {host} is one fetch_etl may connect to").into());
    }
    Ok(ok)
}

/// Before anything is sent to `endpoint` (which passed the allowlist with
/// `reach`): its name must resolve, and to allowed addresses only.
pub async fn check_resolution(endpoint: &Url, reach: Reach) -> Result<(), endpoint::EndpointError> {
    let Some(host) = endpoint::host_of(endpoint) else {
        return Ok(());
    };
    if host.parse::<std::net::IpAddr>().is_ok() || reach == Reach::Anything {
        return Ok(()); // literals were checked by the allowlist; exact names may be anything
    }
    let looked_up: Option<Vec<SocketAddr>> = tokio::net::lookup_host((host.as_str(), 0))
        .await
        .ok()
        .map(|a| a.collect());
    let Some(addrs) = looked_up else {
        return Err(endpoint::EndpointError::Unresolved { host });
    };
    for a in &addrs {
        endpoint::check_address(endpoint, &host, a.ip(), reach)?;
    }
    if addrs.is_empty() {
        return Err(endpoint::EndpointError::Unresolved { host });
    }
    Ok(())
}

/// A reqwest client suited to talking to SQS from a database backend: no
/// redirects, names resolved through `guard`.
pub fn http_client(
    connect_timeout: Duration,
    guard: Arc<Guard>,
) -> Result<reqwest::Client, SqsError> {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(50))
        .pool_max_idle_per_host(32)
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(GuardedResolver(guard)))
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

impl Transport for HttpTransport {
    fn send(&self, req: HttpRequest) -> impl Future<Output = Result<HttpReply, SqsError>> + Send {
        let http = self.http.clone();
        async move {
            let endpoint = endpoint::endpoint_text(&req.url);
            let timeout = req.timeout;
            let transport = |e: reqwest::Error| -> SqsError {
                // The endpoint is named once, by us; reqwest would repeat the URL.
                let e = e.without_url();
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
            // Exactly the announced length; without one, doubling but never
            // past the limit (so a reply never holds more than `limit`).
            let mut body = Vec::with_capacity(resp.content_length().unwrap_or(0) as usize);
            while let Some(chunk) = resp.chunk().await.map_err(transport)? {
                let needed = body.len() + chunk.len();
                if needed > limit {
                    return Err(SqsError::ResponseTooLarge { limit });
                }
                if needed > body.capacity() {
                    let grown = needed.max(body.capacity() * 2).min(limit);
                    body.reserve_exact(grown - body.len());
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
