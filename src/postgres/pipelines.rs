//! Pipelines and routers in the catalog (`fetch_etl.pipeline_definitions`,
//! listed by the view `fetch_etl.pipelines`): created, replaced and dropped
//! by their owners, and loaded for a drain or a replay, held against their
//! target tables' catalog entries at its start (a table changed since a
//! pipeline was made gives a clear error here, never a wrong insert).
//!
//! Who may (docs/pipelines.md, "Who runs what"):
//! - a pipeline belongs to the role that created (or last replaced) it, and
//!   its rows are inserted with that role's privileges: its table's
//!   triggers, defaults and domain checks run as that role, never as the
//!   role that drains (a superuser's pg_cron job);
//! - it is drained, replaced or dropped by that role or a role that has its
//!   privileges (a member), or by a superuser;
//! - the built-in login pipeline loads the table the drain names, as the
//!   caller, like an INSERT the caller types (0.4.0's behaviour).

use pgrx::pg_sys;
use pgrx::prelude::*;
use serde_json::Value;

use fetch_etl_core::batch::Pipelines;
use fetch_etl_core::contract::{PipelineKind, RejectReason};
use fetch_etl_core::error::{Classified, ErrorKind};
use fetch_etl_core::pipeline::catalog::{
    self, check_name, check_user_name, parse_discriminator, parse_routes, router_pipelines,
    CatalogError, PipelineArgs,
};
use fetch_etl_core::pipeline::grammar::parse_columns;
use fetch_etl_core::pipeline::login::{login, LOGIN, LOGIN_DDL};
use fetch_etl_core::pipeline::plan::{plan, Definition, Idempotency, Plan, PlanError};
use fetch_etl_core::pipeline::spec::ColumnSpec;

use super::error::{raise, raise_classified, raise_with_hint, OrRaise, SpiOrRaise};
use super::spi::{as_owner, catalog_version, extension_owner, with_search_path};
use super::store::TargetRef;
use super::target;

/// The first catalog with pipelines.
const CATALOG_060: (u32, u32, u32) = (0, 6, 0);

/// Pipelines ready to run, with where each loads and as whom.
pub(crate) struct Loaded {
    pub(crate) pipelines: Pipelines,
    pub(crate) targets: Vec<TargetRef>,
}

/// `create_pipeline`'s arguments.
pub(crate) struct NewPipeline<'a> {
    pub(crate) name: &'a str,
    pub(crate) target: &'a str,
    pub(crate) columns: &'a str,
    pub(crate) rows: Option<&'a str>,
    pub(crate) idempotency: &'a str,
    pub(crate) replace: bool,
}

/// `create_router`'s arguments.
pub(crate) struct NewRouter<'a> {
    pub(crate) name: &'a str,
    pub(crate) route_by: &'a str,
    pub(crate) routes: &'a Value,
    pub(crate) otherwise: Option<&'a str>,
    pub(crate) replace: bool,
}

/// A row of the catalog.
struct Row {
    name: String,
    id: i64,
    kind: PipelineKind,
    owner: pg_sys::Oid,
    /// The owner role still exists (a dropped role's pipelines stay, and
    /// cannot run).
    owner_exists: bool,
    target: Option<pg_sys::Oid>,
    columns: Option<String>,
    rows_path: Option<String>,
    idempotency: String,
    route_by: Option<String>,
    routes: Option<String>,
    otherwise: Option<String>,
    unrecognized: String,
    create_table: Option<String>,
    builtin: bool,
}

/// The role calling (before any switch to the owner).
fn caller() -> pg_sys::Oid {
    // SAFETY: reads the current user id; no preconditions.
    unsafe { pg_sys::GetUserId() }
}

fn require_catalog(what: &str) {
    super::spi::require_catalog(CATALOG_060, what);
}

