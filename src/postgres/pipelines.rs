//! The pipelines a drain runs, held against their target tables' catalog
//! entries at its start (a table changed since a pipeline was made gives a
//! clear error here, never a wrong insert).

use pgrx::pg_sys;

use fetch_etl_core::batch::Pipelines;
use fetch_etl_core::pipeline::login::{login, LOGIN_DDL};
use fetch_etl_core::pipeline::plan::plan;

use super::error::OrRaise;
use super::store::TargetRef;
use super::target;

/// Pipelines ready to run, with where each loads and as whom.
pub(crate) struct Loaded {
    pub(crate) pipelines: Pipelines,
    pub(crate) targets: Vec<TargetRef>,
}

/// The built-in login pipeline into `target_table` (found on the caller's
/// search_path, created with the exercise's DDL when missing), loaded as the
/// calling role.
pub(crate) fn login_into(target_table: &str) -> Loaded {
    let relid: pg_sys::Oid = target::find(target_table, Some(LOGIN_DDL));
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
