//! Retries: which failures are worth another attempt, how long to wait first,
//! and how many retries one client may spend in all.
//!
//! Modelled on smithy-rs's standard retry strategy (aws-smithy-runtime):
//! - every failure falls into one named [`RetryClass`];
//! - waits are full-jitter exponential backoff, from a maintained RNG
//!   (fastrand, as smithy-rs uses), never shorter than a `Retry-After` the
//!   server sent (capped);
//! - a token bucket ([`RetryBudget`]) shared by all calls of one kind of one
//!   client: each retry spends tokens, successes earn some back, so a long
//!   drain against an endpoint that keeps failing stops retrying after about
//!   100 retries instead of retrying every call `max_attempts` times.

use std::sync::Mutex;
use std::time::Duration;

use super::{wire, SqsError};
use fetch_etl_core::settings;

/// What kind of failure an attempt ended in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryClass {
    /// The service asked us to slow down: HTTP 429 or a throttling error code.
    Throttling,
    /// The connection could not be made, broke, or timed out.
    TransientNetwork,
    /// The service failed: HTTP 5xx.
    Server,
    /// The request was refused for what it is (credentials, parameters, a
    /// missing queue, a reply over the size limit): the same request would be
    /// refused again.
    Client,
    /// A success status whose reply could not be read (truncated, or not the
    /// protocol's format): retried like a network error, since a reply cut
    /// short in transit looks exactly like this.
    MalformedReply,
}

impl RetryClass {
    /// The class of a client error.
    pub fn of(err: &SqsError) -> RetryClass {
        match err {
            SqsError::Service { status, code, .. } => {
                if *status == 429 || wire::is_throttling_code(code) {
                    RetryClass::Throttling
                } else if *status >= 500 {
                    RetryClass::Server
                } else {
                    RetryClass::Client
                }
            }
            SqsError::Connect { .. } | SqsError::Transport { .. } | SqsError::Timeout { .. } => {
                RetryClass::TransientNetwork
            }
            SqsError::Malformed(_) => RetryClass::MalformedReply,
            SqsError::InvalidQueueUrl { .. }
            | SqsError::InvalidConfig(_)
            | SqsError::Auth { .. }
            | SqsError::AccessDenied { .. }
            | SqsError::NoSuchQueue { .. }
            | SqsError::ResponseTooLarge { .. }
            | SqsError::Signing(_)
            | SqsError::Credentials(_) => RetryClass::Client,
        }
    }

    /// Worth another attempt.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            RetryClass::Throttling
                | RetryClass::TransientNetwork
                | RetryClass::Server
                | RetryClass::MalformedReply
        )
    }

    /// Tokens a retry of this class takes from the budget (smithy-rs: 5, and
    /// 10 for timeouts and broken connections, which cost the server more).
    fn cost(self) -> u32 {
        match self {
            RetryClass::TransientNetwork | RetryClass::MalformedReply => 10,
            _ => 5,
        }
    }
}

/// How a client retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per call, the first included (1 = no retry).
    pub max_attempts: u32,
    /// The first retry waits up to `2 * backoff_base`, then doubling...
    pub backoff_base: Duration,
    /// ... up to this.
    pub backoff_max: Duration,
    /// The longest `Retry-After` honoured (so never a longer wait than the
    /// backoff itself may reach).
    pub retry_after_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: settings::HTTP_MAX_ATTEMPTS.default as u32,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            retry_after_max: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// Full-jitter exponential backoff for retry number `retry` (1-based):
    /// uniform in [10%, 100%) of `min(base * 2^retry, max)`.
    pub fn backoff(&self, retry: u32, rng: &mut fastrand::Rng) -> Duration {
        let cap = self
            .backoff_base
            .saturating_mul(1u32 << retry.min(16))
            .min(self.backoff_max);
        cap.mul_f64(0.1 + 0.9 * rng.f64())
    }
}

/// A token bucket of retries, shared by every call of one client.
#[derive(Debug)]
pub struct RetryBudget {
    tokens: Mutex<u32>,
    capacity: u32,
}

impl RetryBudget {
    /// smithy-rs's default: 500 tokens, i.e. 100 ordinary retries.
    pub const DEFAULT_CAPACITY: u32 = 500;
    /// Earned back by a call that succeeded at its first attempt.
    const SUCCESS_REFUND: u32 = 1;

    pub fn new(capacity: u32) -> Self {
        RetryBudget {
            tokens: Mutex::new(capacity),
            capacity,
        }
    }

    pub fn available(&self) -> u32 {
        *self.tokens.lock().expect("not poisoned")
    }

    fn try_spend(&self, n: u32) -> bool {
        let mut t = self.tokens.lock().expect("not poisoned");
        if *t >= n {
            *t -= n;
            true
        } else {
            false
        }
    }

