//! The one error path: every error fetch_etl raises goes through here, so
//! each kind has one SQLSTATE (docs/reference.md, "Errors").
//!
//! - [`raise`] / [`raise_with_hint`]: an ERROR of a given [`ErrorKind`].
//! - [`OrRaise`]: `result.or_raise()` for the core's classified errors.
//! - [`SpiOrRaise`]: `result.or_raise_spi("ledger")` for SPI calls, whose
//!   failures are internal errors (a bug or a broken installation).
//! - [`Caught`]: an error caught in a subtransaction, with its SQLSTATE.

use pgrx::pg_sys::panic::{CaughtError, ErrorReport};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use fetch_etl_core::error::{Classified, ErrorKind};

fn errcode(kind: ErrorKind) -> PgSqlErrorCode {
    use PgSqlErrorCode::*;
    match kind {
        ErrorKind::InvalidParameter => ERRCODE_INVALID_PARAMETER_VALUE,
        ErrorKind::InsufficientPrivilege => ERRCODE_INSUFFICIENT_PRIVILEGE,
        ErrorKind::NotInPrerequisiteState => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        ErrorKind::UndefinedObject => ERRCODE_UNDEFINED_OBJECT,
        ErrorKind::UndefinedColumn => ERRCODE_UNDEFINED_COLUMN,
        ErrorKind::DatatypeMismatch => ERRCODE_DATATYPE_MISMATCH,
        ErrorKind::WrongObjectType => ERRCODE_WRONG_OBJECT_TYPE,
        ErrorKind::InvalidAuthorization => ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
        ErrorKind::ConnectionFailure => ERRCODE_SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
        ErrorKind::ConnectionLost => ERRCODE_CONNECTION_FAILURE,
        ErrorKind::ProtocolViolation => ERRCODE_PROTOCOL_VIOLATION,
        ErrorKind::LimitExceeded => ERRCODE_PROGRAM_LIMIT_EXCEEDED,
        ErrorKind::External => ERRCODE_SYSTEM_ERROR,
        ErrorKind::SyntaxError => ERRCODE_SYNTAX_ERROR,
        ErrorKind::NotNullViolation => ERRCODE_NOT_NULL_VIOLATION,
        ErrorKind::GeneratedAlways => ERRCODE_GENERATED_ALWAYS,
        ErrorKind::DuplicateObject => ERRCODE_DUPLICATE_OBJECT,
        ErrorKind::InvalidName => ERRCODE_INVALID_NAME,
        ErrorKind::SerializationFailure => ERRCODE_T_R_SERIALIZATION_FAILURE,
        ErrorKind::DependentObjectsStillExist => ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
        ErrorKind::Internal => ERRCODE_INTERNAL_ERROR,
    }
}

