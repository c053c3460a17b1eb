//! Every `fetch_etl.*` setting: name, descriptions, default and bounds,
//! defined once. The extension registers them with PostgreSQL from these
//! (`src/postgres/settings.rs`); the pure code takes its defaults from them;
//! `tests/contracts.rs` checks docs/reference.md's settings table against
//! them: names, defaults (as `SHOW` prints them) and who may set each.

use std::ffi::CStr;

/// Who may change a setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Any role, with SET.
    Anyone,
    /// Superusers only.
    Superuser,
}

/// How an integer setting is shown and parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    None,
    Bytes,
    Milliseconds,
    Seconds,
}

#[derive(Debug, Clone, Copy)]
pub struct IntSetting {
    pub name: &'static CStr,
    pub short: &'static CStr,
    pub long: &'static CStr,
    pub default: i32,
    pub min: i32,
    pub max: i32,
    pub unit: Unit,
    pub access: Access,
}

#[derive(Debug, Clone, Copy)]
pub struct StringSetting {
    pub name: &'static CStr,
    pub short: &'static CStr,
    pub long: &'static CStr,
    /// None: empty.
    pub default: Option<&'static CStr>,
    pub access: Access,
    /// Hidden from SHOW ALL and pg_settings for other roles.
    pub secret: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct EnumSetting {
    pub name: &'static CStr,
    pub short: &'static CStr,
    pub long: &'static CStr,
    /// The accepted values, the default first. (The extension's GUC enum must
    /// list the same; a #[pg_test] compares them with pg_settings.)
    pub values: &'static [&'static str],
    pub access: Access,
}

/// A setting name as text, for messages.
fn text(name: &'static CStr) -> &'static str {
    name.to_str().expect("setting names are ASCII")
}

impl StringSetting {
    pub fn name_str(&self) -> &'static str {
        text(self.name)
    }
}

impl EnumSetting {
    pub fn name_str(&self) -> &'static str {
        text(self.name)
    }
}

impl IntSetting {
    pub fn name_str(&self) -> &'static str {
        text(self.name)
    }

    /// `v` within the bounds (PostgreSQL enforces them; this is for callers
    /// that compute a value).
    pub fn clamp(&self, v: i32) -> i32 {
        v.clamp(self.min, self.max)
    }
}

/// The prefix every setting shares (reserved at load time).
pub const PREFIX: &CStr = c"fetch_etl";

pub const AWS_ACCESS_KEY_ID: StringSetting = StringSetting {
    name: c"fetch_etl.aws_access_key_id",
    short: c"AWS access key id for SQS (default: the server's AWS_ACCESS_KEY_ID).",
    long: c"Superuser only. Prefer the server's environment; see docs/security.md.",
    default: None,
    access: Access::Superuser,
    secret: true,
};

pub const AWS_SECRET_ACCESS_KEY: StringSetting = StringSetting {
    name: c"fetch_etl.aws_secret_access_key",
    short: c"AWS secret access key for SQS (default: the server's AWS_SECRET_ACCESS_KEY).",
    long: c"Superuser only, never shown to other roles. Prefer the server's environment.",
    default: None,
    access: Access::Superuser,
    secret: true,
};

pub const AWS_SESSION_TOKEN: StringSetting = StringSetting {
    name: c"fetch_etl.aws_session_token",
    short:
        c"AWS session token for temporary credentials (default: the server's AWS_SESSION_TOKEN).",
    long: c"Superuser only, never shown to other roles.",
    default: None,
    access: Access::Superuser,
    secret: true,
};

pub const AWS_ROLE_ARN: StringSetting = StringSetting {
    name: c"fetch_etl.aws_role_arn",
    short: c"IAM role to assume, with the credentials the chain found, before calling SQS (cross-account queues).",
    long: c"Superuser only. Empty: use the chain's credentials as they are.",
    default: None,
    access: Access::Superuser,
    secret: false,
};

pub const AWS_EXTERNAL_ID: StringSetting = StringSetting {
    name: c"fetch_etl.aws_external_id",
    short: c"External id sent when assuming fetch_etl.aws_role_arn.",
    long: c"Superuser only, never shown to other roles.",
    default: None,
    access: Access::Superuser,
    secret: true,
};

