//! `fetch_etl.drain_runs`: one row per sqs_drain call, written as the
//! extension owner in the drain's own transaction.

use pgrx::pg_sys;
use pgrx::prelude::*;

use fetch_etl_core::contract::RunStatus;
use fetch_etl_core::error::ErrorKind;
use fetch_etl_core::failed_run::FailedRun;
use fetch_etl_sqs::credentials::Provenance;

use super::error::raise;
use fetch_etl_core::pipeline::login::LOGIN;

use super::spi::{as_owner, catalog_version};

/// What a run was asked to do.
pub(crate) struct RunRequest<'a> {
    pub(crate) queue_url: &'a str,
    pub(crate) target_table: &'a str,
    pub(crate) max_messages: i32,
    pub(crate) wait_seconds: i32,
    /// The pipeline or router asked for (None: the built-in login pipeline).
    pub(crate) pipeline: Option<&'a str>,
}

/// What a run did with the messages it received (`received = loaded +
/// rejected + duplicates`): what sqs_drain returns and drain_runs records.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counts {
    pub(crate) received: i64,
    pub(crate) loaded: i64,
    pub(crate) rejected: i64,
    pub(crate) duplicates: i64,
    /// Received but left in the queue (not in `received`).
    pub(crate) deferred: i64,
    /// Messages this run received again while it held them (their
    /// visibility lapsed, or SQS delivered them twice): not in `received`,
    /// which counts distinct messages, nor in `duplicates`; not recorded.
    pub(crate) received_again: i64,
}

/// How a finished run went.
pub(crate) struct Finished<'a> {
    pub(crate) counts: Counts,
    pub(crate) receive_calls: i32,
    /// From the start until the last message was stored.
    pub(crate) active_seconds: f64,
    pub(crate) protocol: Option<&'a str>,
    /// What stopped receiving early (the run is then `partial`).
    pub(crate) error: Option<&'a str>,
}

fn insert(
    owner: pg_sys::Oid,
    req: &RunRequest<'_>,
    status: RunStatus,
    error: Option<&str>,
    credentials: Option<&Provenance>,
    run_by: Option<&str>,
) -> i64 {
    let finished = status != RunStatus::Running;
    // drain_runs.pipeline is 0.6.0's (the library may be newer than the catalog)
    let (pipeline_col, pipeline_val) = if catalog_version() >= (0, 6, 0) {
        (", pipeline", ", $10")
    } else {
        ("", "")
    };
    let sql = format!(
        "INSERT INTO fetch_etl.drain_runs \
           (queue_url, target_table, max_messages, wait_seconds, status, finished_at, error, \
            credential_source, credential_identity, run_by{pipeline_col}) \
         VALUES ($1, $2, $3, $4, $5, CASE WHEN $6 THEN pg_catalog.clock_timestamp() END, $7, $8, $9, \
                 COALESCE($11::pg_catalog.name, SESSION_USER){pipeline_val}) \
         RETURNING run_id"
    );
    Spi::connect_mut(|client| {
        as_owner(owner, || {
            client
                .update(
                    &sql,
                    None,
                    &[
                        req.queue_url.into(),
                        req.target_table.into(),
                        req.max_messages.into(),
                        req.wait_seconds.into(),
                        status.as_str().into(),
                        finished.into(),
                        error.map(str::to_string).into(),
                        credentials.map(Provenance::source_text).into(),
                        credentials.map(|c| c.identity.clone()).into(),
                        req.pipeline.unwrap_or(LOGIN).into(),
                        run_by.into(),
                    ],
                )
                .and_then(|t| t.first().get_one::<i64>())
        })
    })
    .ok()
    .flatten()
    .unwrap_or_else(|| raise(ErrorKind::Internal, "could not record the drain run"))
}

/// A run that is starting; finished with [`finish`].
pub(crate) fn start(owner: pg_sys::Oid, req: &RunRequest<'_>, credentials: &Provenance) -> i64 {
    insert(
        owner,
        req,
        RunStatus::Running,
        None,
        Some(credentials),
        None,
    )
}

/// A run that found the queue busy and did nothing.
pub(crate) fn record_skipped(owner: pg_sys::Oid, req: &RunRequest<'_>) -> i64 {
    insert(owner, req, RunStatus::Skipped, None, None, None)
}

/// A run that failed and was rolled back: in the caller's transaction
/// (`on_error => 'record'`, `run_by` None: the session user), or in the
/// recorder's (`recorder.rs`), which names the session user who ran it.
pub(crate) fn record_failed(owner: pg_sys::Oid, run: &FailedRun, run_by: Option<&str>) -> i64 {
    let req = RunRequest {
        queue_url: &run.queue_url,
        target_table: &run.target_table,
        max_messages: run.max_messages,
        wait_seconds: run.wait_seconds,
        pipeline: run.pipeline.as_deref(),
    };
    insert(
        owner,
        &req,
        RunStatus::Failed,
        Some(&run.error),
        None,
        run_by,
    )
}

/// Completes a started run: `ok`, or `partial` when an error stopped it early.
pub(crate) fn finish(owner: pg_sys::Oid, run_id: i64, f: &Finished<'_>) {
    let c = &f.counts;
    let status = match f.error {
        None => RunStatus::Ok,
        Some(_) => RunStatus::Partial,
    };
    Spi::connect_mut(|spi| {
        as_owner(owner, || {
            spi.update(
                "UPDATE fetch_etl.drain_runs SET finished_at = pg_catalog.clock_timestamp(), \
                   status = $2, received = $3, loaded = $4, rejected = $5, duplicates = $6, \
                   receive_calls = $7, error = $8, protocol = $9, active_seconds = $10, deferred = $11 \
                 WHERE run_id OPERATOR(pg_catalog.=) $1",
                None,
                &[
                    run_id.into(),
                    status.as_str().into(),
                    c.received.into(),
                    c.loaded.into(),
                    c.rejected.into(),
                    c.duplicates.into(),
                    f.receive_calls.into(),
                    f.error.map(str::to_string).into(),
                    f.protocol.map(str::to_string).into(),
                    f.active_seconds.into(),
                    c.deferred.into(),
                ],
            )
            .map(|_| ())
        })
    })
    .unwrap_or_else(|e| {
        raise(
            ErrorKind::Internal,
            format!("could not record the drain run: {e}"),
        )
    });
}
