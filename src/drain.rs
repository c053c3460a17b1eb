//! `fetch_etl.sqs_drain`: receive login events from SQS, store them, and have
//! the messages deleted once the transaction commits.
//!
//! Per batch of received messages, in the caller's transaction (`store/`):
//! 1. each message is opened, routed and made into its pipeline's rows (or
//!    refused), and gets its ledger key (its id, or its pipeline's
//!    idempotency key);
//! 2. the ledger (`fetch_etl.processed_messages`) takes every new key; keys
//!    already there (earlier runs, concurrent drains, redeliveries) are
//!    duplicates and are only deleted;
//! 3. new messages' rows are inserted, their raw PII vaulted; refused ones
//!    become dead letters;
//! 4. every receipt handle is queued for deletion after COMMIT (`deletes.rs`).
//!
//! From receipt to the end of the transaction, the visibility heartbeat
//! (`visibility.rs`) keeps the messages hidden from other consumers, and on a
//! rollback may hand them back at once.
//!
//! One drain per queue at a time: the queue's row in fetch_etl.queue_locks,
//! locked as the owner until commit (`postgres/locks.rs`); a drain that
//! finds it taken returns at once.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use pgrx::pg_sys;
use pgrx::prelude::*;
use tokio::sync::mpsc;

use fetch_etl_core::budget::{MAX_PENDING_DELETE_BYTES, PUMP_HIGH_WATER, STORE_FLUSH_BYTES};
use fetch_etl_core::contract::{OnError, Phase, RunKind};
use fetch_etl_core::error::{Classified, ErrorKind};
use fetch_etl_core::failed_run::FailedRun;
use fetch_etl_sqs::pump::{pump, Held, OnReceive, Outstanding, PumpConfig, PumpEvent};
use fetch_etl_sqs::queue_url::for_message;
use fetch_etl_sqs::{Client, Message, QueueRef, SqsError};

use crate::postgres::error::{raise, OrRaise};
use crate::postgres::runs::{self, Counts, Finished, RunRequest};
use crate::postgres::spi::{extension_owner, in_subxact};
use crate::postgres::store::Store;
use crate::postgres::{
    aws, deletes, locks, pipelines, progress, recorder, runtime, settings, visibility,
};

/// What a call returns; `run_id` is None when the call was skipped.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Summary {
    pub(crate) run_id: Option<i64>,
    pub(crate) counts: Counts,
}

pub(crate) struct Args<'a> {
    pub(crate) queue_url: &'a str,
    pub(crate) max_messages: i32,
    pub(crate) wait_seconds: i32,
    pub(crate) target_table: &'a str,
    pub(crate) visibility_timeout: Option<i32>,
    pub(crate) on_error: OnError,
    /// The pipeline or router (None: the built-in login pipeline).
    pub(crate) pipeline: Option<&'a str>,
}

impl Args<'_> {
    /// The run record's request, naming the target as given or as resolved.
    fn request<'a>(&'a self, target: &'a str) -> RunRequest<'a> {
        RunRequest {
            queue_url: self.queue_url,
            target_table: target,
            max_messages: self.max_messages,
            wait_seconds: self.wait_seconds,
            pipeline: self.pipeline,
        }
    }
}

