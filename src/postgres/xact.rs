//! The extension's transaction callbacks, registered once per backend, in
//! one place so that their order is stated, not left to registration order:
//!
//! | event | what happens |
//! | --- | --- |
//! | PRE_COMMIT | `deletes`: force a synchronous commit if deletes are queued |
//! | COMMIT | `progress`: runs shown as deleting; `deletes`: the deletes; then `visibility`: the heartbeat's holds end (and its report), so messages stay hidden until they are deleted; then `progress`: the runs are over |
//! | PRE_PREPARE | `deletes`: refuse if deletes are queued |
//! | PREPARE | `visibility`: the holds end; `progress`: the runs are over |
//! | ABORT | `visibility`: the holds end, handed back if asked; `deletes`: forgotten; `progress`: the runs are over |
//! | ABORT_SUB | the same, for what the subtransaction and its children queued and ran |

use std::cell::Cell;

use pgrx::pg_sys;
use pgrx::prelude::*;

use super::{deletes, progress, visibility};

thread_local! {
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// Registers the callbacks (once per backend; a no-op after that).
pub(crate) fn register() {
    if REGISTERED.with(|r| r.get()) {
        return;
    }
    // SAFETY: permanent callbacks with static lifetime; the flag is set once
    // both are registered.
    unsafe {
        pg_sys::RegisterXactCallback(Some(xact_callback), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(subxact_callback), std::ptr::null_mut());
    }
    REGISTERED.with(|r| r.set(true));
}

#[pg_guard]
unsafe extern "C-unwind" fn xact_callback(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_PRE_COMMIT => deletes::before_commit(),
        XACT_EVENT_COMMIT => {
            // Nothing may raise from here: the transaction is committed.
            let committed_at = std::time::Instant::now();
            progress::at_commit();
            deletes::at_commit();
            visibility::at_commit(committed_at);
            progress::at_end(None);
        }
        XACT_EVENT_PARALLEL_COMMIT | XACT_EVENT_PREPARE => {
            visibility::at_commit(std::time::Instant::now());
            progress::at_end(None);
        }
        XACT_EVENT_PRE_PREPARE => deletes::before_prepare(),
        XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_ABORT => {
            visibility::at_abort(None);
            deletes::at_abort(None);
            progress::at_end(None);
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
        // Subtransaction ids grow within a transaction: everything queued in
        // the aborted subtransaction or its children has an id >= my_subid.
        visibility::at_abort(Some(my_subid));
        deletes::at_abort(Some(my_subid));
        progress::at_end(Some(my_subid));
    }
}
