//! Failed runs recorded outside the failing transaction.
//!
//! With `on_error => 'raise'` (pg_cron's usual call) a failed drain rolls
//! back its transaction, and the run's row in `fetch_etl.drain_runs` with
//! it: `queue_health` would go on showing the last good run. So the failing
//! backend starts a short-lived background worker (an autonomous
//! transaction, as pg_background does it) that inserts the `failed` row in
//! a transaction of its own, waits for it (at most [`WAIT`]), then raises
//! the error as it was.
//!
//! - The run is handed over in a dynamic shared memory segment
//!   ([`FailedRun`], bounded) and the worker writes the new run id back;
//!   the database's oid and a random tag go in `bgw_extra`: the worker uses
//!   a segment only if it starts with that tag (a handle the launcher gave
//!   up on may have been reused).
//! - At most [`RECORDERS`] at a time per database (a row of
//!   `fetch_etl.queue_locks` each, held by the failing transaction): a burst
//!   of failures cannot take every background worker slot.
//! - The worker connects as the bootstrap superuser (a worker cannot log in
//!   as a NOLOGIN owner on PostgreSQL 15 and 16) and inserts as the
//!   extension's owner, found in its own database, never taken from the
//!   segment.
//! - No free worker slot (`max_worker_processes`), [`RECORDERS`] already
//!   recording, a standby, a worker that does not finish in time (it is
//!   then terminated): a WARNING says the failure was not recorded; the
//!   error is raised all the same. Nothing here needs
//!   `shared_preload_libraries`.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, BgWorkerStartTime,
};
use pgrx::pg_sys;
use pgrx::prelude::*;

use fetch_etl_core::failed_run::FailedRun;

use super::locks::try_lock_queue;
use super::runs;
use super::spi::{extension_owner, in_subxact, role_name};

/// How long the failing backend waits for the record to be written.
const WAIT: Duration = Duration::from_secs(10);
/// The recorder's session: a bound on lock waits (below [`WAIT`]; a
/// statement_timeout does not apply to a worker's SPI), and a commit that
/// does not wait for a synchronous standby.
const WORKER_SETTINGS: &str = "SET LOCAL lock_timeout = '4s'; SET LOCAL synchronous_commit = local";
/// Recorders at a time per database.
const RECORDERS: usize = 2;

/// Segment layout: the tag (u64), the run id the worker wrote (i64, 0 until
/// then), the payload's length (u64), the payload.
const HEADER: usize = 24;

/// Records `run` as failed in a transaction of its own; the new run's id,
/// or None (with a WARNING) if it could not be recorded.
pub(crate) fn record_failed(owner: pg_sys::Oid, mut run: FailedRun) -> Option<i64> {
    // SAFETY: reads backend-local state; no preconditions.
    if unsafe { pg_sys::RecoveryInProgress() } {
        return None; // a standby: no drain can run, nor any record be written
    }
    // SAFETY: as above.
    if unsafe { pg_sys::XactReadOnly } {
        warning!("fetch_etl: the failed run was not recorded: the transaction is read-only");
        return None;
    }
    // A recorder slot: nothing that goes wrong here may hide the drain's error.
    let slot = in_subxact(AssertUnwindSafe(|| {
        (1..=RECORDERS).any(|i| try_lock_queue(owner, &format!("fetch_etl:recorder:{i}")))
    }));
    match slot {
        Ok(true) => {}
        Ok(false) => {
            warning!(
                "fetch_etl: the failed run was not recorded: {RECORDERS} other failures are being recorded"
            );
            return None;
        }
        Err(e) => {
            warning!(
                "fetch_etl: the failed run was not recorded: {}",
                e.describe()
            );
            return None;
        }
    }
    run.run_by = session_user();
    let payload = run.bounded().encode();
    let tag = fastrand::u64(1..);
    // SAFETY: a segment of the payload's size plus the header, owned by the
    // current resource owner (so an error while waiting detaches it);
    // written here before the worker is started, read back after it stopped
    // (or, when it is late, not at all).
    unsafe {
        let seg = pg_sys::dsm_create(HEADER + payload.len(), 0);
        let base = pg_sys::dsm_segment_address(seg).cast::<u8>();
        std::ptr::write_bytes(base, 0, HEADER);
        std::ptr::write_unaligned(base.cast::<u64>(), tag);
        std::ptr::write_unaligned(base.add(16).cast::<u64>(), payload.len() as u64);
        std::ptr::copy_nonoverlapping(payload.as_ptr(), base.add(HEADER), payload.len());
        let handle = pg_sys::dsm_segment_handle(seg);
        let stopped = launch_and_wait(handle, tag);
        let run_id = std::ptr::read_volatile(base.add(8).cast::<i64>());
        pg_sys::dsm_detach(seg);
        match (stopped, run_id) {
            (Ok(()), id) if id > 0 => Some(id),
            (Ok(()), _) => {
                warning!("fetch_etl: the failed run could not be recorded (see the server log)");
                None
            }
            (Err(why), _) => {
                warning!("fetch_etl: the failed run was not recorded: {why}");
                None
            }
        }
    }
}

