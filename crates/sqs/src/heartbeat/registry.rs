//! The registry the backend and the heartbeat thread share: which messages
//! are held, for which drain and subtransaction, when each is visible again;
//! what the thread should do next ([`plan`]) and what its calls came to
//! ([`record`]). No I/O and no thread here: the thread (`thread.rs`) plans
//! under the lock, sends without it, and records under it again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::policy::{backoff, later, next_step, Step, LOOKUP_AFTER, LOOKUP_TTL};
use super::{Ended, HeldQueue, Stats};
use crate::retry::RetryClass;
use crate::transport::Transport;
use crate::{BatchOutcome, Message, SqsError};

/// Batch calls one round makes at most (hand-backs first).
pub const MAX_CALLS_PER_ROUND: usize = 32;
/// What one hold costs besides its receipt handle and message id (the
/// entry, the maps).
pub(super) const HOLD_OVERHEAD: usize = 200;
/// The registry's memory: holds past this are not extended.
pub const MAX_HELD_BYTES: usize = fetch_etl_core::budget::MAX_HELD_BYTES;

pub(super) struct Hold<T> {
    pub(super) queue: Arc<HeldQueue<T>>,
    pub(super) message_id: String,
    /// The length of its queue's URL (a copy of which keys the index).
    url_len: usize,
    /// The newest receipt handle this backend got for the message: SQS
    /// honours only the newest one.
    pub(super) handle: String,
    pub(super) hidden_since: Instant,
    /// None until the queue's timeout is known.
    pub(super) visible_at: Option<Instant>,
    /// The subtransaction that received it.
    pub(super) scope: u32,
    /// Not before this (after a failed call), and the failures so far.
    pub(super) retry_at: Option<Instant>,
    pub(super) failures: u32,
    pub(super) stopped: bool,
}

impl<T: Transport> Hold<T> {
    fn queue_url(&self) -> &str {
        &self.queue.client.queue().queue_url
    }

    fn bytes(&self) -> usize {
        self.handle.len() + 2 * self.message_id.len() + self.url_len + HOLD_OVERHEAD
    }
}

#[derive(Default)]
pub(super) struct Lookup {
    /// The last timeout read (kept when a later lookup fails).
    pub(super) timeout: Option<Duration>,
    /// When it was read.
    read_at: Option<Instant>,
    failures: u32,
    /// No new lookup before this.
    next_try: Option<Instant>,
}

pub(super) struct State<T> {
    pub(super) holds: BTreeMap<u64, Hold<T>>,
    /// The hold of each (queue URL, message id): the same id from two
    /// queues (two spellings of one, or a hostile endpoint) is two messages.
    by_message: HashMap<(String, String), u64>,
    next_id: u64,
    pub(super) held_bytes: usize,
    /// The highest subtransaction id of any hold (a rolled-back savepoint
    /// newer than that ends nothing, without a scan).
    max_scope: u32,
    /// (queue, timeout, receipt handle) to hand back.
    pub(super) hand_backs: Vec<(Arc<HeldQueue<T>>, u32, String)>,
    /// Visibility timeouts by queue URL.
    pub(super) lookups: HashMap<String, Lookup>,
    pub(super) stats: Stats,
    /// When the thread will look next (None: it waits to be woken).
    pub(super) sleeping_until: Option<Instant>,
    /// The thread is sending hand-backs.
    pub(super) handing_back: bool,
    pub(super) stop: bool,
}

