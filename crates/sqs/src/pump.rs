//! The receive pump: keeps `concurrency` ReceiveMessage calls in flight and
//! hands what they bring to a consumer through a bounded channel, so the
//! network keeps working while the consumer (the database side) stores the
//! previous batch. The channel's bound is the backpressure.
//!
//! It asks for at most `max_messages` in all. Once a short poll comes back
//! empty and the calls in flight are done, one long poll of `wait_seconds` (if
//! any) gives late messages a chance; messages it brings are followed by short
//! polls, and the pump ends when the queue is empty again: one long poll per
//! pump. The first error stops new calls; the calls in flight still finish.

use std::future::Future;
use std::pin::Pin;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, Notify};

use super::transport::Transport;
use super::{Client, Message, SqsError};

/// Something that answers ReceiveMessage: the SQS client, or a test double.
pub trait Receive: Send + Sync {
    fn receive(
        &self,
        max: u32,
        wait_seconds: u32,
        visibility_timeout: Option<u32>,
    ) -> impl Future<Output = Result<Vec<Message>, SqsError>> + Send;
}

impl<T: Transport> Receive for Client<T> {
    fn receive(
        &self,
        max: u32,
        wait_seconds: u32,
        visibility_timeout: Option<u32>,
    ) -> impl Future<Output = Result<Vec<Message>, SqsError>> + Send {
        Client::receive(self, max, wait_seconds, visibility_timeout)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct PumpConfig {
    pub max_messages: u64,
    pub concurrency: usize,
    pub wait_seconds: u32,
    pub visibility_timeout: Option<u32>,
    /// No new call starts while more bytes than this are received and not yet
    /// stored (see [`Outstanding`]).
    pub high_water: usize,
}

/// Bytes of received messages not yet stored, shared by the pump and its
/// consumer: the pump's memory bound. At most `high_water` plus what the
/// calls in flight bring (each at most the client's reply cap) is ever held.
#[derive(Debug, Default)]
pub struct Outstanding {
    bytes: AtomicUsize,
    freed: Notify,
}

impl Outstanding {
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    fn hold(self: &Arc<Self>, bytes: usize) -> Held {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        Held {
            outstanding: Some(self.clone()),
            bytes,
        }
    }
}

/// Some outstanding bytes; given back when dropped (once stored).
#[derive(Debug, Default)]
pub struct Held {
    outstanding: Option<Arc<Outstanding>>,
    bytes: usize,
}

impl Held {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes `other`'s bytes over (to be given back together).
    pub fn absorb(&mut self, mut other: Held) {
        if self.outstanding.is_none() {
            self.outstanding = other.outstanding.take();
        } else {
            other.outstanding = None;
        }
        self.bytes += std::mem::take(&mut other.bytes);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(o) = self.outstanding.take() {
            o.bytes.fetch_sub(self.bytes, Ordering::Relaxed);
            o.freed.notify_one();
        }
    }
}

/// What a message costs in memory, about.
pub fn message_bytes(m: &Message) -> usize {
    let attributes: usize = m.attributes.iter().map(|(_, v)| v.len() + 16).sum();
    let message_attributes: usize = m
        .message_attributes
        .iter()
        .map(|a| {
            a.name.len()
                + a.data_type.len()
                + a.string_value.as_ref().map_or(0, String::len)
                + a.binary_value.as_ref().map_or(0, String::len)
                + 64
        })
        .sum();
    m.body.len()
        + m.message_id.len()
        + m.receipt_handle.len()
        + 64
        + attributes
        + message_attributes
}

#[derive(Debug)]
pub enum PumpEvent {
    /// Messages, with their bytes held until the consumer drops the `Held`.
    Messages(Vec<Message>, Held),
    /// A call failed (after the client's retries); no new calls are made.
    /// `received_before` says whether any message had come in before it.
    Failed {
        error: SqsError,
        received_before: bool,
    },
}

/// What the pump did, once it is done.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PumpStats {
    pub calls: u32,
    pub received: u64,
    /// Replies over the client's size cap: their messages come back after
    /// their visibility timeout, and the pump asked for one message per call
    /// from then on.
    pub oversized: u32,
}

/// One ReceiveMessage call: (messages asked for, long poll, made at, reply).
type Call<'a> =
    Pin<Box<dyn Future<Output = (u32, bool, Instant, Result<Vec<Message>, SqsError>)> + Send + 'a>>;

/// Called with every reply's messages as soon as it arrives, and when the
/// call that brought them was made (SQS started their visibility timeout no
/// earlier): the visibility heartbeat holds them from then on.
pub type OnReceive = dyn Fn(&[Message], Instant) + Send + Sync;

/// Runs until the queue looks empty, `max_messages` came in, an error stopped
/// it, or the consumer went away (the receiver was dropped).
pub async fn pump<R: Receive>(
    source: &R,
    cfg: PumpConfig,
    outstanding: Arc<Outstanding>,
    tx: mpsc::Sender<PumpEvent>,
    on_receive: &OnReceive,
) -> PumpStats {
    let mut inflight: FuturesUnordered<Call<'_>> = FuturesUnordered::new();
    let mut requested: u64 = 0;
    let mut stats = PumpStats::default();
    let mut looks_empty = false;
    let mut long_polled = false;
    let mut stopped = false;
    // After a reply over the size cap: one message per call.
    let mut per_call: u64 = 10;
    let concurrency = cfg.concurrency.max(1);
    loop {
        let gated = || outstanding.bytes() > cfg.high_water;
        while !stopped
            && !looks_empty
            && !gated()
            && inflight.len() < concurrency
            && stats.received + requested < cfg.max_messages
        {
            let n = (cfg.max_messages - stats.received - requested).min(per_call) as u32;
            requested += n as u64;
            let at = Instant::now();
            inflight.push(Box::pin(async move {
                (
                    n,
                    false,
                    at,
                    source.receive(n, 0, cfg.visibility_timeout).await,
                )
            }));
        }
        if inflight.is_empty() {
            let want_more = !stopped && stats.received < cfg.max_messages;
            let may_long_poll = looks_empty && !long_polled && want_more && cfg.wait_seconds > 0;
            if (may_long_poll || (want_more && !looks_empty)) && gated() {
                // Too much is received and not yet stored: wait for the
                // consumer (which stores at least every FLUSH bytes, less than
                // the high water mark, so it never waits for us meanwhile).
                let freed = outstanding.freed.notified();
                if gated() {
                    freed.await;
                }
                continue;
            }
            if !may_long_poll {
                return stats;
            }
            long_polled = true;
            let n = (cfg.max_messages - stats.received).min(per_call) as u32;
            requested += n as u64;
            let wait = cfg.wait_seconds;
            let at = Instant::now();
            inflight.push(Box::pin(async move {
                (
                    n,
                    true,
                    at,
                    source.receive(n, wait, cfg.visibility_timeout).await,
                )
            }));
        }
        let Some((n, was_long_poll, asked_at, result)) = inflight.next().await else {
            continue;
        };
        requested -= n as u64;
        stats.calls += 1;
        match result {
            Ok(msgs) if msgs.is_empty() => looks_empty = true,
            Ok(msgs) => {
                if was_long_poll {
                    looks_empty = false;
                }
                stats.received += msgs.len() as u64;
                on_receive(&msgs, asked_at);
                let held = outstanding.hold(msgs.iter().map(message_bytes).sum());
                if tx.send(PumpEvent::Messages(msgs, held)).await.is_err() {
                    return stats; // the consumer is gone
                }
            }
            Err(SqsError::ResponseTooLarge { .. }) if n > 1 => {
                // Ten messages too large for one reply together: one at a time
                // always fits. This reply's messages come back later.
                stats.oversized += 1;
                per_call = 1;
            }
            Err(error) => {
                let received_before = stats.received > 0;
                if !stopped {
                    stopped = true;
                    if tx
                        .send(PumpEvent::Failed {
                            error,
                            received_before,
                        })
                        .await
                        .is_err()
                        || !received_before
                    {
                        return stats; // nothing to keep: stop at once
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    /// A scripted queue: each call takes the next scripted answer (or an empty
    /// reply once the script is exhausted) and records what it was asked.
    struct Script {
        answers: Mutex<VecDeque<Result<usize, SqsError>>>,
        asked: Mutex<Vec<(u32, u32)>>,
        next_id: Mutex<usize>,
    }

    impl Script {
        fn new(answers: Vec<Result<usize, SqsError>>) -> Self {
            Script {
                answers: Mutex::new(answers.into()),
                asked: Mutex::new(Vec::new()),
                next_id: Mutex::new(0),
            }
        }
    }

    impl Receive for Script {
        fn receive(
            &self,
            max: u32,
            wait: u32,
            _vis: Option<u32>,
        ) -> impl Future<Output = Result<Vec<Message>, SqsError>> + Send {
            self.asked.lock().unwrap().push((max, wait));
            let answer = self.answers.lock().unwrap().pop_front().unwrap_or(Ok(0));
            let result = answer.map(|n| {
                let n = n.min(max as usize);
                let mut id = self.next_id.lock().unwrap();
                (0..n)
                    .map(|_| {
                        *id += 1;
                        Message {
                            message_id: format!("m{id}"),
                            receipt_handle: format!("r{id}"),
                            body: "{}".into(),
                            ..Message::default()
                        }
                    })
                    .collect()
            });
            async move { result }
        }
    }

    fn run(script: &Script, cfg: PumpConfig) -> (PumpStats, Vec<PumpEvent>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (tx, mut rx) = mpsc::channel(1000);
            let stats = pump(script, cfg, Arc::default(), tx, &|_, _| {}).await;
            let mut events = Vec::new();
            while let Ok(e) = rx.try_recv() {
                events.push(e);
            }
            (stats, events)
        })
    }

    fn cfg(max: u64, concurrency: usize, wait: u32) -> PumpConfig {
        PumpConfig {
            max_messages: max,
            concurrency,
            wait_seconds: wait,
            visibility_timeout: None,
            high_water: usize::MAX,
        }
    }

    fn received(events: &[PumpEvent]) -> usize {
        events
            .iter()
            .map(|e| {
                if let PumpEvent::Messages(m, ..) = e {
                    m.len()
                } else {
                    0
                }
            })
            .sum()
    }

    #[test]
    fn every_reply_is_announced_with_the_time_its_call_was_made() {
        let s = Script::new(vec![Ok(10), Ok(3)]);
        let seen: Arc<Mutex<Vec<(usize, Instant)>>> = Arc::default();
        let announced = seen.clone();
        let before = Instant::now();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let delivered = rt.block_on(async {
            let (tx, mut rx) = mpsc::channel(1000);
            let on_receive =
                move |m: &[Message], at: Instant| announced.lock().unwrap().push((m.len(), at));
            pump(&s, cfg(100, 1, 0), Arc::default(), tx, &on_receive).await;
            let mut n = 0;
            while let Ok(PumpEvent::Messages(m, _)) = rx.try_recv() {
                n += m.len();
            }
            n
        });
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            vec![&10, &3]
        );
        assert_eq!(delivered, 13);
        assert!(seen
            .iter()
            .all(|(_, at)| *at >= before && *at <= Instant::now()));
    }

    #[test]
    fn drains_until_empty_without_long_poll() {
        let s = Script::new(vec![Ok(10), Ok(10), Ok(5)]);
        let (stats, events) = run(&s, cfg(1000, 1, 0));
        assert_eq!(received(&events), 25);
        assert_eq!(
            stats,
            PumpStats {
                calls: 4,
                received: 25,
                oversized: 0
            }
        );
        assert!(s
            .asked
            .lock()
            .unwrap()
            .iter()
            .all(|&(max, wait)| max == 10 && wait == 0));
    }

    #[test]
    fn one_long_poll_after_the_queue_looks_empty() {
        // short polls: 10, empty; long poll brings 3; short poll empty; end (no second long poll)
        let s = Script::new(vec![Ok(10), Ok(0), Ok(3), Ok(0)]);
        let (stats, events) = run(&s, cfg(1000, 1, 20));
        assert_eq!(received(&events), 13);
        assert_eq!(stats.calls, 4);
        let asked = s.asked.lock().unwrap().clone();
        assert_eq!(asked, vec![(10, 0), (10, 0), (10, 20), (10, 0)]);
    }

    #[test]
    fn never_asks_for_more_than_max_messages() {
        let s = Script::new(vec![Ok(10); 100]);
        let (stats, events) = run(&s, cfg(25, 8, 20));
        assert_eq!(received(&events), 25);
        assert_eq!(stats.received, 25);
        let asked: u32 = s.asked.lock().unwrap().iter().map(|&(m, _)| m).sum();
        assert_eq!(
            asked, 25,
            "10 + 10 + 5, never more in flight than left to take"
        );
    }

    #[test]
    fn an_error_before_any_message_stops_at_once() {
        let s = Script::new(vec![Err(SqsError::Malformed("x".into())), Ok(10), Ok(10)]);
        let (_, events) = run(&s, cfg(1000, 1, 0));
        assert!(matches!(
            events.as_slice(),
            [PumpEvent::Failed {
                received_before: false,
                ..
            }]
        ));
    }

    #[test]
    fn memory_no_new_call_while_too_much_is_unstored() {
        // Each call brings 10 messages; the consumer stores (gives back) what
        // it holds once it holds `flush` bytes, less than the high-water mark,
        // as the drain does. The pump then never has more outstanding than the
        // mark plus what the calls in flight bring.
        let s = Script::new(vec![Ok(10); 30]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        let reply = 10
            * message_bytes(&Message {
                message_id: "m1000".into(),
                receipt_handle: "r1000".into(),
                body: "{}".into(),
                ..Message::default()
            });
        let config = PumpConfig {
            high_water: 3 * reply,
            ..cfg(300, 4, 0)
        };
        let flush = 2 * reply;
        let (peak, got) = rt.block_on(async {
            let outstanding: Arc<Outstanding> = Arc::default();
            let (tx, mut rx) = mpsc::channel(1000);
            let o = outstanding.clone();
            let consumer = async move {
                let (mut peak, mut got) = (0, 0);
                let mut kept = Held::default();
                while let Some(e) = rx.recv().await {
                    if let PumpEvent::Messages(m, held) = e {
                        got += m.len();
                        kept.absorb(held);
                        peak = peak.max(o.bytes());
                        if kept.bytes() >= flush {
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            kept = Held::default(); // stored: the bytes are given back
                        }
                    }
                }
                (peak, got)
            };
            let (_, r) = tokio::join!(
                pump(&s, config, outstanding.clone(), tx, &|_, _| {}),
                consumer
            );
            assert_eq!(outstanding.bytes(), 0, "everything given back");
            r
        });
        assert_eq!(got, 300);
        assert!(
            peak <= 3 * reply + 4 * reply,
            "peak {peak} vs reply {reply}"
        );
        assert!(peak > reply, "the test did hold bytes");
    }

    #[test]
    fn memory_a_reply_over_the_size_cap_switches_to_one_message_per_call() {
        let s = Script::new(vec![
            Ok(10),
            Err(SqsError::ResponseTooLarge { limit: 1 }),
            Ok(1),
            Ok(1),
            Ok(0),
        ]);
        let (stats, events) = run(&s, cfg(1000, 1, 0));
        assert_eq!(received(&events), 12);
        assert_eq!(stats.oversized, 1);
        let asked: Vec<u32> = s.asked.lock().unwrap().iter().map(|&(m, _)| m).collect();
        assert_eq!(asked, vec![10, 10, 1, 1, 1]);
        assert!(
            events.iter().all(|e| matches!(e, PumpEvent::Messages(..))),
            "not an error"
        );
    }

    #[test]
    fn an_error_after_progress_keeps_what_came_in_and_stops_new_calls() {
        let s = Script::new(vec![
            Ok(10),
            Err(SqsError::Malformed("x".into())),
            Ok(10),
            Ok(10),
        ]);
        let (stats, events) = run(&s, cfg(1000, 1, 20));
        assert_eq!(received(&events), 10);
        assert!(matches!(
            events.last(),
            Some(PumpEvent::Failed {
                received_before: true,
                ..
            })
        ));
        assert_eq!(stats.calls, 2, "no call after the error, no long poll");
    }
}
