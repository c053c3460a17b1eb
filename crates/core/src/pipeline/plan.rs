//! A pipeline held against its target table's columns: which columns are
//! filled, how each value is checked and converted, and the INSERT. Done
//! when a pipeline is created (to refuse a mapping that cannot work) and
//! again at the start of every drain (the table may have changed since).
//! One column list drives the INSERT's text, its argument types and the row
//! building: nothing else spells the positions out.

use std::fmt;

use super::path::JsonPath;
use super::spec::{ColumnSpec, EnvelopeField, MessageField, Source, Transform};
use crate::contract::RejectReason;
use crate::error::{Classified, ErrorKind};
use crate::mask::MASK_LEN;

/// What a column can hold, as far as the pipeline's own checks go (the
/// base type, for a domain). The rest is PostgreSQL's input functions'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeKind {
    /// text, varchar(n), char(n): `max_chars` None when unlimited.
    Text {
        max_chars: Option<usize>,
    },
    /// smallint, integer, bigint.
    Int {
        min: i64,
        max: i64,
    },
    Json,
    Jsonb,
    Date,
    Timestamp,
    Timestamptz,
    Uuid,
    Bool,
    Numeric,
    Float,
    /// Any array type (JSON arrays are written as array literals).
    Array,
    Other,
}

impl TypeKind {
    fn is_text(self) -> bool {
        matches!(self, TypeKind::Text { .. })
    }

    fn is_time(self) -> bool {
        matches!(
            self,
            TypeKind::Date | TypeKind::Timestamp | TypeKind::Timestamptz
        )
    }
}

/// A column of the target table, from the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetColumn {
    pub name: String,
    pub kind: TypeKind,
    /// The type as `format_type` spells it with an empty search_path:
    /// schema-qualified unless in pg_catalog, with its typmod
    /// (`numeric(10,2)`, `public.email`). Named in messages, and the cast
    /// that tells which value of a refused row its column's type refuses.
    pub display: String,
    /// The type, schema-qualified and quoted, that a text value is cast to
    /// (the domain itself for a domain; its typmod is left to the INSERT's
    /// assignment, which refuses rather than truncates).
    pub cast_to: String,
    /// The type's OID (a declared type is compared with it).
    pub type_oid: u32,
    pub not_null: bool,
    pub has_default: bool,
    /// False for generated columns.
    pub insertable: bool,
}

/// The target table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Quoted, schema-qualified name, as used in SQL text.
    pub sql_name: String,
    pub columns: Vec<TargetColumn>,
}

/// What makes a message the same event as one loaded before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Idempotency {
    /// The SQS message id (a redriven copy, or a producer's retry, is a new one).
    MessageId,
    /// A hash of the body: the same bytes are the same event.
    Body,
    /// The producer's event id, at this path in the event.
    Path(JsonPath),
    /// A field of the envelope the event came in: an EventBridge event's
    /// `id` (`event_id`), an SNS notification's `MessageId`
    /// (`sns_message_id`).
    Envelope(EnvelopeField),
}

impl Idempotency {
    pub fn parse(text: &str) -> Result<Idempotency, PlanError> {
        match text.trim() {
            "message_id" => Ok(Idempotency::MessageId),
            "body" => Ok(Idempotency::Body),
            t if t.starts_with('$') => JsonPath::parse(t)
                .map(Idempotency::Path)
                .map_err(|e| PlanError::Syntax(e.to_string())),
            t => match super::grammar::parse_source(t) {
                Ok(Source::Envelope(f)) => Ok(Idempotency::Envelope(f)),
                _ => Err(PlanError::Syntax(format!(
                    "idempotency is message_id, body, a JSON path ($.id) or an ENVELOPE field (ENVELOPE event_id), not {:?}",
                    crate::reject::truncate(t, 40)
                ))),
            },
        }
    }
}

impl fmt::Display for Idempotency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Idempotency::MessageId => f.write_str("message_id"),
            Idempotency::Body => f.write_str("body"),
            Idempotency::Path(p) => write!(f, "{p}"),
            Idempotency::Envelope(e) => write!(f, "ENVELOPE {}", e.name()),
        }
    }
}

/// A pipeline as defined (fetch_etl.create_pipeline's arguments, parsed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    pub name: String,
    /// Its catalog id (`pipeline_definitions.id`), never reused: ledger keys
    /// and dead letters name it, so a pipeline dropped and made again under
    /// the same name inherits neither.
    pub id: i64,
    pub columns: Vec<ColumnSpec>,
    /// One row per element this path selects (None: one row per event).
    pub rows: Option<JsonPath>,
    pub idempotency: Idempotency,
    /// The reason an event with none of the pipeline's fields gets
    /// (`unrecognized_event`; the built-in login pipeline's is 0.4.0's
    /// `not_login_event`).
    pub unrecognized: RejectReason,
}

