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
//! When to extend is [`next_step`]: once half of a message's visibility
//! timeout is left, ask for the timeout again, but for at least
//! [`MIN_EXTENSION`] (ChangeMessageVisibility counts from the call), until
//! the message has been hidden for the limit
//! (`fetch_etl.visibility_extension_limit`, at most SQS's 12 hours). A
//! queue's own timeout is looked up (GetQueueAttributes) only for messages
//! held longer than [`LOOKUP_AFTER`], so short drains cost nothing.
//!
//! Bounds: at most [`MAX_HELD_BYTES`] of holds (more are not extended, and
//! counted); a call refused for what it is (credentials expired, access
//! denied) stops its queue's extensions; failed calls back off up to
//! [`MAX_BACKOFF`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};

use super::retry::RetryClass;
use super::transport::Transport;
use super::wire::BatchAction;
use super::{Client, Message, SqsError};
use crate::args::MAX_VISIBILITY_TIMEOUT;

/// The longest SQS keeps a received message hidden, extensions included.
pub const MAX_HIDDEN: Duration = Duration::from_secs(MAX_VISIBILITY_TIMEOUT as u64);
/// The least an extension asks for: a drain with a 1-second timeout would
/// otherwise call twice a second per ten messages for as long as it holds
/// them.
pub const MIN_EXTENSION: Duration = Duration::from_secs(10);
/// Messages held this long (with no timeout given to the drain) make the
/// thread look up their queue's visibility timeout.
pub const LOOKUP_AFTER: Duration = Duration::from_millis(500);
/// How long a looked-up visibility timeout is used before it is read again.
const LOOKUP_TTL: Duration = Duration::from_secs(60);
/// The first wait after a failed call or lookup; it doubles up to
/// [`MAX_BACKOFF`].
const RETRY_AFTER: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The thread looks at its holds at least this often while it has any.
const TICK: Duration = Duration::from_millis(250);
/// Batch calls in flight at once, and at most per round (hand-backs first).
const CONCURRENCY: usize = 8;
pub const MAX_CALLS_PER_ROUND: usize = 32;
/// The registry's memory: holds past this are not extended.
pub const MAX_HELD_BYTES: usize = crate::budget::MAX_HELD_BYTES;
/// What one hold costs besides its receipt handle (the entry, the map).
const HOLD_OVERHEAD: usize = 160;

/// What to do next about one held message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing before this instant.
    WaitUntil(Instant),
    /// Make it visible again this many seconds from now.
    Extend(u32),
    /// No more extensions: the limit is reached, or the timeout is 0.
    Stop,
}

/// The heartbeat's rule for one message hidden since `hidden_since` (no
/// later than SQS started its timeout) and visible again at `visible_at`
/// unless extended, on a queue whose visibility timeout is `timeout`; an
/// extension asks for at least `floor`; it may stay hidden for `limit` in
/// all (capped at [`MAX_HIDDEN`]).
pub fn next_step(
    now: Instant,
    hidden_since: Instant,
    visible_at: Instant,
    timeout: Duration,
    floor: Duration,
    limit: Duration,
) -> Step {
    let cap_end = hidden_since + limit.min(MAX_HIDDEN);
    // Already visible-until within a second of the cap (SQS counts whole
    // seconds): one more call could gain less than a second.
    if timeout.as_secs() == 0 || visible_at + Duration::from_secs(1) > cap_end {
        return Step::Stop;
    }
    let due = visible_at.checked_sub(timeout / 2).unwrap_or(hidden_since);
    if now < due {
        return Step::WaitUntil(due);
    }
    let ask = timeout.max(floor).as_secs();
    let secs = ask.min(cap_end.saturating_duration_since(now).as_secs());
    if secs == 0 || now + Duration::from_secs(secs) <= visible_at {
        return Step::Stop;
    }
    Step::Extend(secs as u32)
}

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
    /// The drain's `visibility_timeout`, if it gave one.
    timeout: Option<Duration>,
    rules: HoldRules,
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

struct Hold<T> {
    queue: Arc<HeldQueue<T>>,
    /// A hash of the message id (for [`Heartbeat::forget`]).
    id_hash: u64,
    handle: String,
    hidden_since: Instant,
    /// None until the queue's timeout is known.
    visible_at: Option<Instant>,
    /// The subtransaction that received it.
    scope: u32,
    /// Not before this (after a failed call), and the failures so far.
    retry_at: Option<Instant>,
    failures: u32,
    stopped: bool,
}

impl<T> Hold<T> {
    fn bytes(&self) -> usize {
        self.handle.len() + HOLD_OVERHEAD
    }
}

#[derive(Default)]
struct Lookup {
    /// The last timeout read (kept when a later lookup fails).
    timeout: Option<Duration>,
    /// When it was read.
    read_at: Option<Instant>,
    failures: u32,
    /// No new lookup before this.
    next_try: Option<Instant>,
}