    fn refund(&self, n: u32) {
        let mut t = self.tokens.lock().expect("not poisoned");
        *t = (*t + n).min(self.capacity);
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget::new(Self::DEFAULT_CAPACITY)
    }
}

/// Why a call stopped retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    NotRetryable,
    OutOfAttempts,
    OutOfBudget,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    RetryAfter(Duration),
    GiveUp(GiveUp),
}

/// The retry state of one call.
pub struct Attempts<'a> {
    policy: &'a RetryPolicy,
    budget: &'a RetryBudget,
    /// Attempts made so far.
    made: u32,
    /// Tokens the last retry took (refunded if it succeeds).
    last_cost: u32,
}

impl<'a> Attempts<'a> {
    /// Before the first attempt.
    pub fn new(policy: &'a RetryPolicy, budget: &'a RetryBudget) -> Self {
        Attempts {
            policy,
            budget,
            made: 1,
            last_cost: 0,
        }
    }

    /// The attempt just made failed with `class` (and the server may have
    /// said `Retry-After`): retry after a wait, or give up.
    pub fn after_failure(
        &mut self,
        class: RetryClass,
        retry_after: Option<Duration>,
        rng: &mut fastrand::Rng,
    ) -> Decision {
        if !class.is_retryable() {
            return Decision::GiveUp(GiveUp::NotRetryable);
        }
        if self.made >= self.policy.max_attempts {
            return Decision::GiveUp(GiveUp::OutOfAttempts);
        }
        let cost = class.cost();
        if !self.budget.try_spend(cost) {
            return Decision::GiveUp(GiveUp::OutOfBudget);
        }
        self.last_cost = cost;
        let mut wait = self.policy.backoff(self.made, rng);
        if let Some(after) = retry_after {
            wait = wait.max(after.min(self.policy.retry_after_max));
        }
        self.made += 1;
        Decision::RetryAfter(wait)
    }

    /// The attempt just made succeeded.
    pub fn succeeded(&self) {
        if self.made == 1 {
            self.budget.refund(RetryBudget::SUCCESS_REFUND);
        } else {
            self.budget.refund(self.last_cost);
        }
    }

    /// Attempts made so far.
    pub fn made(&self) -> u32 {
        self.made
    }
}

