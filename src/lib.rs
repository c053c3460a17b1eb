//! fetch_etl: load AWS SQS login events into PostgreSQL with keyed PII masking.
//!
//! - `fetch_etl_core` (crates/core): the pure logic, no pgrx.
//! - [`api`]: the SQL-facing functions, thin.
//! - [`drain`], [`replay`]: what sqs_drain and replay_dead_letters do.
//! - [`postgres`]: glue that only talks to PostgreSQL.

::pgrx::pg_module_magic!();

mod api;
mod drain;
mod postgres;
mod replay;

pgrx::extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
pgrx::extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[pgrx::pg_guard]
pub extern "C-unwind" fn _PG_init() {
    postgres::settings::init();
    postgres::keystore::init();
    postgres::progress::init();
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
