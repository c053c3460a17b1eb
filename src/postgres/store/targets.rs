//! The pipelines' target tables: each plan's INSERT, prepared as the role
//! that loads the table (a pipeline's owner, or the caller for a pipeline
//! whose table the drain names), run over a batch's column arrays. A
//! message the table refuses is found by halving; a value its type refuses
//! is named column by column.

use std::ops::Range;
use std::panic::AssertUnwindSafe;

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};

use fetch_etl_core::contract::RejectReason;
use fetch_etl_core::pipeline::engine::Columns;
use fetch_etl_core::pipeline::plan::{ArrayKind, Plan};

use super::{prepare, INT8_ARRAY, TEXT_ARRAY};
use crate::postgres::error::SpiOrRaise;
use crate::postgres::spi::{as_pipeline_owner, in_subxact, with_search_path};
use crate::postgres::target;

/// Where a plan's rows go, and as whom.
pub(crate) struct TargetStatement {
    stmt: OwnedPreparedStatement,
    /// The role the INSERT runs as (None: the calling role).
    pub(crate) run_as: Option<pg_sys::Oid>,
    pub(crate) relid: pg_sys::Oid,
}

/// Runs `f` as `role`, a pipeline's owner (None: as the caller, unchanged).
pub(crate) fn as_role<R>(role: Option<pg_sys::Oid>, f: impl FnOnce() -> R) -> R {
    match role {
        Some(r) => as_pipeline_owner(r, f),
        None => f(),
    }
}

impl TargetStatement {
    pub(crate) fn prepare(
        client: &SpiClient<'_>,
        plan: &Plan,
        run_as: Option<pg_sys::Oid>,
        relid: pg_sys::Oid,
    ) -> TargetStatement {
        let types: Vec<pg_sys::Oid> = plan
            .columns
            .iter()
            .map(|c| match c.array {
                ArrayKind::Text => TEXT_ARRAY,
                ArrayKind::Int8 => INT8_ARRAY,
            })
            .collect();
        let stmt = as_role(run_as, || prepare(client, &plan.insert_sql, &types));
        TargetStatement {
            stmt,
            run_as,
            relid,
        }
    }

