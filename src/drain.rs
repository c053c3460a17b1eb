//! `fetch_etl.sqs_drain`: receive login events from SQS, store them, and have
//! the messages deleted once the transaction commits.
//!
//! Per batch of received messages, in the caller's transaction:
//! 1. the ledger (`fetch_etl.processed_messages`) takes every new message id;
//!    ids already there (earlier runs, concurrent drains, redeliveries) are
//!    duplicates and are only deleted;
//! 2. new messages are validated, masked and stored (`store.rs`); refused ones
//!    become dead letters;
//! 3. every receipt handle is queued for deletion after COMMIT (`deletes.rs`).
//!
//! One drain per queue at a time: a transaction-scoped advisory lock on the
//! queue URL; a drain that finds it taken returns at once.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use pgrx::pg_sys;
use pgrx::prelude::*;
use tokio::sync::mpsc;

use crate::errors::{Classified, ErrorKind};
use crate::pgerr::raise;
use crate::pgutil::{as_owner, describe, extension_owner, in_subxact, is_interrupt};
use crate::sqs::pump::{pump, PumpConfig, PumpEvent};
use crate::sqs::{Client, Message, SqsError};
use crate::store::Loader;
use crate::{aws, deletes, guc, runtime};

/// `pg_try_advisory_xact_lock(LOCK_CLASS, hashtext(queue_url))` guards a queue
/// (0x66657463, "fetc"; visible in pg_locks as classid/objid).
pub const LOCK_CLASS: i32 = 0x6665_7463;

/// What a call returns; `run_id` is None when the call was skipped.
#[derive(Debug, Default, Clone, Copy)]
pub struct Summary {
    pub run_id: Option<i64>,
    pub received: i64,
    pub loaded: i64,
    pub rejected: i64,
    pub duplicates: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Raise: the transaction rolls back, nothing is recorded.
    Raise,
    /// Roll back the drain's work, record the run as failed, warn, return.
    Record,
}

pub struct Args<'a> {
    pub queue_url: &'a str,
    pub max_messages: i32,
    pub wait_seconds: i32,
    pub target_table: &'a str,
    pub visibility_timeout: Option<i32>,
    pub on_error: OnError,
}

pub fn drain(args: Args<'_>) -> Summary {
    if args.max_messages < 1 {
        raise(
            ErrorKind::InvalidParameter,
            "max_messages must be at least 1",
        );
    }
    if !(0..=20).contains(&args.wait_seconds) {
        raise(
            ErrorKind::InvalidParameter,
            "wait_seconds must be between 0 and 20",
        );
    }
    if let Some(v) = args.visibility_timeout {
        if !(0..=43_200).contains(&v) {
            raise(
                ErrorKind::InvalidParameter,
                "visibility_timeout must be between 0 and 43200 seconds",
            );
        }
    }
    let owner = extension_owner();
    if !lock_queue(args.queue_url) {
        let run_id = record_run(owner, &args, "skipped", None);
        pgrx::notice!(
            "fetch_etl: another session is draining {}; this call (run {run_id}) did nothing",
            crate::sqs::queue_url::for_message(args.queue_url)
        );
        return Summary::default();
    }
    match args.on_error {
        OnError::Raise => run(&args, owner),
        OnError::Record => match in_subxact(AssertUnwindSafe(|| run(&args, owner))) {
            Ok(s) => s,
            Err(e) if is_interrupt(&e) => (*e).rethrow(),
            Err(e) => {
                let why = describe(&e);
                let run_id = record_run(owner, &args, "failed", Some(&why));
                pgrx::warning!("fetch_etl: drain run {run_id} failed and was rolled back: {why}");
                Summary {
                    run_id: Some(run_id),
                    ..Summary::default()
                }
            }
        },
    }
}

