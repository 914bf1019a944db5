//! Snapshot tests of the validator's diagnostics over `tests/runbooks-bad/`, and a check
//! that every runbook in `tests/runbooks-good/` validates clean.
//!
//! Each bad runbook's rendered diagnostics (and their JSON form's codes) are snapshotted
//! under `tests/snapshots/`; review changes with `cargo insta review` or
//! `INSTA_UPDATE=always`, and read every snapshot: the messages are the product.

use std::collections::BTreeMap;
use std::path::Path;

use cordon::notify::DraftTemplates;
use cordon::runbook::{validate, ValidationContext};

/// A configuration with two `http` instances and one `core` instance, so that the
/// `connector:` checks run, and the shipped notification templates, so that `notify.draft`
/// steps are checked.
fn ctx() -> ValidationContext {
    let instances: BTreeMap<String, String> = [
        ("api-prod", "http"),
        ("api-staging", "http"),
        ("builtin", "core"),
    ]
    .into_iter()
    .map(|(n, t)| (n.to_owned(), t.to_owned()))
    .collect();
    ValidationContext {
        instances: Some(instances),
        templates: Some(DraftTemplates::shipped()),
    }
}

fn display_name(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("runbooks-bad/{name}")
}

#[test]
fn bad_runbooks() {
    insta::glob!("runbooks-bad/*.yaml", |path| {
        let source = std::fs::read_to_string(path).expect("test file is readable");
        let file = display_name(path);
        let diags = match validate(&source, &file, &ctx()) {
            Ok(_) => panic!("{file} validated, but it is meant to be bad"),
            Err(d) => d,
        };
        assert!(!diags.is_empty());
        for d in &diags {
            assert!(
                d.to_string()
                    .starts_with(&format!("{file}:{}:{}: ", d.line, d.column)),
                "{d}"
            );
            assert!(d.line >= 1 && d.column >= 1, "{d}");
            let lines = source.lines().count().max(1);
            assert!(d.line <= lines + 1, "{d} is past the end of the file");
        }
        let text = diags
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        insta::assert_snapshot!(text);
    });
}

#[test]
fn good_runbooks_validate_clean() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/runbooks-good");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("runbooks-good exists") {
        let path = entry.expect("directory entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        seen += 1;
        let source = std::fs::read_to_string(&path).expect("readable");
        for c in [ValidationContext::default(), ctx()] {
            if let Err(d) = validate(&source, &path.display().to_string(), &c) {
                let text: Vec<String> = d.iter().map(ToString::to_string).collect();
                panic!("{} has problems:\n{}", path.display(), text.join("\n"));
            }
        }
    }
    assert!(
        seen >= 2,
        "expected at least two good runbooks, found {seen}"
    );
}

#[test]
fn many_problems_reported_at_once_as_json() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/runbooks-bad");
    let source = std::fs::read_to_string(dir.join("08-many-problems.yaml")).expect("readable");
    let diags = validate(&source, "many.yaml", &ctx()).expect_err("bad");
    assert!(diags.len() >= 10, "{diags:#?}");
    let json = serde_json::to_value(&diags).expect("diagnostics serialize");
    let first = &json[0];
    for key in ["file", "line", "column", "code", "message", "hint", "step"] {
        assert!(first.get(key).is_some(), "missing {key} in {first}");
    }
    // Sorted by position.
    let positions: Vec<(usize, usize)> = diags.iter().map(|d| (d.line, d.column)).collect();
    let mut sorted = positions.clone();
    sorted.sort_unstable();
    assert_eq!(positions, sorted);
}
