"""Released SQL stays released; upgrades give the same database as a fresh install.

For each frozen install script tests/upgrade/fetch_etl--V.sql (the SQL that
version V installed when it was released):
- V is the current version: installing the frozen script and installing the
  current build must give identical catalogs. If not, released SQL changed:
  bump the version and write sql/fetch_etl--V--<new>.sql.
- V is older: CREATE EXTENSION fetch_etl VERSION 'V' then ALTER EXTENSION
  fetch_etl UPDATE must give the same catalog as a fresh install.

Catalogs are compared as a normalized description of every object in schema
fetch_etl (pgrx does not promise a stable order of its generated script, so
the texts themselves are not compared). Run as root by scripts/test, against
the test cluster; it copies frozen scripts into the extension directory and
removes them again.
"""
import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg

HERE = Path(__file__).resolve().parent

DESCRIBE = {
    "functions": """
        SELECT p.oid::regprocedure::text, p.prokind, p.provolatile, p.proparallel, p.proisstrict, p.prosecdef,
               coalesce(p.proconfig::text, ''), pg_get_function_arguments(p.oid), pg_get_function_result(p.oid),
               CASE WHEN l.lanname = 'c' THEN p.prosrc ELSE md5(p.prosrc) END, l.lanname,
               coalesce(p.proacl::text, ''), coalesce(obj_description(p.oid, 'pg_proc'), '')
        FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
        WHERE p.pronamespace = 'fetch_etl'::regnamespace ORDER BY 1""",
    "relations": """
        SELECT c.relname, c.relkind, coalesce(c.relacl::text, ''), coalesce(obj_description(c.oid, 'pg_class'), ''),
               CASE WHEN c.relkind = 'v' THEN pg_get_viewdef(c.oid) ELSE '' END
        FROM pg_class c WHERE c.relnamespace = 'fetch_etl'::regnamespace AND c.relkind IN ('r', 'v', 'S') ORDER BY 1""",
    "columns": """
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               coalesce(pg_get_expr(d.adbin, d.adrelid), ''), coalesce(co.collname, '')
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        LEFT JOIN pg_collation co ON co.oid = a.attcollation
        WHERE c.relnamespace = 'fetch_etl'::regnamespace AND c.relkind IN ('r', 'v') AND a.attnum > 0
          AND NOT a.attisdropped ORDER BY 1, 2""",
    # Columns are compared by name above; this compares their order (SELECT *, positional INSERT and COPY
    # see it). ALTER TABLE ... ADD COLUMN can only append, so an upgrade that adds a column where a fresh
    # install has it in the middle must be listed in COLUMN_ORDER_ACCEPTED and documented.
    "column_order": """
        SELECT c.relname, string_agg(a.attname, ',' ORDER BY a.attnum)
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        WHERE c.relnamespace = 'fetch_etl'::regnamespace AND c.relkind = 'r' AND a.attnum > 0
          AND NOT a.attisdropped GROUP BY 1 ORDER BY 1""",
    "constraints": """
        SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint
        WHERE connamespace = 'fetch_etl'::regnamespace ORDER BY 1, 2""",
    "indexes": """
        SELECT regexp_replace(indexdef, 'INDEX \\S+ ON', 'INDEX ON') FROM pg_indexes
        WHERE schemaname = 'fetch_etl' ORDER BY 1""",
    "triggers": """
        SELECT pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        WHERE c.relnamespace = 'fetch_etl'::regnamespace AND NOT t.tgisinternal ORDER BY 1""",
    "dumped": """
        SELECT cfg::regclass::text FROM pg_extension e, unnest(e.extconfig) AS cfg
        WHERE e.extname = 'fetch_etl' ORDER BY 1""",
    "members": """
        SELECT pg_describe_object(classid, objid, objsubid) FROM pg_depend
        WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
          AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'fetch_etl') ORDER BY 1""",
    "schema": """SELECT nspname, coalesce(nspacl::text, '') FROM pg_namespace WHERE nspname = 'fetch_etl'""",
}


# Column-order differences an upgrade from a release leaves, accepted and documented in docs/operations.md
# ("Upgrades"): {release: {table, ...}}. Everything else about these tables is still compared.
COLUMN_ORDER_ACCEPTED = {
    # 0.2.0 added drain_runs.deferred after duplicates; ADD COLUMN put it last.
    "0.1.0": {"drain_runs"},
}


def describe(conn) -> dict:
    return {k: [tuple(r) for r in conn.execute(q)] for k, q in DESCRIBE.items()}


def diff(a: dict, b: dict, accepted_order: frozenset = frozenset()) -> list[str]:
    out = []
    for k in DESCRIBE:
        if k == "column_order":
            a = {**a, k: [r for r in a[k] if r[0] not in accepted_order]}
            b = {**b, k: [r for r in b[k] if r[0] not in accepted_order]}
        for row in sorted(set(a[k]) - set(b[k]), key=str):
            out.append(f"  only in the first  ({k}): {row}")
        for row in sorted(set(b[k]) - set(a[k]), key=str):
            out.append(f"  only in the second ({k}): {row}")
    return out


