//! Drains and replays in progress, in shared memory, for
//! `fetch_etl.drain_progress()` (`fetch_etl_core::progress` decides what a
//! slot holds). Only when the library is in `shared_preload_libraries`:
//! otherwise every call here is a no-op and `drain_progress()` says why it
//! has nothing to show.
//!
//! A run's slot is claimed when it starts, updated after each batch, marked
//! `committing` when its function returns and `deleting` at COMMIT, and
//! freed when its transaction (or the subtransaction it ran in) ends, or its
//! backend exits.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgLwLock};

use fetch_etl_core::contract::{Phase, RunKind};
use fetch_etl_core::progress::{Board, Counts, Slot, Start};

/// The board, in shared memory.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
pub(crate) struct Shared(Board);

// SAFETY: plain fixed-size data (integers and byte arrays), no pointers.
unsafe impl PGRXSharedMemory for Shared {}

static BOARD: PgLwLock<Shared> = unsafe { PgLwLock::new(c"fetch_etl_progress") };
/// Set in the postmaster while preloading; inherited by every backend.
static PRELOADED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// This backend's slots: (slot, the subtransaction that claimed it).
    static MINE: RefCell<Vec<(usize, pg_sys::SubTransactionId)>> = const { RefCell::new(Vec::new()) };
    static EXIT_HOOKED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// From `_PG_init`: puts the board in shared memory when preloading.
pub(crate) fn init() {
    // SAFETY: reads a flag PostgreSQL sets while it loads the preload libraries.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        pg_shmem_init!(BOARD);
        PRELOADED.store(true, Ordering::Relaxed);
    }
}

/// The board is there (the library was preloaded).
pub(crate) fn available() -> bool {
    PRELOADED.load(Ordering::Relaxed)
}

fn now() -> i64 {
    // SAFETY: reads the clock.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

fn pid() -> i32 {
    // SAFETY: a backend-local global.
    unsafe { pg_sys::MyProcPid }
}

/// A run in progress; its slot is freed at the end of its transaction.
#[derive(Clone, Copy)]
pub(crate) struct Tracked(Option<usize>);

/// Shows a run that starts now.
pub(crate) fn begin(kind: RunKind, phase: Phase, run_id: i64, queue_url: &str) -> Tracked {
    if !available() {
        return Tracked(None);
    }
    // SAFETY: backend-local globals.
    let (database, role, subid) = unsafe {
        (
            pg_sys::MyDatabaseId.to_u32(),
            pg_sys::GetSessionUserId().to_u32(),
            pg_sys::GetCurrentSubTransactionId(),
        )
    };
    let slot = BOARD.exclusive().0.claim(&Start {
        pid: pid(),
        database,
        role,
        kind,
        phase,
        run_id,
        queue_url,
        now: now(),
    });
    if let Some(i) = slot {
        MINE.with(|m| m.borrow_mut().push((i, subid)));
        hook_exit();
        super::xact::register();
    }
    Tracked(slot)
}

impl Tracked {
    /// What the run is doing now, and its counts so far.
    pub(crate) fn update(self, phase: Phase, counts: Option<Counts>) {
        if let Some(i) = self.0 {
            BOARD.exclusive().0.update(i, pid(), phase, counts, now());
        }
    }
}

/// At COMMIT: this backend's drains are deleting their messages.
pub(crate) fn at_commit() {
    if !available() {
        return;
    }
    let mine: Vec<usize> = MINE.with(|m| m.borrow().iter().map(|&(i, _)| i).collect());
    if !mine.is_empty() {
        let mut board = BOARD.exclusive();
        let t = now();
        for i in mine {
            board.0.deleting(i, pid(), t);
        }
    }
}

/// At the end of the transaction (after the deletes), or of the
/// subtransaction `from` (and its children): their runs are over.
pub(crate) fn at_end(from: Option<pg_sys::SubTransactionId>) {
    if !available() {
        return;
    }
    let ended: Vec<usize> = MINE.with(|m| {
        let mut m = m.borrow_mut();
        let (gone, kept): (Vec<_>, Vec<_>) = m
            .drain(..)
            .partition(|&(_, sub)| from.is_none_or(|f| sub >= f));
        *m = kept;
        gone.into_iter().map(|(i, _)| i).collect()
    });
    if !ended.is_empty() {
        let mut board = BOARD.exclusive();
        for i in ended {
            board.0.release(i, pid());
        }
    }
}

/// Frees this backend's slots when it exits (a FATAL error or a terminate
/// does not unwind to the transaction callbacks).
fn hook_exit() {
    if EXIT_HOOKED.with(|h| h.replace(true)) {
        return;
    }
    // SAFETY: a callback with static lifetime, run once at backend exit.
    unsafe { pg_sys::before_shmem_exit(Some(on_exit), pg_sys::Datum::from(0)) };
}

#[pg_guard]
unsafe extern "C-unwind" fn on_exit(_code: i32, _arg: pg_sys::Datum) {
    BOARD.exclusive().0.release_all(pid());
}

/// The runs in progress in every database (the board copied under the
/// lock, read after it is released).
pub(crate) fn snapshot() -> Vec<Slot> {
    let board: Board = BOARD.share().0;
    board.in_progress()
}