pub const AWS_ROLE_SESSION_NAME: StringSetting = StringSetting {
    name: c"fetch_etl.aws_role_session_name",
    short: c"Session name when assuming fetch_etl.aws_role_arn (default: fetch_etl).",
    long: c"Superuser only. Shows in the queue owner's CloudTrail.",
    default: None,
    access: Access::Superuser,
    secret: false,
};

pub const AWS_REGION: StringSetting = StringSetting {
    name: c"fetch_etl.aws_region",
    short: c"AWS region for signing when the queue host names none (default: AWS_REGION, AWS_DEFAULT_REGION, then us-east-1).",
    long: c"",
    default: None,
    access: Access::Superuser,
    secret: false,
};

pub const SQS_ENDPOINT_URL: StringSetting = StringSetting {
    name: c"fetch_etl.sqs_endpoint_url",
    short: c"Send SQS requests here instead of the queue URL's host (default: AWS_ENDPOINT_URL_SQS, AWS_ENDPOINT_URL).",
    long: c"For emulators whose queue URLs name an unreachable host.",
    default: None,
    access: Access::Superuser,
    secret: false,
};

pub const ALLOWED_ENDPOINTS: StringSetting = StringSetting {
    name: c"fetch_etl.allowed_endpoints",
    short: c"Endpoints the server may send signed SQS requests to: aws (AWS SQS over https), scheme://host[:port] entries, * and *.domain patterns.",
    long: c"Hosts matched only by a pattern must resolve to public addresses. See docs/security.md.",
    default: Some(c"aws"),
    access: Access::Superuser,
    secret: false,
};

pub const SQS_PROTOCOL: EnumSetting = EnumSetting {
    name: c"fetch_etl.sqs_protocol",
    short: c"SQS wire protocol: auto (JSON, falling back to Query), json, or query.",
    long: c"",
    values: &["auto", "json", "query"],
    access: Access::Anyone,
};

pub const ENVELOPES: EnumSetting = EnumSetting {
    name: c"fetch_etl.envelopes",
    short: c"Unwrap SNS notifications and EventBridge events around login events (auto), or take every body as the event (none).",
    long: c"",
    values: &["auto", "none"],
    access: Access::Anyone,
};

pub const RECEIVE_CONCURRENCY: IntSetting = IntSetting {
    name: c"fetch_etl.receive_concurrency",
    short: c"ReceiveMessage calls sqs_drain keeps in flight at once (at most fetch_etl.max_receive_concurrency).",
    long: c"",
    default: 8,
    min: 1,
    max: 64,
    unit: Unit::None,
    access: Access::Anyone,
};

pub const MAX_RECEIVE_CONCURRENCY: IntSetting = IntSetting {
    name: c"fetch_etl.max_receive_concurrency",
    short: c"Superuser limit on fetch_etl.receive_concurrency.",
    long: c"Each call in flight may hold a reply of up to 21 MiB: the default keeps a drain under 256 MB.",
    default: 8,
    min: 1,
    max: 64,
    unit: Unit::None,
    access: Access::Superuser,
};

pub const BATCH_SIZE: IntSetting = IntSetting {
    name: c"fetch_etl.batch_size",
    short: c"Messages stored per batch of INSERT statements.",
    long: c"",
    default: 100,
    min: 10,
    max: 10_000,
    unit: Unit::None,
    access: Access::Anyone,
};

pub const MAX_BODY_BYTES: IntSetting = IntSetting {
    name: c"fetch_etl.max_body_bytes",
    short: c"Message bodies larger than this are rejected as too_large.",
    long: c"SQS bodies are at most 1 MiB, the default and the maximum.",
    default: SQS_MAX_BODY_BYTES,
    min: 256,
    max: SQS_MAX_BODY_BYTES,
    unit: Unit::Bytes,
    access: Access::Anyone,
};

pub const HTTP_TIMEOUT: IntSetting = IntSetting {
    name: c"fetch_etl.http_timeout",
    short: c"Timeout of one SQS request, not counting long-poll waits.",
    long: c"",
    default: 10_000,
    min: 100,
    max: 120_000,
    unit: Unit::Milliseconds,
    access: Access::Anyone,
};

