//! JSON paths: the subset of the SQL/JSON path language (PostgreSQL's
//! `jsonpath`) that selects values, with the same meaning as in
//! `jsonb_path_query`:
//!
//! ```text
//! path     := '$' step*
//! step     := '.' key | '.' '"' quoted key '"' | '[' index ']' | '[' '*' ']' | '.' '*'
//! key      := [A-Za-z_$][A-Za-z0-9_$]*
//! index    := a non-negative integer | 'last'
//! ```
//!
//! `$.detail-type` is, as in SQL/JSON, `$.detail` minus `type`: a key with
//! other characters is written quoted, `$."detail-type"`. Filters,
//! arithmetic and methods are not part of the subset; a path that uses them
//! is refused when the pipeline is created.
//!
//! Evaluation is lax, as `jsonb_path_query` is by default: a missing key or
//! index selects nothing, a key step on an array applies to its elements,
//! and an array step on anything else takes it as a one-element array;
//! wildcards (`[*]`, `.*`) select every element or member, in order.

use std::fmt;

use serde_json::Value;

/// One step of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(usize),
    Last,
    AnyElement,
    AnyMember,
}

/// A parsed path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath {
    steps: Vec<Step>,
    text: String,
}

/// Why a path text is not a path of the subset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("JSON path {path:?}: {why}")]
pub struct PathError {
    pub path: String,
    pub why: String,
}

/// The longest path text accepted.
const MAX_PATH_CHARS: usize = 1024;

fn is_key_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == '$'
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '$'
}

impl JsonPath {
    pub fn parse(text: &str) -> Result<JsonPath, PathError> {
        let err = |why: &str| PathError {
            path: text.chars().take(80).collect(),
            why: why.to_string(),
        };
        if text.chars().count() > MAX_PATH_CHARS {
            return Err(err("longer than 1024 characters"));
        }
        let t = text.trim();
        let t = t.strip_prefix("lax ").map(str::trim_start).unwrap_or(t);
        let chars: Vec<char> = t.chars().collect();
        if chars.first() != Some(&'$') {
            return Err(err("a path starts with $"));
        }
        let mut steps = Vec::new();
        let mut i = 1;
        while i < chars.len() {
            match chars[i] {
                c if c.is_whitespace() => i += 1,
                '.' => {
                    i += 1;
                    match chars.get(i) {
                        Some('*') => {
                            steps.push(Step::AnyMember);
                            i += 1;
                        }
                        Some('"') => {
                            i += 1;
                            let mut key = String::new();
                            loop {
                                match chars.get(i) {
                                    None => return Err(err("a quoted key is not closed")),
                                    Some('"') => {
                                        i += 1;
                                        break;
                                    }
                                    Some('\\') => {
                                        match chars.get(i + 1) {
                                            Some('"') => key.push('"'),
                                            Some('\\') => key.push('\\'),
                                            Some('n') => key.push('\n'),
                                            Some('t') => key.push('\t'),
                                            Some('/') => key.push('/'),
                                            _ => {
                                                return Err(err(
                                                    "an unknown escape in a quoted key",
                                                ))
                                            }
                                        }
                                        i += 2;
                                    }
                                    Some(&c) => {
                                        key.push(c);
                                        i += 1;
                                    }
                                }
                            }
                            steps.push(Step::Key(key));
                        }
                        Some(&c) if is_key_start(c) => {
                            let start = i;
                            while i < chars.len() && is_key_char(chars[i]) {
                                i += 1;
                            }
                            steps.push(Step::Key(chars[start..i].iter().collect()));
                        }
                        _ => return Err(err("a key follows each '.'")),
                    }
                    // `$.detail-type`: SQL/JSON reads a minus there
                    if let Some(&c) = chars.get(i) {
                        if !(c == '.' || c == '[' || c.is_whitespace()) {
                            let hint = if c == '-' {
                                "a key with '-' must be quoted, as in SQL/JSON: $.\"detail-type\""
                            } else {
                                "only .key, .\"key\", [n], [last], [*] and .* are supported"
                            };
                            return Err(err(hint));
                        }
                    }
                }
                '[' => {
                    let close = chars[i..]
                        .iter()
                        .position(|&c| c == ']')
                        .ok_or_else(|| err("a '[' is not closed"))?;
                    let inner: String = chars[i + 1..i + close].iter().collect();
                    let inner = inner.trim();
                    let step = match inner {
                        "*" => Step::AnyElement,
                        "last" => Step::Last,
                        n if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => Step::Index(
                            n.parse()
                                .map_err(|_| err("an index is too large"))?,
                        ),
                        _ => {
                            return Err(err(
                                "an array step is [n], [last] or [*] (no filters, ranges or expressions)",
                            ))
                        }
                    };
                    steps.push(step);
                    i += close + 1;
                }
                _ => {
                    return Err(err(
                        "only .key, .\"key\", [n], [last], [*] and .* are supported",
                    ))
                }
            }
        }
        Ok(JsonPath {
            steps,
            text: t.to_string(),
        })
    }

