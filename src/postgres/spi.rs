//! Running SQL the way fetch_etl needs it: in a subtransaction that catches
//! errors, and as the extension's owner.

use std::ffi::CStr;
use std::panic::AssertUnwindSafe;

use pgrx::pg_sys;
use pgrx::prelude::*;

use fetch_etl_core::error::ErrorKind;

use super::error::{raise_with_hint, Caught};

/// Runs `f` in a subtransaction (like a PL/pgSQL exception block): on error the
/// subtransaction is rolled back and the error returned.
pub(crate) fn in_subxact<R>(f: AssertUnwindSafe<impl FnOnce() -> R>) -> Result<R, Caught> {
    // SAFETY: the PL/pgSQL pattern: remember memory context and resource
    // owner, start a subtransaction, and restore both after commit or rollback.
    unsafe {
        let cx = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(cx);
        let result = pg_sys::PgTryBuilder::new(AssertUnwindSafe(move || Ok(f.0())))
            .catch_others(|e| Err(Caught(Box::new(e))))
            .execute();
        if result.is_ok() {
            pg_sys::ReleaseCurrentSubTransaction();
        } else {
            pg_sys::MemoryContextSwitchTo(cx);
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
        }
        pg_sys::MemoryContextSwitchTo(cx);
        pg_sys::CurrentResourceOwner = owner;
        result
    }
}

/// Runs `f` as the extension's owner with search_path = pg_catalog, pg_temp:
/// fetch_etl's own tables are not writable by the roles allowed to drain.
/// On error the transaction (or subtransaction) abort restores both.
pub(crate) fn as_owner<R>(owner: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    restricted_as(owner, Settings::Keep, f)
}

/// Runs `f` as `role`, the owner of a pipeline, whose table's triggers,
/// defaults and domain checks run with that role's rights, never the
/// drain's (a superuser's pg_cron job). A security-restricted operation, as
/// PostgreSQL's maintenance commands are: no SET ROLE, no temporary
/// objects, no deferred trigger left to fire at COMMIT as the caller; with
/// search_path = pg_catalog, pg_temp; and every setting `f` changes (a
/// trigger's `set_config(..., false)`) is undone afterwards, so nothing of
/// the role's survives into the caller's session.
pub(crate) fn as_pipeline_owner<R>(role: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    restricted_as(role, Settings::Undo, f)
}

/// What becomes of the settings `f` changes in [`restricted_as`].
enum Settings {
    /// Kept as PostgreSQL keeps a function's (our own SQL only).
    Keep,
    /// Undone, as REFRESH MATERIALIZED VIEW undoes them (another role's code).
    Undo,
}

fn restricted_as<R>(role: pg_sys::Oid, settings: Settings, f: impl FnOnce() -> R) -> R {
    // SAFETY: the same switch PostgreSQL makes for SECURITY DEFINER functions
    // and RI triggers, in a GUC nest level of its own; restored below, or by
    // the (sub)transaction abort on error.
    unsafe {
        let mut saved_user = pg_sys::InvalidOid;
        let mut saved_cx = 0;
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_cx);
        pg_sys::SetUserIdAndSecContext(
            role,
            saved_cx
                | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
                | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
        );
        let nest = pg_sys::NewGUCNestLevel();
        set_in_nest(c"search_path", c"pg_catalog, pg_temp");
        let r = f();
        pg_sys::AtEOXact_GUC(matches!(settings, Settings::Keep), nest);
        pg_sys::SetUserIdAndSecContext(saved_user, saved_cx);
        r
    }
}

/// Runs `f` with `lock_timeout` set to `timeout` (at least 1 ms; 0 would mean
/// no limit), restored afterwards (or by the abort on error).
pub(crate) fn with_lock_timeout<R>(timeout: std::time::Duration, f: impl FnOnce() -> R) -> R {
    let ms = std::ffi::CString::new(timeout.as_millis().max(1).to_string()).expect("digits");
    with_setting(c"lock_timeout", &ms, f)
}

