//! The backend's side of the visibility heartbeat
//! (`fetch_etl_sqs::heartbeat`): one thread per backend, started by the
//! first drain that needs it, and transaction callbacks that end its holds.
//!
//! In the transaction callbacks (`xact.rs`):
//! - COMMIT: the deletes (`deletes.rs`) first, then the holds end, so that
//!   messages stay hidden until they are deleted; PREPARE: the holds end.
//! - ROLLBACK: the holds end, and with `fetch_etl.visibility_on_rollback`
//!   set when the drain ran, the thread makes the messages visible again.
//! - ROLLBACK TO SAVEPOINT: the same, for the holds made inside it.
//!
//! The callbacks only update the shared registry: they never wait for the
//! network and never raise. A backend that exits gives the thread up to
//! [`EXIT_WAIT`] to send a rollback's hand-backs.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgrx::pg_sys;
use pgrx::prelude::*;

use fetch_etl_core::settings as defs;
use fetch_etl_sqs::heartbeat::{Ended, Heartbeat, HeldQueue, Stats, MAX_HELD_BYTES};
use fetch_etl_sqs::transport::{http_client, HttpTransport};
use fetch_etl_sqs::{Client, Message};

use super::runtime;
use super::settings;

/// How long an exiting backend waits for its rollback's hand-backs.
const EXIT_WAIT: Duration = Duration::from_secs(1);

type Thread = Heartbeat<HttpTransport>;

thread_local! {
    static HEARTBEAT: RefCell<Option<Arc<Thread>>> = const { RefCell::new(None) };
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
    /// Heartbeat threads of this backend found ended and replaced (for the
    /// COMMIT's report).
    static DEAD_THREADS: Cell<u32> = const { Cell::new(0) };
}

/// One drain's holds.
#[derive(Clone)]
pub(crate) struct Holds {
    thread: Arc<Thread>,
    queue: Arc<HeldQueue<HttpTransport>>,
    /// The (sub)transaction the drain runs in.
    scope: u32,
}

impl Holds {
    /// What the receive pump calls with every reply: holds its messages
    /// from when the call was made until the (sub)transaction ends.
    pub(crate) fn on_receive(&self) -> impl Fn(&[Message], Instant) + Send + Sync + 'static {
        let this = self.clone();
        move |msgs, asked_at| this.thread.hold(&this.queue, msgs, asked_at, this.scope)
    }

    /// Stops holding messages left in the queue for a later drain.
    pub(crate) fn forget(&self, message_ids: &HashSet<String>) {
        self.thread.forget(&self.queue, message_ids);
    }

    /// The registry is full (`budget::MAX_HELD_BYTES`): stop receiving.
    pub(crate) fn full(&self) -> bool {
        self.thread.full()
    }
}

/// The holds of a drain of `client`'s queue, or None when the settings ask
/// for neither extensions nor hand-backs. `credentials`: what the drain signs
/// with now (the thread keeps this snapshot). If the thread cannot start,
/// the drain goes on without it, with a WARNING.
pub(crate) fn for_drain(client: &Client, visibility_timeout: Option<i32>) -> Option<Holds> {
    let rules = settings::hold_rules();
    if !rules.active() {
        return None;
    }
    let thread = thread()?;
    let credentials = match runtime::block_on_interruptible(client.credentials()) {
        Ok(c) => c,
        Err(_) => return None, // the drain's first call reports it
    };
    let timeout = visibility_timeout.and_then(|v| u32::try_from(v).ok());
    let queue = thread.queue(client, credentials, timeout, rules);
    Some(Holds {
        thread,
        queue,
        scope: current_subxact(),
    })
}