def grants_survive(admin, old: str) -> list[str]:
    """A role granted EXECUTE on every function of release `old` still has it
    on every function of the same name after ALTER EXTENSION UPDATE (an upgrade
    that drops and recreates a function must carry its grants over)."""
    db, role = "upgrade_grants", "fe_upgrade_grantee"
    admin(f'DROP DATABASE IF EXISTS "{db}"')
    admin(f'CREATE DATABASE "{db}"')
    admin(f"DROP ROLE IF EXISTS {role}")
    admin(f"CREATE ROLE {role}")
    out = []
    try:
        with psycopg.connect(host=ARGS.host, port=ARGS.port, user="postgres", dbname=db, autocommit=True) as c:
            c.execute(f"CREATE EXTENSION fetch_etl VERSION '{old}'")
            c.execute(f"GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA fetch_etl TO {role}")
            granted = {r[0] for r in c.execute(
                "SELECT proname FROM pg_proc WHERE pronamespace = 'fetch_etl'::regnamespace AND prokind = 'f'")}
            c.execute("ALTER EXTENSION fetch_etl UPDATE")
            for (fn, ok) in c.execute(
                    "SELECT p.oid::regprocedure::text, has_function_privilege(%s, p.oid, 'EXECUTE') FROM pg_proc p"
                    " WHERE p.pronamespace = 'fetch_etl'::regnamespace AND p.proname = ANY(%s)", (role, list(granted))):
                if not ok:
                    out.append(f"  {fn}: EXECUTE granted before the update is gone after it")
    finally:
        admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin(f"DROP ROLE IF EXISTS {role}")
    return out


def update_is_refused_for_a_schema_it_cannot_trust(admin, old: str) -> list[str]:
    """Threat: objects another role left in schema fetch_etl (or a schema that
    changed hands) are used by the update script with a superuser's rights.
    The update refuses before it changes anything: the version stays."""
    db, role = "upgrade_trust", "fe_upgrade_stranger"
    out = []
    for what, plant, sqlstate in [
        ("a planted function", "CREATE FUNCTION fetch_etl.planted() RETURNS int LANGUAGE sql AS 'SELECT 1'", "55000"),
        ("a schema owned by another role", f"ALTER SCHEMA fetch_etl OWNER TO {role}", "42501"),
    ]:
        admin(f'DROP DATABASE IF EXISTS "{db}"')
        admin(f'CREATE DATABASE "{db}"')
        admin(f"DROP ROLE IF EXISTS {role}")
        admin(f"CREATE ROLE {role}")
        try:
            with psycopg.connect(host=ARGS.host, port=ARGS.port, user="postgres", dbname=db, autocommit=True) as c:
                c.execute(f"CREATE EXTENSION fetch_etl VERSION '{old}'")
                c.execute(plant)
                try:
                    c.execute("ALTER EXTENSION fetch_etl UPDATE")
                    out.append(f"  {old}: the update went ahead in spite of {what}")
                except psycopg.Error as e:
                    if e.sqlstate != sqlstate:
                        out.append(f"  {old}, {what}: SQLSTATE {e.sqlstate} ({e}), expected {sqlstate}")
                v = c.execute("SELECT extversion FROM pg_extension WHERE extname = 'fetch_etl'").fetchone()[0]
                if v != old:
                    out.append(f"  {old}, {what}: the extension is at {v} after a refused update")
        finally:
            admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            admin(f"DROP ROLE IF EXISTS {role}")
    return out


def update_takes_back_what_default_privileges_gave(admin, old: str) -> list[str]:
    """Threat: the installer's ALTER DEFAULT PRIVILEGES gave another role the
    key, the vault and unmask() when release `old` was installed (before
    0.5.0), or gives it what the update creates (the pipelines' catalog, new
    function signatures); the update takes back every privilege default
    privileges explain."""
    db, role = "upgrade_defaults", "fe_upgrade_reader"
    admin(f'DROP DATABASE IF EXISTS "{db}"')
    admin(f'CREATE DATABASE "{db}"')
    admin(f"DROP ROLE IF EXISTS {role}")
    admin(f"CREATE ROLE {role}")
    out = []
    try:
        with psycopg.connect(host=ARGS.host, port=ARGS.port, user="postgres", dbname=db, autocommit=True) as c:
            for kind in ("TABLES", "SEQUENCES", "FUNCTIONS", "SCHEMAS"):
                c.execute(f"ALTER DEFAULT PRIVILEGES GRANT ALL ON {kind} TO {role}")
            c.execute(f"CREATE EXTENSION fetch_etl VERSION '{old}'")
            leaked = c.execute("SELECT has_table_privilege(%s, 'fetch_etl.mask_keys', 'SELECT')", (role,)).fetchone()[0]
            if version_key(old) >= [0, 5, 0]:
                # Its install takes them back itself; what the update creates gets them
                # again (the defaults are still there) and must take them back too.
                if leaked:
                    out.append(f"  {old}: its install left {role} the key")
                c.execute("ALTER EXTENSION fetch_etl UPDATE")
            else:
                if not leaked:
                    out.append(f"  {old}: the control did not leak (default privileges did not apply?)")
                # CREATE on the schema (from the defaults for schemas) is refused, not taken back: the
                # role could add objects before the update commits. The DBA revokes it, then updates.
                try:
                    c.execute("ALTER EXTENSION fetch_etl UPDATE")
                    out.append(f"  {old}: the update went ahead while {role} could create in the schema")
                except psycopg.errors.InsufficientPrivilege as e:
                    if f"REVOKE CREATE ON SCHEMA fetch_etl FROM {role}" not in (e.diag.message_hint or ""):
                        out.append(f"  {old}: the refusal's hint does not say what to revoke: {e.diag.message_hint}")
                c.execute(f"REVOKE CREATE ON SCHEMA fetch_etl FROM {role}")
                c.execute("ALTER EXTENSION fetch_etl UPDATE")
            for (what,) in c.execute(
                    "SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'fetch_etl'::regnamespace"
                    " AND c.relkind IN ('r', 'v', 'S') AND (has_table_privilege(%s, c.oid, 'SELECT')"
                    "  OR has_table_privilege(%s, c.oid, 'INSERT') OR has_table_privilege(%s, c.oid, 'UPDATE'))"
                    " UNION ALL SELECT p.oid::regprocedure::text FROM pg_proc p"
                    " WHERE p.pronamespace = 'fetch_etl'::regnamespace AND has_function_privilege(%s, p.oid, 'EXECUTE')"
                    " UNION ALL SELECT 'schema CREATE' WHERE has_schema_privilege(%s, 'fetch_etl', 'CREATE')",
                    (role,) * 5):
                out.append(f"  {old} -> update: {role} still holds privileges on {what}")
    finally:
        admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin(f"DROP ROLE IF EXISTS {role}")
    return out


