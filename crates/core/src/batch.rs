//! Received messages to what the store writes: column arrays for the target
//! table's INSERT, (mask, raw value) pairs for the vault, and the messages
//! refused with their reason. Pure: the extension only turns the columns into
//! SQL arrays and runs the statements.

use crate::contract::RejectReason;
use crate::envelope::{EnvelopeAttributes, Envelopes};
use crate::event::{self, AppVersion, Limits};
use crate::mask::Masker;
use crate::sqs::Message;
use crate::target::Metadata;
use crate::time::utc_date;

/// How messages become rows: what the target holds, which envelopes are
/// unwrapped, which metadata columns are filled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    pub limits: Limits,
    pub envelopes: Envelopes,
    pub metadata: Metadata,
}

/// A message that was not loaded: its index in the input, reason and the
/// full text stored in the dead letter (`<reason>: <detail>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub index: usize,
    pub reason: RejectReason,
    pub text: String,
}

impl Refusal {
    pub fn new(index: usize, reason: RejectReason, detail: impl std::fmt::Display) -> Self {
        Refusal {
            index,
            reason,
            text: format!("{reason}: {detail}"),
        }
    }
}

/// Column arrays for one INSERT ... SELECT FROM ROWS FROM (unnest(...), ...),
/// in the order of [`crate::target::REQUIRED`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rows {
    pub user_id: Vec<Option<String>>,
    pub device_type: Vec<Option<String>>,
    pub masked_ip: Vec<Option<String>>,
    pub masked_device_id: Vec<Option<String>>,
    pub locale: Vec<Option<String>>,
    /// Filled for an integer `app_version` column...
    pub app_version_int: Vec<Option<i64>>,
    /// ... or this one for a text column.
    pub app_version_text: Vec<Option<String>>,
    /// `YYYY-MM-DD`, the UTC date of the message's SentTimestamp.
    pub create_date: Vec<Option<String>>,
    /// The metadata columns the target has ([`Metadata`]); empty otherwise.
    pub sqs_message_id: Vec<Option<String>>,
    pub sqs_sent_at_ms: Vec<Option<i64>>,
    /// JSON objects (see [`attributes_json`]).
    pub sqs_attributes: Vec<Option<String>>,
    /// Raw values behind the masks, for the vault.
    raw_ip: Vec<Option<String>>,
    raw_device_id: Vec<Option<String>>,
    /// Index of each row's message in the input.
    pub source: Vec<usize>,
}

impl Rows {
    fn push(
        &mut self,
        idx: usize,
        m: &Message,
        now_ms: i64,
        p: event::Parsed,
        rules: &Rules,
        masker: &Masker,
    ) {
        if rules.metadata.message_id {
            self.sqs_message_id.push(Some(m.message_id.clone()));
        }
        if rules.metadata.sent_at {
            self.sqs_sent_at_ms.push(m.sent_timestamp_ms);
        }
        if rules.metadata.attributes {
            self.sqs_attributes
                .push(Some(attributes_json(m, &p.attributes)));
        }
        let sent_ms = m.sent_timestamp_ms.unwrap_or(now_ms);
        let e = p.event;
        let mask = |raw: &Option<String>| raw.as_ref().map(|r| masker.mask(r.as_bytes()));
        self.masked_ip.push(mask(&e.ip));
        self.masked_device_id.push(mask(&e.device_id));
        self.raw_ip.push(e.ip);
        self.raw_device_id.push(e.device_id);
        self.user_id.push(Some(e.user_id));
        self.device_type.push(e.device_type);
        self.locale.push(e.locale);
        match e.app_version {
            AppVersion::Int(v) => self.app_version_int.push(v),
            AppVersion::Text(v) => self.app_version_text.push(v),
        }
        self.create_date.push(Some(utc_date(sent_ms)));
        self.source.push(idx);
    }

    pub fn len(&self) -> usize {
        self.user_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.user_id.is_empty()
    }

    /// (mask, raw) pairs of row `k`.
    pub fn vault_pairs(&self, k: usize) -> impl Iterator<Item = (&str, &str)> {
        fn pair<'a>(m: &'a Option<String>, r: &'a Option<String>) -> Option<(&'a str, &'a str)> {
            Some((m.as_deref()?, r.as_deref()?))
        }
        [
            pair(&self.masked_ip[k], &self.raw_ip[k]),
            pair(&self.masked_device_id[k], &self.raw_device_id[k]),
        ]
        .into_iter()
        .flatten()
    }
}

