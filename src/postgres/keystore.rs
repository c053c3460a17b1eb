//! Where the masking key lives and how each backend caches it.
//!
//! The key is a row of `fetch_etl.mask_keys`, a table only its owner (the
//! superuser who created the extension) can read. `mask_pii` runs with the
//! caller's privileges, so it cannot read that table through SQL; instead this
//! module reads it directly with a catalog-snapshot heap scan, which checks no
//! privileges, depends on no search_path and always sees the latest committed
//! key. The key never passes through SQL text, settings or messages.
//!
//! Each backend reads the key once and keeps an HMAC state keyed with it.
//! A statement trigger on `mask_keys` sends a relcache invalidation for that
//! table whenever it changes; every backend's callback then drops its cached
//! key, and the next `mask_pii` call reads the new one. Other sessions pick a
//! rotation up at their next transaction.

use std::cell::{Cell, RefCell};

use pgrx::prelude::*;
use pgrx::{pg_sys, PgTupleDesc};

use fetch_etl_core::error::ErrorKind;
use fetch_etl_core::mask::{self, Masker};

use super::error::{raise, raise_with_hint, require_superuser, OrRaise};

thread_local! {
    static MASKER: RefCell<Option<Masker>> = const { RefCell::new(None) };
    static KEY_RELID: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
}

/// Registers the invalidation callback. Called once from `_PG_init`.
pub(crate) fn init() {
    // SAFETY: registering a callback function with a static lifetime.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(relcache_callback), pg_sys::Datum::from(0usize));
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn relcache_callback(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    // InvalidOid means "all relations" (e.g. after a cache reset).
    let ours = KEY_RELID.with(|k| k.get());
    if relid == pg_sys::InvalidOid || relid == ours {
        forget();
    }
}

fn forget() {
    MASKER.with(|m| {
        if let Ok(mut m) = m.try_borrow_mut() {
            *m = None;
        }
    });
    KEY_RELID.with(|k| k.set(pg_sys::InvalidOid));
}

/// Runs `f` with the active masking key, reading it first if needed.
#[inline]
pub(crate) fn with_masker<R>(f: impl FnOnce(&Masker) -> R) -> R {
    let cached = MASKER.with(|m| m.borrow().is_some());
    if !cached {
        let (relid, masker) = load_active_key();
        MASKER.with(|m| *m.borrow_mut() = Some(masker));
        KEY_RELID.with(|k| k.set(relid));
    }
    MASKER.with(|m| f(m.borrow().as_ref().expect("masking key loaded above")))
}

/// The OID of `fetch_etl.mask_keys`, or an error saying the extension is
/// missing. Only a member of the extension is the key table (`pg_depend`),
/// so a `mask_keys` someone else made, in a schema renamed or planted under
/// that name, is never read as the key. Catalog lookups only, no SPI:
/// `mask_pii` is parallel safe and runs in parallel workers too.
fn key_table_oid() -> pg_sys::Oid {
    // SAFETY: plain catalog lookups by name and by dependency; missing_ok
    // avoids raising.
    let relid = unsafe {
        let ext = pg_sys::get_extension_oid(c"fetch_etl".as_ptr(), true);
        let nsp = pg_sys::get_namespace_oid(c"fetch_etl".as_ptr(), true);
        if ext == pg_sys::InvalidOid || nsp == pg_sys::InvalidOid {
            pg_sys::InvalidOid
        } else {
            let relid = pg_sys::get_relname_relid(c"mask_keys".as_ptr(), nsp);
            let member = relid != pg_sys::InvalidOid
                && pg_sys::getExtensionOfObject(pg_sys::RelationRelationId, relid) == ext;
            if member {
                relid
            } else {
                pg_sys::InvalidOid
            }
        }
    };
    if relid == pg_sys::InvalidOid {
        raise_with_hint(
            ErrorKind::NotInPrerequisiteState,
            "fetch_etl is not installed in this database",
            "Run CREATE EXTENSION fetch_etl.",
        );
    }
    relid
}

/// Reads the active key: the highest generation; among equal generations the
/// oldest row (so a restored key wins over the one a restore's CREATE
/// EXTENSION generated, see docs/operations.md, "The masking key").
fn load_active_key() -> (pg_sys::Oid, Masker) {
    let relid = key_table_oid();
    let mut best: Option<(i32, i64, Vec<u8>)> = None;
    // SAFETY: the relation is opened and closed here with a lock; tuples are
    // only read while the scan is open; the tuple descriptor belongs to the
    // open relation.
    unsafe {
        let rel = pg_sys::table_open(relid, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
        let scan = pg_sys::systable_beginscan(
            rel,
            pg_sys::InvalidOid,
            false,
            std::ptr::null_mut(),
            0,
            std::ptr::null_mut(),
        );
        loop {
            let tuple = pg_sys::systable_getnext(scan);
            if tuple.is_null() {
                break;
            }
            let row =
                PgHeapTuple::from_heap_tuple(PgTupleDesc::from_pg_unchecked((*rel).rd_att), tuple);
            let generation: i32 = row.get_by_name("generation").ok().flatten().unwrap_or(0);
            let created: i64 = row
                .get_by_name::<TimestampWithTimeZone>("created_at")
                .ok()
                .flatten()
                .map(pg_sys::TimestampTz::from)
                .unwrap_or(i64::MAX);
            let better = match &best {
                None => true,
                Some((g, c, _)) => generation > *g || (generation == *g && created < *c),
            };
            if better {
                if let Some(key) = row.get_by_name::<&[u8]>("key").ok().flatten() {
                    best = Some((generation, created, key.to_vec()));
                }
            }
        }
        pg_sys::systable_endscan(scan);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
    }
    match best {
        Some((_, _, key)) => (relid, Masker::new(&key).or_raise()),
        None => raise_with_hint(
            ErrorKind::NotInPrerequisiteState,
            "fetch_etl has no masking key",
            "A superuser can create one with SELECT fetch_etl.rotate_mask_key();",
        ),
    }
}

/// Adds a key as the newest generation and returns its generation number.
pub(crate) fn install_key(key: &[u8]) -> i32 {
    require_superuser("change the masking key");
    mask::validate_key(key).or_raise();
    Spi::connect_mut(|client| {
        // Serialise concurrent rotations so generations stay distinct.
        client.update(
            "LOCK TABLE fetch_etl.mask_keys IN SHARE ROW EXCLUSIVE MODE",
            None,
            &[],
        )?;
        client
            .update(
                "INSERT INTO fetch_etl.mask_keys (generation, key) \
                 SELECT COALESCE(pg_catalog.max(generation), 0) OPERATOR(pg_catalog.+) 1, $1 \
                 FROM fetch_etl.mask_keys RETURNING generation",
                // No row limit: with one, the executor stops before the
                // INSERT finishes and its statement trigger never fires.
                None,
                &[key.into()],
            )?
            .first()
            .get_one::<i32>()
    })
    .ok()
    .flatten()
    .unwrap_or_else(|| raise(ErrorKind::Internal, "could not store the masking key"))
}

/// Statement trigger on `mask_keys`: tell every backend to drop its cached key.
pub(crate) fn invalidate(relid: pg_sys::Oid) {
    // SAFETY: queues a relcache invalidation; delivered at commit.
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(relid) };
}
