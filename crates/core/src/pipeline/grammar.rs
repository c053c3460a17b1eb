//! The column list of a pipeline, in the style of `JSON_TABLE`'s COLUMNS
//! clause (docs/pipelines.md has the grammar):
//!
//! ```text
//! columns   := column [',' column]*
//! column    := name [type] source option*
//! source    := PATH 'path' | EVENT PATH 'path' | EVENT
//!            | MESSAGE field | ATTRIBUTE 'name' | ENVELOPE field | CONSTANT 'text'
//! option    := STRING | NUMBER | BOOLEAN | OBJECT | ARRAY
//!            | REQUIRED | DEFAULT 'text' | USING transform
//!            | MASKED [RECOVERABLE | UNRECOVERABLE] | IF EXISTS
//! ```
//!
//! Keywords are case-insensitive; names fold to lower case unless quoted
//! (`"Key"`), strings are SQL literals (`'it''s'`), and `--` starts a
//! comment, as in SQL. A type is whatever comes between the name and the
//! source (`timestamp with time zone`, `numeric(10,2)`, `text[]`).

use super::path::JsonPath;
use super::spec::{ColumnSpec, EnvelopeField, JsonType, Mask, MessageField, Source, Transform};

/// Why a column list (or a source) does not parse. `column` is the column
/// being read when it went wrong, if any.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{why}", column.as_ref().map(|c| format!("column {c}: ")).unwrap_or_default())]
pub struct SyntaxError {
    pub column: Option<String>,
    pub why: String,
}

/// The longest column list accepted, and the most columns.
const MAX_TEXT: usize = 256 * 1024;
pub const MAX_COLUMNS: usize = 1600;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// An unquoted word, folded to lower case, and whether it was quoted.
    Word(String, bool),
    Str(String),
    Number(String),
    Punct(char),
}

impl Token {
    fn is_kw(&self, kw: &str) -> bool {
        matches!(self, Token::Word(w, false) if w == kw)
    }

    fn describe(&self) -> String {
        match self {
            Token::Word(w, true) => format!("\"{w}\""),
            Token::Word(w, false) => w.to_uppercase(),
            Token::Str(s) => format!("'{s}'"),
            Token::Number(n) => n.clone(),
            Token::Punct(c) => format!("'{c}'"),
        }
    }
}

fn tokenize(text: &str) -> Result<Vec<Token>, SyntaxError> {
    let err = |why: String| SyntaxError { column: None, why };
    if text.len() > MAX_TEXT {
        return Err(err("the column list is longer than 256 kB".into()));
    }
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '-' && chars.get(i + 1) == Some(&'-') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '\'' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(err("a string ('...') is not closed".into())),
                    Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                        s.push('\'');
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(&ch) => {
                        s.push(ch);
                        i += 1;
                    }
                }
            }
            out.push(Token::Str(s));
        } else if c == '"' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(err("a quoted name (\"...\") is not closed".into())),
                    Some('"') if chars.get(i + 1) == Some(&'"') => {
                        s.push('"');
                        i += 2;
                    }
                    Some('"') => {
                        i += 1;
                        break;
                    }
                    Some(&ch) => {
                        s.push(ch);
                        i += 1;
                    }
                }
            }
            if s.is_empty() {
                return Err(err("a quoted name is empty".into()));
            }
            out.push(Token::Word(s, true));
        } else if c.is_ascii_alphabetic() || c == '_' || !c.is_ascii() {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric()
                    || chars[i] == '_'
                    || chars[i] == '$'
                    || !chars[i].is_ascii())
            {
                i += 1;
            }
            let w: String = chars[start..i].iter().collect();
            out.push(Token::Word(w.to_lowercase(), false));
        } else if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            out.push(Token::Number(chars[start..i].iter().collect()));
        } else if "(),.[]".contains(c) {
            out.push(Token::Punct(c));
            i += 1;
        } else if c == '$' {
            return Err(err(
                "unexpected '$': a path is written as a string, PATH '$.a.b'".into(),
            ));
        } else {
            return Err(err(format!("unexpected character {c:?}")));
        }
    }
    Ok(out)
}

const SOURCE_KEYWORDS: [&str; 6] = [
    "path",
    "event",
    "message",
    "attribute",
    "envelope",
    "constant",
];

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    column: Option<String>,
}