/// Runs the drain in a subtransaction, so that whatever fails in it, from
/// its arguments on, is recorded as a failed run: `on_error => 'record'`
/// records it in the caller's transaction and returns; otherwise (and for a
/// cancel or timeout) the recorder writes it outside the transaction that
/// is about to roll back (`postgres/recorder.rs`; at most 2 at a time per
/// database) and the error is raised as it was. A shutdown (57P01...) goes
/// unrecorded.
pub(crate) fn drain(args: Args<'_>) -> Summary {
    let owner = extension_owner();
    let result = in_subxact(AssertUnwindSafe(|| {
        let queue = checked_queue(&args);
        locked_run(&args, owner, queue)
    }));
    match result {
        Ok(s) => s,
        Err(e) if e.is_shutdown() => e.rethrow(),
        Err(e) => {
            // A URL refused for carrying a password is recorded without it
            // (as an error message shows it); any other, as given.
            let queue_url = if args.queue_url.contains('@') {
                for_message(args.queue_url)
            } else {
                args.queue_url.to_string()
            };
            let failed = FailedRun {
                queue_url,
                target_table: args.target_table.to_string(),
                max_messages: args.max_messages,
                wait_seconds: args.wait_seconds,
                pipeline: args.pipeline.map(str::to_string),
                error: e.describe(),
                run_by: String::new(),
            }
            .bounded();
            if args.on_error == OnError::Record && !e.is_interrupt() {
                let run_id = runs::record_failed(owner, &failed, None);
                pgrx::warning!(
                    "fetch_etl: drain run {run_id} failed and was rolled back: {}",
                    failed.error
                );
                return Summary {
                    run_id: Some(run_id),
                    ..Summary::default()
                };
            }
            recorder::record_failed(owner, failed);
            e.rethrow()
        }
    }
}

/// The arguments in range and the queue URL one requests may go to.
fn checked_queue(args: &Args<'_>) -> QueueRef {
    fetch_etl_core::args::check_drain(
        args.max_messages,
        args.wait_seconds,
        args.visibility_timeout,
    )
    .or_raise();
    aws::checked_queue(args.queue_url)
}

/// `run`, or a skipped run when another session holds the queue. (Where
/// requests would go was checked before the queue is locked: a refused URL
/// leaves no lock row behind.)
fn locked_run(args: &Args<'_>, owner: pg_sys::Oid, queue: QueueRef) -> Summary {
    if !locks::try_lock_queue(owner, &queue.lock_key) {
        let run_id = runs::record_skipped(owner, &args.request(args.target_table));
        pgrx::notice!(
            "fetch_etl: another session is draining {}; this call (run {run_id}) did nothing",
            for_message(args.queue_url)
        );
        return Summary::default();
    }
    run(args, owner, queue)
}

fn run(args: &Args<'_>, owner: pg_sys::Oid, queue: QueueRef) -> Summary {
    let started = Instant::now();
    check_encoding();
    let loaded = pipelines::load(args.pipeline, args.target_table);
    let store = Store::open(loaded.pipelines, &loaded.targets, owner);
    let (client, credentials) = aws::client(queue, store.wants_message_attributes());
    let targets = store.target_names();
    let run_id = runs::start(owner, &args.request(&targets), &credentials);
    let mut ctx = Ctx {
        store,
        client: client.clone(),
        queue_url: args.queue_url,
        run_id,
        holds: visibility::for_drain(&client, args.visibility_timeout),
        progress: progress::begin(RunKind::Drain, Phase::Receiving, run_id, args.queue_url),
    };

    let mut summary = Summary {
        run_id: Some(run_id),
        ..Summary::default()
    };
    let (calls, stop_error, active) = receive_loop(&mut ctx, args, &mut summary, started);

    aws::remember_protocol(&client);
    let error = stop_error.map(|e| client.redact(&e.to_string()));
    let finished = Finished {
        counts: summary.counts,
        receive_calls: calls,
        active_seconds: active.as_secs_f64(),
        protocol: client.protocol().map(|p| p.as_str()),
        error: error.as_deref(),
    };
    runs::finish(owner, run_id, &finished);
    ctx.progress
        .update(Phase::Committing, Some(shown(&summary.counts)));
    let secs = started.elapsed().as_secs_f64();
    let queue = for_message(args.queue_url);
    if let Some(e) = &error {
        pgrx::warning!(
            "fetch_etl: drain run {run_id} stopped early after {} messages: {e}; what was received is stored",
            summary.counts.received
        );
    } else if summary.counts.received > 0 {
        if summary.counts.received_again > 0 {
            pgrx::debug1!(
                "fetch_etl: drain run {run_id} received {} messages again while it held them (their visibility timeout had lapsed)",
                summary.counts.received_again
            );
        }
        pgrx::log!(
            "fetch_etl: drain run {run_id} of {queue}: received {}, loaded {}, rejected {}, duplicates {} in {secs:.2} s",
            summary.counts.received,
            summary.counts.loaded,
            summary.counts.rejected,
            summary.counts.duplicates
        );
    } else {
        pgrx::debug1!("fetch_etl: drain run {run_id} of {queue}: queue empty");
    }
    summary
}

