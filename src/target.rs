//! The table sqs_drain loads into: found with the caller's search_path,
//! created with the exercise's DDL when missing, checked before any message
//! is received (so a misconfigured table never consumes messages).

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::quote_identifier;

use crate::errors::ErrorKind;
use crate::event::{AppVersionColumn, Limits};
use crate::pgerr::{raise, raise_with_hint};

/// The exercise's DDL for `user_logins`.
pub const COLUMNS_DDL: &str =
    "user_id varchar(128), device_type varchar(32), masked_ip varchar(256), \
     masked_device_id varchar(256), locale varchar(32), app_version integer, create_date date";

const REQUIRED: [&str; 7] = [
    "user_id",
    "device_type",
    "masked_ip",
    "masked_device_id",
    "locale",
    "app_version",
    "create_date",
];

pub struct Target {
    /// Quoted, schema-qualified name, as used in SQL text and drain_runs.
    pub sql_name: String,
    pub limits: Limits,
    /// INSERT ... SELECT FROM unnest($1..$7) for this table.
    pub insert_sql: String,
    pub app_version_is_int: bool,
}

fn spi_fail(e: pgrx::spi::SpiError) -> ! {
    raise(ErrorKind::Internal, format!("SPI: {e}"))
}

/// Resolves (and if needed creates) the target table, as the calling role.
pub fn resolve(name: &str) -> Target {
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
            .unwrap_or_else(|e| spi_fail(e))
        };
        let relid = match lookup(c, name) {
            Some(oid) => oid,
            None => {
                let parts: Vec<Option<String>> = c
                    .update("SELECT pg_catalog.parse_ident($1)", None, &[name.into()])
                    .and_then(|t| t.first().get_one::<Vec<Option<String>>>())
                    .unwrap_or_else(|e| spi_fail(e))
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
                            .unwrap_or_else(|e| spi_fail(e));
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
                .unwrap_or_else(|e| spi_fail(e));
                pgrx::notice!("fetch_etl: created table {qualified}");
                lookup(c, &qualified)
                    .unwrap_or_else(|| raise(ErrorKind::Internal, "created table not found"))
            }
        };
        let (relkind, sql_name, may_insert): (Option<i8>, Option<String>, Option<bool>) = c
            .update(
                "SELECT c.relkind::pg_catalog.\"char\", \
                        pg_catalog.quote_ident(n.nspname) OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||) pg_catalog.quote_ident(c.relname), \
                        pg_catalog.has_table_privilege(c.oid, 'INSERT') \
                 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
                 WHERE c.oid OPERATOR(pg_catalog.=) $1",
                None,
                &[relid.into()],
            )
            .and_then(|t| t.first().get_three())
            .unwrap_or_else(|e| spi_fail(e));
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
        if may_insert != Some(true) {
            raise_with_hint(
                ErrorKind::InsufficientPrivilege,
                format!("permission denied for table {sql_name}: sqs_drain inserts into it"),
                format!("GRANT INSERT ON {sql_name} TO <the role running sqs_drain>;"),
            );
        }
        let mut columns: Vec<(String, pg_sys::Oid, i32, String)> = Vec::new();
        let table = c
            .update(
                "SELECT a.attname::pg_catalog.text, a.atttypid, a.atttypmod, pg_catalog.format_type(a.atttypid, a.atttypmod) \
                 FROM pg_catalog.pg_attribute a \
                 WHERE a.attrelid OPERATOR(pg_catalog.=) $1 AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped",
                None,
                &[relid.into()],
            )
            .unwrap_or_else(|e| spi_fail(e));
        for row in table {
            let get = |i| row.get::<String>(i).ok().flatten().unwrap_or_default();
            columns.push((
                get(1),
                row.get::<pg_sys::Oid>(2)
                    .ok()
                    .flatten()
                    .unwrap_or(pg_sys::InvalidOid),
                row.get::<i32>(3).ok().flatten().unwrap_or(-1),
                get(4),
            ));
        }
        build(sql_name, &columns)
    })
}

