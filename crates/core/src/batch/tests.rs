//! The built-in login pipeline through the general engine: 0.4.0's
//! behaviour, reason by reason and message by message (these were 0.4.0's
//! tests of its login parser), and the engine's other paths.

use std::collections::HashSet;

use serde_json::json;

use super::*;
use crate::envelope::Envelopes;
use crate::message::MessageAttribute;
use crate::pipeline::engine::{Cell, Columns, Limits};
use crate::pipeline::grammar::parse_columns;
use crate::pipeline::login::login;
use crate::pipeline::plan::tests::{col, text, types};
use crate::pipeline::plan::{plan, Definition, Idempotency, Target, TargetColumn, TypeKind};
use crate::settings;

const KEY: [u8; 32] = [3u8; 32];

fn masker() -> Masker {
    Masker::new(&KEY).unwrap()
}

pub(crate) fn int_col(name: &str, bits: u32) -> TargetColumn {
    let (min, max, display, cast, oid) = match bits {
        16 => (
            i16::MIN as i64,
            i16::MAX as i64,
            "smallint",
            "pg_catalog.int2",
            21,
        ),
        32 => (
            i32::MIN as i64,
            i32::MAX as i64,
            "integer",
            "pg_catalog.int4",
            23,
        ),
        _ => (i64::MIN, i64::MAX, "bigint", "pg_catalog.int8", 20),
    };
    col(name, TypeKind::Int { min, max }, display, cast, oid)
}

/// The exercise's `user_logins`.
pub(crate) fn user_logins() -> Target {
    Target {
        sql_name: "public.user_logins".into(),
        columns: vec![
            text("user_id", Some(128)),
            text("device_type", Some(32)),
            text("masked_ip", Some(256)),
            text("masked_device_id", Some(256)),
            text("locale", Some(32)),
            int_col("app_version", 32),
            col(
                "create_date",
                TypeKind::Date,
                "date",
                "pg_catalog.date",
                1082,
            ),
        ],
    }
}

fn login_on(target: &Target) -> Pipelines {
    Pipelines::single(plan(&login(), target, &types).unwrap())
}

fn limits() -> Limits {
    Limits {
        max_body_bytes: settings::MAX_BODY_BYTES.default as usize,
        max_pii_bytes: settings::MAX_PII_BYTES.default as usize,
        envelopes: Envelopes::Auto,
    }
}

fn msg(id: &str, body: &str, sent: Option<i64>) -> Message {
    Message {
        message_id: id.into(),
        receipt_handle: format!("r-{id}"),
        body: body.into(),
        sent_timestamp_ms: sent,
        receive_count: Some(1),
        ..Message::default()
    }
}

fn run_with(p: &Pipelines, l: &Limits, bodies: &[&str]) -> Vec<Prepared> {
    let msgs: Vec<Message> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| msg(&format!("m{i}"), b, Some(1_670_000_000_000)))
        .collect();
    let refs: Vec<&Message> = msgs.iter().collect();
    prepare(&refs, p, &masker(), l, 951_782_400_000, &mut || {})
}

/// The login pipeline's outcome for one body: its row, or the dead
/// letter's text.
fn one(body: &str) -> Result<Vec<Cell>, String> {
    one_with(&login_on(&user_logins()), &limits(), body)
}

fn one_with(p: &Pipelines, l: &Limits, body: &str) -> Result<Vec<Cell>, String> {
    match run_with(p, l, &[body]).pop().unwrap().made {
        Made::Rows { mut loaded, .. } => Ok(loaded.rows.pop().unwrap()),
        Made::Refused(r) => Err(r.text),
    }
}

fn code(body: &str) -> String {
    one(body)
        .unwrap_err()
        .split(':')
        .next()
        .unwrap()
        .to_string()
}

fn t(s: &str) -> Cell {
    Cell::Text(s.into())
}

const GOOD: &str = r#"{"user_id": "424cdd21-063a-43a7-b91b-7ca1a833afae", "app_version": "2.3.0", "device_type": "android", "ip": "199.172.111.135", "locale": "RU", "device_id": "593-47-5928"}"#;