/// Runs `f` with `search_path` set to `path` (restored afterwards, or by
/// the abort on error).
pub(crate) fn with_search_path<R>(path: &CStr, f: impl FnOnce() -> R) -> R {
    with_setting(c"search_path", path, f)
}

/// Runs `f` with setting `name` at `value` in a GUC nest level of its own,
/// as PostgreSQL's function SET clauses do: popped afterwards, or by the
/// abort on error.
fn with_setting<R>(name: &CStr, value: &CStr, f: impl FnOnce() -> R) -> R {
    // SAFETY: a nest level pushed and popped around `f`, on this backend's GUCs.
    unsafe {
        let nest = pg_sys::NewGUCNestLevel();
        set_in_nest(name, value);
        let r = f();
        pg_sys::AtEOXact_GUC(true, nest);
        r
    }
}

/// Sets `name` to `value` for the current GUC nest level (as a function's
/// SET clause does).
///
/// # Safety
/// A nest level must have been pushed, and be popped by the caller.
unsafe fn set_in_nest(name: &CStr, value: &CStr) {
    // SAFETY: the caller pushed a nest level; the names are NUL-terminated.
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
    }
}

/// The role that created the extension (and owns its tables). Raises if
/// the extension's schema belongs to another role: its objects could then be
/// someone else's, and the drain would use them with the owner's rights (a
/// database whose schema predates 0.5.0's install check; see
/// docs/security.md, "Install-time trust").
pub(crate) fn extension_owner() -> pg_sys::Oid {
    let found = Spi::get_two::<pg_sys::Oid, bool>(
        "SELECT e.extowner, n.nspowner OPERATOR(pg_catalog.=) e.extowner \
         FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace \
         WHERE e.extname OPERATOR(pg_catalog.=) 'fetch_etl'",
    )
    .ok();
    match found {
        Some((Some(owner), Some(true))) => owner,
        Some((Some(_), _)) => raise_with_hint(
            ErrorKind::InsufficientPrivilege,
            "schema fetch_etl is not owned by the role that owns the extension",
            "Check what the schema holds, then ALTER SCHEMA fetch_etl OWNER TO the extension's owner and run ALTER EXTENSION fetch_etl UPDATE.",
        ),
        _ => raise_with_hint(
            ErrorKind::NotInPrerequisiteState,
            "fetch_etl is not installed in this database",
            "Run CREATE EXTENSION fetch_etl.",
        ),
    }
}

/// A role's name (None: no such role, a dropped one).
pub(crate) fn role_name(oid: pg_sys::Oid) -> Option<String> {
    // SAFETY: a palloc'd copy of the name, or NULL (noerr) when there is none.
    unsafe { c_string(pg_sys::GetUserNameFromId(oid, true)) }
}

