//! The visibility heartbeat: keeps the messages a drain holds until its
//! COMMIT hidden from other consumers, and hands them back on a rollback
//! when asked to.
//!
//! A drain deletes its messages only after its transaction commits. Until
//! then SQS keeps them hidden for their visibility timeout; a transaction
//! that lasts longer (a slow trigger on the target, a large drain, work after
//! the drain in the same transaction) would let another consumer receive
//! them meanwhile. The ledger still loads each message once, but the other
//! consumer waits for this transaction's ledger rows and counts duplicates.
//!
//! The backend cannot extend the timeouts itself: while it runs SQL, or sits
//! idle in a transaction, no Rust code of ours runs. So one thread per
//! backend does it:
//! - it never calls into PostgreSQL, and it blocks every signal (PostgreSQL's
//!   signal handlers must run on the backend's own thread);
//! - it has its own current-thread tokio runtime and HTTP connections, and
//!   signs with a snapshot of the drain's credentials;
//! - it shares only a mutex-guarded registry of held messages with the
//!   backend, which adds holds as replies arrive and ends them at COMMIT,
//!   ROLLBACK and ROLLBACK TO SAVEPOINT, without ever waiting for the
//!   network; the lock is never held across I/O, and each round of calls is
//!   bounded ([`MAX_CALLS_PER_ROUND`]), so hand-backs never wait long.
//!
//! The parts:
//! - [`policy`]: when to extend ([`next_step`]: once half of a message's
//!   visibility timeout is left, ask for the timeout again, at least
//!   [`MIN_EXTENSION`], until the message has been hidden for
//!   `fetch_etl.visibility_extension_limit`, at most SQS's 12 hours), the
//!   backoff, and the bounds of a looked-up timeout;
//! - `registry`: the holds (one per message, with its newest receipt
//!   handle), what a round should send and what its replies came to;
//! - `thread`: the thread itself, which no panic ends.
//!
//! A queue's own timeout is looked up (GetQueueAttributes) only for messages
//! held longer than [`LOOKUP_AFTER`], so short drains cost nothing. Bounds:
//! at most [`MAX_HELD_BYTES`] of holds (more are not extended, and counted);
//! a call refused for what it is (credentials expired, access denied) stops
//! its queue's extensions; failed calls back off up to [`MAX_BACKOFF`].

mod policy;
mod registry;
#[cfg(test)]
mod testing;
mod thread;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use policy::{
    next_step, queue_timeout, Step, LOOKUP_AFTER, MAX_BACKOFF, MAX_HIDDEN, MIN_EXTENSION,
};
pub use registry::{MAX_CALLS_PER_ROUND, MAX_HELD_BYTES};
pub use thread::{block_all_signals, blocked_signals};

use super::transport::Transport;
use super::{Client, Message, SqsError};
use registry::{State, HOLD_OVERHEAD};

/// What a queue URL may cost a hold (its copy in the registry's index);
/// longer URLs are rare (a queue name is at most 80 characters).
const MAX_QUEUE_URL_BYTES: usize = 512;

/// How one drain's holds behave, from the settings when it ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldRules {
    /// `fetch_etl.visibility_extension_limit` (zero: never extend).
    pub limit: Duration,
    /// `fetch_etl.visibility_on_rollback`: the timeout handed back messages
    /// get (None: leave them as they are).
    pub on_rollback: Option<u32>,
    /// The least an extension asks for ([`MIN_EXTENSION`]; tests use less).
    pub floor: Duration,
}

impl HoldRules {
    /// Whether holds with these rules need the heartbeat at all.
    pub fn active(&self) -> bool {
        !self.limit.is_zero() || self.on_rollback.is_some()
    }
}

/// One drain's queue, as the heartbeat thread calls it.
pub struct HeldQueue<T> {
    client: Client<T>,
    /// The drain's `visibility_timeout`, if it gave one (at most SQS's 12
    /// hours: the drain's arguments are checked).
    timeout: Option<Duration>,
    rules: HoldRules,
}

