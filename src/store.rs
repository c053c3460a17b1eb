//! Storing login events: validate, mask, insert into the target table, keep
//! raw PII in the vault, and say which messages were refused and why. Used by
//! sqs_drain (new messages) and replay_dead_letters (old dead letters).
//!
//! Every statement is prepared once per Loader (plans kept, not re-parsed per
//! batch) and takes whole columns as arrays: one statement per table per
//! batch, whatever the batch size.

use std::cell::RefCell;
use std::panic::AssertUnwindSafe;

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::{self, PgOid};
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};

use crate::errors::ErrorKind;
use crate::event::{self, AppVersion, Limits};
use crate::mask::Masker;
use crate::pgerr::raise;
use crate::pgutil::{
    as_owner, describe, extension_owner, in_subxact, is_data_error, now_ms, sqlstate,
};
use crate::sqs::Message;
use crate::{guc, keystore, target};

/// Parameters: masked text[], raw text[], sorted by mask, so the inserts walk
/// the primary key in order. Pairs are collected across batches and inserted
/// in large sorted runs: far fewer index pages touched per row than batch by
/// batch (half the time for 100,000 messages).
const VAULT_SQL_FAST: &str = "INSERT INTO fetch_etl.pii_vault (masked, raw) \
     SELECT t.m, t.r FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[]), pg_catalog.unnest($2::pg_catalog.text[])) AS t(m, r) \
     WHERE NOT EXISTS (SELECT FROM fetch_etl.pii_vault v WHERE v.masked OPERATOR(pg_catalog.=) t.m)";

/// The same, safe against a concurrent transaction adding one of the masks:
/// what VAULT_SQL_FAST falls back to when that happens (unique violation).
const VAULT_SQL: &str = "INSERT INTO fetch_etl.pii_vault (masked, raw) \
     SELECT * FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[]), pg_catalog.unnest($2::pg_catalog.text[])) \
     ON CONFLICT (masked) DO NOTHING";

/// Parameters: message ids text[] (sorted), run id. Returns the ids that were new.
const LEDGER_SQL: &str = "INSERT INTO fetch_etl.processed_messages (message_id, run_id) \
     SELECT pg_catalog.unnest($1::pg_catalog.text[]), $2 \
     ON CONFLICT (message_id) DO NOTHING RETURNING message_id";

const DEAD_LETTER_SQL: &str = "INSERT INTO fetch_etl.dead_letters \
       (run_id, queue_url, message_id, body, reason_code, reason, sent_at, receive_count) \
     SELECT $1, $2, m, b, c, r, pg_catalog.to_timestamp(s::pg_catalog.float8 / 1000.0), n \
     FROM ROWS FROM (pg_catalog.unnest($3::pg_catalog.text[]), pg_catalog.unnest($4::pg_catalog.text[]), \
                     pg_catalog.unnest($5::pg_catalog.text[]), pg_catalog.unnest($6::pg_catalog.text[]), \
                     pg_catalog.unnest($7::pg_catalog.int8[]), pg_catalog.unnest($8::pg_catalog.int4[])) \
          AS t(m, b, c, r, s, n)";

const TEXT_ARRAY: pg_sys::Oid = pg_sys::TEXTARRAYOID;
const INT8_ARRAY: pg_sys::Oid = pg_sys::INT8ARRAYOID;

/// Everything needed to store events into one target table.
pub struct Loader {
    pub owner: pg_sys::Oid,
    pub target: target::Target,
    masker: Masker,
    limits: Limits,
    insert_target: OwnedPreparedStatement,
    insert_vault: OwnedPreparedStatement,
    insert_vault_fast: OwnedPreparedStatement,
    insert_dead: OwnedPreparedStatement,
    insert_ledger: OwnedPreparedStatement,
    /// (mask, raw) pairs not yet written to the vault.
    vault: RefCell<Vec<(String, String)>>,
}

/// Pairs kept before the vault is written: about 1 MB of strings. Larger
/// batches were no faster in `scripts/bench` (the anti-join costs the same per
/// row) but grew a 50,000-message drain's memory from 15 MB to 60 MB.
const VAULT_FLUSH_PAIRS: usize = 5_000;