def version_key(v: str):
    return [int(x) for x in re.findall(r"\d+", v)]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", required=True)
    ap.add_argument("--version", required=True, help="the current version (Cargo.toml)")
    ap.add_argument("--extdir", required=True, help="$(pg_config --sharedir)/extension")
    args = ap.parse_args()
    global ARGS
    ARGS = args
    extdir = Path(args.extdir)

    def admin(sql):
        with psycopg.connect(host=args.host, port=args.port, user="postgres", dbname="postgres", autocommit=True) as c:
            c.execute(sql)

    def install(db: str, create_sql: str, then: str | None = None) -> dict:
        admin(f'DROP DATABASE IF EXISTS "{db}"')
        admin(f'CREATE DATABASE "{db}"')
        try:
            with psycopg.connect(host=args.host, port=args.port, user="postgres", dbname=db, autocommit=True) as c:
                c.execute(create_sql)
                if then:
                    c.execute(then)
                installed = c.execute("SELECT extversion FROM pg_extension WHERE extname = 'fetch_etl'").fetchone()[0]
                if installed != args.version:
                    raise SystemExit(f"{db}: fetch_etl is at {installed}, expected {args.version}")
                return describe(c)
        finally:
            admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')

    frozen = sorted(HERE.glob("fetch_etl--*.sql"), key=lambda p: version_key(p.stem.split("--")[1]))
    if not frozen:
        print("check_upgrades: no frozen release scripts", file=sys.stderr)
        return 1
    fresh = install("upgrade_fresh", "CREATE EXTENSION fetch_etl")
    failures = 0
    for path in frozen:
        v = path.stem.split("--")[1]
        target = extdir / f"fetch_etl--{v}.sql"
        if v == args.version:
            current = extdir / f"fetch_etl--{v}.sql"
            saved = current.with_suffix(".sql.current")
            shutil.copyfile(current, saved)
            try:
                shutil.copyfile(path, current)
                released = install("upgrade_released", "CREATE EXTENSION fetch_etl")
            finally:
                shutil.move(saved, current)
            problems = diff(released, fresh)
            what = f"{v}: the released SQL and this build's SQL"
            hint = f"released SQL changed: bump the version and write sql/fetch_etl--{v}--<new>.sql"
        elif version_key(v) < version_key(args.version):
            shutil.copyfile(path, target)
            try:
                upgraded = install("upgrade_from", f"CREATE EXTENSION fetch_etl VERSION '{v}'", "ALTER EXTENSION fetch_etl UPDATE")
            finally:
                target.unlink()
            problems = diff(upgraded, fresh, frozenset(COLUMN_ORDER_ACCEPTED.get(v, ())))
            what = f"{v} -> {args.version}: ALTER EXTENSION UPDATE and a fresh install"
            hint = "the upgrade scripts miss something"
            shutil.copyfile(path, target)
            try:
                problems += grants_survive(admin, v)
                problems += update_is_refused_for_a_schema_it_cannot_trust(admin, v)
                problems += update_takes_back_what_default_privileges_gave(admin, v)
            finally:
                target.unlink()
        else:
            print(f"check_upgrades: {path.name} is newer than {args.version}", file=sys.stderr)
            return 1
        if problems:
            failures += 1
            print(f"check_upgrades: {what} differ ({hint}):", file=sys.stderr)
            print("\n".join(problems), file=sys.stderr)
        else:
            print(f"check_upgrades: {what} give identical catalogs")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