/// Takes the queue's advisory lock for this transaction, if free.
fn lock_queue(queue_url: &str) -> bool {
    Spi::get_one_with_args::<bool>(
        "SELECT pg_catalog.pg_try_advisory_xact_lock($1, pg_catalog.hashtext($2))",
        &[LOCK_CLASS.into(), queue_url.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false)
}

fn run(args: &Args<'_>, owner: pg_sys::Oid) -> Summary {
    let started = Instant::now();
    check_encoding();
    let client = aws::client_for(args.queue_url);
    let loader = Loader::new(args.target_table);
    let run_id = start_run(owner, args, &loader.target.sql_name);
    let ctx = Ctx {
        loader,
        client: client.clone(),
        queue_url: args.queue_url,
        run_id,
    };

    let mut summary = Summary {
        run_id: Some(run_id),
        ..Summary::default()
    };
    let (calls, stop_error, active) = receive_loop(&ctx, args, &mut summary, started);

    aws::remember_protocol(&client);
    let error = stop_error.map(|e| client.redact(&e.to_string()));
    finish_run(
        owner,
        &summary,
        calls,
        active.as_secs_f64(),
        &client,
        error.as_deref(),
    );
    let secs = started.elapsed().as_secs_f64();
    let queue = crate::sqs::queue_url::for_message(args.queue_url);
    if let Some(e) = &error {
        pgrx::warning!(
            "fetch_etl: drain run {run_id} stopped early after {} messages: {e}; what was received is stored",
            summary.received
        );
    } else if summary.received > 0 {
        pgrx::log!(
            "fetch_etl: drain run {run_id} of {queue}: received {}, loaded {}, rejected {}, duplicates {} in {secs:.2} s",
            summary.received,
            summary.loaded,
            summary.rejected,
            summary.duplicates
        );
    } else {
        pgrx::debug1!("fetch_etl: drain run {run_id} of {queue}: queue empty");
    }
    summary
}

struct Ctx<'a> {
    loader: Loader,
    client: Arc<Client>,
    queue_url: &'a str,
    run_id: i64,
}

/// Receives through the pump (`sqs::pump`, a task on the backend's runtime)
/// and stores what it brings, `fetch_etl.batch_size` messages at a time,
/// while the pump keeps `fetch_etl.receive_concurrency` calls in flight.
/// Returns the number of calls, the error that stopped receiving early, and
/// the time from `started` until the last message was stored.
fn receive_loop(
    ctx: &Ctx<'_>,
    args: &Args<'_>,
    summary: &mut Summary,
    started: Instant,
) -> (i32, Option<SqsError>, std::time::Duration) {
    let batch_size = guc::BATCH_SIZE.get().max(10) as usize;
    let cfg = PumpConfig {
        max_messages: args.max_messages as u64,
        concurrency: guc::RECEIVE_CONCURRENCY.get().clamp(1, 64) as usize,
        wait_seconds: args.wait_seconds as u32,
        visibility_timeout: args.visibility_timeout.map(|v| v as u32),
    };
    // Room for two batches of replies: the pump waits (backpressure) beyond.
    let (tx, mut rx) = mpsc::channel(batch_size.div_ceil(10) * 2);
    let client = ctx.client.clone();
    let task = runtime::spawn(async move { pump(&*client, cfg, tx).await });

    let mut batch: Vec<Message> = Vec::new();
    let mut stop: Option<SqsError> = None;
    // Time until the last batch was stored: a final empty long poll does not count.
    let mut last_stored = std::time::Duration::ZERO;
    while let Some(event) = runtime::block_on_interruptible(rx.recv()) {
        match event {
            PumpEvent::Messages(msgs) => batch.extend(msgs),
            PumpEvent::Failed {
                error,
                received_before: false,
            } => raise(error.kind(), ctx.client.redact(&error.to_string())),
            PumpEvent::Failed { error, .. } => stop = Some(error),
        }
        if batch.len() >= batch_size {
            store_batch(ctx, std::mem::take(&mut batch), summary);
            last_stored = started.elapsed();
        }
    }
    let stats = task.join();
    if !batch.is_empty() {
        store_batch(ctx, batch, summary);
        last_stored = started.elapsed();
    }
    let flushing = Instant::now();
    Spi::connect_mut(|client| ctx.loader.flush_vault(client));
    (stats.calls as i32, stop, last_stored + flushing.elapsed())
}

fn store_batch(ctx: &Ctx<'_>, msgs: Vec<Message>, summary: &mut Summary) {
    let handles: Vec<String> = msgs.iter().map(|m| m.receipt_handle.clone()).collect();
    store_messages(&ctx.loader, ctx.run_id, ctx.queue_url, &msgs, summary);
    deletes::after_commit(ctx.client.clone(), handles);
}