struct State<T> {
    holds: BTreeMap<u64, Hold<T>>,
    next_id: u64,
    held_bytes: usize,
    /// The highest subtransaction id of any hold (a rolled-back savepoint
    /// newer than that ends nothing, without a scan).
    max_scope: u32,
    /// (queue, timeout, receipt handle) to hand back.
    hand_backs: Vec<(Arc<HeldQueue<T>>, u32, String)>,
    /// Visibility timeouts by queue URL.
    lookups: HashMap<String, Lookup>,
    stats: Stats,
    /// When the thread will look next (None: it waits to be woken).
    sleeping_until: Option<Instant>,
    /// The thread is sending hand-backs.
    handing_back: bool,
    stop: bool,
}

impl<T> Default for State<T> {
    fn default() -> Self {
        State {
            holds: BTreeMap::new(),
            next_id: 0,
            held_bytes: 0,
            max_scope: 0,
            hand_backs: Vec::new(),
            lookups: HashMap::new(),
            stats: Stats::default(),
            sleeping_until: None,
            handing_back: false,
            stop: false,
        }
    }
}

impl<T> State<T> {
    fn remove(&mut self, id: u64) -> Option<Hold<T>> {
        let h = self.holds.remove(&id)?;
        self.held_bytes -= h.bytes();
        Some(h)
    }
}

struct Shared<T> {
    state: Mutex<State<T>>,
    /// Wakes the thread (new work, stop).
    wake: Condvar,
    /// Wakes [`Heartbeat::wait_idle`].
    idle: Condvar,
}

impl<T> Shared<T> {
    /// The registry; a panic elsewhere never makes it unusable.
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn hash_id(message_id: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    message_id.hash(&mut h);
    h.finish()
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
        });
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let s = shared.clone();
        // Detached: the thread ends when told to (drop) or with the process.
        let _detached: JoinHandle<()> = spawn_with_signals_blocked(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
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
                    let _ = ready_tx.send(Ok((t, current_thread_id())));
                    run(&s, &rt);
                }
                Err(e) => {
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
        Arc::new(HeldQueue {
            client: client.rebind(self.transport.clone(), Arc::new(credentials)),
            timeout: timeout.map(|s| Duration::from_secs(s as u64)),
            rules,
        })
    }

    /// Holds `msgs`, received by a call made at `hidden_since`, in
    /// subtransaction `scope`, until [`Heartbeat::end`] or
    /// [`Heartbeat::forget`]. Never waits but for the registry's lock.
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
        let visible_at = queue.timeout.map(|t| hidden_since + t);
        // The soonest this hold can need the thread.
        let due = match queue.timeout {
            Some(t) => hidden_since + t / 2,
            None => hidden_since + LOOKUP_AFTER,
        };
        let mut st = self.shared.lock();
        for m in msgs {
            let hold = Hold {
                queue: queue.clone(),
                id_hash: hash_id(&m.message_id),
                handle: m.receipt_handle.clone(),
                hidden_since,
                visible_at,
                scope,
                retry_at: None,
                failures: 0,
                stopped: false,
            };
            if st.held_bytes + hold.bytes() > MAX_HELD_BYTES {
                st.stats.not_held += 1;
                continue;
            }
            st.held_bytes += hold.bytes();
            st.max_scope = st.max_scope.max(scope);
            let id = st.next_id;
            st.next_id += 1;
            st.holds.insert(id, hold);
        }
        let wake = st.sleeping_until.is_none_or(|at| due < at);
        drop(st);
        if wake {
            self.shared.wake.notify_one();
        }
    }

    /// Stops holding the messages with these ids (left for a later drain).
    pub fn forget(&self, message_ids: &HashSet<String>) {
        if message_ids.is_empty() {
            return;
        }
        let hashes: HashSet<u64> = message_ids.iter().map(|m| hash_id(m)).collect();
        let mut st = self.shared.lock();
        let ids: Vec<u64> = st
            .holds
            .iter()
            .filter(|(_, h)| hashes.contains(&h.id_hash))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            st.remove(id);
        }
    }

    /// Ends the holds made in subtransaction `from_scope` or later (None:
    /// all). `hand_back`: the transaction (or subtransaction) rolled back, so
    /// messages whose rules say so are made visible again, by the thread,
    /// without waiting here.
    pub fn end(&self, from_scope: Option<u32>, hand_back: bool) -> Ended {
        let now = Instant::now();
        let mut st = self.shared.lock();
        if st.holds.is_empty() || from_scope.is_some_and(|s| s > st.max_scope) {
            return Ended::default();
        }
        let ending = |h: &Hold<T>| from_scope.is_none_or(|s| h.scope >= s);
        let ids: Vec<u64> = st
            .holds
            .iter()
            .filter(|(_, h)| ending(h))
            .map(|(id, _)| *id)
            .collect();
        let mut ended = Ended::default();
        for id in ids {
            let Some(h) = st.remove(id) else {
                continue;
            };
            ended.holds += 1;
            if h.visible_at.is_some_and(|v| v <= now) {
                ended.exposed += 1;
            }
            if let (true, Some(t)) = (hand_back, h.queue.rules.on_rollback) {
                st.hand_backs.push((h.queue, t, h.handle));
            }
        }
        if st.holds.is_empty() {
            st.max_scope = 0;
        }
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
        self.shared.lock().held_bytes + HOLD_OVERHEAD + crate::budget::MAX_RECEIPT_HANDLE_BYTES
            > MAX_HELD_BYTES
    }

    /// What the thread did since the last call.
    pub fn take_stats(&self) -> Stats {
        std::mem::take(&mut self.shared.lock().stats)
    }

    /// Waits, at most `limit`, until every hand-back has been sent (not for
    /// extensions in flight); true if it was. (A backend about to exit gives
    /// its rollback's hand-backs this long.)
    pub fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut st = self.shared.lock();
        loop {
            if st.hand_backs.is_empty() && !st.handing_back {
                return true;
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
    /// Tells the thread to stop after its current round; never waits (a
    /// backend exiting must not wait for the network).
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_one();
    }
}

