//! The public contracts are defined once, in `fetch_etl_core::contract` and
//! `fetch_etl_core::settings`; these tests fail when the SQL or the docs
//! drift from them.

use std::path::PathBuf;

use fetch_etl_core::contract::{OnError, Phase, QueueState, RejectReason, RunStatus};
use fetch_etl_core::settings;

fn repo_file(path: &str) -> String {
    let p = repo_file_path(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
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
fn queue_states_match_the_reference_and_the_view() {
    let doc = repo_file("docs/reference.md");
    let states = strings(QueueState::ALL, QueueState::as_str);
    assert_eq!(table_keys(&doc, "### Queue states"), states);
    // the view's CASE yields every state and no other (fresh install and upgrade)
    for file in ["sql/finalize.sql", "sql/fetch_etl--0.6.0--0.7.0.sql"] {
        let sql = repo_file(file);
        let at = sql
            .find("AS state")
            .unwrap_or_else(|| panic!("no state column in {file}"));
        let case = &sql[sql[..at].rfind("CASE").expect("the state CASE")..at];
        let mut yields: Vec<String> = case
            .split("THEN '")
            .skip(1)
            .chain(case.split("ELSE '").skip(1))
            .map(|t| t[..t.find('\'').unwrap()].to_string())
            .collect();
        yields.sort();
        yields.dedup();
        let mut want = states.clone();
        want.sort();
        assert_eq!(yields, want, "{file}");
    }
}

#[test]
fn progress_phases_match_the_reference() {
    let doc = repo_file("docs/reference.md");
    assert_eq!(
        table_keys(&doc, "### Progress phases"),
        strings(Phase::ALL, Phase::as_str)
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

/// Each setting's default and who may set it, as the reference's table
/// gives them, against core::settings (an empty default is `empty`).
#[test]
fn settings_defaults_and_access_match_the_reference() {
    let doc = repo_file("docs/reference.md");
    let start = doc
        .lines()
        .position(|l| l.trim_end() == "## Settings")
        .expect("## Settings");
    let rows: Vec<Vec<String>> = doc
        .lines()
        .skip(start + 1)
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().trim_matches('`').to_string())
                .collect()
        })
        .collect();
    assert!(!rows.is_empty());
    let mut wrong = Vec::new();
    for row in &rows {
        let (name, default, who) = (&row[0], &row[1], &row[2]);
        let (want, access) = settings::shown_default(name)
            .unwrap_or_else(|| panic!("{name} is documented but not defined"));
        let want = want.unwrap_or_else(|| "empty".to_string());
        let want_who = match access {
            settings::Access::Anyone => "anyone",
            settings::Access::Superuser => "superuser",
        };
        if *default != want || who != want_who {
            wrong.push(format!(
                "{name}: documented {default} / {who}, defined {want} / {want_who}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
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

/// The README's layout map (the first code block after `## Development`)
/// names only paths that exist, and every source file and directory of the
/// extension and its crates (lib.rs and mod.rs aside) by its name.
#[test]
fn the_readme_layout_matches_the_tree() {
    let readme = repo_file("README.md");
    let after = &readme[readme.find("## Development").expect("## Development")..];
    let start = after.find("```\n").expect("a code block") + 4;
    let block = &after[start..start + after[start..].find("```").expect("its end")];
    let root = PathBuf::from(repo_file_path(""));
    let mut missing = Vec::new();
    let mut base = PathBuf::new();
    for line in block.lines() {
        let indented = line.starts_with(' ');
        let Some(first) = line.split_whitespace().next() else {
            continue;
        };
        let first = first.trim_end_matches(',');
        let is_path = (first.ends_with('/') || first.contains('.'))
            && first
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_./-".contains(c));
        if !is_path {
            continue;
        }
        let path = if indented {
            base.join(first)
        } else {
            PathBuf::from(first)
        };
        if !indented && first.ends_with('/') {
            base = PathBuf::from(first);
        }
        if !root.join(&path).exists() {
            missing.push(path.display().to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "the README's layout names missing paths: {missing:?}"
    );
    let words: std::collections::HashSet<&str> = block
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .collect();
    let mut unnamed = Vec::new();
    for dir in [
        "src",
        "src/postgres",
        "crates/core/src",
        "crates/core/src/pipeline",
        "crates/sqs/src",
    ] {
        for entry in std::fs::read_dir(root.join(dir)).expect(dir) {
            let name = entry.expect(dir).file_name().into_string().expect("UTF-8");
            let stem = name.strip_suffix(".rs").unwrap_or(&name);
            if stem == "lib" || stem == "mod" {
                continue;
            }
            if !words.contains(stem) {
                unnamed.push(format!("{dir}/{name}"));
            }
        }
    }
    unnamed.sort();
    assert!(
        unnamed.is_empty(),
        "the README's layout does not name: {unnamed:?}"
    );
}

/// A path in the repository. At run time, not `env!`: a test binary reused
/// from a shared target directory by a clone at another path must read this
/// clone's files.
fn repo_file_path(path: &str) -> String {
    let dir =
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    PathBuf::from(dir)
        .join("../..")
        .join(path)
        .display()
        .to_string()
}