/// A `Retry-After` header value in seconds (the HTTP-date form is ignored).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(status: u16, code: &str) -> SqsError {
        SqsError::Service {
            status,
            code: code.into(),
            message: String::new(),
        }
    }

    #[test]
    fn retry_classes() {
        let s = service;
        assert!(RetryClass::of(&s(500, "InternalError")).is_retryable());
        assert!(RetryClass::of(&s(503, "ServiceUnavailable")).is_retryable());
        assert!(RetryClass::of(&s(400, "ThrottlingException")).is_retryable());
        assert!(RetryClass::of(&s(400, "AWS.SimpleQueueService.RequestThrottled")).is_retryable());
        assert!(!RetryClass::of(&s(400, "InvalidParameterValue")).is_retryable());
        assert!(!RetryClass::of(&SqsError::Auth {
            code: "x".into(),
            message: "y".into()
        })
        .is_retryable());
        assert!(RetryClass::of(&SqsError::Timeout {
            endpoint: "e".into(),
            seconds: 1
        })
        .is_retryable());
    }

    #[test]
    fn every_error_has_its_named_class() {
        use RetryClass::*;
        let cases = [
            (service(429, "Whatever"), Throttling),
            (service(400, "SlowDown"), Throttling),
            (service(503, "ThrottlingException"), Throttling),
            (service(502, "HTTP502"), Server),
            (service(404, "UnknownOperation"), Client),
            (
                SqsError::Connect {
                    endpoint: "e".into(),
                    detail: "refused".into(),
                },
                TransientNetwork,
            ),
            (
                SqsError::Transport {
                    endpoint: "e".into(),
                    detail: "reset".into(),
                },
                TransientNetwork,
            ),
            (SqsError::Malformed("x".into()), MalformedReply),
            (SqsError::ResponseTooLarge { limit: 1 }, Client),
            (
                SqsError::NoSuchQueue {
                    code: "c".into(),
                    message: "m".into(),
                },
                Client,
            ),
            (
                SqsError::AccessDenied {
                    code: "c".into(),
                    message: "m".into(),
                },
                Client,
            ),
            (SqsError::Signing("x".into()), Client),
            (SqsError::Credentials("x".into()), Client),
        ];
        for (err, class) in cases {
            assert_eq!(RetryClass::of(&err), class, "{err:?}");
        }
        assert!(MalformedReply.is_retryable());
        assert!(!Client.is_retryable());
    }

    fn policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn backoff_grows_with_full_jitter_and_is_capped() {
        let p = RetryPolicy::default();
        let mut rng = fastrand::Rng::with_seed(7);
        for retry in 1..=20 {
            let cap = Duration::from_millis(100 * (1u64 << retry.min(16))).min(p.backoff_max);
            for _ in 0..200 {
                let d = p.backoff(retry, &mut rng);
                assert!(
                    d >= cap.mul_f64(0.1) && d < cap,
                    "retry {retry}: {d:?} vs cap {cap:?}"
                );
            }
        }
        // jitter: not every wait is the same
        let waits: Vec<Duration> = (0..20).map(|_| p.backoff(3, &mut rng)).collect();
        assert!(waits.windows(2).any(|w| w[0] != w[1]));
        // same seed, same waits (the RNG is the crate's, not the clock)
        let a: Vec<_> = (1..5)
            .map(|r| p.backoff(r, &mut fastrand::Rng::with_seed(1)))
            .collect();
        let b: Vec<_> = (1..5)
            .map(|r| p.backoff(r, &mut fastrand::Rng::with_seed(1)))
            .collect();
        assert_eq!(a, b);
    }

    #[test]
    fn gives_up_on_client_errors_at_once() {
        let (p, b) = (policy(5), RetryBudget::default());
        let mut a = Attempts::new(&p, &b);
        let mut rng = fastrand::Rng::with_seed(1);
        assert_eq!(
            a.after_failure(RetryClass::Client, None, &mut rng),
            Decision::GiveUp(GiveUp::NotRetryable)
        );
        assert_eq!(
            b.available(),
            RetryBudget::DEFAULT_CAPACITY,
            "nothing spent"
        );
    }

    #[test]
    fn max_attempts_counts_the_first() {
        let (p, b) = (policy(3), RetryBudget::default());
        let mut a = Attempts::new(&p, &b);
        let mut rng = fastrand::Rng::with_seed(1);
        assert!(matches!(
            a.after_failure(RetryClass::Server, None, &mut rng),
            Decision::RetryAfter(_)
        ));
        assert!(matches!(
            a.after_failure(RetryClass::Throttling, None, &mut rng),
            Decision::RetryAfter(_)
        ));
        assert_eq!(a.made(), 3);
        assert_eq!(
            a.after_failure(RetryClass::Server, None, &mut rng),
            Decision::GiveUp(GiveUp::OutOfAttempts)
        );
        let one = policy(1);
        assert_eq!(
            Attempts::new(&one, &b).after_failure(RetryClass::Server, None, &mut rng),
            Decision::GiveUp(GiveUp::OutOfAttempts)
        );
    }

    #[test]
    fn retry_after_is_a_floor_and_capped() {
        let (p, b) = (policy(5), RetryBudget::default());
        let mut rng = fastrand::Rng::with_seed(1);
        let mut a = Attempts::new(&p, &b);
        assert_eq!(
            a.after_failure(
                RetryClass::Throttling,
                Some(Duration::from_secs(3)),
                &mut rng
            ),
            Decision::RetryAfter(Duration::from_secs(3))
        );
        assert_eq!(
            a.after_failure(
                RetryClass::Throttling,
                Some(Duration::from_secs(3600)),
                &mut rng
            ),
            Decision::RetryAfter(p.retry_after_max)
        );
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2026 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }

    #[test]
    fn the_budget_is_shared_spent_and_earned_back() {
        let p = policy(20);
        let b = RetryBudget::new(20);
        let mut rng = fastrand::Rng::with_seed(1);
        // two network retries (10 each) empty a 20-token budget...
        let mut a = Attempts::new(&p, &b);
        assert!(matches!(
            a.after_failure(RetryClass::TransientNetwork, None, &mut rng),
            Decision::RetryAfter(_)
        ));
        let mut other_call = Attempts::new(&p, &b);
        assert!(matches!(
            other_call.after_failure(RetryClass::TransientNetwork, None, &mut rng),
            Decision::RetryAfter(_)
        ));
        assert_eq!(b.available(), 0);
        // ...so a third call gives up although it has attempts left
        let mut third = Attempts::new(&p, &b);
        assert_eq!(
            third.after_failure(RetryClass::Server, None, &mut rng),
            Decision::GiveUp(GiveUp::OutOfBudget)
        );
        // a retry that succeeds gives its tokens back; a first-try success earns 1
        a.succeeded();
        assert_eq!(b.available(), 10);
        Attempts::new(&p, &b).succeeded();
        assert_eq!(b.available(), 11);
        // never above capacity
        for _ in 0..100 {
            Attempts::new(&p, &b).succeeded();
        }
        assert_eq!(b.available(), 20);
    }
}
