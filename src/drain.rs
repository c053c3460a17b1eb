//! `fetch_etl.sqs_drain`: receive login events from SQS, validate and mask
//! them, store rows or dead letters, and have the messages deleted once the
//! transaction commits.
//!
//! Per batch of received messages, in the caller's transaction:
//! 1. the ledger (`fetch_etl.processed_messages`) takes every new message id;
//!    ids already there (earlier runs, concurrent drains, redeliveries) are
//!    duplicates and are only deleted;
//! 2. each new message is parsed and validated (`event.rs`); valid ones are
//!    masked and inserted into the target table in one statement; if that
//!    statement fails on a data error, rows are retried one by one, each in a
//!    subtransaction, and rows the table refuses become dead letters;
//! 3. raw PII goes to the vault, rejects to `fetch_etl.dead_letters`;
//! 4. every receipt handle is queued for deletion after COMMIT (`deletes.rs`).
//!
//! Writes to fetch_etl's own tables run as the extension owner; the target
//! table is written as the calling role, under its own privileges.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::ffi::CStr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use pgrx::pg_sys;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::errors::ErrorKind;
use crate::event::{self, AppVersion, Limits};
use crate::mask::Masker;
use crate::pgerr::{raise, raise_with_hint, OrRaise};
use crate::sqs::client::ClientConfig;
use crate::sqs::{Client, Credentials, Message, Protocol, QueueRef, SqsError};
use crate::{deletes, guc, keystore, runtime, target};

/// What a call returns (and drain_runs records).
#[derive(Debug, Default, Clone, Copy)]
pub struct Summary {
    pub run_id: i64,
    pub received: i64,
    pub loaded: i64,
    pub rejected: i64,
    pub duplicates: i64,
}

pub struct Args<'a> {
    pub queue_url: &'a str,
    pub max_messages: i32,
    pub wait_seconds: i32,
    pub target_table: &'a str,
    pub visibility_timeout: Option<i32>,
}

thread_local! {
    /// Protocol detected per endpoint, remembered for the backend's lifetime.
    static KNOWN_PROTOCOLS: RefCell<HashMap<String, Protocol>> = RefCell::new(HashMap::new());
}

pub fn drain(args: Args<'_>) -> Summary {
    let started = Instant::now();
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
    check_encoding();
    let queue = QueueRef::parse(args.queue_url, endpoint_override().as_deref()).or_raise();
    let creds = credentials();
    let region = region_for(&queue);
    let target = target::resolve(args.target_table);
    let masker = keystore::with_masker(|m| m.clone());
    let owner = extension_owner();

    let cfg = ClientConfig {
        protocol: guc::SQS_PROTOCOL.get().choice(),
        request_timeout: Duration::from_millis(guc::HTTP_TIMEOUT_MS.get() as u64),
        max_attempts: guc::HTTP_MAX_ATTEMPTS.get() as u32,
        ..ClientConfig::default()
    };
    let endpoint_key = queue.endpoint.as_str().to_string();
    let known = KNOWN_PROTOCOLS.with(|k| k.borrow().get(&endpoint_key).copied());
    let client = Arc::new(Client::new(
        runtime::http().or_raise(),
        cfg,
        creds,
        region,
        queue,
        known,
    ));

    let ctx = Ctx {
        owner,
        client: client.clone(),
        masker,
        limits: Limits {
            max_body_bytes: guc::MAX_BODY_BYTES.get() as usize,
            ..target.limits.clone()
        },
        target,
        queue_url: args.queue_url.to_string(),
        run_id: 0,
    };
    let run_id = start_run(&ctx, &args);
    let ctx = Ctx { run_id, ..ctx };

    let mut summary = Summary {
        run_id,
        ..Summary::default()
    };
    let (calls, stop_error) = receive_loop(&ctx, &args, &mut summary);

    if let Some(p) = client.protocol() {
        KNOWN_PROTOCOLS.with(|k| k.borrow_mut().insert(endpoint_key, p));
    }
    let error = stop_error.map(|e| client.redact(&e.to_string()));
    finish_run(&ctx, &summary, calls, client.protocol(), error.as_deref());
    let secs = started.elapsed().as_secs_f64();
    if let Some(e) = &error {
        pgrx::warning!(
            "fetch_etl: drain run {run_id} stopped early after {} messages: {e}; what was received is stored",
            summary.received
        );
    } else if summary.received > 0 {
        pgrx::log!(
            "fetch_etl: drain run {run_id} of {}: received {}, loaded {}, rejected {}, duplicates {} in {secs:.2} s",
            ctx.queue_url,
            summary.received,
            summary.loaded,
            summary.rejected,
            summary.duplicates
        );
    } else {
        pgrx::debug1!(
            "fetch_etl: drain run {run_id} of {}: queue empty",
            ctx.queue_url
        );
    }
    summary
}

