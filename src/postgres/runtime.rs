//! Async I/O inside a backend: one current-thread tokio runtime and one HTTP
//! client (connection pool) per backend, created on first use. Everything
//! runs on the backend's own thread, only while it waits in
//! `block_on_interruptible` (or `block_on_bounded`), except name lookups:
//! tokio runs getaddrinfo on short-lived helper threads, which block every
//! signal from their first instruction on (a signal PostgreSQL sends this
//! backend, a cancel or a latch wakeup, must reach the backend's thread).
//!
//! The receive pump (`sqs::pump`) is a task on this runtime: its calls stay in
//! flight and their replies land in the socket buffers while the backend
//! stores the previous batch through SPI, and it runs again at the next wait.
//! A dedicated I/O thread was tried (commit b8a21c6) and measured against this
//! in the same `scripts/bench` run: no difference in throughput or in latency
//! scaling (0.76 vs 0.78 of linear at 16 in flight), so the backend stays
//! single-threaded, as PostgreSQL expects.
//!
//! Futures are polled in short slices; between slices we check for
//! interrupts, so statement_timeout, pg_cancel_backend and
//! pg_terminate_backend take effect within about 0.1 s even while a request
//! is waiting on the network. Raising from an interrupt unwinds through here
//! and drops (or aborts) the futures, which closes their connections.

use std::future::Future;
use std::mem::ManuallyDrop;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use pgrx::pg_sys;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use fetch_etl_sqs::heartbeat::block_all_signals;
use fetch_etl_sqs::transport::{http_client, Guard, HttpTransport};
use fetch_etl_sqs::SqsError;

const SLICE: Duration = Duration::from_millis(100);

thread_local! {
    /// Never dropped: dropping a runtime waits for its helper threads, and a
    /// name lookup in one (getaddrinfo, up to the resolver's timeouts) would
    /// hold up the backend's exit, a pg_terminate_backend included. At exit
    /// the process takes its threads with it.
    static RUNTIME: ManuallyDrop<Runtime> = ManuallyDrop::new(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_start(block_all_signals)
        .build()
        .expect("a current-thread tokio runtime"));
    static HTTP: std::cell::OnceCell<Result<HttpTransport, SqsError>> = const { std::cell::OnceCell::new() };
    /// The hosts this backend checked against fetch_etl.allowed_endpoints.
    static GUARD: Arc<Guard> = Arc::new(Guard::default());
}

/// The backend's resolver guard (see `fetch_etl_sqs::transport::Guard`).
pub(crate) fn guard() -> Arc<Guard> {
    GUARD.with(Arc::clone)
}

/// The backend's HTTP transport (one connection pool per backend).
pub(crate) fn transport() -> Result<HttpTransport, SqsError> {
    HTTP.with(|h| {
        h.get_or_init(|| {
            RUNTIME.with(|rt| {
                let _guard = rt.enter();
                http_client(Duration::from_secs(5), guard()).map(HttpTransport::new)
            })
        })
        .clone()
    })
}

/// Runs `f` inside the backend's runtime (for constructors that take their
/// timers or HTTP client from it).
pub(crate) fn in_runtime<T>(f: impl FnOnce() -> T) -> T {
    RUNTIME.with(|rt| {
        let _guard = rt.enter();
        f()
    })
}

/// Runs `fut` to completion, checking for query cancellation between slices.
pub(crate) fn block_on_interruptible<F: Future>(fut: F) -> F::Output {
    RUNTIME.with(|rt| {
        // tokio::time::timeout needs the runtime's context when it is created.
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

/// How [`block_on_bounded`] ended.
pub(crate) enum Bounded<T> {
    Done(T),
    TimedOut,
    Interrupted,
}

/// True when a cancel or terminate is waiting to be processed. For code that
/// must not raise (after COMMIT): it stops instead, and the interrupt is
/// processed at the next CHECK_FOR_INTERRUPTS.
pub(crate) fn interrupt_pending() -> bool {
    // SAFETY: signal-handler flags, read whole.
    unsafe {
        std::ptr::read_volatile(&raw const pg_sys::InterruptPending) != 0
            && (std::ptr::read_volatile(&raw const pg_sys::ProcDiePending) != 0
                || std::ptr::read_volatile(&raw const pg_sys::QueryCancelPending) != 0)
    }
}

/// Runs `fut` for at most `limit`, stopping (without raising) within a slice
/// of a cancel or terminate: for work after COMMIT, where raising an error is
/// not allowed.
pub(crate) fn block_on_bounded<F: Future>(fut: F, limit: Duration) -> Bounded<F::Output> {
    RUNTIME.with(|rt| {
        let _guard = rt.enter();
        let deadline = tokio::time::Instant::now() + limit;
        let mut fut = pin!(fut);
        loop {
            let slice = SLICE.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            if let Ok(v) = rt.block_on(tokio::time::timeout(slice, fut.as_mut())) {
                return Bounded::Done(v);
            }
            if interrupt_pending() {
                return Bounded::Interrupted;
            }
            if tokio::time::Instant::now() >= deadline {
                return Bounded::TimedOut;
            }
        }
    })
}

/// A task on the backend's runtime, aborted if dropped before it finishes (an
/// error or a cancel unwinding past it).
pub(crate) struct Task<T>(Option<JoinHandle<T>>);

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

impl<T: Send + 'static> Task<T> {
    /// Waits for the task's result (interruptibly).
    pub(crate) fn join(mut self) -> T {
        let h = self.0.take().expect("joined once");
        block_on_interruptible(h).expect("the I/O task does not panic")
    }
}

/// Starts `fut` on the backend's runtime; it makes progress while the backend
/// waits in `block_on_interruptible`.
pub(crate) fn spawn<F>(fut: F) -> Task<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    RUNTIME.with(|rt| Task(Some(rt.spawn(fut))))
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use fetch_etl_sqs::heartbeat::blocked_signals;
    use pgrx::prelude::*;

    /// Every thread of the backend but its own blocks the signals
    /// PostgreSQL uses (SIGINT: cancel, SIGUSR1: procsignals, SIGURG: latch
    /// wakeups, SIGALRM: timeouts, SIGTERM): one that did not could take a
    /// cancel or a latch wakeup meant for the backend (SIGURG, which the
    /// backend blocks and reads from a signalfd, would be lost).
    #[pg_test]
    fn signals_never_reach_helper_threads() {
        // a name lookup starts one of tokio's helper threads
        let found = super::block_on_interruptible(tokio::net::lookup_host(("localhost", 1)))
            .map(|a| a.count())
            .unwrap_or(0);
        assert!(found > 0);
        let main = std::process::id().to_string();
        let mut helpers = 0;
        for task in std::fs::read_dir("/proc/self/task").unwrap() {
            let task = task.unwrap().file_name().into_string().unwrap();
            if task == main {
                continue;
            }
            helpers += 1;
            let blocked = blocked_signals(task.parse().unwrap()).unwrap();
            for sig in [2u32, 10, 14, 15, 23] {
                assert_ne!(
                    blocked & (1 << (sig - 1)),
                    0,
                    "thread {task} takes signal {sig}: {blocked:x}"
                );
            }
        }
        assert!(helpers > 0, "the lookup ran on a helper thread");
    }
}
