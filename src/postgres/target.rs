//! The tables pipelines load into, read from the catalog: found (and, for
//! the built-in login pipeline, created with the exercise's DDL when
//! missing), checked before any message is received, and described column
//! by column for `fetch_etl_core::pipeline::plan`, which decides.

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::{quote_identifier, SpiClient};

use fetch_etl_core::error::ErrorKind;
use fetch_etl_core::pipeline::plan::{Target, TargetColumn, TypeKind};

use super::error::{raise, raise_with_hint, SpiOrRaise};
use super::spi::with_search_path;

/// What a column (the base type, for a domain) can hold, as the pipeline's
/// checks see it: the one place type OIDs and typmods are read.
fn type_kind(base: pg_sys::Oid, typmod: i32, category: u8) -> TypeKind {
    // varchar(n) and char(n) store n + VARHDRSZ in typmod; -1 means no limit.
    let max_chars =
        (typmod >= pg_sys::VARHDRSZ as i32).then(|| (typmod - pg_sys::VARHDRSZ as i32) as usize);
    let int = |min: i64, max: i64| TypeKind::Int { min, max };
    match base {
        pg_sys::TEXTOID => TypeKind::Text { max_chars: None },
        pg_sys::VARCHAROID | pg_sys::BPCHAROID => TypeKind::Text { max_chars },
        pg_sys::INT2OID => int(i16::MIN.into(), i16::MAX.into()),
        pg_sys::INT4OID => int(i32::MIN.into(), i32::MAX.into()),
        pg_sys::INT8OID => int(i64::MIN, i64::MAX),
        pg_sys::DATEOID => TypeKind::Date,
        pg_sys::TIMESTAMPOID => TypeKind::Timestamp,
        pg_sys::TIMESTAMPTZOID => TypeKind::Timestamptz,
        pg_sys::UUIDOID => TypeKind::Uuid,
        pg_sys::JSONOID => TypeKind::Json,
        pg_sys::JSONBOID => TypeKind::Jsonb,
        pg_sys::BOOLOID => TypeKind::Bool,
        pg_sys::NUMERICOID => TypeKind::Numeric,
        pg_sys::FLOAT4OID | pg_sys::FLOAT8OID => TypeKind::Float,
        _ if category == b'A' => TypeKind::Array,
        _ => TypeKind::Other,
    }
}

/// Whether `role` (None: the calling role) may insert into the table
/// `relid`. Asked again when an insert is refused, to tell a revoked grant
/// from a bad row.
pub(crate) fn may_insert(role: Option<pg_sys::Oid>, relid: pg_sys::Oid) -> bool {
    let r = match role {
        None => Spi::get_one_with_args::<bool>(
            "SELECT pg_catalog.has_table_privilege($1, 'INSERT')",
            &[relid.into()],
        ),
        Some(role) => Spi::get_one_with_args::<bool>(
            "SELECT pg_catalog.has_table_privilege($1, $2, 'INSERT')",
            &[role.into(), relid.into()],
        ),
    };
    r.ok().flatten().unwrap_or(false)
}

fn lookup(c: &mut SpiClient<'_>, name: &str) -> Option<pg_sys::Oid> {
    c.update(
        "SELECT pg_catalog.to_regclass($1)::pg_catalog.oid",
        None,
        &[name.into()],
    )
    .and_then(|t| t.first().get_one::<pg_sys::Oid>())
    .or_raise_spi("SPI")
}

/// Finds the table `name` on the caller's search_path; with `create_ddl`,
/// creates it with those columns when it does not exist (the built-in login
/// pipeline: `user_logins` with the exercise's DDL).
pub(crate) fn find(name: &str, create_ddl: Option<&str>) -> pg_sys::Oid {
    let name = name.trim();
    if name.is_empty() {
        raise(
            ErrorKind::InvalidParameter,
            "target_table must not be empty",
        );
    }
    Spi::connect_mut(|c| {
        if let Some(oid) = lookup(c, name) {
            return oid;
        }
        let Some(ddl) = create_ddl else {
            raise(
                ErrorKind::UndefinedObject,
                format!("target table {name:?} does not exist"),
            )
        };
        let parts: Vec<Option<String>> = c
            .update("SELECT pg_catalog.parse_ident($1)", None, &[name.into()])
            .and_then(|t| t.first().get_one::<Vec<Option<String>>>())
            .or_raise_spi("SPI")
            .unwrap_or_default();
        let parts: Vec<String> = parts.into_iter().flatten().collect();
        let (schema, table) = match parts.as_slice() {
            [t] => {
                let s: Option<String> = c
                    .update(
                        "SELECT pg_catalog.current_schema()::pg_catalog.text",
                        None,
                        &[],
                    )
                    .and_then(|t| t.first().get_one())
                    .or_raise_spi("SPI");
                match s {
                    Some(s) => (s, t.clone()),
                    None => raise_with_hint(
                        ErrorKind::InvalidParameter,
                        format!("no schema to create table {name:?} in"),
                        "Set search_path, or give a schema-qualified target_table.",
                    ),
                }
            }
            [s, t] => (s.clone(), t.clone()),
            _ => raise(
                ErrorKind::InvalidParameter,
                format!("target_table {name:?} must be a table name or schema.table"),
            ),
        };
        let qualified = format!("{}.{}", quote_identifier(&schema), quote_identifier(&table));
        c.update(
            &format!("CREATE TABLE IF NOT EXISTS {qualified} ({ddl})"),
            None,
            &[],
        )
        .or_raise_spi("SPI");
        pgrx::notice!("fetch_etl: created table {qualified}");
        lookup(c, &qualified)
            .unwrap_or_else(|| raise(ErrorKind::Internal, "created table not found"))
    })
}

