//! Login events: validate and flatten one SQS message body into a row of the
//! target table, or say precisely why not.
//!
//! The contract is the Fetch exercise's: a flat JSON object with `user_id`,
//! `device_type`, `ip`, `locale`, `device_id`, `app_version`, all strings or
//! null. Unknown extra fields are ignored.

use std::collections::HashSet;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;

use crate::contract::RejectReason;
use crate::envelope::{self, EnvelopeAttributes, Envelopes, Kind, Opened};
use crate::settings;

/// The login fields, in the order the exercise lists them.
pub const LOGIN_FIELDS: [&str; 6] = [
    "user_id",
    "device_type",
    "ip",
    "locale",
    "device_id",
    "app_version",
];

/// What the target table can hold, read from its columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_body_bytes: usize,
    /// Longest value that is masked (and kept raw in the vault), in bytes:
    /// no column limits those (`fetch_etl.max_pii_bytes`).
    pub max_pii_bytes: usize,
    /// Maximum characters (None: unlimited, e.g. `text`).
    pub user_id_chars: Option<usize>,
    pub device_type_chars: Option<usize>,
    pub locale_chars: Option<usize>,
    pub app_version: AppVersionColumn,
}

/// How `app_version` is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppVersionColumn {
    /// An integer column: `major*10000 + minor*100 + patch`, within `min..=max`.
    Integer { min: i64, max: i64 },
    /// A text column: the string as is, up to `max_chars`.
    Text { max_chars: Option<usize> },
}

impl Default for Limits {
    /// The exercise's DDL: varchar(128)/varchar(32)/varchar(32), integer app_version.
    fn default() -> Self {
        Limits {
            max_body_bytes: settings::MAX_BODY_BYTES.default as usize,
            max_pii_bytes: settings::MAX_PII_BYTES.default as usize,
            user_id_chars: Some(128),
            device_type_chars: Some(32),
            locale_chars: Some(32),
            app_version: AppVersionColumn::Integer {
                min: i32::MIN as i64,
                max: i32::MAX as i64,
            },
        }
    }
}

/// A stored app_version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppVersion {
    Int(Option<i64>),
    Text(Option<String>),
}

impl Default for AppVersion {
    fn default() -> Self {
        AppVersion::Int(None)
    }
}

/// A valid login event (raw PII still in it: mask before storing).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoginEvent {
    pub user_id: String,
    pub device_type: Option<String>,
    pub ip: Option<String>,
    pub locale: Option<String>,
    pub device_id: Option<String>,
    pub app_version: AppVersion,
}

/// Why a message was not loaded: a stable reason for grouping, and a detail.
/// Displayed as `<reason>: <detail>`, the text stored in dead letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub reason: RejectReason,
    pub detail: String,
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

pub(crate) fn reject(reason: RejectReason, detail: impl Into<String>) -> Reject {
    Reject {
        reason,
        detail: detail.into(),
    }
}

/// The top-level object as an ordered list of fields, so duplicate keys are seen
/// (serde_json's map would silently keep the last one).
struct Fields(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    out.push((k, v));
                }
                Ok(Fields(out))
            }
        }
        d.deserialize_map(V)
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A valid event and what its envelopes said about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub event: LoginEvent,
    /// The envelopes unwrapped, outermost first (empty: a bare event).
    pub envelopes: Vec<Kind>,
    /// Their fields kept with the row (`TopicArn`, `EventSource`, ...).
    pub attributes: EnvelopeAttributes,
}

/// Validates and flattens one message body that is the event itself.
pub fn parse_login(body: &str, limits: &Limits) -> Result<LoginEvent, Reject> {
    parse_message(body, limits, Envelopes::None).map(|p| p.event)
}

/// Validates and flattens one message body: the event, or (with
/// `Envelopes::Auto`) an SNS notification or EventBridge event around it.
pub fn parse_message(body: &str, limits: &Limits, envelopes: Envelopes) -> Result<Parsed, Reject> {
    if body.len() > limits.max_body_bytes {
        return Err(reject(
            RejectReason::TooLarge,
            format!(
                "body is {} bytes; the limit ({}) is {}",
                body.len(),
                settings::MAX_BODY_BYTES.name_str(),
                limits.max_body_bytes
            ),
        ));
    }
    let mut out = Parsed {
        event: LoginEvent::default(),
        envelopes: Vec::new(),
        attributes: Vec::new(),
    };
    out.event = open_layers(body, limits, envelopes, &mut out)?;
    Ok(out)
}

