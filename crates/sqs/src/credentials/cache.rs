//! One set of resolved credentials per backend, handed to every request and
//! refreshed ahead of expiry (see [`super::refresh_at`]), so that a pg_cron
//! worker or a long session never needs a restart when a role rotates.
//!
//! - Credentials with an expiry (roles: web identity, container, IMDS,
//!   AssumeRole, STS-backed profiles) are kept across drains until their
//!   refresh time.
//! - Keys without one (settings, environment, a profile's static keys) are
//!   re-read at the start of each drain ([`CredentialCache::start_drain`]),
//!   so a rotated key file is picked up by the next drain.
//! - A refresh that fails while the old credentials are still valid keeps
//!   them (and waits [`RETRY_REFRESH`] before trying again); once they have
//!   expired, the failure is the error.
//! - Credentials SQS refused are dropped ([`CurrentCredentials::refused`]):
//!   the next drain resolves anew.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use super::chain::Chain;
use super::{refresh_at, ChainConfig, CredentialsError, Resolved};
use crate::{Credentials, SqsError};

/// How long a failed refresh waits before the next try, while the old
/// credentials still serve.
pub const RETRY_REFRESH: Duration = Duration::from_secs(10);

/// What the SQS client asks for before signing each request.
pub trait CurrentCredentials: Send + Sync {
    /// The credentials to sign with now.
    fn current(&self) -> Pin<Box<dyn Future<Output = Result<Credentials, SqsError>> + Send + '_>>;
    /// `text` without any secret this source handed out.
    fn redact(&self, text: &str) -> String;
    /// SQS refused the credentials: do not hand them out again.
    fn refused(&self) {}
}

/// Fixed credentials (tests, the benchmark's ceiling).
impl CurrentCredentials for Credentials {
    fn current(&self) -> Pin<Box<dyn Future<Output = Result<Credentials, SqsError>> + Send + '_>> {
        let c = self.clone();
        Box::pin(async move { Ok(c) })
    }
    fn redact(&self, text: &str) -> String {
        Credentials::redact(self, text)
    }
}

/// Something that resolves credentials: the [`Chain`], or a fake in tests.
pub trait Resolve: Send + Sync {
    fn resolve(&self) -> impl Future<Output = Result<Resolved, CredentialsError>> + Send;
}

impl Resolve for Chain {
    fn resolve(&self) -> impl Future<Output = Result<Resolved, CredentialsError>> + Send {
        Chain::resolve(self)
    }
}

struct Entry {
    resolved: Resolved,
    /// None: valid for the current drain only.
    refresh_at: Option<SystemTime>,
}

#[derive(Default)]
struct State {
    entry: Option<Entry>,
    /// After a failed refresh with valid credentials: not before this.
    next_try: Option<SystemTime>,
    /// Secrets handed out before the current ones, for redaction.
    previous: Option<Credentials>,
}

impl State {
    /// Drops the current entry, keeping its secrets for redaction.
    fn retire(&mut self) {
        if let Some(e) = self.entry.take() {
            self.previous = Some(e.resolved.creds);
        }
    }
}

pub struct CredentialCache<R: Resolve = Chain> {
    resolver: R,
    config: ChainConfig,
    state: Mutex<State>,
    /// One refresh at a time; others wait for its result.
    refreshing: tokio::sync::Mutex<()>,
}

impl CredentialCache<Chain> {
    pub fn new(config: ChainConfig) -> Self {
        CredentialCache::with_resolver(Chain::new(config.clone()), config)
    }
}

