//! Envelopes around a login event: what SNS and EventBridge wrap an event in
//! on its way to an SQS queue, recognised and unwrapped so that the inner
//! event is validated as if it had been sent bare.
//!
//! - An **SNS notification** (a topic's SQS subscription with raw message
//!   delivery off): `{"Type": "Notification", "MessageId", "TopicArn",
//!   "Message": "<the event as a JSON string>", "Timestamp", ...}`. The event
//!   is the `Message` string.
//! - An **EventBridge event** (a rule with an SQS target): `{"version": "0",
//!   "id", "detail-type", "source", "account", "time", "region",
//!   "resources", "detail": {...}}`. The event is the `detail` object, read as
//!   the text it was sent as (so a duplicate key in it is still seen).
//!
//! An EventBridge event published to an SNS topic arrives in both: at most
//! [`MAX_LAYERS`] envelopes are unwrapped. SNS signatures are not verified
//! (that needs the signing certificate from the network): what may write to
//! the queue is the queue's access policy's business (docs/reference.md).

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::contract::RejectReason;
use crate::event::{reject, truncate, Reject};

/// Envelopes unwrapped around one event, at most.
pub const MAX_LAYERS: usize = 2;

/// `fetch_etl.envelopes` ([`crate::settings::ENVELOPES`]): whether envelopes are unwrapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Envelopes {
    /// SNS notifications and EventBridge events are unwrapped.
    #[default]
    Auto,
    /// Every body is the event itself (an envelope is then not a login event).
    None,
}

/// What kind of envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sns,
    EventBridge,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Sns => "SNS notification",
            Kind::EventBridge => "EventBridge event",
        })
    }
}

/// The envelope fields kept with the row (`sqs_attributes`), by name.
pub type EnvelopeAttributes = Vec<(&'static str, String)>;

/// What [`open`] found in an object's fields.
pub(crate) enum Opened<'a> {
    /// Not an envelope: the object is the event.
    Bare,
    /// An envelope: `inner` is the text to validate in its place.
    Inner {
        kind: Kind,
        inner: Cow<'a, str>,
        attributes: EnvelopeAttributes,
    },
    /// Looks like an envelope but is not one that carries an event.
    Refused(Reject),
}

fn field<'a>(fields: &'a [(String, Value)], name: &str) -> Option<&'a Value> {
    fields.iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

fn string<'a>(fields: &'a [(String, Value)], name: &str) -> Option<&'a str> {
    field(fields, name).and_then(|v| v.as_str())
}

/// How an envelope is told from an event.
pub(crate) fn kind_of(fields: &[(String, Value)]) -> Option<Kind> {
    if string(fields, "Type").is_some() && field(fields, "TopicArn").is_some() {
        Some(Kind::Sns)
    } else if field(fields, "detail-type").is_some() && field(fields, "source").is_some() {
        Some(Kind::EventBridge)
    } else {
        None
    }
}

/// Recognises an envelope in the fields of the object `text`.
pub(crate) fn open<'a>(text: &'a str, fields: &'a [(String, Value)]) -> Opened<'a> {
    let malformed =
        |detail: String| Opened::Refused(reject(RejectReason::MalformedEnvelope, detail));
    match kind_of(fields) {
        None => Opened::Bare,
        Some(Kind::Sns) => {
            let ty = string(fields, "Type").unwrap_or_default();
            if ty != "Notification" {
                // SubscriptionConfirmation, UnsubscribeConfirmation: SNS's own
                // messages (a cross-account subscription sends one to confirm).
                return Opened::Refused(reject(
                    RejectReason::NotLoginEvent,
                    format!(
                        "an SNS {} message, not a notification; confirm or remove the subscription in SNS",
                        truncate(ty, 40)
                    ),
                ));
            }
            let Some(topic) = string(fields, "TopicArn") else {
                return malformed("SNS notification whose TopicArn is not a string".into());
            };
            match field(fields, "Message") {
                Some(Value::String(m)) => Opened::Inner {
                    kind: Kind::Sns,
                    inner: Cow::Borrowed(m.as_str()),
                    attributes: vec![("TopicArn", topic.to_string())],
                },
                None => malformed("SNS notification without a Message".into()),
                Some(_) => malformed("SNS notification whose Message is not a string".into()),
            }
        }
        Some(Kind::EventBridge) => {
            if !matches!(field(fields, "detail"), Some(Value::Object(_))) {
                return malformed(match field(fields, "detail") {
                    None => "EventBridge event without a detail".into(),
                    Some(_) => "EventBridge event whose detail is not an object".into(),
                });
            }
            #[derive(Deserialize)]
            struct Detail<'a> {
                #[serde(borrow)]
                detail: &'a RawValue,
            }
            // The object parsed once already: this cannot fail, but never panic.
            let Ok(d) = serde_json::from_str::<Detail<'a>>(text) else {
                return malformed("EventBridge event whose detail cannot be read".into());
            };
            let mut attributes = Vec::new();
            for (from, to) in [("source", "EventSource"), ("detail-type", "DetailType")] {
                if let Some(v) = string(fields, from) {
                    attributes.push((to, v.to_string()));
                }
            }
            Opened::Inner {
                kind: Kind::EventBridge,
                inner: Cow::Borrowed(d.detail.get()),
                attributes,
            }
        }
    }
}

