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
//! - the receipt handles queued for deletion after COMMIT: at most
//!   [`MAX_PENDING_DELETE_BYTES`] per transaction;
//! - the visibility heartbeat's copy of them: at most [`MAX_HELD_BYTES`] per
//!   backend.
//!
//! [`worst_case_bytes`] adds these up; a test keeps it under 256 MiB at the
//! default concurrency limit, and the e2e test `test_memory_*` measures it.

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

/// Receipt handles a transaction may queue for deletion after COMMIT (about
/// 30,000 messages of AWS-length handles). A drain that reaches it stops
/// receiving, as at max_messages: commit, and the next drain goes on.
pub const MAX_PENDING_DELETE_BYTES: usize = 16 * 1024 * 1024;

/// The visibility heartbeat's registry of held messages (receipt handles and
/// bookkeeping). A drain that fills it stops receiving, as above; holds past
/// it are not extended.
pub const MAX_HELD_BYTES: usize = 16 * 1024 * 1024;

/// The longest receipt handle and message id accepted (AWS: 1,024 and 100).
pub const MAX_RECEIPT_HANDLE_BYTES: usize = 1024;
pub const MAX_MESSAGE_ID_BYTES: usize = 128;

/// Copies of a batch alive while it is stored (messages, events, columns,
/// SQL arrays).
const STORE_COPIES: usize = 4;

const _: () = assert!(STORE_FLUSH_BYTES < PUMP_HIGH_WATER);

/// What one drain may hold with `concurrency` calls in flight.
pub const fn worst_case_bytes(concurrency: usize) -> usize {
    concurrency * MAX_REPLY_BYTES
        + PUMP_HIGH_WATER
        + STORE_COPIES * STORE_FLUSH_BYTES
        + MAX_PENDING_DELETE_BYTES
        + MAX_HELD_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings;

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
}