impl Drop for Loader {
    fn drop(&mut self) {
        // Every successful path ends with flush_vault(); an error unwinding
        // past here aborts the transaction, so unwritten pairs do not matter.
        debug_assert!(
            std::thread::panicking() || self.vault.get_mut().is_empty(),
            "vault not flushed"
        );
    }
}

/// A message that was not loaded: its index in the input, code and reason.
pub struct Refusal {
    pub index: usize,
    pub code: &'static str,
    pub reason: String,
}

/// What `Loader::load` did with each message.
#[derive(Default)]
pub struct Outcome {
    pub loaded: Vec<usize>,
    pub refused: Vec<Refusal>,
}

fn prepare(client: &SpiClient<'_>, sql: &str, types: &[pg_sys::Oid]) -> OwnedPreparedStatement {
    let types: Vec<PgOid> = types.iter().map(|&t| PgOid::from(t)).collect();
    client
        .prepare_mut(sql, &types)
        .unwrap_or_else(|e| raise(ErrorKind::Internal, format!("prepare: {e}")))
        .keep()
}

impl Loader {
    /// Resolves the target table, reads the masking key and prepares the
    /// statements. Raises, before anything is received, if any is unusable.
    pub fn new(target_table: &str) -> Loader {
        let target = target::resolve(target_table);
        let masker = keystore::with_masker(|m| m.clone());
        let limits = Limits {
            max_body_bytes: guc::MAX_BODY_BYTES.get() as usize,
            ..target.limits.clone()
        };
        let version = if target.app_version_is_int {
            INT8_ARRAY
        } else {
            TEXT_ARRAY
        };
        let (insert_target, insert_vault, insert_vault_fast, insert_dead, insert_ledger) =
            Spi::connect(|c| {
                let target_types = [
                    TEXT_ARRAY, TEXT_ARRAY, TEXT_ARRAY, TEXT_ARRAY, TEXT_ARRAY, version, TEXT_ARRAY,
                ];
                let dead_types = [
                    pg_sys::INT8OID,
                    pg_sys::TEXTOID,
                    TEXT_ARRAY,
                    TEXT_ARRAY,
                    TEXT_ARRAY,
                    TEXT_ARRAY,
                    INT8_ARRAY,
                    pg_sys::INT4ARRAYOID,
                ];
                (
                    prepare(c, &target.insert_sql, &target_types),
                    prepare(c, VAULT_SQL, &[TEXT_ARRAY, TEXT_ARRAY]),
                    prepare(c, VAULT_SQL_FAST, &[TEXT_ARRAY, TEXT_ARRAY]),
                    prepare(c, DEAD_LETTER_SQL, &dead_types),
                    prepare(c, LEDGER_SQL, &[TEXT_ARRAY, pg_sys::INT8OID]),
                )
            });
        Loader {
            owner: extension_owner(),
            target,
            masker,
            limits,
            insert_target,
            insert_vault,
            insert_vault_fast,
            insert_dead,
            insert_ledger,
            vault: RefCell::new(Vec::new()),
        }
    }

    /// Records `ids` in the ledger (as the owner); returns those that were new.
    pub fn record_ids(&self, client: &mut SpiClient<'_>, ids: &[&str], run_id: i64) -> Vec<String> {
        let mut sorted: Vec<&str> = ids.to_vec();
        sorted.sort_unstable();
        as_owner(self.owner, || {
            client
                .update(&self.insert_ledger, None, &[sorted.into(), run_id.into()])
                .unwrap_or_else(|e| raise(ErrorKind::Internal, format!("ledger: {e}")))
                .filter_map(|row| row.get::<String>(1).ok().flatten())
                .collect()
        })
    }

