//! fetch_etl: load AWS SQS login events into PostgreSQL with keyed PII masking.
//!
//! This file is the SQL-facing surface and stays thin: argument handling and
//! the `#[pg_extern]` declarations. The logic lives in modules that do not
//! import pgrx (`mask`, `event`, `sqs`, `errors`), each with plain unit tests;
//! the glue that must talk to PostgreSQL is in `keystore`, `drain`, `store`,
//! `replay`, `target`, `deletes`, `aws`, `runtime`, `guc`, `pgutil` and `pgerr`.

use pgrx::prelude::*;

pub mod errors;
pub mod event;
pub mod mask;
pub mod sqs;

mod aws;
mod deletes;
mod drain;
mod guc;
mod keystore;
mod pgerr;
mod pgutil;
mod replay;
mod runtime;
mod store;
mod target;

::pgrx::pg_module_magic!();

pgrx::extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
pgrx::extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guc::init();
    keystore::init();
}

/// Keyed, deterministic mask of a PII value: hex(HMAC-SHA256(key, value)).
///
/// The SQL signature is `text`, but the value is taken as the bytes stored in
/// the database encoding, so it works in any encoding (SQL_ASCII included).
/// STABLE, not IMMUTABLE: the key can be rotated. No `SET search_path`: it
/// runs no SQL, and a SET clause would send every call through the slower
/// security-definer call path.
#[pg_extern(sql = r#"
CREATE FUNCTION fetch_etl.mask_pii(value text) RETURNS text
    STABLE STRICT PARALLEL SAFE
    LANGUAGE c AS 'MODULE_PATHNAME', 'mask_pii_wrapper';
"#)]
fn mask_pii(value: &[u8]) -> String {
    keystore::with_masker(|m| m.mask(value))
}

/// Replaces the masking key with a fresh random one (superuser only).
/// Returns the new key generation. Earlier masks stay in place; see README.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn rotate_mask_key() -> i32 {
    let key = mask::generate_key();
    keystore::install_key(&pgerr::OrRaise::or_raise(key))
}

/// Installs a given 32-byte key as the new masking key (superuser only),
/// e.g. to make masks match another database's. Returns its generation.
#[pg_extern(volatile, strict, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn set_mask_key(key: &[u8]) -> i32 {
    keystore::install_key(key)
}

fn required<T>(v: Option<T>, name: &str) -> T {
    v.unwrap_or_else(|| {
        pgerr::raise(
            errors::ErrorKind::InvalidParameter,
            format!("{name} must not be NULL"),
        )
    })
}

/// Drains up to `max_messages` login events from an SQS queue into
/// `target_table`; see README "sqs_drain". Not STRICT: NULL arguments get a
/// clear error instead of a silent NULL result.
#[pg_extern(volatile, parallel_unsafe)]
fn sqs_drain(
    queue_url: Option<&str>,
    max_messages: default!(Option<i32>, 1000),
    wait_seconds: default!(Option<i32>, 0),
    target_table: default!(Option<&str>, "'user_logins'"),
    visibility_timeout: default!(Option<i32>, "NULL"),
    on_error: default!(Option<&str>, "'raise'"),
) -> TableIterator<
    'static,
    (
        name!(run_id, Option<i64>),
        name!(received, i64),
        name!(loaded, i64),
        name!(rejected, i64),
        name!(duplicates, i64),
    ),
> {
    let on_error = match required(on_error, "on_error") {
        "raise" => drain::OnError::Raise,
        "record" => drain::OnError::Record,
        other => pgerr::raise(
            errors::ErrorKind::InvalidParameter,
            format!("on_error must be 'raise' or 'record', not {other:?}"),
        ),
    };
    let s = drain::drain(drain::Args {
        queue_url: required(queue_url, "queue_url"),
        max_messages: required(max_messages, "max_messages"),
        wait_seconds: required(wait_seconds, "wait_seconds"),
        target_table: required(target_table, "target_table"),
        visibility_timeout,
        on_error,
    });
    TableIterator::once((s.run_id, s.received, s.loaded, s.rejected, s.duplicates))
}

