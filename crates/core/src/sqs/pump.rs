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

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;

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
}

#[derive(Debug)]
pub enum PumpEvent {
    Messages(Vec<Message>),
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
}

type Call<'a> =
    Pin<Box<dyn Future<Output = (u32, bool, Result<Vec<Message>, SqsError>)> + Send + 'a>>;

/// Runs until the queue looks empty, `max_messages` came in, an error stopped
/// it, or the consumer went away (the receiver was dropped).
pub async fn pump<R: Receive>(
    source: &R,
    cfg: PumpConfig,
    tx: mpsc::Sender<PumpEvent>,
) -> PumpStats {
    let mut inflight: FuturesUnordered<Call<'_>> = FuturesUnordered::new();
    let mut requested: u64 = 0;
    let mut stats = PumpStats::default();
    let mut looks_empty = false;
    let mut long_polled = false;
    let mut stopped = false;
    let concurrency = cfg.concurrency.max(1);
    loop {
        while !stopped
            && !looks_empty
            && inflight.len() < concurrency
            && stats.received + requested < cfg.max_messages
        {
            let n = (cfg.max_messages - stats.received - requested).min(10) as u32;
            requested += n as u64;
            inflight.push(Box::pin(async move {
                (n, false, source.receive(n, 0, cfg.visibility_timeout).await)
            }));
        }
        if inflight.is_empty() {
            let may_long_poll = looks_empty
                && !long_polled
                && !stopped
                && cfg.wait_seconds > 0
                && stats.received < cfg.max_messages;
            if !may_long_poll {
                return stats;
            }
            long_polled = true;
            let n = (cfg.max_messages - stats.received).min(10) as u32;
            requested += n as u64;
            let wait = cfg.wait_seconds;
            inflight.push(Box::pin(async move {
                (
                    n,
                    true,
                    source.receive(n, wait, cfg.visibility_timeout).await,
                )
            }));
        }
        let Some((n, was_long_poll, result)) = inflight.next().await else {
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
                if tx.send(PumpEvent::Messages(msgs)).await.is_err() {
                    return stats; // the consumer is gone
                }
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
                            sent_timestamp_ms: None,
                            receive_count: None,
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
            let stats = pump(script, cfg, tx).await;
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
        }
    }

    fn received(events: &[PumpEvent]) -> usize {
        events
            .iter()
            .map(|e| {
                if let PumpEvent::Messages(m) = e {
                    m.len()
                } else {
                    0
                }
            })
            .sum()
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
                received: 25
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