/// What validation made of a batch of messages.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    pub rows: Rows,
    pub refused: Vec<Refusal>,
}

/// The `sqs_attributes` value of a message: its kept system attributes
/// (`MessageGroupId`, `SequenceNumber`, `MessageDeduplicationId`,
/// `SenderId`), `ApproximateReceiveCount`, what its envelopes said
/// (`TopicArn`; `EventSource`, `DetailType`), and `MessageAttributes` in
/// the SQS API's shape (`{"name": {"DataType", "StringValue" |
/// "BinaryValue"}}`). Every value a string, as SQS sends them.
pub fn attributes_json(m: &Message, envelope: &EnvelopeAttributes) -> String {
    use serde_json::{Map, Value};
    // PostgreSQL's jsonb cannot hold \u0000 (SQS does not send it either).
    let text = |s: &str| Value::String(s.replace('\0', "\u{FFFD}"));
    let mut out = Map::new();
    for (name, value) in &m.attributes {
        out.insert((*name).to_string(), text(value));
    }
    if let Some(n) = m.receive_count {
        out.insert("ApproximateReceiveCount".into(), text(&n.to_string()));
    }
    for (name, value) in envelope {
        out.insert((*name).to_string(), text(value));
    }
    if !m.message_attributes.is_empty() {
        let mut attrs = Map::new();
        for a in &m.message_attributes {
            let mut v = Map::new();
            v.insert("DataType".into(), text(&a.data_type));
            if let Some(s) = &a.string_value {
                v.insert("StringValue".into(), text(s));
            }
            if let Some(b) = &a.binary_value {
                v.insert("BinaryValue".into(), text(b));
            }
            attrs.insert(a.name.replace('\0', "\u{FFFD}"), Value::Object(v));
        }
        out.insert("MessageAttributes".into(), Value::Object(attrs));
    }
    Value::Object(out).to_string()
}

/// On a FIFO queue, the ids of `fresh` messages that SQS delivered after a
/// `deferred` message of the same group (in `msgs`' order, the order SQS
/// delivered them). Loading them now would put them before the message
/// still to come: they are left in the queue with it.
pub fn behind_deferred(
    msgs: &[&Message],
    fresh: &std::collections::HashSet<String>,
    deferred: &std::collections::HashSet<String>,
) -> Vec<String> {
    let mut blocked: std::collections::HashSet<&str> = std::collections::HashSet::new();
    let mut out = Vec::new();
    for m in msgs {
        let Some(group) = m.group_id() else { continue };
        if deferred.contains(&m.message_id) {
            blocked.insert(group);
        } else if blocked.contains(group) && fresh.contains(&m.message_id) {
            out.push(m.message_id.clone());
        }
    }
    out
}