    /// The path as written (trimmed).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Whether the path can select more than one value (a wildcard).
    pub fn is_multi(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s, Step::AnyElement | Step::AnyMember))
    }

    /// The first key of the path (`$.ip` -> `ip`), if it starts with one.
    pub fn first_key(&self) -> Option<&str> {
        match self.steps.first() {
            Some(Step::Key(k)) => Some(k),
            _ => None,
        }
    }

    /// How a value found by this path is named in messages: the path
    /// without its `$.` (`ip`, `s3.object.key`, `Records[0]`).
    pub fn field_name(&self) -> String {
        let mut out = String::new();
        for s in &self.steps {
            match s {
                Step::Key(k) if k.chars().all(is_key_char) && !k.is_empty() => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(k);
                }
                Step::Key(k) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(&format!("{k:?}"));
                }
                Step::Index(n) => out.push_str(&format!("[{n}]")),
                Step::Last => out.push_str("[last]"),
                Step::AnyElement => out.push_str("[*]"),
                Step::AnyMember => out.push_str(".*"),
            }
        }
        if out.is_empty() {
            "$".to_string()
        } else {
            out
        }
    }

    /// Every value the path selects in `root`, in document order.
    pub fn select<'a>(&self, root: &'a Value) -> Vec<&'a Value> {
        let mut current: Vec<&'a Value> = vec![root];
        for step in &self.steps {
            let mut next = Vec::new();
            for v in current {
                match (step, v) {
                    (Step::Key(k), Value::Object(m)) => next.extend(m.get(k)),
                    (Step::AnyMember, Value::Object(m)) => next.extend(m.values()),
                    // lax mode: a key step on an array applies to its elements
                    (Step::Key(k), Value::Array(a)) => {
                        next.extend(a.iter().filter_map(|e| e.as_object()?.get(k)))
                    }
                    (Step::AnyMember, Value::Array(a)) => next.extend(
                        a.iter()
                            .filter_map(|e| e.as_object())
                            .flat_map(|m| m.values()),
                    ),
                    (Step::Index(n), Value::Array(a)) => next.extend(a.get(*n)),
                    (Step::Last, Value::Array(a)) => next.extend(a.last()),
                    (Step::AnyElement, Value::Array(a)) => next.extend(a.iter()),
                    // lax mode: an array step on a non-array takes the value
                    // itself as a one-element array
                    (Step::Index(0) | Step::Last | Step::AnyElement, v) if !v.is_array() => {
                        next.push(v)
                    }
                    _ => {}
                }
            }
            current = next;
            if current.is_empty() {
                break;
            }
        }
        current
    }

    /// The one value the path selects, None when it selects nothing, and
    /// an error (how many) when it selects more than one.
    pub fn select_one<'a>(&self, root: &'a Value) -> Result<Option<&'a Value>, usize> {
        // The common case, keys and indexes through objects and arrays:
        // one value or none, without collecting (a drain does this for every
        // column of every row).
        let mut v = root;
        let mut simple = true;
        for step in &self.steps {
            let next = match (step, v) {
                (Step::Key(k), Value::Object(m)) => m.get(k),
                (Step::Index(n), Value::Array(a)) => a.get(*n),
                (Step::Last, Value::Array(a)) => a.last(),
                (Step::Key(_), Value::Array(_)) | (Step::AnyElement | Step::AnyMember, _) => {
                    simple = false;
                    break;
                }
                (Step::Index(0) | Step::Last, other) => Some(other),
                _ => None,
            };
            match next {
                Some(n) => v = n,
                None => return Ok(None),
            }
        }
        if simple {
            return Ok(Some(v));
        }
        let mut found = self.select(root);
        match found.len() {
            0 => Ok(None),
            1 => Ok(found.pop()),
            n => Err(n),
        }
    }
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn p(s: &str) -> JsonPath {
        JsonPath::parse(s).unwrap()
    }

    #[test]
    fn paths_select_what_jsonb_path_query_does() {
        let doc = json!({"Records": [{"s3": {"bucket": {"name": "b1"}, "object": {"key": "k1", "size": 5}}},
                                     {"s3": {"bucket": {"name": "b2"}, "object": {"key": "k2"}}}],
                         "detail-type": "Object Created", "a": {"b": [1, 2, 3]}});
        assert_eq!(
            p("$.Records[*].s3.bucket.name").select(&doc),
            vec![&json!("b1"), &json!("b2")]
        );
        assert_eq!(
            p("$.Records.s3.bucket.name").select(&doc),
            vec![&json!("b1"), &json!("b2")]
        );
        assert_eq!(
            p("$.Records[1].s3.object.key").select(&doc),
            vec![&json!("k2")]
        );
        assert_eq!(
            p("$.Records[last].s3.object.key").select(&doc),
            vec![&json!("k2")]
        );
        assert_eq!(
            p("$.\"detail-type\"").select(&doc),
            vec![&json!("Object Created")]
        );
        assert_eq!(p("$.a.b[2]").select(&doc), vec![&json!(3)]);
        assert_eq!(p("$.a.*").select(&doc), vec![&json!([1, 2, 3])]);
        assert_eq!(p("$").select(&doc), vec![&doc]);
        // lax: missing keys and indexes select nothing; a scalar is its own [0]
        assert!(p("$.nope.deeper").select(&doc).is_empty());
        assert!(p("$.a.b[7]").select(&doc).is_empty());
        assert_eq!(
            p("$.\"detail-type\"[0]").select(&doc),
            vec![&json!("Object Created")]
        );
        assert_eq!(
            p("$.Records[0].s3.object.size").select_one(&doc),
            Ok(Some(&json!(5)))
        );
        assert_eq!(p("$.Records[*].s3").select_one(&doc), Err(2));
        assert!(p("$.Records[*]").is_multi() && !p("$.Records[0]").is_multi());
        assert_eq!(p("$.s3.object.key").field_name(), "s3.object.key");
        assert_eq!(p("$.\"detail-type\"").field_name(), "\"detail-type\"");
        assert_eq!(p("$.ip").first_key(), Some("ip"));
        assert_eq!(p(" lax $.a ").as_str(), "$.a");
    }

    #[test]
    fn what_the_subset_refuses_is_refused_with_a_reason() {
        for (bad, why) in [
            ("a.b", "starts with $"),
            ("$.detail-type", "must be quoted"),
            ("$.a ? (@ > 1)", "only .key"),
            ("$.a[1 to 2]", "[n], [last] or [*]"),
            ("$.a[", "not closed"),
            ("$.\"a", "not closed"),
            ("$.", "a key follows"),
            ("$.a.size()", "only .key"),
            ("strict $.a", "starts with $"),
        ] {
            let e = JsonPath::parse(bad).unwrap_err();
            assert!(e.why.contains(why), "{bad}: {e}");
        }
        assert!(JsonPath::parse(&format!("$.{}", "a".repeat(2000))).is_err());
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            "[a-z]{0,5}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map("[a-c]", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Whatever the text, parsing returns a path or an error: no panic.
        #[test]
        fn parsing_any_text_never_panics(text in ".{0,40}") {
            let _ = JsonPath::parse(&text);
        }

        /// Whatever the document, selecting never panics, and a path with
        /// no wildcard selects at most one value from a document without
        /// arrays (lax mode unwraps arrays for keys).
        #[test]
        fn selecting_never_panics_and_plain_paths_select_at_most_one(
            doc in json_value(),
            keys in prop::collection::vec(prop_oneof!["[a-c]", Just("[*]".to_string()), Just("[0]".to_string()), Just("[last]".to_string()), Just(".*".to_string())], 0..5)
        ) {
            let text = keys.iter().fold("$".to_string(), |mut t, k| {
                if k.starts_with('[') || k.starts_with('.') { t.push_str(k) } else { t.push('.'); t.push_str(k) }
                t
            });
            let path = JsonPath::parse(&text).unwrap();
            let found = path.select(&doc);
            if !path.is_multi() && !doc.to_string().contains('[') {
                prop_assert!(found.len() <= 1, "{text}: {found:?}");
            }
        }
    }
}
