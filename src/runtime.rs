//! Async I/O inside a backend: one tokio runtime per backend, created on first
//! use, with one I/O worker thread, and one HTTP client (connection pool).
//!
//! Why a worker thread: the receive pump (`sqs::pump`) runs there, so
//! ReceiveMessage calls keep going while this backend's main thread stores the
//! previous batch through SPI. The worker thread (and tokio's blocking-pool
//! thread for DNS) block every signal, so PostgreSQL's signal handlers always
//! run on the main thread, and they only run Rust code: no PostgreSQL function
//! is ever called off the main thread (pgrx checks this).
//!
//! The main thread waits in short slices and checks for interrupts in
//! between, so statement_timeout, pg_cancel_backend and pg_terminate_backend
//! take effect within about 0.1 s even while waiting on the network. Raising
//! unwinds through here and drops (or aborts) the futures, closing their
//! connections.

use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use crate::sqs::client::http_client;
use crate::sqs::SqsError;

const SLICE: Duration = Duration::from_millis(100);

fn block_all_signals() {
    // SAFETY: manipulates only the calling (new) thread's signal mask.
    unsafe {
        let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigfillset(set.as_mut_ptr());
        libc::pthread_sigmask(libc::SIG_BLOCK, set.as_ptr(), std::ptr::null_mut());
    }
}

thread_local! {
    static RUNTIME: Runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(1)
        .thread_name("fetch_etl io")
        .on_thread_start(block_all_signals)
        .enable_all()
        .build()
        .expect("a tokio runtime");
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

/// Runs `fut` for at most `limit`, without checking for interrupts: for work
/// after COMMIT, where raising an error is not allowed.
pub fn block_on_within<F: Future>(fut: F, limit: Duration) -> Option<F::Output> {
    RUNTIME.with(|rt| {
        let _guard = rt.enter();
        rt.block_on(tokio::time::timeout(limit, fut)).ok()
    })
}

/// A task on the I/O thread, aborted if dropped before it finishes (an error
/// or a cancel unwinding past it).
pub struct Task<T>(Option<JoinHandle<T>>);

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

impl<T: Send + 'static> Task<T> {
    /// Waits for the task's result (interruptibly).
    pub fn join(mut self) -> T {
        let h = self.0.take().expect("joined once");
        block_on_interruptible(h).expect("the I/O task does not panic")
    }
}

/// Starts `fut` on the I/O thread.
pub fn spawn<F>(fut: F) -> Task<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    RUNTIME.with(|rt| Task(Some(rt.spawn(fut))))
}