/// One batch call the thread makes.
struct Call<T> {
    queue: Arc<HeldQueue<T>>,
    seconds: u32,
    /// (hold id, receipt handle); a hand-back's ids are not holds.
    entries: Vec<(String, String)>,
    hand_back: bool,
}

/// What the thread will do in one round, planned under the lock.
struct Plan<T> {
    calls: Vec<Call<T>>,
    lookups: Vec<Arc<HeldQueue<T>>>,
    /// When to look again (now, if this round could not take everything due).
    wake_at: Option<Instant>,
}

fn earlier(a: Option<Instant>, b: Instant) -> Option<Instant> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// Doubling waits after failures, from [`RETRY_AFTER`] to [`MAX_BACKOFF`].
fn backoff(failures: u32) -> Duration {
    RETRY_AFTER
        .saturating_mul(1 << failures.min(6))
        .min(MAX_BACKOFF)
}

fn plan<T: Transport>(st: &mut State<T>, now: Instant) -> Plan<T> {
    // Entries by (queue, seconds, hand-back), in the order they came.
    type Key = (usize, u32, bool);
    type Entries = Vec<(String, String)>;
    let mut groups: Vec<(Key, Arc<HeldQueue<T>>, Entries)> = Vec::new();
    let mut index: HashMap<Key, usize> = HashMap::new();
    let mut entries = 0usize;
    let room = MAX_CALLS_PER_ROUND * 10;
    let mut push =
        |queue: &Arc<HeldQueue<T>>, seconds: u32, id: String, handle: String, back: bool| {
            let key = (Arc::as_ptr(queue) as usize, seconds, back);
            let i = *index.entry(key).or_insert_with(|| {
                groups.push((key, queue.clone(), Vec::new()));
                groups.len() - 1
            });
            groups[i].2.push((id, handle));
        };
    let backs = std::mem::take(&mut st.hand_backs);
    let mut backs = backs.into_iter().enumerate();
    for (i, (queue, seconds, handle)) in backs.by_ref() {
        push(&queue, seconds, format!("r{i}"), handle, true);
        entries += 1;
        if entries >= room {
            break;
        }
    }
    st.hand_backs = backs.map(|(_, b)| b).collect();
    let mut lookups: Vec<Arc<HeldQueue<T>>> = Vec::new();
    let mut wake_at: Option<Instant> = (!st.hand_backs.is_empty()).then_some(now);
    let State {
        holds,
        lookups: known,
        ..
    } = st;
    for (id, h) in holds.iter_mut() {
        if h.stopped || h.queue.rules.limit.is_zero() {
            continue;
        }
        if let Some(at) = h.retry_at.filter(|at| *at > now) {
            wake_at = earlier(wake_at, at);
            continue;
        }
        let url = &h.queue.client.queue().queue_url;
        let cached = known.get(url);
        let timeout = h.queue.timeout.or(cached.and_then(|l| l.timeout));
        if h.queue.timeout.is_none() {
            // Look the queue's timeout up once a hold has waited for it, and
            // again when it is old; never sooner than the backoff allows.
            let stale = cached
                .and_then(|l| l.read_at)
                .is_none_or(|at| now.duration_since(at) >= LOOKUP_TTL);
            let wanted_at = h.hidden_since + LOOKUP_AFTER;
            let allowed_at = cached.and_then(|l| l.next_try).unwrap_or(now);
            if stale {
                let at = wanted_at.max(allowed_at);
                if at <= now {
                    if !lookups.iter().any(|q| q.client.queue().queue_url == *url) {
                        lookups.push(h.queue.clone());
                    }
                } else if timeout.is_none() {
                    wake_at = earlier(wake_at, at);
                }
            }
        }
        let Some(timeout) = timeout else {
            continue;
        };
        let visible_at = *h.visible_at.get_or_insert(h.hidden_since + timeout);
        let rules = h.queue.rules;
        match next_step(
            now,
            h.hidden_since,
            visible_at,
            timeout,
            rules.floor,
            rules.limit,
        ) {
            Step::WaitUntil(at) => wake_at = earlier(wake_at, at),
            Step::Extend(seconds) => {
                if entries < room {
                    push(&h.queue, seconds, id.to_string(), h.handle.clone(), false);
                    entries += 1;
                } else {
                    wake_at = Some(now);
                }
            }
            Step::Stop => h.stopped = true,
        }
    }
    let calls = groups
        .into_iter()
        .flat_map(|((_, seconds, back), queue, entries)| {
            entries
                .chunks(10)
                .map(|c| Call {
                    queue: queue.clone(),
                    seconds,
                    entries: c.to_vec(),
                    hand_back: back,
                })
                .collect::<Vec<_>>()
        })
        .collect();
    Plan {
        calls,
        lookups,
        wake_at,
    }
}