struct Ctx {
    owner: pg_sys::Oid,
    client: Arc<Client>,
    masker: Masker,
    limits: Limits,
    target: target::Target,
    queue_url: String,
    run_id: i64,
}

type ReceiveFuture<'a> =
    Pin<Box<dyn std::future::Future<Output = (u32, bool, Result<Vec<Message>, SqsError>)> + 'a>>;

/// Keeps `fetch_etl.receive_concurrency` ReceiveMessage calls in flight until
/// `max_messages` are received or the queue looks empty (after one long poll
/// of `wait_seconds`, if asked). Returns the number of calls and the error
/// that stopped it early, if any.
fn receive_loop(ctx: &Ctx, args: &Args<'_>, summary: &mut Summary) -> (i32, Option<SqsError>) {
    let max = args.max_messages as i64;
    let concurrency = guc::RECEIVE_CONCURRENCY.get().clamp(1, 64) as usize;
    let batch_size = guc::BATCH_SIZE.get().max(10) as usize;
    let visibility = args.visibility_timeout.map(|v| v as u32);
    let client = &*ctx.client;

    let mut inflight: FuturesUnordered<ReceiveFuture<'_>> = FuturesUnordered::new();
    let mut requested: i64 = 0; // messages asked for by calls in flight
    let mut received: i64 = 0;
    let mut looks_empty = false;
    let mut long_polled = false;
    let mut calls = 0;
    let mut stop: Option<SqsError> = None;
    let mut batch: Vec<Message> = Vec::new();

    loop {
        while stop.is_none()
            && !looks_empty
            && inflight.len() < concurrency
            && received + requested < max
        {
            let n = (max - received - requested).min(10) as u32;
            requested += n as i64;
            inflight.push(Box::pin(async move {
                (n, false, client.receive(n, 0, visibility).await)
            }));
        }
        if inflight.is_empty() {
            let may_long_poll = looks_empty
                && !long_polled
                && args.wait_seconds > 0
                && received < max
                && stop.is_none();
            if !may_long_poll {
                break;
            }
            long_polled = true;
            let n = (max - received).min(10) as u32;
            let wait = args.wait_seconds as u32;
            requested += n as i64;
            inflight.push(Box::pin(async move {
                (n, true, client.receive(n, wait, visibility).await)
            }));
        }
        let (n, was_long_poll, result) =
            runtime::block_on_interruptible(inflight.next()).expect("a call is in flight");
        requested -= n as i64;
        calls += 1;
        match result {
            Ok(msgs) if msgs.is_empty() => looks_empty = true,
            Ok(msgs) => {
                if was_long_poll {
                    // Messages arrived while we waited: go back to short polling.
                    looks_empty = false;
                    long_polled = false;
                }
                received += msgs.len() as i64;
                batch.extend(msgs);
            }
            Err(e) if received == 0 && stop.is_none() => {
                drop(inflight);
                raise(e_kind(&e), client.redact(&e.to_string()));
            }
            Err(e) => {
                stop.get_or_insert(e);
            }
        }
        if batch.len() >= batch_size {
            store_batch(ctx, std::mem::take(&mut batch), summary);
        }
    }
    if !batch.is_empty() {
        store_batch(ctx, batch, summary);
    }
    (calls, stop)
}

