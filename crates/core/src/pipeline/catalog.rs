//! Pipelines and routers as rows of `fetch_etl.pipelines`: the checks made
//! before one is stored (`create_pipeline`, `create_router`), and a row read
//! back into what the engine runs. Pure: the extension reads and writes the
//! rows, resolves the types and tables, and decides who may.

use serde_json::Value;

use super::grammar::{parse_columns, parse_source, print_columns};
use super::login::LOGIN;
use super::path::JsonPath;
use super::plan::{Definition, Idempotency, PlanError};
use super::router::Router;
use super::spec::{ColumnSpec, MessageField, Source};
use crate::contract::{PipelineKind, RejectReason};
use crate::error::{Classified, ErrorKind};
use crate::reject::truncate;

/// The longest name (PostgreSQL's identifier length).
pub const MAX_NAME: usize = 63;
/// The most routes a router has.
pub const MAX_ROUTES: usize = 1000;
/// The longest value a route matches.
pub const MAX_ROUTE_VALUE: usize = 1024;

/// Why a pipeline or router cannot be stored (or run).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error("pipeline name {0:?} is not valid: 1 to 63 lower-case letters, digits and underscores, starting with a letter")]
    BadName(String),
    #[error("{0} is the built-in login pipeline; it cannot be replaced or dropped")]
    Builtin(String),
    #[error("a pipeline or router named {0} exists already")]
    Exists(String),
    #[error("no pipeline or router named {0}")]
    Missing(String),
    #[error("{0} is a {1}, not a {2}")]
    WrongKind(String, PipelineKind, PipelineKind),
    #[error("routes must be a JSON object of value: pipeline name, like '{{\"OrderPlaced\": \"orders\"}}'")]
    RoutesNotObject,
    #[error("a router has at least one route")]
    NoRoutes,
    #[error("a router has at most {MAX_ROUTES} routes")]
    TooManyRoutes,
    #[error("route {0:?}: the value is longer than {MAX_ROUTE_VALUE} bytes")]
    LongRouteValue(String),
    #[error("route {value:?} must be a JSON string naming a pipeline, not a JSON {got}")]
    RouteNotName { value: String, got: String },
    #[error("router {router} routes to {pipeline}, which is a router: routes name pipelines")]
    RouteToRouter { router: String, pipeline: String },
    #[error("a router cannot route to the built-in {0} pipeline: it loads the table a drain names, as whoever drains")]
    RouteToBuiltin(String),
    #[error("{0} changed while it was being replaced; try again")]
    Changed(String),
    #[error("a router cannot route by {0}: {1}")]
    BadDiscriminator(String, &'static str),
    #[error("pipeline {pipeline} is used by router {router}")]
    InUse { pipeline: String, router: String },
    #[error("{0}")]
    Plan(#[from] PlanError),
}

impl Classified for CatalogError {
    fn kind(&self) -> ErrorKind {
        match self {
            CatalogError::BadName(_) => ErrorKind::InvalidName,
            CatalogError::Builtin(_) => ErrorKind::InsufficientPrivilege,
            CatalogError::Exists(_) => ErrorKind::DuplicateObject,
            CatalogError::Missing(_) => ErrorKind::UndefinedObject,
            CatalogError::WrongKind(..) | CatalogError::RouteToRouter { .. } => {
                ErrorKind::WrongObjectType
            }
            CatalogError::RoutesNotObject
            | CatalogError::NoRoutes
            | CatalogError::TooManyRoutes
            | CatalogError::LongRouteValue(_)
            | CatalogError::RouteNotName { .. }
            | CatalogError::BadDiscriminator(..)
            | CatalogError::RouteToBuiltin(_) => ErrorKind::InvalidParameter,
            CatalogError::Changed(_) => ErrorKind::SerializationFailure,
            CatalogError::InUse { .. } => ErrorKind::DependentObjectsStillExist,
            CatalogError::Plan(e) => e.kind(),
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            CatalogError::Exists(_) => {
                Some("Pass replace => true to replace it (its owner, or a superuser).".into())
            }
            CatalogError::InUse { router, .. } => {
                Some(format!("Drop or replace router {router} first."))
            }
            CatalogError::Plan(e) => e.hint(),
            _ => None,
        }
    }
}

/// Checks a pipeline's or router's name (it is part of ledger keys and dead
/// letters, so it is kept plain).
pub fn check_name(name: &str) -> Result<(), CatalogError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.as_bytes()[0].is_ascii_lowercase()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !ok {
        return Err(CatalogError::BadName(truncate(name, 80)));
    }
    Ok(())
}

