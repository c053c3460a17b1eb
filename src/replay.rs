//! `fetch_etl.replay_dead_letters`: run dead letters through the current
//! validation and target table again, after a fix (a widened column, a dropped
//! constraint, a corrected producer...). Loaded ones are marked replayed and
//! are never replayed again; the others keep their row with the new reason,
//! one more `replay_attempts` and `last_replay_at`, and go to the back: a
//! replay takes the dead letters tried longest ago (never tried first), so
//! ones that keep failing do not hold back those behind them.
//!
//! Memory does not grow with `max_rows` or the bodies: a page of at most
//! [`REPLAY_PAGE_ROWS`] dead letters is locked and sized, and its bodies are
//! read and stored in runs of at most [`STORE_FLUSH_BYTES`], each in its own
//! SPI connection (whose result sets are freed when it ends).
//!
//! Only dead letters produced for the same target table are taken unless
//! `any_target` says otherwise: a dead letter's body is whatever its producer
//! sent, and a loader whose own table refused a forged event must not get it
//! loaded into an operator's table by the operator's routine replay. Even
//! then, only those a role the caller belongs to produced (a superuser: all):
//! `any_target` must not let a grantee copy every queue's dead letters, raw
//! PII and all, into a table of its own (0.5.0).

use pgrx::prelude::*;

use fetch_etl_core::budget::{byte_runs, REPLAY_PAGE_ROWS, STORE_FLUSH_BYTES};
use fetch_etl_core::contract::{Phase, RunKind};
use fetch_etl_core::message::restore_attributes;
use fetch_etl_sqs::Message;

use fetch_etl_core::pipeline::login::LOGIN;

use crate::postgres::error::{OrRaise, SpiOrRaise};
use crate::postgres::spi::{as_owner, extension_owner, require_catalog};
use crate::postgres::store::Store;
use crate::postgres::{pipelines, progress};

#[derive(Default)]
pub(crate) struct Replayed {
    pub(crate) replayed: i64,
    pub(crate) loaded: i64,
    pub(crate) rejected: i64,
}

/// `replay_dead_letters`' arguments.
pub(crate) struct Args<'a> {
    pub(crate) queue_url: Option<&'a str>,
    pub(crate) reason_code: Option<&'a str>,
    pub(crate) target_table: &'a str,
    pub(crate) max_rows: i32,
    pub(crate) any_target: bool,
    /// The pipeline or router whose dead letters to replay (None: the
    /// built-in login pipeline's, into `target_table`).
    pub(crate) pipeline: Option<&'a str>,
}

pub(crate) fn replay(args: &Args<'_>) -> Replayed {
    fetch_etl_core::args::check_replay(args.max_rows).or_raise();
    let owner = extension_owner();
    let loaded = pipelines::load(args.pipeline, args.target_table);
    let mut store = Store::open(loaded.pipelines, &loaded.targets, owner);
    let target = store.target_names();
    let keeps_keys = store.catalog() >= (0, 6, 0);
    let shown = progress::begin(
        RunKind::Replay,
        Phase::Replaying,
        0,
        args.queue_url.unwrap_or_default(),
    );
    let filter = Filter::of(args, &store, &target, true);
    let mut done = Replayed::default();
    loop {
        let left = i64::from(args.max_rows) - done.replayed;
        if left <= 0 {
            break;
        }
        let page = lock_page(owner, &filter, left.min(REPLAY_PAGE_ROWS as i64));
        if page.is_empty() {
            break;
        }
        let sizes: Vec<usize> = page.iter().map(|&(_, n)| n).collect();
        for run in byte_runs(&sizes, STORE_FLUSH_BYTES) {
            let ids: Vec<i64> = page[run].iter().map(|&(id, _)| id).collect();
            let r = replay_run(owner, &mut store, &ids, keeps_keys);
            done.replayed += r.replayed;
            done.loaded += r.loaded;
            done.rejected += r.rejected;
            let duplicates = done.replayed - done.loaded - done.rejected;
            shown.update(
                Phase::Replaying,
                Some([done.replayed, done.loaded, done.rejected, duplicates]),
            );
        }
    }
    shown.update(Phase::Committing, None);
    done
}

