//! One drain per queue: a row of `fetch_etl.queue_locks`, locked FOR UPDATE
//! by the drain's transaction as the extension owner. No other role can lock
//! these rows (they cannot read the table), so nobody without the owner's
//! rights can make drains skip a queue, which anyone could with the advisory
//! lock of 0.1.0.
//!
//! The key is the queue's normalised URL (`QueueRef::lock_key`): every
//! spelling of a queue shares one row. The first drain of a queue inserts its
//! row; a second drain meeting that uncommitted insert gives up after a
//! millisecond (lock_timeout) and counts the queue as busy, as it would for
//! a row locked by a drain.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use pgrx::pg_sys;
use pgrx::prelude::*;

use super::error::SpiOrRaise;
use super::spi::{as_owner, in_subxact, with_lock_timeout};

/// How long a first drain of a queue waits for another first drain's row:
/// as good as not at all (the least lock_timeout there is).
const FIRST_DRAIN_WAIT: Duration = Duration::from_millis(1);

/// Locks `key` for this transaction, if no other transaction holds it.
pub(crate) fn try_lock_queue(owner: pg_sys::Oid, key: &str) -> bool {
    as_owner(owner, || {
        for _ in 0..2 {
            let locked = Spi::get_one_with_args::<bool>(
                "WITH l AS (SELECT FROM fetch_etl.queue_locks \
                            WHERE queue_key OPERATOR(pg_catalog.=) $1 FOR UPDATE SKIP LOCKED) \
                 SELECT pg_catalog.count(*) OPERATOR(pg_catalog.>) 0 FROM l",
                &[key.into()],
            )
            .or_raise_spi("queue lock");
            if locked == Some(true) {
                return true;
            }
            let exists = Spi::get_one_with_args::<bool>(
                "SELECT EXISTS (SELECT FROM fetch_etl.queue_locks WHERE queue_key OPERATOR(pg_catalog.=) $1)",
                &[key.into()],
            )
            .or_raise_spi("queue lock");
            if exists == Some(true) {
                return false; // someone holds it
            }
            // The queue's first drain: insert its row (and so hold it). Another
            // first drain's uncommitted row makes this wait: only briefly.
            let inserted = in_subxact(AssertUnwindSafe(|| {
                with_lock_timeout(FIRST_DRAIN_WAIT, || {
                    Spi::get_one_with_args::<bool>(
                        "WITH i AS (INSERT INTO fetch_etl.queue_locks (queue_key) VALUES ($1) \
                                    ON CONFLICT (queue_key) DO NOTHING RETURNING 1) \
                         SELECT pg_catalog.count(*) OPERATOR(pg_catalog.>) 0 FROM i",
                        &[key.into()],
                    )
                })
            }));
            match inserted {
                Ok(r) => {
                    if r.or_raise_spi("queue lock") == Some(true) {
                        return true;
                    }
                    // committed meanwhile by another drain: try to lock it
                }
                Err(e) if e.is_lock_timeout() => return false,
                Err(e) => e.rethrow(),
            }
        }
        false
    })
}
