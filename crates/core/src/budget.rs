//! The memory bounds of one drain, whatever a non-superuser sets.
//!
//! A drain holds, at most:
//! - the replies of the calls in flight: `fetch_etl.receive_concurrency`
//!   calls (capped by the superuser's `fetch_etl.max_receive_concurrency`),
//!   each reply at most [`MAX_REPLY_BYTES`];
//! - received messages not yet stored: the pump starts no new call while more
//!   than [`PUMP_HIGH_WATER`] bytes are outstanding;
//! - the batch being stored and its copies (parsed events, column arrays, SQL
//!   arrays): the drain stores a batch at `fetch_etl.batch_size` messages or
//!   [`STORE_FLUSH_BYTES`] bytes, whichever comes first;
//! - the PII vault's buffer of (mask, raw value) pairs not yet written: it
//!   is written once it holds [`VAULT_FLUSH_BYTES`] (or 5,000 pairs), one
//!   value past it at most (`fetch_etl.max_pii_bytes`, superuser-only), and
//!   its copies while it is written;
//! - the receipt handles queued for deletion after COMMIT: at most
//!   [`MAX_PENDING_DELETE_BYTES`] per transaction;
//! - the visibility heartbeat's copy of them: at most [`MAX_HELD_BYTES`] per
//!   backend.
//!
//! [`worst_case_bytes`] adds these up; a test keeps it under 256 MiB at the
//! default concurrency limit, and the e2e test `test_memory_*` measures it.

use crate::settings;

/// The largest reply accepted: ten 1 MiB messages with every byte escaped
/// once (JSON `\"`), plus ids, handles and attributes. A larger reply is
/// refused and the pump falls back to one message per call.
pub const MAX_REPLY_BYTES: usize = 21 * 1024 * 1024;

/// Received, unstored bytes above which the pump waits for the store.
pub const PUMP_HIGH_WATER: usize = 16 * 1024 * 1024;

/// A batch is stored once its messages reach this many bytes. Less than the
/// high-water mark, so the store never waits for the pump while the pump
/// waits for the store.
pub const STORE_FLUSH_BYTES: usize = 8 * 1024 * 1024;

/// The most one message's rows may take in memory (its cells and their
/// strings): a message whose pipeline would make more is refused
/// `too_large`. A batch is stored in parts of at most [`STORE_FLUSH_BYTES`]
/// of rows, so rows never take more than a batch of bodies would.
pub const MAX_MESSAGE_ROWS_BYTES: usize = STORE_FLUSH_BYTES;

/// Receipt handles a transaction may queue for deletion after COMMIT (about
/// 30,000 messages of AWS-length handles). A drain that reaches it stops
/// receiving, as at max_messages: commit, and the next drain goes on.
pub const MAX_PENDING_DELETE_BYTES: usize = 16 * 1024 * 1024;

/// The visibility heartbeat's registry of held messages (receipt handles and
/// bookkeeping). A drain that fills it stops receiving, as above; holds past
/// it are not extended.
pub const MAX_HELD_BYTES: usize = 16 * 1024 * 1024;

/// The PII vault's buffer is written once it holds this many bytes of
/// masks and raw values (or 5,000 pairs, whichever comes first). Normal
/// values (an IP address, a device id) reach 5,000 pairs first, at about
/// 0.6 MB; this bounds the buffer when senders send large values.
pub const VAULT_FLUSH_BYTES: usize = 1024 * 1024;

/// What one vault pair costs besides its two strings (their headers).
pub const VAULT_PAIR_OVERHEAD: usize = 48;

/// The longest receipt handle and message id accepted (AWS: 1,024 and 100).
pub const MAX_RECEIPT_HANDLE_BYTES: usize = 1024;
pub const MAX_MESSAGE_ID_BYTES: usize = 128;

/// Copies of a batch alive while it is stored (messages, events, columns,
/// SQL arrays).
const STORE_COPIES: usize = 4;

/// Copies of the vault buffer alive while it is written (the pairs, the
/// text datums, the two arrays, the rows being inserted).
const VAULT_COPIES: usize = 4;