/// The catalog row `name`, read as the extension owner (`lock`: a row lock
/// clause, or "").
fn read(name: &str, lock: &str) -> Option<Row> {
    let sql = format!(
        "SELECT d.name, d.kind, d.owner::pg_catalog.oid, \
                EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.oid OPERATOR(pg_catalog.=) d.owner::pg_catalog.oid), \
                d.target::pg_catalog.oid, d.columns, d.rows_path, d.idempotency, d.route_by, \
                d.routes::pg_catalog.text, d.otherwise, d.unrecognized, d.create_table, d.builtin, d.id \
         FROM fetch_etl.pipeline_definitions d WHERE d.name OPERATOR(pg_catalog.=) $1 {lock}"
    );
    Spi::connect_mut(|c| {
        let rows = c
            .update(&sql, None, &[name.into()])
            .or_raise_spi("pipelines");
        rows.into_iter().next().map(|r| {
            let text = |i| r.get::<String>(i).ok().flatten();
            let kind = text(2)
                .as_deref()
                .and_then(PipelineKind::parse)
                .unwrap_or_else(|| raise(ErrorKind::Internal, "a pipeline of unknown kind"));
            Row {
                name: text(1).unwrap_or_default(),
                kind,
                owner: r
                    .get::<pg_sys::Oid>(3)
                    .ok()
                    .flatten()
                    .unwrap_or(pg_sys::InvalidOid),
                owner_exists: r.get::<bool>(4).ok().flatten().unwrap_or(false),
                target: r.get::<pg_sys::Oid>(5).ok().flatten(),
                columns: text(6),
                rows_path: text(7),
                idempotency: text(8).unwrap_or_default(),
                route_by: text(9),
                routes: text(10),
                otherwise: text(11),
                unrecognized: text(12).unwrap_or_default(),
                create_table: text(13),
                builtin: r.get::<bool>(14).ok().flatten().unwrap_or(false),
                id: r.get::<i64>(15).ok().flatten().unwrap_or_default(),
            }
        })
    })
}

/// Whether `who` has the privileges of `role` (is it, a member of it, or
/// a superuser).
fn acts_for(who: pg_sys::Oid, role: pg_sys::Oid) -> bool {
    // SAFETY: reads the role's catalog entry.
    if who == role || unsafe { pg_sys::superuser_arg(who) } {
        return true;
    }
    Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.oid OPERATOR(pg_catalog.=) $2) \
                AND pg_catalog.pg_has_role($1, $2, 'USAGE')",
        &[who.into(), role.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false)
}

fn role_name(role: pg_sys::Oid) -> String {
    Spi::get_one_with_args::<String>(
        "SELECT r.rolname::pg_catalog.text FROM pg_catalog.pg_roles r WHERE r.oid OPERATOR(pg_catalog.=) $1",
        &[role.into()],
    )
    .ok()
    .flatten()
    .unwrap_or_else(|| format!("(dropped role, OID {})", role.to_u32()))
}

/// Raises 42501 unless `who` may change or drain the pipeline `row`.
fn require_acts_for(who: pg_sys::Oid, row: &Row, action: &str) {
    if !acts_for(who, row.owner) {
        let owner = role_name(row.owner);
        raise_with_hint(
            ErrorKind::InsufficientPrivilege,
            format!("permission denied to {action} {} {}", row.kind, row.name),
            format!(
                "{} {} belongs to role {owner}: only {owner}, its members and superusers may {action} it.",
                row.kind, row.name
            ),
        );
    }
}

/// A type written in a column list, resolved on the caller's search_path
/// and rewritten schema-qualified (`format_type` with an empty search_path),
/// so the catalog's text means the same type whoever reads it.
fn qualify_types(columns: &mut [ColumnSpec]) {
    for c in columns.iter_mut() {
        let Some(declared) = &c.declared_type else {
            continue;
        };
        let Some(oid) = target::type_oid(declared) else {
            raise_classified(&PlanError::NoType {
                column: c.column.clone(),
                ty: declared.clone(),
            });
        };
        let name = with_search_path(c"", || {
            Spi::get_one_with_args::<String>(
                "SELECT pg_catalog.format_type($1, NULL)",
                &[pg_sys::Oid::from(oid).into()],
            )
        })
        .ok()
        .flatten()
        .unwrap_or_else(|| raise(ErrorKind::Internal, "format_type returned nothing"));
        c.declared_type = Some(name);
    }
}