impl<T> HeldQueue<T> {
    fn new(client: Client<T>, timeout: Option<u32>, rules: HoldRules) -> Self {
        HeldQueue {
            client,
            timeout: timeout.map(|s| Duration::from_secs(s as u64).min(MAX_HIDDEN)),
            rules,
        }
    }
}

/// What the thread did since the last [`Heartbeat::take_stats`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Messages whose visibility was extended (once per extension).
    pub extended: u64,
    /// Messages SQS refused to extend (no longer in flight, bad handle), or
    /// whose queue refused a call for what it was (expired credentials).
    pub refused: u64,
    /// Extension calls that failed after the client's retries (tried again).
    pub failed: u64,
    /// Messages handed back on a rollback, and hand-backs that failed.
    pub handed_back: u64,
    pub hand_back_failed: u64,
    /// Queue timeout lookups that failed: those holds were not extended.
    pub lookups_failed: u64,
    /// Holds refused because the registry was at [`MAX_HELD_BYTES`].
    pub not_held: u64,
    /// Messages received again while held (their visibility had lapsed, or
    /// SQS delivered them twice): their hold took the newer receipt handle.
    pub held_again: u64,
    /// Rounds of the thread that panicked (and were skipped).
    pub panics: u64,
}

/// What ended holds had come to, for the COMMIT's report.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    pub holds: u64,
    /// Holds whose visibility had ended (as far as the thread knows, which
    /// errs early) before they were ended: other consumers could have
    /// received them.
    pub exposed: u64,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    /// Wakes the thread (new work, stop).
    wake: Condvar,
    /// Wakes [`Heartbeat::wait_idle`].
    idle: Condvar,
    /// The thread runs (false once it has ended, for whatever reason).
    alive: AtomicBool,
}

impl<T> Shared<T> {
    /// The registry; a panic elsewhere never makes it unusable.
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The heartbeat thread of one backend, and its registry.
pub struct Heartbeat<T: Transport + Clone + 'static> {
    shared: Arc<Shared<T>>,
    transport: T,
    thread_id: i64,
}