fn e_kind(e: &SqsError) -> ErrorKind {
    crate::errors::Classified::kind(e)
}

/// Column arrays for one INSERT ... SELECT FROM unnest(...).
#[derive(Default)]
struct Rows {
    user_id: Vec<Option<String>>,
    device_type: Vec<Option<String>>,
    masked_ip: Vec<Option<String>>,
    masked_device_id: Vec<Option<String>>,
    locale: Vec<Option<String>>,
    app_version_int: Vec<Option<i64>>,
    app_version_text: Vec<Option<String>>,
    create_date: Vec<Option<String>>,
    /// Index into the batch's messages, and (mask, raw) pairs for the vault.
    source: Vec<(usize, Vec<(String, String)>)>,
}

impl Rows {
    fn push(&mut self, idx: usize, m: &Message, e: event::LoginEvent, masker: &Masker) {
        let mut vault = Vec::with_capacity(2);
        let mut mask = |raw: Option<String>| {
            raw.map(|r| {
                let masked = masker.mask(r.as_bytes());
                vault.push((masked.clone(), r));
                masked
            })
        };
        let masked_ip = mask(e.ip);
        let masked_device_id = mask(e.device_id);
        self.user_id.push(Some(e.user_id));
        self.device_type.push(e.device_type);
        self.masked_ip.push(masked_ip);
        self.masked_device_id.push(masked_device_id);
        self.locale.push(e.locale);
        match e.app_version {
            AppVersion::Int(v) => self.app_version_int.push(v),
            AppVersion::Text(v) => self.app_version_text.push(v),
        }
        let ms = m.sent_timestamp_ms.unwrap_or_else(now_ms);
        self.create_date.push(Some(event::utc_date(ms)));
        self.source.push((idx, vault));
    }

    fn len(&self) -> usize {
        self.user_id.len()
    }

    /// The seven statement arguments for rows `range`.
    fn args(
        &self,
        range: std::ops::Range<usize>,
        int_version: bool,
    ) -> Vec<pgrx::datum::DatumWithOid<'static>> {
        let s = |v: &Vec<Option<String>>| v[range.clone()].to_vec();
        let version = if int_version {
            self.app_version_int[range.clone()].to_vec().into()
        } else {
            s(&self.app_version_text).into()
        };
        vec![
            s(&self.user_id).into(),
            s(&self.device_type).into(),
            s(&self.masked_ip).into(),
            s(&self.masked_device_id).into(),
            s(&self.locale).into(),
            version,
            s(&self.create_date).into(),
        ]
    }
}

/// Dead letters of one batch.
#[derive(Default)]
struct DeadLetters {
    message_id: Vec<String>,
    body: Vec<String>,
    reason_code: Vec<String>,
    reason: Vec<String>,
    sent_ms: Vec<Option<i64>>,
    receive_count: Vec<Option<i32>>,
}

impl DeadLetters {
    fn push(&mut self, m: &Message, code: &str, reason: String) {
        self.message_id.push(m.message_id.clone());
        // PostgreSQL text cannot hold NUL; SQS bodies cannot contain it either,
        // but never let one break the batch.
        self.body.push(m.body.replace('\0', "\u{FFFD}"));
        self.reason_code.push(code.to_string());
        self.reason.push(reason);
        self.sent_ms.push(m.sent_timestamp_ms);
        self.receive_count.push(m.receive_count);
    }
}