impl<R: Resolve> CredentialCache<R> {
    pub fn with_resolver(resolver: R, config: ChainConfig) -> Self {
        CredentialCache {
            resolver,
            config,
            state: Mutex::new(State::default()),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    /// The configuration this cache resolves for: a backend keeps one cache
    /// per configuration.
    pub fn config(&self) -> &ChainConfig {
        &self.config
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A drain starts: keys without an expiry are read again.
    pub fn start_drain(&self) {
        let mut s = self.state();
        if s.entry.as_ref().is_some_and(|e| e.refresh_at.is_none()) {
            s.retire();
        }
    }

    /// Drops the cached credentials.
    pub fn invalidate(&self) {
        self.state().retire();
    }

    /// The cached credentials if they need no refresh at `now`.
    fn fresh(&self, now: SystemTime) -> Option<Resolved> {
        let s = self.state();
        let e = s.entry.as_ref()?;
        let due = e.refresh_at.is_some_and(|t| now >= t);
        let held_off = s.next_try.is_some_and(|t| now < t);
        (!due || held_off).then(|| e.resolved.clone())
    }

    /// Credentials valid now: the cached ones, or freshly resolved.
    pub async fn get(&self) -> Result<Resolved, CredentialsError> {
        if let Some(r) = self.fresh(SystemTime::now()) {
            return Ok(r);
        }
        let _one = self.refreshing.lock().await;
        let now = SystemTime::now();
        if let Some(r) = self.fresh(now) {
            return Ok(r);
        }
        match self.resolver.resolve().await {
            Ok(r) => {
                let mut s = self.state();
                if s.entry
                    .as_ref()
                    .is_some_and(|e| e.resolved.creds != r.creds)
                {
                    s.retire();
                }
                s.next_try = None;
                s.entry = Some(Entry {
                    refresh_at: refresh_at(now, r.expiry),
                    resolved: r.clone(),
                });
                Ok(r)
            }
            Err(err) => {
                let mut s = self.state();
                match s.entry.as_ref().map(|e| e.resolved.clone()) {
                    Some(r) if r.expiry.is_some_and(|x| now < x) => {
                        s.next_try = Some(now + RETRY_REFRESH);
                        Ok(r)
                    }
                    Some(r) => match r.expiry {
                        Some(x) => Err(CredentialsError::Expired {
                            provider: r.provenance.source.clone(),
                            ago_s: now.duration_since(x).unwrap_or_default().as_secs(),
                        }),
                        None => Err(err),
                    },
                    None => Err(err),
                }
            }
        }
    }
}

impl<R: Resolve> CurrentCredentials for CredentialCache<R> {
    fn current(&self) -> Pin<Box<dyn Future<Output = Result<Credentials, SqsError>> + Send + '_>> {
        Box::pin(async move {
            self.get()
                .await
                .map(|r| r.creds)
                .map_err(|e| SqsError::Credentials(e.to_string()))
        })
    }

    fn redact(&self, text: &str) -> String {
        let s = self.state();
        let mut out = text.to_string();
        for c in s
            .entry
            .iter()
            .map(|e| &e.resolved.creds)
            .chain(s.previous.iter())
        {
            out = c.redact(&out);
        }
        if let Some(c) = &self.config.settings {
            out = c.redact(&out);
        }
        out
    }

    fn refused(&self) {
        self.invalidate();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::{Provenance, Source};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Hands out credentials `AKID<n>` living `life` (None: no expiry), or
    /// fails once `fail_after` calls were made.
    struct Fake {
        calls: Arc<AtomicUsize>,
        life: Option<Duration>,
        fail_after: usize,
    }

    impl Resolve for Fake {
        fn resolve(&self) -> impl Future<Output = Result<Resolved, CredentialsError>> + Send {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let life = self.life;
            let fail = n >= self.fail_after;
            async move {
                if fail {
                    return Err(CredentialsError::Failed {
                        provider: Source::Imds,
                        why: "down".into(),
                    });
                }
                Ok(Resolved {
                    creds: Credentials {
                        access_key_id: format!("AKID{n}"),
                        secret_access_key: format!("secret-number-{n}-abcdefgh"),
                        session_token: None,
                    },
                    expiry: life.map(|l| SystemTime::now() + l),
                    provenance: Provenance {
                        source: Source::Imds,
                        assumed_role: None,
                        identity: String::new(),
                    },
                })
            }
        }
    }

    fn cache(
        life: Option<Duration>,
        fail_after: usize,
    ) -> (CredentialCache<Fake>, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let cfg = ChainConfig {
            settings: None,
            region: "us-east-1".into(),
            timeout: Duration::from_secs(1),
            assume_role: None,
        };
        let fake = Fake {
            calls: calls.clone(),
            life,
            fail_after,
        };
        (CredentialCache::with_resolver(fake, cfg), calls)
    }

    fn run<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn role_credentials_are_kept_until_their_refresh_time() {
        let (c, calls) = cache(Some(Duration::from_secs(3600)), usize::MAX);
        run(async {
            let a = c.get().await.unwrap();
            c.start_drain();
            let b = c.get().await.unwrap();
            assert_eq!(a.creds, b.creds);
        });
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn credentials_inside_their_refresh_window_are_fetched_again() {
        // 1 s of life: the refresh time (halfway) is already near; after it, a new fetch.
        let (c, calls) = cache(Some(Duration::from_secs(1)), usize::MAX);
        run(async {
            let a = c.get().await.unwrap();
            std::thread::sleep(Duration::from_millis(600));
            let b = c.get().await.unwrap();
            assert_ne!(a.creds, b.creds);
        });
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn keys_without_expiry_are_read_again_each_drain_only() {
        let (c, calls) = cache(None, usize::MAX);
        run(async {
            c.get().await.unwrap();
            c.get().await.unwrap();
            assert_eq!(calls.load(Ordering::SeqCst), 1);
            c.start_drain();
            c.get().await.unwrap();
        });
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_failed_refresh_keeps_valid_credentials_and_holds_off() {
        let (c, calls) = cache(Some(Duration::from_secs(2)), 1);
        run(async {
            let a = c.get().await.unwrap();
            std::thread::sleep(Duration::from_millis(1100)); // past halfway, not expired
            let b = c.get().await.unwrap();
            assert_eq!(a.creds, b.creds);
            let _ = c.get().await.unwrap(); // held off: no third call
        });
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn expired_credentials_that_cannot_be_refreshed_say_so() {
        let (c, _) = cache(Some(Duration::from_millis(300)), 1);
        run(async {
            c.get().await.unwrap();
            std::thread::sleep(Duration::from_millis(400));
            let e = c.get().await.unwrap_err();
            assert!(matches!(e, CredentialsError::Expired { .. }), "{e}");
            assert!(e.to_string().contains("expired"), "{e}");
        });
    }

    #[test]
    fn refused_credentials_are_dropped_but_still_redacted() {
        let (c, calls) = cache(Some(Duration::from_secs(3600)), usize::MAX);
        run(async {
            let a = c.current().await.unwrap();
            c.refused();
            let b = c.current().await.unwrap();
            assert_ne!(a, b);
            let text = format!("{} and {}", a.secret_access_key, b.secret_access_key);
            let red = c.redact(&text);
            assert!(!red.contains("secret-number"), "{red}");
        });
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