/// The backend's heartbeat thread, started on first use, and again by the
/// next drain should it have ended (its holds ended with it: a WARNING says
/// so at COMMIT, as for any message that became visible).
fn thread() -> Option<Arc<Thread>> {
    if let Some(t) = HEARTBEAT.with(|h| h.borrow().clone()) {
        if t.alive() {
            return Some(t);
        }
        HEARTBEAT.with(|h| *h.borrow_mut() = None);
        DEAD_THREADS.with(|d| d.set(d.get() + 1));
    }
    let guard = runtime::guard();
    let timeout = settings::http_timeout();
    // The callbacks first: holds must never outlive their transaction.
    register_callbacks();
    match Heartbeat::start(move || http_client(timeout, guard).map(HttpTransport::new)) {
        Ok(t) => {
            let t = Arc::new(t);
            HEARTBEAT.with(|h| *h.borrow_mut() = Some(t.clone()));
            Some(t)
        }
        Err(_) => {
            pgrx::warning!(
                "fetch_etl: could not start the visibility heartbeat; this drain's messages become visible to other consumers after their visibility timeout, as with {} = 0",
                defs::VISIBILITY_EXTENSION_LIMIT.name_str()
            );
            None
        }
    }
}

/// The thread's kernel id (for the tests of its signal mask), if it runs.
#[cfg(any(test, feature = "pg_test"))]
pub(crate) fn thread_id() -> Option<i64> {
    HEARTBEAT.with(|h| h.borrow().as_ref().map(|t| t.thread_id()))
}

/// Messages held now (for tests).
#[cfg(any(test, feature = "pg_test"))]
pub(crate) fn held() -> usize {
    HEARTBEAT.with(|h| h.borrow().as_ref().map_or(0, |t| t.held()))
}

fn current_subxact() -> u32 {
    // SAFETY: reads the current subtransaction id.
    unsafe { pg_sys::GetCurrentSubTransactionId() }
}

fn register_callbacks() {
    super::xact::register();
    if REGISTERED.with(|r| r.get()) {
        return;
    }
    // SAFETY: a permanent callback with static lifetime, registered once per
    // backend (the flag is set only once it is).
    unsafe { pg_sys::on_proc_exit(Some(on_exit), pg_sys::Datum::from(0)) };
    REGISTERED.with(|r| r.set(true));
}

/// Runs `f` on the heartbeat, if there is one; nothing escapes.
fn with_thread(f: impl FnOnce(&Thread)) {
    let _ = std::panic::catch_unwind(AssertUnwindSafe(|| {
        if let Some(t) = HEARTBEAT.with(|h| h.borrow().clone()) {
            f(&t);
        }
    }));
}

/// After COMMIT (or PREPARE) and the deletes that follow it (`xact.rs`):
/// the holds end, and a WARNING says if some held messages may have been
/// visible to other consumers before `committed_at`. Holding them until the
/// deletes are done keeps a message from becoming visible, and received by
/// another consumer, between the COMMIT and its delete: SQS would then
/// honour only that consumer's newer receipt handle, and the delete would
/// not take. Never raises.
pub(crate) fn at_commit(committed_at: Instant) {
    with_thread(|t| {
        let ended = t.end_as_of(None, false, committed_at);
        report(ended, t.take_stats());
    });
    let replaced = DEAD_THREADS.with(|d| d.replace(0));
    if replaced > 0 {
        pgrx::warning!(
            "fetch_etl: the visibility heartbeat had stopped and was started again; messages an earlier drain of this transaction held were not kept hidden past their visibility timeout"
        );
    }
}

/// ROLLBACK (None) or ROLLBACK TO SAVEPOINT of subtransaction `from`: the
/// holds made there end, handed back if their drain asked. Never raises.
pub(crate) fn at_abort(from: Option<pg_sys::SubTransactionId>) {
    with_thread(|t| {
        t.end(from, true);
        if from.is_none() {
            t.take_stats();
        }
    });
}

#[pg_guard]
unsafe extern "C-unwind" fn on_exit(_code: std::ffi::c_int, _arg: pg_sys::Datum) {
    with_thread(|t| {
        t.wait_idle(EXIT_WAIT);
    });
}