/// Messages in a queue, from SQS GetQueueAttributes (approximate, as SQS says).
#[pg_extern(volatile, strict, parallel_unsafe)]
fn queue_depth(
    queue_url: &str,
) -> TableIterator<
    'static,
    (
        name!(visible, i64),
        name!(in_flight, i64),
        name!(delayed, i64),
    ),
> {
    TableIterator::once(drain::queue_depth(queue_url))
}

/// Runs dead letters through validation and the target table again; see
/// README "Replaying dead letters".
#[pg_extern(volatile, parallel_unsafe)]
fn replay_dead_letters(
    queue_url: default!(Option<&str>, "NULL"),
    reason_code: default!(Option<&str>, "NULL"),
    target_table: default!(Option<&str>, "'user_logins'"),
    max_rows: default!(Option<i32>, 1000),
) -> TableIterator<
    'static,
    (
        name!(replayed, i64),
        name!(loaded, i64),
        name!(rejected, i64),
    ),
> {
    let r = replay::replay(
        queue_url,
        reason_code,
        required(target_table, "target_table"),
        required(max_rows, "max_rows"),
    );
    TableIterator::once((r.replayed, r.loaded, r.rejected))
}

/// Benchmark hook (see `scripts/bench`): the in-database part of a drain on
/// message bodies given as an array. Not in the extension's SQL (sql = false);
/// the benchmark declares it in its own database.
#[pg_extern(sql = false)]
fn bench_store(bodies: Vec<String>, target_table: &str) -> i64 {
    drain::bench_store(bodies, target_table)
}

/// Statement trigger on fetch_etl.mask_keys: invalidates cached keys.
#[pg_trigger]
fn mask_keys_changed<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, pgrx::PgTriggerError> {
    keystore::invalidate(trigger.relid()?);
    Ok(None)
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn mask(v: &str) -> String {
        Spi::get_one_with_args::<String>("SELECT fetch_etl.mask_pii($1)", &[v.into()])
            .unwrap()
            .unwrap()
    }

    #[pg_test]
    fn mask_matches_pure_masker_with_stored_key() {
        let key: Vec<u8> = Spi::get_one(
            "SELECT key FROM fetch_etl.mask_keys ORDER BY generation DESC, created_at LIMIT 1",
        )
        .unwrap()
        .unwrap();
        let expected = crate::mask::Masker::new(&key)
            .unwrap()
            .mask(b"199.172.111.135");
        assert_eq!(mask("199.172.111.135"), expected);
    }

    #[pg_test]
    fn rotation_changes_masks_in_this_backend() {
        let before = mask("593-47-5928");
        let generation = Spi::get_one::<i32>("SELECT fetch_etl.rotate_mask_key()")
            .unwrap()
            .unwrap();
        assert!(generation >= 2);
        // the trigger's invalidation is processed at the next command boundary
        Spi::run("SELECT 1").unwrap();
        let after = mask("593-47-5928");
        assert_ne!(before, after);
        assert_eq!(after, mask("593-47-5928"));
    }

    #[pg_test]
    fn set_key_makes_masks_reproducible() {
        Spi::run("SELECT fetch_etl.set_mask_key(decode(repeat('ab', 32), 'hex'))").unwrap();
        Spi::run("SELECT 1").unwrap();
        let expected = crate::mask::Masker::new(&[0xab; 32])
            .unwrap()
            .mask(b"10.0.0.1");
        assert_eq!(mask("10.0.0.1"), expected);
    }

    #[pg_test(error = "a masking key must be exactly 32 bytes, got 3")]
    fn set_key_rejects_short_keys() {
        Spi::run("SELECT fetch_etl.set_mask_key('\\x010203'::bytea)").unwrap();
    }

    #[pg_test(error = "fetch_etl has no masking key")]
    fn missing_key_is_a_clean_error() {
        Spi::run("DELETE FROM fetch_etl.mask_keys").unwrap();
        Spi::run("SELECT 1").unwrap();
        mask("x");
    }
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