    /// Inserts the rows of `columns`. Returns the messages (indexes into
    /// `columns.messages`) the table refused with an error of their own
    /// making, each with its reason; errors no row causes (serialization,
    /// resources, locks, cancels, internal) are raised.
    #[inline(never)] // a frame of its own in scripts/bench's profile (called once per batch)
    pub(crate) fn insert(
        &self,
        client: &mut SpiClient<'_>,
        plan: &Plan,
        columns: &Columns,
    ) -> Vec<(usize, RejectReason, String)> {
        let n = columns.messages.len();
        if n == 0 {
            return Vec::new();
        }
        // Rows of messages `range`.
        let rows = |range: &Range<usize>| -> Range<usize> {
            columns.messages[range.start].1.start..columns.messages[range.end - 1].1.end
        };
        let insert = |client: &mut SpiClient<'_>, range: Range<usize>| {
            let rows = rows(&range);
            in_subxact(AssertUnwindSafe(|| {
                as_role(self.run_as, || {
                    client
                        .update(&self.stmt, None, &args(columns, rows))
                        .map(|_| ())
                })
            }))
        };
        match insert(client, 0..n) {
            Ok(r) => {
                r.or_raise_spi("insert");
                return Vec::new();
            }
            Err(e) if !e.is_row_error() => e.rethrow(),
            // A privilege error for the whole batch is the table's, not a
            // row's (INSERT revoked meanwhile): raise rather than dead-letter
            // them all.
            Err(e) if e.is_privilege_error() && !target::may_insert(self.run_as, self.relid) => {
                e.rethrow()
            }
            Err(_) => {}
        }
        // A message refused the whole statement: find it (and any others) by
        // halving the ranges that fail, left half first, so rows go in (and
        // refusals come out) in batch order. A few subtransactions per
        // refused message (about 2 log2 n), not one per message: a
        // transaction with more than 64 subtransaction ids slows every
        // snapshot in the cluster until it ends.
        let halves = |r: Range<usize>| {
            let mid = r.start + r.len() / 2;
            [mid..r.end, r.start..mid] // popped left first
        };
        let mut refused = Vec::new();
        let mut failing = halves(0..n).to_vec();
        while let Some(range) = failing.pop() {
            if range.is_empty() {
                continue;
            }
            pgrx::check_for_interrupts!();
            match insert(client, range.clone()) {
                Ok(r) => r.or_raise_spi("insert"),
                Err(e) if e.is_row_error() => {
                    if range.len() == 1 {
                        let (reason, why) = self
                            .diagnose(client, plan, columns, rows(&range))
                            .unwrap_or((RejectReason::RejectedByTable, e.describe()));
                        refused.push((range.start, reason, why));
                    } else {
                        failing.extend(halves(range));
                    }
                }
                Err(e) => e.rethrow(),
            }
        }
        refused
    }

    /// Which value of rows `rows` its column's type (or domain) refuses:
    /// each column whose text the INSERT casts is cast alone, then, for a
    /// message of several rows, halved to the element. None when every
    /// value converts (a constraint or a trigger refused the row).
    fn diagnose(
        &self,
        client: &mut SpiClient<'_>,
        plan: &Plan,
        columns: &Columns,
        rows: Range<usize>,
    ) -> Option<(RejectReason, String)> {
        for (i, c) in plan.columns.iter().enumerate() {
            let (is_int, slot) = columns.slots[i];
            if is_int || c.array != ArrayKind::Text {
                continue;
            }
            let values = &columns.text[slot];
            // With its typmod (numeric(10,2) refuses what numeric takes). An
            // explicit cast to varchar(n) truncates, but lengths are checked
            // before the INSERT; a domain over text has its CHECKs tried.
            // (the cast inside the aggregate: in a subquery's select list
            // that nothing reads, the planner would drop it unevaluated)
            let sql = format!(
                "SELECT pg_catalog.count(v::{}) FROM pg_catalog.unnest($1::pg_catalog.text[]) AS v",
                c.target.display
            );
            // (a built-in type's name is unqualified: resolved with
            // pg_catalog first, whatever the caller's search_path)
            let cast = |client: &mut SpiClient<'_>, r: Range<usize>| {
                let vals: Vec<Option<&str>> = values[r].iter().map(|v| v.as_deref()).collect();
                in_subxact(AssertUnwindSafe(|| {
                    as_role(self.run_as, || {
                        with_search_path(c"pg_catalog, pg_temp", || {
                            client.select(&sql, None, &[vals.into()]).map(|_| ())
                        })
                    })
                }))
            };
            let Err(first) = cast(client, rows.clone()) else {
                continue;
            };
            if !first.is_row_error() {
                first.rethrow();
            }
            // The element, by halving, for a message of several rows.
            let mut range = rows.clone();
            let mut error = first;
            while range.len() > 1 {
                let mid = range.start + range.len() / 2;
                match cast(client, range.start..mid) {
                    Err(e) => {
                        error = e;
                        range = range.start..mid;
                    }
                    Ok(_) => range = mid..range.end,
                }
            }
            let element = match &plan.rows {
                Some(p) => format!("element {} of {p}: ", range.start - rows.start),
                None => String::new(),
            };
            return Some((
                RejectReason::BadValue,
                format!(
                    "{element}column {} ({}): {}",
                    c.target.name,
                    c.spec.source,
                    error.describe()
                ),
            ));
        }
        None
    }
}

/// The INSERT's arguments for rows `range` of `columns`.
fn args(columns: &Columns, range: Range<usize>) -> Vec<DatumWithOid<'static>> {
    columns
        .slots
        .iter()
        .map(|&(is_int, slot)| {
            if is_int {
                columns.int8[slot][range.clone()].into()
            } else {
                columns.text[slot][range.clone()]
                    .iter()
                    .map(|o| o.as_deref())
                    .collect::<Vec<Option<&str>>>()
                    .into()
            }
        })
        .collect()
}
