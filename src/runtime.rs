//! Async I/O inside a backend: one current-thread tokio runtime and one HTTP
//! client (connection pool) per backend, created on first use.
//!
//! Futures are polled in short slices; between slices we check for
//! interrupts, so statement_timeout, pg_cancel_backend and
//! pg_terminate_backend take effect within about 0.1 s even while a request
//! is waiting on the network. Raising from an interrupt unwinds through here
//! and drops the future, which closes its connections.

use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use tokio::runtime::Runtime;

use crate::sqs::client::http_client;
use crate::sqs::SqsError;

const SLICE: Duration = Duration::from_millis(100);

thread_local! {
    static RUNTIME: Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread tokio runtime");
    static HTTP: std::cell::OnceCell<Result<reqwest::Client, SqsError>> = const { std::cell::OnceCell::new() };
}

/// The backend's HTTP client.
pub fn http() -> Result<reqwest::Client, SqsError> {
    HTTP.with(|h| {
        h.get_or_init(|| {
            RUNTIME.with(|rt| {
                let _guard = rt.enter();
                http_client(Duration::from_secs(5))
            })
        })
        .clone()
    })
}

/// Runs `fut` to completion, checking for query cancellation between slices.
pub fn block_on_interruptible<F: Future>(fut: F) -> F::Output {
    RUNTIME.with(|rt| {
        let _guard = rt.enter();
        let mut fut = pin!(fut);
        loop {
            if let Ok(v) = rt.block_on(tokio::time::timeout(SLICE, fut.as_mut())) {
                return v;
            }
            pgrx::check_for_interrupts!();
        }
    })
}

/// Runs `fut` for at most `limit`, without checking for interrupts: for work
/// after COMMIT, where raising an error is not allowed.
pub fn block_on_within<F: Future>(fut: F, limit: Duration) -> Option<F::Output> {
    RUNTIME.with(|rt| {
        let _guard = rt.enter();
        rt.block_on(tokio::time::timeout(limit, fut)).ok()
    })
}