/// `discard_dead_letters`: marks the dead letters a replay with `args`
/// would take (cut bodies too, which no replay takes) as discarded with
/// `note`, by the session user, so they are no longer pending; the rows
/// stay, body and all, until `prune()`. Returns how many.
pub(crate) fn discard(args: &Args<'_>, note: &str) -> i64 {
    fetch_etl_core::args::check_replay(args.max_rows).or_raise();
    fetch_etl_core::args::check_discard_note(note).or_raise();
    require_catalog((0, 7, 0), "discard_dead_letters");
    let owner = extension_owner();
    let loaded = pipelines::load(args.pipeline, args.target_table);
    let store = Store::open(loaded.pipelines, &loaded.targets, owner);
    let target = store.target_names();
    let filter = Filter::of(args, &store, &target, false);
    let mut discarded = 0i64;
    loop {
        let left = i64::from(args.max_rows) - discarded;
        if left <= 0 {
            break;
        }
        let ids: Vec<i64> = lock_page(owner, &filter, left.min(REPLAY_PAGE_ROWS as i64))
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        if ids.is_empty() {
            break;
        }
        discarded += ids.len() as i64;
        Spi::connect_mut(|client| {
            as_owner(owner, || {
                client
                    .update(
                        "UPDATE fetch_etl.dead_letters SET discarded_at = pg_catalog.clock_timestamp(), \
                                discarded_by = SESSION_USER, discard_note = $2 \
                         WHERE dead_letter_id OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.int8[])",
                        None,
                        &[ids.into(), note.into()],
                    )
                    .or_raise_spi("dead letters");
            });
        });
    }
    discarded
}

/// Whose dead letters: the login pipeline's (those of no pipeline too,
/// from before 0.6.0), or one pipeline's or router's, by its catalog id
/// (never reused: a pipeline made again under a dropped one's name does not
/// get its dead letters).
enum PipelineFilter {
    Login,
    Id(i64),
}

/// Which dead letters a replay takes.
struct Filter<'a> {
    queue_url: Option<&'a str>,
    reason_code: Option<&'a str>,
    /// Dead letters of other target tables too, but only those produced by a
    /// role the caller is a member of (a superuser: all of them). A producer
    /// role since dropped matches nobody (its name is looked up, not passed
    /// to pg_has_role, which would raise for it).
    any_target: bool,
    /// The replay's own target table (the login pipeline's; None: any
    /// table of the pipeline's).
    target: Option<&'a str>,
    /// The pipeline whose dead letters are taken (None: a catalog before
    /// 0.6.0, where every dead letter is the login pipeline's).
    pipeline: Option<PipelineFilter>,
    /// The catalog has `body_truncated` (0.5.0): cut bodies are never taken.
    cut_bodies_marked: bool,
    /// What a replay can take: no cut body, and none a replay of this
    /// transaction refused already. A discard takes those too.
    replayable_only: bool,
    /// The catalog has `discarded_at` (0.7.0): discarded ones are never taken.
    discards_marked: bool,
}