fn store_batch(ctx: &Ctx, msgs: Vec<Message>, summary: &mut Summary) {
    summary.received += msgs.len() as i64;
    let handles: Vec<String> = msgs.iter().map(|m| m.receipt_handle.clone()).collect();

    // The same message twice in one batch (redelivered while we worked): keep the first.
    let mut seen = HashSet::with_capacity(msgs.len());
    let mut unique: Vec<Message> = Vec::with_capacity(msgs.len());
    for m in msgs {
        if seen.insert(m.message_id.clone()) {
            unique.push(m);
        } else {
            summary.duplicates += 1;
        }
    }

    Spi::connect_mut(|client| {
        let ids: Vec<String> = unique.iter().map(|m| m.message_id.clone()).collect();
        let new_ids: HashSet<String> = as_owner(ctx.owner, || {
            let table = client
                .update(
                    "INSERT INTO fetch_etl.processed_messages (message_id, run_id) \
                     SELECT pg_catalog.unnest($1::pg_catalog.text[]), $2 \
                     ON CONFLICT (message_id) DO NOTHING RETURNING message_id",
                    None,
                    &[ids.into(), ctx.run_id.into()],
                )
                .unwrap_or_else(|e| raise(ErrorKind::Internal, format!("ledger: {e}")));
            table
                .filter_map(|row| row.get::<String>(1).ok().flatten())
                .collect()
        });

        let mut rows = Rows::default();
        let mut dead = DeadLetters::default();
        for (i, m) in unique.iter().enumerate() {
            if !new_ids.contains(&m.message_id) {
                summary.duplicates += 1;
                continue;
            }
            match event::parse_login(&m.body, &ctx.limits) {
                Ok(e) => rows.push(i, m, e, &ctx.masker),
                Err(r) => dead.push(m, r.code, r.to_string()),
            }
        }

        let refused = insert_rows(client, ctx, &rows);
        let mut vault: Vec<(String, String)> = Vec::new();
        for (k, (idx, pairs)) in rows.source.iter().enumerate() {
            match refused.iter().find(|(r, _)| *r == k) {
                Some((_, why)) => dead.push(
                    &unique[*idx],
                    "rejected_by_table",
                    format!("rejected_by_table: {why}"),
                ),
                None => vault.extend(pairs.iter().cloned()),
            }
        }
        summary.loaded += (rows.len() - refused.len()) as i64;
        summary.rejected += dead.message_id.len() as i64;

        as_owner(ctx.owner, || {
            if !vault.is_empty() {
                vault.sort();
                vault.dedup();
                let (masked, raw): (Vec<String>, Vec<String>) = vault.into_iter().unzip();
                client
                    .update(
                        "INSERT INTO fetch_etl.pii_vault (masked, raw) \
                         SELECT * FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[]), pg_catalog.unnest($2::pg_catalog.text[])) \
                         ON CONFLICT (masked) DO NOTHING",
                        None,
                        &[masked.into(), raw.into()],
                    )
                    .unwrap_or_else(|e| raise(ErrorKind::Internal, format!("vault: {e}")));
            }
            if !dead.message_id.is_empty() {
                client
                    .update(
                        "INSERT INTO fetch_etl.dead_letters \
                           (run_id, queue_url, message_id, body, reason_code, reason, sent_at, receive_count) \
                         SELECT $1, $2, m, b, c, r, \
                                pg_catalog.to_timestamp(s::pg_catalog.float8 / 1000.0), n \
                         FROM ROWS FROM (pg_catalog.unnest($3::pg_catalog.text[]), pg_catalog.unnest($4::pg_catalog.text[]), \
                                         pg_catalog.unnest($5::pg_catalog.text[]), pg_catalog.unnest($6::pg_catalog.text[]), \
                                         pg_catalog.unnest($7::pg_catalog.int8[]), pg_catalog.unnest($8::pg_catalog.int4[])) \
                              AS t(m, b, c, r, s, n)",
                        None,
                        &[
                            ctx.run_id.into(),
                            ctx.queue_url.clone().into(),
                            dead.message_id.into(),
                            dead.body.into(),
                            dead.reason_code.into(),
                            dead.reason.into(),
                            dead.sent_ms.into(),
                            dead.receive_count.into(),
                        ],
                    )
                    .unwrap_or_else(|e| raise(ErrorKind::Internal, format!("dead letters: {e}")));
            }
        });
    });
    deletes::after_commit(ctx.client.clone(), handles);
}

