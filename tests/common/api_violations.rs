//! The violations `scripts/emulators/discovery_proxy.py` records: calls and
//! answers that break Google's API description, or calls the permission
//! table does not list. The emulators are shared by every test of a binary,
//! so a record is charged to the tests whose dataset or bucket it names, or
//! to every test when it names none (a `jobs.get`, say).
#![allow(dead_code)]

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde_json::Value;

/// What every sandbox's dataset and bucket names start with.
const SANDBOX_PREFIXES: [&str; 2] = ["ds_", "bqdrain-"];

/// The messages of the records appended to `file` after `offset` that
/// concern a sandbox with these `names`.
pub fn since(file: &Path, offset: u64, names: &[&str]) -> Vec<String> {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(file) {
        f.seek(SeekFrom::Start(offset)).unwrap();
        f.read_to_string(&mut text).unwrap();
    }
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|record| {
            let seen = format!("{} {}", record["url"], record["context"]);
            names.iter().any(|n| mentions(&seen, n))
                || !SANDBOX_PREFIXES.iter().any(|p| seen.contains(p))
        })
        .map(|record| record["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Whether `name` occurs in `text` as a whole name, not as the start of a
/// longer one (`ds_retry` is not in `ds_retry_twice`).
fn mentions(text: &str, name: &str) -> bool {
    text.match_indices(name).any(|(at, _)| {
        !text[at + name.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    })
}
