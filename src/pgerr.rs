//! The one place where error kinds become SQLSTATEs.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::errors::{Classified, ErrorKind};

pub fn sqlstate(kind: ErrorKind) -> PgSqlErrorCode {
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
        ErrorKind::Internal => ERRCODE_INTERNAL_ERROR,
    }
}

/// Raises an ERROR with the SQLSTATE of `kind`. Never returns.
#[track_caller]
pub fn raise(kind: ErrorKind, message: impl Into<String>) -> ! {
    ErrorReport::new(sqlstate(kind), message.into(), "fetch_etl").report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// Raises an ERROR with a hint. Never returns.
#[track_caller]
pub fn raise_with_hint(kind: ErrorKind, message: impl Into<String>, hint: impl Into<String>) -> ! {
    ErrorReport::new(sqlstate(kind), message.into(), "fetch_etl")
        .set_hint(hint.into())
        .report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// `result.or_raise()`: unwrap, or raise the error with its SQLSTATE.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T, E: Classified + std::fmt::Display> OrRaise<T> for Result<T, E> {
    #[track_caller]
    fn or_raise(self) -> T {
        match self {
            Ok(v) => v,
            Err(e) => raise(e.kind(), e.to_string()),
        }
    }
}

/// Raises 42501 unless the current user is a superuser.
pub fn require_superuser(action: &str) {
    // SAFETY: superuser() only reads the current user's catalog entry.
    if !unsafe { pg_sys::superuser() } {
        raise(
            ErrorKind::InsufficientPrivilege,
            format!("only a superuser can {action}"),
        );
    }
}
