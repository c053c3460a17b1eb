//! create_pipeline, create_router and drop_pipeline: the catalog of
//! pipelines (docs/pipelines.md). Argument checks here; the checks against
//! the catalog and who may are in `postgres/pipelines.rs`.

use pgrx::prelude::*;
use pgrx::JsonB;

use super::required;
use crate::postgres::pipelines;

/// Creates (or, with `replace`, replaces) a pipeline: how each message
/// becomes rows of `target`. Checked against the table now; owned by the
/// calling role, whose privileges its rows are inserted with.
#[pg_extern(volatile, parallel_unsafe)]
fn create_pipeline(
    name: Option<&str>,
    target: Option<&str>,
    columns: Option<&str>,
    rows: default!(Option<&str>, "NULL"),
    idempotency: default!(Option<&str>, "'message_id'"),
    replace: default!(Option<bool>, false),
) {
    pipelines::create_pipeline(&pipelines::NewPipeline {
        name: required(name, "name"),
        target: required(target, "target"),
        columns: required(columns, "columns"),
        rows,
        idempotency: required(idempotency, "idempotency"),
        replace: required(replace, "replace"),
    });
}

/// Creates (or replaces) a router: one queue, many event types. Each
/// message goes to the pipeline its `route_by` value names in `routes`
/// (`{"value": "pipeline"}`), else to `otherwise`, else to the dead letters
/// (`no_route`).
#[pg_extern(volatile, parallel_unsafe)]
fn create_router(
    name: Option<&str>,
    route_by: Option<&str>,
    routes: Option<JsonB>,
    otherwise: default!(Option<&str>, "NULL"),
    replace: default!(Option<bool>, false),
) {
    pipelines::create_router(&pipelines::NewRouter {
        name: required(name, "name"),
        route_by: required(route_by, "route_by"),
        routes: &required(routes, "routes").0,
        otherwise,
        replace: required(replace, "replace"),
    });
}

/// Drops a pipeline or router (its owner, or a superuser). Returns whether
/// one was dropped.
#[pg_extern(volatile, parallel_unsafe)]
fn drop_pipeline(name: Option<&str>, if_exists: default!(Option<bool>, false)) -> bool {
    pipelines::drop_pipeline(required(name, "name"), required(if_exists, "if_exists"))
}