impl<T> Default for State<T> {
    fn default() -> Self {
        State {
            holds: BTreeMap::new(),
            by_message: HashMap::new(),
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

impl<T: Transport> State<T> {
    fn remove(&mut self, id: u64) -> Option<Hold<T>> {
        let h = self.holds.remove(&id)?;
        self.held_bytes -= h.bytes();
        let key = (h.queue_url().to_string(), h.message_id.clone());
        if self.by_message.get(&key) == Some(&id) {
            self.by_message.remove(&key);
        }
        Some(h)
    }
}

impl<T: Transport> State<T> {
    /// Holds `msgs` of `queue`, received by a call made at `hidden_since`,
    /// in subtransaction `scope`. A message held already (received again:
    /// its visibility lapsed, or SQS delivered it twice) keeps one hold,
    /// with the newest receipt handle and the new receipt's timer: extending
    /// or handing back with an older handle would not take. Returns when the
    /// thread is next needed for these holds.
    pub(super) fn hold(
        &mut self,
        queue: &Arc<HeldQueue<T>>,
        msgs: &[Message],
        hidden_since: Instant,
        scope: u32,
    ) -> Instant {
        let visible_at = queue.timeout.map(|t| later(hidden_since, t));
        let url = queue.client.queue().queue_url.clone();
        for m in msgs {
            let key = (url.clone(), m.message_id.clone());
            if let Some(id) = self.by_message.get(&key).copied() {
                let before = self.holds[&id].bytes();
                let h = self.holds.get_mut(&id).expect("indexed hold");
                h.handle.clone_from(&m.receipt_handle);
                h.hidden_since = hidden_since;
                h.visible_at = visible_at;
                h.queue = queue.clone();
                h.retry_at = None;
                h.failures = 0;
                h.stopped = false;
                let after = h.bytes();
                self.held_bytes = self.held_bytes - before + after;
                self.stats.held_again += 1;
                continue;
            }
            let hold = Hold {
                queue: queue.clone(),
                message_id: m.message_id.clone(),
                url_len: url.len(),
                handle: m.receipt_handle.clone(),
                hidden_since,
                visible_at,
                scope,
                retry_at: None,
                failures: 0,
                stopped: false,
            };
            if self.held_bytes + hold.bytes() > MAX_HELD_BYTES {
                self.stats.not_held += 1;
                continue;
            }
            self.held_bytes += hold.bytes();
            self.max_scope = self.max_scope.max(scope);
            let id = self.next_id;
            self.next_id += 1;
            self.by_message.insert(key, id);
            self.holds.insert(id, hold);
        }
        match queue.timeout {
            Some(t) => later(hidden_since, t / 2),
            None => later(hidden_since, LOOKUP_AFTER),
        }
    }
}

impl<T: Transport> State<T> {
    /// Stops holding the messages of `queue` with these ids (left for a
    /// later drain).
    pub(super) fn forget<'a>(
        &mut self,
        queue: &HeldQueue<T>,
        message_ids: impl Iterator<Item = &'a String>,
    ) {
        let url = queue.client.queue().queue_url.clone();
        for m in message_ids {
            if let Some(id) = self.by_message.get(&(url.clone(), m.clone())).copied() {
                self.remove(id);
            }
        }
    }

    /// Ends the holds made in subtransaction `from_scope` or later (None:
    /// all); with `hand_back`, queues the hand-backs their rules ask for.
    /// Returns what they came to, and whether hand-backs are queued.
    pub(super) fn end(&mut self, from_scope: Option<u32>, hand_back: bool, now: Instant) -> Ended {
        if self.holds.is_empty() || from_scope.is_some_and(|s| s > self.max_scope) {
            return Ended::default();
        }
        let ending = |h: &Hold<T>| from_scope.is_none_or(|s| h.scope >= s);
        let ids: Vec<u64> = self
            .holds
            .iter()
            .filter(|(_, h)| ending(h))
            .map(|(id, _)| *id)
            .collect();
        let mut ended = Ended::default();
        for id in ids {
            let Some(h) = self.remove(id) else {
                continue;
            };
            ended.holds += 1;
            if h.visible_at.is_some_and(|v| v <= now) {
                ended.exposed += 1;
            }
            if let (true, Some(t)) = (hand_back, h.queue.rules.on_rollback) {
                self.hand_backs.push((h.queue, t, h.handle));
            }
        }
        if self.holds.is_empty() {
            self.max_scope = 0;
        }
        ended
    }
}

/// One batch call the thread makes.
pub(super) struct Call<T> {
    pub(super) queue: Arc<HeldQueue<T>>,
    pub(super) seconds: u32,
    /// (hold id, receipt handle); a hand-back's ids are not holds.
    pub(super) entries: Vec<(String, String)>,
    pub(super) hand_back: bool,
}

/// What the thread will do in one round, planned under the lock.
pub(super) struct Plan<T> {
    pub(super) calls: Vec<Call<T>>,
    pub(super) lookups: Vec<Arc<HeldQueue<T>>>,
    /// When to look again (now, if this round could not take everything due).
    pub(super) wake_at: Option<Instant>,
}

impl<T> Plan<T> {
    pub(super) fn is_empty(&self) -> bool {
        self.calls.is_empty() && self.lookups.is_empty()
    }
}

fn earlier(a: Option<Instant>, b: Instant) -> Option<Instant> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// The calls and lookups due at `now`: hand-backs first, then extensions,
/// at most [`MAX_CALLS_PER_ROUND`] calls of ten.
pub(super) fn plan<T: Transport>(st: &mut State<T>, now: Instant) -> Plan<T> {
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
            let wanted_at = later(h.hidden_since, LOOKUP_AFTER);
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
        let visible_at = *h.visible_at.get_or_insert(later(h.hidden_since, timeout));
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

/// A batch call, when it was sent, and its outcome.
pub(super) type CallResult<T> = (Call<T>, Instant, Result<BatchOutcome, SqsError>);
/// A queue URL and the visibility timeout looked up for it (None: failed).
pub(super) type LookupResult = (String, Option<Duration>);

/// What a round's calls and lookups came to.
pub(super) fn record<T>(
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
                l.next_try = Some(later(now, backoff(l.failures)));
                l.failures = l.failures.saturating_add(1);
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
                for (id, handle) in &call.entries {
                    if !o.succeeded.contains(id) {
                        continue;
                    }
                    // (a hold received again meanwhile has a newer handle
                    // and timer: this extension was not for it)
                    if let Some(h) = hold_mut(st, id).filter(|h| h.handle == *handle) {
                        h.visible_at = Some(later(sent, Duration::from_secs(call.seconds as u64)));
                        h.retry_at = None;
                        h.failures = 0;
                        st.stats.extended += 1;
                    }
                }
                for (id, _code) in &o.failed {
                    let handle = call.entries.iter().find(|(i, _)| i == id).map(|e| &e.1);
                    if let Some(h) = hold_mut(st, id).filter(|h| Some(&h.handle) == handle) {
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
                        h.retry_at = Some(later(now, backoff(h.failures)));
                        h.failures = h.failures.saturating_add(1);
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

#[cfg(test)]
mod tests {
    use super::super::testing::{client, messages, Fake, RULES};
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn queue(fake: &Fake, timeout: Option<u32>) -> Arc<HeldQueue<Fake>> {
        Arc::new(HeldQueue::new(client(fake), timeout, RULES))
    }

    /// A registry holding `queues[i]` for message i, all hidden since `t0`.
    fn registry(queues: &[&Arc<HeldQueue<Fake>>], t0: Instant) -> State<Fake> {
        let mut st = State::<Fake>::default();
        for (i, q) in queues.iter().enumerate() {
            let m = Message {
                message_id: format!("m{i}"),
                receipt_handle: format!("h{i}"),
                ..Message::default()
            };
            st.hold(q, std::slice::from_ref(&m), t0, 1);
        }
        st
    }

    #[test]
    fn the_plan_extends_due_holds_in_batches_of_ten_and_looks_up_unknown_timeouts() {
        let fake = Fake::default();
        let t0 = Instant::now();
        let explicit = queue(&fake, Some(30));
        let unknown = queue(&fake, None);
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
        let t0 = Instant::now();
        let q = queue(&fake, Some(30));
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
        let t0 = Instant::now();
        let q = queue(&fake, None);
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

    /// Threat: a message whose visibility lapsed comes back to the same
    /// drain with a new receipt handle; extending (or deleting) it with the
    /// old one does not take on SQS, so it comes back again later.
    #[test]
    fn a_message_received_again_keeps_one_hold_with_its_newest_handle() {
        let fake = Fake::default();
        let t0 = Instant::now();
        let q = queue(&fake, Some(30));
        let mut st = State::<Fake>::default();
        st.hold(&q, &messages(3), t0, 1);
        let bytes = st.held_bytes;
        let mut again = messages(3)[1].clone();
        again.receipt_handle = "h1-newer".into();
        st.hold(&q, std::slice::from_ref(&again), t0 + secs(31), 2);
        assert_eq!(st.holds.len(), 3);
        assert_eq!(st.stats.held_again, 1);
        assert_eq!(st.held_bytes, bytes + "-newer".len());
        let h = &st.holds[&1];
        assert_eq!(h.handle, "h1-newer");
        // its timer restarted with the new receipt; its scope is the first
        assert_eq!(h.visible_at, Some(t0 + secs(61)));
        assert_eq!(h.scope, 1);
        // an extension sent with the old handle before the new receipt is
        // not taken for the new one
        let stale = Call {
            queue: q.clone(),
            seconds: 30,
            entries: vec![("1".into(), "h1".into())],
            hand_back: false,
        };
        let ok = BatchOutcome {
            succeeded: vec!["1".into()],
            failed: vec![],
        };
        record(
            &mut st,
            vec![(stale, t0 + secs(15), Ok(ok))],
            vec![],
            t0 + secs(32),
        );
        assert_eq!(st.holds[&1].visible_at, Some(t0 + secs(61)));
        assert_eq!(st.stats.extended, 0);
        // forgetting the message ends its one hold
        st.forget(&q, [again.message_id].iter());
        assert_eq!(st.holds.len(), 2);
        assert_eq!(st.held_bytes, bytes - st_hold_bytes("m1", "h1"));
    }

    /// Threat: the same message id from two queues (two spellings of one,
    /// or a hostile endpoint) shared one index entry, so forgetting it on
    /// one queue ended the other's hold.
    #[test]
    fn one_id_in_two_queues_is_two_holds() {
        let fake = Fake::default();
        let t0 = Instant::now();
        let q = queue(&fake, Some(30));
        let other_client = crate::Client::new(
            fake.clone(),
            crate::ClientConfig::default(),
            Arc::new(super::super::testing::creds()),
            "us-east-1".into(),
            crate::QueueRef::parse("http://127.0.0.1:9/000000000000/other", None).unwrap(),
            None,
        );
        let other = Arc::new(HeldQueue::new(other_client, Some(30), RULES));
        let mut st = State::<Fake>::default();
        st.hold(&q, &messages(1), t0, 1);
        st.hold(&other, &messages(1), t0, 1);
        assert_eq!((st.holds.len(), st.stats.held_again), (2, 0));
        st.forget(&q, ["m0".to_string()].iter());
        assert_eq!(st.holds.len(), 1);
        assert!(Arc::ptr_eq(
            &st.holds.values().next().unwrap().queue,
            &other
        ));
    }

    fn st_hold_bytes(id: &str, handle: &str) -> usize {
        handle.len() + 2 * id.len() + "http://127.0.0.1:9/000000000000/q".len() + HOLD_OVERHEAD
    }
}