    /// Validates, masks and stores `msgs`: valid rows into the target (as the
    /// calling role), their raw PII into the vault (as the owner). Dead letters
    /// are the caller's to write, from `Outcome::refused`.
    pub fn load(&self, client: &mut SpiClient<'_>, msgs: &[&Message]) -> Outcome {
        let mut rows = Rows::default();
        let mut out = Outcome::default();
        for (i, m) in msgs.iter().enumerate() {
            match event::parse_login(&m.body, &self.limits) {
                Ok(e) => rows.push(i, m, e, &self.masker),
                Err(r) => out.refused.push(Refusal {
                    index: i,
                    code: r.code,
                    reason: r.to_string(),
                }),
            }
        }
        let table_refused = self.insert_rows(client, &rows);
        let mut vault = self.vault.borrow_mut();
        for (k, &idx) in rows.source.iter().enumerate() {
            match table_refused.iter().find(|(r, _)| *r == k) {
                Some((_, why)) => out.refused.push(Refusal {
                    index: idx,
                    code: "rejected_by_table",
                    reason: format!("rejected_by_table: {why}"),
                }),
                None => {
                    out.loaded.push(idx);
                    vault.extend(
                        rows.vault_pairs(k)
                            .map(|(m, r)| (m.to_string(), r.to_string())),
                    );
                }
            }
        }
        let full = vault.len() >= VAULT_FLUSH_PAIRS;
        drop(vault);
        if full {
            self.flush_vault(client);
        }
        out
    }

    /// Writes the collected (mask, raw) pairs to the vault, sorted and without
    /// duplicates, as the owner. Every caller of `load` ends with this.
    pub fn flush_vault(&self, client: &mut SpiClient<'_>) {
        let mut pairs = std::mem::take(&mut *self.vault.borrow_mut());
        if pairs.is_empty() {
            return;
        }
        pairs.sort_unstable();
        pairs.dedup();
        let (masked, raw): (Vec<String>, Vec<String>) = pairs.into_iter().unzip();
        let masked: Vec<&str> = masked.iter().map(String::as_str).collect();
        let raw: Vec<&str> = raw.iter().map(String::as_str).collect();
        as_owner(self.owner, || {
            // Plain inserts of the masks not there yet; if another transaction
            // adds one meanwhile (unique violation), redo with ON CONFLICT.
            let args =
                || -> [DatumWithOid<'_>; 2] { [masked.as_slice().into(), raw.as_slice().into()] };
            let fast = in_subxact(AssertUnwindSafe(|| {
                client
                    .update(&self.insert_vault_fast, None, &args())
                    .map(|_| ())
            }));
            match fast {
                Ok(Ok(())) => {}
                Ok(Err(e)) => raise(ErrorKind::Internal, format!("vault: {e}")),
                Err(e) if sqlstate(&e).as_deref() == Some("23505") => {
                    client
                        .update(&self.insert_vault, None, &args())
                        .unwrap_or_else(|e| raise(ErrorKind::Internal, format!("vault: {e}")));
                }
                Err(e) => (*e).rethrow(),
            }
        });
    }

    /// Inserts `rows` into the target as the calling role. Returns the rows the
    /// table refused with a data error (index, "SQLSTATE message"); any other
    /// error (privileges, missing objects, serialization...) is raised.
    fn insert_rows(&self, client: &mut SpiClient<'_>, rows: &Rows) -> Vec<(usize, String)> {
        let n = rows.len();
        if n == 0 {
            return Vec::new();
        }
        let int_version = self.target.app_version_is_int;
        let stmt = &self.insert_target;
        let mut insert = |range: std::ops::Range<usize>| {
            in_subxact(AssertUnwindSafe(|| {
                client
                    .update(stmt, None, &rows.args(range, int_version))
                    .map(|_| ())
            }))
        };
        match insert(0..n) {
            Ok(Ok(())) => return Vec::new(),
            Ok(Err(e)) => raise(ErrorKind::Internal, format!("insert: {e}")),
            Err(e) if !is_data_error(&e) => (*e).rethrow(),
            Err(_) => {}
        }
        // A row refused the whole statement: find it (and any others) row by row.
        let mut refused = Vec::new();
        for i in 0..n {
            match insert(i..i + 1) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => raise(ErrorKind::Internal, format!("insert: {e}")),
                Err(e) if is_data_error(&e) => refused.push((i, describe(&e))),
                Err(e) => (*e).rethrow(),
            }
        }
        refused
    }