/// Which array a column's values travel in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArrayKind {
    Text,
    Int8,
}

/// A column the pipeline fills.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub spec: ColumnSpec,
    pub target: TargetColumn,
    pub array: ArrayKind,
    /// How reject reasons name the value (its path, or the column).
    pub field: String,
}

/// A pipeline ready to run against its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub pipeline: String,
    /// The definition's catalog id.
    pub pipeline_id: i64,
    pub target: String,
    /// In INSERT order: parameter n is `columns[n-1]`'s array.
    pub columns: Vec<Planned>,
    pub insert_sql: String,
    pub rows: Option<JsonPath>,
    pub idempotency: Idempotency,
    pub unrecognized: RejectReason,
    /// The first keys of the columns' paths into the row: an event (row)
    /// with none of them is not this pipeline's.
    pub fields: Vec<String>,
    /// Whether a column reads message attributes (the drain asks SQS for them).
    pub wants_message_attributes: bool,
}

/// Why a pipeline cannot load into its target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("{0}")]
    Syntax(String),
    #[error("target table {table} has no column {column}")]
    NoColumn { table: String, column: String },
    #[error("column {column} of {table} is generated: a pipeline cannot fill it")]
    Generated { table: String, column: String },
    #[error("column {column} of {table} is NOT NULL without a default, and the pipeline does not fill it")]
    Unfilled { table: String, column: String },
    #[error("type {ty} of column {column} does not exist")]
    NoType { column: String, ty: String },
    #[error("column {column} of {table} is {actual}; the pipeline declares it {declared}")]
    DeclaredType {
        table: String,
        column: String,
        actual: String,
        declared: String,
    },
    #[error("column {column} of {table} is {ty}; {why}")]
    Cannot {
        table: String,
        column: String,
        ty: String,
        why: String,
    },
}

impl Classified for PlanError {
    fn kind(&self) -> ErrorKind {
        match self {
            PlanError::Syntax(_) => ErrorKind::SyntaxError,
            PlanError::NoColumn { .. } => ErrorKind::UndefinedColumn,
            PlanError::Generated { .. } => ErrorKind::GeneratedAlways,
            PlanError::Unfilled { .. } => ErrorKind::NotNullViolation,
            PlanError::NoType { .. } => ErrorKind::UndefinedObject,
            PlanError::DeclaredType { .. } | PlanError::Cannot { .. } => {
                ErrorKind::DatatypeMismatch
            }
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            PlanError::Unfilled { column, .. } => Some(format!(
                "Add a column {column} to the pipeline (a CONSTANT, if nothing in the event fits), or give it a default."
            )),
            PlanError::NoColumn { .. } => Some(
                "Name the table's columns in the pipeline, or mark optional ones IF EXISTS.".into(),
            ),
            _ => None,
        }
    }
}

/// SQS message ids are at most 100 characters.
const MESSAGE_ID_CHARS: usize = 100;

/// Quotes an identifier for SQL text, always (no keyword list to get wrong).
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Whether a source's values can go into a column of `kind`: None if so,
/// else why not.
fn source_fits(spec: &ColumnSpec, kind: TypeKind) -> Option<String> {
    let t = kind.is_text();
    let ok = match (&spec.transform, &spec.source) {
        (Some(Transform::Version), _) => matches!(kind, TypeKind::Int { .. }) || t,
        (Some(Transform::EpochSeconds | Transform::EpochMillis), _) => kind.is_time() || t,
        (Some(_), _) => true,
        (None, Source::Message(f)) => match f {
            MessageField::SentAt | MessageField::SentDate => kind.is_time() || t,
            MessageField::ReceiveCount => {
                matches!(
                    kind,
                    TypeKind::Int { .. } | TypeKind::Numeric | TypeKind::Float
                ) || t
            }
            MessageField::MessageId => {
                matches!(kind, TypeKind::Uuid)
                    || matches!(kind, TypeKind::Text { max_chars: None })
                    || matches!(kind, TypeKind::Text { max_chars: Some(n) } if n >= MESSAGE_ID_CHARS)
            }
            MessageField::Attributes => matches!(kind, TypeKind::Json | TypeKind::Jsonb) || t,
            _ => true,
        },
        (None, Source::Event) => matches!(kind, TypeKind::Json | TypeKind::Jsonb) || t,
        (None, _) => true,
    };
    if ok {
        return None;
    }
    Some(match (&spec.transform, &spec.source) {
        (Some(Transform::Version), _) => {
            "the version transform needs smallint, integer, bigint or a text type".into()
        }
        (Some(_), _) => {
            "that transform makes timestamps: it needs a date, timestamp or text type".into()
        }
        (None, Source::Message(MessageField::MessageId)) => {
            "a message id needs uuid or a text type of at least 100 characters".into()
        }
        (None, Source::Message(MessageField::ReceiveCount)) => {
            "a receive count needs a number or text type".into()
        }
        (None, Source::Message(MessageField::Attributes)) | (None, Source::Event) => {
            "it needs jsonb, json or a text type".into()
        }
        (None, s) => format!("{s} is a time: it needs timestamptz, timestamp, date or a text type"),
    })
}

