//! When to extend a held message, how long to back off, and what a queue's
//! visibility timeout may be: pure rules, no state, no I/O.

use std::time::{Duration, Instant};

use fetch_etl_core::args::MAX_VISIBILITY_TIMEOUT;

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
pub(super) const LOOKUP_TTL: Duration = Duration::from_secs(60);
/// The first wait after a failed call or lookup; it doubles up to
/// [`MAX_BACKOFF`].
const RETRY_AFTER: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

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

/// `t + d`, with `d` capped at [`MAX_HIDDEN`] (nothing the heartbeat
/// computes lies further ahead) and never overflowing: an instant this far
/// out cannot overflow on any clock a backend runs on, but a panic here
/// would end the thread, so the sum is checked all the same.
pub(super) fn later(t: Instant, d: Duration) -> Instant {
    t.checked_add(d.min(MAX_HIDDEN)).unwrap_or(t)
}

/// A queue's `VisibilityTimeout` attribute as the heartbeat uses it: whole
/// seconds, at most SQS's 12 hours (an endpoint may answer anything; a
/// larger value is taken as the largest SQS allows). None if not a number.
pub fn queue_timeout(attribute: &str) -> Option<Duration> {
    let secs = attribute.trim().parse::<u64>().ok()?;
    Some(Duration::from_secs(secs).min(MAX_HIDDEN))
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
    let timeout = timeout.min(MAX_HIDDEN);
    let cap_end = later(hidden_since, limit);
    // Already visible-until within a second of the cap (SQS counts whole
    // seconds): one more call could gain less than a second.
    if timeout.as_secs() == 0 || later(visible_at, Duration::from_secs(1)) > cap_end {
        return Step::Stop;
    }
    let due = visible_at.checked_sub(timeout / 2).unwrap_or(hidden_since);
    if now < due {
        return Step::WaitUntil(due);
    }
    let ask = timeout.max(floor).as_secs();
    let secs = ask.min(cap_end.saturating_duration_since(now).as_secs());
    if secs == 0 || later(now, Duration::from_secs(secs)) <= visible_at {
        return Step::Stop;
    }
    Step::Extend(secs as u32)
}

/// Doubling waits after failures, from [`RETRY_AFTER`] to [`MAX_BACKOFF`].
pub(super) fn backoff(failures: u32) -> Duration {
    RETRY_AFTER
        .saturating_mul(1 << failures.min(6))
        .min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// Threat: an allowed endpoint answers GetQueueAttributes with a
    /// VisibilityTimeout of u64::MAX seconds; 0.4.0 added it to an Instant
    /// outside any guard and the panic ended the thread for good.
    #[test]
    fn panic_a_huge_queue_timeout_is_taken_as_twelve_hours() {
        assert_eq!(queue_timeout("30"), Some(secs(30)));
        assert_eq!(queue_timeout(" 43200 "), Some(MAX_HIDDEN));
        assert_eq!(queue_timeout("43201"), Some(MAX_HIDDEN));
        assert_eq!(queue_timeout("18446744073709551615"), Some(MAX_HIDDEN));
        assert_eq!(queue_timeout("-1"), None);
        assert_eq!(queue_timeout("lots"), None);
        // and the arithmetic after it holds whatever it is given
        let t0 = Instant::now();
        let huge = Duration::from_secs(u64::MAX);
        assert_eq!(later(t0, huge), t0 + MAX_HIDDEN);
        // hidden for SQS's longest already: nothing more to ask, no panic
        let step = next_step(t0, t0, later(t0, huge), huge, huge, huge);
        assert_eq!(step, Step::Stop);
        let step = next_step(t0, t0, t0 + secs(30), huge, huge, huge);
        assert_eq!(step, Step::Extend(MAX_HIDDEN.as_secs() as u32));
    }
}