/// Stores received messages: ledger, validation, masking, inserts, vault,
/// dead letters. Deleting them from SQS is the caller's business.
fn store_messages(
    loader: &Loader,
    run_id: i64,
    queue_url: &str,
    msgs: &[Message],
    summary: &mut Summary,
) {
    summary.received += msgs.len() as i64;
    // The same message twice in one batch (redelivered while we worked): keep the first.
    let mut seen = HashSet::with_capacity(msgs.len());
    let mut unique: Vec<&Message> = Vec::with_capacity(msgs.len());
    for m in msgs {
        if seen.insert(m.message_id.as_str()) {
            unique.push(m);
        } else {
            summary.duplicates += 1;
        }
    }
    Spi::connect_mut(|client| {
        let ids: Vec<&str> = unique.iter().map(|m| m.message_id.as_str()).collect();
        let new_ids: HashSet<String> = loader
            .record_ids(client, &ids, run_id)
            .into_iter()
            .collect();
        let fresh: Vec<&Message> = unique
            .iter()
            .copied()
            .filter(|m| new_ids.contains(&m.message_id))
            .collect();
        summary.duplicates += (unique.len() - fresh.len()) as i64;

        let outcome = loader.load(client, &fresh);
        summary.loaded += outcome.loaded.len() as i64;
        summary.rejected += outcome.refused.len() as i64;
        loader.insert_dead_letters(client, run_id, queue_url, &fresh, &outcome.refused);
    });
}

/// The in-database part of a drain alone, for scripts/bench: stores `bodies`
/// as if just received (fresh message ids, sent now), in batches of
/// fetch_etl.batch_size, and returns how many rows were loaded. Not part of
/// the SQL API: the benchmark declares it in its own database.
pub fn bench_store(bodies: Vec<String>, target_table: &str) -> i64 {
    let loader = Loader::new(target_table);
    let batch = guc::BATCH_SIZE.get().max(10) as usize;
    let tag = crate::pgutil::now_ms();
    let mut summary = Summary::default();
    for (k, chunk) in bodies.chunks(batch).enumerate() {
        let msgs: Vec<Message> = chunk
            .iter()
            .enumerate()
            .map(|(i, b)| Message {
                message_id: format!("bench-{tag}-{k}-{i}"),
                receipt_handle: String::new(),
                body: b.clone(),
                sent_timestamp_ms: Some(tag),
                receive_count: Some(1),
            })
            .collect();
        store_messages(&loader, -1, "bench", &msgs, &mut summary);
    }
    Spi::connect_mut(|client| loader.flush_vault(client));
    summary.loaded
}

fn start_run(owner: pg_sys::Oid, args: &Args<'_>, target: &str) -> i64 {
    Spi::connect_mut(|client| {
        as_owner(owner, || {
            client
                .update(
                    "INSERT INTO fetch_etl.drain_runs (queue_url, target_table, max_messages, wait_seconds) \
                     VALUES ($1, $2, $3, $4) RETURNING run_id",
                    None,
                    &[args.queue_url.into(), target.into(), args.max_messages.into(), args.wait_seconds.into()],
                )
                .and_then(|t| t.first().get_one::<i64>())
        })
    })
    .ok()
    .flatten()
    .unwrap_or_else(|| raise(ErrorKind::Internal, "could not record the drain run"))
}

/// A run that did no work: skipped (queue busy) or failed (rolled back).
fn record_run(owner: pg_sys::Oid, args: &Args<'_>, status: &str, error: Option<&str>) -> i64 {
    Spi::connect_mut(|client| {
        as_owner(owner, || {
            client
                .update(
                    "INSERT INTO fetch_etl.drain_runs \
                       (queue_url, target_table, max_messages, wait_seconds, finished_at, status, error) \
                     VALUES ($1, $2, $3, $4, pg_catalog.clock_timestamp(), $5, $6) RETURNING run_id",
                    None,
                    &[
                        args.queue_url.into(),
                        args.target_table.into(),
                        args.max_messages.into(),
                        args.wait_seconds.into(),
                        status.into(),
                        error.map(str::to_string).into(),
                    ],
                )
                .and_then(|t| t.first().get_one::<i64>())
        })
    })
    .ok()
    .flatten()
    .unwrap_or_else(|| raise(ErrorKind::Internal, "could not record the drain run"))
}

