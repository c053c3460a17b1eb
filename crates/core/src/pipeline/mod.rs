//! Pipelines: any event into any table, declared in SQL
//! (docs/pipelines.md). A pipeline says, for each column of its target,
//! where the value comes from (a JSON path into the event, a message or
//! envelope field, a constant), how it is checked and converted, and
//! whether it is masked; optionally one row per element of an array, and
//! what makes a message the same event as one loaded before. A router sends
//! each message of a queue to one of several pipelines.
//!
//! - [`path`]: the SQL/JSON path subset.
//! - [`grammar`], [`spec`]: the column list, parsed.
//! - [`plan`]: a pipeline held against its target's columns; the INSERT.
//! - [`event`]: a body opened as an event (envelopes unwrapped).
//! - [`engine`]: a message made into rows, or refused with a reason.
//! - [`transform`]: the built-in transforms.
//! - [`router`]: routing by a discriminator.
//! - [`login`]: the built-in login pipeline (the exercise).
//! - [`catalog`]: pipelines and routers as catalog rows: checked, read back.

pub mod catalog;
pub mod engine;
pub mod event;
pub mod grammar;
pub mod login;
pub mod path;
pub mod plan;
pub mod router;
pub mod spec;
pub mod transform;