/// Inserts `rows` into the target as the calling role. Returns the rows the
/// table refused with a data error (index, "SQLSTATE message"); any other
/// error (privileges, missing objects, serialization...) is raised.
fn insert_rows(client: &mut SpiClient<'_>, ctx: &Ctx, rows: &Rows) -> Vec<(usize, String)> {
    let n = rows.len();
    if n == 0 {
        return Vec::new();
    }
    let sql = ctx.target.insert_sql.as_str();
    let int_version = ctx.target.app_version_is_int;
    let all = in_subxact(AssertUnwindSafe(|| {
        client
            .update(sql, None, &rows.args(0..n, int_version))
            .map(|_| ())
    }));
    match all {
        Ok(Ok(())) => return Vec::new(),
        Ok(Err(e)) => raise(ErrorKind::Internal, format!("insert: {e}")),
        Err(e) if !is_data_error(&e) => (*e).rethrow(),
        Err(_) => {}
    }
    let mut refused = Vec::new();
    for i in 0..n {
        match in_subxact(AssertUnwindSafe(|| {
            client
                .update(sql, None, &rows.args(i..i + 1, int_version))
                .map(|_| ())
        })) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => raise(ErrorKind::Internal, format!("insert: {e}")),
            Err(e) if is_data_error(&e) => refused.push((i, describe(&e))),
            Err(e) => (*e).rethrow(),
        }
    }
    refused
}

/// Runs `f` in a subtransaction (like a PL/pgSQL exception block): on error the
/// subtransaction is rolled back and the error returned.
fn in_subxact<R>(f: AssertUnwindSafe<impl FnOnce() -> R>) -> Result<R, Box<CaughtError>> {
    // SAFETY: the PL/pgSQL pattern: remember memory context and resource
    // owner, start a subtransaction, and restore both after commit or rollback.
    unsafe {
        let cx = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(cx);
        let result = pg_sys::PgTryBuilder::new(AssertUnwindSafe(move || Ok(f.0())))
            .catch_others(|e| Err(Box::new(e)))
            .execute();
        if result.is_ok() {
            pg_sys::ReleaseCurrentSubTransaction();
        } else {
            pg_sys::MemoryContextSwitchTo(cx);
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
        }
        pg_sys::MemoryContextSwitchTo(cx);
        pg_sys::CurrentResourceOwner = owner;
        result
    }
}

fn sqlstate(e: &CaughtError) -> Option<String> {
    let code = match e {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r.sql_error_code() as i32,
        CaughtError::RustPanic { .. } => return None,
    };
    // PostgreSQL packs the five characters six bits each (MAKE_SQLSTATE).
    Some(
        (0..5)
            .map(|i| (((code >> (6 * i)) & 0x3F) as u8 + b'0') as char)
            .collect(),
    )
}

/// Data errors a row can cause (class 22 data exception, 23 constraint
/// violation, P0 raised by a trigger): the row becomes a dead letter.
fn is_data_error(e: &CaughtError) -> bool {
    sqlstate(e).is_some_and(|s| s.starts_with("22") || s.starts_with("23") || s.starts_with("P0"))
}

fn describe(e: &CaughtError) -> String {
    let msg = match e {
        CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r.message().to_string(),
        CaughtError::RustPanic { ereport, .. } => ereport.message().to_string(),
    };
    format!("{} {msg}", sqlstate(e).unwrap_or_default())
}