/// Resolves a qualified type name from the catalog's text.
fn qualified_type_oid(name: &str) -> Option<u32> {
    with_search_path(c"", || target::type_oid(name))
}

/// The owner a pipeline (or router) `name` is made for: the caller's for a
/// new one; for one replaced, its owner stays (a superuser who fixes a
/// role's pipeline does not take it over, nor lift its rows out of the
/// owner's rights), and the caller must act for it.
fn owner_for(
    ext: pg_sys::Oid,
    name: &str,
    replace: bool,
    me: pg_sys::Oid,
    kind: PipelineKind,
) -> Option<pg_sys::Oid> {
    as_owner(ext, || read(name, "")).map(|row| {
        replaceable(&row, replace, me, kind);
        row.owner
    })
}

/// Raises unless `relid` is a table a pipeline may keep loading: not a
/// temporary one (another session's, or gone when this one ends).
fn require_lasting_table(relid: pg_sys::Oid) {
    let temp = Spi::get_one_with_args::<bool>(
        "SELECT c.relpersistence OPERATOR(pg_catalog.=) 't' FROM pg_catalog.pg_class c \
         WHERE c.oid OPERATOR(pg_catalog.=) $1",
        &[relid.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false);
    if temp {
        raise(
            ErrorKind::WrongObjectType,
            "a pipeline cannot load a temporary table",
        );
    }
}

/// Creates or replaces a pipeline.
pub(crate) fn create_pipeline(p: &NewPipeline<'_>) {
    require_catalog("create_pipeline");
    check_user_name(p.name).or_raise();
    let mut args = PipelineArgs::parse(p.columns, p.rows, p.idempotency).or_raise();
    qualify_types(&mut args.columns);
    let me = caller();
    let ext = extension_owner();
    let existing_owner = owner_for(ext, p.name, p.replace, me, PipelineKind::Pipeline);
    let owner = existing_owner.unwrap_or(me);
    let relid = target::find(p.target, None);
    require_lasting_table(relid);
    // the rows go in with the owner's rights: the owner must be able to insert
    let table = target::describe(relid, Some(owner));
    let def = args
        .clone()
        .into_definition(p.name, 0, RejectReason::UnrecognizedEvent);
    plan(&def, &table, &qualified_type_oid).or_raise();
    let columns = args.columns_text();
    let rows = args.rows.as_ref().map(|r| r.as_str().to_string());
    let idempotency = args.idempotency.to_string();
    as_owner(ext, || {
        if let Some(row) = read(p.name, "FOR UPDATE OF d") {
            replaceable(&row, p.replace, me, PipelineKind::Pipeline);
            if existing_owner != Some(row.owner) {
                raise_classified(&CatalogError::Changed(p.name.to_string()));
            }
            Spi::run_with_args(
                "UPDATE fetch_etl.pipeline_definitions SET \
                        target = $2::pg_catalog.oid::pg_catalog.regclass, columns = $3, rows_path = $4, \
                        idempotency = $5, updated_at = pg_catalog.now() \
                 WHERE name OPERATOR(pg_catalog.=) $1",
                &[
                    p.name.into(),
                    relid.into(),
                    columns.as_str().into(),
                    rows.clone().into(),
                    idempotency.as_str().into(),
                ],
            )
            .or_raise_spi("pipelines");
            return;
        }
        if existing_owner.is_some() {
            // dropped meanwhile: made again, by the caller, only as asked
            raise_classified(&CatalogError::Changed(p.name.to_string()));
        }
        let stored = Spi::get_one_with_args::<String>(
            "INSERT INTO fetch_etl.pipeline_definitions (name, kind, owner, target, columns, rows_path, idempotency) \
             VALUES ($1, 'pipeline', $2::pg_catalog.oid::pg_catalog.regrole, $3::pg_catalog.oid::pg_catalog.regclass, $4, $5, $6) \
             ON CONFLICT (name) DO NOTHING RETURNING name",
            &[
                p.name.into(),
                me.into(),
                relid.into(),
                columns.as_str().into(),
                rows.clone().into(),
                idempotency.as_str().into(),
            ],
        );
        if !matches!(stored, Ok(Some(_))) {
            // created by another session meanwhile
            raise_classified(&CatalogError::Exists(p.name.to_string()));
        }
    });
}

/// Raises unless the existing `row` may be replaced by `me` with one of `kind`.
fn replaceable(row: &Row, replace: bool, me: pg_sys::Oid, kind: PipelineKind) {
    if row.builtin {
        raise_classified(&CatalogError::Builtin(row.name.clone()));
    }
    if !replace {
        raise_classified(&CatalogError::Exists(row.name.clone()));
    }
    if row.kind != kind {
        raise_classified(&CatalogError::WrongKind(row.name.clone(), row.kind, kind));
    }
    require_acts_for(me, row, "replace");
}

/// Creates or replaces a router.
pub(crate) fn create_router(r: &NewRouter<'_>) {
    require_catalog("create_router");
    check_user_name(r.name).or_raise();
    let discriminator = parse_discriminator(r.route_by).or_raise();
    let routes = parse_routes(r.routes).or_raise();
    if let Some(o) = r.otherwise {
        check_name(o).or_raise();
        if o == LOGIN {
            raise_classified(&CatalogError::RouteToBuiltin(o.to_string()));
        }
    }
    let me = caller();
    let route_by = discriminator.to_string();
    let routes_json: serde_json::Map<String, Value> = routes
        .iter()
        .map(|(v, p)| (v.clone(), Value::String(p.clone())))
        .collect();
    let routes_json = Value::Object(routes_json).to_string();
    let ext = extension_owner();
    let existing_owner = owner_for(ext, r.name, r.replace, me, PipelineKind::Router);
    let owner = existing_owner.unwrap_or(me);
    as_owner(ext, || {
        // Each pipeline it routes to exists, is a pipeline, and the
        // router's owner may drain it; held (KEY SHARE) so it cannot be
        // dropped before this commits.
        for name in router_pipelines(&routes, r.otherwise) {
            let Some(row) = read(&name, "FOR KEY SHARE OF d") else {
                raise_classified(&CatalogError::Missing(name));
            };
            if row.kind != PipelineKind::Pipeline {
                raise_classified(&CatalogError::RouteToRouter {
                    router: r.name.to_string(),
                    pipeline: name,
                });
            }
            require_acts_for(me, &row, "route to");
            require_acts_for(owner, &row, "route to");
        }
        if let Some(row) = read(r.name, "FOR UPDATE OF d") {
            replaceable(&row, r.replace, me, PipelineKind::Router);
            if existing_owner != Some(row.owner) {
                raise_classified(&CatalogError::Changed(r.name.to_string()));
            }
            Spi::run_with_args(
                "UPDATE fetch_etl.pipeline_definitions SET \
                        route_by = $2, routes = $3::pg_catalog.jsonb, otherwise = $4, updated_at = pg_catalog.now() \
                 WHERE name OPERATOR(pg_catalog.=) $1",
                &[
                    r.name.into(),
                    route_by.as_str().into(),
                    routes_json.as_str().into(),
                    r.otherwise.into(),
                ],
            )
            .or_raise_spi("pipelines");
            return;
        }
        if existing_owner.is_some() {
            raise_classified(&CatalogError::Changed(r.name.to_string()));
        }
        let stored = Spi::get_one_with_args::<String>(
            "INSERT INTO fetch_etl.pipeline_definitions (name, kind, owner, route_by, routes, otherwise) \
             VALUES ($1, 'router', $2::pg_catalog.oid::pg_catalog.regrole, $3, $4::pg_catalog.jsonb, $5) \
             ON CONFLICT (name) DO NOTHING RETURNING name",
            &[
                r.name.into(),
                me.into(),
                route_by.as_str().into(),
                routes_json.as_str().into(),
                r.otherwise.into(),
            ],
        );
        if !matches!(stored, Ok(Some(_))) {
            raise_classified(&CatalogError::Exists(r.name.to_string()));
        }
    });
}

/// Drops a pipeline or router; false if there was none (with `if_exists`).
pub(crate) fn drop_pipeline(name: &str, if_exists: bool) -> bool {
    require_catalog("drop_pipeline");
    check_name(name).or_raise();
    let me = caller();
    let ext = extension_owner();
    as_owner(ext, || {
        let Some(row) = read(name, "FOR UPDATE OF d") else {
            if if_exists {
                pgrx::notice!("fetch_etl: pipeline {name} does not exist, skipping");
                return false;
            }
            raise_classified(&CatalogError::Missing(name.to_string()));
        };
        if row.builtin {
            raise_classified(&CatalogError::Builtin(row.name));
        }
        require_acts_for(me, &row, "drop");
        if row.kind == PipelineKind::Pipeline {
            let router = Spi::get_one_with_args::<String>(
                "SELECT d.name FROM fetch_etl.pipeline_definitions d \
                 WHERE d.kind OPERATOR(pg_catalog.=) 'router' \
                   AND (d.otherwise OPERATOR(pg_catalog.=) $1 \
                        OR EXISTS (SELECT FROM pg_catalog.jsonb_each_text(d.routes) AS r \
                                   WHERE r.value OPERATOR(pg_catalog.=) $1)) \
                 ORDER BY d.name LIMIT 1",
                &[name.into()],
            )
            .ok()
            .flatten();
            if let Some(router) = router {
                raise_classified(&CatalogError::InUse {
                    pipeline: name.to_string(),
                    router,
                });
            }
        }
        Spi::run_with_args(
            "DELETE FROM fetch_etl.pipeline_definitions WHERE name OPERATOR(pg_catalog.=) $1",
            &[name.into()],
        )
        .or_raise_spi("pipelines");
        true
    })
}

/// An error in a stored pipeline (its table changed, or its text no longer
/// reads), naming it.
fn in_pipeline(name: &str, e: &impl Classified) -> ! {
    let message = format!("pipeline {name}: {e}");
    match e.hint() {
        Some(h) => raise_with_hint(e.kind(), message, h),
        None => raise(e.kind(), message),
    }
}

/// The definition a catalog row holds.
fn definition(row: &Row) -> Definition {
    let parse = || -> Result<Definition, PlanError> {
        let columns = parse_columns(row.columns.as_deref().unwrap_or_default())
            .map_err(|e| PlanError::Syntax(e.to_string()))?;
        let args = PipelineArgs {
            columns,
            rows: None,
            idempotency: Idempotency::parse(&row.idempotency)?,
        };
        let mut def = args.into_definition(
            &row.name,
            row.id,
            RejectReason::parse(&row.unrecognized).unwrap_or(RejectReason::UnrecognizedEvent),
        );
        if let Some(r) = &row.rows_path {
            def.rows = Some(
                fetch_etl_core::pipeline::path::JsonPath::parse(r)
                    .map_err(|e| PlanError::Syntax(format!("rows: {e}")))?,
            );
        }
        Ok(def)
    };
    parse().unwrap_or_else(|e| in_pipeline(&row.name, &e))
}

/// A pipeline row held against its table: the plan, and where and as whom
/// it loads. `router`: the router it was reached through (its owner must
/// still act for the pipeline's).
fn prepare_pipeline(
    row: &Row,
    me: pg_sys::Oid,
    target_table: &str,
    router: Option<&Row>,
) -> (Plan, TargetRef) {
    if row.builtin {
        if router.is_some() {
            // (create_router refuses it; a catalog row may not)
            raise_classified(&CatalogError::RouteToBuiltin(row.name.clone()));
        }
        // The drain's table, as the caller (created with the exercise's DDL
        // when missing).
        let def = definition(row);
        let relid = target::find(target_table, row.create_table.as_deref());
        let table = target::describe(relid, None);
        let p =
            plan(&def, &table, &qualified_type_oid).unwrap_or_else(|e| in_pipeline(&row.name, &e));
        return (
            p,
            TargetRef {
                relid,
                run_as: None,
            },
        );
    }
    // who may, before anything of it is read or said
    require_acts_for(me, row, "drain");
    if let Some(r) = router {
        if !acts_for(r.owner, row.owner) {
            raise_with_hint(
                ErrorKind::InsufficientPrivilege,
                format!(
                    "router {}'s owner may no longer drain pipeline {}",
                    r.name, row.name
                ),
                "Replace the router, as a role that may drain every pipeline it routes to.",
            );
        }
    }
    if !row.owner_exists {
        raise_with_hint(
            ErrorKind::UndefinedObject,
            format!("the owner of pipeline {} no longer exists", row.name),
            "Create the pipeline again as an existing role (drop_pipeline, then create_pipeline).",
        );
    }
    let def = definition(row);
    let Some(relid) = row.target else {
        raise(ErrorKind::Internal, "a pipeline without a target table");
    };
    let table = target::describe(relid, Some(row.owner));
    let p = plan(&def, &table, &qualified_type_oid).unwrap_or_else(|e| in_pipeline(&row.name, &e));
    // Always as its owner, in a security-restricted operation, even when
    // the owner drains it: its table's code never outlives the insert.
    (
        p,
        TargetRef {
            relid,
            run_as: Some(row.owner),
        },
    )
}

/// The pipeline (or router) a drain or replay runs: `pipeline`, or the
/// built-in login pipeline into `target_table`.
pub(crate) fn load(pipeline: Option<&str>, target_table: &str) -> Loaded {
    let name = pipeline.unwrap_or(LOGIN);
    if catalog_version() < CATALOG_060 {
        if name == LOGIN {
            return login_before_060(target_table);
        }
        require_catalog("a pipeline other than login");
    }
    check_name(name).or_raise();
    let me = caller();
    let ext = extension_owner();
    let row = as_owner(ext, || read(name, ""))
        .unwrap_or_else(|| raise_classified(&CatalogError::Missing(name.to_string())));
    match row.kind {
        PipelineKind::Pipeline => {
            let (plan, target) = prepare_pipeline(&row, me, target_table, None);
            Loaded {
                pipelines: Pipelines::single(plan),
                targets: vec![target],
            }
        }
        PipelineKind::Router => {
            require_acts_for(me, &row, "drain");
            let discriminator = parse_discriminator(row.route_by.as_deref().unwrap_or_default())
                .unwrap_or_else(|e| in_pipeline(&row.name, &e));
            let routes_json: Value = row
                .routes
                .as_deref()
                .and_then(|r| serde_json::from_str(r).ok())
                .unwrap_or(Value::Null);
            let routes = parse_routes(&routes_json).unwrap_or_else(|e| in_pipeline(&row.name, &e));
            let names = router_pipelines(&routes, row.otherwise.as_deref());
            let mut plans = Vec::with_capacity(names.len());
            let mut targets = Vec::with_capacity(names.len());
            for n in &names {
                let p = as_owner(ext, || read(n, ""))
                    .unwrap_or_else(|| in_pipeline(&row.name, &CatalogError::Missing(n.clone())));
                if p.kind != PipelineKind::Pipeline {
                    in_pipeline(
                        &row.name,
                        &CatalogError::RouteToRouter {
                            router: row.name.clone(),
                            pipeline: n.clone(),
                        },
                    );
                }
                let (plan, target) = prepare_pipeline(&p, me, target_table, Some(&row));
                plans.push(plan);
                targets.push(target);
            }
            let router = catalog::router(
                &row.name,
                discriminator,
                &routes,
                row.otherwise.as_deref(),
                &names,
            );
            Loaded {
                pipelines: Pipelines {
                    name: row.name.clone(),
                    id: row.id,
                    plans,
                    router: Some(router),
                },
                targets,
            }
        }
    }
}

/// The login pipeline in a database whose catalog predates pipelines (the
/// library was upgraded, the database not yet): its definition from the
/// library, as 0.5.0 ran it.
fn login_before_060(target_table: &str) -> Loaded {
    let relid = target::find(target_table, Some(LOGIN_DDL));
    let table = target::describe(relid, None);
    let p = plan(&login(), &table, &target::type_oid).or_raise();
    Loaded {
        pipelines: Pipelines::single(p),
        targets: vec![TargetRef {
            relid,
            run_as: None,
        }],
    }
}
