//! Deleting drained messages from SQS only after their rows are durable.
//!
//! `sqs_drain` queues the receipt handles of every message it stored (loaded,
//! dead-lettered or recognised as a duplicate). The transaction callbacks
//! (`xact.rs`) then:
//!
//! - before COMMIT, force a synchronous commit (`ForceSyncCommit`), whatever
//!   the session's `synchronous_commit`: the commit record is on disk before
//!   the first delete is sent, so a crash right after COMMIT cannot lose a
//!   message SQS already deleted.
//! - on COMMIT, with `fetch_etl.delete_after = standby_flush`, wait until
//!   every streaming standby has flushed the commit record too (a failover
//!   then cannot lose them either); if that does not happen in time, delete
//!   nothing.
//! - then delete them in batches of 10. Waiting and deleting together take at
//!   most `fetch_etl.delete_timeout` and stop at once on a cancel or
//!   terminate; nothing raises (the transaction is already committed). A
//!   message not deleted comes back after its visibility timeout, the ledger
//!   recognises it, and the next drain counts it as a duplicate and deletes it.
//! - on ROLLBACK, forget them: the messages come back after their visibility
//!   timeout and are loaded then.
//! - on ROLLBACK TO SAVEPOINT, forget those queued inside the rolled-back
//!   subtransaction (their rows are gone too).
//! - on PREPARE TRANSACTION, refuse: the commit would happen elsewhere.

use std::cell::RefCell;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use pgrx::pg_sys;

use fetch_etl_core::error::ErrorKind;
use fetch_etl_core::settings as defs;
use fetch_etl_sqs::Client;

use super::error::raise_with_hint;
use super::runtime::{self, Bounded};
use super::settings::{self, DeleteAfter};

struct Pending {
    subxact: pg_sys::SubTransactionId,
    client: Arc<Client>,
    /// Receipt handles to delete.
    handles: Vec<String>,
}

thread_local! {
    static PENDING: RefCell<Vec<Pending>> = const { RefCell::new(Vec::new()) };
}

/// Queues `handles` for deletion when the current transaction commits.
pub(crate) fn after_commit(client: Arc<Client>, handles: Vec<String>) {
    if handles.is_empty() {
        return;
    }
    super::xact::register();
    // SAFETY: reads the current subtransaction id.
    let subxact = unsafe { pg_sys::GetCurrentSubTransactionId() };
    PENDING.with(|p| {
        p.borrow_mut().push(Pending {
            subxact,
            client,
            handles,
        })
    });
}

/// Number of handles queued in this transaction (for tests and logging).
pub(crate) fn pending_count() -> usize {
    PENDING.with(|p| p.borrow().iter().map(|x| x.handles.len()).sum())
}

/// Bytes of the handles queued in this transaction (bounded by the drain:
/// `budget::MAX_PENDING_DELETE_BYTES`).
pub(crate) fn pending_bytes() -> usize {
    PENDING.with(|p| {
        p.borrow()
            .iter()
            .flat_map(|x| x.handles.iter())
            .map(|h| h.len() + 24)
            .sum()
    })
}

fn take_all() -> Vec<Pending> {
    PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()))
}

/// Before COMMIT (`xact.rs`): a transaction that queued deletes commits
/// synchronously.
pub(crate) fn before_commit() {
    if pending_count() > 0 {
        // SAFETY: sets a flag RecordTransactionCommit reads later in this commit.
        unsafe { pg_sys::ForceSyncCommit() };
    }
}

/// After COMMIT: the deletes. Never raises.
pub(crate) fn at_commit() {
    let pending = take_all();
    if !pending.is_empty() {
        // Nothing may escape from here: the transaction is committed.
        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| after_commit_now(pending)));
    }
}

