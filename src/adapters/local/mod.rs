//! Embedded adapters: no service, no account, just files.
//!
//! - [`queue`]: a SQLite work queue with Pub/Sub semantics (`queue://`).
//! - [`warehouse`]: a SQLite database as a dataset (`sqlite://`).
//! - [`jobs`]: its export jobs by key, so that two deliveries of one unit
//!   never write one folder together.
//! - [`dataset`]: makes such datasets, with dummy tables and injected faults.
//! - [`definition`]: a table's definition, written beside its export.
//! - [`load`]: a restore unit loaded back into such a dataset, reading
//!   its CSV through [`csv_records`].
//! - [`partitions`]: partitioned tables and change markers of such datasets.
//! - [`store`]: a folder as an object store (`file://`).
//! - [`store_fault`]: stalls such a store's deletes, to kill a worker
//!   while it settles.
//! - [`sqlite_file`]: what an existing SQLite file holds, read before use.

pub mod csv_records;
pub mod dataset;
pub mod definition;
pub mod jobs;
pub mod load;
pub mod partitions;
pub mod queue;
pub mod sqlite_file;
pub mod store;
pub mod store_fault;
pub mod warehouse;

use std::path::PathBuf;

/// Splits `SCHEME://PATH?QUERY#FRAGMENT` into its parts; the path may be
/// relative (`queue://demo/q.db`) or absolute (`queue:///tmp/q.db`).
pub(crate) struct LocalUri {
    pub path: PathBuf,
    pub query: Vec<(String, String)>,
    pub fragment: Option<String>,
}

impl LocalUri {
    pub fn parse(uri: &str, scheme: &str) -> Option<LocalUri> {
        let rest = uri.strip_prefix(scheme)?.strip_prefix("://")?;
        let (rest, fragment) = match rest.split_once('#') {
            Some((r, f)) => (r, Some(f.to_string())),
            None => (rest, None),
        };
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, q),
            None => (rest, ""),
        };
        if path.is_empty() {
            return None;
        }
        let query = query
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv.to_string(), String::new()),
            })
            .collect();
        Some(LocalUri {
            path: PathBuf::from(path),
            query,
            fragment,
        })
    }
}

/// Makes a path absolute without requiring it to exist, so URIs published
/// in messages mean the same file to workers started elsewhere.
pub(crate) fn absolute(path: &std::path::Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

pub(crate) fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
