//! Registers the `fetch_etl.*` settings with PostgreSQL and reads them.
//! Names, descriptions, defaults and bounds come from
//! `fetch_etl_core::settings`; this file only binds them to GUC variables.
//! Credentials are superuser-only and hidden from SHOW ALL and pg_settings;
//! see docs/security.md for where to keep them.

use std::cell::Cell;
use std::ffi::{CStr, CString};
use std::time::Duration;

use pgrx::prelude::*;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

use fetch_etl_core::envelope::Envelopes;
use fetch_etl_core::settings::{
    self as defs, Access, EnumSetting, IntSetting, StringSetting, Unit,
};
use fetch_etl_sqs::heartbeat::{HoldRules, MIN_EXTENSION};
use fetch_etl_sqs::Protocol;

type StringGuc = GucSetting<Option<CString>>;

pub(crate) static AWS_ACCESS_KEY_ID: StringGuc = StringGuc::new(defs::AWS_ACCESS_KEY_ID.default);
pub(crate) static AWS_SECRET_ACCESS_KEY: StringGuc =
    StringGuc::new(defs::AWS_SECRET_ACCESS_KEY.default);
pub(crate) static AWS_SESSION_TOKEN: StringGuc = StringGuc::new(defs::AWS_SESSION_TOKEN.default);
pub(crate) static AWS_ROLE_ARN: StringGuc = StringGuc::new(defs::AWS_ROLE_ARN.default);
pub(crate) static AWS_EXTERNAL_ID: StringGuc = StringGuc::new(defs::AWS_EXTERNAL_ID.default);
pub(crate) static AWS_ROLE_SESSION_NAME: StringGuc =
    StringGuc::new(defs::AWS_ROLE_SESSION_NAME.default);
pub(crate) static AWS_REGION: StringGuc = StringGuc::new(defs::AWS_REGION.default);
pub(crate) static SQS_ENDPOINT_URL: StringGuc = StringGuc::new(defs::SQS_ENDPOINT_URL.default);
static ALLOWED_ENDPOINTS: StringGuc = StringGuc::new(defs::ALLOWED_ENDPOINTS.default);
static SQS_PROTOCOL: GucSetting<SqsProtocol> = GucSetting::<SqsProtocol>::new(SqsProtocol::Auto);
static ENVELOPES: GucSetting<EnvelopesGuc> = GucSetting::<EnvelopesGuc>::new(EnvelopesGuc::Auto);
static DELETE_AFTER: GucSetting<DeleteAfter> =
    GucSetting::<DeleteAfter>::new(DeleteAfter::LocalFlush);
static RECEIVE_CONCURRENCY: GucSetting<i32> =
    GucSetting::<i32>::new(defs::RECEIVE_CONCURRENCY.default);
static MAX_RECEIVE_CONCURRENCY: GucSetting<i32> =
    GucSetting::<i32>::new(defs::MAX_RECEIVE_CONCURRENCY.default);
static LEDGER_WAIT_TIMEOUT: GucSetting<i32> =
    GucSetting::<i32>::new(defs::LEDGER_WAIT_TIMEOUT.default);
static BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(defs::BATCH_SIZE.default);
static MAX_BODY_BYTES: GucSetting<i32> = GucSetting::<i32>::new(defs::MAX_BODY_BYTES.default);
static MAX_PII_BYTES: GucSetting<i32> = GucSetting::<i32>::new(defs::MAX_PII_BYTES.default);
static DEAD_LETTER_MAX_BODY_BYTES: GucSetting<i32> =
    GucSetting::<i32>::new(defs::DEAD_LETTER_MAX_BODY_BYTES.default);
static DEAD_LETTER_RETENTION: GucSetting<i32> =
    GucSetting::<i32>::new(defs::DEAD_LETTER_RETENTION.default);
static HTTP_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(defs::HTTP_TIMEOUT.default);
static HTTP_MAX_ATTEMPTS: GucSetting<i32> = GucSetting::<i32>::new(defs::HTTP_MAX_ATTEMPTS.default);
static DELETE_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(defs::DELETE_TIMEOUT.default);
static VISIBILITY_EXTENSION_LIMIT: GucSetting<i32> =
    GucSetting::<i32>::new(defs::VISIBILITY_EXTENSION_LIMIT.default);
static VISIBILITY_ON_ROLLBACK: GucSetting<i32> =
    GucSetting::<i32>::new(defs::VISIBILITY_ON_ROLLBACK.default);