/// Before PREPARE TRANSACTION: refused if deletes are queued.
pub(crate) fn before_prepare() {
    if pending_count() > 0 {
        take_all();
        raise_with_hint(
            ErrorKind::NotInPrerequisiteState,
            "cannot PREPARE a transaction that ran fetch_etl.sqs_drain",
            "Messages are deleted from SQS when the draining transaction commits; run the drain in an ordinary transaction.",
        );
    }
}

/// ROLLBACK (None) or ROLLBACK TO SAVEPOINT of subtransaction `from`: what
/// was queued there is forgotten.
pub(crate) fn at_abort(from: Option<pg_sys::SubTransactionId>) {
    PENDING.with(|p| {
        if let Ok(mut p) = p.try_borrow_mut() {
            match from {
                None => p.clear(),
                Some(id) => p.retain(|x| x.subxact < id),
            }
        }
    });
}

/// The post-commit work: the standby wait if asked for, then the deletes,
/// all within fetch_etl.delete_timeout. Problems are WARNINGs, never ERRORs.
fn after_commit_now(pending: Vec<Pending>) {
    let deadline = Instant::now() + settings::delete_timeout();
    let total: usize = pending.iter().map(|p| p.handles.len()).sum();
    if settings::delete_after() == DeleteAfter::StandbyFlush {
        // SAFETY: set by RecordTransactionCommit of the commit that just
        // happened: a transaction that queued deletes always has an xid (it
        // wrote its run record), so the value is this commit's, not stale.
        let lsn = unsafe { pg_sys::XactLastCommitEnd };
        match wait_for_standbys(lsn, deadline) {
            StandbyWait::Flushed => {}
            why => {
                pgrx::warning!(
                    "fetch_etl: {} {}, so none of the {total} drained messages was deleted from SQS; they will come back after their visibility timeout and be counted as duplicates",
                    defs::DELETE_AFTER.name_str(),
                    why.describe()
                );
                return;
            }
        }
    }
    delete_now(pending, deadline, total);
}

/// How waiting for the standbys ended.
#[derive(Debug, PartialEq, Eq)]
enum StandbyWait {
    Flushed,
    NoStandby,
    TimedOut,
    Interrupted,
}

impl StandbyWait {
    fn describe(&self) -> &'static str {
        match self {
            StandbyWait::Flushed => "is satisfied",
            StandbyWait::NoStandby => "is standby_flush but no standby is streaming",
            StandbyWait::TimedOut => {
                "is standby_flush and a standby did not flush the commit within fetch_etl.delete_timeout"
            }
            StandbyWait::Interrupted => "is standby_flush and the wait for the standbys was interrupted",
        }
    }
}

