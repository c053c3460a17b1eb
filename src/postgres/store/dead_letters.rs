//! `fetch_etl.dead_letters`: the messages a drain could not load, with the
//! reason, written as the extension owner. A dead letter keeps at most
//! `fetch_etl.dead_letter_max_body_bytes` of a body (`dead_letter.rs`).

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};

use fetch_etl_core::contract::RejectReason;
use fetch_etl_core::dead_letter::{stored_body, StoredBody};
use fetch_etl_core::message::{attributes_json, Message};

use super::{prepare, INT8_ARRAY, TEXT_ARRAY};
use crate::postgres::error::SpiOrRaise;
use crate::postgres::settings;
use crate::postgres::spi::as_owner;

/// Parameters: run id, queue URL, ids, bodies, codes, reasons, sent ms,
/// receive counts, the producing role, the target tables, the bodies' sizes
/// as received, whether each was cut (0.5.0), the drain's pipeline and its
/// id, each message's ledger key and its attributes (0.6.0).
/// The sent times are in range (the wire layer drops impossible ones), so
/// the conversion cannot fail. For an older catalog (the library was
/// upgraded, the database not yet) the columns it lacks are left out: a
/// catalog before 0.5.0 keeps bodies whole, as 0.4.0 did.
fn dead_letter_sql(catalog: (u32, u32, u32)) -> String {
    let (cut_cols, cut_vals) = if catalog >= (0, 5, 0) {
        (", body_bytes, body_truncated", ", z, x")
    } else {
        ("", "")
    };
    let (more_arrays, more_names) = if catalog >= (0, 6, 0) {
        (
            ", pg_catalog.unnest($15::pg_catalog.text[]), pg_catalog.unnest($16::pg_catalog.text[])",
            ", k, a",
        )
    } else {
        ("", "")
    };
    let (pipeline_col, pipeline_val) = if catalog >= (0, 6, 0) {
        (
            ", pipeline, pipeline_id, ledger_key, attributes",
            ", $13, $14, k, a::pg_catalog.jsonb",
        )
    } else {
        ("", "")
    };
    format!(
        "INSERT INTO fetch_etl.dead_letters \
           (run_id, queue_url, message_id, body, reason_code, reason, sent_at, receive_count, run_role, target_table\
            {cut_cols}{pipeline_col}) \
         SELECT $1, $2, m, b, c, r, \
                pg_catalog.to_timestamp(s::pg_catalog.float8 OPERATOR(pg_catalog./) 1000.0::pg_catalog.float8), n, \
                $9::pg_catalog.name, g{cut_vals}{pipeline_val} \
         FROM ROWS FROM (pg_catalog.unnest($3::pg_catalog.text[]), pg_catalog.unnest($4::pg_catalog.text[]), \
                         pg_catalog.unnest($5::pg_catalog.text[]), pg_catalog.unnest($6::pg_catalog.text[]), \
                         pg_catalog.unnest($7::pg_catalog.int8[]), pg_catalog.unnest($8::pg_catalog.int4[]), \
                         pg_catalog.unnest($11::pg_catalog.int4[]), pg_catalog.unnest($12::pg_catalog.bool[]), \
                         pg_catalog.unnest($10::pg_catalog.text[]){more_arrays}) \
              AS t(m, b, c, r, s, n, z, x, g{more_names})"
    )
}

/// One message to dead-letter.
pub(crate) struct DeadLetter<'a> {
    pub(crate) message: &'a Message,
    /// The key the ledger recorded for it (None: its message id).
    pub(crate) key: Option<&'a str>,
    pub(crate) reason: RejectReason,
    /// `<reason>: <detail>`.
    pub(crate) text: &'a str,
    /// The table it was meant for (None: refused before a pipeline was
    /// chosen, by a router).
    pub(crate) target: Option<&'a str>,
}

/// The dead-letter statement, prepared once per store (as the owner).
pub(crate) struct DeadLetters {
    owner: pg_sys::Oid,
    stmt: OwnedPreparedStatement,
    /// The catalog has body_truncated (0.5.0): bodies are cut.
    cut: bool,
}