/// The thread's loop: plan under the lock, send without it, record.
fn run<T: Transport + Clone + 'static>(shared: &Shared<T>, rt: &tokio::runtime::Runtime) {
    let mut st = shared.lock();
    loop {
        if st.stop {
            return;
        }
        let now = Instant::now();
        let p = plan(&mut st, now);
        if p.calls.is_empty() && p.lookups.is_empty() {
            shared.idle.notify_all();
            if st.holds.is_empty() {
                st.sleeping_until = None;
                st = shared.wake.wait(st).unwrap_or_else(|e| e.into_inner());
            } else {
                let until = p.wake_at.unwrap_or(now + TICK).min(now + TICK);
                st.sleeping_until = Some(until);
                let wait = until.saturating_duration_since(Instant::now());
                st = shared
                    .wake
                    .wait_timeout(st, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            continue;
        }
        st.handing_back = p.calls.iter().any(|c| c.hand_back);
        st.sleeping_until = Some(now);
        drop(st);
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(send(p))));
        st = shared.lock();
        if let Ok((calls, lookups)) = outcome {
            record(&mut st, calls, lookups, Instant::now());
        }
        if std::mem::take(&mut st.handing_back) {
            shared.idle.notify_all();
        }
    }
}

type CallResult<T> = (Call<T>, Instant, Result<super::BatchOutcome, SqsError>);
type LookupResult = (String, Option<Duration>);

async fn send<T: Transport + Clone + 'static>(
    p: Plan<T>,
) -> (Vec<CallResult<T>>, Vec<LookupResult>) {
    let lookups = stream::iter(p.lookups)
        .map(|q| async move {
            let r = q.client.queue_attributes(&["VisibilityTimeout"]).await;
            let timeout = r.ok().and_then(|a| {
                a.get("VisibilityTimeout")
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs)
            });
            (q.client.queue().queue_url.clone(), timeout)
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>();
    let calls = stream::iter(p.calls)
        .map(|c| async move {
            let sent = Instant::now();
            let action = BatchAction::ChangeVisibility { seconds: c.seconds };
            let r = c.queue.client.batch(action, &c.entries).await;
            (c, sent, r)
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>();
    futures_util::join!(calls, lookups)
}

fn record<T>(
    st: &mut State<T>,
    calls: Vec<CallResult<T>>,
    lookups: Vec<LookupResult>,
    now: Instant,
) {
    for (url, timeout) in lookups {
        let l = st.lookups.entry(url).or_default();
        match timeout {
            Some(t) => {
                *l = Lookup {
                    timeout: Some(t),
                    read_at: Some(now),
                    failures: 0,
                    next_try: None,
                }
            }
            None => {
                // Keep what was read before; try again later.
                st.stats.lookups_failed += 1;
                l.next_try = Some(now + backoff(l.failures));
                l.failures += 1;
            }
        }
    }
    for (call, sent, result) in calls {
        if call.hand_back {
            match result {
                Ok(o) => {
                    st.stats.handed_back += o.succeeded.len() as u64;
                    st.stats.hand_back_failed += o.failed.len() as u64;
                }
                Err(_) => st.stats.hand_back_failed += call.entries.len() as u64,
            }
            continue;
        }
        match result {
            Ok(o) => {
                for id in &o.succeeded {
                    if let Some(h) = hold_mut(st, id) {
                        h.visible_at = Some(sent + Duration::from_secs(call.seconds as u64));
                        h.retry_at = None;
                        h.failures = 0;
                        st.stats.extended += 1;
                    }
                }
                for (id, _code) in &o.failed {
                    if let Some(h) = hold_mut(st, id) {
                        h.stopped = true;
                        st.stats.refused += 1;
                    }
                }
            }
            Err(e) if !RetryClass::of(&e).is_retryable() => {
                // Refused for what it is (expired credentials, access
                // denied, no such queue): the same call fails again, for
                // every message of the queue.
                for h in st.holds.values_mut() {
                    if Arc::ptr_eq(&h.queue, &call.queue) && !h.stopped {
                        h.stopped = true;
                        st.stats.refused += 1;
                    }
                }
            }
            Err(_) => {
                st.stats.failed += 1;
                for (id, _) in &call.entries {
                    if let Some(h) = hold_mut(st, id) {
                        h.retry_at = Some(now + backoff(h.failures));
                        h.failures += 1;
                    }
                }
            }
        }
    }
}

/// The hold a batch entry id names, if it is still held.
fn hold_mut<'a, T>(st: &'a mut State<T>, id: &str) -> Option<&'a mut Hold<T>> {
    id.parse::<u64>().ok().and_then(|id| st.holds.get_mut(&id))
}

/// The kernel's id of the calling thread.
fn current_thread_id() -> i64 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) }
}