/// Holds `def` against `target`. `resolve_type` gives the OID of a type
/// name written in the column list (None: no such type).
pub fn plan(
    def: &Definition,
    target: &Target,
    resolve_type: &dyn Fn(&str) -> Option<u32>,
) -> Result<Plan, PlanError> {
    let table = || target.sql_name.clone();
    let mut columns = Vec::new();
    let mut wants_message_attributes = false;
    for spec in &def.columns {
        let Some(col) = target.columns.iter().find(|c| c.name == spec.column) else {
            if spec.if_exists {
                continue;
            }
            return Err(PlanError::NoColumn {
                table: table(),
                column: spec.column.clone(),
            });
        };
        if !col.insertable {
            return Err(PlanError::Generated {
                table: table(),
                column: col.name.clone(),
            });
        }
        if let Some(declared) = &spec.declared_type {
            let oid = resolve_type(declared).ok_or_else(|| PlanError::NoType {
                column: spec.column.clone(),
                ty: declared.clone(),
            })?;
            // `text` also stands for varchar(n) and char(n)
            let same = oid == col.type_oid || (oid == TEXT_OID && col.kind.is_text());
            if !same {
                return Err(PlanError::DeclaredType {
                    table: table(),
                    column: col.name.clone(),
                    actual: col.display.clone(),
                    declared: declared.clone(),
                });
            }
        }
        let cannot = |why: String| PlanError::Cannot {
            table: table(),
            column: col.name.clone(),
            ty: col.display.clone(),
            why,
        };
        if spec.mask.is_some() {
            match col.kind {
                TypeKind::Text { max_chars: None } => {}
                TypeKind::Text { max_chars: Some(n) } if n >= MASK_LEN => {}
                TypeKind::Text { max_chars: Some(n) } => {
                    return Err(cannot(format!(
                        "it holds {n} characters; masks have {MASK_LEN}"
                    )))
                }
                _ => {
                    return Err(cannot(
                        "a MASKED column needs a text type (masks are 64 hex characters)".into(),
                    ))
                }
            }
        } else if let Some(why) = source_fits(spec, col.kind) {
            return Err(cannot(why));
        }
        if spec.source.needs_message_attributes() {
            wants_message_attributes = true;
        }
        let array = match (&spec.transform, &spec.source, col.kind) {
            (Some(Transform::Version), _, TypeKind::Int { .. }) => ArrayKind::Int8,
            (None, Source::Message(MessageField::ReceiveCount), TypeKind::Int { .. }) => {
                ArrayKind::Int8
            }
            _ => ArrayKind::Text,
        };
        columns.push(Planned {
            field: spec.field_name(),
            spec: spec.clone(),
            target: col.clone(),
            array,
        });
    }
    for c in &target.columns {
        if c.not_null
            && !c.has_default
            && c.insertable
            && !columns.iter().any(|p| p.target.name == c.name)
        {
            return Err(PlanError::Unfilled {
                table: table(),
                column: c.name.clone(),
            });
        }
    }
    if columns.is_empty() {
        return Err(PlanError::Syntax(format!(
            "none of the pipeline's columns is in {}",
            table()
        )));
    }
    let mut fields: Vec<String> = Vec::new();
    for c in &def.columns {
        if let Source::Path(p) = &c.source {
            if let Some(k) = p.first_key() {
                if !fields.iter().any(|f| f == k) {
                    fields.push(k.to_string());
                }
            }
        }
    }
    let insert_sql = insert_sql(&target.sql_name, &columns);
    Ok(Plan {
        pipeline: def.name.clone(),
        pipeline_id: def.id,
        target: target.sql_name.clone(),
        columns,
        insert_sql,
        rows: def.rows.clone(),
        idempotency: def.idempotency.clone(),
        unrecognized: def.unrecognized,
        fields,
        wants_message_attributes,
    })
}