impl DeadLetters {
    pub(crate) fn prepare(
        client: &SpiClient<'_>,
        owner: pg_sys::Oid,
        catalog: (u32, u32, u32),
    ) -> DeadLetters {
        let types = [
            pg_sys::INT8OID,
            pg_sys::TEXTOID,
            TEXT_ARRAY,
            TEXT_ARRAY,
            TEXT_ARRAY,
            TEXT_ARRAY,
            INT8_ARRAY,
            pg_sys::INT4ARRAYOID,
            pg_sys::TEXTOID,
            TEXT_ARRAY,
            pg_sys::INT4ARRAYOID,
            pg_sys::BOOLARRAYOID,
            pg_sys::TEXTOID,
            pg_sys::INT8OID,
            TEXT_ARRAY,
            TEXT_ARRAY,
        ];
        as_owner(owner, || DeadLetters {
            owner,
            stmt: prepare(client, &dead_letter_sql(catalog), &types),
            cut: catalog >= (0, 5, 0),
        })
    }

    /// Writes `letters` of drain run `run_id` of `queue_url` through
    /// `pipeline`, produced by the role `role`.
    #[inline(never)] // a frame of its own in scripts/bench's profile (called once per batch)
    pub(crate) fn insert(
        &self,
        client: &mut SpiClient<'_>,
        run_id: i64,
        queue_url: &str,
        role: &str,
        pipeline: (&str, i64),
        letters: &[DeadLetter<'_>],
    ) {
        if letters.is_empty() {
            return;
        }
        // At most fetch_etl.dead_letter_max_body_bytes of each (dead_letter.rs).
        let cap = if self.cut {
            settings::dead_letter_max_body_bytes()
        } else {
            usize::MAX
        };
        let stored: Vec<StoredBody<'_>> = letters
            .iter()
            .map(|d| stored_body(&d.message.body, cap))
            .collect();
        let bodies: Vec<&str> = stored.iter().map(|b| b.text.as_ref()).collect();
        let sizes: Vec<i32> = stored
            .iter()
            .map(|b| i32::try_from(b.bytes).unwrap_or(i32::MAX))
            .collect();
        // A replay must see the message as the drain did (a router by
        // ATTRIBUTE, a column FROM MESSAGE group_id): its attributes are
        // kept, within the same cap as its body; a dead letter whose
        // attributes do not fit is kept as cut, never replayed.
        let attributes: Vec<Option<String>> =
            letters.iter().map(|d| attributes_json(d.message)).collect();
        let attributes_fit = |a: &Option<String>| a.as_ref().is_none_or(|a| a.len() <= cap);
        let cut: Vec<bool> = stored
            .iter()
            .zip(&attributes)
            .map(|(b, a)| b.truncated || !attributes_fit(a))
            .collect();
        let attributes: Vec<Option<&str>> = attributes
            .iter()
            .map(|a| a.as_deref().filter(|a| a.len() <= cap))
            .collect();
        let keys: Vec<Option<&str>> = letters.iter().map(|d| d.key).collect();
        let ids: Vec<&str> = letters
            .iter()
            .map(|d| d.message.message_id.as_str())
            .collect();
        let codes: Vec<&str> = letters.iter().map(|d| d.reason.as_str()).collect();
        let reasons: Vec<&str> = letters.iter().map(|d| d.text).collect();
        let sent: Vec<Option<i64>> = letters
            .iter()
            .map(|d| d.message.sent_timestamp_ms)
            .collect();
        let counts: Vec<Option<i32>> = letters.iter().map(|d| d.message.receive_count).collect();
        let targets: Vec<Option<&str>> = letters.iter().map(|d| d.target).collect();
        let args: [DatumWithOid<'_>; 16] = [
            run_id.into(),
            queue_url.into(),
            ids.into(),
            bodies.into(),
            codes.into(),
            reasons.into(),
            sent.into(),
            counts.into(),
            role.into(),
            targets.into(),
            sizes.into(),
            cut.into(),
            pipeline.0.into(),
            pipeline.1.into(),
            keys.into(),
            attributes.into(),
        ];
        as_owner(self.owner, || {
            client
                .update(&self.stmt, None, &args)
                .or_raise_spi("dead letters");
        });
    }
}
