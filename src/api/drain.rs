//! sqs_drain, queue_depth and replay_dead_letters.

use pgrx::prelude::*;

use fetch_etl_core::contract::OnError;
use fetch_etl_core::error::ErrorKind;

use super::required;
use crate::postgres::error::raise;
use crate::{drain, replay};

/// Drains up to `max_messages` messages from an SQS queue through
/// `pipeline` (a pipeline or router; NULL: the built-in login pipeline
/// into `target_table`); see docs/reference.md, "sqs_drain". Not STRICT:
/// NULL arguments get a clear error instead of a silent NULL result. Its C
/// symbol is new in 0.6.0: `sqs_drain_wrapper` stays the 0.5.0 signature's.
#[pg_extern(name = "sqs_drain", volatile, parallel_unsafe)]
fn sqs_drain_through(
    queue_url: Option<&str>,
    max_messages: default!(Option<i32>, 1000),
    wait_seconds: default!(Option<i32>, 0),
    target_table: default!(Option<&str>, "'user_logins'"),
    visibility_timeout: default!(Option<i32>, "NULL"),
    on_error: default!(Option<&str>, "'raise'"),
    pipeline: default!(Option<&str>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(run_id, Option<i64>),
        name!(received, i64),
        name!(loaded, i64),
        name!(rejected, i64),
        name!(duplicates, i64),
    ),
> {
    let on_error = required(on_error, "on_error");
    let on_error = OnError::parse(on_error).unwrap_or_else(|| {
        raise(
            ErrorKind::InvalidParameter,
            format!(
                "on_error must be {}, not {on_error:?}",
                OnError::describe_choices()
            ),
        )
    });
    let s = drain::drain(drain::Args {
        queue_url: required(queue_url, "queue_url"),
        max_messages: required(max_messages, "max_messages"),
        wait_seconds: required(wait_seconds, "wait_seconds"),
        target_table: required(target_table, "target_table"),
        visibility_timeout,
        on_error,
        pipeline,
    });
    let c = s.counts;
    TableIterator::once((s.run_id, c.received, c.loaded, c.rejected, c.duplicates))
}

/// `sqs_drain` as a catalog before 0.6.0 declares it (six arguments, the
/// symbol `sqs_drain_wrapper`): a database whose library was upgraded
/// keeps draining until `ALTER EXTENSION fetch_etl UPDATE`. Not in the SQL.
#[pg_extern(sql = false)]
fn sqs_drain(
    queue_url: Option<&str>,
    max_messages: Option<i32>,
    wait_seconds: Option<i32>,
    target_table: Option<&str>,
    visibility_timeout: Option<i32>,
    on_error: Option<&str>,
) -> TableIterator<
    'static,
    (
        name!(run_id, Option<i64>),
        name!(received, i64),
        name!(loaded, i64),
        name!(rejected, i64),
        name!(duplicates, i64),
    ),
> {
    sqs_drain_through(
        queue_url,
        max_messages,
        wait_seconds,
        target_table,
        visibility_timeout,
        on_error,
        None,
    )
}

/// Messages in a queue, from SQS GetQueueAttributes (approximate, as SQS says).
#[pg_extern(volatile, strict, parallel_unsafe)]
fn queue_depth(
    queue_url: &str,
) -> TableIterator<
    'static,
    (
        name!(visible, i64),
        name!(in_flight, i64),
        name!(delayed, i64),
    ),
> {
    TableIterator::once(drain::queue_depth(queue_url))
}

/// Runs dead letters through their pipeline and target table again; see
/// docs/reference.md, "replay_dead_letters". Its C symbol is new in 0.6.0,
/// as `sqs_drain`'s is.
#[pg_extern(name = "replay_dead_letters", volatile, parallel_unsafe)]
fn replay_dead_letters_through(
    queue_url: default!(Option<&str>, "NULL"),
    reason_code: default!(Option<&str>, "NULL"),
    target_table: default!(Option<&str>, "'user_logins'"),
    max_rows: default!(Option<i32>, 1000),
    any_target: default!(Option<bool>, false),
    pipeline: default!(Option<&str>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(replayed, i64),
        name!(loaded, i64),
        name!(rejected, i64),
    ),
> {
    let r = replay::replay(&replay::Args {
        queue_url,
        reason_code,
        target_table: required(target_table, "target_table"),
        max_rows: required(max_rows, "max_rows"),
        any_target: required(any_target, "any_target"),
        pipeline,
    });
    TableIterator::once((r.replayed, r.loaded, r.rejected))
}

/// `replay_dead_letters` as a catalog before 0.6.0 declares it. Not in the SQL.
#[pg_extern(sql = false)]
fn replay_dead_letters(
    queue_url: Option<&str>,
    reason_code: Option<&str>,
    target_table: Option<&str>,
    max_rows: Option<i32>,
    any_target: Option<bool>,
) -> TableIterator<
    'static,
    (
        name!(replayed, i64),
        name!(loaded, i64),
        name!(rejected, i64),
    ),
> {
    replay_dead_letters_through(
        queue_url,
        reason_code,
        target_table,
        max_rows,
        any_target,
        None,
    )
}

/// Marks dead letters as discarded, with a note saying why, so they are no
/// longer pending (`queue_health.dead_letters_pending`): those a replay with
/// the same arguments would take, cut bodies included. The rows stay until
/// `prune()`. See docs/reference.md, "discard_dead_letters".
#[pg_extern(volatile, parallel_unsafe)]
fn discard_dead_letters(
    note: Option<&str>,
    queue_url: default!(Option<&str>, "NULL"),
    reason_code: default!(Option<&str>, "NULL"),
    target_table: default!(Option<&str>, "'user_logins'"),
    max_rows: default!(Option<i32>, 1000),
    any_target: default!(Option<bool>, false),
    pipeline: default!(Option<&str>, "NULL"),
) -> i64 {
    replay::discard(
        &replay::Args {
            queue_url,
            reason_code,
            target_table: required(target_table, "target_table"),
            max_rows: required(max_rows, "max_rows"),
            any_target: required(any_target, "any_target"),
            pipeline,
        },
        required(note, "note"),
    )
}