pub const HTTP_MAX_ATTEMPTS: IntSetting = IntSetting {
    name: c"fetch_etl.http_max_attempts",
    short: c"Attempts per SQS request for throttling, server and network errors (1 = no retry).",
    long: c"",
    default: 5,
    min: 1,
    max: 10,
    unit: Unit::None,
    access: Access::Anyone,
};

pub const DELETE_TIMEOUT: IntSetting = IntSetting {
    name: c"fetch_etl.delete_timeout",
    short: c"Time allowed after COMMIT for deleting the drained messages from SQS (standby wait included).",
    long: c"Messages not deleted in time come back and are counted as duplicates.",
    default: 10_000,
    min: 100,
    max: 60_000,
    unit: Unit::Milliseconds,
    access: Access::Anyone,
};

pub const LEDGER_WAIT_TIMEOUT: IntSetting = IntSetting {
    name: c"fetch_etl.ledger_wait_timeout",
    short: c"Longest wait for another session's uncommitted ledger entry; its message is then left for a later drain.",
    long: c"",
    default: 5_000,
    min: 0,
    max: 60_000,
    unit: Unit::Milliseconds,
    access: Access::Anyone,
};

pub const DELETE_AFTER: EnumSetting = EnumSetting {
    name: c"fetch_etl.delete_after",
    short: c"Delete drained messages once the commit is flushed locally (local_flush) or on every streaming standby too (standby_flush).",
    long: c"standby_flush waits at most fetch_etl.delete_timeout; messages not deleted come back and count as duplicates.",
    values: &["local_flush", "standby_flush"],
    access: Access::Anyone,
};

pub const VISIBILITY_EXTENSION_LIMIT: IntSetting = IntSetting {
    name: c"fetch_etl.visibility_extension_limit",
    short: c"Longest time, from receipt, that a drain keeps extending the visibility of the messages it holds until COMMIT (0: no extensions).",
    long: c"At most 12 h, SQS's own limit. Past it, held messages become visible to other consumers again; the ledger still loads them once.",
    default: 3_600_000,
    min: 0,
    max: crate::args::MAX_VISIBILITY_TIMEOUT * 1000,
    unit: Unit::Milliseconds,
    access: Access::Anyone,
};

pub const VISIBILITY_ON_ROLLBACK: IntSetting = IntSetting {
    name: c"fetch_etl.visibility_on_rollback",
    short: c"Visibility timeout given to a drain's received messages when its transaction rolls back (-1: leave it, they come back when it ends).",
    long: c"0 makes them visible again at once; a positive value is a backoff delay. Taken when the drain runs.",
    default: -1,
    min: -1,
    max: crate::args::MAX_VISIBILITY_TIMEOUT,
    unit: Unit::Seconds,
    access: Access::Anyone,
};

pub const MAX_PII_BYTES: IntSetting = IntSetting {
    name: c"fetch_etl.max_pii_bytes",
    short: c"Values fetch_etl masks (and keeps in the PII vault) longer than this are rejected as too_long.",
    long: c"Superuser only: the vault keeps every raw value, and a drain holds them in memory until they are written.",
    default: 4096,
    min: 64,
    max: SQS_MAX_BODY_BYTES,
    unit: Unit::Bytes,
    access: Access::Superuser,
};

pub const DEAD_LETTER_MAX_BODY_BYTES: IntSetting = IntSetting {
    name: c"fetch_etl.dead_letter_max_body_bytes",
    short: c"Dead letters keep at most this much of a refused message's body; the rest is cut off (body_truncated).",
    long: c"Superuser only. A dead letter whose body was cut cannot be replayed.",
    default: 64 * 1024,
    min: 1024,
    max: SQS_MAX_BODY_BYTES,
    unit: Unit::Bytes,
    access: Access::Superuser,
};

pub const DEAD_LETTER_RETENTION: IntSetting = IntSetting {
    name: c"fetch_etl.dead_letter_retention",
    short: c"fetch_etl.prune() removes dead letters never replayed once they are older than this (0: keep them).",
    long: c"Superuser only.",
    default: 30 * 24 * 3600,
    min: 0,
    max: 3650 * 24 * 3600,
    unit: Unit::Seconds,
    access: Access::Superuser,
};

/// SQS's limit on a message (body and attributes): 1 MiB.
pub const SQS_MAX_BODY_BYTES: i32 = 1024 * 1024;

