//! The heartbeat's thread: plans a round under the registry's lock, sends
//! its calls without it, records what they came to; sleeps until the next
//! hold is due or it is woken. Every signal is blocked on it from its first
//! instruction (PostgreSQL's signal handlers must run on the backend's own
//! thread), and no panic ends it: a round that panics is counted and the
//! loop goes on. Should the thread end anyway, [`super::Heartbeat::alive`]
//! says so and the backend starts another.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};

use super::policy::queue_timeout;
use super::registry::{plan, record, CallResult, LookupResult, Plan};
use super::Shared;
use crate::transport::Transport;
use crate::wire::BatchAction;

/// The thread looks at its holds at least this often while it has any.
const TICK: Duration = Duration::from_millis(250);
/// Batch calls in flight at once.
const CONCURRENCY: usize = 8;

/// Marks the heartbeat dead however its thread ends (a return, or an
/// unwind that escaped every guard).
struct Alive<'a, T>(&'a Shared<T>);

impl<T> Drop for Alive<'_, T> {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::SeqCst);
        self.0.idle.notify_all();
    }
}

/// The thread's loop: until told to stop.
pub(super) fn run<T: Transport + Clone + 'static>(
    shared: &Shared<T>,
    rt: &tokio::runtime::Runtime,
) {
    let _alive = Alive(shared);
    loop {
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| round(shared, rt)));
        match outcome {
            Ok(true) => {}
            Ok(false) => return,
            Err(_) => {
                // A bug, or a reply nobody foresaw: count it, pause a little
                // (a panic that repeats must not spin), and go on.
                let mut st = shared.lock();
                st.stats.panics += 1;
                st.handing_back = false;
                drop(st);
                shared.idle.notify_all();
                std::thread::sleep(TICK);
            }
        }
    }
}

/// One round: plan, send, record; or sleep until there is work. False once
/// the heartbeat is told to stop.
fn round<T: Transport + Clone + 'static>(shared: &Shared<T>, rt: &tokio::runtime::Runtime) -> bool {
    let mut st = shared.lock();
    if st.stop {
        return false;
    }
    let now = Instant::now();
    let p = plan(&mut st, now);
    if p.is_empty() {
        shared.idle.notify_all();
        if st.holds.is_empty() {
            st.sleeping_until = None;
            drop(shared.wake.wait(st).unwrap_or_else(|e| e.into_inner()));
        } else {
            let until = p.wake_at.unwrap_or(now + TICK).min(now + TICK);
            st.sleeping_until = Some(until);
            let wait = until.saturating_duration_since(Instant::now());
            drop(
                shared
                    .wake
                    .wait_timeout(st, wait)
                    .unwrap_or_else(|e| e.into_inner()),
            );
        }
        return true;
    }
    st.handing_back = p.calls.iter().any(|c| c.hand_back);
    st.sleeping_until = Some(now);
    drop(st);
    let (calls, lookups) = rt.block_on(send(p));
    let mut st = shared.lock();
    record(&mut st, calls, lookups, Instant::now());
    if std::mem::take(&mut st.handing_back) {
        drop(st);
        shared.idle.notify_all();
    }
    true
}

async fn send<T: Transport + Clone + 'static>(
    p: Plan<T>,
) -> (Vec<CallResult<T>>, Vec<LookupResult>) {
    let lookups = stream::iter(p.lookups)
        .map(|q| async move {
            let r = q.client.queue_attributes(&["VisibilityTimeout"]).await;
            let timeout = r
                .ok()
                .and_then(|a| a.get("VisibilityTimeout").and_then(|v| queue_timeout(v)));
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

/// The kernel's id of the calling thread.
pub(super) fn current_thread_id() -> i64 {
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
pub(super) fn spawn_with_signals_blocked(
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
    use std::collections::HashSet;

    use super::super::testing::{client, creds, messages, started, Fake, RULES};
    use super::super::{HoldRules, MAX_HELD_BYTES};
    use super::*;
    use crate::Message;

    const S: Duration = Duration::from_secs(1);

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

    /// Threat: an allowed endpoint answers the timeout lookup with a value
    /// no queue can have (u64::MAX seconds): 0.4.0's thread panicked on the
    /// arithmetic and, for the rest of the backend, extended and handed back
    /// nothing. Now the value is taken as SQS's 12 hours, and the thread
    /// goes on.
    #[test]
    fn panic_a_huge_visibility_timeout_neither_ends_the_thread_nor_its_extensions() {
        let fake = Fake::default();
        *fake.visibility_timeout.lock().unwrap() = "18446744073709551615".into();
        let hb = started(&fake);
        let q = hb.queue(&client(&fake), creds(), None, RULES);
        hb.hold(&q, &messages(3), Instant::now(), 1);
        std::thread::sleep(S);
        assert!(hb.alive(), "the thread survived the lookup");
        assert_eq!(hb.take_stats().panics, 0);
        // a 12-hour timeout: the next extension is six hours away; a queue
        // given a short timeout is still served by the same thread
        let short = hb.queue(&client(&fake), creds(), Some(1), RULES);
        hb.hold(&short, &messages(2), Instant::now(), 1);
        std::thread::sleep(S * 3 / 2);
        assert!(hb.take_stats().extended >= 2);
        assert!(hb.alive());
    }

    /// Threat: anything else in a round that panics (a transport, a reply
    /// nobody foresaw) ends the thread, silently, for the backend's life.
    #[test]
    fn panic_in_a_round_is_counted_and_the_thread_goes_on() {
        let fake = Fake::default();
        fake.panic_next.store(true, Ordering::SeqCst);
        let hb = started(&fake);
        let q = hb.queue(&client(&fake), creds(), Some(1), RULES);
        hb.hold(&q, &messages(2), Instant::now(), 1);
        std::thread::sleep(S * 2);
        assert!(hb.alive());
        let stats = hb.take_stats();
        assert_eq!(stats.panics, 1, "{stats:?}");
        assert!(stats.extended >= 2, "extensions went on: {stats:?}");
    }

    #[test]
    fn a_stopped_thread_says_it_is_no_longer_alive() {
        let fake = Fake::default();
        let hb = started(&fake);
        assert!(hb.alive());
        hb.stop();
        let deadline = Instant::now() + S * 2;
        while hb.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!hb.alive());
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
            floor: Duration::ZERO,
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
        hb.forget(&q, &HashSet::from(["m1".to_string()]));
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
        let per_hold = 1005 + 12 + 33 + super::super::registry::HOLD_OVERHEAD;
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
