//! The tree's arrows point down only: the contract imports nothing above it,
//! the ports only the contract, the engine no command. Checked on the
//! sources, so a use that points up fails here, not in review.

use std::path::Path;

/// Every `use crate::…` path in the Rust files under `dir`, with its file.
fn uses(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(uses(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            for line in text.lines() {
                if let Some(rest) = line.trim().strip_prefix("use crate::") {
                    out.push((path.display().to_string(), rest.to_string()));
                }
            }
        }
    }
    out
}

fn assert_imports_only(layer: &str, allowed: &[&str]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src")
        .join(layer);
    let mut wrong: Vec<String> = uses(&dir)
        .into_iter()
        .filter(|(_, path)| !allowed.iter().any(|a| path.starts_with(a)))
        .map(|(file, path)| format!("{file}: use crate::{path}"))
        .collect();
    let top = dir.with_extension("rs");
    if top.is_file() {
        let text = std::fs::read_to_string(&top).unwrap();
        wrong.extend(
            text.lines()
                .filter_map(|l| l.trim().strip_prefix("use crate::"))
                .filter(|path| !allowed.iter().any(|a| path.starts_with(a)))
                .map(|path| format!("{}: use crate::{path}", top.display())),
        );
    }
    assert!(
        wrong.is_empty(),
        "{layer} imports from above it:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_contract_imports_only_itself_and_errors() {
    assert_imports_only("contract", &["contract", "error"]);
}

#[test]
fn ports_import_only_the_contract() {
    assert_imports_only("ports", &["contract", "error", "ports"]);
}

#[test]
fn the_engine_imports_no_command() {
    assert_imports_only(
        "engine",
        &["contract", "error", "ports", "engine", "adapters"],
    );
}
