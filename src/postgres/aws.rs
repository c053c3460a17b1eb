//! Where an SQS request goes and with which credentials: settings first, then
//! the server's environment, the way AWS SDKs read it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use url::Url;

use fetch_etl_core::error::ErrorKind;
use fetch_etl_core::settings as defs;
use fetch_etl_core::sqs::endpoint::{host_of, Allowlist};
use fetch_etl_core::sqs::retry::RetryPolicy;
use fetch_etl_core::sqs::transport::check_resolution;
use fetch_etl_core::sqs::{Client, ClientConfig, Credentials, Protocol, QueueRef};

use super::error::{raise, raise_with_hint, OrRaise};
use super::runtime;
use super::settings;

thread_local! {
    /// Protocol detected per endpoint, remembered for the backend's lifetime.
    static KNOWN_PROTOCOLS: RefCell<HashMap<String, Protocol>> = RefCell::new(HashMap::new());
}

/// A client for `queue_url`, configured from the settings and environment.
/// Raises, before any request, if its endpoint is not one the server may
/// send requests to (`fetch_etl.allowed_endpoints`, see `endpoint.rs`).
pub(crate) fn client_for(queue_url: &str) -> Arc<Client> {
    client(checked_queue(queue_url))
}

/// The queue URL, parsed with the endpoint the settings and environment
/// give, whose endpoint passed the allowlist (else this raises).
pub(crate) fn checked_queue(queue_url: &str) -> QueueRef {
    let queue = QueueRef::parse(queue_url, endpoint_override().as_deref()).or_raise();
    check_endpoint(&queue.endpoint);
    queue
}

/// A client for a queue from [`checked_queue`].
pub(crate) fn client(queue: QueueRef) -> Arc<Client> {
    let creds = credentials();
    let region = region_for(&queue);
    let cfg = ClientConfig {
        protocol: settings::sqs_protocol(),
        request_timeout: settings::http_timeout(),
        retry: RetryPolicy {
            max_attempts: settings::http_max_attempts(),
            ..RetryPolicy::default()
        },
        ..ClientConfig::default()
    };
    let known = KNOWN_PROTOCOLS.with(|k| k.borrow().get(queue.endpoint.as_str()).copied());
    Arc::new(Client::new(
        runtime::transport().or_raise(),
        cfg,
        creds,
        region,
        queue,
        known,
    ))
}

/// The endpoint allowlist, on the name and on every address it resolves to;
/// the backend's resolver then hands out only those addresses.
fn check_endpoint(endpoint: &Url) {
    let list = Allowlist::parse(&settings::allowed_endpoints()).or_raise();
    let reach = list.check(endpoint).or_raise();
    let timeout = settings::http_timeout();
    // The timer is made inside the async block: on the runtime.
    match runtime::block_on_interruptible(async {
        tokio::time::timeout(timeout, check_resolution(endpoint, reach)).await
    }) {
        Ok(r) => r.or_raise(),
        Err(_) => raise(
            ErrorKind::ConnectionFailure,
            format!(
                "resolving {} took longer than {}",
                host_of(endpoint).unwrap_or_default(),
                defs::HTTP_TIMEOUT.name_str()
            ),
        ),
    }
    if let Some(host) = host_of(endpoint) {
        runtime::guard().allow(&host, reach);
    }
}

/// Remembers the protocol `client` found for its endpoint.
pub(crate) fn remember_protocol(client: &Client) {
    if let Some(p) = client.protocol() {
        KNOWN_PROTOCOLS.with(|k| {
            k.borrow_mut()
                .insert(client.queue().endpoint.as_str().to_string(), p)
        });
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn endpoint_override() -> Option<String> {
    settings::string(&settings::SQS_ENDPOINT_URL)
        .or_else(|| env("AWS_ENDPOINT_URL_SQS"))
        .or_else(|| env("AWS_ENDPOINT_URL"))
}

fn region_for(queue: &QueueRef) -> String {
    queue
        .host_region
        .clone()
        .or_else(|| settings::string(&settings::AWS_REGION))
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|| "us-east-1".to_string())
}

/// Credentials from the fetch_etl.aws_* settings when the access key id is
/// set there, otherwise from the server's environment.
fn credentials() -> Credentials {
    let from_settings = settings::string(&settings::AWS_ACCESS_KEY_ID).is_some();
    let (key, secret, token, source) = if from_settings {
        warn_if_settings_exposed();
        (
            settings::string(&settings::AWS_ACCESS_KEY_ID),
            settings::string(&settings::AWS_SECRET_ACCESS_KEY),
            settings::string(&settings::AWS_SESSION_TOKEN),
            "the fetch_etl.aws_* settings",
        )
    } else {
        (
            env("AWS_ACCESS_KEY_ID"),
            env("AWS_SECRET_ACCESS_KEY"),
            env("AWS_SESSION_TOKEN"),
            "the server's environment",
        )
    };
    match (key, secret) {
        (Some(access_key_id), Some(secret_access_key)) => {
            Credentials { access_key_id, secret_access_key, session_token: token }
        }
        (None, _) => raise_with_hint(
            ErrorKind::NotInPrerequisiteState,
            "no AWS credentials for fetch_etl",
            "Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the server's environment, or the superuser-only settings fetch_etl.aws_access_key_id and fetch_etl.aws_secret_access_key (see docs/security.md, Credentials).",
        ),
        (Some(_), None) => raise(
            ErrorKind::NotInPrerequisiteState,
            format!("an AWS access key id but no secret access key is set in {source}"),
        ),
    }
}

/// Secrets kept in postgresql.conf/ALTER ROLE/ALTER DATABASE are readable by
/// any role in sessions that have not loaded fetch_etl, unless it is preloaded.
fn warn_if_settings_exposed() {
    thread_local!(static WARNED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
    let secret = defs::AWS_SECRET_ACCESS_KEY.name;
    if !settings::preloaded()
        && settings::set_persistently(secret)
        && !WARNED.with(|w| w.replace(true))
    {
        pgrx::warning!(
            "{} is set in the server configuration but fetch_etl is not in shared_preload_libraries: sessions that have not loaded fetch_etl can read it",
            defs::AWS_SECRET_ACCESS_KEY.name_str()
        );
    }
}
