//! What `fetch_etl.prune()` (sql/finalize.sql) reads from the settings.

use pgrx::prelude::*;

use crate::postgres::settings;

/// `fetch_etl.dead_letter_retention` as an interval, NULL when dead letters
/// are kept for good. A function, not `current_setting()` in prune: calling
/// it loads the library, so the setting is the superuser's (or its default),
/// never a placeholder any role could `SET` in a session that had not
/// loaded fetch_etl.
#[pg_extern(stable, parallel_safe)]
fn dead_letter_retention() -> Option<Interval> {
    settings::dead_letter_retention().map(|d| Interval::from_seconds(d.as_secs() as f64))
}