impl<'a> Filter<'a> {
    /// The dead letters `args` selects, for `store` opened on its pipeline
    /// (`target`: its target tables' names).
    fn of(args: &'a Args<'_>, store: &Store, target: &'a str, replayable_only: bool) -> Filter<'a> {
        let catalog = store.catalog();
        // The login pipeline's dead letters are those of its table (before
        // 0.6.0 they name no pipeline); another pipeline's or router's are its
        // own, whatever table they were meant for.
        let builtin = args.pipeline.is_none_or(|p| p == LOGIN);
        Filter {
            queue_url: args.queue_url,
            reason_code: args.reason_code,
            any_target: args.any_target && builtin,
            target: builtin.then_some(target),
            pipeline: (catalog >= (0, 6, 0)).then(|| {
                if builtin {
                    PipelineFilter::Login
                } else {
                    PipelineFilter::Id(store.pipeline_id())
                }
            }),
            cut_bodies_marked: catalog >= (0, 5, 0),
            replayable_only,
            discards_marked: catalog >= (0, 7, 0),
        }
    }
}

/// Locks the next page of dead letters to replay (skipping rows another
/// replay holds: each is replayed by one session at a time), with their
/// body sizes. Rows a replay of this transaction refused (their
/// `last_replay_at` is this transaction's start) are not taken again, nor
/// are bodies a drain cut (`dead_letter.rs`).
fn lock_page(owner: pg_sys::Oid, f: &Filter<'_>, limit: i64) -> Vec<(i64, usize)> {
    // Who is asking, before the switch to the owner.
    // SAFETY: reads the current user id; no preconditions.
    let caller = unsafe { pg_sys::GetUserId() };
    // SAFETY: as above.
    let caller_is_superuser = unsafe { pg_sys::superuser() };
    // (pipeline is 0.6.0's: before, every dead letter is the login pipeline's)
    let (pipeline, pipeline_id) = match f.pipeline {
        None => (String::new(), None),
        Some(PipelineFilter::Login) => (
            format!("AND COALESCE(pipeline, '{LOGIN}') OPERATOR(pg_catalog.=) '{LOGIN}'"),
            None,
        ),
        Some(PipelineFilter::Id(id)) => (
            "AND pipeline_id OPERATOR(pg_catalog.=) $8".to_string(),
            Some(id),
        ),
    };
    let whole = if f.cut_bodies_marked && f.replayable_only {
        "AND NOT body_truncated"
    } else {
        ""
    };
    let untried_now = if f.replayable_only {
        "AND last_replay_at IS DISTINCT FROM pg_catalog.now()"
    } else {
        ""
    };
    let kept = if f.discards_marked {
        "AND discarded_at IS NULL"
    } else {
        ""
    };
    let sql = format!(
        "SELECT dead_letter_id, pg_catalog.octet_length(body)::pg_catalog.int8 \
         FROM fetch_etl.dead_letters \
         WHERE replayed_at IS NULL {kept} {whole} {untried_now} \
           AND ($1::pg_catalog.text IS NULL OR queue_url OPERATOR(pg_catalog.=) $1) \
           AND ($2::pg_catalog.text IS NULL OR reason_code OPERATOR(pg_catalog.=) $2) \
           AND ($5::pg_catalog.text IS NULL OR target_table OPERATOR(pg_catalog.=) $5 \
                OR ($4 AND ($7 OR EXISTS (SELECT FROM pg_catalog.pg_roles r \
                                          WHERE r.rolname OPERATOR(pg_catalog.=) run_role \
                                            AND pg_catalog.pg_has_role($6::pg_catalog.oid, r.oid, 'MEMBER'))))) \
           {pipeline} \
         ORDER BY last_replay_at NULLS FIRST, dead_letter_id \
         LIMIT $3 FOR UPDATE SKIP LOCKED"
    );
    Spi::connect_mut(|client| {
        as_owner(owner, || {
            client
                .update(
                    &sql,
                    None,
                    &[
                        f.queue_url.map(str::to_string).into(),
                        f.reason_code.map(str::to_string).into(),
                        limit.into(),
                        f.any_target.into(),
                        f.target.into(),
                        caller.into(),
                        caller_is_superuser.into(),
                        pipeline_id.into(),
                    ],
                )
                .or_raise_spi("dead letters")
                .map(|row| {
                    let id = row.get::<i64>(1).ok().flatten().unwrap_or_default();
                    let size = row.get::<i64>(2).ok().flatten().unwrap_or_default();
                    (id, usize::try_from(size).unwrap_or(usize::MAX))
                })
                .collect()
        })
    })
}

/// Reads the bodies of `ids` (locked by [`lock_page`]), loads them and
/// records the outcome on each dead letter.
fn replay_run(owner: pg_sys::Oid, store: &mut Store, ids: &[i64], keeps_keys: bool) -> Replayed {
    // the ledger key and attributes the drain kept (0.6.0)
    let kept = if keeps_keys {
        "ledger_key, attributes::pg_catalog.text"
    } else {
        "NULL::pg_catalog.text, NULL::pg_catalog.text"
    };
    let sql = format!(
        "SELECT dead_letter_id, message_id, body, \
                (pg_catalog.date_part('epoch', sent_at) OPERATOR(pg_catalog.*) 1000)::pg_catalog.int8, \
                receive_count, {kept} \
         FROM fetch_etl.dead_letters \
         WHERE dead_letter_id OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.int8[]) \
         ORDER BY dead_letter_id"
    );
    Spi::connect_mut(|client| {
        let picked: Vec<(i64, Message, Option<String>)> = as_owner(owner, || {
            client
                .update(&sql, None, &[ids.to_vec().into()])
                .or_raise_spi("dead letters")
                .map(|row| {
                    let id = row.get::<i64>(1).ok().flatten().unwrap_or_default();
                    let text = |i| row.get::<String>(i).ok().flatten().unwrap_or_default();
                    let mut m = Message {
                        message_id: text(2),
                        receipt_handle: String::new(),
                        body: text(3),
                        sent_timestamp_ms: row.get::<i64>(4).ok().flatten(),
                        receive_count: row.get::<i32>(5).ok().flatten(),
                        ..Message::default()
                    };
                    if let Some(a) = row.get::<String>(7).ok().flatten() {
                        restore_attributes(&mut m, &a);
                    }
                    (id, m, row.get::<String>(6).ok().flatten())
                })
                .collect()
        });
        let msgs: Vec<&Message> = picked.iter().map(|(_, m, _)| m).collect();
        let keys: Vec<Option<&str>> = picked.iter().map(|(_, _, k)| k.as_deref()).collect();
        let outcome = store.load(client, &msgs, &keys);
        store.flush_vault(client);
        // Loaded, or a duplicate of an event loaded before: done with.
        let loaded_ids: Vec<i64> = outcome
            .loaded
            .iter()
            .chain(&outcome.duplicates)
            .map(|&i| picked[i].0)
            .collect();
        let deferred_ids: Vec<i64> = outcome.deferred.iter().map(|&i| picked[i].0).collect();
        let refused_ids: Vec<i64> = outcome.refused.iter().map(|r| picked[r.index].0).collect();
        let codes: Vec<&str> = outcome.refused.iter().map(|r| r.reason.as_str()).collect();
        let reasons: Vec<&str> = outcome.refused.iter().map(|r| r.text.as_str()).collect();
        as_owner(owner, || {
            client
                .update(
                    "UPDATE fetch_etl.dead_letters SET replayed_at = pg_catalog.clock_timestamp(), replayed_by = SESSION_USER \
                     WHERE dead_letter_id OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.int8[])",
                    None,
                    &[loaded_ids.into()],
                )
                .or_raise_spi("dead letters");
            client
                .update(
                    "UPDATE fetch_etl.dead_letters d SET reason_code = t.c, reason = t.r, \
                            replay_attempts = d.replay_attempts OPERATOR(pg_catalog.+) 1, \
                            last_replay_at = pg_catalog.now() \
                     FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.int8[]), pg_catalog.unnest($2::pg_catalog.text[]), \
                                     pg_catalog.unnest($3::pg_catalog.text[])) AS t(id, c, r) \
                     WHERE d.dead_letter_id OPERATOR(pg_catalog.=) t.id",
                    None,
                    &[refused_ids.into(), codes.into(), reasons.into()],
                )
                .or_raise_spi("dead letters");
            // held by another session: tried again by a later replay (not
            // this one, which takes each dead letter once)
            client
                .update(
                    "UPDATE fetch_etl.dead_letters SET last_replay_at = pg_catalog.now() \
                     WHERE dead_letter_id OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.int8[])",
                    None,
                    &[deferred_ids.into()],
                )
                .or_raise_spi("dead letters");
        });
        Replayed {
            replayed: picked.len() as i64,
            loaded: outcome.loaded.len() as i64,
            rejected: outcome.refused.len() as i64,
        }
    })
}
