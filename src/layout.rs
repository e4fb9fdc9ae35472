//! Where things live in the destination store, and the records kept there.
//!
//! ```text
//! TABLE/run=RUN_ID/TABLE_000000000000.csv     shards of one run's export
//! TABLE/run=RUN_ID/_MANIFEST.json             that export's manifest (a copy of its completion record)
//! TABLE/partition=P/run=RUN_ID/...            the same, per partition
//! _bqdrain/runs/RUN_ID/manifest.json          the run manifest (expected units)
//! _bqdrain/runs/RUN_ID/done/UNIT.json         completion record, written if absent
//! _bqdrain/runs/RUN_ID/dead/UNIT.json         dead-letter record with the reason
//! ```
//!
//! Each run exports into its own folder, so a failed or partial export never
//! touches the previous complete one; only after a run's export of a table is
//! committed are older runs' folders of that table deleted.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::message::{ExportOptions, SourceTable};

/// Reserved top-level folder for bqdrain's own records.
pub const META: &str = "_bqdrain";
const TABLE_MANIFEST: &str = "_MANIFEST.json";
pub const RUN_FOLDER_PREFIX: &str = "run=";

/// The folder of a unit across runs: `TABLE/` or `TABLE/partition=P/`.
pub fn unit_folder(source: &SourceTable) -> String {
    match &source.partition {
        Some(p) => format!("{}/partition={}/", source.table, p),
        None => format!("{}/", source.table),
    }
}

/// The folder of one run's export of a unit.
pub fn export_folder(source: &SourceTable, run_id: &str) -> String {
    format!("{}{RUN_FOLDER_PREFIX}{run_id}/", unit_folder(source))
}

/// The manifest inside one run's export folder of a unit.
pub fn export_manifest(source: &SourceTable, run_id: &str) -> String {
    format!("{}{TABLE_MANIFEST}", export_folder(source, run_id))
}

pub fn run_manifest(run_id: &str) -> String {
    format!("{META}/runs/{run_id}/manifest.json")
}

pub fn done_prefix(run_id: &str) -> String {
    format!("{META}/runs/{run_id}/done/")
}

pub fn dead_prefix(run_id: &str) -> String {
    format!("{META}/runs/{run_id}/dead/")
}

pub fn done_record(run_id: &str, unit: &str) -> String {
    format!("{}{unit}.json", done_prefix(run_id))
}

pub fn dead_record(run_id: &str, unit: &str) -> String {
    format!("{}{unit}.json", dead_prefix(run_id))
}

/// The unit named by a record key under `prefix`.
pub fn unit_of_record<'a>(prefix: &str, key: &'a str) -> Option<&'a str> {
    key.strip_prefix(prefix)?.strip_suffix(".json")
}

/// What the producer planned: written once the run's messages are confirmed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunManifest {
    pub v: u32,
    pub run_id: String,
    pub created_at: DateTime<Utc>,
    pub source: String,
    pub destination: String,
    pub options: ExportOptions,
    /// Largest first, as published.
    pub units: Vec<PlannedUnit>,
    pub skipped: Vec<SkippedTable>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedUnit {
    pub unit: String,
    pub source: SourceTable,
    pub rows: Option<u64>,
    pub bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkippedTable {
    pub table: String,
    pub reason: String,
}

/// One exported file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportedFile {
    pub key: String,
    pub bytes: u64,
}

/// An export's manifest; the same document is the completion record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableManifest {
    pub v: u32,
    pub run_id: String,
    pub unit: String,
    pub files: Vec<ExportedFile>,
    pub bytes: u64,
    pub rows: Option<u64>,
    pub finished_at: DateTime<Utc>,
    pub delivery_attempt: u32,
    pub task: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadRecord {
    pub v: u32,
    pub run_id: String,
    pub unit: String,
    pub reason: String,
    pub message: String,
    pub delivery_attempt: u32,
    pub at: DateTime<Utc>,
}
