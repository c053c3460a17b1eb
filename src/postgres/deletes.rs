//! Deleting drained messages from SQS only after their rows are committed.
//!
//! `sqs_drain` queues the receipt handles of every message it stored (loaded,
//! dead-lettered or recognised as a duplicate). Transaction callbacks then:
//!
//! - on COMMIT, delete them in batches of 10, for at most
//!   `fetch_etl.delete_timeout`, never raising (the transaction is already
//!   committed). A delete that fails leaves the message in the queue: it comes
//!   back after its visibility timeout, the ledger recognises it, and the next
//!   drain counts it as a duplicate and deletes it.
//! - on ROLLBACK, forget them: the messages come back after their visibility
//!   timeout and are loaded then.
//! - on ROLLBACK TO SAVEPOINT, forget those queued inside the rolled-back
//!   subtransaction (their rows are gone too).
//! - on PREPARE TRANSACTION, refuse: the commit would happen elsewhere.

use std::cell::{Cell, RefCell};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::stream::{self, StreamExt};
use pgrx::pg_sys;
use pgrx::prelude::*;

use fetch_etl_core::error::ErrorKind;
use fetch_etl_core::settings as defs;
use fetch_etl_core::sqs::Client;

use super::error::raise_with_hint;
use super::runtime;
use super::settings;

struct Pending {
    subxact: pg_sys::SubTransactionId,
    client: Arc<Client>,
    /// Receipt handles to delete.
    handles: Vec<String>,
}

thread_local! {
    static PENDING: RefCell<Vec<Pending>> = const { RefCell::new(Vec::new()) };
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// Queues `handles` for deletion when the current transaction commits.
pub(crate) fn after_commit(client: Arc<Client>, handles: Vec<String>) {
    if handles.is_empty() {
        return;
    }
    if !REGISTERED.with(|r| r.replace(true)) {
        // SAFETY: permanent callbacks with static lifetime, registered once per backend.
        unsafe {
            pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut());
            pg_sys::RegisterSubXactCallback(Some(subxact_callback), std::ptr::null_mut());
        }
    }
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

fn take_all() -> Vec<Pending> {
    PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()))
}

#[pg_guard]
unsafe extern "C-unwind" fn xact_callback(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_COMMIT => {
            let pending = take_all();
            if !pending.is_empty() {
                // Nothing may escape from here: the transaction is committed.
                let _ = std::panic::catch_unwind(AssertUnwindSafe(|| delete_now(pending)));
            }
        }
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT => {
            take_all();
        }
        XACT_EVENT_PRE_PREPARE if pending_count() > 0 => {
            take_all();
            raise_with_hint(
                ErrorKind::NotInPrerequisiteState,
                "cannot PREPARE a transaction that ran fetch_etl.sqs_drain",
                "Messages are deleted from SQS when the draining transaction commits; run the drain in an ordinary transaction.",
            );
        }
        _ => {}
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn subxact_callback(
    event: pg_sys::SubXactEvent::Type,
    my_subid: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        // Subtransaction ids grow within a transaction: everything queued in the
        // aborted subtransaction or its children has an id >= my_subid.
        PENDING.with(|p| {
            if let Ok(mut p) = p.try_borrow_mut() {
                p.retain(|x| x.subxact < my_subid);
            }
        });
    }
}

/// Deletes everything in `pending`, within fetch_etl.delete_timeout; reports
/// problems as a WARNING (never an ERROR).
fn delete_now(pending: Vec<Pending>) {
    let limit = settings::delete_timeout();
    let concurrency = settings::receive_concurrency();
    let total: usize = pending.iter().map(|p| p.handles.len()).sum();
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
                Ok(outcome) => (outcome.deleted, outcome.failed.len(), None),
                Err(e) => (0, entries.len(), Some(client.redact(&e.to_string()))),
            }
        })
        .buffer_unordered(concurrency)
        .fold(
            (0usize, 0usize, None::<String>),
            |(d, f, err), (d1, f1, e1)| async move { (d + d1, f + f1, err.or(e1)) },
        );
    match runtime::block_on_within(work, limit) {
        Some((deleted, failed, first_error)) => {
            if failed > 0 {
                pgrx::warning!(
                    "fetch_etl: {failed} of {total} drained messages could not be deleted from SQS{}; they will come back after their visibility timeout and be counted as duplicates",
                    first_error.map(|e| format!(" ({e})")).unwrap_or_default()
                );
            } else {
                pgrx::debug1!("fetch_etl: deleted {deleted} drained messages from SQS");
            }
        }
        None => pgrx::warning!(
            "fetch_etl: deleting {total} drained messages from SQS took longer than {} ({} ms); messages not deleted will come back and be counted as duplicates",
            defs::DELETE_TIMEOUT.name_str(),
            limit.as_millis()
        ),
    }
}
