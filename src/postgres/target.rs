//! The table sqs_drain loads into: found with the caller's search_path,
//! created with the exercise's DDL when missing, checked before any message
//! is received (so a misconfigured table never consumes messages). The rules
//! about its columns are `fetch_etl_core::target`'s; this file reads the
//! catalog for them.

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::quote_identifier;

use fetch_etl_core::error::ErrorKind;
use fetch_etl_core::target::{self, Column, ColumnType, TargetShape, COLUMNS_DDL};

use super::error::{raise, raise_with_hint, OrRaise, SpiOrRaise};

/// A column type as the rules see it: the one place OIDs and typmods are read.
fn column_type(oid: pg_sys::Oid, typmod: i32) -> ColumnType {
    // varchar(n) and char(n) store n + VARHDRSZ in typmod; -1 means no limit.
    let max_chars =
        (typmod >= pg_sys::VARHDRSZ as i32).then(|| (typmod - pg_sys::VARHDRSZ as i32) as usize);
    match oid {
        pg_sys::TEXTOID => ColumnType::Text,
        pg_sys::VARCHAROID => ColumnType::Varchar { max_chars },
        pg_sys::BPCHAROID => ColumnType::Bpchar { max_chars },
        pg_sys::INT2OID => ColumnType::Smallint,
        pg_sys::INT4OID => ColumnType::Integer,
        pg_sys::INT8OID => ColumnType::Bigint,
        pg_sys::DATEOID => ColumnType::Date,
        pg_sys::TIMESTAMPOID => ColumnType::Timestamp,
        pg_sys::TIMESTAMPTZOID => ColumnType::Timestamptz,
        pg_sys::UUIDOID => ColumnType::Uuid,
        pg_sys::JSONOID => ColumnType::Json,
        pg_sys::JSONBOID => ColumnType::Jsonb,
        _ => ColumnType::Other,
    }
}

/// Whether the calling role may insert into the table `sql_name` (quoted,
/// schema-qualified). Asked again when an insert is refused, to tell a
/// revoked grant from a bad row.
pub(crate) fn may_insert(sql_name: &str) -> bool {
    Spi::get_one_with_args::<bool>(
        "SELECT pg_catalog.has_table_privilege($1::pg_catalog.regclass, 'INSERT')",
        &[sql_name.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false)
}

/// Resolves (and if needed creates) the target table, as the calling role,
/// and checks it can take the rows.
pub(crate) fn resolve(name: &str) -> TargetShape {
    let name = name.trim();
    if name.is_empty() {
        raise(
            ErrorKind::InvalidParameter,
            "target_table must not be empty",
        );
    }
    Spi::connect_mut(|c| {
        let lookup = |c: &mut pgrx::spi::SpiClient<'_>, n: &str| -> Option<pg_sys::Oid> {
            c.update(
                "SELECT pg_catalog.to_regclass($1)::pg_catalog.oid",
                None,
                &[n.into()],
            )
            .and_then(|t| t.first().get_one::<pg_sys::Oid>())
            .or_raise_spi("SPI")
        };
        let relid = match lookup(c, name) {
            Some(oid) => oid,
            None => {
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
                let qualified =
                    format!("{}.{}", quote_identifier(&schema), quote_identifier(&table));
                c.update(
                    &format!("CREATE TABLE IF NOT EXISTS {qualified} ({COLUMNS_DDL})"),
                    None,
                    &[],
                )
                .or_raise_spi("SPI");
                pgrx::notice!("fetch_etl: created table {qualified}");
                lookup(c, &qualified)
                    .unwrap_or_else(|| raise(ErrorKind::Internal, "created table not found"))
            }
        };
        let (relkind, sql_name): (Option<i8>, Option<String>) = c
            .update(
                "SELECT c.relkind::pg_catalog.\"char\", \
                        pg_catalog.quote_ident(n.nspname) OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||) pg_catalog.quote_ident(c.relname) \
                 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
                 WHERE c.oid OPERATOR(pg_catalog.=) $1",
                None,
                &[relid.into()],
            )
            .and_then(|t| t.first().get_two())
            .or_raise_spi("SPI");
        let sql_name = sql_name.unwrap_or_else(|| {
            raise(
                ErrorKind::UndefinedObject,
                format!("table {name:?} vanished"),
            )
        });
        if !matches!(relkind.map(|k| k as u8), Some(b'r') | Some(b'p')) {
            raise(
                ErrorKind::WrongObjectType,
                format!("target_table {sql_name} is not a table"),
            );
        }
        if !may_insert(&sql_name) {
            raise_with_hint(
                ErrorKind::InsufficientPrivilege,
                format!("permission denied for table {sql_name}: sqs_drain inserts into it"),
                format!("GRANT INSERT ON {sql_name} TO <the role running sqs_drain>;"),
            );
        }
        let mut columns: Vec<Column> = Vec::new();
        let table = c
            .update(
                "SELECT a.attname::pg_catalog.text, a.atttypid, a.atttypmod, pg_catalog.format_type(a.atttypid, a.atttypmod) \
                 FROM pg_catalog.pg_attribute a \
                 WHERE a.attrelid OPERATOR(pg_catalog.=) $1 AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped",
                None,
                &[relid.into()],
            )
            .or_raise_spi("SPI");
        for row in table {
            let get = |i| row.get::<String>(i).ok().flatten().unwrap_or_default();
            let oid = row
                .get::<pg_sys::Oid>(2)
                .ok()
                .flatten()
                .unwrap_or(pg_sys::InvalidOid);
            let typmod = row.get::<i32>(3).ok().flatten().unwrap_or(-1);
            columns.push(Column {
                name: get(1),
                ty: column_type(oid, typmod),
                display: get(4),
            });
        }
        target::shape(&sql_name, &columns).or_raise()
    })
}