/// Starts the recorder on segment `handle` and waits for it to stop (or
/// terminates it when it is late).
fn launch_and_wait(handle: pg_sys::dsm_handle, tag: u64) -> Result<(), &'static str> {
    // SAFETY: reads backend-local globals.
    let (db, pid) = unsafe { (pg_sys::MyDatabaseId, pg_sys::MyProcPid) };
    let worker = BackgroundWorkerBuilder::new("fetch_etl run recorder")
        .set_type("fetch_etl run recorder")
        .set_library("fetch_etl")
        .set_function("fetch_etl_record_failed_run")
        .set_argument(Some(pg_sys::Datum::from(handle)))
        .set_extra(&format!("{} {tag}", db.to_u32()))
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(None)
        .set_notify_pid(pid)
        .load_dynamic()
        .map_err(|_| "no background worker slot is free (max_worker_processes)")?;
    let deadline = Instant::now() + WAIT;
    loop {
        match worker.pid() {
            Err(BackgroundWorkerStatus::Stopped) => return Ok(()),
            Err(BackgroundWorkerStatus::PostmasterDied) => return Err("the postmaster died"),
            _ => {}
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            worker.terminate();
            return Err("the recorder did not finish in time");
        }
        // SAFETY: waits on this backend's latch, which the postmaster sets
        // when the worker's state changes (bgw_notify_pid); interrupts are
        // served (a second cancel ends the wait; the segment is detached by
        // the resource owner).
        unsafe {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                left.min(Duration::from_millis(100)).as_millis() as std::ffi::c_long,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
        pgrx::check_for_interrupts!();
    }
}

fn session_user() -> String {
    // SAFETY: reads a backend-local global.
    role_name(unsafe { pg_sys::GetSessionUserId() }).unwrap_or_default()
}

/// The recorder worker's entry point (`bgw_function_name`). SIGTERM is
/// PostgreSQL's default for a worker (die): a terminate ends it at once.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn fetch_etl_record_failed_run(arg: pg_sys::Datum) {
    // A worker starts with signals blocked: SIGTERM is a backend's `die`
    // (served at the next interrupt check, never inside a critical
    // section), and unblocking lets lock_timeout's SIGALRM and a terminate
    // reach it.
    // SAFETY: installs PostgreSQL's own handler, then unblocks signals, as
    // PostgreSQL's example workers do.
    unsafe {
        #[cfg(not(feature = "pg18"))]
        pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(postgres_c::die));
        #[cfg(feature = "pg18")]
        pg_sys::pqsignal_be(pg_sys::SIGTERM as i32, Some(postgres_c::die));
        pg_sys::BackgroundWorkerUnblockSignals();
    }
    let extra = BackgroundWorker::get_extra();
    let Some((Ok(db), Ok(tag))) = extra
        .split_once(' ')
        .map(|(d, t)| (d.parse::<u32>(), t.parse::<u64>()))
    else {
        return;
    };
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(db)), None);
    // SAFETY: the segment the launcher made: HEADER bytes, then the payload
    // of the length it wrote, used only if it is at least HEADER bytes and
    // starts with the launcher's tag. Attached for the session (no resource
    // owner outside a transaction); NULL when the launcher gave up and
    // detached.
    let (seg, run) = unsafe {
        let seg = pg_sys::dsm_attach(arg.value() as pg_sys::dsm_handle);
        if seg.is_null() {
            return;
        }
        let base = pg_sys::dsm_segment_address(seg).cast::<u8>();
        let size = pg_sys::dsm_segment_map_length(seg);
        if size < HEADER || std::ptr::read_unaligned(base.cast::<u64>()) != tag {
            pg_sys::dsm_detach(seg);
            return;
        }
        let len = std::ptr::read_unaligned(base.add(16).cast::<u64>()) as usize;
        let bytes = std::slice::from_raw_parts(base.add(HEADER), len.min(size - HEADER));
        (seg, FailedRun::decode(bytes))
    };
    let run_id = run.and_then(|run| {
        BackgroundWorker::transaction(|| {
            Spi::run(WORKER_SETTINGS).ok()?;
            let installed = Spi::get_one::<bool>(
                "SELECT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'fetch_etl')",
            );
            if installed != Ok(Some(true)) {
                return None; // dropped meanwhile: nothing to record into
            }
            let owner = extension_owner();
            Some(runs::record_failed(owner, &run, Some(&run.run_by)))
        })
    });
    // SAFETY: the run id goes where the launcher reads it after we stop.
    unsafe {
        let base = pg_sys::dsm_segment_address(seg)
            .cast::<u8>()
            .add(8)
            .cast::<i64>();
        std::ptr::write_volatile(base, run_id.unwrap_or(0));
        pg_sys::dsm_detach(seg);
    }
}

/// PostgreSQL's own SIGTERM handler, as the server exports it (pgrx wraps
/// `pg_sys::die` in a Rust function, which cannot be a signal handler).
mod postgres_c {
    extern "C-unwind" {
        /// tcop/postgres.c: sets ProcDiePending, served at the next
        /// interrupt check.
        pub(super) fn die(signal: std::ffi::c_int);
    }
}
