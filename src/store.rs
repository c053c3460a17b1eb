//! Storing login events: validate, mask, insert into the target table, keep
//! raw PII in the vault, and say which messages were refused and why. Used by
//! sqs_drain (new messages) and replay_dead_letters (old dead letters).

use std::panic::AssertUnwindSafe;

use pgrx::pg_sys;
use pgrx::spi::SpiClient;

use crate::errors::ErrorKind;
use crate::event::{self, AppVersion, Limits};
use crate::mask::Masker;
use crate::pgerr::raise;
use crate::pgutil::{as_owner, describe, extension_owner, in_subxact, is_data_error, now_ms};
use crate::sqs::Message;
use crate::{guc, keystore, target};

/// Everything needed to store events into one target table.
pub struct Loader {
    pub owner: pg_sys::Oid,
    pub target: target::Target,
    masker: Masker,
    limits: Limits,
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

impl Loader {
    /// Resolves the target table and reads the masking key. Raises, before
    /// anything is received, if either is unusable.
    pub fn new(target_table: &str) -> Loader {
        let target = target::resolve(target_table);
        let masker = keystore::with_masker(|m| m.clone());
        let limits = Limits {
            max_body_bytes: guc::MAX_BODY_BYTES.get() as usize,
            ..target.limits.clone()
        };
        Loader {
            owner: extension_owner(),
            target,
            masker,
            limits,
        }
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
        let mut vault: Vec<(String, String)> = Vec::new();
        for (k, (idx, pairs)) in rows.source.into_iter().enumerate() {
            match table_refused.iter().find(|(r, _)| *r == k) {
                Some((_, why)) => out.refused.push(Refusal {
                    index: idx,
                    code: "rejected_by_table",
                    reason: format!("rejected_by_table: {why}"),
                }),
                None => {
                    out.loaded.push(idx);
                    vault.extend(pairs);
                }
            }
        }
        if !vault.is_empty() {
            vault.sort();
            vault.dedup();
            let (masked, raw): (Vec<String>, Vec<String>) = vault.into_iter().unzip();
            as_owner(self.owner, || {
                client
                    .update(
                        "INSERT INTO fetch_etl.pii_vault (masked, raw) \
                         SELECT * FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[]), pg_catalog.unnest($2::pg_catalog.text[])) \
                         ON CONFLICT (masked) DO NOTHING",
                        None,
                        &[masked.into(), raw.into()],
                    )
                    .unwrap_or_else(|e| raise(ErrorKind::Internal, format!("vault: {e}")));
            });
        }
        out
    }

    /// Inserts `rows` into the target as the calling role. Returns the rows the
    /// table refused with a data error (index, "SQLSTATE message"); any other
    /// error (privileges, missing objects, serialization...) is raised.
    fn insert_rows(&self, client: &mut SpiClient<'_>, rows: &Rows) -> Vec<(usize, String)> {
        let n = rows.len();
        if n == 0 {
            return Vec::new();
        }
        let sql = self.target.insert_sql.as_str();
        let int_version = self.target.app_version_is_int;
        let mut insert = |range: std::ops::Range<usize>| {
            in_subxact(AssertUnwindSafe(|| {
                client
                    .update(sql, None, &rows.args(range, int_version))
                    .map(|_| ())
            }))
        };
        match insert(0..n) {
            Ok(Ok(())) => return Vec::new(),
            Ok(Err(e)) => raise(ErrorKind::Internal, format!("insert: {e}")),
            Err(e) if !is_data_error(&e) => (*e).rethrow(),
            Err(_) => {}
        }
        // One row refused the whole statement: find it (and any others) row by row.
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
    /// Index into the input messages, and (mask, raw) pairs for the vault.
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

/// Writes dead letters for `refused` messages of one drain run (as the owner).
pub fn insert_dead_letters(
    client: &mut SpiClient<'_>,
    owner: pg_sys::Oid,
    run_id: i64,
    queue_url: &str,
    msgs: &[&Message],
    refused: &[Refusal],
) {
    if refused.is_empty() {
        return;
    }
    let pick = |f: &dyn Fn(&Message) -> String| {
        refused.iter().map(|r| f(msgs[r.index])).collect::<Vec<_>>()
    };
    // PostgreSQL text cannot hold NUL; SQS bodies cannot contain it either,
    // but never let one break the batch.
    let bodies = pick(&|m| m.body.replace('\0', "\u{FFFD}"));
    let ids = pick(&|m| m.message_id.clone());
    let codes: Vec<String> = refused.iter().map(|r| r.code.to_string()).collect();
    let reasons: Vec<String> = refused.iter().map(|r| r.reason.clone()).collect();
    let sent: Vec<Option<i64>> = refused
        .iter()
        .map(|r| msgs[r.index].sent_timestamp_ms)
        .collect();
    let counts: Vec<Option<i32>> = refused
        .iter()
        .map(|r| msgs[r.index].receive_count)
        .collect();
    as_owner(owner, || {
        client
            .update(
                "INSERT INTO fetch_etl.dead_letters \
                   (run_id, queue_url, message_id, body, reason_code, reason, sent_at, receive_count) \
                 SELECT $1, $2, m, b, c, r, pg_catalog.to_timestamp(s::pg_catalog.float8 / 1000.0), n \
                 FROM ROWS FROM (pg_catalog.unnest($3::pg_catalog.text[]), pg_catalog.unnest($4::pg_catalog.text[]), \
                                 pg_catalog.unnest($5::pg_catalog.text[]), pg_catalog.unnest($6::pg_catalog.text[]), \
                                 pg_catalog.unnest($7::pg_catalog.int8[]), pg_catalog.unnest($8::pg_catalog.int4[])) \
                      AS t(m, b, c, r, s, n)",
                None,
                &[
                    run_id.into(),
                    queue_url.to_string().into(),
                    ids.into(),
                    bodies.into(),
                    codes.into(),
                    reasons.into(),
                    sent.into(),
                    counts.into(),
                ],
            )
            .unwrap_or_else(|e| raise(ErrorKind::Internal, format!("dead letters: {e}")));
    });
}