/// A reject found inside an envelope, saying where.
pub(crate) fn inside(kind: Kind, r: Reject) -> Reject {
    let what = match kind {
        Kind::Sns => "in the SNS notification's Message",
        Kind::EventBridge => "in the EventBridge event's detail",
    };
    Reject {
        reason: r.reason,
        detail: format!("{what}: {}", r.detail),
    }
}

/// A hint for a body that was an envelope but was not unwrapped.
pub(crate) fn not_unwrapped_hint(fields: &[(String, Value)]) -> Option<String> {
    kind_of(fields).map(|k| {
        format!(
            " (an {k}: {} is none)",
            crate::settings::ENVELOPES.name_str()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{parse_message, Limits, Parsed};

    const EVENT: &str = r#"{"user_id": "u1", "ip": "1.2.3.4", "device_id": "d1", "app_version": "2.3.0", "locale": "RU", "device_type": "ios"}"#;

    fn sns(message: &str) -> String {
        serde_json::json!({
            "Type": "Notification",
            "MessageId": "5e1f1a3c-0000-4000-8000-000000000001",
            "TopicArn": "arn:aws:sns:us-east-1:123456789012:logins",
            "Message": message,
            "Timestamp": "2026-12-02T08:00:00.000Z",
            "SignatureVersion": "1",
            "Signature": "EXAMPLE",
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

    fn parse(body: &str) -> Result<Parsed, Reject> {
        parse_message(body, &Limits::default(), Envelopes::Auto)
    }

    fn code(body: &str) -> RejectReason {
        parse(body).unwrap_err().reason
    }

    #[test]
    fn an_sns_notification_is_unwrapped() {
        let p = parse(&sns(EVENT)).unwrap();
        assert_eq!(p.event.user_id, "u1");
        assert_eq!(p.event.ip.as_deref(), Some("1.2.3.4"));
        assert_eq!(p.envelopes, vec![Kind::Sns]);
        assert_eq!(
            p.attributes,
            vec![(
                "TopicArn",
                "arn:aws:sns:us-east-1:123456789012:logins".into()
            )]
        );
        // and the bare event is still the event
        let bare = parse(EVENT).unwrap();
        assert!(bare.envelopes.is_empty() && bare.attributes.is_empty());
        assert_eq!(bare.event, p.event);
    }

    #[test]
    fn an_eventbridge_event_is_unwrapped_from_its_detail_text() {
        let p = parse(&eventbridge(EVENT)).unwrap();
        assert_eq!(p.event.user_id, "u1");
        assert_eq!(p.envelopes, vec![Kind::EventBridge]);
        assert_eq!(
            p.attributes,
            vec![
                ("EventSource", "com.example.auth".into()),
                ("DetailType", "UserLogin".into())
            ]
        );
        // the detail is read as sent: a duplicate key in it is still seen
        let r = parse(&eventbridge(r#"{"user_id": "a", "user_id": "b"}"#)).unwrap_err();
        assert_eq!(r.reason, RejectReason::DuplicateField);
        assert!(
            r.detail.starts_with("in the EventBridge event's detail: "),
            "{}",
            r.detail
        );
    }

    #[test]
    fn eventbridge_through_sns_is_two_layers() {
        let p = parse(&sns(&eventbridge(EVENT))).unwrap();
        assert_eq!(p.envelopes, vec![Kind::Sns, Kind::EventBridge]);
        assert_eq!(p.event.user_id, "u1");
        assert_eq!(p.attributes.len(), 3);
        // a third layer is not opened: what is inside two is the event
        assert_eq!(code(&sns(&sns(&sns(EVENT)))), RejectReason::NotLoginEvent);
    }

    #[test]
    fn the_inner_event_is_validated_like_a_bare_one() {
        let r = parse(&sns(r#"{"foo": "oops_wrong_msg_type", "bar": "123"}"#)).unwrap_err();
        assert_eq!(r.reason, RejectReason::NotLoginEvent);
        assert_eq!(
            r.to_string(),
            "not_login_event: in the SNS notification's Message: no login fields; has: bar, foo"
        );
        assert_eq!(code(&sns("plain text, not JSON")), RejectReason::NotJson);
        assert_eq!(code(&sns("[1]")), RejectReason::NotObject);
        assert_eq!(code(&sns(r#"{"user_id": 7}"#)), RejectReason::WrongType);
        assert_eq!(
            code(&eventbridge(r#"{"ip": "1.2.3.4"}"#)),
            RejectReason::MissingField
        );
    }

    #[test]
    fn malformed_envelopes_have_their_own_reason() {
        let no_message = r#"{"Type": "Notification", "TopicArn": "arn:aws:sns:us-east-1:1:t"}"#;
        let object_message = r#"{"Type": "Notification", "TopicArn": "arn:aws:sns:us-east-1:1:t", "Message": {"user_id": "u"}}"#;
        let bad_topic = r#"{"Type": "Notification", "TopicArn": 5, "Message": "{}"}"#;
        for body in [no_message, object_message, bad_topic] {
            assert_eq!(code(body), RejectReason::MalformedEnvelope, "{body}");
        }
        let r = parse(object_message).unwrap_err();
        assert_eq!(r.detail, "SNS notification whose Message is not a string");
        assert_eq!(
            code(&eventbridge("\"a string\"")),
            RejectReason::MalformedEnvelope
        );
        assert_eq!(
            code(r#"{"detail-type": "x", "source": "y"}"#),
            RejectReason::MalformedEnvelope
        );
        // SNS's own messages are not events, and say what to do
        let confirm = r#"{"Type": "SubscriptionConfirmation", "TopicArn": "arn:aws:sns:us-east-1:1:t", "Token": "t", "SubscribeURL": "https://example.com/"}"#;
        let r = parse(confirm).unwrap_err();
        assert_eq!(r.reason, RejectReason::NotLoginEvent);
        assert!(
            r.detail.contains("SubscriptionConfirmation"),
            "{}",
            r.detail
        );
        assert!(!r.detail.contains("example.com"), "{}", r.detail);
    }

    #[test]
    fn with_envelopes_none_an_envelope_is_not_a_login_event_and_says_why() {
        let r = parse_message(&sns(EVENT), &Limits::default(), Envelopes::None).unwrap_err();
        assert_eq!(r.reason, RejectReason::NotLoginEvent);
        assert!(
            r.detail
                .ends_with("(an SNS notification: fetch_etl.envelopes is none)"),
            "{}",
            r.detail
        );
        // a bare event is the same either way
        assert!(parse_message(EVENT, &Limits::default(), Envelopes::None).is_ok());
    }

    #[test]
    fn the_size_limit_is_the_outer_body_s() {
        let limits = Limits {
            max_body_bytes: 300,
            ..Limits::default()
        };
        let body = sns(EVENT);
        assert!(body.len() > 300);
        assert_eq!(
            parse_message(&body, &limits, Envelopes::Auto)
                .unwrap_err()
                .reason,
            RejectReason::TooLarge
        );
    }
}