/// Describes the table `relid` for the planner, after checking it is a
/// table `role` (None: the calling role) may insert into. Type names come
/// from `format_type` with an empty search_path: schema-qualified, with
/// their typmods, so they can be cast to whoever runs the statement.
pub(crate) fn describe(relid: pg_sys::Oid, role: Option<pg_sys::Oid>) -> Target {
    with_search_path(c"", || describe_on_empty_path(relid, role))
}

fn describe_on_empty_path(relid: pg_sys::Oid, role: Option<pg_sys::Oid>) -> Target {
    Spi::connect_mut(|c| {
        let (relkind, sql_name): (Option<i8>, Option<String>) = c
            .update(
                "SELECT c.relkind::pg_catalog.\"char\", \
                        pg_catalog.quote_ident(n.nspname) OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||) pg_catalog.quote_ident(c.relname) \
                 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
                 WHERE c.oid OPERATOR(pg_catalog.=) $1",
                None,
                &[relid.into()],
            )
            .and_then(|t| {
                // no row: the table was dropped since the pipeline was made
                if t.is_empty() {
                    Ok((None, None))
                } else {
                    t.first().get_two()
                }
            })
            .or_raise_spi("SPI");
        let sql_name = sql_name.unwrap_or_else(|| {
            raise(
                ErrorKind::UndefinedObject,
                format!("the target table (OID {}) no longer exists", relid.to_u32()),
            )
        });
        if !matches!(relkind.map(|k| k as u8), Some(b'r') | Some(b'p')) {
            raise(
                ErrorKind::WrongObjectType,
                format!("target_table {sql_name} is not a table"),
            );
        }
        if !may_insert(role, relid) {
            raise_with_hint(
                ErrorKind::InsufficientPrivilege,
                format!("permission denied for table {sql_name}: the drain inserts into it"),
                format!("GRANT INSERT ON {sql_name} TO <the role that loads it>;"),
            );
        }
        // A domain's kind is its base type's (followed down to a base type);
        // its cast is the domain itself, so its CHECKs apply.
        let rows = c
            .update(
                "WITH RECURSIVE base(col, oid, typmod, depth) AS ( \
                     SELECT a.attnum, a.atttypid, a.atttypmod, 0 FROM pg_catalog.pg_attribute a \
                      WHERE a.attrelid OPERATOR(pg_catalog.=) $1 AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped \
                     UNION ALL \
                     SELECT b.col, t.typbasetype, t.typtypmod, b.depth OPERATOR(pg_catalog.+) 1 \
                       FROM base b JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) b.oid \
                      WHERE t.typtype OPERATOR(pg_catalog.=) 'd' AND b.depth OPERATOR(pg_catalog.<) 16) \
                 SELECT a.attname::pg_catalog.text, a.atttypid, \
                        pg_catalog.format_type(a.atttypid, a.atttypmod), \
                        pg_catalog.quote_ident(tn.nspname) OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||) pg_catalog.quote_ident(t.typname), \
                        b.oid, CASE WHEN b.depth OPERATOR(pg_catalog.=) 0 THEN a.atttypmod ELSE b.typmod END, \
                        bt.typcategory::pg_catalog.text, \
                        a.attnotnull, a.atthasdef OR a.attidentity OPERATOR(pg_catalog.<>) '', \
                        a.attgenerated OPERATOR(pg_catalog.=) '' AND a.attidentity OPERATOR(pg_catalog.<>) 'a' \
                 FROM pg_catalog.pg_attribute a \
                 JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) a.atttypid \
                 JOIN pg_catalog.pg_namespace tn ON tn.oid OPERATOR(pg_catalog.=) t.typnamespace \
                 JOIN base b ON b.col OPERATOR(pg_catalog.=) a.attnum \
                      AND b.depth OPERATOR(pg_catalog.=) (SELECT pg_catalog.max(b2.depth) FROM base b2 WHERE b2.col OPERATOR(pg_catalog.=) a.attnum) \
                 JOIN pg_catalog.pg_type bt ON bt.oid OPERATOR(pg_catalog.=) b.oid \
                 WHERE a.attrelid OPERATOR(pg_catalog.=) $1 AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped \
                 ORDER BY a.attnum",
                None,
                &[relid.into()],
            )
            .or_raise_spi("SPI");
        let mut columns = Vec::new();
        for row in rows {
            let text = |i| row.get::<String>(i).ok().flatten().unwrap_or_default();
            let oid = |i| {
                row.get::<pg_sys::Oid>(i)
                    .ok()
                    .flatten()
                    .unwrap_or(pg_sys::InvalidOid)
            };
            let flag = |i| row.get::<bool>(i).ok().flatten().unwrap_or(false);
            let category = text(7).bytes().next().unwrap_or(b'U');
            let typmod = row.get::<i32>(6).ok().flatten().unwrap_or(-1);
            columns.push(TargetColumn {
                name: text(1),
                kind: type_kind(oid(5), typmod, category),
                display: text(3),
                cast_to: text(4),
                type_oid: oid(2).to_u32(),
                not_null: flag(8),
                has_default: flag(9),
                insertable: flag(10),
            });
        }
        Target { sql_name, columns }
    })
}

/// The OID of a type named in a column list (`to_regtype`), if it exists.
pub(crate) fn type_oid(name: &str) -> Option<u32> {
    Spi::get_one_with_args::<pg_sys::Oid>(
        "SELECT pg_catalog.to_regtype($1)::pg_catalog.oid",
        &[name.into()],
    )
    .ok()
    .flatten()
    .map(|o| o.to_u32())
}