/// `fetch_etl.sqs_protocol`. The GUC needs its own enum (pgrx derives the
/// catalog of values from it); [`sqs_protocol`] maps it to the client's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PostgresGucEnum)]
enum SqsProtocol {
    #[name = c"auto"]
    Auto,
    #[name = c"json"]
    Json,
    #[name = c"query"]
    Query,
}

/// `fetch_etl.envelopes`; [`envelopes`] maps it to the core's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PostgresGucEnum)]
enum EnvelopesGuc {
    #[name = c"auto"]
    Auto,
    #[name = c"none"]
    None,
}

/// `fetch_etl.delete_after`: when the drained messages may be deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PostgresGucEnum)]
pub(crate) enum DeleteAfter {
    /// The commit record is flushed to local disk (always forced).
    #[name = c"local_flush"]
    LocalFlush,
    /// ...and every streaming standby has flushed it too.
    #[name = c"standby_flush"]
    StandbyFlush,
}

thread_local! {
    static PRELOADED: Cell<bool> = const { Cell::new(false) };
}

/// True when the library was loaded by shared_preload_libraries.
pub(crate) fn preloaded() -> bool {
    PRELOADED.with(|p| p.get())
}

fn context(access: Access) -> GucContext {
    match access {
        Access::Anyone => GucContext::Userset,
        Access::Superuser => GucContext::Suset,
    }
}

fn define_string(def: &StringSetting, guc: &'static StringGuc) {
    let flags = if def.secret {
        GucFlags::SUPERUSER_ONLY | GucFlags::NO_SHOW_ALL
    } else {
        GucFlags::default()
    };
    GucRegistry::define_string_guc(
        def.name,
        def.short,
        def.long,
        guc,
        context(def.access),
        flags,
    );
}

fn define_int(def: &IntSetting, guc: &'static GucSetting<i32>) {
    let flags = match def.unit {
        Unit::None => GucFlags::default(),
        Unit::Bytes => GucFlags::UNIT_BYTE,
        Unit::Milliseconds => GucFlags::UNIT_MS,
        Unit::Seconds => GucFlags::UNIT_S,
    };
    GucRegistry::define_int_guc(
        def.name,
        def.short,
        def.long,
        guc,
        def.min,
        def.max,
        context(def.access),
        flags,
    );
}