/// Checks a name a role may create, replace or drop.
pub fn check_user_name(name: &str) -> Result<(), CatalogError> {
    check_name(name)?;
    if name == LOGIN {
        return Err(CatalogError::Builtin(name.to_string()));
    }
    Ok(())
}

/// A pipeline's arguments, checked and in the catalog's form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineArgs {
    pub columns: Vec<ColumnSpec>,
    pub rows: Option<JsonPath>,
    pub idempotency: Idempotency,
}

impl PipelineArgs {
    /// Parses `create_pipeline`'s column list, rows path and idempotency.
    pub fn parse(
        columns: &str,
        rows: Option<&str>,
        idempotency: &str,
    ) -> Result<PipelineArgs, CatalogError> {
        let columns = parse_columns(columns).map_err(|e| PlanError::Syntax(e.to_string()))?;
        let rows = match rows.map(str::trim) {
            None | Some("") => None,
            Some(r) => {
                Some(JsonPath::parse(r).map_err(|e| PlanError::Syntax(format!("rows: {e}")))?)
            }
        };
        let idempotency = Idempotency::parse(idempotency)?;
        Ok(PipelineArgs {
            columns,
            rows,
            idempotency,
        })
    }

    /// The column list as stored (and shown by `fetch_etl.pipelines`).
    pub fn columns_text(&self) -> String {
        print_columns(&self.columns)
    }

    pub fn into_definition(self, name: &str, id: i64, unrecognized: RejectReason) -> Definition {
        Definition {
            name: name.to_string(),
            id,
            columns: self.columns,
            rows: self.rows,
            idempotency: self.idempotency,
            unrecognized,
        }
    }
}

/// A router's discriminator, checked: one value per message.
pub fn parse_discriminator(text: &str) -> Result<Source, CatalogError> {
    let source = parse_source(text).map_err(|e| PlanError::Syntax(e.to_string()))?;
    let why = match &source {
        Source::Event => Some("the whole event is not a value to route by"),
        Source::Constant(_) => {
            Some("a constant sends every message one way; drain the pipeline itself")
        }
        Source::Message(MessageField::Attributes | MessageField::Body) => {
            Some("that message field is not a value to route by")
        }
        Source::Path(p) | Source::EventPath(p) if p.is_multi() => {
            Some("a path with [*] selects several values; a router needs one")
        }
        _ => None,
    };
    match why {
        Some(why) => Err(CatalogError::BadDiscriminator(text.trim().to_string(), why)),
        None => Ok(source),
    }
}

/// `create_router`'s routes (`{"value": "pipeline", ...}`), checked, in
/// the order given.
pub fn parse_routes(routes: &Value) -> Result<Vec<(String, String)>, CatalogError> {
    let Value::Object(map) = routes else {
        return Err(CatalogError::RoutesNotObject);
    };
    if map.is_empty() {
        return Err(CatalogError::NoRoutes);
    }
    if map.len() > MAX_ROUTES {
        return Err(CatalogError::TooManyRoutes);
    }
    let mut out = Vec::with_capacity(map.len());
    for (value, target) in map {
        if value.len() > MAX_ROUTE_VALUE {
            return Err(CatalogError::LongRouteValue(truncate(value, 40)));
        }
        let Value::String(name) = target else {
            return Err(CatalogError::RouteNotName {
                value: truncate(value, 40),
                got: crate::reject::json_kind(target).to_string(),
            });
        };
        check_name(name)?;
        if name == LOGIN {
            return Err(CatalogError::RouteToBuiltin(name.clone()));
        }
        out.push((value.clone(), name.clone()));
    }
    Ok(out)
}

/// The pipelines a router uses: its routes' and its `otherwise`, each once,
/// in the order they first appear.
pub fn router_pipelines(routes: &[(String, String)], otherwise: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for name in routes.iter().map(|(_, p)| p.as_str()).chain(otherwise) {
        if !out.iter().any(|o| o == name) {
            out.push(name.to_string());
        }
    }
    out
}

