//! The SQL-facing functions: argument checks and result shapes only.
//! Everything in the extension's schema (`fetch_etl`) that is written in
//! Rust is declared here; the SQL-language objects are in `sql/`.

mod drain;
mod housekeeping;
mod masking;
mod monitoring;
mod pipelines;

#[cfg(feature = "bench-tools")]
mod bench;

use fetch_etl_core::error::ErrorKind;

use crate::postgres::error::raise;

/// A NULL argument of a non-STRICT function is a clear error, not a NULL result.
fn required<T>(v: Option<T>, name: &str) -> T {
    v.unwrap_or_else(|| {
        raise(
            ErrorKind::InvalidParameter,
            format!("{name} must not be NULL"),
        )
    })
}
