//! fetch_etl's pure core: everything that decides *what* to do, with no
//! PostgreSQL in it. The extension (the root crate) only moves data between
//! this crate and PostgreSQL.
//!
//! - [`args`]: the bounds of the SQL functions' arguments.
//! - [`contract`]: the public vocabulary (reject reasons, run statuses,
//!   `on_error` modes), each spelled once.
//! - [`settings`]: every `fetch_etl.*` setting's name, default and bounds.
//! - [`envelope`]: SNS notifications and EventBridge events around an event.
//! - [`mask`]: keyed HMAC-SHA256 masking.
//! - [`budget`]: the memory bounds of one drain.
//! - [`batch`]: a batch of messages to ledger keys, rows and refusals.
//! - [`dead_letter`]: what a dead letter keeps of a refused body.
//! - [`failed_run`]: a failed run as recorded outside its transaction.
//! - [`message`]: one received SQS message.
//! - [`pipeline`]: pipelines (any event into any table) and routers; the
//!   exercise's login pipeline is one of them.
//! - [`progress`]: the board of runs in progress (shared memory).
//! - [`reject`]: why a message was not loaded.
//! - [`error`]: error kinds, mapped to SQLSTATEs by the extension.
//!
//! No pgrx here, ever, nor an async runtime, an HTTP client or the AWS SDK
//! (scripts/test fails the build if one appears; the SQS client and the
//! credential chain are `fetch_etl_sqs`): this crate tests with plain
//! `cargo test -p fetch_etl_core` in seconds.

pub mod args;
pub mod batch;
pub mod budget;
pub mod contract;
pub mod dead_letter;
pub mod envelope;
pub mod error;
pub mod failed_run;
pub mod mask;
pub mod message;
pub mod pipeline;
pub mod progress;
pub mod reject;
pub mod settings;
pub mod time;
