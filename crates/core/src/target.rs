//! The target table's shape rules: given its columns, whether sqs_drain can
//! load into it, what each column can hold (the limits validation enforces),
//! and the INSERT statement. The extension reads the columns from the
//! catalog (`src/postgres/target.rs`); everything decided about them is here.

use crate::error::{Classified, ErrorKind};
use crate::event::{AppVersionColumn, Limits};
use crate::mask::MASK_LEN;

/// The exercise's DDL for `user_logins`.
pub const COLUMNS_DDL: &str =
    "user_id varchar(128), device_type varchar(32), masked_ip varchar(256), \
     masked_device_id varchar(256), locale varchar(32), app_version integer, create_date date";

/// The columns sqs_drain fills, in INSERT order.
pub const REQUIRED: [&str; 7] = [
    "user_id",
    "device_type",
    "masked_ip",
    "masked_device_id",
    "locale",
    "app_version",
    "create_date",
];

/// A column's type, as far as the rules care. `max_chars` is the declared
/// length (`varchar(n)`, `char(n)`), None when unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Text,
    Varchar {
        max_chars: Option<usize>,
    },
    Bpchar {
        max_chars: Option<usize>,
    },
    Smallint,
    Integer,
    Bigint,
    Date,
    Timestamp,
    Timestamptz,
    Uuid,
    Json,
    Jsonb,
    /// Anything else.
    Other,
}

impl ColumnType {
    /// `Some(limit)` for the text types (limit None: unlimited), None otherwise.
    fn text_limit(self) -> Option<Option<usize>> {
        match self {
            ColumnType::Text => Some(None),
            ColumnType::Varchar { max_chars } | ColumnType::Bpchar { max_chars } => Some(max_chars),
            _ => None,
        }
    }
}

/// A column of the target table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub ty: ColumnType,
    /// The type as PostgreSQL spells it (`format_type`), for messages.
    pub display: String,
}

/// The optional columns about the message (not the event) a target may
/// have; each is filled when it exists.
pub const METADATA: [&str; 3] = ["sqs_message_id", "sqs_sent_at", "sqs_attributes"];

/// Which of the [`METADATA`] columns the target has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Metadata {
    /// `sqs_message_id`: a text type or uuid.
    pub message_id: bool,
    /// `sqs_sent_at`: timestamptz (or timestamp, in UTC), from SentTimestamp.
    pub sent_at: bool,
    /// `sqs_attributes`: jsonb or json.
    pub attributes: bool,
}

/// The type of the `app_version` array parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppVersionArray {
    Int8,
    Text,
}

/// A usable target table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetShape {
    /// Quoted, schema-qualified name, as used in SQL text and drain_runs.
    pub sql_name: String,
    /// What the columns can hold (`max_body_bytes` left at its default).
    pub limits: Limits,
    pub app_version: AppVersionArray,
    /// The metadata columns it has.
    pub metadata: Metadata,
    /// INSERT ... SELECT FROM unnest($1..$7) for this table. Parameters, in
    /// order: text[] x 5, `app_version` (int8[] or text[]), text[]; then,
    /// for the metadata columns it has, in this order: message ids text[],
    /// sent times int8[] (ms), attributes text[] (JSON).
    pub insert_sql: String,
}

/// Why a table cannot be loaded into.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("target table {table} has no column {column}")]
    MissingColumn { table: String, column: &'static str },
    #[error("column {column} of {table} is {ty}; sqs_drain needs a text type (text, varchar)")]
    NotText {
        table: String,
        column: &'static str,
        ty: String,
    },
    #[error("column {column} of {table} holds {chars} characters; masks have {MASK_LEN}")]
    TooShortForMasks {
        table: String,
        column: &'static str,
        chars: usize,
    },
    #[error("column app_version of {table} is {ty}; sqs_drain needs smallint, integer, bigint or a text type")]
    BadAppVersionType { table: String, ty: String },
    #[error("column create_date of {table} is {ty}; sqs_drain needs date, timestamp or text")]
    BadCreateDateType { table: String, ty: String },
    #[error("column {column} of {table} is {ty}; sqs_drain fills it only if it is {wants}")]
    BadMetadataType {
        table: String,
        column: &'static str,
        ty: String,
        wants: &'static str,
    },
}