/// The vault buffer at its fullest: one value past [`VAULT_FLUSH_BYTES`],
/// with the default `fetch_etl.max_pii_bytes` (a superuser who raises it
/// raises this too).
const VAULT_BUFFER_MAX: usize = VAULT_FLUSH_BYTES
    + settings::MAX_PII_BYTES.default as usize
    + crate::mask::MASK_LEN
    + VAULT_PAIR_OVERHEAD;

const _: () = assert!(STORE_FLUSH_BYTES < PUMP_HIGH_WATER);

/// Dead letters one page of a replay locks and sizes (ids and lengths only);
/// their bodies are then read in runs of at most [`STORE_FLUSH_BYTES`], as a
/// drain stores its batches, so a replay's memory does not grow with
/// `max_rows` or with the bodies' sizes.
pub const REPLAY_PAGE_ROWS: usize = 1000;

/// `sizes` cut into consecutive runs whose total is at most `budget` bytes;
/// an item larger than `budget` is a run of its own. Never an empty run.
pub fn byte_runs(sizes: &[usize], budget: usize) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let (mut start, mut total) = (0, 0usize);
    for (i, &n) in sizes.iter().enumerate() {
        if i > start && total.saturating_add(n) > budget {
            runs.push(start..i);
            (start, total) = (i, 0);
        }
        total = total.saturating_add(n);
    }
    if start < sizes.len() {
        runs.push(start..sizes.len());
    }
    runs
}

/// What one drain may hold with `concurrency` calls in flight.
pub const fn worst_case_bytes(concurrency: usize) -> usize {
    concurrency * MAX_REPLY_BYTES
        + PUMP_HIGH_WATER
        + STORE_COPIES * STORE_FLUSH_BYTES
        + VAULT_COPIES * VAULT_BUFFER_MAX
        + MAX_PENDING_DELETE_BYTES
        + MAX_HELD_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;

    // The bounds are constants: checked when the crate compiles.
    const _: () = {
        let limit = settings::MAX_RECEIVE_CONCURRENCY.default as usize;
        assert!(worst_case_bytes(limit) < 256 * 1024 * 1024);
        // ten of the largest messages SQS takes fit one reply, escaped once
        assert!(10 * 2 * (settings::SQS_MAX_BODY_BYTES as usize) < MAX_REPLY_BYTES);
        // the user's own setting is not the bound: the superuser's is
        assert!(settings::RECEIVE_CONCURRENCY.max > settings::MAX_RECEIVE_CONCURRENCY.default);
    };

    #[test]
    fn memory_the_default_limit_keeps_a_drain_under_256_mib() {
        let limit = settings::MAX_RECEIVE_CONCURRENCY.default as usize;
        assert!(worst_case_bytes(limit) < 256 * 1024 * 1024);
        assert_eq!(
            settings::MAX_RECEIVE_CONCURRENCY.access,
            settings::Access::Superuser
        );
    }

    #[test]
    fn byte_runs_stay_within_the_budget_and_cover_everything_once() {
        assert_eq!(byte_runs(&[], 10), Vec::<std::ops::Range<usize>>::new());
        assert_eq!(byte_runs(&[3, 3, 3, 3], 6), vec![0..2, 2..4]);
        assert_eq!(byte_runs(&[3, 3, 3, 3], 7), vec![0..2, 2..4]);
        assert_eq!(byte_runs(&[3, 3, 3, 3], 12), vec![0..4]);
        // a body larger than the budget is read alone, never skipped
        assert_eq!(byte_runs(&[1, 50, 1, 1], 10), vec![0..1, 1..2, 2..4]);
        assert_eq!(byte_runs(&[50], 10), vec![0..1]);
        assert_eq!(
            byte_runs(&[0, 0, usize::MAX, 0], 10),
            vec![0..2, 2..3, 3..4]
        );
        let sizes: Vec<usize> = (0..1000).map(|i| (i * 7919) % 3_000_000).collect();
        let runs = byte_runs(&sizes, STORE_FLUSH_BYTES);
        let mut next = 0;
        for r in &runs {
            assert_eq!(r.start, next);
            assert!(!r.is_empty());
            let total: usize = sizes[r.clone()].iter().sum();
            assert!(total <= STORE_FLUSH_BYTES || r.len() == 1, "{r:?} {total}");
            next = r.end;
        }
        assert_eq!(next, sizes.len());
    }
}
