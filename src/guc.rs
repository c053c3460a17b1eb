//! Settings (GUCs). Credentials are superuser-only and hidden from SHOW ALL
//! and pg_settings; see README "Credentials" for where to keep them.

use std::cell::Cell;
use std::ffi::{CStr, CString};

use pgrx::prelude::*;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

use crate::sqs::client::ProtocolChoice;

pub static AWS_ACCESS_KEY_ID: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);
pub static AWS_SECRET_ACCESS_KEY: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);
pub static AWS_SESSION_TOKEN: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);
pub static AWS_REGION: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static SQS_ENDPOINT_URL: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static SQS_PROTOCOL: GucSetting<SqsProtocol> =
    GucSetting::<SqsProtocol>::new(SqsProtocol::Auto);
pub static RECEIVE_CONCURRENCY: GucSetting<i32> = GucSetting::<i32>::new(8);
pub static BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(100);
pub static MAX_BODY_BYTES: GucSetting<i32> = GucSetting::<i32>::new(64 * 1024);
pub static HTTP_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(10_000);
pub static HTTP_MAX_ATTEMPTS: GucSetting<i32> = GucSetting::<i32>::new(5);
pub static DELETE_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(10_000);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PostgresGucEnum)]
pub enum SqsProtocol {
    Auto,
    Json,
    Query,
}

impl SqsProtocol {
    pub fn choice(self) -> ProtocolChoice {
        match self {
            SqsProtocol::Auto => ProtocolChoice::Auto,
            SqsProtocol::Json => ProtocolChoice::Json,
            SqsProtocol::Query => ProtocolChoice::Query,
        }
    }
}

thread_local! {
    static PRELOADED: Cell<bool> = const { Cell::new(false) };
}

/// True when the library was loaded by shared_preload_libraries.
pub fn preloaded() -> bool {
    PRELOADED.with(|p| p.get())
}

pub fn init() {
    // SAFETY: reading a flag PostgreSQL sets while loading preload libraries.
    PRELOADED.with(|p| p.set(unsafe { pg_sys::process_shared_preload_libraries_in_progress }));
    let secret = GucFlags::SUPERUSER_ONLY | GucFlags::NO_SHOW_ALL;
    GucRegistry::define_string_guc(
        c"fetch_etl.aws_access_key_id",
        c"AWS access key id for SQS (default: the server's AWS_ACCESS_KEY_ID).",
        c"Superuser only. Prefer the server's environment; see the README.",
        &AWS_ACCESS_KEY_ID,
        GucContext::Suset,
        secret,
    );
    GucRegistry::define_string_guc(
        c"fetch_etl.aws_secret_access_key",
        c"AWS secret access key for SQS (default: the server's AWS_SECRET_ACCESS_KEY).",
        c"Superuser only, never shown to other roles. Prefer the server's environment.",
        &AWS_SECRET_ACCESS_KEY,
        GucContext::Suset,
        secret,
    );
    GucRegistry::define_string_guc(
        c"fetch_etl.aws_session_token",
        c"AWS session token for temporary credentials (default: the server's AWS_SESSION_TOKEN).",
        c"Superuser only, never shown to other roles.",
        &AWS_SESSION_TOKEN,
        GucContext::Suset,
        secret,
    );
    GucRegistry::define_string_guc(
        c"fetch_etl.aws_region",
        c"AWS region for signing when the queue host names none (default: AWS_REGION, then us-east-1).",
        c"",
        &AWS_REGION,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"fetch_etl.sqs_endpoint_url",
        c"Send SQS requests here instead of the queue URL's host (default: AWS_ENDPOINT_URL_SQS, AWS_ENDPOINT_URL).",
        c"For emulators whose queue URLs name an unreachable host.",
        &SQS_ENDPOINT_URL,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"fetch_etl.sqs_protocol",
        c"SQS wire protocol: auto (JSON, falling back to Query), json, or query.",
        c"",
        &SQS_PROTOCOL,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"fetch_etl.receive_concurrency",
        c"ReceiveMessage calls sqs_drain keeps in flight at once.",
        c"",
        &RECEIVE_CONCURRENCY,
        1,
        64,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"fetch_etl.batch_size",
        c"Messages stored per batch of INSERT statements.",
        c"",
        &BATCH_SIZE,
        10,
        100_000,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"fetch_etl.max_body_bytes",
        c"Message bodies larger than this are rejected as too_large.",
        c"",
        &MAX_BODY_BYTES,
        256,
        16 * 1024 * 1024,
        GucContext::Userset,
        GucFlags::UNIT_BYTE,
    );
    GucRegistry::define_int_guc(
        c"fetch_etl.http_timeout",
        c"Timeout of one SQS request, not counting long-poll waits.",
        c"",
        &HTTP_TIMEOUT_MS,
        100,
        600_000,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"fetch_etl.http_max_attempts",
        c"Attempts per SQS request for throttling, server and network errors (1 = no retry).",
        c"",
        &HTTP_MAX_ATTEMPTS,
        1,
        20,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"fetch_etl.delete_timeout",
        c"Time allowed after COMMIT for deleting the drained messages from SQS.",
        c"Messages not deleted in time come back and are counted as duplicates.",
        &DELETE_TIMEOUT_MS,
        100,
        600_000,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    // SAFETY: reserves the prefix so typos in fetch_etl.* settings are reported.
    #[cfg(any(feature = "pg15", feature = "pg16", feature = "pg17", feature = "pg18"))]
    unsafe {
        pg_sys::MarkGUCPrefixReserved(c"fetch_etl".as_ptr())
    };
}

/// A string setting, or None when unset or empty.
pub fn string(setting: &GucSetting<Option<CString>>) -> Option<String> {
    setting
        .get()
        .and_then(|c| c.into_string().ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// True when `name` has a value from the configuration file, ALTER SYSTEM,
/// ALTER DATABASE/ROLE (its reset value), not only from a SET in this session.
pub fn set_persistently(name: &CStr) -> bool {
    // SAFETY: looks up a registered setting by name.
    let reset = unsafe { pg_sys::GetConfigOptionResetString(name.as_ptr()) };
    // SAFETY: PostgreSQL returns a valid C string or NULL.
    !reset.is_null() && !unsafe { CStr::from_ptr(reset) }.to_bytes().is_empty()
}