/// Waits until every streaming replication connection has flushed `lsn`.
fn wait_for_standbys(lsn: pg_sys::XLogRecPtr, deadline: Instant) -> StandbyWait {
    loop {
        match standbys_flushed(lsn) {
            None => return StandbyWait::NoStandby,
            Some(true) => return StandbyWait::Flushed,
            Some(false) => {}
        }
        if runtime::interrupt_pending() {
            return StandbyWait::Interrupted;
        }
        if Instant::now() >= deadline {
            return StandbyWait::TimedOut;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether every physical standby streaming from this server has flushed
/// `lsn` (None: none is streaming). Walsenders of logical replication slots
/// (their position is what a subscriber confirmed) and clients that report no
/// flush position at all (pg_basebackup's WAL stream) do not count.
fn standbys_flushed(lsn: pg_sys::XLogRecPtr) -> Option<bool> {
    let logical = logical_walsender_pids();
    // SAFETY: WalSndCtl is shared memory set up at startup, one entry per
    // max_wal_senders; each field read is a whole 4- or 8-byte aligned word,
    // read volatile without its spinlock: a stale value only makes the wait
    // longer.
    unsafe {
        let ctl = pg_sys::WalSndCtl;
        if ctl.is_null() {
            return None;
        }
        let walsnds = (*ctl).walsnds.as_ptr();
        let mut streaming = false;
        for i in 0..pg_sys::max_wal_senders.max(0) as usize {
            let w = walsnds.add(i);
            let pid = std::ptr::read_volatile(&raw const (*w).pid);
            if pid == 0
                || logical.contains(&pid)
                || std::ptr::read_volatile(&raw const (*w).state)
                    != pg_sys::WalSndState::WALSNDSTATE_STREAMING
            {
                continue;
            }
            let flush = std::ptr::read_volatile(&raw const (*w).flush);
            if flush == 0 {
                continue; // reports no flush position
            }
            streaming = true;
            if flush < lsn {
                return Some(false);
            }
        }
        streaming.then_some(true)
    }
}

/// Pids of the walsenders serving logical replication slots.
fn logical_walsender_pids() -> Vec<pg_sys::pid_t> {
    let mut out = Vec::new();
    // SAFETY: ReplicationSlotCtl is shared memory with max_replication_slots
    // entries; fields read whole and volatile, as above.
    unsafe {
        let ctl = pg_sys::ReplicationSlotCtl;
        if ctl.is_null() {
            return out;
        }
        let slots = (*ctl).replication_slots.as_ptr();
        for i in 0..pg_sys::max_replication_slots.max(0) as usize {
            let slot = slots.add(i);
            if !std::ptr::read_volatile(&raw const (*slot).in_use) {
                continue;
            }
            let pid = std::ptr::read_volatile(&raw const (*slot).active_pid);
            let database = std::ptr::read_volatile(&raw const (*slot).data.database);
            if pid != 0 && database != pg_sys::InvalidOid {
                out.push(pid);
            }
        }
    }
    out
}

/// Deletes everything in `pending` by `deadline`, stopping at a cancel or
/// terminate; reports problems as a WARNING (never an ERROR).
fn delete_now(pending: Vec<Pending>, deadline: Instant, total: usize) {
    let limit = deadline.saturating_duration_since(Instant::now());
    let concurrency = settings::receive_concurrency();
    // (client, up to 10 (entry id, receipt handle) pairs)
    type Chunk = (Arc<Client>, Vec<(String, String)>);
    let mut chunks: Vec<Chunk> = Vec::new();
    for p in &pending {
        for chunk in p.handles.chunks(10) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, h)| (i.to_string(), h.clone()))
                .collect();
            chunks.push((p.client.clone(), entries));
        }
    }
    let work = stream::iter(chunks)
        .map(|(client, entries)| async move {
            match client.delete_batch(&entries).await {
                Ok(outcome) => (outcome.succeeded.len(), outcome.failed.len(), None),
                Err(e) => (0, entries.len(), Some(client.redact(&e.to_string()))),
            }
        })
        .buffer_unordered(concurrency)
        .fold(
            (0usize, 0usize, None::<String>),
            |(d, f, err), (d1, f1, e1)| async move { (d + d1, f + f1, err.or(e1)) },
        );
    match runtime::block_on_bounded(work, limit) {
        Bounded::Done((deleted, failed, first_error)) => {
            if failed > 0 {
                pgrx::warning!(
                    "fetch_etl: {failed} of {total} drained messages could not be deleted from SQS{}; they will come back after their visibility timeout and be counted as duplicates",
                    first_error.map(|e| format!(" ({e})")).unwrap_or_default()
                );
            } else {
                pgrx::debug1!("fetch_etl: deleted {deleted} drained messages from SQS");
            }
        }
        Bounded::TimedOut => pgrx::warning!(
            "fetch_etl: deleting {total} drained messages from SQS took longer than {} ({} ms); messages not deleted will come back and be counted as duplicates",
            defs::DELETE_TIMEOUT.name_str(),
            settings::delete_timeout().as_millis()
        ),
        Bounded::Interrupted => pgrx::warning!(
            "fetch_etl: deleting {total} drained messages from SQS was interrupted; messages not deleted will come back and be counted as duplicates"
        ),
    }
}