/// Validates, flattens and masks `msgs`. A message without a SentTimestamp
/// is dated `now_ms`. `between` runs before each message (the extension
/// checks for query cancellation there).
pub fn build(
    msgs: &[&Message],
    rules: &Rules,
    masker: &Masker,
    now_ms: i64,
    between: &mut dyn FnMut(),
) -> Batch {
    let mut out = Batch::default();
    for (i, m) in msgs.iter().enumerate() {
        between();
        match event::parse_message(&m.body, &rules.limits, rules.envelopes) {
            Ok(p) => out.rows.push(i, m, now_ms, p, rules, masker),
            Err(r) => out.refused.push(Refusal::new(i, r.reason, r.detail)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::AppVersionColumn;

    const KEY: [u8; 32] = [3u8; 32];

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

    fn rules(limits: Limits) -> Rules {
        Rules {
            limits,
            ..Rules::default()
        }
    }

    #[test]
    fn metadata_columns_get_the_message_s_id_time_and_attributes() {
        let masker = Masker::new(&KEY).unwrap();
        let mut m = msg("m-1", r#"{"user_id": "u"}"#, Some(1_670_000_000_123));
        m.receive_count = Some(3);
        m.attributes = vec![
            ("MessageGroupId", "g".into()),
            ("SenderId", "AID\0X".into()),
        ];
        m.message_attributes = vec![crate::sqs::MessageAttribute {
            name: "tenant".into(),
            data_type: "String".into(),
            string_value: Some("acme".into()),
            binary_value: None,
        }];
        let sns =
            serde_json::json!({"Type": "Notification", "TopicArn": "arn:aws:sns:us-east-1:1:t",
            "Message": r#"{"user_id": "v"}"#})
            .to_string();
        let mut unsent = msg("m-2", &sns, None);
        unsent.receive_count = None;
        let rules = Rules {
            metadata: Metadata {
                message_id: true,
                sent_at: true,
                attributes: true,
            },
            ..Rules::default()
        };
        let b = build(&[&m, &unsent], &rules, &masker, 5, &mut || {});
        assert_eq!(b.rows.user_id, vec![Some("u".into()), Some("v".into())]);
        assert_eq!(
            b.rows.sqs_message_id,
            vec![Some("m-1".into()), Some("m-2".into())]
        );
        // no SentTimestamp: NULL, while create_date falls back to now
        assert_eq!(b.rows.sqs_sent_at_ms, vec![Some(1_670_000_000_123), None]);
        let a: serde_json::Value =
            serde_json::from_str(b.rows.sqs_attributes[0].as_deref().unwrap()).unwrap();
        assert_eq!(
            a,
            serde_json::json!({"MessageGroupId": "g", "SenderId": "AID\u{FFFD}X", "ApproximateReceiveCount": "3",
                "MessageAttributes": {"tenant": {"DataType": "String", "StringValue": "acme"}}})
        );
        assert_eq!(
            b.rows.sqs_attributes[1].as_deref(),
            Some(r#"{"TopicArn":"arn:aws:sns:us-east-1:1:t"}"#)
        );
        // without the columns, nothing is built for them
        let b = build(&[&m], &Rules::default(), &masker, 5, &mut || {});
        assert!(
            b.rows.sqs_message_id.is_empty()
                && b.rows.sqs_sent_at_ms.is_empty()
                && b.rows.sqs_attributes.is_empty()
        );
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
        let set = |ids: &[&str]| {
            ids.iter()
                .map(|s| s.to_string())
                .collect::<std::collections::HashSet<_>>()
        };
        // a2 is held by another session: a3 must not be loaded before it; a1, B and the
        // ungrouped message go on; a duplicate (already loaded) is not held back
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
        // standard queues have no groups: nothing is held back
        let plain = [msg("x", "{}", None), msg("y", "{}", None)];
        let refs: Vec<&Message> = plain.iter().collect();
        assert!(behind_deferred(&refs, &set(&["y"]), &set(&["x"])).is_empty());
    }

    #[test]
    fn good_and_bad_messages_are_split_with_indices() {
        let masker = Masker::new(&KEY).unwrap();
        let msgs = [
            msg(
                "a",
                r#"{"user_id": "u1", "ip": "1.2.3.4", "device_id": "d1", "app_version": "2.3.0", "locale": "RU", "device_type": "ios"}"#,
                Some(1_670_000_000_000),
            ),
            msg("b", "not json", None),
            msg("c", r#"{"user_id": "u2", "ip": null}"#, None),
            msg("d", r#"{"foo": "oops_wrong_msg_type", "bar": "123"}"#, None),
        ];
        let refs: Vec<&Message> = msgs.iter().collect();
        let b = build(
            &refs,
            &Rules::default(),
            &masker,
            951_782_400_000,
            &mut || {},
        );
        assert_eq!(b.rows.len(), 2);
        assert_eq!(b.rows.source, vec![0, 2]);
        assert_eq!(b.rows.user_id, vec![Some("u1".into()), Some("u2".into())]);
        assert_eq!(b.rows.device_type, vec![Some("ios".into()), None]);
        assert_eq!(b.rows.locale, vec![Some("RU".into()), None]);
        assert_eq!(b.rows.app_version_int, vec![Some(20300), None]);
        assert!(b.rows.app_version_text.is_empty());
        // SentTimestamp's UTC date, or now's when the message has none
        assert_eq!(
            b.rows.create_date,
            vec![Some("2022-12-02".into()), Some("2000-02-29".into())]
        );
        // masks are the masker's; NULL stays NULL
        assert_eq!(b.rows.masked_ip[0], Some(masker.mask(b"1.2.3.4")));
        assert_eq!(b.rows.masked_device_id[0], Some(masker.mask(b"d1")));
        assert_eq!(b.rows.masked_ip[1], None);
        // refusals keep their input index, reason and full text
        assert_eq!(b.refused.len(), 2);
        assert_eq!(
            (b.refused[0].index, b.refused[0].reason),
            (1, RejectReason::NotJson)
        );
        assert!(b.refused[0].text.starts_with("not_json: "));
        assert_eq!(
            b.refused[1],
            Refusal {
                index: 3,
                reason: RejectReason::NotLoginEvent,
                text: "not_login_event: no login fields; has: bar, foo".into()
            }
        );
    }

    #[test]
    fn interrupt_the_hook_runs_before_every_message() {
        let masker = Masker::new(&KEY).unwrap();
        let msgs: Vec<Message> = (0..5).map(|i| msg(&i.to_string(), "{}", None)).collect();
        let refs: Vec<&Message> = msgs.iter().collect();
        let mut calls = 0;
        build(&refs, &Rules::default(), &masker, 0, &mut || calls += 1);
        assert_eq!(calls, 5);
    }

    #[test]
    fn vault_pairs_are_mask_and_raw_of_present_values() {
        let masker = Masker::new(&KEY).unwrap();
        let msgs = [
            msg(
                "a",
                r#"{"user_id": "u", "ip": "10.0.0.1", "device_id": "x-1"}"#,
                Some(0),
            ),
            msg("b", r#"{"user_id": "v", "device_id": "x-2"}"#, Some(0)),
            msg("c", r#"{"user_id": "w"}"#, Some(0)),
        ];
        let refs: Vec<&Message> = msgs.iter().collect();
        let b = build(&refs, &Rules::default(), &masker, 0, &mut || {});
        let pairs = |k| {
            b.rows
                .vault_pairs(k)
                .map(|(m, r)| (m.to_string(), r.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            pairs(0),
            vec![
                (masker.mask(b"10.0.0.1"), "10.0.0.1".to_string()),
                (masker.mask(b"x-1"), "x-1".to_string())
            ]
        );
        assert_eq!(pairs(1), vec![(masker.mask(b"x-2"), "x-2".to_string())]);
        assert!(pairs(2).is_empty());
    }

    #[test]
    fn a_text_app_version_column_gets_the_text_array() {
        let masker = Masker::new(&KEY).unwrap();
        let limits = Limits {
            app_version: AppVersionColumn::Text { max_chars: None },
            ..Limits::default()
        };
        let m = msg(
            "a",
            r#"{"user_id": "u", "app_version": "1.2.3.4-beta"}"#,
            Some(0),
        );
        let b = build(&[&m], &rules(limits), &masker, 0, &mut || {});
        assert_eq!(b.rows.app_version_text, vec![Some("1.2.3.4-beta".into())]);
        assert!(b.rows.app_version_int.is_empty());
    }

    #[test]
    fn the_real_sample_gives_99_rows_and_one_refusal() {
        let masker = Masker::new(&KEY).unwrap();
        let sample = include_str!("../../../data/login-queue-sample.json");
        let records: Vec<serde_json::Value> = serde_json::from_str(sample).unwrap();
        let msgs: Vec<Message> = records
            .iter()
            .enumerate()
            .map(|(i, r)| msg(&i.to_string(), &serde_json::to_string(r).unwrap(), Some(0)))
            .collect();
        let refs: Vec<&Message> = msgs.iter().collect();
        let b = build(&refs, &Rules::default(), &masker, 0, &mut || {});
        assert_eq!(b.rows.len(), 99);
        assert_eq!(b.refused.len(), 1);
        assert_eq!(b.refused[0].index, 12);
        assert_eq!(b.rows.locale.iter().filter(|l| l.is_none()).count(), 29);
        assert_eq!(
            (0..99)
                .map(|k| b.rows.vault_pairs(k).count())
                .sum::<usize>(),
            198
        );
    }
}