/// The signals a thread of this process blocks (the `SigBlk` mask of
/// /proc/self/task/TID/status: bit n-1 is signal n), for the tests that
/// check them.
pub fn blocked_signals(tid: i64) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("SigBlk:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// Blocks every signal on the calling thread: for threads a backend starts
/// (PostgreSQL's signal handlers must run on the backend's own thread, and
/// its latch wakeups must reach it).
pub fn block_all_signals() {
    // SAFETY: sigset_t is plain data; sigfillset and pthread_sigmask only
    // read and write the sets given.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
    }
}

/// Spawns a thread that starts with every signal blocked, so that no signal
/// can reach it even in its first instructions. The mask is set on the
/// calling thread around the spawn (a new thread inherits it) and restored
/// at once.
fn spawn_with_signals_blocked(
    f: impl FnOnce() + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    // SAFETY: as in block_all_signals; the old mask is restored before
    // returning, whatever spawn did.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        let spawned = std::thread::Builder::new()
            .name("fetch_etl_hb".into())
            .spawn(f);
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        spawned
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sqs::transport::{HttpReply, HttpRequest};
    use crate::sqs::{ClientConfig, Credentials, Protocol, QueueRef};
    use std::future::Future;

    const S: Duration = Duration::from_secs(1);
    const NO_FLOOR: Duration = Duration::ZERO;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn nothing_happens_before_half_the_timeout_is_left() {
        let t0 = Instant::now();
        let step = next_step(
            t0 + secs(10),
            t0,
            t0 + secs(30),
            secs(30),
            NO_FLOOR,
            secs(3600),
        );
        assert_eq!(step, Step::WaitUntil(t0 + secs(15)));
    }

    #[test]
    fn an_extension_asks_for_the_whole_timeout_again() {
        let t0 = Instant::now();
        let at = |now| next_step(now, t0, t0 + secs(30), secs(30), MIN_EXTENSION, secs(3600));
        assert_eq!(at(t0 + secs(15)), Step::Extend(30));
        // late (the message may already be visible): still try
        assert_eq!(at(t0 + secs(40)), Step::Extend(30));
    }

    #[test]
    fn rate_a_short_timeout_is_extended_by_at_least_the_floor() {
        // a 1-second timeout would mean a call every half second
        let t0 = Instant::now();
        let step = next_step(
            t0 + secs(1),
            t0,
            t0 + secs(1),
            secs(1),
            MIN_EXTENSION,
            secs(3600),
        );
        assert_eq!(step, Step::Extend(10));
        // and then nothing until half a timeout before that ends
        let later = t0 + secs(1) + MIN_EXTENSION;
        let step = next_step(t0 + secs(2), t0, later, secs(1), MIN_EXTENSION, secs(3600));
        assert_eq!(step, Step::WaitUntil(later - Duration::from_millis(500)));
    }

    #[test]
    fn extensions_end_at_the_limit_and_at_twelve_hours() {
        let t0 = Instant::now();
        let f = NO_FLOOR;
        // 100 s limit, at 80 s: only 20 s more
        assert_eq!(
            next_step(t0 + secs(80), t0, t0 + secs(90), secs(30), f, secs(100)),
            Step::Extend(20)
        );
        // visible at the limit already: nothing to gain
        assert_eq!(
            next_step(t0 + secs(90), t0, t0 + secs(100), secs(30), f, secs(100)),
            Step::Stop
        );
        // a limit beyond SQS's 12 hours is SQS's 12 hours
        let late = t0 + MAX_HIDDEN - secs(10);
        assert_eq!(
            next_step(late, t0, late + secs(5), secs(30), f, secs(100_000)),
            Step::Extend(10)
        );
        // the last, shortened extension is the last: no second call for the
        // fraction of a second left (a call per round, before this rule)
        let t = t0 + Duration::from_millis(1100);
        assert_eq!(
            next_step(t, t0, t0 + secs(2), secs(2), f, secs(3)),
            Step::Extend(1)
        );
        let next_round = t + Duration::from_millis(100);
        assert_eq!(
            next_step(next_round, t0, t + secs(1), secs(2), f, secs(3)),
            Step::Stop
        );
        // a queue timeout of 0: nothing is hidden, nothing to extend
        assert_eq!(
            next_step(t0, t0, t0, Duration::ZERO, f, secs(100)),
            Step::Stop
        );
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        assert_eq!(backoff(0), secs(1));
        assert_eq!(backoff(1), secs(2));
        assert_eq!(backoff(4), secs(16));
        assert_eq!(backoff(5), MAX_BACKOFF);
        assert_eq!(backoff(1000), MAX_BACKOFF);
    }

    /// An SQS endpoint that answers every batch call with success for every
    /// entry (or with `refuse`), and GetQueueAttributes with a visibility
    /// timeout of 1 s (or an error while `no_attributes`).
    #[derive(Clone, Default)]
    struct Fake {
        seen: Arc<Mutex<Vec<serde_json::Value>>>,
        refuse: Arc<Mutex<Option<(u16, &'static str)>>>,
        no_attributes: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Fake {
        fn requests(&self) -> Vec<serde_json::Value> {
            self.seen.lock().unwrap().clone()
        }

        fn count(&self, action: &str) -> usize {
            self.requests()
                .iter()
                .filter(|r| r["action"] == action)
                .count()
        }
    }

    impl Transport for Fake {
        fn send(
            &self,
            req: HttpRequest,
        ) -> impl Future<Output = Result<HttpReply, SqsError>> + Send {
            let action = req
                .headers
                .iter()
                .find(|(k, _)| k == "x-amz-target")
                .map(|(_, v)| v.trim_start_matches("AmazonSQS.").to_string())
                .unwrap_or_default();
            let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
            let error = |status: u16, code: &str| HttpReply {
                status,
                body: format!(r#"{{"__type":"com.amazonaws.sqs#{code}","message":"m"}}"#)
                    .into_bytes(),
                ..HttpReply::default()
            };
            let ok = |v: serde_json::Value| HttpReply {
                status: 200,
                body: serde_json::to_vec(&v).unwrap(),
                ..HttpReply::default()
            };
            let reply = match action.as_str() {
                "GetQueueAttributes"
                    if self.no_attributes.load(std::sync::atomic::Ordering::SeqCst) =>
                {
                    error(403, "AccessDenied")
                }
                "GetQueueAttributes" => {
                    ok(serde_json::json!({"Attributes": {"VisibilityTimeout": "1"}}))
                }
                _ => match *self.refuse.lock().unwrap() {
                    Some((status, code)) => error(status, code),
                    None => {
                        let ids: Vec<_> = body["Entries"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|e| serde_json::json!({"Id": e["Id"]}))
                            .collect();
                        ok(serde_json::json!({"Successful": ids}))
                    }
                },
            };
            self.seen
                .lock()
                .unwrap()
                .push(serde_json::json!({"action": action, "body": body}));
            async move { Ok(reply) }
        }
    }

    fn client(fake: &Fake) -> Client<Fake> {
        Client::new(
            fake.clone(),
            ClientConfig {
                protocol: Some(Protocol::Json),
                retry: crate::sqs::retry::RetryPolicy {
                    max_attempts: 1,
                    ..Default::default()
                },
                ..ClientConfig::default()
            },
            Arc::new(creds()),
            "us-east-1".into(),
            QueueRef::parse("http://127.0.0.1:9/000000000000/q", None).unwrap(),
            None,
        )
    }

    fn creds() -> Credentials {
        Credentials {
            access_key_id: "AKID".into(),
            secret_access_key: "secret".into(),
            session_token: None,
        }
    }

    fn messages(n: usize) -> Vec<Message> {
        (0..n)
            .map(|i| Message {
                message_id: format!("m{i}"),
                receipt_handle: format!("h{i}"),
                ..Message::default()
            })
            .collect()
    }

    const RULES: HoldRules = HoldRules {
        limit: Duration::from_secs(3600),
        on_rollback: None,
        floor: NO_FLOOR,
    };

    fn started(fake: &Fake) -> Heartbeat<Fake> {
        let f = fake.clone();
        Heartbeat::start(move || Ok(f)).unwrap()
    }

    /// A registry holding `queues[i]` for message i, all hidden since `t0`.
    fn registry(queues: &[&Arc<HeldQueue<Fake>>], t0: Instant) -> State<Fake> {
        let mut st = State::<Fake>::default();
        for (i, q) in queues.iter().enumerate() {
            st.holds.insert(
                i as u64,
                Hold {
                    queue: (*q).clone(),
                    id_hash: hash_id(&format!("m{i}")),
                    handle: format!("h{i}"),
                    hidden_since: t0,
                    visible_at: q.timeout.map(|t| t0 + t),
                    scope: 1,
                    retry_at: None,
                    failures: 0,
                    stopped: false,
                },
            );
        }
        st
    }

    #[test]
    fn the_plan_extends_due_holds_in_batches_of_ten_and_looks_up_unknown_timeouts() {
        let fake = Fake::default();
        let hb = started(&fake);
        let t0 = Instant::now();
        let explicit = hb.queue(&client(&fake), creds(), Some(30), RULES);
        let unknown = hb.queue(&client(&fake), creds(), None, RULES);
        let mut queues = vec![&explicit; 23];
        queues.extend([&unknown, &unknown]);
        let mut st = registry(&queues, t0);
        // at 10 s nothing is due; the unknown queue is looked up (held > 0.5 s)
        let p = plan(&mut st, t0 + secs(10));
        assert!(p.calls.is_empty());
        assert_eq!(p.lookups.len(), 1);
        assert_eq!(p.wake_at, Some(t0 + secs(15)));
        // at 16 s the 23 are due: 3 calls of at most 10, a whole timeout each
        let p = plan(&mut st, t0 + secs(16));
        let sizes: Vec<usize> = p.calls.iter().map(|c| c.entries.len()).collect();
        assert_eq!(sizes, vec![10, 10, 3]);
        assert!(p.calls.iter().all(|c| c.seconds == 30 && !c.hand_back));
    }

    #[test]
    fn rate_one_round_makes_at_most_its_share_of_calls() {
        let fake = Fake::default();
        let hb = started(&fake);
        let t0 = Instant::now();
        let q = hb.queue(&client(&fake), creds(), Some(30), RULES);
        let n = MAX_CALLS_PER_ROUND * 10 + 5;
        let mut st = registry(&vec![&q; n], t0);
        let p = plan(&mut st, t0 + secs(16));
        assert_eq!(p.calls.len(), MAX_CALLS_PER_ROUND);
        assert_eq!(
            p.wake_at,
            Some(t0 + secs(16)),
            "the rest goes in the next round, at once"
        );
    }

    #[test]
    fn rate_a_failed_lookup_backs_off_instead_of_spinning() {
        let fake = Fake::default();
        let hb = started(&fake);
        let t0 = Instant::now();
        let q = hb.queue(&client(&fake), creds(), None, RULES);
        let mut st = registry(&[&q], t0);
        let now = t0 + secs(1);
        assert_eq!(plan(&mut st, now).lookups.len(), 1);
        record(
            &mut st,
            vec![],
            vec![(q.client.queue().queue_url.clone(), None)],
            now,
        );
        // right after: no lookup, and the thread sleeps until the backoff ends
        let p = plan(&mut st, now);
        assert!(p.lookups.is_empty());
        let wake = p.wake_at.expect("a wake-up time");
        assert!(wake > now + Duration::from_millis(900), "{:?}", wake - now);
        // a later success is used; a failure after it keeps it
        let url = q.client.queue().queue_url.clone();
        record(&mut st, vec![], vec![(url.clone(), Some(secs(30)))], now);
        record(&mut st, vec![], vec![(url, None)], now);
        let l = &st.lookups[&q.client.queue().queue_url];
        assert_eq!(l.timeout, Some(secs(30)));
        assert_eq!(st.stats.lookups_failed, 2);
    }

    #[test]
    fn the_thread_extends_held_messages_until_they_are_ended() {
        let fake = Fake::default();
        let hb = started(&fake);
        // the queue's timeout (1 s) is looked up; extensions start at 0.5 s
        let q = hb.queue(&client(&fake), creds(), None, RULES);
        hb.hold(&q, &messages(12), Instant::now(), 1);
        std::thread::sleep(S * 2);
        let stats = hb.take_stats();
        assert!(stats.extended >= 24, "{stats:?}");
        assert_eq!(fake.count("GetQueueAttributes"), 1);
        let calls = fake.count("ChangeMessageVisibilityBatch");
        assert!(calls >= 4, "12 messages take 2 calls per round: {calls}");
        let first = &fake.requests()[1]["body"]["Entries"][0];
        assert_eq!(first["VisibilityTimeout"], 1);
        // ended by a COMMIT: no more calls
        let ended = hb.end(None, false);
        assert_eq!((ended.holds, ended.exposed), (12, 0));
        assert_eq!(hb.held(), 0);
        std::thread::sleep(S / 2);
        let after = fake.count("ChangeMessageVisibilityBatch");
        std::thread::sleep(S);
        assert_eq!(fake.count("ChangeMessageVisibilityBatch"), after);
    }

    #[test]
    fn expired_credentials_stop_the_extensions_of_their_queue() {
        let fake = Fake::default();
        *fake.refuse.lock().unwrap() = Some((400, "ExpiredToken"));
        let hb = started(&fake);
        let q = hb.queue(&client(&fake), creds(), Some(1), RULES);
        hb.hold(&q, &messages(12), Instant::now(), 1);
        std::thread::sleep(S * 2);
        // one round of calls (2), refused, then nothing: no retry every second
        assert_eq!(fake.count("ChangeMessageVisibilityBatch"), 2);
        assert_eq!(hb.take_stats().refused, 12);
        // at COMMIT they count as exposed: their timeout has passed
        assert_eq!(hb.end(None, false).exposed, 12);
    }

    #[test]
    fn a_rollback_hands_back_only_what_its_rules_say_and_only_its_subtransaction() {
        let fake = Fake::default();
        let hb = started(&fake);
        let back = HoldRules {
            limit: Duration::ZERO,
            on_rollback: Some(0),
            floor: NO_FLOOR,
        };
        let q = hb.queue(&client(&fake), creds(), Some(30), back);
        let keep = hb.queue(&client(&fake), creds(), Some(30), RULES);
        let msgs = messages(6);
        hb.hold(&q, &msgs[..2], Instant::now(), 1);
        hb.hold(&q, &msgs[2..4], Instant::now(), 3);
        hb.hold(&keep, &msgs[4..], Instant::now(), 3);
        // a savepoint newer than every hold ends nothing
        assert_eq!(hb.end(Some(4), true).holds, 0);
        // ROLLBACK TO SAVEPOINT of subtransaction 2: ends scopes 2 and later
        assert_eq!(hb.end(Some(2), true).holds, 4);
        assert_eq!(hb.held(), 2);
        assert!(hb.wait_idle(S * 5));
        let sent: Vec<_> = fake
            .requests()
            .into_iter()
            .filter(|r| r["action"] == "ChangeMessageVisibilityBatch")
            .flat_map(|r| r["body"]["Entries"].as_array().unwrap().clone())
            .collect();
        let handles: Vec<_> = sent.iter().map(|e| e["ReceiptHandle"].clone()).collect();
        assert_eq!(
            handles,
            vec!["h2", "h3"],
            "only the rolled-back ones whose rules say so"
        );
        assert!(sent.iter().all(|e| e["VisibilityTimeout"] == 0));
        assert_eq!(hb.take_stats().handed_back, 2);
        // a COMMIT ends the rest without handing anything back
        hb.end(None, false);
        assert!(hb.wait_idle(S));
        assert_eq!(fake.count("ChangeMessageVisibilityBatch"), 1);
    }

    #[test]
    fn forgotten_messages_are_no_longer_held() {
        let fake = Fake::default();
        let hb = started(&fake);
        let q = hb.queue(&client(&fake), creds(), Some(30), RULES);
        hb.hold(&q, &messages(3), Instant::now(), 1);
        hb.forget(&HashSet::from(["m1".to_string()]));
        assert_eq!(hb.held(), 2);
    }

    #[test]
    fn memory_holds_stop_at_the_registry_limit() {
        let fake = Fake::default();
        let hb = started(&fake);
        let q = hb.queue(&client(&fake), creds(), Some(30), RULES);
        let big: Vec<Message> = (0..20_000)
            .map(|i| Message {
                message_id: format!("m{i}"),
                receipt_handle: "h".repeat(1000) + &i.to_string(),
                ..Message::default()
            })
            .collect();
        for chunk in big.chunks(10) {
            hb.hold(&q, chunk, Instant::now(), 1);
        }
        let per_hold = 1005 + HOLD_OVERHEAD;
        let held = hb.held();
        assert!(
            held <= MAX_HELD_BYTES / 1000 && held >= MAX_HELD_BYTES / per_hold - 1,
            "{held}"
        );
        assert!(hb.full());
        assert_eq!(hb.take_stats().not_held as usize, 20_000 - hb.held());
        hb.end(None, false);
        assert!(!hb.full());
    }

    #[test]
    fn the_heartbeat_thread_blocks_every_signal() {
        let fake = Fake::default();
        let hb = started(&fake);
        let blocked = blocked_signals(hb.thread_id()).unwrap();
        // every standard signal but SIGKILL and SIGSTOP (which cannot be blocked)
        for sig in 1..=31u32 {
            let is_blocked = blocked & (1u64 << (sig - 1)) != 0;
            let can_block = sig != libc::SIGKILL as u32 && sig != libc::SIGSTOP as u32;
            assert_eq!(is_blocked, can_block, "signal {sig}: SigBlk {blocked:x}");
        }
        // and the calling thread's own mask is left as it was
        let mine = blocked_signals(current_thread_id()).unwrap();
        assert_eq!(mine & (1 << (libc::SIGINT - 1)), 0);
    }
}
