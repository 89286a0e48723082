//! docs/COMPATIBILITY.md cannot drift: every test a row names exists, ✓ rows name end-to-end
//! tests (under `tests/`), and every end-to-end translation test (`e2e_translation.rs`,
//! `e2e_gemini.rs`, `e2e_bedrock.rs`, `e2e_fidelity.rs`, `e2e_responses.rs`,
//! `e2e_gemini_methods.rs`, `e2e_media.rs`, `e2e_rerank.rs`, `e2e_passthrough.rs`) is named
//! by some row.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::collections::HashSet;
use std::path::Path;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `(status, "file::test")` of each row of the matrix tables (those headed `| Client API`;
/// other tables on the page, such as mapping tables, are prose).
fn rows() -> Vec<(String, String)> {
    let doc = std::fs::read_to_string(Path::new(ROOT).join("docs/COMPATIBILITY.md")).unwrap();
    let mut in_matrix = false;
    doc.lines()
        .filter(|l| {
            if !l.starts_with('|') {
                in_matrix = false;
            } else if l.starts_with("| Client API") {
                in_matrix = true;
                return false;
            }
            in_matrix && !l.starts_with("|---")
        })
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            assert_eq!(cells.len(), 5, "a row needs 5 cells: {l}");
            (cells[3].to_owned(), cells[4].to_owned())
        })
        .collect()
}

/// Names of the functions marked as tests (or proptests) in a source file.
fn tests_in(file: &str) -> HashSet<String> {
    let text = std::fs::read_to_string(Path::new(ROOT).join(file))
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    let lines: Vec<&str> = text.lines().collect();
    let in_proptest = text.contains("proptest!");
    lines
        .iter()
        .enumerate()
        .filter_map(|(i, l)| {
            let name = l
                .trim()
                .strip_prefix("async fn ")
                .or(l.trim().strip_prefix("fn "))?;
            let name = name.split('(').next()?.trim();
            let marked =
                i > 0 && lines[i - 1].trim().starts_with("#[") && lines[i - 1].contains("test");
            (marked || in_proptest && lines[i - 1].trim() == "#[test]").then(|| name.to_owned())
        })
        .collect()
}

#[test]
fn compatibility_matrix_names_real_tests() {
    let rows = rows();
    assert!(rows.len() > 10);
    let mut named = HashSet::new();
    for (status, test) in &rows {
        if test == "—" {
            assert_eq!(status, "✗", "only unsupported rows may name no test");
            continue;
        }
        let (file, name) = test
            .split_once("::")
            .unwrap_or_else(|| panic!("`{test}` is not file::test"));
        assert!(tests_in(file).contains(name), "{file} has no test `{name}`");
        match status.as_str() {
            "✓" => assert!(
                file.starts_with("tests/"),
                "✓ needs an end-to-end test: {test}"
            ),
            "◐" | "✗" => {}
            other => panic!("unknown status {other}"),
        }
        named.insert(test.clone());
    }
    for file in [
        "tests/e2e_translation.rs",
        "tests/e2e_gemini.rs",
        "tests/e2e_bedrock.rs",
        "tests/e2e_fidelity.rs",
        "tests/e2e_responses.rs",
        "tests/e2e_gemini_methods.rs",
        "tests/e2e_media.rs",
        "tests/e2e_rerank.rs",
        "tests/e2e_passthrough.rs",
        "tests/e2e_embed_completions.rs",
    ] {
        for name in tests_in(file) {
            let full = format!("{file}::{name}");
            assert!(
                named.contains(&full),
                "docs/COMPATIBILITY.md does not name {full}"
            );
        }
    }
}
