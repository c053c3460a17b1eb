//! sqs_drain, queue_depth and replay_dead_letters.

use pgrx::prelude::*;

use fetch_etl_core::contract::OnError;
use fetch_etl_core::error::ErrorKind;

use super::required;
use crate::postgres::error::raise;
use crate::{drain, replay};

/// Drains up to `max_messages` login events from an SQS queue into
/// `target_table`; see docs/reference.md, "sqs_drain". Not STRICT: NULL
/// arguments get a clear error instead of a silent NULL result.
#[pg_extern(volatile, parallel_unsafe)]
fn sqs_drain(
    queue_url: Option<&str>,
    max_messages: default!(Option<i32>, 1000),
    wait_seconds: default!(Option<i32>, 0),
    target_table: default!(Option<&str>, "'user_logins'"),
    visibility_timeout: default!(Option<i32>, "NULL"),
    on_error: default!(Option<&str>, "'raise'"),
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
    });
    let c = s.counts;
    TableIterator::once((s.run_id, c.received, c.loaded, c.rejected, c.duplicates))
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

/// Runs dead letters through validation and the target table again; see
/// docs/reference.md, "replay_dead_letters".
#[pg_extern(volatile, parallel_unsafe)]
fn replay_dead_letters(
    queue_url: default!(Option<&str>, "NULL"),
    reason_code: default!(Option<&str>, "NULL"),
    target_table: default!(Option<&str>, "'user_logins'"),
    max_rows: default!(Option<i32>, 1000),
    any_target: default!(Option<bool>, false),
) -> TableIterator<
    'static,
    (
        name!(replayed, i64),
        name!(loaded, i64),
        name!(rejected, i64),
    ),
> {
    let r = replay::replay(
        queue_url,
        reason_code,
        required(target_table, "target_table"),
        required(max_rows, "max_rows"),
        required(any_target, "any_target"),
    );
    TableIterator::once((r.replayed, r.loaded, r.rejected))
}