impl Classified for TargetError {
    fn kind(&self) -> ErrorKind {
        match self {
            TargetError::MissingColumn { .. } => ErrorKind::UndefinedColumn,
            _ => ErrorKind::DatatypeMismatch,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            TargetError::MissingColumn { .. } => Some(format!(
                "sqs_drain needs the columns {}.",
                REQUIRED.join(", ")
            )),
            TargetError::BadMetadataType { .. } => Some(
                "Change the column's type, or rename it: sqs_drain fills the columns named sqs_message_id, sqs_sent_at and sqs_attributes.".into(),
            ),
            _ => None,
        }
    }
}

/// Applies the rules to the columns of table `sql_name`.
pub fn shape(sql_name: &str, columns: &[Column]) -> Result<TargetShape, TargetError> {
    let table = || sql_name.to_string();
    let col = |name: &'static str| {
        columns
            .iter()
            .find(|c| c.name == name)
            .ok_or(TargetError::MissingColumn {
                table: table(),
                column: name,
            })
    };
    let text_limit = |name: &'static str| -> Result<Option<usize>, TargetError> {
        let c = col(name)?;
        c.ty.text_limit().ok_or_else(|| TargetError::NotText {
            table: table(),
            column: name,
            ty: c.display.clone(),
        })
    };
    let user_id = text_limit("user_id")?;
    let device_type = text_limit("device_type")?;
    let locale = text_limit("locale")?;
    for masked in ["masked_ip", "masked_device_id"] {
        if let Some(n) = text_limit(masked)? {
            if n < MASK_LEN {
                return Err(TargetError::TooShortForMasks {
                    table: table(),
                    column: masked,
                    chars: n,
                });
            }
        }
    }
    let av = col("app_version")?;
    let (app_version, array) = match av.ty {
        ColumnType::Smallint => (
            int_range(i16::MIN as i64, i16::MAX as i64),
            AppVersionArray::Int8,
        ),
        ColumnType::Integer => (
            int_range(i32::MIN as i64, i32::MAX as i64),
            AppVersionArray::Int8,
        ),
        ColumnType::Bigint => (int_range(i64::MIN, i64::MAX), AppVersionArray::Int8),
        t => match t.text_limit() {
            Some(max_chars) => (AppVersionColumn::Text { max_chars }, AppVersionArray::Text),
            None => {
                return Err(TargetError::BadAppVersionType {
                    table: table(),
                    ty: av.display.clone(),
                })
            }
        },
    };
    let cd = col("create_date")?;
    // Text columns get the ISO date string as is; a date cast would follow DateStyle.
    let cd_expr = match cd.ty {
        ColumnType::Date | ColumnType::Timestamp | ColumnType::Timestamptz => "cd::pg_catalog.date",
        ColumnType::Text | ColumnType::Varchar { .. } => "cd",
        _ => {
            return Err(TargetError::BadCreateDateType {
                table: table(),
                ty: cd.display.clone(),
            })
        }
    };
    let array_type = match array {
        AppVersionArray::Int8 => "int8",
        AppVersionArray::Text => "text",
    };
    // The required names are plain lowercase identifiers: no quoting needed
    // (checked by the_required_names_need_no_quotes), and so are METADATA's.
    let mut cols = REQUIRED.join(", ");
    let mut exprs = format!("u, d, mi, md, l, av, {cd_expr}");
    let mut sources = String::new();
    let mut metadata = Metadata::default();
    let mut n = 7;
    for name in METADATA {
        let Some(c) = columns.iter().find(|c| c.name == name) else {
            continue;
        };
        let bad = |wants| TargetError::BadMetadataType {
            table: table(),
            column: name,
            ty: c.display.clone(),
            wants,
        };
        // (the unnest's alias, its array type, the value inserted)
        let (alias, array, expr) = match name {
            "sqs_message_id" => {
                metadata.message_id = true;
                match c.ty {
                    ColumnType::Uuid => ("mid", "text", "mid::pg_catalog.uuid"),
                    t => match t.text_limit() {
                        Some(None) => ("mid", "text", "mid"),
                        Some(Some(n)) if n >= MESSAGE_ID_CHARS => ("mid", "text", "mid"),
                        _ => return Err(bad("uuid or a text type of at least 100 characters")),
                    },
                }
            }
            "sqs_sent_at" => {
                metadata.sent_at = true;
                match c.ty {
                    ColumnType::Timestamptz => ("ms", "int8", SENT_AT_EXPR),
                    ColumnType::Timestamp => ("ms", "int8", SENT_AT_UTC_EXPR),
                    _ => return Err(bad("timestamptz or timestamp")),
                }
            }
            _ => {
                metadata.attributes = true;
                match c.ty {
                    ColumnType::Jsonb => ("sa", "text", "sa::pg_catalog.jsonb"),
                    ColumnType::Json => ("sa", "text", "sa::pg_catalog.json"),
                    _ => return Err(bad("jsonb or json")),
                }
            }
        };
        n += 1;
        cols.push_str(&format!(", {name}"));
        exprs.push_str(&format!(", {expr}"));
        sources.push_str(&format!(
            ", pg_catalog.unnest(${n}::pg_catalog.{array}[]) AS {alias}"
        ));
    }
    // The arrays are unnested in the select list (a ProjectSet, zipped row by
    // row), not in FROM: a function scan in FROM first copies every row into
    // a tuplestore (146,011 -> 138,216 instructions per message of the store
    // path in 7b, with the vault's statements changed the same way).
    let insert_sql = format!(
        "INSERT INTO {sql_name} ({cols}) \
         SELECT {exprs} \
         FROM (SELECT pg_catalog.unnest($1::pg_catalog.text[]) AS u, pg_catalog.unnest($2::pg_catalog.text[]) AS d, \
              pg_catalog.unnest($3::pg_catalog.text[]) AS mi, pg_catalog.unnest($4::pg_catalog.text[]) AS md, \
              pg_catalog.unnest($5::pg_catalog.text[]) AS l, pg_catalog.unnest($6::pg_catalog.{array_type}[]) AS av, \
              pg_catalog.unnest($7::pg_catalog.text[]) AS cd{sources}) AS t"
    );
    Ok(TargetShape {
        sql_name: sql_name.to_string(),
        limits: Limits {
            user_id_chars: user_id,
            device_type_chars: device_type,
            locale_chars: locale,
            app_version,
            ..Limits::default()
        },
        app_version: array,
        metadata,
        insert_sql,
    })
}