/// Raises an ERROR with the SQLSTATE of `kind`. Never returns.
#[track_caller]
pub(crate) fn raise(kind: ErrorKind, message: impl Into<String>) -> ! {
    ErrorReport::new(errcode(kind), message.into(), "fetch_etl").report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// Raises an ERROR with a hint. Never returns.
#[track_caller]
pub(crate) fn raise_with_hint(
    kind: ErrorKind,
    message: impl Into<String>,
    hint: impl Into<String>,
) -> ! {
    ErrorReport::new(errcode(kind), message.into(), "fetch_etl")
        .set_hint(hint.into())
        .report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// Raises a classified error, with its hint if it has one.
#[track_caller]
pub(crate) fn raise_classified(e: &impl Classified) -> ! {
    match e.hint() {
        Some(h) => raise_with_hint(e.kind(), e.to_string(), h),
        None => raise(e.kind(), e.to_string()),
    }
}

/// `result.or_raise()`: unwrap, or raise the error with its SQLSTATE.
pub(crate) trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T, E: Classified> OrRaise<T> for Result<T, E> {
    #[track_caller]
    fn or_raise(self) -> T {
        match self {
            Ok(v) => v,
            Err(e) => raise_classified(&e),
        }
    }
}

/// `spi_result.or_raise_spi("what")`: unwrap, or raise XX000 "what: error".
/// SPI itself only fails on our bugs or a broken installation; errors raised
/// by the statements (constraints, privileges) are PostgreSQL ERRORs, which
/// propagate on their own.
pub(crate) trait SpiOrRaise<T> {
    fn or_raise_spi(self, what: &str) -> T;
}

impl<T> SpiOrRaise<T> for Result<T, pgrx::spi::SpiError> {
    #[track_caller]
    fn or_raise_spi(self, what: &str) -> T {
        self.unwrap_or_else(|e| raise(ErrorKind::Internal, format!("{what}: {e}")))
    }
}

/// Raises 42501 unless the current user is a superuser.
pub(crate) fn require_superuser(action: &str) {
    // SAFETY: superuser() only reads the current user's catalog entry.
    if !unsafe { pg_sys::superuser() } {
        raise(
            ErrorKind::InsufficientPrivilege,
            format!("only a superuser can {action}"),
        );
    }
}

/// An error caught in a subtransaction (see `spi::in_subxact`).
#[derive(Debug)]
pub(crate) struct Caught(pub(crate) Box<CaughtError>);

impl Caught {
    /// The five-character SQLSTATE (None for a Rust panic).
    pub(crate) fn sqlstate(&self) -> Option<String> {
        let code = match &*self.0 {
            CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => {
                r.sql_error_code() as i32
            }
            CaughtError::RustPanic { .. } => return None,
        };
        // PostgreSQL packs the five characters six bits each (MAKE_SQLSTATE).
        Some(
            (0..5)
                .map(|i| (((code >> (6 * i)) & 0x3F) as u8 + b'0') as char)
                .collect(),
        )
    }

    fn class_is(&self, classes: &[&str]) -> bool {
        self.sqlstate()
            .is_some_and(|s| classes.iter().any(|c| s.starts_with(c)))
    }

    /// An error one row's data can cause: any SQLSTATE but the classes of
    /// connection (08), transaction rollback (40), resources (53), object
    /// state and locks (55), operator intervention (57), system (58) and
    /// internal (XX) errors, which no row can be blamed for.
    pub(crate) fn is_row_error(&self) -> bool {
        self.sqlstate().is_some() && !self.class_is(&["08", "40", "53", "55", "57", "58", "XX"])
    }

    /// A privilege error (42501).
    pub(crate) fn is_privilege_error(&self) -> bool {
        self.sqlstate().as_deref() == Some("42501")
    }

    /// A unique violation (23505): a key already there, or committed
    /// meanwhile by the session we waited for.
    pub(crate) fn is_unique_violation(&self) -> bool {
        self.sqlstate().as_deref() == Some("23505")
    }

    /// `lock_timeout` ran out (55P03).
    pub(crate) fn is_lock_timeout(&self) -> bool {
        self.sqlstate().as_deref() == Some("55P03")
    }

    /// Cancellation, timeouts and shutdown (class 57): never to be swallowed.
    pub(crate) fn is_interrupt(&self) -> bool {
        self.class_is(&["57"])
    }

    /// The server or this backend is shutting down (57P01, 57P02...):
    /// nothing more is to be done but raise it.
    pub(crate) fn is_shutdown(&self) -> bool {
        self.sqlstate().is_some_and(|s| s.starts_with("57P"))
    }

    /// "SQLSTATE message".
    pub(crate) fn describe(&self) -> String {
        let msg = match &*self.0 {
            CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r.message(),
            CaughtError::RustPanic { ereport, .. } => ereport.message(),
        };
        format!(
            "{} {msg}",
            self.sqlstate().unwrap_or_else(|| "XX000".into())
        )
    }

    /// Raises it again, unchanged.
    pub(crate) fn rethrow(self) -> ! {
        (*self.0).rethrow()
    }
}