fn build(sql_name: String, columns: &[(String, pg_sys::Oid, i32, String)]) -> Target {
    let col = |n: &str| {
        columns.iter().find(|c| c.0 == n).unwrap_or_else(|| {
            raise_with_hint(
                ErrorKind::UndefinedColumn,
                format!("target table {sql_name} has no column {n}"),
                format!("sqs_drain needs the columns {}.", REQUIRED.join(", ")),
            )
        })
    };
    let text_limit = |n: &str| -> Option<usize> {
        let (_, oid, typmod, ty) = col(n);
        if ![pg_sys::TEXTOID, pg_sys::VARCHAROID, pg_sys::BPCHAROID].contains(oid) {
            raise(
                ErrorKind::DatatypeMismatch,
                format!(
                    "column {n} of {sql_name} is {ty}; sqs_drain needs a text type (text, varchar)"
                ),
            );
        }
        (*typmod >= 4).then(|| (*typmod - 4) as usize)
    };
    let user_id = text_limit("user_id");
    let device_type = text_limit("device_type");
    let locale = text_limit("locale");
    for masked in ["masked_ip", "masked_device_id"] {
        if let Some(n) = text_limit(masked) {
            if n < crate::mask::MASK_LEN {
                raise(
                    ErrorKind::DatatypeMismatch,
                    format!(
                        "column {masked} of {sql_name} holds {n} characters; masks have {}",
                        crate::mask::MASK_LEN
                    ),
                );
            }
        }
    }
    let (_, av_oid, av_typmod, av_ty) = col("app_version");
    let (app_version, array_type) = match *av_oid {
        o if o == pg_sys::INT2OID => (AppVersionColumn::Integer { min: i16::MIN as i64, max: i16::MAX as i64 }, "int8"),
        o if o == pg_sys::INT4OID => (AppVersionColumn::Integer { min: i32::MIN as i64, max: i32::MAX as i64 }, "int8"),
        o if o == pg_sys::INT8OID => (AppVersionColumn::Integer { min: i64::MIN, max: i64::MAX }, "int8"),
        o if [pg_sys::TEXTOID, pg_sys::VARCHAROID, pg_sys::BPCHAROID].contains(&o) => {
            (AppVersionColumn::Text { max_chars: (*av_typmod >= 4).then(|| (*av_typmod - 4) as usize) }, "text")
        }
        _ => raise(
            ErrorKind::DatatypeMismatch,
            format!("column app_version of {sql_name} is {av_ty}; sqs_drain needs smallint, integer, bigint or a text type"),
        ),
    };
    let (_, cd_oid, _, cd_ty) = col("create_date");
    if ![
        pg_sys::DATEOID,
        pg_sys::TIMESTAMPOID,
        pg_sys::TIMESTAMPTZOID,
        pg_sys::TEXTOID,
        pg_sys::VARCHAROID,
    ]
    .contains(cd_oid)
    {
        raise(ErrorKind::DatatypeMismatch, format!("column create_date of {sql_name} is {cd_ty}; sqs_drain needs date, timestamp or text"));
    }
    // Text columns get the ISO date string as is; a date cast would follow DateStyle.
    let cd_expr = if [pg_sys::TEXTOID, pg_sys::VARCHAROID].contains(cd_oid) {
        "cd"
    } else {
        "cd::pg_catalog.date"
    };
    let cols: Vec<String> = REQUIRED.iter().map(quote_identifier).collect();
    let insert_sql = format!(
        "INSERT INTO {sql_name} ({}) \
         SELECT u, d, mi, md, l, av, {cd_expr} \
         FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[]), pg_catalog.unnest($2::pg_catalog.text[]), \
              pg_catalog.unnest($3::pg_catalog.text[]), pg_catalog.unnest($4::pg_catalog.text[]), \
              pg_catalog.unnest($5::pg_catalog.text[]), pg_catalog.unnest($6::pg_catalog.{array_type}[]), \
              pg_catalog.unnest($7::pg_catalog.text[])) AS t(u, d, mi, md, l, av, cd)",
        cols.join(", ")
    );
    Target {
        sql_name,
        limits: Limits {
            user_id_chars: user_id,
            device_type_chars: device_type,
            locale_chars: locale,
            app_version,
            ..Limits::default()
        },
        insert_sql,
        app_version_is_int: array_type == "int8",
    }
}