fn define_enum<T>(def: &EnumSetting, guc: &'static GucSetting<T>)
where
    T: pgrx::GucEnum + 'static,
{
    GucRegistry::define_enum_guc(
        def.name,
        def.short,
        def.long,
        guc,
        context(def.access),
        GucFlags::default(),
    );
}

/// Called once from `_PG_init`.
pub(crate) fn init() {
    // SAFETY: reading a flag PostgreSQL sets while loading preload libraries.
    PRELOADED.with(|p| p.set(unsafe { pg_sys::process_shared_preload_libraries_in_progress }));
    define_string(&defs::AWS_ACCESS_KEY_ID, &AWS_ACCESS_KEY_ID);
    define_string(&defs::AWS_SECRET_ACCESS_KEY, &AWS_SECRET_ACCESS_KEY);
    define_string(&defs::AWS_SESSION_TOKEN, &AWS_SESSION_TOKEN);
    define_string(&defs::AWS_ROLE_ARN, &AWS_ROLE_ARN);
    define_string(&defs::AWS_EXTERNAL_ID, &AWS_EXTERNAL_ID);
    define_string(&defs::AWS_ROLE_SESSION_NAME, &AWS_ROLE_SESSION_NAME);
    define_string(&defs::AWS_REGION, &AWS_REGION);
    define_string(&defs::SQS_ENDPOINT_URL, &SQS_ENDPOINT_URL);
    define_string(&defs::ALLOWED_ENDPOINTS, &ALLOWED_ENDPOINTS);
    define_enum(&defs::SQS_PROTOCOL, &SQS_PROTOCOL);
    define_enum(&defs::ENVELOPES, &ENVELOPES);
    define_enum(&defs::DELETE_AFTER, &DELETE_AFTER);
    define_int(&defs::RECEIVE_CONCURRENCY, &RECEIVE_CONCURRENCY);
    define_int(&defs::MAX_RECEIVE_CONCURRENCY, &MAX_RECEIVE_CONCURRENCY);
    define_int(&defs::LEDGER_WAIT_TIMEOUT, &LEDGER_WAIT_TIMEOUT);
    define_int(&defs::BATCH_SIZE, &BATCH_SIZE);
    define_int(&defs::MAX_BODY_BYTES, &MAX_BODY_BYTES);
    define_int(&defs::MAX_PII_BYTES, &MAX_PII_BYTES);
    define_int(&defs::HTTP_TIMEOUT, &HTTP_TIMEOUT);
    define_int(&defs::HTTP_MAX_ATTEMPTS, &HTTP_MAX_ATTEMPTS);
    define_int(&defs::DELETE_TIMEOUT, &DELETE_TIMEOUT);
    define_int(
        &defs::VISIBILITY_EXTENSION_LIMIT,
        &VISIBILITY_EXTENSION_LIMIT,
    );
    define_int(&defs::VISIBILITY_ON_ROLLBACK, &VISIBILITY_ON_ROLLBACK);
    define_int(
        &defs::DEAD_LETTER_MAX_BODY_BYTES,
        &DEAD_LETTER_MAX_BODY_BYTES,
    );
    define_int(&defs::DEAD_LETTER_RETENTION, &DEAD_LETTER_RETENTION);
    // SAFETY: reserves the prefix so typos in fetch_etl.* settings are reported.
    #[cfg(any(feature = "pg15", feature = "pg16", feature = "pg17", feature = "pg18"))]
    unsafe {
        pg_sys::MarkGUCPrefixReserved(defs::PREFIX.as_ptr())
    };
}

/// A string setting, or None when unset or empty.
pub(crate) fn string(setting: &StringGuc) -> Option<String> {
    setting
        .get()
        .and_then(|c| c.into_string().ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// True when `name` has a value from the configuration file, ALTER SYSTEM,
/// ALTER DATABASE/ROLE (its reset value), not only from a SET in this session.
pub(crate) fn set_persistently(name: &CStr) -> bool {
    // SAFETY: looks up a registered setting by name.
    let reset = unsafe { pg_sys::GetConfigOptionResetString(name.as_ptr()) };
    // SAFETY: PostgreSQL returns a valid C string or NULL.
    !reset.is_null() && !unsafe { CStr::from_ptr(reset) }.to_bytes().is_empty()
}

fn int(def: &IntSetting, guc: &GucSetting<i32>) -> i32 {
    def.clamp(guc.get())
}

fn millis(def: &IntSetting, guc: &GucSetting<i32>) -> Duration {
    Duration::from_millis(int(def, guc) as u64)
}

/// `fetch_etl.allowed_endpoints` as set (empty: nothing is allowed).
pub(crate) fn allowed_endpoints() -> String {
    ALLOWED_ENDPOINTS
        .get()
        .and_then(|c| c.into_string().ok())
        .unwrap_or_default()
}

/// `fetch_etl.sqs_protocol`: None means detect.
pub(crate) fn sqs_protocol() -> Option<Protocol> {
    match SQS_PROTOCOL.get() {
        SqsProtocol::Auto => None,
        SqsProtocol::Json => Some(Protocol::Json),
        SqsProtocol::Query => Some(Protocol::Query),
    }
}

/// `fetch_etl.receive_concurrency`, within the superuser's
/// `fetch_etl.max_receive_concurrency`.
pub(crate) fn receive_concurrency() -> usize {
    let wanted = int(&defs::RECEIVE_CONCURRENCY, &RECEIVE_CONCURRENCY);
    wanted.min(int(
        &defs::MAX_RECEIVE_CONCURRENCY,
        &MAX_RECEIVE_CONCURRENCY,
    )) as usize
}

pub(crate) fn ledger_wait_timeout() -> Duration {
    millis(&defs::LEDGER_WAIT_TIMEOUT, &LEDGER_WAIT_TIMEOUT)
}

pub(crate) fn envelopes() -> Envelopes {
    match ENVELOPES.get() {
        EnvelopesGuc::Auto => Envelopes::Auto,
        EnvelopesGuc::None => Envelopes::None,
    }
}

pub(crate) fn delete_after() -> DeleteAfter {
    DELETE_AFTER.get()
}

pub(crate) fn batch_size() -> usize {
    int(&defs::BATCH_SIZE, &BATCH_SIZE) as usize
}

pub(crate) fn max_body_bytes() -> usize {
    int(&defs::MAX_BODY_BYTES, &MAX_BODY_BYTES) as usize
}

pub(crate) fn max_pii_bytes() -> usize {
    int(&defs::MAX_PII_BYTES, &MAX_PII_BYTES) as usize
}

pub(crate) fn dead_letter_max_body_bytes() -> usize {
    int(
        &defs::DEAD_LETTER_MAX_BODY_BYTES,
        &DEAD_LETTER_MAX_BODY_BYTES,
    ) as usize
}

/// `fetch_etl.dead_letter_retention`; None: keep dead letters.
pub(crate) fn dead_letter_retention() -> Option<Duration> {
    let s = int(&defs::DEAD_LETTER_RETENTION, &DEAD_LETTER_RETENTION);
    (s > 0).then(|| Duration::from_secs(s as u64))
}

pub(crate) fn http_timeout() -> Duration {
    millis(&defs::HTTP_TIMEOUT, &HTTP_TIMEOUT)
}

pub(crate) fn http_max_attempts() -> u32 {
    int(&defs::HTTP_MAX_ATTEMPTS, &HTTP_MAX_ATTEMPTS) as u32
}

pub(crate) fn delete_timeout() -> Duration {
    millis(&defs::DELETE_TIMEOUT, &DELETE_TIMEOUT)
}

/// `fetch_etl.visibility_extension_limit` and `fetch_etl.visibility_on_rollback`.
pub(crate) fn hold_rules() -> HoldRules {
    let back = int(&defs::VISIBILITY_ON_ROLLBACK, &VISIBILITY_ON_ROLLBACK);
    HoldRules {
        limit: millis(
            &defs::VISIBILITY_EXTENSION_LIMIT,
            &VISIBILITY_EXTENSION_LIMIT,
        ),
        on_rollback: u32::try_from(back).ok(),
        floor: MIN_EXTENSION,
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    use fetch_etl_core::settings::{self as defs, Access};

    fn context(access: Access) -> &'static str {
        match access {
            Access::Anyone => "user",
            Access::Superuser => "superuser",
        }
    }

    /// What PostgreSQL registered is what the core defines: names, contexts,
    /// defaults, bounds and enum values.
    #[pg_test]
    fn registered_settings_match_the_core_definitions() {
        let registered: Vec<String> = Spi::connect(|c| {
            c.select(
                "SELECT name::text FROM pg_catalog.pg_settings WHERE name LIKE 'fetch\\_etl.%' ORDER BY 1",
                None,
                &[],
            )
            .unwrap()
            .map(|r| r.get::<String>(1).unwrap().unwrap())
            .collect()
        });
        // Secret settings (NO_SHOW_ALL) are not in pg_settings at all, even
        // for a superuser; they are registered all the same.
        let secret: Vec<&str> = defs::STRINGS
            .iter()
            .filter(|s| s.secret)
            .map(|s| s.name_str())
            .collect();
        let mut defined: Vec<String> = defs::all_names()
            .into_iter()
            .filter(|n| !secret.contains(n))
            .map(String::from)
            .collect();
        defined.sort();
        assert_eq!(registered, defined);
        for name in &secret {
            let v = Spi::get_one_with_args::<String>(
                "SELECT pg_catalog.current_setting($1)",
                &[(*name).into()],
            )
            .unwrap();
            assert_eq!(
                v.as_deref(),
                Some(""),
                "{name} is registered, empty by default"
            );
        }
        let row = |name: &str| {
            Spi::get_three_with_args::<String, String, String>(
                "SELECT context, boot_val, coalesce(min_val, '') || '..' || coalesce(max_val, '') \
                 FROM pg_catalog.pg_settings WHERE name = $1",
                &[name.into()],
            )
            .unwrap()
        };
        for s in defs::INTS {
            let (ctx, boot, range) = row(s.name_str());
            assert_eq!(ctx.as_deref(), Some(context(s.access)), "{}", s.name_str());
            assert_eq!(boot, Some(s.default.to_string()), "{}", s.name_str());
            assert_eq!(
                range,
                Some(format!("{}..{}", s.min, s.max)),
                "{}",
                s.name_str()
            );
        }
        for s in defs::STRINGS.iter().filter(|s| !s.secret) {
            let (ctx, boot, _) = row(s.name_str());
            assert_eq!(ctx.as_deref(), Some(context(s.access)), "{}", s.name_str());
            let default = s.default.map(|d| d.to_str().unwrap()).unwrap_or("");
            assert_eq!(boot.unwrap_or_default(), default, "{}", s.name_str());
        }
        for s in defs::ENUMS {
            let (ctx, boot, _) = row(s.name_str());
            assert_eq!(ctx.as_deref(), Some(context(s.access)), "{}", s.name_str());
            assert_eq!(boot.as_deref(), Some(s.values[0]), "{}", s.name_str());
            let vals = Spi::get_one_with_args::<Vec<String>>(
                "SELECT enumvals FROM pg_catalog.pg_settings WHERE name = $1",
                &[s.name_str().into()],
            )
            .unwrap()
            .unwrap();
            assert_eq!(vals, s.values);
        }
    }
}
