//! The PII vault: (mask, raw value) pairs of the recoverable masks of loaded
//! rows, collected across batches and written as the extension owner in
//! large sorted runs (far fewer index pages touched per row than batch by
//! batch: half the time for 100,000 messages), once the buffer holds 5,000
//! pairs or [`VAULT_FLUSH_BYTES`], and at the end of every drain and replay.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};

use fetch_etl_core::budget::{VAULT_FLUSH_BYTES, VAULT_PAIR_OVERHEAD};

use super::{prepare, TEXT_ARRAY};
use crate::postgres::error::SpiOrRaise;
use crate::postgres::settings;
use crate::postgres::spi::{self, as_owner, in_subxact, with_lock_timeout};

/// `INSERT INTO <table> (masked, raw)` of the pairs ($1 masks, $2 values)
/// whose mask the vault has not committed.
macro_rules! pairs_not_in_vault_into {
    ($table:literal) => {
        concat!(
            "INSERT INTO ", $table, " (masked, raw) \
             SELECT t.m, t.r FROM (SELECT pg_catalog.unnest($1::pg_catalog.text[]) AS m, pg_catalog.unnest($2::pg_catalog.text[]) AS r) AS t \
             WHERE NOT EXISTS (SELECT FROM fetch_etl.pii_vault v WHERE v.masked OPERATOR(pg_catalog.=) t.m OFFSET 0)"
        )
    };
}

/// Parameters: masked text[], raw text[], sorted by mask, so the inserts walk
/// the primary key in order, unnested in a select list, not in FROM (see
/// fetch_etl_core::target: no tuplestore copy). Pairs are collected across
/// batches and inserted in large sorted runs: far fewer index pages touched
/// per row than batch by batch (half the time for 100,000 messages).
///
/// `OFFSET 0` keeps the NOT EXISTS a per-pair probe of the primary key. Without
/// it the planner, seeing thousands of pairs (a custom plan: each drain
/// prepares anew), turns it into a hash anti-join that reads the whole vault
/// on every flush: a cost that grew with the vault, forever (measured: a
/// 20,000-message store 1.9x slower over a vault of 300,000 masks).
pub(crate) const VAULT_SQL_FAST: &str = pairs_not_in_vault_into!("fetch_etl.pii_vault");

/// The same, safe against a concurrent transaction adding one of the masks:
/// what VAULT_SQL_FAST falls back to when that happens (unique violation).
const VAULT_SQL: &str = "INSERT INTO fetch_etl.pii_vault (masked, raw) \
     SELECT pg_catalog.unnest($1::pg_catalog.text[]), pg_catalog.unnest($2::pg_catalog.text[]) \
     ON CONFLICT (masked) DO NOTHING";

/// A flush that waited out `ledger_wait_timeout` on masks another session
/// holds uncommitted: its pairs not already in the vault (committed; reading
/// it waits for nobody) are kept in this transaction where no unique index
/// makes anyone wait (see `flush_vault`). Rare, so not prepared. `OFFSET 0`:
/// a probe of the vault's key per pair, never a scan (see VAULT_SQL_FAST).
const VAULT_PENDING_SQL: &str = pairs_not_in_vault_into!("fetch_etl.pii_vault_pending");

/// Pairs kept before the vault is written: about 1 MB of strings. Larger
/// batches were no faster in `scripts/bench` (the anti-join costs the same per
/// row) but grew a 50,000-message drain's memory from 15 MB to 60 MB.
pub(crate) const VAULT_FLUSH_PAIRS: usize = 5_000;

/// The masks and the values of vault pairs, as the two text[] parameters
/// of the vault statements.
fn pair_columns(pairs: &[(String, String)]) -> (Vec<&str>, Vec<&str>) {
    pairs.iter().map(|(m, r)| (m.as_str(), r.as_str())).unzip()
}

/// The vault's buffer and statements.
pub(crate) struct Vault {
    owner: pg_sys::Oid,
    fast: OwnedPreparedStatement,
    slow: OwnedPreparedStatement,
    /// (mask, raw) pairs not yet written, and their bytes.
    pairs: Vec<(String, String)>,
    bytes: usize,
}

impl Drop for Vault {
    fn drop(&mut self) {
        // Every successful path ends with flush(); an error unwinding past
        // here aborts the transaction, so unwritten pairs do not matter.
        debug_assert!(
            std::thread::panicking() || self.pairs.is_empty(),
            "vault not flushed"
        );
    }
}