/// SQS message ids are at most 100 characters.
const MESSAGE_ID_CHARS: usize = 100;
/// Milliseconds since the epoch to timestamptz, and to a UTC timestamp.
const SENT_AT_EXPR: &str =
    "pg_catalog.to_timestamp(ms::pg_catalog.float8 OPERATOR(pg_catalog./) 1000.0::pg_catalog.float8)";
const SENT_AT_UTC_EXPR: &str =
    "pg_catalog.timezone('UTC', pg_catalog.to_timestamp(ms::pg_catalog.float8 OPERATOR(pg_catalog./) 1000.0::pg_catalog.float8))";

fn int_range(min: i64, max: i64) -> AppVersionColumn {
    AppVersionColumn::Integer { min, max }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: ColumnType) -> Column {
        Column {
            name: name.into(),
            ty,
            display: format!("{ty:?}"),
        }
    }

    /// The exercise's table, with one column replaced.
    fn exercise_with(name: &str, ty: ColumnType) -> Vec<Column> {
        let v = |n| ColumnType::Varchar { max_chars: Some(n) };
        let mut cols = vec![
            col("user_id", v(128)),
            col("device_type", v(32)),
            col("masked_ip", v(256)),
            col("masked_device_id", v(256)),
            col("locale", v(32)),
            col("app_version", ColumnType::Integer),
            col("create_date", ColumnType::Date),
        ];
        for c in cols.iter_mut().filter(|c| c.name == name) {
            c.ty = ty;
        }
        cols
    }

    fn exercise() -> Vec<Column> {
        exercise_with("", ColumnType::Other)
    }

    #[test]
    fn the_exercise_table() {
        let s = shape("public.user_logins", &exercise()).unwrap();
        assert_eq!(s.sql_name, "public.user_logins");
        assert_eq!(s.limits.user_id_chars, Some(128));
        assert_eq!(s.limits.device_type_chars, Some(32));
        assert_eq!(s.limits.locale_chars, Some(32));
        assert_eq!(
            s.limits,
            Limits::default(),
            "the exercise's DDL is the default"
        );
        assert_eq!(s.app_version, AppVersionArray::Int8);
        assert!(s.insert_sql.starts_with(
            "INSERT INTO public.user_logins (user_id, device_type, masked_ip, masked_device_id, locale, app_version, create_date) SELECT u, d, mi, md, l, av, cd::pg_catalog.date FROM"
        ), "{}", s.insert_sql);
        assert!(s
            .insert_sql
            .contains("pg_catalog.unnest($6::pg_catalog.int8[])"));
        // and every $n is bound, never pasted
        for n in 1..=7 {
            assert!(s.insert_sql.contains(&format!("${n}::")), "${n}");
        }
        assert!(!s.insert_sql.contains("$8"));
    }

    #[test]
    fn metadata_columns_are_filled_when_they_exist() {
        let s = shape("t", &exercise()).unwrap();
        assert_eq!(s.metadata, Metadata::default());
        let mut cols = exercise();
        cols.push(col("sqs_attributes", ColumnType::Jsonb));
        cols.insert(0, col("sqs_message_id", ColumnType::Uuid));
        cols.push(col("sqs_sent_at", ColumnType::Timestamptz));
        let s = shape("t", &cols).unwrap();
        assert_eq!(
            s.metadata,
            Metadata {
                message_id: true,
                sent_at: true,
                attributes: true
            }
        );
        // always in METADATA's order, whatever the table's, each bound once
        assert!(s.insert_sql.contains(
            "create_date, sqs_message_id, sqs_sent_at, sqs_attributes) SELECT u, d, mi, md, l, av, cd::pg_catalog.date, mid::pg_catalog.uuid, pg_catalog.to_timestamp("
        ), "{}", s.insert_sql);
        assert!(s.insert_sql.contains("pg_catalog.unnest($7::pg_catalog.text[]) AS cd, pg_catalog.unnest($8::pg_catalog.text[]) AS mid, pg_catalog.unnest($9::pg_catalog.int8[]) AS ms, pg_catalog.unnest($10::pg_catalog.text[]) AS sa) AS t"), "{}", s.insert_sql);
        assert!(s.insert_sql.contains("sa::pg_catalog.jsonb"));
        // only the ones present, numbered on
        let mut cols = exercise();
        cols.push(col("sqs_sent_at", ColumnType::Timestamp));
        let s = shape("t", &cols).unwrap();
        assert!(s.metadata.sent_at && !s.metadata.message_id && !s.metadata.attributes);
        assert!(
            s.insert_sql
                .contains("AS cd, pg_catalog.unnest($8::pg_catalog.int8[]) AS ms) AS t"),
            "{}",
            s.insert_sql
        );
        assert!(s.insert_sql.contains("pg_catalog.timezone('UTC', "));
        assert!(!s.insert_sql.contains("$9"));
    }

    #[test]
    fn metadata_columns_of_other_types_are_refused_by_name() {
        for (name, ty) in [
            ("sqs_message_id", ColumnType::Integer),
            (
                "sqs_message_id",
                ColumnType::Varchar {
                    max_chars: Some(36),
                },
            ),
            ("sqs_sent_at", ColumnType::Date),
            ("sqs_attributes", ColumnType::Text),
        ] {
            let mut cols = exercise();
            cols.push(col(name, ty));
            let e = shape("t", &cols).unwrap_err();
            assert!(
                matches!(e, TargetError::BadMetadataType { column, .. } if column == name),
                "{e}"
            );
            assert_eq!(e.kind(), ErrorKind::DatatypeMismatch);
            assert!(e.hint().unwrap().contains("rename"));
        }
        let mut cols = exercise();
        cols.push(col(
            "sqs_message_id",
            ColumnType::Varchar {
                max_chars: Some(100),
            },
        ));
        assert!(shape("t", &cols).unwrap().metadata.message_id);
    }

    #[test]
    fn the_ddl_and_the_required_columns_agree() {
        let names: Vec<&str> = COLUMNS_DDL
            .split(',')
            .map(|c| c.split_whitespace().next().unwrap())
            .collect();
        assert_eq!(names, REQUIRED);
    }

    #[test]
    fn extra_columns_and_any_order_are_fine() {
        let mut cols = exercise();
        cols.reverse();
        cols.insert(3, col("loaded_at", ColumnType::Timestamptz));
        assert!(shape("t", &cols).is_ok());
    }

    #[test]
    fn accepted_text_columns_and_their_limits() {
        for (ty, limit) in [
            (ColumnType::Text, None),
            (ColumnType::Varchar { max_chars: None }, None),
            (ColumnType::Varchar { max_chars: Some(7) }, Some(7)),
            (ColumnType::Bpchar { max_chars: Some(3) }, Some(3)),
        ] {
            for name in ["user_id", "device_type", "locale"] {
                let s = shape("t", &exercise_with(name, ty)).unwrap();
                let got = match name {
                    "user_id" => s.limits.user_id_chars,
                    "device_type" => s.limits.device_type_chars,
                    _ => s.limits.locale_chars,
                };
                assert_eq!(got, limit, "{name} {ty:?}");
            }
        }
    }

    #[test]
    fn refused_text_columns() {
        for ty in [
            ColumnType::Smallint,
            ColumnType::Integer,
            ColumnType::Bigint,
            ColumnType::Date,
            ColumnType::Timestamp,
            ColumnType::Timestamptz,
            ColumnType::Other,
        ] {
            for name in [
                "user_id",
                "device_type",
                "masked_ip",
                "masked_device_id",
                "locale",
            ] {
                let e = shape("t", &exercise_with(name, ty)).unwrap_err();
                assert!(
                    matches!(e, TargetError::NotText { column, .. } if column == name),
                    "{name} {ty:?}: {e}"
                );
                assert_eq!(e.kind(), ErrorKind::DatatypeMismatch);
            }
        }
    }

    #[test]
    fn mask_columns_must_hold_64_characters() {
        for name in ["masked_ip", "masked_device_id"] {
            assert!(shape(
                "t",
                &exercise_with(
                    name,
                    ColumnType::Varchar {
                        max_chars: Some(64)
                    }
                )
            )
            .is_ok());
            assert!(shape("t", &exercise_with(name, ColumnType::Text)).is_ok());
            let e = shape(
                "t",
                &exercise_with(
                    name,
                    ColumnType::Varchar {
                        max_chars: Some(32),
                    },
                ),
            )
            .unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("column {name} of t holds 32 characters; masks have 64")
            );
            assert_eq!(e.kind(), ErrorKind::DatatypeMismatch);
        }
    }

    #[test]
    fn app_version_types() {
        let int = |ty| shape("t", &exercise_with("app_version", ty)).unwrap();
        assert_eq!(
            int(ColumnType::Smallint).limits.app_version,
            int_range(-32768, 32767)
        );
        assert_eq!(
            int(ColumnType::Integer).limits.app_version,
            int_range(i32::MIN as i64, i32::MAX as i64)
        );
        assert_eq!(
            int(ColumnType::Bigint).limits.app_version,
            int_range(i64::MIN, i64::MAX)
        );
        for ty in [
            ColumnType::Smallint,
            ColumnType::Integer,
            ColumnType::Bigint,
        ] {
            assert_eq!(int(ty).app_version, AppVersionArray::Int8);
        }
        for (ty, max_chars) in [
            (ColumnType::Text, None),
            (
                ColumnType::Varchar {
                    max_chars: Some(12),
                },
                Some(12),
            ),
            (ColumnType::Bpchar { max_chars: Some(5) }, Some(5)),
        ] {
            let s = int(ty);
            assert_eq!(s.limits.app_version, AppVersionColumn::Text { max_chars });
            assert_eq!(s.app_version, AppVersionArray::Text);
            assert!(s
                .insert_sql
                .contains("pg_catalog.unnest($6::pg_catalog.text[])"));
        }
        for ty in [
            ColumnType::Date,
            ColumnType::Timestamp,
            ColumnType::Timestamptz,
            ColumnType::Other,
        ] {
            let e = shape("t", &exercise_with("app_version", ty)).unwrap_err();
            assert!(matches!(e, TargetError::BadAppVersionType { .. }), "{ty:?}");
            assert!(e
                .to_string()
                .ends_with("sqs_drain needs smallint, integer, bigint or a text type"));
        }
    }

    #[test]
    fn create_date_types() {
        for ty in [
            ColumnType::Date,
            ColumnType::Timestamp,
            ColumnType::Timestamptz,
        ] {
            let s = shape("t", &exercise_with("create_date", ty)).unwrap();
            assert!(
                s.insert_sql.contains(", cd::pg_catalog.date FROM"),
                "{ty:?}"
            );
        }
        for ty in [
            ColumnType::Text,
            ColumnType::Varchar {
                max_chars: Some(10),
            },
        ] {
            let s = shape("t", &exercise_with("create_date", ty)).unwrap();
            assert!(
                s.insert_sql.contains(", cd FROM"),
                "{ty:?}: the ISO string as is"
            );
        }
        for ty in [
            ColumnType::Bpchar {
                max_chars: Some(10),
            },
            ColumnType::Smallint,
            ColumnType::Integer,
            ColumnType::Bigint,
            ColumnType::Other,
        ] {
            let e = shape("t", &exercise_with("create_date", ty)).unwrap_err();
            assert!(matches!(e, TargetError::BadCreateDateType { .. }), "{ty:?}");
            assert_eq!(e.kind(), ErrorKind::DatatypeMismatch);
        }
    }

    #[test]
    fn a_missing_column_is_named_with_a_hint() {
        for missing in REQUIRED {
            let cols: Vec<Column> = exercise()
                .into_iter()
                .filter(|c| c.name != missing)
                .collect();
            let e = shape("public.t", &cols).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("target table public.t has no column {missing}")
            );
            assert_eq!(e.kind(), ErrorKind::UndefinedColumn);
            assert_eq!(
                e.hint().as_deref(),
                Some("sqs_drain needs the columns user_id, device_type, masked_ip, masked_device_id, locale, app_version, create_date.")
            );
        }
        // only user_id: the first missing one is named
        let e = shape("t", &[col("user_id", ColumnType::Text)]).unwrap_err();
        assert_eq!(e.to_string(), "target table t has no column device_type");
    }

    #[test]
    fn the_table_name_is_used_as_given() {
        let s = shape("etl.\"Logins; DROP TABLE x\"", &exercise()).unwrap();
        assert!(s
            .insert_sql
            .starts_with("INSERT INTO etl.\"Logins; DROP TABLE x\" ("));
    }

    #[test]
    fn the_required_names_need_no_quotes() {
        for name in REQUIRED {
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{name}"
            );
        }
    }

    #[test]
    fn type_errors_come_in_column_order_before_later_missing_columns() {
        // user_id is checked before create_date is looked up (as before the split)
        let mut cols = exercise_with("user_id", ColumnType::Integer);
        cols.retain(|c| c.name != "create_date");
        assert!(matches!(
            shape("t", &cols),
            Err(TargetError::NotText {
                column: "user_id",
                ..
            })
        ));
    }
}