pub const STRINGS: &[StringSetting] = &[
    AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY,
    AWS_SESSION_TOKEN,
    AWS_ROLE_ARN,
    AWS_EXTERNAL_ID,
    AWS_ROLE_SESSION_NAME,
    AWS_REGION,
    SQS_ENDPOINT_URL,
    ALLOWED_ENDPOINTS,
];
pub const ENUMS: &[EnumSetting] = &[SQS_PROTOCOL, ENVELOPES, DELETE_AFTER];
pub const INTS: &[IntSetting] = &[
    RECEIVE_CONCURRENCY,
    MAX_RECEIVE_CONCURRENCY,
    BATCH_SIZE,
    MAX_BODY_BYTES,
    MAX_PII_BYTES,
    HTTP_TIMEOUT,
    HTTP_MAX_ATTEMPTS,
    DELETE_TIMEOUT,
    LEDGER_WAIT_TIMEOUT,
    VISIBILITY_EXTENSION_LIMIT,
    VISIBILITY_ON_ROLLBACK,
    DEAD_LETTER_MAX_BODY_BYTES,
    DEAD_LETTER_RETENTION,
];

/// Every setting's name, in documentation order.
pub fn all_names() -> Vec<&'static str> {
    let s = STRINGS.iter().map(|s| s.name);
    let e = ENUMS.iter().map(|s| s.name);
    let i = INTS.iter().map(|s| s.name);
    s.chain(e).chain(i).map(text).collect()
}

/// A setting's default as `SHOW` prints it (`64kB`, `10s`, `1h`, `auto`;
/// `None` for an empty string), and who may change it: what
/// docs/reference.md's settings table says (tests/contracts.rs checks it).
pub fn shown_default(name: &str) -> Option<(Option<String>, Access)> {
    if let Some(s) = STRINGS.iter().find(|s| text(s.name) == name) {
        return Some((s.default.map(|d| text(d).to_string()), s.access));
    }
    if let Some(s) = ENUMS.iter().find(|s| text(s.name) == name) {
        return Some((s.values.first().map(|v| v.to_string()), s.access));
    }
    let s = INTS.iter().find(|s| text(s.name) == name)?;
    Some((Some(with_unit(s.default, s.unit)), s.access))
}

/// An integer in the largest unit that divides it, as PostgreSQL shows a
/// setting with a unit.
fn with_unit(v: i32, unit: Unit) -> String {
    let units: &[(&str, i64)] = match unit {
        Unit::None => &[],
        Unit::Bytes => &[("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10), ("B", 1)],
        Unit::Milliseconds => &[
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("min", 60_000),
            ("s", 1_000),
            ("ms", 1),
        ],
        Unit::Seconds => &[("d", 86_400), ("h", 3_600), ("min", 60), ("s", 1)],
    };
    let v = i64::from(v);
    if v > 0 {
        if let Some((u, n)) = units.iter().find(|(_, n)| v % n == 0) {
            return format!("{}{u}", v / n);
        }
    }
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_shown_in_the_largest_unit_that_divides_them() {
        assert_eq!(with_unit(65_536, Unit::Bytes), "64kB");
        assert_eq!(with_unit(1 << 20, Unit::Bytes), "1MB");
        assert_eq!(with_unit(10_000, Unit::Milliseconds), "10s");
        assert_eq!(with_unit(2_592_000, Unit::Seconds), "30d");
        assert_eq!(with_unit(-1, Unit::Seconds), "-1");
        assert_eq!(with_unit(8, Unit::None), "8");
    }

    #[test]
    fn names_are_prefixed_unique_and_defaults_in_bounds() {
        let names = all_names();
        let prefix = format!("{}.", PREFIX.to_str().unwrap());
        assert!(names.iter().all(|n| n.starts_with(&prefix)), "{names:?}");
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len());
        for s in INTS {
            assert!(s.min <= s.default && s.default <= s.max, "{:?}", s.name);
            assert_eq!(s.clamp(s.max.saturating_add(1)), s.max);
        }
        // secrets are never settable by other roles
        assert!(STRINGS
            .iter()
            .filter(|s| s.secret)
            .all(|s| s.access == Access::Superuser));
    }
}