impl Vault {
    pub(crate) fn prepare(client: &SpiClient<'_>, owner: pg_sys::Oid) -> Vault {
        as_owner(owner, || Vault {
            owner,
            fast: prepare(client, VAULT_SQL_FAST, &[TEXT_ARRAY, TEXT_ARRAY]),
            slow: prepare(client, VAULT_SQL, &[TEXT_ARRAY, TEXT_ARRAY]),
            pairs: Vec::new(),
            bytes: 0,
        })
    }

    /// Adds a loaded row's pairs; writes the buffer once it is full. By
    /// bytes too: a sender's large values must not pile up until 5,000 of
    /// them (budget.rs counts this).
    pub(crate) fn add(&mut self, client: &mut SpiClient<'_>, pairs: Vec<(String, String)>) {
        for (m, r) in pairs {
            self.bytes += m.len() + r.len() + VAULT_PAIR_OVERHEAD;
            self.pairs.push((m, r));
            if self.bytes >= VAULT_FLUSH_BYTES {
                self.flush(client);
            }
        }
        if self.pairs.len() >= VAULT_FLUSH_PAIRS {
            self.flush(client);
        }
    }

    /// Writes the collected (mask, raw) pairs to the vault, sorted and without
    /// duplicates, as the owner. Every caller of `load` ends with this.
    ///
    /// A mask another session inserted and has not committed is waited for at
    /// most `fetch_etl.ledger_wait_timeout`; after that the flush's pairs not
    /// yet in the vault go to `fetch_etl.pii_vault_pending` instead (no unique
    /// index: nothing to wait for), in this transaction. Should the other
    /// session roll back, the value is not lost: `unmask` reads pending pairs
    /// too, and `prune` moves them into the vault. Nobody can stall a drain by
    /// holding a vault row.
    pub(crate) fn flush(&mut self, client: &mut SpiClient<'_>) {
        let mut pairs = std::mem::take(&mut self.pairs);
        self.bytes = 0;
        if pairs.is_empty() {
            return;
        }
        pairs.sort_unstable();
        pairs.dedup();
        let wait = settings::ledger_wait_timeout();
        let started = std::time::Instant::now();
        let (fast_stmt, slow_stmt) = (&self.fast, &self.slow);
        as_owner(self.owner, || {
            let mut insert = |stmt: &OwnedPreparedStatement, pairs: &[(String, String)], wait| {
                let (masked, raw) = pair_columns(pairs);
                let args: [DatumWithOid<'_>; 2] = [masked.as_slice().into(), raw.as_slice().into()];
                in_subxact(AssertUnwindSafe(|| {
                    with_lock_timeout(wait, || client.update(stmt, None, &args).map(|_| ()))
                }))
            };
            // Plain inserts of the masks not there yet; if another transaction
            // adds one meanwhile (unique violation), redo with ON CONFLICT.
            let slow = match insert(fast_stmt, &pairs, wait) {
                Ok(r) => {
                    r.or_raise_spi("vault");
                    return;
                }
                Err(e) if e.is_unique_violation() || e.is_lock_timeout() => {
                    // only what is left of the wait, as the ledger does
                    insert(slow_stmt, &pairs, wait.saturating_sub(started.elapsed()))
                }
                Err(e) => e.rethrow(),
            };
            match slow {
                Ok(r) => r.or_raise_spi("vault"),
                Err(e) if e.is_lock_timeout() => {
                    // One statement, no subtransaction per pair: a grantee
                    // holding one mask must not make this drain open hundreds.
                    // The extension's own table, never one found by name
                    // alone (spi::member_table).
                    if spi::member_table("pii_vault_pending").is_none() {
                        // The library is newer than this database's catalog:
                        // 0.3.0's way, pair by pair, leaving held ones to
                        // their session.
                        for pair in &pairs {
                            let one = std::slice::from_ref(pair);
                            match insert(slow_stmt, one, Duration::from_millis(1)) {
                                Ok(r) => r.or_raise_spi("vault"),
                                Err(e) if e.is_lock_timeout() => {}
                                Err(e) => e.rethrow(),
                            }
                        }
                        pgrx::warning!(
                            "fetch_etl: vault entries another session is adding were left to it; run ALTER EXTENSION fetch_etl UPDATE"
                        );
                        return;
                    }
                    let (masked, raw) = pair_columns(&pairs);
                    // No unique index to wait on; bounded all the same (an
                    // ALTER EXTENSION UPDATE may hold the table). A timeout
                    // fails the drain, which then deletes nothing.
                    with_lock_timeout(wait.max(Duration::from_secs(1)), || {
                        client.update(
                            VAULT_PENDING_SQL,
                            None,
                            &[masked.as_slice().into(), raw.as_slice().into()],
                        )
                    })
                    .or_raise_spi("vault");
                }
                Err(e) => e.rethrow(),
            }
        });
    }
}
