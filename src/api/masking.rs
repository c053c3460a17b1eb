//! mask_pii, the key functions and the key table's trigger.

use pgrx::prelude::*;

use fetch_etl_core::mask;

use crate::postgres::error::OrRaise;
use crate::postgres::keystore;

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
/// Returns the new key generation. Earlier masks stay in place; see
/// docs/operations.md, "The masking key".
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn rotate_mask_key() -> i32 {
    keystore::install_key(&mask::generate_key().or_raise())
}

/// Installs a given 32-byte key as the new masking key (superuser only),
/// e.g. to make masks match another database's. Returns its generation.
#[pg_extern(volatile, strict, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn set_mask_key(key: &[u8]) -> i32 {
    keystore::install_key(key)
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

    use fetch_etl_core::mask::Masker;

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
        let expected = Masker::new(&key).unwrap().mask(b"199.172.111.135");
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
        let expected = Masker::new(&[0xab; 32]).unwrap().mask(b"10.0.0.1");
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
