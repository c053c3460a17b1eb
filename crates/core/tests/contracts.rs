//! The public contracts are defined once, in `fetch_etl_core::contract` and
//! `fetch_etl_core::settings`; these tests fail when the SQL or the docs
//! drift from them.

use std::path::PathBuf;

use fetch_etl_core::contract::{OnError, RejectReason, RunStatus};
use fetch_etl_core::settings;

fn repo_file(path: &str) -> String {
    // At run time, not `env!`: a test binary reused from a shared target
    // directory by a clone at another path must read this clone's files.
    let dir =
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    let p = PathBuf::from(dir).join("../..").join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The backticked first cells of the first table after the heading `heading`.
fn table_keys(doc: &str, heading: &str) -> Vec<String> {
    let start = doc
        .lines()
        .position(|l| l.trim_end() == heading)
        .unwrap_or_else(|| panic!("no heading {heading:?}"));
    doc.lines()
        .skip(start + 1)
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| {
            let cell = l.trim_start_matches('|').split('|').next()?.trim();
            let inner = cell.strip_prefix('`')?.split('`').next()?;
            Some(inner.to_string())
        })
        .collect()
}

/// The quoted values of `column IN ('a', 'b', ...)` in a SQL file.
fn check_list(sql: &str, column: &str) -> Vec<String> {
    let needle = format!("CHECK ({column} IN (");
    let at = sql
        .find(&needle)
        .unwrap_or_else(|| panic!("no {needle:?} in the SQL"));
    let rest = &sql[at + needle.len()..];
    let list = &rest[..rest.find(')').expect("closing parenthesis")];
    list.split(',')
        .map(|v| v.trim().trim_matches('\'').to_string())
        .collect()
}

fn strings<T: Copy>(all: &[T], f: impl Fn(T) -> &'static str) -> Vec<String> {
    all.iter().map(|&v| f(v).to_string()).collect()
}

#[test]
fn run_statuses_match_the_sql_check() {
    let sql = repo_file("sql/bootstrap.sql");
    assert_eq!(
        check_list(&sql, "status"),
        strings(RunStatus::ALL, RunStatus::as_str)
    );
}

#[test]
fn run_statuses_match_the_reference() {
    let doc = repo_file("docs/reference.md");
    assert_eq!(
        table_keys(&doc, "## Run statuses"),
        strings(RunStatus::ALL, RunStatus::as_str)
    );
}

#[test]
fn reject_reasons_match_the_reference() {
    let doc = repo_file("docs/reference.md");
    assert_eq!(
        table_keys(&doc, "## Reject reasons"),
        strings(RejectReason::ALL, RejectReason::as_str)
    );
}

#[test]
fn on_error_modes_are_in_the_signature() {
    let doc = repo_file("docs/reference.md");
    let line = doc
        .lines()
        .find(|l| l.trim_start().starts_with("on_error"))
        .expect("the on_error line of sqs_drain's signature");
    for m in OnError::ALL {
        assert!(
            line.contains(&format!("'{m}'")),
            "{m} missing from {line:?}"
        );
    }
}

#[test]
fn settings_match_the_reference() {
    let doc = repo_file("docs/reference.md");
    let documented = table_keys(&doc, "## Settings");
    let defined: Vec<String> = settings::all_names()
        .into_iter()
        .map(str::to_string)
        .collect();
    assert_eq!(documented, defined);
}

#[test]
fn the_helpers_read_what_they_claim() {
    // A positive control for the parsers above, on a known snippet.
    let doc = "## X\n\ntext\n\n| a | b |\n| --- | --- |\n| `one` | 1 |\n| `two` | 2 |\n\n| `three` | 3 |\n";
    assert_eq!(table_keys(doc, "## X"), vec!["one", "two"]);
    assert_eq!(
        check_list("x text CHECK (status IN ('a', 'b')),", "status"),
        vec!["a", "b"]
    );
}

/// The text between the first two `$tag$` delimiters of `sql`.
fn dollar_quoted<'a>(sql: &'a str, tag: &str) -> &'a str {
    let delim = format!("${tag}$");
    let mut parts = sql.split(delim.as_str());
    parts.next();
    parts
        .next()
        .unwrap_or_else(|| panic!("no {delim}...{delim} in the SQL"))
}

/// The login pipeline's row (sql/bootstrap.sql) holds the core's column
/// list and DDL: the extension's SQL is where it ships, the core's copy is
/// what its tests (and a catalog before 0.6.0) use.
#[test]
fn the_login_pipeline_in_the_sql_is_the_core_s() {
    use fetch_etl_core::pipeline::login::{LOGIN_COLUMNS, LOGIN_DDL};
    let sql = repo_file("sql/bootstrap.sql");
    assert_eq!(dollar_quoted(&sql, "columns"), LOGIN_COLUMNS);
    assert_eq!(dollar_quoted(&sql, "ddl"), LOGIN_DDL);
    let update = repo_file("sql/fetch_etl--0.5.0--0.6.0.sql");
    assert_eq!(dollar_quoted(&update, "columns"), LOGIN_COLUMNS);
    assert_eq!(dollar_quoted(&update, "ddl"), LOGIN_DDL);
}

#[test]
fn pipeline_kinds_match_the_sql_check() {
    use fetch_etl_core::contract::PipelineKind;
    for file in ["sql/bootstrap.sql", "sql/fetch_etl--0.5.0--0.6.0.sql"] {
        assert_eq!(
            check_list(&repo_file(file), "kind"),
            strings(PipelineKind::ALL, PipelineKind::as_str),
            "{file}"
        );
    }
}