/// PostgreSQL's `text` type.
pub const TEXT_OID: u32 = 25;

/// `INSERT INTO target (c1, ...) SELECT v1, ... FROM (SELECT unnest($1) AS
/// a1, ...) AS t`: the arrays are unnested in the select list (a
/// ProjectSet, zipped row by row), not in FROM, where a function scan first
/// copies every row into a tuplestore (0.4.0 measured 146,011 -> 138,216
/// instructions per message of the store path). A text value is cast to
/// the column's type (its input function, its domain's checks); an int8
/// array is assigned (a range check, no parsing).
fn insert_sql(table: &str, columns: &[Planned]) -> String {
    let names: Vec<String> = columns
        .iter()
        .map(|c| quote_ident(&c.target.name))
        .collect();
    let values: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| match (c.array, c.target.kind) {
            (ArrayKind::Int8, _) | (ArrayKind::Text, TypeKind::Text { .. }) => {
                format!("t.a{}", i + 1)
            }
            (ArrayKind::Text, _) => format!("t.a{}::{}", i + 1, c.target.cast_to),
        })
        .collect();
    let unnests: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let ty = match c.array {
                ArrayKind::Text => "text",
                ArrayKind::Int8 => "int8",
            };
            format!(
                "pg_catalog.unnest(${}::pg_catalog.{ty}[]) AS a{}",
                i + 1,
                i + 1
            )
        })
        .collect();
    format!(
        "INSERT INTO {table} ({}) SELECT {} FROM (SELECT {}) AS t",
        names.join(", "),
        values.join(", "),
        unnests.join(", ")
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::pipeline::grammar::parse_columns;

    pub(crate) fn col(
        name: &str,
        kind: TypeKind,
        display: &str,
        cast: &str,
        oid: u32,
    ) -> TargetColumn {
        TargetColumn {
            name: name.into(),
            kind,
            display: display.into(),
            cast_to: cast.into(),
            type_oid: oid,
            not_null: false,
            has_default: false,
            insertable: true,
        }
    }

    pub(crate) fn text(name: &str, max: Option<usize>) -> TargetColumn {
        let display = max.map_or("text".to_string(), |n| format!("character varying({n})"));
        col(
            name,
            TypeKind::Text { max_chars: max },
            &display,
            "pg_catalog.text",
            if max.is_some() { 1043 } else { 25 },
        )
    }

    pub(crate) fn types(name: &str) -> Option<u32> {
        match name {
            "text" => Some(25),
            "bigint" => Some(20),
            "integer" => Some(23),
            "uuid" => Some(2950),
            _ => None,
        }
    }

    fn def(columns: &str) -> Definition {
        Definition {
            name: "p".into(),
            id: 7,
            columns: parse_columns(columns).unwrap(),
            rows: None,
            idempotency: Idempotency::MessageId,
            unrecognized: RejectReason::UnrecognizedEvent,
        }
    }

    fn target(columns: Vec<TargetColumn>) -> Target {
        Target {
            sql_name: "public.t".into(),
            columns,
        }
    }

    fn int(name: &str) -> TargetColumn {
        col(
            name,
            TypeKind::Int {
                min: i32::MIN as i64,
                max: i32::MAX as i64,
            },
            "integer",
            "pg_catalog.int4",
            23,
        )
    }

    /// SQS sends a message's deduplication id and sender id only when the
    /// drain asks for every kept attribute: a column of either asks.
    #[test]
    fn a_column_of_a_message_field_sqs_sends_on_request_asks_for_it() {
        let t = target(vec![text("a", None)]);
        for (source, wants) in [
            ("MESSAGE deduplication_id", true),
            ("MESSAGE sender_id", true),
            ("MESSAGE attributes", true),
            ("ATTRIBUTE 'x'", true),
            ("MESSAGE group_id", false),
            ("MESSAGE message_id", false),
            ("PATH '$.a'", false),
        ] {
            let p = plan(&def(&format!("a {source}")), &t, &types).unwrap();
            assert_eq!(p.wants_message_attributes, wants, "{source}");
        }
    }

    #[test]
    fn the_insert_names_quotes_and_casts_from_one_column_list() {
        let t = target(vec![
            text("a", None),
            int("n"),
            col("u", TypeKind::Uuid, "uuid", "pg_catalog.uuid", 2950),
            text("Mixed Case", Some(64)),
            int("v"),
        ]);
        let p = plan(
            &def("a PATH '$.a', n PATH '$.n', u MESSAGE message_id, \"Mixed Case\" PATH '$.m' MASKED, v PATH '$.v' USING version"),
            &t,
            &types,
        )
        .unwrap();
        assert_eq!(
            p.insert_sql,
            "INSERT INTO public.t (\"a\", \"n\", \"u\", \"Mixed Case\", \"v\") SELECT t.a1, t.a2::pg_catalog.int4, \
             t.a3::pg_catalog.uuid, t.a4, t.a5 FROM (SELECT pg_catalog.unnest($1::pg_catalog.text[]) AS a1, \
             pg_catalog.unnest($2::pg_catalog.text[]) AS a2, pg_catalog.unnest($3::pg_catalog.text[]) AS a3, \
             pg_catalog.unnest($4::pg_catalog.text[]) AS a4, pg_catalog.unnest($5::pg_catalog.int8[]) AS a5) AS t"
        );
        assert_eq!(p.fields, vec!["a", "n", "m", "v"]);
        let arrays: Vec<ArrayKind> = p.columns.iter().map(|c| c.array).collect();
        assert_eq!(arrays[4], ArrayKind::Int8);
    }

    #[test]
    fn a_mapping_that_cannot_work_is_refused_naming_the_column() {
        let mut nn = text("required_col", None);
        nn.not_null = true;
        let t = target(vec![text("a", Some(10)), int("n"), nn.clone()]);
        let err = |cols: &str, t: &Target| plan(&def(cols), t, &types).unwrap_err();
        let e = err("zz PATH '$.z'", &t);
        assert_eq!(
            (e.kind(), e.to_string().contains("no column zz")),
            (ErrorKind::UndefinedColumn, true)
        );
        let e = err("a PATH '$.a'", &t);
        assert_eq!(e.kind(), ErrorKind::NotNullViolation);
        assert!(e.to_string().contains("required_col"), "{e}");
        let ok = target(vec![text("a", Some(10)), int("n")]);
        for (cols, kind, what) in [
            (
                "a PATH '$.a' MASKED",
                ErrorKind::DatatypeMismatch,
                "masks have 64",
            ),
            (
                "n PATH '$.a' MASKED",
                ErrorKind::DatatypeMismatch,
                "needs a text type",
            ),
            (
                "n MESSAGE sent_at",
                ErrorKind::DatatypeMismatch,
                "is a time",
            ),
            (
                "n EVENT",
                ErrorKind::DatatypeMismatch,
                "jsonb, json or a text type",
            ),
            (
                "a MESSAGE message_id",
                ErrorKind::DatatypeMismatch,
                "at least 100 characters",
            ),
            (
                "n bigint PATH '$.n'",
                ErrorKind::DatatypeMismatch,
                "declares it bigint",
            ),
            (
                "n nosuchtype PATH '$.n'",
                ErrorKind::UndefinedObject,
                "does not exist",
            ),
            (
                "n PATH '$.n' USING epoch_seconds",
                ErrorKind::DatatypeMismatch,
                "timestamps",
            ),
        ] {
            let e = err(cols, &ok);
            assert_eq!(e.kind(), kind, "{cols}: {e}");
            assert!(e.to_string().contains(what), "{cols}: {e}");
            assert!(e.to_string().contains("column"), "{cols}: {e}");
        }
        // a declared text stands for varchar too; IF EXISTS skips a missing column
        assert!(plan(
            &def("a text PATH '$.a', n integer PATH '$.n', gone PATH '$.g' IF EXISTS"),
            &ok,
            &types
        )
        .is_ok());
        let mut generated = int("g");
        generated.insertable = false;
        let e = plan(&def("g PATH '$.g'"), &target(vec![generated]), &types).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::GeneratedAlways);
    }

    #[test]
    fn idempotency_is_one_of_three() {
        assert_eq!(
            Idempotency::parse("message_id").unwrap(),
            Idempotency::MessageId
        );
        assert_eq!(Idempotency::parse(" body ").unwrap(), Idempotency::Body);
        let e = Idempotency::parse("ENVELOPE event_id").unwrap();
        assert_eq!(e, Idempotency::Envelope(EnvelopeField::EventId));
        assert_eq!(Idempotency::parse(&e.to_string()).unwrap(), e);
        assert!(Idempotency::parse("MESSAGE group_id").is_err());
        assert!(matches!(
            Idempotency::parse("$.detail.id").unwrap(),
            Idempotency::Path(_)
        ));
        assert_eq!(
            Idempotency::parse("uuid").unwrap_err().kind(),
            ErrorKind::SyntaxError
        );
        assert_eq!(
            Idempotency::parse("$.a-b").unwrap_err().kind(),
            ErrorKind::SyntaxError
        );
    }
}