/// Validates `text`, unwrapping envelopes around it (recording them in `out`).
fn open_layers(
    text: &str,
    limits: &Limits,
    envelopes: Envelopes,
    out: &mut Parsed,
) -> Result<LoginEvent, Reject> {
    let fields = parse_object(text)?;
    if envelopes == Envelopes::Auto && out.envelopes.len() < envelope::MAX_LAYERS {
        match envelope::open(text, &fields.0) {
            Opened::Bare => {}
            Opened::Refused(r) => return Err(r),
            Opened::Inner {
                kind,
                inner,
                attributes,
            } => {
                out.envelopes.push(kind);
                out.attributes.extend(attributes);
                return open_layers(&inner, limits, envelopes, out)
                    .map_err(|r| envelope::inside(kind, r));
            }
        }
    }
    let hint = match envelopes {
        Envelopes::None => envelope::not_unwrapped_hint(&fields.0),
        Envelopes::Auto => None,
    };
    login_from(&fields, limits).map_err(|mut r| {
        if let (RejectReason::NotLoginEvent, Some(h)) = (r.reason, hint) {
            r.detail.push_str(&h);
        }
        r
    })
}

/// `text` as a JSON object with distinct keys, or why not.
fn parse_object(text: &str) -> Result<Fields, Reject> {
    // Parse as a generic value first, for a precise error on anything but an object.
    let fields: Fields = match serde_json::from_str::<Fields>(text) {
        Ok(f) => f,
        Err(e) => {
            let msg = e.to_string();
            if msg.contains("recursion limit exceeded") {
                return Err(reject(
                    RejectReason::TooDeep,
                    "JSON nesting exceeds 128 levels",
                ));
            }
            return Err(match serde_json::from_str::<Value>(text) {
                Ok(v) => reject(
                    RejectReason::NotObject,
                    format!("body is a JSON {}, not an object", json_kind(&v)),
                ),
                Err(e2) if e2.to_string().contains("recursion limit exceeded") => {
                    reject(RejectReason::TooDeep, "JSON nesting exceeds 128 levels")
                }
                Err(e2) => reject(RejectReason::NotJson, e2.to_string()),
            });
        }
    };
    // A hash set: linear in the number of keys (a list was quadratic: 100,000
    // keys took seconds, with no way to cancel).
    let mut seen: HashSet<&str> = HashSet::with_capacity(fields.0.len());
    for (k, _) in &fields.0 {
        if !seen.insert(k.as_str()) {
            return Err(reject(
                RejectReason::DuplicateField,
                format!("field {:?} appears more than once", truncate(k, 40)),
            ));
        }
    }
    Ok(fields)
}

/// The login event in an object's fields.
fn login_from(fields: &Fields, limits: &Limits) -> Result<LoginEvent, Reject> {
    if !fields
        .0
        .iter()
        .any(|(k, _)| LOGIN_FIELDS.contains(&k.as_str()))
    {
        let mut names: Vec<&str> = fields.0.iter().map(|(k, _)| k.as_str()).collect();
        names.sort_unstable();
        let shown: Vec<String> = names.iter().take(10).map(|n| truncate(n, 40)).collect();
        let more = if names.len() > 10 {
            format!(" and {} more", names.len() - 10)
        } else {
            String::new()
        };
        return Err(reject(
            RejectReason::NotLoginEvent,
            if names.is_empty() {
                "the object has no fields".to_string()
            } else {
                format!("no login fields; has: {}{more}", shown.join(", "))
            },
        ));
    }

    let get = |name: &'static str| -> Result<Option<String>, Reject> {
        match fields.0.iter().find(|(k, _)| k == name).map(|(_, v)| v) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => {
                if s.contains('\0') {
                    Err(reject(RejectReason::NulCharacter, format!("{name} contains a NUL character (\\u0000), which PostgreSQL text cannot store")))
                } else {
                    Ok(Some(s.clone()))
                }
            }
            Some(other) => Err(reject(
                RejectReason::WrongType,
                format!("{name} must be a string or null, got {}", json_kind(other)),
            )),
        }
    };
    let check_len = |name: &str, v: &Option<String>, max: Option<usize>| -> Result<(), Reject> {
        if let (Some(v), Some(max)) = (v, max) {
            let n = v.chars().count();
            if n > max {
                return Err(reject(
                    RejectReason::TooLong,
                    format!("{name} has {n} characters; the column allows {max}"),
                ));
            }
        }
        Ok(())
    };

    let user_id = get("user_id")?;
    let device_type = get("device_type")?;
    let ip = get("ip")?;
    let locale = get("locale")?;
    let device_id = get("device_id")?;
    let app_version_raw = get("app_version")?;

    let user_id = match user_id {
        Some(u) if !u.is_empty() => u,
        _ => return Err(reject(RejectReason::MissingField, "user_id is required")),
    };
    check_len("user_id", &Some(user_id.clone()), limits.user_id_chars)?;
    for (name, v) in [("ip", &ip), ("device_id", &device_id)] {
        check_pii_len(name, v.as_deref(), limits.max_pii_bytes)?;
    }
    check_len("device_type", &device_type, limits.device_type_chars)?;
    check_len("locale", &locale, limits.locale_chars)?;

    let app_version = match limits.app_version {
        AppVersionColumn::Text { max_chars } => {
            check_len("app_version", &app_version_raw, max_chars)?;
            AppVersion::Text(app_version_raw)
        }
        AppVersionColumn::Integer { min, max } => match &app_version_raw {
            None => AppVersion::Int(None),
            Some(v) => {
                let n = encode_app_version(v)
                    .map_err(|why| reject(RejectReason::BadAppVersion, why))?;
                if n < min || n > max {
                    return Err(reject(
                        RejectReason::BadAppVersion,
                        format!("app_version {} encodes to {n}, outside the column's range {min}..{max}", quoted(v)),
                    ));
                }
                AppVersion::Int(Some(n))
            }
        },
    };
    Ok(LoginEvent {
        user_id,
        device_type,
        ip,
        locale,
        device_id,
        app_version,
    })
}