impl<T: Transport + Clone + 'static> Heartbeat<T> {
    /// Starts the thread, with every signal blocked; `make` builds its
    /// transport inside its runtime. Waits (at most 5 s) until it runs.
    pub fn start(
        make: impl FnOnce() -> Result<T, SqsError> + Send + 'static,
    ) -> Result<Self, SqsError> {
        let shared: Arc<Shared<T>> = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            idle: Condvar::new(),
            alive: AtomicBool::new(true),
        });
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let s = shared.clone();
        // Detached: the thread ends when told to (drop) or with the process.
        let _detached: JoinHandle<()> = thread::spawn_with_signals_blocked(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    s.alive.store(false, Ordering::SeqCst);
                    let _ = ready_tx.send(Err(SqsError::InvalidConfig(format!(
                        "visibility heartbeat runtime: {e}"
                    ))));
                    return;
                }
            };
            let transport = {
                let _guard = rt.enter();
                make()
            };
            match transport {
                Ok(t) => {
                    let _ = ready_tx.send(Ok((t, thread::current_thread_id())));
                    thread::run(&s, &rt);
                }
                Err(e) => {
                    s.alive.store(false, Ordering::SeqCst);
                    let _ = ready_tx.send(Err(e));
                }
            }
        })
        .map_err(|e| SqsError::InvalidConfig(format!("visibility heartbeat thread: {e}")))?;
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok((transport, thread_id))) => Ok(Heartbeat {
                shared,
                transport,
                thread_id,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                shared.lock().stop = true;
                Err(SqsError::InvalidConfig(
                    "the visibility heartbeat thread did not start".into(),
                ))
            }
        }
    }

    /// The kernel's id of the thread (for checks of its signal mask).
    pub fn thread_id(&self) -> i64 {
        self.thread_id
    }

    /// Whether the thread still runs. One that ended (it should not: no
    /// panic ends it) extends nothing: the backend starts another.
    pub fn alive(&self) -> bool {
        self.shared.alive.load(Ordering::SeqCst)
    }

    /// Tells the thread to stop after its current round; never waits (a
    /// backend exiting must not wait for the network).
    pub fn stop(&self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_one();
    }

    /// One drain's queue for the thread: `client` rebound to the thread's
    /// transport and to `credentials` (a snapshot: the thread never resolves
    /// credentials itself).
    pub fn queue<U: Transport>(
        &self,
        client: &Client<U>,
        credentials: super::Credentials,
        timeout: Option<u32>,
        rules: HoldRules,
    ) -> Arc<HeldQueue<T>> {
        Arc::new(HeldQueue::new(
            client.rebind(self.transport.clone(), Arc::new(credentials)),
            timeout,
            rules,
        ))
    }

    /// Holds `msgs`, received by a call made at `hidden_since`, in
    /// subtransaction `scope`, until [`Heartbeat::end`] or
    /// [`Heartbeat::forget`]; a message held already takes the newer
    /// receipt handle. Never waits but for the registry's lock.
    pub fn hold(
        &self,
        queue: &Arc<HeldQueue<T>>,
        msgs: &[Message],
        hidden_since: Instant,
        scope: u32,
    ) {
        if msgs.is_empty() {
            return;
        }
        let mut st = self.shared.lock();
        let due = st.hold(queue, msgs, hidden_since, scope);
        let wake = st.sleeping_until.is_none_or(|at| due < at);
        drop(st);
        if wake {
            self.shared.wake.notify_one();
        }
    }

    /// Stops holding the messages of `queue` with these ids (left for a
    /// later drain).
    pub fn forget(&self, queue: &Arc<HeldQueue<T>>, message_ids: &HashSet<String>) {
        if message_ids.is_empty() {
            return;
        }
        self.shared.lock().forget(queue, message_ids.iter());
    }

    /// Ends the holds made in subtransaction `from_scope` or later (None:
    /// all). `hand_back`: the transaction (or subtransaction) rolled back, so
    /// messages whose rules say so are made visible again, by the thread,
    /// without waiting here.
    pub fn end(&self, from_scope: Option<u32>, hand_back: bool) -> Ended {
        self.end_as_of(from_scope, hand_back, Instant::now())
    }

    /// [`Heartbeat::end`], counting as exposed the holds whose visibility
    /// had ended by `as_of` (a COMMIT ends its holds only once its deletes
    /// are done, but what matters is whether they were hidden until then).
    pub fn end_as_of(&self, from_scope: Option<u32>, hand_back: bool, as_of: Instant) -> Ended {
        let mut st = self.shared.lock();
        let ended = st.end(from_scope, hand_back, as_of);
        let handed = !st.hand_backs.is_empty();
        drop(st);
        if handed {
            self.shared.wake.notify_one();
        }
        ended
    }

    /// Number of messages held now.
    pub fn held(&self) -> usize {
        self.shared.lock().holds.len()
    }

    /// Whether the registry is full: a drain stops receiving then.
    pub fn full(&self) -> bool {
        self.shared.lock().held_bytes
            + HOLD_OVERHEAD
            + fetch_etl_core::budget::MAX_RECEIPT_HANDLE_BYTES
            + 2 * fetch_etl_core::budget::MAX_MESSAGE_ID_BYTES
            + MAX_QUEUE_URL_BYTES
            > MAX_HELD_BYTES
    }

    /// What the thread did since the last call.
    pub fn take_stats(&self) -> Stats {
        std::mem::take(&mut self.shared.lock().stats)
    }

    /// Waits, at most `limit`, until every hand-back has been sent (not for
    /// extensions in flight); true if it was. (A backend about to exit gives
    /// its rollback's hand-backs this long.) False at once if the thread has
    /// ended.
    pub fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut st = self.shared.lock();
        loop {
            if st.hand_backs.is_empty() && !st.handing_back {
                return true;
            }
            if !self.alive() {
                return false;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = self
                .shared
                .idle
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl<T: Transport + Clone + 'static> Drop for Heartbeat<T> {
    /// Tells the thread to stop after its current round; never waits.
    fn drop(&mut self) {
        self.stop();
    }
}
