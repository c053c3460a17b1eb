//! `fetch_etl.drain_progress()`: the drains and replays running now.

use pgrx::pg_sys;
use pgrx::prelude::*;

use fetch_etl_core::error::ErrorKind;

use crate::postgres::error::raise_with_hint;
use crate::postgres::progress;
use crate::postgres::spi::{c_string, role_name};

/// The drains and replays in progress in every database, with their counts
/// so far, from shared memory (needs fetch_etl in
/// `shared_preload_libraries`); see docs/reference.md, "drain_progress".
#[pg_extern(volatile, parallel_safe)]
#[allow(clippy::type_complexity)] // the result's columns are its SQL signature
fn drain_progress() -> TableIterator<
    'static,
    (
        name!(pid, i32),
        name!(database, Option<String>),
        name!(run_by, Option<String>),
        name!(kind, String),
        name!(run_id, Option<i64>),
        name!(queue_url, Option<String>),
        name!(phase, String),
        name!(started_at, Option<TimestampWithTimeZone>),
        name!(updated_at, Option<TimestampWithTimeZone>),
        name!(received, Option<i64>),
        name!(loaded, Option<i64>),
        name!(rejected, Option<i64>),
        name!(duplicates, Option<i64>),
    ),
> {
    if !progress::available() {
        raise_with_hint(
            ErrorKind::NotInPrerequisiteState,
            "drain_progress needs fetch_etl in shared_preload_libraries",
            "Add fetch_etl to shared_preload_libraries and restart PostgreSQL.",
        );
    }
    // As pg_stat_activity: what a run is about (its queue, run id and
    // counts) only to roles with the rights of the role that runs it, and
    // to members of pg_read_all_stats (pg_monitor).
    // SAFETY: reads the current user id.
    let me = unsafe { pg_sys::GetUserId() };
    // SAFETY: a catalog lookup of role memberships.
    let all =
        unsafe { pg_sys::has_privs_of_role(me, pg_sys::Oid::from(pg_sys::ROLE_PG_READ_ALL_STATS)) };
    let rows: Vec<_> = progress::snapshot()
        .into_iter()
        .map(|s| {
            let role = pg_sys::Oid::from(s.role);
            // SAFETY: as above.
            let shown = all || unsafe { pg_sys::has_privs_of_role(me, role) };
            let url = s.queue_url();
            let count = |i: usize| shown.then_some(s.counts[i]);
            (
                s.pid,
                database_name(s.database),
                role_name(role),
                s.kind().as_str().to_string(),
                (shown && s.run_id != 0).then_some(s.run_id),
                (shown && !url.is_empty()).then(|| url.to_string()),
                s.phase().as_str().to_string(),
                TimestampWithTimeZone::try_from(s.started_at).ok(),
                TimestampWithTimeZone::try_from(s.updated_at).ok(),
                count(0),
                count(1),
                count(2),
                count(3),
            )
        })
        .collect();
    TableIterator::new(rows)
}

fn database_name(oid: u32) -> Option<String> {
    // SAFETY: a palloc'd copy of the name, or NULL when there is none.
    unsafe { c_string(pg_sys::get_database_name(pg_sys::Oid::from(oid))) }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// The pg_test cluster does not preload fetch_etl: no board, a clear error.
    #[pg_test(error = "drain_progress needs fetch_etl in shared_preload_libraries")]
    fn drain_progress_needs_the_library_preloaded() {
        Spi::run("SELECT * FROM fetch_etl.drain_progress()").unwrap();
    }
}
