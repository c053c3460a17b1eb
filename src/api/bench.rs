//! Benchmark hook for scripts/bench, compiled only with the `bench-tools`
//! feature: never in a release package (scripts/test checks the exported
//! symbols of the release `.so`). Not in the extension's SQL (sql = false);
//! the benchmark declares it in its own database.

use pgrx::prelude::*;

/// The in-database part of a drain on message bodies given as an array.
#[pg_extern(sql = false)]
fn bench_store(bodies: Vec<String>, target_table: &str) -> i64 {
    crate::drain::bench_store(bodies, target_table)
}