/// Runs `f` as the extension's owner with search_path = pg_catalog, pg_temp:
/// fetch_etl's own tables are not writable by the roles allowed to drain.
/// On error the transaction (or subtransaction) abort restores both.
fn as_owner<R>(owner: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    // SAFETY: the same switch PostgreSQL makes for SECURITY DEFINER functions
    // and RI triggers; restored below, or by the abort on error.
    unsafe {
        let mut saved_user = pg_sys::InvalidOid;
        let mut saved_cx = 0;
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_cx);
        pg_sys::SetUserIdAndSecContext(
            owner,
            saved_cx
                | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
                | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
        );
        let nest = pg_sys::NewGUCNestLevel();
        pg_sys::set_config_option(
            c"search_path".as_ptr(),
            c"pg_catalog, pg_temp".as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
        let r = f();
        pg_sys::AtEOXact_GUC(true, nest);
        pg_sys::SetUserIdAndSecContext(saved_user, saved_cx);
        r
    }
}

fn extension_owner() -> pg_sys::Oid {
    Spi::get_one::<pg_sys::Oid>(
        "SELECT e.extowner FROM pg_catalog.pg_extension e WHERE e.extname OPERATOR(pg_catalog.=) 'fetch_etl'",
    )
    .ok()
    .flatten()
    .unwrap_or_else(|| raise(ErrorKind::NotInPrerequisiteState, "fetch_etl is not installed in this database"))
}

fn start_run(ctx: &Ctx, args: &Args<'_>) -> i64 {
    Spi::connect_mut(|client| {
        as_owner(ctx.owner, || {
            client
                .update(
                    "INSERT INTO fetch_etl.drain_runs (queue_url, target_table, max_messages, wait_seconds) \
                     VALUES ($1, $2, $3, $4) RETURNING run_id",
                    None,
                    &[
                        ctx.queue_url.clone().into(),
                        ctx.target.sql_name.clone().into(),
                        args.max_messages.into(),
                        args.wait_seconds.into(),
                    ],
                )
                .and_then(|t| t.first().get_one::<i64>())
        })
    })
    .ok()
    .flatten()
    .unwrap_or_else(|| raise(ErrorKind::Internal, "could not record the drain run"))
}