impl Parser {
    fn err(&self, why: impl Into<String>) -> SyntaxError {
        SyntaxError {
            column: self.column.clone(),
            why: why.into(),
        }
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn eat_kw(&mut self, kw: &str) -> bool {
        if self.peek().is_some_and(|t| t.is_kw(kw)) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn string(&mut self, what: &str) -> Result<String, SyntaxError> {
        match self.next() {
            Some(Token::Str(s)) => Ok(s),
            Some(t) => Err(self.err(format!("{what} is a quoted string, not {}", t.describe()))),
            None => Err(self.err(format!("{what} is missing"))),
        }
    }

    fn word(&mut self, what: &str) -> Result<String, SyntaxError> {
        match self.next() {
            Some(Token::Word(w, _)) => Ok(w),
            Some(t) => Err(self.err(format!("{what} is a name, not {}", t.describe()))),
            None => Err(self.err(format!("{what} is missing"))),
        }
    }

    fn path(&mut self) -> Result<JsonPath, SyntaxError> {
        let text = self.string("a PATH")?;
        JsonPath::parse(&text).map_err(|e| self.err(e.to_string()))
    }

    fn source(&mut self) -> Result<Source, SyntaxError> {
        let kw = self.word("the source (PATH, EVENT, MESSAGE, ATTRIBUTE, ENVELOPE or CONSTANT)")?;
        Ok(match kw.as_str() {
            "path" => Source::Path(self.path()?),
            "event" => {
                if self.eat_kw("path") {
                    Source::EventPath(self.path()?)
                } else {
                    Source::Event
                }
            }
            "message" => {
                let f = self.word("a MESSAGE field")?;
                let field = MessageField::ALL
                    .iter()
                    .find(|(n, _)| *n == f)
                    .map(|(_, m)| *m)
                    .ok_or_else(|| {
                        self.err(format!(
                            "MESSAGE {f}: the message fields are {}",
                            names(&MessageField::ALL)
                        ))
                    })?;
                Source::Message(field)
            }
            "attribute" => Source::Attribute(self.string("an ATTRIBUTE's name")?),
            "envelope" => {
                let f = self.word("an ENVELOPE field")?;
                let field = EnvelopeField::ALL
                    .iter()
                    .find(|(n, _)| *n == f)
                    .map(|(_, e)| *e)
                    .ok_or_else(|| {
                        self.err(format!(
                            "ENVELOPE {f}: the envelope fields are {}",
                            names(&EnvelopeField::ALL)
                        ))
                    })?;
                Source::Envelope(field)
            }
            "constant" => Source::Constant(self.string("a CONSTANT")?),
            other => {
                return Err(self.err(format!(
                    "{} is not a source: PATH, EVENT, MESSAGE, ATTRIBUTE, ENVELOPE or CONSTANT",
                    other.to_uppercase()
                )))
            }
        })
    }

    /// The words of a type, up to the source keyword.
    fn declared_type(&mut self) -> Result<Option<String>, SyntaxError> {
        let mut out = String::new();
        while let Some(t) = self.peek() {
            if SOURCE_KEYWORDS.iter().any(|k| t.is_kw(k)) {
                break;
            }
            let piece = match t {
                Token::Word(w, true) => format!("\"{}\"", w.replace('"', "\"\"")),
                Token::Word(w, false) => w.clone(),
                Token::Number(n) => n.clone(),
                Token::Punct(c) if "().[]".contains(*c) => c.to_string(),
                Token::Punct(',') if out.matches('(').count() > out.matches(')').count() => {
                    ",".into()
                }
                _ => {
                    return Err(
                        self.err(format!("expected a type or a source, not {}", t.describe()))
                    )
                }
            };
            let glue = !out.is_empty()
                && !out.ends_with(['(', '.', '[', ','])
                && !piece.starts_with(['(', ')', '.', '[', ']', ',']);
            if glue {
                out.push(' ');
            }
            out.push_str(&piece);
            self.at += 1;
        }
        Ok((!out.is_empty()).then_some(out))
    }

    fn column(&mut self) -> Result<ColumnSpec, SyntaxError> {
        let name = self.word("a column name")?;
        self.column = Some(name.clone());
        let declared_type = self.declared_type()?;
        let mut spec = ColumnSpec::new(&name, self.source()?);
        spec.declared_type = declared_type;
        while let Some(t) = self.peek().cloned() {
            if t == Token::Punct(',') {
                break;
            }
            self.at += 1;
            let Token::Word(w, false) = &t else {
                return Err(self.err(format!("unexpected {} after the source", t.describe())));
            };
            let json_type = match w.as_str() {
                "string" => Some(JsonType::String),
                "number" => Some(JsonType::Number),
                "boolean" => Some(JsonType::Boolean),
                "object" => Some(JsonType::Object),
                "array" => Some(JsonType::Array),
                _ => None,
            };
            if let Some(jt) = json_type {
                if !matches!(spec.source, Source::Path(_) | Source::EventPath(_)) {
                    return Err(self.err(format!("{} applies to a PATH only", w.to_uppercase())));
                }
                set_once(&mut spec.json_type, jt, || self.err("two JSON types"))?;
                continue;
            }
            match w.as_str() {
                "required" => spec.required = true,
                "default" => {
                    let d = self.string("DEFAULT's value")?;
                    set_once(&mut spec.default, d, || self.err("DEFAULT twice"))?;
                }
                "using" => {
                    let n = self.word("a transform")?;
                    let t = Transform::ALL
                        .iter()
                        .find(|(name, _)| *name == n)
                        .map(|(_, t)| *t)
                        .ok_or_else(|| {
                            self.err(format!("USING {n}: the transforms are {}", names(&Transform::ALL)))
                        })?;
                    set_once(&mut spec.transform, t, || self.err("USING twice"))?;
                }
                "masked" => {
                    let m = if self.eat_kw("unrecoverable") {
                        Mask::Unrecoverable
                    } else {
                        self.eat_kw("recoverable");
                        Mask::Recoverable
                    };
                    set_once(&mut spec.mask, m, || self.err("MASKED twice"))?;
                }
                "if" => {
                    if !self.eat_kw("exists") {
                        return Err(self.err("IF is followed by EXISTS"));
                    }
                    spec.if_exists = true;
                }
                other => {
                    return Err(self.err(format!(
                        "{} is not an option (STRING, NUMBER, BOOLEAN, OBJECT, ARRAY, REQUIRED, DEFAULT, USING, MASKED, IF EXISTS)",
                        other.to_uppercase()
                    )))
                }
            }
        }
        if spec.required && spec.default.is_some() {
            return Err(self.err("a column is REQUIRED or has a DEFAULT, not both"));
        }
        if spec.mask.is_some() && spec.transform.is_some() {
            return Err(
                self.err("a MASKED column takes no transform (the mask is of the value as sent)")
            );
        }
        self.column = None;
        Ok(spec)
    }
}

fn set_once<T>(
    slot: &mut Option<T>,
    v: T,
    dup: impl FnOnce() -> SyntaxError,
) -> Result<(), SyntaxError> {
    if slot.is_some() {
        return Err(dup());
    }
    *slot = Some(v);
    Ok(())
}

fn names<T>(all: &[(&str, T)]) -> String {
    all.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
}

/// Parses a column list.
pub fn parse_columns(text: &str) -> Result<Vec<ColumnSpec>, SyntaxError> {
    let mut p = Parser {
        tokens: tokenize(text)?,
        at: 0,
        column: None,
    };
    let mut out: Vec<ColumnSpec> = Vec::new();
    while p.peek().is_some() {
        let c = p.column()?;
        if out.iter().any(|o| o.column == c.column) {
            return Err(SyntaxError {
                column: Some(c.column),
                why: "named twice".into(),
            });
        }
        out.push(c);
        if out.len() > MAX_COLUMNS {
            return Err(SyntaxError {
                column: None,
                why: format!("more than {MAX_COLUMNS} columns"),
            });
        }
        let last = out.last().map(|c| c.column.clone());
        match p.next() {
            None => break,
            Some(Token::Punct(',')) if p.peek().is_some() => {}
            Some(Token::Punct(',')) => {
                return Err(SyntaxError {
                    column: last,
                    why: "nothing follows the last ','".into(),
                })
            }
            Some(t) => {
                return Err(SyntaxError {
                    column: last,
                    why: format!("expected ',' between columns, not {}", t.describe()),
                })
            }
        }
    }
    if out.is_empty() {
        return Err(SyntaxError {
            column: None,
            why: "a pipeline has at least one column".into(),
        });
    }
    Ok(out)
}

/// A column list as the catalog stores it: one column per line, each in
/// the form [`parse_columns`] reads back to the same columns.
pub fn print_columns(columns: &[ColumnSpec]) -> String {
    let lines: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
    lines.join(",\n")
}

/// Parses one source (a router's discriminator).
pub fn parse_source(text: &str) -> Result<Source, SyntaxError> {
    let mut p = Parser {
        tokens: tokenize(text)?,
        at: 0,
        column: None,
    };
    let s = p.source()?;
    if let Some(t) = p.peek() {
        return Err(p.err(format!("unexpected {} after the source", t.describe())));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_issue_s_example_parses() {
        let cols = parse_columns(
            "bucket     text        PATH '$.s3.bucket.name',
             key        text        PATH '$.s3.object.key' REQUIRED,   -- the object
             size       bigint      PATH '$.s3.object.size' NUMBER DEFAULT '0',
             event_time timestamp with time zone PATH '$.eventTime',
             source_ip  text        PATH '$.requestParameters.sourceIPAddress' MASKED,
             device     text        PATH '$.d' MASKED UNRECOVERABLE,
             message_id uuid        MESSAGE message_id,
             price      numeric(10, 2) EVENT PATH '$.price' IF EXISTS,
             tags       text[]      PATH '$.tags' ARRAY,
             \"Topic\"    ENVELOPE topic_arn,
             tenant     ATTRIBUTE 'tenant''s',
             kind       CONSTANT 's3',
             doc        jsonb EVENT,
             v          integer PATH '$.v' USING version",
        )
        .unwrap();
        assert_eq!(cols.len(), 14);
        assert_eq!(cols[0].declared_type.as_deref(), Some("text"));
        assert!(cols[1].required);
        assert_eq!(
            (cols[2].json_type, cols[2].default.as_deref()),
            (Some(JsonType::Number), Some("0"))
        );
        assert_eq!(
            cols[3].declared_type.as_deref(),
            Some("timestamp with time zone")
        );
        assert_eq!(cols[4].mask, Some(Mask::Recoverable));
        assert_eq!(cols[5].mask, Some(Mask::Unrecoverable));
        assert_eq!(cols[6].source, Source::Message(MessageField::MessageId));
        assert_eq!(cols[7].declared_type.as_deref(), Some("numeric(10,2)"));
        assert!(cols[7].if_exists && matches!(cols[7].source, Source::EventPath(_)));
        assert_eq!(cols[8].declared_type.as_deref(), Some("text[]"));
        assert_eq!(cols[9].column, "Topic");
        assert_eq!(cols[10].source, Source::Attribute("tenant's".into()));
        assert_eq!(cols[11].source, Source::Constant("s3".into()));
        assert_eq!(cols[12].source, Source::Event);
        assert_eq!(cols[13].transform, Some(Transform::Version));
    }

    #[test]
    fn mistakes_name_the_column_and_what_was_expected() {
        for (text, what) in [
            ("a PATH '$.a',", "column a: "),
            ("a PATH $.a", "written as a string"),
            ("a PATH 42", "quoted string"),
            ("a text", "the source (PATH"),
            ("a FROM x", "the source (PATH"),
            ("a MESSAGE nope", "the message fields are message_id"),
            ("a ENVELOPE nope", "the envelope fields are topic_arn"),
            ("a PATH '$.x' USING nope", "the transforms are version"),
            ("a PATH '$.x' FOO", "FOO is not an option"),
            ("a PATH '$.x-y'", "must be quoted"),
            ("a PATH '$.x' REQUIRED DEFAULT '1'", "not both"),
            ("a PATH '$.x' MASKED USING lower", "takes no transform"),
            ("a MESSAGE body STRING", "applies to a PATH only"),
            ("a PATH '$.x', a PATH '$.y'", "named twice"),
            ("a PATH '$.x' b PATH '$.y'", "B is not an option"),
            ("a PATH '$.x", "not closed"),
            ("", "at least one column"),
            ("a PATH '$.x' IF", "EXISTS"),
            ("a text ; PATH '$.x'", "unexpected character"),
        ] {
            let e = parse_columns(text).unwrap_err().to_string();
            assert!(e.contains(what), "{text:?}: {e}");
        }
        assert_eq!(
            parse_columns("a PATH '$.x' b")
                .unwrap_err()
                .column
                .as_deref(),
            Some("a")
        );
    }

    #[test]
    fn a_discriminator_is_one_source() {
        assert_eq!(
            parse_source("ENVELOPE detail_type").unwrap(),
            Source::Envelope(EnvelopeField::DetailType)
        );
        assert_eq!(
            parse_source(" attribute 'EventType' ").unwrap(),
            Source::Attribute("EventType".into())
        );
        assert!(parse_source("PATH '$.a' PATH '$.b'").is_err());
    }

    #[test]
    fn a_printed_column_list_reads_back_the_same() {
        let text = "bucket text PATH '$.s3.bucket.name' STRING REQUIRED,
            \"Size\" bigint EVENT PATH '$.\"it''s\"' NUMBER DEFAULT 'it''s',
            t CONSTANT 'a''b' USING lower IF EXISTS,
            m PATH '$.m' MASKED UNRECOVERABLE, r PATH '$.r' MASKED,
            \"da-sh\" ATTRIBUTE 'x''y', e jsonb EVENT, n numeric(10,2) MESSAGE receive_count,
            env ENVELOPE detail_type";
        let cols = parse_columns(text).unwrap();
        let printed = print_columns(&cols);
        assert_eq!(parse_columns(&printed).unwrap(), cols, "{printed}");
        assert!(
            printed.starts_with(
                "bucket text PATH '$.s3.bucket.name' STRING REQUIRED,\n\"Size\" bigint EVENT PATH"
            ),
            "{printed}"
        );
    }

    fn arb_source() -> impl Strategy<Value = Source> {
        let text = "[a-zA-Z0-9' _\"-]{0,12}";
        prop_oneof![
            "[a-z_][a-z0-9_]{0,6}(\\.[a-z_][a-z0-9_]{0,6}){0,3}"
                .prop_map(|p| Source::Path(JsonPath::parse(&format!("$.{p}")).unwrap())),
            "[a-z_][a-z0-9_]{0,6}"
                .prop_map(|p| Source::EventPath(JsonPath::parse(&format!("$.{p}[*]")).unwrap())),
            Just(Source::Event),
            (0..MessageField::ALL.len()).prop_map(|i| Source::Message(MessageField::ALL[i].1)),
            (0..EnvelopeField::ALL.len()).prop_map(|i| Source::Envelope(EnvelopeField::ALL[i].1)),
            text.prop_map(Source::Attribute),
            text.prop_map(Source::Constant),
        ]
    }

    prop_compose! {
        fn arb_column()(
            column in "([a-z_][a-z0-9_]{0,8}|[A-Za-z \"-]{1,8})",
            declared_type in proptest::option::of(prop_oneof![
                Just("text".to_string()), Just("numeric(10,2)".to_string()),
                Just("timestamp with time zone".to_string()), Just("public.\"My Type\"[]".to_string())]),
            source in arb_source(),
            json in proptest::option::of(0usize..5),
            required in any::<bool>(),
            default in proptest::option::of("[a-z' ]{0,6}"),
            transform in proptest::option::of(0..Transform::ALL.len()),
            mask in proptest::option::of(any::<bool>()),
            if_exists in any::<bool>(),
        ) -> ColumnSpec {
            let path = matches!(source, Source::Path(_) | Source::EventPath(_));
            let mut c = ColumnSpec::new(&column, source);
            c.declared_type = declared_type;
            c.json_type = json.filter(|_| path).map(|i| [JsonType::String, JsonType::Number,
                JsonType::Boolean, JsonType::Object, JsonType::Array][i]);
            c.required = required;
            c.default = default.filter(|_| !required);
            c.mask = mask.map(|r| if r { Mask::Recoverable } else { Mask::Unrecoverable });
            c.transform = transform.filter(|_| c.mask.is_none()).map(|i| Transform::ALL[i].1);
            c.if_exists = if_exists;
            c
        }
    }

    proptest! {
        /// The catalog's form of any valid column reads back as the same
        /// column.
        #[test]
        fn any_column_prints_and_reads_back(cols in proptest::collection::vec(arb_column(), 1..4)) {
            let mut cols = cols;
            cols.dedup_by(|a, b| a.column == b.column);
            let mut seen = std::collections::HashSet::new();
            cols.retain(|c| seen.insert(c.column.clone()));
            let printed = print_columns(&cols);
            prop_assert_eq!(parse_columns(&printed).unwrap(), cols, "{}", printed);
        }

        /// Any text parses or is refused with a reason: never a panic.
        #[test]
        fn any_column_list_parses_or_is_refused(text in "[a-z $.'\",()\\[\\]0-9-]{0,60}") {
            let _ = parse_columns(&text);
            let _ = parse_source(&text);
        }
    }
}