/// After a COMMIT: say so if some held messages may have been visible to
/// other consumers before it (their visibility had ended as far as the
/// thread knows), and why.
fn report(ended: Ended, stats: Stats) {
    if ended.exposed > 0 {
        pgrx::warning!(
            "fetch_etl: {} of the {} messages this transaction drained had become visible to other consumers before its COMMIT (held longer than {}, or an extension failed {} times); the ledger still loads each message once",
            ended.exposed,
            ended.holds,
            defs::VISIBILITY_EXTENSION_LIMIT.name_str(),
            stats.refused + stats.failed
        );
    }
    if stats.lookups_failed > 0 {
        pgrx::warning!(
            "fetch_etl: could not read the queue's visibility timeout (GetQueueAttributes failed {} times), so the messages this transaction drained were not kept hidden past it",
            stats.lookups_failed
        );
    }
    if stats.not_held > 0 {
        pgrx::warning!(
            "fetch_etl: {} messages this transaction drained were not kept hidden past their visibility timeout: one backend holds at most {} MiB of receipt handles",
            stats.not_held,
            MAX_HELD_BYTES >> 20
        );
    }
    if stats.panics > 0 {
        pgrx::warning!(
            "fetch_etl: the visibility heartbeat skipped {} rounds that failed unexpectedly; some messages may not have been kept hidden",
            stats.panics
        );
    }
    if stats.held_again > 0 {
        pgrx::debug1!(
            "fetch_etl: {} held messages were received again (their newest receipt handle is used)",
            stats.held_again
        );
    }
    if stats.extended > 0 {
        pgrx::debug1!(
            "fetch_etl: extended the visibility of held messages {} times",
            stats.extended
        );
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;
    use fetch_etl_sqs::heartbeat::blocked_signals;
    use fetch_etl_sqs::{ClientConfig, Credentials, QueueRef};

    fn client() -> Client {
        let creds = Credentials {
            access_key_id: "k".into(),
            secret_access_key: "s".into(),
            session_token: None,
        };
        Client::new(
            runtime::transport().unwrap(),
            ClientConfig::default(),
            Arc::new(creds),
            "us-east-1".into(),
            QueueRef::parse("http://127.0.0.1:9/000000000000/q", None).unwrap(),
            None,
        )
    }

    /// PostgreSQL's signal handlers must run on the backend's thread: the
    /// heartbeat thread, started inside a backend, blocks the signals
    /// PostgreSQL uses (SIGINT cancel, SIGUSR1 procsignal, SIGALRM timeouts,
    /// SIGTERM; SIGURG, the latch wakeup, which the backend itself blocks and
    /// reads from a signalfd, so a thread that took it would lose it), and
    /// the backend's thread takes the others.
    #[pg_test]
    fn the_heartbeat_thread_blocks_every_signal() {
        drop(for_drain(&client(), Some(30)).expect("the heartbeat is on by default"));
        let theirs = blocked_signals(thread_id().unwrap()).unwrap();
        let ours = blocked_signals(std::process::id() as i64).unwrap();
        for sig in [2u32, 10, 14, 15, 23] {
            assert_ne!(theirs & (1 << (sig - 1)), 0, "signal {sig}: {theirs:x}");
        }
        for sig in [2u32, 10, 14, 15] {
            assert_eq!(ours & (1 << (sig - 1)), 0, "signal {sig}: {ours:x}");
        }
    }

    #[pg_test]
    fn a_rolled_back_subtransaction_ends_the_holds_made_in_it() {
        let msg = |id: &str| Message {
            message_id: id.into(),
            receipt_handle: format!("h-{id}"),
            ..Message::default()
        };
        let holds = for_drain(&client(), Some(30)).unwrap();
        holds.on_receive()(&[msg("a"), msg("b")], Instant::now());
        let r = crate::postgres::spi::in_subxact(AssertUnwindSafe(|| {
            // a drain inside the savepoint (on_error => 'record')
            let inner = for_drain(&client(), Some(30)).unwrap();
            inner.on_receive()(&[msg("c"), msg("d"), msg("e")], Instant::now());
            assert_eq!(held(), 5);
            Spi::run("SELECT 1/0")
        }));
        assert!(r.is_err());
        assert_eq!(held(), 2);
        // the test's transaction is rolled back by the framework: those end too
    }
}