/// A value to be masked: at most `max` bytes, the raw value being what the
/// vault keeps (and a drain holds in memory until it writes them).
pub(crate) fn check_pii_len(name: &str, v: Option<&str>, max: usize) -> Result<(), Reject> {
    match v {
        Some(v) if v.len() > max => Err(reject(
            RejectReason::TooLong,
            format!(
                "{name} has {} bytes; values that are masked may have {max} ({})",
                v.len(),
                settings::MAX_PII_BYTES.name_str()
            ),
        )),
        _ => Ok(()),
    }
}

/// `major*10000 + minor*100 + patch`: order-preserving for versions whose minor
/// and patch are below 100 (`2.3` = `2.3.0` = 20300, `0.96` = 9600 > `0.9.6` = 906).
pub fn encode_app_version(v: &str) -> Result<i64, String> {
    let parts: Vec<&str> = v.split('.').collect();
    if v.is_empty()
        || parts.len() > 3
        || parts
            .iter()
            .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!(
            "app_version {} is not of the form major[.minor[.patch]] with decimal digits",
            quoted(v)
        ));
    }
    let nums: Vec<u64> = parts
        .iter()
        .map(|p| {
            p.parse::<u64>()
                .map_err(|_| format!("app_version {} has a component too large", quoted(v)))
        })
        .collect::<Result<_, _>>()?;
    if nums.iter().skip(1).any(|&n| n > 99) {
        return Err(format!(
            "app_version {} has a minor or patch above 99, which major*10000+minor*100+patch cannot encode",
            quoted(v)
        ));
    }
    let major = nums[0];
    if major > 100_000_000 {
        return Err(format!(
            "app_version {} has a major version too large",
            quoted(v)
        ));
    }
    Ok((major * 10_000
        + nums.get(1).copied().unwrap_or(0) * 100
        + nums.get(2).copied().unwrap_or(0)) as i64)
}

pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() > max {
        format!("{}...", s.chars().take(max).collect::<String>())
    } else {
        s.to_string()
    }
}

