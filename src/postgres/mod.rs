//! Glue that only talks to PostgreSQL: errors and SQLSTATEs, settings,
//! SPI helpers, the key store, the pipelines and their target tables'
//! catalog entries, the store path's statements, run records, transaction callbacks, the per-backend
//! async runtime and the visibility heartbeat's callbacks. Decisions are
//! `fetch_etl_core`'s.

pub(crate) mod aws;
pub(crate) mod deletes;
pub(crate) mod error;
pub(crate) mod keystore;
pub(crate) mod locks;
pub(crate) mod pipelines;
pub(crate) mod progress;
pub(crate) mod recorder;
pub(crate) mod runs;
pub(crate) mod runtime;
pub(crate) mod settings;
pub(crate) mod spi;
pub(crate) mod store;
pub(crate) mod target;
pub(crate) mod visibility;
pub(crate) mod xact;