#[test]
fn a_sample_record_becomes_the_exercise_s_row() {
    let m = masker();
    assert_eq!(
        one(GOOD).unwrap(),
        vec![
            t("424cdd21-063a-43a7-b91b-7ca1a833afae"),
            t("android"),
            t(&m.mask(b"199.172.111.135")),
            t("RU"),
            t(&m.mask(b"593-47-5928")),
            Cell::Int(20300),
            t("2022-12-02"),
        ]
    );
    // nulls and missing optional fields are NULL; unknown fields are ignored
    let row =
        one(r#"{"user_id": "u", "locale": null, "app_version": null, "extra": [1, {"x": 2}]}"#)
            .unwrap();
    assert_eq!(row[0], t("u"));
    assert!(row[1..6].iter().all(|c| *c == Cell::Null), "{row:?}");
}

#[test]
fn the_exercise_wrong_type_message_is_0_4_0_s() {
    assert_eq!(
        one(r#"{"foo": "oops_wrong_msg_type", "bar": "123"}"#).unwrap_err(),
        "not_login_event: no login fields; has: bar, foo"
    );
    assert_eq!(
        one("{}").unwrap_err(),
        "not_login_event: the object has no fields"
    );
}

#[test]
fn every_reject_reason_of_0_4_0() {
    for (body, want) in [
        ("not json", "not_json"),
        ("", "not_json"),
        (r#"{"user_id": "u""#, "not_json"),
        (r#"{"user_id": "\ud800"}"#, "not_json"),
        ("[1, 2]", "not_object"),
        ("\"a string\"", "not_object"),
        ("null", "not_object"),
        ("{}", "not_login_event"),
        (r#"{"ip": "1.2.3.4"}"#, "missing_field"),
        (r#"{"user_id": null, "ip": "1.2.3.4"}"#, "missing_field"),
        (r#"{"user_id": ""}"#, "missing_field"),
        (r#"{"user_id": 42}"#, "wrong_type"),
        (r#"{"user_id": "u", "ip": ["1.2.3.4"]}"#, "wrong_type"),
        (r#"{"user_id": "u", "app_version": 2.3}"#, "wrong_type"),
        (r#"{"user_id": "u", "locale": {"x": 1}}"#, "wrong_type"),
        (r#"{"user_id": "u", "device_type": true}"#, "wrong_type"),
        (r#"{"user_id": "u\u0000v"}"#, "nul_character"),
        (r#"{"user_id": "u", "user_id": "v"}"#, "duplicate_field"),
        (
            &format!(r#"{{"user_id": "{}"}}"#, "u".repeat(129)),
            "too_long",
        ),
        (
            r#"{"user_id": "u", "device_type": "an-extremely-long-device-type-name"}"#,
            "too_long",
        ),
        (
            r#"{"user_id": "u", "app_version": "1.2.3.4"}"#,
            "bad_app_version",
        ),
        (
            r#"{"user_id": "u", "app_version": "1.100"}"#,
            "bad_app_version",
        ),
        (
            r#"{"user_id": "u", "app_version": "99999999"}"#,
            "bad_app_version",
        ),
        (&("[".repeat(200) + &"]".repeat(200)), "too_deep"),
        (
            &format!(
                r#"{{"user_id": "u", "x": {}{}}}"#,
                "[".repeat(200),
                "]".repeat(200)
            ),
            "too_deep",
        ),
        (
            &format!(
                r#"{{"user_id": "u", "pad": "{}"}}"#,
                "x".repeat(1024 * 1024)
            ),
            "too_large",
        ),
    ] {
        assert_eq!(code(body), want, "{}", crate::reject::truncate(body, 80));
    }
    let just = format!(
        r#"{{"user_id": "u", "pad": "{}"}}"#,
        "x".repeat(1024 * 1024 - 30)
    );
    assert!(one(&just).is_ok());
    // 0.4.0's messages, word for word
    for (body, text) in [
        (r#"{"user_id": 42}"#, "wrong_type: user_id must be a string or null, got number"),
        (r#"{"user_id": "u", "ip": ["1.2.3.4"]}"#, "wrong_type: ip must be a string or null, got array"),
        (r#"{"ip": "1.2.3.4"}"#, "missing_field: user_id is required"),
        (r#"{"user_id": "u\u0000v"}"#, "nul_character: user_id contains a NUL character (\\u0000), which PostgreSQL text cannot store"),
        (r#"{"user_id": "u", "user_id": "v"}"#, "duplicate_field: field \"user_id\" appears more than once"),
        (r#"{"user_id": "u", "locale": "abcdefghijklmnopqrstuvwxyz0123456789"}"#, "too_long: locale has 36 characters; the column allows 32"),
        (r#"{"user_id": "u", "app_version": "1.2.3.4"}"#, "bad_app_version: app_version \"1.2.3.4\" is not of the form major[.minor[.patch]] with decimal digits"),
        ("[1]", "not_object: body is a JSON array, not an object"),
    ] {
        assert_eq!(one(body).unwrap_err(), text);
    }
}

#[test]
fn masked_values_are_limited_by_max_pii_bytes() {
    let body = format!(r#"{{"user_id": "u", "ip": "{}"}}"#, "1".repeat(5000));
    assert_eq!(
        one(&body).unwrap_err(),
        "too_long: ip has 5000 bytes; values that are masked may have 4096 (fetch_etl.max_pii_bytes)"
    );
    let raised = Limits {
        max_pii_bytes: 8192,
        ..limits()
    };
    assert!(one_with(&login_on(&user_logins()), &raised, &body).is_ok());
}

#[test]
fn interrupt_many_keys_are_checked_in_linear_time() {
    let mut body = String::from(r#"{"user_id": "u""#);
    for i in 0..200_000 {
        body.push_str(&format!(r#", "k{i}": 1"#));
    }
    body.push('}');
    let l = Limits {
        max_body_bytes: usize::MAX,
        ..limits()
    };
    let p = login_on(&user_logins());
    let start = std::time::Instant::now();
    assert!(one_with(&p, &l, &body).is_ok());
    assert!(
        start.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    let dup = body.replacen('}', r#", "k7": 2}"#, 1);
    assert!(one_with(&p, &l, &dup)
        .unwrap_err()
        .starts_with("duplicate_field"));
}

#[test]
fn length_is_in_characters_not_bytes() {
    let name = "é".repeat(32); // 64 bytes, 32 characters
    assert!(one(&format!(r#"{{"user_id": "u", "device_type": "{name}"}}"#)).is_ok());
}

#[test]
fn a_text_app_version_column_keeps_the_string_and_a_smallint_its_range() {
    let mut t = user_logins();
    t.columns[5] = text("app_version", Some(8));
    let p = login_on(&t);
    assert_eq!(
        one_with(
            &p,
            &limits(),
            r#"{"user_id": "u", "app_version": "1.2.3.4"}"#
        )
        .unwrap()[5],
        Cell::Text("1.2.3.4".into())
    );
    assert!(one_with(
        &p,
        &limits(),
        r#"{"user_id": "u", "app_version": "1.2.3.4-beta"}"#
    )
    .unwrap_err()
    .starts_with("too_long"));
    let mut t = user_logins();
    t.columns[5] = int_col("app_version", 16);
    let p = login_on(&t);
    assert!(one_with(
        &p,
        &limits(),
        r#"{"user_id": "u", "app_version": "3.27.67"}"#
    )
    .is_ok());
    let e = one_with(&p, &limits(), r#"{"user_id": "u", "app_version": "4.0"}"#).unwrap_err();
    assert_eq!(e, "bad_app_version: app_version \"4.0\" encodes to 40000, outside the column's range -32768..32767");
}

#[test]
fn the_real_sample_gives_99_rows_and_one_refusal() {
    let sample = include_str!("../../../../data/login-queue-sample.json");
    let records: Vec<serde_json::Value> = serde_json::from_str(sample).unwrap();
    let bodies: Vec<String> = records.iter().map(|r| r.to_string()).collect();
    let refs: Vec<&str> = bodies.iter().map(String::as_str).collect();
    let out = run_with(&login_on(&user_logins()), &limits(), &refs);
    let loaded: Vec<&Loaded> = out
        .iter()
        .filter_map(|p| match &p.made {
            Made::Rows { loaded, .. } => Some(loaded),
            _ => None,
        })
        .collect();
    assert_eq!(loaded.len(), 99);
    let refused: Vec<&Refusal> = out
        .iter()
        .filter_map(|p| match &p.made {
            Made::Refused(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(
        (refused[0].index, refused[0].reason),
        (12, RejectReason::NotLoginEvent)
    );
    assert_eq!(
        loaded.iter().filter(|l| l.rows[0][3] == Cell::Null).count(),
        29
    );
    assert_eq!(loaded.iter().map(|l| l.pairs.len()).sum::<usize>(), 198);
    // keys are the message ids
    assert!(out
        .iter()
        .enumerate()
        .all(|(i, p)| p.key == format!("m{i}")));
}

fn sns(message: &str) -> String {
    json!({
        "Type": "Notification", "MessageId": "5e1f1a3c-0000-4000-8000-000000000001",
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:logins", "Subject": "hello", "Message": message,
        "Timestamp": "2026-12-02T08:00:00.000Z", "SignatureVersion": "1", "Signature": "EXAMPLE",
        "SigningCertURL": "https://sns.us-east-1.amazonaws.com/x.pem",
        "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe"
    })
    .to_string()
}

fn eventbridge(detail: &str) -> String {
    format!(
        r#"{{"version": "0", "id": "e-1", "detail-type": "UserLogin", "source": "com.example.auth",
           "account": "123456789012", "time": "2026-12-02T08:00:00Z", "region": "us-east-1",
           "resources": [], "detail": {detail}}}"#
    )
}

#[test]
fn envelopes_are_unwrapped_and_what_is_inside_is_checked_like_a_bare_event() {
    assert_eq!(one(&sns(GOOD)).unwrap(), one(GOOD).unwrap());
    assert_eq!(one(&eventbridge(GOOD)).unwrap(), one(GOOD).unwrap());
    assert_eq!(one(&sns(&eventbridge(GOOD))).unwrap(), one(GOOD).unwrap());
    // a third layer is not opened: what is inside two is the event
    assert!(one(&sns(&sns(&sns(GOOD))))
        .unwrap_err()
        .starts_with("not_login_event"));
    assert_eq!(
        one(&sns(r#"{"foo": "oops_wrong_msg_type", "bar": "123"}"#)).unwrap_err(),
        "not_login_event: in the SNS notification's Message: no login fields; has: bar, foo"
    );
    assert!(one(&eventbridge(r#"{"user_id": "a", "user_id": "b"}"#))
        .unwrap_err()
        .starts_with("duplicate_field: in the EventBridge event's detail: "));
    for (body, want) in [
        (
            r#"{"Type": "Notification", "TopicArn": "arn:aws:sns:us-east-1:1:t"}"#,
            "malformed_envelope",
        ),
        (
            r#"{"Type": "Notification", "TopicArn": "arn:aws:sns:us-east-1:1:t", "Message": {"user_id": "u"}}"#,
            "malformed_envelope",
        ),
        (
            r#"{"detail-type": "x", "source": "y"}"#,
            "malformed_envelope",
        ),
        (
            r#"{"Type": "SubscriptionConfirmation", "TopicArn": "arn:aws:sns:us-east-1:1:t", "Token": "t", "SubscribeURL": "https://example.com/"}"#,
            "not_login_event",
        ),
    ] {
        assert_eq!(code(body), want, "{body}");
    }
    // envelopes = none: an envelope is not a login event, and says why
    let none = Limits {
        envelopes: Envelopes::None,
        ..limits()
    };
    let e = one_with(&login_on(&user_logins()), &none, &sns(GOOD)).unwrap_err();
    assert!(
        e.ends_with("(an SNS notification: fetch_etl.envelopes is none)"),
        "{e}"
    );
    // the size limit is the outer body's
    let small = Limits {
        max_body_bytes: 300,
        ..limits()
    };
    assert!(one_with(&login_on(&user_logins()), &small, &sns(GOOD))
        .unwrap_err()
        .starts_with("too_large"));
}

#[test]
fn metadata_columns_get_the_message_s_id_time_and_attributes() {
    let mut table = user_logins();
    table.columns.push(text("sqs_message_id", None));
    table.columns.push(col(
        "sqs_sent_at",
        TypeKind::Timestamptz,
        "timestamp with time zone",
        "pg_catalog.timestamptz",
        1184,
    ));
    table.columns.push(col(
        "sqs_attributes",
        TypeKind::Jsonb,
        "jsonb",
        "pg_catalog.jsonb",
        3802,
    ));
    let p = login_on(&table);
    assert!(p.wants_message_attributes());
    let mut m = msg("m-1", r#"{"user_id": "u"}"#, Some(1_670_000_000_123));
    m.receive_count = Some(3);
    m.attributes = vec![
        ("MessageGroupId", "g".into()),
        ("SenderId", "AID\0X".into()),
    ];
    m.message_attributes = vec![MessageAttribute {
        name: "tenant".into(),
        data_type: "String".into(),
        string_value: Some("acme".into()),
        binary_value: None,
    }];
    let mut unsent = msg("m-2", &sns(r#"{"user_id": "v"}"#), None);
    unsent.receive_count = None;
    let out = prepare(&[&m, &unsent], &p, &masker(), &limits(), 5, &mut || {});
    let rows: Vec<Vec<Cell>> = out
        .into_iter()
        .map(|p| match p.made {
            Made::Rows { mut loaded, .. } => loaded.rows.pop().unwrap(),
            Made::Refused(r) => panic!("{}", r.text),
        })
        .collect();
    assert_eq!(rows[0][7], t("m-1"));
    assert_eq!(rows[0][8], t("2022-12-02T16:53:20.123Z"));
    let a: serde_json::Value = match &rows[0][9] {
        Cell::Text(s) => serde_json::from_str(s).unwrap(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        a,
        json!({"MessageGroupId": "g", "SenderId": "AID\u{FFFD}X", "ApproximateReceiveCount": "3",
               "MessageAttributes": {"tenant": {"DataType": "String", "StringValue": "acme"}}})
    );
    // no SentTimestamp: NULL, while create_date falls back to now
    assert_eq!((&rows[1][8], &rows[1][6]), (&Cell::Null, &t("1970-01-01")));
    assert_eq!(
        rows[1][9],
        t(r#"{"TopicArn":"arn:aws:sns:us-east-1:123456789012:logins"}"#)
    );
    // without the columns, nothing is asked for or built for them
    let plain = login_on(&user_logins());
    assert!(!plain.wants_message_attributes());
    assert_eq!(one(GOOD).unwrap().len(), 7);
}

#[test]
fn interrupt_the_hook_runs_before_every_message() {
    let msgs: Vec<Message> = (0..5).map(|i| msg(&i.to_string(), "{}", None)).collect();
    let refs: Vec<&Message> = msgs.iter().collect();
    let mut calls = 0;
    prepare(
        &refs,
        &login_on(&user_logins()),
        &masker(),
        &limits(),
        0,
        &mut || calls += 1,
    );
    assert_eq!(calls, 5);
}

#[test]
fn poison_fifo_messages_behind_a_deferred_one_of_their_group_wait_with_it() {
    let grouped = |id: &str, g: &str| {
        let mut m = msg(id, "{}", None);
        m.attributes = vec![("MessageGroupId", g.into())];
        m
    };
    let msgs = [
        grouped("a1", "A"),
        grouped("b1", "B"),
        grouped("a2", "A"),
        grouped("b2", "B"),
        grouped("a3", "A"),
        msg("s1", "{}", None),
    ];
    let refs: Vec<&Message> = msgs.iter().collect();
    let set = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<HashSet<_>>();
    let fresh = set(&["a1", "b1", "b2", "a3", "s1"]);
    assert_eq!(
        behind_deferred(&refs, &fresh, &set(&["a2"])),
        vec!["a3".to_string()]
    );
    assert!(behind_deferred(&refs, &fresh, &set(&[])).is_empty());
    assert_eq!(
        behind_deferred(&refs, &set(&["a2", "b2", "a3"]), &set(&["a1"])),
        vec!["a2".to_string(), "a3".to_string()]
    );
    let plain = [msg("x", "{}", None), msg("y", "{}", None)];
    let refs: Vec<&Message> = plain.iter().collect();
    assert!(behind_deferred(&refs, &set(&["y"]), &set(&["x"])).is_empty());
}

// ---------------------------------------------------------------- other pipelines

fn s3_objects() -> Target {
    Target {
        sql_name: "public.s3_objects".into(),
        columns: vec![
            text("bucket", None),
            text("key", None),
            int_col("size", 64),
            col(
                "event_time",
                TypeKind::Timestamptz,
                "timestamp with time zone",
                "pg_catalog.timestamptz",
                1184,
            ),
            text("source_ip", None),
            col(
                "message_id",
                TypeKind::Uuid,
                "uuid",
                "pg_catalog.uuid",
                2950,
            ),
            text("region", Some(20)),
        ],
    }
}

fn s3_pipeline(idempotency: Idempotency) -> Pipelines {
    let def = Definition {
        name: "s3_objects".into(),
        id: 3,
        columns: parse_columns(
            "bucket PATH '$.s3.bucket.name', key PATH '$.s3.object.key' REQUIRED,
             size PATH '$.s3.object.size', event_time PATH '$.eventTime',
             source_ip PATH '$.requestParameters.sourceIPAddress' MASKED,
             message_id MESSAGE message_id, region PATH '$.awsRegion' STRING",
        )
        .unwrap(),
        rows: Some(crate::pipeline::path::JsonPath::parse("$.Records[*]").unwrap()),
        idempotency,
        unrecognized: RejectReason::UnrecognizedEvent,
    };
    Pipelines::single(plan(&def, &s3_objects(), &types).unwrap())
}

fn s3_event(records: &[serde_json::Value]) -> String {
    json!({"Records": records}).to_string()
}

fn s3_record(key: &str, size: serde_json::Value) -> serde_json::Value {
    json!({"eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
           "eventTime": "2026-12-07T12:00:00.000Z", "eventName": "ObjectCreated:Put",
           "requestParameters": {"sourceIPAddress": "205.255.255.255"},
           "s3": {"bucket": {"name": "my-bucket"}, "object": {"key": key, "size": size}}})
}

#[test]
fn one_message_many_rows_all_or_nothing() {
    let p = s3_pipeline(Idempotency::MessageId);
    let body = s3_event(&[
        s3_record("a.txt", json!(5)),
        s3_record("b.txt", json!(1024)),
    ]);
    let out = run_with(&p, &limits(), &[&body]);
    let Made::Rows { loaded, .. } = &out[0].made else {
        panic!("{out:?}")
    };
    assert_eq!(loaded.rows.len(), 2);
    assert_eq!(loaded.rows[1][..3], [t("my-bucket"), t("b.txt"), t("1024")]);
    assert_eq!(loaded.rows[0][4], t(&masker().mask(b"205.255.255.255")));
    assert_eq!(loaded.pairs.len(), 2);
    // one bad element refuses the message, naming the element
    let bad = s3_event(&[
        s3_record("a.txt", json!(5)),
        json!({"s3": {"object": {"size": 1}}}),
    ]);
    let out = run_with(&p, &limits(), &[&bad]);
    let Made::Refused(r) = &out[0].made else {
        panic!("{out:?}")
    };
    assert_eq!(
        r.text,
        "missing_field: element 1 of $.Records[*]: s3.object.key is required"
    );
    // no Records: no rows
    let out = run_with(
        &p,
        &limits(),
        &[r#"{"Service": "Amazon S3", "Event": "s3:TestEvent"}"#],
    );
    let Made::Refused(r) = &out[0].made else {
        panic!("{out:?}")
    };
    assert_eq!(
        r.text,
        "no_rows: $.Records[*] selects no element of the event"
    );
    // a too-long string for a varchar column names its path
    let long = s3_event(&[json!({"awsRegion": "x".repeat(21), "s3": {"object": {"key": "k"}}})]);
    let out = run_with(&p, &limits(), &[&long]);
    let Made::Refused(r) = &out[0].made else {
        panic!("{out:?}")
    };
    assert_eq!(
        r.text,
        "too_long: element 0 of $.Records[*]: awsRegion has 21 characters; the column allows 20"
    );
}

#[test]
fn idempotency_keys_are_the_message_id_an_event_id_or_the_body() {
    let body = s3_event(&[json!({"id": "evt-7", "s3": {"object": {"key": "k"}}})]);
    let key = |i: Idempotency| {
        run_with(&s3_pipeline(i), &limits(), &[&body])
            .pop()
            .unwrap()
            .key
    };
    assert_eq!(key(Idempotency::MessageId), "m0");
    assert_eq!(
        key(Idempotency::parse("$.Records[0].id").unwrap()),
        "key:3:evt-7"
    );
    assert!(key(Idempotency::Body).starts_with("body:3:"));
    let missing = run_with(
        &s3_pipeline(Idempotency::parse("$.nope").unwrap()),
        &limits(),
        &[&body],
    );
    let Made::Refused(r) = &missing[0].made else {
        panic!()
    };
    assert_eq!(
        r.text,
        "missing_field: the idempotency key $.nope is missing"
    );
    assert_eq!(
        missing[0].key, "m0",
        "a message without its key is ledgered by its id"
    );
    // a long key is hashed (the ledger's index has a size limit)
    let long = s3_event(&[json!({"id": "x".repeat(600), "s3": {"object": {"key": "k"}}})]);
    let k = run_with(
        &s3_pipeline(Idempotency::parse("$.Records[0].id").unwrap()),
        &limits(),
        &[&long],
    )
    .pop()
    .unwrap()
    .key;
    assert!(k.starts_with("keyh:3:") && k.len() < 100, "{k}");
    // the envelope's id: an EventBridge event's, whatever its detail
    let by_envelope = s3_pipeline(Idempotency::parse("ENVELOPE event_id").unwrap());
    let wrapped = eventbridge(&body);
    assert_eq!(
        run_with(&by_envelope, &limits(), &[&wrapped])
            .pop()
            .unwrap()
            .key,
        "envelope:3:e-1"
    );
    let Made::Refused(r) = &run_with(&by_envelope, &limits(), &[&body])[0].made else {
        panic!("a bare event has no envelope id")
    };
    assert_eq!(
        r.text,
        "missing_field: the idempotency key ENVELOPE event_id is missing"
    );
}

#[test]
fn routes_send_each_message_to_its_pipeline() {
    let login_plan = plan(&login(), &user_logins(), &types).unwrap();
    let s3 = s3_pipeline(Idempotency::MessageId).plans.remove(0);
    let router = crate::pipeline::router::Router {
        name: "events".into(),
        discriminator: crate::pipeline::grammar::parse_source("ENVELOPE detail_type").unwrap(),
        routes: vec![("UserLogin".into(), 0), ("Object Created".into(), 1)],
        otherwise: None,
    };
    let p = Pipelines {
        name: "events".into(),
        id: 9,
        plans: vec![login_plan, s3],
        router: Some(router),
    };
    let s3_bridge =
        eventbridge(&s3_event(&[s3_record("k", json!(1))])).replace("UserLogin", "Object Created");
    let other = eventbridge("{}").replace("UserLogin", "Something Else");
    let out = run_with(
        &p,
        &limits(),
        &[&eventbridge(GOOD), &s3_bridge, &other, GOOD],
    );
    assert!(matches!(out[0].made, Made::Rows { plan: 0, .. }));
    assert!(matches!(out[1].made, Made::Rows { plan: 1, .. }));
    let Made::Refused(r) = &out[2].made else {
        panic!()
    };
    assert_eq!(
        (r.plan, r.text.as_str()),
        (
            None,
            "no_route: router events has no route for ENVELOPE detail_type = \"Something Else\""
        )
    );
    let Made::Refused(r) = &out[3].made else {
        panic!()
    };
    assert_eq!(
        r.text,
        "no_route: router events: the message has no ENVELOPE detail_type"
    );
}

#[test]
fn columns_collect_rows_per_message() {
    let p = s3_pipeline(Idempotency::MessageId);
    let body = s3_event(&[s3_record("a", json!(1)), s3_record("b", json!(2))]);
    let out = run_with(&p, &limits(), &[&body, &body]);
    let mut c = Columns::new(&p.plans[0]);
    for (i, o) in out.into_iter().enumerate() {
        if let Made::Rows { loaded, .. } = o.made {
            c.push(i, loaded.rows);
        }
    }
    assert_eq!(c.messages, vec![(0, 0..2), (1, 2..4)]);
    assert_eq!(c.rows(), 4);
    assert_eq!(c.text.len(), 7);
    assert_eq!(
        c.text[1],
        vec![
            Some("a".into()),
            Some("b".into()),
            Some("a".into()),
            Some("b".into())
        ]
    );
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the body, the login and S3 pipelines make rows or a
        /// refusal with a reason: never a panic.
        #[test]
        fn any_body_converts_or_is_refused(body in ".{0,200}") {
            let _ = run_with(&login_on(&user_logins()), &limits(), &[&body]);
            let _ = run_with(&s3_pipeline(Idempotency::Body), &limits(), &[&body]);
        }

        /// Whatever JSON values sit at the login's fields, a row or a
        /// refusal, and a row's masks are mask_pii's.
        #[test]
        fn any_login_values_convert_or_are_refused(
            user in prop_oneof![Just(json!(null)), any::<i64>().prop_map(|n| json!(n)), ".{0,140}".prop_map(|s| json!(s))],
            ip in prop_oneof![Just(json!(null)), ".{0,20}".prop_map(|s| json!(s)), Just(json!([1]))],
            version in prop_oneof![Just(json!(null)), "[0-9.]{0,12}".prop_map(|s| json!(s)), any::<f64>().prop_map(|n| json!(n))],
        ) {
            let body = json!({"user_id": user, "ip": ip.clone(), "app_version": version}).to_string();
            if let Ok(row) = one(&body) {
                if let Some(ip) = ip.as_str() {
                    prop_assert_eq!(&row[2], &Cell::Text(masker().mask(ip.as_bytes())));
                }
            }
        }
    }
}

/// Threat: a pipeline that copies a large part of the event into each of
/// many rows (`EVENT`, an `EVENT PATH`, a long constant) lets one 1 MiB
/// body become gigabytes in a backend. A message's rows are capped, and a
/// batch is prepared in parts of about STORE_FLUSH_BYTES of rows.
#[test]
fn memory_a_message_whose_rows_would_take_more_than_the_cap_is_refused_too_large() {
    let def = Definition {
        name: "docs".into(),
        id: 4,
        columns: parse_columns("pad EVENT PATH '$.pad', k PATH '$.k'").unwrap(),
        rows: Some(crate::pipeline::path::JsonPath::parse("$.items[*]").unwrap()),
        idempotency: Idempotency::MessageId,
        unrecognized: RejectReason::UnrecognizedEvent,
    };
    let table = Target {
        sql_name: "public.docs".into(),
        columns: vec![text("pad", None), text("k", None)],
    };
    let p = Pipelines::single(plan(&def, &table, &types).unwrap());
    let pad = "x".repeat(600 * 1024);
    let body = |n: usize| json!({"pad": pad, "items": vec![json!({"k": 1}); n]}).to_string();
    // 13 rows of 600 kB: 7.6 MiB, under the 8 MiB cap
    let ok = run_with(&p, &limits(), &[&body(13)]);
    let Made::Rows { loaded, .. } = &ok[0].made else {
        panic!("13 rows fit")
    };
    assert_eq!(loaded.rows.len(), 13);
    assert!(loaded.bytes() > 13 * 600 * 1024);
    // 14 would take 8.2 MiB: refused at the 14th row, before more are made
    let Made::Refused(r) = &run_with(&p, &limits(), &[&body(10_000)])[0].made else {
        panic!("10,000 rows of 600 kB are refused")
    };
    assert_eq!(
        r.text,
        "too_large: its rows take more than 8 MiB (after 14 rows); a message's rows may take at most that"
    );
    // one row whose columns copy too much: the same cap
    let wide = Definition {
        name: "wide".into(),
        id: 5,
        columns: parse_columns(
            &(0..20)
                .map(|i| format!("c{i} MESSAGE body"))
                .collect::<Vec<_>>()
                .join(", "),
        )
        .unwrap(),
        rows: None,
        idempotency: Idempotency::MessageId,
        unrecognized: RejectReason::UnrecognizedEvent,
    };
    let wide_table = Target {
        sql_name: "public.wide".into(),
        columns: (0..20).map(|i| text(&format!("c{i}"), None)).collect(),
    };
    let wp = Pipelines::single(plan(&wide, &wide_table, &types).unwrap());
    let big = json!({"pad": pad}).to_string();
    let Made::Refused(r) = &run_with(&wp, &limits(), &[&big])[0].made else {
        panic!("20 copies of a 600 kB body are refused")
    };
    assert!(
        r.text
            .starts_with("too_large: its rows take more than 8 MiB (after 1 rows)"),
        "{}",
        r.text
    );
}

#[test]
fn memory_a_batch_is_prepared_in_parts_of_its_rows_budget() {
    let p = login_on(&user_logins());
    let msgs: Vec<Message> = (0..5)
        .map(|i| msg(&format!("m{i}"), GOOD, Some(1)))
        .collect();
    let refs: Vec<&Message> = msgs.iter().collect();
    let part = |budget| prepare_part(&refs, &p, &masker(), &limits(), 1, budget, &mut || {}).len();
    assert_eq!(part(usize::MAX), 5);
    assert_eq!(
        part(1),
        1,
        "the message that reaches the budget ends the part"
    );
    let one = match &prepare(&refs[..1], &p, &masker(), &limits(), 1, &mut || {})[0].made {
        Made::Rows { loaded, .. } => loaded.bytes(),
        Made::Refused(r) => panic!("{}", r.text),
    };
    assert_eq!(part(2 * one), 2);
    assert_eq!(part(2 * one + 1), 3);
    // refused messages take nothing from the budget
    let bad: Vec<Message> = (0..5)
        .map(|i| msg(&format!("b{i}"), "{}", Some(1)))
        .collect();
    let bad_refs: Vec<&Message> = bad.iter().collect();
    assert_eq!(
        prepare_part(&bad_refs, &p, &masker(), &limits(), 1, 1, &mut || {}).len(),
        5
    );
}

/// Threat (an attacker's review): NULL cells and vaulted raw values were not
/// counted, so 100,000 elements each vaulting a 4 kB masked value took
/// hundreds of megabytes before the cap. Every cell and pair counts now.
#[test]
fn memory_nulls_and_vaulted_values_count_against_the_rows_cap() {
    let def = Definition {
        name: "mail".into(),
        id: 6,
        columns: parse_columns("email EVENT PATH '$.email' MASKED, a PATH '$.a', b PATH '$.b'")
            .unwrap(),
        rows: Some(crate::pipeline::path::JsonPath::parse("$.lines[*]").unwrap()),
        idempotency: Idempotency::MessageId,
        unrecognized: RejectReason::UnrecognizedEvent,
    };
    let table = Target {
        sql_name: "public.mail".into(),
        columns: vec![text("email", None), text("a", None), text("b", None)],
    };
    let p = Pipelines::single(plan(&def, &table, &types).unwrap());
    let email = format!("{}@example.com", "x".repeat(4000));
    let body = json!({"email": email, "lines": vec![json!({"a": null}); 50_000]}).to_string();
    let Made::Refused(r) = &run_with(&p, &limits(), &[&body])[0].made else {
        panic!("50,000 rows each vaulting 4 kB are refused")
    };
    // about 4.1 kB a row: the cap is reached near row 2,000, not 50,000
    let after: usize = r
        .text
        .split("(after ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1_800..2_100).contains(&after), "{}", r.text);
}
