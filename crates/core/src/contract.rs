//! The public vocabulary of fetch_etl: values users filter on, check in SQL
//! and read in the docs. Each is spelled once, here. `tests/contracts.rs`
//! checks that the drain_runs status CHECK lists exactly the run statuses,
//! that docs/reference.md's tables list exactly the reject reasons and run
//! statuses, and that its sqs_drain signature names every on_error mode.

use std::fmt;

/// Declares a C-like enum whose variants each have one stable SQL spelling.
macro_rules! sql_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in documentation order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The spelling stored in tables and accepted as an argument.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The value spelled `s`, if any.
            pub fn parse(s: &str) -> Option<$name> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

sql_enum! {
    /// Why a message became a dead letter (`fetch_etl.dead_letters.reason_code`).
    RejectReason {
        /// The body is not JSON.
        NotJson = "not_json",
        /// The body is JSON but not an object.
        NotObject = "not_object",
        /// The built-in login pipeline's event has none of the login fields
        /// (what other pipelines call `unrecognized_event`).
        NotLoginEvent = "not_login_event",
        /// The event has none of its pipeline's fields, or is a message of
        /// SNS's own (a subscription confirmation).
        UnrecognizedEvent = "unrecognized_event",
        /// A REQUIRED value (the login's `user_id`) or the idempotency key
        /// is missing, null or empty.
        MissingField = "missing_field",
        /// A value that is not of the JSON type its column asks for (a login
        /// field that is not a string or null), or a path that selects
        /// several values for one column.
        WrongType = "wrong_type",
        /// A value longer than its column allows, or a masked value longer
        /// than `fetch_etl.max_pii_bytes`.
        TooLong = "too_long",
        /// A `\u0000` in a value (PostgreSQL text cannot store it).
        NulCharacter = "nul_character",
        /// JSON nested more than 128 levels.
        TooDeep = "too_deep",
        /// A body larger than `fetch_etl.max_body_bytes`.
        TooLarge = "too_large",
        /// The same key twice in the object.
        DuplicateField = "duplicate_field",
        /// A value the `version` transform (the exercise's `app_version`)
        /// cannot encode into the integer column.
        BadAppVersion = "bad_app_version",
        /// An SNS notification or EventBridge event that carries no event
        /// (no string `Message`, no `detail` object).
        MalformedEnvelope = "malformed_envelope",
        /// The target table refused the row with a data error.
        RejectedByTable = "rejected_by_table",
        /// A value the column's type (or domain) refuses: the detail names
        /// the column, where the value came from and PostgreSQL's SQLSTATE.
        BadValue = "bad_value",
        /// A router found no route for the message.
        NoRoute = "no_route",
        /// A pipeline's rows path selected no element of the event.
        NoRows = "no_rows",
    }
}

sql_enum! {
    /// The outcome of one `sqs_drain` call (`fetch_etl.drain_runs.status`).
    RunStatus {
        /// Still in progress (only ever seen from inside the drain's transaction).
        Running = "running",
        /// Drained until the queue looked empty or `max_messages` came in.
        Ok = "ok",
        /// Receiving failed after some messages came in; those were stored.
        Partial = "partial",
        /// Another session was draining the queue; nothing was done.
        Skipped = "skipped",
        /// Failed and rolled back. Recorded whatever `on_error` is: with
        /// `'raise'`, by a background worker outside the failing transaction.
        Failed = "failed",
    }
}

sql_enum! {
    /// How a queue is doing (`fetch_etl.queue_health.state`), from its
    /// latest run and, when that was skipped, the runs since its latest
    /// real one.
    QueueState {
        /// The latest run loaded rows.
        Loading = "loading",
        /// The latest run found the queue empty.
        Idle = "idle",
        /// The latest run received messages (or left some in the queue) but
        /// loaded none: all refused, duplicates or deferred.
        NotLoading = "not_loading",
        /// The latest run failed, or an error stopped it early (`partial`).
        Failing = "failing",
        /// The latest runs found the queue held by another session
        /// (`skipped_since` says since when); nothing loads meanwhile.
        Skipped = "skipped",
    }
}

sql_enum! {
    /// What a run in progress is doing (`fetch_etl.drain_progress().phase`).
    Phase {
        /// Waiting for SQS (its receives are in flight).
        Receiving = "receiving",
        /// Storing a batch: ledger, rows, vault, dead letters.
        Storing = "storing",
        /// Done; its transaction has not ended yet (the caller's statement
        /// or transaction goes on).
        Committing = "committing",
        /// Committed; deleting its messages from the queue.
        Deleting = "deleting",
        /// Replaying dead letters.
        Replaying = "replaying",
    }
}

sql_enum! {
    /// Which function a run in progress is (`fetch_etl.drain_progress().kind`).
    RunKind {
        /// `sqs_drain` (and each call of `sqs_drain_for`).
        Drain = "drain",
        /// `replay_dead_letters`.
        Replay = "replay",
    }
}

sql_enum! {
    /// What a row of `fetch_etl.pipelines` is (its `kind`).
    PipelineKind {
        /// Makes each message into rows of its target table.
        Pipeline = "pipeline",
        /// Sends each message to one of several pipelines.
        Router = "router",
    }
}

sql_enum! {
    /// What `sqs_drain` does when the drain fails (its `on_error` argument).
    OnError {
        /// Raise: the transaction rolls back; the failed run is recorded
        /// outside it.
        Raise = "raise",
        /// Roll back the drain's work, record the run as failed, warn, return.
        Record = "record",
    }
}

impl OnError {
    /// The error for a spelling that is not a mode.
    pub fn describe_choices() -> String {
        let names: Vec<String> = Self::ALL.iter().map(|m| format!("'{m}'")).collect();
        names.join(" or ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_round_trip_and_are_distinct() {
        for r in RejectReason::ALL {
            assert_eq!(RejectReason::parse(r.as_str()), Some(*r));
            assert!(r
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_'));
        }
        let mut names: Vec<&str> = RejectReason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), RejectReason::ALL.len());
        assert_eq!(RunStatus::parse("partial"), Some(RunStatus::Partial));
        assert_eq!(RunStatus::parse("PARTIAL"), None);
        assert_eq!(OnError::parse("record"), Some(OnError::Record));
        assert_eq!(OnError::parse("ignore"), None);
        assert_eq!(OnError::describe_choices(), "'raise' or 'record'");
        assert_eq!(RejectReason::TooLong.to_string(), "too_long");
    }
}