/// A router ready to run: `pipelines` are the names of the plans the drain
/// loaded, in [`router_pipelines`]' order.
pub fn router(
    name: &str,
    discriminator: Source,
    routes: &[(String, String)],
    otherwise: Option<&str>,
    pipelines: &[String],
) -> Router {
    let index = |p: &str| {
        pipelines
            .iter()
            .position(|n| n == p)
            .expect("every pipeline of the router is loaded")
    };
    Router {
        name: name.to_string(),
        discriminator,
        routes: routes.iter().map(|(v, p)| (v.clone(), index(p))).collect(),
        otherwise: otherwise.map(index),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_are_plain_identifiers() {
        for ok in ["s3_objects", "a", "orders2", &"x".repeat(63)] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "S3",
            "_x",
            "2x",
            "a-b",
            "a b",
            "a.b",
            "é",
            &"x".repeat(64),
            "a;drop",
        ] {
            let e = check_name(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidName, "{bad}");
        }
        assert_eq!(
            check_user_name("login").unwrap_err(),
            CatalogError::Builtin("login".into())
        );
    }

    #[test]
    fn pipeline_arguments_are_parsed_and_stored_in_canonical_form() {
        let a = PipelineArgs::parse(
            "bucket text PATH '$.s3.bucket.name'  REQUIRED,\n  key PATH '$.s3.object.key' -- the key",
            Some(" $.Records[*] "),
            "$.id",
        )
        .unwrap();
        assert_eq!(
            a.columns_text(),
            "bucket text PATH '$.s3.bucket.name' REQUIRED,\nkey PATH '$.s3.object.key'"
        );
        assert_eq!(a.rows.as_ref().map(|r| r.as_str()), Some("$.Records[*]"));
        assert!(matches!(a.idempotency, Idempotency::Path(_)));
        for (cols, rows, idem, what) in [
            (
                "a PATH '$.a' NOPE",
                None,
                "message_id",
                "NOPE is not an option",
            ),
            ("a PATH '$.a'", Some("Records"), "message_id", "rows: "),
            (
                "a PATH '$.a'",
                None,
                "uuid",
                "idempotency is message_id, body, a JSON path",
            ),
        ] {
            let e = PipelineArgs::parse(cols, rows, idem).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::SyntaxError);
            assert!(e.to_string().contains(what), "{e}");
        }
    }

    #[test]
    fn routes_are_an_object_of_pipeline_names() {
        let r = parse_routes(
            &json!({"OrderPlaced": "orders", "Shipped": "shipments", "Paid": "orders"}),
        )
        .unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(
            router_pipelines(&r, Some("other")),
            vec!["orders".to_string(), "shipments".into(), "other".into()]
        );
        for (routes, what) in [
            (json!(["orders"]), "JSON object"),
            (json!({}), "at least one route"),
            (json!({"a": 1}), "naming a pipeline, not a JSON number"),
            (json!({"a": "Orders"}), "is not valid"),
            (
                json!({"x".repeat(1025): "orders"}),
                "longer than 1024 bytes",
            ),
            (
                json!({"a": "login"}),
                "cannot route to the built-in login pipeline",
            ),
        ] {
            let e = parse_routes(&routes).unwrap_err();
            assert!(e.to_string().contains(what), "{e}");
            assert!(matches!(
                e.kind(),
                ErrorKind::InvalidParameter | ErrorKind::InvalidName
            ));
        }
        let many: serde_json::Map<String, Value> = (0..=MAX_ROUTES)
            .map(|i| (i.to_string(), json!("p")))
            .collect();
        assert_eq!(
            parse_routes(&Value::Object(many)).unwrap_err(),
            CatalogError::TooManyRoutes
        );
    }

    #[test]
    fn a_discriminator_is_one_value_of_each_message() {
        assert_eq!(
            parse_discriminator("ENVELOPE detail_type").unwrap(),
            Source::Envelope(crate::pipeline::spec::EnvelopeField::DetailType)
        );
        assert!(parse_discriminator("PATH '$.type'").is_ok());
        assert!(parse_discriminator("ATTRIBUTE 'event_type'").is_ok());
        for bad in ["EVENT", "CONSTANT 'x'", "MESSAGE body", "PATH '$.a[*]'"] {
            let e = parse_discriminator(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidParameter, "{bad}");
        }
        assert_eq!(
            parse_discriminator("PATH").unwrap_err().kind(),
            ErrorKind::SyntaxError
        );
    }

    #[test]
    fn a_router_resolves_its_routes_to_loaded_plans() {
        let routes = vec![
            ("a".to_string(), "p1".to_string()),
            ("b".into(), "p2".into()),
        ];
        let loaded = router_pipelines(&routes, Some("p1"));
        let r = router(
            "r",
            Source::Attribute("t".into()),
            &routes,
            Some("p1"),
            &loaded,
        );
        assert_eq!(r.routes, vec![("a".to_string(), 0), ("b".into(), 1)]);
        assert_eq!(r.otherwise, Some(0));
    }
}