/// An owned copy of a C string (None: NULL).
///
/// # Safety
/// `p` is NULL or a NUL-terminated string.
pub(crate) unsafe fn c_string(p: *const std::ffi::c_char) -> Option<String> {
    // SAFETY: the caller's promise.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// Raises (55000) unless the catalog is at least `at`: `what` needs it.
pub(crate) fn require_catalog(at: (u32, u32, u32), what: &str) {
    if catalog_version() < at {
        raise_with_hint(
            ErrorKind::NotInPrerequisiteState,
            format!(
                "{what} needs the fetch_etl {}.{}.{} catalog; this database's is older",
                at.0, at.1, at.2
            ),
            "Run ALTER EXTENSION fetch_etl UPDATE.",
        );
    }
}

/// The version of the extension's catalog (`pg_extension.extversion`) as
/// (major, minor, patch): older than the library after a package upgrade,
/// until `ALTER EXTENSION fetch_etl UPDATE` runs.
pub(crate) fn catalog_version() -> (u32, u32, u32) {
    let v = Spi::get_one::<String>(
        "SELECT e.extversion::pg_catalog.text FROM pg_catalog.pg_extension e \
         WHERE e.extname OPERATOR(pg_catalog.=) 'fetch_etl'",
    )
    .ok()
    .flatten()
    .unwrap_or_default();
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let mut next = || parts.next().unwrap_or(0);
    (next(), next(), next())
}

/// The extension's own table `name`: looked up in the extension's schema
/// and only if it is a member of the extension, never by name alone (a
/// table of that name someone else made is not ours).
pub(crate) fn member_table(name: &str) -> Option<pg_sys::Oid> {
    Spi::get_one_with_args::<pg_sys::Oid>(
        "SELECT c.oid FROM pg_catalog.pg_extension e \
         JOIN pg_catalog.pg_class c ON c.relnamespace OPERATOR(pg_catalog.=) e.extnamespace \
         JOIN pg_catalog.pg_depend d ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass \
              AND d.objid OPERATOR(pg_catalog.=) c.oid AND d.deptype OPERATOR(pg_catalog.=) 'e' \
              AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_extension'::pg_catalog.regclass \
              AND d.refobjid OPERATOR(pg_catalog.=) e.oid \
         WHERE e.extname OPERATOR(pg_catalog.=) 'fetch_etl' AND c.relname OPERATOR(pg_catalog.=) $1",
        &[name.into()],
    )
    .ok()
    .flatten()
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    #[pg_test]
    fn subxact_catches_and_unpacks_sqlstate() {
        let r = in_subxact(AssertUnwindSafe(|| Spi::get_one::<i32>("SELECT 1/0")));
        let e = r.expect_err("division by zero raises");
        assert_eq!(e.sqlstate().as_deref(), Some("22012"));
        assert!(e.is_row_error());
        assert!(!e.is_interrupt());
        assert!(e.describe().starts_with("22012 division by zero"));
        // the transaction is usable afterwards, and a successful subxact commits
        assert_eq!(
            in_subxact(AssertUnwindSafe(|| Spi::get_one::<i32>("SELECT 2")))
                .unwrap()
                .unwrap(),
            Some(2)
        );
        let e = in_subxact(AssertUnwindSafe(|| Spi::run("SELECT * FROM no_such_table")))
            .expect_err("missing table");
        assert_eq!(e.sqlstate().as_deref(), Some("42P01"));
        assert!(!e.is_lock_timeout());
        // a serialization failure and a lock timeout are no row's fault
        let e = in_subxact(AssertUnwindSafe(|| {
            Spi::run("DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '40001'; END $$")
        }))
        .expect_err("raised");
        assert!(!e.is_row_error());
        let e = in_subxact(AssertUnwindSafe(|| {
            Spi::run("DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '55P03'; END $$")
        }))
        .expect_err("raised");
        assert!(e.is_lock_timeout() && !e.is_row_error());
    }

    #[pg_test]
    fn as_owner_switches_and_restores_identity_and_search_path() {
        Spi::run("CREATE ROLE fe_pgtest_role").unwrap();
        Spi::run("SET search_path = public").unwrap();
        Spi::run("SET ROLE fe_pgtest_role").unwrap();
        let owner = extension_owner();
        let inside = as_owner(owner, || {
            Spi::get_two::<String, String>(
                "SELECT current_user::text, current_setting('search_path')",
            )
            .unwrap()
        });
        assert_eq!(inside.1.as_deref(), Some("pg_catalog, pg_temp"));
        assert_ne!(inside.0.as_deref(), Some("fe_pgtest_role"));
        let after = Spi::get_two::<String, String>(
            "SELECT current_user::text, current_setting('search_path')",
        )
        .unwrap();
        assert_eq!(after.0.as_deref(), Some("fe_pgtest_role"));
        assert_eq!(after.1.as_deref(), Some("public"));
        Spi::run("RESET ROLE").unwrap();
    }
}