struct Ctx<'a> {
    store: Store,
    client: Arc<Client>,
    queue_url: &'a str,
    run_id: i64,
    /// Received messages the heartbeat keeps hidden until the transaction ends.
    holds: Option<visibility::Holds>,
    /// The run as `fetch_etl.drain_progress()` shows it.
    progress: progress::Tracked,
}

/// Counts as `drain_progress()` shows them.
fn shown(c: &Counts) -> [i64; 4] {
    [c.received, c.loaded, c.rejected, c.duplicates]
}

/// Receives through the pump (`sqs::pump`, a task on the backend's runtime)
/// and stores what it brings, `fetch_etl.batch_size` messages or
/// STORE_FLUSH_BYTES at a time, while the pump keeps
/// `fetch_etl.receive_concurrency` calls in flight (see `budget.rs` for the
/// memory this bounds).
/// Returns the number of calls, the error that stopped receiving early, and
/// the time from `started` until the last message was stored.
fn receive_loop(
    ctx: &mut Ctx<'_>,
    args: &Args<'_>,
    summary: &mut Summary,
    started: Instant,
) -> (i32, Option<SqsError>, std::time::Duration) {
    let batch_size = settings::batch_size();
    let cfg = PumpConfig {
        max_messages: args.max_messages as u64,
        concurrency: settings::receive_concurrency(),
        wait_seconds: args.wait_seconds as u32,
        visibility_timeout: args.visibility_timeout.map(|v| v as u32),
        high_water: PUMP_HIGH_WATER,
    };
    // Room for two batches of replies: the pump waits (backpressure) beyond,
    // and its high-water mark bounds the bytes.
    let (tx, mut rx) = mpsc::channel(batch_size.div_ceil(10) * 2);
    let client = ctx.client.clone();
    let outstanding: Arc<Outstanding> = Arc::default();
    let o = outstanding.clone();
    // Each reply's messages are held by the heartbeat as soon as it arrives.
    let on_receive: Box<OnReceive> = match &ctx.holds {
        Some(holds) => Box::new(holds.on_receive()),
        None => Box::new(|_, _| {}),
    };
    let task = runtime::spawn(async move { pump(&*client, cfg, o, tx, &*on_receive).await });

    let mut batch: Vec<Message> = Vec::new();
    let mut held = Held::default();
    let mut stop: Option<SqsError> = None;
    // Time until the last batch was stored: a final empty long poll does not count.
    let mut last_stored = std::time::Duration::ZERO;
    while let Some(event) = runtime::block_on_interruptible(rx.recv()) {
        match event {
            PumpEvent::Messages(msgs, h) => {
                batch.extend(msgs);
                held.absorb(h);
            }
            PumpEvent::Failed {
                error,
                received_before: false,
            } => raise(error.kind(), ctx.client.redact(&error.to_string())),
            PumpEvent::Failed { error, .. } => stop = Some(error),
        }
        if batch.len() >= batch_size || held.bytes() >= STORE_FLUSH_BYTES {
            store_batch(ctx, std::mem::take(&mut batch), summary);
            // Stored: the pump may receive that much again.
            held = Held::default();
            last_stored = started.elapsed();
            if deletes::pending_bytes() >= MAX_PENDING_DELETE_BYTES
                || ctx.holds.as_ref().is_some_and(|h| h.full())
            {
                pgrx::notice!(
                    "fetch_etl: drain run {} stops after {} messages: one transaction may hold at most {} MiB of receipt handles; commit and drain again",
                    ctx.run_id,
                    summary.counts.received,
                    MAX_PENDING_DELETE_BYTES >> 20
                );
                break; // dropping the receiver ends the pump
            }
        }
    }
    drop(rx);
    let stats = task.join();
    if !batch.is_empty() {
        store_batch(ctx, batch, summary);
        last_stored = started.elapsed();
    }
    drop(held);
    let flushing = Instant::now();
    Spi::connect_mut(|client| ctx.store.flush_vault(client));
    (stats.calls as i32, stop, last_stored + flushing.elapsed())
}