fn finish_run(
    owner: pg_sys::Oid,
    s: &Summary,
    calls: i32,
    active_seconds: f64,
    client: &Client,
    error: Option<&str>,
) {
    Spi::connect_mut(|spi| {
        as_owner(owner, || {
            spi.update(
                "UPDATE fetch_etl.drain_runs SET finished_at = pg_catalog.clock_timestamp(), \
                   status = CASE WHEN $7::pg_catalog.text IS NULL THEN 'ok' ELSE 'partial' END, \
                   received = $2, loaded = $3, rejected = $4, duplicates = $5, receive_calls = $6, \
                   error = $7, protocol = $8, active_seconds = $9 \
                 WHERE run_id = $1",
                None,
                &[
                    s.run_id.into(),
                    s.received.into(),
                    s.loaded.into(),
                    s.rejected.into(),
                    s.duplicates.into(),
                    calls.into(),
                    error.map(str::to_string).into(),
                    client.protocol().map(|p| p.as_str().to_string()).into(),
                    active_seconds.into(),
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

/// sqs_drain stores the UTF-8 text SQS delivers: the database must be UTF8
/// (or SQL_ASCII, which stores bytes as they come).
fn check_encoding() {
    // SAFETY: reads the database encoding.
    let enc = unsafe { pg_sys::GetDatabaseEncoding() };
    if enc != pg_sys::pg_enc::PG_UTF8 as i32 && enc != pg_sys::pg_enc::PG_SQL_ASCII as i32 {
        raise(
            ErrorKind::NotInPrerequisiteState,
            "fetch_etl.sqs_drain needs a UTF8 database",
        );
    }
}

/// GetQueueAttributes: (visible, in flight, delayed) messages.
pub fn queue_depth(queue_url: &str) -> (i64, i64, i64) {
    let client = aws::client_for(queue_url);
    let names = [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    ];
    let attrs = runtime::block_on_interruptible(client.queue_attributes(&names))
        .unwrap_or_else(|e| raise(e.kind(), client.redact(&e.to_string())));
    aws::remember_protocol(&client);
    let get = |n: &str| {
        attrs
            .get(n)
            .and_then(|v| v.trim().parse::<i64>().ok())
            .unwrap_or(0)
    };
    (get(names[0]), get(names[1]), get(names[2]))
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;
    use crate::sqs::client::ClientConfig;
    use crate::sqs::{Credentials, QueueRef};

    #[pg_test]
    fn target_is_created_with_the_exercise_ddl() {
        let t = crate::target::resolve("pgtest_logins");
        assert_eq!(t.sql_name, "public.pgtest_logins");
        assert!(t.app_version_is_int);
        assert_eq!(t.limits.user_id_chars, Some(128));
        assert_eq!(t.limits.device_type_chars, Some(32));
        let cols = Spi::get_one::<String>(
            "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum) \
             FROM pg_attribute WHERE attrelid = 'public.pgtest_logins'::regclass AND attnum > 0",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            cols,
            "user_id character varying(128), device_type character varying(32), masked_ip character varying(256), \
             masked_device_id character varying(256), locale character varying(32), app_version integer, create_date date"
        );
        // not an extension member: DROP EXTENSION must not drop user data
        let member = Spi::get_one::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_depend WHERE objid = 'public.pgtest_logins'::regclass AND deptype = 'e')",
        )
        .unwrap();
        assert_eq!(member, Some(false));
    }

    #[pg_test]
    fn rolled_back_subtransaction_forgets_its_deletes() {
        let queue = QueueRef::parse("http://127.0.0.1:9/000000000000/q", None).unwrap();
        let creds = Credentials {
            access_key_id: "k".into(),
            secret_access_key: "s".into(),
            session_token: None,
        };
        let client = Arc::new(Client::new(
            runtime::http().unwrap(),
            ClientConfig::default(),
            creds,
            "us-east-1".into(),
            queue,
            None,
        ));
        deletes::after_commit(client.clone(), vec!["kept".into()]);
        let r = in_subxact(AssertUnwindSafe(|| {
            deletes::after_commit(client.clone(), vec!["dropped-1".into(), "dropped-2".into()]);
            Spi::run("SELECT 1/0")
        }));
        assert!(r.is_err());
        assert_eq!(deletes::pending_count(), 1);
        // the test transaction is rolled back by the framework: nothing is sent
    }

    /// The lock is the documented advisory lock (two sessions: see the e2e tests).
    #[pg_test]
    fn queue_lock_is_the_documented_advisory_lock() {
        assert!(lock_queue("http://localhost:1/000000000000/q"));
        let held = Spi::get_one::<i64>(&format!(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = {LOCK_CLASS}::oid \
             AND objid = hashtext('http://localhost:1/000000000000/q')::oid AND pid = pg_backend_pid()"
        ))
        .unwrap();
        assert_eq!(held, Some(1));
    }
}