    /// Writes dead letters for `refused` messages of one drain run (as the owner).
    pub fn insert_dead_letters(
        &self,
        client: &mut SpiClient<'_>,
        run_id: i64,
        queue_url: &str,
        msgs: &[&Message],
        refused: &[Refusal],
    ) {
        if refused.is_empty() {
            return;
        }
        // PostgreSQL text cannot hold NUL; SQS bodies cannot contain it either,
        // but never let one break the batch.
        let bodies: Vec<String> = refused
            .iter()
            .map(|r| msgs[r.index].body.replace('\0', "\u{FFFD}"))
            .collect();
        let ids: Vec<&str> = refused
            .iter()
            .map(|r| msgs[r.index].message_id.as_str())
            .collect();
        let codes: Vec<&str> = refused.iter().map(|r| r.code).collect();
        let reasons: Vec<&str> = refused.iter().map(|r| r.reason.as_str()).collect();
        let sent: Vec<Option<i64>> = refused
            .iter()
            .map(|r| msgs[r.index].sent_timestamp_ms)
            .collect();
        let counts: Vec<Option<i32>> = refused
            .iter()
            .map(|r| msgs[r.index].receive_count)
            .collect();
        let args: [DatumWithOid<'_>; 8] = [
            run_id.into(),
            queue_url.into(),
            ids.into(),
            bodies.into(),
            codes.into(),
            reasons.into(),
            sent.into(),
            counts.into(),
        ];
        as_owner(self.owner, || {
            client
                .update(&self.insert_dead, None, &args)
                .unwrap_or_else(|e| raise(ErrorKind::Internal, format!("dead letters: {e}")));
        });
    }
}

/// Column arrays for one INSERT ... SELECT FROM ROWS FROM (unnest(...), ...).
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
    /// Raw values behind the masks, for the vault.
    raw_ip: Vec<Option<String>>,
    raw_device_id: Vec<Option<String>>,
    /// Index of each row's message in the input.
    source: Vec<usize>,
}

impl Rows {
    fn push(&mut self, idx: usize, m: &Message, e: event::LoginEvent, masker: &Masker) {
        let mask = |raw: &Option<String>| raw.as_ref().map(|r| masker.mask(r.as_bytes()));
        self.masked_ip.push(mask(&e.ip));
        self.masked_device_id.push(mask(&e.device_id));
        self.raw_ip.push(e.ip);
        self.raw_device_id.push(e.device_id);
        self.user_id.push(Some(e.user_id));
        self.device_type.push(e.device_type);
        self.locale.push(e.locale);
        match e.app_version {
            AppVersion::Int(v) => self.app_version_int.push(v),
            AppVersion::Text(v) => self.app_version_text.push(v),
        }
        let ms = m.sent_timestamp_ms.unwrap_or_else(now_ms);
        self.create_date.push(Some(event::utc_date(ms)));
        self.source.push(idx);
    }

    fn len(&self) -> usize {
        self.user_id.len()
    }

    /// (mask, raw) pairs of row `k`.
    fn vault_pairs(&self, k: usize) -> impl Iterator<Item = (&str, &str)> {
        fn pair<'a>(m: &'a Option<String>, r: &'a Option<String>) -> Option<(&'a str, &'a str)> {
            Some((m.as_deref()?, r.as_deref()?))
        }
        [
            pair(&self.masked_ip[k], &self.raw_ip[k]),
            pair(&self.masked_device_id[k], &self.raw_device_id[k]),
        ]
        .into_iter()
        .flatten()
    }

    /// The seven statement arguments for rows `range`, as arrays built straight
    /// from the strings (no copies of the strings themselves).
    fn args(&self, range: std::ops::Range<usize>, int_version: bool) -> Vec<DatumWithOid<'static>> {
        let s = |v: &[Option<String>]| -> DatumWithOid<'static> {
            v[range.clone()]
                .iter()
                .map(|o| o.as_deref())
                .collect::<Vec<Option<&str>>>()
                .into()
        };
        let version = if int_version {
            self.app_version_int[range.clone()].into()
        } else {
            s(&self.app_version_text)
        };
        vec![
            s(&self.user_id),
            s(&self.device_type),
            s(&self.masked_ip),
            s(&self.masked_device_id),
            s(&self.locale),
            version,
            s(&self.create_date),
        ]
    }
}