fn finish_run(ctx: &Ctx, s: &Summary, calls: i32, protocol: Option<Protocol>, error: Option<&str>) {
    Spi::connect_mut(|client| {
        as_owner(ctx.owner, || {
            client
                .update(
                    "UPDATE fetch_etl.drain_runs SET finished_at = pg_catalog.clock_timestamp(), \
                   status = CASE WHEN $7::pg_catalog.text IS NULL THEN 'ok' ELSE 'partial' END, \
                   received = $2, loaded = $3, rejected = $4, duplicates = $5, receive_calls = $6, \
                   error = $7, protocol = $8 \
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
                        protocol.map(|p| p.as_str().to_string()).into(),
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

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
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

fn env(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn endpoint_override() -> Option<String> {
    guc::string(&guc::SQS_ENDPOINT_URL)
        .or_else(|| env("AWS_ENDPOINT_URL_SQS"))
        .or_else(|| env("AWS_ENDPOINT_URL"))
}

fn region_for(queue: &QueueRef) -> String {
    queue
        .host_region
        .clone()
        .or_else(|| guc::string(&guc::AWS_REGION))
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|| "us-east-1".to_string())
}

/// Credentials from the fetch_etl.aws_* settings when the access key id is
/// set there, otherwise from the server's environment.
fn credentials() -> Credentials {
    let from_settings = guc::string(&guc::AWS_ACCESS_KEY_ID).is_some();
    let (key, secret, token, source) = if from_settings {
        warn_if_settings_exposed();
        (
            guc::string(&guc::AWS_ACCESS_KEY_ID),
            guc::string(&guc::AWS_SECRET_ACCESS_KEY),
            guc::string(&guc::AWS_SESSION_TOKEN),
            "the fetch_etl.aws_* settings",
        )
    } else {
        (
            env("AWS_ACCESS_KEY_ID"),
            env("AWS_SECRET_ACCESS_KEY"),
            env("AWS_SESSION_TOKEN"),
            "the server's environment",
        )
    };
    match (key, secret) {
        (Some(access_key_id), Some(secret_access_key)) => {
            Credentials { access_key_id, secret_access_key, session_token: token }
        }
        (None, _) => raise_with_hint(
            ErrorKind::NotInPrerequisiteState,
            "no AWS credentials for fetch_etl.sqs_drain",
            "Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the server's environment, or the superuser-only settings fetch_etl.aws_access_key_id and fetch_etl.aws_secret_access_key (see README, Credentials).",
        ),
        (Some(_), None) => raise(
            ErrorKind::NotInPrerequisiteState,
            format!("an AWS access key id but no secret access key is set in {source}"),
        ),
    }
}

/// Secrets kept in postgresql.conf/ALTER ROLE/ALTER DATABASE are readable by
/// any role in sessions that have not loaded fetch_etl, unless it is preloaded.
fn warn_if_settings_exposed() {
    thread_local!(static WARNED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
    let secret: &CStr = c"fetch_etl.aws_secret_access_key";
    if !guc::preloaded() && guc::set_persistently(secret) && !WARNED.with(|w| w.replace(true)) {
        pgrx::warning!(
            "fetch_etl.aws_secret_access_key is set in the server configuration but fetch_etl is not in shared_preload_libraries: sessions that have not loaded fetch_etl can read it"
        );
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    #[pg_test]
    fn subxact_catches_and_unpacks_sqlstate() {
        let r = in_subxact(AssertUnwindSafe(|| Spi::get_one::<i32>("SELECT 1/0")));
        let e = r.expect_err("division by zero raises");
        assert_eq!(sqlstate(&e).as_deref(), Some("22012"));
        assert!(is_data_error(&e));
        assert!(describe(&e).starts_with("22012 division by zero"));
        // the transaction is usable afterwards, and a successful subxact commits
        assert_eq!(
            in_subxact(AssertUnwindSafe(|| Spi::get_one::<i32>("SELECT 2")))
                .unwrap()
                .unwrap(),
            Some(2)
        );
        let e = in_subxact(AssertUnwindSafe(|| Spi::run("SELECT * FROM no_such_table")))
            .err()
            .unwrap();
        assert_eq!(sqlstate(&e).as_deref(), Some("42P01"));
        assert!(!is_data_error(&e));
    }

    #[pg_test]
    fn as_owner_switches_and_restores_identity_and_search_path() {
        Spi::run("CREATE ROLE fe_pgtest_role").unwrap();
        Spi::run("SET search_path = public").unwrap();
        Spi::run("SET ROLE fe_pgtest_role").unwrap();
        let owner = Spi::get_one::<pg_sys::Oid>(
            "SELECT extowner FROM pg_extension WHERE extname = 'fetch_etl'",
        )
        .unwrap()
        .unwrap();
        let inside = as_owner(owner, || {
            Spi::get_two::<String, String>(
                "SELECT current_user::text, current_setting('search_path')",
            )
            .unwrap()
        });
        assert_eq!(inside.1.as_deref(), Some("pg_catalog, pg_temp"));
        assert_ne!(inside.0.as_deref(), Some("fe_pgtest_role"));
        let after = Spi::get_two::<String, String>(
            "SELECT current_user::text, current_setting('search_path')",
        )
        .unwrap();
        assert_eq!(after.0.as_deref(), Some("fe_pgtest_role"));
        assert_eq!(after.1.as_deref(), Some("public"));
        Spi::run("RESET ROLE").unwrap();
    }

    #[pg_test]
    fn target_is_created_with_the_exercise_ddl() {
        let t = target::resolve("pgtest_logins");
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
}
