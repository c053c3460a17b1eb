//! Where an SQS request goes and with which credentials: the settings, then
//! the standard AWS chain (fetch_etl_sqs::credentials), cached per backend.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use url::Url;

use fetch_etl_core::error::{Classified, ErrorKind};
use fetch_etl_core::settings as defs;
use fetch_etl_sqs::credentials::cache::{CredentialCache, CurrentCredentials};
use fetch_etl_sqs::credentials::chain::env;
use fetch_etl_sqs::credentials::{AssumeRole, ChainConfig, Provenance, HINT};
use fetch_etl_sqs::endpoint::{host_of, Allowlist};
use fetch_etl_sqs::retry::RetryPolicy;
use fetch_etl_sqs::transport::check_resolution;
use fetch_etl_sqs::{Client, ClientConfig, Credentials, Protocol, QueueRef};

use super::error::{raise, raise_with_hint, OrRaise};
use super::runtime;
use super::settings;

thread_local! {
    /// Protocol detected per endpoint, remembered for the backend's lifetime.
    static KNOWN_PROTOCOLS: RefCell<HashMap<String, Protocol>> = RefCell::new(HashMap::new());
    /// The backend's credentials, for the configuration they were resolved for.
    static CREDENTIALS: RefCell<Option<Arc<CredentialCache>>> = const { RefCell::new(None) };
}

/// A client for `queue_url`, configured from the settings and environment.
/// Raises, before any request, if its endpoint is not one the server may
/// send requests to (`fetch_etl.allowed_endpoints`, see `endpoint.rs`).
pub(crate) fn client_for(queue_url: &str) -> Arc<Client> {
    client(checked_queue(queue_url), false).0
}

/// The queue URL, parsed with the endpoint the settings and environment
/// give, whose endpoint passed the allowlist (else this raises).
pub(crate) fn checked_queue(queue_url: &str) -> QueueRef {
    let queue = QueueRef::parse(queue_url, endpoint_override().as_deref()).or_raise();
    check_endpoint(&queue.endpoint);
    queue
}

/// A client for a queue from [`checked_queue`], and where its credentials
/// come from. Raises (28000) when there are none. `metadata`: ask SQS for
/// the messages' attributes (the target has an `sqs_attributes` column).
pub(crate) fn client(queue: QueueRef, metadata: bool) -> (Arc<Client>, Provenance) {
    let region = region_for(&queue);
    let (creds, provenance) = credentials(&region);
    let cfg = ClientConfig {
        protocol: settings::sqs_protocol(),
        request_timeout: settings::http_timeout(),
        retry: RetryPolicy {
            max_attempts: settings::http_max_attempts(),
            ..RetryPolicy::default()
        },
        metadata,
        ..ClientConfig::default()
    };
    let known = KNOWN_PROTOCOLS.with(|k| k.borrow().get(queue.endpoint.as_str()).copied());
    let client = Client::new(
        runtime::transport().or_raise(),
        cfg,
        creds,
        region,
        queue,
        known,
    );
    (Arc::new(client), provenance)
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

/// The backend's credentials for a queue in `region`, resolved or refreshed
/// now if needed (bounded by fetch_etl.http_timeout, interruptible), and
/// where they came from. One cache per backend, replaced when the settings
/// it was made for change.
fn credentials(region: &str) -> (Arc<dyn CurrentCredentials>, Provenance) {
    let config = chain_config(region);
    let cache = CREDENTIALS.with(|c| {
        let mut c = c.borrow_mut();
        match c.as_ref() {
            Some(cache) if *cache.config() == config => cache.clone(),
            _ => {
                let cache = Arc::new(runtime::in_runtime(|| CredentialCache::new(config)));
                *c = Some(cache.clone());
                cache
            }
        }
    });
    cache.start_drain();
    match runtime::block_on_interruptible(cache.get()) {
        Ok(r) => (cache, r.provenance),
        Err(e) => raise_with_hint(e.kind(), cache.redact(&e.to_string()), HINT),
    }
}

/// What the chain resolves for, from the settings.
fn chain_config(region: &str) -> ChainConfig {
    let settings_keys = settings::string(&settings::AWS_ACCESS_KEY_ID).map(|access_key_id| {
        warn_if_settings_exposed();
        let Some(secret_access_key) = settings::string(&settings::AWS_SECRET_ACCESS_KEY) else {
            raise(
                ErrorKind::InvalidAuthorization,
                format!(
                    "{} is set but {} is not",
                    defs::AWS_ACCESS_KEY_ID.name_str(),
                    defs::AWS_SECRET_ACCESS_KEY.name_str()
                ),
            )
        };
        Credentials {
            access_key_id,
            secret_access_key,
            session_token: settings::string(&settings::AWS_SESSION_TOKEN),
        }
    });
    let assume_role = settings::string(&settings::AWS_ROLE_ARN).map(|role_arn| AssumeRole {
        role_arn,
        external_id: settings::string(&settings::AWS_EXTERNAL_ID),
        session_name: settings::string(&settings::AWS_ROLE_SESSION_NAME)
            .unwrap_or_else(|| "fetch_etl".to_string()),
    });
    ChainConfig {
        settings: settings_keys,
        region: region.to_string(),
        timeout: settings::http_timeout(),
        assume_role,
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
