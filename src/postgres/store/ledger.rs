//! `fetch_etl.processed_messages`, the ledger of what was stored: one key
//! per message (its SQS id, or its pipeline's idempotency key), written as
//! the extension owner in the drain's own transaction. What makes a
//! redelivery, a lost delete, a re-run or a concurrent drain load a message
//! once.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use pgrx::pg_sys;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};

use super::{prepare, TEXT_ARRAY};
use crate::postgres::error::SpiOrRaise;
use crate::postgres::spi::{as_owner, in_subxact, with_lock_timeout};

/// Parameters: keys text[] (sorted), run id. The common case, every key
/// new: one descent of the primary key per key (its unique check), where
/// `ON CONFLICT` first probes the index, then inserts speculatively and
/// returns each key (measured: 162,062 -> 146,011 instructions per message
/// of the store path in 7b). A key already there (a redelivery) or being
/// added by another session fails it with a unique violation, and the
/// batch is redone with LEDGER_SQL, waiting only what is left of the wait.
const LEDGER_SQL_FAST: &str = "INSERT INTO fetch_etl.processed_messages (message_id, run_id) \
     SELECT pg_catalog.unnest($1::pg_catalog.text[]), $2";

/// Parameters: keys text[] (sorted), run id. Returns the keys that were new.
const LEDGER_SQL: &str = "INSERT INTO fetch_etl.processed_messages (message_id, run_id) \
     SELECT pg_catalog.unnest($1::pg_catalog.text[]), $2 \
     ON CONFLICT (message_id) DO NOTHING RETURNING message_id";

/// Parameters: keys text[], run id. Returns those this run recorded.
const OWN_SQL: &str = "SELECT message_id::pg_catalog.text FROM fetch_etl.processed_messages \
     WHERE message_id OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.text[]) AND run_id OPERATOR(pg_catalog.=) $2";

/// Parameters: keys text[], run id.
const FORGET_SQL: &str = "DELETE FROM fetch_etl.processed_messages \
     WHERE message_id OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.text[]) AND run_id OPERATOR(pg_catalog.=) $2";

/// What the ledger made of a batch's keys.
pub(crate) struct Ledgered {
    /// Every key was new (the common case; `new` and `deferred` are then
    /// empty, not filled with copies of every key).
    pub(crate) all_new: bool,
    /// Keys not seen before: store these.
    pub(crate) new: HashSet<String>,
    /// Keys another session holds uncommitted beyond
    /// fetch_etl.ledger_wait_timeout: leave these messages in the queue for
    /// a later drain.
    pub(crate) deferred: HashSet<String>,
}

impl Ledgered {
    /// Whether `key` was not seen before.
    pub(crate) fn is_new(&self, key: &str) -> bool {
        self.all_new || self.new.contains(key)
    }
}

/// The ledger's statements, prepared once per store (as the owner).
pub(crate) struct Ledger {
    owner: pg_sys::Oid,
    fast: OwnedPreparedStatement,
    slow: OwnedPreparedStatement,
}

impl Ledger {
    pub(crate) fn prepare(client: &SpiClient<'_>, owner: pg_sys::Oid) -> Ledger {
        as_owner(owner, || Ledger {
            owner,
            fast: prepare(client, LEDGER_SQL_FAST, &[TEXT_ARRAY, pg_sys::INT8OID]),
            slow: prepare(client, LEDGER_SQL, &[TEXT_ARRAY, pg_sys::INT8OID]),
        })
    }

    /// Records `keys`. A key another session holds uncommitted (a
    /// concurrent drain of the same message) is waited for at most `wait`
    /// in all; after that it is deferred, not an error.
    #[inline(never)] // a frame of its own in scripts/bench's profile (called once per batch)
    pub(crate) fn record(
        &self,
        client: &mut SpiClient<'_>,
        keys: &[&str],
        run_id: i64,
        wait: Duration,
    ) -> Ledgered {
        let mut sorted: Vec<&str> = keys.to_vec();
        sorted.sort_unstable();
        as_owner(self.owner, || {
            let mut out = Ledgered {
                all_new: false,
                new: HashSet::new(),
                deferred: HashSet::new(),
            };
            // Runs `stmt` over `keys` in a subtransaction; the keys it
            // returns (LEDGER_SQL returns the new ones, LEDGER_SQL_FAST none).
            let mut insert = |stmt: &OwnedPreparedStatement, keys: &[&str], timeout| {
                in_subxact(AssertUnwindSafe(|| {
                    with_lock_timeout(timeout, || {
                        let args = [keys.to_vec().into(), run_id.into()];
                        client.update(stmt, None, &args).map(|rows| {
                            rows.filter_map(|row| row.get::<String>(1).ok().flatten())
                                .collect::<Vec<String>>()
                        })
                    })
                }))
            };
            let started = std::time::Instant::now();
            let recorded = match insert(&self.fast, &sorted, wait) {
                Ok(r) => {
                    r.or_raise_spi("ledger");
                    out.all_new = true;
                    return out;
                }
                // Seen before, or committed by another session while we waited.
                Err(e) if e.is_unique_violation() => {
                    insert(&self.slow, &sorted, wait.saturating_sub(started.elapsed()))
                }
                Err(e) => Err(e),
            };
            match recorded {
                Ok(r) => out.new.extend(r.or_raise_spi("ledger")),
                Err(e) if e.is_lock_timeout() => {
                    // Someone still holds some of them: find which, without
                    // waiting again, and leave those for later.
                    for k in &sorted {
                        match insert(&self.slow, &[k], Duration::from_millis(1)) {
                            Ok(r) => out.new.extend(r.or_raise_spi("ledger")),
                            Err(e) if e.is_lock_timeout() => {
                                out.deferred.insert(k.to_string());
                            }
                            Err(e) => e.rethrow(),
                        }
                    }
                }
                Err(e) => e.rethrow(),
            }
            out
        })
    }

    /// Which of `keys` (found in the ledger already) this run recorded
    /// itself: messages it received again while it held them (only after
    /// the ledger found some keys there, so rare).
    pub(crate) fn own(
        &self,
        client: &mut SpiClient<'_>,
        keys: &[&str],
        run_id: i64,
    ) -> HashSet<String> {
        if keys.is_empty() {
            return HashSet::new();
        }
        as_owner(self.owner, || {
            client
                .select(OWN_SQL, None, &[keys.to_vec().into(), run_id.into()])
                .or_raise_spi("ledger")
                .filter_map(|row| row.get::<String>(1).ok().flatten())
                .collect()
        })
    }

    /// Takes `keys` this run recorded back out of the ledger: messages left
    /// in the queue after all (FIFO messages behind a deferred one of their
    /// group), so that their redelivery is not a duplicate.
    #[inline(never)] // a frame of its own in scripts/bench's profile (called once per batch)
    pub(crate) fn forget(&self, client: &mut SpiClient<'_>, keys: &[&str], run_id: i64) {
        if keys.is_empty() {
            return;
        }
        as_owner(self.owner, || {
            client
                .update(FORGET_SQL, None, &[keys.to_vec().into(), run_id.into()])
                .or_raise_spi("ledger");
        });
    }
}