fn quoted(s: &str) -> String {
    format!("{:?}", truncate(s, 40))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> LoginEvent {
        parse_login(body, &Limits::default()).unwrap()
    }

    fn code(body: &str) -> &'static str {
        parse_login(body, &Limits::default())
            .unwrap_err()
            .reason
            .as_str()
    }

    const GOOD: &str = r#"{"user_id": "424cdd21-063a-43a7-b91b-7ca1a833afae", "app_version": "2.3.0", "device_type": "android", "ip": "199.172.111.135", "locale": "RU", "device_id": "593-47-5928"}"#;

    #[test]
    fn sample_record() {
        let e = ok(GOOD);
        assert_eq!(e.user_id, "424cdd21-063a-43a7-b91b-7ca1a833afae");
        assert_eq!(e.device_type.as_deref(), Some("android"));
        assert_eq!(e.ip.as_deref(), Some("199.172.111.135"));
        assert_eq!(e.locale.as_deref(), Some("RU"));
        assert_eq!(e.device_id.as_deref(), Some("593-47-5928"));
        assert_eq!(e.app_version, AppVersion::Int(Some(20300)));
    }

    #[test]
    fn nulls_and_missing_optional_fields() {
        let e = ok(r#"{"user_id": "u", "locale": null, "app_version": null}"#);
        assert_eq!(e.locale, None);
        assert_eq!(e.ip, None);
        assert_eq!(e.app_version, AppVersion::Int(None));
        // unknown fields are ignored
        assert_eq!(
            ok(r#"{"user_id": "u", "extra": [1, {"x": 2}]}"#).user_id,
            "u"
        );
    }

    #[test]
    fn the_exercise_wrong_type_message() {
        let r = parse_login(
            r#"{"foo": "oops_wrong_msg_type", "bar": "123"}"#,
            &Limits::default(),
        )
        .unwrap_err();
        assert_eq!(r.reason, RejectReason::NotLoginEvent);
        assert_eq!(r.detail, "no login fields; has: bar, foo");
        assert_eq!(
            r.to_string(),
            "not_login_event: no login fields; has: bar, foo"
        );
    }

    #[test]
    fn reject_reasons() {
        assert_eq!(code("not json"), "not_json");
        assert_eq!(code(""), "not_json");
        assert_eq!(code(r#"{"user_id": "u""#), "not_json");
        assert_eq!(
            code(r#"{"user_id": "\ud800"}"#),
            "not_json",
            "lone surrogate"
        );
        assert_eq!(code("[1, 2]"), "not_object");
        assert_eq!(code("\"a string\""), "not_object");
        assert_eq!(code("null"), "not_object");
        assert_eq!(code("{}"), "not_login_event");
        assert_eq!(code(r#"{"ip": "1.2.3.4"}"#), "missing_field");
        assert_eq!(
            code(r#"{"user_id": null, "ip": "1.2.3.4"}"#),
            "missing_field"
        );
        assert_eq!(code(r#"{"user_id": ""}"#), "missing_field");
        assert_eq!(code(r#"{"user_id": 42}"#), "wrong_type");
        assert_eq!(code(r#"{"user_id": "u", "ip": ["1.2.3.4"]}"#), "wrong_type");
        assert_eq!(
            code(r#"{"user_id": "u", "app_version": 2.3}"#),
            "wrong_type"
        );
        assert_eq!(
            code(r#"{"user_id": "u", "locale": {"x": 1}}"#),
            "wrong_type"
        );
        assert_eq!(
            code(r#"{"user_id": "u", "device_type": true}"#),
            "wrong_type"
        );
        assert_eq!(code(r#"{"user_id": "u\u0000v"}"#), "nul_character");
        assert_eq!(
            code(r#"{"user_id": "u", "user_id": "v"}"#),
            "duplicate_field"
        );
        assert_eq!(
            code(&format!(r#"{{"user_id": "{}"}}"#, "u".repeat(129))),
            "too_long"
        );
        assert_eq!(
            code(r#"{"user_id": "u", "device_type": "an-extremely-long-device-type-name"}"#),
            "too_long"
        );
        assert_eq!(
            code(r#"{"user_id": "u", "app_version": "1.2.3.4"}"#),
            "bad_app_version"
        );
        assert_eq!(
            code(r#"{"user_id": "u", "app_version": "1.100"}"#),
            "bad_app_version"
        );
        assert_eq!(
            code(r#"{"user_id": "u", "app_version": "99999999"}"#),
            "bad_app_version"
        );
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert_eq!(code(&deep), "too_deep");
        let deep_in_object = format!(
            r#"{{"user_id": "u", "x": {}{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        assert_eq!(code(&deep_in_object), "too_deep");
        // SQS bodies are at most 1 MiB, the default limit
        let big = format!(
            r#"{{"user_id": "u", "pad": "{}"}}"#,
            "x".repeat(1024 * 1024)
        );
        assert_eq!(code(&big), "too_large");
        let just = format!(
            r#"{{"user_id": "u", "pad": "{}"}}"#,
            "x".repeat(1024 * 1024 - 30)
        );
        assert!(parse_login(&just, &Limits::default()).is_ok());
    }

    #[test]
    fn interrupt_many_keys_are_checked_in_linear_time() {
        // 200,000 distinct keys: quadratic checking took minutes; now well under a second
        let mut body = String::from(r#"{"user_id": "u""#);
        for i in 0..200_000 {
            body.push_str(&format!(r#", "k{i}": 1"#));
        }
        body.push('}');
        let limits = Limits {
            max_body_bytes: usize::MAX,
            ..Limits::default()
        };
        let start = std::time::Instant::now();
        assert!(parse_login(&body, &limits).is_ok());
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        let dup = body.replacen("}", r#", "k7": 2}"#, 1);
        assert_eq!(
            parse_login(&dup, &limits).unwrap_err().reason,
            RejectReason::DuplicateField
        );
    }

    #[test]
    fn length_is_in_characters_not_bytes() {
        let name = "é".repeat(32); // 64 bytes, 32 characters
        assert!(parse_login(
            &format!(r#"{{"user_id": "u", "device_type": "{name}"}}"#),
            &Limits::default()
        )
        .is_ok());
    }

    #[test]
    fn text_app_version_column_keeps_the_string() {
        let limits = Limits {
            app_version: AppVersionColumn::Text { max_chars: Some(8) },
            ..Limits::default()
        };
        let e = parse_login(r#"{"user_id": "u", "app_version": "1.2.3.4"}"#, &limits).unwrap();
        assert_eq!(e.app_version, AppVersion::Text(Some("1.2.3.4".into())));
        assert_eq!(
            parse_login(
                r#"{"user_id": "u", "app_version": "1.2.3.4-beta"}"#,
                &limits
            )
            .unwrap_err()
            .reason,
            RejectReason::TooLong
        );
    }

    #[test]
    fn smallint_column_range() {
        let limits = Limits {
            app_version: AppVersionColumn::Integer {
                min: -32768,
                max: 32767,
            },
            ..Limits::default()
        };
        assert!(parse_login(r#"{"user_id": "u", "app_version": "3.27.67"}"#, &limits).is_ok());
        let r = parse_login(r#"{"user_id": "u", "app_version": "4.0"}"#, &limits).unwrap_err();
        assert_eq!(r.reason, RejectReason::BadAppVersion);
        assert!(r.detail.contains("40000"), "{}", r.detail);
    }

    #[test]
    fn app_version_encoding() {
        assert_eq!(encode_app_version("2.3.0"), Ok(20300));
        assert_eq!(encode_app_version("2.3"), Ok(20300));
        assert_eq!(encode_app_version("0.96"), Ok(9600));
        assert_eq!(encode_app_version("0.9.6"), Ok(906));
        assert_eq!(encode_app_version("2.00"), Ok(20000));
        assert_eq!(encode_app_version("4.19"), Ok(41900));
        assert_eq!(encode_app_version("5"), Ok(50000));
        assert_eq!(encode_app_version("0.2.6"), Ok(206));
        assert_eq!(encode_app_version("0.26"), Ok(2600));
        assert_eq!(encode_app_version("2.6"), Ok(20600));
        assert_eq!(encode_app_version("99.99.99"), Ok(999_999));
        assert!(encode_app_version("0.96").unwrap() > encode_app_version("0.9.6").unwrap());
        for bad in [
            "", ".", "1.", ".1", "1..2", "1.2.3.4", "v1.2", "1.2-beta", " 1.2", "1.2 ", "-1.2",
            "+1", "1.100", "١.٢",
        ] {
            assert!(encode_app_version(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_sample_version_encodes_in_order() {
        let sample = include_str!("../../../data/login-queue-sample.json");
        let records: Vec<Value> = serde_json::from_str(sample).unwrap();
        let mut versions: Vec<(String, i64)> = records
            .iter()
            .filter_map(|r| r.get("app_version").and_then(|v| v.as_str()))
            .map(|v| (v.to_string(), encode_app_version(v).unwrap()))
            .collect();
        assert_eq!(versions.len(), 99);
        // numeric tuple order equals encoded order
        versions.sort_by_key(|(v, _)| {
            v.split('.')
                .map(|p| p.parse::<u32>().unwrap())
                .chain([0, 0])
                .take(3)
                .collect::<Vec<_>>()
        });
        assert!(
            versions.windows(2).all(|w| w[0].1 <= w[1].1),
            "{versions:?}"
        );
    }

    #[test]
    fn every_sample_record_is_classified() {
        let sample = include_str!("../../../data/login-queue-sample.json");
        let records: Vec<Value> = serde_json::from_str(sample).unwrap();
        let outcomes: Vec<Result<LoginEvent, Reject>> = records
            .iter()
            .map(|r| parse_login(&serde_json::to_string(r).unwrap(), &Limits::default()))
            .collect();
        assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 99);
        assert_eq!(
            outcomes[12].as_ref().unwrap_err().reason,
            RejectReason::NotLoginEvent
        );
        let null_locales = outcomes
            .iter()
            .filter_map(|o| o.as_ref().ok())
            .filter(|e| e.locale.is_none())
            .count();
        assert_eq!(null_locales, 29);
    }
}
