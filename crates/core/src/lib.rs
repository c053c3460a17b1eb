//! fetch_etl's pure core: everything that decides *what* to do, with no
//! PostgreSQL in it. The extension (the root crate) only moves data between
//! this crate and PostgreSQL.
//!
//! - [`args`]: the bounds of the SQL functions' arguments.
//! - [`contract`]: the public vocabulary (reject reasons, run statuses,
//!   `on_error` modes), each spelled once.
//! - [`settings`]: every `fetch_etl.*` setting's name, default and bounds.
//! - [`event`]: validating and flattening one login event.
//! - [`envelope`]: SNS notifications and EventBridge events around an event.
//! - [`mask`]: keyed HMAC-SHA256 masking.
//! - [`budget`]: the memory bounds of one drain.
//! - [`batch`]: received messages to column arrays, vault pairs and refusals.
//! - [`dead_letter`]: what a dead letter keeps of a refused body.
//! - [`target`]: which target tables are usable, their limits, the INSERT.
//! - [`sqs`]: the SQS client (wire protocols, signing, retries, the pump).
//! - [`error`]: error kinds, mapped to SQLSTATEs by the extension.
//!
//! No pgrx here, ever (scripts/test fails the build if it appears): this crate
//! tests with plain `cargo test -p fetch_etl_core` in seconds.

pub mod args;
pub mod batch;
pub mod budget;
pub mod contract;
pub mod credentials;
pub mod dead_letter;
pub mod envelope;
pub mod error;
pub mod event;
pub mod mask;
pub mod settings;
pub mod sqs;
pub mod target;
pub mod time;
