//! Error classes shared by the pure modules.
//!
//! Pure code says *what kind* of failure happened; the extension's one error
//! path (`src/postgres/error.rs`) maps each kind to one SQLSTATE, so the codes
//! users see are consistent and documented (docs/reference.md, "Errors").

/// What went wrong, as far as a SQL caller is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A function argument or setting has an unusable value (22023).
    InvalidParameter,
    /// The caller lacks a privilege (42501).
    InsufficientPrivilege,
    /// Something the function needs is missing or not set up (55000).
    NotInPrerequisiteState,
    /// A named object (queue, table) does not exist (42704).
    UndefinedObject,
    /// A table lacks a column we need (42703).
    UndefinedColumn,
    /// A column has a type we cannot store into (42804).
    DatatypeMismatch,
    /// The named object is not the kind we need, e.g. a view (42809).
    WrongObjectType,
    /// The remote service rejected our credentials (28000).
    InvalidAuthorization,
    /// Could not connect to the remote service (08001).
    ConnectionFailure,
    /// The connection failed or timed out mid-request (08006).
    ConnectionLost,
    /// The remote service answered with something we cannot understand (08P01).
    ProtocolViolation,
    /// A size limit was exceeded (54000).
    LimitExceeded,
    /// The remote service reported an error we have no better class for (58000).
    External,
    /// A pipeline's column list or path does not parse (42601).
    SyntaxError,
    /// A NOT NULL column without a default that nothing fills (23502).
    NotNullViolation,
    /// A generated column, which nothing may fill (428C9).
    GeneratedAlways,
    /// A pipeline of that name exists already (42710).
    DuplicateObject,
    /// A name that is not a valid name for its object (42602).
    InvalidName,
    /// An object others depend on, such as a pipeline a router uses (2BP01).
    DependentObjectsStillExist,
    /// Changed by another session meanwhile: try again (40001).
    SerializationFailure,
    /// A bug: should not happen (XX000).
    Internal,
}

/// Implemented by every error enum of the pure modules.
pub trait Classified: std::fmt::Display {
    fn kind(&self) -> ErrorKind;

    /// A HINT for the SQL caller, if there is a useful one.
    fn hint(&self) -> Option<String> {
        None
    }
}