fn store_batch(ctx: &mut Ctx<'_>, msgs: Vec<Message>, summary: &mut Summary) {
    ctx.progress.update(Phase::Storing, None);
    let deferred = Spi::connect_mut(|client| {
        ctx.store.store(
            client,
            ctx.run_id,
            ctx.queue_url,
            &msgs,
            &mut summary.counts,
        )
    });
    // Every stored message is deleted after COMMIT (with every receipt
    // handle this drain got for it: SQS honours only the newest); a
    // deferred one stays.
    if let Some(holds) = &ctx.holds {
        holds.forget(&deferred);
    }
    let handles: Vec<String> = msgs
        .iter()
        .filter(|m| !deferred.contains(&m.message_id))
        .map(|m| m.receipt_handle.clone())
        .collect();
    deletes::after_commit(ctx.client.clone(), handles);
    ctx.progress
        .update(Phase::Receiving, Some(shown(&summary.counts)));
}

/// The in-database part of a drain alone, for scripts/bench: stores `bodies`
/// as if just received (fresh message ids, sent now), in batches of
/// fetch_etl.batch_size, and returns how many rows were loaded.
#[cfg(feature = "bench-tools")]
pub(crate) fn bench_store(bodies: Vec<String>, target_table: &str) -> i64 {
    let loaded = pipelines::load(None, target_table);
    let mut store = Store::open(loaded.pipelines, &loaded.targets, extension_owner());
    let batch = settings::batch_size();
    let tag = fetch_etl_core::time::now_ms();
    let mut counts = Counts::default();
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
                ..Message::default()
            })
            .collect();
        Spi::connect_mut(|client| store.store(client, -1, "bench", &msgs, &mut counts));
    }
    Spi::connect_mut(|client| store.flush_vault(client));
    counts.loaded
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
pub(crate) fn queue_depth(queue_url: &str) -> (i64, i64, i64) {
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
    use fetch_etl_core::pipeline::plan::{ArrayKind, TypeKind};
    use fetch_etl_sqs::{ClientConfig, Credentials};

    #[pg_test]
    fn target_is_created_with_the_exercise_ddl() {
        let loaded = crate::postgres::pipelines::load(None, "pgtest_logins");
        let plan = &loaded.pipelines.plans[0];
        assert_eq!(plan.target, "public.pgtest_logins");
        let col = |n: &str| plan.columns.iter().find(|c| c.target.name == n).unwrap();
        assert_eq!(col("app_version").array, ArrayKind::Int8);
        assert_eq!(
            col("user_id").target.kind,
            TypeKind::Text {
                max_chars: Some(128)
            }
        );
        assert_eq!(
            col("device_type").target.kind,
            TypeKind::Text {
                max_chars: Some(32)
            }
        );
        assert_eq!(col("create_date").target.cast_to, "pg_catalog.date");
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
            runtime::transport().unwrap(),
            ClientConfig::default(),
            Arc::new(creds),
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

    /// The lock is a row of fetch_etl.queue_locks, held by this transaction.
    #[pg_test]
    fn queue_lock_is_a_row_the_owner_locks() {
        let owner = extension_owner();
        let key = QueueRef::parse("http://localhost:1/000000000000/q", None)
            .unwrap()
            .lock_key;
        assert!(locks::try_lock_queue(owner, &key));
        // taking it again in the same transaction succeeds (it is ours)
        assert!(locks::try_lock_queue(owner, &key));
        let rows = Spi::get_one::<i64>("SELECT count(*) FROM fetch_etl.queue_locks").unwrap();
        assert_eq!(rows, Some(1));
        // no advisory lock is involved any more
        let advisory = Spi::get_one::<i64>(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
        )
        .unwrap();
        assert_eq!(advisory, Some(0));
    }
}
